//! testkit: what the integration tests in `tests/tests` share. Each helper has one home:
//!
//! - [`aws`]: moto (started by `./dev test`), SDK configuration, unique names.
//! - [`sim`]: the Defender simulator: machine ids, devices, a running simulator, clients of it,
//!   injected faults, a finished live response.
//! - [`content`]: the content oracle: the bytes and SHA-256 a device's file must have as evidence.
//! - [`alerts`]: alert bodies, the run id an alert makes, the hostile-input corpus.
//! - [`records`]: run and command records as poll leaves them, seeded into a store.
//! - [`configs`]: stage configurations with test values, for handlers called directly.
//! - [`library`]: library sync off for handlers called directly; the bundled library as
//!   simulator seeds.
//! - [`logs`]: log capture, for tests that read what was logged.
//! - [`notary`]: an in-memory signer and bus for stage handlers called directly.
//! - [`defender`]: Defender scripted by a test, Defender as a model on a manual clock, and a
//!   decorator that loses a submission's answer.
//! - [`store`]: a store decorator: a hook before each operation (latency, interleaving, kill
//!   points, faults) and an observer after it.
//! - [`stack`]: the whole local stack (simulator, moto, the four stages), alerts in and manifests
//!   out.
//! - [`tenants`]: several Defender tenants on the local stack: apps, secrets, registry entries,
//!   the registry deployed.
//! - [`seeded`]: seeds and a seeded generator for randomised tests.
//! - [`cas_proxy`]: a proxy in front of moto whose conditional writes are atomic, as S3's are.

pub mod alerts;
pub mod aws;
pub mod cas_proxy;
pub mod configs;
pub mod content;
pub mod defender;
pub mod library;
pub mod logs;
pub mod notary;
pub mod records;
pub mod seeded;
pub mod sim;
pub mod stack;
pub mod store;
pub mod tenants;
