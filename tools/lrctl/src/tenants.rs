//! `lrctl tenants check [TENANT]`: a customer's tenant checked the way the functions will use it,
//! before its first alert. For each tenant of the registry (read as the functions read it), in
//! order: its secret is read, a token is asked for in its Entra tenant, the application permissions
//! the token carries (its `roles` claim, as Entra issues it) are held against what the pipeline
//! needs, and Defender is asked once for its machine actions and once for its library; a tenant
//! whose poll reads through an app of its own has that app checked too (its token, Machine.Read.All,
//! the machine actions), its checks named `poll …`. Prints what
//! works, what is missing and how to fix it (for a missing permission, the admin-consent link of
//! the app in that tenant), or `--json`; exits 1 when anything is missing.
//!
//! Separate from `library` because it reaches every tenant with the registry's settings, not the
//! one tenant the MDE_* variables describe; what it prints never holds the secret or the token.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use shared::adapters::secrets::SecretsManagerCredentials;
use shared::defender::{
    ActionFilter, CredentialSource, DefenderClient, TokenProvider, http_client,
};
use shared::tenants::{Registry, Tenant};

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{out, print_json, table};

/// The application permissions the pipeline's app needs in every tenant, and what each is for.
pub const NEEDED: [(&str, &str); 3] = [
    (
        "Machine.LiveResponse",
        "start a live response and download its results",
    ),
    ("Machine.Read.All", "read machine actions (poll)"),
    (
        "Library.Manage",
        "keep the playbooks' scripts in the library",
    ),
];

/// The longest a check waits for one answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One thing checked for a tenant.
#[derive(Debug, Serialize)]
pub struct Item {
    /// What was checked: `credentials`, `token`, a permission's name, `machine actions`,
    /// `library`.
    pub check: String,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix it, when it is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Everything checked for one tenant.
#[derive(Debug, Serialize)]
pub struct Report {
    pub tenant: String,
    pub entra_tenant_id: String,
    pub ok: bool,
    pub checks: Vec<Item>,
}

pub async fn check(ctx: &Ctx, only: Option<&str>) -> Result<u8> {
    let registry = load(ctx).await?;
    let chosen: Vec<&Tenant> =
        match only {
            None => registry.tenants().iter().collect(),
            Some(k) => {
                let key = shared::ids::TenantKey::parse(k.trim())
                    .map_err(|e| Error::Usage(format!("TENANT: {e}")))?;
                vec![registry.get(&key).ok_or_else(|| {
                    Error::Usage(format!("the tenant registry has no tenant {key}"))
                })?]
            }
        };
    let mut reports = Vec::new();
    for t in chosen {
        reports.push(check_one(ctx, t).await);
    }
    let all_ok = reports.iter().all(|r| r.ok);
    if ctx.json {
        print_json(&serde_json::to_value(&reports).map_err(|e| Error::failed(e.to_string()))?);
    } else {
        let rows: Vec<Vec<String>> = reports
            .iter()
            .flat_map(|r| {
                r.checks.iter().map(|c| {
                    vec![
                        r.tenant.clone(),
                        c.check.clone(),
                        if c.ok { "ok" } else { "MISSING" }.into(),
                        c.detail.clone(),
                        c.fix.clone().unwrap_or_default(),
                    ]
                })
            })
            .collect();
        out(table(&["TENANT", "CHECK", "", "FOUND", "FIX"], &rows));
    }
    Ok(if all_ok { 0 } else { 1 })
}

/// The registry: `LR_TENANTS` (a path or `s3://bucket/key`), else the deployment's
/// `TENANTS_S3_URI`.
async fn load(ctx: &Ctx) -> Result<Registry> {
    let source = ctx.settings.tenants.clone().ok_or_else(|| {
        Error::Usage(
            "no tenant registry: set LR_TENANTS (a path or s3://bucket/key) or TENANTS_S3_URI"
                .into(),
        )
    })?;
    let bytes = match source.strip_prefix("s3://") {
        Some(rest) => {
            let (bucket, key) = rest
                .split_once('/')
                .ok_or_else(|| Error::Usage(format!("{source}: expected s3://bucket/key")))?;
            crate::bucket::Bucket::new(&ctx.sdk, bucket)
                .get(key, 1 << 20)
                .await?
                .ok_or_else(|| Error::failed(format!("{source}: no such object")))?
        }
        None => std::fs::read(Path::new(&source))
            .map_err(|e| Error::Usage(format!("cannot read {source}: {e}")))?,
    };
    let text =
        String::from_utf8(bytes).map_err(|_| Error::failed(format!("{source}: not UTF-8 text")))?;
    Registry::from_toml(&text, None).map_err(|e| Error::failed(format!("{source}: {e}")))
}

/// The permissions a token's `roles` claim grants (empty when it carries none, or is not a JWT).
pub fn roles_of(token: &str) -> Vec<String> {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|c| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
        })
        .and_then(|c: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&c).ok());
    claims
        .as_ref()
        .and_then(|c| c["roles"].as_array())
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn check_one(ctx: &Ctx, t: &Tenant) -> Report {
    let mut checks = check_app(ctx, t, &App::actions(t)).await;
    // Poll reads through an app of its own when the tenant (or the registry) names one: it must
    // be able to read machine actions, and needs nothing more.
    if let Some(poll) = App::poll(t) {
        checks.extend(check_app(ctx, t, &poll).await);
    }
    report(t, checks)
}

/// One of a tenant's applications, as a check names it.
struct App<'a> {
    /// Prefixed to each check's name (`poll `, or nothing for the app that starts live responses).
    prefix: &'static str,
    secret_id: &'a str,
    needed: &'static [(&'static str, &'static str)],
    /// Whether it keeps the library (only the app that starts live responses does).
    library: bool,
}

/// What poll's read-only app needs.
pub const POLL_NEEDED: [(&str, &str); 1] = [("Machine.Read.All", "read machine actions (poll)")];

impl<'a> App<'a> {
    fn actions(t: &'a Tenant) -> Self {
        Self {
            prefix: "",
            secret_id: &t.credentials_secret_id,
            needed: &NEEDED,
            library: true,
        }
    }

    fn poll(t: &'a Tenant) -> Option<Self> {
        let id = t.poll_credentials_secret_id.as_deref()?;
        (id != t.credentials_secret_id).then_some(Self {
            prefix: "poll ",
            secret_id: id,
            needed: &POLL_NEEDED,
            library: false,
        })
    }
}

async fn check_app(ctx: &Ctx, t: &Tenant, app: &App<'_>) -> Vec<Item> {
    let mut checks = Vec::new();
    let mut item = |check: &str, ok: bool, detail: String, fix: Option<String>| {
        checks.push(Item {
            check: format!("{}{check}", app.prefix),
            ok,
            detail,
            fix: (!ok).then_some(fix).flatten(),
        })
    };
    let secrets = aws_sdk_secretsmanager::Client::new(&ctx.sdk);
    let creds =
        SecretsManagerCredentials::new(secrets, app.secret_id).in_tenant(&t.entra_tenant_id);
    let client_id = match creds.fetch().await {
        Ok(c) => {
            item(
                "credentials",
                true,
                format!("secret {} (app {})", app.secret_id, c.client_id),
                None,
            );
            c.client_id
        }
        Err(e) => {
            item(
                "credentials",
                false,
                e.to_string(),
                Some(format!(
                    "create the secret {} ({{tenant_id, client_id, client_secret}}) and let the functions read it (TenantSecretsPrefix, or TenantPollSecretsPrefix for poll's)",
                    app.secret_id
                )),
            );
            return checks;
        }
    };
    let consent = format!(
        "grant admin consent in the tenant: {}/{}/adminconsent?client_id={client_id}",
        t.cloud.login_base, t.entra_tenant_id
    );
    let http = match http_client(TIMEOUT) {
        Ok(h) => h,
        Err(e) => {
            item("token", false, e.to_string(), None);
            return checks;
        }
    };
    let auth = TokenProvider::new(creds, http.clone(), &t.cloud.login_base, &t.cloud.scope);
    let granted = match auth.token().await {
        Ok(token) => {
            item(
                "token",
                true,
                format!("issued in {} for {}", t.entra_tenant_id, t.cloud.scope),
                None,
            );
            roles_of(token.value.expose())
        }
        Err(e) => {
            item("token", false, e.to_string(), Some(consent.clone()));
            return checks;
        }
    };
    for (role, why) in app.needed {
        let ok = granted.iter().any(|g| g == role);
        let detail = if ok { "granted" } else { "not granted" };
        item(role, ok, format!("{detail}: {why}"), Some(consent.clone()));
    }
    let defender = DefenderClient::new(http, &t.cloud.api_base, auth);
    let filter = ActionFilter {
        live_response_only: true,
        created_since: Some(time::OffsetDateTime::now_utc() - time::Duration::hours(1)),
        ..ActionFilter::default()
    };
    match defender
        .list_machine_actions(&filter, Some(100), None)
        .await
    {
        Ok(a) => item(
            "machine actions",
            true,
            format!("{} live responses in the last hour (first page)", a.len()),
            None,
        ),
        Err(e) => item(
            "machine actions",
            false,
            e.to_string(),
            Some(consent.clone()),
        ),
    }
    if app.library {
        match defender.list_library().await {
            Ok(files) => item("library", true, format!("{} files", files.len()), None),
            Err(e) => item("library", false, e.to_string(), Some(consent)),
        }
    }
    checks
}

fn report(t: &Tenant, checks: Vec<Item>) -> Report {
    Report {
        tenant: t.key.to_string(),
        entra_tenant_id: t.entra_tenant_id.to_string(),
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_token_roles_are_read_from_its_claims_and_nothing_else() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            b64("{}"),
            b64(r#"{"roles":["Machine.Read.All","Library.Manage"]}"#)
        );
        assert_eq!(roles_of(&token), vec!["Machine.Read.All", "Library.Manage"]);
        assert!(roles_of("opaque-token").is_empty());
        assert!(roles_of(&format!("a.{}.c", b64("not json"))).is_empty());
        assert!(roles_of(&format!("a.{}.c", b64(r#"{"roles":"x"}"#))).is_empty());
    }
}
