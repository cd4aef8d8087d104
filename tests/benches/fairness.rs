//! Fairness between tenants: tenant A sends a burst of alerts (default 200, twenty times its 10
//! submissions a minute), tenant B sends 10 alerts one simulated minute later. B's makespan beside
//! A's burst, against B's makespan alone (the same 10 alerts with nothing else running), says
//! whether A's paced and re-enqueued jobs crowd out B's (target: at most 1.10); A's makespan,
//! against the bound its own quota sets (its alerts at its submissions a minute, then one run),
//! says whether A still goes at full speed.
//!
//! Each tenant has its own simulator (its own Defender, at Defender's documented limits), both
//! time-scaled; the four stages run in this process under the local runner on moto, one deployment
//! with a tenant registry naming both. Makespans are in simulated (Defender's) seconds: from the
//! first alert sent to the last manifest written. Asserts nothing.
//!
//! The stages reach moto through `testkit::cas_proxy` (atomic conditional writes, as S3's), with
//! the template's poll schedule and backoff divided by the scale, as the burst benchmark runs them.
//!
//! `LR_BENCH_FAIR_A` (200), `LR_BENCH_FAIR_B` (10), `LR_BENCH_FAIR_SCALE` (1: Defender's own clock; a larger scale compresses time, and with it multiplies every real second the stages and moto spend). Run by
//! `./dev bench`; by hand: `LR_MOTO_ENDPOINT=… AWS_ENDPOINT_URL=… cargo bench -p testkit --bench
//! fairness`.

use std::time::Duration;

use mde_sim::{Device, DeviceFile, SimConfig, SimServer};
use shared::ids::RunId;
use testkit::alerts::tenant_run_id;
use testkit::sim::{machine, start_sim};
use testkit::stack::Stack;
use testkit::tenants;
use time::OffsetDateTime;

const FILE: &str = "C:\\Users\\Public\\Downloads\\invoice.pdf.exe";
const A: (&str, &str) = ("alpha", "a0a0a0a0-0000-4000-8000-00000000000a");
const B: (&str, &str) = ("bravo", "b0b0b0b0-0000-4000-8000-00000000000b");

fn number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fleet(tenant: (&str, &str), n: usize, scale: f64) -> SimConfig {
    let mut c = SimConfig {
        clients: vec![tenants::client(tenant.0, tenant.1)],
        devices: (0..n)
            .map(|i| Device {
                machine_id: machine(0xfa1e_0000, i),
                dns_name: format!("{}-{i}.corp", tenant.0),
                command_secs: 20,
                files: vec![DeviceFile {
                    path: FILE.into(),
                    size: 16 << 10,
                    secs: None,
                }],
                ..Device::default()
            })
            .collect(),
        ..SimConfig::default()
    };
    c.sim.time_scale = scale;
    c
}

/// Sends `n` alerts of `tenant` (ids `{prefix}-{i}`), returns their runs.
async fn send(stack: &Stack, tenant: &str, prefix: &str, n: usize) -> Vec<RunId> {
    let mut runs = Vec::new();
    for i in 0..n {
        let (id, m) = (format!("{prefix}-{i}"), machine(0xfa1e_0000, i));
        stack
            .send_alert(&tenants::alert(Some(tenant), &id, &m, FILE, "Malware"))
            .await;
        runs.push(tenant_run_id(tenant, "native", &id, &m, "malware-file"));
    }
    runs
}

/// Waits for every run's manifest, by listing the runs' tenant's evidence prefix (one request a
/// round, so that watching 200 runs does not load moto beside the pipeline); the simulated time
/// when the last was seen.
async fn sealed(stack: &Stack, sim: &SimServer, runs: &[RunId]) -> OffsetDateTime {
    let Some(tenant) = runs.first().and_then(|r| r.tenant()) else {
        return sim.now();
    };
    let prefix = shared::store::keys::evidence_prefix(Some(&tenant));
    let mut waiting: Vec<String> = runs.iter().map(shared::store::manifest_key).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    while !waiting.is_empty() {
        let mut listed = std::collections::BTreeSet::new();
        let mut token = None;
        loop {
            let page = stack
                .s3
                .list_objects_v2()
                .bucket(&stack.stack.bucket)
                .prefix(&prefix)
                .set_continuation_token(token)
                .send()
                .await
                .expect("list the tenant's evidence");
            listed.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        waiting.retain(|k| !listed.contains(k));
        assert!(
            std::time::Instant::now() < deadline,
            "{} runs unsealed after an hour",
            waiting.len()
        );
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    sim.now()
}

fn secs(d: time::Duration) -> f64 {
    d.as_seconds_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    // `LR_BENCH_LOG=FILE`: the stages' logs (JSON lines, `RUST_LOG` or info) into FILE.
    if let Ok(path) = std::env::var("LR_BENCH_LOG") {
        let file = std::fs::File::create(&path).expect("the log file");
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::sync::Mutex::new(file))
            .init();
    }
    let (n_a, n_b) = (
        number("LR_BENCH_FAIR_A", 200) as usize,
        number("LR_BENCH_FAIR_B", 10) as usize,
    );
    let scale = number("LR_BENCH_FAIR_SCALE", 1) as f64;
    // A time-scaled simulator's minute, with a tenth to spare for the two clocks' drift.
    let minute_ms = if scale == 1.0 {
        60_000
    } else {
        (60_000.0 / scale * 1.1).round() as u64
    };
    let extra = [
        ("BUDGET_MINUTE_MS", minute_ms.to_string()),
        // The template's poll schedule (5 s) and retry backoff at the simulator's clock.
        (
            "POLL_DELAYS_SECS",
            ((5.0 / scale).round() as u64).max(1).to_string(),
        ),
        (
            "RETRY_BASE_SECS",
            ((15.0 / scale).round() as u64).max(1).to_string(),
        ),
        (
            "RETRY_MAX_SECS",
            ((900.0 / scale).round() as u64).max(1).to_string(),
        ),
    ];
    let mut stack = Stack::provisioned_at_scale(fleet(A, n_a, scale), &extra).await;
    let b_sim = start_sim(fleet(B, n_a.max(n_b), scale)).await;
    let mut text = String::new();
    for (tenant, sim) in [(A, &stack.sim), (B, &b_sim)] {
        let secret =
            tenants::secret(&stack.sdk, tenant.0, &tenants::client(tenant.0, tenant.1)).await;
        text.push_str(&tenants::entry(tenant.0, tenant.1, sim, &secret, ""));
    }
    tenants::deploy_registry(&mut stack, &text).await;
    // moto's conditional writes made atomic, as S3's are (the burst benchmark does the same).
    let proxy = testkit::cas_proxy::start(&testkit::aws::moto_endpoint()).await;
    stack.sdk = testkit::aws::sdk_as(&proxy, "testing", "testing").await;
    // Two runners (the template's MaximumConcurrency for submit and poll), collect at the
    // template's default concurrency (CollectMaxConcurrency) over them, as the burst runs.
    // Received messages stay invisible for the queue's own visibility timeout, as under Lambda (a
    // shorter one has a slow batch's messages delivered again while they are still being handled:
    // duplicate work that loads moto and is not what a deployment sees).
    let options = || local_stack::runner::RunnerOptions {
        collect_loops: 5,
        failed_visibility: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    stack.start_pipeline_with(options()).await;
    let second =
        local_stack::runner::LocalPipeline::start(&stack.sdk, &stack.stack, &stack.env, options())
            .await
            .expect("a second runner");

    // B alone.
    let start = b_sim.now();
    let runs = send(&stack, B.0, "alone", n_b).await;
    let alone = secs(sealed(&stack, &b_sim, &runs).await - start);
    let alone_phases = phases(&stack, &runs, scale).await;

    // A's burst, then B one simulated minute later.
    let a_start = stack.sim.now();
    let a_runs = send(&stack, A.0, "burst", n_a).await;
    tokio::time::sleep(Duration::from_secs_f64(60.0 / scale)).await;
    let b_start = b_sim.now();
    let b_runs = send(&stack, B.0, "beside", n_b).await;
    let beside = secs(sealed(&stack, &b_sim, &b_runs).await - b_start);
    let b_phases = phases(&stack, &b_runs, scale).await;
    let a_makespan = secs(sealed(&stack, &stack.sim, &a_runs).await - a_start);
    let (a_stats, b_stats) = (stack.sim.stats(), b_sim.stats());
    // A's own quota: its alerts at 10 submissions a minute (the last minute's batch submitted
    // (n/10 - 1) minutes after the first), then B's run alone as the length of one run.
    let a_bound = ((n_a as f64 / 10.0).ceil() - 1.0).max(0.0) * 60.0 + alone;
    println!(
        "fairness: tenant B's {n_b} alerts alone {alone:.0} s, one minute into tenant A's burst of {n_a} {beside:.0} s: ratio {:.2} (target <= 1.10); A's burst {a_makespan:.0} s against its own quota's bound {a_bound:.0} s: ratio {:.2}; 429s A {} B {} (simulated seconds, scale {scale})",
        beside / alone,
        a_makespan / a_bound,
        a_stats.throttled,
        b_stats.throttled
    );
    for (which, p) in [("alone", alone_phases), ("beside A", b_phases)] {
        println!(
            "  tenant B {which}, median simulated seconds: received to submitted {:.0}, submitted to its end seen by poll {:.0}, to collected {:.0}, to sealed {:.0}",
            p[0], p[1], p[2], p[3]
        );
    }
    second.stop().await;
    stack.stop().await;
}

/// Where `runs` spent their time: the medians of received to submitted, submitted to the action's
/// end as poll first saw it, to the run's evidence collected (the run finished), to sealed, in
/// simulated seconds (the records' times are the pipeline's real clock).
async fn phases(stack: &Stack, runs: &[RunId], scale: f64) -> [f64; 4] {
    let mut parts: [Vec<f64>; 4] = Default::default();
    for run in runs {
        let Some(body) = stack.object(&shared::store::run_key(run)).await else {
            continue;
        };
        let Ok(r) = serde_json::from_slice::<shared::store::RunRecord>(&body) else {
            continue;
        };
        let sealed = r.announcement.as_ref().and_then(|a| a.published_at);
        let seen_end = r
            .statuses
            .iter()
            .find(|s| s.status.is_final())
            .map(|s| s.at);
        if let (Some(sub), Some(end), Some(fin), Some(seal)) =
            (r.submitted_at, seen_end, r.finished_at, sealed)
        {
            parts[0].push(secs(sub - r.created_at) * scale);
            parts[1].push(secs(end - sub) * scale);
            parts[2].push(secs(fin - end) * scale);
            parts[3].push(secs(seal - fin) * scale);
        }
    }
    parts.map(|mut v| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    })
}
