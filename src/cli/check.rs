//! `wxpush check [--remote]`: validates the config and every template mapping without the
//! network; with `--remote`, also verifies every configured template against the account's
//! templates on WeChat (it exists, its data keys are the template's keys).
//! Prints each problem as `FILE:LINE:COLUMN: message`; exit 0 only when there is none.

use std::path::Path;

use super::{CliError, CliResult};
use crate::config::{self, Loaded};
use crate::store;
use crate::template::{Templates, remote};
use crate::token::TokenStore;
use crate::wechat::client::WechatClient;

#[derive(Debug, Default, clap::Args)]
pub struct CheckArgs {
    /// Also verify every template against the account's templates on WeChat
    #[arg(long)]
    pub remote: bool,
}

pub async fn run(file: Option<&Path>, args: CheckArgs) -> CliResult {
    let path = config::config_path(file);
    let text = std::fs::read_to_string(&path).map_err(|error| {
        anyhow::Error::from(config::ConfigError::Read {
            path: path.clone(),
            error,
        })
    })?;
    let loaded = config::load_str(&text, &path, std::env::vars()).map_err(anyhow::Error::from)?;
    let problems = loaded.problems();
    if !problems.is_empty() {
        for problem in &problems {
            println!("{}:{problem}", path.display());
        }
        return Err(CliError::Failed(anyhow::anyhow!(
            "{}: {} problem(s)",
            path.display(),
            problems.len()
        )));
    }
    let c = &loaded.config;
    println!(
        "{}: ok ({} app(s), {} template(s))",
        path.display(),
        c.apps.len(),
        c.templates.len()
    );
    if args.remote {
        check_remote(&loaded, &path).await?;
    }
    Ok(())
}

/// Every configured template against the account's; each mismatch on a line of its own.
async fn check_remote(loaded: &Loaded, path: &Path) -> CliResult {
    let config = &loaded.config;
    let templates = Templates::compile(config)?;
    let pool = store::pooled(&config.redis)?;
    let client = WechatClient::new(&config.wechat).map_err(anyhow::Error::from)?;
    let tokens = TokenStore::new(config, pool, client.clone())?;
    let mut failures = 0;
    for check in remote::verify(&templates, &tokens, &client).await {
        match check.result {
            Ok(mismatches) if mismatches.is_empty() => {
                println!("app `{}`: templates match the account", check.app);
            }
            Ok(mismatches) => {
                for mismatch in &mismatches {
                    println!("{}: app `{}`: {mismatch}", path.display(), check.app);
                }
                failures += mismatches.len();
            }
            Err(e) => {
                println!(
                    "{}: app `{}`: cannot verify: {e}",
                    path.display(),
                    check.app
                );
                failures += 1;
            }
        }
    }
    if failures == 0 {
        Ok(())
    } else {
        Err(CliError::Failed(anyhow::anyhow!(
            "{}: {failures} problem(s) against the templates on WeChat",
            path.display()
        )))
    }
}
