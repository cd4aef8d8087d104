//! `lrctl library status|sync` against the simulator's live response library, with the Defender
//! credentials in moto's Secrets Manager and lrctl's settings as the local stack writes them
//! (`local_stack::lrctl_settings`): an empty library is filled with the bundle, each file under
//! its versioned name; someone else's file under that name is left alone and named; a stale copy
//! the pipeline uploaded under it is replaced; a file under a bundled file's plain name is not the
//! pipeline's and changes nothing; an external file that is missing is refused; a dry run changes
//! nothing; 429s are waited out.

use std::collections::BTreeMap;

use crate::common::{lrctl, said, settings_with, sha256_hex, stdout};
use mde_sim::{EndpointFaults, Faults, LibrarySeed, SimConfig, SimServer};
use shared::alerts::playbook::Playbooks;
use shared::defender::{DefenderClient, LibraryFile, StaticCredentials};
use shared::library::bundle::BUNDLED_LIBRARY;
use shared::library::{MANAGED_MARKER, versioned_name};

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

/// A bundled library file: its name in the playbooks, its name in the library, its SHA-256.
struct Bundled {
    name: &'static str,
    library_name: String,
    sha256: String,
}

/// The bundled library's files.
fn bundled() -> Vec<Bundled> {
    BUNDLED_LIBRARY
        .iter()
        .map(|(name, bytes)| {
            let sha256 = sha256_hex(bytes);
            Bundled {
                name,
                library_name: versioned_name(name, &sha256),
                sha256,
            }
        })
        .collect()
}

/// The bundled file the playbooks call `name`.
fn bundled_file(name: &str) -> Bundled {
    bundled()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} is not in the bundled library"))
}

/// The line of `text` that describes the file the library keeps as `name` (the status table's row).
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
    for f in &files {
        // Named as the library keeps it, and as the playbooks declare it.
        let r = row(&text, &f.library_name);
        assert!(
            r.starts_with(&format!("{} ({})", f.library_name, f.name))
                && r.contains("would upload")
                && r.contains(&f.sha256)
                && r.contains("missing"),
            "{r}"
        );
    }

    let out = t.lrctl(&["library", "sync"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    for f in &files {
        assert!(
            stdout(&out).contains(&format!(
                "uploaded {} (SHA-256 {})",
                f.library_name, f.sha256
            )),
            "{}",
            said(&out)
        );
    }
    assert_eq!(t.sim.stats().library_uploads, files.len() as u64);
    let library = t.library().await;
    assert_eq!(library.len(), files.len(), "{library:?}");
    for f in &files {
        let listed = &library[&f.library_name.to_ascii_lowercase()];
        assert_eq!(listed.sha256.as_deref(), Some(f.sha256.as_str()));
        assert!(
            listed
                .description
                .as_deref()
                .unwrap()
                .ends_with(MANAGED_MARKER),
            "{listed:?}"
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
    for f in &files {
        let r = row(&text, &f.library_name);
        assert_eq!(r.matches(f.sha256.as_str()).count(), 2, "{r}");
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
    for f in &files {
        assert!(
            v["files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["playbook_name"] == f.name
                    && j["library_name"] == f.library_name.as_str()
                    && j["name"] == f.library_name.as_str()),
            "{v}"
        );
    }
    t.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_elses_file_is_left_alone_and_a_stale_copy_of_ours_is_replaced() {
    let details = bundled_file("file-details.ps1");
    let minidump = bundled_file("minidump.ps1");
    let triage = bundled_file("triage.ps1");
    // Someone else's file under the name the pipeline keeps file-details.ps1 by, with other bytes.
    let theirs = seed(
        &details.library_name,
        "Write-Output 'the IR team file details'",
        "IR team's details \u{1b}]52;c;AAAA\u{7}",
    );
    // A copy the pipeline uploaded under minidump.ps1's versioned name, with other bytes.
    let stale = seed(
        &minidump.library_name,
        "Write-Output 'minidump v0'",
        &managed_description("minidump.ps1"),
    );
    // Someone's triage.ps1 under the plain name: not the pipeline's, and no matter to it.
    let plain = seed(
        "triage.ps1",
        "Write-Output 'the IR team triage'",
        "IR team's triage",
    );
    let t = Tenant::start(vec![theirs.clone(), stale.clone(), plain.clone()]).await;

    let out = t.lrctl(&["library", "status"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text}"
    );
    let r = row(&text, &details.library_name);
    assert!(
        r.contains(&format!("refused: library file {}", details.library_name))
            && r.contains(&theirs.sha256())
            && r.contains("replace_unmanaged"),
        "{r}"
    );
    let r = row(&text, &minidump.library_name);
    assert!(
        r.contains("would replace a stale copy the pipeline uploaded")
            && r.contains(&stale.sha256()),
        "{r}"
    );
    let r = row(&text, &triage.library_name);
    assert!(
        r.contains("(triage.ps1)")
            && r.contains("missing")
            && r.contains("would upload")
            && !r.contains(&plain.sha256()),
        "the plain-named triage.ps1 is not the pipeline's copy: {r}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("triage.ps1")),
        "no row for the plain name: {text}"
    );

    let out = t.lrctl(&["library", "sync"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("refused {}: ", details.library_name)),
        "{}",
        said(&out)
    );
    assert!(
        text.contains(&format!(
            "replaced {}, a stale copy the pipeline uploaded (SHA-256 {} -> {})",
            minidump.library_name,
            stale.sha256(),
            minidump.sha256
        )),
        "{}",
        said(&out)
    );
    assert!(
        text.contains(&format!(
            "uploaded {} (SHA-256 {})",
            triage.library_name, triage.sha256
        )),
        "{}",
        said(&out)
    );
    assert_eq!(t.sim.stats().library_uploads, 2);
    let library = t.library().await;
    let theirs_now = &library[&details.library_name.to_ascii_lowercase()];
    assert_eq!(
        theirs_now.sha256.as_deref(),
        Some(theirs.sha256().as_str()),
        "someone else's file is never replaced"
    );
    assert_eq!(
        theirs_now.description.as_deref(),
        Some(theirs.description.as_str())
    );
    assert_eq!(
        library[&minidump.library_name.to_ascii_lowercase()]
            .sha256
            .as_deref(),
        Some(minidump.sha256.as_str())
    );
    assert_eq!(
        library[&triage.library_name.to_ascii_lowercase()]
            .sha256
            .as_deref(),
        Some(triage.sha256.as_str())
    );
    assert_eq!(
        library["triage.ps1"].sha256.as_deref(),
        Some(plain.sha256().as_str()),
        "the plain-named file is left as it was"
    );
    assert_eq!(
        library["triage.ps1"].description.as_deref(),
        Some(plain.description.as_str())
    );
    // The final status: only someone else's file is not ready.
    let final_status = text
        .split("status after sync:")
        .nth(1)
        .expect("final status");
    assert!(row(final_status, &minidump.library_name).contains("in sync"));
    assert!(row(final_status, &triage.library_name).contains("in sync"));
    assert!(row(final_status, &details.library_name).contains("refused"));
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
    let collect = versioned_name("collect.ps1", &sha256_hex(script));
    assert!(row(&text, &collect).contains(&sha256_hex(script)), "{text}");
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
        text.contains(&format!("uploaded {collect}")) && text.contains("refused collector.exe: "),
        "{}",
        said(&out)
    );
    assert_eq!(t.sim.stats().library_uploads, 1);
    let library = t.library().await;
    assert!(library.contains_key(&collect.to_ascii_lowercase()));
    assert!(!library.contains_key("collector.exe"));
    t.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_nothing() {
    let triage = bundled_file("triage.ps1");
    let minidump = bundled_file("minidump.ps1");
    let stale = seed(
        &triage.library_name,
        "Write-Output 'triage v0'",
        &managed_description("triage.ps1"),
    );
    // What a pipeline before versioned names uploaded: no longer its copy of anything.
    let old = seed(
        "minidump.ps1",
        "Write-Output 'minidump v0'",
        &managed_description("minidump.ps1"),
    );
    let t = Tenant::start(vec![stale.clone(), old]).await;
    let before = t.library().await;

    let out = t.lrctl(&["library", "sync", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "would replace {}, a stale copy the pipeline uploaded",
            triage.library_name
        )) && text.contains(&format!("would upload {}", minidump.library_name))
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
    assert!(
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["action"] == "replace"
                && s["playbook_name"] == "triage.ps1"
                && s["library_name"] == triage.library_name.as_str()),
        "{v}"
    );

    assert_eq!(t.sim.stats().library_uploads, 0);
    assert_eq!(t.library().await, before);
    assert_eq!(
        before[&triage.library_name.to_ascii_lowercase()]
            .sha256
            .as_deref(),
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
