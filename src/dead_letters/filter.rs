//! Which dead letters a replay, purge or listing selects: the CLI's flags, the API's JSON
//! and the console's forms all become one [`Filter`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::broker::dead_letter::Letter;

/// All given criteria must hold; a criterion with several values holds when any does. An
/// empty filter selects every letter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errcodes: Vec<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// `x-wxpush-app`, else the event's `app`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<String>,
    /// Event ids (a selection); letters without a readable id never match one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Without `x-wxpush-dead-at` a letter counts as infinitely old.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub older_than: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub newer_than: Option<Duration>,
}

impl Filter {
    pub fn matches(&self, letter: &Letter, now: OffsetDateTime) -> bool {
        fn any_of(wanted: &[String], actual: Option<&str>) -> bool {
            wanted.is_empty() || actual.is_some_and(|a| wanted.iter().any(|w| w == a))
        }
        let age = letter.age(now);
        (self.errcodes.is_empty() || letter.errcode.is_some_and(|c| self.errcodes.contains(&c)))
            && any_of(&self.types, letter.kind.as_deref())
            && any_of(&self.apps, letter.app.as_deref())
            && any_of(&self.classes, letter.class.as_deref())
            && any_of(&self.ids, letter.id.as_deref())
            && self.older_than.is_none_or(|d| age.is_none_or(|a| a >= d))
            && self.newer_than.is_none_or(|d| age.is_some_and(|a| a < d))
    }

    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::dead_letter::{self, Failure, FailureClass};
    use crate::wechat::errcode::ErrorClass;
    use lapin::BasicProperties;
    use lapin::types::FieldTable;
    use time::format_description::well_known::Rfc3339;

    /// A dead letter as the worker writes it, or (`None`) a foreign message without our headers.
    fn letter(dead: Option<(i64, &str)>, body: &[u8]) -> Letter {
        let headers = match dead {
            None => FieldTable::default(),
            Some((errcode, dead_at)) => {
                let failure = Failure {
                    class: FailureClass::Call(ErrorClass::Permanent),
                    errcode: Some(errcode),
                    errmsg: "x".into(),
                    app: None,
                };
                let at = OffsetDateTime::parse(dead_at, &Rfc3339).unwrap();
                dead_letter::for_dead_letter(FieldTable::default(), 1, &failure, "t-1", at)
            }
        };
        Letter::of(1, &BasicProperties::default().with_headers(headers), body)
    }

    #[test]
    fn filters_combine_and_repeat() {
        let now = OffsetDateTime::parse("2026-01-01T12:00:00Z", &Rfc3339).unwrap();
        let body = br#"{"id":"1","type":"order.paid","app":"shop"}"#;
        let l = letter(Some((-1, "2026-01-01T11:00:00Z")), body);
        let f = |set: fn(&mut Filter)| {
            let mut a = Filter::default();
            set(&mut a);
            a
        };
        assert!(f(|_| {}).matches(&l, now));
        assert!(f(|a| a.errcodes = vec![40003, -1]).matches(&l, now));
        assert!(!f(|a| a.errcodes = vec![40003]).matches(&l, now));
        assert!(f(|a| a.types = vec!["order.paid".into()]).matches(&l, now));
        assert!(!f(|a| a.types = vec!["task.due".into()]).matches(&l, now));
        assert!(f(|a| a.apps = vec!["shop".into()]).matches(&l, now));
        assert!(f(|a| a.classes = vec!["permanent".into()]).matches(&l, now));
        assert!(f(|a| a.ids = vec!["2".into(), "1".into()]).matches(&l, now));
        assert!(!f(|a| a.ids = vec!["2".into()]).matches(&l, now));
        assert!(f(|a| a.older_than = Some(Duration::from_secs(1800))).matches(&l, now));
        assert!(!f(|a| a.older_than = Some(Duration::from_secs(7200))).matches(&l, now));
        assert!(f(|a| a.newer_than = Some(Duration::from_secs(7200))).matches(&l, now));
        assert!(!f(|a| a.newer_than = Some(Duration::from_secs(60))).matches(&l, now));
        // A foreign message: no errcode, no class, no id, no dead-at (infinitely old).
        let foreign = letter(None, b"\x00binary");
        assert!(f(|_| {}).matches(&foreign, now));
        assert!(!f(|a| a.errcodes = vec![-1]).matches(&foreign, now));
        assert!(!f(|a| a.ids = vec!["1".into()]).matches(&foreign, now));
        assert!(!f(|a| a.classes = vec!["permanent".into()]).matches(&foreign, now));
        assert!(f(|a| a.older_than = Some(Duration::from_secs(1 << 40))).matches(&foreign, now));
        assert!(!f(|a| a.newer_than = Some(Duration::from_secs(1 << 40))).matches(&foreign, now));
    }

    #[test]
    fn json_names_the_unknown_field() {
        let err = serde_json::from_str::<Filter>(r#"{"errcode":[1]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `errcode`"), "{err}");
        let f: Filter = serde_json::from_str(r#"{"older_than":"2h","ids":["a"]}"#).unwrap();
        assert_eq!(f.older_than, Some(Duration::from_secs(7200)));
    }
}
