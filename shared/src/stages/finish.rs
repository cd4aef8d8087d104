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
pub use crate::custody::event::CLAIM_LAPSES as EVENT_CLAIM_LAPSES;
use crate::custody::event::{DETAIL_TYPE, EventManifest, PUBLISH_TIMEOUT, RunFinished, SOURCE};
use crate::custody::signature::{ManifestSignature, Statement};
use crate::hash::sha256_hex;
use crate::ids::RunId;
use crate::ports::{Notary, ObjectStore, Put, PutResult, Signer};
use crate::store::{
    Announcement, CommandOutcome, Manifest, RunState, final_state, json, load_command, load_run,
    manifest_key, parse, signature_key, update_run,
};

/// Writes, signs and announces the manifest once every command of an ended run has its final
/// record; finishes what an interrupted call left. Returns true if this call wrote the manifest.
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
    let now = clock.now();
    let key = manifest_key(run_id);
    let body = json(&Manifest::of(&run, commands, now))?;
    // The manifest is written once: a later call signs and announces the one stored.
    let (wrote, manifest) = match store.put(&key, body.clone(), Put::IfAbsent).await? {
        PutResult::Written { .. } => (true, Bytes::from(body)),
        PutResult::Conflict => match store.get(&key).await? {
            Some(stored) => (false, stored.body),
            None => {
                return Err(StageError::Retry(format!(
                    "{key} exists but cannot be read back"
                )));
            }
        },
    };
    // Only a manifest of this run is signed: one someone else put at the key (after a delete
    // marker, say) is refused with its reason, never blessed with the pipeline's signature.
    let parsed: Manifest = parse(&key, &manifest)?;
    if &parsed.run_id != run_id {
        return Err(StageError::Reject {
            code: crate::codes::RejectCode::UnreadableRecord,
            reason: format!(
                "{key} is the manifest of run {}, not of this run",
                parsed.run_id
            ),
        });
    }
    let key_id = sign(store, notary.signer, run_id, &manifest, clock).await?;
    let final_state = final_state(run.state);
    if run.state != final_state || run.finished_at.is_none() {
        update_run(store, run_id, |r| {
            if r.state == final_state && r.finished_at.is_some() {
                return false;
            }
            r.state = final_state;
            r.finished_at.get_or_insert(now);
            true
        })
        .await?;
    }
    announce(store, notary, run_id, (&manifest, &parsed), &key_id, clock).await?;
    Ok(wrote)
}

/// Signs the statement that binds the manifest's bytes and writes it beside the manifest, once.
/// Returns the key that signed (the stored signature's, when one is there already).
async fn sign<S: ObjectStore>(
    store: &S,
    signer: &dyn Signer,
    run_id: &RunId,
    manifest: &[u8],
    clock: &dyn Clock,
) -> Result<String, StageError> {
    let key = signature_key(run_id);
    if let Some(stored) = store.get(&key).await? {
        // Written once: it stands whatever it says. One that does not bind this manifest is
        // reported (an operator's to investigate; `lrctl verify` fails on it too).
        let doc: Option<ManifestSignature> = serde_json::from_slice(&stored.body).ok();
        let checked = doc.as_ref().map(|d| {
            crate::custody::signature::check_statement(d, run_id, &manifest_key(run_id), manifest)
        });
        if !matches!(checked, Some(Ok(_))) {
            tracing::error!(
                run_id = %run_id,
                key = %key,
                "the stored manifest signature does not bind the stored manifest: {}",
                match checked {
                    Some(Err(e)) => e.to_string(),
                    _ => "it does not parse".into(),
                }
            );
        }
        return Ok(doc.map_or_else(|| signer.key_id().to_string(), |d| d.key_id));
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
        PutResult::Written { .. } => Ok(signer.key_id().to_string()),
        // A concurrent finisher signed first: its signature stands (the same manifest), and the
        // event names its key.
        PutResult::Conflict => Ok(store
            .get(&key)
            .await?
            .and_then(|s| serde_json::from_slice::<ManifestSignature>(&s.body).ok())
            .map_or_else(|| signer.key_id().to_string(), |d| d.key_id)),
    }
}

/// Publishes the run's completion event unless it went out already; the message that claims it
/// in the run record publishes, so concurrent finishers publish once.
async fn announce<S: ObjectStore>(
    store: &S,
    notary: Notary<'_>,
    run_id: &RunId,
    (manifest, parsed): (&[u8], &Manifest),
    key_id: &str,
    clock: &dyn Clock,
) -> Result<(), StageError> {
    let now = clock.now();
    let mut claimed = false;
    let run = update_run(store, run_id, |r| {
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
        return match run.announcement {
            Some(a) if a.published_at.is_some() => Ok(()),
            _ => Err(StageError::Retry(format!(
                "another message is publishing run {run_id}'s event; this one looks again later"
            ))),
        };
    }
    let mkey = manifest_key(run_id);
    let meta = EventManifest {
        s3_uri: store.location(&mkey),
        sha256: sha256_hex(manifest),
        signature_s3_uri: store.location(&signature_key(run_id)),
        signature_key_id: key_id.to_string(),
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
