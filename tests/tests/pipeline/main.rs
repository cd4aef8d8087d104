//! The four stages end to end on the local stack (moto and the Defender simulator as real servers): a run from alert to sealed manifest, exactly one POST and one manifest under duplicates, kills and redeliveries, cut downloads, guards on a run's state, event sizes, several tenants from one deployment, and a soak.
//!
//! One test binary: `cargo test -p testkit --test pipeline` (a module per file; `-- NAME` runs one).

mod collect_killed;
mod copy_in_flight;
mod event_size;
mod exactly_once;
mod local_stack;
mod pipeline_e2e;
mod run_guards;
mod sealing_survives_duplicates;
mod soak;
mod tenants;
