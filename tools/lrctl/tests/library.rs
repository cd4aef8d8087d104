//! `lrctl library status|sync` against the simulator's live response library, with the Defender
//! credentials in moto's Secrets Manager and lrctl's settings as the local stack writes them
//! (`local_stack::lrctl_settings`): an empty library is filled with the bundle; someone else's
//! file is left alone and named; a stale copy the pipeline uploaded is replaced; an external file
//! that is missing is refused; a dry run changes nothing; 429s are waited out.

mod common;

use std::collections::BTreeMap;

use common::{lrctl, said, settings_with, sha256_hex, stdout};
use mde_sim::{EndpointFaults, Faults, LibrarySeed, SimConfig, SimServer};
use shared::alerts::playbook::Playbooks;
use shared::defender::{DefenderClient, LibraryFile, StaticCredentials};
use shared::library::MANAGED_MARKER;
use shared::library::bundle::BUNDLED_LIBRARY;

/// A tenant: the simulator with `seeds` in its library, the local stack's resources on moto (the
/// credentials secret among them), and lrctl's settings for both.
struct Tenant {
    sim: SimServer,
    config: SimConfig,
    env: Vec<(String, String)>,
}

impl Tenant {
    async fn start(seeds: Vec<LibrarySeed>) -> Self {
        let config = SimConfig {
            library: seeds,
            ..SimConfig::default()
        };
        let sim = testkit::sim::start_sim(config.clone()).await;
        let sdk = testkit::aws::aws().await;
        let stack = testkit::aws::provision(
            &sdk,
            testkit::aws::unique("lrctl-lib"),
            &testkit::sim::credentials_json(&config),
        )
        .await
        .expect("provisioning on moto");
        // The functions' environment, as the local stack builds it: pointed at the simulator.
        let mut functions = stack.env.clone();
        functions.insert("MDE_API_BASE_URL".into(), sim.api_base.clone());
        functions.insert("MDE_LOGIN_BASE_URL".into(), sim.login_base.clone());
        let env = settings_with(&stack, &functions);
        Self { sim, config, env }
    }

    fn api(&self) -> DefenderClient<StaticCredentials> {
        testkit::sim::client_with(
            &self.sim,
            StaticCredentials(testkit::sim::sim_credentials(&self.config)),
        )
    }

    /// The library as the API lists it, by lower-case name.
    async fn library(&self) -> BTreeMap<String, LibraryFile> {
        self.api()
            .list_library()
            .await
            .expect("library list")
            .into_iter()
            .map(|f| (f.file_name.to_ascii_lowercase(), f))
            .collect()
    }

    async fn lrctl(&self, args: &[&str]) -> std::process::Output {
        lrctl(&self.env, args).await
    }
}

/// The bundled library's files and their SHA-256.
fn bundled() -> Vec<(&'static str, String)> {
    BUNDLED_LIBRARY
        .iter()
        .map(|(name, bytes)| (*name, sha256_hex(bytes)))
        .collect()
}

/// The line of `text` that describes `name` (the status table's row).
fn row<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{text}"))
}

/// A seed of `name` with `content` and `description`.
fn seed(name: &str, content: &str, description: &str) -> LibrarySeed {
    LibrarySeed {
        name: name.into(),
        content: content.into(),
        description: description.into(),
        ..LibrarySeed::default()
    }
}

/// The description the pipeline uploads `name` with (the bundled playbooks' declaration).
fn managed_description(name: &str) -> String {
    Playbooks::bundled()
        .unwrap()
        .library_files()
        .iter()
        .find(|s| s.name == name)
        .expect("declared in the bundled playbooks")
        .managed_description()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_library_is_filled_with_the_bundle_and_then_in_sync() {
    let t = Tenant::start(vec![]).await;
    let files = bundled();
    assert!(!files.is_empty());

    let out = t.lrctl(&["library", "status"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    for (name, sha) in &files {
        let r = row(&text, name);
        assert!(
            r.contains("would upload") && r.contains(sha) && r.contains("missing"),
            "{r}"
        );
    }

    let out = t.lrctl(&["library", "sync"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    for (name, sha) in &files {
        assert!(
            stdout(&out).contains(&format!("uploaded {name} (SHA-256 {sha})")),
            "{}",
            said(&out)
        );
    }
    assert_eq!(t.sim.stats().library_uploads, files.len() as u64);
    let library = t.library().await;
    for (name, sha) in &files {
        let f = &library[*name];
        assert_eq!(f.sha256.as_deref(), Some(sha.as_str()));
        assert!(
            f.description.as_deref().unwrap().ends_with(MANAGED_MARKER),
            "{f:?}"
        );
    }

    // Now every file is ready: status exits 0 and shows the bundle's SHA-256 on both sides; with
    // every setting from the env file the local stack writes, and none from the environment.
    let env_file = tempfile::NamedTempFile::new().unwrap();
    let text: String = t.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(env_file.path(), text).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lrctl"));
    for (k, _) in &t.env {
        cmd.env_remove(k);
    }
    for k in ["AWS_DEFAULT_REGION", "LR_STACK", "LR_PLAYBOOKS"] {
        cmd.env_remove(k);
    }
    let out = cmd
        .args([
            "--env-file",
            env_file.path().to_str().unwrap(),
            "library",
            "status",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let text = stdout(&out);
    for (name, sha) in &files {
        let r = row(&text, name);
        assert_eq!(r.matches(sha.as_str()).count(), 2, "{r}");
        assert!(r.contains("in sync") && r.contains("yes"), "{r}");
    }

    let out = t.lrctl(&["--json", "library", "status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(v["ready"], true);
    assert_eq!(v["files"].as_array().unwrap().len(), files.len());
    assert!(
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["verdict"] == "ready" && f["managed"] == true),
        "{v}"
    );
    t.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_elses_file_is_left_alone_and_a_stale_copy_of_ours_is_replaced() {
    let theirs = seed(
        "triage.ps1",
        "Write-Output 'the IR team triage'",
        "IR team's triage \u{1b}]52;c;AAAA\u{7}",
    );
    let stale = seed(
        "minidump.ps1",
        "Write-Output 'minidump v0'",
        &managed_description("minidump.ps1"),
    );
    let t = Tenant::start(vec![theirs.clone(), stale.clone()]).await;
    let bundle: BTreeMap<_, _> = bundled().into_iter().collect();

    let out = t.lrctl(&["library", "status"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text}"
    );
    let r = row(&text, "triage.ps1");
    assert!(
        r.contains("refused: library file triage.ps1")
            && r.contains(&theirs.sha256())
            && r.contains("replace_unmanaged"),
        "{r}"
    );
    let r = row(&text, "minidump.ps1");
    assert!(
        r.contains("would replace a stale copy the pipeline uploaded")
            && r.contains(&stale.sha256()),
        "{r}"
    );
    assert!(row(&text, "file-details.ps1").contains("would upload"));

    let out = t.lrctl(&["library", "sync"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(text.contains("refused triage.ps1: "), "{}", said(&out));
    assert!(
        text.contains(&format!(
            "replaced minidump.ps1, a stale copy the pipeline uploaded (SHA-256 {} -> {})",
            stale.sha256(),
            bundle["minidump.ps1"]
        )),
        "{}",
        said(&out)
    );
    assert!(text.contains("uploaded file-details.ps1"), "{}", said(&out));
    assert_eq!(t.sim.stats().library_uploads, 2);
    let library = t.library().await;
    assert_eq!(
        library["triage.ps1"].sha256.as_deref(),
        Some(theirs.sha256().as_str()),
        "someone else's file is never replaced"
    );
    assert_eq!(
        library["triage.ps1"].description.as_deref(),
        Some(theirs.description.as_str())
    );
    assert_eq!(
        library["minidump.ps1"].sha256.as_deref(),
        Some(bundle["minidump.ps1"].as_str())
    );
    // The final status: only someone else's file is not ready.
    let final_status = text
        .split("status after sync:")
        .nth(1)
        .expect("final status");
    assert!(row(final_status, "minidump.ps1").contains("in sync"));
    assert!(row(final_status, "triage.ps1").contains("refused"));
    t.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_playbook_file_with_a_missing_external_file_is_refused_by_name() {
    let t = Tenant::start(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let script = b"Write-Output 'collect'";
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    std::fs::write(dir.path().join("lib/collect.ps1"), script).unwrap();
    let path = dir.path().join("playbooks.toml");
    std::fs::write(
        &path,
        r#"
library_folder = "lib"

[[library_files]]
name = "collect.ps1"
description = "Collects"

[[library_files]]
name = "collector.exe"
external = true

[[playbooks]]
name = "collect"
[[playbooks.commands]]
type = "PutFile"
file = "collector.exe"
[[playbooks.commands]]
type = "RunScript"
script = "collect.ps1"
"#,
    )
    .unwrap();
    let path = path.to_str().unwrap();

    let out = t.lrctl(&["library", "status", "--playbooks", path]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    let r = row(&text, "collector.exe");
    assert!(
        r.contains("external")
            && r.contains("any")
            && r.contains("missing")
            && r.contains("refused: library file collector.exe is declared external"),
        "{r}"
    );
    assert!(
        row(&text, "collect.ps1").contains(&sha256_hex(script)),
        "{text}"
    );
    assert!(
        !text.contains("triage.ps1"),
        "the bundled playbooks are not read: {text}"
    );

    // LR_PLAYBOOKS names it as well; sync uploads what it manages and refuses the rest.
    let mut env = t.env.clone();
    env.push(("LR_PLAYBOOKS".into(), path.into()));
    let out = lrctl(&env, &["library", "sync"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(
        text.contains("uploaded collect.ps1") && text.contains("refused collector.exe: "),
        "{}",
        said(&out)
    );
    assert_eq!(t.sim.stats().library_uploads, 1);
    assert!(!t.library().await.contains_key("collector.exe"));
    t.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_nothing() {
    let stale = seed(
        "triage.ps1",
        "Write-Output 'triage v0'",
        &managed_description("triage.ps1"),
    );
    let t = Tenant::start(vec![stale.clone()]).await;
    let before = t.library().await;

    let out = t.lrctl(&["library", "sync", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let text = stdout(&out);
    assert!(
        text.contains("would replace triage.ps1, a stale copy the pipeline uploaded")
            && text.contains("would upload minidump.ps1")
            && text.contains("status (dry run: nothing changed):"),
        "{}",
        said(&out)
    );
    let out = t.lrctl(&["--json", "library", "sync", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sync --json");
    assert_eq!(v["dry_run"], true);
    assert!(
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["done"] == false),
        "{v}"
    );
    assert_eq!(v["status"]["ready"], false);

    assert_eq!(t.sim.stats().library_uploads, 0);
    assert_eq!(t.library().await, before);
    assert_eq!(
        before["triage.ps1"].sha256.as_deref(),
        Some(stale.sha256().as_str())
    );
    t.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_calls_are_waited_out() {
    let t = Tenant::start(vec![]).await;
    let mut endpoints = BTreeMap::new();
    endpoints.insert(
        "library".to_string(),
        EndpointFaults {
            p429: 0.3,
            ..EndpointFaults::default()
        },
    );
    t.sim.set_faults(Faults {
        seed: 7,
        endpoints,
        ..Faults::default()
    });

    let out = t.lrctl(&["library", "sync"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(429): waiting"),
        "some call was throttled: {}",
        said(&out)
    );
    assert_eq!(t.sim.stats().library_uploads, bundled().len() as u64);
    t.sim.set_faults(Faults::default());
    let out = t.lrctl(&["library", "status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    t.sim.shutdown().await;
}
