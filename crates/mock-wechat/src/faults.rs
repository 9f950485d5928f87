//! Injected failures: what a fault is, its JSON form, and the per-endpoint queues and rates
//! that decide which calls get one.
//!
//! Tests script exact sequences with the queue ("the next send answers -1, then 500") and
//! soak the product with the rate ("30 % of sends fail"); the queue wins while it is not empty
//! so a scripted sequence is never interleaved with random ones.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Something going wrong on purpose on one WeChat call.
///
/// JSON forms: `{"errcode":-1}`, `{"http":500}`, `{"hang":true}`, `{"delay_ms":250}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "FaultRepr", into = "FaultRepr")]
pub enum Fault {
    /// HTTP 200 with `{"errcode":n,"errmsg":"injected fault …"}`.
    Errcode(i64),
    /// That HTTP status with a plain-text body (codes outside 200..=599 are sent as 500).
    Http(u16),
    /// Never answer: the client has to give up on its own.
    Hang,
    /// Wait this long, then process the call normally.
    Delay(Duration),
}

/// Which WeChat endpoint a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTarget {
    /// `POST /cgi-bin/message/subscribe/send`.
    Send,
    /// Both `GET /cgi-bin/token` and `POST /cgi-bin/stable_token`.
    Token,
    /// `GET /sns/jscode2session`.
    Jscode2session,
}

impl FaultTarget {
    fn index(self) -> usize {
        match self {
            FaultTarget::Send => 0,
            FaultTarget::Token => 1,
            FaultTarget::Jscode2session => 2,
        }
    }
}

/// The flat object the JSON forms share; exactly one field may be set.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    errcode: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hang: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
}

impl TryFrom<FaultRepr> for Fault {
    type Error = String;

    fn try_from(r: FaultRepr) -> Result<Fault, String> {
        match (r.errcode, r.http, r.hang, r.delay_ms) {
            (Some(code), None, None, None) => Ok(Fault::Errcode(code)),
            (None, Some(status), None, None) if (200..=599).contains(&status) => {
                Ok(Fault::Http(status))
            }
            (None, Some(status), None, None) => {
                Err(format!("http status {status} is not within 200..=599"))
            }
            (None, None, Some(true), None) => Ok(Fault::Hang),
            (None, None, Some(false), None) => Err("\"hang\" can only be true".to_owned()),
            (None, None, None, Some(ms)) => Ok(Fault::Delay(Duration::from_millis(ms))),
            _ => Err(
                "a fault is exactly one of {\"errcode\":N}, {\"http\":STATUS}, {\"hang\":true}, {\"delay_ms\":MS}"
                    .to_owned(),
            ),
        }
    }
}

impl From<Fault> for FaultRepr {
    fn from(f: Fault) -> FaultRepr {
        let mut r = FaultRepr {
            errcode: None,
            http: None,
            hang: None,
            delay_ms: None,
        };
        match f {
            Fault::Errcode(code) => r.errcode = Some(code),
            Fault::Http(status) => r.http = Some(status),
            Fault::Hang => r.hang = Some(true),
            Fault::Delay(d) => r.delay_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
        r
    }
}

#[derive(Default)]
struct Slot {
    queue: VecDeque<Fault>,
    rate: Option<(Fault, f64)>,
}

/// The faults armed for each target.
#[derive(Default)]
pub(crate) struct Faults {
    slots: Mutex<[Slot; 3]>,
}

impl Faults {
    pub(crate) fn push(&self, target: FaultTarget, faults: Vec<Fault>) {
        self.lock()[target.index()].queue.extend(faults);
    }

    /// `ratio` is clamped to 0..=1 (NaN counts as 0) so a typo cannot make every call fail.
    pub(crate) fn set_rate(&self, target: FaultTarget, fault: Option<Fault>, ratio: f64) {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.lock()[target.index()].rate = fault.map(|f| (f, ratio));
    }

    /// The fault for this call, if any: the queue first, then the random rate.
    pub(crate) fn next(&self, target: FaultTarget) -> Option<Fault> {
        let mut slots = self.lock();
        let slot = &mut slots[target.index()];
        if let Some(f) = slot.queue.pop_front() {
            return Some(f);
        }
        match &slot.rate {
            // `f64() < 1.0` always, so a ratio of 1.0 hits every call and 0.0 none.
            Some((f, ratio)) if fastrand::f64() < *ratio => Some(f.clone()),
            _ => None,
        }
    }

    pub(crate) fn clear(&self) {
        *self.lock() = Default::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Slot; 3]> {
        // A panic while holding this lock cannot leave the queues inconsistent.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms() {
        let cases = [
            (Fault::Errcode(-1), r#"{"errcode":-1}"#),
            (Fault::Http(500), r#"{"http":500}"#),
            (Fault::Hang, r#"{"hang":true}"#),
            (
                Fault::Delay(Duration::from_millis(250)),
                r#"{"delay_ms":250}"#,
            ),
        ];
        for (fault, json) in cases {
            assert_eq!(serde_json::to_string(&fault).unwrap(), json);
            assert_eq!(serde_json::from_str::<Fault>(json).unwrap(), fault);
        }
        assert_eq!(
            serde_json::to_string(&FaultTarget::Jscode2session).unwrap(),
            r#""jscode2session""#
        );
    }

    #[test]
    fn bad_fault_json_is_refused() {
        for json in [
            r#"{}"#,
            r#"{"errcode":1,"http":500}"#,
            r#"{"hang":false}"#,
            r#"{"http":99}"#,
            r#"{"boom":1}"#,
            r#""hang""#,
        ] {
            assert!(serde_json::from_str::<Fault>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn queue_comes_before_rate_and_is_consumed_in_order() {
        let f = Faults::default();
        f.set_rate(FaultTarget::Send, Some(Fault::Errcode(-1)), 1.0);
        f.push(FaultTarget::Send, vec![Fault::Http(500), Fault::Hang]);
        assert_eq!(f.next(FaultTarget::Send), Some(Fault::Http(500)));
        assert_eq!(f.next(FaultTarget::Send), Some(Fault::Hang));
        assert_eq!(f.next(FaultTarget::Send), Some(Fault::Errcode(-1)));
        assert_eq!(f.next(FaultTarget::Token), None);
        f.set_rate(FaultTarget::Send, None, 1.0);
        assert_eq!(f.next(FaultTarget::Send), None);
    }

    #[test]
    fn rate_zero_never_fires_and_nan_is_zero() {
        let f = Faults::default();
        f.set_rate(FaultTarget::Token, Some(Fault::Errcode(-1)), f64::NAN);
        assert!((0..1000).all(|_| f.next(FaultTarget::Token).is_none()));
        f.set_rate(FaultTarget::Token, Some(Fault::Errcode(-1)), 0.5);
        let hits = (0..10_000)
            .filter(|_| f.next(FaultTarget::Token).is_some())
            .count();
        assert!((4000..6000).contains(&hits), "{hits}");
    }
}
