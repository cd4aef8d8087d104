//! A run whose sealing failed keeps a message that will seal it (found by review).
//!
//! Two copies of one poll message (same SQS message id: SQS is at least once, and the stages are
//! written to tolerate two consumers of one message). Copy B reads the action while it still runs
//! and is held there; copy A reads it ended (Failed: nothing to collect), finalizes the run and
//! fails to sign (KMS throttled) -> Retry. Copy B then tries to hand the poll chain on and finds it
//! ended. Before the fix it returned Ok, the batch response deleted the message, and nothing was
//! left to seal the run; now every stage settles an ended, unsealed run before reporting a message
//! handled (`stages::settle`), so copy B keeps the message too.

use std::sync::atomic::Ordering;

use shared::adapters::memory::{MemEvents, MemQueue, MemSigner, MemStore, Sent};
use shared::clock::ManualClock;
use shared::defender::{ActionId, ActionStatus, Command, CommandStatus};
use shared::messages::{Delivery, MESSAGE_VERSION, PollJob, encode};
use shared::ports::{Notary, ObjectStore};
use shared::stages::Ports;
use shared::store::{RunState, load_run, manifest_key, signature_key};
use testkit::alerts::run_id;
use testkit::configs::poll_config;
use testkit::defender::{Call, Scripted, action};
use testkit::records::{collecting_run, put_run};
use testkit::sim::{M1, machine_id};
use time::OffsetDateTime;

#[tokio::test]
async fn a_copy_that_finds_the_run_ended_keeps_the_message_until_the_run_is_sealed() {
    let store = MemStore::default();
    let queue = MemQueue::default();
    let (signer, events) = (MemSigner::default(), MemEvents::default());
    signer.fail.store(true, Ordering::SeqCst); // KMS throttled / key briefly unavailable
    let notary = Notary {
        signer: &signer,
        events: &events,
    };
    let machine = machine_id(M1);
    let action_id = ActionId::parse("7f0a8b9c-1d2e-4f30-8a4b-5c6d7e8f9a0c").unwrap();
    let run = run_id("native", "seal-lost", M1, "malware-file");
    let command = Command::run_script("collect.ps1", None);
    let now = OffsetDateTime::now_utc();
    let mut record = collecting_run(
        &run,
        "seal-lost",
        &machine,
        vec![command.clone()],
        &action_id,
    );
    record.state = RunState::Submitted;
    record.deadline = now + time::Duration::hours(1);
    record.chain.hold("poll-1", now);
    put_run(&store, &record).await;

    // Copy B reads the action while it still runs and is held until copy A is done; copy A
    // reads it ended, nothing to collect.
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = gate.clone();
    let ended = action(
        &action_id,
        &machine,
        ActionStatus::Failed,
        &[(command.clone(), CommandStatus::Failed)],
    );
    // The first read answers that the action runs; every later one that it ended.
    let defender = Scripted::with(vec![ended])
        .answering(vec![action(
            &action_id,
            &machine,
            ActionStatus::InProgress,
            &[(command, CommandStatus::InProgress)],
        )])
        .before_each_call(move |call| {
            let held = held.clone();
            Box::pin(async move {
                if let Call::Read { n: 0 } = call {
                    held.notified().await;
                }
            })
        });
    // Each look is a GET here: the interleaving is of two reads of the action itself.
    let cfg = shared::stages::settings::PollConfig {
        status_from: shared::stages::settings::StatusFrom::Each,
        ..poll_config()
    };
    let clock = ManualClock::at(now);
    // One SQS message, delivered to two consumers.
    let msg = Delivery::new(
        "poll-1",
        encode(&PollJob {
            v: MESSAGE_VERSION,
            run_id: run.clone(),
            action_id: action_id.clone(),
            polls: 3,
            cancels: 0,
            prev: None,
        }),
    );
    let b = shared::stages::poll::handle(
        &cfg,
        Ports::new(&store, &queue, &defender, notary, &clock),
        testkit::library::empty(),
        &msg,
    );
    let a = async {
        let r = shared::stages::poll::handle(
            &cfg,
            Ports::new(&store, &queue, &defender, notary, &clock),
            testkit::library::empty(),
            &msg,
        )
        .await;
        gate.notify_one();
        r
    };
    let (rb, ra) = tokio::join!(b, a);
    println!("copy A: {ra:?}\ncopy B: {rb:?}");
    signer.fail.store(false, Ordering::SeqCst);

    let (after, _) = load_run(&store, &run).await.unwrap().unwrap();
    let manifest = store.get(&manifest_key(&run)).await.unwrap().is_some();
    let signature = store.get(&signature_key(&run)).await.unwrap().is_some();
    let published = events.published.lock().unwrap().len();
    let pending: Vec<_> = queue
        .sent
        .lock()
        .unwrap()
        .iter()
        .filter(|s| matches!(s, Sent::Message { .. }))
        .cloned()
        .collect();
    println!(
        "run {:?}, manifest {manifest}, signature {signature}, events {published}, messages sent {}",
        after.state,
        pending.len()
    );
    // The message is deleted if either copy reports success (the second receive's handle is the
    // one that deletes); with it gone, only a message sent meanwhile could seal the run.
    assert!(
        defender.reads_made.load(Ordering::SeqCst) >= 2,
        "both copies read the action"
    );
    let message_survives = ra.is_err() && rb.is_err();
    assert!(
        message_survives || !pending.is_empty() || (signature && published == 1),
        "the poll message is deleted (copy B returned {rb:?}) while the run is {:?} with manifest={manifest}, \
         signature={signature}, events={published}, and no message is left that will seal it",
        after.state
    );
}
