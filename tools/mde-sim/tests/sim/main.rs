//! The Defender simulator as a real HTTP server: actions, auth, control, downloads, faults, the library and the limits.
//!
//! One test binary: `cargo test -p mde-sim --test sim` (a module per file).

mod actions;
mod auth;
mod common;
mod control;
mod downloads;
mod faults;
mod library;
mod limits;
