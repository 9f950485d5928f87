//! `wxpush publish [FILE|-]`: publishes events (a JSON object, a JSON array, or NDJSON) to
//! the events exchange with publisher confirms. Every event is validated first; if any is
//! invalid nothing is published and each problem is listed with its line or index.

use std::io::Read;
use std::path::PathBuf;

use lapin::BasicProperties;
use lapin::message::BasicReturnMessage;

use super::{CliError, CliResult, progress};
use crate::broker::publish::{PendingConfirm, PublishError, Publisher};
use crate::broker::topology::Topology;
use crate::broker::{self};
use crate::config::Config;
use crate::event::Event;

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// File with events; `-` or nothing reads stdin
    pub file: Option<PathBuf>,
    /// Publishes awaiting their confirm at once
    #[arg(long, default_value_t = 256)]
    pub window: usize,
}

/// One event ready to publish: where it came from, its routing key and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub origin: String,
    pub id: String,
    pub kind: String,
    pub body: Vec<u8>,
}

/// Splits input into events and validates each. A JSON array or a single object is read as
/// such; anything else as NDJSON (blank lines skipped).
pub fn prepare(input: &str) -> Result<Vec<Prepared>, Vec<String>> {
    let trimmed = input.trim_start();
    let items: Vec<(String, String)> = if trimmed.starts_with('[') {
        match serde_json::from_str::<Vec<serde_json::Value>>(trimmed) {
            Ok(values) => values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("item {}", i + 1), v.to_string()))
                .collect(),
            Err(e) => return Err(vec![format!("not a JSON array of events: {e}")]),
        }
    } else if serde_json::from_str::<serde_json::Value>(trimmed).is_ok_and(|v| v.is_object()) {
        vec![("input".into(), trimmed.to_owned())]
    } else {
        input
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (format!("line {}", i + 1), l.to_owned()))
            .collect()
    };
    let mut errors = Vec::new();
    let mut prepared = Vec::with_capacity(items.len());
    for (origin, text) in items {
        match Event::parse(text.as_bytes()) {
            Ok(event) => prepared.push(Prepared {
                origin,
                id: event.id,
                kind: event.kind,
                body: text.into_bytes(),
            }),
            Err(e) => errors.push(format!("{origin}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(prepared)
    } else {
        Err(errors)
    }
}

pub async fn run(config: &Config, args: PublishArgs) -> CliResult {
    let input = match args.file.as_deref() {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
    };
    let events = prepare(&input).map_err(|errors| {
        CliError::Failed(anyhow::anyhow!(
            "{} invalid event(s), nothing published:\n  {}",
            errors.len(),
            errors.join("\n  ")
        ))
    })?;
    if events.is_empty() {
        return Err(CliError::Usage("no events in the input".into()));
    }
    let connection = broker::connect_any(&config.amqp, "publish").await?;
    // Pipelined on the control channel (`start`): no pool needed.
    let publisher = Publisher::open_with(&connection, 1, config.amqp.confirm_timeout)
        .await
        .map_err(anyhow::Error::from)?;
    Topology::new(&config.amqp, &config.retry)
        .declare_on(&connection)
        .await?;
    let published = publish_all(&publisher, &config.amqp.exchange, &events, args.window).await;
    publisher.close().await;
    let _ = connection.close(200, "publish done".into()).await;
    let count = published?;
    println!(
        "published {count} event(s) to exchange `{}` (all confirmed)",
        config.amqp.exchange
    );
    Ok(())
}

/// Publishes in input order with up to `window` confirms outstanding; stops at the first
/// failure and says how many were confirmed before it (those are in the broker; publishing
/// the same file again is safe, the event ids make redelivery harmless).
///
/// An unroutable event (no queue bound for its type) comes back from the broker. lapin may
/// hand that return to another publish's confirm, so a returned message is named by its
/// message id (each event's id) rather than by the confirm that carried it; once every
/// confirm is in, the set of returned events is exact.
pub async fn publish_all(
    publisher: &Publisher,
    exchange: &str,
    events: &[Prepared],
    window: usize,
) -> anyhow::Result<usize> {
    let bar = progress::bar(events.len() as u64, "publishing");
    let mut pending = std::collections::VecDeque::new();
    let mut acked: usize = 0;
    let mut returned: Vec<BasicReturnMessage> = Vec::new();
    let failed =
        |e: &Prepared, err: PublishError| anyhow::anyhow!("{} (id {}): {err}", e.origin, e.id);
    let mut result = Ok(());
    for event in events {
        if pending.len() >= window.max(1) {
            let (done, confirm): (&Prepared, PendingConfirm) =
                pending.pop_front().expect("non-empty");
            match confirm.wait().await {
                Ok(back) => {
                    acked += 1;
                    bar.inc(1);
                    returned.extend(back);
                }
                Err(err) => {
                    result = Err(failed(done, err));
                    break;
                }
            }
            if !returned.is_empty() {
                break;
            }
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(event.id.as_str().into());
        match publisher
            .start(exchange, &event.kind, &event.body, properties)
            .await
        {
            Ok(confirm) => pending.push_back((event, confirm)),
            Err(err) => {
                result = Err(failed(event, err));
                break;
            }
        }
    }
    for (done, confirm) in pending {
        match confirm.wait().await {
            Ok(back) => {
                acked += 1;
                if result.is_ok() {
                    bar.inc(1);
                }
                returned.extend(back);
            }
            Err(err) => {
                if result.is_ok() {
                    result = Err(failed(done, err));
                }
            }
        }
    }
    let confirmed = acked.saturating_sub(returned.len());
    if result.is_ok() && !returned.is_empty() {
        result = Err(unroutable(events, exchange, &returned));
    }
    match result {
        Ok(()) => {
            bar.finish_and_clear();
            Ok(confirmed)
        }
        Err(e) => {
            bar.abandon();
            Err(e.context(format!(
                "{confirmed} event(s) were confirmed; the rest may not have been"
            )))
        }
    }
}

/// The error for events that came back unroutable, each named by its message id.
fn unroutable(
    events: &[Prepared],
    exchange: &str,
    returned: &[BasicReturnMessage],
) -> anyhow::Error {
    let named: Vec<String> = returned
        .iter()
        .map(|m| {
            let id = m
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned());
            let origin = id
                .as_deref()
                .and_then(|id| events.iter().find(|e| e.id == id))
                .map_or_else(|| "an event".to_owned(), |e| e.origin.clone());
            format!(
                "{origin} (id {}): no queue is bound for routing key `{}` on exchange `{exchange}`: the message was returned",
                id.as_deref().unwrap_or("?"),
                m.routing_key
            )
        })
        .collect();
    anyhow::anyhow!("{}", named.join("\n  "))
}

fn read_stdin() -> Result<String, CliError> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| anyhow::anyhow!("cannot read stdin: {e}"))?;
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"id":"1","type":"order.paid","recipient":{"openid":"o1"}}"#;

    #[test]
    fn reads_ndjson_arrays_and_single_objects() {
        let nd = format!("{GOOD}\n\n{}\n", GOOD.replace("\"1\"", "\"2\""));
        let events = prepare(&nd).unwrap();
        assert_eq!(
            events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["1", "2"]
        );
        assert_eq!(events[1].origin, "line 3");
        assert_eq!(prepare(&format!("[{GOOD}]")).unwrap().len(), 1);
        assert_eq!(prepare(GOOD).unwrap()[0].kind, "order.paid");
    }

    #[test]
    fn invalid_events_are_all_listed() {
        let errors = prepare(&format!("{GOOD}\nnot json\n{{\"id\":\"x\"}}\n")).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("line 2:"));
        assert!(errors[1].starts_with("line 3:") && errors[1].contains("type"));
    }
}
