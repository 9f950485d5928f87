//! Redis connections and the names of every key wxpush writes.
//!
//! Two ways in: the deadpool pool for occasional work (token refreshes, health pings), and
//! one shared multiplexed [`Shared`] connection for the per-message path: a pool checkout
//! costs a round trip of its own (deadpool pings a connection before lending it), which
//! doubled the Redis round trips per message.
//!
//! Keys carry a hash tag (`{…}`) per app or event so that everything one script touches
//! lives in one Redis Cluster slot.

use std::time::Duration;

use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};

use crate::config::{RedisConfig, redact_url};

/// Builds the pool. Connections are made lazily, so this succeeds with Redis down; waits for
/// a connection are bounded so a Redis outage turns into errors, never a hang.
pub fn connect(config: &RedisConfig) -> anyhow::Result<Pool> {
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

/// One multiplexed connection shared by every message task: commands from many tasks are
/// pipelined on it, and it reconnects by itself after Redis restarts. Connected on first
/// use, so a worker starts while Redis is down.
#[derive(Clone)]
pub struct Shared {
    client: deadpool_redis::redis::Client,
    manager: std::sync::Arc<tokio::sync::OnceCell<deadpool_redis::redis::aio::ConnectionManager>>,
}

impl Shared {
    pub fn new(config: &RedisConfig) -> anyhow::Result<Shared> {
        let client = deadpool_redis::redis::Client::open(config.url.as_str()).map_err(|e| {
            anyhow::anyhow!("redis.url {} is not usable: {e}", redact_url(&config.url))
        })?;
        Ok(Shared {
            client,
            manager: Default::default(),
        })
    }

    /// A handle on the shared connection (cheap to clone).
    pub async fn get(
        &self,
    ) -> deadpool_redis::redis::RedisResult<deadpool_redis::redis::aio::ConnectionManager> {
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
            .await?;
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

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// Hash with the app's current token: `token`, `expires_at_ms`, `fetched_at_ms`, `endpoint`.
    pub fn token(&self, appid: &str) -> String {
        format!("{}:token:{{{appid}}}", self.prefix)
    }

    /// The refresh lock for the app's token.
    pub fn token_lock(&self, appid: &str) -> String {
        format!("{}:token-lock:{{{appid}}}", self.prefix)
    }

    /// Hash with an event's delivery state (see `worker::idempotency`).
    pub fn event(&self, event_id: &str) -> String {
        format!("{}:event:{{{event_id}}}", self.prefix)
    }
}
