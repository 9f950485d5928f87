//! A lease in Redis: `SET key owner NX PX ttl`, extended by compare-and-`PEXPIRE`, released
//! by compare-and-delete.
//!
//! It is a lease, not a fencing lock: a holder that stalls past the TTL loses it without
//! knowing. Writers that must not act after losing it check ownership atomically in the
//! same script as their write (see `token_record.rs`).

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

/// Deletes the key only if it still holds our owner id.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    )
});

/// Resets the TTL only if the key still holds our owner id.
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    )
});

/// A held lease. Dropping it does not release it (that needs Redis); call [`Lease::release`].
#[derive(Debug)]
#[must_use = "a lease is held until released or expired"]
pub struct Lease {
    pub key: String,
    pub owner: String,
}

/// Tries once to take the lease; `None` when someone else holds it.
pub async fn try_acquire(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    ttl: Duration,
) -> redis::RedisResult<Option<Lease>> {
    let owner = uuid::Uuid::new_v4().simple().to_string();
    let reply: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(&owner)
        .arg("NX")
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64)
        .query_async(conn)
        .await?;
    Ok(reply.map(|_| Lease {
        key: key.to_owned(),
        owner,
    }))
}

impl Lease {
    /// Gives the lease a full `ttl` from now if we still hold it; `false` when it was lost
    /// (expired, and maybe taken by someone else): the holder must then stop acting on it.
    pub async fn extend(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let extended: i64 = EXTEND
            .key(&self.key)
            .arg(&self.owner)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(conn)
            .await?;
        Ok(extended == 1)
    }

    /// Releases the lease if we still hold it; `false` when it had already expired.
    pub async fn release(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<bool> {
        let deleted: i64 = RELEASE
            .key(&self.key)
            .arg(&self.owner)
            .invoke_async(conn)
            .await?;
        Ok(deleted == 1)
    }
}
