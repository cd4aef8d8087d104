//! The simulator's result links and blob host: which commands get a link, the documented content,
//! Range requests, expiry and altered links.
//!
//! The behaviour asserted here is Defender's as summarised in docs/testing.md, section
//! "The Defender simulator".

use std::io::Read;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn result_links_only_for_completed_commands_with_results() {
    let h = start(config()).await;
    let id = h.submit_id(M1, json!([get_file(FILE)])).await;
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
    let r = h.fetch(v["value"].as_str().unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["script_name"], "triage.ps1");
    assert_eq!(t["exit_code"], 0);
    assert_eq!(t["script_output"], "triage of host-1e5b with -Quick");
    assert_eq!(t["script_errors"], "");

    let url = h.link_url(&id, 1).await;
    let r = h.fetch(&url).await;
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
    let again = h.download(&url).await;
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
        .fetch(v["value"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert!(t.get("script_error").is_some() && t.get("script_errors").is_none());
}

#[tokio::test]
async fn range_requests_return_exactly_the_asked_bytes() {
    let h = start(config()).await;
    let id = finished_run(&h).await;
    let url = h.link_url(&id, 1).await;
    let whole = h.download(&url).await;
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
    let url = h.link_url(&id, 1).await;
    h.advance(29 * 60);
    assert_eq!(h.fetch(&url).await.status(), StatusCode::OK);
    h.advance(61);
    let r = h.fetch(&url).await;
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
        h.fetch(v["value"].as_str().unwrap()).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn altered_links_are_refused() {
    let h = start(config()).await;
    let id = finished_run(&h).await;
    let url = h.link_url(&id, 1).await;
    let later_se = url.replace("se=2026-01-01T00%3A", "se=2027-01-01T00%3A");
    let bad_sig = url.replace("&sig=", "&sig=A");
    let no_sig = url.split("&sig=").next().unwrap().to_string();
    let other_blob = url.replacen(
        "CustomPlaybookCommandOutput/",
        "CustomPlaybookCommandOutput/0",
        1,
    );
    for u in [later_se, bad_sig, no_sig, other_blob] {
        assert_eq!(h.fetch(&u).await.status(), StatusCode::FORBIDDEN, "{u}");
    }
    // The bearer token is not what opens a link; a client that sends one anyway is counted.
    assert_eq!(h.fetch(&url).await.status(), StatusCode::OK);
    assert_eq!(h.sim.stats().blob_requests_with_authorization, 0);
    h.http.get(&url).bearer_auth(&h.token).send().await.unwrap();
    assert_eq!(h.sim.stats().blob_requests_with_authorization, 1);
}
