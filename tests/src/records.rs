//! Run and command records as poll leaves them when an action has ended and its results await
//! collection, a store seeded with them, and the collect job that follows.

use shared::defender::{ActionId, Command, MachineId};
use shared::ids::RunId;
use shared::messages::{CollectJob, MESSAGE_VERSION};
use shared::ports::{ObjectStore, Put};
use shared::store::{CommandOutcome, CommandRecord, RunRecord, RunState};

use crate::alerts::native_alert;

/// A run record as poll leaves it when the action has ended and its results await collection.
pub fn collecting_run(
    run_id: &RunId,
    alert_id: &str,
    machine: &MachineId,
    commands: Vec<Command>,
    action_id: &ActionId,
) -> RunRecord {
    let now = time::OffsetDateTime::now_utc();
    let alert = shared::alerts::parse(
        &native_alert(alert_id, machine.as_str(), "Malware", &[]).to_string(),
    )
    .expect("a valid alert");
    RunRecord {
        v: shared::store::RECORD_VERSION,
        run_id: run_id.clone(),
        alert,
        playbook: "malware-file".into(),
        playbook_sha256: None,
        playbook_file_sha256: None,
        refused_parameters: Vec::new(),
        machine_id: machine.clone(),
        commands,
        comment: run_id.comment_tag(),
        state: RunState::Collecting,
        created_at: now,
        deadline: now + time::Duration::hours(1),
        submit_attempts: 1,
        action_id: Some(action_id.clone()),
        action_status: None,
        submitted_at: Some(now),
        finished_at: None,
        computer_dns_name: None,
        requestor: None,
        action_created: None,
        action_last_update: None,
        cancelled_by_pipeline: false,
        outcome: None,
        reason: None,
        chain: Default::default(),
        unfinished: None,
        library: Vec::new(),
        library_after: None,
        statuses: Vec::new(),
        announcement: None,
    }
}

/// The record poll leaves for a command whose result is waiting to be copied.
pub fn collecting_command(index: u32, command: Command) -> CommandRecord {
    let mut rec = CommandRecord::unfinished(
        index,
        command,
        CommandOutcome::Collecting,
        "",
        time::OffsetDateTime::now_utc(),
    );
    rec.command_status = Some(shared::defender::CommandStatus::Completed);
    rec.reason = None;
    rec
}

/// Writes `record` as its run's record, replacing any.
pub async fn put_run<S: ObjectStore>(store: &S, record: &RunRecord) {
    store
        .put(
            &shared::store::run_key(&record.run_id),
            serde_json::to_vec(record).expect("a run record encodes"),
            Put::Always,
        )
        .await
        .expect("the run record is stored");
}

/// Seeds `store` as poll leaves it for a run whose action has ended: the run record
/// ([`collecting_run`]) and a collecting record for each command ([`collecting_command`]).
pub async fn seed_collecting_run<S: ObjectStore>(
    store: &S,
    run_id: &RunId,
    alert_id: &str,
    machine: &MachineId,
    commands: &[Command],
    action_id: &ActionId,
) -> RunRecord {
    let record = collecting_run(run_id, alert_id, machine, commands.to_vec(), action_id);
    put_run(store, &record).await;
    for (index, command) in commands.iter().enumerate() {
        shared::store::put_command(
            store,
            run_id,
            &collecting_command(index as u32, command.clone()),
        )
        .await
        .expect("the command record is stored");
    }
    record
}

/// The job poll sends to have a command's result copied: its first attempt.
pub fn collect_job(run_id: &RunId, action_id: &ActionId, index: u32) -> CollectJob {
    CollectJob {
        v: MESSAGE_VERSION,
        run_id: run_id.clone(),
        action_id: action_id.clone(),
        index,
        attempt: 0,
        link_errors: 0,
        prev: None,
    }
}
