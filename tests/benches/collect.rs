//! Collect's throughput and memory: a GetFile package of 100 MiB and of 1 GiB streamed from the
//! simulator into moto's S3 through the real collect stage. Prints numbers; asserts nothing.
//! Needs moto: `./dev moto` in another shell, then
//! `LR_MOTO_ENDPOINT=... cargo bench -p testkit --bench collect` (LR_BENCH_MIB=100,1024 by default).

use std::time::Instant;

use mde_sim::{Device, DeviceFile, SimConfig};
use shared::adapters::http::HttpFetch;
use shared::adapters::s3::S3Store;
use shared::adapters::sqs::SqsQueue;
use shared::defender::Command;
use shared::messages::encode;
use shared::stages::settings::CollectConfig;
use testkit::alerts::run_id;
use testkit::aws::{aws, unique};
use testkit::configs::collect_config;
use testkit::records::{collect_job, seed_collecting_run};
use testkit::sim::{client, finished_action, machine, machine_id, start_sim};

const PATH: &str = "D:\\cases\\disk-image.bin";

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    if std::env::var("LR_MOTO_ENDPOINT").is_err() {
        eprintln!(
            "collect bench: LR_MOTO_ENDPOINT is not set; start moto with ./dev moto and export what it prints"
        );
        std::process::exit(2);
    }
    let sizes: Vec<u64> = std::env::var("LR_BENCH_MIB")
        .unwrap_or_else(|_| "100,1024".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let devices: Vec<Device> = sizes
        .iter()
        .enumerate()
        .map(|(i, mib)| Device {
            machine_id: machine(0xbe0000, i),
            files: vec![DeviceFile {
                path: PATH.into(),
                size: mib << 20,
                secs: Some(1),
            }],
            ..Device::default()
        })
        .collect();
    let config = SimConfig {
        devices: devices.clone(),
        ..SimConfig::default()
    };
    let sim = start_sim(config.clone()).await;
    let defender = client(&sim, &config);
    let sdk = aws().await;
    let s3 = shared::adapters::s3::s3_client(&sdk);
    let bucket = unique("bench");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let store = S3Store::new(s3.clone(), &bucket);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = sqs
        .create_queue()
        .queue_name(unique("bench-collect"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let cfg = CollectConfig {
        bucket: bucket.clone(),
        collect_queue_url: queue_url.clone(),
        dead_letter_queue_url: queue_url,
        part_size_min: 8 << 20,
        max_attempts: 1,
        download_timeout: std::time::Duration::from_secs(60),
        time_budget: std::time::Duration::from_secs(870),
        ..collect_config()
    };
    let fetch = HttpFetch::new(cfg.download_timeout).unwrap();
    let queue = SqsQueue::new(sqs);
    println!(
        "collect bench: simulator → collect stage → moto S3 (multipart, {} MiB parts)",
        cfg.part_size_min >> 20
    );
    println!("baseline RSS {:.1} MiB", rss_kib("VmRSS:") as f64 / 1024.0);
    for (device, mib) in devices.iter().zip(&sizes) {
        let machine = machine_id(&device.machine_id);
        let commands = vec![Command::get_file(PATH)];
        let action = finished_action(&sim, &defender, &machine, &commands, "bench").await;
        let run_id = run_id("native", &format!("bench-{mib}"), machine.as_str(), "bench");
        seed_collecting_run(
            &store,
            &run_id,
            &format!("bench-{mib}"),
            &machine,
            &commands,
            &action,
        )
        .await;
        let job = collect_job(&run_id, &action, 0);
        let started = Instant::now();
        let done = shared::stages::collect::handle(
            &cfg,
            &store,
            &queue,
            &defender,
            &fetch,
            testkit::notary::notary(),
            &shared::clock::SystemClock,
            &shared::messages::Delivery::new(format!("bench-{mib}"), encode(&job)),
        )
        .await
        .unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(done.outcome, "collected", "{}", done.detail);
        let bytes = (mib << 20) as f64;
        println!(
            "collect {mib:>5} MiB: {secs:6.2} s = {:7.1} MB/s; peak RSS so far {:.1} MiB (process: stage + simulator)",
            bytes / secs / 1e6,
            rss_kib("VmHWM:") as f64 / 1024.0
        );
    }
}
