//! An app whose sends are held fleet-wide, written down once in Redis so every worker stops
//! at once (the decisions are `worker::app_hold`'s).
//!
//! One hash per app, fields:
//! - `reason`: `quota` (subscribe/send's daily quota is used up, 45009), `token_quota` (the
//!   token endpoint's is, 45009 on a fetch) or `minute` (the minute rate, 45011);
//! - `since_ms`: when the hold began (Redis time);
//! - `next_probe_ms`: for the quota reasons, when one send may next try whether the quota
//!   is back: `probe_every` later, but never after the next 00:00 China time (UTC+8), when
//!   WeChat resets the day's counts.
//!
//! A `minute` hold expires by itself at the start of the next minute (Redis time). A quota
//! hold lasts until a send succeeds ([`release`]); its 25-hour TTL only bounds a hold no
//! worker is left to release. A quota hold is never downgraded to a minute hold.
//!
//! Times are Redis's (`TIME`), so workers' clocks do not matter, and the answers give
//! durations from now, never instants.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

/// Why an app's sends are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// 45009 from subscribe/send: the app's daily send quota is used up.
    Quota,
    /// 45009 from a token fetch: the token endpoint's daily quota is used up.
    TokenQuota,
    /// 45011: the app's minute rate is reached.
    Minute,
}

impl HoldReason {
    /// The stable name, in Redis, metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::Quota => "quota",
            HoldReason::TokenQuota => "token_quota",
            HoldReason::Minute => "minute",
        }
    }

    fn parse(text: &str) -> Option<HoldReason> {
        [
            HoldReason::Quota,
            HoldReason::TokenQuota,
            HoldReason::Minute,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

/// An app's hold as Redis has it, times counted from the moment it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub reason: HoldReason,
    /// How long until a probe may go (quota), or until the hold ends (minute).
    pub wait: Duration,
    /// How long the hold has lasted.
    pub age: Duration,
}

/// Shared by the scripts: Redis time in ms, and the next 00:00 UTC+8 after it.
const NOW_AND_MIDNIGHT: &str = r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day, china = 86400000, 28800000
local midnight = (math.floor((now + china) / day) + 1) * day - china
";

/// KEYS[1] hold; ARGV[1] reason, ARGV[2] probe_every ms. Returns the hold as it now is,
/// `{reason, wait_ms, age_ms}` like [`READ`]: the wait until the next probe (quota reasons)
/// or until the hold ends (minute).
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_AND_MIDNIGHT}
local current = redis.call('HGET', KEYS[1], 'reason')
local function as_is(wait)
  local since = tonumber(redis.call('HGET', KEYS[1], 'since_ms') or now)
  return {{redis.call('HGET', KEYS[1], 'reason'), math.max(0, wait), math.max(0, now - since)}}
end
if ARGV[1] == 'minute' then
  if current and current ~= 'minute' then
    return as_is(tonumber(redis.call('HGET', KEYS[1], 'next_probe_ms')) - now)
  end
  local next_minute = (math.floor(now / 60000) + 1) * 60000
  if not current then
    redis.call('HSET', KEYS[1], 'reason', 'minute', 'since_ms', string.format('%.0f', now))
  end
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', next_minute))
  return as_is(next_minute - now)
end
if current == ARGV[1] then
  return as_is(tonumber(redis.call('HGET', KEYS[1], 'next_probe_ms')) - now)
end
local next_probe = math.min(now + tonumber(ARGV[2]), midnight)
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'since_ms', string.format('%.0f', now),
  'next_probe_ms', string.format('%.0f', next_probe))
redis.call('PEXPIRE', KEYS[1], 90000000)
return as_is(next_probe - now)"
    ))
});

/// KEYS[1] hold. Returns `{reason, wait_ms, age_ms}` or nil.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_AND_MIDNIGHT}
local h = redis.call('HMGET', KEYS[1], 'reason', 'since_ms', 'next_probe_ms')
if not h[1] then return nil end
local age = math.max(0, now - tonumber(h[2] or now))
local wait
if h[1] == 'minute' then wait = math.max(0, redis.call('PTTL', KEYS[1])) else
  wait = math.max(0, tonumber(h[3] or now) - now) end
return {{h[1], wait, age}}"
    ))
});

/// KEYS[1] hold; ARGV[1] probe_every ms. Takes the probe if one is due: moves the next one
/// on and returns 1; 0 when none is due or there is no quota hold.
static TAKE_PROBE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_AND_MIDNIGHT}
local h = redis.call('HMGET', KEYS[1], 'reason', 'next_probe_ms')
if not h[1] or h[1] == 'minute' then return 0 end
if tonumber(h[2]) > now then return 0 end
redis.call('HSET', KEYS[1], 'next_probe_ms',
  string.format('%.0f', math.min(now + tonumber(ARGV[1]), midnight)))
return 1"
    ))
});

/// KEYS[1] hold. Deletes a quota hold (the quota is back); a minute hold ends by itself.
/// Returns the reason released, or nil.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local reason = redis.call('HGET', KEYS[1], 'reason')
if reason and reason ~= 'minute' then redis.call('DEL', KEYS[1]) return reason end
return nil",
    )
});

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Holds the app's sends for `reason` (an existing quota hold stays as it is); returns the
/// hold as it now is (its `wait`: until the next probe or the hold's end), in the same
/// round trip.
pub async fn hold(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    reason: HoldReason,
    probe_every: Duration,
) -> redis::RedisResult<Option<Hold>> {
    let found: Option<(String, u64, u64)> = HOLD
        .key(key)
        .arg(reason.as_str())
        .arg(ms(probe_every))
        .invoke_async(conn)
        .await?;
    Ok(found.and_then(as_hold))
}

/// The app's hold, if any.
pub async fn read(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> redis::RedisResult<Option<Hold>> {
    let found: Option<(String, u64, u64)> = READ.key(key).invoke_async(conn).await?;
    Ok(found.and_then(as_hold))
}

/// A script's `{reason, wait_ms, age_ms}`.
fn as_hold((reason, wait, age): (String, u64, u64)) -> Option<Hold> {
    Some(Hold {
        reason: HoldReason::parse(&reason)?,
        wait: Duration::from_millis(wait),
        age: Duration::from_millis(age),
    })
}

/// Takes the quota probe if it is due (at most one worker gets it).
pub async fn take_probe(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    probe_every: Duration,
) -> redis::RedisResult<bool> {
    let taken: i64 = TAKE_PROBE
        .key(key)
        .arg(ms(probe_every))
        .invoke_async(conn)
        .await?;
    Ok(taken == 1)
}

/// Ends a quota hold after a successful send; returns the reason it had.
pub async fn release(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> redis::RedisResult<Option<HoldReason>> {
    let released: Option<String> = RELEASE.key(key).invoke_async(conn).await?;
    Ok(released.as_deref().and_then(HoldReason::parse))
}
