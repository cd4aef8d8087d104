//! The simulator's injected faults: 429s with and without Retry-After, 500 and 503, seeded
//! repeatability, early 404s, cut downloads and early link expiry.
//!
//! The behaviour asserted here is Defender's as summarised in docs/testing.md, section
//! "The Defender simulator".

use crate::common::*;
use mde_sim::{EndpointFaults, Faults};
use reqwest::StatusCode;
use serde_json::json;

fn endpoint_faults(name: &str, f: EndpointFaults) -> Faults {
    let mut faults = Faults {
        seed: 42,
        ..Faults::default()
    };
    faults.endpoints.insert(name.into(), f);
    faults
}

#[tokio::test]
async fn injected_429s_with_and_without_retry_after() {
    let h = start(config()).await;
    let id = h.submit_id(M1, json!([get_file(FILE)])).await;
    h.sim.set_faults(endpoint_faults(
        "get_action",
        EndpointFaults {
            p429: 1.0,
            p429_without_retry_after: 0.5,
            ..Default::default()
        },
    ));
    let (mut with, mut without) = (0, 0);
    for _ in 0..40 {
        let (s, headers, _) = h.get(&format!("/api/machineactions/{id}")).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        if headers.contains_key("retry-after") {
            with += 1
        } else {
            without += 1
        }
    }
    assert!(with > 5 && without > 5, "with {with} without {without}");
    let stats = h.sim.stats();
    assert_eq!(stats.injected_faults, 40);
    assert_eq!(stats.throttled_by_limit, 0);
    // Other endpoints are untouched.
    let (s, _, _) = h.get("/api/machineactions").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn injected_server_errors() {
    let h = start(config()).await;
    h.sim.set_faults(endpoint_faults(
        "submit",
        EndpointFaults {
            p500: 1.0,
            ..Default::default()
        },
    ));
    let (s, _, v) = h.submit(M1, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["error"]["code"], "InternalServerError");
    h.sim.set_faults(endpoint_faults(
        "submit",
        EndpointFaults {
            p503: 1.0,
            ..Default::default()
        },
    ));
    let (s, _, _) = h.submit(M1, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.sim.stats().actions_created, 0);
    h.sim.set_faults(endpoint_faults(
        "submit",
        EndpointFaults {
            p500: 0.3,
            ..Default::default()
        },
    ));
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let (s, _, _) = h.get("/api/libraryfiles").await;
        outcomes.push(s);
    }
    assert!(
        outcomes.iter().all(|s| *s == StatusCode::OK),
        "only submit is faulty"
    );
}

#[tokio::test]
async fn faults_repeat_for_the_same_seed() {
    let run = || async {
        let h = start(config()).await;
        h.sim.set_faults(endpoint_faults(
            "list_actions",
            EndpointFaults {
                p500: 0.5,
                ..Default::default()
            },
        ));
        let mut seen = Vec::new();
        for _ in 0..30 {
            seen.push(h.get("/api/machineactions").await.0.as_u16());
        }
        seen
    };
    let a = run().await;
    assert_eq!(a, run().await);
    assert!(a.contains(&500) && a.contains(&200));
}

#[tokio::test]
async fn new_actions_can_answer_404_for_a_moment() {
    let h = start(config()).await;
    h.sim.set_faults(Faults {
        not_found_after_create_secs: 2,
        ..Faults::default()
    });
    let id = h.submit_id(M1, json!([get_file(FILE)])).await;
    let (s, _, v) = h.get(&format!("/api/machineactions/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "ResourceNotFound");
    h.advance(3);
    let (s, _, _) = h.get(&format!("/api/machineactions/{id}")).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn downloads_can_be_cut_and_resumed_with_a_range() {
    let h = start(config()).await;
    let id = finished_run(&h).await;
    let url = h.link_url(&id, 1).await;
    let whole = h.download(&url).await;
    h.sim.set_faults(Faults {
        download_cut_probability: 1.0,
        download_cut_after_bytes: 100_000,
        ..Faults::default()
    });
    let r = h.fetch(&url).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.is_err(), "the body must break off");
    assert_eq!(h.sim.stats().downloads_cut, 1);
    h.sim.set_faults(Faults::default());
    let rest = h
        .http
        .get(&url)
        .header("Range", "bytes=100000-")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(rest, whole.slice(100_000..));
}

#[tokio::test]
async fn links_can_expire_early() {
    let h = start(config()).await;
    let id = finished_run(&h).await;
    h.sim.set_faults(Faults {
        link_early_expiry_probability: 1.0,
        link_early_expiry_secs: 60,
        ..Faults::default()
    });
    let url = h.link_url(&id, 1).await;
    assert_eq!(h.fetch(&url).await.status(), StatusCode::OK);
    h.advance(61);
    assert_eq!(h.fetch(&url).await.status(), StatusCode::FORBIDDEN);
}
