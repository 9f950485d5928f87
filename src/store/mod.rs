//! Everything wxpush keeps in Redis: the connections, the key names, and the stores.
//!
//! - [`claims`]: each event's delivery state (claimed, sent, failed, ambiguous, dead), so a
//!   redelivery never sends twice;
//! - [`token_record`]: the app's shared access_token and its refresh [`lease`];
//! - [`app_hold`]: an app whose sends are held fleet-wide (daily quota, minute rate);
//! - [`rate_limit`]: the fleet-wide `max_rate` limiter of each app;
//! - [`grants`]: the grant ledger per (app, openid, template) from WeChat's message push;
//! - [`delivery_result`]: the final delivery result WeChat pushes for a sent message;
//! - [`keys`]: the name of every key, with the hash tags that keep a script's keys in one
//!   Redis Cluster slot.
//!
//! Two ways in: the [`pooled`] deadpool connections for occasional work (token refreshes,
//! health pings, CLI commands), and one multiplexed [`HotPath`] connection shared by every
//! message task: a pool checkout costs a round trip of its own (deadpool pings a connection
//! before lending it), which doubled the Redis round trips per message. Both work in every
//! `redis.mode` (single, cluster, sentinel) through one connection type, [`Conn`]
//! ([`connection`]).
//!
//! What these stores decide (when an event counts as sent, when a token is stale) lives
//! with their callers (`worker`, `token`); this module only knows how it is written down.

pub mod app_hold;
pub mod claims;
pub mod connection;
pub mod delivery_result;
pub mod durability;
pub mod event_record;
pub mod grants;
pub mod keys;
pub mod lease;
pub mod rate_limit;
pub mod token_record;

use std::sync::Arc;

pub use connection::{Conn, Connection, HotPath, Pool, PoolError, pooled};
pub use keys::Keys;

/// A Redis call failed: the connection, the pool or the command. The Redis error is kept as
/// the source, so logs show the whole chain.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Redis {action} failed")]
pub struct StoreError {
    action: &'static str,
    #[source]
    source: Arc<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// `action` says what was being done, e.g. `"claim"` or `"token read"`.
    pub fn new(
        action: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError {
            action,
            source: Arc::new(source),
        }
    }
}

/// Deletes every key under `prefix:` (demo, benchmark and test runs use their own prefix).
/// Uses SCAN, so it does not block Redis on a large database; in a cluster it scans each
/// master and deletes key by key (one `DEL` may not span slots).
pub async fn delete_prefix(pool: &Pool, prefix: &str) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    let masters = conn.masters().await?;
    let mut deleted = 0;
    if masters.is_empty() {
        deleted += delete_on_node(&mut conn, None, prefix).await?;
    }
    for node in &masters {
        deleted += delete_on_node(&mut conn, Some(node), prefix).await?;
    }
    Ok(deleted)
}

async fn delete_on_node(
    conn: &mut Conn,
    node: Option<&(String, u16)>,
    prefix: &str,
) -> anyhow::Result<usize> {
    use deadpool_redis::redis;
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(500);
        let (next, keys): (u64, Vec<String>) = conn.on_node(node, scan).await?;
        for key in &keys {
            let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut *conn).await?;
        }
        deleted += keys.len();
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
