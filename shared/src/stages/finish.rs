//! How a run ends, in one place. When every command of an ended run has its final record: the
//! manifest is written (once, If-None-Match), its statement signed and written beside it (once),
//! the run marked final, and one completion event published. Every step is safe to repeat, so any
//! message that finds the run ended (the last collect, a redelivery, an end without collection)
//! finishes what an interrupted one left; a step that fails (KMS, EventBridge) is retried with the
//! message (its log line says why), and after its receives SQS moves it to the dead-letter queue,
//! to be re-driven once the key or bus is fixed.

use bytes::Bytes;

use super::StageError;
use crate::clock::Clock;
use crate::codes::RejectCode;
pub use crate::custody::event::CLAIM_LAPSES as EVENT_CLAIM_LAPSES;
use crate::custody::event::{DETAIL_TYPE, EventManifest, PUBLISH_TIMEOUT, RunFinished, SOURCE};
use crate::custody::signature::{ManifestSignature, Statement, check_statement};
use crate::hash::sha256_hex;
use crate::ids::RunId;
use crate::ports::{Notary, ObjectStore, Put, PutResult, Signer};
use crate::store::{
    Announcement, CommandOutcome, Manifest, RunRecord, RunState, final_state, json, load_command,
    load_run, manifest_key, signature_key, update_run,
};
use time::OffsetDateTime;

/// Writes, signs and announces the manifest once every command of an ended run has its final
/// record; finishes what an interrupted call left. Returns true if this call wrote the manifest.
///
/// The pipeline vouches only for bytes it rendered: the seal time is pinned in the run record
/// first, so that the manifest is a pure function of the run's final records; a manifest found at
/// the key is signed only if it is byte for byte the one those records render, and a signature
/// found beside it stands only if it verifies under the deployment's key. Anything else was planted
/// by someone with write access to the bucket: refused ([`RejectCode::PlantedCustody`], the DLQ's
/// alarm), never signed or announced.
pub async fn finish_run_if_complete<S: ObjectStore>(
    store: &S,
    notary: Notary<'_>,
    run_id: &RunId,
    clock: &dyn Clock,
) -> Result<bool, StageError> {
    let Some((run, _)) = load_run(store, run_id).await? else {
        return Ok(false);
    };
    let ended = matches!(
        run.state,
        RunState::Collecting | RunState::Completed | RunState::Failed
    );
    // Sealed already: nothing to read again (a redelivery, an idle message).
    if !ended || run.is_sealed() {
        return Ok(false);
    }
    let mut commands = Vec::with_capacity(run.commands.len());
    for i in 0..run.commands.len() as u32 {
        match load_command(store, run_id, i).await? {
            Some(c) if c.outcome != CommandOutcome::Collecting => commands.push(c),
            _ => return Ok(false),
        }
    }
    let run = pin_seal_time(store, run, clock.now()).await?;
    let Some(sealed_at) = run.finished_at else {
        return Err(StageError::Retry(format!(
            "run {run_id}'s seal time did not stick; looking again"
        )));
    };
    let key = manifest_key(run_id);
    let mut manifest = Manifest::of(&run, commands.clone(), sealed_at);
    let mut body = Bytes::from(json(&manifest)?);
    // The manifest is written once; a later call signs and announces the one stored, if it is
    // the one this run's records render.
    let wrote = match store.put(&key, body.to_vec(), Put::IfAbsent).await? {
        PutResult::Written { .. } => true,
        PutResult::Conflict => match store.get(&key).await? {
            Some(stored) if stored.body == body => false,
            Some(stored)
                if let Some(older) =
                    written_before_pinning(&run, commands, &stored.body, clock.now()) =>
            {
                tracing::info!(run_id = %run_id, "the stored manifest is the one an older version of the pipeline wrote for these records: sealing it");
                (manifest, body) = older;
                false
            }
            Some(stored) => {
                return Err(planted(
                    run_id,
                    format!(
                        "{key} is not the manifest run {run_id}'s records render \
                         (stored SHA-256 {}, {} bytes; rendered {}, {} bytes): \
                         someone else wrote it; it is not signed",
                        sha256_hex(&stored.body),
                        stored.body.len(),
                        sha256_hex(&body),
                        body.len()
                    ),
                ));
            }
            None => {
                return Err(StageError::Retry(format!(
                    "{key} exists but cannot be read back"
                )));
            }
        },
    };
    sign(store, notary.signer, run_id, &body, clock).await?;
    let final_state = final_state(run.state);
    if run.state != final_state || run.outcome != manifest.outcome {
        update_run(store, run_id, |r| {
            if r.state == final_state && r.outcome == manifest.outcome {
                return false;
            }
            r.state = final_state;
            r.outcome = manifest.outcome;
            r.reason = manifest.reason.clone();
            true
        })
        .await?;
    }
    announce(store, notary, run_id, (&body, &manifest), clock).await?;
    Ok(wrote)
}

/// The stored manifest, if it is exactly the one an older version of the pipeline wrote for these
/// records (before seal times were pinned and outcomes settled): only for a run recorded by that
/// version (no `playbook_file_sha256`), and only byte for byte. Its time is the one it carries;
/// nothing else in it can differ from the records.
fn written_before_pinning(
    run: &RunRecord,
    commands: Vec<crate::store::CommandRecord>,
    stored: &[u8],
    now: OffsetDateTime,
) -> Option<(Manifest, Bytes)> {
    if run.playbook_file_sha256.is_some() {
        return None;
    }
    // The older version's outcome must be the one this version would state (a run that collected
    // nothing is never sealed as a success), and its time must lie within the run's life.
    if crate::store::settle_outcome(run, &commands) != (run.outcome, run.reason.clone()) {
        return None;
    }
    let theirs: Manifest = serde_json::from_slice(stored).ok()?;
    if theirs.completed_at < run.created_at || theirs.completed_at > now {
        return None;
    }
    let older = Manifest::before_pinning(run, commands, theirs.completed_at);
    let body = json(&older).ok()?;
    (body == stored).then(|| (older, Bytes::from(body)))
}

/// The run record with its seal time set: the first finisher's clock, kept by compare-and-swap so
/// that every finisher renders the manifest with the same time.
async fn pin_seal_time<S: ObjectStore>(
    store: &S,
    run: RunRecord,
    now: OffsetDateTime,
) -> Result<RunRecord, StageError> {
    if run.finished_at.is_some() {
        return Ok(run);
    }
    Ok(update_run(store, &run.run_id, |r| {
        if r.finished_at.is_some() {
            return false;
        }
        r.finished_at = Some(now);
        true
    })
    .await?)
}

/// A refusal for custody the pipeline did not make, logged as an alarm.
fn planted(run_id: &RunId, reason: String) -> StageError {
    tracing::error!(run_id = %run_id, alarm = "planted_custody", "{reason}");
    StageError::Reject {
        code: RejectCode::PlantedCustody,
        reason,
    }
}

/// Signs the statement that binds the manifest's bytes and writes it beside the manifest, once.
/// A signature document already there stands only if it binds this manifest and verifies under
/// the deployment's key; anything else is refused as planted.
async fn sign<S: ObjectStore>(
    store: &S,
    signer: &dyn Signer,
    run_id: &RunId,
    manifest: &[u8],
    clock: &dyn Clock,
) -> Result<(), StageError> {
    let key = signature_key(run_id);
    if let Some(stored) = store.get(&key).await? {
        return check_stored_signature(signer, run_id, manifest, &key, &stored.body).await;
    }
    let statement = Statement::new(
        run_id,
        &manifest_key(run_id),
        manifest,
        signer.key_id(),
        clock.now(),
    );
    let text = serde_json::to_string(&statement)
        .map_err(|e| StageError::Retry(format!("cannot encode the statement: {e}")))?;
    let der = signer.sign(text.as_bytes()).await.map_err(|e| {
        StageError::Retry(format!(
            "cannot sign the manifest of run {run_id} with key {}: {e}",
            signer.key_id()
        ))
    })?;
    let doc = ManifestSignature::new(text, signer.key_id(), &der);
    match store.put(&key, json(&doc)?, Put::IfAbsent).await? {
        PutResult::Written { .. } => Ok(()),
        // A concurrent finisher signed first: its signature stands if it is the deployment's.
        PutResult::Conflict => match store.get(&key).await? {
            Some(stored) => {
                check_stored_signature(signer, run_id, manifest, &key, &stored.body).await
            }
            None => Err(StageError::Retry(format!(
                "{key} exists but cannot be read back"
            ))),
        },
    }
}

/// A stored signature document stands only if it parses, binds exactly `manifest`, names the
/// deployment's key and verifies under it; anything else is planted.
async fn check_stored_signature(
    signer: &dyn Signer,
    run_id: &RunId,
    manifest: &[u8],
    key: &str,
    stored: &[u8],
) -> Result<(), StageError> {
    let doc: ManifestSignature = serde_json::from_slice(stored)
        .map_err(|e| planted(run_id, format!("{key} is not a signature document: {e}")))?;
    check_statement(&doc, run_id, &manifest_key(run_id), manifest).map_err(|e| {
        planted(
            run_id,
            format!("{key} does not bind run {run_id}'s manifest: {e}"),
        )
    })?;
    if doc.key_id != signer.key_id() {
        return Err(planted(
            run_id,
            format!(
                "{key} names key {}, not the deployment's key {}",
                doc.key_id,
                signer.key_id()
            ),
        ));
    }
    let der = doc
        .der()
        .map_err(|e| planted(run_id, format!("{key}: {e}")))?;
    let valid = signer
        .verify(doc.statement.as_bytes(), &der)
        .await
        .map_err(|e| {
            StageError::Retry(format!(
                "cannot verify {key} with key {}: {e}",
                signer.key_id()
            ))
        })?;
    if !valid {
        return Err(planted(
            run_id,
            format!(
                "{key}'s signature does not verify under the deployment's key {}",
                signer.key_id()
            ),
        ));
    }
    Ok(())
}

/// How often a finisher that lost the race looks whether the winner has published.
const LOOK_FOR_PUBLICATION: std::time::Duration = std::time::Duration::from_millis(250);

/// Another message holds a live claim on the run's event: the loser of a seal race. It waits for
/// the winner to publish (a live winner publishes or gives up within [`PUBLISH_TIMEOUT`]) and then
/// finishes quietly, rather than leaving its message to wait out a visibility timeout of up to 90
/// minutes. If nothing is published by then, the holder may have died: this message is retried
/// and comes back after the claim has lapsed (as does the holder's own message).
async fn await_publication<S: ObjectStore>(
    store: &S,
    run_id: &RunId,
    clock: &dyn Clock,
) -> Result<(), StageError> {
    let until = clock.now() + PUBLISH_TIMEOUT + std::time::Duration::from_secs(1);
    loop {
        let published = load_run(store, run_id)
            .await?
            .is_some_and(|(r, _)| r.is_sealed());
        if published {
            return Ok(());
        }
        if clock.now() >= until {
            return Err(StageError::Retry(format!(
                "another message is publishing run {run_id}'s event and has not yet; this one looks again later"
            )));
        }
        clock.pause(LOOK_FOR_PUBLICATION).await;
    }
}

/// Publishes the run's completion event unless it went out already; the message that claims it
/// in the run record publishes, so concurrent finishers publish once.
async fn announce<S: ObjectStore>(
    store: &S,
    notary: Notary<'_>,
    run_id: &RunId,
    (manifest, parsed): (&[u8], &Manifest),
    clock: &dyn Clock,
) -> Result<(), StageError> {
    let now = clock.now();
    let mut claimed = false;
    update_run(store, run_id, |r| {
        claimed = match &r.announcement {
            Some(a) if a.published_at.is_some() => false,
            Some(a) if now - a.claimed_at < EVENT_CLAIM_LAPSES => false,
            _ => true,
        };
        if claimed {
            r.announcement = Some(Announcement {
                claimed_at: now,
                published_at: None,
            });
        }
        claimed
    })
    .await?;
    if !claimed {
        return await_publication(store, run_id, clock).await;
    }
    let mkey = manifest_key(run_id);
    let meta = EventManifest {
        s3_uri: store.location(&mkey),
        sha256: sha256_hex(manifest),
        signature_s3_uri: store.location(&signature_key(run_id)),
        // The deployment's key, never what a stored document says.
        signature_key_id: notary.signer.key_id().to_string(),
    };
    let text = RunFinished::of(parsed, meta, |k| store.location(k))
        .detail()
        .map_err(|e| StageError::Retry(format!("cannot encode the event: {e}")))?;
    let publish = notary.events.publish(SOURCE, DETAIL_TYPE, &text);
    let Ok(published) = tokio::time::timeout(PUBLISH_TIMEOUT, publish).await else {
        // EventBridge may have taken it: the claim stays until it lapses (a second copy then
        // carries the same event id).
        return Err(StageError::Retry(format!(
            "publishing run {run_id}'s completion event took over {}s",
            PUBLISH_TIMEOUT.as_secs()
        )));
    };
    if let Err(e) = published {
        // The claim goes back, so that the retry need not wait for it to lapse.
        update_run(store, run_id, |r| {
            let mine = r
                .announcement
                .as_ref()
                .is_some_and(|a| a.claimed_at == now && a.published_at.is_none());
            if mine {
                r.announcement = None;
            }
            mine
        })
        .await?;
        return Err(StageError::Retry(format!(
            "cannot publish run {run_id}'s completion event: {e}"
        )));
    }
    let published = clock.now();
    update_run(store, run_id, |r| match r.announcement.as_mut() {
        Some(a) if a.published_at.is_some() => false,
        Some(a) => {
            a.published_at = Some(published);
            true
        }
        None => {
            r.announcement = Some(Announcement {
                claimed_at: now,
                published_at: Some(published),
            });
            true
        }
    })
    .await?;
    Ok(())
}
