//! `lrctl dlq`: what each stage refused or gave up on, read without consuming it. Messages are
//! received with a visibility timeout until no new ones come, then made visible again at once
//! (ChangeMessageVisibility 0), so listing leaves the queues as they were. `--redrive` sends each
//! body back to its stage's input queue and only then deletes it from the dead-letter queue.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use serde_json::json;

use crate::cli::DlqArgs;
use crate::config::stage_name;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{err, excerpt, out, print_json, table};

/// How long a listing holds messages invisible (it gives them back as soon as it is done).
const LIST_HOLD_SECS: i32 = 30;
/// How long a redrive holds them while asking for confirmation.
const REDRIVE_HOLD_SECS: i32 = 300;

/// A dead-lettered message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub stage: &'static str,
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// `lr-reject-code`, or `exhausted receives` for a message SQS moved after too many receives.
    pub code: String,
    pub reason: String,
    pub receive_count: Option<String>,
}

fn sqs_error<E: std::error::Error + 'static>(what: String, e: E) -> Error {
    Error::failed(format!(
        "{what}: {}",
        aws_sdk_sqs::error::DisplayErrorContext(e)
    ))
}

/// Receives every message of a dead-letter queue, holding each invisible for `hold` seconds,
/// until a receive brings nothing new.
pub async fn peek(
    sqs: &aws_sdk_sqs::Client,
    stage: &'static str,
    url: &str,
    hold: i32,
) -> Result<Vec<DeadLetter>> {
    let mut seen: BTreeMap<String, DeadLetter> = BTreeMap::new();
    let mut quiet = 0;
    while quiet < 2 {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(hold)
            .wait_time_seconds(if quiet == 0 { 0 } else { 1 })
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| {
                sqs_error(
                    format!("cannot read the {stage} dead-letter queue {url}"),
                    e,
                )
            })?;
        let mut new = 0;
        for m in out.messages() {
            let (Some(id), Some(handle)) = (m.message_id(), m.receipt_handle()) else {
                continue;
            };
            let attr = |name: &str| {
                m.message_attributes()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value())
                    .map(str::to_string)
            };
            let code = attr("lr-reject-code");
            let letter = DeadLetter {
                stage,
                message_id: id.to_string(),
                receipt_handle: handle.to_string(),
                body: m.body().unwrap_or_default().to_string(),
                reason: attr("lr-reject-reason").unwrap_or_else(|| {
                    if code.is_none() {
                        "the stage failed on it until SQS gave up".into()
                    } else {
                        "-".into()
                    }
                }),
                code: code.unwrap_or_else(|| "exhausted receives".into()),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .cloned(),
            };
            if seen.insert(id.to_string(), letter).is_none() {
                new += 1;
            }
        }
        quiet = if new == 0 { quiet + 1 } else { 0 };
    }
    Ok(seen.into_values().collect())
}

/// Makes held messages visible again (they were held for `hold` seconds). Tries every message;
/// an error lists each that failed.
pub async fn release(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    letters: &[DeadLetter],
    hold: i32,
) -> Result<()> {
    let mut failed = Vec::new();
    for l in letters {
        if let Err(e) = sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(&l.receipt_handle)
            .visibility_timeout(0)
            .send()
            .await
        {
            failed.push(format!(
                "{} ({})",
                l.message_id,
                aws_sdk_sqs::error::DisplayErrorContext(e)
            ));
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::failed(format!(
        "cannot make {} of {} message(s) of {url} visible again (each will be within {hold}s of \
         being read): {}",
        failed.len(),
        letters.len(),
        failed.join("; ")
    )))
}

/// Releases the messages of every queue, trying each; the first error, if any.
async fn release_all(
    sqs: &aws_sdk_sqs::Client,
    queues: &[(&'static str, String, Option<String>, Vec<DeadLetter>)],
    hold: i32,
) -> Result<()> {
    let mut first = Ok(());
    for (_, url, _, letters) in queues {
        if let Err(e) = release(sqs, url, letters, hold).await {
            err(format!("lrctl: {e}"));
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// Whether the user agrees to move `n` messages.
fn confirm(n: usize, yes: bool) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(
            "--redrive moves messages: confirm with --yes when not at a terminal".into(),
        ));
    }
    eprint!("send {n} message(s) back to their stage's queue? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::failed(format!("cannot read the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

pub async fn command(ctx: &Ctx, args: &DlqArgs) -> Result<u8> {
    let stage = match args.stage.as_deref() {
        Some(s) => Some(stage_name(s).ok_or_else(|| {
            Error::Usage(format!(
                "--stage {s:?}: expected alerts (or intake), submit, poll or collect"
            ))
        })?),
        None => None,
    };
    if args.redrive && !args.yes && !std::io::stdin().is_terminal() {
        return Err(Error::Usage(
            "--redrive moves messages: confirm with --yes when not at a terminal".into(),
        ));
    }
    let sqs = ctx.sqs();
    let hold = if args.redrive {
        REDRIVE_HOLD_SECS
    } else {
        LIST_HOLD_SECS
    };
    let mut queues = Vec::new();
    for (stage, url) in ctx.settings.dlqs(stage)? {
        let target = if args.redrive {
            Some(ctx.settings.queue_url(stage)?.to_string())
        } else {
            None
        };
        let letters = peek(&sqs, stage, &url, hold).await?;
        queues.push((stage, url, target, letters));
    }
    let all: Vec<&DeadLetter> = queues.iter().flat_map(|q| &q.3).collect();
    if ctx.json && !args.redrive {
        let rows: Vec<_> = all
            .iter()
            .map(|l| {
                json!({"stage": l.stage, "code": l.code, "reason": l.reason, "body": l.body,
                       "message_id": l.message_id, "receive_count": l.receive_count})
            })
            .collect();
        print_json(&json!({"messages": rows}));
    } else if !ctx.json {
        if all.is_empty() {
            out("no dead-lettered messages");
        } else {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|l| {
                    vec![
                        l.stage.to_string(),
                        l.code.clone(),
                        excerpt(&l.reason, 80),
                        excerpt(&l.body, 120),
                        l.message_id.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["STAGE", "CODE", "REASON", "BODY", "MESSAGE ID"], &rows)
            );
        }
    }
    let go = match args.redrive && !all.is_empty() {
        false => false,
        true => match confirm(all.len(), args.yes) {
            Ok(go) => go,
            Err(e) => {
                let _ = release_all(&sqs, &queues, hold).await;
                return Err(e);
            }
        },
    };
    let mut moved = Vec::new();
    let mut release_failed = false;
    for (stage, url, target, letters) in &queues {
        match target {
            Some(target) if go => {
                // An alert refused by the tenant check stays: re-sent by the operator, it would be
                // checked against the operator's identity instead of its sender's.
                let (kept, movable): (Vec<&DeadLetter>, Vec<&DeadLetter>) =
                    letters.iter().partition(|l| {
                        *stage == "alerts"
                            && shared::codes::RejectCode::parse(&l.code)
                                .is_some_and(|c| c.is_sender_check())
                    });
                let kept: Vec<DeadLetter> = kept.into_iter().cloned().collect();
                for l in &kept {
                    err(format!(
                        "kept {} ({}): an alert refused by the tenant check is not re-driven, since the re-sent message would be checked against your identity instead of its sender's; have its sender send it again",
                        l.message_id, l.code
                    ));
                }
                if let Err(e) = release(&sqs, url, &kept, hold).await {
                    err(format!("lrctl: {e}"));
                    release_failed = true;
                }
                for l in movable {
                    let sent = sqs
                        .send_message()
                        .queue_url(target)
                        .message_body(&l.body)
                        .send()
                        .await
                        .map_err(|e| {
                            sqs_error(
                                format!("cannot send message {} to {target}", l.message_id),
                                e,
                            )
                        })?;
                    sqs.delete_message()
                        .queue_url(url)
                        .receipt_handle(&l.receipt_handle)
                        .send()
                        .await
                        .map_err(|e| {
                            sqs_error(
                                format!("sent message {} back but cannot delete it from {url} (it is now in both)", l.message_id),
                                e,
                            )
                        })?;
                    let new_id = sent.message_id().unwrap_or_default().to_string();
                    if !ctx.json {
                        out(format!(
                            "moved {} from the {stage} dead-letter queue to {target} (now {new_id})",
                            l.message_id
                        ));
                    }
                    moved.push(json!({"stage": stage, "message_id": l.message_id, "new_message_id": new_id, "queue_url": target}));
                }
            }
            _ => {
                if let Err(e) = release(&sqs, url, letters, hold).await {
                    err(format!("lrctl: {e}"));
                    release_failed = true;
                }
            }
        }
    }
    if ctx.json && args.redrive {
        print_json(&json!({"moved": moved}));
    } else if args.redrive && !go && !all.is_empty() {
        out("nothing moved");
    }
    Ok(u8::from(release_failed))
}
