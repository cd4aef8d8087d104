//! Each tenant's Defender client and stage settings, built once at start and picked per message by
//! the run it names: a run id carries its tenant (`acme.5f3a…`), so a job needs nothing else to
//! reach its tenant's Defender with its tenant's token and budget. Without a registry there is
//! one, built from `MDE_*` as before; with one, runs whose id names no tenant (from before the
//! registry) belong to its `legacy_tenant`, or are refused.

use std::collections::BTreeMap;

use super::{Defender, InitError};
use crate::adapters::secrets::SecretsManagerCredentials;
use crate::budget::BudgetConfig;
use crate::codes::RejectCode;
use crate::defender::{DefenderClient, DefenderConfig, TokenProvider, http_client};
use crate::ids::TenantKey;
use crate::messages::Delivery;
use crate::stages::StageError;
use crate::tenants::{Tenancy, Tenant};

/// Which of a tenant's app registrations a stage uses.
#[derive(Clone, Copy)]
pub(super) enum Credentials {
    /// The one that starts live responses and reads their results (submit, collect).
    Actions,
    /// Poll's, which need not start one (`poll_credentials_secret`, when the registry names it).
    Reads,
}

/// What a stage uses for one tenant's runs.
pub(super) struct ForTenant<C> {
    /// The stage's settings with the tenant's budget (and, for submit, its library).
    pub cfg: C,
    /// The tenant's Defender, with its own token.
    pub defender: Defender,
}

/// Every tenant's [`ForTenant`].
pub(super) struct Served<C> {
    /// Runs whose id names no tenant: the single tenant's, or the registry's legacy tenant's.
    untenanted: Option<TenantKey>,
    single: Option<ForTenant<C>>,
    tenants: BTreeMap<TenantKey, ForTenant<C>>,
}

impl<C> Served<C> {
    /// One [`ForTenant`] per tenant: `make` gets the tenant (none without a registry) and its
    /// budget, built from the deployment's (`base`: the minute and call limit) with the tenant's
    /// limits, object and lane. The legacy tenant keeps the single-tenant budget and board, so
    /// that its runs from before the registry and after share one.
    pub fn build(
        tenancy: &Tenancy,
        secret: Credentials,
        defender: &DefenderConfig,
        base: &BudgetConfig,
        sdk: &aws_config::SdkConfig,
        mut make: impl FnMut(Option<&Tenant>, BudgetConfig) -> C,
    ) -> Result<Self, InitError> {
        let http =
            http_client(defender.http_timeout).map_err(|e| InitError::Other(e.to_string()))?;
        let secrets = aws_sdk_secretsmanager::Client::new(sdk);
        let registry = match tenancy {
            Tenancy::Single => {
                let creds =
                    SecretsManagerCredentials::new(secrets, &defender.credentials_secret_id);
                let auth =
                    TokenProvider::new(creds, http.clone(), &defender.login_base, &defender.scope);
                return Ok(Self {
                    untenanted: None,
                    single: Some(ForTenant {
                        cfg: make(None, base.clone()),
                        defender: DefenderClient::new(http, &defender.api_base, auth),
                    }),
                    tenants: BTreeMap::new(),
                });
            }
            Tenancy::Registry(r) => r,
        };
        let legacy = registry.legacy().map(|t| t.key.clone());
        let mut tenants = BTreeMap::new();
        for t in registry.tenants() {
            let mut budget = base.for_tenant(&t.key, &t.limits);
            budget.legacy = legacy.as_ref() == Some(&t.key);
            let id = match secret {
                Credentials::Actions => &t.credentials_secret_id,
                Credentials::Reads => t
                    .poll_credentials_secret_id
                    .as_ref()
                    .unwrap_or(&t.credentials_secret_id),
            };
            let creds =
                SecretsManagerCredentials::new(secrets.clone(), id).in_tenant(&t.entra_tenant_id);
            let auth = TokenProvider::new(creds, http.clone(), &t.cloud.login_base, &t.cloud.scope);
            tenants.insert(
                t.key.clone(),
                ForTenant {
                    cfg: make(Some(t), budget),
                    defender: DefenderClient::new(http.clone(), &t.cloud.api_base, auth),
                },
            );
        }
        Ok(Self {
            untenanted: legacy,
            single: None,
            tenants,
        })
    }

    /// The tenant of the run `msg` names. A message that names no run is left to the stage to
    /// refuse (with the single tenant's, or any tenant's, clients: it makes no call); a run of a
    /// tenant the deployment does not serve is refused here, its body kept for re-drive once the
    /// registry names the tenant again.
    pub fn of(&self, msg: &Delivery) -> Result<&ForTenant<C>, StageError> {
        let Some(run_id) = crate::messages::run_of(&msg.body) else {
            return self
                .single
                .as_ref()
                .or_else(|| self.tenants.values().next())
                .ok_or_else(|| StageError::Reject {
                    code: RejectCode::InvalidMessage,
                    reason: "not a stage message naming a run".into(),
                });
        };
        let unknown = |reason: String| StageError::Reject {
            code: RejectCode::UnknownTenant,
            reason,
        };
        match (run_id.tenant(), &self.single) {
            (None, Some(single)) => Ok(single),
            (Some(t), Some(_)) => Err(unknown(format!(
                "run {run_id} is tenant {t}'s, and this deployment reads no tenant registry: set TENANTS_S3_URI to a registry naming {t}, then re-drive"
            ))),
            (tenant, None) => {
                let key = tenant.or_else(|| self.untenanted.clone()).ok_or_else(|| {
                    unknown(format!(
                        "run {run_id} is from before the tenant registry, which names no legacy_tenant: name the tenant it ran in, then re-drive"
                    ))
                })?;
                self.tenants.get(&key).ok_or_else(|| {
                    unknown(format!(
                        "run {run_id} is tenant {key}'s, which the tenant registry does not name: add it back, then re-drive"
                    ))
                })
            }
        }
    }
}
