//! The ceiling: the same messages through the same broker with the same prefetch, consumed
//! by a loop that does nothing but ack each delivery. No worker can beat it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};

use super::{Plan, load};
use wxpush::broker::{self, publish::Publisher};
use wxpush::cli::progress;
use wxpush::cli::publish::Prepared;
use wxpush::config::QueueType;

pub fn queue_name(plan: &Plan) -> String {
    format!("{}.baseline", plan.prefix)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Baseline {
    pub messages: usize,
    /// The ceiling: the faster of the two loops below, in messages per second from the first
    /// delivery to the last ack.
    pub rate: f64,
    /// Each ack handed off without waiting for it (a task per ack, as the worker does).
    pub pipelined_rate: f64,
    /// Each ack awaited before taking the next delivery.
    pub serial_rate: f64,
}

pub async fn run(plan: &Plan, events: &Arc<Vec<Prepared>>) -> anyhow::Result<Baseline> {
    let pipelined_rate = pass(plan, events, true).await?;
    let serial_rate = pass(plan, events, false).await?;
    Ok(Baseline {
        messages: events.len(),
        rate: pipelined_rate.max(serial_rate),
        pipelined_rate,
        serial_rate,
    })
}

/// Publishes the events to the baseline queue, then consumes and acks them all.
async fn pass(plan: &Plan, events: &Arc<Vec<Prepared>>, pipelined: bool) -> anyhow::Result<f64> {
    let amqp = &plan.config.amqp;
    let queue = queue_name(plan);
    let connection = broker::connect(&amqp.url, "bench baseline").await?;
    let publisher = Publisher::open(&connection).await?;
    let mut args = FieldTable::default();
    if amqp.queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    publisher
        .channel()
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    load::publish(
        &publisher,
        "",
        Some(&queue),
        events.clone(),
        plan.args.publish_window,
        None,
        &progress::bar(events.len() as u64, "baseline: publishing"),
    )
    .await?;

    let consuming = broker::connect(&amqp.url, "bench baseline consumer").await?;
    let channel = consuming.create_channel().await?;
    channel
        .basic_qos(amqp.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "wxpush-bench-baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let what = if pipelined {
        "baseline: consume, ack pipelined"
    } else {
        "baseline: consume, ack awaited"
    };
    let bar = progress::bar(events.len() as u64, what);
    let mut first = None;
    let mut acks = tokio::task::JoinSet::new();
    let mut count = 0;
    while count < events.len() {
        let next = tokio::time::timeout(plan.args.stall_timeout, consumer.next()).await;
        let delivery = match next {
            Ok(Some(delivery)) => delivery?,
            Ok(None) => anyhow::bail!("the baseline consumer was cancelled"),
            Err(_) => anyhow::bail!(
                "baseline: {count} of {} consumed, nothing for {:?}",
                events.len(),
                plan.args.stall_timeout
            ),
        };
        first.get_or_insert_with(Instant::now);
        if pipelined {
            acks.spawn(async move { delivery.ack(BasicAckOptions::default()).await });
        } else {
            delivery.ack(BasicAckOptions::default()).await?;
        }
        count += 1;
        bar.inc(1);
    }
    while let Some(acked) = acks.join_next().await {
        acked??;
    }
    let seconds = first.map_or(Duration::ZERO, |f| f.elapsed()).as_secs_f64();
    bar.finish_and_clear();
    let _ = consuming.close(200, "baseline done".into()).await;
    let _ = publisher
        .channel()
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "baseline done".into()).await;
    Ok(count.saturating_sub(1) as f64 / seconds.max(1e-9))
}
