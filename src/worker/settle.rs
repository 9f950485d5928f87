//! Carrying out a [`Disposition`]: ack, or first publish the retry / dead letter and ack only
//! once the broker confirmed it (acks go out in batches, see `acker.rs`). If that publish fails, the message is handed back
//! (nack + requeue), never lost.

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Ctx;
use super::acker::Acker;
use super::handle::{Disposition, Failure};
use super::idempotency;
use crate::admin::metrics as m;
use crate::broker::headers as h;
use crate::broker::publish::Publisher;
use crate::worker::breaker::PROBE_EVERY;

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn with_failure(mut headers: FieldTable, attempts: u32, failure: &Failure) -> FieldTable {
    h::set_i64(&mut headers, h::ATTEMPTS, i64::from(attempts));
    if h::get_str(&headers, h::FIRST_FAILED_AT).is_none() {
        h::set_str(&mut headers, h::FIRST_FAILED_AT, &now_rfc3339());
    }
    h::set_str(&mut headers, h::ERROR, failure.class);
    match failure.errcode {
        Some(code) => h::set_i64(&mut headers, h::ERRCODE, code),
        None => headers = h::without(&headers, &[h::ERRCODE]),
    }
    h::set_str(&mut headers, h::ERRMSG, &failure.errmsg);
    if let Some(app) = &failure.app {
        h::set_str(&mut headers, h::APP, app);
    }
    headers
}

/// Settles the delivery; returns a label for logs.
pub async fn settle(
    ctx: &Ctx,
    publisher: &Publisher,
    acker: &Acker,
    delivery: &Delivery,
    disposition: &Disposition,
) -> &'static str {
    // Only the outcomes that republish need the headers: a plain ack copies nothing.
    let original = || h::of(&delivery.properties);
    let republish = |queue: String, headers: FieldTable| {
        let properties: BasicProperties = delivery.properties.clone().with_headers(headers);
        async move {
            publisher
                .publish("", &queue, &delivery.data, properties)
                .await
        }
    };
    let (label, published) = match disposition {
        Disposition::Sent { .. } => ("sent", Ok(())),
        Disposition::Duplicate => ("duplicate", Ok(())),
        Disposition::Dropped => ("dropped", Ok(())),
        Disposition::Requeue { reason } => {
            tracing::warn!(reason = %reason, "handing the message back to the queue");
            nack(acker, delivery).await;
            return "requeued";
        }
        Disposition::Retry { attempts, failure } => {
            let tier = ctx.topology.tier_for_attempt(*attempts, true);
            metrics::counter!(m::RETRIES_SCHEDULED, "tier" => tier.label.clone()).increment(1);
            tracing::info!(attempts, tier = %tier.label, class = failure.class, errcode = failure.errcode.map_or_else(String::new, |c| c.to_string()), errmsg = %failure.errmsg, "retry scheduled");
            (
                "retry",
                republish(
                    tier.queue.clone(),
                    with_failure(original(), *attempts, failure),
                )
                .await,
            )
        }
        Disposition::Later => {
            let tier = ctx.topology.tier_for_attempt(1, false);
            ("later", republish(tier.queue.clone(), original()).await)
        }
        Disposition::Park { app } => {
            let tier = ctx.topology.tier_at_least(PROBE_EVERY);
            let mut headers = original();
            let parked = h::get_i64(&headers, h::PARKED).unwrap_or(0) + 1;
            h::set_i64(&mut headers, h::PARKED, parked);
            h::set_str(&mut headers, h::APP, app);
            ("parked", republish(tier.queue.clone(), headers).await)
        }
        Disposition::DeadLetter { attempts, failure } => {
            metrics::counter!(m::DEAD_LETTERS, "reason" => failure.class).increment(1);
            tracing::warn!(attempts, class = failure.class, errcode = failure.errcode.map_or_else(String::new, |c| c.to_string()), errmsg = %failure.errmsg, "dead-lettered");
            let mut headers = with_failure(original(), *attempts, failure);
            h::set_str(&mut headers, h::DEAD_AT, &now_rfc3339());
            (
                "dead_letter",
                republish(ctx.topology.dead_letter_queue.clone(), headers).await,
            )
        }
    };
    match published {
        Ok(()) if matches!(disposition, Disposition::DeadLetter { .. }) => {
            record_dead(ctx, delivery).await;
            // Acked at once, not batched: between a confirmed dead letter and its ack, a
            // crash would bring the message back.
            let _ = delivery.ack(BasicAckOptions::default()).await;
            acker.settled_elsewhere(delivery.delivery_tag);
            label
        }
        Ok(()) => {
            acker.ack(delivery.delivery_tag);
            label
        }
        Err(e) => {
            tracing::warn!(error = %e, outcome = label, "could not publish the message's next step; handing it back");
            nack(acker, delivery).await;
            "requeued"
        }
    }
}

/// Records in the event's idempotency state that its dead letter is confirmed, so a
/// redelivery is acked instead of dead-lettered a second time. Best effort: events without
/// a readable id have no state, and a Redis failure only leaves that small window open.
async fn record_dead(ctx: &Ctx, delivery: &Delivery) {
    let (Some(id), _) = crate::event::peek_id_and_type(&delivery.data) else {
        return;
    };
    let replayed = h::get_i64(&h::of(&delivery.properties), h::REPLAYED).unwrap_or(0);
    let ttl = ctx.config.policy.idempotency_ttl;
    if let Ok(mut conn) = ctx.redis.get().await
        && let Err(e) = idempotency::mark_dead(&mut conn, &ctx.keys.event(&id), replayed, ttl).await
    {
        tracing::warn!(error = %e, "dead letter confirmed, but not recorded in Redis");
    }
}

/// Hands the message back to the queue at once, and tells the acker its tag is settled.
async fn nack(acker: &Acker, delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    let _ = delivery.nack(options).await;
    acker.settled_elsewhere(delivery.delivery_tag);
}
