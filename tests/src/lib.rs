//! Shared set-up for the integration tests: moto (started by `./dev test`), the simulator, and
//! clients wired the way the functions wire them.

use std::net::SocketAddr;

use mde_sim::{Device, DeviceFile, Script, SimConfig, SimServer};
use shared::defender::{
    CredentialSource, Credentials, DefenderClient, StaticCredentials, TokenProvider, http_client,
};

pub const M1: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
pub const M2: &str = "2f6cd0e8f524eea8a13d3a43f529813c95e1dd18";
pub const FILE: &str = "C:\\windows\\TEMP\\OfficeClickToRun.dmp.zip";
pub const SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

/// moto's endpoint; the tests need the real emulator, so its absence is an error, not a skip.
pub fn moto_endpoint() -> String {
    std::env::var("LR_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "LR_MOTO_ENDPOINT is not set: run the tests with `./dev test` (it starts moto), \
             or start one with `./dev moto` and export what it prints"
        )
    })
}

/// SDK configuration pointed at moto.
pub async fn aws() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

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

pub fn sim_config() -> SimConfig {
    let mut c = SimConfig::default();
    c.devices = vec![device(M1, 200_000), device(M2, 200_000)];
    c.scripts = vec![Script {
        name: "triage.ps1".into(),
        output: "triage of {machine}".into(),
        ..Script::default()
    }];
    c
}

pub async fn start_sim(config: SimConfig) -> SimServer {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
    SimServer::start(config, addr)
        .await
        .expect("simulator starts")
}

pub fn sim_credentials(config: &SimConfig) -> Credentials {
    let c = &config.clients[0];
    Credentials::from_json(
        &serde_json::json!({"tenant_id": c.tenant_id, "client_id": c.client_id, "client_secret": c.client_secret})
            .to_string(),
    )
    .expect("valid credentials")
}

pub fn client_with<C: CredentialSource>(sim: &SimServer, source: C) -> DefenderClient<C> {
    let http = http_client(std::time::Duration::from_secs(30)).expect("http client");
    let auth = TokenProvider::new(source, http.clone(), &sim.login_base, SCOPE);
    DefenderClient::new(http, &sim.api_base, auth)
}

pub fn client(sim: &SimServer, config: &SimConfig) -> DefenderClient<StaticCredentials> {
    client_with(sim, StaticCredentials(sim_credentials(config)))
}

/// The simulator's documented file content (MDE-SIM content formula), computed here independently.
pub fn expected_file(machine_id: &str, path: &str, size: u64) -> Vec<u8> {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!(
        "mde-sim/v1\n{}\n{}\n{}",
        machine_id.to_lowercase(),
        path,
        size
    ));
    let seed = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    let mut out = Vec::with_capacity(size as usize + 8);
    let mut k = 0u64;
    while (out.len() as u64) < size {
        let mut z = seed.wrapping_add(k).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
        k += 1;
    }
    out.truncate(size as usize);
    out
}
