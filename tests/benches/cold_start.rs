//! Cold start: how long each function takes, in a fresh process of a release build, from nothing
//! to ready (the SDK configuration from the environment, then `Function::config` and
//! `Function::build`: settings checked, playbooks and their bundle loaded, clients built), which is
//! what `entry::run` does before the first event. No network is needed: the environment holds
//! credentials as Lambda's does, and building clients makes no call. Prints the median and the
//! highest of `LR_BENCH_REPEAT` (default 9) fresh processes per function, beside the target
//! (50 ms). Asserts nothing.
//!
//! `cargo bench -p testkit --bench cold_start` (run by `./dev bench`).

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use shared::config::Env;
use shared::entry::{Collect, Function, Intake, Poll, Submit};

/// What the template sets, with values that need no AWS call to accept.
fn env() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("EVIDENCE_BUCKET", "lr-evidence-bench"),
        (
            "SUBMIT_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/submit",
        ),
        (
            "POLL_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/poll",
        ),
        (
            "COLLECT_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/collect",
        ),
        (
            "DEAD_LETTER_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/dlq",
        ),
        (
            "MDE_CREDENTIALS_SECRET_ID",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:lr",
        ),
        (
            "SIGNING_KEY_ID",
            "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
        ),
    ])
}

async fn build<F: Function>(env: &dyn Env) -> u128 {
    let started = Instant::now();
    let sdk = shared::adapters::sdk_config().await;
    let f = F::build(env, &sdk)
        .await
        .unwrap_or_else(|e| panic!("{} does not start: {e}", F::NAME));
    let micros = started.elapsed().as_micros();
    drop(f);
    micros
}

/// One function's start in this (fresh) process; prints its microseconds.
async fn child(name: &str) {
    let env = env();
    let micros = match name {
        "intake" => build::<Intake>(&env).await,
        "submit" => build::<Submit>(&env).await,
        "poll" => build::<Poll>(&env).await,
        _ => build::<Collect>(&env).await,
    };
    println!("{micros}");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--cold-start-child") {
        child(&args[i + 1]).await;
        return;
    }
    let repeat: usize = std::env::var("LR_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9)
        .max(1);
    println!(
        "cold start: SDK configuration + settings + playbooks + clients, in a fresh process, median and highest of {repeat} (target: <= 50 ms)"
    );
    for name in ["intake", "submit", "poll", "collect"] {
        let mut runs: Vec<f64> = (0..repeat)
            .map(|_| {
                let out = Command::new(std::env::current_exe().unwrap())
                    .args(["--cold-start-child", name])
                    // As Lambda gives them: credentials and region in the environment.
                    .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
                    .env("AWS_SECRET_ACCESS_KEY", "bench")
                    .env("AWS_REGION", "us-east-1")
                    .env_remove("AWS_PROFILE")
                    .output()
                    .expect("the child runs");
                assert!(out.status.success(), "{name}: {out:?}");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<f64>()
                    .expect("microseconds")
                    / 1000.0
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        println!(
            "  {name:<8} median {:6.2} ms, highest {:6.2} ms",
            runs[runs.len() / 2],
            runs[runs.len() - 1]
        );
    }
}
