//! The one implementation of reading, replaying and purging dead letters, used by the CLI
//! (`wxpush dead`, `wxpush replay`, `wxpush purge`), the JSON API and the console.
//!
//! **Scanning.** The dead-letter queue is read by a consumer of its own (no prefetch limit)
//! rather than one `basic.get` round trip per letter: the broker streams the letters, so a
//! scan runs at the speed of the connection. A letter the scan does not take (filtered out,
//! beyond `limit`, unroutable) is held unacked until the scan ends; closing the channel then
//! hands them all back, and RabbitMQ puts requeued messages of a classic queue back in their
//! original positions. A scan covers at most the queue's length at its start; it also ends
//! when the queue has no ready letter left (another scan holds the rest), so two scans at
//! once never wait for each other, and never see the same letter: each delivery goes to one
//! consumer only.
//!
//! **Replaying.** Matching letters are republished straight to the events queue (the
//! default exchange, routing key = `amqp.queue`, never through `amqp.exchange`, where other
//! services' queues would get copies) in batches of `window` publishes whose confirms are
//! awaited together, and each letter is acked from the dead-letter queue only after its own
//! republish was confirmed. One batch is in flight at a time, and that is what keeps an
//! unroutable republish exact: lapin hands a returned message to whichever confirm of its
//! channel resolves first, but RabbitMQ sends a publish's return before its confirm, so once
//! every confirm of a batch is in, the batch's returns are all in and belong to it; each is
//! matched to its letter by content, and that letter stays dead-lettered.
//!
//! **Stopping.** A cancel (Ctrl-C, an API cancel) ends the scan after the batch in flight:
//! its confirms are awaited and its letters acked, everything else goes back. If the
//! connection fails (a broker restart, a forced close), unconfirmed letters are never acked
//! and go back; only letters whose confirm arrived but whose ack did not reach the broker —
//! at most one batch — end up in both queues, and event ids make that harmless (the worker
//! sends an event once).
//!
//! **Purging** acks matching letters without republishing them.
//!
//! **Copies.** The broker may hold two copies of one dead letter (a worker killed between
//! the dead letter's confirm and its Redis record publishes it again on redelivery; a
//! publish that timed out in a resource alarm lands later): they carry the same letter id
//! (`x-wxpush-letter-id`, the deciding claim's). A scan treats them as one letter: a
//! listing shows it once with its number of copies, a filter's count and `limit` count it
//! once, and replaying or purging it acks its copies with it (after its republish was
//! confirmed), so the event goes back to the worker once.

pub mod filter;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::{BasicReturnMessage, Delivery};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ErrorKind};
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use self::filter::Filter;
use crate::broker::dead_letter::{self, Letter};
use crate::broker::{headers as h, publish};

/// How long a scan waits for the next letter before asking the broker whether any is
/// left ready for it.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// Republishes per batch when the caller does not say.
pub const DEFAULT_WINDOW: usize = 512;

/// What a run does with the matching letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Count them (a dry run); change nothing.
    Count,
    /// Move them to the events queue.
    Replay,
    /// Drop them (ack without republishing).
    Purge,
}

/// The queues a run works on.
#[derive(Debug, Clone)]
pub struct Queues {
    /// `amqp.dead_letter_queue`.
    pub dead: String,
    /// `amqp.queue`: where replayed letters go.
    pub events: String,
    /// `amqp.confirm_timeout`.
    pub confirm_timeout: Duration,
    /// Republishes whose confirms are awaited together.
    pub window: usize,
}

impl Queues {
    pub fn of(amqp: &crate::config::AmqpConfig) -> Queues {
        Queues {
            dead: amqp.dead_letter_queue.clone(),
            events: amqp.queue.clone(),
            confirm_timeout: amqp.confirm_timeout,
            window: DEFAULT_WINDOW,
        }
    }
}

/// Live counts of a run, shared with whoever reports progress (the CLI's bar, an API job).
#[derive(Debug, Default)]
pub struct Progress {
    /// Letters in the queue when the scan started.
    pub total: AtomicU64,
    pub scanned: AtomicU64,
    pub matched: AtomicU64,
    /// Replayed or purged (for a dry run: matched within the limit).
    pub done: AtomicU64,
    pub unroutable: AtomicU64,
    /// Copies of letters already seen in this run, collapsed into them.
    pub copies: AtomicU64,
    pub finished: AtomicBool,
}

/// What a run did (also the progress snapshot of a running one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub total: u64,
    pub scanned: u64,
    /// Matched the filter (taken or not: `limit` may stop a run before it takes them all).
    pub matched: u64,
    /// Replayed, purged, or (dry run) would be.
    pub done: u64,
    /// Kept because the events queue did not take them (it was deleted meanwhile).
    pub unroutable: u64,
    /// Copies of letters already counted (same letter id): not counted again, and acked
    /// with their letter when it is replayed or purged.
    pub copies: u64,
    pub interrupted: bool,
    pub finished: bool,
}

impl Progress {
    pub fn snapshot(&self) -> Tally {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Tally {
            total: get(&self.total),
            scanned: get(&self.scanned),
            matched: get(&self.matched),
            done: get(&self.done),
            unroutable: get(&self.unroutable),
            copies: get(&self.copies),
            interrupted: false,
            finished: self.finished.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One letter as read, with what a listing needs to show it.
#[derive(Debug, Clone)]
pub struct Read {
    pub letter: Letter,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// Opens a channel of its own on the queue (passively: it must exist) and returns it with
/// the number of ready messages in it.
pub async fn open_queue(connection: &Connection, queue: &str) -> anyhow::Result<(Channel, u32)> {
    let channel = connection.create_channel().await?;
    match crate::broker::inspect_queue(&channel, queue).await {
        Ok(q) => Ok((channel, q.message_count())),
        Err(e) if is_not_found(&e) => Err(anyhow::anyhow!(
            "the dead-letter queue `{queue}` does not exist (nothing was ever dead-lettered, or `amqp.dead_letter_queue` names another queue)"
        )),
        Err(e) => Err(anyhow::anyhow!("cannot open queue `{queue}`: {e}")),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p) if p.get_id() == 404)
}

/// A consumer on the dead-letter queue that ends after `total` letters, or when none is
/// left ready for it.
struct Scan {
    channel: Channel,
    /// For the "anything left?" question: a passive declare that fails closes its channel,
    /// which must not be the consuming one.
    probe: Channel,
    consumer: lapin::Consumer,
    queue: String,
    total: u64,
    scanned: u64,
}

impl Scan {
    async fn open(
        connection: &Connection,
        queue: &str,
        progress: &Progress,
    ) -> anyhow::Result<Scan> {
        let (probe, total) = open_queue(connection, queue).await?;
        let channel = connection.create_channel().await?;
        // No prefetch limit: held (unacked) letters must not stop the stream.
        let consumer = channel
            .basic_consume(
                queue.into(),
                format!("wxpush-scan-{}", uuid::Uuid::new_v4())
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot read `{queue}`: {e}"))?;
        progress.total.store(u64::from(total), Ordering::Relaxed);
        Ok(Scan {
            channel,
            probe,
            consumer,
            queue: queue.to_owned(),
            total: u64::from(total),
            scanned: 0,
        })
    }

    /// The next letter, or `None` when the scan is over (or `cancel` fired).
    async fn next(&mut self, cancel: &CancellationToken) -> anyhow::Result<Option<Delivery>> {
        while self.scanned < self.total {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(None),
                next = tokio::time::timeout(IDLE_CHECK, self.consumer.next()) => match next {
                    Ok(Some(Ok(delivery))) => {
                        self.scanned += 1;
                        return Ok(Some(delivery));
                    }
                    Ok(Some(Err(e))) => {
                        return Err(anyhow::anyhow!("cannot read `{}`: {e}", self.queue));
                    }
                    Ok(None) => {
                        return Err(anyhow::anyhow!("the broker ended the scan of `{}`", self.queue));
                    }
                    Err(_idle) => {
                        if self.ready().await? == 0 {
                            return Ok(None);
                        }
                    }
                },
            }
        }
        Ok(None)
    }

    async fn ready(&self) -> anyhow::Result<u32> {
        crate::broker::inspect_queue(&self.probe, &self.queue)
            .await
            .map(|q| q.message_count())
            .map_err(|e| anyhow::anyhow!("cannot look at `{}`: {e}", self.queue))
    }

    /// Ends the scan: every letter not acked goes back to its place.
    async fn close(self) {
        let _ = self.channel.close(200, "scan done".into()).await;
        let _ = self.probe.close(200, "scan done".into()).await;
    }
}

/// Reads the dead letters without taking any (`wxpush dead`, `GET /api/dead`, the console):
/// up to `limit` letters from the head of the queue, with their headers and bodies when
/// `keep` says so. Everything goes back to its place when the scan ends.
pub async fn read(
    connection: &Connection,
    queue: &str,
    limit: Option<u64>,
    progress: &Progress,
    cancel: &CancellationToken,
    mut keep: impl FnMut(&Letter) -> bool,
) -> anyhow::Result<(Vec<Letter>, Vec<Read>)> {
    let mut scan = Scan::open(connection, queue, progress).await?;
    if let Some(limit) = limit {
        scan.total = scan.total.min(limit);
    }
    let mut letters: Vec<Letter> = Vec::new();
    let mut kept: Vec<Read> = Vec::new();
    // Letter id → (index in `letters`, index in `kept`), to fold copies into their letter.
    let mut seen: HashMap<String, (usize, Option<usize>)> = HashMap::new();
    let result = loop {
        match scan.next(cancel).await {
            Ok(Some(delivery)) => {
                Progress::add(&progress.scanned, 1);
                let letter = Letter::of_delivery(scan.scanned as usize, &delivery);
                if let Some(&(at, kept_at)) = letter.letter_id.as_ref().and_then(|id| seen.get(id))
                {
                    Progress::add(&progress.copies, 1);
                    letters[at].copies += 1;
                    if let Some(k) = kept_at {
                        kept[k].letter.copies += 1;
                    }
                    continue;
                }
                let kept_at = keep(&letter).then(|| {
                    kept.push(Read {
                        letter: letter.clone(),
                        properties: delivery.properties.clone(),
                        body: delivery.data.clone(),
                    });
                    kept.len() - 1
                });
                if let Some(id) = &letter.letter_id {
                    seen.insert(id.clone(), (letters.len(), kept_at));
                }
                letters.push(letter);
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    scan.close().await;
    progress.finished.store(true, Ordering::Relaxed);
    result.map(|()| (letters, kept))
}

/// What a run does to which letters.
#[derive(Debug, Clone)]
pub struct Order {
    pub filter: Filter,
    pub action: Action,
    /// Take at most this many matching letters.
    pub limit: Option<u64>,
}

/// Replays, purges or counts the letters the order's filter selects, at most its `limit`.
/// `on_match` sees each selected letter (the CLI's dry run prints them). Returns the tally;
/// an error says what stopped the run, and the tally of what happened before is in
/// `progress`.
pub async fn run(
    connection: &Connection,
    queues: &Queues,
    order: &Order,
    progress: &Progress,
    cancel: &CancellationToken,
    mut on_match: impl FnMut(&Letter),
) -> anyhow::Result<Tally> {
    let Order {
        filter,
        action,
        limit,
    } = order;
    let mut scan = Scan::open(connection, &queues.dead, progress).await?;
    let mut batch = Batch::open(connection, queues, *action).await?;
    let now = OffsetDateTime::now_utc();
    let mut taken: u64 = 0;
    // Letter ids this run took: a later copy goes with its letter (see the module docs).
    let mut taken_ids: HashSet<String> = HashSet::new();
    let result = loop {
        if limit.is_some_and(|l| taken >= l) {
            break Ok(());
        }
        let delivery = match scan.next(cancel).await {
            Ok(Some(d)) => d,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        Progress::add(&progress.scanned, 1);
        let letter = Letter::of_delivery(scan.scanned as usize, &delivery);
        if let Some(id) = letter
            .letter_id
            .as_ref()
            .filter(|id| taken_ids.contains(*id))
        {
            Progress::add(&progress.copies, 1);
            batch.push_copy(delivery, id.clone());
            continue;
        }
        if !filter.matches(&letter, now) {
            // Held unacked: it goes back to its place when the scan ends.
            continue;
        }
        Progress::add(&progress.matched, 1);
        taken += 1;
        on_match(&letter);
        if let Some(id) = letter.letter_id {
            taken_ids.insert(id);
        }
        if let Err(e) = batch.push(delivery, progress).await {
            break Err(e);
        }
    };
    // The batch in flight finishes even after a cancel or an error of the scan: its
    // letters are acked only if confirmed.
    let flushed = batch.flush(progress).await;
    batch.close().await;
    scan.close().await;
    progress.finished.store(true, Ordering::Relaxed);
    result?;
    flushed?;
    let mut tally = progress.snapshot();
    tally.interrupted = cancel.is_cancelled();
    Ok(tally)
}

/// Taken letters waiting for their batch to be settled.
struct Batch {
    action: Action,
    /// Confirm-mode channel for the republishes (replay only).
    channel: Option<Channel>,
    events: String,
    window: usize,
    confirm_timeout: Duration,
    pending: Vec<(Delivery, BasicProperties, lapin::PublisherConfirm)>,
    /// Copies of taken letters, by letter id, waiting for their letter to be settled.
    copies: Vec<(Delivery, String)>,
    /// Letter ids whose letter this run replayed or purged: their copies go too.
    settled: HashSet<String>,
}

impl Batch {
    async fn open(
        connection: &Connection,
        queues: &Queues,
        action: Action,
    ) -> anyhow::Result<Batch> {
        let channel = if action == Action::Replay {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Some(channel)
        } else {
            None
        };
        Ok(Batch {
            action,
            channel,
            events: queues.events.clone(),
            window: queues.window.max(1),
            confirm_timeout: queues.confirm_timeout,
            pending: Vec::new(),
            copies: Vec::new(),
            settled: HashSet::new(),
        })
    }

    /// A copy of a letter this run took: acked once that letter is replayed or purged (a
    /// dry run leaves it), never republished itself.
    fn push_copy(&mut self, delivery: Delivery, letter_id: String) {
        if self.action != Action::Count {
            self.copies.push((delivery, letter_id));
        }
    }

    async fn push(&mut self, delivery: Delivery, progress: &Progress) -> anyhow::Result<()> {
        match (self.action, &self.channel) {
            (Action::Count, _) => Progress::add(&progress.done, 1),
            (Action::Purge, _) => {
                ack(&delivery).await?;
                self.mark_settled(&delivery);
                Progress::add(&progress.done, 1);
                self.settle_copies().await?;
            }
            (Action::Replay, Some(channel)) => {
                let properties = publish::republished(
                    &delivery.properties,
                    dead_letter::for_replay(&h::of(&delivery.properties)),
                );
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        self.events.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &delivery.data,
                        properties.clone(),
                    )
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("republishing failed, the letter stays dead-lettered: {e}")
                    })?;
                self.pending.push((delivery, properties, confirm));
                if self.pending.len() >= self.window {
                    self.flush(progress).await?;
                }
            }
            (Action::Replay, None) => unreachable!("a replay batch has a channel"),
        }
        Ok(())
    }

    /// Awaits every confirm of the batch, then acks each letter whose republish was
    /// confirmed and not returned.
    async fn flush(&mut self, progress: &Progress) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let mut confirmed = Vec::with_capacity(pending.len());
        let mut returned: Vec<BasicReturnMessage> = Vec::new();
        let mut failure = None;
        for (delivery, properties, confirm) in pending {
            match tokio::time::timeout(self.confirm_timeout, confirm).await {
                Ok(Ok(lapin::Confirmation::Ack(back))) => {
                    returned.extend(back);
                    confirmed.push((delivery, properties));
                }
                Ok(Ok(_nack)) => {
                    failure.get_or_insert_with(|| {
                        anyhow::anyhow!(
                            "RabbitMQ refused (nacked) a republish to `{}`; it stays dead-lettered",
                            self.events
                        )
                    });
                }
                Ok(Err(e)) => {
                    failure.get_or_insert_with(|| {
                        anyhow::anyhow!(
                            "republishing failed, unconfirmed letters stay dead-lettered: {e}"
                        )
                    });
                }
                Err(_) => {
                    failure.get_or_insert_with(|| anyhow::anyhow!("RabbitMQ did not confirm republishes to `{}` within {:?} (a memory or disk alarm?); they stay dead-lettered", self.events, self.confirm_timeout));
                }
            }
        }
        for (delivery, properties) in confirmed {
            if let Some(i) = returned
                .iter()
                .position(|r| r.data == delivery.data && r.properties == properties)
            {
                // Not enqueued: it stays where it is.
                returned.swap_remove(i);
                Progress::add(&progress.unroutable, 1);
                continue;
            }
            if let Err(e) = ack(&delivery).await {
                failure.get_or_insert(e);
                break;
            }
            self.mark_settled(&delivery);
            Progress::add(&progress.done, 1);
        }
        if failure.is_none()
            && let Err(e) = self.settle_copies().await
        {
            failure = Some(e);
        }
        failure.map_or(Ok(()), Err)
    }

    fn mark_settled(&mut self, delivery: &Delivery) {
        if let Some(id) = dead_letter::letter_id(&h::of(&delivery.properties)) {
            self.settled.insert(id);
        }
    }

    /// Acks the copies whose letter was replayed or purged; the others (their letter stays,
    /// e.g. unroutable) go back when the scan ends.
    async fn settle_copies(&mut self) -> anyhow::Result<()> {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.copies)
            .into_iter()
            .partition(|(_, id)| self.settled.contains(id));
        self.copies = waiting;
        for (copy, _) in done {
            ack(&copy).await?;
        }
        Ok(())
    }

    async fn close(self) {
        if let Some(channel) = self.channel {
            let _ = channel.close(200, "replay done".into()).await;
        }
    }
}

async fn ack(delivery: &Delivery) -> anyhow::Result<()> {
    match delivery.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(anyhow::anyhow!(
            "the dead-letter channel closed before a letter was acked: it was replayed and may also be back in the dead-letter queue"
        )),
    }
}
