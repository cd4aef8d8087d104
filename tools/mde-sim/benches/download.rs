//! Prints the download rate of a GetFile result over loopback and the process's peak RSS.
//! Run: `cargo bench -p mde-sim --bench download` (MDE_SIM_BENCH_MIB sets the file size, default 1024).

use std::time::Instant;

use futures_util::StreamExt;
use mde_sim::{Device, DeviceFile, SimConfig, SimServer};
use serde_json::{Value, json};

const MACHINE: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
const PATH: &str = "D:\\bench\\big.bin";

/// Sends a request and reads its JSON answer.
async fn send_json(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let mib: u64 = std::env::var("MDE_SIM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let config = SimConfig {
        devices: vec![Device {
            machine_id: MACHINE.into(),
            files: vec![DeviceFile {
                path: PATH.into(),
                size: mib << 20,
                secs: Some(1),
            }],
            ..Device::default()
        }],
        ..SimConfig::default()
    };
    let client = config.clients[0].clone();
    let sim = SimServer::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let http = reqwest::Client::new();
    let token = send_json(
        http.post(format!(
            "{}/{}/oauth2/v2.0/token",
            sim.login_base, client.tenant_id
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &client.client_id),
            ("client_secret", &client.client_secret),
            ("scope", "https://api.securitycenter.microsoft.com/.default"),
        ]),
    )
    .await;
    let token = token["access_token"].as_str().unwrap().to_string();
    let action = send_json(
        http.post(format!("{}/api/machines/{MACHINE}/runliveresponse", sim.api_base))
        .bearer_auth(&token)
        .json(&json!({"Commands": [{"type": "GetFile", "params": [{"key": "Path", "value": PATH}]}], "Comment": "bench"})),
    )
    .await;
    sim.advance(time::Duration::seconds(60));
    let id = action["id"].as_str().unwrap();
    let link = send_json(
        http.get(format!(
            "{}/api/machineactions/{id}/GetLiveResponseResultDownloadLink(index=0)",
            sim.api_base
        ))
        .bearer_auth(&token),
    )
    .await;
    let url = link["value"].as_str().unwrap().to_string();
    for round in ["first (includes the CRC pass)", "second (CRC cached)"] {
        let started = Instant::now();
        let mut stream = http.get(&url).send().await.unwrap().bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            total += chunk.unwrap().len() as u64;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "mde-sim download {round}: {total} bytes in {secs:.2} s = {:.0} MB/s",
            total as f64 / secs / 1e6
        );
    }
    println!(
        "peak RSS of the process (simulator + streaming client): {:.1} MiB",
        peak_rss_kib() as f64 / 1024.0
    );
}
