//! The simulator's login and bearer: the token endpoint's client credentials check, and the valid,
//! unexpired bearer every API call needs.
//!
//! The behaviour asserted here is Defender's as summarised in docs/testing.md, section
//! "The Defender simulator".

use crate::common::*;
use mde_sim::Client;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn token_endpoint_rejects_wrong_secrets_and_unknown_clients() {
    let h = start(config()).await;
    let good = Client::default();
    let wrong = Client {
        client_secret: "nope".into(),
        ..Client::default()
    };
    let r = h.token_response(&good.tenant_id, &wrong).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("AADSTS7000215")
    );

    let unknown = Client {
        client_id: "someone-else".into(),
        ..Client::default()
    };
    let r = h.token_response(&good.tenant_id, &unknown).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = h.token_response("another-tenant", &good).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = h.token_response(&good.tenant_id, &good).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 30 * 24 * 3600);
}

#[tokio::test]
async fn api_calls_need_a_valid_unexpired_bearer() {
    let mut c = config();
    c.sim.token_lifetime_secs = 3599;
    let mut h = start(c).await;
    let r = h
        .http
        .get(h.url("/api/machineactions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = h
        .http
        .get(h.url("/api/machineactions"))
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (s, _, _) = h.get("/api/machineactions").await;
    assert_eq!(s, StatusCode::OK);
    h.advance(3600);
    let (s, _, v) = h.get("/api/machineactions").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
    h.token = h.new_token().await;
    let (s, _, _) = h.get("/api/machineactions").await;
    assert_eq!(s, StatusCode::OK);
}
