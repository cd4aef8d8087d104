use std::collections::BTreeSet;

use super::*;
use crate::ids::{EntraTenantId, TenantKey};
use crate::library::SyncMode;

const ACME: &str = "11111111-2222-3333-4444-555555555555";
const GLOBEX: &str = "66666666-7777-8888-9999-aaaaaaaaaaaa";
const ROLE_A: &str = "AROAEXAMPLEACMEROLE01";
const ROLE_B: &str = "AROAEXAMPLEGLOBEXROLE";

fn playbooks() -> BTreeSet<String> {
    ["malware-file", "triage"].map(String::from).into()
}

fn registry(text: &str) -> Result<Registry, RegistryError> {
    Registry::from_toml(text, Some(&playbooks()))
}

fn two_tenants() -> String {
    format!(
        r#"
credentials_secret = "lr/multi-tenant-app"

[[tenants]]
key = "acme"
entra_tenant_id = "{ACME}"
senders = [{{ principal = "{ROLE_A}" }}]

[[tenants]]
key = "globex"
entra_tenant_id = "{}"
cloud = "gcc-high"
credentials_secret = "lr/globex"
senders = [{{ principal = "{ROLE_B}" }}]
playbooks = ["triage"]
library_sync = "verify"
limits = {{ submissions_per_minute = 5, gets_per_hour = 900 }}
"#,
        GLOBEX.to_uppercase()
    )
}

#[test]
fn a_tenant_registry_gives_each_tenant_its_cloud_credentials_senders_and_limits() {
    let r = registry(&two_tenants()).unwrap();
    assert_eq!(r.tenants().len(), 2);
    let acme = r.get(&TenantKey::parse("acme").unwrap()).unwrap();
    assert_eq!(
        acme.credentials_secret_id, "lr/multi-tenant-app",
        "the shared app's secret"
    );
    assert_eq!(
        acme.limits,
        Limits::default(),
        "Defender's documented limits"
    );
    assert_eq!(acme.playbooks, None, "every playbook");
    assert_eq!(acme.library_sync, None, "the deployment's sync");
    assert!(acme.cloud.api_base.contains("securitycenter.microsoft.com"));
    assert_eq!(
        acme.senders,
        BTreeSet::from([Sender::Principal(ROLE_A.into())])
    );

    let globex = r
        .by_entra_id(&EntraTenantId::parse(GLOBEX).unwrap())
        .expect("found by its Entra id, written in upper case in the file");
    assert_eq!(globex.key.as_str(), "globex");
    assert_eq!(globex.credentials_secret_id, "lr/globex");
    assert!(
        globex.cloud.login_base.ends_with(".us"),
        "{:?}",
        globex.cloud
    );
    assert_eq!(
        globex.playbooks,
        Some(BTreeSet::from(["triage".to_string()]))
    );
    assert_eq!(globex.library_sync, Some(SyncMode::Verify));
    assert_eq!(
        globex.limits,
        Limits {
            submissions_per_minute: 5,
            gets_per_hour: 900,
            ..Limits::default()
        }
    );
}

/// A deployment that served one tenant names it `legacy_tenant` when it starts reading a
/// registry: runs whose id names no tenant are that tenant's.
#[test]
fn a_legacy_tenant_owns_the_runs_from_before_the_tenant_registry() {
    let r = registry(&two_tenants()).unwrap();
    assert!(r.legacy().is_none());
    let r = registry(&format!("legacy_tenant = \"globex\"\n{}", two_tenants())).unwrap();
    assert_eq!(r.legacy().unwrap().key.as_str(), "globex");
    // The functions that load no playbooks read the registry without checking playbook names.
    let named_other = two_tenants().replace("[\"triage\"]", "[\"wipe-disk\"]");
    assert!(registry(&named_other).is_err());
    assert!(Registry::from_toml(&named_other, None).is_ok());
}

#[test]
fn a_tenant_registry_with_a_geo_api_host_uses_it() {
    let r = registry(&format!(
        r#"[[tenants]]
key = "eu1"
entra_tenant_id = "{ACME}"
api_base = "https://eu.api.security.microsoft.com"
credentials_secret = "lr/eu1"
senders = [{{ principal = "{ROLE_A}" }}]
"#
    ))
    .unwrap();
    assert_eq!(
        r.tenants()[0].cloud.api_base,
        "https://eu.api.security.microsoft.com"
    );
}

/// Each mistake stops the start with the entry and the field named.
#[test]
fn an_invalid_tenant_registry_names_the_entry_and_the_field() {
    let base = two_tenants();
    let cases: Vec<(String, &str, &str, &str)> = vec![
        ("this is not toml".into(), "the file", "(syntax)", ""),
        ("".into(), "the file", "tenants", "no tenant"),
        (
            base.replace("key = \"acme\"", "key = \"Acme Corp\""),
            "tenant #1",
            "key",
            "lower-case",
        ),
        (
            base.replace("key = \"acme\"\n", ""),
            "tenant #1",
            "key",
            "missing",
        ),
        (
            base.replace("key = \"globex\"", "key = \"acme\""),
            "tenant \"acme\"",
            "key",
            "twice",
        ),
        (
            base.replace(ACME, "not-a-guid"),
            "tenant \"acme\"",
            "entra_tenant_id",
            "GUID",
        ),
        (
            base.replace(&GLOBEX.to_uppercase(), ACME),
            "tenant \"globex\"",
            "entra_tenant_id",
            "one entry per Entra tenant",
        ),
        (
            base.replace("gcc-high", "mars"),
            "tenant \"globex\"",
            "cloud",
            "not one of",
        ),
        (
            base.replace("credentials_secret = \"lr/multi-tenant-app\"\n", ""),
            "tenant \"acme\"",
            "credentials_secret",
            "missing",
        ),
        (
            base.replace(ROLE_A, "arn:aws:iam::111122223333:role/x"),
            "tenant \"acme\"",
            "senders",
            "unique id",
        ),
        (
            base.replace(
                &format!("senders = [{{ principal = \"{ROLE_A}\" }}]"),
                "senders = []",
            ),
            "tenant \"acme\"",
            "senders",
            "empty",
        ),
        (
            base.replace("[\"triage\"]", "[\"wipe-disk\"]"),
            "tenant \"globex\"",
            "playbooks",
            "wipe-disk",
        ),
        (
            base.replace("\"verify\"", "\"sometimes\""),
            "tenant \"globex\"",
            "library_sync",
            "sometimes",
        ),
        (
            base.replace("gets_per_hour = 900", "gets_per_hour = 0"),
            "tenant \"globex\"",
            "limits.gets_per_hour",
            "between",
        ),
        (
            base.replace("gets_per_hour = 900", "gets_per_our = 900"),
            "the file",
            "(syntax)",
            "gets_per_our",
        ),
        (
            format!("legacy_tenant = \"initech\"\n{base}"),
            "the file",
            "legacy_tenant",
            "initech",
        ),
        (
            base.replace("library_sync", "libary_sync"),
            "the file",
            "(syntax)",
            "libary_sync",
        ),
    ];
    for (text, entry, field, says) in cases {
        let e = registry(&text).expect_err(&text);
        assert_eq!((e.entry.as_str(), e.field.as_str()), (entry, field), "{e}");
        assert!(e.to_string().contains(says), "{e} should say {says:?}");
    }
}

#[test]
fn a_tenant_key_is_safe_in_s3_keys_and_metric_dimensions() {
    for good in ["acme", "a", "globex-eu-2", &"a".repeat(32)] {
        assert!(TenantKey::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "-acme",
        "acme-",
        "a--b",
        "1acme",
        "Acme",
        "ac/me",
        "../x",
        "ac me",
        "acme\u{202e}",
        &"a".repeat(33),
    ] {
        assert!(TenantKey::parse(bad).is_err(), "{bad:?}");
    }
}

/// The whole check intake makes: tenant and sender, then the playbook.
fn admit<'r>(
    r: &'r Registry,
    claim: Option<&Claim>,
    sender: Option<&str>,
    playbook: &str,
) -> Result<&'r Tenant, Refusal> {
    let t = resolve(r, claim, sender)?;
    t.may_run(playbook)?;
    Ok(t)
}

fn claim_key(k: &str) -> Claim {
    Claim::Key(TenantKey::parse(k).unwrap())
}

/// A provider's own forwarder may be every customer's sender: each alert still goes to the tenant
/// it names, and a tenant that does not name the forwarder refuses it.
#[test]
fn a_sender_named_by_two_tenants_starts_runs_in_each_and_no_third() {
    let text = two_tenants().replace(ROLE_B, ROLE_A);
    let r = registry(&text).unwrap();
    assert_eq!(
        admit(&r, Some(&claim_key("acme")), Some(ROLE_A), "triage")
            .unwrap()
            .key
            .as_str(),
        "acme"
    );
    assert_eq!(
        admit(&r, Some(&claim_key("globex")), Some(ROLE_A), "triage")
            .unwrap()
            .key
            .as_str(),
        "globex"
    );
    assert!(matches!(
        admit(&r, Some(&claim_key("globex")), Some(ROLE_B), "triage"),
        Err(Refusal::SenderNotAllowed { .. })
    ));
}

/// A sender bound to one tenant cannot start a run on another's devices, whatever its alert says.
#[test]
fn a_tenant_accepts_only_its_own_senders_and_playbooks() {
    let r = registry(&two_tenants()).unwrap();
    let session = |role: &str| format!("{role}:alerts-forwarder");
    // Acme's sender, for acme: yes (the session name after ':' does not matter).
    let t = admit(
        &r,
        Some(&claim_key("acme")),
        Some(&session(ROLE_A)),
        "triage",
    )
    .unwrap();
    assert_eq!(t.key.as_str(), "acme");
    // Globex by its Entra id, from globex's role.
    let globex = Claim::Entra(EntraTenantId::parse(GLOBEX).unwrap());
    assert_eq!(
        admit(&r, Some(&globex), Some(ROLE_B), "triage")
            .unwrap()
            .key
            .as_str(),
        "globex"
    );
    // Acme's sender naming globex: refused, naming both.
    let e = admit(&r, Some(&globex), Some(&session(ROLE_A)), "triage").unwrap_err();
    assert!(
        matches!(e, Refusal::SenderNotAllowed { ref tenant, .. } if tenant.as_str() == "globex"),
        "{e}"
    );
    assert!(e.to_string().contains(ROLE_A), "{e}");
    // No sender reported: refused.
    assert!(matches!(
        admit(&r, Some(&claim_key("acme")), None, "triage"),
        Err(Refusal::SenderNotAllowed { .. })
    ));
    // A sender whose id only starts like acme's: refused.
    let longer = format!("{ROLE_A}X:s");
    assert!(admit(&r, Some(&claim_key("acme")), Some(&longer), "triage").is_err());
    // Globex may run triage only.
    assert_eq!(
        admit(&r, Some(&globex), Some(ROLE_B), "malware-file").unwrap_err(),
        Refusal::PlaybookNotAllowed {
            tenant: TenantKey::parse("globex").unwrap(),
            playbook: "malware-file".into()
        }
    );
}

#[test]
fn an_alert_for_no_tenant_or_an_unknown_tenant_is_refused() {
    let r = registry(&two_tenants()).unwrap();
    assert_eq!(
        admit(&r, None, Some(ROLE_A), "triage").unwrap_err(),
        Refusal::NoTenant
    );
    let e = admit(&r, Some(&claim_key("initech")), Some(ROLE_A), "triage").unwrap_err();
    assert!(matches!(e, Refusal::UnknownTenant(_)), "{e}");
    assert!(e.to_string().contains("initech"), "{e}");
    let stranger =
        Claim::Entra(EntraTenantId::parse("00000000-0000-0000-0000-0000000000ff").unwrap());
    assert!(matches!(
        admit(&r, Some(&stranger), Some(ROLE_A), "triage"),
        Err(Refusal::UnknownTenant(_))
    ));
}

/// Defender's documented limits have one home: the deployment's `BUDGET_*` settings (a deployment
/// without a registry, one tenant) default to them and take the registry's ranges.
#[test]
fn a_single_tenant_budget_defaults_to_the_registry_limits() {
    use crate::budget::BudgetConfig;
    use std::collections::HashMap;
    let b = BudgetConfig::from_env(&HashMap::<&str, &str>::new()).unwrap();
    let d = Limits::default();
    assert_eq!(
        (
            b.submissions_per_minute,
            b.running_sessions,
            b.gets_per_minute,
            b.gets_per_hour
        ),
        (
            d.submissions_per_minute,
            d.running_sessions,
            d.gets_per_minute,
            d.gets_per_hour
        )
    );
    let too_many = (Limits::MAX.gets_per_hour + 1).to_string();
    let env = HashMap::from([("BUDGET_GETS_PER_HOUR", too_many.as_str())]);
    assert!(BudgetConfig::from_env(&env).is_err());
    let registry_says = two_tenants().replace(
        "gets_per_hour = 900",
        &format!("gets_per_hour = {too_many}"),
    );
    let e = registry(&registry_says).unwrap_err();
    assert_eq!(e.field, "limits.gets_per_hour", "{e}");
}

/// Poll's read-only app is per tenant, or one for all, or none (poll then uses the tenant's own).
#[test]
fn a_tenant_poll_secret_is_its_own_or_the_shared_one_or_none() {
    let r = registry(&two_tenants()).unwrap();
    assert!(
        r.tenants()
            .iter()
            .all(|t| t.poll_credentials_secret_id.is_none())
    );
    let shared = format!("poll_credentials_secret = \"lr/reader\"\n{}", two_tenants());
    // Globex has an app of its own (another cloud): the shared reader is not its.
    let r = registry(&shared).unwrap();
    let globex = r.get(&TenantKey::parse("globex").unwrap()).unwrap();
    assert_eq!(globex.poll_credentials_secret_id, None);
    let text = shared.replace(
        "credentials_secret = \"lr/globex\"",
        "credentials_secret = \"lr/globex\"\npoll_credentials_secret = \"lr/globex-reader\"",
    );
    let r = registry(&text).unwrap();
    let poll = |k: &str| {
        r.get(&TenantKey::parse(k).unwrap())
            .unwrap()
            .poll_credentials_secret_id
            .clone()
    };
    assert_eq!(poll("acme").as_deref(), Some("lr/reader"));
    assert_eq!(poll("globex").as_deref(), Some("lr/globex-reader"));
    let e = registry(&text.replace("\"lr/globex-reader\"", "\" \"")).unwrap_err();
    assert_eq!(e.field, "poll_credentials_secret");
}
