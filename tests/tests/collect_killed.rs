//! A collect invocation killed mid-copy (its future dropped, as a timed-out or crashed Lambda)
//! leaves no evidence object, right or wrong; the redelivered job copies the package whole.

use std::time::Duration;

use shared::adapters::http::HttpFetch;
use shared::adapters::memory::{MemQueue, MemStore};
use shared::defender::{Command, CommandStatus, LiveResponseRequest, MachineId};
use shared::messages::{CollectJob, MESSAGE_VERSION, encode};
use shared::ports::{ObjectStore, Put};
use shared::retry::Backoff;
use shared::stages::settings::CollectConfig;
use shared::store::{CommandOutcome, evidence_key, load_command, run_key};
use tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collect_killed_mid_copy_leaves_nothing_half_written() {
    let size = 200u64 << 20;
    let mut config = sim_config();
    config.devices[0].files[0].size = size;
    let sim = start_sim(config.clone()).await;
    let defender = client(&sim, &config);
    let machine = MachineId::parse(M1).unwrap();
    let commands = vec![Command::get_file(FILE)];
    let action = defender
        .run_live_response(
            &machine,
            &LiveResponseRequest {
                commands: commands.clone(),
                comment: "kill".into(),
            },
        )
        .await
        .unwrap();
    sim.advance(time::Duration::seconds(60));
    let done = defender.get_machine_action(&action.id).await.unwrap();
    assert_eq!(done.commands[0].command_status, CommandStatus::Completed);

    let store = MemStore::default();
    let queue = MemQueue::default();
    let run_id = run_id("native", "killed-collect", M1, "malware-file");
    let record = collecting_run(
        &run_id,
        "killed-collect",
        &machine,
        commands.clone(),
        &action.id,
    );
    store
        .put(
            &run_key(&run_id),
            serde_json::to_vec(&record).unwrap(),
            Put::Always,
        )
        .await
        .unwrap();
    let pending = tests::collecting_command(0, commands[0].clone());
    shared::store::put_command(&store, &run_id, &pending)
        .await
        .unwrap();

    let cfg = CollectConfig {
        bucket: "b".into(),
        budget: shared::budget::BudgetConfig::from_env(
            &std::collections::HashMap::<&str, &str>::new(),
        )
        .unwrap(),
        collect_queue_url: "collect".into(),
        dead_letter_queue_url: "dlq".into(),
        allowed_hosts: vec!["127.0.0.1".into()],
        part_size_min: 5 << 20,
        max_attempts: 3,
        retry: Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(1),
        },
        download_timeout: Duration::from_secs(30),
        time_budget: Duration::from_secs(600),
    };
    let fetch = HttpFetch::new(cfg.download_timeout).unwrap();
    let job = shared::messages::Delivery::new(
        "collect-1",
        encode(&CollectJob {
            v: MESSAGE_VERSION,
            run_id: run_id.clone(),
            action_id: action.id.clone(),
            index: 0,
            attempt: 0,
            link_errors: 0,
            prev: None,
        }),
    );

    // Kill it once 10 MiB have crossed: the future is dropped mid-copy.
    let copy = shared::stages::collect::handle(
        &cfg,
        &store,
        &queue,
        &defender,
        &fetch,
        &shared::clock::SystemClock,
        &job,
    );
    let started = async {
        while sim.stats().blob_bytes_sent < 10 << 20 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::select! {
        r = copy => panic!("the copy finished before it could be killed: {r:?}"),
        _ = started => {}
    }
    let key = evidence_key(&run_id, 0, commands[0].kind);
    assert!(
        store.get(&key).await.unwrap().is_none(),
        "no evidence object after the kill"
    );
    assert_eq!(
        load_command(&store, &run_id, 0)
            .await
            .unwrap()
            .unwrap()
            .outcome,
        CommandOutcome::Collecting
    );

    // SQS delivers the job again.
    let done = shared::stages::collect::handle(
        &cfg,
        &store,
        &queue,
        &defender,
        &fetch,
        &shared::clock::SystemClock,
        &job,
    )
    .await
    .unwrap();
    assert_eq!(done.outcome, "collected", "{}", done.detail);
    let rec = load_command(&store, &run_id, 0).await.unwrap().unwrap();
    assert_eq!(rec.outcome, CommandOutcome::Collected);
    let stored = store.get(&key).await.unwrap().unwrap().body;
    assert_eq!(Some(sha256_hex(&stored)), rec.sha256);
    assert_eq!(
        rec.sha256_decompressed.as_deref(),
        Some(sha256_hex(&expected_file(M1, FILE, size)).as_str())
    );
    assert!(
        store
            .get(&shared::store::manifest_key(&run_id))
            .await
            .unwrap()
            .is_some(),
        "the manifest follows"
    );
}
