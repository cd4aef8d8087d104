//! `lrctl`: parses the command line and hands it to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = lrctl::cli::Cli::parse();
    match lrctl::run(cli).await {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            lrctl::output::err(format!("lrctl: {e}"));
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
