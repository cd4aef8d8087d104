//! A job acts only on its own run: a poll or collect job naming another action is refused with
//! its reason (issue 10, defect 6), and a copy of a submit message that read its run before
//! another copy's submission was recorded does not end the submitted run.

use std::sync::Arc;

use shared::adapters::http::HttpFetch;
use shared::adapters::memory::{MemQueue, MemStore};
use shared::defender::{ActionId, Command, MachineAction};
use shared::messages::{Delivery, MESSAGE_VERSION, PollJob, encode};
use shared::ports::{ObjectStore, Put};
use shared::stages::Ports;
use shared::stages::StageError;
use shared::store::{CommandOutcome, RunState, load_command, load_run, manifest_key};
use testkit::alerts::run_id;
use testkit::configs::{collect_config, poll_config, submit_config};
use testkit::defender::{Call, Scripted};
use testkit::records::{collect_job, collecting_run, put_run, seed_collecting_run};
use testkit::sim::{FILE, M1, M2, client, finished_action, machine_id, sim_config, start_sim};

/// Every call the simulator answered, on any endpoint.
fn calls(sim: &mde_sim::SimServer) -> u64 {
    sim.stats().calls.values().flat_map(|c| c.values()).sum()
}

fn rejected_code(result: Result<shared::stages::Done, StageError>) -> shared::codes::RejectCode {
    match result {
        Err(StageError::Reject { code, .. }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_collect_job_naming_another_action_is_refused_and_copies_nothing() {
    let config = sim_config();
    let sim = start_sim(config.clone()).await;
    let defender = client(&sim, &config);
    let commands = vec![Command::get_file(FILE)];
    let victim = machine_id(M1);
    let other = machine_id(M2);
    let own = finished_action(&sim, &defender, &victim, &commands, "victim").await;
    let foreign = finished_action(&sim, &defender, &other, &commands, "attacker").await;

    let store = MemStore::default();
    let queue = MemQueue::default();
    let run_id = run_id("native", "guarded-collect", M1, "malware-file");
    seed_collecting_run(&store, &run_id, "guarded-collect", &victim, &commands, &own).await;
    let cfg = collect_config();
    let fetch = HttpFetch::new(cfg.download_timeout).unwrap();
    let job = |action: &ActionId, index: u32| {
        Delivery::new(
            format!("collect-{index}-{action}"),
            encode(&collect_job(&run_id, action, index)),
        )
    };
    let clock = shared::clock::SystemClock;
    let collect = |msg: Delivery| {
        let (cfg, store, queue, defender, fetch, clock) =
            (&cfg, &store, &queue, &defender, &fetch, &clock);
        async move {
            shared::stages::collect::handle(
                cfg,
                Ports::new(store, queue, defender, testkit::notary::notary(), clock),
                fetch,
                &msg,
            )
            .await
        }
    };

    let links_before = sim.stats().links_issued;
    assert_eq!(
        rejected_code(collect(job(&foreign, 0)).await),
        "action_mismatch"
    );
    assert_eq!(
        rejected_code(collect(job(&own, 7)).await),
        "unknown_command"
    );
    assert_eq!(
        sim.stats().links_issued,
        links_before,
        "no result link was asked for"
    );
    let keys = store.list("").await.unwrap();
    assert!(
        !keys.iter().any(|k| k.contains("evidence")),
        "nothing was copied: {keys:?}"
    );
    let rec = load_command(&store, &run_id, 0).await.unwrap().unwrap();
    assert_eq!(rec.outcome, CommandOutcome::Collecting, "the command waits");

    // The run's own job still copies its own result.
    let done = collect(job(&own, 0)).await.unwrap();
    assert_eq!(done.outcome, "collected", "{}", done.detail);
}

#[tokio::test]
async fn a_poll_job_naming_another_action_is_refused() {
    let config = sim_config();
    let sim = start_sim(config.clone()).await;
    let defender = client(&sim, &config);
    let commands = vec![Command::get_file(FILE)];
    let victim = machine_id(M1);
    let own = finished_action(&sim, &defender, &victim, &commands, "victim").await;
    let foreign = finished_action(&sim, &defender, &machine_id(M2), &commands, "attacker").await;

    let store = MemStore::default();
    let queue = MemQueue::default();
    let run_id = run_id("native", "guarded-poll", M1, "malware-file");
    let mut record = collecting_run(&run_id, "guarded-poll", &victim, commands, &own);
    record.state = RunState::Submitted;
    put_run(&store, &record).await;
    let cfg = poll_config();
    let job = |action: &ActionId| {
        Delivery::new(
            format!("poll-{action}"),
            encode(&PollJob {
                v: MESSAGE_VERSION,
                run_id: run_id.clone(),
                action_id: action.clone(),
                polls: 0,
                cancels: 0,
                prev: None,
            }),
        )
    };
    let clock = shared::clock::SystemClock;
    let polled = calls(&sim);
    let result = shared::stages::poll::handle(
        &cfg,
        Ports::new(&store, &queue, &defender, testkit::notary::notary(), &clock),
        &defender,
        &job(&foreign),
    )
    .await;
    assert_eq!(rejected_code(result), "action_mismatch");
    assert_eq!(calls(&sim), polled, "Defender was not asked");
    let (after, _) = load_run(&store, &run_id).await.unwrap().unwrap();
    assert_eq!(after.state, RunState::Submitted);
    assert_eq!(after.chain.holder, None, "the forged job took no chain");

    // A run that has no action yet refuses any poll job.
    record.state = RunState::Submitting;
    record.action_id = None;
    put_run(&store, &record).await;
    let result = shared::stages::poll::handle(
        &cfg,
        Ports::new(&store, &queue, &defender, testkit::notary::notary(), &clock),
        &defender,
        &job(&own),
    )
    .await;
    assert_eq!(rejected_code(result), "action_mismatch");
}

#[tokio::test]
async fn a_late_copy_of_a_submit_message_does_not_end_a_run_another_copy_submitted() {
    let store = Arc::new(MemStore::default());
    let queue = MemQueue::default();
    let machine = machine_id(M1);
    let action = ActionId::parse("7f0a8b9c-1d2e-4f30-8a4b-5c6d7e8f9a0b").unwrap();
    let run_id = run_id("native", "late-copy", M1, "malware-file");
    let mut record = collecting_run(
        &run_id,
        "late-copy",
        &machine,
        vec![Command::get_file(FILE)],
        &action,
    );
    // As the copy read it: submission begun by the same message, the deadline just past.
    record.state = RunState::Submitting;
    record.action_id = None;
    record.deadline = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    put_run(&*store, &record).await;

    let cfg = submit_config();
    // Answers the submission look-up with nothing, after recording another copy's submission in
    // the run (as if that copy's 201 was written while this one was looking).
    let (world, submitted) = (store.clone(), action.clone());
    let defender = Scripted::default().before_each_call(move |call| {
        let (store, action) = (world.clone(), submitted.clone());
        Box::pin(async move {
            let Call::List(filter) = call else { return };
            let run = {
                let objects = store.objects.lock().unwrap();
                let (key, _) = objects
                    .iter()
                    .find(|(k, _)| k.ends_with("run.json"))
                    .expect("a run");
                key.clone()
            };
            let stored = store.get(&run).await.unwrap().unwrap();
            let mut rec: shared::store::RunRecord = serde_json::from_slice(&stored.body).unwrap();
            assert_eq!(filter.machine_id.as_ref(), Some(&rec.machine_id));
            rec.state = RunState::Submitted;
            rec.action_id = Some(action);
            store
                .put(&run, serde_json::to_vec(&rec).unwrap(), Put::Always)
                .await
                .unwrap();
        })
    });
    let msg = Delivery::new(
        "submit-1",
        encode(&shared::messages::SubmitJob {
            v: MESSAGE_VERSION,
            run_id: run_id.clone(),
            attempt: 1,
            prev: None,
        }),
    );
    let done = shared::stages::submit::handle(
        &cfg,
        Ports::new(
            &*store,
            &queue,
            &defender,
            testkit::notary::notary(),
            &shared::clock::SystemClock,
        ),
        testkit::library::sync_off(),
        &msg,
    )
    .await
    .unwrap();
    let (after, _) = load_run(&*store, &run_id).await.unwrap().unwrap();
    assert_eq!(
        after.state,
        RunState::Submitted,
        "the submitted run was left to poll ({}: {})",
        done.outcome,
        done.detail
    );
    assert_eq!(after.action_id, Some(action));
    assert!(after.outcome.is_none());
    assert!(
        defender.requests().is_empty(),
        "past its deadline, submit must not submit"
    );
    assert_eq!(
        defender.listings.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(
        store.get(&manifest_key(&run_id)).await.unwrap().is_none(),
        "no manifest for a run still running"
    );
}

/// Defect 7: a cancel Defender accepted without ending the action was not counted against the
/// cancel cap, so a run past its deadline was cancelled again every second, forever. Now each
/// accepted cancel counts, and after the cap the run ends timed out with the reason.
#[tokio::test]
async fn a_cancel_accepted_without_ending_the_action_counts_against_the_cancel_cap() {
    let store = MemStore::default();
    let queue = MemQueue::default();
    let run_id = run_id("native", "never-ends", M1, "malware-file");
    let action_id = ActionId::parse("00000000-0000-0000-0000-0000000000cc").unwrap();
    let mut record = collecting_run(
        &run_id,
        "never-ends",
        &machine_id(M1),
        vec![Command::get_file("C:\\x")],
        &action_id,
    );
    record.state = RunState::Submitted;
    record.chain.holder = Some("poll-0".into());
    let clock = shared::clock::ManualClock::at(record.deadline + time::Duration::seconds(1));
    put_run(&store, &record).await;
    let action: MachineAction = serde_json::from_value(serde_json::json!({
        "id": action_id.as_str(), "type": "LiveResponse", "status": "InProgress",
        "machineId": M1, "requestorComment": record.comment,
        "creationDateTimeUtc": "2026-11-30T05:00:00Z",
        "lastUpdateDateTimeUtc": "2026-11-30T05:00:02Z",
        "commands": [{"index": 0, "commandStatus": "InProgress", "errors": [],
                      "command": record.commands[0]}],
    }))
    .unwrap();
    // Defender whose action never ends: every read says InProgress, every cancel is accepted and
    // changes nothing.
    let defender = Scripted::with(vec![action]).accepting_cancels();
    let mut cfg = poll_config();
    cfg.status_from = shared::stages::settings::StatusFrom::Each;
    let mut msg = Delivery::new(
        "poll-0",
        encode(&PollJob {
            v: MESSAGE_VERSION,
            run_id: run_id.clone(),
            action_id: action_id.clone(),
            polls: 0,
            cancels: 0,
            prev: None,
        }),
    );
    for _ in 0..20 {
        shared::stages::poll::handle(
            &cfg,
            Ports::new(&store, &queue, &defender, testkit::notary::notary(), &clock),
            testkit::library::empty(),
            &msg,
        )
        .await
        .unwrap();
        let next = queue
            .sent
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|s| match s {
                shared::adapters::memory::Sent::Message {
                    id, queue, body, ..
                } if queue == &cfg.poll_queue_url => Some(Delivery::new(id.clone(), body.clone())),
                _ => None,
            });
        let (run, _) = load_run(&store, &run_id).await.unwrap().unwrap();
        if run.state != RunState::Submitted {
            break;
        }
        msg = next.expect("the next poll job");
        clock.advance(std::time::Duration::from_secs(600));
    }
    assert_eq!(
        defender.cancels.load(std::sync::atomic::Ordering::SeqCst),
        5,
        "cancelled up to the cap, then no more"
    );
    let (run, _) = load_run(&store, &run_id).await.unwrap().unwrap();
    assert_ne!(run.state, RunState::Submitted);
    assert_eq!(run.outcome, Some(shared::store::RunOutcome::TimedOut));
    assert!(
        run.reason
            .as_deref()
            .unwrap_or_default()
            .contains("accepted 5 cancels"),
        "{:?}",
        run.reason
    );
}
