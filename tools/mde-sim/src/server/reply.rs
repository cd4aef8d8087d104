//! How each of the three services the simulator plays answers: the Defender API's JSON error
//! (`{"error": {"code", "message", "target"}}`), the login service's OAuth error, and Azure
//! Storage's XML error with `x-ms-error-code`; plus reading a request's JSON body and query string.
//!
//! Separate so that every handler spells an error the same way and a client under test sees the
//! shapes the real services send, and so that every handler reads a request the same way.

use std::collections::HashMap;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::clock::format_ts;

pub(super) fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

/// The Defender API's error body.
pub(super) fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message, "target": uuid::Uuid::new_v4().to_string()}});
    json_response(status, body)
}

/// A 400 from the Defender API.
pub(super) fn bad_request(code: &str, message: &str) -> Response {
    api_error(StatusCode::BAD_REQUEST, code, message)
}

/// A 404 `ResourceNotFound` from the Defender API.
pub(super) fn not_found(message: &str) -> Response {
    api_error(StatusCode::NOT_FOUND, "ResourceNotFound", message)
}

/// The login service's (Entra ID's) OAuth error body.
pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description, "error_codes": [], "timestamp": format_ts(OffsetDateTime::now_utc()), "trace_id": uuid::Uuid::new_v4().to_string()}),
    )
}

/// Azure Storage's error body, for the blob host.
pub(super) fn azure_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:{}\nTime:{}</Message></Error>",
        uuid::Uuid::new_v4(),
        format_ts(OffsetDateTime::now_utc())
    );
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp.headers_mut().insert(
        "x-ms-error-code",
        HeaderValue::from_str(code).unwrap_or(HeaderValue::from_static("Error")),
    );
    resp
}

/// The request body as JSON (at most `limit` bytes), or the API's 400 `InvalidRequestBody`.
pub(super) async fn json_body(req: Request, limit: usize) -> Result<Value, Response> {
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| bad_request("InvalidRequestBody", "Request body too large or unreadable"))?;
    serde_json::from_slice(&body).map_err(|e| {
        bad_request(
            "InvalidRequestBody",
            &format!("Request body is not valid JSON: {e}"),
        )
    })
}

/// A request's query string as name -> value (decoded; the last of a repeated name wins).
pub(super) fn query_of(req: &Request) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}
