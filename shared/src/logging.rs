//! `tracing` for Lambda: JSON lines when `AWS_LAMBDA_LOG_FORMAT=JSON`, plain text otherwise; the
//! level from `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else info.

use tracing_subscriber::EnvFilter;

use crate::config::{Env, ProcessEnv};

/// How the logs are written: the level filter, and whether as JSON lines.
pub fn settings(env: &dyn Env) -> (String, bool) {
    let level = env
        .var("AWS_LAMBDA_LOG_LEVEL")
        .map(|l| l.to_ascii_lowercase())
        .or_else(|| env.var("RUST_LOG"))
        .unwrap_or_else(|| "info".into());
    let json = env
        .var("AWS_LAMBDA_LOG_FORMAT")
        .is_some_and(|f| f.eq_ignore_ascii_case("json"));
    (level, json)
}

/// Installs the `tracing` subscriber for a Lambda; a second call does nothing.
pub fn init() {
    let (level, json) = settings(&ProcessEnv);
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(true);
    // CloudWatch stamps each line itself; a second timestamp is noise.
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .without_time()
            .try_init()
    } else {
        builder.without_time().try_init()
    };
    if result.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}
