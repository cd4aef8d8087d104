//! A seeded fault soak: three alerts per device and 20 hostile ones (some for offline devices or
//! missing files) while
//! Defender throttles, fails, cuts downloads and expires links early, and the stages are killed and
//! restarted. Every alert must end accounted for — evidence with verified hashes, a recorded failure
//! with its reason, or a dead-letter message with its reason — with no live response run twice, and
//! nothing secret in the logs captured throughout.
//!
//! CI-sized: 20 devices (80 alerts, about 2.5 minutes); `LR_SOAK_DEVICES=60` is the full soak of
//! 200 alerts (about 7 minutes).

use std::collections::BTreeMap;

use mde_sim::{Device, DeviceFile, Faults, Script, SimConfig};
use shared::store::{CommandOutcome, RunOutcome};
use testkit::alerts::corpus;
use testkit::logs::LogCapture;
use testkit::sim::{flaky, machine};
use testkit::stack::Stack;

const PATH: &str = "C:\\Users\\alice\\Downloads\\invoice.pdf.exe";
/// This file's fleet of machine ids ([`machine`]).
const FLEET: u64 = 0x50a0000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_under_faults_and_kills_are_all_accounted_for() {
    let capture = LogCapture::default();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_writer(capture.clone())
        .init();

    let n: usize = std::env::var("LR_SOAK_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!("soak over {n} devices (LR_SOAK_DEVICES)");
    // Most devices online with a file, every tenth offline for good, every seventh without the file.
    let devices: Vec<Device> = (0..n)
        .map(|i| Device {
            machine_id: machine(FLEET, i),
            dns_name: format!("soak-{i}"),
            online: i % 10 != 9,
            command_secs: 10,
            files: if i % 7 == 6 {
                vec![]
            } else {
                vec![DeviceFile {
                    path: PATH.into(),
                    size: 256 * 1024 + i as u64,
                    secs: None,
                }]
            },
            ..Device::default()
        })
        .collect();
    let mut faults = Faults {
        seed: 2026,
        not_found_after_create_secs: 2,
        download_cut_probability: 0.2,
        download_cut_after_bytes: 100_000,
        link_early_expiry_probability: 0.1,
        link_early_expiry_secs: 10,
        ..Faults::default()
    };
    for (name, f) in [
        ("submit", flaky(0.1, 0.05, 0.05)),
        ("get_action", flaky(0.1, 0.05, 0.0)),
        ("link", flaky(0.1, 0.05, 0.0)),
        ("list_actions", flaky(0.05, 0.05, 0.0)),
        ("token", flaky(0.0, 0.05, 0.0)),
    ] {
        faults.endpoints.insert(name.into(), f);
    }
    let mut config = SimConfig {
        devices,
        scripts: vec![Script {
            name: "triage.ps1".into(),
            output: "triage {args}".into(),
            ..Script::default()
        }],
        faults,
        ..SimConfig::default()
    };
    config.sim.queue_window_secs = 200; // offline sessions end TimeOut after 10 real seconds
    config.clients[0].client_secret = "soak-Secret-value-0f9e8d".into();
    let mut stack = Stack::start(config, &[]).await;

    // Three good alerts per device (so devices are busy), 20 hostile ones.
    let hostile: Vec<(String, String, String)> = corpus()
        .into_iter()
        .filter(|(_, b, _)| b.len() < 200 * 1024)
        .take(20)
        .collect();
    let machines: Vec<String> = (0..3 * n).map(|k| machine(FLEET, k % n)).collect();
    assert_eq!(hostile.len(), 20);
    let runs = stack.send_file_alerts("soak", &machines, PATH).await;
    for (_, body, _) in &hostile {
        stack.send_alert(body).await;
    }
    // Run -> device.
    let expected: BTreeMap<shared::ids::RunId, usize> =
        runs.into_iter().zip((0..3 * n).map(|k| k % n)).collect();
    for pause_ms in [1500u64, 2500, 4000, 3000, 5000] {
        tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        stack.kill_and_restart().await;
    }

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (run, i) in &expected {
        let m = stack.manifest(run, 600).await;
        let outcome = m.outcome.expect("an outcome");
        *outcomes.entry(format!("{outcome:?}")).or_default() += 1;
        match outcome {
            RunOutcome::Succeeded => {
                let file = &m.commands[1];
                assert_eq!(
                    file.outcome,
                    CommandOutcome::Collected,
                    "{run}: {:?}",
                    file.reason
                );
                stack
                    .assert_evidence(file, &machine(FLEET, *i), PATH, 256 * 1024 + *i as u64)
                    .await;
            }
            _ => assert!(m.reason.is_some(), "{run}: a failure carries its reason"),
        }
        // Offline devices time out; devices without the file fail; the rest succeed.
        let want = if i % 10 == 9 {
            RunOutcome::TimedOut
        } else if i % 7 == 6 {
            RunOutcome::Failed
        } else {
            RunOutcome::Succeeded
        };
        assert_eq!(outcome, want, "{run} on device {i}: {:?}", m.reason);
    }
    let dead = stack.await_dead_letters("alerts", hostile.len()).await;
    for (name, body, code) in &hostile {
        let (_, attrs) = dead
            .iter()
            .find(|(b, _)| b == body)
            .unwrap_or_else(|| panic!("{name} not dead-lettered"));
        assert_eq!(&attrs["lr-reject-code"], code, "{name}");
    }

    // No live response ran twice: one action per run tag.
    let mut per_run: BTreeMap<String, usize> = BTreeMap::new();
    for a in stack.sim.actions() {
        let tag = a["requestorComment"]
            .as_str()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        *per_run.entry(tag).or_default() += 1;
    }
    assert_eq!(per_run.len(), expected.len());
    assert!(
        per_run.values().all(|n| *n == 1),
        "duplicate actions: {:?}",
        per_run.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    let stats = stack.sim.stats();
    println!("soak outcomes {outcomes:?}; simulator {stats:?}");
    assert!(
        stats.injected_faults > 20 && stats.downloads_cut > 0,
        "{stats:?}"
    );
    assert_eq!(stats.blob_requests_with_authorization, 0);
    let tokens = stack.sim.issued_tokens();
    stack.stop().await;

    let logs = capture.text();
    assert!(
        logs.len() > 100_000,
        "logs were captured ({} bytes)",
        logs.len()
    );
    assert!(
        !logs.contains("soak-Secret-value-0f9e8d"),
        "the client secret reached the logs"
    );
    assert!(!tokens.is_empty());
    for t in tokens {
        assert!(!logs.contains(&t), "a token reached the logs");
    }
    assert!(!logs.contains("sig="), "a link signature reached the logs");
}
