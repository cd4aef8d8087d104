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

/// The tenants a deployment serves: one, configured from the environment (no registry), or
/// those of its registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenancy {
    /// One tenant, configured by `MDE_*`; runs and keys carry no tenant.
    Single,
    /// The registry's tenants.
    Registry(Registry),
}

impl Tenancy {
    /// The tenant an alert's run belongs to, if its sender may start it there (`None`: the
    /// deployment serves one tenant). Without a registry, an alert that names a tenant by our key
    /// is refused (the check it asks for cannot be made), and a Defender alert's `tenantId`
    /// (Defender's own, not a request) is ignored.
    pub fn admit(
        &self,
        claim: Option<&Claim>,
        sender: Option<&str>,
    ) -> Result<Option<&Tenant>, Refusal> {
        match self {
            Self::Single => match claim {
                Some(Claim::Key(key)) => Err(Refusal::NoRegistry(key.to_string())),
                _ => Ok(None),
            },
            Self::Registry(r) => resolve(r, claim, sender).map(Some),
        }
    }
}

#[cfg(test)]
mod tests;
