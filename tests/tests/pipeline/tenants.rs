//! Many Defender tenants from one deployment, end to end on moto and three simulators (one per
//! tenant, each knowing only its own tenant's app): every run reaches its own tenant's Defender
//! with its tenant's token, under its tenant's limits, and lands under its tenant's prefix; alerts
//! a tenant's senders or playbooks do not allow are refused with their reason and kept.

use std::collections::BTreeMap;

use mde_sim::{Client, Device, DeviceFile, Limits, SimConfig, SimServer};
use shared::store::RunOutcome;
use testkit::alerts::tenant_run_id;
use testkit::aws::unique;
use testkit::content::expected_sha256;
use testkit::sim::{machine, start_sim};
use testkit::stack::{Stack, file_alert};

const FILE: &str = "C:\\Users\\alice\\Downloads\\invoice.pdf.exe";
/// The machine ids every tenant's fleet has (Defender ids are per tenant in our tests on purpose:
/// the same device id in two tenants must still reach the right one).
const FLEET: u64 = 0x7e0000;
/// The sender moto reports for every message (its stand-in for the caller's unique id).
const MOTO_SENDER: &str = "AIDAIT2UOQQY3AUEKVGXU";

struct TenantRig {
    key: &'static str,
    entra: &'static str,
    /// The size of each device's file in this tenant (so a run collected from another tenant's
    /// Defender has other bytes).
    size: u64,
    alerts: usize,
    submissions_per_minute: u32,
}

const RIGS: [TenantRig; 3] = [
    TenantRig {
        key: "acme",
        entra: "a1a1a1a1-0000-4000-8000-000000000001",
        size: 30_000,
        alerts: 6,
        submissions_per_minute: 2,
    },
    TenantRig {
        key: "globex",
        entra: "b2b2b2b2-0000-4000-8000-000000000002",
        size: 40_000,
        alerts: 3,
        submissions_per_minute: 10,
    },
    TenantRig {
        key: "initech",
        entra: "c3c3c3c3-0000-4000-8000-000000000003",
        size: 50_000,
        alerts: 3,
        submissions_per_minute: 10,
    },
];

fn client(rig: &TenantRig) -> Client {
    Client {
        tenant_id: rig.entra.into(),
        client_id: format!("app-of-{}", rig.key),
        client_secret: format!("secret-of-{}", rig.key),
        requestor: format!("lr-{}", rig.key),
        ..Client::default()
    }
}

fn fleet(rig: &TenantRig) -> SimConfig {
    SimConfig {
        clients: vec![client(rig)],
        devices: (0..rig.alerts)
            .map(|i| Device {
                machine_id: machine(FLEET, i),
                dns_name: format!("{}-{i}.corp", rig.key),
                command_secs: 10,
                files: vec![DeviceFile {
                    path: FILE.into(),
                    size: rig.size + i as u64,
                    secs: None,
                }],
                ..Device::default()
            })
            .collect(),
        limits: Limits {
            submissions_per_minute: rig.submissions_per_minute,
            ..Limits::default()
        },
        ..SimConfig::default()
    }
}

fn credentials(rig: &TenantRig) -> String {
    let c = client(rig);
    // The secret's tenant_id is the app's home tenant; the registry's entra_tenant_id is where
    // the token is asked for.
    serde_json::json!({"tenant_id": "00000000-0000-4000-8000-00000000ffff", "client_id": c.client_id, "client_secret": c.client_secret})
        .to_string()
}

/// The registry: the three tenants, each on its own simulator with its own secret (initech may run
/// malware-file only); a fourth whose only sender is another principal.
fn registry(secrets: &BTreeMap<&str, String>, sims: &BTreeMap<&str, (String, String)>) -> String {
    let mut text = String::new();
    for rig in &RIGS {
        let (api, login) = &sims[rig.key];
        text.push_str(&format!(
            r#"
[[tenants]]
key = "{key}"
entra_tenant_id = "{entra}"
api_base = "{api}"
login_base = "{login}"
credentials_secret = "{secret}"
senders = [{{ principal = "{MOTO_SENDER}" }}]
limits = {{ submissions_per_minute = {spm} }}
"#,
            key = rig.key,
            entra = rig.entra,
            api = api,
            login = login,
            secret = secrets[rig.key],
            spm = rig.submissions_per_minute,
        ));
        if rig.key == "initech" {
            text.push_str("playbooks = [\"malware-file\"]\n");
        }
    }
    let (acme_api, acme_login) = &sims["acme"];
    text.push_str(&format!(
        r#"
[[tenants]]
key = "umbrella"
entra_tenant_id = "d4d4d4d4-0000-4000-8000-000000000004"
api_base = "{}"
login_base = "{}"
credentials_secret = "{}"
senders = [{{ principal = "AROAUMBRELLAFORWARDER1" }}]
"#,
        acme_api, acme_login, secrets["acme"]
    ));
    text
}

fn tenant_alert(tenant: Option<&str>, alert_id: &str, machine: &str, category: &str) -> String {
    let mut a = file_alert(alert_id, machine, FILE);
    a["category"] = category.into();
    if let Some(t) = tenant {
        a["tenant"] = t.into();
    }
    a.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_tenants_each_run_on_their_own_defender_within_their_own_limits_under_their_own_prefix()
 {
    let mut sims: Vec<SimServer> = Vec::new();
    let mut acme_config = fleet(&RIGS[0]);
    acme_config.sim.time_scale = 20.0;
    let mut stack = Stack::provisioned(acme_config, &[]).await;
    for rig in &RIGS[1..] {
        let mut config = fleet(rig);
        config.sim.time_scale = 20.0;
        sims.push(start_sim(config).await);
    }
    let by_tenant: BTreeMap<&str, (String, String)> = std::iter::once(&stack.sim)
        .chain(sims.iter())
        .zip(RIGS.iter())
        .map(|(sim, rig)| (rig.key, (sim.api_base.clone(), sim.login_base.clone())))
        .collect();
    // A secret per tenant.
    let sm = aws_sdk_secretsmanager::Client::new(&stack.sdk);
    let mut secrets = BTreeMap::new();
    for rig in &RIGS {
        let name = unique(&format!("lr-{}", rig.key));
        sm.create_secret()
            .name(&name)
            .secret_string(credentials(rig))
            .send()
            .await
            .expect("a tenant's secret");
        secrets.insert(rig.key, name);
    }
    let text = registry(&secrets, &by_tenant);
    let key = "config/tenants.toml";
    stack
        .s3
        .put_object()
        .bucket(&stack.stack.bucket)
        .key(key)
        .body(text.clone().into_bytes().into())
        .send()
        .await
        .expect("the registry in S3");
    stack.env.insert(
        "TENANTS_S3_URI".into(),
        format!("s3://{}/{key}", stack.stack.bucket),
    );
    stack.env.insert(
        "TENANTS_SHA256".into(),
        testkit::content::sha256_hex(text.as_bytes()),
    );
    stack.start_pipeline().await;

    // Every tenant's alerts at once, acme's three times its submission limit; the same alert ids
    // and device ids in every tenant.
    let mut runs = Vec::new();
    for rig in &RIGS {
        for i in 0..rig.alerts {
            let m = machine(FLEET, i);
            let id = format!("shared-{i}");
            stack
                .send_alert(&tenant_alert(Some(rig.key), &id, &m, "Malware"))
                .await;
            runs.push((
                rig,
                i,
                tenant_run_id(rig.key, "native", &id, &m, "malware-file"),
            ));
        }
    }
    // Refused: a tenant whose senders do not include this one; a tenant nobody registered; no
    // tenant at all; a playbook initech may not run.
    let m0 = machine(FLEET, 0);
    let refused = [
        (
            tenant_alert(Some("umbrella"), "r-1", &m0, "Malware"),
            "sender_not_allowed",
        ),
        (
            tenant_alert(Some("hooli"), "r-2", &m0, "Malware"),
            "unknown_tenant",
        ),
        (tenant_alert(None, "r-3", &m0, "Malware"), "no_tenant"),
        (
            tenant_alert(Some("initech"), "r-4", &m0, "UnwantedSoftware"),
            "playbook_not_allowed",
        ),
    ];
    for (body, _) in &refused {
        stack.send_alert(body).await;
    }

    for (rig, i, run) in &runs {
        assert!(run.as_str().starts_with(&format!("{}.", rig.key)));
        let m = stack.manifest(run, 240).await;
        assert_eq!(m.outcome, Some(RunOutcome::Succeeded), "{} #{i}", rig.key);
        assert_eq!(m.tenant.as_ref().map(|t| t.as_str()), Some(rig.key));
        for c in m.commands.iter().filter_map(|c| c.s3_key.as_deref()) {
            assert!(
                c.starts_with(&format!("evidence/{}.", rig.key)),
                "{c}: under the tenant's prefix"
            );
        }
        // The file from this tenant's device (its own size): the run reached its own Defender.
        let getfile = m
            .commands
            .iter()
            .find(|c| c.sha256_decompressed.is_some())
            .expect("the GetFile command");
        assert_eq!(
            getfile.sha256_decompressed.as_deref(),
            Some(expected_sha256(&machine(FLEET, *i), FILE, rig.size + *i as u64).as_str()),
            "{} #{i}: its own tenant's file",
            rig.key
        );
    }
    for (i, rig) in RIGS.iter().enumerate() {
        let stats = match i {
            0 => stack.sim.stats(),
            _ => sims[i - 1].stats(),
        };
        println!(
            "tenant {}: {} actions, most submissions in a sliding minute {} (limit {}), 429s {}",
            rig.key,
            stats.actions_created,
            stats.max_submissions_per_minute,
            rig.submissions_per_minute,
            stats.throttled
        );
        assert_eq!(stats.actions_created, rig.alerts as u64, "{}", rig.key);
        assert!(
            stats.max_submissions_per_minute <= rig.submissions_per_minute,
            "{}: {stats:?}",
            rig.key
        );
        assert_eq!(stats.throttled, 0, "{}: no 429: {stats:?}", rig.key);
        // Each tenant's budget is its own object.
        let budget = format!("state/budget/tenants/{}.json", rig.key);
        assert!(stack.object(&budget).await.is_some(), "{budget}");
    }
    assert!(
        stack
            .object(shared::store::keys::BUDGET_KEY)
            .await
            .is_none(),
        "no single-tenant budget in a registry's deployment"
    );

    let dead = stack.await_dead_letters("alerts", refused.len()).await;
    assert_eq!(dead.len(), refused.len(), "{dead:?}");
    for (body, code) in &refused {
        let (_, attrs) = dead
            .iter()
            .find(|(b, _)| b == body)
            .unwrap_or_else(|| panic!("{code}: the refused alert is kept whole"));
        assert_eq!(attrs.get("lr-reject-code").map(String::as_str), Some(*code));
        assert!(
            attrs.get("lr-reject-reason").is_some_and(|r| !r.is_empty()),
            "{attrs:?}"
        );
    }
    stack.stop().await;
}

/// Puts `text` in the stack's bucket and points the functions at it, pinned.
async fn deploy_registry(stack: &mut Stack, text: &str) {
    let key = format!("config/{}.toml", unique("tenants"));
    stack
        .s3
        .put_object()
        .bucket(&stack.stack.bucket)
        .key(&key)
        .body(text.as_bytes().to_vec().into())
        .send()
        .await
        .expect("the registry in S3");
    stack.env.insert(
        "TENANTS_S3_URI".into(),
        format!("s3://{}/{key}", stack.stack.bucket),
    );
    stack.env.insert(
        "TENANTS_SHA256".into(),
        testkit::content::sha256_hex(text.as_bytes()),
    );
}

/// A deployment that served one tenant starts reading a registry while a run is in flight: the
/// run finishes under its old keys with the tenant's credentials, new runs get the tenant's
/// prefix, and both count against one budget (the legacy tenant keeps the single-tenant one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_tenant_run_in_flight_finishes_after_the_upgrade_to_a_tenant_registry() {
    let rig = TenantRig {
        key: "acme",
        entra: "00000000-0000-0000-0000-000000000001",
        size: 60_000,
        alerts: 2,
        submissions_per_minute: 10,
    };
    let mut config = fleet(&rig);
    config.clients = vec![Client::default()];
    for d in &mut config.devices {
        d.command_secs = 120; // six seconds at 20x: long enough to upgrade under it
    }
    let mut stack = Stack::start(config, &[]).await;
    let m0 = machine(FLEET, 0);
    stack
        .send_alert(&tenant_alert(None, "before-1", &m0, "Malware"))
        .await;
    let old = testkit::alerts::run_id("native", "before-1", &m0, "malware-file");
    // Wait until Defender has the action, then stop the stages mid-run.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let record = stack.object(&shared::store::run_key(&old)).await;
        let submitted = record
            .and_then(|b| serde_json::from_slice::<shared::store::RunRecord>(&b).ok())
            .is_some_and(|r| r.action_id.is_some());
        if submitted {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the run was never submitted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if let Some(p) = stack.pipeline.take() {
        p.kill();
    }
    let secret = stack.env["MDE_CREDENTIALS_SECRET_ID"].clone();
    let text = format!(
        r#"legacy_tenant = "acme"

[[tenants]]
key = "acme"
entra_tenant_id = "{}"
api_base = "{}"
login_base = "{}"
credentials_secret = "{secret}"
senders = [{{ principal = "{MOTO_SENDER}" }}]
"#,
        rig.entra, stack.sim.api_base, stack.sim.login_base
    );
    deploy_registry(&mut stack, &text).await;
    stack.start_pipeline().await;
    let m1 = machine(FLEET, 1);
    stack
        .send_alert(&tenant_alert(Some("acme"), "after-1", &m1, "Malware"))
        .await;
    let new = tenant_run_id("acme", "native", "after-1", &m1, "malware-file");

    for (run, prefix, i) in [
        (&old, format!("evidence/{old}/"), 0u64),
        (&new, "evidence/acme.".into(), 1),
    ] {
        let m = stack.manifest(run, 180).await;
        assert_eq!(
            m.outcome,
            Some(RunOutcome::Succeeded),
            "{run}: {:?}",
            m.reason
        );
        let getfile = m
            .commands
            .iter()
            .find(|c| c.sha256_decompressed.is_some())
            .expect("the GetFile command");
        assert!(
            getfile
                .s3_key
                .as_deref()
                .is_some_and(|k| k.starts_with(&prefix)),
            "{run}: {:?} under {prefix}",
            getfile.s3_key
        );
        assert_eq!(
            getfile.sha256_decompressed.as_deref(),
            Some(expected_sha256(&machine(FLEET, i as usize), FILE, rig.size + i).as_str())
        );
    }
    assert_eq!(
        stack.sim.stats().actions_created,
        2,
        "the old run was not submitted again"
    );
    assert!(
        stack
            .object(shared::store::keys::BUDGET_KEY)
            .await
            .is_some()
    );
    assert!(
        stack
            .object("state/budget/tenants/acme.json")
            .await
            .is_none(),
        "the legacy tenant keeps the single-tenant budget: one budget per Defender tenant"
    );
    stack.stop().await;
}

/// A registry that is not the pinned one, or that names something invalid, stops every
/// function's start with a message naming the variable, or the entry and the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_or_unpinned_tenant_registry_stops_the_start_naming_what_is_wrong() {
    use shared::entry::{Function, Intake, Poll};
    let mut stack = Stack::provisioned(fleet(&RIGS[0]), &[]).await;
    let bad = format!(
        r#"
[[tenants]]
key = "acme"
entra_tenant_id = "{}"
credentials_secret = "lr/acme"
senders = [{{ principal = "{MOTO_SENDER}" }}]
limits = {{ gets_per_hour = 0 }}
"#,
        RIGS[0].entra
    );
    let dlq = stack.stack.dlq_urls["alerts"].clone();
    stack.env.insert("DEAD_LETTER_QUEUE_URL".into(), dlq);
    deploy_registry(&mut stack, &bad).await;
    let env = stack.env.clone();
    for e in [
        Intake::build(&env, &stack.sdk)
            .await
            .err()
            .map(|e| e.to_string()),
        Poll::build(&env, &stack.sdk)
            .await
            .err()
            .map(|e| e.to_string()),
    ] {
        let e = e.expect("the start is refused");
        assert!(
            e.contains("tenant \"acme\"") && e.contains("limits.gets_per_hour"),
            "{e}"
        );
    }
    let good = bad.replace("gets_per_hour = 0", "gets_per_hour = 900");
    deploy_registry(&mut stack, &good).await;
    let mut env = stack.env.clone();
    env.insert(
        "TENANTS_SHA256".into(),
        testkit::content::sha256_hex(b"another file"),
    );
    let e = Intake::build(&env, &stack.sdk)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("TENANTS_SHA256") && e.contains("nobody deployed"),
        "{e}"
    );
    assert!(Intake::build(&stack.env, &stack.sdk).await.is_ok());
}
