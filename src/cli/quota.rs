//! `wxpush quota [--app A] [--clear --yes]`: each app's subscribe/send quota for today, as
//! WeChat counts it (`openapi/quota/get`), and on request a reset (`clear_quota`).
//!
//! A reset is one of the ten WeChat allows an account per month, so `--clear` asks first;
//! without a terminal to ask on it needs `--yes`.

use std::io::{BufRead, IsTerminal, Write};

use super::{CliError, CliResult};
use crate::config::Loaded;
use crate::store;
use crate::token::TokenStore;
use crate::wechat::client::{SEND_CGI_PATH, WechatClient};

#[derive(Debug, clap::Args)]
pub struct QuotaArgs {
    /// Only this app (a name from [apps.NAME])
    #[arg(long)]
    pub app: Option<String>,
    /// Reset the app's daily API counts (clear_quota: 10 a month per account)
    #[arg(long)]
    pub clear: bool,
    /// Do not ask before --clear
    #[arg(long, requires = "clear")]
    pub yes: bool,
}

pub async fn run(loaded: &Loaded, args: QuotaArgs) -> CliResult {
    let config = &loaded.config;
    let apps = super::templates::chosen_apps(loaded, args.app.as_deref())?;
    if args.clear && !args.yes {
        confirm(&apps, loaded)?;
    }
    let pool = store::pooled(&config.redis)?;
    let client = WechatClient::new(&config.wechat).map_err(anyhow::Error::from)?;
    let tokens = TokenStore::new(config, pool, client.clone())?;
    println!(
        "{:<16} {:<20} {:>12} {:>12} {:>12}",
        "app", "appid", "daily_limit", "used", "remain"
    );
    for app in &apps {
        let appid = tokens.credentials(app).map_err(anyhow::Error::from)?.0;
        let token = tokens.get(app).await.map_err(anyhow::Error::from)?;
        if args.clear {
            client
                .clear_quota(&token, appid)
                .await
                .map_err(|e| anyhow::anyhow!("clear_quota for app `{app}`: {e}"))?;
            eprintln!("app `{app}` ({appid}): quota cleared");
        }
        let quota = client
            .get_api_quota(&token, SEND_CGI_PATH)
            .await
            .map_err(|e| anyhow::anyhow!("quota of app `{app}`: {e}"))?;
        println!(
            "{app:<16} {appid:<20} {:>12} {:>12} {:>12}",
            quota.daily_limit, quota.used, quota.remain
        );
    }
    Ok(())
}

/// Asks on the terminal before a reset; refuses outright when there is no one to ask.
fn confirm(apps: &[String], loaded: &Loaded) -> CliResult {
    let names: Vec<String> = apps
        .iter()
        .map(|app| match loaded.config.apps.get(app) {
            Some(a) => format!("{app} ({})", a.get_ref().appid),
            None => app.clone(),
        })
        .collect();
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::Usage(
            "--clear resets the quota (10 resets a month per account); not on a terminal, so add --yes to confirm".into(),
        ));
    }
    eprint!(
        "Reset today's API counts of {}? This uses one of the account's 10 resets a month. [y/N] ",
        names.join(", ")
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(anyhow::Error::from)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Failed(anyhow::anyhow!(
            "not confirmed: nothing cleared"
        )))
    }
}
