//! The simulator's `/sim` control endpoints over HTTP, and the example fleet config.
//!
//! The behaviour asserted here is Defender's as summarised in docs/testing.md, section
//! "The Defender simulator".

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn control_endpoints_over_http() {
    let h = start(config()).await;
    let (_, _, _) = h.submit(M1, json!([get_file(FILE)])).await;
    let t0: Value = h.sim_get("/sim/time").await;
    let (s, _, _) = reply(
        h.http
            .post(h.url("/sim/advance"))
            .json(&json!({"seconds": 86400})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let t1: Value = h.sim_get("/sim/time").await;
    assert!(t0["now"].as_str().unwrap().starts_with("2026-01-01"));
    assert!(t1["now"].as_str().unwrap().starts_with("2026-01-02"));
    let stats: Value = h.sim_get("/sim/stats").await;
    assert_eq!(stats["actions_created"], 1);
    assert_eq!(stats["calls"]["submit"]["201"], 1);
    let actions: Value = h.sim_get("/sim/actions").await;
    assert_eq!(actions["value"][0]["status"], "Succeeded");
    let faults = json!({"seed": 1, "endpoints": {"list_actions": {"p503": 1.0}}});
    assert_eq!(
        reply(h.http.put(h.url("/sim/faults")).json(&faults))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.get("/api/machineactions").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        reply(h.http.post(h.url("/sim/reset"))).await.0,
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
    // The scripts the pipeline's bundled playbooks run start missing (a fresh tenant: the local
    // stack's demo shows the pipeline uploading them); the others are seeded.
    let seeded = |name: &str| c.library.iter().any(|f| f.name.eq_ignore_ascii_case(name));
    for s in &c.scripts {
        let shipped = ["triage.ps1", "minidump.ps1"].contains(&s.name.as_str());
        assert_eq!(seeded(&s.name), !shipped, "{}", s.name);
    }
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
