//! The Defender simulator: machine ids, devices, a running simulator, clients of it, injected
//! faults, and a live response run to its end.

use std::net::SocketAddr;

use mde_sim::{Device, DeviceFile, Script, SimConfig, SimServer};
use shared::defender::{
    ActionId, Command, CredentialSource, Credentials, DefenderClient, DownloadLink,
    LiveResponseRequest, MachineId, StaticCredentials, TokenProvider, http_client,
};
use shared::ports::Defender;

pub const M1: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
pub const M2: &str = "2f6cd0e8f524eea8a13d3a43f529813c95e1dd18";
pub const FILE: &str = "C:\\windows\\TEMP\\OfficeClickToRun.dmp.zip";
pub const SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

/// The `i`-th machine id of a fleet: 40 hex digits counting up from `series`, so that fleets of
/// different tests (and their devices) do not meet.
pub fn machine(series: u64, i: usize) -> String {
    format!("{:040x}", series + i as u64)
}

/// A machine id the tests know to be valid.
pub fn machine_id(id: &str) -> MachineId {
    MachineId::parse(id).expect("a valid machine id")
}

/// A device holding one file, `FILE`, of `file_size` bytes.
pub fn device(id: &str, file_size: u64) -> Device {
    Device {
        machine_id: id.into(),
        dns_name: format!("host-{}.test", &id[..6]),
        command_secs: 10,
        files: vec![DeviceFile {
            path: FILE.into(),
            size: file_size,
            secs: None,
        }],
        ..Device::default()
    }
}

/// Devices M1 and M2 and the script `triage.ps1`, with a library holding the bundled files.
pub fn sim_config() -> SimConfig {
    SimConfig {
        devices: vec![device(M1, 200_000), device(M2, 200_000)],
        scripts: vec![Script {
            name: "triage.ps1".into(),
            output: "triage of {machine}".into(),
            ..Script::default()
        }],
        library: crate::library::bundled_seeds(),
        ..SimConfig::default()
    }
}

pub async fn start_sim(config: SimConfig) -> SimServer {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
    SimServer::start(config, addr)
        .await
        .expect("simulator starts")
}

/// The simulator's first client as the credentials secret holds it (JSON).
pub fn credentials_json(config: &SimConfig) -> String {
    let c = &config.clients[0];
    serde_json::json!({"tenant_id": c.tenant_id, "client_id": c.client_id, "client_secret": c.client_secret})
        .to_string()
}

pub fn sim_credentials(config: &SimConfig) -> Credentials {
    Credentials::from_json(&credentials_json(config)).expect("valid credentials")
}

pub fn client_with<C: CredentialSource>(sim: &SimServer, source: C) -> DefenderClient<C> {
    let http = http_client(std::time::Duration::from_secs(30)).expect("http client");
    let auth = TokenProvider::new(source, http.clone(), &sim.login_base, SCOPE);
    DefenderClient::new(http, &sim.api_base, auth)
}

pub fn client(sim: &SimServer, config: &SimConfig) -> DefenderClient<StaticCredentials> {
    client_with(sim, StaticCredentials(sim_credentials(config)))
}

/// Injected faults for one simulator endpoint; half of the 429s come without Retry-After.
pub fn flaky(p429: f64, p500: f64, p503: f64) -> mde_sim::EndpointFaults {
    mde_sim::EndpointFaults {
        p429,
        p429_without_retry_after: 0.5,
        p500,
        p503,
    }
}

/// A live response on `machine`, run to its end in the simulator (a simulated minute passes), so
/// that its results are ready.
pub async fn finished_action(
    sim: &SimServer,
    defender: &impl Defender,
    machine: &MachineId,
    commands: &[Command],
    comment: &str,
) -> ActionId {
    let action = defender
        .run_live_response(
            machine,
            &LiveResponseRequest {
                commands: commands.to_vec(),
                comment: comment.into(),
            },
        )
        .await
        .expect("the simulator accepts the live response");
    sim.advance(time::Duration::seconds(60));
    action.id
}

/// The body behind a result's download link (the simulator's blob host).
pub async fn download(link: &DownloadLink) -> bytes::Bytes {
    reqwest::get(link.url.expose())
        .await
        .expect("the blob host answers")
        .bytes()
        .await
        .expect("the whole body")
}

/// The simulator's release binary running in its own process (the benchmarks measure against it,
/// not against a server sharing their runtime); killed, and its files removed, when dropped.
pub struct SimProcess {
    process: std::process::Child,
    dir: std::path::PathBuf,
    pub api_base: String,
    pub login_base: String,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `binary` (the simulator's release build) with `config`, in a directory named after this
/// process and `tag`, and waits (up to 20 s) for the addresses it writes once it listens.
pub fn spawn_sim(binary: &str, config: &SimConfig, tag: &str) -> SimProcess {
    use std::time::{Duration, Instant};
    let dir = std::env::temp_dir().join(format!("lr-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory for the simulator's files");
    let config_path = dir.join("fleet.toml");
    let urls = dir.join("urls.json");
    std::fs::write(
        &config_path,
        toml::to_string(config).expect("a simulator configuration"),
    )
    .expect("write the simulator's configuration");
    let process = std::process::Command::new(binary)
        .arg("--config")
        .arg(&config_path)
        .arg("--urls-file")
        .arg(&urls)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary}: {e} (build it: cargo build --release -p mde-sim)"));
    let until = Instant::now() + Duration::from_secs(20);
    let v: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&urls)
            && let Ok(v) = serde_json::from_str(&text)
        {
            break v;
        }
        assert!(Instant::now() < until, "the simulator did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let base = |name: &str| {
        v[name]
            .as_str()
            .unwrap_or_else(|| panic!("the simulator wrote no {name}"))
            .to_string()
    };
    SimProcess {
        api_base: base("api_base"),
        login_base: base("login_base"),
        process,
        dir,
    }
}
