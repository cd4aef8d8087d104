//! The live response library: bundled and external files kept in step with Defender's library, swapped files, and runs that use them end to end.
//!
//! One test binary: `cargo test -p testkit --test library` (a module per file; `-- NAME` runs one).

mod library_e2e;
mod library_sync;
