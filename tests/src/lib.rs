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
    SimConfig {
        devices: vec![device(M1, 200_000), device(M2, 200_000)],
        scripts: vec![Script {
            name: "triage.ps1".into(),
            output: "triage of {machine}".into(),
            ..Script::default()
        }],
        ..SimConfig::default()
    }
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

/// The whole local stack for one test: the simulator, the queues/bucket/secret on moto under a
/// unique prefix, and the four stages running under the local event-source runner.
pub struct Stack {
    pub sim: SimServer,
    pub sim_config: SimConfig,
    pub sdk: aws_config::SdkConfig,
    pub stack: local_stack::ProvisionedStack,
    pub env: std::collections::BTreeMap<String, String>,
    pub pipeline: Option<local_stack::runner::LocalPipeline>,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
}

/// Settings that make a run take seconds: Defender time passes 20 times faster, polls every second,
/// and the budgets count in the simulator's minutes.
pub fn fast_env() -> Vec<(&'static str, String)> {
    vec![
        ("POLL_DELAYS_SECS", "1".into()),
        ("RETRY_BASE_SECS", "1".into()),
        ("RETRY_MAX_SECS", "4".into()),
        ("DOWNLOAD_ALLOWED_HOSTS", "127.0.0.1".into()),
        // Defender's minute at the simulator's time scale (20x: 3 s), with a margin for clock skew.
        ("BUDGET_MINUTE_MS", "3300".into()),
    ]
}

impl Stack {
    /// Starts everything; `extra` adds or overrides function environment variables.
    pub async fn start(mut sim_config: SimConfig, extra: &[(&str, String)]) -> Self {
        if sim_config.sim.time_scale == 1.0 {
            sim_config.sim.time_scale = 20.0;
        }
        let sim = start_sim(sim_config.clone()).await;
        let sdk = aws().await;
        let c = &sim_config.clients[0];
        let creds = serde_json::json!({"tenant_id": c.tenant_id, "client_id": c.client_id, "client_secret": c.client_secret});
        let stack = local_stack::provision(
            &sdk,
            &local_stack::StackNames {
                prefix: unique("e2e"),
            },
            &creds.to_string(),
            local_stack::ProvisionOptions {
                tls_only_policy: false,
            },
        )
        .await
        .expect("provisioning on moto");
        let mut env = stack.env.clone();
        env.insert("MDE_API_BASE_URL".into(), sim.api_base.clone());
        env.insert("MDE_LOGIN_BASE_URL".into(), sim.login_base.clone());
        for (k, v) in fast_env() {
            env.insert(k.into(), v);
        }
        for (k, v) in extra {
            env.insert(k.to_string(), v.clone());
        }
        let s3 = shared::adapters::s3::s3_client(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let mut me = Self {
            sim,
            sim_config,
            sdk,
            stack,
            env,
            pipeline: None,
            s3,
            sqs,
        };
        me.start_pipeline().await;
        me
    }

    pub async fn start_pipeline(&mut self) {
        let options = local_stack::runner::RunnerOptions {
            failed_visibility: Some(std::time::Duration::from_secs(1)),
            receive_visibility: Some(std::time::Duration::from_secs(8)),
            ..Default::default()
        };
        self.pipeline = Some(
            local_stack::runner::LocalPipeline::start(&self.sdk, &self.stack, &self.env, options)
                .await
                .expect("stages start"),
        );
    }

    pub async fn send_alert(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.stack.queue_urls["alerts"])
            .message_body(body)
            .send()
            .await
            .expect("send alert");
    }

    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        match self
            .s3
            .get_object()
            .bucket(&self.stack.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Some(
                o.body
                    .collect()
                    .await
                    .expect("read object")
                    .into_bytes()
                    .to_vec(),
            ),
            Err(_) => None,
        }
    }

    /// Waits for a run's manifest (panics after `secs`).
    pub async fn manifest(&self, run: &shared::ids::RunId, secs: u64) -> shared::store::Manifest {
        let key = shared::store::manifest_key(run);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(body) = self.object(&key).await {
                return serde_json::from_slice(&body).expect("manifest parses");
            }
            if std::time::Instant::now() > until {
                let run_json = self
                    .object(&shared::store::run_key(run))
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                panic!("no manifest for run {run} after {secs}s; run record: {run_json:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Messages now on a stage's dead-letter queue, with their attributes.
    pub async fn dead_letters(
        &self,
        stage: &str,
    ) -> Vec<(String, std::collections::HashMap<String, String>)> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.stack.dlq_urls[stage])
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive from DLQ");
        out.messages()
            .iter()
            .map(|m| {
                let attrs = m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| {
                                (k.clone(), v.string_value().unwrap_or_default().to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (m.body().unwrap_or_default().to_string(), attrs)
            })
            .collect()
    }

    /// Kills the stages mid-flight (nothing in flight finishes or is deleted) and starts them again.
    pub async fn kill_and_restart(&mut self) {
        if let Some(p) = self.pipeline.take() {
            p.kill();
        }
        self.start_pipeline().await;
    }

    pub async fn stop(mut self) {
        if let Some(p) = self.pipeline.take() {
            p.stop().await;
        }
    }
}

/// A native (`lr.alert/v1`) alert.
pub fn native_alert(
    alert_id: &str,
    machine: &str,
    category: &str,
    params: &[(&str, &str)],
) -> serde_json::Value {
    let parameters: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    serde_json::json!({
        "schema": "lr.alert/v1", "alert_id": alert_id, "machine_id": machine, "title": "Test alert",
        "category": category, "severity": "High", "source": "tests", "parameters": parameters
    })
}

pub fn run_id(format: &str, alert_id: &str, machine: &str, playbook: &str) -> shared::ids::RunId {
    shared::ids::RunId::derive(format, alert_id, machine, playbook)
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// The hostile-input corpus: (name, body, expected reject code).
pub fn corpus() -> Vec<(String, String, String)> {
    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        body: String,
        code: String,
    }
    include_str!("../corpus/hostile-alerts.jsonl")
        .lines()
        .map(|l| {
            let c: Case = serde_json::from_str(l).expect("corpus line");
            (c.name, c.body, c.code)
        })
        .collect()
}

/// A run record as poll leaves it when the action has ended and its results await collection.
pub fn collecting_run(
    run_id: &shared::ids::RunId,
    alert_id: &str,
    machine: &shared::defender::MachineId,
    commands: Vec<shared::defender::Command>,
    action_id: &shared::defender::ActionId,
) -> shared::store::RunRecord {
    let now = time::OffsetDateTime::now_utc();
    let alert = shared::alerts::parse(
        &native_alert(alert_id, machine.as_str(), "Malware", &[]).to_string(),
    )
    .expect("a valid alert");
    shared::store::RunRecord {
        v: shared::store::RECORD_VERSION,
        run_id: run_id.clone(),
        alert,
        playbook: "malware-file".into(),
        playbook_sha256: None,
        refused_parameters: Vec::new(),
        machine_id: machine.clone(),
        commands,
        comment: run_id.comment_tag(),
        state: shared::store::RunState::Collecting,
        created_at: now,
        deadline: now + time::Duration::hours(1),
        submit_attempts: 1,
        action_id: Some(action_id.clone()),
        action_status: None,
        submitted_at: Some(now),
        finished_at: None,
        computer_dns_name: None,
        requestor: None,
        action_created: None,
        action_last_update: None,
        cancelled_by_pipeline: false,
        outcome: None,
        reason: None,
        chain: Default::default(),
        unfinished: None,
    }
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

/// A seed for a randomised test: `$var` when set (to replay a failure), else a fresh one. Print it.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v} is not a number")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ (std::process::id() as u64).rotate_left(32)
        }
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same sequence.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// The record poll leaves for a command whose result is waiting to be copied.
pub fn collecting_command(
    index: u32,
    command: shared::defender::Command,
) -> shared::store::CommandRecord {
    let mut rec = shared::store::CommandRecord::unfinished(
        index,
        command,
        shared::store::CommandOutcome::Collecting,
        "",
        time::OffsetDateTime::now_utc(),
    );
    rec.command_status = Some("Completed".into());
    rec.reason = None;
    rec
}
