//! The bench's events and publishing them: windowed confirms as fast as the broker takes
//! them, or paced at a steady rate. The publish time of each event is noted for latency.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;
use lapin::BasicProperties;
use serde_json::json;

use super::{BenchArgs, EVENT_TYPE};
use wxpush::broker::publish::Publisher;
use wxpush::cli::publish::Prepared;

/// A valid openid (28 characters starting with `o`) for event `n`.
pub fn openid(n: usize) -> String {
    format!("o{:0>27}", format!("b{n}"))
}

/// `data.order_no` of event `n` of this run: how a recorded send is traced back to it.
pub fn order_no(tag: &str, kind: &str, n: usize) -> String {
    format!("{tag}{kind}-{n}")
}

/// Parses [`order_no`] of a main (not warm-up) event back to `n`.
pub fn sequence(tag: &str, order_no: &str) -> Option<usize> {
    order_no.strip_prefix(tag)?.strip_prefix('-')?.parse().ok()
}

/// Events warming the workers up before a steady-rate run.
pub fn warmup_count(args: &BenchArgs) -> usize {
    if args.rate.is_some() {
        4 * args.processes.unwrap_or(args.workers)
    } else {
        0
    }
}

/// `count` order.paid events; `kind` is "" for the measured ones, "w" for warm-up.
pub fn events(tag: &str, kind: &str, count: usize) -> Vec<Prepared> {
    (0..count)
        .map(|n| {
            let id = format!("bench-{tag}{kind}-{n}");
            let body = json!({
                "id": id,
                "type": EVENT_TYPE,
                "recipient": {"openid": openid(n)},
                "data": {
                    "order_no": order_no(tag, kind, n),
                    "amount": format!("{}.{:02}", 10 + n % 990, n % 100),
                    "paid_at": "2026-11-24T10:00:00+08:00",
                    "remark": "感谢您的购买",
                },
                "occurred_at": "2026-11-24T10:00:01+08:00",
            });
            Prepared {
                origin: format!("bench event {n}"),
                id,
                kind: EVENT_TYPE.into(),
                body: body.to_string().into_bytes(),
            }
        })
        .collect()
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What publishing took.
#[derive(Debug, Clone)]
pub struct Published {
    /// Unix time (µs) each event was handed to the broker, by index.
    pub at_us: Vec<u64>,
    pub started: Instant,
    pub finished: Instant,
}

impl Published {
    pub fn seconds(&self) -> f64 {
        (self.finished - self.started).as_secs_f64()
    }
}

/// Publishes every event with at most `window` confirms outstanding; with `rate`, event `i`
/// goes out at `start + i / rate` (or as soon after as the window allows). `routing` replaces
/// each event's type as the routing key (for the default exchange).
pub async fn publish(
    publisher: &Publisher,
    exchange: &str,
    routing: Option<&str>,
    events: Arc<Vec<Prepared>>,
    window: usize,
    rate: Option<f64>,
    bar: &ProgressBar,
) -> anyhow::Result<Published> {
    let mut in_flight = tokio::task::JoinSet::new();
    let mut at_us = vec![0; events.len()];
    let started = Instant::now();
    let settle = |r: Option<Result<anyhow::Result<()>, tokio::task::JoinError>>| match r {
        Some(Ok(Ok(()))) => {
            bar.inc(1);
            Ok(())
        }
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(anyhow::anyhow!("publish task failed: {e}")),
        None => Ok(()),
    };
    for (i, event) in events.iter().enumerate() {
        if let Some(rate) = rate {
            while let Some(r) = in_flight.try_join_next() {
                settle(Some(r))?;
            }
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        while in_flight.len() >= window.max(1) {
            settle(in_flight.join_next().await)?;
        }
        let publisher = publisher.clone();
        let exchange = exchange.to_owned();
        let routing = routing.unwrap_or(&event.kind).to_owned();
        let events = events.clone();
        at_us[i] = unix_us();
        in_flight.spawn(async move {
            let event = &events[i];
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(event.id.as_str().into());
            publisher
                .publish(&exchange, &routing, &event.body, properties)
                .await
                .map_err(|e| anyhow::anyhow!("publishing {}: {e}", event.id))
        });
    }
    while !in_flight.is_empty() {
        settle(in_flight.join_next().await)?;
    }
    bar.finish_and_clear();
    Ok(Published {
        at_us,
        started,
        finished: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wxpush::event::Event;

    #[test]
    fn events_are_valid_and_traceable() {
        let events = events("abcd1234", "", 3);
        for (n, e) in events.iter().enumerate() {
            let parsed = Event::parse(&e.body).unwrap();
            assert_eq!(parsed.kind, EVENT_TYPE);
            let order = parsed.data["order_no"].as_str().unwrap();
            assert_eq!(sequence("abcd1234", order), Some(n));
        }
        assert_eq!(openid(19_999).len(), 28);
        assert_eq!(sequence("abcd1234", &order_no("abcd1234", "w", 1)), None);
    }
}
