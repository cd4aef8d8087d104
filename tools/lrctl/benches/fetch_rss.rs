//! Peak memory of `lrctl fetch`: a ~1 MiB package and a ~100 MiB one, each fetched (and once
//! decompressed) by the lrctl binary, with the child's peak RSS (wait4's ru_maxrss) printed for
//! each. Fetch streams, so the two peaks should be about the same. Needs moto (LR_MOTO_ENDPOINT).
//! Prints numbers only; nothing here asserts on time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use shared::ids::RunId;

const MIB: u64 = 1 << 20;

/// Runs `lrctl args` to completion; its exit status, peak RSS in KiB and seconds taken.
// The child is reaped by wait4 (which also gives its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn measure(env: &[(String, String)], args: &[&str]) -> (i32, i64, f64) {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_lrctl"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .spawn()
        .expect("lrctl starts");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped; the pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, usage.ru_maxrss, started.elapsed().as_secs_f64())
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
    println!("lrctl fetch, peak RSS of the child process (wait4 ru_maxrss)");
    for (label, size) in [("1 MiB", MIB), ("100 MiB", 100 * MIB)] {
        let run = RunId::derive("bench", label, &"a".repeat(40), "malware-file");
        let (gz, sha, n) = common::package(size, size);
        let stored = gz.len() as u64;
        common::seed_run(&s3, &bucket, &run, vec![(0, gz, sha, n)], false).await;
        for decompress in [false, true] {
            let dir = tmp.path().join(format!("{run}-{decompress}"));
            let mut args = vec!["fetch", run.as_str(), dir.to_str().unwrap()];
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
