//! `lr-local`: the project's local stack on moto and the Defender simulator.

use std::time::Duration;

use clap::{Parser, Subcommand};
use local_stack::runner::{LocalPipeline, RunnerOptions};
use local_stack::{ProvisionOptions, StackNames, provision};
use mde_sim::{SimConfig, SimServer};
use shared::ports::ObjectStore;

#[derive(Parser)]
#[command(
    name = "lr-local",
    about = "Local stack for the live response pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct StackArgs {
    /// Simulator fleet (TOML).
    #[arg(long, default_value = "tools/mde-sim/fleet.example.toml")]
    fleet: String,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 60.0)]
    time_scale: f64,
    /// Name prefix of the queues, bucket and secret.
    #[arg(long, default_value = "lr-local")]
    prefix: String,
    /// Folder for the functions' environment files (stack.env, and one per function).
    #[arg(long, default_value = ".local")]
    env_dir: String,
    /// Port for the simulator (0: any free port).
    #[arg(long, default_value_t = 0)]
    sim_port: u16,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring the stack up (moto at AWS_ENDPOINT_URL, the simulator), run the pipeline under the
    /// local event-source runner, drop an alert on the alerts queue and print the manifest.
    Demo {
        #[command(flatten)]
        stack: StackArgs,
        /// The alert to drop on the alerts queue.
        #[arg(long, default_value = "tools/local/samples/alert-malware.json")]
        alert: String,
        /// Give up waiting for the manifest after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Bring the stack up and keep it (and the simulator) running until Ctrl-C, for
    /// `cargo lambda watch --env-file .local/<function>.env` and `cargo lambda invoke`.
    Stack {
        #[command(flatten)]
        stack: StackArgs,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    shared::logging::init();
    match Cli::parse().command {
        Cmd::Demo {
            stack,
            alert,
            timeout_secs,
        } => demo(&stack, &alert, timeout_secs).await,
        Cmd::Stack { stack } => {
            let up = up(&stack).await?;
            println!("[stack] up; Ctrl-C stops the simulator (moto is stopped by ./dev)");
            tokio::signal::ctrl_c().await?;
            up.sim.shutdown().await;
            Ok(())
        }
    }
}

struct Up {
    sim: SimServer,
    sdk: aws_config::SdkConfig,
    stack: local_stack::ProvisionedStack,
    env: std::collections::BTreeMap<String, String>,
    endpoint: String,
}

/// Starts the simulator, provisions the stack on moto and writes the functions' environment.
async fn up(args: &StackArgs) -> Result<Up, BoxError> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .map_err(|_| "AWS_ENDPOINT_URL is not set: run this through ./dev, which starts moto")?;
    let mut config = SimConfig::from_toml_file(&args.fleet)?;
    config.sim.time_scale = args.time_scale;
    let client = config
        .clients
        .first()
        .cloned()
        .ok_or("the fleet has no [[clients]]")?;
    let sim = SimServer::start(config, ([127, 0, 0, 1], args.sim_port).into()).await?;
    println!("[stack] moto (AWS) at {endpoint}");
    println!(
        "[stack] mde-sim (Defender) at {} (time x{})",
        sim.api_base, args.time_scale
    );
    let sdk = shared::adapters::sdk_config().await;
    let creds = serde_json::json!({
        "tenant_id": client.tenant_id,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
    });
    let stack = provision(
        &sdk,
        &StackNames {
            prefix: args.prefix.clone(),
        },
        &creds.to_string(),
        ProvisionOptions {
            tls_only_policy: false,
        },
    )
    .await?;
    for (stage, url) in &stack.queue_urls {
        println!(
            "[stack] queue {stage:<8} {url} (DLQ {})",
            stack.dlq_urls[stage]
        );
    }
    println!(
        "[stack] evidence bucket s3://{} (SSE-KMS, versioned, public access blocked)",
        stack.bucket
    );
    println!(
        "[stack] Defender credentials in Secrets Manager: {}",
        stack.secret_arn
    );
    let mut env = stack.env.clone();
    env.insert("MDE_API_BASE_URL".into(), sim.api_base.clone());
    env.insert("MDE_LOGIN_BASE_URL".into(), sim.login_base.clone());
    env.insert("AWS_ENDPOINT_URL".into(), endpoint.clone());
    env.insert("DOWNLOAD_ALLOWED_HOSTS".into(), "127.0.0.1".into());
    env.insert("POLL_DELAYS_SECS".into(), "2,2,5".into());
    for (k, v) in [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ] {
        env.insert(k.into(), std::env::var(k).unwrap_or_else(|_| v.into()));
    }
    std::fs::create_dir_all(&args.env_dir)?;
    let write = |name: &str, extra: Option<(&str, &str)>| -> std::io::Result<String> {
        let path = format!("{}/{name}.env", args.env_dir);
        let mut text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        if let Some((k, v)) = extra {
            text.push_str(&format!("{k}={v}\n"));
        }
        std::fs::write(&path, text)?;
        Ok(path)
    };
    write("stack", None)?;
    // lrctl's settings for this stack: `lrctl --env-file .local/lrctl.env runs` (and, with the
    // functions' Defender settings, `... library status`).
    let mut lrctl = String::new();
    for k in [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        lrctl.push_str(&format!("{k}={}\n", env[k]));
    }
    for (k, v) in local_stack::lrctl_settings(&stack, &env) {
        lrctl.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(format!("{}/lrctl.env", args.env_dir), lrctl)?;
    for (function, stage) in [
        ("intake", "alerts"),
        ("submit", "submit"),
        ("poll", "poll"),
        ("collect", "collect"),
    ] {
        let path = write(
            function,
            Some(("DEAD_LETTER_QUEUE_URL", &stack.dlq_urls[stage])),
        )?;
        println!("[stack] environment for {function}: {path}");
    }
    Ok(Up {
        sim,
        sdk,
        stack,
        env,
        endpoint,
    })
}

async fn demo(args: &StackArgs, alert_file: &str, timeout_secs: u64) -> Result<(), BoxError> {
    let Up {
        sim,
        sdk,
        stack,
        env,
        endpoint,
    } = up(args).await?;
    let pipeline = LocalPipeline::start(&sdk, &stack, &env, RunnerOptions::default()).await?;
    println!(
        "[stack] intake, submit, poll and collect running under the local event-source runner"
    );

    let body = std::fs::read_to_string(alert_file).map_err(|e| format!("{alert_file}: {e}"))?;
    send_alert(
        &endpoint,
        &stack.queue_urls["alerts"],
        alert_file,
        &body,
        &sdk,
    )
    .await?;

    let s3 = shared::adapters::s3::s3_client(&sdk);
    let store = shared::adapters::s3::S3Store::new(s3.clone(), &stack.bucket);
    let started = std::time::Instant::now();
    let mut last = String::new();
    let manifest = loop {
        if started.elapsed() > Duration::from_secs(timeout_secs) {
            return Err(format!("no manifest after {timeout_secs}s (last state: {last})").into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let keys = store.list("state/runs/").await?;
        let Some(run_key) = keys.iter().find(|k| k.ends_with("/run.json")) else {
            continue;
        };
        let run_id = run_key
            .trim_start_matches("state/runs/")
            .trim_end_matches("/run.json");
        let manifest_key =
            shared::ids::RunId::parse(run_id).map(|r| shared::store::manifest_key(&r))?;
        // Sealed (the manifest, its signature, and the completion event out) ends the wait.
        let mut announced = false;
        if let Some(rec) = store.get(run_key).await? {
            let v: serde_json::Value = serde_json::from_slice(&rec.body)?;
            let state = format!(
                "{} (action {}, {})",
                v["state"].as_str().unwrap_or("?"),
                v["action_id"].as_str().unwrap_or("-"),
                v["action_status"].as_str().unwrap_or("-")
            );
            if state != last {
                println!("[run]   {} {state}", v["run_id"].as_str().unwrap_or("?"));
                last = state;
            }
            announced = v["announcement"]["published_at"].is_string();
        }
        if announced && let Some(m) = store.get(&manifest_key).await? {
            break (manifest_key, m.body);
        }
    };
    pipeline.stop().await;
    println!("[done] manifest s3://{}/{}:", stack.bucket, manifest.0);
    println!("{}", String::from_utf8_lossy(&manifest.1));
    let m: shared::store::Manifest = serde_json::from_slice(&manifest.1)?;
    for c in &m.commands {
        if let Some(key) = &c.s3_key {
            println!(
                "[evidence] s3://{}/{key}  {} bytes  sha256 {}{}",
                stack.bucket,
                c.size.unwrap_or(0),
                c.sha256.as_deref().unwrap_or("-"),
                c.sha256_decompressed
                    .as_deref()
                    .map(|d| format!("  (file sha256 {d})"))
                    .unwrap_or_default()
            );
        }
    }
    let sig_key = shared::store::signature_key(&m.run_id);
    if store.get(&sig_key).await?.is_some() {
        println!(
            "[signed] s3://{}/{sig_key} (KMS key {})",
            stack.bucket, stack.signing_key_arn
        );
    }
    let events = aws_sdk_sqs::Client::new(&sdk)
        .receive_message()
        .queue_url(&stack.events_queue_url)
        .wait_time_seconds(2)
        .send()
        .await?;
    for e in events.messages() {
        let v: serde_json::Value = serde_json::from_str(e.body().unwrap_or("{}"))?;
        println!(
            "[event] {} from {} on bus {} → {}: run {} {}, {:.1}s from alert to sealed evidence",
            v["detail-type"].as_str().unwrap_or("?"),
            v["source"].as_str().unwrap_or("?"),
            stack.event_bus,
            stack.events_queue_url,
            v["detail"]["run_id"].as_str().unwrap_or("?"),
            v["detail"]["outcome"].as_str().unwrap_or("?"),
            v["detail"]["time_to_evidence_secs"].as_f64().unwrap_or(0.0)
        );
    }
    let stats = sim.stats();
    println!(
        "[defender] simulator saw {} action(s), {} result link(s), {} 429(s)",
        stats.actions_created, stats.links_issued, stats.throttled
    );
    sim.shutdown().await;
    Ok(())
}

/// Drops the alert on the queue with the AWS CLI, as an alert pipeline would (the SDK if the CLI
/// is not installed).
async fn send_alert(
    endpoint: &str,
    queue_url: &str,
    alert_file: &str,
    body: &str,
    sdk: &aws_config::SdkConfig,
) -> Result<(), BoxError> {
    let cli = tokio::process::Command::new("aws")
        .args([
            "--endpoint-url",
            endpoint,
            "sqs",
            "send-message",
            "--queue-url",
            queue_url,
        ])
        .arg("--message-body")
        .arg(format!("file://{alert_file}"))
        .output()
        .await;
    match cli {
        Ok(out) if out.status.success() => {
            println!(
                "[alert] aws sqs send-message --queue-url {queue_url} --message-body file://{alert_file}"
            );
            Ok(())
        }
        Ok(out) => Err(format!(
            "aws sqs send-message failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into()),
        Err(_) => {
            aws_sdk_sqs::Client::new(sdk)
                .send_message()
                .queue_url(queue_url)
                .message_body(body)
                .send()
                .await?;
            println!("[alert] sent {alert_file} with the SDK (the aws CLI is not on PATH)");
            Ok(())
        }
    }
}
