//! Many Defender tenants from one deployment. The tenant registry (a TOML file, pinned by its
//! SHA-256 like the playbook file) lists each tenant the deployment serves: our key for it, its
//! Entra tenant and Defender cloud, the credentials that get its tokens, the senders allowed to
//! start runs on its devices, what it may run, and its own Defender limits. Everything per tenant
//! hangs off the [`Tenant`] an alert resolves to; a deployment without a registry serves one
//! tenant, configured from the environment as before.
//!
//! Checked once, at the function's start: a registry that does not parse or names something
//! invalid stops the start with a [`RegistryError`] naming the entry and the field.

mod registry;
mod resolve;

pub use registry::{Limits, Registry, RegistryError, Sender, Tenant};
pub use resolve::{Claim, Refusal, resolve};

#[cfg(test)]
mod tests;
