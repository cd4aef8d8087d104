//! The pipeline end to end on moto and the simulator: alerts in, hashed evidence and a manifest out.

use std::io::Read;

use mde_sim::{Device, DeviceFile, Script, SimConfig};
use shared::store::{CommandOutcome, RunOutcome, RunState};
use testkit::alerts::{corpus, native_alert, run_id};
use testkit::aws::{aws, unique};
use testkit::content::{expected_file, expected_sha256, sha256_hex};
use testkit::sim::{M1, flaky, machine};
use testkit::stack::{Stack, file_alert};

const MIB: u64 = 1 << 20;
const BIG: &str = "C:\\Users\\alice\\Downloads\\invoice.pdf.exe";
/// This file's fleet of machine ids ([`machine`]).
const FLEET: u64 = 0xabc0000;

/// `n` machine ids of the fleet from the `first`.
fn machines(first: usize, n: usize) -> Vec<String> {
    (first..first + n).map(|i| machine(FLEET, i)).collect()
}

fn fleet(devices: Vec<Device>) -> SimConfig {
    SimConfig {
        devices,
        scripts: vec![
            Script {
                name: "triage.ps1".into(),
                output: "triage of {machine}: {args}".into(),
                ..Script::default()
            },
            Script {
                name: "minidump.ps1".into(),
                output: "dumped {args}".into(),
                ..Script::default()
            },
        ],
        ..SimConfig::default()
    }
}

fn dev(id: &str, files: &[(&str, u64)]) -> Device {
    Device {
        machine_id: id.into(),
        dns_name: format!("host-{}.corp", &id[34..]),
        command_secs: 10,
        files: files
            .iter()
            .map(|(p, s)| DeviceFile {
                path: p.to_string(),
                size: *s,
                secs: None,
            })
            .collect(),
        ..Device::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_becomes_hashed_evidence_and_a_manifest() {
    let size = 100 * MIB;
    let stack = Stack::start(fleet(vec![dev(M1, &[(BIG, size)])]), &[]).await;
    let run = stack.send_file_alert("e2e-1", M1, BIG).await;
    let m = stack.manifest(&run, 120).await;

    assert_eq!(m.run_state, RunState::Completed);
    assert_eq!(m.outcome, Some(RunOutcome::Succeeded));
    assert_eq!(m.playbook, "malware-file");
    let bundled = shared::alerts::playbook::Playbooks::bundled().unwrap();
    let used = bundled
        .all()
        .iter()
        .find(|p| p.name == "malware-file")
        .unwrap();
    assert_eq!(
        m.playbook_sha256.as_deref(),
        Some(used.sha256().as_str()),
        "the manifest names the playbook version that rendered the commands"
    );
    assert_eq!(m.device.machine_id.as_str(), M1);
    assert_eq!(
        m.device.computer_dns_name,
        Some(format!("host-{}.corp", &M1[34..]))
    );
    let action = m.action.as_ref().expect("action recorded");
    assert!(action.requestor_comment.contains(&run.comment_tag()));
    assert_eq!(m.commands.len(), 2);

    let script = &m.commands[0];
    assert_eq!(script.outcome, CommandOutcome::Collected);
    assert_eq!(script.exit_code, Some(0));
    assert!(script.output_excerpt.as_deref().unwrap().contains("-Quick"));

    let file = &m.commands[1];
    assert_eq!(file.outcome, CommandOutcome::Collected);
    assert!(
        file.start_time.is_some() && file.end_time.is_some(),
        "Defender's command times are kept"
    );
    let expected = expected_file(M1, BIG, size);
    assert_eq!(
        file.sha256_decompressed.as_deref(),
        Some(expected_sha256(M1, BIG, size).as_str())
    );
    assert_eq!(file.size_decompressed, Some(size));

    // The stored object is what the manifest says.
    let key = file.s3_key.clone().unwrap();
    let stored = stack.object(&key).await.unwrap();
    assert_eq!(Some(stored.len() as u64), file.size);
    assert_eq!(Some(sha256_hex(&stored)), file.sha256);
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&stored[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert!(
        unzipped == expected,
        "the evidence decompresses to the device's file"
    );
    let head = stack
        .s3
        .head_object()
        .bucket(&stack.stack.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    // Its provenance is in its metadata from the start (the hashes, known only at the end, are in
    // the signed manifest).
    let meta = head.metadata().unwrap();
    assert_eq!(meta.get("run-id").map(String::as_str), Some(run.as_str()));
    assert_eq!(meta.get("command-index").map(String::as_str), Some("1"));
    assert_eq!(meta.get("action-id").cloned(), Some(action.id.to_string()));
    // The record pins the version it hashed: a later write to the key cannot pass for it.
    assert!(
        file.s3_version_id.is_some(),
        "the evidence version is recorded"
    );
    assert_eq!(file.s3_version_id.as_deref(), head.version_id());
    let version = stack
        .s3
        .get_object()
        .bucket(&stack.stack.bucket)
        .key(&key)
        .version_id(file.s3_version_id.clone().unwrap())
        .send()
        .await
        .unwrap();
    let pinned = version.body.collect().await.unwrap().into_bytes();
    assert_eq!(Some(sha256_hex(&pinned)), file.sha256);

    // Evidence and the manifest are retained (the local stack's bucket has Object Lock on, as a
    // deployment with EnableObjectLock=true); state is not.
    // (moto answers GetObjectRetention with a 500: HeadObject carries the same fields.)
    let lock = |key: String| {
        let (s3, bucket) = (&stack.s3, &stack.stack.bucket);
        async move {
            let head = s3.head_object().bucket(bucket).key(&key).send().await;
            let head = head.unwrap_or_else(|e| panic!("head {key}: {e:?}"));
            (
                head.object_lock_mode().cloned(),
                head.object_lock_retain_until_date().map(|d| d.secs()),
            )
        }
    };
    for key in [key.clone(), shared::store::manifest_key(&run)] {
        let (mode, until) = lock(key.clone()).await;
        assert_eq!(
            mode,
            Some(aws_sdk_s3::types::ObjectLockMode::Governance),
            "{key}"
        );
        let until = until.expect("a retain-until date");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let days = local_stack::RETENTION_DAYS as i64 * 86_400;
        assert!(
            (now + days - 600..=now + days + 60).contains(&until),
            "{key} is retained until {until}, not about {} days from now",
            local_stack::RETENTION_DAYS
        );
    }
    assert_eq!(
        lock(shared::store::run_key(&run)).await,
        (None, None),
        "a run record carries no retention"
    );
    // The manifest cannot be written twice.
    let again = stack
        .s3
        .put_object()
        .bucket(&stack.stack.bucket)
        .key(shared::store::manifest_key(&run))
        .if_none_match("*")
        .body(b"{}".to_vec().into())
        .send()
        .await;
    assert!(again.is_err(), "a second manifest write was accepted");
    // Nor can the package be replaced the way the pipeline writes it (If-None-Match).
    let over = stack
        .s3
        .put_object()
        .bucket(&stack.stack.bucket)
        .key(&key)
        .if_none_match("*")
        .body(b"other bytes".to_vec().into())
        .send()
        .await;
    assert!(over.is_err(), "the evidence object was replaced");

    // Nothing but the evidence, the manifest and its signature under the run's evidence prefix
    // (packages go straight to their keys: no staging copy), and no unfinished upload.
    let listed = stack
        .s3
        .list_objects_v2()
        .bucket(&stack.stack.bucket)
        .prefix(format!("evidence/{run}/"))
        .send()
        .await
        .unwrap();
    let mut under: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    under.sort();
    let mut expected: Vec<String> = m.commands.iter().filter_map(|c| c.s3_key.clone()).collect();
    expected.extend([
        shared::store::manifest_key(&run),
        shared::store::signature_key(&run),
    ]);
    expected.sort();
    assert_eq!(under, expected);
    let uploads = stack
        .s3
        .list_multipart_uploads()
        .bucket(&stack.stack.bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty());
    let stats = stack.sim.stats();
    assert!(stats.blob_bytes_sent > 0);
    assert_eq!(
        stats.blob_requests_with_authorization, 0,
        "the bearer token never goes to the blob host"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_middle_command_keeps_earlier_results_and_records_the_rest() {
    // Library sync off: the missing script fails on the device, as Defender fails it.
    let playbooks = r#"
[[library_files]]
name = "triage.ps1"
external = true
[[library_files]]
name = "not-in-library.ps1"
external = true

[[playbooks]]
name = "three-steps"
[playbooks.match]
category = ["Malware"]
[[playbooks.commands]]
type = "RunScript"
script = "triage.ps1"
args = "-Quick"
[[playbooks.commands]]
type = "RunScript"
script = "not-in-library.ps1"
[[playbooks.commands]]
type = "GetFile"
path = "{file_path}"
[playbooks.placeholders.file_path]
kind = "windows_path"
"#;
    let sdk = aws().await;
    let s3 = shared::adapters::s3::s3_client(&sdk);
    let bucket = unique("playbooks");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    s3.put_object()
        .bucket(&bucket)
        .key("pb.toml")
        .body(playbooks.as_bytes().to_vec().into())
        .send()
        .await
        .unwrap();
    let mut config = fleet(vec![dev(M1, &[(BIG, 1000)])]);
    config.library = testkit::library::bundled_seeds();
    let stack = Stack::start(
        config,
        &[
            ("PLAYBOOKS_S3_URI", format!("s3://{bucket}/pb.toml")),
            (
                "PLAYBOOKS_SHA256",
                shared::hash::sha256_hex(playbooks.as_bytes()),
            ),
            ("LIBRARY_SYNC", "off".into()),
        ],
    )
    .await;
    stack
        .send_alert(&file_alert("mid-fail", M1, BIG).to_string())
        .await;
    let m = stack
        .manifest(&run_id("native", "mid-fail", M1, "three-steps"), 60)
        .await;
    assert_eq!(m.outcome, Some(RunOutcome::Failed));
    let outcomes: Vec<CommandOutcome> = m.commands.iter().map(|c| c.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            CommandOutcome::Collected,
            CommandOutcome::Failed,
            CommandOutcome::NotRun
        ]
    );
    assert!(m.commands[1].errors[0].contains("not found"));
    assert_eq!(m.commands[0].exit_code, Some(0));
    assert!(m.commands[0].s3_key.is_some());
    assert!(m.reason.as_deref().unwrap().contains("Failed"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_device_past_the_deadline_is_cancelled_and_recorded_timed_out() {
    let mut offline = dev(M1, &[(BIG, 1000)]);
    offline.online = false;
    let stack = Stack::start(
        fleet(vec![offline]),
        // Long enough for submit to post the run on a loaded machine (3 s was not, at 8 tests at
        // once), short enough to wait out.
        &[("MAX_RUN_DEADLINE_SECS", "15".into())],
    )
    .await;
    let run = stack.send_file_alert("offline-1", M1, BIG).await;
    let m = stack.manifest(&run, 60).await;
    assert_eq!(m.outcome, Some(RunOutcome::TimedOut));
    let action = m.action.unwrap();
    assert!(action.cancelled_by_pipeline);
    assert_eq!(
        action.status,
        Some(shared::defender::ActionStatus::Cancelled)
    );
    assert!(
        m.commands
            .iter()
            .all(|c| c.outcome == CommandOutcome::NotRun)
    );
    assert_eq!(m.commands.len(), 2);
    // Defender agrees: the session was cancelled with the pipeline's comment.
    let actions = stack.sim.actions();
    assert_eq!(actions[0]["status"], "Cancelled");
    assert!(
        actions[0]["cancellationComment"]
            .as_str()
            .unwrap()
            .contains(&run.comment_tag())
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_device_waits_its_turn() {
    // Slow commands keep the first session open for about ten real seconds.
    let mut slow = dev(M1, &[(BIG, 1000)]);
    slow.command_secs = 100;
    let stack = Stack::start(fleet(vec![slow]), &[]).await;
    let runs = stack
        .send_file_alerts("busy", &[M1.into(), M1.into()], BIG)
        .await;
    for (run, m) in runs.iter().zip(stack.manifests(&runs, 90).await) {
        assert_eq!(m.outcome, Some(RunOutcome::Succeeded), "{run}");
    }
    let stats = stack.sim.stats();
    assert_eq!(stats.actions_created, 2);
    assert!(
        stats.calls["submit"].get("400").copied().unwrap_or(0) >= 1,
        "one waited: {:?}",
        stats.calls["submit"]
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_four_input_formats_are_accepted() {
    let machines = machines(0, 4);
    let devices: Vec<Device> = machines.iter().map(|m| dev(m, &[(BIG, 1000)])).collect();
    let stack = Stack::start(fleet(devices), &[]).await;
    let defender_alert = |id: &str, m: &str| {
        serde_json::json!({
            "id": id, "machineId": m, "title": "Malware detected", "category": "Malware", "severity": "High",
            "detectionSource": "WindowsDefenderAv", "status": "New", "unknownField": {"x": 1},
            "evidence": [{"entityType": "File", "filePath": "C:\\Users\\alice\\Downloads", "fileName": "invoice.pdf.exe"}]
        })
    };
    let native = file_alert("fmt-native", &machines[0], BIG);
    let defender = defender_alert("da6370000000000000_1", &machines[1]);
    let sns = serde_json::json!({"Type": "Notification", "MessageId": "1", "TopicArn": "arn:aws:sns:us-east-1:1:alerts",
        "Message": defender_alert("da6370000000000000_2", &machines[2]).to_string()});
    let eventbridge = serde_json::json!({"version": "0", "id": "e1", "detail-type": "Security Alert", "source": "custom.siem",
        "detail": file_alert("fmt-eventbridge", &machines[3], BIG)});
    for body in [&native, &defender, &sns, &eventbridge] {
        stack.send_alert(&body.to_string()).await;
    }
    let runs = [
        run_id("native", "fmt-native", &machines[0], "malware-file"),
        run_id(
            "defender",
            "da6370000000000000_1",
            &machines[1],
            "malware-file",
        ),
        run_id(
            "defender",
            "da6370000000000000_2",
            &machines[2],
            "malware-file",
        ),
        run_id("native", "fmt-eventbridge", &machines[3], "malware-file"),
    ];
    for (run, envelope) in runs.iter().zip(["none", "none", "sns", "event_bridge"]) {
        let m = stack.manifest(run, 90).await;
        assert_eq!(m.outcome, Some(RunOutcome::Succeeded));
        assert_eq!(serde_json::to_value(m.alert.envelope).unwrap(), envelope);
        assert_eq!(m.commands[1].command.param("Path"), Some(BIG));
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_that_matches_no_playbook_is_rejected_with_its_body_kept() {
    let stack = Stack::start(fleet(vec![dev(M1, &[])]), &[]).await;
    let mut alert = native_alert("nomatch-1", M1, "Discovery", &[]);
    alert["severity"] = "Low".into();
    let body = alert.to_string();
    stack.send_alert(&body).await;
    let dead = stack.await_dead_letters("alerts", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, body, "the original body, intact");
    assert_eq!(dead[0].1["lr-reject-code"], "no_playbook");
    assert!(dead[0].1["lr-reject-reason"].contains("Discovery"));
    assert_eq!(dead[0].1["lr-stage"], "intake");
    assert_eq!(stack.sim.stats().actions_created, 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_alert_makes_one_run() {
    let stack = Stack::start(fleet(vec![dev(M1, &[(BIG, 1000)])]), &[]).await;
    let body = file_alert("dup-1", M1, BIG).to_string();
    for _ in 0..3 {
        stack.send_alert(&body).await;
    }
    let m = stack
        .manifest(&run_id("native", "dup-1", M1, "malware-file"), 60)
        .await;
    assert_eq!(m.outcome, Some(RunOutcome::Succeeded));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(stack.sim.stats().actions_created, 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_faults_are_survived_and_the_hashes_still_match() {
    use mde_sim::Faults;
    let size = 10 * MIB;
    let machines = machines(100, 3);
    let devices: Vec<Device> = machines.iter().map(|m| dev(m, &[(BIG, size)])).collect();
    let mut config = fleet(devices);
    let mut faults = Faults {
        seed: 7,
        not_found_after_create_secs: 3,
        download_cut_probability: 0.5,
        download_cut_after_bytes: 3 * MIB,
        link_early_expiry_probability: 0.2,
        link_early_expiry_secs: 20,
        ..Faults::default()
    };
    faults
        .endpoints
        .insert("submit".into(), flaky(0.2, 0.0, 0.2));
    faults
        .endpoints
        .insert("get_action".into(), flaky(0.3, 0.1, 0.0));
    faults.endpoints.insert("link".into(), flaky(0.2, 0.2, 0.0));
    faults
        .endpoints
        .insert("list_actions".into(), flaky(0.0, 0.2, 0.0));
    config.faults = faults;
    let stack = Stack::start(config, &[]).await;
    let runs = stack.send_file_alerts("faulty", &machines, BIG).await;
    for (i, m) in stack.manifests(&runs, 240).await.iter().enumerate() {
        assert_eq!(
            m.outcome,
            Some(RunOutcome::Succeeded),
            "alert {i}: {:?}",
            m.reason
        );
        assert_eq!(
            m.commands[1].outcome,
            CommandOutcome::Collected,
            "{:?}",
            m.commands[1].reason
        );
        stack
            .assert_evidence(&m.commands[1], &machines[i], BIG, size)
            .await;
    }
    let stats = stack.sim.stats();
    assert_eq!(stats.actions_created, 3, "no live response ran twice");
    assert!(
        stats.downloads_cut > 0,
        "downloads were cut and resumed: {stats:?}"
    );
    assert!(stats.injected_faults > 5, "{stats:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hostile_corpus_lands_in_the_dead_letter_queue_with_reasons() {
    let stack = Stack::start(fleet(vec![dev(M1, &[(BIG, 1000)])]), &[]).await;
    // SQS itself refuses bodies over 256 KiB, so those cases never reach intake.
    let cases: Vec<_> = corpus()
        .into_iter()
        .filter(|(_, b, _)| b.len() < 250 * 1024)
        .collect();
    let good = file_alert("good-amid-hostile", M1, BIG).to_string();
    for chunk in cases.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (_, body, _))| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("e{i}"))
                    .message_body(body)
                    .build()
                    .unwrap()
            })
            .collect();
        let out = stack
            .sqs
            .send_message_batch()
            .queue_url(&stack.stack.queue_urls["alerts"])
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(out.failed().is_empty(), "{:?}", out.failed());
    }
    stack.send_alert(&good).await;
    let m = stack
        .manifest(
            &run_id("native", "good-amid-hostile", M1, "malware-file"),
            90,
        )
        .await;
    assert_eq!(m.outcome, Some(RunOutcome::Succeeded));
    let dead = stack.await_dead_letters("alerts", cases.len()).await;
    assert_eq!(dead.len(), cases.len());
    for (name, body, code) in &cases {
        let (_, attrs) = dead
            .iter()
            .find(|(b, _)| b == body)
            .unwrap_or_else(|| panic!("{name}: not in the DLQ with its body intact"));
        assert_eq!(&attrs["lr-reject-code"], code, "{name}");
        assert!(!attrs["lr-reject-reason"].is_empty());
    }
    assert_eq!(stack.sim.stats().actions_created, 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_beyond_the_submission_limit_stays_within_defenders_limits_without_a_429() {
    // 30 alerts at once for 30 devices: three times Defender's 10 submissions a minute (about 3
    // minutes). (The session cap is held by the lifecycle model and the budget tests: here
    // commands end in seconds, so sessions stay well under it.)
    let machines = machines(200, 30);
    let size = |i: usize| 20_000 + i as u64;
    let devices: Vec<Device> = (0..30)
        .map(|i| dev(&machines[i], &[(BIG, size(i))]))
        .collect();
    // The documented limits (the simulator's defaults) and no injected faults.
    let stack = Stack::start(fleet(devices), &[]).await;
    let runs = stack.send_file_alerts("burst30", &machines, BIG).await;
    for (i, m) in stack.manifests(&runs, 300).await.iter().enumerate() {
        assert_eq!(m.outcome, Some(RunOutcome::Succeeded), "alert {i}");
        assert_eq!(
            m.commands[1].sha256_decompressed.as_deref(),
            Some(expected_sha256(&machines[i], BIG, size(i)).as_str()),
            "alert {i}: each device's own file"
        );
    }
    let stats = stack.sim.stats();
    println!(
        "burst: {} actions, most submissions in a sliding minute {}, most concurrent sessions {}, 429s {}",
        stats.actions_created,
        stats.max_submissions_per_minute,
        stats.max_concurrent_sessions,
        stats.throttled
    );
    assert_eq!(stats.actions_created, 30);
    assert!(stats.max_submissions_per_minute <= 10, "{stats:?}");
    assert!(stats.max_concurrent_sessions <= 25, "{stats:?}");
    assert_eq!(
        stats.throttled, 0,
        "pacing alone kept Defender from answering 429: {stats:?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_stages_mid_flight_loses_nothing_and_runs_nothing_twice() {
    let n = 12;
    let machines = machines(300, n);
    let devices: Vec<Device> = (0..n)
        .map(|i| dev(&machines[i], &[(BIG, 4 * MIB + i as u64)]))
        .collect();
    let mut stack = Stack::start(fleet(devices), &[]).await;
    let runs = stack.send_file_alerts("kill", &machines, BIG).await;
    // Kill at uneven points while runs are being submitted, polled and collected.
    for pause_ms in [700u64, 1300, 2100, 900] {
        tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        stack.kill_and_restart().await;
    }
    for (i, m) in stack.manifests(&runs, 240).await.iter().enumerate() {
        assert_eq!(
            m.outcome,
            Some(RunOutcome::Succeeded),
            "alert {i}: {:?}",
            m.reason
        );
        stack
            .assert_evidence(&m.commands[1], &machines[i], BIG, 4 * MIB + i as u64)
            .await;
    }
    assert_eq!(
        stack.sim.stats().actions_created,
        n as u64,
        "no live response ran twice"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_package_that_outlasts_an_invocation_continues_from_its_checkpoint() {
    let size = 23 * MIB;
    // No time budget at all: every invocation uploads one 5 MiB part and hands over.
    let stack = Stack::start(
        fleet(vec![dev(M1, &[(BIG, size)])]),
        &[
            ("COLLECT_TIME_BUDGET_SECS", "0".into()),
            ("COLLECT_PART_MIB", "5".into()),
        ],
    )
    .await;
    let run = stack.send_file_alert("long-copy", M1, BIG).await;
    let m = stack.manifest(&run, 120).await;
    assert_eq!(m.outcome, Some(RunOutcome::Succeeded));
    stack.assert_evidence(&m.commands[1], M1, BIG, size).await;
    // Each invocation asked for the package from its checkpoint on, never from the start again.
    let stats = stack.sim.stats();
    assert_eq!(
        stats.calls["blob"]["200"], 2,
        "one whole transcript, one package started from 0"
    );
    let starts = &stats.blob_range_starts;
    assert!(starts.len() >= 4, "resumed with Range requests: {starts:?}");
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "each resumption starts further on: {starts:?}"
    );
    assert!(
        starts.iter().all(|s| s % (5 * MIB) == 0),
        "at part boundaries: {starts:?}"
    );
    assert!(
        stack
            .object(&shared::store::keys::checkpoint_key(&run, 1))
            .await
            .is_none(),
        "the checkpoint is gone"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_to_hosts_outside_the_allow_list_are_refused_and_recorded() {
    // The simulator's links point at 127.0.0.1; allow only Azure blob hosts.
    let stack = Stack::start(
        fleet(vec![dev(M1, &[(BIG, 1000)])]),
        &[("DOWNLOAD_ALLOWED_HOSTS", ".blob.core.windows.net".into())],
    )
    .await;
    let run = stack.send_file_alert("ssrf-1", M1, BIG).await;
    let m = stack.manifest(&run, 60).await;
    for c in &m.commands {
        assert_eq!(c.outcome, CommandOutcome::CollectFailed);
        let reason = c.reason.as_deref().unwrap();
        assert!(reason.contains("not an allowed download host"), "{reason}");
        assert!(
            !reason.contains("sig="),
            "the reason names the host, not the signed link"
        );
    }
    assert!(
        !stack.sim.stats().calls.contains_key("blob"),
        "the refused links were never followed"
    );
    stack.stop().await;
}
