//! The whole local stack for one test: the simulator, the queues, bucket and secret on moto under a
//! unique prefix, and the four stages under the local event-source runner. Alerts go in; manifests,
//! evidence and dead letters come out.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use mde_sim::{SimConfig, SimServer};
use shared::ids::RunId;
use shared::store::{Manifest, ManifestCommand};

use crate::alerts::{native_alert, run_id};
use crate::aws::{aws, provision, unique};
use crate::content::assert_evidence;
use crate::sim::{credentials_json, start_sim};

pub struct Stack {
    pub sim: SimServer,
    pub sim_config: SimConfig,
    pub sdk: aws_config::SdkConfig,
    pub stack: local_stack::ProvisionedStack,
    pub env: BTreeMap<String, String>,
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

/// A function's environment: `base` (the provisioned stack's), pointed at the simulator, with
/// [`fast_env`], then `extra` added or overriding.
pub fn function_env(
    base: &BTreeMap<String, String>,
    sim: &SimServer,
    extra: &[(&str, String)],
) -> BTreeMap<String, String> {
    let mut env = base.clone();
    env.insert("MDE_API_BASE_URL".into(), sim.api_base.clone());
    env.insert("MDE_LOGIN_BASE_URL".into(), sim.login_base.clone());
    for (k, v) in fast_env() {
        env.insert(k.into(), v);
    }
    for (k, v) in extra {
        env.insert(k.to_string(), v.clone());
    }
    env
}

/// The malware alert for the file `path` on `machine`, as the bundled `malware-file` playbook
/// collects it.
pub fn file_alert(alert_id: &str, machine: &str, path: &str) -> serde_json::Value {
    native_alert(alert_id, machine, "Malware", &[("file_path", path)])
}

impl Stack {
    /// Starts everything; `extra` adds or overrides function environment variables.
    pub async fn start(sim_config: SimConfig, extra: &[(&str, String)]) -> Self {
        let mut me = Self::provisioned(sim_config, extra).await;
        me.start_pipeline().await;
        me
    }

    /// The simulator and the provisioned stack, the stages not started (put what they read at
    /// their start in place, then [`Stack::start_pipeline`]).
    /// The simulator runs 20 times faster than Defender unless `sim_config` sets another scale
    /// ([`Stack::provisioned_at_scale`] keeps Defender's own clock).
    pub async fn provisioned(mut sim_config: SimConfig, extra: &[(&str, String)]) -> Self {
        if sim_config.sim.time_scale == 1.0 {
            sim_config.sim.time_scale = 20.0;
        }
        Self::provisioned_at_scale(sim_config, extra).await
    }

    /// As [`Stack::provisioned`], with the simulator's time scale as `sim_config` gives it (1:
    /// Defender's own clock, as the fairness benchmark runs it).
    pub async fn provisioned_at_scale(sim_config: SimConfig, extra: &[(&str, String)]) -> Self {
        let sim = start_sim(sim_config.clone()).await;
        let sdk = aws().await;
        let stack = provision(&sdk, unique("e2e"), &credentials_json(&sim_config))
            .await
            .expect("provisioning on moto");
        let env = function_env(&stack.env, &sim, extra);
        let s3 = shared::adapters::s3::s3_client(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        Self {
            sim,
            sim_config,
            sdk,
            stack,
            env,
            pipeline: None,
            s3,
            sqs,
        }
    }

    pub async fn start_pipeline(&mut self) {
        self.start_pipeline_with(local_stack::runner::RunnerOptions::default())
            .await
    }

    /// The stages with `options` (failed messages back after 1 s, received ones hidden 8 s).
    pub async fn start_pipeline_with(&mut self, options: local_stack::runner::RunnerOptions) {
        let options = local_stack::runner::RunnerOptions {
            failed_visibility: Some(Duration::from_secs(1)),
            receive_visibility: Some(Duration::from_secs(8)),
            ..options
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

    /// Sends [`file_alert`] and returns the run it makes.
    pub async fn send_file_alert(&self, alert_id: &str, machine: &str, path: &str) -> RunId {
        self.send_alert(&file_alert(alert_id, machine, path).to_string())
            .await;
        run_id("native", alert_id, machine, "malware-file")
    }

    /// Sends one [`file_alert`] per machine, in order, with alert ids `{prefix}-{i}`, and returns
    /// the runs they make in the same order (await them with [`Stack::manifests`]).
    pub async fn send_file_alerts(
        &self,
        prefix: &str,
        machines: &[String],
        path: &str,
    ) -> Vec<RunId> {
        let mut runs = Vec::with_capacity(machines.len());
        for (i, machine) in machines.iter().enumerate() {
            runs.push(
                self.send_file_alert(&format!("{prefix}-{i}"), machine, path)
                    .await,
            );
        }
        runs
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
    pub async fn manifest(&self, run: &RunId, secs: u64) -> Manifest {
        let key = shared::store::manifest_key(run);
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(body) = self.object(&key).await {
                return serde_json::from_slice(&body).expect("manifest parses");
            }
            if Instant::now() > until {
                let run_json = self
                    .object(&shared::store::run_key(run))
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                panic!("no manifest for run {run} after {secs}s; run record: {run_json:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for each run's manifest in turn (each within `secs` of its turn).
    pub async fn manifests(&self, runs: &[RunId], secs: u64) -> Vec<Manifest> {
        let mut out = Vec::with_capacity(runs.len());
        for run in runs {
            out.push(self.manifest(run, secs).await);
        }
        out
    }

    /// The content oracle on a collected file: its evidence object is the one recorded, and holds
    /// the device's file whole ([`assert_evidence`]).
    pub async fn assert_evidence(
        &self,
        command: &ManifestCommand,
        machine_id: &str,
        path: &str,
        size: u64,
    ) {
        let key = command
            .s3_key
            .as_deref()
            .expect("a collected command has a key");
        let stored = self.object(key).await.expect("the evidence object exists");
        assert_evidence(command, &stored, machine_id, path, size);
    }

    /// Messages now on a stage's dead-letter queue, with their attributes.
    pub async fn dead_letters(&self, stage: &str) -> Vec<(String, HashMap<String, String>)> {
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

    /// Receives from a stage's dead-letter queue until `n` messages came (or a minute of empty
    /// receives passed), and returns them all.
    pub async fn await_dead_letters(
        &self,
        stage: &str,
        n: usize,
    ) -> Vec<(String, HashMap<String, String>)> {
        let mut dead = Vec::new();
        for _ in 0..60 {
            dead.extend(self.dead_letters(stage).await);
            if dead.len() >= n {
                break;
            }
        }
        dead
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
