//! Polling, side by side: status calls per run and detection delay (from the action's real end to
//! the poll stage seeing it) of the pipeline's polling, against polling each action every 10 s.
//! The pipeline's own code decides every call: intake records each run, submit posts it and sends
//! the first poll job, and `shared::stages::poll` does whatever it does to learn the action's
//! state and sends each next job, all on the in-memory ports (`shared::adapters::memory`) with a
//! manual clock, against Defender as a model (`testkit::defender::Model`) whose actions end a set
//! time after they were posted. The
//! settings are the template's defaults (`PollConfig::from_env` with `POLL_DELAYS_SECS` and
//! `POLL_STATUS` unset; `LR_BENCH_POLL_ENV="POLL_DELAYS_SECS=15,30 POLL_STATUS=each"` tries others).
//! The queue is played in time order: each message goes to its stage once its delay has passed,
//! the clock set to that moment; a run is detected when poll sends its first collect job.
//! Status calls are every call that reads an action's state: GET of one action and list calls
//! (both count against Defender's per-API limits; a list serves every run it shows).
//!
//! For each run length T (`LR_BENCH_POLL_MINUTES`, default 1,3,10) the figures are means over runs
//! whose ends are spread evenly over a range, so that where one end falls against the schedule
//! does not decide the result: over the 10 s around T (the length itself, ends 0.5 s apart), and
//! over every end a run alone shares its detection with (from the latest end detected earlier to
//! the moment an end at T is detected, found by bisection; at most 200 ends): over that range the
//! pipeline's mean delay is its true one for runs of about that length, wherever they end. Each
//! range is run with every run alone, and as fleets of 25 runs at once (the session cap; alerts at
//! the same moment, so submit's pacing posts them over three minutes), as calls that serve every
//! run (a listing) are then shared.
//! Fixed 10 s polling is given by its formula over the same range: ceil(e/10 s) GETs for an end at
//! e, and a mean delay of 5 s (an end uniform over a 10 s interval waits 10 s * ceil(e/10 s) - e,
//! uniform over [0, 10 s)); and, as a check, driven through the same stages
//! (`POLL_DELAYS_SECS=10 POLL_STATUS=each`) for runs alone over the 10 s around T. Prints each
//! beside the targets (at most 6 status calls per 1-10 minute run; detection delay at
//! most 1.15 times fixed 10 s polling's). Asserts nothing.
//!
//! `cargo bench -p testkit --bench polling` (run by `./dev bench`; needs no network).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use shared::adapters::memory::{MemQueue, MemStore, Sent};
use shared::alerts::playbook::Playbooks;
use shared::clock::{Clock, ManualClock};
use shared::messages::{CollectJob, Delivery};
use shared::stages::Ports;
use shared::stages::settings::{IntakeConfig, PollConfig, SubmitConfig};
use testkit::defender::{Device, Model, ModelCall};
use time::OffsetDateTime;

/// The narrow range of ends is this wide around the run length.
const SPREAD: f64 = 10.0;
/// Ends are this far apart in the narrow range (half a second).
const STEP: f64 = 0.5;
/// At most this many ends per range (a wide range's ends are further apart).
const MAX_ENDS: usize = 200;
/// Runs at once in the fleet case: Defender's session cap.
const FLEET: usize = 25;
/// Issue 14's targets.
const MAX_GETS: f64 = 6.0;
const MAX_DELAY_RATIO: f64 = 1.15;

type Configs = (IntakeConfig, SubmitConfig, PollConfig);

/// The stages' settings as the template sets them, with `extra` added.
fn configs(extra: &[(String, String)]) -> Configs {
    let mut env: HashMap<String, String> = [
        ("EVIDENCE_BUCKET", "bench-polling"),
        ("SUBMIT_QUEUE_URL", "https://sqs.local/submit"),
        ("POLL_QUEUE_URL", "https://sqs.local/poll"),
        ("COLLECT_QUEUE_URL", "https://sqs.local/collect"),
        ("DEAD_LETTER_QUEUE_URL", "https://sqs.local/dlq"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(extra.iter().cloned());
    (
        IntakeConfig::from_env(&env).expect("intake settings"),
        SubmitConfig::from_env(&env).expect("submit settings"),
        PollConfig::from_env(&env).expect("poll settings"),
    )
}

/// What a group of runs came to: per run, status calls shared out (gets + lists / runs), and
/// each run's detection delay (s); the looks at the first run and every status call (s after
/// its post).
struct Outcome {
    calls: f64,
    delays: Vec<f64>,
    looks: Vec<f64>,
    calls_at: Vec<f64>,
}

/// Runs whose actions end `ends` (s after each is posted), all alerts at once, through intake,
/// submit and poll until poll has handed every run to collect.
async fn runs(cfgs: &Configs, playbooks: &Playbooks, ends: &[f64]) -> Outcome {
    let (intake_cfg, submit_cfg, poll_cfg) = cfgs;
    let clock = ManualClock::at(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap());
    let store = MemStore::default();
    let queue = MemQueue::default();
    let machines: Vec<String> = (0..ends.len())
        .map(|i| testkit::sim::machine(0x5e1ec7ed << 32, i))
        .collect();
    let defender = Model::new(
        &clock,
        machines
            .iter()
            .zip(ends)
            .map(|(m, e)| {
                let runs_for = Duration::from_secs_f64(*e);
                (testkit::sim::machine_id(m), Device::Online { runs_for })
            })
            .collect(),
    );

    for (i, m) in machines.iter().enumerate() {
        let alert = testkit::alerts::native_alert(
            &format!("bench-polling-{i}"),
            m,
            "Malware",
            &[("file_path", "C:\\Users\\a\\Downloads\\invoice.exe")],
        )
        .to_string();
        shared::stages::intake::handle(
            intake_cfg,
            shared::stages::intake::Rules::single(playbooks),
            &store,
            &queue,
            &shared::messages::Delivery::new("alert", alert),
            clock.now(),
        )
        .await
        .expect("intake takes the alert");
    }
    // Messages not yet handed to a stage: (visible at, order sent, id, queue, body).
    let mut waiting: Vec<(OffsetDateTime, usize, String, String, String)> = Vec::new();
    let mut seen = 0;
    let mut detected: BTreeMap<String, f64> = BTreeMap::new();
    let mut looks = Vec::new();
    let mut handled = 0u64;
    while detected.len() < ends.len() {
        handled += 1;
        assert!(handled < 5_000_000, "the runs were not all detected");
        {
            let sent = queue.sent.lock().unwrap();
            for (n, s) in sent.iter().enumerate().skip(seen) {
                match s {
                    Sent::Message {
                        id,
                        queue,
                        body,
                        delay,
                    } => waiting.push((
                        clock.now() + *delay,
                        n,
                        id.clone(),
                        queue.clone(),
                        body.clone(),
                    )),
                    Sent::Rejected { reason, .. } => panic!("a stage refused a message: {reason}"),
                }
            }
            seen = sent.len();
        }
        let next = (0..waiting.len())
            .min_by_key(|&i| (waiting[i].0, waiting[i].1))
            .expect("a message is waiting");
        let (at, _, id, q, body) = waiting.swap_remove(next);
        clock.set(at);
        let msg = Delivery::new(id, body.clone());
        let done = match q.rsplit('/').next().unwrap_or_default() {
            "submit" => {
                shared::stages::submit::handle(
                    submit_cfg,
                    Ports::new(&store, &queue, &defender, testkit::notary::notary(), &clock),
                    testkit::library::sync_off(),
                    &msg,
                )
                .await
            }
            "poll" => {
                let done = shared::stages::poll::handle(
                    poll_cfg,
                    Ports::new(&store, &queue, &defender, testkit::notary::notary(), &clock),
                    testkit::library::empty(),
                    &msg,
                )
                .await;
                let job: serde_json::Value = serde_json::from_str(&body).unwrap();
                let (first, posted) = defender.first().expect("an action was posted");
                if job["action_id"].as_str() == Some(first.as_str()) {
                    looks.push((at - posted).as_seconds_f64());
                }
                done
            }
            "collect" => {
                let job: CollectJob = serde_json::from_str(&body).expect("a collect job");
                let end = defender
                    .end_of(&job.action_id)
                    .expect("an action on an online device");
                detected
                    .entry(job.action_id.to_string())
                    .or_insert((at - end).as_seconds_f64());
                continue;
            }
            other => panic!("a message to an unexpected queue: {other}"),
        };
        done.unwrap_or_else(|e| panic!("{q}: {e}"));
    }
    // Status calls: reads of one action and listings.
    let status_calls = defender.calls(&[ModelCall::Get, ModelCall::List]);
    let calls = status_calls.len() as f64 / ends.len() as f64;
    let (_, posted) = defender.first().expect("an action was posted");
    let calls_at = status_calls
        .iter()
        .map(|t| (*t - posted).as_seconds_f64())
        .collect();
    Outcome {
        calls,
        delays: detected.into_values().collect(),
        looks,
        calls_at,
    }
}

/// Mean status calls per run and mean detection delay (s) over `ends`, in groups of `at_once`.
async fn mean_over(
    cfgs: &Configs,
    playbooks: &Playbooks,
    ends: &[f64],
    at_once: usize,
) -> (f64, f64) {
    let (mut calls, mut delays) = (0.0, Vec::new());
    for group in ends.chunks(at_once) {
        let o = runs(cfgs, playbooks, group).await;
        calls += o.calls * group.len() as f64;
        delays.extend(o.delays);
    }
    (
        calls / ends.len() as f64,
        delays.iter().sum::<f64>() / delays.len().max(1) as f64,
    )
}

/// When a run alone whose action ends `end` s after its post is detected (s after its post).
async fn detected_at(cfgs: &Configs, playbooks: &Playbooks, end: f64) -> f64 {
    end + runs(cfgs, playbooks, &[end]).await.delays[0]
}

/// The ends a run alone shares its detection with, around `t`: (from, to], where `to` is when an
/// end at `t` is detected and `from` the latest end detected earlier (to 0.05 s, by bisection:
/// detection only moves later as the end does). Over this range the schedule's luck averages out.
async fn detection_interval(cfgs: &Configs, playbooks: &Playbooks, t: f64) -> (f64, f64) {
    let to = detected_at(cfgs, playbooks, t).await;
    let (mut lo, mut hi) = (t, t);
    let mut step = 1.0;
    while lo > 0.0 && detected_at(cfgs, playbooks, lo).await >= to {
        hi = lo;
        lo = (lo - step).max(0.0);
        step *= 2.0;
    }
    while hi - lo > 0.05 {
        let mid = (lo + hi) / 2.0;
        if detected_at(cfgs, playbooks, mid).await >= to {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    (lo, to)
}

/// `n` rounded up to whole fleets of `FLEET` ends, spread evenly over (from, to].
fn spread_fleets(from: f64, to: f64, n: usize) -> Vec<f64> {
    let n = n.div_ceil(FLEET) * FLEET;
    (0..n)
        .map(|k| from + (k as f64 + 0.5) * (to - from) / n as f64)
        .collect()
}

/// Ends spread evenly over (from, to]: the midpoints of equal steps, `STEP` long or, for a wide
/// range, `MAX_ENDS` of them.
fn spread(from: f64, to: f64) -> Vec<f64> {
    let n = (((to - from) / STEP).round() as usize).clamp(1, MAX_ENDS);
    (0..n)
        .map(|k| from + (k as f64 + 0.5) * (to - from) / n as f64)
        .collect()
}

/// Fixed 10 s polling by formula over (from, to]: mean GETs (ceil(e/10 s)) on a 0.01 s grid,
/// and the mean delay of an end uniform over the range, 5 s.
fn fixed_formula(from: f64, to: f64) -> (f64, f64) {
    let n = ((to - from) * 100.0).round().max(1.0) as usize;
    let gets: f64 = (0..n)
        .map(|k| ((from + (k as f64 + 0.5) * (to - from) / n as f64) / 10.0).ceil())
        .sum();
    (gets / n as f64, 5.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let started = std::time::Instant::now();
    let minutes: Vec<f64> = std::env::var("LR_BENCH_POLL_MINUTES")
        .unwrap_or_else(|_| "1,3,10".into())
        .split(',')
        .filter_map(|m| m.trim().parse().ok())
        .collect();
    let custom: Vec<(String, String)> = std::env::var("LR_BENCH_POLL_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pipeline = configs(&custom);
    let fixed = configs(&[
        ("POLL_DELAYS_SECS".into(), "10".into()),
        ("POLL_STATUS".into(), "each".into()),
    ]);
    let playbooks = Playbooks::bundled().expect("the bundled playbooks");
    let longest = minutes.iter().cloned().fold(1.0, f64::max) * 60.0;
    // The pipeline's looks, as its stages make them, for a run that outlasts every bucket.
    let alone = runs(&pipeline, &playbooks, &[longest]).await;
    let list = |v: &[f64]| {
        let shown: Vec<String> = v.iter().take(12).map(|s| format!("{s:.0}")).collect();
        format!(
            "{}{}",
            shown.join(", "),
            if v.len() > shown.len() { ", …" } else { "" }
        )
    };

    println!(
        "polling: intake, submit and poll (the pipeline's code) on in-memory ports with a manual clock, against Defender as a model (testkit::defender::Model) whose actions end a set time after they are posted; status calls = GETs of one action + list calls, shared out over the runs in flight"
    );
    println!(
        "  pipeline: {} (poll_delays {:?}); a run alone is looked at {} s after its post, and Defender asked at {} s",
        if custom.is_empty() {
            "the template's defaults".to_string()
        } else {
            custom
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        },
        pipeline
            .2
            .poll_delays
            .iter()
            .map(|d| d.as_secs())
            .collect::<Vec<_>>(),
        list(&alone.looks),
        list(&alone.calls_at),
    );
    println!(
        "  fixed 10 s: by formula over the same ends, ceil(e/10 s) GETs and a mean delay of 5.0 s (an end uniform over a 10 s interval waits 10 s*ceil(e/10 s)-e, uniform over [0, 10 s)); checked by driving the stages with POLL_DELAYS_SECS=10 POLL_STATUS=each (runs alone, 10 s around T)"
    );
    println!(
        "  {:<7} {:<34} {:>10} {:>10} {:>9} {:>13}   {:>10} {:>10} {:>9} {:>12} {:>22}",
        "run",
        "ends (s after post)",
        "calls 1",
        "calls 25",
        "calls 10s",
        "target <= 6",
        "delay 1",
        "delay 25",
        "delay 10s",
        "worst / 10s",
        "target <= 1.15 x 10s"
    );
    let mut total = 1 + longest as usize;
    for m in &minutes {
        let t = m * 60.0;
        let (before, after) = detection_interval(&pipeline, &playbooks, t).await;
        let ranges = [
            (t - SPREAD / 2.0, t + SPREAD / 2.0, "T +- 5 s"),
            (before, after, "detected together"),
        ];
        for (from, to, what) in ranges {
            let ends = spread(from, to);
            let fleets = spread_fleets(from, to, ends.len());
            total += ends.len() + fleets.len();
            let (c1, d1) = mean_over(&pipeline, &playbooks, &ends, 1).await;
            let (c25, d25) = mean_over(&pipeline, &playbooks, &fleets, FLEET).await;
            let (c10, d10) = fixed_formula(from, to);
            let worst = d1.max(d25) / d10;
            println!(
                "  {:<7} {:<34} {:>10.2} {:>10.2} {:>9.2} {:>13}   {:>8.1} s {:>8.1} s {:>7.1} s {:>12.2} {:>22}",
                format!("{m} min"),
                format!("{from:.1}-{to:.1} ({what})"),
                c1,
                c25,
                c10,
                format!("{} / {}", met(c1 <= MAX_GETS), met(c25 <= MAX_GETS)),
                d1,
                d25,
                d10,
                worst,
                format!(
                    "{} (<= {:.2} s)",
                    met(worst <= MAX_DELAY_RATIO),
                    MAX_DELAY_RATIO * d10
                ),
            );
        }
    }
    // The check: fixed 10 s polling driven through the same stages.
    let mut check = Vec::new();
    for m in &minutes {
        let t = m * 60.0;
        let ends = spread(t - SPREAD / 2.0, t + SPREAD / 2.0);
        total += ends.len();
        let (c, d) = mean_over(&fixed, &playbooks, &ends, 1).await;
        check.push(format!("{m} min: {c:.2} GETs, {d:.1} s"));
    }
    println!(
        "  check, fixed 10 s driven (runs alone, T +- 5 s): {}",
        check.join("; ")
    );
    println!(
        "  (columns 1 / 25: each run alone / fleets of 25 runs at once; {total} runs driven, besides the bisection's, in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
