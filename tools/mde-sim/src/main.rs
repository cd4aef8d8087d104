use std::net::SocketAddr;

use clap::Parser;
use mde_sim::{SimConfig, SimServer};

/// A simulator of the Microsoft Defender for Endpoint live response API.
///
/// Serves the OAuth token endpoint (`{login}/{tenant}/oauth2/v2.0/token`), the machine-action API
/// (`{api}/api/...`), pre-signed result links (`{blob}/...`) and `/sim/...` control endpoints
/// (stats, time, actions, advance, reset, faults) on one loopback listener.
#[derive(Parser, Debug)]
#[command(name = "mde-sim", version)]
struct Args {
    /// Device fleet, script behaviour, the seeded library, clients, limits and faults (TOML). Default: an empty fleet.
    #[arg(long, env = "MDE_SIM_CONFIG")]
    config: Option<String>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Simulated seconds per real second (overrides sim.time_scale), e.g. 600: ten minutes a second.
    #[arg(long)]
    time_scale: Option<f64>,
    /// Session queue window for offline devices in seconds (overrides sim.queue_window_secs; 259200 = 3 days, 7200 = 2 hours).
    #[arg(long)]
    queue_window_secs: Option<u64>,
    /// Submissions allowed per sliding minute (overrides limits.submissions_per_minute).
    #[arg(long)]
    submissions_per_minute: Option<u32>,
    /// Concurrent sessions allowed (overrides limits.running_sessions; newer docs say 50).
    #[arg(long)]
    running_sessions: Option<u32>,
    /// Leave out the Retry-After header on 429 responses.
    #[arg(long)]
    no_retry_after: bool,
    /// Fault seed (overrides faults.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the base URLs as JSON to this file once listening (for scripts).
    #[arg(long)]
    urls_file: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => SimConfig::from_toml_file(path)?,
        None => SimConfig::default(),
    };
    if let Some(s) = args.time_scale {
        config.sim.time_scale = s;
    }
    if let Some(w) = args.queue_window_secs {
        config.sim.queue_window_secs = w;
    }
    if let Some(n) = args.submissions_per_minute {
        config.limits.submissions_per_minute = n;
    }
    if let Some(n) = args.running_sessions {
        config.limits.running_sessions = n;
    }
    if args.no_retry_after {
        config.limits.retry_after_header = false;
    }
    if let Some(seed) = args.seed {
        config.faults.seed = seed;
    }
    let devices = config.devices.len();
    let server = SimServer::start(config, args.listen).await?;
    println!("mde-sim listening on {}", server.addr);
    println!("api base:   {}", server.api_base);
    println!("login base: {}", server.login_base);
    println!("blob base:  {}", server.blob_base);
    println!("devices:    {devices}");
    if let Some(path) = &args.urls_file {
        let urls = serde_json::json!({
            "api_base": server.api_base,
            "login_base": server.login_base,
            "blob_base": server.blob_base,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&urls)?)?;
    }
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
