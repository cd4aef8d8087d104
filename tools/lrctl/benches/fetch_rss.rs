//! Peak memory of `lrctl fetch`: a ~1 MiB package and a ~100 MiB one, each fetched (and once
//! decompressed) by the lrctl binary, with the child's peak RSS (its VmHWM) printed for
//! each. Fetch streams, so the two peaks should be about the same. Needs moto (LR_MOTO_ENDPOINT).
//! Prints numbers only; nothing here asserts on time.

#[path = "../tests/lrctl/common.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shared::ids::RunId;

const MIB: u64 = 1 << 20;

/// The high-water mark of a process's resident set (`VmHWM`, KiB), while it runs.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `lrctl args` to completion; its exit code, peak RSS in KiB and seconds taken. The peak is
/// the child's own `VmHWM`, read every few milliseconds until it exits (a high-water mark, so a
/// late read still sees the peak). Not `wait4`'s ru_maxrss: that also counts the memory of this
/// process the child had before it exec'd.
fn measure(env: &[(String, String)], args: &[&str]) -> (i32, u64, f64) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lrctl"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .spawn()
        .expect("lrctl starts");
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = vm_hwm(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (
        status.code().unwrap_or(-1),
        peak,
        started.elapsed().as_secs_f64(),
    )
}

#[tokio::main]
async fn main() {
    let sdk = testkit::aws::aws().await;
    let s3 = shared::adapters::s3::s3_client(&sdk);
    let bucket = testkit::aws::unique("lrctl-bench");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let mut env: Vec<(String, String)> = common::aws_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("LR_BUCKET".into(), bucket.clone()));
    let tmp = tempfile::tempdir().expect("tempdir");
    println!("lrctl fetch, peak RSS of the child process (its VmHWM)");
    for (label, size) in [("1 MiB", MIB), ("100 MiB", 100 * MIB)] {
        let run = RunId::derive("bench", label, &"a".repeat(40), "malware-file");
        let (gz, sha, n) = common::package(size, size);
        let stored = gz.len() as u64;
        common::seed_run(&s3, &bucket, &run, vec![(0, gz, sha, n)], false).await;
        for decompress in [false, true] {
            let dir = tmp.path().join(format!("{run}-{decompress}"));
            // The seeded run is unsigned.
            let mut args = vec!["fetch", run.as_str(), dir.to_str().unwrap(), "--unverified"];
            if decompress {
                args.push("--decompress");
            }
            let (code, rss_kib, secs) = measure(&env, &args);
            println!(
                "{label:>8} package ({stored} bytes){:<15}  exit {code}  peak RSS {:>7.1} MiB  {:>6.2} s  {:>7.1} MiB/s",
                if decompress { " --decompress" } else { "" },
                rss_kib as f64 / 1024.0,
                secs,
                stored as f64 / MIB as f64 / secs
            );
            assert_eq!(code, 0, "lrctl fetch failed");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
