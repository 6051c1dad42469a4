//! The `wasmgate` command line: `start` runs the roles a configuration file asks for (all of
//! them, on loopback, when there is no file).
//!
//! It lives in the library so that the end-to-end tests can run the very same command as
//! separate processes.

use std::path::PathBuf;

use crate::config::Config;
use crate::server::{self, Role};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "wasmgate",
    version,
    about = "A long-connection application server with WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server: the roles the configuration has (all of them without a file).
    Start {
        /// The configuration file.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Runs only these roles of the configuration (repeatable).
        #[arg(long, value_enum)]
        role: Vec<Role>,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Start { config, role } => {
            let mut config = match &config {
                Some(path) => Config::load(path)?,
                None => {
                    let config = Config::all_in_one("commands");
                    println!(
                        "# no configuration file given; running with:\n{}",
                        config.to_toml()
                    );
                    config
                }
            };
            server::select_roles(&mut config, &role);
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                server::run(config, Default::default(), shutdown).await
            })
        }
    }
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    shutdown.cancel();
}
