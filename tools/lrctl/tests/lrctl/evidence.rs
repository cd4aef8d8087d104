//! lrctl against finished runs of the pipeline (moto and the simulator): `verify` passes a clean
//! run with KMS and with the exported public key and names the object of each tampering; `runs`,
//! `show` and `fetch` read what the pipeline wrote.

use crate::common::{self, FILE, fleet, lrctl, said, seed_run, settings, sha256_hex, stdout};
use shared::custody::signature::ManifestSignature;
use shared::ids::RunId;
use testkit::sim::machine;
use testkit::stack::Stack;

/// This file's fleet of machine ids.
const FLEET: u64 = 0x1c7_1000_0000;

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

/// Waits until the run's signature is written (it follows the manifest).
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

/// The run ids `lrctl --json runs ARGS` lists.
async fn listed(env: &[(String, String)], args: &[&str]) -> Vec<String> {
    let mut all = vec!["--json", "runs"];
    all.extend_from_slice(args);
    let out = lrctl(env, &all).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("runs --json");
    v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_runs_show_and_fetch_on_finished_runs_and_each_tampering_is_named() {
    let ids: Vec<String> = (0..4).map(|i| machine(FLEET, i)).collect();
    let stack = Stack::start(fleet(&ids, 300_000), &[]).await;
    let env = settings(&stack.stack);
    let mut runs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        runs.push(
            stack
                .send_file_alert(&format!("lrctl-ev-{i}"), id, FILE)
                .await,
        );
    }
    let manifests = stack.manifests(&runs, 90).await;
    for run in &runs {
        signed(&stack, run).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (clean, clean_m) = (runs[0].as_str(), &manifests[0]);

    // A clean run verifies with KMS and offline with the exported key.
    let out = lrctl(&env, &["verify", clean]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        stdout(&out).contains("verified 1 run(s), 2 evidence object(s)"),
        "{}",
        said(&out)
    );
    let pem = tmp.path().join("key.pem");
    let out = lrctl(&env, &["key", "export", "--out", pem.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        std::fs::read_to_string(&pem)
            .unwrap()
            .contains("BEGIN PUBLIC KEY")
    );
    let offline = ["verify", clean, "--public-key", pem.to_str().unwrap()];
    let out = lrctl(&env, &offline).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // The same, with every setting from an env file and none from the environment.
    let env_file = tmp.path().join("lrctl.env");
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&env_file, text).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lrctl"));
    for (k, _) in &env {
        cmd.env_remove(k);
    }
    cmd.env_remove("AWS_DEFAULT_REGION").env_remove("LR_STACK");
    let out = cmd
        .args(["--env-file", env_file.to_str().unwrap(), "verify", clean])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // `runs` lists it, in JSON too, and its filters work.
    let out = lrctl(&env, &["runs"]).await;
    assert!(
        stdout(&out).contains(clean) && stdout(&out).contains("2/2"),
        "{}",
        said(&out)
    );
    let all = listed(
        &env,
        &[
            "--since",
            "1h",
            "--state",
            "completed",
            "--outcome",
            "succeeded",
        ],
    )
    .await;
    assert!(runs.iter().all(|r| all.contains(&r.to_string())), "{all:?}");
    let device = ids[0].as_str();
    assert_eq!(
        listed(&env, &["--device", device]).await,
        vec![clean.to_string()]
    );
    assert_eq!(
        listed(&env, &["--alert", "lrctl-ev-1"]).await,
        vec![runs[1].to_string()]
    );
    assert!(
        listed(&env, &["--state", "failed", "--device", device])
            .await
            .is_empty()
    );

    // `show` tells the run's story, manifest and signature included.
    let out = lrctl(&env, &["show", clean]).await;
    let text = stdout(&out);
    for part in [
        "alert received",
        "submitted to Defender",
        "collected",
        "manifest written",
        "manifest signature present",
    ] {
        assert!(text.contains(part), "{part}: {}", said(&out));
    }
    let at = |s: &str| text.find(s).unwrap();
    assert!(
        at("alert received") < at("manifest written")
            && at("manifest written") < at("manifest signature present")
    );

    // `fetch` writes the evidence, verified, with the manifest and signature beside it.
    let dir = tmp.path().join("clean");
    let out = lrctl(
        &env,
        &["fetch", clean, dir.to_str().unwrap(), "--decompress"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    for c in &clean_m.commands {
        let name = c.s3_key.as_deref().unwrap().rsplit('/').next().unwrap();
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(Some(sha256_hex(&bytes)), c.sha256, "{name}");
        if let Some(d) = &c.sha256_decompressed {
            let content = std::fs::read(dir.join(name.trim_end_matches(".gz"))).unwrap();
            assert_eq!(&sha256_hex(&content), d);
            assert_eq!(Some(content.len() as u64), c.size_decompressed);
        }
    }
    let key = shared::store::manifest_key(&runs[0]);
    assert_eq!(
        std::fs::read(dir.join("manifest.json")).unwrap(),
        stack.object(&key).await.unwrap()
    );
    assert!(dir.join("manifest.sig.json").exists());
    // The folder verifies offline; an edited file in it does not.
    let offline_dir = [
        "verify",
        "--dir",
        dir.to_str().unwrap(),
        "--public-key",
        pem.to_str().unwrap(),
    ];
    let out = lrctl(&env, &offline_dir).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(stdout(&out).contains("verified"), "{}", said(&out));
    let first = clean_m.commands[0].s3_key.as_deref().unwrap();
    let first = dir.join(first.rsplit('/').next().unwrap());
    let original = std::fs::read(&first).unwrap();
    std::fs::write(&first, b"edited").unwrap();
    let out = lrctl(&env, &offline_dir).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stdout(&out).contains(&format!("{}: size is 6", first.display())),
        "{}",
        said(&out)
    );
    std::fs::write(&first, original).unwrap();
    // Fetching into a folder that is not empty needs --force.
    let out = lrctl(&env, &["fetch", clean, dir.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("--force"), "{}", said(&out));

    // 1: an evidence object overwritten (a new version under the same key).
    let object_key = manifests[1].commands[1].s3_key.clone().unwrap();
    put(&stack, &object_key, b"not the evidence".to_vec()).await;
    let out = lrctl(&env, &["verify", runs[1].as_str()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{object_key}: SHA-256 is ")),
        "{}",
        said(&out)
    );
    assert!(
        text.contains("the version the manifest pins") && text.contains("is intact"),
        "{text}"
    );
    // fetch takes the version the manifest pins, which is intact.
    let out = lrctl(
        &env,
        &[
            "fetch",
            runs[1].as_str(),
            tmp.path().join("b").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // 2: a manifest field edited.
    let mkey = shared::store::manifest_key(&runs[2]);
    let mut m: serde_json::Value =
        serde_json::from_slice(&stack.object(&mkey).await.unwrap()).unwrap();
    m["outcome"] = "failed".into();
    put(&stack, &mkey, serde_json::to_vec_pretty(&m).unwrap()).await;
    let out = lrctl(&env, &["verify", runs[2].as_str()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stdout(&out).contains(&format!("{mkey}: manifest SHA-256 is "))
            && stdout(&out).contains("the signed statement says"),
        "{}",
        said(&out)
    );

    // 3: the signature replaced by another key's signature of the same statement.
    let skey = shared::store::signature_key(&runs[3]);
    let doc: ManifestSignature =
        serde_json::from_slice(&stack.object(&skey).await.unwrap()).unwrap();
    let stranger = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let sig: p256::ecdsa::Signature =
        p256::ecdsa::signature::Signer::sign(&stranger, doc.statement.as_bytes());
    let forged =
        ManifestSignature::new(doc.statement.clone(), &doc.key_id, sig.to_der().as_bytes());
    put(&stack, &skey, serde_json::to_vec(&forged).unwrap()).await;
    let expected = format!(
        "{skey}: the signature does not verify with key {}",
        doc.key_id
    );
    for args in [
        vec!["verify", runs[3].as_str()],
        vec![
            "verify",
            runs[3].as_str(),
            "--public-key",
            pem.to_str().unwrap(),
        ],
    ] {
        let out = lrctl(&env, &args).await;
        assert_eq!(out.status.code(), Some(1), "{}", said(&out));
        assert!(stdout(&out).contains(&expected), "{}", said(&out));
    }

    // 3b: a forger signs with a KMS key of their own and names it: KMS would say the signature is
    // valid for that key, so lrctl checks only with the deployment's key, and without one
    // configured it refuses rather than trust the key the document names.
    let kms = aws_sdk_kms::Client::new(&stack.sdk);
    let own = kms
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap();
    let own = own.key_metadata().unwrap().arn().unwrap().to_string();
    let signer = shared::adapters::kms::KmsSigner::new(kms.clone(), &own);
    let text = doc.statement.replace(&doc.key_id, &own);
    let der = shared::ports::Signer::sign(&signer, text.as_bytes())
        .await
        .unwrap();
    put(
        &stack,
        &skey,
        serde_json::to_vec(&ManifestSignature::new(text, &own, &der)).unwrap(),
    )
    .await;
    let out = lrctl(&env, &["verify", runs[3].as_str()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stdout(&out).contains("not the deployment's signing key"),
        "{}",
        said(&out)
    );
    let without_key: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "LR_SIGNING_KEY_ID")
        .cloned()
        .collect();
    let out = lrctl(&without_key, &["verify", runs[3].as_str()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("LR_SIGNING_KEY_ID"), "{}", said(&out));

    // 4: something under the run's prefix the manifest does not list.
    let stray = format!("evidence/{clean}/9-getfile.gz");
    put(&stack, &stray, b"stray".to_vec()).await;
    let out = lrctl(&env, &["--json", "verify", "--all", "--since", "1h"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["findings"].as_array().unwrap())
        .filter(|f| f["problem"] == true)
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    for k in [
        stray.as_str(),
        object_key.as_str(),
        mkey.as_str(),
        skey.as_str(),
    ] {
        assert!(keys.contains(&k), "{k} not named: {keys:?}");
    }

    // A download whose bytes are not what the manifest says is removed, and fetch fails.
    let fake = RunId::derive("native", "seeded", &"a".repeat(40), "malware-file");
    let (gz, sha, n) = common::package(10_000, 3);
    seed_run(
        &stack.s3,
        &stack.stack.bucket,
        &fake,
        vec![(0, gz, sha, n)],
        true,
    )
    .await;
    // The seeded run is unsigned: fetch refuses it, writing nothing, unless --unverified.
    let dir = tmp.path().join("lie");
    let out = lrctl(&env, &["fetch", fake.as_str(), dir.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(!dir.exists(), "{}", said(&out));
    let out = lrctl(
        &env,
        &[
            "fetch",
            fake.as_str(),
            dir.to_str().unwrap(),
            "--unverified",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(said(&out).contains("UNVERIFIED"), "{}", said(&out));
    assert!(
        stdout(&out).contains("0-getfile.gz: SHA-256 is"),
        "{}",
        said(&out)
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the manifest is left: {left:?}");

    // Unreadable records are errors naming their key: `runs` skips one and goes on, `show` and
    // `verify` stop at it.
    let broken = RunId::derive("native", "broken", &"b".repeat(40), "malware-file");
    let run_key = shared::store::run_key(&broken);
    put(&stack, &run_key, b"{not json".to_vec()).await;
    let broken_manifest = shared::store::manifest_key(&broken);
    put(&stack, &broken_manifest, b"[]".to_vec()).await;
    let out = lrctl(&env, &["runs"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(stdout(&out).contains(clean), "{}", said(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&run_key),
        "{}",
        said(&out)
    );
    let out = lrctl(&env, &["show", broken.as_str()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&run_key),
        "{}",
        said(&out)
    );
    let out = lrctl(&env, &["verify", broken.as_str()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stdout(&out).contains(&format!("{broken_manifest}: unreadable")),
        "{}",
        said(&out)
    );

    // A run that does not exist, and one that is not a run id, are clear errors.
    let out = lrctl(&env, &["show", &"0".repeat(32)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no run"),
        "{}",
        said(&out)
    );
    let out = lrctl(&env, &["verify", "nope"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    stack.stop().await;
}
