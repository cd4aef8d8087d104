//! Custody: what the pipeline signs and announces, and the planted manifests, signatures and evidence it must refuse.
//!
//! One test binary: `cargo test -p testkit --test custody` (a module per file; `-- NAME` runs one).

mod custody;
mod custody_e2e;
