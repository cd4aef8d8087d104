//! How a run is sealed, directed at the races and failures a random schedule rarely reaches: two
//! messages finishing one run at the same instant, KMS or EventBridge failing, a handler dying with
//! the event claimed, a signature already stored. Each checks the one manifest, one signature
//! (that verifies offline over the manifest's bytes) and one event.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shared::adapters::memory::{MemEvents, MemSigner, MemStore};
use shared::clock::ManualClock;
use shared::custody::event::{DETAIL_TYPE, RunFinished, SOURCE};
use shared::custody::signature::{ManifestSignature, Statement, check_statement, verify_offline};
use shared::defender::{ActionId, Command, MachineId};
use shared::ids::RunId;
use shared::ports::{Notary, ObjectStore, Put};
use shared::stages::StageError;
use shared::stages::finish::{EVENT_CLAIM_LAPSES, finish_run_if_complete};
use shared::store::{
    CommandOutcome, CommandRecord, Manifest, RunOutcome, RunRecord, RunState, manifest_key,
    put_command, run_key, signature_key,
};
use testkit::records::seed_collecting_run;
use testkit::store::Hooked;
use time::OffsetDateTime;

/// One test's world: a store, a signing key, a bus, and a clock at [`t0`].
struct World {
    store: MemStore,
    signer: MemSigner,
    events: MemEvents,
    clock: ManualClock,
}

impl World {
    fn new() -> Self {
        Self {
            store: MemStore::default(),
            signer: MemSigner::default(),
            events: MemEvents::default(),
            clock: ManualClock::at(t0()),
        }
    }
}

fn notary<'a>(signer: &'a MemSigner, events: &'a MemEvents) -> Notary<'a> {
    Notary { signer, events }
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
}

/// A run that ended with every command recorded: ready to be sealed.
async fn ended_run(store: &MemStore, name: &str) -> RunId {
    let run_id = RunId::derive("native", name, "m", "p");
    let machine = MachineId::parse(&"ab".repeat(20)).unwrap();
    let action = ActionId::parse("00000000-0000-0000-0000-000000000042").unwrap();
    let commands = vec![
        Command::run_script("collect.ps1", None),
        Command::run_script("other.ps1", None),
    ];
    seed_collecting_run(store, &run_id, name, &machine, &commands, &action).await;
    for (i, c) in commands.iter().enumerate() {
        let rec =
            CommandRecord::unfinished(i as u32, c.clone(), CommandOutcome::NotRun, "no", t0());
        put_command(store, &run_id, &rec).await.unwrap();
    }
    run_id
}

fn events_of(events: &MemEvents, run: &RunId) -> Vec<RunFinished> {
    events
        .published
        .lock()
        .unwrap()
        .iter()
        .inspect(|(src, dt, _)| assert_eq!((src.as_str(), dt.as_str()), (SOURCE, DETAIL_TYPE)))
        .filter_map(|(_, _, d)| serde_json::from_str::<RunFinished>(d).ok())
        .filter(|e| &e.run_id == run)
        .collect()
}

async fn run_record(store: &MemStore, run: &RunId) -> RunRecord {
    serde_json::from_slice(&store.get(&run_key(run)).await.unwrap().unwrap().body).unwrap()
}

/// The stored signature verifies offline over the stored manifest's exact bytes.
async fn assert_sealed(store: &MemStore, signer: &MemSigner, run: &RunId) {
    let mkey = manifest_key(run);
    let manifest = store.get(&mkey).await.unwrap().expect("a manifest").body;
    let sig: ManifestSignature =
        serde_json::from_slice(&store.get(&signature_key(run)).await.unwrap().unwrap().body)
            .unwrap();
    check_statement(&sig, run, &mkey, &manifest).unwrap();
    verify_offline(&sig, &signer.public_key()).unwrap();
}

#[tokio::test]
async fn two_messages_finishing_a_run_at_once_seal_it_once_and_the_loser_finishes_quietly() {
    for round in 0..20 {
        let World {
            store,
            signer,
            events,
            clock,
        } = World::new();
        let notary = notary(&signer, &events);
        let run = ended_run(&store, &format!("race{round}")).await;
        // A store that lets the other task go first at every operation, so two finishers
        // interleave.
        let y = Hooked::new(&store).before(|_| {
            Box::pin(async {
                tokio::task::yield_now().await;
                Ok(())
            })
        });
        let (a, b) = tokio::join!(
            finish_run_if_complete(&y, notary, &run, &clock),
            finish_run_if_complete(&y, notary, &run, &clock)
        );
        // One wrote the manifest; the loser of the race finishes quietly (the winner seals):
        // a Retry would leave its message to wait out the queue's visibility timeout.
        let wrote = [&a, &b].iter().filter(|r| matches!(r, Ok(true))).count();
        assert_eq!(wrote, 1, "round {round}: {a:?} {b:?}");
        for r in [&a, &b] {
            assert!(r.is_ok(), "round {round}: {r:?}");
        }
        assert_eq!(events_of(&events, &run).len(), 1, "round {round}");
        assert_sealed(&store, &signer, &run).await;
        let rec = run_record(&store, &run).await;
        assert_eq!(rec.state, RunState::Completed);
        assert!(rec.announcement.unwrap().published_at.is_some());
    }
}

#[tokio::test]
async fn kms_failing_leaves_the_run_unsealed_and_the_retry_seals_it() {
    let World {
        store,
        signer,
        events,
        clock,
    } = World::new();
    let notary = notary(&signer, &events);
    let run = ended_run(&store, "kms").await;
    signer.fail.store(true, Ordering::SeqCst);
    let err = finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StageError::Retry(r) if r.contains("cannot sign") && r.contains("mem-signing-key")),
        "{err}"
    );
    // The manifest is written (once, it cannot change), nothing is signed or announced, and the
    // run is not yet final.
    assert!(store.get(&manifest_key(&run)).await.unwrap().is_some());
    assert!(store.get(&signature_key(&run)).await.unwrap().is_none());
    assert!(events_of(&events, &run).is_empty());
    assert_eq!(run_record(&store, &run).await.state, RunState::Collecting);
    signer.fail.store(false, Ordering::SeqCst);
    assert!(
        !finish_run_if_complete(&store, notary, &run, &clock)
            .await
            .unwrap(),
        "the manifest was written by the first call"
    );
    assert_sealed(&store, &signer, &run).await;
    assert_eq!(events_of(&events, &run).len(), 1);
}

#[tokio::test]
async fn eventbridge_failing_gives_the_claim_back_and_the_retry_publishes_once() {
    let World {
        store,
        signer,
        events,
        clock,
    } = World::new();
    let notary = notary(&signer, &events);
    let run = ended_run(&store, "bus").await;
    events.fail.store(true, Ordering::SeqCst);
    let err = finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StageError::Retry(r) if r.contains("completion event")),
        "{err}"
    );
    assert_sealed(&store, &signer, &run).await;
    let rec = run_record(&store, &run).await;
    assert_eq!(rec.state, RunState::Completed);
    assert!(rec.announcement.is_none(), "the claim is given back");
    events.fail.store(false, Ordering::SeqCst);
    // At once, without waiting for a claim to lapse.
    finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap();
    finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap();
    assert_eq!(events_of(&events, &run).len(), 1);
    assert_eq!(signer.signed.load(Ordering::SeqCst), 1, "signed once");
}

#[tokio::test]
async fn a_claim_whose_holder_died_lapses_and_the_event_goes_out() {
    let World {
        store,
        signer,
        events,
        clock,
    } = World::new();
    let notary = notary(&signer, &events);
    let run = ended_run(&store, "died").await;
    // A handler claimed the event and died before publishing.
    shared::store::update_run(&store, &run, |r| {
        r.announcement = Some(shared::store::Announcement {
            claimed_at: t0(),
            published_at: None,
        });
        true
    })
    .await
    .unwrap();
    let err = finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StageError::Retry(r) if r.contains("another message")),
        "{err}"
    );
    assert!(events_of(&events, &run).is_empty());
    clock.advance(EVENT_CLAIM_LAPSES + Duration::from_secs(1));
    finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap();
    let published = events_of(&events, &run);
    assert_eq!(published.len(), 1);
    // The event carries what an analyst routes on.
    let e = &published[0];
    assert_eq!(e.event_id, run.as_str());
    assert_eq!(e.commands.len(), 2);
    assert_eq!(e.manifest.signature_key_id, "mem-signing-key");
    assert!(e.manifest.s3_uri.ends_with("manifest.json"));
    assert!(e.manifest.signature_s3_uri.ends_with("manifest.sig.json"));
    assert_eq!(e.alert.id.as_str(), "died");
}

#[tokio::test]
async fn a_stored_signature_stands_and_is_not_made_again() {
    let World {
        store,
        signer,
        events,
        clock,
    } = World::new();
    let notary = notary(&signer, &events);
    let run = ended_run(&store, "stored").await;
    finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap();
    let before = store.get(&signature_key(&run)).await.unwrap().unwrap().body;
    // A redelivery finishing again (the run record's announcement lost, say).
    shared::store::update_run(&store, &run, |r| {
        r.announcement = None;
        true
    })
    .await
    .unwrap();
    finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap();
    let after = store.get(&signature_key(&run)).await.unwrap().unwrap().body;
    assert_eq!(before, after);
    assert_eq!(signer.signed.load(Ordering::SeqCst), 1);
    // The event went out again: the record of it was lost. Its id lets a consumer drop it.
    let published = events_of(&events, &run);
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].event_id, published[1].event_id);
}

/// An event that would not fit EventBridge (256 KB) is shortened: reasons cut, and if that is not
/// enough the command list left out; the manifest keeps everything.
#[tokio::test]
async fn an_event_too_large_for_eventbridge_is_shortened_not_refused() {
    use shared::custody::event::MAX_DETAIL_BYTES;
    for (commands, reason_len) in [(2usize, 300_000usize), (400, 1_000)] {
        let World {
            store,
            signer,
            events,
            clock,
        } = World::new();
        let notary = notary(&signer, &events);
        let run_id = RunId::derive("native", &format!("big{commands}"), "m", "p");
        let machine = MachineId::parse(&"ab".repeat(20)).unwrap();
        let action = ActionId::parse("00000000-0000-0000-0000-000000000042").unwrap();
        let cmds: Vec<Command> = (0..commands)
            .map(|i| Command::run_script(&format!("s{i}.ps1"), None))
            .collect();
        seed_collecting_run(&store, &run_id, "big", &machine, &cmds, &action).await;
        for (i, c) in cmds.iter().enumerate() {
            let why = "é".repeat(reason_len / 2);
            let rec =
                CommandRecord::unfinished(i as u32, c.clone(), CommandOutcome::NotRun, why, t0());
            put_command(&store, &run_id, &rec).await.unwrap();
        }
        finish_run_if_complete(&store, notary, &run_id, &clock)
            .await
            .unwrap();
        let published = events.published.lock().unwrap().clone();
        assert_eq!(published.len(), 1);
        let detail = &published[0].2;
        assert!(detail.len() <= MAX_DETAIL_BYTES, "{} bytes", detail.len());
        let e: RunFinished = serde_json::from_str(detail).unwrap();
        assert!(e.shortened);
        if commands == 2 {
            assert_eq!(e.commands.len(), 2, "reasons cut, commands kept");
            assert!(e.commands[0].reason.as_ref().unwrap().len() <= 1_100);
        } else {
            assert!(
                e.commands.is_empty(),
                "too many commands: the list is left out"
            );
        }
        // The manifest keeps every reason whole.
        let m: shared::store::Manifest = serde_json::from_slice(
            &store
                .get(&manifest_key(&run_id))
                .await
                .unwrap()
                .unwrap()
                .body,
        )
        .unwrap();
        assert_eq!(m.commands.len(), commands);
        assert_eq!(m.commands[0].reason.as_ref().unwrap().len(), reason_len);
    }
}

/// A publish that hangs is abandoned after its timeout, well inside the claim: the message is
/// retried, the claim is left to lapse (EventBridge may have taken the event), and once it has the
/// event goes out once.
#[tokio::test(start_paused = true)]
async fn a_publish_that_hangs_is_abandoned_before_its_claim_lapses() {
    use shared::custody::event::PUBLISH_TIMEOUT;
    use shared::ports::{BoxFuture, Events, NotaryError};
    struct Hangs<'a>(&'a MemEvents, std::sync::atomic::AtomicBool);
    impl Events for Hangs<'_> {
        fn publish<'a>(
            &'a self,
            source: &'a str,
            detail_type: &'a str,
            detail: &'a str,
        ) -> BoxFuture<'a, Result<(), NotaryError>> {
            Box::pin(async move {
                if self.1.swap(false, Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                self.0.publish(source, detail_type, detail).await
            })
        }
    }
    let store = MemStore::default();
    let (signer, events) = (MemSigner::default(), MemEvents::default());
    let hangs = Hangs(&events, std::sync::atomic::AtomicBool::new(true));
    let notary = Notary {
        signer: &signer,
        events: &hangs,
    };
    let clock = ManualClock::at(t0());
    let run = ended_run(&store, "hangs").await;
    let started = tokio::time::Instant::now();
    let err = finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StageError::Retry(r) if r.contains("took over")),
        "{err}"
    );
    assert_eq!(started.elapsed(), PUBLISH_TIMEOUT);
    assert!(PUBLISH_TIMEOUT < EVENT_CLAIM_LAPSES);
    // The claim stays: a retry before it lapses publishes nothing.
    clock.advance(Duration::from_secs(5));
    assert!(
        finish_run_if_complete(&store, notary, &run, &clock)
            .await
            .is_err()
    );
    assert!(events_of(&events, &run).is_empty());
    clock.advance(EVENT_CLAIM_LAPSES);
    finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap();
    assert_eq!(events_of(&events, &run).len(), 1);
}

/// A manifest the pipeline did not write (unreadable, or another run's, put at the key after a
/// delete marker) is never signed: the message is refused with the reason, for an operator.
#[tokio::test]
async fn a_manifest_the_pipeline_did_not_write_is_never_signed() {
    for (case, body) in [
        ("unreadable", b"{\"v\": 1,".to_vec()),
        ("another run's", Vec::new()),
    ] {
        let World {
            store,
            signer,
            events,
            clock,
        } = World::new();
        let notary = notary(&signer, &events);
        let run = ended_run(&store, "foreign").await;
        let body = if body.is_empty() {
            // A real manifest, of another run.
            let other = ended_run(&store, "other").await;
            finish_run_if_complete(&store, notary, &other, &clock)
                .await
                .unwrap();
            store
                .get(&manifest_key(&other))
                .await
                .unwrap()
                .unwrap()
                .body
                .to_vec()
        } else {
            body
        };
        store
            .put(&manifest_key(&run), body, Put::IfAbsent)
            .await
            .unwrap();
        let signed_before = signer.signed.load(Ordering::SeqCst);
        let err = finish_run_if_complete(&store, notary, &run, &clock)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StageError::Reject { reason, .. } if reason.contains(&manifest_key(&run))),
            "{case}: {err}"
        );
        assert_eq!(
            signer.signed.load(Ordering::SeqCst),
            signed_before,
            "{case}"
        );
        assert!(
            store.get(&signature_key(&run)).await.unwrap().is_none(),
            "{case}"
        );
        assert!(events_of(&events, &run).is_empty(), "{case}");
    }
}

/// Sets what poll recorded of an action that succeeded, and each command's final record.
async fn ended_with(store: &MemStore, name: &str, outcomes: &[CommandOutcome]) -> RunId {
    let run_id = RunId::derive("native", name, "m", "p");
    let machine = MachineId::parse(&"ab".repeat(20)).unwrap();
    let action = ActionId::parse("00000000-0000-0000-0000-000000000042").unwrap();
    let commands: Vec<Command> = outcomes
        .iter()
        .enumerate()
        .map(|(i, _)| Command::get_file(&format!("C:\\evidence\\{i}.bin")))
        .collect();
    seed_collecting_run(store, &run_id, name, &machine, &commands, &action).await;
    shared::store::update_run(store, &run_id, |r| {
        r.outcome = Some(RunOutcome::Succeeded);
        true
    })
    .await
    .unwrap();
    for (i, (c, outcome)) in commands.iter().zip(outcomes).enumerate() {
        let mut rec = CommandRecord::unfinished(
            i as u32,
            c.clone(),
            *outcome,
            "the result link kept answering 403",
            t0(),
        );
        if *outcome == CommandOutcome::Collected {
            rec.reason = None;
            rec.s3_key = Some(format!("evidence/{run_id}/{i}-getfile.gz"));
            rec.sha256 = Some("ab".repeat(32));
            rec.size = Some(10);
        }
        put_command(store, &run_id, &rec).await.unwrap();
    }
    run_id
}

fn stored_manifest(body: &[u8]) -> Manifest {
    serde_json::from_slice(body).unwrap()
}

/// Defect: a run whose every result link kept failing collected nothing, yet its manifest and
/// event said `succeeded`; the rule for runs that need a person never saw it.
#[tokio::test]
async fn nothing_collected_is_a_failed_run_with_its_reason_never_a_success() {
    let World {
        store,
        signer,
        events,
        clock,
    } = World::new();
    let notary = notary(&signer, &events);
    let lost = CommandOutcome::CollectFailed;
    let run = ended_with(&store, "nothing_collected", &[lost, lost]).await;
    finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap();
    let m = stored_manifest(&store.get(&manifest_key(&run)).await.unwrap().unwrap().body);
    assert_eq!(m.outcome, Some(RunOutcome::Failed));
    let reason = m.reason.clone().expect("a reason");
    assert!(reason.contains("no evidence was collected"), "{reason}");
    assert!(reason.contains("403"), "{reason}");
    let e = &events_of(&events, &run)[0];
    assert_eq!(e.outcome, Some(RunOutcome::Failed));
    assert_eq!(e.reason.as_deref(), Some(reason.as_str()));
    let rec = run_record(&store, &run).await;
    assert_eq!(rec.outcome, Some(RunOutcome::Failed));
    assert_eq!(rec.reason.as_deref(), Some(reason.as_str()));
}

#[tokio::test]
async fn nothing_collected_for_some_commands_is_partial_and_all_collected_is_succeeded() {
    let World {
        store,
        signer,
        events,
        clock,
    } = World::new();
    let notary = notary(&signer, &events);
    for (name, outcomes, want) in [
        (
            "partial",
            vec![CommandOutcome::Collected, CommandOutcome::CollectFailed],
            RunOutcome::Partial,
        ),
        (
            "all",
            vec![CommandOutcome::Collected, CommandOutcome::CompletedNoResult],
            RunOutcome::Succeeded,
        ),
    ] {
        let run = ended_with(&store, name, &outcomes).await;
        finish_run_if_complete(&store, notary, &run, &clock)
            .await
            .unwrap();
        let m = stored_manifest(&store.get(&manifest_key(&run)).await.unwrap().unwrap().body);
        assert_eq!(m.outcome, Some(want), "{name}");
        assert_eq!(m.reason.is_some(), want == RunOutcome::Partial, "{name}");
        assert_eq!(events_of(&events, &run)[0].outcome, Some(want), "{name}");
    }
}

/// Defect 1: a principal that may write to the bucket but may not sign planted a harmless object
/// at the run's evidence key and a manifest listing it; collect recorded the command as failed,
/// and finishing the run signed the planted manifest. Now the manifest found at the key is signed
/// only if it is byte for byte the one the run's records render.
#[tokio::test]
async fn a_planted_manifest_listing_planted_evidence_is_refused_and_never_signed() {
    let World {
        store,
        signer,
        events,
        clock,
    } = World::new();
    let notary = notary(&signer, &events);
    // What collect recorded: the key was taken, the command failed.
    let run = ended_with(&store, "planted", &[CommandOutcome::CollectFailed]).await;
    // What the planter wrote first: the manifest the run would write, with the command collected.
    let rec = run_record(&store, &run).await;
    let mut forged = CommandRecord::unfinished(
        0,
        rec.commands[0].clone(),
        CommandOutcome::Collected,
        "",
        t0(),
    );
    forged.reason = None;
    forged.s3_key = Some(format!("evidence/{run}/0-getfile.gz"));
    forged.sha256 = Some(shared::hash::sha256_hex(b"harmless"));
    forged.size = Some(8);
    let mut planted = Manifest::of(&rec, vec![forged], t0());
    planted.outcome = Some(RunOutcome::Succeeded);
    planted.reason = None;
    store
        .put(
            &manifest_key(&run),
            serde_json::to_vec(&planted).unwrap(),
            Put::IfAbsent,
        )
        .await
        .unwrap();
    let err = finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StageError::Reject { code, reason }
            if *code == shared::codes::RejectCode::PlantedCustody && reason.contains(&manifest_key(&run))),
        "{err}"
    );
    assert_eq!(signer.signed.load(Ordering::SeqCst), 0);
    assert!(store.get(&signature_key(&run)).await.unwrap().is_none());
    assert!(events_of(&events, &run).is_empty());
    assert!(!run_record(&store, &run).await.is_sealed());
}

/// The same bytes the run renders but for its seal time: for a run this version recorded, the time
/// is pinned in the run record, so a planter cannot pick it either.
#[tokio::test]
async fn a_planted_manifest_differing_only_in_its_seal_time_is_refused() {
    let World {
        store,
        signer,
        events,
        clock,
    } = World::new();
    let notary = notary(&signer, &events);
    let run = ended_with(&store, "planted-time", &[CommandOutcome::Collected]).await;
    // A run this version recorded (one an older version recorded may carry that version's
    // manifest, with its own time: see the upgrade test below).
    shared::store::update_run(&store, &run, |r| {
        r.playbook_file_sha256 = Some("ab".repeat(32));
        true
    })
    .await
    .unwrap();
    let rec = run_record(&store, &run).await;
    let commands = vec![
        shared::store::load_command(&store, &run, 0)
            .await
            .unwrap()
            .unwrap(),
    ];
    let early = Manifest::of(&rec, commands, t0() - time::Duration::days(30));
    store
        .put(
            &manifest_key(&run),
            shared::store::json(&early).unwrap(),
            Put::IfAbsent,
        )
        .await
        .unwrap();
    let err = finish_run_if_complete(&store, notary, &run, &clock)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StageError::Reject { code, .. } if *code == shared::codes::RejectCode::PlantedCustody),
        "{err}"
    );
    assert_eq!(signer.signed.load(Ordering::SeqCst), 0);
}

/// Defect 2: a stored `manifest.sig.json` stood whatever it said: the run was marked final and
/// the event named the planter's key. Now one that does not verify under the deployment's key is
/// refused (and the run stays unsealed), and the event names the configured key.
#[tokio::test]
async fn a_planted_signature_document_is_refused_and_never_seals_the_run() {
    let planter = MemSigner::seeded(99);
    for case in [
        "another key, our key's name",
        "another key id",
        "not a document",
    ] {
        let World {
            store,
            signer,
            events,
            clock,
        } = World::new();
        let notary = notary(&signer, &events);
        let run = ended_with(&store, "planted-sig", &[CommandOutcome::Collected]).await;
        // Let the pipeline write its manifest (its signing fails once, as a disabled key would).
        signer.fail.store(true, Ordering::SeqCst);
        finish_run_if_complete(&store, notary, &run, &clock)
            .await
            .unwrap_err();
        signer.fail.store(false, Ordering::SeqCst);
        let manifest = store.get(&manifest_key(&run)).await.unwrap().unwrap().body;
        let key_id = match case {
            "another key id" => "arn:aws:kms:us-east-1:999999999999:key/planter",
            _ => "mem-signing-key",
        };
        let statement = Statement::new(&run, &manifest_key(&run), &manifest, key_id, t0());
        let text = serde_json::to_string(&statement).unwrap();
        let der = shared::ports::Signer::sign(&planter, text.as_bytes())
            .await
            .unwrap();
        let doc = match case {
            "not a document" => b"{\"v\":1}".to_vec(),
            _ => serde_json::to_vec(&ManifestSignature::new(text, key_id, &der)).unwrap(),
        };
        store
            .put(&signature_key(&run), doc, Put::IfAbsent)
            .await
            .unwrap();
        let err = finish_run_if_complete(&store, notary, &run, &clock)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StageError::Reject { code, reason }
                if *code == shared::codes::RejectCode::PlantedCustody && reason.contains(&signature_key(&run))),
            "{case}: {err}"
        );
        let rec = run_record(&store, &run).await;
        assert!(!rec.is_sealed(), "{case}");
        assert_ne!(rec.state, RunState::Completed, "{case}");
        assert!(events_of(&events, &run).is_empty(), "{case}");
    }
}

/// Found by review: a run whose manifest the previous version wrote (its time chosen then, its
/// outcome not yet settled) before its signing failed is sealed after the upgrade, not refused as
/// planted forever. Only for a run that version recorded, only byte for byte, only when its
/// outcome is the one this version states (a run that collected nothing is never sealed as a
/// success), and only with a time inside the run's life.
#[tokio::test]
async fn a_manifest_written_before_the_upgrade_is_sealed_not_refused_as_planted() {
    for (recorded_by_this_version, collected) in [(false, true), (true, true), (false, false)] {
        let World {
            store,
            signer,
            events,
            clock,
        } = World::new();
        let notary = notary(&signer, &events);
        let outcome = if collected {
            CommandOutcome::Collected
        } else {
            CommandOutcome::CollectFailed
        };
        let run = ended_with(&store, "upgrade", &[outcome]).await;
        if recorded_by_this_version {
            shared::store::update_run(&store, &run, |r| {
                r.playbook_file_sha256 = Some("ab".repeat(32));
                true
            })
            .await
            .unwrap();
        }
        let rec = run_record(&store, &run).await;
        let commands = vec![
            shared::store::load_command(&store, &run, 0)
                .await
                .unwrap()
                .unwrap(),
        ];
        // What the older version wrote: its own time, the outcome as recorded (succeeded).
        let older = Manifest::before_pinning(&rec, commands, t0() - time::Duration::seconds(3));
        store
            .put(
                &manifest_key(&run),
                shared::store::json(&older).unwrap(),
                Put::IfAbsent,
            )
            .await
            .unwrap();
        let sealed = finish_run_if_complete(&store, notary, &run, &clock).await;
        if recorded_by_this_version || !collected {
            assert!(
                matches!(&sealed, Err(StageError::Reject { code, .. }) if *code == shared::codes::RejectCode::PlantedCustody),
                "{sealed:?}"
            );
            continue;
        }
        sealed.unwrap();
        assert_sealed(&store, &signer, &run).await;
        assert_eq!(events_of(&events, &run).len(), 1);
    }
}
