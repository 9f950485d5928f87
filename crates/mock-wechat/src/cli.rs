//! `wxpush mock-wechat`: runs the WeChat API emulator as its own process, for the demo,
//! manual testing with curl, and benchmarks against a separate worker process.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use crate::{MockOptions, MockServer};

#[derive(Debug, clap::Args)]
pub struct MockWechatArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8088")]
    pub listen: SocketAddr,
    /// Latency added to every WeChat endpoint call (e.g. 50ms).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Lifetime of each access_token.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7200s")]
    pub token_ttl: Duration,
    /// How long a classic token stays valid after the next classic fetch.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300s")]
    pub classic_overlap: Duration,
    /// Require a granted one-time subscription per send (else 43101).
    #[arg(long)]
    pub strict_subscriptions: bool,
    /// Accepted subscribe/sends per app per day (China time) before 45009.
    #[arg(long, default_value_t = 10_000_000)]
    pub send_daily_limit: u64,
    /// Accepted sends per app in any 1-second window before 45011 (default: unlimited).
    #[arg(long, value_name = "PER_SEC")]
    pub send_rate: Option<u32>,
    /// Register an app (repeatable). Without any, every appid/secret is accepted.
    /// Dev-only fake secrets: they are visible in the process list.
    #[arg(long = "app", value_name = "APPID=SECRET")]
    pub apps: Vec<String>,
}

/// Checked in `run` rather than by a clap value parser because clap's error would echo the
/// value, and it holds a secret (even if a fake one).
fn parse_apps(apps: &[String]) -> anyhow::Result<Vec<(&str, &str)>> {
    apps.iter()
        .enumerate()
        .map(|(i, a)| {
            split_app(a).with_context(|| {
                format!(
                    "--app #{}: expected APPID=SECRET with both parts non-empty",
                    i + 1
                )
            })
        })
        .collect()
}

fn split_app(s: &str) -> Option<(&str, &str)> {
    s.split_once('=')
        .filter(|(appid, secret)| !appid.is_empty() && !secret.is_empty())
}

/// Starts the emulator and serves until ctrl-c or SIGTERM.
pub async fn run(args: MockWechatArgs) -> anyhow::Result<()> {
    let apps = parse_apps(&args.apps)?;
    let opts = MockOptions {
        token_ttl: args.token_ttl,
        classic_overlap: args.classic_overlap,
        latency: args.latency,
        strict_subscriptions: args.strict_subscriptions,
        send_daily_limit: args.send_daily_limit,
        send_rate_per_sec: args.send_rate,
        ..MockOptions::default()
    };
    let server = MockServer::start(opts, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    for (appid, secret) in apps {
        server.register_app(appid, secret);
    }
    println!(
        "mock-wechat listening on {} (control API under /mock/)",
        server.base_url()
    );
    shutdown_signal().await?;
    server.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for ctrl-c")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn shutdown_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for ctrl-c")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MockWechatArgs,
    }

    #[test]
    fn defaults_and_apps() {
        let cli = Cli::try_parse_from(["x", "--app", "wx1=s=1", "--latency", "50ms"]).unwrap();
        assert_eq!(cli.args.listen, "127.0.0.1:8088".parse().unwrap());
        assert_eq!(cli.args.latency, Duration::from_millis(50));
        assert_eq!(cli.args.token_ttl, Duration::from_secs(7200));
        assert_eq!(split_app(&cli.args.apps[0]), Some(("wx1", "s=1")));
        assert_eq!(
            cli.args.send_daily_limit,
            MockOptions::default().send_daily_limit
        );
        assert_eq!(cli.args.send_rate, None);
    }

    #[test]
    fn limit_flags() {
        let cli =
            Cli::try_parse_from(["x", "--send-daily-limit", "150", "--send-rate", "120"]).unwrap();
        assert_eq!(cli.args.send_daily_limit, 150);
        assert_eq!(cli.args.send_rate, Some(120));
        assert!(Cli::try_parse_from(["x", "--send-rate", "fast"]).is_err());
    }

    #[test]
    fn bad_app_is_refused_without_echoing_the_secret() {
        for bad in ["wx1", "=hunter2", "wx1="] {
            let apps = vec!["ok=fine".to_owned(), bad.to_owned()];
            let err = parse_apps(&apps).unwrap_err().to_string();
            assert!(
                err.contains("--app #2") && err.contains("APPID=SECRET"),
                "{err}"
            );
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
