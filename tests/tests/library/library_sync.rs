//! Keeping the live response library in step, without the network: the librarian over an
//! in-memory library and store. A fresh library gets the bundle once (one listing, one upload per
//! file, however many runs ask at once); a stale copy the pipeline uploaded is replaced; someone
//! else's file of the same name is left alone unless the playbook allows it; an external file must
//! be there; a warm listing costs no call, and a mismatch lists again before deciding; every call
//! is paced by the tenant's GET budget; Defender's refusals say what to fix. And submit: a run whose
//! file cannot be had ends before anything is posted, with the reason, its manifest written.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shared::adapters::memory::{MemLibrary, MemQueue, MemStore};
use shared::budget::BudgetConfig;
use shared::clock::ManualClock;
use shared::defender::{
    ActionId, Command, DefenderError, LibraryFile, LibraryUpload, MachineAction,
};
use shared::library::{
    Bundle, Ensured, Librarian, LibraryFileSpec, LibrarySource, LibrarySync, SyncMode,
};
use shared::messages::{Delivery, MESSAGE_VERSION, SubmitJob, encode};
use shared::ports::{BoxFuture, LibraryApi, ObjectStore};
use shared::stages::Ports;
use shared::store::{Manifest, RunOutcome, RunRecord, RunState, manifest_key};
use testkit::alerts::run_id;
use testkit::configs::{budget, submit_config};
use testkit::defender::Scripted;
use testkit::records::{collecting_run, put_run};
use testkit::sim::{M1, machine_id};
use time::OffsetDateTime;

const TRIAGE: &[u8] = b"Write-Output 'triage v2'";
const DUMP: &[u8] = b"Write-Output 'dump v1'";

fn spec(name: &str) -> LibraryFileSpec {
    LibraryFileSpec {
        name: name.into(),
        description: "from the bundle".into(),
        has_parameters: true,
        parameters_description: Some("-Quick | -Full".into()),
        external: false,
        sha256: None,
        replace_unmanaged: false,
        keeps_name: false,
    }
}

fn external(name: &str) -> LibraryFileSpec {
    LibraryFileSpec {
        external: true,
        ..spec(name)
    }
}

fn bundle(specs: &[LibraryFileSpec]) -> Bundle {
    Bundle::assemble(specs, |n| match n {
        "triage.ps1" => Some(TRIAGE.to_vec()),
        "dump.ps1" => Some(DUMP.to_vec()),
        _ => None,
    })
    .expect("the test bundle assembles")
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

fn sha(b: &[u8]) -> String {
    shared::hash::sha256_hex(b)
}

/// The name the library keeps a bundled file under: its versioned name.
fn lib(name: &str, content: &[u8]) -> String {
    shared::library::versioned_name(name, &sha(content))
}

fn triage() -> String {
    lib("triage.ps1", TRIAGE)
}

struct World {
    store: MemStore,
    clock: ManualClock,
    budget: BudgetConfig,
    library: MemLibrary,
}

impl World {
    fn new() -> Self {
        Self {
            store: MemStore::default(),
            clock: ManualClock::at(OffsetDateTime::now_utc()),
            budget: budget(),
            library: MemLibrary::default(),
        }
    }

    async fn ensure(&self, keeper: &Librarian, wanted: &[&str]) -> Ensured {
        keeper
            .ensure(
                &self.library,
                &self.store,
                &self.budget,
                &self.clock,
                &names(wanted),
            )
            .await
            .expect("the budget's store works")
    }

    fn lists(&self) -> usize {
        self.library.lists.load(Ordering::SeqCst)
    }

    fn uploads(&self) -> Vec<String> {
        self.library.uploads.lock().unwrap().clone()
    }
}

fn ready(e: Ensured) -> Vec<shared::library::LibraryUse> {
    match e {
        Ensured::Ready(u) => u,
        other => panic!("expected the library to be ready: {other:?}"),
    }
}

fn refused(e: Ensured) -> String {
    match e {
        Ensured::Refused(r) => r,
        other => panic!("expected a refusal: {other:?}"),
    }
}

#[tokio::test]
async fn a_fresh_library_gets_the_bundle_once_and_a_warm_one_costs_no_call() {
    let w = World::new();
    let keeper = Librarian::new(
        bundle(&[spec("triage.ps1"), spec("dump.ps1")]),
        SyncMode::Upload,
    );
    let used = ready(w.ensure(&keeper, &["triage.ps1", "dump.ps1"]).await);
    assert_eq!(w.lists(), 1);
    assert_eq!(w.uploads(), vec![triage(), lib("dump.ps1", DUMP)]);
    assert_eq!(used.len(), 2);
    assert_eq!(used[0].name, "triage.ps1");
    assert_eq!(used[0].library_name, triage());
    assert_eq!(used[0].sha256.as_deref(), Some(sha(TRIAGE).as_str()));
    assert_eq!(used[0].source, LibrarySource::Bundle);
    assert_eq!(w.library.sha256(&triage()), Some(sha(TRIAGE)));
    let stored = w.library.files.lock().unwrap()[&triage().to_ascii_lowercase()].clone();
    assert!(
        stored
            .description
            .as_deref()
            .is_some_and(|d| d.starts_with("from the bundle")
                && d.ends_with(shared::library::MANAGED_MARKER)),
        "{stored:?}"
    );
    assert!(stored.has_parameters);
    assert_eq!(
        stored.parameters_description.as_deref(),
        Some("-Quick | -Full")
    );

    // The next runs find the listing warm: no call at all.
    for _ in 0..5 {
        ready(w.ensure(&keeper, &["TRIAGE.ps1"]).await);
    }
    assert_eq!((w.lists(), w.uploads().len()), (1, 2));

    // Once the listing is older than FRESH, the next submission lists again.
    w.clock
        .advance(shared::library::keeper::FRESH + Duration::from_secs(1));
    ready(w.ensure(&keeper, &["triage.ps1"]).await);
    assert_eq!((w.lists(), w.uploads().len()), (2, 2));
}

/// Defect 3: the listing was trusted for ten minutes, so a script replaced in Defender's library
/// within that window was judged ready and the device ran the replacement as SYSTEM, while the
/// manifest attested the bundle's hash. Now every submission is judged on a listing at most FRESH
/// old: the swap is seen and put right before the run is submitted.
#[tokio::test]
async fn a_script_swapped_in_the_library_a_minute_after_a_listing_is_seen_before_the_next_submission()
 {
    let w = World::new();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    ready(w.ensure(&keeper, &["triage.ps1"]).await);
    assert_eq!(w.library.sha256(&triage()), Some(sha(TRIAGE)));
    // A minute later (well within the old ten), someone with Library.Manage swaps the bytes
    // under the pipeline's own versioned name, description and all.
    w.clock.advance(Duration::from_secs(60));
    let marker = spec("triage.ps1").managed_description();
    w.library.seed(&triage(), b"Invoke-Evil -AsSystem", &marker);
    let used = ready(w.ensure(&keeper, &["triage.ps1"]).await);
    assert_eq!(w.lists(), 2, "the second submission listed again");
    assert_eq!(used[0].sha256.as_deref(), Some(sha(TRIAGE).as_str()));
    assert_eq!(
        w.library.sha256(&triage()),
        Some(sha(TRIAGE)),
        "the swapped script was replaced before the run was submitted"
    );
}

#[tokio::test]
async fn many_runs_at_once_list_once_and_upload_each_file_once() {
    let w = World::new();
    let keeper = Librarian::new(
        bundle(&[spec("triage.ps1"), spec("dump.ps1")]),
        SyncMode::Upload,
    );
    let all = futures_util::future::join_all(
        (0..30).map(|_| w.ensure(&keeper, &["triage.ps1", "dump.ps1"])),
    )
    .await;
    for e in all {
        ready(e);
    }
    assert_eq!(w.lists(), 1);
    assert_eq!(w.uploads(), vec![triage(), lib("dump.ps1", DUMP)]);
}

#[tokio::test]
async fn a_damaged_copy_the_pipeline_uploaded_is_replaced_and_other_versions_are_left_alone() {
    let w = World::new();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    let marker = spec("triage.ps1").managed_description();
    // Our versioned name with other bytes (damaged, or an upload cut short) is put right; an
    // older version and a plain-named copy are other files, kept for the runs that use them.
    w.library
        .seed(&triage(), b"Write-Output 'damaged'", &marker);
    let v1 = lib("triage.ps1", b"Write-Output 'triage v1'");
    w.library.seed(&v1, b"Write-Output 'triage v1'", &marker);
    w.library
        .seed("triage.ps1", b"Write-Output 'triage v0'", &marker);
    let used = ready(w.ensure(&keeper, &["triage.ps1"]).await);
    assert_eq!(used[0].sha256.as_deref(), Some(sha(TRIAGE).as_str()));
    assert_eq!(w.library.sha256(&triage()), Some(sha(TRIAGE)));
    assert_eq!(w.uploads(), vec![triage()]);
    assert_eq!(
        w.library.sha256(&v1),
        Some(sha(b"Write-Output 'triage v1'"))
    );
    assert_eq!(
        w.library.sha256("triage.ps1"),
        Some(sha(b"Write-Output 'triage v0'"))
    );
}

/// Someone else's file is never overwritten unless the playbook says so. Under the pipeline's own
/// versioned name (which carries the bundle's hash, so nothing legitimate holds other bytes there)
/// it is planted, or a mistake: defect 7 found that it refused every run needing the file. The run
/// now waits for a person (retried with an alarm, then failed with the reason if it stays), and
/// goes on once the file is removed.
#[tokio::test]
async fn someone_elses_file_is_left_alone_and_one_planted_under_the_versioned_name_is_waited_out() {
    let w = World::new();
    let theirs = b"Write-Output 'the IR team''s own triage'";
    // Under the very name the pipeline would use, with other bytes and no marker.
    w.library
        .seed(&triage(), theirs, "IR team triage, do not touch");
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    let reason = match w.ensure(&keeper, &["triage.ps1"]).await {
        Ensured::Retry(e) => e.to_string(),
        other => panic!("a planted versioned name is waited out, not a refusal: {other:?}"),
    };
    assert!(
        reason.contains(&triage()) && reason.contains("replace_unmanaged"),
        "{reason}"
    );
    assert!(w.uploads().is_empty());
    assert_eq!(w.library.sha256(&triage()), Some(sha(theirs)));
    // A person removes it: the next attempt uploads the bundle's bytes and the run goes on.
    w.library
        .files
        .lock()
        .unwrap()
        .remove(&triage().to_ascii_lowercase());
    w.clock.advance(Duration::from_secs(31));
    ready(w.ensure(&keeper, &["triage.ps1"]).await);
    assert_eq!(w.library.sha256(&triage()), Some(sha(TRIAGE)));
    w.library
        .seed(&triage(), theirs, "IR team triage, do not touch");
    w.clock.advance(Duration::from_secs(31));

    // The same bytes under someone else's upload are fine: nothing to upload.
    // (Each tenant below gets its own librarian: a listing belongs to one tenant.)
    let fresh = || Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    let w2 = World::new();
    w2.library.seed(&triage(), TRIAGE, "uploaded by hand");
    let used = ready(w2.ensure(&fresh(), &["triage.ps1"]).await);
    assert_eq!(used[0].sha256.as_deref(), Some(sha(TRIAGE).as_str()));
    assert!(w2.uploads().is_empty());

    // Their file under the plain name is theirs: the pipeline uses its own name beside it.
    let w3 = World::new();
    w3.library.seed("triage.ps1", theirs, "IR team triage");
    ready(w3.ensure(&fresh(), &["triage.ps1"]).await);
    assert_eq!(w3.uploads(), vec![triage()]);
    assert_eq!(w3.library.sha256("triage.ps1"), Some(sha(theirs)));

    let allowed = LibraryFileSpec {
        replace_unmanaged: true,
        ..spec("triage.ps1")
    };
    let keeper = Librarian::new(bundle(&[allowed]), SyncMode::Upload);
    ready(w.ensure(&keeper, &["triage.ps1"]).await);
    assert_eq!(w.library.sha256(&triage()), Some(sha(TRIAGE)));
}

#[tokio::test]
async fn an_external_file_must_be_there_and_is_never_uploaded() {
    let w = World::new();
    let keeper = Librarian::new(
        bundle(&[spec("triage.ps1"), external("collector.exe")]),
        SyncMode::Upload,
    );
    let reason = refused(w.ensure(&keeper, &["collector.exe", "triage.ps1"]).await);
    assert!(
        reason.contains("collector.exe") && reason.contains("external"),
        "{reason}"
    );
    assert!(w.uploads().is_empty(), "nothing uploaded for a refused run");

    w.library
        .seed("collector.exe", b"MZ collector", "the IR team's collector");
    w.clock
        .advance(shared::library::keeper::FRESH + Duration::from_secs(1));
    let used = ready(w.ensure(&keeper, &["collector.exe", "triage.ps1"]).await);
    assert_eq!(used[0].source, LibrarySource::External);
    assert_eq!(used[0].sha256, Some(sha(b"MZ collector")));
    assert_eq!(used[0].library_name, "collector.exe");
    assert_eq!(w.uploads(), vec![triage()]);
}

#[tokio::test]
async fn a_run_is_refused_only_on_a_fresh_listing_and_a_fresh_one_is_not_taken_again() {
    let w = World::new();
    let keeper = Librarian::new(
        bundle(&[spec("triage.ps1"), external("collector.exe")]),
        SyncMode::Upload,
    );
    ready(w.ensure(&keeper, &["triage.ps1"]).await);
    assert_eq!(w.lists(), 1);
    // Someone adds the external file after the listing was taken. Within FRESH the listing
    // stands for the library as it is (runs refused on it cost no call each) ...
    w.library.seed("collector.exe", b"MZ", "theirs");
    for _ in 0..5 {
        refused(w.ensure(&keeper, &["collector.exe"]).await);
    }
    assert_eq!(
        w.lists(),
        1,
        "a fresh listing is not taken again per refused run"
    );
    // ... and once older, a run is refused only after looking again.
    w.clock
        .advance(shared::library::keeper::FRESH + Duration::from_secs(1));
    ready(w.ensure(&keeper, &["collector.exe"]).await);
    assert_eq!(w.lists(), 2);
    // Another instance uploaded nothing new: the warm listing serves with no call.
    ready(w.ensure(&keeper, &["triage.ps1", "collector.exe"]).await);
    assert_eq!(w.lists(), 2);
    assert_eq!(w.uploads(), vec![triage()], "no second upload");
}

#[tokio::test]
async fn verify_mode_checks_without_uploading_and_off_mode_makes_no_call() {
    let w = World::new();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Verify);
    let reason = refused(w.ensure(&keeper, &["triage.ps1"]).await);
    assert!(
        reason.contains("triage.ps1") && reason.contains("LIBRARY_SYNC=verify"),
        "{reason}"
    );
    assert!(w.uploads().is_empty());
    w.library
        .seed(&triage(), TRIAGE, "reviewed and uploaded by hand");
    w.clock
        .advance(shared::library::keeper::FRESH + Duration::from_secs(1));
    ready(w.ensure(&keeper, &["triage.ps1"]).await);

    let off = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Off);
    let before = w.lists();
    assert!(ready(w.ensure(&off, &["triage.ps1", "unknown.ps1"]).await).is_empty());
    assert_eq!(w.lists(), before);
}

#[tokio::test]
async fn defenders_refusals_say_what_to_fix_and_outages_are_retried() {
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    let w = World::new();
    *w.library.fail.lock().unwrap() = Some(|| DefenderError::Unauthorized {
        status: 403,
        message: "Missing application roles".into(),
    });
    let reason = refused(w.ensure(&keeper, &["triage.ps1"]).await);
    assert!(reason.contains("Library.Manage"), "{reason}");

    for make in [
        (|| DefenderError::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        }) as fn() -> DefenderError,
        || DefenderError::Transient {
            reason: "HTTP 503".into(),
        },
    ] {
        // (A tenant of its own, and a librarian of its own: a librarian remembers a refusal.)
        let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
        let w = World::new();
        *w.library.fail.lock().unwrap() = Some(make);
        assert!(matches!(
            w.ensure(&keeper, &["triage.ps1"]).await,
            Ensured::Retry(_)
        ));
    }
}

#[tokio::test]
async fn library_calls_are_paced_by_the_tenant_get_budget() {
    let mut w = World::new();
    w.budget.gets_per_minute = 1;
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    // The listing takes the minute's only call; the upload waits for the next minute.
    match w.ensure(&keeper, &["triage.ps1"]).await {
        Ensured::Wait(d) => assert!(d > Duration::ZERO && d <= Duration::from_secs(60), "{d:?}"),
        other => panic!("expected to wait for the budget: {other:?}"),
    }
    assert_eq!((w.lists(), w.uploads().len()), (1, 0));
    // The next minute's call uploads the missing file (on the older listing: an upload never
    // replaces anything); judging the run ready then needs a fresh listing, in the minute after.
    w.clock.advance(Duration::from_secs(61));
    assert!(matches!(
        w.ensure(&keeper, &["triage.ps1"]).await,
        Ensured::Wait(_)
    ));
    assert_eq!((w.lists(), w.uploads().len()), (1, 1));
    w.clock.advance(Duration::from_secs(61));
    ready(w.ensure(&keeper, &["triage.ps1"]).await);
    assert_eq!((w.lists(), w.uploads().len()), (2, 1));
}

/// A library where another instance uploads the file between our listing and our upload.
struct Raced {
    inner: MemLibrary,
    raced: std::sync::atomic::AtomicBool,
}

impl LibraryApi for Raced {
    fn list(&self) -> BoxFuture<'_, Result<Vec<LibraryFile>, DefenderError>> {
        self.inner.list()
    }
    fn upload<'a>(
        &'a self,
        upload: &'a LibraryUpload,
    ) -> BoxFuture<'a, Result<LibraryFile, DefenderError>> {
        if !self.raced.swap(true, Ordering::SeqCst) {
            self.inner.seed(
                &upload.file_name,
                TRIAGE,
                &spec("triage.ps1").managed_description(),
            );
        }
        self.inner.upload(upload)
    }
}

#[tokio::test]
async fn an_upload_another_instance_beat_us_to_is_settled_by_listing_again() {
    let w = World::new();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    let raced = Raced {
        inner: MemLibrary::default(),
        raced: Default::default(),
    };
    let used = keeper
        .ensure(
            &raced,
            &w.store,
            &w.budget,
            &w.clock,
            &names(&["triage.ps1"]),
        )
        .await
        .unwrap();
    let used = ready(used);
    assert_eq!(used[0].sha256, Some(sha(TRIAGE)));
    assert_eq!(raced.inner.lists.load(Ordering::SeqCst), 2);
    assert!(raced.inner.uploads.lock().unwrap().is_empty());
}

/// A run of `commands` on M1 as intake leaves it (not submitted yet), due in an hour.
fn waiting_run(
    run: &shared::ids::RunId,
    alert: &str,
    commands: Vec<Command>,
) -> shared::store::RunRecord {
    let action = ActionId::parse("7f0a8b9c-1d2e-4f30-8a4b-5c6d7e8f9a0d").unwrap();
    let mut record = collecting_run(run, alert, &machine_id(M1), commands, &action);
    record.state = RunState::Received;
    record.action_id = None;
    record.submitted_at = None;
    record.submit_attempts = 0;
    record.deadline = OffsetDateTime::now_utc() + time::Duration::hours(1);
    record.chain = Default::default();
    record
}

/// One submit message for `run` (its `attempt`) through the stage, with this librarian and library.
async fn submit_once(
    store: &MemStore,
    run: &shared::ids::RunId,
    attempt: u32,
    defender: &Scripted,
    keeper: &Librarian,
    library: &MemLibrary,
) -> shared::stages::Done {
    let msg = Delivery::new(
        format!("submit-{attempt}"),
        encode(&SubmitJob {
            v: MESSAGE_VERSION,
            run_id: run.clone(),
            attempt,
            prev: None,
        }),
    );
    shared::stages::submit::handle(
        &submit_config(),
        Ports::new(
            store,
            &MemQueue::default(),
            defender,
            testkit::notary::notary(),
            &ManualClock::at(OffsetDateTime::now_utc()),
        ),
        LibrarySync {
            keeper,
            api: library,
        },
        &msg,
    )
    .await
    .expect("handled")
}

#[tokio::test]
async fn submit_ends_a_run_whose_external_file_is_missing_before_posting_anything() {
    let store = MemStore::default();
    let run = run_id("native", "needs-collector", M1, "collector");
    let commands = vec![
        Command::put_file("collector.exe"),
        Command::run_script("triage.ps1", Some("-Quick")),
    ];
    put_run(&store, &waiting_run(&run, "needs-collector", commands)).await;

    let library = MemLibrary::default();
    let keeper = Librarian::new(
        bundle(&[spec("triage.ps1"), external("collector.exe")]),
        SyncMode::Upload,
    );
    let defender = Scripted::accepting_submissions();
    let done = submit_once(&store, &run, 0, &defender, &keeper, &library).await;
    assert_eq!(done.outcome, shared::codes::Outcome::LibraryRefused);
    let manifest: Manifest = serde_json::from_slice(
        &store
            .get(&manifest_key(&run))
            .await
            .unwrap()
            .expect("the run's manifest is written")
            .body,
    )
    .unwrap();
    assert_eq!(manifest.outcome, Some(RunOutcome::Failed));
    let reason = manifest.reason.unwrap_or_default();
    assert!(reason.contains("collector.exe"), "{reason}");
    assert!(manifest.action.is_none());
    assert!(
        library.uploads.lock().unwrap().is_empty(),
        "nothing uploaded for a run that cannot go"
    );
    assert!(
        defender.requests().is_empty(),
        "a run whose library file cannot be had is not submitted"
    );
}

/// A library whose uploads Defender answers as this function says.
struct Answers {
    inner: MemLibrary,
    upload: fn(&LibraryUpload) -> Result<LibraryFile, DefenderError>,
    uploads: std::sync::atomic::AtomicUsize,
}

impl Answers {
    fn new(upload: fn(&LibraryUpload) -> Result<LibraryFile, DefenderError>) -> Self {
        Self {
            inner: MemLibrary::default(),
            upload,
            uploads: Default::default(),
        }
    }
}

impl LibraryApi for Answers {
    fn list(&self) -> BoxFuture<'_, Result<Vec<LibraryFile>, DefenderError>> {
        self.inner.list()
    }
    fn upload<'a>(
        &'a self,
        upload: &'a LibraryUpload,
    ) -> BoxFuture<'a, Result<LibraryFile, DefenderError>> {
        self.uploads.fetch_add(1, Ordering::SeqCst);
        let answer = (self.upload)(upload);
        Box::pin(async move { answer })
    }
}

async fn ensure_with(api: &dyn LibraryApi, w: &World, keeper: &Librarian) -> Ensured {
    keeper
        .ensure(api, &w.store, &w.budget, &w.clock, &names(&["triage.ps1"]))
        .await
        .unwrap()
}

#[tokio::test]
async fn an_upload_defender_refuses_ends_the_run_with_defenders_words_after_one_more_look() {
    let w = World::new();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    let api = Answers::new(|_| {
        Err(DefenderError::Rejected {
            status: 400,
            code: "InvalidInput".into(),
            message: "File size exceeds the limit".into(),
        })
    });
    let reason = refused(ensure_with(&api, &w, &keeper).await);
    assert!(
        reason.contains("File size exceeds the limit") && reason.contains(&triage()),
        "{reason}"
    );
    assert_eq!(
        api.uploads.load(Ordering::SeqCst),
        1,
        "not retried in a loop"
    );
    assert_eq!(api.inner.lists.load(Ordering::SeqCst), 2, "one more look");
}

#[tokio::test]
async fn an_upload_defender_stores_with_other_bytes_is_not_taken_for_the_bundle() {
    let w = World::new();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    let api = Answers::new(|u| {
        Ok(LibraryFile {
            file_name: u.file_name.clone(),
            sha256: Some(sha(b"something else")),
            description: Some(u.description.clone()),
            creation_time: None,
            last_updated_time: None,
            created_by: None,
            has_parameters: false,
            parameters_description: None,
        })
    });
    let reason = refused(ensure_with(&api, &w, &keeper).await);
    assert!(
        reason.contains(&sha(b"something else")) && reason.contains(&sha(TRIAGE)),
        "{reason}"
    );
    assert_eq!(api.uploads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failing_listing_is_remembered_so_a_batch_does_not_wait_it_out_message_by_message() {
    let w = World::new();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    *w.library.fail.lock().unwrap() = Some(|| DefenderError::Transient {
        reason: "timeout".into(),
    });
    for _ in 0..10 {
        assert!(matches!(
            w.ensure(&keeper, &["triage.ps1"]).await,
            Ensured::Retry(_)
        ));
    }
    *w.library.fail.lock().unwrap() = None;
    assert!(matches!(
        w.ensure(&keeper, &["triage.ps1"]).await,
        Ensured::Retry(_)
    ));
    w.clock
        .advance(shared::library::keeper::FAILED_CALL_KEPT + Duration::from_secs(1));
    ready(w.ensure(&keeper, &["triage.ps1"]).await);
    assert_eq!(
        w.lists(),
        1,
        "the failing call was made once, then the good one"
    );
}

#[tokio::test]
async fn a_file_this_instance_does_not_know_is_retried_not_refused() {
    // Intake accepted the run with a newer playbook file than this warm submit instance loaded.
    let w = World::new();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    match w.ensure(&keeper, &["new-collector.ps1"]).await {
        Ensured::Retry(e) => assert!(e.to_string().contains("new-collector.ps1"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.lists(), 0);
}

#[tokio::test]
async fn a_failed_upload_and_a_permanent_refusal_answer_the_whole_batch_at_once() {
    // An upload that fails (a timeout) is not tried again by every message of the batch.
    let w = World::new();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    let api = Answers::new(|_| {
        Err(DefenderError::Transient {
            reason: "timeout".into(),
        })
    });
    for _ in 0..10 {
        assert!(matches!(
            ensure_with(&api, &w, &keeper).await,
            Ensured::Retry(_)
        ));
    }
    assert_eq!(api.uploads.load(Ordering::SeqCst), 1);

    // A 403 refuses every run of the batch alike, each told what to fix.
    let w = World::new();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    *w.library.fail.lock().unwrap() = Some(|| DefenderError::Unauthorized {
        status: 403,
        message: "Missing application roles".into(),
    });
    for _ in 0..10 {
        let reason = refused(w.ensure(&keeper, &["triage.ps1"]).await);
        assert!(reason.contains("Library.Manage"), "{reason}");
    }
}

#[test]
fn a_file_a_putfile_puts_keeps_its_name_and_a_script_is_versioned() {
    let toml = r#"
[[library_files]]
name = "collector.exe"
[[library_files]]
name = "run-collector.ps1"
has_parameters = true

[[playbooks]]
name = "collect"
[[playbooks.commands]]
type = "PutFile"
file = "collector.exe"
[[playbooks.commands]]
type = "RunScript"
script = "run-collector.ps1"
args = "-Exe collector.exe"
"#;
    let p = shared::alerts::playbook::Playbooks::from_toml(toml).unwrap();
    let b = Bundle::assemble(p.library_files(), |_| Some(b"bytes".to_vec())).unwrap();
    // The device receives a put file under its library name, and the script calls it by that.
    assert_eq!(
        b.get("collector.exe").unwrap().library_name(),
        "collector.exe"
    );
    assert_eq!(
        b.get("run-collector.ps1").unwrap().library_name(),
        lib("run-collector.ps1", b"bytes")
    );
    assert!(
        shared::alerts::playbook::Playbooks::from_toml(
            "[[library_files]]\nname = \"x.\"\nexternal = true\n[[playbooks]]\nname = \"p\"\n[[playbooks.commands]]\ntype = \"PutFile\"\nfile = \"x.\"\n"
        )
        .is_err(),
        "a name Windows would cut"
    );
}

#[tokio::test]
async fn a_run_posted_once_is_posted_again_with_the_same_versions_after_a_deployment() {
    let store = MemStore::default();
    let run = run_id("native", "pinned", M1, "malware-file");
    let v1 = b"Write-Output 'triage v1'";
    let v1_name = lib("triage.ps1", v1);
    let mut record = waiting_run(
        &run,
        "pinned",
        vec![Command::run_script(&v1_name, Some("-Quick"))],
    );
    // An earlier attempt posted v1 and lost Defender's answer.
    record.state = RunState::Submitting;
    record.submit_attempts = 1;
    record.library = vec![shared::library::LibraryUse {
        name: "triage.ps1".into(),
        library_name: v1_name.clone(),
        sha256: Some(sha(v1)),
        source: LibrarySource::Bundle,
    }];
    put_run(&store, &record).await;

    // This deployment ships v2.
    let library = MemLibrary::default();
    let keeper = Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload);
    let defender = Scripted::accepting_submissions();
    let done = submit_once(&store, &run, 1, &defender, &keeper, &library).await;
    assert_eq!(
        done.outcome,
        shared::codes::Outcome::Submitted,
        "{}",
        done.detail
    );
    let sent = defender.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].commands[0].param("ScriptName"),
        Some(v1_name.as_str())
    );
    let stored: shared::store::RunRecord = serde_json::from_slice(
        &store
            .get(&shared::store::run_key(&run))
            .await
            .unwrap()
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(stored.library[0].library_name, v1_name);
    assert_eq!(
        stored.commands[0].param("ScriptName"),
        Some(v1_name.as_str())
    );
    assert!(
        library.uploads.lock().unwrap().is_empty(),
        "v2 was not needed"
    );
}

/// The run's action as Defender shows it once it has ended: every command it was asked completed.
fn ended_action(run: &RunRecord, action: &ActionId) -> MachineAction {
    let commands: Vec<serde_json::Value> = run
        .commands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::json!({
                "index": i, "commandStatus": "Completed", "errors": [],
                "startTime": "2026-11-30T05:00:01Z", "endTime": "2026-11-30T05:00:02Z",
                "command": c,
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "id": action.as_str(), "type": "LiveResponse", "status": "Succeeded",
        "machineId": run.machine_id.as_str(), "requestorComment": run.comment,
        "creationDateTimeUtc": "2026-11-30T05:00:00Z",
        "lastUpdateDateTimeUtc": "2026-11-30T05:00:02Z",
        "commands": commands,
    }))
    .expect("a machine action")
}

/// A submitted run that put the pipeline's file (v1) on the device, its action ended; poll's
/// message `poll-1` holds it. Returns the manifest poll wrote, with the library as `library`
/// holds it when the action has ended.
async fn poll_ended_run(alert: &str, library: &MemLibrary) -> Manifest {
    let store = MemStore::default();
    let run = run_id("native", alert, M1, "malware-file");
    let v1 = b"collector v1";
    let name = lib("collector.exe", v1);
    let action = ActionId::parse("7f0a8b9c-1d2e-4f30-8a4b-5c6d7e8f9a0d").unwrap();
    let mut record = waiting_run(&run, alert, vec![Command::put_file(&name)]);
    record.state = RunState::Submitted;
    record.action_id = Some(action.clone());
    record.outcome = None;
    record.chain.holder = Some("poll-1".into());
    record.library = vec![shared::library::LibraryUse {
        name: "collector.exe".into(),
        library_name: name,
        sha256: Some(sha(v1)),
        source: LibrarySource::Bundle,
    }];
    put_run(&store, &record).await;
    let mut cfg = testkit::configs::poll_config();
    cfg.status_from = shared::stages::settings::StatusFrom::Each;
    let msg = Delivery::new(
        "poll-1".to_string(),
        encode(&shared::messages::PollJob {
            v: MESSAGE_VERSION,
            run_id: run.clone(),
            action_id: action.clone(),
            polls: 1,
            cancels: 0,
            prev: None,
        }),
    );
    let done = shared::stages::poll::handle(
        &cfg,
        Ports::new(
            &store,
            &MemQueue::default(),
            &Scripted::with(vec![ended_action(&record, &action)]),
            testkit::notary::notary(),
            &shared::clock::SystemClock,
        ),
        library,
        &msg,
    )
    .await
    .unwrap();
    assert_eq!(
        done.outcome,
        shared::codes::Outcome::Ended,
        "{}",
        done.detail
    );
    serde_json::from_slice(&store.get(&manifest_key(&run)).await.unwrap().unwrap().body).unwrap()
}

/// Defect 3, after the action: the library is listed again once the action has ended; a file
/// swapped while the run was live is marked in the manifest (and the run is not a success)
/// rather than attested.
#[tokio::test]
async fn a_file_swapped_in_the_library_while_the_action_ran_is_marked_not_attested() {
    let v1 = b"collector v1";
    let name = lib("collector.exe", v1);
    let marker = spec("collector.exe").managed_description();

    let intact = MemLibrary::default();
    intact.seed(&name, v1, &marker);
    let m = poll_ended_run("intact", &intact).await;
    assert_eq!(m.outcome, Some(RunOutcome::Succeeded), "{:?}", m.reason);
    let after = m.library_after.expect("listed after the action");
    assert!(after.changed.is_empty() && after.unchecked.is_none());
    assert_eq!(intact.lists.load(Ordering::SeqCst), 1);

    let swapped = MemLibrary::default();
    swapped.seed(&name, b"collector, swapped", &marker);
    let m = poll_ended_run("swapped", &swapped).await;
    assert_eq!(m.outcome, Some(RunOutcome::Partial));
    let reason = m.reason.unwrap_or_default();
    assert!(
        reason.contains(&name) && reason.contains("not attested"),
        "{reason}"
    );
    let change = &m.library_after.expect("listed after the action").changed[0];
    assert_eq!(change.before.as_deref(), Some(sha(v1).as_str()));
    assert_eq!(
        change.after.as_deref(),
        Some(sha(b"collector, swapped").as_str())
    );

    // A library that cannot be listed after the action is said to be unchecked.
    let failing = MemLibrary::default();
    *failing.fail.lock().unwrap() = Some(|| DefenderError::Transient {
        reason: "HTTP 503".into(),
    });
    let m = poll_ended_run("unlisted", &failing).await;
    assert_eq!(
        m.outcome,
        Some(RunOutcome::Partial),
        "unchecked is not attested"
    );
    let after = m.library_after.expect("recorded");
    assert!(
        after
            .unchecked
            .as_deref()
            .is_some_and(|u| u.contains("503")),
        "{after:?}"
    );
}

/// Defect 4, the other half: intake and submit must agree on the playbook file a run was rendered
/// with. A run rendered with another file than the one this submit instance loaded (a swapped
/// file, or a deployment rolling out) is not posted with this instance's scripts.
#[tokio::test]
async fn a_run_rendered_with_a_swapped_playbook_file_is_not_submitted_with_other_scripts() {
    let store = MemStore::default();
    let run = run_id("native", "swapped-file", M1, "malware-file");
    let mut record = waiting_run(
        &run,
        "swapped-file",
        vec![Command::run_script("triage.ps1", Some("-Quick"))],
    );
    record.playbook_file_sha256 = Some("aa".repeat(32));
    put_run(&store, &record).await;
    let library = MemLibrary::default();
    let keeper =
        Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload).rendering(&"bb".repeat(32));
    let defender = Scripted::accepting_submissions();
    let done = submit_once(&store, &run, 0, &defender, &keeper, &library).await;
    assert_eq!(done.outcome, shared::codes::Outcome::Transient);
    assert!(
        done.detail.contains(&"aa".repeat(32)) && done.detail.contains(&"bb".repeat(32)),
        "{}",
        done.detail
    );
    assert!(defender.requests().is_empty(), "nothing was posted");
    assert!(
        library.uploads.lock().unwrap().is_empty(),
        "nothing uploaded"
    );
    // Rendered with the file this instance loaded: submitted (the run as intake left it).
    put_run(&store, &record).await;
    let keeper =
        Librarian::new(bundle(&[spec("triage.ps1")]), SyncMode::Upload).rendering(&"aa".repeat(32));
    let done = submit_once(&store, &run, 0, &defender, &keeper, &library).await;
    assert_eq!(
        done.outcome,
        shared::codes::Outcome::Submitted,
        "{}",
        done.detail
    );
}
