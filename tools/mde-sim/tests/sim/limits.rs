//! The simulator's documented limits: submissions per sliding minute, running sessions, calls per
//! minute and per hour to each rate-limited API (status, result link, cancel, library), and 429
//! with or without Retry-After.
//!
//! The behaviour asserted here is Defender's as summarised in docs/testing.md, section
//! "The Defender simulator".

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn ten_submissions_per_sliding_minute_then_429_with_retry_after() {
    let mut c = config();
    c.devices = (0..12).map(|i| device(&format!("{i:040x}"))).collect();
    c.sim.time_scale = 1.0;
    let h = start(c).await;
    for i in 0..10 {
        let (s, _, v) = h
            .submit(&format!("{i:040x}"), json!([get_file(FILE)]))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        h.advance(1);
    }
    let (s, headers, v) = h
        .submit(&format!("{:040x}", 10), json!([get_file(FILE)]))
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["error"]["code"], "TooManyRequests");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((45..=51).contains(&retry), "Retry-After {retry}");
    h.advance(retry as i64);
    let (s, _, _) = h
        .submit(&format!("{:040x}", 10), json!([get_file(FILE)]))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let stats = h.sim.stats();
    assert_eq!(stats.throttled_by_limit, 1);
    assert_eq!(stats.throttled, 1);
    assert_eq!(stats.max_submissions_per_minute, 11);
    assert_eq!(stats.calls["submit"]["429"], 1);
    assert_eq!(stats.calls["submit"]["201"], 11);
}

#[tokio::test]
async fn retry_after_can_be_left_out() {
    let mut c = config();
    c.limits.retry_after_header = false;
    c.limits.submissions_per_minute = 1;
    let h = start(c).await;
    let (s, _, _) = h.submit(M1, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, headers, _) = h.submit(M2, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get("retry-after").is_none());
}

#[tokio::test]
async fn running_sessions_are_capped() {
    let mut c = config();
    c.limits.running_sessions = 3;
    let h = start(c).await;
    for m in [M1, M2, M3] {
        let (s, _, _) = h.submit(m, json!([get_file(FILE)])).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (s, headers, _) = h.submit(M4, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get("retry-after").is_some());
    assert_eq!(h.sim.stats().max_concurrent_sessions, 3);
    h.advance(60);
    let (s, _, _) = h.submit(M4, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn status_calls_are_limited_per_minute_and_per_hour() {
    let mut c = config();
    c.limits.gets_per_hour = 150;
    let h = start(c).await;
    let id = h.submit_id(M1, json!([get_file(FILE)])).await;
    for _ in 0..100 {
        let (s, _, _) = h.get(&format!("/api/machineactions/{id}")).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, headers, _) = h.get(&format!("/api/machineactions/{id}")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            <= 60
    );
    // The link API has its own budget.
    let (s, _) = h.link(&id, 0).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    h.advance(61);
    for _ in 0..50 {
        let (s, _, _) = h.get("/api/machineactions").await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, headers, _) = h.get(&format!("/api/machineactions/{id}")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "hourly budget");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 3000, "hourly wait {retry}");
}

#[tokio::test]
async fn library_calls_are_limited_per_minute_and_per_hour() {
    let mut c = config();
    c.limits.gets_per_hour = 150;
    let h = start(c).await;
    // List, upload and delete share the library's budget of 100 a minute.
    for i in 0..98 {
        let (s, _, _) = h.get("/api/libraryfiles").await;
        assert_eq!(s, StatusCode::OK, "call {i}");
    }
    let (s, _, _) = h.upload("sync.ps1", b"v1", false).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = reply(h.api(Method::DELETE, "/api/libraryfiles/sync.ps1")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, headers, v) = h.get("/api/libraryfiles").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["error"]["code"], "TooManyRequests");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let (s, headers, _) = h.upload("sync.ps1", b"v2", true).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get("retry-after").is_some());
    // The status API has its own budget.
    let (s, _, _) = h.get("/api/machineactions").await;
    assert_eq!(s, StatusCode::OK);
    let stats = h.sim.stats();
    assert_eq!(stats.throttled_by_limit, 2);
    assert_eq!(stats.throttled, 2);
    assert_eq!(stats.calls["library_list"]["429"], 1);
    assert_eq!(stats.calls["library_upload"]["429"], 1);
    assert_eq!(stats.library_lists, 98);
    assert_eq!(stats.library_uploads, 1);

    h.advance(retry as i64);
    for _ in 0..50 {
        let (s, _, _) = h.get("/api/libraryfiles").await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, headers, _) = h.get("/api/libraryfiles").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "hourly budget");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 3000, "hourly wait {retry}");
}
