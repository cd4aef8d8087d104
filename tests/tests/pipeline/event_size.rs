//! The completion event fits EventBridge whatever a run holds (found by review). Defender's error
//! message, when its body is JSON, was kept whole, became the run's reason, and `end_run` copies
//! that reason into every command's record, so the event held it once per command. EventBridge
//! refuses an entry over 256 KB: PutEvents would fail on every delivery and no re-drive could help
//! (the manifest is written once). Now Defender's messages are cut to 512 bytes, and an event too
//! large all the same is shortened (`RunFinished::detail`).

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
