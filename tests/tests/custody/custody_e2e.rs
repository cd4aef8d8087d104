//! Completion events and signed manifests end to end, on moto and the simulator: every terminal
//! outcome (succeeded, failed on the device, timed out, refused by Defender after intake made a
//! run) puts exactly one event on the example rule's queue, carrying what an analyst routes on,
//! and every manifest's signature verifies with KMS and offline with the exported public key.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mde_sim::{Device, DeviceFile, Script, SimConfig};
use shared::adapters::kms::KmsSigner;
use shared::custody::event::{DETAIL_TYPE, RunFinished, SOURCE};
use shared::custody::signature::{ManifestSignature, check_statement, public_key, verify_offline};
use shared::defender::CommandType;
use shared::ids::RunId;
use shared::store::{CommandOutcome, RunOutcome, RunState, manifest_key, signature_key};
use testkit::sim::machine;
use testkit::stack::Stack;

const FILE: &str = "C:\\Users\\alice\\Downloads\\invoice.pdf.exe";
const FLEET: u64 = 0xc057000;

fn device(id: &str, file: bool, online: bool) -> Device {
    Device {
        machine_id: id.into(),
        dns_name: format!("host-{}.corp", &id[34..]),
        command_secs: 10,
        online,
        files: if file {
            vec![DeviceFile {
                path: FILE.into(),
                size: 70_000,
                secs: None,
            }]
        } else {
            vec![]
        },
        ..Device::default()
    }
}

/// Every event on the rule's queue until `want` distinct runs have one, then `quiet` more of
/// listening (a second copy would arrive in it).
async fn events(stack: &Stack, want: usize, quiet: Duration) -> Vec<RunFinished> {
    let mut seen: Vec<RunFinished> = Vec::new();
    let started = Instant::now();
    let mut done_at: Option<Instant> = None;
    loop {
        if let Some(t) = done_at
            && t.elapsed() > quiet
        {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {} of {want} events after 120 s: {seen:?}",
            seen.len()
        );
        let out = stack
            .sqs
            .receive_message()
            .queue_url(&stack.stack.events_queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive events");
        for m in out.messages() {
            let envelope: serde_json::Value =
                serde_json::from_str(m.body().unwrap_or_default()).expect("an event envelope");
            assert_eq!(envelope["source"], SOURCE);
            assert_eq!(envelope["detail-type"], DETAIL_TYPE);
            let detail: RunFinished =
                serde_json::from_value(envelope["detail"].clone()).expect("a RunFinished detail");
            seen.push(detail);
            stack
                .sqs
                .delete_message()
                .queue_url(&stack.stack.events_queue_url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete event");
        }
        let distinct: std::collections::BTreeSet<_> = seen.iter().map(|e| &e.run_id).collect();
        if distinct.len() >= want && done_at.is_none() {
            done_at = Some(Instant::now());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_terminal_outcome_publishes_one_event_and_a_signed_manifest() {
    let ok = machine(FLEET, 0);
    let no_file = machine(FLEET, 1);
    let offline = machine(FLEET, 2);
    let unknown = machine(FLEET, 3); // not in the fleet: Defender refuses the submission
    let sim = SimConfig {
        devices: vec![
            device(&ok, true, true),
            device(&no_file, false, true),
            device(&offline, true, false),
        ],
        scripts: vec![Script {
            name: "triage.ps1".into(),
            output: "triage of {machine}: {args}".into(),
            ..Script::default()
        }],
        ..SimConfig::default()
    };
    let stack = Stack::start(sim, &[("MAX_RUN_DEADLINE_SECS", "8".into())]).await;
    let mut want: BTreeMap<RunId, RunOutcome> = BTreeMap::new();
    want.insert(
        stack.send_file_alert("ev-ok", &ok, FILE).await,
        RunOutcome::Succeeded,
    );
    want.insert(
        stack.send_file_alert("ev-nofile", &no_file, FILE).await,
        RunOutcome::Failed,
    );
    want.insert(
        stack.send_file_alert("ev-offline", &offline, FILE).await,
        RunOutcome::TimedOut,
    );
    want.insert(
        stack.send_file_alert("ev-unknown", &unknown, FILE).await,
        RunOutcome::Failed,
    );
    let got = events(&stack, want.len(), Duration::from_secs(4)).await;
    assert_eq!(
        got.len(),
        want.len(),
        "one event per run: {:?}",
        got.iter().map(|e| &e.run_id).collect::<Vec<_>>()
    );

    let kms = KmsSigner::new(
        aws_sdk_kms::Client::new(&stack.sdk),
        &stack.stack.signing_key_arn,
    );
    let offline_key = public_key(&kms.public_key().await.expect("GetPublicKey")).unwrap();
    let bucket = &stack.stack.bucket;
    for e in &got {
        let outcome = want
            .get(&e.run_id)
            .unwrap_or_else(|| panic!("an event for an unknown run {}", e.run_id));
        assert_eq!(e.outcome, Some(*outcome), "{}: {:?}", e.run_id, e.reason);
        assert_eq!(e.event_id, e.run_id.as_str());
        let m = stack.manifest(&e.run_id, 5).await;
        assert_eq!(e.alert.id, m.alert.alert_id);
        assert_eq!(e.device.id, m.device.machine_id);
        assert_eq!(e.playbook.name, "malware-file");
        assert_eq!(e.playbook.sha256, m.playbook_sha256);
        assert!(e.playbook.sha256.is_some());
        assert_eq!(e.state, m.run_state);
        assert_eq!(e.commands.len(), m.commands.len());
        assert!(e.time_to_evidence_secs > 0.0);
        assert_eq!(
            e.manifest.s3_uri,
            format!("s3://{bucket}/{}", manifest_key(&e.run_id))
        );
        assert_eq!(
            e.manifest.signature_s3_uri,
            format!("s3://{bucket}/{}", signature_key(&e.run_id))
        );
        assert_eq!(e.manifest.signature_key_id, stack.stack.signing_key_arn);
        match outcome {
            RunOutcome::Succeeded => {
                assert_eq!(e.state, RunState::Completed);
                let file = e
                    .commands
                    .iter()
                    .find(|c| c.kind == CommandType::GetFile)
                    .expect("a GetFile command");
                assert_eq!(file.outcome, CommandOutcome::Collected);
                let mc = &m.commands[file.index as usize];
                assert_eq!(
                    file.s3_uri.as_deref(),
                    mc.s3_key
                        .as_ref()
                        .map(|k| format!("s3://{bucket}/{k}"))
                        .as_deref()
                );
                assert_eq!(file.sha256, mc.sha256);
                assert_eq!(file.sha256_decompressed, mc.sha256_decompressed);
                assert_eq!(file.size, mc.size);
                assert!(file.sha256.is_some() && file.s3_version_id.is_some());
            }
            _ => assert!(e.reason.is_some(), "{}: a failure says why", e.run_id),
        }

        // The signature binds the manifest's exact bytes; KMS and the exported key agree.
        let mkey = manifest_key(&e.run_id);
        let manifest_bytes = stack.object(&mkey).await.expect("manifest");
        assert_eq!(
            e.manifest.sha256,
            testkit::content::sha256_hex(&manifest_bytes)
        );
        let sig: ManifestSignature = serde_json::from_slice(
            &stack
                .object(&signature_key(&e.run_id))
                .await
                .expect("manifest.sig.json"),
        )
        .unwrap();
        check_statement(&sig, &e.run_id, &mkey, &manifest_bytes).unwrap();
        verify_offline(&sig, &offline_key).unwrap();
        assert!(
            kms.verify_with_kms(sig.statement.as_bytes(), &sig.der().unwrap())
                .await
                .unwrap()
        );
        // A statement changed by one byte does not verify, with either.
        let forged = sig.statement.replacen("manifest", "manifesT", 1);
        assert!(
            !kms.verify_with_kms(forged.as_bytes(), &sig.der().unwrap())
                .await
                .unwrap()
        );
        let mut edited = sig.clone();
        edited.statement = forged;
        assert!(verify_offline(&edited, &offline_key).is_err());
        // The signature is written once, like the manifest.
        let again = stack
            .s3
            .put_object()
            .bucket(bucket)
            .key(signature_key(&e.run_id))
            .if_none_match("*")
            .body(b"{}".to_vec().into())
            .send()
            .await;
        assert!(again.is_err(), "a second signature write is refused");
    }
    stack.stop().await;
}
