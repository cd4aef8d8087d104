//! The analysts' command line against evidence in moto: verify, fetch, show, the library, the queues, deleted runs and tampering.
//!
//! One test binary: `cargo test -p lrctl --test lrctl` (a module per file).

mod common;
mod deleted_runs;
mod evidence;
mod library;
mod queues;
mod tampering;
mod tenants;
