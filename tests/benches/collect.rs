//! Collect's throughput and memory: a GetFile package of 100 MiB and of 1 GiB streamed from the
//! simulator into moto's S3 through the real collect stage. Prints numbers; asserts nothing.
//! Needs moto: `./dev moto` in another shell, then
//! `LR_MOTO_ENDPOINT=... cargo bench -p tests --bench collect` (LR_BENCH_MIB=100,1024 by default).

use std::time::Instant;

use mde_sim::{Device, DeviceFile, SimConfig};
use shared::adapters::http::HttpFetch;
use shared::adapters::s3::S3Store;
use shared::adapters::sqs::SqsQueue;
use shared::defender::{Command, LiveResponseRequest, MachineId};
use shared::messages::{CollectJob, MESSAGE_VERSION, encode};
use shared::ports::{ObjectStore, Put};
use shared::retry::Backoff;
use shared::stages::settings::CollectConfig;
use shared::store::run_key;
use tests::*;

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
            machine_id: format!("{:040x}", 0xbe0000 + i),
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
        budget: shared::budget::BudgetConfig::from_env(
            &std::collections::HashMap::<&str, &str>::new(),
        )
        .unwrap(),
        collect_queue_url: queue_url.clone(),
        dead_letter_queue_url: queue_url,
        allowed_hosts: vec!["127.0.0.1".into()],
        part_size_min: 8 << 20,
        max_attempts: 1,
        retry: Backoff {
            base: std::time::Duration::from_secs(1),
            cap: std::time::Duration::from_secs(1),
        },
        download_timeout: std::time::Duration::from_secs(60),
        time_budget: std::time::Duration::from_secs(870),
    };
    let fetch = HttpFetch::new(cfg.download_timeout).unwrap();
    let queue = SqsQueue::new(sqs);
    println!(
        "collect bench: simulator → collect stage → moto S3 (multipart, {} MiB parts)",
        cfg.part_size_min >> 20
    );
    println!("baseline RSS {:.1} MiB", rss_kib("VmRSS:") as f64 / 1024.0);
    for (device, mib) in devices.iter().zip(&sizes) {
        let machine = MachineId::parse(&device.machine_id).unwrap();
        let commands = vec![Command::get_file(PATH)];
        let action = defender
            .run_live_response(
                &machine,
                &LiveResponseRequest {
                    commands: commands.clone(),
                    comment: "bench".into(),
                },
            )
            .await
            .unwrap();
        sim.advance(time::Duration::seconds(60));
        let run_id = run_id("native", &format!("bench-{mib}"), machine.as_str(), "bench");
        let record = collecting_run(
            &run_id,
            &format!("bench-{mib}"),
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
        shared::store::put_command(
            &store,
            &run_id,
            &tests::collecting_command(0, commands[0].clone()),
        )
        .await
        .unwrap();
        let job = CollectJob {
            v: MESSAGE_VERSION,
            run_id: run_id.clone(),
            action_id: action.id.clone(),
            index: 0,
            attempt: 0,
            link_errors: 0,
            prev: None,
        };
        let started = Instant::now();
        let done = shared::stages::collect::handle(
            &cfg,
            &store,
            &queue,
            &defender,
            &fetch,
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
