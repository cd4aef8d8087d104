//! The two small commands that talk to the deployment directly: `send` puts an alert on the
//! alerts queue (as a sender would), and `key export` fetches the manifest signing key's public
//! half so manifests can be verified without AWS access.

use std::path::Path;

use serde_json::json;
use shared::custody::signature::{public_key, public_key_pem};

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::print_json;

/// SQS's largest message body.
const MAX_BODY: u64 = 256 * 1024;

pub async fn send(ctx: &Ctx, file: &Path) -> Result<u8> {
    let url = ctx.settings.alerts_queue_url()?;
    let meta = std::fs::metadata(file)
        .map_err(|e| Error::Usage(format!("cannot read {}: {e}", file.display())))?;
    if meta.len() > MAX_BODY {
        return Err(Error::Usage(format!(
            "{} is {} bytes; an SQS message holds at most {MAX_BODY}",
            file.display(),
            meta.len()
        )));
    }
    let body = std::fs::read_to_string(file)
        .map_err(|e| Error::Usage(format!("cannot read {} as text: {e}", file.display())))?;
    if body.trim().is_empty() {
        return Err(Error::Usage(format!("{} is empty", file.display())));
    }
    let out = ctx
        .sqs()
        .send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .map_err(|e| {
            Error::failed(format!(
                "cannot send to the alerts queue {url}: {}",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            ))
        })?;
    let id = out.message_id().unwrap_or_default();
    if ctx.json {
        print_json(&json!({"message_id": id, "queue_url": url}));
    } else {
        crate::output::out(id);
    }
    Ok(0)
}

pub async fn export_key(ctx: &Ctx, out: Option<&Path>) -> Result<u8> {
    let key_id = ctx.settings.signing_key_id()?;
    let kms = shared::adapters::kms::KmsSigner::new(ctx.kms(), key_id);
    let der = kms
        .public_key()
        .await
        .map_err(|e| Error::failed(format!("cannot get the public key of {key_id}: {}", e.0)))?;
    let pem = public_key(&der)
        .and_then(|k| public_key_pem(&k))
        .map_err(|e| Error::failed(format!("{key_id}: {e}")))?;
    match out {
        Some(path) => {
            std::fs::write(path, &pem)
                .map_err(|e| Error::failed(format!("cannot write {}: {e}", path.display())))?;
            if ctx.json {
                print_json(&json!({"key_id": key_id, "path": path}));
            } else {
                crate::output::err(format!(
                    "wrote the public key of {key_id} to {}",
                    path.display()
                ));
            }
        }
        None if ctx.json => print_json(&json!({"key_id": key_id, "pem": pem})),
        None => print!("{pem}"),
    }
    Ok(0)
}
