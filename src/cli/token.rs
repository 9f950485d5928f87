//! `wxpush token [--app A] [--refresh]`: makes sure each app has a valid token (fetching it
//! under the lock if none) and shows its state. Never prints the token, only a fingerprint.

use std::time::Duration;

use super::CliResult;
use crate::config::Loaded;
use crate::store;
use crate::token::{TokenSource, TokenStore};
use crate::wechat::client::WechatClient;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Only this app (a name from [apps.NAME])
    #[arg(long)]
    pub app: Option<String>,
    /// Replace the current token with a new one
    #[arg(long)]
    pub refresh: bool,
}

pub async fn run(loaded: &Loaded, args: TokenArgs) -> CliResult {
    let config = &loaded.config;
    let pool = store::pooled(&config.redis)?;
    let client = WechatClient::new(&config.wechat).map_err(anyhow::Error::from)?;
    let tokens = TokenStore::new(config, pool, client)?;
    let mut apps: Vec<&str> = match &args.app {
        Some(app) => vec![app.as_str()],
        None => tokens.apps().collect(),
    };
    apps.sort_unstable();
    println!(
        "{:<16} {:<20} {:<8} {:<8} {:>10} {:>10}  fingerprint",
        "app", "appid", "endpoint", "source", "age", "time left"
    );
    for app in apps {
        let info = if args.refresh {
            tokens.force_refresh(app).await
        } else {
            tokens.info(app, None).await
        }
        .map_err(anyhow::Error::from)?;
        let now = crate::token::now_ms();
        let age = Duration::from_secs(now.saturating_sub(info.fetched_at_ms) / 1000);
        let left = Duration::from_secs(info.expires_at_ms.saturating_sub(now) / 1000);
        let source = match info.source {
            TokenSource::Fetched => "fetched",
            TokenSource::Redis | TokenSource::Local => "redis",
        };
        let appid = tokens.credentials(app).map_err(anyhow::Error::from)?.0;
        println!(
            "{app:<16} {appid:<20} {:<8} {source:<8} {:>10} {:>10}  {}",
            info.endpoint,
            humantime::format_duration(age).to_string(),
            humantime::format_duration(left).to_string(),
            info.token.fingerprint()
        );
    }
    Ok(())
}
