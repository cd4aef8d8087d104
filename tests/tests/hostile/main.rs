//! Hostile input: alerts, rendered values and log lines an attacker shapes, and secrets that must never be printed.
//!
//! One test binary: `cargo test -p testkit --test hostile` (a module per file; `-- NAME` runs one).

mod hostile_input;
mod no_secrets_in_logs;
mod rendering_attacks;
