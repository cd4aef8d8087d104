//! The registry's file format and its checks. Each field is read as written (unknown fields are
//! refused, so a misspelt limit is not silently the default), then checked into a [`Tenant`]
//! whose values are the types the pipeline uses.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::config::base_url;
use crate::defender::{CloudPreset, cloud_preset, clouds};
use crate::ids::{EntraTenantId, TenantKey};
use crate::library::SyncMode;

/// Why the registry was refused: which entry (its key, or its place when it has none), which
/// field, and what is wrong. Fix the registry file and deploy its new SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant registry: {entry}: {field}: {problem}")]
pub struct RegistryError {
    /// `tenant "acme"`, `tenant #3` (no valid key), or `the file`.
    pub entry: String,
    /// The field, as written in the file (`limits.gets_per_hour`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Defender's documented limits for one tenant (per application and tenant), each overridable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live response submissions per minute (10).
    pub submissions_per_minute: u32,
    /// Live response sessions running at once (25; newer docs allow 50).
    pub running_sessions: u32,
    /// Other calls per minute (100).
    pub gets_per_minute: u32,
    /// Other calls per hour (1,500).
    pub gets_per_hour: u32,
}

impl Limits {
    /// The most each may be set to (a registry entry or the deployment's `BUDGET_*` settings).
    pub const MAX: Limits = Limits {
        submissions_per_minute: 1000,
        running_sessions: 1000,
        gets_per_minute: 10_000,
        gets_per_hour: 100_000,
    };
}

/// Defender's documented values: the one home for them (the deployment's `BUDGET_*` defaults
/// too).
impl Default for Limits {
    fn default() -> Self {
        Self {
            submissions_per_minute: 10,
            running_sessions: 25,
            gets_per_minute: 100,
            gets_per_hour: 1500,
        }
    }
}

/// A principal allowed to start runs on a tenant's devices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sender {
    /// An IAM role or user sending to the alerts queue itself, by its unique id (`AROA…` for a
    /// role, `AIDA…` for a user: `aws iam get-role --query Role.RoleId`), which SQS reports as the
    /// message's `SenderId`. A role deleted and made again under the same name has another id, so
    /// it is not allowed until the registry says so. One principal may be named by several
    /// tenants (a provider's own forwarder serving its customers); a customer's own pipeline
    /// should be named by its tenant alone.
    Principal(String),
}

/// One tenant, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Our key for it: S3 keys, metrics, events.
    pub key: TenantKey,
    /// Its Entra tenant: the token is asked for there.
    pub entra_tenant_id: EntraTenantId,
    /// Its Defender cloud (API host, login host, token scope); the API host possibly a geo host,
    /// either host overridden by `api_base` and `login_base`.
    pub cloud: CloudPreset,
    /// Secrets Manager id of its credentials (`{client_id, client_secret}`; a multi-tenant app's
    /// secret may serve every tenant).
    pub credentials_secret_id: String,
    /// Secrets Manager id of the credentials poll uses, of an app registration that cannot start
    /// a live response (`None`: poll uses `credentials_secret_id`), as `PollCredentialsSecretArn`
    /// does for a single tenant: a compromised poll then starts no live response. The registry's
    /// shared one serves only the tenants that use its shared app.
    pub poll_credentials_secret_id: Option<String>,
    /// Who may start runs on its devices.
    pub senders: BTreeSet<Sender>,
    /// The playbooks it may run (`None`: every playbook of the deployment).
    pub playbooks: Option<BTreeSet<String>>,
    /// Its library sync (`None`: the deployment's `LIBRARY_SYNC`).
    pub library_sync: Option<SyncMode>,
    /// Its Defender limits.
    pub limits: Limits,
}

/// Every tenant the deployment serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    tenants: Vec<Tenant>,
    legacy: Option<TenantKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// One multi-tenant application's credentials, for every tenant that names none.
    credentials_secret: Option<String>,
    /// The tenant a deployment served before it read a registry: runs without a tenant in their
    /// id are its, and its budget and status board stay where they were.
    legacy_tenant: Option<String>,
    /// One multi-tenant read-only application's credentials, for poll, for every tenant that
    /// names none.
    poll_credentials_secret: Option<String>,
    #[serde(default)]
    tenants: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: Option<String>,
    entra_tenant_id: Option<String>,
    cloud: Option<String>,
    api_base: Option<String>,
    login_base: Option<String>,
    credentials_secret: Option<String>,
    poll_credentials_secret: Option<String>,
    #[serde(default)]
    senders: Vec<SenderEntry>,
    playbooks: Option<Vec<String>>,
    library_sync: Option<String>,
    #[serde(default)]
    limits: LimitsEntry,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SenderEntry {
    principal: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsEntry {
    submissions_per_minute: Option<u32>,
    running_sessions: Option<u32>,
    gets_per_minute: Option<u32>,
    gets_per_hour: Option<u32>,
}

impl Registry {
    /// Parses and checks a registry file. `playbooks` are the deployment's playbook names (a
    /// tenant may name only those); `None` in the functions that do not load the playbooks
    /// (intake and submit check them, and stop on a registry that names another).
    pub fn from_toml(
        text: &str,
        playbooks: Option<&BTreeSet<String>>,
    ) -> Result<Self, RegistryError> {
        let file: File = toml::from_str(text).map_err(|e| RegistryError {
            entry: "the file".into(),
            field: "(syntax)".into(),
            problem: e.message().to_string(),
        })?;
        if file.tenants.is_empty() {
            return Err(RegistryError {
                entry: "the file".into(),
                field: "tenants".into(),
                problem: "lists no tenant ([[tenants]])".into(),
            });
        }
        let shared = Secrets {
            actions: file.credentials_secret.as_deref(),
            poll: file.poll_credentials_secret.as_deref(),
        };
        let mut tenants: Vec<Tenant> = Vec::new();
        for (i, entry) in file.tenants.into_iter().enumerate() {
            let tenant = check(i, entry, &shared, playbooks)?;
            let err = |field: &str, problem: String| RegistryError {
                entry: format!("tenant {:?}", tenant.key.as_str()),
                field: field.into(),
                problem,
            };
            if let Some(other) = tenants.iter().find(|t| t.key == tenant.key) {
                return Err(err("key", format!("is used twice ({})", other.key)));
            }
            if let Some(other) = tenants
                .iter()
                .find(|t| t.entra_tenant_id == tenant.entra_tenant_id)
            {
                return Err(err(
                    "entra_tenant_id",
                    format!(
                        "is tenant {:?}'s too: one entry per Entra tenant",
                        other.key.as_str()
                    ),
                ));
            }
            tenants.push(tenant);
        }
        let legacy = match file.legacy_tenant {
            None => None,
            Some(k) => {
                let err = |problem: String| RegistryError {
                    entry: "the file".into(),
                    field: "legacy_tenant".into(),
                    problem,
                };
                let key = TenantKey::parse(&k).map_err(|e| err(e.to_string()))?;
                if !tenants.iter().any(|t| t.key == key) {
                    return Err(err(format!("{k:?} is not one of the registry's tenants")));
                }
                Some(key)
            }
        };
        Ok(Self { tenants, legacy })
    }

    /// The tenant the deployment served before it read a registry (`legacy_tenant`): the owner of
    /// runs whose id names no tenant, whose budget and status board keep their single-tenant keys.
    pub fn legacy(&self) -> Option<&Tenant> {
        self.legacy.as_ref().and_then(|k| self.get(k))
    }

    /// Every tenant, in file order.
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    /// The tenant with this key.
    pub fn get(&self, key: &TenantKey) -> Option<&Tenant> {
        self.tenants.iter().find(|t| &t.key == key)
    }

    /// The tenant with this Entra tenant id (a Defender or Graph alert names its tenant so).
    pub fn by_entra_id(&self, id: &EntraTenantId) -> Option<&Tenant> {
        self.tenants.iter().find(|t| &t.entra_tenant_id == id)
    }
}

/// The registry's shared secrets, for the tenants that name none of their own.
struct Secrets<'a> {
    actions: Option<&'a str>,
    poll: Option<&'a str>,
}

/// Checks entry `i` (from 0; shown from 1).
fn check(
    i: usize,
    e: Entry,
    shared: &Secrets<'_>,
    playbooks: Option<&BTreeSet<String>>,
) -> Result<Tenant, RegistryError> {
    let mut entry = format!("tenant #{}", i + 1);
    let err = |entry: &str, field: &str, problem: String| RegistryError {
        entry: entry.to_string(),
        field: field.into(),
        problem,
    };
    let key = e
        .key
        .ok_or_else(|| err(&entry, "key", "is missing".into()))
        .and_then(|k| TenantKey::parse(&k).map_err(|x| err(&entry, "key", x.to_string())))?;
    entry = format!("tenant {:?}", key.as_str());
    let entra_tenant_id = e
        .entra_tenant_id
        .ok_or_else(|| err(&entry, "entra_tenant_id", "is missing".into()))
        .and_then(|t| {
            EntraTenantId::parse(&t).map_err(|x| err(&entry, "entra_tenant_id", x.to_string()))
        })?;
    let cloud_name = e.cloud.unwrap_or_else(|| "commercial".into());
    let mut cloud = cloud_preset(&cloud_name).ok_or_else(|| {
        let known = clouds().collect::<Vec<_>>().join(", ");
        err(
            &entry,
            "cloud",
            format!("{cloud_name:?} is not one of {known}"),
        )
    })?;
    if let Some(api) = e.api_base {
        cloud.api_base =
            base_url("api_base", &api).map_err(|x| err(&entry, "api_base", x.to_string()))?;
    }
    if let Some(login) = e.login_base {
        cloud.login_base =
            base_url("login_base", &login).map_err(|x| err(&entry, "login_base", x.to_string()))?;
    }
    // The shared read-only app goes with the shared app: a tenant with an app of its own (another
    // cloud, another consent) does not inherit it, and poll uses its own app unless it names one.
    let inherited = if e.credentials_secret.is_none() {
        shared.poll
    } else {
        None
    };
    let poll_credentials_secret_id = match e.poll_credentials_secret.as_deref().or(inherited) {
        Some(s) if s.trim().is_empty() => {
            return Err(err(&entry, "poll_credentials_secret", "is empty".into()));
        }
        other => other.map(str::to_string),
    };
    let credentials_secret_id = match e.credentials_secret.as_deref().or(shared.actions) {
        Some(s) if !s.trim().is_empty() => s.to_string(),
        Some(_) => return Err(err(&entry, "credentials_secret", "is empty".into())),
        None => {
            return Err(err(
                &entry,
                "credentials_secret",
                "is missing, and the registry names no shared credentials_secret".into(),
            ));
        }
    };
    if e.senders.is_empty() {
        return Err(err(
            &entry,
            "senders",
            "is empty: name who may start runs on this tenant's devices".into(),
        ));
    }
    let mut senders = BTreeSet::new();
    for s in e.senders {
        senders.insert(principal(&s.principal).map_err(|p| err(&entry, "senders", p))?);
    }
    let playbooks = match e.playbooks {
        None => None,
        Some(names) => {
            if let Some(unknown) =
                playbooks.and_then(|known| names.iter().find(|n| !known.contains(*n)))
            {
                return Err(err(
                    &entry,
                    "playbooks",
                    format!("{unknown:?} is not one of the deployment's playbooks"),
                ));
            }
            Some(names.into_iter().collect())
        }
    };
    let library_sync = match e.library_sync.as_deref() {
        None => None,
        Some(m) => Some(SyncMode::parse(m).ok_or_else(|| {
            err(
                &entry,
                "library_sync",
                format!("{m:?} is not upload, verify or off"),
            )
        })?),
    };
    let limits = limits(&e.limits).map_err(|(field, problem)| err(&entry, field, problem))?;
    Ok(Tenant {
        key,
        entra_tenant_id,
        cloud,
        credentials_secret_id,
        poll_credentials_secret_id,
        senders,
        playbooks,
        library_sync,
        limits,
    })
}

/// A principal's unique id: `AROA` (role) or `AIDA` (user) and 17 to 124 more upper-case letters
/// and digits.
fn principal(id: &str) -> Result<Sender, String> {
    let ok = (id.starts_with("AROA") || id.starts_with("AIDA"))
        && (21..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if ok {
        Ok(Sender::Principal(id.to_string()))
    } else {
        Err(format!(
            "principal {:?} is not an IAM role's or user's unique id (AROA… or AIDA…, from `aws iam get-role --query Role.RoleId`)",
            id.chars().take(64).collect::<String>()
        ))
    }
}

/// The limits, each defaulting to Defender's documented value and within the ranges the
/// deployment-wide settings take.
fn limits(l: &LimitsEntry) -> Result<Limits, (&'static str, String)> {
    let (d, max) = (Limits::default(), Limits::MAX);
    let within = |field: &'static str, v: Option<u32>, default: u32, max: u32| match v {
        None => Ok(default),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(v) => Err((field, format!("{v} is not between 1 and {max}"))),
    };
    Ok(Limits {
        submissions_per_minute: within(
            "limits.submissions_per_minute",
            l.submissions_per_minute,
            d.submissions_per_minute,
            max.submissions_per_minute,
        )?,
        running_sessions: within(
            "limits.running_sessions",
            l.running_sessions,
            d.running_sessions,
            max.running_sessions,
        )?,
        gets_per_minute: within(
            "limits.gets_per_minute",
            l.gets_per_minute,
            d.gets_per_minute,
            max.gets_per_minute,
        )?,
        gets_per_hour: within(
            "limits.gets_per_hour",
            l.gets_per_hour,
            d.gets_per_hour,
            max.gets_per_hour,
        )?,
    })
}
