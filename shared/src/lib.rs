//! Library code shared by the live response functions: configuration, the Defender client,
//! AWS adapters and logging. Handlers in `functions/*` only build clients and call into here.

pub mod adapters;
pub mod alerts;
pub mod batch;
pub mod budget;
pub mod clock;
pub mod codes;
pub mod config;
pub mod defender;
pub mod entry;
pub mod hash;
pub mod ids;
pub mod logging;
pub mod messages;
pub mod ports;
pub mod retry;
pub mod secret;
pub mod stages;
pub mod store;

pub use secret::Secret;
