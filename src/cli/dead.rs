//! `wxpush dead [--json] [--limit N] [--show ID] [--summary]`: lists and inspects dead letters
//! without consuming them.
//!
//! The messages are read by [`crate::dead_letters::read`] (a consumer, no auto-ack) and never
//! acked: the end of the scan hands every one of them back, and RabbitMQ puts requeued
//! messages of a classic queue back in their original positions. Nothing is lost or
//! reordered; the messages only come back marked `redelivered`. While the listing runs, the
//! messages it holds are invisible to other readers of the dead-letter queue (a concurrent
//! `dead` or `replay` sees fewer). A listing longer than RabbitMQ's `consumer_timeout` (30
//! minutes by default) fails when the broker closes the channel; the letters go back all the
//! same (`--limit` reads fewer).
//!
//! What a dead letter says about itself is read by
//! [`Letter`] (`broker::dead_letter`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use lapin::{BasicProperties, Connection};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{CliResult, progress};
pub use crate::broker::dead_letter::Letter;
use crate::broker::{self, headers as h};
use crate::config::{Config, QueueType};
use crate::dead_letters;
pub use crate::dead_letters::view::format_age;
use crate::dead_letters::view::{letter_json, table_value_json};

#[derive(Debug, clap::Args)]
pub struct DeadArgs {
    /// Print JSON: an array with one object per dead letter (with --summary, the counts)
    #[arg(long)]
    pub json: bool,
    /// Read at most N dead letters, from the head of the queue
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Print the headers and body of the dead letter(s) with this event id (or `#N` for the
    /// N-th message in the queue, for bodies without a readable id)
    #[arg(long, value_name = "ID")]
    pub show: Option<String>,
    /// Print only the counts by errcode and by event type
    #[arg(long, conflicts_with = "show")]
    pub summary: bool,
}

/// Whether `--show ID` designates this message.
fn designates(letter: &Letter, wanted: &str) -> bool {
    letter.id.as_deref() == Some(wanted)
        || wanted
            .strip_prefix('#')
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n == letter.position)
}

/// Says so when the queue is a quorum queue: RabbitMQ puts messages handed back to a
/// classic queue in their old places, but may change their order in a quorum queue; and
/// each letter handed back counts as a delivery, which a delivery limit caps (wxpush
/// declares its quorum queues without one where the broker allows; see `broker::topology`).
pub fn warn_if_quorum(config: &Config) {
    if config.amqp.queue_type == QueueType::Quorum {
        eprintln!(
            "note: `{}` is a quorum queue: dead letters read and handed back keep their count but may not keep their order, and each counts as a delivery (a queue with a delivery limit drops letters returned that often; see docs/reliability.md)",
            config.amqp.dead_letter_queue
        );
    }
}

/// One message read for `--show`.
struct Shown {
    letter: Letter,
    properties: BasicProperties,
    body: Vec<u8>,
}

pub async fn run(config: &Config, args: DeadArgs) -> CliResult {
    let queue = config.amqp.dead_letter_queue.as_str();
    warn_if_quorum(config);
    let connection = broker::connect_any(&config.amqp, "dead").await?;
    let read = read_all(&connection, queue, &args).await;
    let _ = connection.close(200, "dead: listing done".into()).await;
    let (letters, shown) = read?;
    let now = OffsetDateTime::now_utc();
    let mut out = String::new();
    if let Some(wanted) = &args.show {
        if shown.is_empty() {
            return Err(anyhow::anyhow!(
                "no dead letter with id `{wanted}` among the {} in `{queue}`",
                letters.len()
            )
            .into());
        }
        if args.json {
            let items: Vec<Value> = shown.iter().map(|s| show_json(s, now)).collect();
            out = pretty(&Value::Array(items));
        } else {
            for s in &shown {
                show_text(&mut out, s, now);
            }
        }
    } else if letters.is_empty() && !args.json {
        out = format!("no dead letters in `{queue}`\n");
    } else if args.summary {
        out = if args.json {
            pretty(&summary_json(&letters))
        } else {
            summary_text(&letters)
        };
    } else if args.json {
        let items: Vec<Value> = letters.iter().map(|l| letter_json(l, now)).collect();
        out = pretty(&Value::Array(items));
    } else {
        out.push_str(&table(&letters, now));
        out.push('\n');
        out.push_str(&summary_text(&letters));
    }
    print!("{out}");
    Ok(())
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// Reads the queue's messages (up to its length at start, or `--limit`) without acking any;
/// the scan's end returns them all to their places.
async fn read_all(
    connection: &Connection,
    queue: &str,
    args: &DeadArgs,
) -> anyhow::Result<(Vec<Letter>, Vec<Shown>)> {
    let progress = std::sync::Arc::new(dead_letters::Progress::default());
    let bar = progress::bar(0, "reading dead letters");
    let ticker = progress::follow(&bar, &progress);
    let read = dead_letters::read(
        connection,
        queue,
        args.limit,
        &progress,
        &CancellationToken::new(),
        |letter| args.show.as_deref().is_some_and(|w| designates(letter, w)),
    )
    .await;
    ticker.abort();
    bar.finish_and_clear();
    let (letters, kept) = read?;
    let shown = kept
        .into_iter()
        .map(|r| Shown {
            letter: r.letter,
            properties: r.properties,
            body: r.body,
        })
        .collect();
    Ok((letters, shown))
}

/// A cell of the table: control characters escaped, at most `max` characters.
fn cell(text: &str, max: usize) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if escaped.chars().count() > max {
        let mut cut: String = escaped.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        escaped
    }
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn table(letters: &[Letter], now: OffsetDateTime) -> String {
    let header = [
        "#", "ID", "TYPE", "APP", "CLASS", "ERRCODE", "ERRMSG", "ATTEMPTS", "AGE", "REPLAYED",
        "COPIES",
    ];
    let rows: Vec<[String; 11]> = letters
        .iter()
        .map(|l| {
            [
                l.position.to_string(),
                cell(&l.id_label(), 40),
                cell(&or_dash(l.kind.as_deref()), 24),
                cell(&or_dash(l.app.as_deref()), 16),
                cell(&or_dash(l.class.as_deref()), 12),
                or_dash(l.errcode),
                cell(&or_dash(l.errmsg.as_deref()), 48),
                or_dash(l.attempts),
                l.age(now).map_or_else(|| "-".into(), format_age),
                l.replayed.to_string(),
                l.copies.to_string(),
            ]
        })
        .collect();
    render(&header, &rows)
}

/// Left-aligned columns separated by two spaces.
fn render<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(c);
            } else {
                let _ = write!(text, "{c:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// (key, count) pairs, largest first (then by key).
type Counts = Vec<(String, usize)>;

/// Counts by errcode and by event type.
fn counts(letters: &[Letter]) -> (Counts, Counts) {
    let mut by_errcode = BTreeMap::<String, usize>::new();
    let mut by_type = BTreeMap::<String, usize>::new();
    for l in letters {
        *by_errcode.entry(or_dash(l.errcode)).or_default() += 1;
        *by_type
            .entry(l.kind.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
    }
    let sorted = |m: BTreeMap<String, usize>| -> Counts {
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    };
    (sorted(by_errcode), sorted(by_type))
}

fn summary_text(letters: &[Letter]) -> String {
    let (by_errcode, by_type) = counts(letters);
    let rows = |v: Counts| -> Vec<[String; 2]> {
        v.into_iter()
            .map(|(k, n)| [cell(&k, 40), n.to_string()])
            .collect()
    };
    format!(
        "{} dead letter(s)\n\n{}\n{}",
        letters.len(),
        render(&["ERRCODE", "COUNT"], &rows(by_errcode)),
        render(&["TYPE", "COUNT"], &rows(by_type)),
    )
}

fn summary_json(letters: &[Letter]) -> Value {
    let (by_errcode, by_type) = counts(letters);
    let object = |v: Counts| Value::Object(v.into_iter().map(|(k, n)| (k, json!(n))).collect());
    json!({
        "total": letters.len(),
        "by_errcode": object(by_errcode),
        "by_type": object(by_type),
    })
}

fn show_json(s: &Shown, now: OffsetDateTime) -> Value {
    dead_letters::view::read_json(&s.letter, &s.properties, &s.body, now)
}

fn show_text(out: &mut String, s: &Shown, now: OffsetDateTime) {
    let l = &s.letter;
    let p = &s.properties;
    let _ = writeln!(
        out,
        "dead letter #{}: {}",
        l.position,
        cell(&l.id_label(), 200)
    );
    let _ = writeln!(
        out,
        "  age: {}",
        l.age(now).map_or_else(|| "-".into(), format_age)
    );
    let mut props: Vec<(&str, String)> = Vec::new();
    if let Some(v) = p.content_type() {
        props.push(("content-type", v.to_string()));
    }
    if let Some(v) = p.content_encoding() {
        props.push(("content-encoding", v.to_string()));
    }
    if let Some(v) = p.message_id() {
        props.push(("message-id", v.to_string()));
    }
    if let Some(v) = p.correlation_id() {
        props.push(("correlation-id", v.to_string()));
    }
    if let Some(v) = p.timestamp() {
        props.push(("timestamp", v.to_string()));
    }
    if let Some(v) = p.app_id() {
        props.push(("app-id", v.to_string()));
    }
    if let Some(v) = p.kind() {
        props.push(("type", v.to_string()));
    }
    if !props.is_empty() {
        out.push_str("properties:\n");
        for (k, v) in props {
            let _ = writeln!(out, "  {k}: {}", cell(&v, 200));
        }
    }
    let headers = h::of(&s.properties);
    if headers.inner().is_empty() {
        out.push_str("headers: (none)\n");
    } else {
        out.push_str("headers:\n");
        for (k, v) in headers.inner() {
            let text = match table_value_json(v) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let _ = writeln!(out, "  {}: {}", cell(k.as_str(), 80), cell(&text, 500));
        }
    }
    match std::str::from_utf8(&s.body) {
        Ok(text) => {
            let _ = writeln!(out, "body ({} bytes):", s.body.len());
            let clean = text
                .chars()
                .all(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'));
            if clean {
                out.push_str(text);
            } else {
                out.push_str(&text.escape_debug().to_string());
            }
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "body ({} bytes, not UTF-8; non-ASCII bytes shown as \\xNN):",
                s.body.len()
            );
            out.push_str(&s.body.escape_ascii().to_string());
        }
    }
    out.push_str("\n\n");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use lapin::types::FieldTable;

    use crate::broker::dead_letter::{self, Failure, FailureClass};
    use crate::wechat::errcode::ErrorClass;
    use time::format_description::well_known::Rfc3339;

    fn props(headers: FieldTable) -> BasicProperties {
        BasicProperties::default().with_headers(headers)
    }

    fn dead_headers(errcode: Option<i64>, dead_at: &str) -> FieldTable {
        let failure = Failure {
            class: FailureClass::Call(ErrorClass::Permanent),
            errcode,
            errmsg: "invalid openid".into(),
            app: None,
        };
        let at = OffsetDateTime::parse(dead_at, &Rfc3339).unwrap();
        dead_letter::for_dead_letter(FieldTable::default(), 1, &failure, "t-1", at)
    }

    #[test]
    fn reads_our_headers_and_the_body() {
        let headers = dead_headers(Some(40003), "2026-01-01T00:00:00Z");
        let body = br#"{"id":"e1","type":"order.paid","app":"shop"}"#;
        let l = Letter::of(3, &props(headers), body);
        assert_eq!(l.id_label(), "e1");
        assert_eq!(l.kind.as_deref(), Some("order.paid"));
        assert_eq!(l.app.as_deref(), Some("shop"));
        assert_eq!(
            (l.errcode, l.attempts, l.replayed),
            (Some(40003), Some(1), 0)
        );
        let now = OffsetDateTime::parse("2026-01-01T01:00:05Z", &Rfc3339).unwrap();
        assert_eq!(l.age(now), Some(Duration::from_secs(3605)));
        assert_eq!(letter_json(&l, now)["age"], "1h 5s");
        assert_eq!(letter_json(&l, now)["class"], "permanent");
        assert!(designates(&l, "e1") && designates(&l, "#3") && !designates(&l, "#2"));
    }

    #[test]
    fn summary_counts_by_errcode_and_type() {
        let mut letters = Vec::new();
        for (i, code) in [40003, -1, 40003].into_iter().enumerate() {
            let headers = dead_headers(Some(code), "2026-01-01T00:00:00Z");
            letters.push(Letter::of(i + 1, &props(headers), br#"{"type":"a"}"#));
        }
        letters.push(Letter::of(4, &BasicProperties::default(), b"x"));
        let v = summary_json(&letters);
        assert_eq!(v["total"], 4);
        assert_eq!(v["by_errcode"]["40003"], 2);
        assert_eq!(v["by_errcode"]["-1"], 1);
        assert_eq!(v["by_errcode"]["-"], 1);
        assert_eq!(v["by_type"]["a"], 3);
        let text = summary_text(&letters);
        assert!(text.starts_with("4 dead letter(s)"), "{text}");
        assert!(text.contains("40003    2"), "{text}");
    }
}
