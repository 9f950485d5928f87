//! Logging: human-readable on a terminal, JSON lines for production (`--log-format json` or
//! `WXPUSH_LOG_FORMAT=json`). Filter with `RUST_LOG` (default `info`).
//!
//! Nothing secret is ever given to a log call: tokens appear only as fingerprints, URLs
//! only redacted, app secrets never.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the global subscriber, writing to stderr. Safe to call more than once (later
/// calls do nothing), which tests rely on.
pub fn init(format: Option<LogFormat>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Human
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Displays an error with its whole source chain (`outer: cause: root cause`), for log
/// fields: `tracing::warn!(error = %ErrorChain(&e), ...)`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_shows_every_cause() {
        let root = std::io::Error::other("connection refused");
        let outer = crate::store::StoreError::new("claim", root);
        assert_eq!(
            ErrorChain(&outer).to_string(),
            "Redis claim failed: connection refused"
        );
    }
}
