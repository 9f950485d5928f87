//! Before consuming (at start and after every reconnect): is Redis fit to keep the promises
//! the config makes?
//!
//! Under `policy.on_ambiguous = "dead_letter"` ("never sent twice") the event records must
//! not be evicted or lost ([`store::durability`](crate::store::durability)); with risks the
//! worker refuses to consume unless `policy.unsafe_redis = true`, which it then warns about
//! and counts. The epoch key that lets claims notice a Redis that lost its data is written
//! here too, and checked on every health tick ([`detect_loss`]).

use crate::admin::metrics as m;
use crate::config::{OnAmbiguous, RedisMode};
use crate::store::{StoreError, claims, durability};

use super::Ctx;

/// Why the worker will not consume.
#[derive(Debug, thiserror::Error)]
pub enum Unfit {
    #[error(transparent)]
    Unreachable(#[from] StoreError),
    #[error(
        "policy.on_ambiguous = \"dead_letter\" promises that no event is ever sent twice, but Redis can evict or lose the records that promise rests on: {}. Fix Redis (maxmemory-policy noeviction, appendonly yes, appendfsync always), or accept the risk with policy.unsafe_redis = true",
        .0.join("; ")
    )]
    Unsafe(Vec<String>),
}

/// Checks Redis's durability against the policy and makes sure the epoch key exists.
pub async fn verify(ctx: &Ctx) -> Result<(), Unfit> {
    let mut conn = ctx
        .pooled
        .get()
        .await
        .map_err(|e| StoreError::new("connection", e))?;
    let masters = durability::inspect_masters(&mut conn)
        .await
        .map_err(|e| StoreError::new("CONFIG GET", e))?;
    if claims::ensure_epoch(&mut *conn, &ctx.keys.epoch())
        .await
        .map_err(|e| StoreError::new("epoch write", e))?
    {
        tracing::warn!(
            "this Redis had no wxpush epoch: a new deployment (or key prefix), or Redis lost its data; redelivered events without state are treated as ambiguous for a while"
        );
    }
    let mut risks: Vec<String> = masters
        .iter()
        .flat_map(|(node, durability)| {
            durability
                .risks()
                .into_iter()
                .map(move |risk| match node.as_str() {
                    "" => risk,
                    node => format!("{node}: {risk}"),
                })
        })
        .collect();
    let redis = &ctx.config.redis;
    if redis.mode != RedisMode::Single && redis.replicas_ack() == 0 {
        risks.push(format!(
            "redis.replicas_ack is 0 in {} mode: Redis replicates asynchronously, so a failover can forget the last claims and sent marks (set redis.replicas_ack = 1)",
            redis.mode.as_str()
        ));
    }
    let promised = ctx.config.policy.on_ambiguous == OnAmbiguous::DeadLetter;
    metrics::gauge!(m::REDIS_UNSAFE).set(if promised && !risks.is_empty() {
        1.0
    } else {
        0.0
    });
    if !promised || risks.is_empty() {
        return Ok(());
    }
    if ctx.config.policy.unsafe_redis {
        tracing::warn!(
            risks = %risks.join("; "),
            "Redis can evict or lose event records: an event may be sent twice after such a loss although on_ambiguous = \"dead_letter\" (running anyway: policy.unsafe_redis = true)"
        );
        return Ok(());
    }
    Err(Unfit::Unsafe(risks))
}

/// On each health tick: if the epoch key is gone, Redis lost its data while we ran. Claims
/// notice it by themselves; this makes it loud.
pub async fn detect_loss(ctx: &Ctx) {
    let Ok(mut conn) = ctx.hot_path.get().await else {
        return;
    };
    if let Ok(true) = claims::ensure_epoch(&mut conn, &ctx.keys.epoch()).await {
        metrics::counter!(m::REDIS_DATA_LOST).increment(1);
        tracing::error!(
            "Redis lost wxpush's data (the epoch key is gone: a restart without persistence, a flush or a failover): events handled before now are treated as ambiguous for a while (policy.on_ambiguous decides)"
        );
    }
}
