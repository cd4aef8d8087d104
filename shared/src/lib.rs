//! Everything the four Lambda functions do, as a library: `functions/*` only call
//! [`entry::run`]. An alert comes in as an SQS message, becomes a run, a Defender live response,
//! and evidence in S3 with a manifest. Follow one message from the top:
//!
//! - [`entry`]: the four functions as one [`entry::Function`] shape; clients built once.
//! - [`batch`]: an SQS batch into one outcome per message and a partial batch response.
//! - [`stages`]: intake, submit, poll and collect as plain functions over the ports, with the
//!   chain of messages that acts for a run ([`stages::settings`]: what each reads from its
//!   environment).
//! - [`alerts`]: the four alert formats into one [`alerts::Alert`]; playbooks, placeholder kinds and
//!   rendering into commands.
//! - [`library`]: the scripts and files playbooks name, kept in Defender's live response library
//!   by SHA-256 before a run is submitted (the bundle, the rules, the sync).
//! - [`messages`]: the versioned jobs the stages send each other.
//! - [`store`]: run and command records, the manifest, every S3 key ([`store::keys`]), which
//!   message holds a record ([`store::chain`]), evidence retention.
//! - [`custody`]: the manifest's signed statement and the completion event (their formats and
//!   checks; `stages::finish` writes them).
//! - [`tenants`]: the Defender tenants one deployment serves (the tenant registry, checked at
//!   start).
//! - [`budget`]: the tenant's Defender call budget, shared through one S3 object.
//! - [`large`]: files over Defender's 3 GB GetFile limit: the device's part map and how its parts
//!   lie in one S3 upload.
//! - [`defender`]: the Defender API client: cloud presets, tokens, typed entities and errors, the
//!   library.
//! - [`ports`]: the traits the stages work through; [`adapters`]: S3, SQS, Secrets Manager, the
//!   Defender client, HTTP downloads, and in-memory ones for tests.
//! - Small rooms: [`ids`] (validated ids), [`codes`] (outcomes, reject codes, metrics), [`config`]
//!   (reading the environment), [`retry`] (backoff), [`clock`], [`hash`] (resumable SHA-256),
//!   [`secret`] (values that never print), [`logging`], [`text`] (text kept to a byte budget).

#![warn(missing_docs)]

pub mod adapters;
pub mod alerts;
pub mod batch;
pub mod budget;
pub mod clock;
pub mod codes;
pub mod config;
pub mod custody;
pub mod defender;
pub mod entry;
pub mod hash;
pub mod ids;
pub mod large;
pub mod library;
pub mod logging;
pub mod messages;
pub mod ports;
pub mod retry;
pub mod secret;
pub mod stages;
pub mod store;
pub mod tenants;
pub mod text;

pub use secret::Secret;
