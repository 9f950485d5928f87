//! Dead letters' headers and bodies as JSON, for `wxpush dead --json`, the API and the
//! console.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::broker::dead_letter::Letter;

/// Headers as a JSON object (for `--json --show`).
pub fn table_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), table_value_json(v)))
            .collect(),
    )
}

pub fn table_value_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(v) => json!(v),
        AMQPValue::ShortShortInt(v) => json!(v),
        AMQPValue::ShortShortUInt(v) => json!(v),
        AMQPValue::ShortInt(v) => json!(v),
        AMQPValue::ShortUInt(v) => json!(v),
        AMQPValue::LongInt(v) => json!(v),
        AMQPValue::LongUInt(v) => json!(v),
        AMQPValue::LongLongInt(v) => json!(v),
        AMQPValue::Float(v) => json!(v),
        AMQPValue::Double(v) => json!(v),
        AMQPValue::DecimalValue(d) => {
            json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => json!(text),
            Err(_) => json!({ "base64": base64(s.as_bytes()) }),
        },
        AMQPValue::FieldArray(a) => {
            Value::Array(a.as_slice().iter().map(table_value_json).collect())
        }
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => json!({ "base64": base64(b.as_slice()) }),
        AMQPValue::Void => Value::Null,
    }
}

/// Standard base64 with padding (bodies and header values that are not UTF-8, in JSON).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An age in whole seconds, humantime style (`1h 2m 3s`).
pub fn format_age(age: Duration) -> String {
    humantime::format_duration(Duration::from_secs(age.as_secs())).to_string()
}

/// A letter as JSON: what it says about itself, with its age and its number of copies
/// (the one shape of `wxpush dead --json`, `GET /api/dead` and the console).
pub fn letter_json(l: &Letter, now: OffsetDateTime) -> Value {
    let age = l.age(now);
    json!({
        "position": l.position,
        "id": l.id,
        "parsable": l.json,
        "type": l.kind,
        "app": l.app,
        "class": l.class,
        "errcode": l.errcode,
        "errmsg": l.errmsg,
        "attempts": l.attempts,
        "first_failed_at": l.first_failed_at,
        "dead_at": l.dead_at_raw,
        "age_seconds": age.map(|a| a.as_secs()),
        "age": age.map(format_age),
        "replayed": l.replayed,
        "letter_id": l.letter_id,
        "copies": l.copies,
    })
}

/// A letter with its headers and body (UTF-8 as text, else base64): one letter shown whole.
pub fn read_json(
    letter: &Letter,
    properties: &lapin::BasicProperties,
    body: &[u8],
    now: OffsetDateTime,
) -> Value {
    let mut v = letter_json(letter, now);
    v["headers"] = table_json(&crate::broker::headers::of(properties));
    match std::str::from_utf8(body) {
        Ok(text) => v["body"] = json!(text),
        Err(_) => v["body_base64"] = json!(base64(body)),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
