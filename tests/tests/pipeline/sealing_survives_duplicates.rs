//! A run whose sealing failed keeps a message that will seal it (found by review).
//!
//! Two copies of one poll message (same SQS message id: SQS is at least once, and the stages are
//! written to tolerate two consumers of one message). Copy B reads the action while it still runs
//! and is held there; copy A reads it ended (Failed: nothing to collect), finalizes the run and
//! fails to sign (KMS throttled) -> Retry. Copy B then tries to hand the poll chain on and finds it
//! ended. Before the fix it returned Ok, the batch response deleted the message, and nothing was
//! left to seal the run; now every stage settles an ended, unsealed run before reporting a message
//! handled (`stages::settle`), so copy B keeps the message too.

use std::sync::atomic::{AtomicUsize, Ordering};

use shared::adapters::memory::{MemEvents, MemQueue, MemSigner, MemStore, Sent};
use shared::clock::ManualClock;
use shared::defender::{
    ActionFilter, ActionId, ActionStatus, Command, CommandResult, CommandStatus, DefenderError,
    DownloadLink, LiveResponseRequest, MachineAction, MachineId,
};
use shared::messages::{Delivery, MESSAGE_VERSION, PollJob, encode};
use shared::ports::{Defender, Notary, ObjectStore};
use shared::stages::Ports;
use shared::store::{RunState, load_run, manifest_key, signature_key};
use testkit::alerts::run_id;
use testkit::configs::poll_config;
use testkit::records::{collecting_run, put_run};
use testkit::sim::{M1, machine_id};
use time::OffsetDateTime;

struct TwoViews {
    calls: AtomicUsize,
    gate: tokio::sync::Notify,
    action: ActionId,
    machine: MachineId,
    command: Command,
}

impl TwoViews {
    fn action(&self, status: ActionStatus, cs: CommandStatus) -> MachineAction {
        MachineAction {
            id: self.action.clone(),
            kind: Some("LiveResponse".into()),
            requestor: None,
            requestor_comment: None,
            status,
            machine_id: self.machine.clone(),
            computer_dns_name: None,
            creation_date_time_utc: None,
            last_update_date_time_utc: None,
            cancellation_requestor: None,
            cancellation_comment: None,
            cancellation_date_time_utc: None,
            commands: vec![CommandResult {
                index: 0,
                start_time: None,
                end_time: None,
                command_status: cs,
                errors: vec![],
                command: self.command.clone(),
            }],
        }
    }
}

impl Defender for TwoViews {
    async fn run_live_response(
        &self,
        _: &MachineId,
        _: &LiveResponseRequest,
    ) -> Result<MachineAction, DefenderError> {
        unreachable!()
    }
    async fn get_machine_action(&self, _: &ActionId) -> Result<MachineAction, DefenderError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            // Copy B: read while the action still ran; its answer arrives after copy A is done.
            self.gate.notified().await;
            Ok(self.action(ActionStatus::InProgress, CommandStatus::InProgress))
        } else {
            // Copy A: the action ended, nothing to collect.
            Ok(self.action(ActionStatus::Failed, CommandStatus::Failed))
        }
    }
    async fn list_machine_actions(
        &self,
        _: &ActionFilter,
    ) -> Result<Vec<MachineAction>, DefenderError> {
        unreachable!()
    }
    async fn result_download_link(
        &self,
        _: &ActionId,
        _: u32,
    ) -> Result<DownloadLink, DefenderError> {
        unreachable!()
    }
    async fn cancel_machine_action(
        &self,
        _: &ActionId,
        _: &str,
    ) -> Result<MachineAction, DefenderError> {
        unreachable!()
    }
}

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
    let action = ActionId::parse("7f0a8b9c-1d2e-4f30-8a4b-5c6d7e8f9a0c").unwrap();
    let run = run_id("native", "seal-lost", M1, "malware-file");
    let command = Command::run_script("collect.ps1", None);
    let now = OffsetDateTime::now_utc();
    let mut record = collecting_run(&run, "seal-lost", &machine, vec![command.clone()], &action);
    record.state = RunState::Submitted;
    record.deadline = now + time::Duration::hours(1);
    record.chain.hold("poll-1", now);
    put_run(&store, &record).await;

    let defender = TwoViews {
        calls: AtomicUsize::new(0),
        gate: tokio::sync::Notify::new(),
        action: action.clone(),
        machine: machine.clone(),
        command,
    };
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
            action_id: action.clone(),
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
        defender.gate.notify_one();
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
    let message_survives = ra.is_err() && rb.is_err();
    assert!(
        message_survives || !pending.is_empty() || (signature && published == 1),
        "the poll message is deleted (copy B returned {rb:?}) while the run is {:?} with manifest={manifest}, \
         signature={signature}, events={published}, and no message is left that will seal it",
        after.state
    );
}
