//! Publishing with publisher confirms. A publish counts only once the broker confirmed it;
//! a `mandatory` publish that could not be routed is confirmed too, so the returned message
//! is checked before the publish is trusted.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

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
}

/// A channel in confirm mode. Many publishes may be awaited concurrently on it.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> Result<Publisher, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes persistently and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.start(exchange, routing_key, body, properties)
            .await?
            .confirmed()
            .await
    }

    /// Sends a persistent publish and returns its pending confirm without waiting for it:
    /// publishes started one after another reach the queue in that order, while their
    /// confirms are awaited together.
    pub async fn start(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PendingConfirm, PublishError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await?;
        Ok(PendingConfirm {
            confirm,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        })
    }

    /// Closes the channel. Call before closing the connection: a channel dropped instead
    /// races the connection's close (and lapin logs an error about it).
    pub async fn close(&self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}

/// A publish the broker has yet to confirm.
pub struct PendingConfirm {
    confirm: lapin::PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl PendingConfirm {
    /// Waits for the confirm; an unroutable (returned) message is an error, not a success.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        match self.confirm.await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                Err(PublishError::Unroutable {
                    exchange: self.exchange,
                    routing_key: self.routing_key,
                })
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(PublishError::Nacked {
                exchange: self.exchange,
            }),
        }
    }
}
