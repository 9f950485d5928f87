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
//! before lending it), which doubled the Redis round trips per message.
//!
//! What these stores decide (when an event counts as sent, when a token is stale) lives
//! with their callers (`worker`, `token`); this module only knows how it is written down.

pub mod app_hold;
pub mod claims;
pub mod delivery_result;
pub mod durability;
pub mod event_record;
pub mod grants;
pub mod keys;
pub mod lease;
pub mod rate_limit;
pub mod token_record;

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};

use crate::config::{RedisConfig, redact_url};
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

/// Builds the pool for occasional work. Connections are made lazily, so this succeeds with Redis down; waits for
/// a connection are bounded so a Redis outage turns into errors, never a hang.
pub fn pooled(config: &RedisConfig) -> anyhow::Result<Pool> {
    let mut cfg = deadpool_redis::Config::from_url(config.url.clone());
    cfg.pool = Some(PoolConfig {
        max_size: config.pool_size.max(1),
        timeouts: Timeouts {
            wait: Some(Duration::from_secs(2)),
            create: Some(Duration::from_secs(2)),
            recycle: Some(Duration::from_secs(2)),
        },
        ..PoolConfig::default()
    });
    cfg.create_pool(Some(Runtime::Tokio1))
        .map_err(|e| anyhow::anyhow!("redis.url {} is not usable: {e}", redact_url(&config.url)))
}

/// The hot-path connection: one multiplexed connection shared by every message task.
/// Commands from many tasks are pipelined on it, and it reconnects by itself after Redis
/// restarts. Connected on first use, so a worker starts while Redis is down.
#[derive(Clone)]
pub struct HotPath {
    client: deadpool_redis::redis::Client,
    manager: std::sync::Arc<tokio::sync::OnceCell<deadpool_redis::redis::aio::ConnectionManager>>,
}

impl HotPath {
    pub fn new(config: &RedisConfig) -> anyhow::Result<HotPath> {
        let client = deadpool_redis::redis::Client::open(config.url.as_str()).map_err(|e| {
            anyhow::anyhow!("redis.url {} is not usable: {e}", redact_url(&config.url))
        })?;
        Ok(HotPath {
            client,
            manager: Default::default(),
        })
    }

    /// Runs `command` on the shared connection; a failure of either the connection or the
    /// command comes back as one [`StoreError`] labelled `action`.
    pub async fn run<T>(
        &self,
        action: &'static str,
        command: impl AsyncFnOnce(
            &mut deadpool_redis::redis::aio::ConnectionManager,
        ) -> deadpool_redis::redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.get().await?;
        command(&mut conn)
            .await
            .map_err(|e| StoreError::new(action, e))
    }

    /// A handle on the shared connection (cheap to clone).
    pub async fn get(&self) -> Result<deadpool_redis::redis::aio::ConnectionManager, StoreError> {
        use deadpool_redis::redis::aio::{ConnectionManager, ConnectionManagerConfig};
        let manager = self
            .manager
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .map_err(|e| StoreError::new("connect", e))?;
        Ok(manager.clone())
    }
}

/// Deletes every key under `prefix:` (demo, benchmark and test runs use their own prefix).
/// Uses SCAN, so it does not block Redis on a large database.
pub async fn delete_prefix(pool: &Pool, prefix: &str) -> anyhow::Result<usize> {
    use deadpool_redis::redis;
    let mut conn = pool.get().await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut *conn)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len();
            let _: () = redis::cmd("DEL").arg(keys).query_async(&mut *conn).await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
