//! Chain of custody, for the people who use the evidence: the signed statement that binds a
//! manifest ([`signature`]: made by the stage that writes the manifest, verified by `lrctl` with
//! KMS or offline with the public key) and the completion event a run's end publishes
//! ([`event`]). Writing them is `crate::stages::finish`; these are the formats and the checks,
//! shared by the pipeline, `lrctl` and the tests.

pub mod event;
pub mod signature;
