//! Dead letters and the `x-wxpush-*` failure headers: the one place that writes them and the
//! one place that reads them.
//!
//! A message that failed carries its story in headers: why ([`FailureClass`], errcode,
//! errmsg), how often ([`ATTEMPTS`]), since when, for which app. The worker writes them on
//! retries, parking and dead letters ([`for_retry`], [`for_park`], [`for_dead_letter`]);
//! `replay` strips them ([`for_replay`]); `dead`, `replay`, `demo` and the tests read them
//! through [`Letter`]. The header names are private to this module so that no one else can
//! write or parse them by hand.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::FieldTable;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::headers as h;
use crate::event;
use crate::wechat::errcode::ErrorClass;

const ERROR: &str = "x-wxpush-error";
const ERRCODE: &str = "x-wxpush-errcode";
const ERRMSG: &str = "x-wxpush-errmsg";
const ATTEMPTS: &str = "x-wxpush-attempts";
const FIRST_FAILED_AT: &str = "x-wxpush-first-failed-at";
const APP: &str = "x-wxpush-app";
const REPLAYED: &str = "x-wxpush-replayed";
const DEAD_AT: &str = "x-wxpush-dead-at";
const PARKED: &str = "x-wxpush-parked";
const BUSY: &str = "x-wxpush-busy";
const LETTER_ID: &str = "x-wxpush-letter-id";

/// Every header this module owns, for listings that want to tell ours from the rest.
pub const HEADER_NAMES: &[&str] = &[
    ERROR,
    ERRCODE,
    ERRMSG,
    ATTEMPTS,
    FIRST_FAILED_AT,
    APP,
    REPLAYED,
    DEAD_AT,
    PARKED,
    BUSY,
    LETTER_ID,
];

/// Why a message failed: the `x-wxpush-error` header, a `class` filter of `replay`, a label
/// of the dead-letter metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The message itself is unusable (malformed, no template, unknown app, bad data); it
    /// never reached WeChat.
    Invalid,
    /// WeChat may have accepted it, but no answer said so (`policy.on_ambiguous`).
    Ambiguous,
    /// The grant ledger has no grant for (user, template) (`policy.without_grant =
    /// "dead_letter"`); WeChat was not called.
    NoGrant,
    /// WeChat (or the way to it) answered with a failure of this class.
    Call(ErrorClass),
}

impl FailureClass {
    /// Every class, for parsing and for documentation.
    pub const ALL: &[FailureClass] = &[
        FailureClass::Invalid,
        FailureClass::Ambiguous,
        FailureClass::NoGrant,
        FailureClass::Call(ErrorClass::Token),
        FailureClass::Call(ErrorClass::Transient),
        FailureClass::Call(ErrorClass::Limits),
        FailureClass::Call(ErrorClass::Permanent),
        FailureClass::Call(ErrorClass::Refused),
        FailureClass::Call(ErrorClass::Credential),
        FailureClass::Call(ErrorClass::Unknown),
    ];

    /// The stable name written in headers and used in filters and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Invalid => "invalid",
            FailureClass::Ambiguous => "ambiguous",
            FailureClass::NoGrant => "no_grant",
            FailureClass::Call(class) => class.as_str(),
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailureClass {
    type Err = String;

    fn from_str(s: &str) -> Result<FailureClass, String> {
        FailureClass::ALL
            .iter()
            .copied()
            .find(|class| class.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
                format!("unknown failure class `{s}` (one of: {})", names.join(", "))
            })
    }
}

/// Why a message failed, as recorded on its retries and its dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: FailureClass,
    /// WeChat's errcode, when WeChat answered with one.
    pub errcode: Option<i64>,
    pub errmsg: String,
    pub app: Option<String>,
}

/// The number of failed sends recorded on a message so far.
pub fn attempts(headers: &FieldTable) -> u32 {
    h::get_i64(headers, ATTEMPTS)
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32
}

/// How many times the message was parked so far (0 if never).
pub fn parks(headers: &FieldTable) -> u32 {
    h::get_i64(headers, PARKED)
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32
}

/// How many times an operator replayed the message (0 for a first delivery).
pub fn replays(headers: &FieldTable) -> i64 {
    h::get_i64(headers, REPLAYED).unwrap_or(0)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// The headers of a message going to a retry tier: its failure and attempt count, and the
/// time of its first failure (kept from an earlier retry).
pub fn for_retry(
    mut headers: FieldTable,
    attempts: u32,
    failure: &Failure,
    now: OffsetDateTime,
) -> FieldTable {
    h::set_i64(&mut headers, ATTEMPTS, i64::from(attempts));
    if h::get_str(&headers, FIRST_FAILED_AT).is_none() {
        h::set_str(&mut headers, FIRST_FAILED_AT, &rfc3339(now));
    }
    h::set_str(&mut headers, ERROR, failure.class.as_str());
    match failure.errcode {
        Some(code) => h::set_i64(&mut headers, ERRCODE, code),
        None => headers = h::without(&headers, &[ERRCODE]),
    }
    h::set_str(&mut headers, ERRMSG, &failure.errmsg);
    if let Some(app) = &failure.app {
        h::set_str(&mut headers, APP, app);
    }
    headers
}

/// The headers of a dead letter: those of a retry, plus when it died and the letter's id.
///
/// The id names the decision, not the publish: a redelivery that publishes the same dead
/// letter again (the broker confirmed the first copy but the worker died before recording
/// it, or a publish that timed out during a resource alarm landed later) writes the same
/// id, and every reader ([`crate::dead_letters`]) treats the copies as one letter.
pub fn for_dead_letter(
    headers: FieldTable,
    attempts: u32,
    failure: &Failure,
    letter_id: &str,
    now: OffsetDateTime,
) -> FieldTable {
    let mut headers = for_retry(headers, attempts, failure, now);
    h::set_str(&mut headers, DEAD_AT, &rfc3339(now));
    h::set_str(&mut headers, LETTER_ID, letter_id);
    headers
}

/// The letter id of a dead letter no Redis record stands behind (an invalid or unparsable
/// message): derived from the body, so a redelivery of the same message, dead-lettered
/// again, carries the same id.
pub fn letter_id_of_body(body: &[u8]) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(body);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("body-{hex}")
}

/// The headers of a message parked while its app cannot send: how often it was parked, and
/// for which app. Attempts are not touched: parking spends none.
pub fn for_park(mut headers: FieldTable, app: &str) -> FieldTable {
    let parked = h::get_i64(&headers, PARKED).unwrap_or(0).saturating_add(1);
    h::set_i64(&mut headers, PARKED, parked);
    h::set_str(&mut headers, APP, app);
    headers
}

/// The headers of a message that found its event claimed by another delivery and goes
/// round once more: how often that happened (evidence, if Redis later has no state for the
/// event, that it was handled before: see `store::claims`).
pub fn for_later(mut headers: FieldTable) -> FieldTable {
    let busy = h::get_i64(&headers, BUSY).unwrap_or(0).saturating_add(1);
    h::set_i64(&mut headers, BUSY, busy);
    headers
}

/// The dead letter's id (`x-wxpush-letter-id`), when it has one.
pub fn letter_id(headers: &FieldTable) -> Option<String> {
    h::get_str(headers, LETTER_ID)
}

/// How often the message found its event busy (0 when never).
pub fn times_busy(headers: &FieldTable) -> i64 {
    h::get_i64(headers, BUSY).unwrap_or(0)
}

/// The headers a replayed message carries: the failure removed, the replay counted (so the
/// worker claims the event afresh, see `store::claims`).
pub fn for_replay(dead: &FieldTable) -> FieldTable {
    let mut headers = h::without(
        dead,
        &[
            ERROR,
            ERRCODE,
            ERRMSG,
            ATTEMPTS,
            FIRST_FAILED_AT,
            DEAD_AT,
            PARKED,
            BUSY,
            LETTER_ID,
        ],
    );
    h::set_i64(&mut headers, REPLAYED, replays(dead).saturating_add(1));
    headers
}

/// What a dead letter says about itself. Every field is optional: a message put in the
/// queue by another client may have none of our headers and any body at all.
#[derive(Debug, Clone, PartialEq)]
pub struct Letter {
    /// 1-based position in the queue when it was read.
    pub position: usize,
    /// The body is JSON (an object or anything else).
    pub json: bool,
    pub id: Option<String>,
    pub kind: Option<String>,
    /// `x-wxpush-app`, else the body's `app`.
    pub app: Option<String>,
    /// The class as written (a foreign or newer writer may use a name this version does not
    /// know; [`Letter::failure_class`] parses it).
    pub class: Option<String>,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub attempts: Option<i64>,
    pub first_failed_at: Option<String>,
    /// `x-wxpush-dead-at` as written.
    pub dead_at_raw: Option<String>,
    pub dead_at: Option<OffsetDateTime>,
    /// `x-wxpush-replayed`, 0 when absent.
    pub replayed: i64,
    /// `x-wxpush-letter-id`: copies of one dead letter share it (absent on letters written
    /// before 0.3, and on foreign messages: each of those is a letter of its own).
    pub letter_id: Option<String>,
    /// How many copies of this letter a listing found (1 unless the broker holds copies,
    /// see [`for_dead_letter`]).
    pub copies: u32,
}

impl Letter {
    pub fn of(position: usize, properties: &BasicProperties, body: &[u8]) -> Letter {
        let headers = h::of(properties);
        let peeked = event::peek(body);
        let dead_at_raw = h::get_str(&headers, DEAD_AT);
        Letter {
            position,
            json: peeked.json,
            id: peeked.id,
            kind: peeked.kind,
            app: h::get_str(&headers, APP).or(peeked.app),
            class: h::get_str(&headers, ERROR),
            errcode: h::get_i64(&headers, ERRCODE),
            errmsg: h::get_str(&headers, ERRMSG),
            attempts: h::get_i64(&headers, ATTEMPTS),
            first_failed_at: h::get_str(&headers, FIRST_FAILED_AT),
            dead_at: dead_at_raw
                .as_deref()
                .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok()),
            dead_at_raw,
            replayed: replays(&headers),
            letter_id: letter_id(&headers),
            copies: 1,
        }
    }

    pub fn of_delivery(position: usize, delivery: &Delivery) -> Letter {
        Letter::of(position, &delivery.properties, &delivery.data)
    }

    /// The class, when it is one this version knows.
    pub fn failure_class(&self) -> Option<FailureClass> {
        self.class.as_deref()?.parse().ok()
    }

    /// The event id for people: `(unparsable)` when the body is not JSON, `(no id)` when it
    /// is JSON without a string `id`.
    pub fn id_label(&self) -> String {
        match (&self.id, self.json) {
            (Some(id), _) => id.clone(),
            (None, true) => "(no id)".into(),
            (None, false) => "(unparsable)".into(),
        }
    }

    /// Time since it was dead-lettered; `None` without a readable `x-wxpush-dead-at` (such a
    /// message counts as infinitely old for `replay`'s age filters).
    pub fn age(&self, now: OffsetDateTime) -> Option<Duration> {
        let age = now - self.dead_at?;
        Some(Duration::try_from(age).unwrap_or(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(headers: FieldTable) -> BasicProperties {
        BasicProperties::default().with_headers(headers)
    }

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).unwrap()
    }

    #[test]
    fn class_names_round_trip() {
        for class in FailureClass::ALL {
            assert_eq!(class.as_str().parse::<FailureClass>(), Ok(*class));
        }
        let err = "nope".parse::<FailureClass>().unwrap_err();
        assert!(err.contains("invalid, ambiguous, no_grant, token"), "{err}");
    }

    #[test]
    fn what_is_written_is_read_back() {
        let failure = Failure {
            class: FailureClass::Call(ErrorClass::Permanent),
            errcode: Some(40003),
            errmsg: "invalid openid".into(),
            app: Some("shop".into()),
        };
        let first = at("2026-01-01T00:00:00Z");
        let retried = for_retry(FieldTable::default(), 1, &failure, first);
        let dead = for_dead_letter(retried, 2, &failure, "c-1", at("2026-01-01T00:05:00Z"));
        let body = br#"{"id":"e-1","type":"order.paid","app":"ignored"}"#;
        let l = Letter::of(3, &props(dead), body);
        assert_eq!(l.position, 3);
        assert_eq!(l.id.as_deref(), Some("e-1"));
        assert_eq!(l.kind.as_deref(), Some("order.paid"));
        assert_eq!(
            l.app.as_deref(),
            Some("shop"),
            "the header wins over the body"
        );
        assert_eq!(
            l.failure_class(),
            Some(FailureClass::Call(ErrorClass::Permanent))
        );
        assert_eq!(l.errcode, Some(40003));
        assert_eq!(l.errmsg.as_deref(), Some("invalid openid"));
        assert_eq!(l.attempts, Some(2));
        assert_eq!(l.first_failed_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(l.dead_at, Some(at("2026-01-01T00:05:00Z")));
        assert_eq!(l.letter_id.as_deref(), Some("c-1"));
        assert_eq!(l.copies, 1);
        assert_eq!(
            l.age(at("2026-01-01T00:06:00Z")),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_failure_without_errcode_clears_an_earlier_one() {
        let mut failure = Failure {
            class: FailureClass::Call(ErrorClass::Transient),
            errcode: Some(-1),
            errmsg: "busy".into(),
            app: None,
        };
        let now = at("2026-01-01T00:00:00Z");
        let once = for_retry(FieldTable::default(), 1, &failure, now);
        failure.errcode = None;
        let twice = for_retry(once, 2, &failure, now);
        assert_eq!(Letter::of(1, &props(twice), b"{}").errcode, None);
    }

    #[test]
    fn replay_strips_the_failure_and_counts() {
        let failure = Failure {
            class: FailureClass::Invalid,
            errcode: Some(47003),
            errmsg: "x".into(),
            app: Some("default".into()),
        };
        let mut dead = for_dead_letter(
            for_park(FieldTable::default(), "default"),
            8,
            &failure,
            "c-2",
            at("2026-01-01T00:00:00Z"),
        );
        h::set_str(&mut dead, "x-other", "kept");
        h::set_i64(&mut dead, REPLAYED, 2);
        let replayed = for_replay(&dead);
        let names: Vec<_> = replayed.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-other", APP, REPLAYED]);
        assert_eq!(replays(&replayed), 3);
        assert_eq!(replays(&for_replay(&FieldTable::default())), 1);
    }

    #[test]
    fn going_round_while_busy_is_counted_and_replay_forgets_it() {
        let twice = for_later(for_later(FieldTable::default()));
        assert_eq!(times_busy(&twice), 2);
        assert_eq!(attempts(&twice), 0);
        assert_eq!(times_busy(&for_replay(&twice)), 0);
    }

    #[test]
    fn parking_counts_and_spends_no_attempt() {
        let once = for_park(FieldTable::default(), "shop");
        let twice = for_park(once, "shop");
        assert_eq!(h::get_i64(&twice, PARKED), Some(2));
        assert_eq!(parks(&twice), 2);
        assert_eq!(attempts(&twice), 0);
        assert_eq!(
            Letter::of(1, &props(twice), b"x").app.as_deref(),
            Some("shop")
        );
    }

    #[test]
    fn a_body_gives_one_letter_id() {
        let id = letter_id_of_body(b"{\"id\":\"x\"}");
        assert_eq!(id, letter_id_of_body(b"{\"id\":\"x\"}"));
        assert_ne!(id, letter_id_of_body(b"{\"id\":\"y\"}"));
        assert!(id.starts_with("body-") && id.len() == 45, "{id}");
    }

    #[test]
    fn copes_with_foreign_messages() {
        let l = Letter::of(1, &BasicProperties::default(), b"\xff\xfe binary");
        assert_eq!(l.id_label(), "(unparsable)");
        assert_eq!(l.failure_class(), None);
        assert_eq!(l.age(OffsetDateTime::now_utc()), None);
        let l = Letter::of(1, &BasicProperties::default(), br#"{"id":5}"#);
        assert_eq!(l.id_label(), "(no id)");
    }
}
