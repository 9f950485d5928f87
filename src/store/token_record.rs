//! The app's shared access_token as written in Redis: one hash per app (see
//! [`Keys::token`](super::Keys::token)), written only by the holder of the refresh
//! [`lease`](super::lease) and deleted only if it is the very token found stale.
//!
//! When a token counts as fresh, and who refreshes it, is the token module's business.

use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script};

use super::lease::Lease;
use crate::wechat::client::AccessToken;

/// Writes the fetched token only while the writer still holds the lease, so a refresher that
/// stalled past its lease cannot overwrite the token of the one that replaced it.
static STORE_IF_OWNER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'token', ARGV[2], 'expires_at_ms', ARGV[3], 'refresh_at_ms', ARGV[4], 'fetched_at_ms', ARGV[5], 'endpoint', ARGV[6])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1",
    )
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

/// A token with its timing, as stored in Redis.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub token: AccessToken,
    pub expires_at_ms: u64,
    pub refresh_at_ms: u64,
    pub fetched_at_ms: u64,
    pub endpoint: String,
    pub source: TokenSource,
}

/// The stored token, if any.
pub async fn read(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> redis::RedisResult<Option<TokenInfo>> {
    type Fields = (
        Option<String>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<String>,
    );
    let (token, expires_at, refresh_at, fetched_at, endpoint): Fields = redis::cmd("HMGET")
        .arg(key)
        .arg(&[
            "token",
            "expires_at_ms",
            "refresh_at_ms",
            "fetched_at_ms",
            "endpoint",
        ])
        .query_async(conn)
        .await?;
    Ok(match (token, expires_at, refresh_at) {
        (Some(token), Some(expires_at_ms), Some(refresh_at_ms)) => Some(TokenInfo {
            token: AccessToken::new(token),
            expires_at_ms,
            refresh_at_ms,
            fetched_at_ms: fetched_at.unwrap_or(0),
            endpoint: endpoint.unwrap_or_default(),
            source: TokenSource::Redis,
        }),
        _ => None,
    })
}

/// Stores `info` under `key` if `lease` is still ours; `false` when it was lost meanwhile
/// (the token is then not written).
pub async fn store_if_owner(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    lease: &Lease,
    info: &TokenInfo,
) -> redis::RedisResult<bool> {
    let stored: i64 = STORE_IF_OWNER
        .key(key)
        .key(&lease.key)
        .arg(&lease.owner)
        .arg(info.token.expose())
        .arg(info.expires_at_ms)
        .arg(info.refresh_at_ms)
        .arg(info.fetched_at_ms)
        .arg(&info.endpoint)
        .invoke_async(conn)
        .await?;
    Ok(stored == 1)
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
