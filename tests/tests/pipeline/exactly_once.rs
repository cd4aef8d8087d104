//! A submission that reached Defender but whose answer was lost (the connection dropped, or the
//! invocation died before recording it) is found again by the run id in its comment: the live
//! response runs once.

use shared::adapters::memory::{MemQueue, MemStore, Sent};
use shared::alerts::playbook::Playbooks;
use shared::messages::Delivery;
use shared::retry::Backoff;
use shared::stages::Ports;
use shared::stages::settings::SubmitConfig;
use shared::store::{RunState, load_run};
use std::time::Duration;
use testkit::alerts::native_alert;
use testkit::configs::{intake_config, submit_config};
use testkit::defender::LosesFirstAnswer;
use testkit::sim::{FILE, M1, client, sim_config, start_sim};

fn last_message(queue: &MemQueue, to: &str) -> (Delivery, Duration) {
    queue
        .sent
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find_map(|s| match s {
            Sent::Message {
                id,
                queue,
                body,
                delay,
            } if queue == to => Some((Delivery::new(id, body), *delay)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("nothing sent to {to}"))
}

#[tokio::test]
async fn a_lost_submit_answer_does_not_run_the_live_response_twice() {
    let config = sim_config();
    let sim = start_sim(config.clone()).await;
    let defender = LosesFirstAnswer::new(client(&sim, &config));
    let store = MemStore::default();
    let queue = MemQueue::default();
    let intake_cfg = intake_config();
    let submit_cfg = SubmitConfig {
        retry: Backoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        },
        ..submit_config()
    };
    let submit = |job: Delivery| {
        let (cfg, store, queue, defender) = (&submit_cfg, &store, &queue, &defender);
        async move {
            let clock = shared::clock::SystemClock;
            shared::stages::submit::handle(
                cfg,
                Ports::new(store, queue, defender, testkit::notary::notary(), &clock),
                testkit::library::sync_off(),
                &job,
            )
            .await
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let alert = native_alert("lost-1", M1, "Malware", &[("file_path", FILE)]).to_string();
    let done = shared::stages::intake::handle(
        &intake_cfg,
        shared::stages::intake::Rules::single(&Playbooks::bundled().unwrap()),
        &store,
        &queue,
        &shared::messages::Delivery::new("alert-1", alert),
        now,
    )
    .await
    .unwrap();
    let run = done.run_id.unwrap();

    let (job, _) = last_message(&queue, "submit");
    let first = submit(job).await.unwrap();
    assert_eq!(first.outcome, "transient", "{}", first.detail);
    assert_eq!(sim.stats().actions_created, 1, "Defender did accept it");
    let (retry, delay) = last_message(&queue, "submit");
    assert!(delay >= Duration::from_secs(1), "the retry waits");
    assert_eq!(
        load_run(&store, &run).await.unwrap().unwrap().0.state,
        RunState::Submitting
    );

    let second = submit(retry.clone()).await.unwrap();
    assert_eq!(second.outcome, "recovered", "{}", second.detail);
    assert_eq!(sim.stats().actions_created, 1, "no second live response");
    let (rec, _) = load_run(&store, &run).await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Submitted);
    assert_eq!(
        rec.action_id.as_ref().map(|a| a.to_string()),
        sim.actions()[0]["id"].as_str().map(str::to_string)
    );
    let (poll, delay) = last_message(&queue, "poll");
    assert!(poll.body.contains(rec.action_id.unwrap().as_str()));
    assert_eq!(delay, Duration::from_secs(15));

    // The same submit job delivered again (SQS is at-least-once) changes nothing.
    let third = submit(retry).await.unwrap();
    assert_eq!(third.outcome, "duplicate", "{}", third.detail);
    assert_eq!(sim.stats().actions_created, 1);
    let polls = queue
        .sent
        .lock()
        .unwrap()
        .iter()
        .filter(|s| matches!(s, Sent::Message { queue, .. } if queue == "poll"))
        .count();
    assert_eq!(polls, 1, "one poll chain for the run");
}
