//! The claim state machine in Redis (`store::claims`), step by step: each interleaving of
//! two deliveries, a stale task, a redelivery or a Redis that lost its data is played out
//! deterministically against the real Redis, one script call at a time; in the Redis mode
//! under test (`WXPUSH_TEST_REDIS_MODE`: single, cluster or sentinel).

use std::time::Duration;

mod common;

use deadpool_redis::redis;
use wxpush::store::Conn;
use wxpush::store::claims::{
    self, Claim, ClaimId, ClaimReply, ClaimRequest, PendingDeadLetter, PendingMark,
};

/// Short enough that a test can wait for a claim to lapse.
const LEASE: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_secs(600);
const WINDOW: Duration = Duration::from_secs(600);

struct Keys {
    prefix: String,
    event: String,
    epoch: String,
}

impl Keys {
    fn new(name: &str) -> Keys {
        let prefix = format!("test-claims-{name}-{}", uuid::Uuid::new_v4().simple());
        Keys {
            event: format!("{prefix}:event:{{e-1}}"),
            epoch: wxpush::store::Keys::new(&prefix).event_epoch("e-1"),
            prefix,
        }
    }
}

/// The Redis of the mode under test (`WXPUSH_TEST_REDIS_MODE`, see `common::redis_mode`).
async fn conn() -> Conn {
    common::redis_conn(&common::redis_config("test-claims")).await
}

async fn claim(c: &mut Conn, keys: &Keys, id: &ClaimId, seen_before: bool) -> Claim {
    claim_replayed(c, keys, id, seen_before, 0).await
}

async fn claim_replayed(
    c: &mut Conn,
    keys: &Keys,
    id: &ClaimId,
    seen_before: bool,
    replayed: i64,
) -> Claim {
    claim_reply(c, keys, id, seen_before, replayed).await.claim
}

async fn claim_reply(
    c: &mut Conn,
    keys: &Keys,
    id: &ClaimId,
    seen_before: bool,
    replayed: i64,
) -> ClaimReply {
    let request = ClaimRequest {
        key: &keys.event,
        epoch_key: &keys.epoch,
        claim_id: id,
        lease: LEASE,
        ttl: TTL,
        replayed,
        seen_before,
        loss_window: WINDOW,
        event_type: "order.paid",
        app: "default",
    };
    claims::claim(c, &request).await.unwrap()
}

async fn state(c: &mut Conn, keys: &Keys) -> Option<String> {
    redis::cmd("HGET")
        .arg(&keys.event)
        .arg("state")
        .query_async(c)
        .await
        .unwrap()
}

/// Waits (polling, bounded) until a claim made with [`LEASE`] has lapsed.
async fn until_lapsed(c: &mut Conn, keys: &Keys) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let deadline_ms: Option<u64> = redis::cmd("HGET")
            .arg(&keys.event)
            .arg("deadline_ms")
            .query_async(c)
            .await
            .unwrap();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
        let now = secs * 1000 + micros / 1000;
        if deadline_ms.is_none_or(|d| d <= now) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "claim never lapsed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn cleanup(c: &mut Conn, keys: &Keys) {
    let _: () = redis::cmd("DEL")
        .arg(&keys.event)
        .arg(&keys.epoch)
        .query_async(c)
        .await
        .unwrap();
    let _ = &keys.prefix;
}

fn pending(class: &str) -> PendingDeadLetter {
    PendingDeadLetter {
        class: class.into(),
        errcode: Some(40003),
        errmsg: "invalid openid".into(),
    }
}

#[tokio::test]
async fn a_live_claim_is_busy_for_everyone_else() {
    let mut c = conn().await;
    let keys = Keys::new("busy");
    claims::ensure_epoch(&mut c, &keys.epoch).await.unwrap();
    let a = ClaimId::new();
    assert_eq!(
        claim(&mut c, &keys, &a, false).await,
        Claim::Fresh { openid: None }
    );
    assert_eq!(
        claim(&mut c, &keys, &ClaimId::new(), true).await,
        Claim::Busy
    );
    assert!(claims::renew(&mut c, &keys.event, &a, LEASE).await.unwrap());
    cleanup(&mut c, &keys).await;
}

/// A task whose claim lapsed (its worker stalled) and was taken by another delivery can
/// change nothing of the newer claim: not fail it, not dead-letter it, not renew it.
#[tokio::test]
async fn a_stale_task_cannot_touch_a_newer_claim() {
    let mut c = conn().await;
    let keys = Keys::new("stale");
    claims::ensure_epoch(&mut c, &keys.epoch).await.unwrap();
    let stale = ClaimId::new();
    claim(&mut c, &keys, &stale, false).await;
    until_lapsed(&mut c, &keys).await;
    let newer = ClaimId::new();
    assert_eq!(
        claim(&mut c, &keys, &newer, true).await,
        Claim::Ambiguous { openid: None },
        "a lapsed claim may have been sent"
    );

    claims::mark_failed(&mut c, &keys.event, &stale, "40003", "permanent")
        .await
        .unwrap();
    assert_eq!(state(&mut c, &keys).await.as_deref(), Some("claimed"));
    assert_eq!(
        claims::mark_dead_pending(&mut c, &keys.event, &stale, 0, &pending("permanent"))
            .await
            .unwrap(),
        PendingMark::Superseded
    );
    assert!(
        !claims::renew(&mut c, &keys.event, &stale, LEASE)
            .await
            .unwrap()
    );
    assert!(
        !claims::remember_openid(&mut c, &keys.event, &stale, "o-stale")
            .await
            .unwrap()
    );
    assert!(
        !claims::mark_dead(&mut c, &keys.event, 0, TTL)
            .await
            .unwrap(),
        "`dead` only follows `dead_pending`, never a live claim"
    );
    assert_eq!(
        claim(&mut c, &keys, &ClaimId::new(), true).await,
        Claim::Busy
    );
    assert!(
        claims::renew(&mut c, &keys.event, &newer, LEASE)
            .await
            .unwrap()
    );
    cleanup(&mut c, &keys).await;
}

/// `dead_pending` is written before the dead letter is published: a redelivery (the
/// publish failed, or the worker died) dead-letters it again with the same reason and never
/// sends it; once the dead letter is confirmed, a redelivery is only acked; a replay starts
/// it over.
#[tokio::test]
async fn a_pending_dead_letter_is_never_sent() {
    let mut c = conn().await;
    let keys = Keys::new("pending");
    claims::ensure_epoch(&mut c, &keys.epoch).await.unwrap();
    let a = ClaimId::new();
    claim(&mut c, &keys, &a, false).await;
    claims::mark_failed(&mut c, &keys.event, &a, "40003", "permanent")
        .await
        .unwrap();
    assert_eq!(
        claims::mark_dead_pending(&mut c, &keys.event, &a, 0, &pending("permanent"))
            .await
            .unwrap(),
        PendingMark::Recorded,
        "a failure recorded on our claim does not stop the dead letter"
    );
    assert_eq!(
        claim(&mut c, &keys, &ClaimId::new(), true).await,
        Claim::DeadLetterPending {
            pending: pending("permanent"),
            letter_id: a.as_str().to_owned(),
        },
        "a redelivery dead-letters it again, with the deciding claim's letter id"
    );
    assert!(
        claims::mark_dead(&mut c, &keys.event, 0, TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        claim(&mut c, &keys, &ClaimId::new(), true).await,
        Claim::AlreadyDead
    );
    assert_eq!(
        claim_replayed(&mut c, &keys, &ClaimId::new(), true, 1).await,
        Claim::Fresh { openid: None },
        "a replay claims it afresh"
    );
    cleanup(&mut c, &keys).await;
}

/// The state written by earlier versions for an ambiguous dead letter reads as pending.
#[tokio::test]
async fn the_earlier_ambiguous_state_reads_as_a_pending_dead_letter() {
    let mut c = conn().await;
    let keys = Keys::new("legacy");
    let _: () = redis::cmd("HSET")
        .arg(&keys.event)
        .arg("state")
        .arg("ambiguous")
        .arg("replayed")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    match claim(&mut c, &keys, &ClaimId::new(), true).await {
        Claim::DeadLetterPending { pending, letter_id } => {
            assert_eq!(pending.class, "ambiguous");
            assert_eq!(
                letter_id, "",
                "no claim id recorded: the body gives the letter id"
            );
        }
        other => panic!("{other:?}"),
    }
    cleanup(&mut c, &keys).await;
}

/// Redis lost its data (a restart without persistence, a flush): the epoch key is gone. An
/// event without state whose delivery was handled before is ambiguous, not fresh; one seen
/// for the first time is fresh.
#[tokio::test]
async fn after_redis_lost_its_data_no_state_is_not_never_sent() {
    let mut c = conn().await;
    let keys = Keys::new("lost");
    // An epoch older than the loss window: no loss in sight.
    let _: () = redis::cmd("SET")
        .arg(&keys.epoch)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        claim(&mut c, &keys, &ClaimId::new(), true).await,
        Claim::Fresh { openid: None },
        "with an old epoch, no state means never claimed"
    );
    // The loss: everything under the deployment's prefix is gone, the epoch key included.
    cleanup(&mut c, &keys).await;
    assert_eq!(
        claim(&mut c, &keys, &ClaimId::new(), true).await,
        Claim::Lost
    );
    let other = Keys {
        event: format!("{}:event:{{e-2}}", keys.prefix),
        epoch: wxpush::store::Keys::new(&keys.prefix).event_epoch("e-2"),
        prefix: keys.prefix.clone(),
    };
    assert_eq!(
        claim(&mut c, &other, &ClaimId::new(), false).await,
        Claim::Fresh { openid: None },
        "an event never handled before is fresh even after a loss"
    );
    assert!(
        !claims::ensure_epoch(&mut c, &keys.epoch).await.unwrap(),
        "the claim already recorded the loss"
    );
    let _: () = redis::cmd("DEL")
        .arg(&other.event)
        .query_async(&mut c)
        .await
        .unwrap();
    cleanup(&mut c, &keys).await;
    assert!(claims::ensure_epoch(&mut c, &keys.epoch).await.unwrap());
    cleanup(&mut c, &keys).await;
}

#[tokio::test]
async fn a_remembered_openid_never_recreates_a_lost_record() {
    let mut c = conn().await;
    let keys = Keys::new("openid");
    claims::ensure_epoch(&mut c, &keys.epoch).await.unwrap();
    let a = ClaimId::new();
    claim(&mut c, &keys, &a, false).await;
    assert!(
        claims::remember_openid(&mut c, &keys.event, &a, "o-1")
            .await
            .unwrap()
    );
    let _: () = redis::cmd("DEL")
        .arg(&keys.event)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        !claims::remember_openid(&mut c, &keys.event, &a, "o-1")
            .await
            .unwrap()
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(&keys.event)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!exists, "no key without a TTL was created");
    cleanup(&mut c, &keys).await;
}

#[tokio::test]
async fn renewals_go_in_one_round_trip_and_say_which_claims_are_still_ours() {
    let mut c = conn().await;
    let keys = Keys::new("renew-all");
    claims::ensure_epoch(&mut c, &keys.epoch).await.unwrap();
    let ours = ClaimId::new();
    claim(&mut c, &keys, &ours, false).await;
    let renewed = claims::renew_all(
        &mut c,
        &[
            (keys.event.clone(), ours.clone()),
            (keys.event.clone(), ClaimId::new()),
            (format!("{}:event:{{none}}", keys.prefix), ours.clone()),
        ],
        LEASE,
    )
    .await
    .unwrap();
    assert_eq!(renewed, [true, false, false]);
    // After a Redis restart the script cache is empty: renewals load the script again.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let renewed = claims::renew_all(&mut c, &[(keys.event.clone(), ours)], LEASE)
        .await
        .unwrap();
    assert_eq!(renewed, [true]);
    cleanup(&mut c, &keys).await;
}

/// A claim whose reply was lost (the script ran, the connection broke) is released by its
/// worker once Redis answers again: the next delivery claims it fresh, not as ambiguous —
/// it was never sent under that claim.
#[tokio::test]
async fn a_released_orphan_claim_reads_as_never_sent() {
    let mut c = conn().await;
    let keys = Keys::new("orphan");
    let _: () = redis::cmd("SET")
        .arg(&keys.epoch)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let orphan = ClaimId::new();
    claim(&mut c, &keys, &orphan, false).await;
    claims::mark_failed(&mut c, &keys.event, &orphan, "none", "orphan")
        .await
        .unwrap();
    assert_eq!(
        claim(&mut c, &keys, &ClaimId::new(), true).await,
        Claim::Fresh { openid: None }
    );
    cleanup(&mut c, &keys).await;
}

/// Redis's clock in Unix ms.
async fn redis_ms(c: &mut Conn) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    secs * 1000 + micros / 1000
}

/// A taken claim tells Redis's time, which the sent mark builds on (it runs no script); a
/// claim not taken tells none. The mark writes the state, the msgid and that time, and
/// renews the record's TTL.
#[tokio::test]
async fn a_taken_claim_tells_redis_time_and_the_sent_mark_keeps_it() {
    let mut c = conn().await;
    let keys = Keys::new("sent-time");
    claims::ensure_epoch(&mut c, &keys.epoch).await.unwrap();
    let before = redis_ms(&mut c).await;
    let taken = claim_reply(&mut c, &keys, &ClaimId::new(), false, 0).await;
    let after = redis_ms(&mut c).await;
    assert_eq!(taken.claim, Claim::Fresh { openid: None });
    let at = taken.at_ms.expect("a taken claim tells the time");
    assert!(
        (before..=after).contains(&at),
        "{before} <= {at} <= {after}"
    );
    let busy = claim_reply(&mut c, &keys, &ClaimId::new(), false, 0).await;
    assert_eq!((busy.claim, busy.at_ms), (Claim::Busy, None));

    redis::cmd("PEXPIRE")
        .arg(&keys.event)
        .arg(5_000)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    claims::mark_sent(&mut c, &keys.event, 42, at + 7, TTL)
        .await
        .unwrap();
    let (state, msgid, sent_ms, received_ms): (String, u64, u64, u64) = redis::cmd("HMGET")
        .arg(&keys.event)
        .arg(&["state", "msgid", "sent_ms", "received_ms"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((state.as_str(), msgid, sent_ms), ("sent", 42, at + 7));
    assert_eq!(received_ms, at, "the record's first time is the claim's");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys.event)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        ttl > 5_000,
        "the mark renews the TTL to {TTL:?}: {ttl} ms left"
    );
    assert_eq!(
        claim(&mut c, &keys, &ClaimId::new(), true).await,
        Claim::AlreadySent { msgid: Some(42) }
    );
}
