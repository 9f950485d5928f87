//! Never sending an event twice: each event id has a small hash in Redis.
//!
//! `state` is one of:
//! - `claimed`: a worker is sending it, until `deadline_ms`;
//! - `sent`: WeChat accepted it (terminal);
//! - `failed`: a definite refusal or transport failure; the next attempt may claim it again;
//! - `ambiguous`: to be dead-lettered as such under `on_ambiguous = "dead_letter"`; a
//!   redelivery is dead-lettered, never sent;
//! - `dead`: its dead letter was confirmed; a redelivery (a crash between the confirm and
//!   the ack) is acked without a second dead letter.
//!
//! `ambiguous` and `dead` are terminal until an operator replays the message: a replay raises
//! `x-wxpush-replayed` above the count recorded with the state, and the event starts over.
//! The hash also remembers the openid a `js_code` was exchanged for, so a retry never spends
//! the single-use code twice.
//!
//! A claim that expired without an answer means its worker died, or lost its connection,
//! in the middle: WeChat may have accepted the send. That is *ambiguous*, and the caller
//! applies `policy.on_ambiguous`. The deadline comes from Redis's clock, so workers'
//! clocks do not matter.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

/// Claim result: `{state, openid}`; see the module docs.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state')
local openid = redis.call('HGET', KEYS[1], 'openid') or ''
if state == 'sent' then return {'sent', openid} end
if (state == 'dead' or state == 'ambiguous')
  and tonumber(ARGV[4]) <= tonumber(redis.call('HGET', KEYS[1], 'replayed') or '0') then
  if state == 'dead' then return {'dead', openid} end
  return {'ambiguous_dead', openid}
end
local answer = 'claimed'
if state == 'claimed' then
  local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline_ms') or '0')
  if deadline > now then return {'busy', openid} end
  answer = 'ambiguous'
end
redis.call('HSET', KEYS[1], 'state', 'claimed', 'owner', ARGV[1], 'deadline_ms', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {answer, openid}",
    )
});

/// Records that the event is dead-lettered as ambiguous: terminal unless replayed. Written
/// before the dead letter is published, so a failed publish or a crash cannot lead to a send.
static AMBIGUOUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('HGET', KEYS[1], 'state') == 'sent' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'ambiguous', 'replayed', ARGV[1])
return 1",
    )
});

/// Records that the event's dead letter is confirmed (terminal unless replayed).
static DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('HGET', KEYS[1], 'state') == 'sent' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'dead', 'replayed', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1",
    )
});

/// Records a definite failure, unless another worker has meanwhile taken the event over or
/// sent it.
static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'claimed' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'errcode', ARGV[2])
return 1",
    )
});

/// What the claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to send. `openid` is a remembered js_code exchange, if any.
    Fresh { openid: Option<String> },
    /// Already sent: ack without sending.
    AlreadySent,
    /// Another worker is sending it right now.
    Busy,
    /// A previous claim expired without an answer; ours now, but it may have been sent.
    Ambiguous { openid: Option<String> },
    /// Marked ambiguous but its dead letter not confirmed (and not replayed since):
    /// dead-letter it, never send it.
    AmbiguousDeadLettered,
    /// Its dead letter was confirmed (and it was not replayed since): ack, nothing more.
    AlreadyDead,
}

/// Claims the event for `owner` for at most `hold` (then it is ambiguous); the record
/// lives `ttl`. `replayed` is the message's `x-wxpush-replayed` count.
pub async fn claim(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    owner: &str,
    hold: Duration,
    ttl: Duration,
    replayed: i64,
) -> redis::RedisResult<Claim> {
    let (state, openid): (String, String) = CLAIM
        .key(key)
        .arg(owner)
        .arg(hold.as_millis() as u64)
        .arg(ttl.as_millis() as u64)
        .arg(replayed)
        .invoke_async(conn)
        .await?;
    let openid = (!openid.is_empty()).then_some(openid);
    Ok(match state.as_str() {
        "sent" => Claim::AlreadySent,
        "busy" => Claim::Busy,
        "ambiguous" => Claim::Ambiguous { openid },
        "ambiguous_dead" => Claim::AmbiguousDeadLettered,
        "dead" => Claim::AlreadyDead,
        _ => Claim::Fresh { openid },
    })
}

/// Marks the event sent. Unconditional: "sent" is the truth whoever holds the claim.
pub async fn mark_sent(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    msgid: u64,
    ttl: Duration,
) -> redis::RedisResult<()> {
    redis::pipe()
        .cmd("HSET")
        .arg(key)
        .arg("state")
        .arg("sent")
        .arg("msgid")
        .arg(msgid)
        .ignore()
        .cmd("PEXPIRE")
        .arg(key)
        .arg(ttl.as_millis() as u64)
        .ignore()
        .query_async(conn)
        .await
}

/// Records a definite failure so the next attempt claims afresh (not as ambiguous).
pub async fn mark_failed(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    owner: &str,
    errcode: &str,
) -> redis::RedisResult<()> {
    let _: i64 = FAIL
        .key(key)
        .arg(owner)
        .arg(errcode)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Marks the event dead-lettered as ambiguous (see [`Claim::AmbiguousDeadLettered`]).
pub async fn mark_ambiguous(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    replayed: i64,
) -> redis::RedisResult<()> {
    let _: i64 = AMBIGUOUS.key(key).arg(replayed).invoke_async(conn).await?;
    Ok(())
}

/// Marks the event's dead letter confirmed (see [`Claim::AlreadyDead`]).
pub async fn mark_dead(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    replayed: i64,
    ttl: Duration,
) -> redis::RedisResult<()> {
    let _: i64 = DEAD
        .key(key)
        .arg(replayed)
        .arg(ttl.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Remembers the openid a js_code was exchanged for.
pub async fn remember_openid(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    openid: &str,
) -> redis::RedisResult<()> {
    redis::cmd("HSET")
        .arg(key)
        .arg("openid")
        .arg(openid)
        .query_async(conn)
        .await
}
