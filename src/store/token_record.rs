//! The app's shared access_token as written in Redis: one hash per app (see
//! [`Keys::token`](super::Keys::token)), written only by the holder of the refresh
//! [`lease`](super::lease) and deleted only if it is the very token found stale.
//!
//! Every time in the record is Redis's (`TIME` inside the scripts), never a worker's: a
//! worker whose clock is off cannot make the others treat a token as fresh or stale
//! wrongly. Each read returns Redis's time with the record, so the reader compares like
//! with like.
//!
//! When a token counts as fresh, and who refreshes it, is the token module's business.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

use super::lease::Lease;
use crate::wechat::client::AccessToken;

/// Redis's clock in Unix milliseconds, as a Lua expression (`TIME` is seconds and
/// microseconds). Lua numbers are doubles: exact for milliseconds until the year 287,396.
const REDIS_NOW_MS: &str = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/// Writes the fetched token only while the writer still holds the lease, so a refresher that
/// stalled past its lease cannot overwrite the token of the one that replaced it. The
/// absolute times are computed here from Redis's clock: ARGV[3] is the lifetime, ARGV[4] how
/// long before expiry a refresh is due, both in ms. Returns `{now, expires_at, refresh_at}`.
static STORE_IF_OWNER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
{REDIS_NOW_MS}
local lifetime = tonumber(ARGV[3])
local expires = now + lifetime
local refresh = expires - tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'token', ARGV[2], 'expires_at_ms', string.format('%.0f', expires),
  'refresh_at_ms', string.format('%.0f', refresh), 'fetched_at_ms', string.format('%.0f', now),
  'endpoint', ARGV[5])
redis.call('PEXPIRE', KEYS[1], lifetime)
return {{now, expires, refresh}}"
    ))
});

/// The record's fields and Redis's time, in one step.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{REDIS_NOW_MS}
local f = redis.call('HMGET', KEYS[1], 'token', 'expires_at_ms', 'refresh_at_ms', 'fetched_at_ms', 'endpoint')
return {{now, f[1], f[2], f[3], f[4], f[5]}}"
    ))
});

/// Deletes the stored token only if it is the one that was found stale.
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    )
});

/// Where the token handed out came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// This process's copy.
    Local,
    /// Read from Redis (another process fetched it).
    Redis,
    /// Fetched from WeChat by this process.
    Fetched,
}

/// A token with its timing, as stored in Redis. The times are Unix milliseconds by Redis's
/// clock.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub token: AccessToken,
    pub expires_at_ms: u64,
    pub refresh_at_ms: u64,
    pub fetched_at_ms: u64,
    pub endpoint: String,
    pub source: TokenSource,
}

/// The stored token, if any, and Redis's time when it was read (Unix ms).
pub async fn read(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> redis::RedisResult<(Option<TokenInfo>, u64)> {
    type Reply = (
        u64,
        Option<String>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<String>,
    );
    let (now, token, expires_at, refresh_at, fetched_at, endpoint): Reply =
        READ.key(key).invoke_async(conn).await?;
    let info = match (token, expires_at, refresh_at) {
        (Some(token), Some(expires_at_ms), Some(refresh_at_ms)) => Some(TokenInfo {
            token: AccessToken::new(token),
            expires_at_ms,
            refresh_at_ms,
            fetched_at_ms: fetched_at.unwrap_or(0),
            endpoint: endpoint.unwrap_or_default(),
            source: TokenSource::Redis,
        }),
        _ => None,
    };
    Ok((info, now))
}

/// A token just fetched, before Redis gives it absolute times.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    pub token: &'a AccessToken,
    /// How long it lives from now (Redis's now, when the write lands).
    pub lifetime: Duration,
    /// How long before its expiry a refresh is due.
    pub refresh_ahead: Duration,
    pub endpoint: &'a str,
}

/// Stores `new` under `key` if `lease` is still ours, with its times from Redis's clock:
/// the stored record (its `fetched_at_ms` is Redis's time of the write), or `None` when the
/// lease was lost meanwhile (the token is then not written).
pub async fn store_if_owner(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    lease: &Lease,
    new: &NewToken<'_>,
) -> redis::RedisResult<Option<TokenInfo>> {
    let lifetime = (new.lifetime.as_millis() as u64).max(1);
    let ahead = (new.refresh_ahead.as_millis() as u64).min(lifetime);
    let stored: Option<(u64, u64, u64)> = STORE_IF_OWNER
        .key(key)
        .key(&lease.key)
        .arg(&lease.owner)
        .arg(new.token.expose())
        .arg(lifetime)
        .arg(ahead)
        .arg(new.endpoint)
        .invoke_async(conn)
        .await?;
    Ok(stored.map(|(now, expires_at_ms, refresh_at_ms)| TokenInfo {
        token: new.token.clone(),
        expires_at_ms,
        refresh_at_ms,
        fetched_at_ms: now,
        endpoint: new.endpoint.to_owned(),
        source: TokenSource::Fetched,
    }))
}

/// Deletes the stored token if it is `stale`; `true` when it was deleted.
pub async fn invalidate(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    stale: &AccessToken,
) -> redis::RedisResult<bool> {
    let deleted: i64 = INVALIDATE
        .key(key)
        .arg(stale.expose())
        .invoke_async(conn)
        .await?;
    Ok(deleted == 1)
}
