//! Never sending an event twice: each event id has a small hash in Redis, changed only by
//! the functions below (scripts, and the sent mark's `MULTI`), each on its own keys only.
//!
//! `state` is one of:
//! - `claimed`: the delivery holding `claim_id` may send it, until `deadline_ms` (Redis
//!   time). Its worker renews the deadline every couple of seconds while it works on the
//!   event ([`renew`]), so a killed worker's claims lapse within [`CLAIM_LEASE`];
//! - `sent`: WeChat accepted it (terminal);
//! - `failed`: a definite refusal or transport failure; the next attempt may claim it again;
//! - `dead_pending`: its dead letter is being published, with the reason recorded
//!   (`dl_class`, `dl_errcode`, `dl_errmsg`). Written *before* the publish, so a crash or a
//!   failed publish can never lead to a send: a redelivery dead-letters it again. (`ambiguous`,
//!   written by earlier versions, reads the same with the class `ambiguous`.);
//! - `dead`: its dead letter was confirmed; a redelivery (a crash between the confirm and
//!   the ack) is acked without a second dead letter;
//! - `skipped` (no grant under `policy.without_grant = "skip"`) and `refused` (43101 under
//!   `policy.on_refused = "drop"`): decided without a send and acked; a redelivery is acked
//!   too.
//!
//! The same hash is the event's **delivery record** (read by `store::event_record`), written
//! with the state by the same calls, so it costs no round trip of its own: `received_ms`, `type`, `app`
//! (first claim), `log` (one `time_ms errcode class` line per failed attempt, the last 20),
//! `sent_ms` and `msgid`, `dead_ms`, `outcome_ms`. All times are Redis's (`sent_ms`: its
//! time at the claim plus the worker's time since, see [`mark_sent`]).
//!
//! `dead_pending` and `dead` are terminal until an operator replays the message: a replay
//! raises `x-wxpush-replayed` above the count recorded with the state, and the event starts
//! over. The hash also remembers the openid a `js_code` was exchanged for, so a retry never
//! spends the single-use code twice.
//!
//! Every transition but `sent` checks the claim id: a delivery can only change the state of
//! the claim it holds, never a newer claim of the same event (another copy, or a later
//! attempt of the same process).
//!
//! A claim that lapsed without an answer means its worker died, or lost Redis, in the
//! middle: WeChat may have accepted the send. That is *ambiguous*, and the caller applies
//! `policy.on_ambiguous`. So is an event with no state at all whose delivery shows it was
//! handled before (redelivered, retried, or once found busy) while Redis's data is younger
//! than the loss window: Redis lost the state (a restart without persistence, a flush), so
//! "no state" cannot be read as "never sent". The epoch key tells: it holds the time
//! wxpush's data in this Redis began (no TTL), written by the first worker to start and
//! again by whoever finds it missing (Redis lost its data); the loss window runs from it.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

/// How long a claim stays live without renewal: a killed worker's events are decided this
/// long (plus a retry tier's delay) after it died.
pub const CLAIM_LEASE: Duration = Duration::from_secs(6);

/// The claim script; see the module docs. Returns `{answer, openid, …}`: for a taken claim
/// (`fresh`, `ambiguous`, `lost`) Redis's time, for the others what they carry.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = redis.call('HMGET', KEYS[1], 'state', 'openid')
local state, openid = found[1], found[2] or ''
if state == 'sent' then return {'sent', openid, redis.call('HGET', KEYS[1], 'msgid') or ''} end
if state == 'skipped' or state == 'refused' then return {'decided', openid, state} end
if (state == 'dead' or state == 'dead_pending' or state == 'ambiguous')
  and tonumber(ARGV[4]) <= tonumber(redis.call('HGET', KEYS[1], 'replayed') or '0') then
  if state == 'dead' then return {'dead', openid} end
  local f = redis.call('HMGET', KEYS[1], 'dl_class', 'dl_errcode', 'dl_errmsg', 'claim_id')
  return {'dead_pending', openid, f[1] or 'ambiguous', f[2] or '', f[3] or '', f[4] or ''}
end
local answer = 'fresh'
if state == 'claimed' then
  local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline_ms') or '0')
  if deadline > now then return {'busy', openid} end
  answer = 'ambiguous'
elseif not state then
  local lost_at = tonumber(redis.call('GET', KEYS[2]) or '')
  if not lost_at then
    redis.call('SET', KEYS[2], now)
    lost_at = now
  end
  if ARGV[5] == '1' and now - lost_at < tonumber(ARGV[6]) then answer = 'lost' end
end
local deadline = now + tonumber(ARGV[2])
if not state then
  redis.call('HSET', KEYS[1], 'state', 'claimed', 'claim_id', ARGV[1], 'deadline_ms', deadline,
    'received_ms', now, 'type', ARGV[7], 'app', ARGV[8])
else
  redis.call('HSET', KEYS[1], 'state', 'claimed', 'claim_id', ARGV[1], 'deadline_ms', deadline)
  redis.call('HSETNX', KEYS[1], 'received_ms', now)
  redis.call('HSETNX', KEYS[1], 'type', ARGV[7])
  redis.call('HSETNX', KEYS[1], 'app', ARGV[8])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {answer, openid, string.format('%.0f', now)}",
    )
});

/// Extends a claim if it is still this one's; 1 when it is.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'claimed' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'deadline_ms', now + tonumber(ARGV[2]))
return 1",
    )
});

/// Records a definite failure, if the claim is still this one's, and logs the attempt.
static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'claimed' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local log = redis.call('HGET', KEYS[1], 'log') or ''
log = log .. string.format('%.0f', now) .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. '\n'
local _, lines = string.gsub(log, '\n', '')
if lines > 20 then log = string.sub(log, string.find(log, '\n') + 1) end
redis.call('HSET', KEYS[1], 'state', 'failed', 'errcode', ARGV[2], 'log', log)
return 1",
    )
});

/// Records a decision without a send (`skipped`, `refused`), if the claim is this one's
/// (a failure recorded on it since, the 43101 itself, is fine).
static DECIDED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local state = redis.call('HGET', KEYS[1], 'state')
if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] or (state ~= 'claimed' and state ~= 'failed') then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'outcome_ms', now)
return 1",
    )
});

/// Records that the event is being dead-lettered, if the claim is still this one's (a
/// failure recorded on it since is fine). 1: recorded; 0: another claim or a final state
/// has the event; -1: there is no record at all (Redis lost it).
static DEAD_PENDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local state = redis.call('HGET', KEYS[1], 'state')
if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] or (state ~= 'claimed' and state ~= 'failed') then return 0 end
redis.call('HSET', KEYS[1], 'state', 'dead_pending', 'replayed', ARGV[2], 'dl_class', ARGV[3], 'dl_errcode', ARGV[4], 'dl_errmsg', ARGV[5])
return 1",
    )
});

/// What recording a pending dead letter found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingMark {
    /// Recorded: from now on no delivery of the event can send it.
    Recorded,
    /// Another claim, or a final state, has the event: another delivery carries it.
    Superseded,
    /// The record is gone (Redis lost it): nothing to record on.
    NoRecord,
}

/// Records that the event's dead letter is confirmed; only from `dead_pending`.
static DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'dead_pending' and state ~= 'ambiguous' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'state', 'dead', 'replayed', ARGV[1], 'dead_ms', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1",
    )
});

/// Remembers a js_code's openid on the claim; never creates a key (that would have no TTL).
static OPENID: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('HGET', KEYS[1], 'claim_id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'openid', ARGV[2])
return 1",
    )
});

/// One claim: unique per claim taken, so a stale task can never act on a newer claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimId(String);

impl ClaimId {
    pub fn new() -> ClaimId {
        ClaimId(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClaimId {
    fn default() -> ClaimId {
        ClaimId::new()
    }
}

/// The reason recorded with `dead_pending`, to dead-letter a redelivery the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDeadLetter {
    pub class: String,
    pub errcode: Option<i64>,
    pub errmsg: String,
}

/// What the claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to send. `openid` is a remembered js_code exchange, if any.
    Fresh { openid: Option<String> },
    /// Already sent: ack without sending.
    AlreadySent { msgid: Option<u64> },
    /// Already decided without a send: ack.
    AlreadyDecided(Decided),
    /// Another delivery holds a live claim on it right now.
    Busy,
    /// A previous claim lapsed without an answer; ours now, but it may have been sent.
    Ambiguous { openid: Option<String> },
    /// No state, but the delivery was handled before and Redis's data is younger than the
    /// loss window: the state was lost. Ours now, and as ambiguous as a lapsed claim.
    Lost,
    /// Its dead letter was decided but not confirmed (and it was not replayed since):
    /// dead-letter it again with the recorded reason, never send it.
    DeadLetterPending {
        pending: PendingDeadLetter,
        /// The id of the claim that decided the dead letter: the letter's id, which a
        /// redelivery publishing it again writes once more (see `broker::dead_letter`).
        letter_id: String,
    },
    /// Its dead letter was confirmed (and it was not replayed since): ack, nothing more.
    AlreadyDead,
}

/// What a claim needs to know about the delivery and the deployment.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub key: &'a str,
    /// The epoch key (see the module docs).
    pub epoch_key: &'a str,
    pub claim_id: &'a ClaimId,
    /// How long the claim lives unless renewed ([`CLAIM_LEASE`] in the worker).
    pub lease: Duration,
    /// The event record's lifetime (`policy.idempotency_ttl`).
    pub ttl: Duration,
    /// The message's `x-wxpush-replayed` count.
    pub replayed: i64,
    /// The delivery shows it was handled before (redelivered, retried, found busy).
    pub seen_before: bool,
    /// How long after Redis lost its data "no state" is suspect.
    pub loss_window: Duration,
    /// The event's type and app, for its delivery record.
    pub event_type: &'a str,
    pub app: &'a str,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// What the claim script found, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimReply {
    pub claim: Claim,
    /// Redis's time (Unix ms) when the claim was taken; `None` when it was not.
    pub at_ms: Option<u64>,
}

/// Claims the event for `claim_id` for `request.lease` (renewed by [`renew`]).
pub async fn claim(
    conn: &mut impl redis::aio::ConnectionLike,
    request: &ClaimRequest<'_>,
) -> redis::RedisResult<ClaimReply> {
    let reply: Vec<String> = CLAIM
        .key(request.key)
        .key(request.epoch_key)
        .arg(&request.claim_id.0)
        .arg(ms(request.lease))
        .arg(ms(request.ttl))
        .arg(request.replayed)
        .arg(if request.seen_before { "1" } else { "0" })
        .arg(ms(request.loss_window))
        .arg(request.event_type)
        .arg(request.app)
        .invoke_async(conn)
        .await?;
    let field = |i: usize| reply.get(i).cloned().unwrap_or_default();
    let openid = Some(field(1)).filter(|s| !s.is_empty());
    let claim = match field(0).as_str() {
        "sent" => Claim::AlreadySent {
            msgid: field(2).parse().ok(),
        },
        "decided" => Claim::AlreadyDecided(if field(2) == "refused" {
            Decided::Refused
        } else {
            Decided::Skipped
        }),
        "busy" => Claim::Busy,
        "ambiguous" => Claim::Ambiguous { openid },
        "lost" => Claim::Lost,
        "dead" => Claim::AlreadyDead,
        "dead_pending" => Claim::DeadLetterPending {
            pending: PendingDeadLetter {
                class: field(2),
                errcode: field(3).parse().ok(),
                errmsg: field(4),
            },
            letter_id: field(5),
        },
        _ => Claim::Fresh { openid },
    };
    let at_ms = match claim {
        Claim::Fresh { .. } | Claim::Ambiguous { .. } | Claim::Lost => field(2).parse().ok(),
        _ => None,
    };
    Ok(ClaimReply { claim, at_ms })
}

/// Extends the claim by `lease` if it is still `claim_id`'s; `false` when it is not
/// (another delivery claimed the event, or its state changed, or Redis lost it).
pub async fn renew(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    claim_id: &ClaimId,
    lease: Duration,
) -> redis::RedisResult<bool> {
    let renewed: i64 = RENEW
        .key(key)
        .arg(&claim_id.0)
        .arg(ms(lease))
        .invoke_async(conn)
        .await?;
    Ok(renewed == 1)
}

/// Renews many claims at once; the result says, per claim, whether it was renewed. The
/// renewals go out together on the multiplexed connection (pipelined on the wire, each to
/// its own node in a cluster, where one pipeline may not span slots).
pub async fn renew_all<C>(
    conn: &mut C,
    claims: &[(String, ClaimId)],
    lease: Duration,
) -> redis::RedisResult<Vec<bool>>
where
    C: redis::aio::ConnectionLike + Clone + Send,
{
    let renewals = claims.iter().map(|(key, claim_id)| {
        let mut conn = conn.clone();
        async move { renew(&mut conn, key, claim_id, lease).await }
    });
    futures_util::future::join_all(renewals)
        .await
        .into_iter()
        .collect()
}

/// Marks the event sent. Unconditional: "sent" is the truth whoever holds the claim. No
/// script (a script call costs Redis more than the rest of a message's writes): `sent_ms`
/// comes from the worker, as Redis's time at the claim plus the time since (see
/// [`ClaimReply::at_ms`]), so the record's times still share Redis's clock.
pub async fn mark_sent(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    msgid: u64,
    sent_ms: u64,
    ttl: Duration,
) -> redis::RedisResult<()> {
    redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(key)
        .arg(&["state", "sent", "msgid"])
        .arg(msgid)
        .arg("sent_ms")
        .arg(sent_ms)
        .ignore()
        .cmd("PEXPIRE")
        .arg(key)
        .arg(ms(ttl))
        .ignore()
        .query_async(conn)
        .await
}

/// How an event was decided without a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// No grant for (user, template) under `policy.without_grant = "skip"`.
    Skipped,
    /// 43101 under `policy.on_refused = "drop"`.
    Refused,
}

/// Records that the event was decided without a send, if the claim is still `claim_id`'s.
pub async fn mark_decided(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    claim_id: &ClaimId,
    decided: Decided,
) -> redis::RedisResult<bool> {
    let state = match decided {
        Decided::Skipped => "skipped",
        Decided::Refused => "refused",
    };
    let marked: i64 = DECIDED
        .key(key)
        .arg(&claim_id.0)
        .arg(state)
        .invoke_async(conn)
        .await?;
    Ok(marked == 1)
}

/// Records a definite failure so the next attempt claims afresh (not as ambiguous), if the
/// claim is still `claim_id`'s; `errcode` (or what stands for it: `transport`, `hold`, …)
/// and `class` go to the delivery record's log.
pub async fn mark_failed(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    claim_id: &ClaimId,
    errcode: &str,
    class: &str,
) -> redis::RedisResult<()> {
    let _: i64 = FAIL
        .key(key)
        .arg(&claim_id.0)
        .arg(errcode)
        .arg(class)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Records that the event is being dead-lettered for `pending`'s reason, if the claim is
/// still `claim_id`'s.
pub async fn mark_dead_pending(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    claim_id: &ClaimId,
    replayed: i64,
    pending: &PendingDeadLetter,
) -> redis::RedisResult<PendingMark> {
    let marked: i64 = DEAD_PENDING
        .key(key)
        .arg(&claim_id.0)
        .arg(replayed)
        .arg(&pending.class)
        .arg(pending.errcode.map(|c| c.to_string()).unwrap_or_default())
        .arg(&pending.errmsg)
        .invoke_async(conn)
        .await?;
    Ok(match marked {
        1 => PendingMark::Recorded,
        -1 => PendingMark::NoRecord,
        _ => PendingMark::Superseded,
    })
}

/// Marks the event's dead letter confirmed (see [`Claim::AlreadyDead`]); only from
/// `dead_pending`, so it can never overwrite a live claim or a sent event.
pub async fn mark_dead(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    replayed: i64,
    ttl: Duration,
) -> redis::RedisResult<bool> {
    let marked: i64 = DEAD
        .key(key)
        .arg(replayed)
        .arg(ms(ttl))
        .invoke_async(conn)
        .await?;
    Ok(marked == 1)
}

/// Remembers the openid a js_code was exchanged for, on `claim_id`'s claim; `false` when the
/// claim is no longer there to hold it.
pub async fn remember_openid(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    claim_id: &ClaimId,
    openid: &str,
) -> redis::RedisResult<bool> {
    let kept: i64 = OPENID
        .key(key)
        .arg(&claim_id.0)
        .arg(openid)
        .invoke_async(conn)
        .await?;
    Ok(kept == 1)
}

/// Writes the epoch key if it is missing, with Redis's time: `true` when it had to be
/// written. Missing means a new deployment, or a Redis that lost its data; the two cannot
/// be told apart, so both start the loss window (in a new deployment that costs at most a
/// few needless `ambiguous` verdicts for redeliveries in its first minutes).
pub async fn ensure_epoch(
    conn: &mut impl redis::aio::ConnectionLike,
    epoch_key: &str,
) -> redis::RedisResult<bool> {
    let time: (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    let now_ms = time.0 * 1000 + time.1 / 1000;
    let created: Option<String> = redis::cmd("SET")
        .arg(epoch_key)
        .arg(now_ms)
        .arg("NX")
        .query_async(conn)
        .await?;
    Ok(created.is_some())
}
