//! The receiver's outcome events: when WeChat pushes a send's final result and
//! `amqp.outcome_exchange` is set, `delivered` or `failed` is published there, with the
//! event id the worker indexed by msgid (`store::Keys::msg_event`), before WeChat gets its
//! `success`: a failed publish answers 503 and WeChat retries the push.
//!
//! The receiver runs beside the worker's sessions, so it has its own AMQP connection, made
//! on first use and again after a failure.

use tokio::sync::Mutex;

use crate::broker::outcome::{Kind, Outcome};
use crate::broker::publish::Publisher;
use crate::config::{AmqpConfig, Config};
use crate::event::Peeked;

/// Publishes the receiver's outcome events.
pub struct OutcomePublisher {
    amqp: AmqpConfig,
    exchange: String,
    open: Mutex<Option<(lapin::Connection, Publisher)>>,
}

impl OutcomePublisher {
    /// `None` when outcome events are off.
    pub fn new(config: &Config) -> Option<OutcomePublisher> {
        let exchange = config.amqp.outcome_exchange.clone()?;
        Some(OutcomePublisher {
            amqp: config.amqp.clone(),
            exchange,
            open: Mutex::new(None),
        })
    }

    /// Publishes the outcome of the send `msgid` of `app` (`event_id`: the event behind it,
    /// when the worker indexed it), confirmed.
    pub async fn delivery(
        &self,
        app: &str,
        event_id: Option<String>,
        msgid: &str,
        errcode: i64,
        status: &str,
    ) -> anyhow::Result<()> {
        let kind = if errcode == 0 {
            Kind::Delivered
        } else {
            Kind::Failed
        };
        let mut outcome = Outcome::of(
            kind,
            Peeked {
                json: true,
                id: event_id,
                kind: None,
                app: Some(app.to_owned()),
            },
        );
        outcome.msgid = msgid.parse().ok();
        outcome.errcode = Some(errcode);
        outcome.errmsg = Some(status.to_owned());
        let mut open = self.open.lock().await;
        if open.is_none() {
            let connection = crate::broker::connect_any(&self.amqp, "push outcomes").await?;
            let publisher = Publisher::for_config(&connection, &self.amqp).await?;
            *open = Some((connection, publisher));
        }
        let (_, publisher) = open.as_ref().expect("opened above");
        let published = publisher
            .publish(
                &self.exchange,
                &kind.routing_key(),
                &outcome.body(),
                lapin::BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await;
        match published {
            Ok(()) | Err(crate::broker::publish::PublishError::Unroutable { .. }) => Ok(()),
            Err(e) => {
                // Connect afresh next time.
                *open = None;
                Err(e.into())
            }
        }
    }
}
