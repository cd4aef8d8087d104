//! Many Defender tenants from one deployment, end to end on moto and one simulated Defender host
//! serving three tenants (each with its own app, devices, actions, library and limits; a token
//! reaches only its own tenant's): every run reaches its own tenant's Defender with its tenant's
//! token, under its tenant's limits, and lands under its tenant's prefix; alerts a tenant's
//! senders or playbooks do not allow are refused with their reason and kept.

use mde_sim::{Client, Device, DeviceFile, Limits, SimConfig, SimServer};
use shared::store::RunOutcome;
use testkit::alerts::tenant_run_id;
use testkit::content::expected_sha256;
use testkit::sim::machine;
use testkit::stack::Stack;
use testkit::tenants;

const FILE: &str = "C:\\Users\\alice\\Downloads\\invoice.pdf.exe";
/// The machine ids every tenant's fleet has (Defender ids are per tenant in our tests on purpose:
/// the same device id in two tenants must still reach the right one).
const FLEET: u64 = 0x7e0000;

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

fn fleet(rig: &TenantRig) -> SimConfig {
    SimConfig {
        clients: vec![tenants::client(rig.key, rig.entra)],
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

fn tenant_alert_of(tenant: Option<&str>, alert_id: &str, machine: &str, category: &str) -> String {
    tenants::alert(tenant, alert_id, machine, FILE, category)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_tenants_each_run_on_their_own_defender_within_their_own_limits_under_their_own_prefix()
 {
    // One Defender host serving the three tenants, as Defender's API host serves every tenant:
    // a run that asked with another tenant's token would find no such device or action.
    let configs: Vec<SimConfig> = RIGS
        .iter()
        .map(|rig| {
            let mut config = fleet(rig);
            config.sim.time_scale = 20.0;
            config
        })
        .collect();
    let defender = SimServer::start_tenants(configs.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the simulator starts");
    let mut stack = Stack::provisioned(configs[0].clone(), &[]).await;
    // A secret and a registry entry per tenant (initech may run malware-file only), and a fourth
    // tenant whose only sender is another principal.
    let mut text = String::new();
    for (i, rig) in RIGS.iter().enumerate() {
        let sim = &defender;
        let secret =
            tenants::secret(&stack.sdk, rig.key, &tenants::client(rig.key, rig.entra)).await;
        let mut extra = format!(
            "limits = {{ submissions_per_minute = {} }}\n",
            rig.submissions_per_minute
        );
        if rig.key == "initech" {
            extra.push_str("playbooks = [\"malware-file\"]\n");
        }
        text.push_str(&tenants::entry(rig.key, rig.entra, sim, &secret, &extra));
        if i == 0 {
            text.push_str(
                &tenants::entry(
                    "umbrella",
                    "d4d4d4d4-0000-4000-8000-000000000004",
                    sim,
                    &secret,
                    "",
                )
                .replace(tenants::MOTO_SENDER, "AROAUMBRELLAFORWARDER1"),
            );
        }
    }
    tenants::deploy_registry(&mut stack, &text).await;
    stack.start_pipeline().await;

    // Every tenant's alerts at once, acme's three times its submission limit; the same alert ids
    // and device ids in every tenant.
    let mut runs = Vec::new();
    for rig in &RIGS {
        for i in 0..rig.alerts {
            let m = machine(FLEET, i);
            let id = format!("shared-{i}");
            stack
                .send_alert(&tenant_alert_of(Some(rig.key), &id, &m, "Malware"))
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
            tenant_alert_of(Some("umbrella"), "r-1", &m0, "Malware"),
            "sender_not_allowed",
        ),
        (
            tenant_alert_of(Some("hooli"), "r-2", &m0, "Malware"),
            "unknown_tenant",
        ),
        (tenant_alert_of(None, "r-3", &m0, "Malware"), "no_tenant"),
        (
            tenant_alert_of(Some("initech"), "r-4", &m0, "UnwantedSoftware"),
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
        let stats = defender.tenant(i).expect("a tenant").stats();
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
        .send_alert(&tenant_alert_of(None, "before-1", &m0, "Malware"))
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
        "legacy_tenant = \"acme\"\n{}",
        tenants::entry("acme", rig.entra, &stack.sim, &secret, "")
    );
    tenants::deploy_registry(&mut stack, &text).await;
    stack.start_pipeline().await;
    let m1 = machine(FLEET, 1);
    stack
        .send_alert(&tenant_alert_of(Some("acme"), "after-1", &m1, "Malware"))
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
senders = [{{ principal = "{}" }}]
limits = {{ gets_per_hour = 0 }}
"#,
        RIGS[0].entra,
        tenants::MOTO_SENDER
    );
    let dlq = stack.stack.dlq_urls["alerts"].clone();
    stack.env.insert("DEAD_LETTER_QUEUE_URL".into(), dlq);
    tenants::deploy_registry(&mut stack, &bad).await;
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
    tenants::deploy_registry(&mut stack, &good).await;
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

/// A tenant's stage messages go to SQS with the tenant as their `MessageGroupId` (on a standard
/// queue, an SQS fair queue: a quiet tenant's messages are delivered ahead of another tenant's
/// backlog); a single-tenant run's go without one, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_stage_message_carries_its_tenant_as_the_fair_queue_group() {
    use aws_sdk_sqs::types::MessageSystemAttributeName;
    use shared::messages::{MESSAGE_VERSION, SubmitJob, encode};
    use shared::ports::Queue;
    let sdk = testkit::aws::aws().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = sqs
        .create_queue()
        .queue_name(testkit::aws::unique("fair"))
        .send()
        .await
        .expect("a queue")
        .queue_url
        .expect("its URL");
    let queue = shared::adapters::sqs::SqsQueue::new(sqs.clone());
    let m = machine(FLEET, 0);
    for run in [
        tenant_run_id("acme", "native", "fair-1", &m, "malware-file"),
        testkit::alerts::run_id("native", "fair-1", &m, "malware-file"),
    ] {
        let job = SubmitJob {
            v: MESSAGE_VERSION,
            run_id: run,
            attempt: 0,
            prev: None,
        };
        queue
            .send(&url, &encode(&job), std::time::Duration::ZERO)
            .await
            .expect("sent");
    }
    let mut groups = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let out = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        for m in out.messages() {
            let run = shared::messages::run_of(m.body().unwrap_or_default()).expect("a job");
            let group = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned();
            groups.insert(run.to_string(), group);
        }
        if groups.len() == 2 {
            break;
        }
    }
    assert_eq!(groups.len(), 2, "{groups:?}");
    for (run, group) in groups {
        let expected = run.split_once('.').map(|(t, _)| t.to_string());
        assert_eq!(group, expected, "{run}");
    }
}
