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
//!
//! Quorum queues (`queue_type = "quorum"`) count deliveries: from RabbitMQ 4.0 a message
//! returned to the queue 20 times (a `dead` listing or a filtered `replay` hands every
//! letter it read back; so does a nack or a closed channel) is dropped, or dead-lettered
//! where the queue has a dead-letter exchange. wxpush declares its quorum queues with
//! `x-delivery-limit = -1` (no limit) where the broker reads `-1` that way: RabbitMQ 3.x has
//! no default limit but drops a message at its *first* return under `-1`, so the meaning is
//! probed once per process ([`unlimited_delivery_supported`]) before it is used.

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ErrorKind, ExchangeKind};
use tokio::sync::OnceCell;

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
    /// `amqp.outcome_exchange`, when outcome events are on.
    pub outcome_exchange: Option<String>,
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
            outcome_exchange: amqp.outcome_exchange.clone(),
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

    /// The tier for a message parked for the `parks`-th time (≥ 1): at least `first` the
    /// first time, twice as long each time after, up to the longest tier. A parked backlog
    /// then goes round through the events queue less and less often while its app stays
    /// stopped, instead of every `first` for as long as it lasts.
    pub fn tier_for_park(&self, first: Duration, parks: u32) -> &RetryTier {
        let doublings = parks.saturating_sub(1).min(20);
        self.tier_at_least(first.saturating_mul(1 << doublings))
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
        if let Some(outcomes) = &self.outcome_exchange {
            let _ = channel
                .exchange_delete(outcomes.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }

    /// The arguments every queue gets: the queue type and, for quorum queues where the
    /// broker supports it, no delivery limit.
    fn queue_arguments(&self, unlimited_delivery: bool) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            if unlimited_delivery {
                args.insert("x-delivery-limit".into(), AMQPValue::LongInt(-1));
            }
        }
        args
    }

    /// Whether quorum queues get `x-delivery-limit = -1` (probed once per process, on this
    /// channel); `false` for classic queues.
    async fn unlimited_delivery(&self, channel: &Channel) -> bool {
        self.queue_type == QueueType::Quorum && unlimited_delivery_supported(channel).await
    }

    /// Declares everything on `channel`. Fails with a hint when a queue exists with other
    /// arguments (e.g. it was created classic and the config now says quorum).
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        self.declare_with(channel.clone(), None).await
    }

    /// Declares everything on channels of its own. Like [`Topology::declare`], except that a
    /// quorum queue created earlier with another delivery limit (or none, by an older
    /// wxpush) is used as it is, with a warning that says how to lift its limit: the
    /// arguments of an existing queue cannot change, a policy can.
    pub async fn declare_on(&self, connection: &Connection) -> anyhow::Result<()> {
        let channel = connection.create_channel().await?;
        let result = self.declare_with(channel.clone(), Some(connection)).await;
        let _ = channel.close(200, "declared".into()).await;
        result
    }

    async fn declare_with(
        &self,
        mut channel: Channel,
        reopen: Option<&Connection>,
    ) -> anyhow::Result<()> {
        let hint = |what: &str, e: lapin::Error| {
            let cure = if delivery_limit_differs(&e) {
                "a quorum queue's delivery limit cannot change: delete the queue, or lift the limit with a policy (docs/reliability.md, \"Broker side\")"
            } else {
                "a queue that exists with other arguments, such as another queue_type, must be deleted or renamed first"
            };
            anyhow::anyhow!("cannot declare {what}: {e}\n  ({cure})")
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
        if let Some(outcomes) = &self.outcome_exchange {
            channel
                .exchange_declare(
                    outcomes.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| hint(&format!("outcome exchange {outcomes}"), e))?;
        }
        let unlimited = self.unlimited_delivery(&channel).await;
        let mut queues = vec![
            (self.queue.as_str(), self.queue_arguments(unlimited)),
            (
                self.dead_letter_queue.as_str(),
                self.queue_arguments(unlimited),
            ),
        ];
        for tier in &self.tiers {
            queues.push((tier.queue.as_str(), self.tier_arguments(tier, unlimited)));
        }
        for (i, (queue, args)) in queues.into_iter().enumerate() {
            let what = if i < 2 { "queue" } else { "retry queue" };
            let declared = channel.queue_declare(queue.into(), durable(), args).await;
            match (declared, reopen) {
                (Ok(_), _) => {}
                (Err(e), Some(connection)) if delivery_limit_differs(&e) => {
                    // The failed declare closed the channel. The queue exists: use it.
                    channel = connection.create_channel().await?;
                    super::inspect_queue(&channel, queue)
                        .await
                        .map_err(|e| hint(&format!("{what} {queue}"), e))?;
                    warn_about_delivery_limit(queue, &e, unlimited);
                }
                (Err(e), _) => return Err(hint(&format!("{what} {queue}"), e)),
            }
            if i == 0 {
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
            }
        }
        if reopen.is_some() {
            let _ = channel.close(200, "declared".into()).await;
        }
        Ok(())
    }

    fn tier_arguments(&self, tier: &RetryTier, unlimited: bool) -> FieldTable {
        let mut args = self.queue_arguments(unlimited);
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
        args
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// A declare refused because the queue exists with another `x-delivery-limit`.
fn delivery_limit_differs(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p)
        if p.get_id() == 406 && p.get_message().as_str().contains("'x-delivery-limit'"))
}

/// Says that `queue` keeps a delivery limit other than the one wxpush declares, and what
/// to do: where `-1` means "no limit" (RabbitMQ 4), a policy lifts a limit the queue got by
/// default; where it does not (3.x: no limit unless set, and `-1` drops a message at its
/// first return), only recreating the queue removes one set as an argument.
fn warn_about_delivery_limit(queue: &str, e: &lapin::Error, unlimited: bool) {
    let current = match e.kind() {
        ErrorKind::ProtocolError(p) => p
            .get_message()
            .as_str()
            .rsplit_once("current is ")
            .map(|(_, c)| c.to_owned())
            .unwrap_or_default(),
        _ => String::new(),
    };
    if unlimited {
        tracing::warn!(
            queue,
            current_limit = %current,
            policy = %format!(
                "rabbitmqctl set_policy --apply-to queues wxpush-delivery-limit '^{}$' '{{\"delivery-limit\": -1}}'",
                queue.replace('.', "\\.")
            ),
            "quorum queue declared earlier with another delivery limit than wxpush's (none): a message returned that often (redeliveries, `dead` listings, filtered replays) is dropped. Unless a policy lifts it already, apply one like `policy` (merged into the queue's policy if it has one), or recreate the queue"
        );
    } else {
        tracing::warn!(
            queue,
            current_limit = %current,
            "quorum queue declared with a delivery limit: a message returned that often (redeliveries, `dead` listings, filtered replays) is dropped. On this RabbitMQ only recreating the queue removes it (a delivery-limit of -1 would drop messages at their first return)"
        );
    }
}

static UNLIMITED_DELIVERY: OnceCell<bool> = OnceCell::const_new();

/// Whether this broker reads `x-delivery-limit = -1` as "no limit" (RabbitMQ 4.0 and later)
/// rather than "drop at the first return" (3.x). Probed once per process on a throwaway
/// quorum queue (expires after a minute if the probe is interrupted): one message is taken
/// and handed back; it is still there only where `-1` means unlimited. A failed probe
/// answers `false` (nothing is cached, the next declare probes again): no limit argument is
/// set then, which is 3.x's unlimited default and 4.x's limit of 20.
pub async fn unlimited_delivery_supported(channel: &Channel) -> bool {
    if let Some(known) = UNLIMITED_DELIVERY.get() {
        return *known;
    }
    match probe_unlimited_delivery(channel).await {
        Ok(answer) => {
            let _ = UNLIMITED_DELIVERY.set(answer);
            tracing::debug!(
                unlimited = answer,
                "probed the meaning of x-delivery-limit = -1"
            );
            answer
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot probe whether quorum queues may have no delivery limit; declaring them without one");
            false
        }
    }
}

async fn probe_unlimited_delivery(channel: &Channel) -> Result<bool, lapin::Error> {
    let queue = format!(
        "wxpush.probe.delivery-limit.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(-1));
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    channel
        .queue_declare(queue.as_str().into(), durable(), args)
        .await?;
    let answer = async {
        // On a confirm channel this waits for the confirm; otherwise `get` below waits.
        let _ = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"probe",
                BasicProperties::default(),
            )
            .await?
            .await?;
        let Some(first) = get_within(channel, &queue, Duration::from_secs(5)).await? else {
            return Ok(false);
        };
        first
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await?;
        let again = get_within(channel, &queue, Duration::from_secs(1)).await?;
        if let Some(m) = &again {
            m.delivery
                .ack(lapin::options::BasicAckOptions::default())
                .await?;
        }
        Ok(again.is_some())
    }
    .await;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    answer
}

async fn get_within(
    channel: &Channel,
    queue: &str,
    within: Duration,
) -> Result<Option<lapin::message::BasicGetMessage>, lapin::Error> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(m) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            return Ok(Some(m));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
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

    #[test]
    fn parked_messages_wait_longer_each_time_up_to_the_longest_tier() {
        let t = Topology::new(&AmqpConfig::default(), &RetryConfig::default());
        let first = Duration::from_secs(30);
        let waits: Vec<u64> = [1, 2, 3, 4, 5, 6, 100, u32::MAX]
            .into_iter()
            .map(|parks| t.tier_for_park(first, parks).delay.as_secs())
            .collect();
        assert_eq!(waits, [32, 64, 128, 256, 512, 600, 600, 600]);
        assert_eq!(t.tier_for_park(first, 0).delay.as_secs(), 32);
    }
}
