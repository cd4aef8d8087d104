//! Deployment: the template against the code (every variable, every function), IAM as deployed
//! (each role statically against what its stage touches, and enforced end to end on the
//! IAM-enforcing moto), the bucket's refusals and retention.
//!
//! One test binary: `cargo test -p testkit --test deployment` (a module per file; `-- NAME` runs one).

mod docs;
mod iam;
mod policy;
mod refusals_and_retention;
mod template_consistency;
