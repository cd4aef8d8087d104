use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use shared::defender::LibraryUpload;
use shared::library::{LibraryFileSpec, MANAGED_MARKER};

use super::*;

/// A library in memory with Defender's rules (names ignore case; replacing needs
/// `override_if_exists`), answering calls first with the errors queued in `fail`.
#[derive(Default)]
struct Fake {
    files: Mutex<BTreeMap<String, LibraryFile>>,
    fail: Mutex<VecDeque<DefenderError>>,
    calls: Mutex<Vec<String>>,
}

impl Fake {
    fn seed(&self, name: &str, content: &[u8], description: &str) {
        self.files.lock().unwrap().insert(
            name.to_ascii_lowercase(),
            LibraryFile {
                file_name: name.into(),
                sha256: Some(shared::hash::sha256_hex(content)),
                description: Some(description.into()),
                creation_time: None,
                last_updated_time: None,
                created_by: None,
                has_parameters: false,
                parameters_description: None,
            },
        );
    }

    fn sha256(&self, name: &str) -> Option<String> {
        self.files.lock().unwrap()[&name.to_ascii_lowercase()]
            .sha256
            .clone()
    }

    fn throttle(&self, times: usize, retry_after: Option<Duration>) {
        for _ in 0..times {
            self.fail
                .lock()
                .unwrap()
                .push_back(DefenderError::RateLimited { retry_after });
        }
    }
}

impl LibraryApi for Fake {
    fn list(&self) -> BoxFuture<'_, std::result::Result<Vec<LibraryFile>, DefenderError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push("list".into());
            if let Some(e) = self.fail.lock().unwrap().pop_front() {
                return Err(e);
            }
            Ok(self.files.lock().unwrap().values().cloned().collect())
        })
    }

    fn upload<'a>(
        &'a self,
        upload: &'a LibraryUpload,
    ) -> BoxFuture<'a, std::result::Result<LibraryFile, DefenderError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(format!(
                "upload {} override={}",
                upload.file_name, upload.override_if_exists
            ));
            if let Some(e) = self.fail.lock().unwrap().pop_front() {
                return Err(e);
            }
            let mut files = self.files.lock().unwrap();
            let key = upload.file_name.to_ascii_lowercase();
            if files.contains_key(&key) && !upload.override_if_exists {
                return Err(DefenderError::Rejected {
                    status: 400,
                    code: "InvalidRequestBody".into(),
                    message: "exists".into(),
                });
            }
            let entity = LibraryFile {
                file_name: upload.file_name.clone(),
                sha256: Some(shared::hash::sha256_hex(&upload.content)),
                description: Some(upload.description.clone()),
                creation_time: None,
                last_updated_time: None,
                created_by: None,
                has_parameters: upload.has_parameters,
                parameters_description: upload.parameters_description.clone(),
            };
            files.insert(key, entity.clone());
            Ok(entity)
        })
    }
}

fn spec(name: &str) -> LibraryFileSpec {
    LibraryFileSpec {
        name: name.into(),
        description: "d".into(),
        has_parameters: false,
        parameters_description: None,
        external: false,
        sha256: None,
        replace_unmanaged: false,
        keeps_name: false,
    }
}

const NEW: &[u8] = b"Write-Output 'v2'";

fn bundle(specs: &[LibraryFileSpec]) -> Bundle {
    Bundle::assemble(specs, |_| Some(NEW.to_vec())).unwrap()
}

/// The name the library keeps the bundled `name` (with [`NEW`]'s bytes) under.
fn versioned(name: &str) -> String {
    shared::library::versioned_name(name, &shared::hash::sha256_hex(NEW))
}

/// Runs `f` with a pace that records each wait instead of sleeping, and the notes it made.
async fn paced<T>(f: impl AsyncFnOnce(&Pace<'_>) -> T) -> (T, Vec<Duration>, Vec<String>) {
    let waits = Mutex::new(Vec::new());
    let notes = Mutex::new(Vec::new());
    let sleep = |d| -> BoxFuture<'static, ()> {
        waits.lock().unwrap().push(d);
        Box::pin(std::future::ready(()))
    };
    let note = |l: &str| notes.lock().unwrap().push(l.to_string());
    let got = f(&Pace {
        sleep: &sleep,
        note: &note,
    })
    .await;
    (
        got,
        waits.into_inner().unwrap(),
        notes.into_inner().unwrap(),
    )
}

#[tokio::test]
async fn a_429_is_waited_out_as_long_as_retry_after_says_or_10s_at_most_5_times() {
    let fake = Fake::default();
    fake.throttle(1, Some(Duration::from_secs(3)));
    fake.throttle(1, None);
    let (got, waits, notes) = paced(async |p| list(&fake, p).await).await;
    assert!(got.is_ok());
    assert_eq!(waits, [Duration::from_secs(3), Duration::from_secs(10)]);
    assert!(
        notes[0].contains("429") && notes[0].contains("3s"),
        "{notes:?}"
    );

    fake.throttle(6, Some(Duration::from_secs(1)));
    let (got, waits, _) = paced(async |p| list(&fake, p).await).await;
    let e = got.unwrap_err().to_string();
    assert_eq!(waits.len(), 5, "five retries, then it gives up");
    assert!(
        e.contains("throttled") && e.contains("try again later"),
        "{e}"
    );
    assert_eq!(
        fake.calls.lock().unwrap().len(),
        3 + 6,
        "one call, then five retries"
    );
}

#[tokio::test]
async fn a_401_or_403_names_the_library_manage_permission() {
    let fake = Fake::default();
    fake.fail
        .lock()
        .unwrap()
        .push_back(DefenderError::Unauthorized {
            status: 403,
            message: "Missing application roles".into(),
        });
    let (got, _, _) = paced(async |p| list(&fake, p).await).await;
    let e = got.unwrap_err().to_string();
    assert!(e.contains("Library.Manage") && e.contains("403"), "{e}");

    // On an upload too: the sync stops there.
    let fake = Fake::default();
    let api = FailUpload::new(
        &fake,
        DefenderError::Unauthorized {
            status: 401,
            message: "no".into(),
        },
    );
    let b = bundle(&[spec("a.ps1")]);
    let (got, _, _) = paced(async |p| apply(&api, &b, false, p, &mut |_: &str| {}).await).await;
    let e = got.err().expect("refused").to_string();
    assert!(
        e.contains("Library.Manage") && e.contains(&versioned("a.ps1")),
        "{e}"
    );
}

#[tokio::test]
async fn each_verdict_in_words_and_sync_acts_only_as_it_says() {
    let mut theirs_allowed = spec("allowed.ps1");
    theirs_allowed.replace_unmanaged = true;
    let mut ext = spec("tool.exe");
    ext.external = true;
    let mut pinned = spec("pinned.exe");
    pinned.external = true;
    pinned.sha256 = Some(shared::hash::sha256_hex(b"v1"));
    let specs = [
        spec("missing.ps1"),
        spec("same.ps1"),
        spec("stale.ps1"),
        spec("theirs.ps1"),
        theirs_allowed,
        ext,
        pinned,
    ];
    let b = bundle(&specs);
    let fake = Fake::default();
    // Bundled files are looked up under their versioned names (in any case); external ones under
    // their own.
    fake.seed(&versioned("same.ps1").to_uppercase(), NEW, "whoever");
    fake.seed(
        &versioned("stale.ps1"),
        b"old",
        &spec("stale.ps1").managed_description(),
    );
    fake.seed(&versioned("theirs.ps1"), b"theirs", "IR team's \u{1b}[8m");
    fake.seed(&versioned("allowed.ps1"), b"theirs", "IR team's");
    fake.seed("pinned.exe", b"v0", "vendor");
    fake.seed("unrelated.ps1", b"x", "not declared: never looked at");
    // Under a bundled file's plain name: not the pipeline's copy, whatever it holds (another
    // version, someone else's file): never looked at either.
    fake.seed(
        "missing.ps1",
        NEW,
        &spec("missing.ps1").managed_description(),
    );
    fake.seed("theirs.ps1", NEW, "IR team's");

    let listing = fake.list().await.unwrap();
    let rows = judge(&b, &listing);
    let words: BTreeMap<String, String> =
        rows.iter().map(|r| (r.name(), r.verdict_text())).collect();
    let word = |name: &str| words[&versioned(name)].as_str();
    assert_eq!(word("missing.ps1"), "would upload");
    assert_eq!(word("same.ps1"), "in sync");
    assert_eq!(
        word("stale.ps1"),
        "would replace a stale copy the pipeline uploaded"
    );
    assert_eq!(
        word("allowed.ps1"),
        "would replace someone else's file (replace_unmanaged)"
    );
    assert!(
        word("theirs.ps1").starts_with("refused: ")
            && word("theirs.ps1").contains(&versioned("theirs.ps1")),
        "{words:?}"
    );
    assert!(words["tool.exe"].contains("external"), "{words:?}");
    assert!(words["pinned.exe"].contains("pins"), "{words:?}");
    let text = status_text("the test playbooks", &rows);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(
        text.contains("7 library file(s) declared in the test playbooks: 1 in sync, 3 to upload or replace, 3 refused"),
        "{text}"
    );
    // A bundled file's row shows both names; an external file's, its one name.
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{text}"))
    };
    assert!(
        line(&versioned("missing.ps1"))
            .contains(&format!("{} (missing.ps1)", versioned("missing.ps1")))
            && line(&versioned("missing.ps1")).contains("missing  "),
        "{text}"
    );
    assert!(line("tool.exe ").starts_with("tool.exe  "), "{text}");
    let missing = rows
        .iter()
        .find(|r| r.playbook_name() == "missing.ps1")
        .unwrap();
    assert!(missing.listed.is_none(), "the plain-named copy is not it");
    assert_eq!(missing.json()["playbook_name"], "missing.ps1");
    assert_eq!(missing.json()["library_name"], versioned("missing.ps1"));
    assert_eq!(missing.json()["in_library"], false);
    let tool = rows.iter().find(|r| r.name() == "tool.exe").unwrap();
    assert_eq!(tool.json()["playbook_name"], "tool.exe");
    assert_eq!(tool.json()["library_name"], "tool.exe");
    let stale = rows
        .iter()
        .find(|r| r.name() == versioned("stale.ps1"))
        .unwrap();
    assert_eq!(stale.managed(), Some(true));
    assert!(
        stale.json()["library_description"]
            .as_str()
            .unwrap()
            .ends_with(MANAGED_MARKER)
    );

    // A dry run changes nothing.
    fake.calls.lock().unwrap().clear();
    let mut said = Vec::new();
    let (synced, _, _) =
        paced(async |p| apply(&fake, &b, true, p, &mut |l: &str| said.push(l.to_string())).await)
            .await;
    let synced = synced.unwrap();
    assert_eq!(*fake.calls.lock().unwrap(), ["list"]);
    assert!(synced.after.is_none() && !synced.ok());
    assert!(
        said.iter()
            .any(|l| l.starts_with(&format!("would upload {}", versioned("missing.ps1")))),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l.starts_with(&format!("refused {}", versioned("theirs.ps1")))),
        "{said:?}"
    );

    // The sync uploads the missing file without override, replaces the stale and the allowed
    // ones, and leaves the rest alone.
    fake.calls.lock().unwrap().clear();
    let before = fake.files.lock().unwrap().clone();
    let (synced, _, _) = paced(async |p| apply(&fake, &b, false, p, &mut |_: &str| {}).await).await;
    let synced = synced.unwrap();
    assert_eq!(
        *fake.calls.lock().unwrap(),
        [
            "list".to_string(),
            format!("upload {} override=true", versioned("allowed.ps1")),
            format!("upload {} override=false", versioned("missing.ps1")),
            format!("upload {} override=true", versioned("stale.ps1")),
            "list".to_string(),
        ]
    );
    let new = shared::hash::sha256_hex(NEW);
    for name in ["missing.ps1", "stale.ps1", "allowed.ps1"] {
        let name = versioned(name);
        assert_eq!(fake.sha256(&name).as_deref(), Some(new.as_str()), "{name}");
    }
    // Everything else is as it was: someone else's file under the versioned name, and whatever is
    // under the plain names.
    let files = fake.files.lock().unwrap().clone();
    for (key, file) in &before {
        if !["missing.ps1", "stale.ps1", "allowed.ps1"]
            .iter()
            .any(|n| *key == versioned(n))
        {
            assert_eq!(files[key], *file, "{key}");
        }
    }
    assert_eq!(files.len(), before.len() + 1, "one new file, none deleted");
    assert!(!synced.ok(), "refusals make it fail");
    let after = synced.after.unwrap();
    let not_ready: Vec<String> = after.iter().filter(|r| !r.ready()).map(Row::name).collect();
    assert_eq!(
        not_ready,
        [
            "pinned.exe".to_string(),
            versioned("theirs.ps1"),
            "tool.exe".into()
        ]
    );
}

#[tokio::test]
async fn a_failed_upload_is_reported_and_the_rest_go_on() {
    let b = bundle(&[spec("a.ps1"), spec("b.ps1")]);
    let fake = Fake::default();
    let api = FailUpload::new(
        &fake,
        DefenderError::Transient {
            reason: "HTTP 503".into(),
        },
    );
    let mut said = Vec::new();
    let (synced, _, _) =
        paced(async |p| apply(&api, &b, false, p, &mut |l: &str| said.push(l.to_string())).await)
            .await;
    let synced = synced.unwrap();
    assert!(!synced.ok());
    assert!(synced.steps[0].error.as_deref().unwrap().contains("503"));
    assert!(synced.steps[1].done);
    assert!(
        said.iter()
            .any(|l| l.starts_with(&format!("uploaded {}", versioned("b.ps1")))),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l.starts_with(&format!("could not upload {}", versioned("a.ps1")))),
        "{said:?}"
    );
}

/// Answers the first upload with `error`, everything else through `inner`.
struct FailUpload<'a> {
    inner: &'a Fake,
    error: Mutex<Option<DefenderError>>,
}

impl<'a> FailUpload<'a> {
    fn new(inner: &'a Fake, error: DefenderError) -> Self {
        Self {
            inner,
            error: Mutex::new(Some(error)),
        }
    }
}

impl LibraryApi for FailUpload<'_> {
    fn list(&self) -> BoxFuture<'_, std::result::Result<Vec<LibraryFile>, DefenderError>> {
        self.inner.list()
    }

    fn upload<'a>(
        &'a self,
        upload: &'a LibraryUpload,
    ) -> BoxFuture<'a, std::result::Result<LibraryFile, DefenderError>> {
        match self.error.lock().unwrap().take() {
            Some(e) => Box::pin(std::future::ready(Err(e))),
            None => self.inner.upload(upload),
        }
    }
}

#[test]
fn a_local_playbook_file_reads_its_library_folder_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
library_folder = "lib"
[[library_files]]
name = "t.ps1"
[[library_files]]
name = "collector.exe"
external = true
[[playbooks]]
name = "p"
[[playbooks.commands]]
type = "RunScript"
script = "t.ps1"
[[playbooks.commands]]
type = "PutFile"
file = "collector.exe"
"#;
    let path = dir.path().join("playbooks.toml");
    std::fs::write(&path, toml).unwrap();
    let e = from_file(&path).unwrap_err().to_string();
    assert!(e.contains("t.ps1"), "a missing managed file is named: {e}");
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    std::fs::write(dir.path().join("lib/t.ps1"), NEW).unwrap();
    let b = from_file(&path).unwrap();
    assert_eq!(
        b.get("t.ps1").unwrap().sha256.as_deref(),
        Some(shared::hash::sha256_hex(NEW).as_str())
    );
    assert!(!b.get("collector.exe").unwrap().managed());
    assert!(matches!(
        from_file(&dir.path().join("nope.toml")),
        Err(Error::Usage(_))
    ));
}
