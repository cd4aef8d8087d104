//! The simulator's live response library: upload, list, override, delete, PutFile against it, and
//! the API's size limit.
//!
//! The behaviour asserted here is Defender's as summarised in the repository's README.md, section
//! "The Defender simulator".

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

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
        h.api(Method::POST, "/api/libraryfiles")
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

    let id = h
        .submit_id(
            M1,
            json!([put_file("collect.ps1"), run_script("collect.ps1", "")]),
        )
        .await;
    h.advance(60);
    assert_eq!(h.action(&id).await["status"], "Succeeded");

    let del = |n: &str| {
        h.api(Method::DELETE, &format!("/api/libraryfiles/{n}"))
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
    let id = h.submit_id(M1, json!([put_file("collect.ps1")])).await;
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
        .api(Method::POST, "/api/libraryfiles")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}
