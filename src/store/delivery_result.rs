//! The final delivery result of a sent message, as WeChat pushes it afterwards
//! (`subscribe_msg_sent_event`, matched by `MsgID`): written by the push receiver, read by
//! `wxpush trace` and `/api/events/{id}`, which join it to an event by the msgid its send
//! returned.
//!
//! One hash per (app, msgid), `{prefix}:msg-result:{<app>:<msgid>}`, fields `errcode`,
//! `status` (WeChat's `ErrorStatus`), `at_ms` (Redis time of the push), `template_id`,
//! `openid`; kept for `policy.idempotency_ttl`, as long as the event's own record. Writing
//! the same result again (a retried push) changes nothing but `at_ms`.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

/// What WeChat reported for a message it accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryResult {
    /// WeChat's `ErrorCode`: 0 delivered.
    pub errcode: i64,
    /// WeChat's `ErrorStatus` (`success`, or the failure's text).
    pub status: String,
    /// When the push arrived (Redis time, ms).
    pub at_ms: u64,
    pub template_id: String,
    pub openid: String,
}

/// KEYS[1] result; ARGV errcode, status, template_id, openid, ttl ms.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'errcode', ARGV[1], 'status', ARGV[2], 'template_id', ARGV[3], 'openid', ARGV[4], 'at_ms', now)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1",
    )
});

/// Writes the result for the message at `key` ([`crate::store::Keys::msg_result`]).
pub async fn write(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    result: &Reported<'_>,
    ttl: Duration,
) -> redis::RedisResult<()> {
    let _: i64 = WRITE
        .key(key)
        .arg(result.errcode)
        .arg(result.status)
        .arg(result.template_id)
        .arg(result.openid)
        .arg(ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// A result as pushed, before it is written.
#[derive(Debug, Clone, Copy)]
pub struct Reported<'a> {
    pub errcode: i64,
    pub status: &'a str,
    pub template_id: &'a str,
    pub openid: &'a str,
}

/// The result recorded for the message at `key`, if WeChat pushed one.
pub async fn read(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> redis::RedisResult<Option<DeliveryResult>> {
    let fields: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(key).query_async(conn).await?;
    if fields.is_empty() {
        return Ok(None);
    }
    let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
    Ok(Some(DeliveryResult {
        errcode: text("errcode").parse().unwrap_or(-1),
        status: text("status"),
        at_ms: text("at_ms").parse().unwrap_or(0),
        template_id: text("template_id"),
        openid: text("openid"),
    }))
}
