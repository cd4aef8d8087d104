//! Library code shared by the live response functions: configuration, the Defender client,
//! AWS adapters and logging. Handlers in `functions/*` only build clients and call into here.

pub mod alerts;
pub mod aws;
pub mod config;
pub mod defender;
pub mod ids;
pub mod logging;
pub mod secret;

pub use secret::Secret;
