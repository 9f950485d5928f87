//! `wxpush check`: validates the config and every template mapping without the network.
//! Prints each problem as `FILE:LINE:COLUMN: message`; exit 0 only when there is none.

use std::path::Path;

use super::{CliError, CliResult};
use crate::config;

pub fn run(file: Option<&Path>) -> CliResult {
    let path = config::config_path(file);
    let text = std::fs::read_to_string(&path).map_err(|error| {
        anyhow::Error::from(config::ConfigError::Read {
            path: path.clone(),
            error,
        })
    })?;
    let loaded = config::load_str(&text, &path, std::env::vars()).map_err(anyhow::Error::from)?;
    let problems = loaded.problems();
    if problems.is_empty() {
        let c = &loaded.config;
        println!(
            "{}: ok ({} app(s), {} template(s))",
            path.display(),
            c.apps.len(),
            c.templates.len()
        );
        return Ok(());
    }
    for problem in &problems {
        println!("{}:{problem}", path.display());
    }
    Err(CliError::Failed(anyhow::anyhow!(
        "{}: {} problem(s)",
        path.display(),
        problems.len()
    )))
}
