//! lrctl against tamperings and hostile stored values (moto and the simulator), each a defect a
//! review found (D1–D8) that must stay fixed: `verify --all` names a run whose manifest and
//! signature were deleted (it finds runs by evidence folder and run record, not by manifest);
//! `--since` never skips a run whose signature fails; `fetch` refuses a manifest that does not
//! match its signature, and an unsigned run, writing nothing; no ESC from a stored value reaches
//! the terminal (`verify`, `show`); one damaged command record does not make `runs` fail; sizes
//! that overflow when summed end in exit 1, not a panic; a `--since` too large for a date is a
//! usage error (exit 2). Each scenario records a defect instead of panicking at once, so one run
//! shows them all.

use crate::common::{self, FILE, fleet, lrctl, said, seed_run, settings};
use shared::custody::signature::ManifestSignature;
use shared::ids::RunId;
use testkit::sim::machine;
use testkit::stack::Stack;

const FLEET: u64 = 0x1c7_9000_0000;

async fn put(stack: &Stack, key: &str, body: Vec<u8>) {
    stack
        .s3
        .put_object()
        .bucket(&stack.stack.bucket)
        .key(key)
        .body(body.into())
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
}

async fn delete(stack: &Stack, key: &str) {
    stack
        .s3
        .delete_object()
        .bucket(&stack.stack.bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "delete {key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        });
}

async fn signed(stack: &Stack, run: &RunId) {
    let key = shared::store::signature_key(run);
    for _ in 0..120 {
        if stack.object(&key).await.is_some() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("no signature for {run}");
}

fn all_output(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tamperings_and_hostile_values_are_caught() {
    let ids: Vec<String> = (0..3).map(|i| machine(FLEET, i)).collect();
    let stack = Stack::start(fleet(&ids, 20_000), &[]).await;
    let env = settings(&stack.stack);
    let mut runs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        runs.push(
            stack
                .send_file_alert(&format!("review-{i}"), id, FILE)
                .await,
        );
    }
    stack.manifests(&runs, 90).await;
    for run in &runs {
        signed(&stack, run).await;
    }
    let (a, b, c) = (&runs[0], &runs[1], &runs[2]);
    let mut defects: Vec<String> = Vec::new();

    // Sanity: everything verifies.
    let out = lrctl(&env, &["verify", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // D1: run A's manifest and signature deleted (delete markers; its evidence objects stay).
    // `verify --all` only enumerates current manifest.json keys, so A silently disappears.
    delete(&stack, &shared::store::manifest_key(a)).await;
    delete(&stack, &shared::store::signature_key(a)).await;
    let out = lrctl(&env, &["verify", "--all"]).await;
    if out.status.code() == Some(0) || !all_output(&out).contains(a.as_str()) {
        defects.push(format!(
            "D1 verify --all passes after run {a}'s manifest+signature were deleted:\n{}",
            said(&out)
        ));
    }

    // D2: run B's manifest rewritten with a back-dated created_at: `--since` skips it before the
    // signature is checked.
    let mkey = shared::store::manifest_key(b);
    let mut m: serde_json::Value =
        serde_json::from_slice(&stack.object(&mkey).await.unwrap()).unwrap();
    m["created_at"] = "2001-01-01T00:00:00Z".into();
    m["outcome"] = "failed".into();
    put(&stack, &mkey, serde_json::to_vec_pretty(&m).unwrap()).await;
    let out = lrctl(&env, &["verify", "--all", "--since", "1h"]).await;
    if out.status.code() == Some(0) || !all_output(&out).contains(b.as_str()) {
        defects.push(format!(
            "D2 verify --all --since 1h skips run {b} whose manifest was edited (back-dated):\n{}",
            said(&out)
        ));
    }

    // D3: fetch does not check the signature: B's manifest no longer matches its signed
    // statement, yet fetch reports every file as matching and exits 0.
    let tmp = tempfile::tempdir().unwrap();
    let out = lrctl(
        &env,
        &["fetch", b.as_str(), tmp.path().join("b").to_str().unwrap()],
    )
    .await;
    if out.status.code() == Some(0) {
        defects.push(format!(
            "D3 fetch exits 0 on run {b} whose manifest does not match its signature:\n{}",
            said(&out)
        ));
    }

    // D4: terminal escapes from the signature document printed raw by verify and show
    // (OSC 52 writes the analyst's clipboard; SGR 8 hides everything printed after it).
    let evil = "\u{1b}]52;c;ZWNobyBwd25lZAo=\u{7}\u{1b}[8m";
    let skey = shared::store::signature_key(c);
    let doc: ManifestSignature =
        serde_json::from_slice(&stack.object(&skey).await.unwrap()).unwrap();
    let mut st: serde_json::Value = serde_json::from_str(&doc.statement).unwrap();
    st["key_id"] = evil.into();
    let mut forged = doc.clone();
    forged.statement = serde_json::to_string(&st).unwrap();
    forged.key_id = evil.into();
    put(&stack, &skey, serde_json::to_vec(&forged).unwrap()).await;
    for args in [vec!["verify", c.as_str()], vec!["show", c.as_str()]] {
        let out = lrctl(&env, &args).await;
        if out.stdout.contains(&0x1b) || out.stderr.contains(&0x1b) {
            defects.push(format!(
                "D4 `lrctl {}` prints an ESC from the stored signature document raw: {:?}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }

    // D5: one damaged command record makes `lrctl runs` fail as a whole (its doc promises that a
    // damaged record never hides the rest).
    put(
        &stack,
        &shared::store::command_key(c, 0),
        b"{not json".to_vec(),
    )
    .await;
    let out = lrctl(&env, &["runs"]).await;
    if out.status.code() != Some(0) || !all_output(&out).contains(b.as_str()) {
        defects.push(format!(
            "D5 `lrctl runs` fails on one damaged command record:\n{}",
            said(&out)
        ));
    }

    // D6: fetch of an unsigned run into a folder that already holds another run's
    // manifest.sig.json: the stale signature stays beside the new manifest, exit 0.
    let s = RunId::derive("native", "review-unsigned", &"a".repeat(40), "malware-file");
    let (gz, sha, n) = common::package(5_000, 7);
    seed_run(
        &stack.s3,
        &stack.stack.bucket,
        &s,
        vec![(0, gz, sha, n)],
        false,
    )
    .await;
    let dir = tmp.path().join("b"); // holds run B's manifest.sig.json from D3
    let had_sig = dir.join("manifest.sig.json").exists();
    let out = lrctl(&env, &["fetch", s.as_str(), dir.to_str().unwrap()]).await;
    if out.status.code() == Some(0) {
        defects.push(format!(
            "D6a fetch exits 0 on unsigned run {s} (only a warning on stderr):\n{}",
            said(&out)
        ));
    }
    if had_sig && dir.join("manifest.sig.json").exists() {
        defects.push(format!(
            "D6b fetch of unsigned run {s} left another run's manifest.sig.json beside its manifest.json"
        ));
    }

    // D7: a manifest whose sizes overflow u64 when summed (for the progress bar) panics verify
    // and fetch in a build with overflow checks (debug, as `./dev demo` and the tests build it),
    // before any finding is printed.
    let s2 = RunId::derive("native", "review-overflow", &"a".repeat(40), "malware-file");
    let (gz1, sha1, n1) = common::package(1_000, 9);
    let (gz2, sha2, n2) = common::package(1_000, 11);
    seed_run(
        &stack.s3,
        &stack.stack.bucket,
        &s2,
        vec![(0, gz1, sha1, n1), (1, gz2, sha2, n2)],
        false,
    )
    .await;
    let m2key = shared::store::manifest_key(&s2);
    let mut m2: serde_json::Value =
        serde_json::from_slice(&stack.object(&m2key).await.unwrap()).unwrap();
    m2["commands"][0]["size"] = serde_json::json!(u64::MAX);
    put(&stack, &m2key, serde_json::to_vec_pretty(&m2).unwrap()).await;
    let d7 = tmp.path().join("overflow");
    for args in [
        vec!["verify", s2.as_str()],
        vec!["fetch", s2.as_str(), d7.to_str().unwrap()],
        vec!["fetch", s2.as_str(), d7.to_str().unwrap(), "--unverified"],
    ] {
        let out = lrctl(&env, &args).await;
        if out.status.code() != Some(1) || all_output(&out).contains("panicked") {
            defects.push(format!(
                "D7 `lrctl {}` on a manifest with size u64::MAX does not exit 1 cleanly:\n{}",
                args.join(" "),
                said(&out)
            ));
        }
    }

    // D8: a --since too large for a date panics instead of a usage error (exit 2).
    for args in [
        vec!["runs", "--since", "100000000000d"],
        vec!["verify", "--all", "--since", "100000000000d"],
    ] {
        let out = lrctl(&env, &args).await;
        if out.status.code() != Some(2) {
            defects.push(format!(
                "D8 `lrctl {}` is not a usage error:\n{}",
                args.join(" "),
                said(&out)
            ));
        }
    }

    // An empty bucket: `verify --all` says it found no runs (not that it verified them).
    let empty = format!("{}-empty", stack.stack.bucket);
    stack
        .s3
        .create_bucket()
        .bucket(&empty)
        .send()
        .await
        .unwrap();
    let mut env_empty: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "LR_BUCKET")
        .cloned()
        .collect();
    env_empty.push(("LR_BUCKET".into(), empty.clone()));
    let out = lrctl(&env_empty, &["verify", "--all"]).await;
    if out.status.code() != Some(0)
        || !all_output(&out).contains(&format!("no runs found in bucket {empty}"))
    {
        defects.push(format!(
            "verify --all on an empty bucket does not say it found no runs:\n{}",
            said(&out)
        ));
    }

    stack.stop().await;
    assert!(
        defects.is_empty(),
        "{} defect(s):\n\n{}",
        defects.len(),
        defects.join("\n\n")
    );
}
