//! Carrying out a [`Disposition`]: ack, or first publish the retry / dead letter and ack only
//! once the broker confirmed it (plain acks go out in batches, see `acker.rs`; acks after a
//! republish at once). If that publish fails, the message is handed back
//! (nack + requeue), never lost, and [`REPUBLISH_FAILED`] tells the session to end: it
//! reconnects with backoff and declares the topology again (a deleted retry tier comes
//! back), instead of sending the message to WeChat again on every turn.

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use time::OffsetDateTime;

use super::Ctx;
use super::acker::Acker;
use super::disposition::{DeadRecord, Disposition};
use crate::admin::metrics as m;
use crate::broker::dead_letter;
use crate::broker::headers as h;
use crate::broker::outcome::{self, Outcome};
use crate::broker::publish::{self, Publisher};
use crate::store::StoreError;
use crate::store::claims::{self, PendingDeadLetter, PendingMark};
use crate::telemetry::ErrorChain;

/// Where a message goes next when its disposition is not a plain ack: a queue and the
/// headers it carries there.
struct NextStep {
    label: &'static str,
    queue: String,
    headers: FieldTable,
}

/// What [`settle`] returns when the message's next step could not be published (the
/// message was handed back): the session must end.
pub const REPUBLISH_FAILED: &str = "republish_failed";

/// Settles the delivery; returns a label for logs ([`REPUBLISH_FAILED`] when publishing
/// failed).
pub async fn settle(
    ctx: &Ctx,
    publisher: &Publisher,
    acker: &Acker,
    delivery: &Delivery,
    disposition: &Disposition,
) -> &'static str {
    if let Disposition::DeadLetter {
        failure, record, ..
    } = disposition
    {
        match record_pending(ctx, record, failure).await {
            Ok(PendingMark::Recorded) => {}
            Ok(PendingMark::NoRecord) => {
                // Better a dead letter without a record than no dead letter at all.
                tracing::warn!("the event's Redis record is gone; dead-lettering it unrecorded");
            }
            Ok(PendingMark::Superseded) => {
                tracing::info!(
                    "the event's claim moved to another delivery, which carries it; this copy is acked"
                );
                acker.ack(delivery.delivery_tag);
                return "duplicate";
            }
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "handing the message back to the queue");
                nack(acker, delivery).await;
                return "requeued";
            }
        }
    }
    // The outcome event goes out before the ack (and before a dead letter), so a crash can
    // repeat it but never lose it.
    if let Err(e) = publish_outcome(ctx, publisher, delivery, disposition).await {
        tracing::warn!(error = %e, "could not publish the outcome event; handing the message back");
        nack(acker, delivery).await;
        return REPUBLISH_FAILED;
    }
    let step = match next_step(ctx, delivery, disposition) {
        Ok(None) => {
            acker.ack(delivery.delivery_tag);
            return label_of(disposition);
        }
        Ok(Some(step)) => step,
        Err(error) => {
            tracing::warn!(error = %ErrorChain(error), "handing the message back to the queue");
            nack(acker, delivery).await;
            return "requeued";
        }
    };
    let properties: BasicProperties = publish::republished(&delivery.properties, step.headers);
    let published = publisher
        .publish("", &step.queue, &delivery.data, properties)
        .await;
    match published {
        Ok(()) => {
            if let Disposition::DeadLetter { record, .. } = disposition {
                crate::failpoint::hit("settle.dead_letter_confirmed").await;
                record_dead(ctx, record).await;
            }
            // Acked at once, not batched: between a confirmed republish and its ack, a
            // crash leaves two copies of the message (the original comes back).
            let _ = delivery.ack(BasicAckOptions::default()).await;
            acker.settled_elsewhere(delivery.delivery_tag);
            step.label
        }
        Err(e) => {
            tracing::warn!(error = %e, outcome = step.label, "could not publish the message's next step; handing it back");
            nack(acker, delivery).await;
            REPUBLISH_FAILED
        }
    }
}

/// The outcome event of a final disposition, when `amqp.outcome_exchange` is set.
fn outcome_of(delivery: &Delivery, disposition: &Disposition) -> Option<Outcome> {
    let peeked = || crate::event::peek(&delivery.data);
    let (kind, msgid) = match disposition {
        Disposition::Sent { msgid } => (outcome::Kind::Sent, Some(*msgid)),
        Disposition::Dropped => (outcome::Kind::Refused, None),
        Disposition::Skipped => (outcome::Kind::Skipped, None),
        Disposition::Duplicate {
            decided: Some(kind),
            msgid,
        } => (*kind, *msgid),
        Disposition::DeadLetter { failure, .. } => {
            let mut dead = Outcome::of(outcome::Kind::DeadLettered, peeked());
            dead.class = Some(failure.class.as_str().to_owned());
            dead.errcode = failure.errcode;
            dead.errmsg = Some(failure.errmsg.clone());
            return Some(dead);
        }
        _ => return None,
    };
    let mut outcome = Outcome::of(kind, peeked());
    outcome.msgid = msgid;
    Some(outcome)
}

async fn publish_outcome(
    ctx: &Ctx,
    publisher: &Publisher,
    delivery: &Delivery,
    disposition: &Disposition,
) -> Result<(), publish::PublishError> {
    let Some(exchange) = &ctx.topology.outcome_exchange else {
        return Ok(());
    };
    let Some(outcome) = outcome_of(delivery, disposition) else {
        return Ok(());
    };
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let published = publisher
        .publish(
            exchange,
            &outcome.outcome.routing_key(),
            &outcome.body(),
            properties,
        )
        .await;
    match published {
        // Nobody listens for this kind: the consumers' choice, not a failure.
        Err(publish::PublishError::Unroutable { .. }) | Ok(()) => {
            metrics::counter!(m::OUTCOMES, "outcome" => outcome.outcome.as_str()).increment(1);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn label_of(disposition: &Disposition) -> &'static str {
    match disposition {
        Disposition::Sent { .. } => "sent",
        Disposition::Duplicate { .. } => "duplicate",
        Disposition::Dropped => "dropped",
        Disposition::Skipped => "skipped",
        Disposition::Retry { .. } => "retry",
        Disposition::Later => "later",
        Disposition::Park { .. } => "parked",
        Disposition::DeadLetter { .. } => "dead_letter",
        Disposition::RedisUnavailable(_) => "requeued",
    }
}

/// `Ok(None)`: a plain ack. `Err`: hand the message back (Redis is unavailable).
fn next_step<'a>(
    ctx: &Ctx,
    delivery: &Delivery,
    disposition: &'a Disposition,
) -> Result<Option<NextStep>, &'a StoreError> {
    // Only the outcomes that republish need the headers: a plain ack copies nothing.
    let original = || h::of(&delivery.properties);
    let label = label_of(disposition);
    let (queue, headers) = match disposition {
        Disposition::Sent { .. }
        | Disposition::Duplicate { .. }
        | Disposition::Dropped
        | Disposition::Skipped => {
            return Ok(None);
        }
        Disposition::RedisUnavailable(error) => return Err(error),
        Disposition::Retry { attempts, failure } => {
            let tier = ctx.topology.tier_for_attempt(*attempts, true);
            metrics::counter!(m::RETRIES_SCHEDULED, "tier" => tier.label.clone()).increment(1);
            tracing::info!(attempts, tier = %tier.label, class = %failure.class, errcode = failure.errcode, errmsg = %failure.errmsg, "retry scheduled");
            let now = OffsetDateTime::now_utc();
            let headers = dead_letter::for_retry(original(), *attempts, failure, now);
            (tier.queue.clone(), headers)
        }
        Disposition::Later => {
            let tier = ctx.topology.tier_for_attempt(1, false);
            (tier.queue.clone(), dead_letter::for_later(original()))
        }
        Disposition::Park { app, reason, wait } => {
            let headers = dead_letter::for_park(original(), app);
            let tier = if reason.grows() {
                ctx.topology
                    .tier_for_park(*wait, dead_letter::parks(&headers))
            } else {
                ctx.topology.tier_at_least(*wait)
            };
            metrics::counter!(m::PARKED, "reason" => reason.as_str()).increment(1);
            (tier.queue.clone(), headers)
        }
        Disposition::DeadLetter {
            attempts,
            failure,
            record,
        } => {
            metrics::counter!(m::DEAD_LETTERS, "reason" => failure.class.as_str()).increment(1);
            let letter_id = record.letter_id(&delivery.data);
            tracing::warn!(attempts, class = %failure.class, errcode = failure.errcode, errmsg = %failure.errmsg, letter_id, "dead-lettered");
            let now = OffsetDateTime::now_utc();
            let headers =
                dead_letter::for_dead_letter(original(), *attempts, failure, &letter_id, now);
            (ctx.topology.dead_letter_queue.clone(), headers)
        }
    };
    Ok(Some(NextStep {
        label,
        queue,
        headers,
    }))
}

/// Before a dead letter of a claimed event is published, records it as `dead_pending` on
/// the claim, so that from now on no delivery of the event can send it.
async fn record_pending(
    ctx: &Ctx,
    record: &DeadRecord,
    failure: &dead_letter::Failure,
) -> Result<PendingMark, StoreError> {
    let DeadRecord::Claimed {
        key,
        claim_id,
        replayed,
    } = record
    else {
        return Ok(PendingMark::Recorded);
    };
    let pending = PendingDeadLetter {
        class: failure.class.as_str().to_owned(),
        errcode: failure.errcode,
        errmsg: failure.errmsg.clone(),
    };
    ctx.hot_path
        .run_replicated("dead-letter record", key, async |conn| {
            claims::mark_dead_pending(conn, key, claim_id, *replayed, &pending).await
        })
        .await
}

/// Records that the event's dead letter is confirmed, so a redelivery is acked instead of
/// dead-lettered a second time. Best effort: a Redis failure leaves `dead_pending`, whose
/// redelivery is dead-lettered again (never sent).
async fn record_dead(ctx: &Ctx, record: &DeadRecord) {
    let (key, replayed) = match record {
        DeadRecord::Unrecorded => return,
        DeadRecord::Claimed { key, replayed, .. } | DeadRecord::Pending { key, replayed, .. } => {
            (key, *replayed)
        }
    };
    let ttl = ctx.config.policy.idempotency_ttl;
    let marked = ctx
        .hot_path
        .run("dead-letter record", async |conn| {
            claims::mark_dead(conn, key, replayed, ttl).await
        })
        .await;
    if let Err(e) = marked {
        tracing::warn!(error = %ErrorChain(&e), "dead letter confirmed, but not recorded in Redis");
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
