//! The live response library over the API: the files a PutFile or RunScript can name, seeded from
//! the config's `[[library]]` (the records and the seeding are in `state`); list
//! (`GET /api/libraryfiles`), upload (multipart, hashed as it streams, within the API's size limit;
//! `OverrideIfExists` to replace) and delete. The three share one call budget (`routes`), and
//! `Stats` counts listings and accepted uploads.
//!
//! Separate because it is its own API family (its own fault key and limits) and the only one that
//! changes the library, which submissions only read (is the named file there, and which version?).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::auth::client_of;
use super::reply::{bad_request, json_response, not_found};
use super::sim::Sim;
use super::state::LibraryFile;
use crate::clock::format_ts;
use crate::config::valid_library_name;

fn library_entity(name: &str, f: &LibraryFile) -> Value {
    json!({
        "fileName": name,
        "sha256": f.sha256,
        "description": f.description,
        "creationTime": format_ts(f.created),
        "lastUpdatedTime": format_ts(f.updated),
        "createdBy": f.created_by,
        "hasParameters": f.has_parameters,
        "parametersDescription": f.parameters_description,
    })
}

/// `GET /api/libraryfiles`.
pub(super) async fn library_list(sim: Arc<Sim>) -> Response {
    let mut st = sim.lock();
    st.stats.library_lists += 1;
    let values: Vec<Value> = st
        .library
        .values()
        .map(|(n, f)| library_entity(n, f))
        .collect();
    json_response(
        StatusCode::OK,
        json!({"@odata.context": format!("{}/api/$metadata#LibraryFiles", sim.api_base), "value": values}),
    )
}

/// An upload's file (name as sent, SHA-256 of its bytes) and its other form fields.
struct Upload {
    file: Option<(String, String)>,
    fields: HashMap<String, String>,
}

/// Reads a multipart upload, hashing the file as it streams and refusing it past `max` bytes.
async fn read_upload(req: Request, max: u64) -> Result<Upload, Response> {
    let bad = |msg: String| bad_request("InvalidRequestBody", &msg);
    let malformed =
        |e: axum::extract::multipart::MultipartError| bad(format!("Malformed multipart body: {e}"));
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| bad(format!("Expected multipart/form-data: {e}")))?;
    let mut upload = Upload {
        file: None,
        fields: HashMap::new(),
    };
    while let Some(mut field) = mp.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let fname = field.file_name().unwrap_or_default().to_string();
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            while let Some(c) = field.chunk().await.map_err(malformed)? {
                len += c.len() as u64;
                if len > max {
                    return Err(bad(format!(
                        "File is larger than the {max}-byte limit for API uploads"
                    )));
                }
                hasher.update(&c);
            }
            upload.file = Some((fname, hex::encode(hasher.finalize())));
        } else {
            let text = field.text().await.map_err(malformed)?;
            upload.fields.insert(name, text);
        }
    }
    Ok(upload)
}

/// `POST /api/libraryfiles` (multipart: `file`, `Description`, `ParametersDescription`,
/// `HasParameters`, `OverrideIfExists`).
pub(super) async fn library_upload(sim: Arc<Sim>, req: Request) -> Result<Response, Response> {
    let client = client_of(&req);
    let Upload { file, fields } = read_upload(req, sim.config.sim.library_max_bytes).await?;
    let Some((fname, sha)) = file else {
        return Err(bad_request("MissingRequiredParameter", "file is required"));
    };
    if !valid_library_name(&fname) {
        return Err(bad_request(
            "InvalidInput",
            &format!("File name '{fname}' may hold only letters, digits, '-', '_' and '.'"),
        ));
    }
    let flag = |k: &str| {
        fields
            .get(k)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    };
    let now = sim.clock.now();
    let mut st = sim.lock();
    let key = fname.to_ascii_lowercase();
    let created = match st.library.get(&key) {
        Some(_) if !flag("OverrideIfExists") => {
            return Err(bad_request(
                "InvalidRequestBody",
                &format!(
                    "File {fname} already exists in the library; set OverrideIfExists to replace it"
                ),
            ));
        }
        Some((_, f)) => f.created,
        None => now,
    };
    let entry = LibraryFile {
        sha256: sha,
        description: fields.get("Description").cloned().unwrap_or_default(),
        parameters_description: fields
            .get("ParametersDescription")
            .cloned()
            .unwrap_or_default(),
        has_parameters: flag("HasParameters"),
        created,
        updated: now,
        created_by: sim.requestor(client),
    };
    let body = library_entity(&fname, &entry);
    st.library.insert(key, (fname, entry));
    st.stats.library_uploads += 1;
    Ok(json_response(StatusCode::OK, body))
}

/// `DELETE /api/libraryfiles/{name}`.
pub(super) async fn library_delete(sim: Arc<Sim>, name: String) -> Response {
    match sim.lock().library.remove(&name.to_ascii_lowercase()) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(&format!("Library file {name} was not found")),
    }
}
