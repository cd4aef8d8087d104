//! The simulator against the documented behaviour (MDE-API.md): auth, submission, lifecycle,
//! limits, links, blob downloads and injected faults.

mod common;

use std::io::Read;

use common::*;
use mde_sim::{Client, EndpointFaults, Faults};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn commands(v: &Value) -> Vec<(String, String)> {
    v["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["command"]["type"].as_str().unwrap().to_string(),
                c["commandStatus"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

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

#[tokio::test]
async fn submission_body_is_validated_case_sensitively() {
    let mut c = config();
    c.limits.submissions_per_minute = 100;
    let h = start(c).await;
    let path = format!("/api/machines/{M1}/runliveresponse");
    let cases = [
        (
            json!({"commands": [get_file(FILE)], "Comment": "x"}),
            "InvalidRequestBody",
        ),
        (json!({"Comment": "x"}), "MissingRequiredParameter"),
        (
            json!({"Commands": [], "Comment": "x"}),
            "InvalidRequestBody",
        ),
        (
            json!({"Commands": [get_file(FILE)]}),
            "MissingRequiredParameter",
        ),
        (
            json!({"Commands": [{"type": "RunShell", "params": []}], "Comment": "x"}),
            "InvalidRequestBody",
        ),
        (
            json!({"Commands": [{"type": "getfile", "params": [{"key": "Path", "value": "x"}]}], "Comment": "x"}),
            "InvalidRequestBody",
        ),
        (
            json!({"Commands": [{"type": "GetFile", "params": []}], "Comment": "x"}),
            "MissingRequiredParameter",
        ),
        (
            json!({"Commands": [{"type": "GetFile", "params": [{"key": "path", "value": "x"}]}], "Comment": "x"}),
            "InvalidRequestBody",
        ),
        (
            json!({"Commands": [{"type": "RunScript", "params": [{"key": "Args", "value": "x"}]}], "Comment": "x"}),
            "MissingRequiredParameter",
        ),
        (
            json!({"Commands": [{"type": "PutFile"}], "Comment": "x"}),
            "MissingRequiredParameter",
        ),
    ];
    for (body, code) in cases {
        let (s, _, v) = h.post(&path, &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(v["error"]["code"], code, "{body} -> {v}");
        assert!(v["error"]["target"].is_string());
    }
    let r = h
        .http
        .post(h.url(&path))
        .bearer_auth(&h.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (s, _, v) = h
        .submit(
            "ffffffffffffffffffffffffffffffffffffffff",
            json!([get_file(FILE)]),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "ResourceNotFound");
    assert_eq!(h.sim.stats().actions_created, 0);
}

#[tokio::test]
async fn a_session_goes_pending_in_progress_succeeded() {
    let h = start(config()).await;
    let (s, _, v) = h
        .submit(
            M1,
            json!([run_script("triage.ps1", "-Full"), get_file(FILE)]),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "Pending");
    assert_eq!(v["type"], "LiveResponse");
    assert_eq!(v["machineId"], M1);
    assert_eq!(v["requestorComment"], "test run");
    assert_eq!(v["requestor"], "live-response-pipeline");
    assert_eq!(
        commands(&v),
        vec![
            ("RunScript".into(), "Created".into()),
            ("GetFile".into(), "Created".into())
        ]
    );
    let ts = v["creationDateTimeUtc"].as_str().unwrap();
    assert!(
        ts.starts_with("2026-01-01T00:00:") && ts.ends_with('Z') && ts.len() == 28,
        "{ts}"
    );
    let id = v["id"].as_str().unwrap().to_string();

    h.advance(6); // picked up after 5 s
    let v = h.action(&id).await;
    assert_eq!(v["status"], "InProgress");
    assert_eq!(commands(&v)[0].1, "Created");
    h.advance(10);
    let v = h.action(&id).await;
    assert_eq!(v["status"], "InProgress");
    assert_eq!(
        commands(&v),
        vec![
            ("RunScript".into(), "Completed".into()),
            ("GetFile".into(), "Created".into())
        ]
    );
    assert!(v["commands"][0]["endTime"].is_string());
    h.advance(10);
    let v = h.action(&id).await;
    assert_eq!(v["status"], "Succeeded");
    assert_eq!(commands(&v)[1].1, "Completed");
    assert_ne!(v["lastUpdateDateTimeUtc"], v["creationDateTimeUtc"]);
}

#[tokio::test]
async fn a_failing_command_stops_the_ones_after_it() {
    let h = start(config()).await;
    let (_, _, v) = h
        .submit(
            M1,
            json!([
                run_script("triage.ps1", ""),
                get_file("C:\\missing.txt"),
                run_script("triage.ps1", "")
            ]),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    h.advance(3600);
    let v = h.action(&id).await;
    assert_eq!(v["status"], "Failed");
    let c = commands(&v);
    assert_eq!(c[0].1, "Completed");
    assert_eq!(c[1].1, "Failed");
    assert_eq!(c[2].1, "Created");
    assert!(
        v["commands"][1]["errors"][0]
            .as_str()
            .unwrap()
            .contains("not found")
    );
    assert!(v["commands"][2]["startTime"].is_null());
    // A script that exits non-zero still completes: its transcript carries the exit code.
    let (_, _, v) = h.submit(M2, json!([run_script("fails.ps1", "")])).await;
    let id = v["id"].as_str().unwrap().to_string();
    h.advance(60);
    assert_eq!(h.action(&id).await["status"], "Succeeded");
    // An unknown script fails the action.
    let (_, _, v) = h
        .submit(
            M3,
            json!([run_script("nope.ps1", ""), put_file("missing.bin")]),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    h.advance(60);
    let v = h.action(&id).await;
    assert_eq!(v["status"], "Failed");
    assert_eq!(commands(&v)[1].1, "Created");
}

#[tokio::test]
async fn commands_time_out_as_documented() {
    let mut c = config();
    c.devices[1].files[0].secs = Some(1801);
    let h = start(c).await;
    // RunScript: 10 minutes.
    let (_, _, v) = h
        .submit(M1, json!([run_script("slow.ps1", ""), get_file(FILE)]))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    h.advance(5 + 599);
    assert_eq!(h.action(&id).await["status"], "InProgress");
    h.advance(2);
    let v = h.action(&id).await;
    assert_eq!(v["status"], "Failed");
    assert!(
        v["commands"][0]["errors"][0]
            .as_str()
            .unwrap()
            .contains("timed out after 10 minutes")
    );
    assert_eq!(commands(&v)[1].1, "Created");
    // GetFile: 30 minutes.
    let (_, _, v) = h.submit(M2, json!([get_file(FILE)])).await;
    let id = v["id"].as_str().unwrap().to_string();
    h.advance(5 + 1799);
    assert_eq!(h.action(&id).await["status"], "InProgress");
    h.advance(2);
    let v = h.action(&id).await;
    assert_eq!(v["status"], "Failed");
    assert!(
        v["commands"][0]["errors"][0]
            .as_str()
            .unwrap()
            .contains("timed out after 30 minutes")
    );
}

#[tokio::test]
async fn offline_devices_queue_then_time_out_or_come_online() {
    let mut c = config();
    c.devices[2].online = false; // never online
    c.devices[3].online = false;
    c.devices[3].online_after_secs = Some(7200);
    c.sim.queue_window_secs = 3 * 24 * 3600;
    let h = start(c).await;
    let (_, _, v) = h.submit(M3, json!([get_file(FILE)])).await;
    let never = v["id"].as_str().unwrap().to_string();
    let (_, _, v) = h.submit(M4, json!([get_file(FILE)])).await;
    let later = v["id"].as_str().unwrap().to_string();
    h.advance(7000);
    assert_eq!(h.action(&never).await["status"], "Pending");
    assert_eq!(h.action(&later).await["status"], "Pending");
    h.advance(210);
    assert_eq!(h.action(&later).await["status"], "InProgress");
    h.advance(3 * 24 * 3600);
    let v = h.action(&never).await;
    assert_eq!(v["status"], "TimeOut");
    assert_eq!(commands(&v)[0].1, "Created");
    assert_eq!(h.action(&later).await["status"], "Succeeded");
    // The device is free again once its session timed out.
    let (s, _, _) = h.submit(M3, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn the_newer_two_hour_queue_window_is_configurable() {
    let mut c = config();
    c.devices[2].online = false;
    c.sim.queue_window_secs = 7200;
    let h = start(c).await;
    let (_, _, v) = h.submit(M3, json!([get_file(FILE)])).await;
    let id = v["id"].as_str().unwrap().to_string();
    h.advance(7199);
    assert_eq!(h.action(&id).await["status"], "Pending");
    h.advance(2);
    assert_eq!(h.action(&id).await["status"], "TimeOut");
}

#[tokio::test]
async fn cancel_ends_a_running_session_and_only_once() {
    let h = start(config()).await;
    let (_, _, v) = h.submit(M1, json!([get_file(FILE)])).await;
    let id = v["id"].as_str().unwrap().to_string();
    let (s, _, v) = h
        .post(
            &format!("/api/machineactions/{id}/cancel"),
            &json!({"Comment": "deadline passed"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "Cancelled");
    assert_eq!(v["cancellationComment"], "deadline passed");
    assert!(v["cancellationDateTimeUtc"].is_string());
    h.advance(600);
    let v = h.action(&id).await;
    assert_eq!(v["status"], "Cancelled");
    assert_eq!(commands(&v)[0].1, "Created");
    let (s, _, v) = h
        .post(
            &format!("/api/machineactions/{id}/cancel"),
            &json!({"Comment": "again"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _, _) = h
        .post(&format!("/api/machineactions/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = h
        .post(
            "/api/machineactions/00000000-0000-0000-0000-000000000000/cancel",
            &json!({"Comment": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The device is free after the cancel.
    let (s, _, _) = h.submit(M1, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn one_session_per_device() {
    let h = start(config()).await;
    let (s, _, _) = h.submit(M1, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, v) = h.submit(M1, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "ActiveRequestAlreadyExists");
    assert_eq!(v["error"]["message"], "Action is already in progress");
    h.advance(60);
    let (s, _, _) = h.submit(M1, json!([get_file(FILE)])).await;
    assert_eq!(s, StatusCode::CREATED);
}

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
    let (_, _, v) = h.submit(M1, json!([get_file(FILE)])).await;
    let id = v["id"].as_str().unwrap().to_string();
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
async fn list_filters_and_pages() {
    let h = start(config()).await;
    let mut ids = Vec::new();
    for m in [M1, M2, M3] {
        let (_, _, v) = h.submit(m, json!([get_file(FILE)])).await;
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let q = |f: &str| format!("/api/machineactions?$filter={}", url_enc(f));
    let (s, _, v) = h.get(&q(&format!("machineId eq '{M2}'"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    assert_eq!(v["value"][0]["id"], ids[1].as_str());
    let (_, _, v) = h
        .get(&q(&format!("machineId eq '{M1}' or machineId eq '{M3}'")))
        .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    let (_, _, v) = h
        .get(&q(&format!(
            "machineId eq '{M1}' and status eq 'Succeeded'"
        )))
        .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 0);
    let (_, _, v) = h
        .get(&q(
            "type eq 'LiveResponse' and requestor eq 'live-response-pipeline'",
        ))
        .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 3);
    let (_, _, v) = h.get("/api/machineactions?$top=2&$skip=1").await;
    let page: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[1].as_str(), ids[2].as_str()]);
    let (s, _, _) = h.get(&q("machineId gt 'x'")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = h.get("/api/machineactions?$top=10001").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

fn url_enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn paths_are_case_insensitive() {
    let h = start(config()).await;
    let (s, _, v) = h
        .post(
            &format!("/API/Machines/{M1}/RunLiveResponse"),
            &json!({"Commands": [get_file(FILE)], "Comment": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = v["id"].as_str().unwrap();
    let (s, _, _) = h.get(&format!("/Api/MachineActions/{id}")).await;
    assert_eq!(s, StatusCode::OK);
}

async fn finished_run(h: &Harness) -> String {
    let (_, _, v) = h
        .submit(
            M1,
            json!([
                run_script("triage.ps1", "-Quick"),
                get_file(FILE),
                put_file("triage.ps1")
            ]),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    h.advance(120);
    assert_eq!(h.action(&id).await["status"], "Succeeded");
    id
}

#[tokio::test]
async fn result_links_only_for_completed_commands_with_results() {
    let h = start(config()).await;
    let (_, _, v) = h.submit(M1, json!([get_file(FILE)])).await;
    let id = v["id"].as_str().unwrap().to_string();
    let (s, v) = h.link(&id, 0).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    h.advance(120);
    let (s, v) = h.link(&id, 0).await;
    assert_eq!(s, StatusCode::OK);
    let url = v["value"].as_str().unwrap();
    assert!(
        v["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("$metadata#Edm.String")
    );
    assert!(
        url.contains("?se=2026-01-01T00%3A") && url.contains("&sp=r&sv=2019-07-07&sr=b&sig="),
        "{url}"
    );
    let (s, _) = h.link(&id, 1).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h.link("00000000-0000-0000-0000-000000000000", 0).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let id = finished_run(&h).await;
    let (s, _) = h.link(&id, 2).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "PutFile has no result");
}

#[tokio::test]
async fn transcripts_and_files_download_with_the_documented_content() {
    let h = start(config()).await;
    let id = finished_run(&h).await;
    let (_, v) = h.link(&id, 0).await;
    let r = h
        .http
        .get(v["value"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["script_name"], "triage.ps1");
    assert_eq!(t["exit_code"], 0);
    assert_eq!(t["script_output"], "triage of host-1e5b with -Quick");
    assert_eq!(t["script_errors"], "");

    let (_, v) = h.link(&id, 1).await;
    let url = v["value"].as_str().unwrap().to_string();
    let r = h.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let gz = r.bytes().await.unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    let mut file = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut file)
        .unwrap();
    let expected = expected_file(M1, FILE, 300_000);
    assert_eq!(file.len(), 300_000);
    assert_eq!(sha256_hex(&file), sha256_hex(&expected));

    // The same (device, path, size) always gives the same bytes; another device gives others.
    let again = h
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(again, gz);
    assert_ne!(
        sha256_hex(&expected_file(M2, FILE, 300_000)),
        sha256_hex(&expected)
    );
}

#[tokio::test]
async fn the_older_transcript_spelling_is_available() {
    let mut c = config();
    c.sim.transcript_error_field = "script_error".into();
    let h = start(c).await;
    let id = finished_run(&h).await;
    let (_, v) = h.link(&id, 0).await;
    let t: Value = h
        .http
        .get(v["value"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(t.get("script_error").is_some() && t.get("script_errors").is_none());
}

#[tokio::test]
async fn range_requests_return_exactly_the_asked_bytes() {
    let h = start(config()).await;
    let id = finished_run(&h).await;
    let (_, v) = h.link(&id, 1).await;
    let url = v["value"].as_str().unwrap().to_string();
    let whole = h
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let len = whole.len();
    for (range, a, b) in [
        ("bytes=0-9".to_string(), 0, 10),
        ("bytes=65000-140000".to_string(), 65000, 140_001),
        (format!("bytes={}-", len - 20), len - 20, len),
        ("bytes=-8".to_string(), len - 8, len),
    ] {
        let r = h
            .http
            .get(&url)
            .header("Range", &range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()["content-range"].to_str().unwrap(),
            format!("bytes {a}-{}/{len}", b - 1)
        );
        assert_eq!(r.bytes().await.unwrap(), whole.slice(a..b), "{range}");
    }
    let r = h
        .http
        .get(&url)
        .header("Range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn links_expire_after_thirty_minutes_and_can_be_asked_for_again() {
    let h = start(config()).await;
    let id = finished_run(&h).await;
    let (_, v) = h.link(&id, 1).await;
    let url = v["value"].as_str().unwrap().to_string();
    h.advance(29 * 60);
    assert_eq!(
        h.http.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    h.advance(61);
    let r = h.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()["x-ms-error-code"], "AuthenticationFailed");
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("<Code>AuthenticationFailed</Code>")
    );
    let (s, v) = h.link(&id, 1).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h.http
            .get(v["value"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn altered_links_are_refused() {
    let h = start(config()).await;
    let id = finished_run(&h).await;
    let (_, v) = h.link(&id, 1).await;
    let url = v["value"].as_str().unwrap().to_string();
    let later_se = url.replace("se=2026-01-01T00%3A", "se=2027-01-01T00%3A");
    let bad_sig = url.replace("&sig=", "&sig=A");
    let no_sig = url.split("&sig=").next().unwrap().to_string();
    let other_blob = url.replacen(
        "CustomPlaybookCommandOutput/",
        "CustomPlaybookCommandOutput/0",
        1,
    );
    for u in [later_se, bad_sig, no_sig, other_blob] {
        assert_eq!(
            h.http.get(&u).send().await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{u}"
        );
    }
    // The bearer token is not what opens a link; a client that sends one anyway is counted.
    assert_eq!(
        h.http.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(h.sim.stats().blob_requests_with_authorization, 0);
    h.http.get(&url).bearer_auth(&h.token).send().await.unwrap();
    assert_eq!(h.sim.stats().blob_requests_with_authorization, 1);
}

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
    let (_, _, v) = h.submit(M1, json!([get_file(FILE)])).await;
    let id = v["id"].as_str().unwrap().to_string();
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
    let (_, _, v) = h.submit(M1, json!([get_file(FILE)])).await;
    let id = v["id"].as_str().unwrap().to_string();
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
    let (_, v) = h.link(&id, 1).await;
    let url = v["value"].as_str().unwrap().to_string();
    let whole = h
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    h.sim.set_faults(Faults {
        download_cut_probability: 1.0,
        download_cut_after_bytes: 100_000,
        ..Faults::default()
    });
    let r = h.http.get(&url).send().await.unwrap();
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
    let (_, v) = h.link(&id, 1).await;
    let url = v["value"].as_str().unwrap().to_string();
    assert_eq!(
        h.http.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    h.advance(61);
    assert_eq!(
        h.http.get(&url).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn library_upload_list_override_delete_and_put_file() {
    let h = start(config()).await;
    let upload = |name: &'static str, over: bool, body: &'static [u8]| {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(body).file_name(name),
            )
            .text("Description", "collects things")
            .text("ParametersDescription", "-Full")
            .text("HasParameters", "true")
            .text("OverrideIfExists", if over { "true" } else { "false" });
        h.http
            .post(h.url("/api/libraryfiles"))
            .bearer_auth(&h.token)
            .multipart(form)
            .send()
    };
    let r = upload("collect.ps1", false, b"Write-Output 1")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["fileName"], "collect.ps1");
    assert_eq!(v["sha256"], sha256_hex(b"Write-Output 1"));
    assert_eq!(v["hasParameters"], true);
    let r = upload("collect.ps1", false, b"Write-Output 2")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = upload("collect.ps1", true, b"Write-Output 2")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = upload("bad name!.ps1", true, b"x").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (_, _, v) = h.get("/api/libraryfiles").await;
    let names: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fileName"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"collect.ps1") && names.contains(&"triage.ps1"),
        "{names:?}"
    );

    let (_, _, v) = h
        .submit(
            M1,
            json!([put_file("collect.ps1"), run_script("collect.ps1", "")]),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    h.advance(60);
    assert_eq!(h.action(&id).await["status"], "Succeeded");

    let del = |n: &str| {
        h.http
            .delete(h.url(&format!("/api/libraryfiles/{n}")))
            .bearer_auth(&h.token)
            .send()
    };
    assert_eq!(
        del("collect.ps1").await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        del("collect.ps1").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let (_, _, v) = h.submit(M1, json!([put_file("collect.ps1")])).await;
    let id = v["id"].as_str().unwrap().to_string();
    h.advance(60);
    assert_eq!(h.action(&id).await["status"], "Failed");
}

#[tokio::test]
async fn library_uploads_over_the_api_limit_are_refused() {
    let mut c = config();
    c.sim.library_max_bytes = 1024;
    let h = start(c).await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![0u8; 2048]).file_name("big.bin"),
    );
    let r = h
        .http
        .post(h.url("/api/libraryfiles"))
        .bearer_auth(&h.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn control_endpoints_over_http() {
    let h = start(config()).await;
    let (_, _, _) = h.submit(M1, json!([get_file(FILE)])).await;
    let t0: Value = h
        .http
        .get(h.url("/sim/time"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = h
        .http
        .post(h.url("/sim/advance"))
        .json(&json!({"seconds": 86400}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t1: Value = h
        .http
        .get(h.url("/sim/time"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(t0["now"].as_str().unwrap().starts_with("2026-01-01"));
    assert!(t1["now"].as_str().unwrap().starts_with("2026-01-02"));
    let stats: Value = h
        .http
        .get(h.url("/sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["actions_created"], 1);
    assert_eq!(stats["calls"]["submit"]["201"], 1);
    let actions: Value = h
        .http
        .get(h.url("/sim/actions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(actions["value"][0]["status"], "Succeeded");
    let faults = json!({"seed": 1, "endpoints": {"list_actions": {"p503": 1.0}}});
    assert_eq!(
        h.http
            .put(h.url("/sim/faults"))
            .json(&faults)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.get("/api/machineactions").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        h.http
            .post(h.url("/sim/reset"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(h.sim.stats().actions_created, 0);
    assert!(h.sim.actions().is_empty());
}

#[tokio::test]
async fn the_example_fleet_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fleet.example.toml");
    let c = mde_sim::SimConfig::from_toml_file(path).unwrap();
    assert_eq!(c.devices.len(), 4);
    assert!(
        c.devices
            .iter()
            .any(|d| !d.online && d.online_after_secs.is_some())
    );
    let err = mde_sim::SimConfig::from_toml_str("[[devices]]\nmachine_id = \"xyz\"\n").unwrap_err();
    assert!(err.to_string().contains("40 hex"), "{err}");
    let err =
        mde_sim::SimConfig::from_toml_str("[sim]\ntime_scale = 1.0\nbogus = 1\n").unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}
