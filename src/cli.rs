//! Command line: `run` (default), `check`, `demo`. `--config` (or
//! `PAYMONGO_GATEWAY_CONFIG`) may come before or after the subcommand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::gateway::Gateway;

/// Security gateway between internal services and the PayMongo API.
#[derive(Debug, Parser)]
#[command(name = "paymongo-gateway", version, about)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "PAYMONGO_GATEWAY_CONFIG",
        default_value = "gateway.toml"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration (keys, files, certificates) and exit; non-zero on problems.
    Check,
    /// Run offline: a stand-in PayMongo API over TLS and the gateway in front of it.
    Demo {
        /// Port of the demo service listener on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

/// Parses arguments, runs the command on a multi-threaded runtime, returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => run(&cli.config).await,
            Command::Check => check(&cli.config),
            Command::Demo { port } => crate::demo::run(port).await,
        }
    })
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok (mode {:?}, {} service(s), webhooks {})",
                path.display(),
                c.mode,
                c.services.len(),
                if c.webhooks.is_some() { "on" } else { "off" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid configuration", path.display());
            for line in e.to_string().lines() {
                eprintln!("  {line}");
            }
            ExitCode::from(2)
        }
    }
}

async fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid configuration", path.display());
            for line in e.to_string().lines() {
                eprintln!("  {line}");
            }
            return ExitCode::from(2);
        }
    };
    crate::log::init(&config.log);
    let gw = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    info!(config = %path.display(), "started");
    serve_until_signal(&gw).await
}

/// Waits for SIGTERM/SIGINT, then drains and returns. A second signal during
/// the drain exits at once.
pub async fn serve_until_signal(gw: &Gateway) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    tokio::select! {
        _ = gw.shutdown() => ExitCode::SUCCESS,
        _ = term.recv() => { warn!("second signal: exiting without draining"); ExitCode::FAILURE }
        _ = int.recv() => { warn!("second signal: exiting without draining"); ExitCode::FAILURE }
    }
}
