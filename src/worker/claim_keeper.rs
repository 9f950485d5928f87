//! Keeps this worker's claims alive while it works on their events, so that the claims of
//! a worker that died lapse within [`CLAIM_LEASE`] and its events are decided by another
//! worker seconds later (instead of after the longest possible send).
//!
//! A message task takes a [`ClaimSlot`] for its delivery; the claim phase puts the claim in
//! it; dropping the slot (the task ended, however) stops the renewals. A claim is renewed at
//! most until its hold runs out: a task stuck longer than any send can take lets its claim
//! lapse, and `send.rs` never sends without a claim that is still its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::HotPath;
use crate::store::claims::{self, CLAIM_LEASE, ClaimId};
use crate::telemetry::ErrorChain;

/// How often held claims are renewed: three times per lease, so one slow round trip does
/// not let a claim lapse.
pub const RENEW_EVERY: Duration = Duration::from_secs(CLAIM_LEASE.as_secs() / 3);

struct Held {
    key: String,
    claim_id: ClaimId,
    /// Renewed until then, not after.
    until: Instant,
}

/// The claims this worker holds. Cheap to clone.
#[derive(Clone, Default)]
pub struct ClaimKeeper {
    held: Arc<Mutex<HashMap<u64, Held>>>,
    next_slot: Arc<AtomicU64>,
    /// Claims that may have been taken although their reply was lost (the connection broke
    /// or timed out): released as soon as Redis answers again, so that a claim this worker
    /// never sent under does not lapse into "ambiguous".
    orphans: Arc<Mutex<Vec<(String, ClaimId)>>>,
}

/// A delivery's place in the keeper; the claim in it is renewed until the slot is dropped.
pub struct ClaimSlot {
    keeper: ClaimKeeper,
    id: u64,
}

impl ClaimKeeper {
    /// A slot for one delivery's claim.
    pub fn slot(&self) -> ClaimSlot {
        ClaimSlot {
            keeper: self.clone(),
            id: self.next_slot.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Remembers a claim whose reply never came, to release it later.
    pub fn orphan(&self, key: &str, claim_id: &ClaimId) {
        self.orphans
            .lock()
            .expect("claim keeper poisoned")
            .push((key.to_owned(), claim_id.clone()));
    }

    /// Releases the orphaned claims (as a failure under their own claim id: never sent),
    /// keeping those Redis did not answer for.
    async fn release_orphans(&self, redis: &HotPath) {
        let orphans = std::mem::take(&mut *self.orphans.lock().expect("claim keeper poisoned"));
        if orphans.is_empty() {
            return;
        }
        let mut unreleased = Vec::new();
        for (key, claim_id) in orphans {
            let released = redis
                .run("orphan claim release", async |conn| {
                    claims::mark_failed(conn, &key, &claim_id, "none", "orphan").await
                })
                .await
                .is_ok();
            if !released {
                unreleased.push((key, claim_id));
            }
        }
        let released_all = unreleased.is_empty();
        self.orphans
            .lock()
            .expect("claim keeper poisoned")
            .extend(unreleased);
        if released_all {
            tracing::info!("claims whose reply was lost are released");
        }
    }

    /// How many claims are being kept alive.
    pub fn len(&self) -> usize {
        self.held.lock().expect("claim keeper poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renews every held claim whose hold has not run out, and releases orphaned claims,
    /// every [`RENEW_EVERY`], until `stop`.
    pub async fn run(self, redis: HotPath, stop: CancellationToken) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while stop.run_until_cancelled(tick.tick()).await.is_some() {
            self.release_orphans(&redis).await;
            let due = self.due();
            if due.is_empty() {
                continue;
            }
            let renewed = redis
                .run("claim renewal", async |conn| {
                    claims::renew_all(conn, &due, CLAIM_LEASE).await
                })
                .await;
            match renewed {
                Ok(renewed) => {
                    let lost = renewed.iter().filter(|r| !**r).count();
                    if lost > 0 {
                        tracing::debug!(lost, "claims no longer ours at renewal");
                    }
                }
                Err(e) => tracing::warn!(
                    error = %ErrorChain(&e),
                    claims = due.len(),
                    "could not renew this worker's claims; they lapse unless Redis answers soon"
                ),
            }
        }
    }

    fn due(&self) -> Vec<(String, ClaimId)> {
        let now = Instant::now();
        let held = self.held.lock().expect("claim keeper poisoned");
        held.values()
            .filter(|h| h.until > now)
            .map(|h| (h.key.clone(), h.claim_id.clone()))
            .collect()
    }
}

impl ClaimSlot {
    /// Keeps `claim_id`'s claim on `key` alive for at most `hold` from now.
    pub fn hold(&self, key: &str, claim_id: &ClaimId, hold: Duration) {
        let held = Held {
            key: key.to_owned(),
            claim_id: claim_id.clone(),
            until: Instant::now() + hold,
        };
        self.keeper
            .held
            .lock()
            .expect("claim keeper poisoned")
            .insert(self.id, held);
    }
}

impl Drop for ClaimSlot {
    fn drop(&mut self) {
        if let Ok(mut held) = self.keeper.held.lock() {
            held.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_slot_is_no_longer_renewed() {
        let keeper = ClaimKeeper::default();
        let a = keeper.slot();
        let b = keeper.slot();
        a.hold("k:a", &ClaimId::new(), Duration::from_secs(60));
        b.hold("k:b", &ClaimId::new(), Duration::from_secs(60));
        assert_eq!(keeper.due().len(), 2);
        drop(a);
        let due = keeper.due();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, "k:b");
    }

    #[test]
    fn a_claim_past_its_hold_is_not_renewed() {
        let keeper = ClaimKeeper::default();
        let slot = keeper.slot();
        slot.hold("k:a", &ClaimId::new(), Duration::ZERO);
        assert!(keeper.due().is_empty());
        assert_eq!(keeper.len(), 1, "kept until the task ends");
    }
}
