//! `lrctl`, the analyst's command for the live-response pipeline. Crate map:
//!
//! - [`cli`]: the command line (clap); [`config`]: where settings come from (flags, environment,
//!   env file, CloudFormation stack) and the SDK configuration; [`context`]: what every command
//!   works with; [`error`]: errors and exit codes.
//! - [`bucket`]: the evidence bucket as read (records, listings, streamed objects);
//!   [`digest`]: streaming SHA-256 and gzip hashing; [`output`]: tables, JSON, progress bars.
//! - One module per subcommand: [`runs`], [`show`], [`verify`], [`fetch`], [`dlq`],
//!   [`queue`] (`send` and `key export`), [`library`] (`library status` and `sync`: the
//!   playbooks' library files in Defender's live response library), and [`tenants`]
//!   (`tenants check`: each tenant's secret, token, permissions and API access).
//!
//! Commands return an exit code (`verify` and `fetch` return 1 when evidence does not match;
//! `library status` when a file is not ready, `library sync` when one was refused or failed)
//! or an [`error::Error`]; nothing a stored value holds can make them panic (sums saturate, reads
//! are capped), and nothing it holds reaches the terminal raw ([`output::clean`]).

pub mod bucket;
pub mod cli;
pub mod config;
pub mod context;
pub mod digest;
pub mod dlq;
pub mod error;
pub mod fetch;
pub mod library;
pub mod output;
pub mod queue;
pub mod runs;
pub mod show;
pub mod tenants;
pub mod verify;

use cli::{Cli, Command, KeyCommand, TenantsCommand};
use context::Ctx;
use error::Result;

/// Carries out a parsed command line; the exit code on success.
pub async fn run(cli: Cli) -> Result<u8> {
    let env = |k: &str| std::env::var(k).ok();
    let settings = config::resolve(&cli.settings, &env, config::stack_outputs).await?;
    let sdk = config::sdk_config(&settings.aws).await;
    let ctx = Ctx {
        settings,
        sdk,
        json: cli.json,
    };
    match cli.command {
        Command::Runs(args) => runs::command(&ctx, &args).await,
        Command::Show { run } => show::command(&ctx, &ctx.run_id(&run)?).await,
        Command::Verify(args) => verify::command(&ctx, &args).await,
        Command::Fetch(args) => fetch::command(&ctx, &ctx.run_id(&args.run)?, &args).await,
        Command::Dlq(args) => dlq::command(&ctx, &args).await,
        Command::Send { file } => queue::send(&ctx, &file).await,
        Command::Key(KeyCommand::Export { out }) => queue::export_key(&ctx, out.as_deref()).await,
        Command::Library(cmd) => library::command(&ctx, &cmd).await,
        Command::Tenants(TenantsCommand::Check { tenant }) => {
            tenants::check(&ctx, tenant.as_deref()).await
        }
    }
}
