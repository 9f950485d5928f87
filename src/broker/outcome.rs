//! Outcome events: with `amqp.outcome_exchange` set, every final outcome of an event is
//! published there as JSON, routing key `outcome.<kind>`, with publisher confirms, so
//! business services can react (resend through another channel, stop a reminder) without
//! polling. The worker publishes sent, dead_lettered, skipped and refused before the
//! message is acked (and before its dead letter), so a crash can repeat an outcome but
//! never lose one; the message-push receiver publishes delivered and failed when WeChat
//! reports a send's final result, before it answers WeChat (which retries a push that
//! failed). Consumers dedupe by `id` (and `outcome`).

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::event::Peeked;

/// The final outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// WeChat accepted the send.
    Sent,
    /// WeChat reported the message delivered (`subscribe_msg_sent_event`, ErrorCode 0).
    Delivered,
    /// WeChat reported the message not delivered (`subscribe_msg_sent_event`, ErrorCode ≠ 0).
    Failed,
    /// Dead-lettered (the reason is in the event).
    DeadLettered,
    /// Not sent for want of a grant (`policy.without_grant = "skip"`).
    Skipped,
    /// The user has no subscription left (43101, `policy.on_refused = "drop"`).
    Refused,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sent => "sent",
            Kind::Delivered => "delivered",
            Kind::Failed => "failed",
            Kind::DeadLettered => "dead_lettered",
            Kind::Skipped => "skipped",
            Kind::Refused => "refused",
        }
    }

    /// The routing key on the outcome exchange.
    pub fn routing_key(self) -> String {
        format!("outcome.{}", self.as_str())
    }
}

/// One outcome message.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub outcome: Kind,
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<u64>,
    /// For a dead letter: its class, errcode and errmsg.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errmsg: Option<String>,
    /// When the outcome was published (RFC 3339).
    pub at: String,
}

impl Outcome {
    /// An outcome of the event in `peeked`; the details are filled in by the caller.
    pub fn of(kind: Kind, peeked: Peeked) -> Outcome {
        Outcome {
            outcome: kind,
            id: peeked.id,
            event_type: peeked.kind,
            app: peeked.app,
            msgid: None,
            class: None,
            errcode: None,
            errmsg: None,
            at: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
        }
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
