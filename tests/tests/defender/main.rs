//! Defender's side: the API client against its documented answers and faults, and the tenant budget that keeps every stage within Defender's limits (contention included).
//!
//! One test binary: `cargo test -p testkit --test defender` (a module per file; `-- NAME` runs one).

mod budget;
mod defender_client;
