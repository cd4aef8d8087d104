//! The completion event fits EventBridge whatever a run holds (found by review). Defender's error
//! message, when its body is JSON, was kept whole, became the run's reason, and `end_run` copies
//! that reason into every command's record, so the event held it once per command. EventBridge
//! refuses an entry over 256 KB: PutEvents would fail on every delivery and no re-drive could help
//! (the manifest is written once). Now Defender's messages are cut to 512 bytes, and an event too
//! large all the same is shortened (`RunFinished::detail`). Also what the event names beside the
//! manifest: a tenant's run names its tenant in both.

use std::sync::atomic::Ordering;

use shared::adapters::memory::{MemEvents, MemQueue, MemSigner, MemStore};
use shared::clock::ManualClock;
use shared::defender::{ActionId, Command, DefenderError};
use shared::messages::{Delivery, MESSAGE_VERSION, SubmitJob, encode};
use shared::ports::{Notary, ObjectStore};
use shared::stages::Ports;
use shared::store::{RunState, manifest_key};
use testkit::alerts::run_id;
use testkit::configs::submit_config;
use testkit::records::{collecting_run, put_run};
use testkit::sim::{M1, machine_id};
use time::OffsetDateTime;

/// EventBridge's limit on one PutEvents entry.
const EVENTBRIDGE_MAX_ENTRY: usize = 256 * 1024;

/// A run that Defender refused at submission, sealed: its manifest and its event's detail.
async fn sealed_after_a_refused_submission(
    run: &shared::ids::RunId,
    message: &str,
) -> (shared::store::Manifest, serde_json::Value) {
    let store = MemStore::default();
    let queue = MemQueue::default();
    let (signer, events) = (MemSigner::default(), MemEvents::default());
    let notary = Notary {
        signer: &signer,
        events: &events,
    };
    let now = OffsetDateTime::now_utc();
    let action = ActionId::parse("7f0a8b9c-1d2e-4f30-8a4b-5c6d7e8f9a0d").unwrap();
    let commands = vec![Command::run_script("s.ps1", None)];
    let mut record = collecting_run(run, "sealed", &machine_id(M1), commands, &action);
    record.state = RunState::Received;
    record.action_id = None;
    record.submitted_at = None;
    record.submit_attempts = 0;
    record.deadline = now + time::Duration::hours(1);
    put_run(&store, &record).await;
    let body = serde_json::json!({"error": {"code": "BadRequest", "message": message}});
    let defender = testkit::defender::Scripted::answering_submissions(vec![Err(
        DefenderError::from_response(400, None, &serde_json::to_vec(&body).unwrap()),
    )]);
    let job = SubmitJob {
        v: MESSAGE_VERSION,
        run_id: run.clone(),
        attempt: 0,
        prev: None,
    };
    let clock = ManualClock::at(now);
    shared::stages::submit::handle(
        &submit_config(),
        Ports::new(&store, &queue, &defender, notary, &clock),
        testkit::library::sync_off(),
        &Delivery::new("submit-1", encode(&job)),
    )
    .await
    .expect("the refusal ends the run");
    let manifest = store.get(&manifest_key(run)).await.unwrap().unwrap().body;
    let detail = events.published.lock().unwrap()[0].2.clone();
    (
        serde_json::from_slice(&manifest).expect("a manifest"),
        serde_json::from_str(&detail).expect("an event detail"),
    )
}

/// A tenant's run is sealed with its tenant in the manifest and the event (a rule can route per
/// customer); a single-tenant deployment's manifests and events are as they were, without one.
#[tokio::test]
async fn a_tenant_run_names_its_tenant_in_its_manifest_and_event_and_a_single_tenant_run_does_not()
{
    let acme = testkit::alerts::tenant_run_id("acme", "native", "sealed", M1, "malware-file");
    let (manifest, event) = sealed_after_a_refused_submission(&acme, "no").await;
    assert_eq!(manifest.tenant.as_ref().map(|t| t.as_str()), Some("acme"));
    assert_eq!(event["tenant"], "acme", "{event}");
    assert_eq!(event["run_id"], acme.as_str());
    let single = run_id("native", "sealed", M1, "malware-file");
    let (manifest, event) = sealed_after_a_refused_submission(&single, "no").await;
    assert_eq!(manifest.tenant, None);
    assert!(event.get("tenant").is_none(), "{event}");
}

#[tokio::test]
async fn a_long_defender_error_still_makes_an_event_eventbridge_takes() {
    let store = MemStore::default();
    let queue = MemQueue::default();
    let (signer, events) = (MemSigner::default(), MemEvents::default());
    let notary = Notary {
        signer: &signer,
        events: &events,
    };
    let machine = machine_id(M1);
    let run = run_id("native", "big-reason", M1, "malware-file");
    let commands: Vec<Command> = (0..4)
        .map(|i| Command::run_script(&format!("s{i}.ps1"), None))
        .collect();
    let now = OffsetDateTime::now_utc();
    let action = ActionId::parse("7f0a8b9c-1d2e-4f30-8a4b-5c6d7e8f9a0d").unwrap();
    let mut record = collecting_run(&run, "big-reason", &machine, commands, &action);
    record.state = RunState::Received;
    record.action_id = None;
    record.submitted_at = None;
    record.submit_attempts = 0;
    record.deadline = now + time::Duration::hours(1);
    put_run(&store, &record).await;

    // A 400 whose JSON message is 80 KB (Defender echoing a request, a proxy's error page
    // wrapped in JSON, ...).
    let body = serde_json::json!({"error": {"code": "BadRequest", "message": "x".repeat(80_000)}});
    let defender = testkit::defender::Scripted::answering_submissions(vec![Err(
        DefenderError::from_response(400, None, &serde_json::to_vec(&body).unwrap()),
    )]);
    let msg = Delivery::new(
        "submit-1",
        encode(&SubmitJob {
            v: MESSAGE_VERSION,
            run_id: run.clone(),
            attempt: 0,
            prev: None,
        }),
    );
    let clock = ManualClock::at(now);
    let done = shared::stages::submit::handle(
        &submit_config(),
        Ports::new(&store, &queue, &defender, notary, &clock),
        testkit::library::sync_off(),
        &msg,
    )
    .await;
    println!("submit: {:?}", done.as_ref().map(|d| d.outcome));
    let manifest = store
        .get(&manifest_key(&run))
        .await
        .unwrap()
        .unwrap()
        .body
        .len();
    let detail = events
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, d)| d.len())
        .max()
        .unwrap_or(0);
    println!(
        "manifest {manifest} bytes, event detail {detail} bytes, signed {}",
        signer.signed.load(Ordering::SeqCst)
    );
    assert!(detail > 0, "the run's event was published");
    assert!(
        detail <= EVENTBRIDGE_MAX_ENTRY,
        "the completion event's detail is {detail} bytes: EventBridge refuses entries over \
         {EVENTBRIDGE_MAX_ENTRY}, so this run can never be announced"
    );
}
