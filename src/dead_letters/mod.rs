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
//! services' queues would get copies) on the scan's own channel, in an AMQP transaction
//! (`tx.select`): each batch of `window` letters is published and acked, then committed in
//! one `tx.commit`. The commit makes a batch's republishes and its acks one step: a
//! connection that fails (a broker restart, a forced close, a killed `replay`) before the
//! commit leaves every letter of the batch in the dead-letter queue and none in the events
//! queue, and after it, all moved. So a letter is never in both queues. A republish the
//! broker returns as unroutable (the events queue was deleted meanwhile; RabbitMQ routes a
//! transaction's publishes at the commit and sends the returns before `commit-ok`) had its
//! ack committed with it: it is published back to the dead-letter queue, as it was, in a
//! transaction of its own, and counted `unroutable`.
//!
//! **Stopping.** A cancel (Ctrl-C, an API cancel) ends the scan after the batch in
//! progress, which is committed; everything else goes back.
//!
//! **Purging** acks matching letters without republishing them, committed per batch the
//! same way.
//!
//! **Copies.** The broker may hold two copies of one dead letter (a worker killed between
//! the dead letter's confirm and its Redis record publishes it again on redelivery; a
//! publish that timed out in a resource alarm lands later): they carry the same letter id
//! (`x-wxpush-letter-id`, the deciding claim's) and the same body. A scan treats messages
//! with the same id and body as one letter: a listing shows it once with its number of
//! copies, a filter's count and `limit` count it once, and replaying or purging it acks its
//! copies with it (in the same transaction or a later one), so the event goes back to the
//! worker once.

pub mod filter;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
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
    /// `amqp.confirm_timeout`: how long a batch's commit may take.
    pub confirm_timeout: Duration,
    /// Letters per batch (one transaction each).
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
    // Copy key → (index in `letters`, index in `kept`), to fold copies into their letter.
    let mut seen: HashMap<CopyKey, (usize, Option<usize>)> = HashMap::new();
    let result = loop {
        match scan.next(cancel).await {
            Ok(Some(delivery)) => {
                Progress::add(&progress.scanned, 1);
                let letter = Letter::of_delivery(scan.scanned as usize, &delivery);
                let key = CopyKey::of(&letter, &delivery.data);
                if let Some(&(at, kept_at)) = key.as_ref().and_then(|k| seen.get(k)) {
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
                if let Some(key) = key {
                    seen.insert(key, (letters.len(), kept_at));
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
    let mut batch = match Batch::open(&scan.channel, queues, *action).await {
        Ok(batch) => batch,
        Err(e) => {
            scan.close().await;
            return Err(e);
        }
    };
    let now = OffsetDateTime::now_utc();
    let mut taken: u64 = 0;
    // The letters this run took: a later copy goes with its letter (see the module docs).
    let mut taken_keys: HashSet<CopyKey> = HashSet::new();
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
        let key = CopyKey::of(&letter, &delivery.data);
        if key.as_ref().is_some_and(|k| taken_keys.contains(k)) {
            Progress::add(&progress.copies, 1);
            if let Err(e) = batch.push_copy(delivery).await {
                break Err(e);
            }
            continue;
        }
        if !filter.matches(&letter, now) {
            // Held unacked: it goes back to its place when the scan ends.
            continue;
        }
        Progress::add(&progress.matched, 1);
        taken += 1;
        on_match(&letter);
        if let Some(key) = key {
            taken_keys.insert(key);
        }
        if let Err(e) = batch.push(delivery, progress).await {
            break Err(e);
        }
    };
    // The batch in progress is committed even after a cancel or an error of the scan (if
    // the channel is gone, it was never committed and its letters stay).
    let flushed = batch.commit(progress).await;
    scan.close().await;
    progress.finished.store(true, Ordering::Relaxed);
    result?;
    flushed?;
    let mut tally = progress.snapshot();
    tally.interrupted = cancel.is_cancelled();
    Ok(tally)
}

/// What makes two messages copies of one dead letter: the same letter id *and* the same
/// body (a copy is the same message published again; a foreign writer reusing our headers on
/// other bodies must not make them one letter). The body goes in as a hash, so a scan keeps
/// no bodies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CopyKey {
    letter_id: String,
    body_hash: u64,
}

impl CopyKey {
    fn of(letter: &Letter, body: &[u8]) -> Option<CopyKey> {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let letter_id = letter.letter_id.clone()?;
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        Some(CopyKey {
            letter_id,
            body_hash: hasher.finish(),
        })
    }
}

/// The letters of the transaction in progress (see "Replaying" in the module docs).
struct Batch {
    action: Action,
    /// The scan's channel, in transaction mode unless the run only counts: a letter's
    /// ack must go on the channel it was delivered on, and a commit settles both.
    channel: Channel,
    events: String,
    dead: String,
    window: usize,
    commit_timeout: Duration,
    /// Letters taken in the open transaction, with their properties as republished
    /// (replay only: what matches a returned republish to its letter).
    taken: Vec<(Delivery, Option<BasicProperties>)>,
}

impl Batch {
    async fn open(channel: &Channel, queues: &Queues, action: Action) -> anyhow::Result<Batch> {
        if action != Action::Count {
            channel.tx_select().await.map_err(|e| {
                anyhow::anyhow!("cannot start a transaction on `{}`: {e}", queues.dead)
            })?;
        }
        Ok(Batch {
            action,
            channel: channel.clone(),
            events: queues.events.clone(),
            dead: queues.dead.clone(),
            window: queues.window.max(1),
            commit_timeout: queues.confirm_timeout,
            taken: Vec::new(),
        })
    }

    /// Takes a matching letter: republished (replay) and acked in the open transaction.
    async fn push(&mut self, delivery: Delivery, progress: &Progress) -> anyhow::Result<()> {
        if self.action == Action::Count {
            Progress::add(&progress.done, 1);
            return Ok(());
        }
        let republished = match self.action {
            Action::Replay => {
                let properties = publish::republished(
                    &delivery.properties,
                    dead_letter::for_replay(&h::of(&delivery.properties)),
                );
                self.publish_to(&self.events, &delivery.data, properties.clone())
                    .await?;
                Some(properties)
            }
            Action::Purge | Action::Count => None,
        };
        ack(&delivery).await?;
        self.taken.push((delivery, republished));
        if self.taken.len() >= self.window {
            self.commit(progress).await?;
        }
        Ok(())
    }

    /// A copy of a letter this run took: acked in the open transaction (in the same commit
    /// as its letter, or after it), never republished; a dry run leaves it.
    async fn push_copy(&mut self, delivery: Delivery) -> anyhow::Result<()> {
        if self.action == Action::Count {
            return Ok(());
        }
        ack(&delivery).await
    }

    async fn publish_to(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map(drop)
            .map_err(|e| anyhow::anyhow!("republishing to `{queue}` failed; the batch is not committed and its letters stay dead-lettered: {e}"))
    }

    /// Commits the open transaction: its republishes and acks happen together, or (the
    /// channel or connection went first) not at all. A republish the broker returned
    /// (the events queue was deleted meanwhile) goes back to the dead-letter queue as it
    /// was, in a transaction of its own.
    async fn commit(&mut self, progress: &Progress) -> anyhow::Result<()> {
        if self.taken.is_empty() {
            return Ok(());
        }
        let taken = std::mem::take(&mut self.taken);
        self.commit_now(taken.len()).await?;
        let mut returned = self.channel.wait_for_confirms().await.unwrap_or_default();
        let mut put_back = 0;
        for (delivery, republished) in &taken {
            if let Some(i) = returned.iter().position(|r| {
                r.data == delivery.data && republished.as_ref() == Some(&r.properties)
            }) {
                returned.swap_remove(i);
                self.publish_to(&self.dead, &delivery.data, delivery.properties.clone())
                    .await?;
                put_back += 1;
            }
        }
        if put_back > 0 {
            self.commit_now(put_back).await?;
            Progress::add(&progress.unroutable, put_back as u64);
        }
        Progress::add(&progress.done, (taken.len() - put_back) as u64);
        Ok(())
    }

    async fn commit_now(&self, letters: usize) -> anyhow::Result<()> {
        match tokio::time::timeout(self.commit_timeout, self.channel.tx_commit()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!(
                "the batch of {letters} letter(s) was not committed ({e}): they stay dead-lettered, none was republished"
            )),
            Err(_) => Err(anyhow::anyhow!(
                "RabbitMQ did not answer the commit of {letters} letter(s) within {:?} (a memory or disk alarm?): the batch is committed whole or not at all, never half",
                self.commit_timeout
            )),
        }
    }
}

async fn ack(delivery: &Delivery) -> anyhow::Result<()> {
    match delivery.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(anyhow::anyhow!(
            "the dead-letter channel closed: the batch in progress was not committed, its letters stay dead-lettered"
        )),
    }
}
