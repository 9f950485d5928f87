//! Carrying out a [`Disposition`]: ack, or first publish the retry / dead letter and ack only
//! once the broker confirmed it (acks go out in batches, see `acker.rs`). If that publish fails, the message is handed back
//! (nack + requeue), never lost.

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use time::OffsetDateTime;

use super::Ctx;
use super::acker::Acker;
use super::disposition::Disposition;
use crate::admin::metrics as m;
use crate::broker::dead_letter;
use crate::broker::headers as h;
use crate::broker::publish::Publisher;
use crate::store::claims;
use crate::telemetry::ErrorChain;
use crate::worker::breaker::PROBE_EVERY;

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
        Disposition::RedisUnavailable(error) => {
            tracing::warn!(error = %ErrorChain(error), "handing the message back to the queue");
            nack(acker, delivery).await;
            return "requeued";
        }
        Disposition::Retry { attempts, failure } => {
            let tier = ctx.topology.tier_for_attempt(*attempts, true);
            metrics::counter!(m::RETRIES_SCHEDULED, "tier" => tier.label.clone()).increment(1);
            tracing::info!(attempts, tier = %tier.label, class = %failure.class, errcode = failure.errcode, errmsg = %failure.errmsg, "retry scheduled");
            let headers =
                dead_letter::for_retry(original(), *attempts, failure, OffsetDateTime::now_utc());
            ("retry", republish(tier.queue.clone(), headers).await)
        }
        Disposition::Later => {
            let tier = ctx.topology.tier_for_attempt(1, false);
            ("later", republish(tier.queue.clone(), original()).await)
        }
        Disposition::Park { app } => {
            let tier = ctx.topology.tier_at_least(PROBE_EVERY);
            let headers = dead_letter::for_park(original(), app);
            ("parked", republish(tier.queue.clone(), headers).await)
        }
        Disposition::DeadLetter { attempts, failure } => {
            metrics::counter!(m::DEAD_LETTERS, "reason" => failure.class.as_str()).increment(1);
            tracing::warn!(attempts, class = %failure.class, errcode = failure.errcode, errmsg = %failure.errmsg, "dead-lettered");
            let headers = dead_letter::for_dead_letter(
                original(),
                *attempts,
                failure,
                OffsetDateTime::now_utc(),
            );
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
    let Some(id) = crate::event::peek(&delivery.data).id else {
        return;
    };
    let replayed = dead_letter::replays(&h::of(&delivery.properties));
    let ttl = ctx.config.policy.idempotency_ttl;
    let marked = match ctx.hot_path.get().await {
        Ok(mut conn) => claims::mark_dead(&mut conn, &ctx.keys.event(&id), replayed, ttl)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(ErrorChain(&e).to_string()),
    };
    if let Err(e) = marked {
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
