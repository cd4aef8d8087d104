#![allow(dead_code)]
//! Helpers for the simulator's tests (each file in `tests/` is one family: auth, actions, limits,
//! downloads, faults, library, control): a simulator on an ephemeral port, a raw HTTP client, and
//! one home for sending a request and reading its answer (`reply`, `Harness::api`).

use std::net::SocketAddr;

use mde_sim::{Client, Device, DeviceFile, LibrarySeed, Script, SimConfig, SimServer};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const M1: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
pub const M2: &str = "2f6cd0e8f524eea8a13d3a43f529813c95e1dd18";
pub const M3: &str = "3a7de1f9a635ffb9b24e4b54a63a924da6f2ee29";
pub const M4: &str = "4b8ef2a0b746a0cac35f5c65b74ba35eb7a3ff3a";
pub const FILE: &str = "C:\\windows\\TEMP\\OfficeClickToRun.dmp.zip";

pub fn device(id: &str) -> Device {
    Device {
        machine_id: id.into(),
        dns_name: format!("host-{}", &id[..4]),
        command_secs: 10,
        files: vec![DeviceFile {
            path: FILE.into(),
            size: 300_000,
            secs: None,
        }],
        ..Device::default()
    }
}

pub fn config() -> SimConfig {
    let mut c = SimConfig::default();
    c.sim.start_time = Some("2026-01-01T00:00:00Z".into());
    // Tests jump days ahead; the token-expiry test sets the documented lifetime itself.
    c.sim.token_lifetime_secs = 30 * 24 * 3600;
    c.devices = vec![device(M1), device(M2), device(M3), device(M4)];
    c.scripts = vec![
        Script {
            name: "triage.ps1".into(),
            output: "triage of {machine} with {args}".into(),
            ..Script::default()
        },
        Script {
            name: "fails.ps1".into(),
            exit_code: 1,
            errors: "Access is denied.".into(),
            ..Script::default()
        },
        Script {
            name: "slow.ps1".into(),
            secs: Some(700),
            ..Script::default()
        },
    ];
    // Scripts run only from the library: seed each, as a pipeline's sync would have left it.
    c.library = ["triage.ps1", "fails.ps1", "slow.ps1"]
        .into_iter()
        .map(|name| seed(name, &format!("# {name}, version 1")))
        .collect();
    c
}

/// A library file seeded with `content` (its listed SHA-256 is that of the content).
pub fn seed(name: &str, content: &str) -> LibrarySeed {
    LibrarySeed {
        name: name.into(),
        content: content.into(),
        ..LibrarySeed::default()
    }
}

pub struct Harness {
    pub sim: SimServer,
    pub http: reqwest::Client,
    pub token: String,
}

pub async fn start(config: SimConfig) -> Harness {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = SimServer::start(config, addr).await.unwrap();
    let http = reqwest::Client::new();
    let mut h = Harness {
        sim,
        http,
        token: String::new(),
    };
    h.token = h.new_token().await;
    h
}

impl Harness {
    pub async fn token_response(&self, tenant: &str, client: &Client) -> reqwest::Response {
        self.http
            .post(format!(
                "{}/{tenant}/oauth2/v2.0/token",
                self.sim.login_base
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client.client_id.as_str()),
                ("client_secret", client.client_secret.as_str()),
                ("scope", "https://api.securitycenter.microsoft.com/.default"),
            ])
            .send()
            .await
            .unwrap()
    }

    pub async fn new_token(&self) -> String {
        let c = Client::default();
        let r = self.token_response(&c.tenant_id, &c).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.api_base)
    }

    /// A request to the API at `path`, with the harness's bearer token.
    pub fn api(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub async fn get(&self, path: &str) -> Reply {
        reply(self.api(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        reply(self.api(Method::POST, path).json(body)).await
    }

    pub async fn submit(&self, machine: &str, commands: Value) -> Reply {
        self.post(
            &format!("/api/machines/{machine}/runliveresponse"),
            &json!({"Commands": commands, "Comment": "test run"}),
        )
        .await
    }

    /// Submits and returns the new action's id.
    pub async fn submit_id(&self, machine: &str, commands: Value) -> String {
        let (_, _, v) = self.submit(machine, commands).await;
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn action(&self, id: &str) -> Value {
        let (s, _, v) = self.get(&format!("/api/machineactions/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    pub async fn link(&self, id: &str, index: usize) -> (StatusCode, Value) {
        let (s, _, v) = self
            .get(&format!(
                "/api/machineactions/{id}/GetLiveResponseResultDownloadLink(index={index})"
            ))
            .await;
        (s, v)
    }

    /// The URL of a result link (the link call's `value`), whatever the call answered.
    pub async fn link_url(&self, id: &str, index: usize) -> String {
        let (_, v) = self.link(id, index).await;
        v["value"].as_str().unwrap().to_string()
    }

    /// A plain GET of a full URL (a result link): no bearer token.
    pub async fn fetch(&self, url: &str) -> reqwest::Response {
        self.http.get(url).send().await.unwrap()
    }

    /// The whole body behind a result link.
    pub async fn download(&self, url: &str) -> bytes::Bytes {
        self.fetch(url).await.bytes().await.unwrap()
    }

    /// A `/sim` control endpoint's JSON (no auth).
    pub async fn sim_get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Uploads `content` to the library as `name` (`OverrideIfExists` as `over`), as a pipeline's
    /// sync does.
    pub async fn upload(&self, name: &str, content: &[u8], over: bool) -> Reply {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(content.to_vec()).file_name(name.to_string()),
            )
            .text("OverrideIfExists", if over { "true" } else { "false" });
        reply(self.api(Method::POST, "/api/libraryfiles").multipart(form)).await
    }

    /// The transcript of a completed RunScript: command `index` of action `id`.
    pub async fn transcript(&self, id: &str, index: usize) -> Value {
        let url = self.link_url(id, index).await;
        self.fetch(&url).await.json().await.unwrap()
    }

    pub fn advance(&self, secs: i64) {
        self.sim.advance(time::Duration::seconds(secs));
    }
}

/// What a call answered: status, headers, and the body as JSON (`Null` when it is not JSON).
pub type Reply = (StatusCode, HeaderMap, Value);

/// Sends a request and reads the answer.
pub async fn reply(request: RequestBuilder) -> Reply {
    let r = request.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

/// A run on M1 whose three commands (RunScript, GetFile, PutFile) have all completed.
pub async fn finished_run(h: &Harness) -> String {
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

pub fn run_script(name: &str, args: &str) -> Value {
    json!({"type": "RunScript", "params": [{"key": "ScriptName", "value": name}, {"key": "Args", "value": args}]})
}

pub fn get_file(path: &str) -> Value {
    json!({"type": "GetFile", "params": [{"key": "Path", "value": path}]})
}

pub fn put_file(name: &str) -> Value {
    json!({"type": "PutFile", "params": [{"key": "FileName", "value": name}]})
}

/// The documented content formula (docs/testing.md, "The Defender simulator"), written out again here so
/// the test does not trust the simulator's code.
pub fn expected_file(machine_id: &str, path: &str, size: u64) -> Vec<u8> {
    let d = Sha256::digest(format!(
        "mde-sim/v1\n{}\n{}\n{}",
        machine_id.to_lowercase(),
        path,
        size
    ));
    let seed = u64::from_le_bytes(d[..8].try_into().unwrap());
    let mut out = Vec::with_capacity(size as usize + 8);
    let mut k = 0u64;
    while (out.len() as u64) < size {
        let mut z = seed.wrapping_add(k).wrapping_add(0x9E3779B97F4A7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
        k += 1;
    }
    out.truncate(size as usize);
    out
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex_lower(&Sha256::digest(b))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
