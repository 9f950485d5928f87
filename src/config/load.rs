//! Reading the config file and applying environment overrides, with errors that name the
//! file, the line and the problem (or the environment variable that caused it).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Config;

/// Environment variables are inserted with spans past the end of the file so that an error
/// caused by one can be traced back to its name.
const ENV_SPAN_BASE: usize = usize::MAX / 2;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {error}\n  pass --config FILE, set WXPUSH_CONFIG, or create ./wxpush.toml (examples/wxpush.toml is a commented start)"
    )]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("{path}: {count} problem(s):\n{list}")]
    Problems {
        path: PathBuf,
        count: usize,
        list: String,
    },
}

/// A parsed config with what is needed to point at its source lines.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    source: String,
    overrides: Vec<String>,
}

/// Where a config value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Line { line: usize, column: usize },
    Env(String),
    Unknown,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Line { line, column } => write!(f, "{line}:{column}"),
            Origin::Env(var) => write!(f, "(environment {var})"),
            Origin::Unknown => f.write_str("?"),
        }
    }
}

impl Loaded {
    /// The line of a span from this config's deserialized values.
    pub fn origin(&self, span: Range<usize>) -> Origin {
        origin(&self.source, &self.overrides, span)
    }
}

fn origin(source: &str, overrides: &[String], span: Range<usize>) -> Origin {
    if span.start >= ENV_SPAN_BASE {
        return overrides
            .get(span.start - ENV_SPAN_BASE)
            .map_or(Origin::Unknown, |var| Origin::Env(var.clone()));
    }
    let Some(before) = source.get(..span.start) else {
        return Origin::Unknown;
    };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Origin::Line { line, column }
}

/// The config file to read: `--config`, else `$WXPUSH_CONFIG`, else `./wxpush.toml`.
pub fn config_path(cli: Option<&Path>) -> PathBuf {
    cli.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("WXPUSH_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("wxpush.toml"))
}

/// Reads the file and applies this process's environment, then validates it: a config with
/// problems is refused with all of them listed.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let loaded = load_str(&text, path, std::env::vars())?;
    let problems = loaded.problems();
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(ConfigError::Problems {
            path: path.to_path_buf(),
            count: problems.len(),
            list: problems
                .iter()
                .map(|p| format!("  {}:{p}", path.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        })
    }
}

/// Parses config text with the given environment (tests pass their own). Does not run the
/// semantic checks of [`Loaded::problems`].
pub fn load_str(
    text: &str,
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let invalid = |overrides: &[String], span: Option<Range<usize>>, message: &str| match span
        .map(|s| origin(text, overrides, s))
    {
        Some(Origin::Env(var)) => ConfigError::Env {
            var,
            message: message.to_owned(),
        },
        Some(Origin::Line { line, column }) => ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message: message.to_owned(),
        },
        _ => ConfigError::Invalid {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            message: message.to_owned(),
        },
    };
    let overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("WXPUSH_") && k.contains("__"))
        .collect();
    let mut root = DeTable::parse(text).map_err(|e| invalid(&[], e.span(), e.message()))?;
    let mut names = Vec::new();
    for (i, (var, value)) in overrides.iter().enumerate() {
        names.push(var.clone());
        let span = ENV_SPAN_BASE + i..ENV_SPAN_BASE + i + 1;
        apply_override(root.get_mut(), var, value, span).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    let config = Config::deserialize(toml::de::Deserializer::from(root))
        .map_err(|e| invalid(&names, e.span(), e.message()))?;
    Ok(Loaded {
        config,
        path: path.to_path_buf(),
        source: text.to_owned(),
        overrides: names,
    })
}

/// `WXPUSH_AMQP__URL=…` sets `amqp.url`; deeper paths (`WXPUSH_APPS__DEFAULT__APPID`) reach
/// into nested tables. The value is read as a TOML scalar or array when it is one (`256`,
/// `true`, `["redis://a:6379", "redis://b:6379"]`), else as a string (`5s`, a URL).
fn apply_override<'i>(
    root: &mut DeTable<'i>,
    var: &str,
    value: &'i str,
    span: Range<usize>,
) -> Result<(), String> {
    let path: Vec<String> = var["WXPUSH_".len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err("empty section or key name (expected WXPUSH_<SECTION>__<KEY>)".into());
    }
    let parsed = match DeValue::parse(value) {
        Ok(v) if !matches!(v.get_ref(), DeValue::Table(_)) => v.into_inner(),
        _ => DeValue::String(value.into()),
    };
    let (last, parents) = path.split_last().expect("split on a non-empty string");
    let mut table = root;
    for name in parents {
        let entry = table
            .entry(Spanned::new(span.clone(), name.clone().into()))
            .or_insert_with(|| Spanned::new(span.clone(), DeValue::Table(DeTable::new())));
        table = match entry.get_mut() {
            DeValue::Table(t) => t,
            _ => {
                return Err(format!(
                    "`{name}` is not a table, so it has no key `{last}`"
                ));
            }
        };
    }
    table.insert(
        Spanned::new(span.clone(), last.clone().into()),
        Spanned::new(span, parsed),
    );
    Ok(())
}
