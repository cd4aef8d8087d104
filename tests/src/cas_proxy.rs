//! A pass-through proxy in front of moto that makes its conditional writes atomic, as S3's are.
//!
//! moto checks `If-Match` / `If-None-Match` and then writes, without a lock between the two: two
//! concurrent writes conditioned on the same ETag can both succeed (30 threads each doing 10
//! read-modify-write increments of one object with `If-Match`: 300 writes succeeded, the count
//! ended at 299). The pipeline keeps its tenant budget and run records with such compare-and-swap
//! writes, so under concurrency moto can lose an update that S3 would refuse with 412. The proxy
//! forwards every request unchanged and lets one conditional write (a PUT or POST carrying
//! `If-Match` or `If-None-Match`) per object reach moto at a time, as S3 orders the writes of one
//! key and no more (a lock over every key made the whole pipeline's writes queue behind each
//! other, which S3 does not); everything else passes concurrently.
//! moto does not check signatures, so the changed Host is harmless.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::response::Response;

struct Upstream {
    base: String,
    http: reqwest::Client,
    /// One lock per object (the request's path: bucket and key), taken by conditional writes.
    writes: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Hop-by-hop and framing headers, which each side sets for itself.
fn forwarded(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host" | "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "expect"
    )
}

async fn forward(State(up): State<Arc<Upstream>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return bad_gateway("could not read the request body");
    };
    let conditional = matches!(parts.method, Method::PUT | Method::POST)
        && (parts.headers.contains_key("if-match") || parts.headers.contains_key("if-none-match"));
    let object_lock = conditional.then(|| {
        let mut locks = up.writes.lock().unwrap_or_else(|p| p.into_inner());
        locks
            .entry(parts.uri.path().to_string())
            .or_default()
            .clone()
    });
    let _one_at_a_time = match &object_lock {
        Some(lock) => Some(lock.lock().await),
        None => None,
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = up
        .http
        .request(parts.method.clone(), format!("{}{path}", up.base))
        .body(body);
    for (name, value) in parts.headers.iter().filter(|(n, _)| forwarded(n)) {
        out = out.header(name, value);
    }
    let answer = match out.send().await {
        Ok(a) => a,
        Err(e) => return bad_gateway(&e.to_string()),
    };
    let mut resp = Response::builder().status(answer.status());
    for (name, value) in answer.headers().iter().filter(|(n, _)| forwarded(n)) {
        resp = resp.header(name, value);
    }
    // A HEAD's answer has no body to measure: its length is the object's, and must pass as moto
    // gave it (without it the object would look empty: a forged "0 bytes" under every key).
    if parts.method == Method::HEAD
        && let Some(length) = answer.headers().get(axum::http::header::CONTENT_LENGTH)
    {
        resp = resp.header(axum::http::header::CONTENT_LENGTH, length);
    }
    match answer.bytes().await {
        Ok(bytes) => resp
            .body(Body::from(bytes))
            .unwrap_or_else(|e| bad_gateway(&e.to_string())),
        Err(e) => bad_gateway(&e.to_string()),
    }
}

fn bad_gateway(why: &str) -> Response {
    let mut r = Response::new(Body::from(why.to_string()));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

/// Starts the proxy in front of `upstream` (moto's endpoint) on a free loopback port; returns its
/// endpoint. It serves until the runtime ends.
pub async fn start(upstream: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let up = Arc::new(Upstream {
        base: upstream.trim_end_matches('/').to_string(),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("an HTTP client"),
        writes: Default::default(),
    });
    let app = axum::Router::new()
        .fallback(forward)
        .layer(DefaultBodyLimit::disable())
        .with_state(up);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}
