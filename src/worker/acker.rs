//! Batched acks: one `basic.ack(multiple = true)` for many settled messages.
//!
//! Messages finish out of order, so a multiple-ack may only cover tags below which *every*
//! delivery is settled. Each task reports its tag here once its outcome is durable (sent, or
//! its retry confirmed), or once it was acked or nacked on its own (dead letters are acked at
//! once). Every `FLUSH_EVERY`, or when
//! `FLUSH_AT` acks wait, the acker acks up to the highest ready tag of the contiguous settled
//! run. An ack still follows the durable outcome; it only leaves a few milliseconds later, and
//! if the channel dies first the broker redelivers, which idempotency makes harmless.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::mpsc;

const FLUSH_EVERY: Duration = Duration::from_millis(5);
const FLUSH_AT: usize = 64;

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Ready to be acked.
    Ack,
    /// Acked or nacked on its own already: it only closes the gap.
    Elsewhere,
}

/// The sending side, cloned into every message task.
#[derive(Clone)]
pub struct Acker {
    tx: mpsc::UnboundedSender<(u64, Settled)>,
}

impl Acker {
    /// Starts the acker task for a consuming channel whose tags start at 1. It ends after a
    /// last flush when [`Flusher::finish`] is called (or every `Acker` is dropped).
    pub fn spawn(channel: Channel) -> (Acker, Flusher) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(run(channel, rx, stop.clone()));
        (Acker { tx }, Flusher { stop, task })
    }

    pub fn ack(&self, tag: u64) {
        let _ = self.tx.send((tag, Settled::Ack));
    }

    /// The delivery was acked or nacked on its own: it only closes the gap.
    pub fn settled_elsewhere(&self, tag: u64) {
        let _ = self.tx.send((tag, Settled::Elsewhere));
    }
}

/// Ends the acker: what is settled by then is acked, later reports are dropped (those
/// messages are redelivered when the channel closes).
pub struct Flusher {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Flusher {
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Settled tags not yet covered by an ack, and the tag below which all are covered.
#[derive(Debug, Default)]
struct Window {
    settled: BTreeMap<u64, Settled>,
    covered: u64,
    waiting_acks: usize,
}

impl Window {
    fn insert(&mut self, tag: u64, how: Settled) {
        if tag > self.covered {
            self.settled.insert(tag, how);
            if how == Settled::Ack {
                self.waiting_acks += 1;
            }
        }
    }

    /// Advances over the contiguous settled run; returns the tag to multiple-ack, if any.
    fn advance(&mut self) -> Option<u64> {
        let mut ack_upto = None;
        while let Some(how) = self.settled.remove(&(self.covered + 1)) {
            self.covered += 1;
            if how == Settled::Ack {
                ack_upto = Some(self.covered);
                self.waiting_acks -= 1;
            }
        }
        ack_upto
    }
}

async fn run(
    channel: Channel,
    mut rx: mpsc::UnboundedReceiver<(u64, Settled)>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut window = Window::default();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (flush, closed) = tokio::select! {
            message = rx.recv() => match message {
                Some((tag, how)) => {
                    window.insert(tag, how);
                    (window.waiting_acks >= FLUSH_AT, false)
                }
                None => (true, true),
            },
            _ = tick.tick() => (true, false),
            _ = stop.cancelled() => {
                while let Ok((tag, how)) = rx.try_recv() {
                    window.insert(tag, how);
                }
                (true, true)
            }
        };
        if flush && let Some(tag) = window.advance() {
            let options = BasicAckOptions { multiple: true };
            if let Err(e) = channel.basic_ack(tag, options).await {
                // The channel is gone: the broker redelivers, idempotency makes that harmless.
                tracing::warn!(error = %e, up_to = tag, "ack failed; those messages will be redelivered");
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_only_the_contiguous_settled_run() {
        let mut w = Window::default();
        w.insert(2, Settled::Ack);
        w.insert(3, Settled::Ack);
        assert_eq!(w.advance(), None, "tag 1 is still in flight");
        w.insert(1, Settled::Ack);
        assert_eq!(w.advance(), Some(3));
        w.insert(5, Settled::Ack);
        w.insert(4, Settled::Elsewhere);
        assert_eq!(
            w.advance(),
            Some(5),
            "a tag settled elsewhere closes the gap"
        );
        w.insert(6, Settled::Elsewhere);
        assert_eq!(
            w.advance(),
            None,
            "never multiple-ack up to a tag settled elsewhere"
        );
        assert_eq!(w.covered, 6);
        assert_eq!(w.waiting_acks, 0);
    }
}
