//! Publishing with publisher confirms. A publish counts only once the broker confirmed it;
//! a `mandatory` publish that could not be routed is confirmed too, so the returned message
//! is checked before the publish is trusted.
//!
//! **Why one publish at a time per channel.** lapin does not tie a returned message to its
//! publish: each confirm takes the oldest return waiting on the channel, and a multiple ack
//! resolves its publishes in no particular order. With several publishes awaiting confirms
//! on one channel, publish A's return can be handed to publish B while A is told it
//! succeeded. So [`Publisher::publish`] takes a channel of its own from a small pool for
//! the whole publish-and-confirm: RabbitMQ sends a publish's `basic.return` before its
//! `basic.ack`, so the one return a channel can carry is that publish's. The pool's size
//! (`amqp.publish_channels`) is how many publishes wait for confirms at once.
//!
//! [`Publisher::start`] pipelines publishes on one channel for bulk loading (`wxpush
//! publish`): a return there may reach the wrong confirm, so its caller identifies returned
//! messages by their properties (the message id), never by which confirm carried them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::AmqpConfig;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ refused the message (nack) on exchange `{exchange}`")]
    Nacked { exchange: String },
    #[error(
        "no queue is bound for routing key `{routing_key}` on exchange `{exchange}`: the message was returned"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error(
        "RabbitMQ did not confirm the publish to `{routing_key}` on exchange `{exchange}` within {after:?} (publishing blocked by a memory or disk alarm, or the connection is stuck)"
    )]
    Timeout {
        exchange: String,
        routing_key: String,
        after: Duration,
    },
    #[error("no publishing channel is left open (every one failed): reconnect")]
    Closed,
}

/// Confirm-mode channels on one connection. Cheap to clone; clones share the channels.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    /// For declarations, [`Publisher::start`], and callers' own publishes.
    control: Channel,
    /// Channels with no publish in progress.
    idle: Mutex<Vec<Channel>>,
    /// One permit per idle channel.
    free: Semaphore,
    /// Pool channels still usable (idle or in use).
    open: AtomicUsize,
    confirm_timeout: Duration,
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    }
}

impl Publisher {
    /// A publisher with the default pool size and confirm timeout.
    pub async fn open(connection: &Connection) -> Result<Publisher, lapin::Error> {
        Publisher::for_config(connection, &AmqpConfig::default()).await
    }

    /// A publisher with `amqp.publish_channels` and `amqp.confirm_timeout`.
    pub async fn for_config(
        connection: &Connection,
        amqp: &AmqpConfig,
    ) -> Result<Publisher, lapin::Error> {
        Publisher::open_with(connection, amqp.publish_channels, amqp.confirm_timeout).await
    }

    pub async fn open_with(
        connection: &Connection,
        channels: usize,
        confirm_timeout: Duration,
    ) -> Result<Publisher, lapin::Error> {
        let channels = channels.max(1);
        let control = confirm_channel(connection).await?;
        let mut idle = Vec::with_capacity(channels);
        for _ in 0..channels {
            idle.push(confirm_channel(connection).await?);
        }
        Ok(Publisher {
            inner: Arc::new(Inner {
                control,
                idle: Mutex::new(idle),
                free: Semaphore::new(channels),
                open: AtomicUsize::new(channels),
                confirm_timeout,
            }),
        })
    }

    /// A channel in confirm mode for declarations and the caller's own publishes; never
    /// one that [`Publisher::publish`] uses.
    pub fn channel(&self) -> &Channel {
        &self.inner.control
    }

    /// Publishes persistently and `mandatory`, and waits for the broker's confirm, at most
    /// `amqp.confirm_timeout`. A returned (unroutable) message is an error. A channel whose
    /// publish failed or timed out is closed and not used again; when none is left every
    /// publish fails with [`PublishError::Closed`].
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let inner = &*self.inner;
        let permit = inner
            .free
            .acquire()
            .await
            .map_err(|_| PublishError::Closed)?;
        let channel = inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .expect("a permit is an idle channel");
        let mut lease = Lease {
            inner,
            channel: Some(channel.clone()),
            permit: Some(permit),
            reusable: false,
        };
        let confirmed = tokio::time::timeout(inner.confirm_timeout, async {
            let properties = properties.with_delivery_mode(2);
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    mandatory(),
                    body,
                    properties,
                )
                .await?
                .await
        })
        .await;
        let confirmation = match confirmed {
            Err(_) => {
                return Err(PublishError::Timeout {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                    after: inner.confirm_timeout,
                });
            }
            Ok(Err(e)) => return Err(PublishError::Broker(e)),
            Ok(Ok(confirmation)) => confirmation,
        };
        // Its one publish is settled: the channel carries nothing over to the next one.
        lease.reusable = true;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                Err(PublishError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                })
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(PublishError::Nacked {
                exchange: exchange.to_owned(),
            }),
        }
    }

    /// Sends a persistent `mandatory` publish on the control channel and returns its pending
    /// confirm without waiting for it: publishes started one after another reach the queue
    /// in that order, while their confirms are awaited together. See [`PendingConfirm::wait`]
    /// for what a returned message there means.
    pub async fn start(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PendingConfirm, PublishError> {
        let confirm = self
            .inner
            .control
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                mandatory(),
                body,
                properties.with_delivery_mode(2),
            )
            .await?;
        Ok(PendingConfirm {
            confirm,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            timeout: self.inner.confirm_timeout,
        })
    }

    /// Closes the channels, waiting at most `within` in all (a blocked connection never
    /// answers). Call before closing the connection: a channel dropped instead races the
    /// connection's close (and lapin logs an error about it).
    pub async fn close_within(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let idle = std::mem::take(&mut *self.inner.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for channel in std::iter::once(&self.inner.control).chain(idle.iter()) {
            let _ = tokio::time::timeout_at(deadline, channel.close(200, "done".into())).await;
        }
        // Publishes after this fail at once instead of waiting for a channel.
        self.inner.free.close();
    }

    /// [`Publisher::close_within`] 5 seconds.
    pub async fn close(&self) {
        self.close_within(Duration::from_secs(5)).await;
    }
}

/// A pool channel taken for one publish. Dropped, it goes back to the pool if its publish
/// was settled (confirmed or returned); otherwise (failed, timed out, or the publishing
/// future was dropped midway) the channel may still owe a confirm or a return, so it is
/// closed and its permit retired.
struct Lease<'a> {
    inner: &'a Inner,
    channel: Option<Channel>,
    permit: Option<SemaphorePermit<'a>>,
    reusable: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let (Some(channel), Some(permit)) = (self.channel.take(), self.permit.take()) else {
            return;
        };
        if self.reusable && channel.status().connected() {
            self.inner
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(channel);
            drop(permit);
            return;
        }
        permit.forget();
        if self.inner.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.free.close();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let close = channel.close(200, "publish failed".into());
                let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
            });
        }
    }
}

/// A pipelined publish the broker has yet to confirm.
pub struct PendingConfirm {
    confirm: lapin::PublisherConfirm,
    exchange: String,
    routing_key: String,
    timeout: Duration,
}

impl PendingConfirm {
    /// Waits for the confirm (at most `amqp.confirm_timeout`). `Ok(None)`: acked. `Ok(Some)`:
    /// acked, and a message came back unroutable — **not necessarily this one**: lapin hands
    /// the channel's oldest waiting return to whichever confirm resolves first. Every return
    /// reaches some confirm of the channel, so once all are awaited the set of returned
    /// messages is exact; identify each by its properties.
    pub async fn wait(self) -> Result<Option<BasicReturnMessage>, PublishError> {
        match tokio::time::timeout(self.timeout, self.confirm).await {
            Err(_) => Err(PublishError::Timeout {
                exchange: self.exchange,
                routing_key: self.routing_key,
                after: self.timeout,
            }),
            Ok(Err(e)) => Err(PublishError::Broker(e)),
            Ok(Ok(Confirmation::Ack(returned))) => Ok(returned),
            Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => {
                Err(PublishError::Nacked {
                    exchange: self.exchange,
                })
            }
        }
    }

    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }
}

/// The properties of a copy that the worker or `replay` publishes again: the original's,
/// with `headers`, persistent, and without two that would hurt the copy:
/// - `expiration`: a producer's per-message TTL would let the copy expire in a retry tier or
///   the dead-letter queue, where an expired message is dropped;
/// - `user-id`: RabbitMQ refuses (and closes the channel on) a publish whose user-id is not
///   the publishing connection's user, so a producer's would make every republish fail.
pub fn republished(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        p = p.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    if let Some(v) = original.cluster_id() {
        p = p.with_cluster_id(v.clone());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_republished_copy_keeps_its_properties_but_expiration_and_user_id() {
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("e-1".into())
            .with_correlation_id("c".into())
            .with_priority(3)
            .with_timestamp(7)
            .with_app_id("shop".into())
            .with_expiration("60000".into())
            .with_user_id("producer".into())
            .with_delivery_mode(1);
        let mut headers = FieldTable::default();
        headers.insert("x-a".into(), lapin::types::AMQPValue::LongInt(1));
        let copy = republished(&original, headers.clone());
        let expected = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("e-1".into())
            .with_correlation_id("c".into())
            .with_priority(3)
            .with_timestamp(7)
            .with_app_id("shop".into())
            .with_headers(headers)
            .with_delivery_mode(2);
        assert_eq!(copy, expected);
    }
}
