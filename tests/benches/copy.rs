//! Copy, side by side: the same GetFile result link (the simulator, a release build in its own
//! process) streamed into the same S3 endpoint by (a) the collect stage, in a process of its own,
//! (b) the script a user would otherwise run, `curl "$link" | aws s3 cp - s3://…` with the pinned
//! AWS CLI, and (c) `curl "$link" > /dev/null`, the source's ceiling. Prints MB/s, the ratios
//! collect / script and collect / ceiling, and each one's peak RSS (its own VmHWM, read while it
//! runs), beside the targets. Asserts nothing; no test asserts a time.
//!
//! Run by `./dev bench` (which starts moto, builds the simulator and finds the AWS CLI); by hand:
//! `LR_MOTO_ENDPOINT=… LR_BENCH_SIM=target/release/mde-sim LR_BENCH_AWS=.venv/tools/bin/aws
//! cargo bench -p testkit --bench copy` (`LR_BENCH_MIB=100,1024`, `LR_BENCH_REPEAT=3` by default; `LR_BENCH_S3` names
//! the S3 endpoint when it is not moto, `LR_BENCH_S3_NAME` what to call it).
//!
//! The collect child is this program again (`--collect-child`), so that its peak RSS is collect's
//! alone, not the simulator's or this driver's.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mde_sim::{Device, DeviceFile, SimConfig};
use shared::adapters::http::HttpFetch;
use shared::adapters::memory::MemQueue;
use shared::adapters::s3::S3Store;
use shared::defender::{
    Command as LrCommand, DefenderClient, LiveResponseRequest, StaticCredentials, TokenProvider,
    http_client,
};
use shared::messages::{CollectJob, Delivery, encode};
use shared::stages::Ports;
use shared::stages::settings::CollectConfig;
use testkit::alerts::run_id;
use testkit::configs::collect_config;
use testkit::records::{collect_job, seed_collecting_run};
use testkit::sim::{SCOPE, machine, machine_id};

const PATH: &str = "D:\\cases\\disk-image.bin";
const MIB: u64 = 1 << 20;

/// The high-water mark of a process's resident set (`VmHWM`, KiB).
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for every child, reading each one's peak RSS until it exits; seconds taken and each
/// child's peak (KiB) and whether it succeeded.
fn watch(mut children: Vec<Child>, started: Instant) -> (f64, Vec<(u64, bool)>) {
    let mut peaks = vec![0u64; children.len()];
    let mut done: Vec<Option<bool>> = vec![None; children.len()];
    while done.iter().any(Option::is_none) {
        for (i, c) in children.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            if let Some(k) = vm_hwm(c.id()) {
                peaks[i] = peaks[i].max(k);
            }
            if let Some(status) = c.try_wait().expect("wait for a child") {
                done[i] = Some(status.success());
            }
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    (
        started.elapsed().as_secs_f64(),
        peaks
            .into_iter()
            .zip(done)
            .map(|(p, d)| (p, d.unwrap_or(false)))
            .collect(),
    )
}

fn client(api_base: &str, login_base: &str, creds: &str) -> DefenderClient<StaticCredentials> {
    let http = http_client(Duration::from_secs(60)).unwrap();
    let creds = StaticCredentials(shared::defender::Credentials::from_json(creds).unwrap());
    DefenderClient::new(
        http.clone(),
        api_base,
        TokenProvider::new(creds, http, login_base, SCOPE),
    )
}

fn collect_cfg(bucket: &str) -> CollectConfig {
    CollectConfig {
        bucket: bucket.into(),
        collect_queue_url: "collect".into(),
        dead_letter_queue_url: "dlq".into(),
        part_size_min: std::env::var("LR_BENCH_PART_MIB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(8)
            << 20,
        max_attempts: 1,
        download_timeout: Duration::from_secs(60),
        time_budget: Duration::from_secs(3600),
        ..collect_config()
    }
}

/// The collect child: one collect job (JSON in `LR_BENCH_JOB`) through the real stage, S3 at
/// the SDK's endpoint, Defender at the simulator.
async fn collect_child() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let sdk = testkit::aws::aws().await;
    let store = S3Store::new(
        shared::adapters::s3::s3_client(&sdk),
        env("LR_BENCH_BUCKET"),
    );
    let defender = client(
        &env("LR_BENCH_API"),
        &env("LR_BENCH_LOGIN"),
        &env("LR_BENCH_CREDS"),
    );
    let cfg = collect_cfg(&env("LR_BENCH_BUCKET"));
    let fetch = HttpFetch::new(cfg.download_timeout).unwrap();
    let job: CollectJob = serde_json::from_str(&env("LR_BENCH_JOB")).unwrap();
    let done = shared::stages::collect::handle(
        &cfg,
        Ports::new(
            &store,
            &MemQueue::default(),
            &defender,
            testkit::notary::notary(),
            &shared::clock::SystemClock,
        ),
        &fetch,
        &Delivery::new(format!("bench-{}", job.index), encode(&job)),
    )
    .await
    .expect("collect handled the job");
    if done.outcome != "collected" {
        eprintln!("collect: {} ({})", done.outcome, done.detail);
        std::process::exit(1);
    }
}

struct Row {
    what: String,
    secs: f64,
    peak_kib: u64,
    ok: bool,
}

impl Row {
    fn rate(&self, bytes: u64) -> f64 {
        bytes as f64 / self.secs / 1e6
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--collect-child") {
        collect_child().await;
        return;
    }
    if std::env::var("LR_MOTO_ENDPOINT").is_err() {
        eprintln!("copy bench: LR_MOTO_ENDPOINT is not set; run it with ./dev bench");
        std::process::exit(2);
    }
    let sim_bin = std::env::var("LR_BENCH_SIM").unwrap_or_else(|_| "target/release/mde-sim".into());
    let aws_cli = std::env::var("LR_BENCH_AWS").unwrap_or_else(|_| ".venv/tools/bin/aws".into());
    let s3_name = std::env::var("LR_BENCH_S3_NAME").unwrap_or_else(|_| "moto".into());
    let repeat: usize = std::env::var("LR_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let sizes: Vec<u64> = std::env::var("LR_BENCH_MIB")
        .unwrap_or_else(|_| "100,1024".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let devices: Vec<Device> = sizes
        .iter()
        .enumerate()
        .map(|(i, mib)| Device {
            machine_id: machine(0xc0b0000, i),
            files: vec![DeviceFile {
                path: PATH.into(),
                size: mib * MIB,
                secs: Some(1),
            }],
            ..Device::default()
        })
        .collect();
    let config = SimConfig {
        devices: devices.clone(),
        ..SimConfig::default()
    };
    let sim = testkit::sim::spawn_sim(&sim_bin, &config, "copy");
    let creds = testkit::sim::credentials_json(&config);
    let defender = client(&sim.api_base, &sim.login_base, &creds);
    let sdk = testkit::aws::aws().await;
    let s3 = shared::adapters::s3::s3_client(&sdk);
    let bucket = testkit::aws::unique("bench-copy");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let store = S3Store::new(s3.clone(), &bucket);
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
    let http = reqwest::Client::new();

    println!(
        "copy: simulator (release, own process) -> {s3_name} S3 at {endpoint}; collect parts {} MiB, {} in flight; median of {repeat} runs each (peak RSS: the highest)",
        collect_cfg(&bucket).part_size_min >> 20,
        shared::stages::collect::PARTS_IN_FLIGHT
    );
    println!(
        "{:<9} {:<28} {:>8} {:>9} {:>10}",
        "size", "copier", "seconds", "MB/s", "peak RSS"
    );
    let mut summary = Vec::new();
    for (device, mib) in devices.iter().zip(&sizes) {
        let bytes = mib * MIB;
        let machine = machine_id(&device.machine_id);
        let commands = vec![LrCommand::get_file(PATH)];
        let action = defender
            .run_live_response(
                &machine,
                &LiveResponseRequest {
                    commands: commands.clone(),
                    comment: format!("bench {mib}"),
                },
            )
            .await
            .expect("the simulator accepts the live response")
            .id;
        http.post(format!("{}/sim/advance", sim.api_base))
            .json(&serde_json::json!({"seconds": 60}))
            .send()
            .await
            .expect("advance the simulator");
        let link = || async {
            defender
                .result_download_link(&action, 0)
                .await
                .expect("a result link")
                .url
                .expose()
                .clone()
        };
        // Each copier runs `repeat` times, interleaved; the median time and the highest peak count.
        let mut trials: Vec<Vec<Row>> = Vec::new();
        for trial in 0..repeat {
            let mut rows = Vec::new();

            // (c) the source's ceiling.
            let url = link().await;
            let started = Instant::now();
            let curl = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", &url])
                .spawn()
                .expect("curl");
            let (secs, peaks) = watch(vec![curl], started);
            rows.push(Row {
                what: "curl > /dev/null".into(),
                secs,
                peak_kib: peaks[0].0,
                ok: peaks[0].1,
            });

            // (b) the script: curl | aws s3 cp -.
            let url = link().await;
            let started = Instant::now();
            let mut curl = Command::new("curl")
                .args(["-sS", &url])
                .stdout(Stdio::piped())
                .spawn()
                .expect("curl");
            let pipe = curl.stdout.take().unwrap();
            let aws = Command::new(&aws_cli)
                .args([
                    "s3",
                    "cp",
                    "-",
                    &format!("s3://{bucket}/script/{mib}-{trial}.gz"),
                    "--endpoint-url",
                    &endpoint,
                    "--only-show-errors",
                ])
                .stdin(pipe)
                .spawn()
                .unwrap_or_else(|e| panic!("{aws_cli}: {e}"));
            let (secs, peaks) = watch(vec![curl, aws], started);
            rows.push(Row {
                what: "curl | aws s3 cp -".into(),
                secs,
                peak_kib: peaks[1].0,
                ok: peaks[0].1 && peaks[1].1,
            });

            // (a) the collect stage, in its own process.
            let run = run_id(
                "native",
                &format!("bench-{mib}-{trial}"),
                machine.as_str(),
                "bench",
            );
            seed_collecting_run(
                &store,
                &run,
                &format!("bench-{mib}"),
                &machine,
                &commands,
                &action,
            )
            .await;
            let job = collect_job(&run, &action, 0);
            let started = Instant::now();
            let child = Command::new(std::env::current_exe().unwrap())
                .arg("--collect-child")
                .env("LR_BENCH_BUCKET", &bucket)
                .env("LR_BENCH_API", &sim.api_base)
                .env("LR_BENCH_LOGIN", &sim.login_base)
                .env("LR_BENCH_CREDS", &creds)
                .env("LR_BENCH_JOB", serde_json::to_string(&job).unwrap())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("the collect child");
            let (secs, peaks) = watch(vec![child], started);
            rows.push(Row {
                what: "collect stage".into(),
                secs,
                peak_kib: peaks[0].0,
                ok: peaks[0].1,
            });
            trials.push(rows);
        }
        let rows: Vec<Row> = (0..trials[0].len())
            .map(|i| {
                let mut secs: Vec<f64> = trials.iter().map(|t| t[i].secs).collect();
                secs.sort_by(f64::total_cmp);
                Row {
                    what: trials[0][i].what.clone(),
                    secs: secs[secs.len() / 2],
                    peak_kib: trials.iter().map(|t| t[i].peak_kib).max().unwrap_or(0),
                    ok: trials.iter().all(|t| t[i].ok),
                }
            })
            .collect();
        for r in &rows {
            println!(
                "{:<9} {:<28} {:>8.2} {:>9.1} {:>7.1} MiB{}",
                format!("{mib} MiB"),
                r.what,
                r.secs,
                r.rate(bytes),
                r.peak_kib as f64 / 1024.0,
                if r.ok { "" } else { "  FAILED" }
            );
        }
        let (ceiling, script, collect) = (&rows[0], &rows[1], &rows[2]);
        summary.push((
            *mib,
            collect.rate(bytes) / script.rate(bytes),
            collect.rate(bytes) / ceiling.rate(bytes),
            collect.peak_kib,
        ));
    }
    println!();
    println!(
        "ratios on {s3_name} (targets: collect / script >= 1.0; collect / ceiling >= 0.8 on a fast S3; collect peak RSS <= 64 MiB, flat within 10 % from 100 MiB to 1 GiB):"
    );
    for (mib, vs_script, vs_ceiling, peak) in &summary {
        println!(
            "  {mib:>5} MiB: collect / script {vs_script:.2}, collect / ceiling {vs_ceiling:.2}, collect peak RSS {:.1} MiB",
            *peak as f64 / 1024.0
        );
    }
    if let (Some(first), Some(last)) = (summary.first(), summary.last())
        && first.0 != last.0
    {
        println!(
            "  collect peak RSS {} MiB -> {} MiB: {:+.1} %",
            first.0,
            last.0,
            (last.3 as f64 / first.3.max(1) as f64 - 1.0) * 100.0
        );
    }
    drop(sim);
}
