//! The queues and exchange wxpush uses, declared idempotently by every command that touches
//! them:
//!
//! - `exchange` (topic): services publish events with the event type as routing key;
//! - `queue`: bound to it (`#` unless `amqp.bindings` names types), consumed by workers;
//! - `dead_letter_queue`: what could not be delivered, with the reason in headers;
//! - `queue.retry.<delay>`: one queue per backoff tier. Each has a queue-wide TTL and
//!   dead-letters expired messages back to `queue`, so a waiting retry sits in the broker and
//!   holds no prefetch slot. A tier per delay (not a per-message TTL on one queue) because
//!   RabbitMQ only expires messages at the head of a queue.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::{AmqpConfig, QueueType, RetryConfig};

/// One delayed-retry queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTier {
    pub queue: String,
    pub delay: Duration,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub dead_letter_queue: String,
    pub bindings: Vec<String>,
    pub queue_type: QueueType,
    pub tiers: Vec<RetryTier>,
}

/// The tier delays: `initial`, doubling, up to and including `max`.
pub fn tier_delays(initial: Duration, max: Duration) -> Vec<Duration> {
    let mut delays = Vec::new();
    let mut delay = initial.max(Duration::from_millis(1));
    while delay < max {
        delays.push(delay);
        delay *= 2;
    }
    delays.push(max);
    delays
}

fn label(delay: Duration) -> String {
    humantime::format_duration(delay)
        .to_string()
        .replace(' ', "")
}

impl Topology {
    pub fn new(amqp: &AmqpConfig, retry: &RetryConfig) -> Topology {
        let tiers = tier_delays(retry.initial, retry.max)
            .into_iter()
            .map(|delay| RetryTier {
                queue: format!("{}.retry.{}", amqp.queue, label(delay)),
                delay,
                label: label(delay),
            })
            .collect();
        Topology {
            exchange: amqp.exchange.clone(),
            queue: amqp.queue.clone(),
            dead_letter_queue: amqp.dead_letter_queue.clone(),
            bindings: if amqp.bindings.is_empty() {
                vec!["#".into()]
            } else {
                amqp.bindings.clone()
            },
            queue_type: amqp.queue_type,
            tiers,
        }
    }

    /// The tier for a message that has failed `attempts` times (≥ 1): exponential in the
    /// attempt count, with jitter: half the time one tier shorter, so a burst of failures
    /// spreads over two delays instead of returning all at once.
    pub fn tier_for_attempt(&self, attempts: u32, jitter: bool) -> &RetryTier {
        let last = self.tiers.len() - 1;
        let mut index = (attempts.max(1) as usize - 1).min(last);
        if jitter && index > 0 && fastrand::bool() {
            index -= 1;
        }
        &self.tiers[index]
    }

    /// The shortest tier at least `wait` long (or the longest), for parking messages.
    pub fn tier_at_least(&self, wait: Duration) -> &RetryTier {
        self.tiers
            .iter()
            .find(|t| t.delay >= wait)
            .unwrap_or_else(|| self.tiers.last().expect("at least one tier"))
    }

    /// Every queue this topology declares.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        [self.queue.as_str(), self.dead_letter_queue.as_str()]
            .into_iter()
            .chain(self.tiers.iter().map(|t| t.queue.as_str()))
    }

    /// Deletes the queues and the exchange, messages and all: for the demo, the benchmark and
    /// tests, which run on their own names. Best effort: what is already gone is fine.
    pub async fn delete(&self, channel: &Channel) {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        for queue in self.queues() {
            let _ = channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }

    fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args
    }

    /// Declares everything. Fails with a hint when a queue exists with other arguments
    /// (e.g. it was created classic and the config now says quorum).
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let hint = |what: &str, e: lapin::Error| {
            anyhow::anyhow!(
                "cannot declare {what}: {e}\n  (a queue that exists with other arguments, such as another queue_type, must be deleted or renamed first)"
            )
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| hint(&format!("exchange {}", self.exchange), e))?;
        for queue in [&self.queue, &self.dead_letter_queue] {
            channel
                .queue_declare(queue.as_str().into(), durable, self.queue_arguments())
                .await
                .map_err(|e| hint(&format!("queue {queue}"), e))?;
        }
        for key in &self.bindings {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    self.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for tier in &self.tiers {
            let mut args = self.queue_arguments();
            let mut put = |k: &str, v: AMQPValue| {
                args.insert(ShortString::from(k), v);
            };
            put(
                "x-message-ttl",
                AMQPValue::LongLongInt(tier.delay.as_millis() as i64),
            );
            put("x-dead-letter-exchange", AMQPValue::LongString("".into()));
            put(
                "x-dead-letter-routing-key",
                AMQPValue::LongString(self.queue.as_str().into()),
            );
            if self.queue_type == QueueType::Quorum {
                // Quorum queues dead-letter at-most-once unless told otherwise.
                put(
                    "x-dead-letter-strategy",
                    AMQPValue::LongString("at-least-once".into()),
                );
                put("x-overflow", AMQPValue::LongString("reject-publish".into()));
            }
            channel
                .queue_declare(tier.queue.as_str().into(), durable, args)
                .await
                .map_err(|e| hint(&format!("retry queue {}", tier.queue), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_double_up_to_max() {
        let d = tier_delays(Duration::from_secs(1), Duration::from_secs(600));
        assert_eq!(d.first(), Some(&Duration::from_secs(1)));
        assert_eq!(d[9], Duration::from_secs(512));
        assert_eq!(d.last(), Some(&Duration::from_secs(600)));
        assert_eq!(d.len(), 11);
        assert_eq!(
            tier_delays(Duration::from_secs(5), Duration::from_secs(5)).len(),
            1
        );
    }

    #[test]
    fn attempts_pick_growing_tiers_with_bounded_jitter() {
        let t = Topology::new(
            &AmqpConfig::default(),
            &RetryConfig {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(8),
                ..RetryConfig::default()
            },
        );
        assert_eq!(t.tier_for_attempt(1, false).delay, Duration::from_secs(1));
        assert_eq!(t.tier_for_attempt(3, false).delay, Duration::from_secs(4));
        assert_eq!(t.tier_for_attempt(30, false).delay, Duration::from_secs(8));
        assert_eq!(t.tier_for_attempt(1, false).queue, "wxpush.events.retry.1s");
        for _ in 0..50 {
            let d = t.tier_for_attempt(3, true).delay;
            assert!(d == Duration::from_secs(4) || d == Duration::from_secs(2));
        }
        assert_eq!(
            t.tier_at_least(Duration::from_secs(3)).delay,
            Duration::from_secs(4)
        );
        assert_eq!(
            t.tier_at_least(Duration::from_secs(60)).delay,
            Duration::from_secs(8)
        );
    }
}
