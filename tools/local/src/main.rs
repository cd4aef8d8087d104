//! `lr-local`: the project's local stack on moto and the Defender simulator.

use std::time::Duration;

use clap::{Parser, Subcommand};
use local_stack::{ProvisionOptions, StackNames, provision};
use mde_sim::{SimConfig, SimServer};
use shared::aws::SecretsManagerCredentials;
use shared::defender::{
    ActionStatus, Command, CommandType, DefenderClient, LiveResponseRequest, MachineId,
    TokenProvider, Transcript, http_client,
};

#[derive(Parser)]
#[command(
    name = "lr-local",
    about = "Local stack for the live response pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Provision the stack on moto (AWS_ENDPOINT_URL), start the simulator and run a live response through it.
    Demo {
        /// Simulator fleet (TOML).
        #[arg(long, default_value = "tools/mde-sim/fleet.example.toml")]
        fleet: String,
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 60.0)]
        time_scale: f64,
        /// Name prefix of the queues, bucket and secret.
        #[arg(long, default_value = "lr-local")]
        prefix: String,
        /// Where to write the environment the functions need.
        #[arg(long, default_value = ".local/stack.env")]
        env_file: String,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    shared::logging::init();
    match Cli::parse().command {
        Cmd::Demo {
            fleet,
            time_scale,
            prefix,
            env_file,
        } => demo(&fleet, time_scale, &prefix, &env_file).await,
    }
}

async fn demo(fleet: &str, time_scale: f64, prefix: &str, env_file: &str) -> Result<(), BoxError> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").map_err(
        |_| "AWS_ENDPOINT_URL is not set: run this through ./dev demo, which starts moto",
    )?;
    let mut config = SimConfig::from_toml_file(fleet)?;
    config.sim.time_scale = time_scale;
    let client = config
        .clients
        .first()
        .cloned()
        .ok_or("the fleet has no [[clients]]")?;
    let device = config
        .devices
        .first()
        .cloned()
        .ok_or("the fleet has no [[devices]]")?;
    let sim = SimServer::start(config, "127.0.0.1:0".parse()?).await?;
    println!("[stack] moto (AWS) at {endpoint}");
    println!(
        "[stack] mde-sim (Defender) at {} (time x{time_scale})",
        sim.api_base
    );

    let sdk = shared::aws::sdk_config().await;
    let creds = serde_json::json!({
        "tenant_id": client.tenant_id,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
    });
    let stack = provision(
        &sdk,
        &StackNames {
            prefix: prefix.into(),
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
    if let Some(parent) = std::path::Path::new(env_file).parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(env_file, text)?;
    println!("[stack] function environment written to {env_file}");

    // The client below reads its settings the way the functions do, from these variables.
    let cfg = shared::config::DefenderConfig::from_env(&env)?;
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let http = http_client(cfg.http_timeout)?;
    let auth = TokenProvider::new(
        SecretsManagerCredentials::new(secrets, &cfg.credentials_secret_id),
        http.clone(),
        &cfg.login_base,
        &cfg.scope,
    );
    let defender = DefenderClient::new(http.clone(), &cfg.api_base, auth);

    let library = defender.list_library().await?;
    println!(
        "[defender] library: {}",
        library
            .iter()
            .map(|f| f.file_name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let machine = MachineId::parse(&device.machine_id)?;
    let mut commands = vec![Command::run_script("triage.ps1", Some("-Quick"))];
    if let Some(f) = device.files.first() {
        commands.push(Command::get_file(&f.path));
    }
    let action = defender
        .run_live_response(
            &machine,
            &LiveResponseRequest {
                commands,
                comment: "lr-local demo".into(),
            },
        )
        .await?;
    println!(
        "[defender] live response {} on {} is {:?}",
        action.id, device.dns_name, action.status
    );
    let action = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let a = defender.get_machine_action(&action.id).await?;
        if a.status.is_final() {
            break a;
        }
        println!("[defender]   status {:?}", a.status);
    };
    println!("[defender] live response ended {:?}", action.status);
    if action.status != ActionStatus::Succeeded {
        return Err(format!("the demo run ended {:?}", action.status).into());
    }
    for c in &action.commands {
        if !c.command.kind.has_result() {
            continue;
        }
        let link = defender.result_download_link(&action.id, c.index).await?;
        let body = http
            .get(link.url.expose())
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        match c.command.kind {
            CommandType::RunScript => {
                let t: Transcript = serde_json::from_slice(&body)?;
                println!(
                    "[result] command {} RunScript {}: exit code {:?}, output {:?}",
                    c.index,
                    t.script_name.unwrap_or_default(),
                    t.exit_code,
                    t.script_output
                );
            }
            _ => println!(
                "[result] command {} GetFile {}: {} bytes of gzip package",
                c.index,
                c.command.param("Path").unwrap_or_default(),
                body.len()
            ),
        }
    }
    let stats = sim.stats();
    println!(
        "[defender] simulator saw {} actions, {} result links, {} 429s",
        stats.actions_created, stats.links_issued, stats.throttled
    );
    sim.shutdown().await;
    Ok(())
}
