//! The events services publish: parsing and validating the message body.
//!
//! Every way a body can be wrong becomes an [`EventError`] that names the problem; the
//! worker dead-letters the message with it. Nothing here panics on hostile input.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// Bodies above this size are refused before parsing: a subscribe message carries at most a
/// few hundred characters, so anything larger is a mistake or an attack.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Longest event id accepted; ids become Redis keys.
pub const MAX_ID_CHARS: usize = 200;

/// A parsed event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub app: Option<String>,
    pub recipient: Recipient,
    pub data: Map<String, Value>,
    pub page: Option<String>,
    pub occurred_at: Option<String>,
}

/// Who receives the message: a known openid, or a `wx.login` code to exchange once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Openid(String),
    JsCode(String),
}

/// Why a body is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError(pub String);

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EventError {}

#[derive(Deserialize)]
struct Wire {
    id: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<Value>,
    app: Option<Value>,
    recipient: Option<WireRecipient>,
    data: Option<Value>,
    page: Option<Value>,
    occurred_at: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRecipient {
    openid: Option<String>,
    js_code: Option<String>,
}

impl Event {
    /// Parses and validates a message body.
    pub fn parse(body: &[u8]) -> Result<Event, EventError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(EventError(format!(
                "body is {} bytes, the limit is {MAX_BODY_BYTES}",
                body.len()
            )));
        }
        let text = std::str::from_utf8(body).map_err(|e| {
            EventError(format!(
                "body is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        let wire: Wire = serde_json::from_str(text)
            .map_err(|e| EventError(format!("body is not a JSON event object: {e}")))?;
        let id = required_string(wire.id, "id")?;
        if id.chars().count() > MAX_ID_CHARS || id.chars().any(char::is_control) {
            return Err(EventError(format!(
                "`id` must be at most {MAX_ID_CHARS} characters without control characters"
            )));
        }
        let kind = required_string(wire.kind, "type")?;
        let recipient = match wire.recipient {
            Some(WireRecipient {
                openid: Some(o),
                js_code: None,
            }) if !o.is_empty() => Recipient::Openid(o),
            Some(WireRecipient {
                openid: None,
                js_code: Some(c),
            }) if !c.is_empty() => Recipient::JsCode(c),
            Some(_) => {
                return Err(EventError(
                    "`recipient` needs exactly one of a non-empty `openid` or `js_code`".into(),
                ));
            }
            None => return Err(EventError("missing `recipient`".into())),
        };
        let data = match wire.data {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(EventError("`data` must be a JSON object".into())),
        };
        Ok(Event {
            id,
            kind,
            app: optional_string(wire.app, "app")?,
            recipient,
            data,
            page: optional_string(wire.page, "page")?,
            occurred_at: optional_string(wire.occurred_at, "occurred_at")?,
        })
    }
}

fn required_string(value: Option<Value>, name: &str) -> Result<String, EventError> {
    match optional_string(value, name)? {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(EventError(format!("`{name}` is empty"))),
        None => Err(EventError(format!("missing `{name}`"))),
    }
}

fn optional_string(value: Option<Value>, name: &str) -> Result<Option<String>, EventError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(EventError(format!(
            "`{name}` must be a string, got {}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What can be read from any body, valid event or not: for dead-letter listings, logs and
/// records of messages that did not parse. Fields that are missing, empty or not strings
/// are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peeked {
    /// The body is JSON (an object or anything else).
    pub json: bool,
    /// The `id` as written, however long (only [`Event::parse`] enforces the limits).
    pub id: Option<String>,
    pub kind: Option<String>,
    pub app: Option<String>,
}

/// Reads the `id`, `type` and `app` of a body, best effort.
pub fn peek(body: &[u8]) -> Peeked {
    #[derive(Deserialize)]
    struct Peek {
        id: Option<Value>,
        #[serde(rename = "type")]
        kind: Option<Value>,
        app: Option<Value>,
    }
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    if body.len() > MAX_BODY_BYTES {
        return Peeked::default();
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => match serde_json::from_value::<Peek>(value) {
            Ok(p) => Peeked {
                json: true,
                id: text(p.id),
                kind: text(p.kind),
                app: text(p.app),
            },
            Err(_) => Peeked {
                json: true,
                ..Peeked::default()
            },
        },
        Ok(_) => Peeked {
            json: true,
            ..Peeked::default()
        },
        Err(_) => Peeked::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_example_parses() {
        let body = br#"{"id": "ord-1001-paid", "type": "order.paid", "app": "default",
            "recipient": {"openid": "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"},
            "data": {"order_no": "A1001", "amount": "12.50", "paid_at": "2026-11-24T10:00:00+08:00"},
            "page": "pages/order/detail?id=A1001", "occurred_at": "2026-11-24T10:00:01+08:00"}"#;
        let e = Event::parse(body).unwrap();
        assert_eq!(e.id, "ord-1001-paid");
        assert_eq!(e.kind, "order.paid");
        assert_eq!(
            e.recipient,
            Recipient::Openid("o6_bmjrPTlm6_2sgVt7hMZOPfL2M".into())
        );
        assert_eq!(e.data["order_no"], "A1001");
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not a JSON event"),
            (b"\xff\xfe", "not UTF-8"),
            (
                br#"{"type":"a","recipient":{"openid":"o"}}"#,
                "missing `id`",
            ),
            (
                br#"{"id":"1","recipient":{"openid":"o"}}"#,
                "missing `type`",
            ),
            (
                br#"{"id":1,"type":"a","recipient":{"openid":"o"}}"#,
                "`id` must be a string",
            ),
            (br#"{"id":"1","type":"a"}"#, "missing `recipient`"),
            (br#"{"id":"1","type":"a","recipient":{}}"#, "exactly one"),
            (
                br#"{"id":"1","type":"a","recipient":{"openid":"o","js_code":"c"}}"#,
                "exactly one",
            ),
            (
                br#"{"id":"1","type":"a","recipient":{"openid":"o"},"data":[1]}"#,
                "`data` must be",
            ),
            (br#"[1,2]"#, "not a JSON event"),
        ];
        for (body, needle) in cases {
            let err = Event::parse(body).unwrap_err();
            assert!(
                err.0.contains(needle),
                "{:?}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn oversize_and_deeply_nested_bodies_are_refused() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(Event::parse(&big).unwrap_err().0.contains("limit"));
        let deep = format!(
            r#"{{"id":"1","type":"a","recipient":{{"openid":"o"}},"data":{{"x":{}1{}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(Event::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn peek_recovers_id_and_type_of_a_bad_event() {
        let p = peek(br#"{"id":"x1","type":"t","recipient":5}"#);
        assert_eq!(
            (p.id.as_deref(), p.kind.as_deref()),
            (Some("x1"), Some("t"))
        );
        assert!(p.json);
        assert_eq!(
            peek(b"[1]"),
            Peeked {
                json: true,
                ..Peeked::default()
            }
        );
        assert_eq!(peek(b"\xff"), Peeked::default());
    }
}
