//! Burst: N alerts on N devices (default 200) through the four stages against the Defender
//! simulator at Defender's documented limits (10 submissions a sliding minute, 25 sessions at once,
//! 100 GETs a minute and 1,500 an hour per API), time-scaled. The simulator is the release build in
//! its own process (`LR_BENCH_SIM`); the stages run under the local runner (the same entry points
//! the Lambda binaries run, `LR_BENCH_BURST_INSTANCES` runners, default 2: the template's
//! MaximumConcurrency for submit and poll) on moto (`LR_MOTO_ENDPOINT`), with the template's
//! settings scaled to the simulator's clock: the poll schedule and retry backoff divided by the
//! scale, and the budget's minute (`BUDGET_MINUTE_MS`) one simulated minute exactly.
//!
//! Prints the makespan (first alert sent to last manifest written) against a lower bound from the
//! limits and the run length (printed with its formula and inputs), the 429s the simulator sent,
//! status and all GET calls per run, and the time from each action's end (its last command's end,
//! as the simulator reports it) to its results copied (collect's record of each) and to its
//! manifest, as median and p95. Times are simulated (Defender's) seconds: real seconds times the
//! scale, so the pipeline's real overheads (moto, the runner) count `scale` times over. Asserts
//! nothing.
//!
//! The stages reach moto through `testkit::cas_proxy`, which makes moto's conditional writes atomic
//! as S3's are (`LR_BENCH_BURST_CAS_PROXY=0`: straight to moto, whose racing conditional writes can
//! lose budget updates and so provoke 429s that S3 would not).
//!
//! The stages run in a child process (this program again, `--pipeline-child`): their metric lines
//! (CloudWatch EMF on stdout) go to a file, and the counts they add up to are printed per stage.
//!
//! `LR_BENCH_BURST_N` (200), `LR_BENCH_BURST_SCALE` (5: a simulated 15 s of the default poll
//! schedule is 3 real seconds, and pacing's whole-second SQS delays cost at most 5 simulated
//! seconds), `LR_BENCH_BURST_RUN_SECS` (60: pickup 5 s, the triage script, then the file; a
//! comma-separated list runs one burst per length).
//!
//! Run by `./dev bench`; by hand: `LR_MOTO_ENDPOINT=… AWS_ENDPOINT_URL=… LR_BENCH_SIM=target/
//! release/mde-sim cargo bench -p testkit --bench burst`.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use mde_sim::{Device, DeviceFile, Script, SimConfig, Stats};
use shared::store::Manifest;
use testkit::sim::SimProcess;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const FILE: &str = "C:\\Users\\Public\\Downloads\\invoice.pdf.exe";
const FILE_BYTES: u64 = 64 << 10;
/// Collect invocations at once, over the runners: the template's default (`CollectMaxConcurrency`).
/// Every conditional write goes through one serializing proxy into moto; 10 collects at once once
/// overloaded the budget object (37 redeliveries after lost compare-and-swaps): a call that loses
/// on contention is now a short paced wait and its settlement rides on the next write (issue 22).
const COLLECT_AT_ONCE: usize = 10;
/// Issue 14's target: makespan at most this times the quota's lower bound.
const MAX_RATIO: f64 = 1.05;

/// The stages' process; killed when dropped (the bench is over: whatever it was doing is moot).
struct Stages(Child);

impl Drop for Stages {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The stages' process: the local runners over the stack `spec` names, until killed.
async fn pipeline_child(spec: &str) {
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spec).expect("the stages' spec"))
            .expect("the stages' spec parses");
    let map = |v: &serde_json::Value| -> BTreeMap<String, String> {
        serde_json::from_value(v.clone()).expect("a map of strings")
    };
    let stack = local_stack::ProvisionedStack {
        queue_urls: map(&spec["queue_urls"]),
        dlq_urls: map(&spec["dlq_urls"]),
        ..Default::default()
    };
    let env = map(&spec["env"]);
    // moto's conditional writes are not atomic (see `testkit::cas_proxy`): one at a time per object, as S3 orders them.
    let endpoint = match spec["cas_proxy"].as_bool() {
        Some(true) => testkit::cas_proxy::start(&testkit::aws::moto_endpoint()).await,
        _ => testkit::aws::moto_endpoint(),
    };
    let sdk = testkit::aws::sdk_as(&endpoint, "testing", "testing").await;
    let mut pipelines = Vec::new();
    let instances = spec["instances"].as_u64().unwrap_or(1).max(1) as usize;
    for _ in 0..instances {
        pipelines.push(
            local_stack::runner::LocalPipeline::start(
                &sdk,
                &stack,
                &env,
                local_stack::runner::RunnerOptions {
                    failed_visibility: Some(Duration::from_secs(1)),
                    collect_loops: COLLECT_AT_ONCE.div_ceil(instances),
                    ..Default::default()
                },
            )
            .await
            .expect("the stages start"),
        );
    }
    std::fs::write(spec["ready"].as_str().unwrap(), b"ready").unwrap();
    std::future::pending::<()>().await;
}

/// The simulator's clock against this machine's: (simulated time, wall time) at one moment.
async fn sim_clock(http: &reqwest::Client, sim: &SimProcess) -> (OffsetDateTime, OffsetDateTime) {
    let before = OffsetDateTime::now_utc();
    let v: serde_json::Value = http
        .get(format!("{}/sim/time", sim.api_base))
        .send()
        .await
        .expect("the simulator answers /sim/time")
        .json()
        .await
        .expect("its time is JSON");
    let after = OffsetDateTime::now_utc();
    let now = OffsetDateTime::parse(v["now"].as_str().unwrap(), &Rfc3339).unwrap();
    (now, before + (after - before) / 2)
}

async fn sim_stats(http: &reqwest::Client, sim: &SimProcess) -> Stats {
    http.get(format!("{}/sim/stats", sim.api_base))
        .send()
        .await
        .expect("the simulator answers /sim/stats")
        .json()
        .await
        .expect("its stats parse")
}

/// A median and a 95th percentile (nearest rank) of `v`.
fn median_p95(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.5), rank(0.95))
}

/// `secs` simulated seconds at `scale`, in whole real seconds (at least 1), as SQS delays are.
fn scaled(secs: u64, scale: f64) -> u64 {
    ((secs as f64 / scale).round() as u64).max(1)
}

struct Plan {
    n: usize,
    scale: f64,
    run_secs: u64,
    instances: usize,
    /// The stages reach moto through `testkit::cas_proxy` (atomic conditional writes).
    cas_proxy: bool,
}

async fn burst(plan: &Plan, sim_bin: &str, sdk: &aws_config::SdkConfig) {
    let Plan {
        n,
        scale,
        run_secs,
        instances,
        cas_proxy,
    } = *plan;
    let started = Instant::now();
    // A session: picked up 5 s after submission, the triage script, then the file.
    let pickup = mde_sim::config::SimSettings::default().pickup_secs;
    let script_secs = (run_secs.saturating_sub(pickup) / 2).max(1);
    let file_secs = run_secs.saturating_sub(pickup + script_secs).max(1);
    let run_secs = pickup + script_secs + file_secs;
    let machines: Vec<String> = (0..n)
        .map(|i| testkit::sim::machine(0xb0_0257_0000 + run_secs * 0x10000, i))
        .collect();
    let mut config = SimConfig {
        devices: machines
            .iter()
            .map(|m| Device {
                machine_id: m.clone(),
                dns_name: format!("host-{}.corp", &m[34..]),
                command_secs: script_secs,
                files: vec![DeviceFile {
                    path: FILE.into(),
                    size: FILE_BYTES,
                    secs: Some(file_secs),
                }],
                ..Device::default()
            })
            .collect(),
        scripts: vec![Script {
            name: "triage.ps1".into(),
            output: "triage of {machine}: {args}".into(),
            secs: Some(script_secs),
            ..Script::default()
        }],
        ..SimConfig::default()
    };
    config.sim.time_scale = scale;
    let limits = config.limits.clone();
    let sim = testkit::sim::spawn_sim(sim_bin, &config, &format!("burst-{run_secs}"));
    let http = reqwest::Client::new();

    let stack = testkit::aws::provision(
        sdk,
        testkit::aws::unique("bench-burst"),
        &testkit::sim::credentials_json(&config),
    )
    .await
    .expect("provisioning on moto");
    // The template's settings, in the simulator's time.
    let poll_delays: Vec<String> = shared::stages::settings::DEFAULT_POLL_DELAYS
        .split(',')
        .map(|d| scaled(d.parse().unwrap(), scale).to_string())
        .collect();
    let retry_base = scaled(15, scale);
    let mut env = stack.env.clone();
    for (k, v) in [
        ("MDE_API_BASE_URL", sim.api_base.clone()),
        ("MDE_LOGIN_BASE_URL", sim.login_base.clone()),
        ("DOWNLOAD_ALLOWED_HOSTS", "127.0.0.1".into()),
        ("POLL_DELAYS_SECS", poll_delays.join(",")),
        ("RETRY_BASE_SECS", retry_base.to_string()),
        (
            "RETRY_MAX_SECS",
            scaled(900, scale).max(retry_base).to_string(),
        ),
        (
            "BUDGET_MINUTE_MS",
            ((60_000.0 / scale).round() as u64).to_string(),
        ),
    ] {
        env.insert(k.into(), v);
    }
    let dir = std::env::temp_dir().join(format!(
        "lr-bench-burst-{}-{run_secs}-stages",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = serde_json::json!({
        "env": env,
        "queue_urls": stack.queue_urls,
        "dlq_urls": stack.dlq_urls,
        "instances": instances,
        "cas_proxy": cas_proxy,
        "ready": dir.join("ready"),
    });
    std::fs::write(dir.join("stages.json"), spec.to_string()).unwrap();
    let metrics_file = dir.join("metrics.jsonl");
    let mut stages = Stages(
        Command::new(std::env::current_exe().unwrap())
            .arg("--pipeline-child")
            .arg(dir.join("stages.json"))
            .stdout(std::fs::File::create(&metrics_file).unwrap())
            .spawn()
            .expect("the stages' process starts"),
    );
    let until = Instant::now() + Duration::from_secs(60);
    while !dir.join("ready").exists() {
        assert!(
            stages.0.try_wait().unwrap().is_none(),
            "the stages' process ended"
        );
        assert!(Instant::now() < until, "the stages did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let s3 = shared::adapters::s3::s3_client(sdk);
    let (sim0, wall0) = sim_clock(&http, &sim).await;
    let to_sim = |wall: OffsetDateTime| sim0 + (wall - wall0) * scale;

    // The bound: the quota's least makespan for N runs of `run_secs` each.
    let per_min = limits.submissions_per_minute as u64;
    let subs = (n as u64).div_ceil(per_min).saturating_sub(1) * 60 + run_secs;
    let subs_issue = (n as u64).div_ceil(per_min) * 60 + run_secs;
    let sessions = (n as u64).div_ceil(limits.running_sessions as u64) * run_secs;
    let gets_bound = |calls: u64| {
        ((calls
            .div_ceil(limits.gets_per_minute as u64)
            .saturating_sub(1))
            * 60)
            .max(
                calls
                    .div_ceil(limits.gets_per_hour as u64)
                    .saturating_sub(1)
                    * 3600,
            )
    };
    // At least one status GET per run, and one result link per command with a result (2).
    let gets = gets_bound(n as u64).max(gets_bound(2 * n as u64));
    let bound = subs.max(sessions).max(gets) as f64;
    println!(
        "burst: {n} alerts on {n} devices, runs of {run_secs} s (pickup {pickup} s, triage script {script_secs} s, file {file_secs} s); simulator {sim_bin} at time scale {scale} (1 real s = {scale} simulated s); {instances} local runners on moto (collect: {COLLECT_AT_ONCE} at once over them; the template allows 10){}; POLL_DELAYS_SECS={} (the default / {scale}), BUDGET_MINUTE_MS={}",
        if cas_proxy {
            " (through testkit::cas_proxy: one conditional write per object at a time, as S3 makes them atomic)"
        } else {
            " (direct: its conditional writes can race)"
        },
        env["POLL_DELAYS_SECS"],
        env["BUDGET_MINUTE_MS"]
    );
    println!(
        "  not scaled (real seconds, so {scale} times longer in simulated time): SQS delays in whole seconds (a paced submission or GET spends the sub-second rest inside its invocation), waits written in seconds in the stages' code (a granted call's 120 s limit), the runner's 1 s receive wait, and every moto and runner overhead; the poll status board's 5 s freshness (as in production: its listings load S3 and the budget as they would there)"
    );
    println!(
        "  bound = max(submissions, sessions, GETs) = max({subs}, {sessions}, {gets}) = {bound:.0} s: submissions (ceil({n}/{per_min})-1) min + {run_secs} s (the last of {n} cannot be posted before then, and runs {run_secs} s); sessions ceil({n}/{})*{run_secs} s; GETs per API, {n} status and {} link calls at {}/min and {}/h: (ceil(calls/{})-1) min, (ceil(calls/{})-1) h",
        limits.running_sessions,
        2 * n,
        limits.gets_per_minute,
        limits.gets_per_hour,
        limits.gets_per_minute,
        limits.gets_per_hour
    );

    // Every alert, in batches of ten.
    let first_alert = OffsetDateTime::now_utc();
    let mut runs = Vec::with_capacity(n);
    for (b, chunk) in machines.chunks(10).enumerate() {
        let mut entries = Vec::new();
        for (j, m) in chunk.iter().enumerate() {
            let alert_id = format!("burst-{run_secs}-{}", b * 10 + j);
            runs.push(testkit::alerts::run_id(
                "native",
                &alert_id,
                m,
                "malware-file",
            ));
            let body = testkit::stack::file_alert(&alert_id, m, FILE).to_string();
            entries.push(
                SendMessageBatchRequestEntry::builder()
                    .id(format!("a{j}"))
                    .message_body(body)
                    .build()
                    .unwrap(),
            );
        }
        sqs.send_message_batch()
            .queue_url(&stack.queue_urls["alerts"])
            .set_entries(Some(entries))
            .send()
            .await
            .expect("alerts sent");
    }

    // Wait for every manifest (listing the bucket; the times come from the manifests).
    let limit = Duration::from_secs_f64((3.0 * bound / scale).max(120.0));
    let waited = Instant::now();
    let mut last_note = Instant::now();
    let manifest_keys = loop {
        let mut keys = Vec::new();
        let mut pages = s3
            .list_objects_v2()
            .bucket(&stack.bucket)
            .prefix("evidence/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.expect("list the evidence");
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter(|k| k.ends_with("/manifest.json"))
                    .map(String::from),
            );
        }
        if keys.len() >= n || waited.elapsed() > limit {
            break keys;
        }
        if last_note.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "  … {} of {n} manifests after {:.0} real s",
                keys.len(),
                waited.elapsed().as_secs_f64()
            );
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    drop(stages);
    let stats = sim_stats(&http, &sim).await;

    let mut manifests = Vec::new();
    for key in &manifest_keys {
        let body = s3
            .get_object()
            .bucket(&stack.bucket)
            .key(key)
            .send()
            .await
            .expect("read a manifest")
            .body
            .collect()
            .await
            .expect("its bytes")
            .into_bytes();
        manifests.push(serde_json::from_slice::<Manifest>(&body).expect("a manifest parses"));
    }
    let succeeded = manifests
        .iter()
        .filter(|m| m.outcome == Some(shared::store::RunOutcome::Succeeded))
        .count();
    // Why the others did not succeed, by reason (the first few words of each distinct one).
    let mut why: std::collections::BTreeMap<String, usize> = Default::default();
    for m in manifests
        .iter()
        .filter(|m| m.outcome != Some(shared::store::RunOutcome::Succeeded))
    {
        let reason = m.reason.clone().unwrap_or_default();
        *why.entry(format!(
            "{:?}: {}",
            m.outcome,
            shared::text::cut(&reason, 160)
        ))
        .or_default() += 1;
    }
    for (reason, count) in &why {
        println!("  not succeeded ({count}): {reason}");
    }
    let last = manifests.iter().map(|m| m.completed_at).max();
    let makespan = last.map(|l| (l - first_alert).as_seconds_f64() * scale);
    // Where the time went: the posts (Defender's creation times) and the actions' ends.
    let start = to_sim(first_alert);
    let since_start = |t: Option<OffsetDateTime>| t.map(|t| (t - start).as_seconds_f64());
    let created: Vec<OffsetDateTime> = manifests
        .iter()
        .filter_map(|m| m.action.as_ref()?.created.as_deref())
        .filter_map(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .collect();
    let first_post = since_start(created.iter().min().copied());
    let last_post = since_start(created.iter().max().copied());
    let mut last_end = None;
    let (mut to_copy, mut to_manifest) = (Vec::new(), Vec::new());
    for m in &manifests {
        let end = m
            .commands
            .iter()
            .filter_map(|c| c.end_time.as_deref())
            .filter_map(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .max();
        let Some(end) = end else { continue };
        last_end = last_end.max(Some(end));
        to_manifest.push((to_sim(m.completed_at) - end).as_seconds_f64());
        for c in m.commands.iter().filter(|c| c.s3_key.is_some()) {
            if let Some(at) = c.recorded_at {
                to_copy.push((to_sim(at) - end).as_seconds_f64());
            }
        }
    }
    let calls = |endpoint: &str| -> u64 {
        stats
            .calls
            .get(endpoint)
            .map(|by| by.values().sum())
            .unwrap_or(0)
    };
    let status = calls("get_action") + calls("list_actions");
    let get_endpoints = [
        "get_action",
        "list_actions",
        "link",
        "cancel",
        "library_list",
    ];
    let all_gets: u64 = get_endpoints.iter().map(|e| calls(e)).sum();
    let breakdown: Vec<String> = get_endpoints
        .iter()
        .map(|e| format!("{e} {}", calls(e)))
        .collect();
    match makespan {
        Some(ms) => println!(
            "  makespan {:.0} s ({:.0} real s) = {:.3} x bound (target <= {MAX_RATIO}: {}); x the issue's looser bound ceil({n}/{per_min}) min + {run_secs} s = {subs_issue} s: {:.3}",
            ms,
            ms / scale,
            ms / bound,
            if ms / bound <= MAX_RATIO {
                "met"
            } else {
                "MISSED"
            },
            ms / subs_issue.max(sessions).max(gets) as f64,
        ),
        None => println!("  makespan: no manifest"),
    }
    println!(
        "  manifests {}/{n} ({succeeded} succeeded); 429s {} (goal 0; {} at a documented limit); most submissions in a sliding minute {} (limit {}), most sessions at once {} (limit {}); actions {}",
        manifests.len(),
        stats.throttled,
        stats.throttled_by_limit,
        stats.max_submissions_per_minute,
        limits.submissions_per_minute,
        stats.max_concurrent_sessions,
        limits.running_sessions,
        stats.actions_created
    );
    println!(
        "  calls per run: status {:.2} (GET of an action and list calls), all GETs {:.2} ({}; target for status: <= 6)",
        status as f64 / n as f64,
        all_gets as f64 / n as f64,
        breakdown.join(", ")
    );
    let (copy_med, copy_p95) = median_p95(&mut to_copy);
    let (man_med, man_p95) = median_p95(&mut to_manifest);
    println!(
        "  action's end -> each result copied (collect's record): median {copy_med:.1} s, p95 {copy_p95:.1} s ({:.2} / {:.2} real s); -> manifest written: median {man_med:.1} s, p95 {man_p95:.1} s ({:.2} / {:.2} real s)",
        copy_med / scale,
        copy_p95 / scale,
        man_med / scale,
        man_p95 / scale
    );
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} s"));
    println!(
        "  where the time went (simulated s after the first alert): first post {}, last post {} (the quota allows the last at (ceil({n}/{per_min})-1) min = {} s), last action's end {}, last manifest {}",
        fmt(first_post),
        fmt(last_post),
        (n as u64).div_ceil(per_min).saturating_sub(1) * 60,
        fmt(since_start(last_end)),
        fmt(makespan),
    );
    let mut dead = BTreeMap::new();
    for (stage, url) in &stack.dlq_urls {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .ok();
        let count = attrs
            .and_then(|a| {
                a.attributes()
                    .and_then(|m| {
                        m.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                    })
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0);
        dead.insert(stage.clone(), count);
    }
    // What the stages counted (EMF lines: one per batch, counts per stage).
    let mut counts: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for line in std::fs::read_to_string(&metrics_file)
        .unwrap_or_default()
        .lines()
    {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let stage = v["Stage"].as_str().unwrap_or("?").to_string();
        for def in v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if def["Unit"] == "Count"
                && let Some(name) = def["Name"].as_str()
            {
                *counts
                    .entry(stage.clone())
                    .or_default()
                    .entry(name.to_string())
                    .or_default() += v[name].as_f64().unwrap_or(0.0);
            }
        }
    }
    for (stage, c) in &counts {
        let list: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
        println!("  {stage}: {}", list.join(", "));
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "  dead letters {:?}; this burst took {:.0} real s",
        dead,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--pipeline-child") {
        pipeline_child(&args[i + 1]).await;
        return;
    }
    if std::env::var("LR_MOTO_ENDPOINT").is_err() {
        eprintln!("burst bench: LR_MOTO_ENDPOINT is not set; run it with ./dev bench");
        std::process::exit(2);
    }
    let sim_bin = std::env::var("LR_BENCH_SIM").unwrap_or_else(|_| "target/release/mde-sim".into());
    let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
    let n: usize = var("LR_BENCH_BURST_N", "200")
        .parse()
        .expect("LR_BENCH_BURST_N");
    let scale: f64 = var("LR_BENCH_BURST_SCALE", "5")
        .parse()
        .expect("LR_BENCH_BURST_SCALE");
    let instances: usize = var("LR_BENCH_BURST_INSTANCES", "2")
        .parse()
        .expect("LR_BENCH_BURST_INSTANCES");
    let sdk = testkit::aws::aws().await;
    for run_secs in var("LR_BENCH_BURST_RUN_SECS", "60").split(',') {
        let plan = Plan {
            n,
            scale,
            run_secs: run_secs.trim().parse().expect("LR_BENCH_BURST_RUN_SECS"),
            instances,
            cas_proxy: var("LR_BENCH_BURST_CAS_PROXY", "1") != "0",
        };
        burst(&plan, &sim_bin, &sdk).await;
    }
}
