//! The fleet-wide `apps.NAME.max_rate` limiter: a GCRA (generic cell rate algorithm) kept
//! as one number in Redis, the theoretical arrival time of the next send, moved by one
//! atomic script per send.
//!
//! Each call *reserves* the next free slot, `interval` after the previous one, and answers
//! how long to wait for it, so sends go out spaced and in the order they asked, whichever
//! worker asked. A slot further away than `max_wait` is not reserved: the caller waits
//! elsewhere (a retry tier) and asks again. The state lives in Redis with Redis's clock, so
//! it survives a worker's death; a dead worker's reserved slots simply go unused.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

/// KEYS[1] the app's rate key; ARGV[1] interval µs, ARGV[2] max_wait µs.
/// Returns `{reserved (0|1), wait µs}`.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return {0, wait} end
local next_tat = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX',
  math.ceil((next_tat - now) / 1000) + 1000)
return {1, wait}",
    )
});

/// What the limiter answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A slot is reserved: send after waiting this long.
    Reserved(Duration),
    /// The next free slot is this far away, beyond `max_wait`: nothing reserved.
    TooFar(Duration),
}

/// Reserves the next send slot of a limiter spacing sends `interval` apart.
pub async fn reserve(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    interval: Duration,
    max_wait: Duration,
) -> redis::RedisResult<Slot> {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let (reserved, wait): (i64, u64) = RESERVE
        .key(key)
        .arg(micros(interval))
        .arg(micros(max_wait))
        .invoke_async(conn)
        .await?;
    let wait = Duration::from_micros(wait);
    Ok(if reserved == 1 {
        Slot::Reserved(wait)
    } else {
        Slot::TooFar(wait)
    })
}
