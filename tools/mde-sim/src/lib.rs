//! A simulator of the Microsoft Defender for Endpoint live response API, for tests, demos and
//! benchmarks: a real HTTP server (`SimServer`) with Defender's login, API and blob hosts on one
//! listener. What it imitates and how to run it: docs/testing.md#the-defender-simulator; the
//! config format: `tools/mde-sim/fleet.example.toml`.
//!
//! - `config`: devices, script behaviour, the seeded library, API clients, limits and faults (TOML)
//! - `action`: what a submission plans, and its status at any simulated time
//! - `clock`: simulated time (scaled, advanceable) and Defender's timestamp formats
//! - `content`: deterministic file content and its gzip package
//! - `limits`: sliding windows in simulated time and the seeded fault dice
//! - `server` (private): the HTTP side, one module per API family

pub mod action;
pub mod clock;
pub mod config;
pub mod content;
pub mod large;
pub mod limits;
mod server;

pub use config::{
    Client, Device, DeviceFile, EndpointFaults, Faults, LibrarySeed, Limits, PIPELINE_ROLES,
    Script, SimConfig, SimSettings,
};
pub use server::{SimServer, Stats, TenantView};
