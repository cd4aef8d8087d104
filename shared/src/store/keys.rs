//! Every key the pipeline writes, in one place. The bucket holds two kinds of object, under two
//! prefixes, so that its protections can tell them apart:
//!
//! - `evidence/{run}/`: what analysts rely on, each command's result package and the run's
//!   manifest and its signature. Written once (a package by a multipart upload completed with
//!   If-None-Match, a manifest and its signature by a put with it; the bucket policy demands it),
//!   kept under Object Lock retention when the deployment turns it on, never expired.
//! - `state/`: what the pipeline rewrites while it works, run and command records, copy
//!   checkpoints, the tenant's call budget and the status board (each rewritten many times a
//!   minute). No retention;
//!   superseded versions expire.
//!
//! Keys are built from validated ids only (see [`crate::ids`]), so none can leave its prefix.

use crate::defender::CommandType;
use crate::ids::{RunId, TenantKey};

/// Evidence and manifests: retained, never rewritten.
pub const EVIDENCE_PREFIX: &str = "evidence/";
/// Records, checkpoints and the budget: rewritten, expired.
pub const STATE_PREFIX: &str = "state/";

/// The Defender call budget of a deployment that serves one tenant, shared by every function.
pub const BUDGET_KEY: &str = "state/budget/tenant.json";

/// The Defender call budget of `tenant` (none: the deployment serves one, [`BUDGET_KEY`]).
pub fn budget_key(tenant: Option<&TenantKey>) -> String {
    match tenant {
        None => BUDGET_KEY.to_string(),
        Some(t) => format!("state/budget/tenants/{t}.json"),
    }
}

/// Where an unreadable budget is set aside for an operator (`ms`: when, in Unix milliseconds).
pub fn corrupt_budget_key(tenant: Option<&TenantKey>, ms: i64) -> String {
    match tenant {
        None => format!("state/budget/corrupt-{ms}.json"),
        Some(t) => format!("state/budget/tenants/{t}.corrupt-{ms}.json"),
    }
}

/// The status board of a deployment that serves one tenant: one listing of the pipeline's live
/// actions, shared by every poll.
pub const STATUS_BOARD_KEY: &str = "state/poll/board.json";

/// The status board of `tenant` (none: [`STATUS_BOARD_KEY`]); each tenant's actions are listed
/// with its own token.
pub fn board_key(tenant: Option<&TenantKey>) -> String {
    match tenant {
        None => STATUS_BOARD_KEY.to_string(),
        Some(t) => format!("state/poll/boards/{t}.json"),
    }
}

/// Where every run record of `tenant` lies (none: every run's), for listing: `state/runs/` or
/// `state/runs/{tenant}.` (a tenant's runs, and no other tenant's: keys hold no dot).
pub fn runs_prefix(tenant: Option<&TenantKey>) -> String {
    match tenant {
        None => "state/runs/".into(),
        Some(t) => format!("state/runs/{t}."),
    }
}

/// Where every evidence folder of `tenant` lies (none: every run's): `evidence/` or
/// `evidence/{tenant}.`, the prefix an analyst of the tenant is granted.
pub fn evidence_prefix(tenant: Option<&TenantKey>) -> String {
    match tenant {
        None => EVIDENCE_PREFIX.into(),
        Some(t) => format!("{EVIDENCE_PREFIX}{t}."),
    }
}

/// The run record of `run`.
pub fn run_key(run: &RunId) -> String {
    format!("state/runs/{run}/run.json")
}

/// The record of command `index` (from 0) of `run`.
pub fn command_key(run: &RunId, index: u32) -> String {
    format!("state/runs/{run}/commands/{index}.json")
}

/// A copy's progress, so that a later invocation resumes it.
pub fn checkpoint_key(run: &RunId, index: u32) -> String {
    format!("state/runs/{run}/checkpoints/{index}.json")
}

/// The manifest of `run`; under `evidence/`, so it gets Object Lock retention.
pub fn manifest_key(run: &RunId) -> String {
    format!("evidence/{run}/manifest.json")
}

/// The manifest's signature, beside it and written once like it.
pub fn signature_key(run: &RunId) -> String {
    format!("evidence/{run}/manifest.sig.json")
}

/// Where a command's result package lands.
pub fn evidence_key(run: &RunId, index: u32, kind: CommandType) -> String {
    match kind {
        CommandType::GetFile => format!("evidence/{run}/{index}-getfile.gz"),
        CommandType::RunScript => format!("evidence/{run}/{index}-runscript.json"),
        CommandType::PutFile => format!("evidence/{run}/{index}-putfile"),
    }
}

/// Whether a key holds evidence (retained, written once) rather than state.
pub fn is_evidence(key: &str) -> bool {
    key.starts_with(EVIDENCE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_run_keeps_its_evidence_under_its_tenant_prefix() {
        let acme = TenantKey::parse("acme").unwrap();
        let run = RunId::derive_for(Some(&acme), "a", "b", "c", "d");
        for key in [
            manifest_key(&run),
            signature_key(&run),
            evidence_key(&run, 0, CommandType::GetFile),
        ] {
            assert!(key.starts_with("evidence/acme."), "{key}");
        }
        assert!(run_key(&run).starts_with("state/runs/acme."));
        assert!(run_key(&run).starts_with(&runs_prefix(Some(&acme))));
        assert!(manifest_key(&run).starts_with(&evidence_prefix(Some(&acme))));
        let acme_x = TenantKey::parse("acme-x").unwrap();
        let other = RunId::derive_for(Some(&acme_x), "a", "b", "c", "d");
        assert!(!manifest_key(&other).starts_with(&evidence_prefix(Some(&acme))));
        assert_ne!(budget_key(Some(&acme)), BUDGET_KEY);
        // A tenant whose key is "tenant" does not share the single-tenant budget.
        let tenant = TenantKey::parse("tenant").unwrap();
        assert_ne!(budget_key(Some(&tenant)), BUDGET_KEY);
        assert_ne!(board_key(Some(&tenant)), STATUS_BOARD_KEY);
    }

    #[test]
    fn evidence_and_state_never_share_a_prefix() {
        let run = RunId::derive("a", "b", "c", "d");
        let acme = TenantKey::parse("acme").unwrap();
        let tenant_run = RunId::derive_for(Some(&acme), "a", "b", "c", "d");
        let evidence = [
            manifest_key(&tenant_run),
            evidence_key(&tenant_run, 0, CommandType::GetFile),
            manifest_key(&run),
            signature_key(&run),
            evidence_key(&run, 0, CommandType::GetFile),
            evidence_key(&run, 1, CommandType::RunScript),
            evidence_key(&run, 2, CommandType::PutFile),
        ];
        let state = [
            BUDGET_KEY.to_string(),
            STATUS_BOARD_KEY.to_string(),
            corrupt_budget_key(None, 1),
            corrupt_budget_key(Some(&acme), 1),
            budget_key(Some(&acme)),
            board_key(Some(&acme)),
            run_key(&tenant_run),
            run_key(&run),
            command_key(&run, 0),
            checkpoint_key(&run, 0),
        ];
        for k in &evidence {
            assert!(is_evidence(k) && !k.starts_with(STATE_PREFIX), "{k}");
        }
        for k in &state {
            assert!(!is_evidence(k) && k.starts_with(STATE_PREFIX), "{k}");
        }
    }
}
