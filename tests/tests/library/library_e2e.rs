//! Library sync end to end on the local stack (moto, the simulator as a real HTTP server, the four
//! stages): the scripts a playbook runs reach Defender's library by themselves, verified by
//! SHA-256, before any run that needs them is submitted. The simulator runs a script only from
//! its library and writes the library copy's SHA-256 into the transcript, so a run shows which
//! version ran.
//!
//! A fresh tenant gets the bundle and the run succeeds; a stale copy the pipeline uploaded is
//! replaced first; a missing external file fails the run before submission, naming it; someone
//! else's file of the same name is not overwritten unless the playbook says so; a burst of runs
//! that all need the sync stays within Defender's limits.

use mde_sim::{Device, DeviceFile, LibrarySeed, Script, SimConfig};
use shared::library::bundle::BUNDLED_LIBRARY;
use shared::library::{LibraryFileSpec, LibrarySource};
use shared::store::{CommandOutcome, Manifest, RunOutcome};
use testkit::alerts::{native_alert, run_id};
use testkit::aws::unique;
use testkit::content::sha256_hex;
use testkit::sim::machine;
use testkit::stack::Stack;

const FILE: &str = "C:\\Users\\alice\\Downloads\\invoice.pdf.exe";
/// This file's fleet of machine ids.
const FLEET: u64 = 0x11b0000;

/// The name the library keeps the bundled `name` under.
fn versioned(name: &str) -> String {
    shared::library::versioned_name(name, &sha256_hex(bundled(name)))
}

fn bundled(name: &str) -> &'static [u8] {
    BUNDLED_LIBRARY
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .expect("a bundled library file")
}

fn devices(first: usize, n: usize) -> Vec<Device> {
    (first..first + n)
        .map(|i| Device {
            machine_id: machine(FLEET, i),
            dns_name: format!("lib-{i}.corp"),
            command_secs: 10,
            files: vec![DeviceFile {
                path: FILE.into(),
                size: 10_000,
                secs: None,
            }],
            ..Device::default()
        })
        .collect()
}

/// `devices` and a triage script whose transcript names the library copy's SHA-256; the library
/// starts with `library`.
fn tenant(devices: Vec<Device>, library: Vec<LibrarySeed>) -> SimConfig {
    SimConfig {
        devices,
        scripts: vec![Script {
            name: "triage.ps1".into(),
            output: "triage {args} ran library version {sha256}".into(),
            ..Script::default()
        }],
        library,
        ..SimConfig::default()
    }
}

fn seed(name: &str, content: &str, description: &str) -> LibrarySeed {
    LibrarySeed {
        name: name.into(),
        content: content.into(),
        description: description.into(),
        ..LibrarySeed::default()
    }
}

/// The description the pipeline gives what it uploads (its mark of a file it manages).
fn ours(name: &str) -> String {
    LibraryFileSpec {
        name: name.into(),
        description: "an older version".into(),
        has_parameters: true,
        parameters_description: None,
        external: false,
        sha256: None,
        replace_unmanaged: false,
        keeps_name: false,
    }
    .managed_description()
}

/// The library as Defender lists it: name → SHA-256.
async fn library(stack: &Stack) -> Vec<(String, String)> {
    let client = testkit::sim::client(&stack.sim, &stack.sim_config);
    client
        .list_library()
        .await
        .expect("the library lists")
        .into_iter()
        .map(|f| (f.file_name, f.sha256.unwrap_or_default()))
        .collect()
}

async fn library_sha(stack: &Stack, name: &str) -> Option<String> {
    library(stack)
        .await
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, h)| h)
}

/// The triage command of a run: it ran the library version with this SHA-256.
fn ran_version(m: &Manifest) -> String {
    let triage = m
        .commands
        .iter()
        .find(|c| {
            c.command
                .param("ScriptName")
                .is_some_and(|n| n.starts_with("triage"))
        })
        .expect("a triage command");
    assert_eq!(triage.outcome, CommandOutcome::Collected, "{triage:?}");
    let out = triage.output_excerpt.clone().unwrap_or_default();
    out.rsplit(' ').next().unwrap_or_default().to_string()
}

/// A playbook file in a new bucket with the library files it manages in its folder beside it, each
/// pinned in the file (a deployment requires it); returns the variables a deployment sets for it:
/// `PLAYBOOKS_S3_URI` and the file's pin, `PLAYBOOKS_SHA256`.
async fn playbooks_in_s3(
    sdk: &aws_config::SdkConfig,
    toml: &str,
    files: &[(&str, &[u8])],
) -> [(&'static str, String); 2] {
    let toml = testkit::library::pin_files(toml, files);
    let s3 = shared::adapters::s3::s3_client(sdk);
    let bucket = unique("playbooks");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    put(&s3, &bucket, "ir/playbooks.toml", toml.as_bytes()).await;
    for (name, bytes) in files {
        put(&s3, &bucket, &format!("ir/library/{name}"), bytes).await;
    }
    [
        (
            "PLAYBOOKS_S3_URI",
            format!("s3://{bucket}/ir/playbooks.toml"),
        ),
        ("PLAYBOOKS_SHA256", sha256_hex(toml.as_bytes())),
    ]
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, bytes: &[u8]) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(bytes.to_vec().into())
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_tenant_gets_the_bundle_and_the_run_succeeds() {
    let devices = devices(0, 1);
    let m = devices[0].machine_id.clone();
    let stack = Stack::start(tenant(devices, vec![]), &[]).await;
    assert!(
        library(&stack).await.is_empty(),
        "a fresh tenant's library is empty"
    );
    let run = stack.send_file_alert("fresh-1", &m, FILE).await;
    let manifest = stack.manifest(&run, 90).await;
    assert_eq!(
        manifest.outcome,
        Some(RunOutcome::Succeeded),
        "{manifest:?}"
    );
    let want = sha256_hex(bundled("triage.ps1"));
    assert_eq!(
        library_sha(&stack, &versioned("triage.ps1")).await,
        Some(want.clone())
    );
    assert_eq!(
        ran_version(&manifest),
        want,
        "the device ran the bundle's bytes"
    );
    assert_eq!(manifest.library.len(), 1, "{:?}", manifest.library);
    assert_eq!(manifest.library[0].name, "triage.ps1");
    assert_eq!(manifest.library[0].library_name, versioned("triage.ps1"));
    assert_eq!(
        manifest.commands[0].command.param("ScriptName"),
        Some(versioned("triage.ps1").as_str()),
        "the manifest's command is the one Defender ran"
    );
    assert_eq!(manifest.library[0].sha256.as_deref(), Some(want.as_str()));
    assert_eq!(manifest.library[0].source, LibrarySource::Bundle);
    let stats = stack.sim.stats();
    assert_eq!(
        stats.library_uploads, 1,
        "only what the run needs: {stats:?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_copy_is_replaced_before_the_run_and_older_versions_are_not_run() {
    let devices = devices(10, 1);
    let m = devices[0].machine_id.clone();
    // Under the pipeline's own (versioned) name, other bytes: a copy damaged or cut short,
    // uploaded by the pipeline (its marker). An older version under its own versioned name, and
    // one under the plain name, from earlier deployments.
    let damaged = "Write-Output 'triage, cut short'";
    let older = "Write-Output 'triage v0'";
    let older_name = shared::library::versioned_name("triage.ps1", &sha256_hex(older.as_bytes()));
    let stack = Stack::start(
        tenant(
            devices,
            vec![
                seed(&versioned("triage.ps1"), damaged, &ours("triage.ps1")),
                seed(&older_name, older, &ours("triage.ps1")),
                seed("triage.ps1", older, &ours("triage.ps1")),
            ],
        ),
        &[],
    )
    .await;
    let run = stack.send_file_alert("stale-1", &m, FILE).await;
    let manifest = stack.manifest(&run, 90).await;
    assert_eq!(
        manifest.outcome,
        Some(RunOutcome::Succeeded),
        "{manifest:?}"
    );
    let want = sha256_hex(bundled("triage.ps1"));
    assert_eq!(
        ran_version(&manifest),
        want,
        "the bundle's version ran, not a stale one"
    );
    assert_eq!(
        library_sha(&stack, &versioned("triage.ps1")).await,
        Some(want.clone()),
        "the stale copy was replaced"
    );
    assert_eq!(manifest.library[0].sha256.as_deref(), Some(want.as_str()));
    assert_eq!(stack.sim.stats().library_uploads, 1);
    for name in [older_name.as_str(), "triage.ps1"] {
        assert_eq!(
            library_sha(&stack, name).await,
            Some(sha256_hex(older.as_bytes())),
            "{name} is another version: kept for the runs that name it"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_external_file_fails_the_run_before_submission_naming_it() {
    let devices = devices(20, 1);
    let m = devices[0].machine_id.clone();
    let toml = r#"
[[library_files]]
name = "collector.exe"
description = "The IR team's collector, kept in the library by them"
external = true

[[library_files]]
name = "triage.ps1"
description = "Triage"
has_parameters = true

[[playbooks]]
name = "collector"
[playbooks.match]
category = ["Malware"]
[[playbooks.commands]]
type = "PutFile"
file = "collector.exe"
[[playbooks.commands]]
type = "RunScript"
script = "triage.ps1"
args = "-Quick"
"#;
    let sdk = testkit::aws::aws().await;
    let env = playbooks_in_s3(&sdk, toml, &[("triage.ps1", bundled("triage.ps1"))]).await;
    let stack = Stack::start(tenant(devices, vec![]), &env).await;
    stack
        .send_alert(&native_alert("ext-1", &m, "Malware", &[]).to_string())
        .await;
    let manifest = stack
        .manifest(&run_id("native", "ext-1", &m, "collector"), 90)
        .await;
    assert_eq!(manifest.outcome, Some(RunOutcome::Failed));
    let reason = manifest.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("collector.exe") && reason.contains("external"),
        "{reason}"
    );
    assert!(manifest.action.is_none(), "nothing was submitted");
    assert!(
        manifest
            .commands
            .iter()
            .all(|c| c.outcome == CommandOutcome::NotRun)
    );
    let stats = stack.sim.stats();
    assert_eq!(stats.actions_created, 0);
    assert_eq!(
        stats.library_uploads, 0,
        "nothing uploaded for a run that cannot go"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn someone_elses_file_of_the_same_name_is_not_overwritten_unless_the_playbook_says_so() {
    let devices = devices(30, 2);
    let (m1, m2) = (devices[0].machine_id.clone(), devices[1].machine_id.clone());
    let theirs = "Write-Output 'the IR team''s own triage'";
    // Under the name the pipeline keeps triage.ps1 by, someone else's bytes; and their own
    // triage.ps1 under the plain name, which never stands in the pipeline's way.
    let config = tenant(
        devices,
        vec![
            seed(
                &versioned("triage.ps1"),
                theirs,
                "IR team triage (uploaded in the portal)",
            ),
            seed("triage.ps1", theirs, "IR team triage"),
        ],
    );

    // The bundled playbooks: the file is left alone; the run waits for a person to remove it
    // (retried, with an alarm), and fails before submission when nobody does.
    let stack = Stack::start(config.clone(), &[]).await;
    let run = stack.send_file_alert("theirs-1", &m1, FILE).await;
    let manifest = stack.manifest(&run, 240).await;
    assert_eq!(manifest.outcome, Some(RunOutcome::Failed));
    let reason = manifest.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&versioned("triage.ps1")) && reason.contains("replace_unmanaged"),
        "{reason}"
    );
    for name in [versioned("triage.ps1"), "triage.ps1".to_string()] {
        assert_eq!(
            library_sha(&stack, &name).await,
            Some(sha256_hex(theirs.as_bytes())),
            "someone else's {name} is untouched"
        );
    }
    assert_eq!(stack.sim.stats().actions_created, 0);
    stack.stop().await;

    // A playbook file that says the pipeline may replace it.
    let toml = format!(
        "{}\n",
        shared::alerts::playbook::BUNDLED.replacen(
            "name = \"triage.ps1\"\n",
            "name = \"triage.ps1\"\nreplace_unmanaged = true\n",
            1
        )
    );
    let files: Vec<(&str, &[u8])> = BUNDLED_LIBRARY.to_vec();
    let sdk = testkit::aws::aws().await;
    let env = playbooks_in_s3(&sdk, &toml, &files).await;
    let stack = Stack::start(config, &env).await;
    let run = stack.send_file_alert("theirs-2", &m2, FILE).await;
    let manifest = stack.manifest(&run, 90).await;
    assert_eq!(
        manifest.outcome,
        Some(RunOutcome::Succeeded),
        "{manifest:?}"
    );
    let want = sha256_hex(bundled("triage.ps1"));
    assert_eq!(
        library_sha(&stack, &versioned("triage.ps1")).await,
        Some(want.clone())
    );
    assert_eq!(ran_version(&manifest), want);
    assert_eq!(
        library_sha(&stack, "triage.ps1").await,
        Some(sha256_hex(theirs.as_bytes())),
        "the plain-named file is still theirs"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_thirty_runs_needing_sync_stays_within_the_limits() {
    let devices = devices(100, 30);
    let machines: Vec<String> = devices.iter().map(|d| d.machine_id.clone()).collect();
    // The documented limits (the simulator's defaults, library calls included), no faults.
    let stack = Stack::start(tenant(devices, vec![]), &[]).await;
    let runs = stack.send_file_alerts("libburst", &machines, FILE).await;
    let want = sha256_hex(bundled("triage.ps1"));
    for (i, m) in stack.manifests(&runs, 300).await.iter().enumerate() {
        assert_eq!(m.outcome, Some(RunOutcome::Succeeded), "alert {i}");
        assert_eq!(ran_version(m), want, "alert {i}");
        assert_eq!(m.library[0].sha256.as_deref(), Some(want.as_str()));
    }
    let stats = stack.sim.stats();
    println!(
        "library burst: {} actions, {} library listings, {} uploads, 429s {}",
        stats.actions_created, stats.library_lists, stats.library_uploads, stats.throttled
    );
    assert_eq!(stats.actions_created, 30);
    assert_eq!(
        stats.library_uploads, 1,
        "one upload for thirty runs: {stats:?}"
    );
    // Every submission is judged on a listing at most 30 s old (runs submitted together share
    // one), and every ended action's files are listed once more: at most two listings a run.
    assert!(
        stats.library_lists <= 2 * 30 + 1,
        "at most a listing per submission and one per ended action: {stats:?}"
    );
    assert_eq!(stats.throttled, 0, "no 429: {stats:?}");
    assert!(stats.max_submissions_per_minute <= 10, "{stats:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_playbook_file_whose_library_file_is_missing_stops_the_function_naming_it() {
    let toml = r#"
[[library_files]]
name = "triage.ps1"

[[playbooks]]
name = "t"
[[playbooks.commands]]
type = "RunScript"
script = "triage.ps1"
"#;
    let sdk = testkit::aws::aws().await;
    let [(_, uri), _] = playbooks_in_s3(&sdk, toml, &[]).await;
    let e = shared::entry::load_playbooks(Some(&uri), None, &sdk)
        .await
        .expect_err("a declared file missing from the folder");
    let text = e.to_string();
    assert!(
        text.contains("triage.ps1") && text.contains("external = true"),
        "{text}"
    );
}

/// Defect 4: the playbooks came from a mutable S3 object with no pin, so whoever could write the
/// playbooks bucket decided what ran as SYSTEM at the next cold start. A deployment now pins the
/// file: other bytes stop the function's start, naming both hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swapped_playbook_file_stops_the_function_naming_both_hashes() {
    let sdk = testkit::aws::aws().await;
    let files: Vec<(&str, &[u8])> = BUNDLED_LIBRARY.to_vec();
    let [(_, uri), (_, pin)] =
        playbooks_in_s3(&sdk, shared::alerts::playbook::BUNDLED, &files).await;
    let (playbooks, _) = shared::entry::load_playbooks(Some(&uri), Some(&pin), &sdk)
        .await
        .expect("the deployed file loads");
    assert_eq!(playbooks.file_sha256(), pin);
    // Someone with write access to the playbooks bucket swaps the file.
    let (bucket, key) = uri[5..].split_once('/').unwrap();
    let swapped = shared::alerts::playbook::BUNDLED.replace("-Quick", "-Quick -Exfiltrate");
    put(
        &shared::adapters::s3::s3_client(&sdk),
        bucket,
        key,
        swapped.as_bytes(),
    )
    .await;
    let e = shared::entry::load_playbooks(Some(&uri), Some(&pin), &sdk)
        .await
        .expect_err("a swapped file stops the start")
        .to_string();
    assert!(
        e.contains(&pin)
            && e.contains(&sha256_hex(swapped.as_bytes()))
            && e.contains("PLAYBOOKS_SHA256"),
        "{e}"
    );
}

/// The scripts beside a pinned file come from the same bucket: a pinned file must pin each one,
/// and a script swapped beside it stops the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swapped_script_beside_a_pinned_playbook_file_stops_the_function() {
    let sdk = testkit::aws::aws().await;
    let files: Vec<(&str, &[u8])> = BUNDLED_LIBRARY.to_vec();
    let [(_, uri), (_, pin)] =
        playbooks_in_s3(&sdk, shared::alerts::playbook::BUNDLED, &files).await;
    let (bucket, key) = uri[5..].split_once('/').unwrap();
    let folder = key.rsplit_once('/').unwrap().0;
    put(
        &shared::adapters::s3::s3_client(&sdk),
        bucket,
        &format!("{folder}/library/triage.ps1"),
        b"Invoke-Evil",
    )
    .await;
    let e = shared::entry::load_playbooks(Some(&uri), Some(&pin), &sdk)
        .await
        .expect_err("a swapped script stops the start")
        .to_string();
    assert!(e.contains("triage.ps1") && e.contains("pins"), "{e}");
    // A pinned file that leaves a managed script unpinned is refused, naming the script.
    let [(_, uri), (_, pin)] = playbooks_in_s3(&sdk, shared::alerts::playbook::BUNDLED, &[]).await;
    let e = shared::entry::load_playbooks(Some(&uri), Some(&pin), &sdk)
        .await
        .expect_err("an unpinned script")
        .to_string();
    assert!(e.contains("triage.ps1") && e.contains("must pin"), "{e}");
}
