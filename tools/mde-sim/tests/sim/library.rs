//! The simulator's live response library: upload, list, override, delete, PutFile and RunScript
//! against it (only what the library holds at submission runs; a transcript names the version that
//! ran), the seeded library, and the API's size limit.
//!
//! The behaviour asserted here is Defender's as summarised in docs/testing.md, section
//! "The Defender simulator".

use crate::common::*;
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
            json!([put_file("collect.ps1"), run_script("collect.ps1", "-Full")]),
        )
        .await;
    h.advance(60);
    assert_eq!(h.action(&id).await["status"], "Succeeded");
    // A library script with no `[[scripts]]` entry exits 0 and names the version that ran.
    let t = h.transcript(&id, 1).await;
    assert_eq!(t["exit_code"], 0);
    assert_eq!(
        t["script_output"],
        format!(
            "collect.ps1 sha256={} args=-Full",
            sha256_hex(b"Write-Output 2")
        )
    );

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

/// A config whose `[[scripts]]` describe `sync.ps1` (output naming the version) but whose library
/// does not hold it: a pipeline has to upload it first.
fn unsynced() -> mde_sim::SimConfig {
    let mut c = config();
    c.scripts.push(mde_sim::Script {
        name: "sync.ps1".into(),
        output: "sync on {machine} ({args}) version {sha256}".into(),
        ..mde_sim::Script::default()
    });
    c
}

#[tokio::test]
async fn a_configured_script_missing_from_the_library_fails() {
    let h = start(unsynced()).await;
    let (_, _, v) = h.get("/api/libraryfiles").await;
    let names: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fileName"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"sync.ps1"),
        "scripts do not seed: {names:?}"
    );
    let id = h
        .submit_id(M1, json!([run_script("sync.ps1", ""), get_file(FILE)]))
        .await;
    h.advance(60);
    let v = h.action(&id).await;
    assert_eq!(v["status"], "Failed");
    assert_eq!(
        v["commands"][0]["errors"][0],
        "Script sync.ps1 was not found in the library"
    );
    assert_eq!(v["commands"][1]["commandStatus"], "Created");
}

#[tokio::test]
async fn an_uploaded_script_runs_and_its_transcript_names_the_uploaded_version() {
    let h = start(unsynced()).await;
    let content = b"Write-Output 'sync v1'";
    let (s, _, v) = h.upload("sync.ps1", content, false).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["sha256"], sha256_hex(content));
    // Names compare without regard to case.
    let id = h
        .submit_id(M1, json!([run_script("SYNC.ps1", "-Now")]))
        .await;
    h.advance(60);
    assert_eq!(h.action(&id).await["status"], "Succeeded");
    let t = h.transcript(&id, 0).await;
    assert_eq!(t["script_name"], "sync.ps1");
    assert_eq!(
        t["script_output"],
        format!("sync on host-1e5b (-Now) version {}", sha256_hex(content))
    );
    let stats = h.sim.stats();
    assert_eq!(stats.library_uploads, 1);
    assert_eq!(stats.library_lists, 0);
}

#[tokio::test]
async fn two_versions_of_a_script_give_two_hashes_in_transcripts() {
    let mut c = unsynced();
    // A stale version, as an earlier sync left it.
    c.library.push(seed("sync.ps1", "Write-Output 'sync v1'"));
    let h = start(c).await;
    let (_, _, v) = h.get("/api/libraryfiles").await;
    let listed = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fileName"] == "sync.ps1")
        .unwrap()
        .clone();
    assert_eq!(listed["sha256"], sha256_hex(b"Write-Output 'sync v1'"));

    let old = h.submit_id(M1, json!([run_script("sync.ps1", "")])).await;
    // The sync replaces it while that session runs: the session keeps the version it was
    // submitted with; the next one runs the new version.
    let (s, _, _) = h.upload("sync.ps1", b"Write-Output 'sync v2'", true).await;
    assert_eq!(s, StatusCode::OK);
    let new = h.submit_id(M2, json!([run_script("sync.ps1", "")])).await;
    h.advance(60);
    let (a, b) = (h.transcript(&old, 0).await, h.transcript(&new, 0).await);
    let version = |t: &Value| {
        t["script_output"]
            .as_str()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(version(&a), sha256_hex(b"Write-Output 'sync v1'"));
    assert_eq!(version(&b), sha256_hex(b"Write-Output 'sync v2'"));
    assert_ne!(version(&a), version(&b));
    let stats = h.sim.stats();
    assert_eq!(stats.library_lists, 1);
    assert_eq!(stats.library_uploads, 1);
    assert_eq!(stats.calls["library_list"]["200"], 1);
    assert_eq!(stats.calls["library_upload"]["200"], 1);
}

#[tokio::test]
async fn a_reset_restores_the_seeded_library() {
    let h = start(unsynced()).await;
    let (s, _, _) = h.upload("sync.ps1", b"v1", false).await;
    assert_eq!(s, StatusCode::OK);
    h.sim.reset();
    let id = h.submit_id(M1, json!([run_script("sync.ps1", "")])).await;
    h.advance(60);
    assert_eq!(h.action(&id).await["status"], "Failed");
    assert_eq!(h.sim.stats().library_uploads, 0);
}

#[tokio::test]
async fn seeded_duplicates_and_bad_names_are_refused() {
    let toml = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("[[library]]\nname = \"{n}\"\ncontent = \"x\"\n"))
            .collect::<String>()
    };
    let ok = mde_sim::SimConfig::from_toml_str(&toml(&["a.ps1", "b.ps1"])).unwrap();
    assert_eq!(ok.library.len(), 2);
    assert_eq!(ok.library[0].sha256(), sha256_hex(b"x"));
    let err = mde_sim::SimConfig::from_toml_str(&toml(&["Triage.ps1", "b.ps1", "triage.PS1"]))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"triage.PS1\" ([[library]] entry 3) is seeded twice")
            && msg.contains("entry 1 is \"Triage.ps1\""),
        "{msg}"
    );
    let err = mde_sim::SimConfig::from_toml_str(&toml(&["bad name.ps1"])).unwrap_err();
    assert!(err.to_string().contains("\"bad name.ps1\""), "{err}");
    let err = mde_sim::SimConfig::from_toml_str("[[library]]\nname = \"a.ps1\"\nsha256 = \"00\"\n")
        .unwrap_err();
    assert!(
        err.to_string().contains("sha256"),
        "unknown fields are refused: {err}"
    );
    // The server refuses them too.
    let mut c = config();
    c.library.push(seed("TRIAGE.ps1", "again"));
    let addr = "127.0.0.1:0".parse().unwrap();
    let err = mde_sim::SimServer::start(c, addr).await.err().unwrap();
    assert!(err.to_string().contains("\"TRIAGE.ps1\""), "{err}");
}
