//! The simulator's machine actions: submission validation, the session lifecycle (pending, in
//! progress, final), command failures and timeouts, offline devices, cancel, one session per
//! device, list filters and paging.
//!
//! The behaviour asserted here is Defender's as summarised in docs/testing.md, section
//! "The Defender simulator".

use crate::common::*;
use reqwest::{Method, StatusCode};
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
        .api(Method::POST, &path)
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
    let id = h
        .submit_id(
            M1,
            json!([
                run_script("triage.ps1", ""),
                get_file("C:\\missing.txt"),
                run_script("triage.ps1", "")
            ]),
        )
        .await;
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
    let id = h.submit_id(M2, json!([run_script("fails.ps1", "")])).await;
    h.advance(60);
    assert_eq!(h.action(&id).await["status"], "Succeeded");
    // An unknown script fails the action.
    let id = h
        .submit_id(
            M3,
            json!([run_script("nope.ps1", ""), put_file("missing.bin")]),
        )
        .await;
    h.advance(60);
    let v = h.action(&id).await;
    assert_eq!(v["status"], "Failed");
    assert_eq!(commands(&v)[1].1, "Created");
}

/// Runs a session to just before its first command times out (`before` seconds), then past it:
/// the action fails with that command's timeout error.
async fn times_out(h: &Harness, id: &str, before: i64, minutes: u32) -> Value {
    h.advance(before);
    assert_eq!(h.action(id).await["status"], "InProgress");
    h.advance(2);
    let v = h.action(id).await;
    assert_eq!(v["status"], "Failed");
    assert!(
        v["commands"][0]["errors"][0]
            .as_str()
            .unwrap()
            .contains(&format!("timed out after {minutes} minutes"))
    );
    v
}

#[tokio::test]
async fn commands_time_out_as_documented() {
    let mut c = config();
    c.devices[1].files[0].secs = Some(1801);
    let h = start(c).await;
    // RunScript: 10 minutes.
    let id = h
        .submit_id(M1, json!([run_script("slow.ps1", ""), get_file(FILE)]))
        .await;
    let v = times_out(&h, &id, 5 + 599, 10).await;
    assert_eq!(commands(&v)[1].1, "Created");
    // GetFile: 30 minutes.
    let id = h.submit_id(M2, json!([get_file(FILE)])).await;
    times_out(&h, &id, 5 + 1799, 30).await;
}

#[tokio::test]
async fn offline_devices_queue_then_time_out_or_come_online() {
    let mut c = config();
    c.devices[2].online = false; // never online
    c.devices[3].online = false;
    c.devices[3].online_after_secs = Some(7200);
    c.sim.queue_window_secs = 3 * 24 * 3600;
    let h = start(c).await;
    let never = h.submit_id(M3, json!([get_file(FILE)])).await;
    let later = h.submit_id(M4, json!([get_file(FILE)])).await;
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
    let id = h.submit_id(M3, json!([get_file(FILE)])).await;
    h.advance(7199);
    assert_eq!(h.action(&id).await["status"], "Pending");
    h.advance(2);
    assert_eq!(h.action(&id).await["status"], "TimeOut");
}

#[tokio::test]
async fn cancel_ends_a_running_session_and_only_once() {
    let h = start(config()).await;
    let id = h.submit_id(M1, json!([get_file(FILE)])).await;
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
