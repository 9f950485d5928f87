//! Progress bars for long commands (`publish`, `replay`): drawn only when stderr is a
//! terminal, so logs and CI output stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` items with rate and ETA, or a hidden one off a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} ({{per_sec}}, ETA {{eta}}) {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    ProgressBar::new(len).with_style(style)
}

/// Moves `bar` along with a running [`crate::dead_letters::Progress`] (its length is the
/// queue's, known once the scan started) until the returned task is aborted.
pub fn follow(
    bar: &ProgressBar,
    progress: &std::sync::Arc<crate::dead_letters::Progress>,
) -> tokio::task::JoinHandle<()> {
    let (bar, progress) = (bar.clone(), progress.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tick.tick().await;
            let now = progress.snapshot();
            bar.set_length(now.total);
            bar.set_position(now.scanned);
        }
    })
}
