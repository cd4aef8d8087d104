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
