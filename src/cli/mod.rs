//! The `wxpush` command line: one binary, one subcommand per job. Each subcommand lives in
//! its own file; this one parses arguments, sets up logging and maps errors to exit codes.

mod check;
mod dead;
#[cfg(feature = "dev-tools")]
mod demo;
mod grants;
pub mod progress;
pub mod publish;
mod quota;
mod replay;
mod templates;
mod token;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Loaded};
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "wxpush",
    version,
    about = "Delivers WeChat Mini Program subscribe messages from RabbitMQ events",
    long_about = None
)]
pub struct Cli {
    /// Config file [default: $WXPUSH_CONFIG, else ./wxpush.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format [default: human on a terminal, else json]
    #[arg(long, global = true, env = "WXPUSH_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker daemon
    Run,
    /// Publish events (JSON or NDJSON) from FILE or stdin, with publisher confirms
    Publish(publish::PublishArgs),
    /// Move dead letters back to the events queue
    Replay(replay::ReplayArgs),
    /// Drop the dead letters the filters select (counts only, without --yes)
    Purge(replay::PurgeArgs),
    /// List and inspect dead letters without consuming them
    Dead(dead::DeadArgs),
    /// Validate the config and every template mapping; exit 0 only when clean
    Check(check::CheckArgs),
    /// Show each app's token state (never the token itself)
    Token(token::TokenArgs),
    /// Show what happened to one event: received, attempts, sent (msgid), dead-lettered, skipped
    Trace(trace::TraceArgs),
    /// Show a user's recorded grants per template (from WeChat's message push)
    Grants(grants::GrantsArgs),
    /// Show each app's subscribe/send quota for today; --clear resets it
    Quota(quota::QuotaArgs),
    /// List the account's templates from WeChat, each as a ready [[templates]] entry
    Templates(templates::TemplatesArgs),
    /// Run the project's WeChat API emulator (developer builds only)
    #[cfg(feature = "dev-tools")]
    MockWechat(wxpush_mock_wechat::cli::MockWechatArgs),
    /// End-to-end demo on the local RabbitMQ and Redis with the emulator (developer builds only)
    #[cfg(feature = "dev-tools")]
    Demo(demo::DemoArgs),
}

/// How a command failed, for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 1: the command ran and failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
    /// Exit 2: wrong usage, or a command not available yet.
    #[error("{0}")]
    Usage(String),
}

pub type CliResult = Result<(), CliError>;

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    execute(cli.log_format, dispatch(cli))
}

/// Sets up logging and the runtime, runs a command to its end and maps its result to the
/// exit code. Shared with the tooling binaries under `crates/` so every wxpush command
/// exits the same way.
pub fn execute(
    log_format: Option<LogFormat>,
    command: impl Future<Output = CliResult>,
) -> ExitCode {
    telemetry::init(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> CliResult {
    let config_file = cli.config.as_deref();
    match cli.command {
        Command::Check(args) => check::run(config_file, args).await,
        Command::Quota(args) => quota::run(&load(config_file)?, args).await,
        Command::Grants(args) => grants::run(&load(config_file)?, args).await,
        Command::Templates(args) => templates::run(&load(config_file)?, args).await,
        Command::Token(args) => token::run(&load(config_file)?, args).await,
        Command::Trace(args) => trace::run(&load(config_file)?.config, args).await,
        #[cfg(feature = "dev-tools")]
        Command::MockWechat(args) => Ok(wxpush_mock_wechat::cli::run(args).await?),
        Command::Run => Ok(crate::worker::run_until_signal(load(config_file)?.config).await?),
        Command::Publish(args) => publish::run(&load(config_file)?.config, args).await,
        #[cfg(feature = "dev-tools")]
        Command::Demo(args) => demo::run(config_file, args).await,
        Command::Replay(args) => replay::run(&load(config_file)?.config, args).await,
        Command::Purge(args) => replay::purge(&load(config_file)?.config, args).await,
        Command::Dead(args) => dead::run(&load(config_file)?.config, args).await,
    }
}

/// Loads and validates the config, refusing it with every problem listed.
pub fn load(file: Option<&std::path::Path>) -> Result<Loaded, CliError> {
    Ok(config::load(&config::config_path(file)).map_err(anyhow::Error::from)?)
}
