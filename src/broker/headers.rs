//! Reading and writing AMQP header values of any type. What wxpush's own `x-wxpush-*`
//! headers say is `dead_letter.rs`'s business: nothing else names them.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

/// The headers of a delivery (empty when it has none).
pub fn of(properties: &BasicProperties) -> FieldTable {
    properties.headers().clone().unwrap_or_default()
}

pub fn get_i64(headers: &FieldTable, name: &str) -> Option<i64> {
    match headers.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

pub fn get_str(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => get_i64(headers, name)
            .map(|v| v.to_string())
            .or_else(|| Some(format!("{other:?}"))),
    }
}

pub fn set_i64(headers: &mut FieldTable, name: &str, value: i64) {
    headers.insert(ShortString::from(name), AMQPValue::LongLongInt(value));
}

pub fn set_str(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
}

/// Removes headers, e.g. the dead-letter reason when a message is replayed.
pub fn without(headers: &FieldTable, names: &[&str]) -> FieldTable {
    let kept = headers
        .inner()
        .iter()
        .filter(|(k, _)| !names.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<std::collections::BTreeMap<_, _>>();
    FieldTable::from(kept)
}
