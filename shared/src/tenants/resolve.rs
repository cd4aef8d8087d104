//! Which tenant an alert is for, and whether the alert's sender may start a run there: an alert
//! names its tenant (a native alert by our key, a Defender alert by its Entra tenant id), the
//! registry must know it, the queue's sender must be one the tenant's entry allows, and the
//! playbook one it may run. One customer's pipeline must not start a live response on another
//! customer's devices: a sender bound to tenant A is refused for tenant B whatever the alert says.

use crate::codes::RejectCode;
use crate::ids::{EntraTenantId, TenantKey};

use super::{Registry, Sender, Tenant};

/// The tenant an alert names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// By our key (`"tenant"` in an `lr.alert/v1` alert).
    Key(TenantKey),
    /// By its Entra tenant id (`tenantId` in a Defender or Graph alert).
    Entra(EntraTenantId),
}

/// Why an alert may not start a run in the tenant it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The alert names no tenant, and the deployment serves several.
    #[error(
        "the alert names no tenant (\"tenant\" in lr.alert/v1, \"tenantId\" in a Defender alert)"
    )]
    NoTenant,
    /// The alert names a tenant, and the deployment serves one tenant and reads no registry.
    #[error(
        "the alert names tenant {0}, but this deployment serves one tenant and reads no tenant registry"
    )]
    NoRegistry(String),
    /// The registry has no such tenant.
    #[error("the alert's tenant {0} is not in the tenant registry")]
    UnknownTenant(String),
    /// The message's sender is not one the tenant allows (or SQS reported none).
    #[error("sender {sender} may not start runs for tenant {tenant}")]
    SenderNotAllowed {
        /// The tenant the alert named.
        tenant: TenantKey,
        /// The sender as SQS reported it (`-` if it did not).
        sender: String,
    },
    /// The tenant may not run the playbook the alert chose.
    #[error("tenant {tenant} may not run playbook {playbook}")]
    PlaybookNotAllowed {
        /// The tenant.
        tenant: TenantKey,
        /// The playbook.
        playbook: String,
    },
}

/// The tenant `claim` names, if `sender` (SQS's `SenderId`: a principal's unique id, and for a
/// role `:` and the session name) may start runs there. Checked before the alert's playbook is
/// chosen; [`Tenant::may_run`] checks that one after.
pub fn resolve<'r>(
    registry: &'r Registry,
    claim: Option<&Claim>,
    sender: Option<&str>,
) -> Result<&'r Tenant, Refusal> {
    let tenant = match claim.ok_or(Refusal::NoTenant)? {
        Claim::Key(key) => registry
            .get(key)
            .ok_or_else(|| Refusal::UnknownTenant(format!("{key:?}")))?,
        Claim::Entra(id) => registry
            .by_entra_id(id)
            .ok_or_else(|| Refusal::UnknownTenant(format!("with Entra id {id}")))?,
    };
    let principal = sender.map(|s| s.split_once(':').map_or(s, |(p, _)| p));
    let allowed = principal.is_some_and(|p| tenant.senders.contains(&Sender::Principal(p.into())));
    if !allowed {
        return Err(Refusal::SenderNotAllowed {
            tenant: tenant.key.clone(),
            sender: sender
                .unwrap_or("-")
                .chars()
                .take(128)
                .filter(|c| !c.is_control())
                .collect(),
        });
    }
    Ok(tenant)
}

impl Tenant {
    /// Whether the tenant may run `playbook` (every playbook, when its entry names none).
    pub fn may_run(&self, playbook: &str) -> Result<(), Refusal> {
        match &self.playbooks {
            Some(allowed) if !allowed.contains(playbook) => Err(Refusal::PlaybookNotAllowed {
                tenant: self.key.clone(),
                playbook: playbook.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

impl Refusal {
    /// The reject code a refused alert is sent to the dead-letter queue with.
    pub fn code(&self) -> RejectCode {
        match self {
            Self::NoTenant => RejectCode::NoTenant,
            Self::UnknownTenant(_) | Self::NoRegistry(_) => RejectCode::UnknownTenant,
            Self::SenderNotAllowed { .. } => RejectCode::SenderNotAllowed,
            Self::PlaybookNotAllowed { .. } => RejectCode::PlaybookNotAllowed,
        }
    }
}
