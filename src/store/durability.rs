//! What Redis promises about keeping wxpush's keys: read at start and on reconnect.
//!
//! "Never sent twice" (`policy.on_ambiguous = "dead_letter"`) rests on the event records in
//! Redis: a record that Redis evicts (every record has a TTL, so any `volatile-*` or
//! `allkeys-*` policy may pick it) or loses in a crash (no AOF, or an AOF synced only every
//! second) reads as "never sent". So the worker reads `maxmemory-policy`, `appendonly` and
//! `appendfsync` and names each risk; the worker refuses to run with risks under
//! `dead_letter` unless `policy.unsafe_redis = true`. In a cluster every master is read
//! (each holds a share of the records); behind sentinels, the primary.

use deadpool_redis::redis;

use super::Conn;

/// The Redis settings that decide whether keys can be evicted or lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    pub maxmemory_policy: Option<String>,
    pub appendonly: Option<String>,
    pub appendfsync: Option<String>,
}

impl Durability {
    /// Each way keys can be evicted or lost, with the setting that fixes it.
    pub fn risks(&self) -> Vec<String> {
        let mut risks = Vec::new();
        match self.maxmemory_policy.as_deref() {
            Some("noeviction") => {}
            Some(policy) => risks.push(format!(
                "maxmemory-policy is {policy}: Redis may evict event records under memory pressure (set maxmemory-policy noeviction)"
            )),
            None => risks.push(
                "maxmemory-policy is unreadable (CONFIG GET refused): eviction cannot be ruled out".into(),
            ),
        }
        match (self.appendonly.as_deref(), self.appendfsync.as_deref()) {
            (Some("yes"), Some("always")) => {}
            (Some("yes"), Some(fsync)) => risks.push(format!(
                "appendfsync is {fsync}: a Redis crash loses the last writes (set appendfsync always)"
            )),
            (Some("no"), _) => risks.push(
                "appendonly is no: a Redis restart loses every record (set appendonly yes, appendfsync always)".into(),
            ),
            _ => risks.push(
                "persistence is unreadable (CONFIG GET refused): losing records in a restart cannot be ruled out".into(),
            ),
        }
        risks
    }
}

/// Reads the settings; a setting Redis will not show (managed services often refuse
/// `CONFIG`) is `None`.
pub async fn inspect(conn: &mut impl redis::aio::ConnectionLike) -> redis::RedisResult<Durability> {
    let mut get = async |name: &str| {
        shown(
            redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut *conn)
                .await,
        )
    };
    Ok(Durability {
        maxmemory_policy: get("maxmemory-policy").await?,
        appendonly: get("appendonly").await?,
        appendfsync: get("appendfsync").await?,
    })
}

/// The settings of every master that holds wxpush's keys: each master of a cluster (named
/// `host:port`), else the one Redis `conn` reaches (the primary, in sentinel mode; unnamed).
pub async fn inspect_masters(conn: &mut Conn) -> redis::RedisResult<Vec<(String, Durability)>> {
    let masters = conn.masters().await?;
    if masters.is_empty() {
        return Ok(vec![(String::new(), inspect(conn).await?)]);
    }
    let mut found = Vec::new();
    for node in &masters {
        let mut get = async |name: &str| {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            shown(conn.on_node(Some(node), cmd).await)
        };
        let durability = Durability {
            maxmemory_policy: get("maxmemory-policy").await?,
            appendonly: get("appendonly").await?,
            appendfsync: get("appendfsync").await?,
        };
        found.push((format!("{}:{}", node.0, node.1), durability));
    }
    Ok(found)
}

/// A `CONFIG GET` reply's value; `None` when Redis refused to show it.
fn shown(reply: redis::RedisResult<Vec<String>>) -> redis::RedisResult<Option<String>> {
    match reply {
        Ok(pair) => Ok(pair.get(1).cloned()),
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            Ok(None)
        }
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(policy: &str, aof: &str, fsync: &str) -> Durability {
        Durability {
            maxmemory_policy: Some(policy.into()),
            appendonly: Some(aof.into()),
            appendfsync: Some(fsync.into()),
        }
    }

    #[test]
    fn only_noeviction_with_an_always_synced_aof_is_safe() {
        assert!(with("noeviction", "yes", "always").risks().is_empty());
        let risks = with("volatile-lru", "yes", "everysec").risks();
        assert_eq!(risks.len(), 2, "{risks:?}");
        assert!(
            risks[0].contains("maxmemory-policy noeviction"),
            "{risks:?}"
        );
        assert!(risks[1].contains("appendfsync always"), "{risks:?}");
        let risks = with("noeviction", "no", "everysec").risks();
        assert!(risks[0].contains("appendonly yes"), "{risks:?}");
        let unknown = Durability {
            maxmemory_policy: None,
            appendonly: None,
            appendfsync: None,
        };
        assert_eq!(unknown.risks().len(), 2);
    }
}
