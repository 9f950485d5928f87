//! Connections to Redis in each `redis.mode`, as one type: [`Conn`] implements
//! `redis::aio::ConnectionLike`, so every store function (generic over it) runs unchanged on
//! one Redis, a Redis Cluster or a Sentinel-guarded primary.
//!
//! The clients are redis-rs's own (`ConnectionManager`, `cluster_async::ClusterConnection`,
//! `sentinel::SentinelClient`) and deadpool-redis's pools for each; this module only picks
//! one by mode and adds what a failover needs:
//! - in sentinel mode the hot path forgets its primary when a command fails on the
//!   connection or finds a demoted primary (`READONLY`), and asks the sentinels again on the
//!   next use; pooled connections are checked with `ROLE` before they are lent;
//! - [`Conn::wait_replicas`] sends `WAIT` to the node that holds a key (in a cluster, its
//!   slot's master: a plain `WAIT` would go to every master);
//! - logins and TLS come from the URLs in every mode (a cluster's from its first seed, for
//!   every node); in sentinel mode the primary may have a login of its own
//!   (`redis.sentinel_master_username`/`_password`, `PrimaryLogin`);
//! - a refused login or an untrusted certificate comes back saying what to fix, and in
//!   sentinel mode whether a sentinel or the primary refused (`explain`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use deadpool_redis::redis::cluster::ClusterClient;
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use deadpool_redis::redis::sentinel::{
    SentinelClient, SentinelNodeConnectionInfo, SentinelServerType,
};
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, Value,
};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};

use super::{StoreError, keys};
use crate::config::{RedisConfig, RedisMode};

/// How long connecting and each reply may take: a Redis outage or a failover turns into
/// errors the worker handles, never a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection in any mode. Cheap to clone (each variant is a handle on a multiplexed
/// connection).
#[derive(Clone)]
pub enum Conn {
    /// Single mode's hot path: reconnects by itself.
    Managed(ConnectionManager),
    /// A pooled connection to one Redis, or to the primary the sentinels named.
    Direct(MultiplexedConnection),
    /// Routes each command to its slot's master; follows failovers and resharding.
    Cluster(ClusterConnection),
    /// Sentinel mode's hot path: the primary's connection, forgotten when it fails.
    Sentinel(MultiplexedConnection, Arc<SentinelLink>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c, link) => Box::pin(async move {
                let reply = c.req_packed_command(cmd).await;
                link.forget_on(&reply);
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Direct(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(c, link) => Box::pin(async move {
                let reply = c.req_packed_commands(cmd, offset, count).await;
                link.forget_on(&reply);
                reply
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c, _) => c.get_db(),
        }
    }
}

impl Conn {
    /// `WAIT replicas timeout` on the node holding `key`, after writes to it on this same
    /// connection: how many replicas acknowledged them.
    pub async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis().max(1) as u64);
        match self {
            Conn::Cluster(c) => {
                let route = Route::new(keys::slot(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let reply = c.route_command(wait, routing).await?;
                Ok(redis::from_redis_value(reply)?)
            }
            other => wait.query_async(other).await,
        }
    }

    /// The master nodes' addresses (`host:port`): every master of a cluster, or the one
    /// Redis this connection reaches.
    pub async fn masters(&mut self) -> RedisResult<Vec<(String, u16)>> {
        match self {
            Conn::Cluster(c) => {
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
                Ok(cluster_masters(&nodes))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Runs `cmd` on the node at `host:port` (cluster mode); on the one Redis otherwise.
    pub async fn on_node<T: redis::FromRedisValue>(
        &mut self,
        node: Option<&(String, u16)>,
        cmd: Cmd,
    ) -> RedisResult<T> {
        match (self, node) {
            (Conn::Cluster(c), Some((host, port))) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                Ok(redis::from_redis_value(
                    c.route_command(cmd, routing).await?,
                )?)
            }
            (other, _) => cmd.query_async(other).await,
        }
    }
}

/// The masters in a `CLUSTER NODES` reply that are not marked failed.
pub fn cluster_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let flags = fields.get(2)?;
            let is_master = flags.split(',').any(|f| f == "master");
            let failed = flags.split(',').any(|f| f == "fail" || f == "fail?");
            if !is_master || failed || fields.get(7) != Some(&"connected") {
                return None;
            }
            let addr = fields.get(1)?.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// The sentinel client and the primary's current connection, shared by the clones of a
/// sentinel-mode [`HotPath`].
pub struct SentinelLink {
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
}

impl SentinelLink {
    /// Drops the primary's connection when `reply` shows it broken or no longer the
    /// primary's, so the next use asks the sentinels where the primary is now.
    fn forget_on<T>(&self, reply: &RedisResult<T>) {
        if let Err(e) = reply
            && must_rediscover(e)
        {
            *self.current.lock().expect("sentinel link poisoned") = None;
        }
    }

    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.current.lock().expect("sentinel link poisoned").clone() {
            return Ok(conn);
        }
        let mut client = self.client.lock().await;
        if let Some(conn) = self.current.lock().expect("sentinel link poisoned").clone() {
            return Ok(conn);
        }
        let conn = client
            .get_async_connection_with_config(&connection_config())
            .await?;
        *self.current.lock().expect("sentinel link poisoned") = Some(conn.clone());
        Ok(conn)
    }
}

/// An error after which the connection may be to a dead or demoted primary.
fn must_rediscover(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}

/// How the sentinel clients reach the primary the sentinels name: over TLS when the first
/// sentinel URL is `rediss://` (CA trust as for every `rediss://`: the system store or
/// `SSL_CERT_FILE`), logged in with `redis.sentinel_master_username`/`_password` when set,
/// else with that URL's username and password. Each sentinel logs in with its own URL's.
struct PrimaryLogin {
    tls: Option<redis::TlsMode>,
    settings: redis::RedisConnectionInfo,
}

impl PrimaryLogin {
    fn of(config: &RedisConfig) -> RedisResult<PrimaryLogin> {
        let first = config
            .urls
            .first()
            .ok_or_else(|| {
                RedisError::from((redis::ErrorKind::InvalidClientConfig, "no sentinels"))
            })?
            .as_str()
            .into_connection_info()?;
        let tls = match first.addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => Some(redis::TlsMode::Insecure),
            ConnectionAddr::TcpTls { .. } => Some(redis::TlsMode::Secure),
            _ => None,
        };
        let url = first.redis_settings();
        let mut settings = redis::RedisConnectionInfo::default()
            .set_db(url.db())
            .set_protocol(url.protocol());
        let (username, password) = match &config.sentinel_master_password {
            Some(password) => (
                config.sentinel_master_username.as_deref(),
                Some(password.as_str()),
            ),
            None => (url.username(), url.password()),
        };
        if let Some(username) = username {
            settings = settings.set_username(username);
        }
        if let Some(password) = password {
            settings = settings.set_password(password);
        }
        Ok(PrimaryLogin { tls, settings })
    }
}

/// The sentinel client for the hot path.
fn sentinel_client(config: &RedisConfig) -> RedisResult<SentinelClient> {
    let master = config.sentinel_master.clone().unwrap_or_default();
    let login = PrimaryLogin::of(config)?;
    let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(login.settings);
    if let Some(tls) = login.tls {
        node = node.set_tls_mode(tls);
    }
    let urls: Vec<&str> = config.urls.iter().map(String::as_str).collect();
    SentinelClient::build(urls, master, Some(node), SentinelServerType::Master)
}

/// The hot-path connection: one multiplexed connection shared by every message task.
/// Commands from many tasks are pipelined on it, and it reconnects by itself after Redis
/// restarts or fails over. Connected on first use, so a worker starts while Redis is down.
#[derive(Clone)]
pub struct HotPath {
    target: Arc<Target>,
    // To explain a refused login or certificate (see [`explain`]).
    config: Arc<RedisConfig>,
    shared: Arc<tokio::sync::OnceCell<Conn>>,
    replicas: u32,
    replicas_timeout: Duration,
}

// Built once per process and kept behind an Arc: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
    Sentinel(Arc<SentinelLink>),
}

impl HotPath {
    pub fn new(config: &RedisConfig) -> anyhow::Result<HotPath> {
        let unusable =
            |e: RedisError| anyhow::anyhow!("redis {} is not usable: {e}", config.describe());
        let target = match config.mode {
            RedisMode::Single => {
                Target::Single(redis::Client::open(config.url.as_str()).map_err(unusable)?)
            }
            RedisMode::Cluster => Target::Cluster(
                ClusterClient::builder(config.urls.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(3)
                    .build()
                    .map_err(unusable)?,
            ),
            RedisMode::Sentinel => Target::Sentinel(Arc::new(SentinelLink {
                client: tokio::sync::Mutex::new(sentinel_client(config).map_err(unusable)?),
                current: Mutex::new(None),
            })),
        };
        Ok(HotPath {
            target: Arc::new(target),
            config: Arc::new(config.clone()),
            shared: Default::default(),
            replicas: config.replicas_ack(),
            replicas_timeout: config.replicas_timeout,
        })
    }

    /// Runs `command` on the shared connection; a failure of either the connection or the
    /// command comes back as one [`StoreError`] labelled `action`.
    pub async fn run<T>(
        &self,
        action: &'static str,
        command: impl AsyncFnOnce(&mut Conn) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.get().await?;
        command(&mut conn)
            .await
            .map_err(|e| StoreError::new(action, e))
    }

    /// Like [`run`](Self::run), then waits until `redis.replicas_ack` replicas hold the
    /// writes to `key` (nothing to wait for when it is 0): for the writes "never sent
    /// twice" rests on, which a failover to a replica must not forget.
    pub async fn run_replicated<T>(
        &self,
        action: &'static str,
        key: &str,
        command: impl AsyncFnOnce(&mut Conn) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.get().await?;
        let value = command(&mut conn)
            .await
            .map_err(|e| StoreError::new(action, e))?;
        self.replicated(&mut conn, key).await?;
        Ok(value)
    }

    /// Waits until `redis.replicas_ack` replicas hold this connection's writes to `key`.
    pub async fn replicated(&self, conn: &mut Conn, key: &str) -> Result<(), StoreError> {
        if self.replicas == 0 {
            return Ok(());
        }
        let acked = conn
            .wait_replicas(key, self.replicas, self.replicas_timeout)
            .await
            .map_err(|e| StoreError::new("replication wait", e))?;
        if acked < self.replicas {
            return Err(StoreError::new(
                "replication wait",
                NotReplicated {
                    acked,
                    wanted: self.replicas,
                    timeout: self.replicas_timeout,
                },
            ));
        }
        Ok(())
    }

    /// A handle on the shared connection (cheap to clone).
    pub async fn get(&self) -> Result<Conn, StoreError> {
        let connected = match &*self.target {
            Target::Sentinel(link) => link
                .connection()
                .await
                .map(|conn| Conn::Sentinel(conn, link.clone())),
            target => self
                .shared
                .get_or_try_init(|| connect_shared(target))
                .await
                .cloned(),
        };
        match connected {
            Ok(conn) => Ok(conn),
            Err(e) => Err(StoreError::new("connect", explain(&self.config, e).await)),
        }
    }
}

async fn connect_shared(target: &Target) -> RedisResult<Conn> {
    match target {
        Target::Single(client) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Ok(Conn::Managed(
                ConnectionManager::new_with_config(client.clone(), config).await?,
            ))
        }
        Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        Target::Sentinel(_) => unreachable!("sentinel connections are not shared once"),
    }
}

/// A connection refused for a reason only the config or the trust store can fix comes back
/// saying what to change: a login (which one, set where) or the server's certificate. Any
/// other error comes back unchanged. The kind stays, so retries and rediscovery behave the
/// same.
async fn explain(config: &RedisConfig, e: RedisError) -> RedisError {
    let text = e.to_string();
    let (problem, fix) = if login_refused(&e) {
        ("Redis refused the login", login_fix(config).await)
    } else if text.contains("invalid peer certificate") {
        (
            "Redis's TLS certificate is not trusted",
            "wxpush trusts the system's CA certificates, or the bundle the SSL_CERT_FILE environment variable names: add the CA that signed Redis's certificate there (UnknownIssuer), and reach Redis by a name or address the certificate is for (NotValidForName)".to_owned(),
        )
    } else {
        return e;
    };
    RedisError::from((e.kind(), problem, format!("{fix} ({text})")))
}

/// A wrong login (`AuthenticationFailed`, `WRONGPASS`) or none where one is required
/// (`NOAUTH`). The cluster client wraps its nodes' errors in an I/O error's text.
fn login_refused(e: &RedisError) -> bool {
    let text = e.to_string();
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || ["AuthenticationFailed", "NOAUTH", "WRONGPASS"]
            .iter()
            .any(|code| text.contains(code))
}

/// Which login Redis refused, and the setting it comes from.
async fn login_fix(config: &RedisConfig) -> String {
    match config.mode {
        RedisMode::Single => "check the username and password in redis.url".into(),
        RedisMode::Cluster => "check the username and password in redis.urls: the cluster client logs in to every node with the first URL's (and refuses URLs with different ones)".into(),
        RedisMode::Sentinel => match refusing_sentinel(config).await {
            Some(url) => format!(
                "the sentinel {} refused the username and password of its URL in redis.urls (the sentinel's own requirepass or ACL user, not the primary's)",
                crate::config::redact_url(url)
            ),
            None if config.sentinel_master_password.is_some() => "the sentinels accept their logins, so the primary (as named by the sentinels) refused redis.sentinel_master_username / redis.sentinel_master_password".into(),
            None => "the sentinels accept their logins, so the primary (as named by the sentinels) refused the username and password of the first URL in redis.urls, which it is given while redis.sentinel_master_password is unset: set redis.sentinel_master_password (and redis.sentinel_master_username for an ACL user) to the primary's login".into(),
        },
    }
}

/// The first sentinel of `redis.urls` that refuses its own URL's login (or the lack of
/// one: then only a command fails), if one does.
async fn refusing_sentinel(config: &RedisConfig) -> Option<&str> {
    for url in &config.urls {
        let Ok(client) = redis::Client::open(url.as_str()) else {
            continue;
        };
        let ping = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&connection_config())
                .await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
        };
        if let Err(e) = ping.await
            && login_refused(&e)
        {
            return Some(url);
        }
    }
    None
}

/// Fewer replicas than `redis.replicas_ack` acknowledged a write in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "{acked} of {wanted} replicas acknowledged the write within {} (redis.replicas_ack, redis.replicas_timeout): a failover now could forget it",
    humantime::format_duration(*.timeout)
)]
pub struct NotReplicated {
    pub acked: u32,
    pub wanted: u32,
    pub timeout: Duration,
}

/// The pool for occasional work (token refreshes, health pings, CLI commands), in any mode.
#[derive(Clone)]
pub struct Pool {
    pools: Pools,
    // To explain a refused login or certificate (see [`explain`]).
    config: Arc<RedisConfig>,
}

#[derive(Clone)]
enum Pools {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
}

/// A connection lent by a [`Pool`], returned to it when dropped. Derefs to [`Conn`], so
/// `&mut *conn` is a `ConnectionLike`.
pub struct Connection {
    conn: Conn,
    // Held only to hand the connection back to its pool on drop.
    _lease: Lease,
}

#[allow(
    dead_code,
    reason = "held, never read: dropping it returns the connection"
)]
enum Lease {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
    Sentinel(deadpool_redis::sentinel::Connection),
}

/// Why a connection could not be had from the pool.
pub type PoolError = deadpool_redis::PoolError;

impl Pool {
    /// A connection, made or recycled (pinged; in sentinel mode also checked to be the
    /// primary's).
    pub async fn get(&self) -> Result<Connection, PoolError> {
        match self.lend().await {
            Err(deadpool_redis::PoolError::Backend(e)) => Err(deadpool_redis::PoolError::Backend(
                explain(&self.config, e).await,
            )),
            lent => lent,
        }
    }

    async fn lend(&self) -> Result<Connection, PoolError> {
        Ok(match &self.pools {
            Pools::Single(pool) => {
                let lease = pool.get().await?;
                Connection {
                    conn: Conn::Direct((*lease).clone()),
                    _lease: Lease::Single(lease),
                }
            }
            Pools::Cluster(pool) => {
                let lease = pool.get().await?;
                Connection {
                    conn: Conn::Cluster((*lease).clone()),
                    _lease: Lease::Cluster(lease),
                }
            }
            Pools::Sentinel(pool) => {
                let lease = pool.get().await?;
                Connection {
                    conn: Conn::Direct((*lease).clone()),
                    _lease: Lease::Sentinel(lease),
                }
            }
        })
    }
}

impl std::ops::Deref for Connection {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.conn.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// Builds the pool for occasional work. Connections are made lazily, so this succeeds with
/// Redis down; waits for a connection are bounded so a Redis outage turns into errors,
/// never a hang.
pub fn pooled(config: &RedisConfig) -> anyhow::Result<Pool> {
    let pool_config = PoolConfig {
        max_size: config.pool_size.max(1),
        timeouts: Timeouts {
            wait: Some(CONNECT_TIMEOUT),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(RESPONSE_TIMEOUT),
        },
        ..PoolConfig::default()
    };
    let unusable = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("redis {} is not usable: {e}", config.describe())
    };
    let pools = match config.mode {
        RedisMode::Single => {
            let mut cfg = deadpool_redis::Config::from_url(config.url.clone());
            cfg.pool = Some(pool_config);
            Pools::Single(
                cfg.create_pool(Some(Runtime::Tokio1))
                    .map_err(|e| unusable(&e))?,
            )
        }
        RedisMode::Cluster => {
            let mut cfg = deadpool_redis::cluster::Config::from_urls(config.urls.clone());
            cfg.pool = Some(pool_config);
            Pools::Cluster(
                cfg.create_pool(Some(Runtime::Tokio1))
                    .map_err(|e| unusable(&e))?,
            )
        }
        RedisMode::Sentinel => {
            Pools::Sentinel(sentinel_pool(config, pool_config).map_err(|e| unusable(&*e))?)
        }
    };
    Ok(Pool {
        pools,
        config: Arc::new(config.clone()),
    })
}

fn sentinel_pool(
    config: &RedisConfig,
    pool_config: PoolConfig,
) -> Result<deadpool_redis::sentinel::Pool, Box<dyn std::fmt::Display>> {
    use deadpool_redis::sentinel::{self, Hook, HookError};
    let login = PrimaryLogin::of(config).map_err(|e| Box::new(e) as Box<dyn std::fmt::Display>)?;
    let node = sentinel::SentinelNodeConnectionInfo {
        tls_mode: login.tls.map(sentinel::TlsMode::from),
        redis_connection_info: Some(login.settings.into()),
    };
    let mut cfg = sentinel::Config::from_urls(
        config.urls.clone(),
        config.sentinel_master.clone().unwrap_or_default(),
        sentinel::SentinelServerType::Master,
    )
    .with_node_connection_info(Some(node));
    cfg.pool = Some(pool_config);
    // A primary demoted by a failover still answers PING: lend only the primary's.
    let still_primary = Hook::async_fn(|conn: &mut MultiplexedConnection, _| {
        Box::pin(async move {
            let role: Vec<Value> = redis::cmd("ROLE")
                .query_async(conn)
                .await
                .map_err(HookError::Backend)?;
            match role.first() {
                Some(Value::BulkString(b)) if b.as_slice() == b"master" => Ok(()),
                _ => Err(HookError::message("no longer the primary")),
            }
        })
    });
    cfg.builder()
        .map_err(|e| Box::new(e) as Box<dyn std::fmt::Display>)?
        .runtime(Runtime::Tokio1)
        .post_recycle(still_primary)
        .build()
        .map_err(|e| Box::new(e) as Box<dyn std::fmt::Display>)
}

#[cfg(test)]
mod tests {
    use super::cluster_masters;

    #[test]
    fn cluster_masters_are_the_connected_unfailed_masters() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7003@17003 slave a1 0 0 1 connected
c3 127.0.0.1:7001@17001 master,fail - 0 0 2 disconnected
d4 127.0.0.1:7004@17004 master - 0 0 7 connected 5461-10922
";
        assert_eq!(
            cluster_masters(nodes),
            vec![("127.0.0.1".into(), 7000), ("127.0.0.1".into(), 7004)]
        );
    }
}
