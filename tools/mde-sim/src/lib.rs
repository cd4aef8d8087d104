//! A simulator of the Microsoft Defender for Endpoint live response API (see the crate README).

pub mod action;
pub mod clock;
pub mod config;
pub mod content;
pub mod limits;
mod server;

pub use config::{
    Client, Device, DeviceFile, EndpointFaults, Faults, Limits, Script, SimConfig, SimSettings,
};
pub use server::{SimServer, Stats};
