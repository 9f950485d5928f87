//! Reading an event's delivery record: the fields the claim scripts keep in the event's hash
//! next to its state (see `store::claims` for who writes what), as one plain value for
//! `wxpush trace`, the admin API and the console.

use std::collections::HashMap;

use deadpool_redis::redis;
use serde::Serialize;

use super::Keys;
use super::delivery_result::{self, DeliveryResult};

/// One failed attempt, as the log line `time_ms errcode class` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedAttempt {
    pub at_ms: u64,
    /// WeChat's errcode; `None` when the call got no errcode (transport, hold, …).
    pub errcode: Option<i64>,
    pub class: String,
}

/// What Redis knows about an event's delivery. Times are Unix ms (Redis's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// `claimed`, `failed`, `sent`, `dead_pending`, `dead`, `skipped`, `refused`.
    pub state: String,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub app: Option<String>,
    /// The openid a js_code was exchanged for (an openid given in the event is not stored).
    pub openid: Option<String>,
    pub received_ms: Option<u64>,
    pub failed_attempts: Vec<FailedAttempt>,
    pub sent_ms: Option<u64>,
    pub msgid: Option<u64>,
    pub dead_letter: Option<DeadLetterRecord>,
    /// When it was skipped or refused.
    pub decided_ms: Option<u64>,
    /// How often an operator replayed it.
    pub replayed: u64,
}

/// Why and when the event was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterRecord {
    pub class: String,
    pub errcode: Option<i64>,
    pub errmsg: String,
    /// Set once the broker confirmed the dead letter.
    pub dead_ms: Option<u64>,
}

/// An event's record with the final result WeChat pushed for its send, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    #[serde(flatten)]
    pub record: EventRecord,
    /// `subscribe_msg_sent_event` for the send's msgid (see `store::delivery_result`).
    pub delivery: Option<DeliveryResult>,
}

/// The event's record joined with its pushed delivery result: what `wxpush trace` and
/// `GET /api/events/{id}` answer.
pub async fn trace(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    event_id: &str,
) -> redis::RedisResult<Option<Trace>> {
    let Some(record) = read(conn, &keys.event(event_id)).await? else {
        return Ok(None);
    };
    let delivery = match (&record.app, record.msgid) {
        (Some(app), Some(msgid)) => {
            delivery_result::read(conn, &keys.msg_result(app, &msgid.to_string())).await?
        }
        _ => None,
    };
    Ok(Some(Trace { record, delivery }))
}

/// The event's record, or `None` when Redis has nothing for it (never received, or older
/// than `policy.idempotency_ttl`).
pub async fn read(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> redis::RedisResult<Option<EventRecord>> {
    let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(key).query_async(conn).await?;
    Ok(from_fields(&fields))
}

fn from_fields(fields: &HashMap<String, String>) -> Option<EventRecord> {
    let text = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
    let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
    let state = text("state")?;
    // `ambiguous` is how earlier versions wrote a pending ambiguous dead letter.
    let dead_letter = text("dl_class")
        .or_else(|| (state == "ambiguous").then(|| "ambiguous".to_owned()))
        .map(|class| DeadLetterRecord {
            class,
            errcode: fields.get("dl_errcode").and_then(|v| v.parse().ok()),
            errmsg: text("dl_errmsg").unwrap_or_default(),
            dead_ms: number("dead_ms"),
        });
    Some(EventRecord {
        event_type: text("type"),
        app: text("app"),
        openid: text("openid"),
        received_ms: number("received_ms"),
        failed_attempts: fields
            .get("log")
            .map(|log| log.lines().filter_map(parse_attempt).collect())
            .unwrap_or_default(),
        sent_ms: number("sent_ms"),
        msgid: number("msgid"),
        dead_letter,
        decided_ms: number("outcome_ms"),
        replayed: number("replayed").unwrap_or(0),
        state,
    })
}

fn parse_attempt(line: &str) -> Option<FailedAttempt> {
    let mut parts = line.split(' ');
    Some(FailedAttempt {
        at_ms: parts.next()?.parse().ok()?,
        errcode: parts.next()?.parse().ok(),
        class: parts.next()?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_the_scripts_write() {
        let fields: HashMap<String, String> = [
            ("state", "sent"),
            ("type", "order.paid"),
            ("app", "default"),
            ("received_ms", "1000"),
            ("log", "1100 -1 transient\n1300 none timeout\n"),
            ("sent_ms", "2000"),
            ("msgid", "42"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let record = from_fields(&fields).unwrap();
        assert_eq!(record.state, "sent");
        assert_eq!(record.msgid, Some(42));
        assert_eq!(
            record.failed_attempts,
            vec![
                FailedAttempt {
                    at_ms: 1100,
                    errcode: Some(-1),
                    class: "transient".into()
                },
                FailedAttempt {
                    at_ms: 1300,
                    errcode: None,
                    class: "timeout".into()
                }
            ]
        );
        assert_eq!(record.dead_letter, None);
        assert_eq!(from_fields(&HashMap::new()), None);
    }
}
