//! A collect invocation killed mid-copy (its future dropped, as a timed-out or crashed Lambda)
//! leaves no evidence object, right or wrong; the redelivered job copies the package whole.

use std::time::Duration;

use shared::adapters::http::HttpFetch;
use shared::adapters::memory::{MemQueue, MemStore};
use shared::defender::{Command, CommandStatus};
use shared::messages::encode;
use shared::ports::ObjectStore;
use shared::stages::Ports;
use shared::stages::settings::CollectConfig;
use shared::store::{CommandOutcome, evidence_key, load_command};
use testkit::alerts::run_id;
use testkit::configs::collect_config;
use testkit::content::assert_evidence;
use testkit::records::{collect_job, seed_collecting_run};
use testkit::sim::{FILE, M1, client, finished_action, machine_id, sim_config, start_sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collect_killed_mid_copy_leaves_nothing_half_written() {
    let size = 200u64 << 20;
    let mut config = sim_config();
    config.devices[0].files[0].size = size;
    let sim = start_sim(config.clone()).await;
    let defender = client(&sim, &config);
    let machine = machine_id(M1);
    let commands = vec![Command::get_file(FILE)];
    let action = finished_action(&sim, &defender, &machine, &commands, "kill").await;
    let done = defender.get_machine_action(&action).await.unwrap();
    assert_eq!(done.commands[0].command_status, CommandStatus::Completed);

    let store = MemStore::default();
    let queue = MemQueue::default();
    let run_id = run_id("native", "killed-collect", M1, "malware-file");
    seed_collecting_run(
        &store,
        &run_id,
        "killed-collect",
        &machine,
        &commands,
        &action,
    )
    .await;

    let cfg = CollectConfig {
        time_budget: Duration::from_secs(600),
        ..collect_config()
    };
    let fetch = HttpFetch::new(cfg.download_timeout).unwrap();
    let job =
        shared::messages::Delivery::new("collect-1", encode(&collect_job(&run_id, &action, 0)));
    let collect = || {
        shared::stages::collect::handle(
            &cfg,
            Ports::new(
                &store,
                &queue,
                &defender,
                testkit::notary::notary(),
                &shared::clock::SystemClock,
            ),
            &fetch,
            &job,
        )
    };

    // Kill it once 10 MiB have crossed: the future is dropped mid-copy.
    let started = async {
        while sim.stats().blob_bytes_sent < 10 << 20 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::select! {
        r = collect() => panic!("the copy finished before it could be killed: {r:?}"),
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
    let done = collect().await.unwrap();
    assert_eq!(done.outcome, "collected", "{}", done.detail);
    let rec = load_command(&store, &run_id, 0).await.unwrap().unwrap();
    assert_eq!(rec.outcome, CommandOutcome::Collected);
    let stored = store.get(&key).await.unwrap().unwrap().body;
    assert_evidence(&rec.into(), &stored, M1, FILE, size);
    assert!(
        store
            .get(&shared::store::manifest_key(&run_id))
            .await
            .unwrap()
            .is_some(),
        "the manifest follows"
    );
}
