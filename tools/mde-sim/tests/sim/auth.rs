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

/// A token says what Entra's says (tenant, app, granted roles), and each API refuses a token
/// without the application permission Defender documents for it (403), so that a check of an
/// app's consent can be tested failing.
#[tokio::test]
async fn a_token_carries_its_granted_roles_and_an_api_without_its_permission_answers_403() {
    use base64::Engine;
    let reader = Client {
        client_id: "read-only-app".into(),
        roles: vec!["Machine.Read.All".into()],
        ..Client::default()
    };
    let mut c = config();
    c.clients.push(reader.clone());
    let mut h = start(c).await;
    let r = h.token_response(&reader.tenant_id, &reader).await;
    let v: Value = r.json().await.unwrap();
    let token = v["access_token"].as_str().unwrap().to_string();
    let claims = token.split('.').nth(1).expect("a JWT's claims");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["roles"], serde_json::json!(["Machine.Read.All"]));
    assert_eq!(claims["tid"], reader.tenant_id.as_str());
    assert_eq!(claims["appid"], "read-only-app");
    h.token = token;
    let (s, _, _) = h.get("/api/machineactions").await;
    assert_eq!(s, StatusCode::OK, "Machine.Read.All reads machine actions");
    let (s, _, v) = h.get("/api/libraryfiles").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no Library.Manage: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Library.Manage")
    );
    // The pipeline's app, as configured by default, has all three.
    h.token = h.new_token().await;
    let (s, _, _) = h.get("/api/libraryfiles").await;
    assert_eq!(s, StatusCode::OK);
}

/// One listener, several tenants (as Defender's one API host serves every tenant): each tenant's
/// token reaches its own actions, library and limits only; a token of tenant A cannot read tenant
/// B's action, which is not in its tenant.
#[tokio::test]
async fn a_tenant_token_cannot_read_another_tenants_actions_on_one_host() {
    let tenant = |id: &str, client: &str, per_minute: u32| {
        let mut c = config();
        c.clients = vec![Client {
            tenant_id: id.into(),
            client_id: client.into(),
            ..Client::default()
        }];
        c.limits.submissions_per_minute = per_minute;
        c
    };
    let a = tenant("aaaaaaaa-0000-4000-8000-000000000001", "app-a", 1);
    let b = tenant("bbbbbbbb-0000-4000-8000-000000000002", "app-b", 10);
    let sim = mde_sim::SimServer::start_tenants(
        vec![a.clone(), b.clone()],
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut h = Harness {
        sim,
        http: reqwest::Client::new(),
        token: String::new(),
    };
    let token = |v: Value| v["access_token"].as_str().unwrap().to_string();
    let a_token = token(
        h.token_response(&a.clients[0].tenant_id, &a.clients[0])
            .await
            .json()
            .await
            .unwrap(),
    );
    let b_token = token(
        h.token_response(&b.clients[0].tenant_id, &b.clients[0])
            .await
            .json()
            .await
            .unwrap(),
    );
    // A's app is not in B's tenant.
    let r = h
        .token_response(&b.clients[0].tenant_id, &a.clients[0])
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    h.token = a_token.clone();
    let id = h.submit_id(M1, serde_json::json!([get_file(FILE)])).await;
    // A's quota is A's: its second submission in the minute is refused, B's first is not.
    let (s, _, _) = h.submit(M2, serde_json::json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    h.token = b_token;
    let (s, _, v) = h.get(&format!("/api/machineactions/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "B read A's action: {v}");
    let (s, _, v) = h.get("/api/machineactions").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["value"].as_array().unwrap().len(), 0, "{v}");
    let (s, _, _) = h.submit(M2, serde_json::json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::CREATED);
    h.token = a_token;
    assert_eq!(h.action(&id).await["id"], id.as_str());
    let (a_stats, b_stats) = (
        h.sim.tenant(0).unwrap().stats(),
        h.sim.tenant(1).unwrap().stats(),
    );
    assert_eq!((a_stats.actions_created, b_stats.actions_created), (1, 1));
    assert_eq!(a_stats.throttled_by_limit, 1);
    assert_eq!(b_stats.throttled_by_limit, 0);
}
