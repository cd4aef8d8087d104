//! What lrctl's integration tests share: running the binary against a provisioned stack, a fleet
//! of simulated devices, and seeding a run's evidence directly into the bucket.

#![allow(dead_code)]

use std::process::Output;

use mde_sim::{Device, DeviceFile, Script, SimConfig};
use shared::defender::{Command, CommandType, MachineId};
use shared::ids::RunId;
use shared::store::{CommandOutcome, ManifestCommand};

pub const FILE: &str = "C:\\Users\\bob\\Downloads\\dropper.exe";

/// lrctl's settings for `stack`, plus the AWS variables of this process (moto's endpoint, keys).
pub fn settings(stack: &local_stack::ProvisionedStack) -> Vec<(String, String)> {
    settings_with(stack, &stack.env)
}

/// lrctl's settings for `stack` whose functions run with `env` (MDE_* and the playbook file come
/// from there, as the local stack writes them to .local/lrctl.env), plus the AWS variables.
pub fn settings_with(
    stack: &local_stack::ProvisionedStack,
    env: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = local_stack::lrctl_settings(stack, env)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for (k, v) in aws_env() {
        out.push((k.into(), v));
    }
    out
}

/// moto's endpoint and keys, as the AWS variables.
pub fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", testkit::aws::moto_endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ]
}

/// Runs lrctl with `env` added to its environment.
pub async fn lrctl(env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lrctl"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("lrctl runs");
    if std::env::var_os("LRCTL_TEST_ECHO").is_some() {
        eprintln!("$ lrctl {}\n{}", args.join(" "), said(&out));
    }
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What lrctl printed, for assertion messages.
pub fn said(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Devices `ids`, each holding [`FILE`] of `size` bytes, and the triage script the playbook runs.
pub fn fleet(ids: &[String], size: u64) -> SimConfig {
    SimConfig {
        devices: ids
            .iter()
            .map(|id| Device {
                machine_id: id.clone(),
                dns_name: format!("host-{}.corp", &id[34..]),
                command_secs: 4,
                files: vec![DeviceFile {
                    path: FILE.into(),
                    size,
                    secs: None,
                }],
                ..Device::default()
            })
            .collect(),
        scripts: vec![Script {
            name: "triage.ps1".into(),
            output: "triage of {machine}: {args}".into(),
            ..Script::default()
        }],
        ..SimConfig::default()
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Writes a finished run's manifest (unsigned) and its evidence objects straight into the
/// bucket: one GetFile package per `(index, gzip bytes, the file's SHA-256, its size)`.
/// `lie` makes the manifest's SHA-256 of the first object wrong. Returns the manifest.
pub async fn seed_run(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    run: &RunId,
    packages: Vec<(u32, Vec<u8>, String, u64)>,
    lie: bool,
) -> shared::store::Manifest {
    let mut commands = Vec::new();
    for (i, (index, gz, inner_sha, inner_size)) in packages.into_iter().enumerate() {
        let key = shared::store::evidence_key(run, index, CommandType::GetFile);
        let put = s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(gz.clone().into())
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
            .send()
            .await
            .expect("put evidence");
        let sha = if lie && i == 0 {
            "0".repeat(64)
        } else {
            sha256_hex(&gz)
        };
        commands.push(ManifestCommand {
            index,
            kind: CommandType::GetFile,
            command: Command::get_file(FILE),
            outcome: CommandOutcome::Collected,
            command_status: None,
            errors: vec![],
            start_time: None,
            end_time: None,
            s3_key: Some(key),
            s3_version_id: put.version_id().map(str::to_string),
            size: Some(gz.len() as u64),
            sha256: Some(sha),
            sha256_decompressed: Some(inner_sha),
            size_decompressed: Some(inner_size),
            exit_code: None,
            output_excerpt: None,
            errors_excerpt: None,
            recorded_at: None,
            reason: None,
        });
    }
    let alert: shared::alerts::Alert = serde_json::from_value(serde_json::json!({
        "format": "native", "envelope": "none", "alert_id": "seeded-1",
        "machine_id": "a".repeat(40), "title": "seeded", "category": "Malware",
        "severity": "High", "source": "tests", "playbook": null, "parameters": {}
    }))
    .expect("an alert");
    let now = time::OffsetDateTime::now_utc();
    let manifest = shared::store::Manifest {
        v: 1,
        run_id: run.clone(),
        tenant: run.tenant(),
        playbook: "malware-file".into(),
        playbook_sha256: None,
        playbook_file_sha256: None,
        refused_parameters: vec![],
        alert,
        device: shared::store::ManifestDevice {
            machine_id: MachineId::parse(&"a".repeat(40)).unwrap(),
            computer_dns_name: None,
        },
        action: None,
        run_state: shared::store::RunState::Completed,
        outcome: Some(shared::store::RunOutcome::Succeeded),
        reason: None,
        created_at: now,
        completed_at: now,
        commands,
        library: vec![],
        library_after: None,
    };
    s3.put_object()
        .bucket(bucket)
        .key(shared::store::manifest_key(run))
        .body(serde_json::to_vec_pretty(&manifest).unwrap().into())
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
        .send()
        .await
        .expect("put manifest");
    manifest
}

/// `size` bytes of content that compress little (so the package is about as big), gzipped
/// chunk by chunk: the package, the content's SHA-256 and size.
pub fn package(size: u64, seed: u64) -> (Vec<u8>, String, u64) {
    use sha2::Digest;
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    let mut hasher = sha2::Sha256::new();
    let mut x = seed | 1;
    let mut left = size;
    let mut chunk = vec![0u8; 1 << 16];
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        for b in chunk[..n].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        gz.write_all(&chunk[..n]).unwrap();
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    (gz.finish().unwrap(), hex::encode(hasher.finalize()), size)
}
