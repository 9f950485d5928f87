//! `wxpush templates [--app A]`: the account's subscribe-message templates, as WeChat serves
//! them (`gettemplate`), each with a ready-to-paste `[[templates]]` entry.

use super::{CliError, CliResult};
use crate::config::Loaded;
use crate::store;
use crate::template::remote;
use crate::token::TokenStore;
use crate::wechat::client::WechatClient;

#[derive(Debug, clap::Args)]
pub struct TemplatesArgs {
    /// Only this app (a name from [apps.NAME])
    #[arg(long)]
    pub app: Option<String>,
}

pub async fn run(loaded: &Loaded, args: TemplatesArgs) -> CliResult {
    let config = &loaded.config;
    let apps = chosen_apps(loaded, args.app.as_deref())?;
    let pool = store::pooled(&config.redis)?;
    let client = WechatClient::new(&config.wechat).map_err(anyhow::Error::from)?;
    let tokens = TokenStore::new(config, pool, client.clone())?;
    for app in &apps {
        let account = remote::account_templates(&tokens, &client, app)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        println!(
            "# app `{app}`: {} template(s) in the account\n",
            account.len()
        );
        for template in &account {
            println!("{}", remote::stub(app, template));
        }
    }
    Ok(())
}

/// The apps a command works on: the one named (which must exist), else every app.
pub(super) fn chosen_apps(loaded: &Loaded, app: Option<&str>) -> Result<Vec<String>, CliError> {
    let apps = &loaded.config.apps;
    match app {
        Some(name) if apps.contains_key(name) => Ok(vec![name.to_owned()]),
        Some(name) => Err(CliError::Usage(format!(
            "no [apps.{name}] in the config (apps: {})",
            apps.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
        None => Ok(apps.keys().cloned().collect()),
    }
}
