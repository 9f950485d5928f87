//! The one table that says what a WeChat answer means for a message.
//!
//! Retries, dead letters, the credential breaker and metrics all read [`classify`] and
//! [`ErrorClass::action`]; nothing
//! else in the crate matches on raw errcodes. Classification is kept apart from transport
//! (see `client.rs`): the client reports what happened, this module decides what it means.

use std::fmt;

use super::client::CallError;

/// What kind of failure a WeChat answer is, and so what the worker does with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The access_token is stale: invalidate exactly that token, refresh, retry at once.
    Token,
    /// Worth retrying later with backoff (system busy, rate limits, 5xx, timeouts).
    Transient,
    /// Can never succeed as sent: dead letter.
    Permanent,
    /// The user has no subscription left (43101): handled by `policy.on_refused`.
    Refused,
    /// The app itself is misconfigured: stop consuming its events, never dead-letter them.
    Credential,
    /// The app's own limits (daily quota, minute rate): hold the app's sends, never spend a
    /// message's attempts, never dead-letter.
    Limits,
    /// An errcode this table does not know: retried like a transient error, then dead-lettered.
    Unknown,
}

impl ErrorClass {
    /// The stable name used in dead-letter headers, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Token => "token",
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Refused => "refused",
            ErrorClass::Credential => "credential",
            ErrorClass::Limits => "limits",
            ErrorClass::Unknown => "unknown",
        }
    }

    /// What a failure of this class means for the message. This is the meaning; how the
    /// configured policies apply it to one message is `worker::disposition::after_failure`.
    pub fn action(self) -> Action {
        match self {
            ErrorClass::Token => Action::RefreshTokenAndRetry,
            ErrorClass::Transient | ErrorClass::Unknown => Action::RetryLater,
            ErrorClass::Permanent => Action::DeadLetter,
            ErrorClass::Refused => Action::ApplyRefusedPolicy,
            ErrorClass::Credential => Action::ParkApp,
            // Which limit it is is the errcode's: see `action_of`.
            ErrorClass::Limits => Action::WaitForQuota,
        }
    }
}

/// What the worker does about a failed call, by its [`ErrorClass`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Invalidate exactly the token that failed, refresh under the lock, retry at once
    /// (a bounded number of times, then as [`Action::RetryLater`]). Never a dead letter.
    RefreshTokenAndRetry,
    /// Retry later with backoff; dead-letter once `retry.max_attempts` are spent.
    RetryLater,
    /// Never deliverable: dead letter.
    DeadLetter,
    /// The user has no subscription left: `policy.on_refused`.
    ApplyRefusedPolicy,
    /// The app is misconfigured: park its events (no attempt spent, never a dead letter).
    ParkApp,
    /// The app's daily quota is used up (45009): hold its sends fleet-wide until it is back.
    WaitForQuota,
    /// The app's minute rate is reached (45011): hold its sends until the next minute.
    WaitForNextMinute,
}

/// What a failed call means for the message: the one function the worker asks.
pub fn action_of(error: &CallError) -> Action {
    match error {
        CallError::WeChat { errcode: 45011, .. } => Action::WaitForNextMinute,
        other => classify_call(other).action(),
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// errcode → (class, what it means). Sources: WeChat's subscribe/send, token and
/// jscode2session documentation.
const TABLE: &[(i64, ErrorClass, &str)] = &[
    (-1, ErrorClass::Transient, "system busy"),
    (
        40001,
        ErrorClass::Token,
        "access_token invalid or not the latest",
    ),
    (40014, ErrorClass::Token, "access_token malformed"),
    (42001, ErrorClass::Token, "access_token expired"),
    (45009, ErrorClass::Limits, "API daily quota reached"),
    (45011, ErrorClass::Limits, "API minute rate limit reached"),
    (40003, ErrorClass::Permanent, "invalid openid"),
    (40037, ErrorClass::Permanent, "invalid template_id"),
    (47003, ErrorClass::Permanent, "template data invalid"),
    (41030, ErrorClass::Permanent, "invalid page"),
    (40029, ErrorClass::Permanent, "invalid js_code"),
    (40163, ErrorClass::Permanent, "js_code already used"),
    (
        43101,
        ErrorClass::Refused,
        "user refused or has no subscription left",
    ),
    (40013, ErrorClass::Credential, "invalid appid"),
    (40125, ErrorClass::Credential, "invalid appsecret"),
    (
        40164,
        ErrorClass::Credential,
        "caller IP not in the app's whitelist",
    ),
];

/// The class of a non-zero errcode.
pub fn classify(errcode: i64) -> ErrorClass {
    TABLE
        .iter()
        .find(|(code, _, _)| *code == errcode)
        .map_or(ErrorClass::Unknown, |(_, class, _)| *class)
}

/// The class of a failed call: WeChat's errcode through the table, transport failures by kind.
/// A timeout is transient here; whether it is also *ambiguous* (WeChat may have acted) is
/// [`is_ambiguous`]'s question.
pub fn classify_call(error: &CallError) -> ErrorClass {
    match error {
        CallError::WeChat { errcode, .. } => classify(*errcode),
        CallError::Http { .. }
        | CallError::Timeout
        | CallError::Connect(_)
        | CallError::Broken(_) => ErrorClass::Transient,
    }
}

/// Whether WeChat may have accepted the call although no answer said so: the request went
/// out and nothing definite came back. 502, 503 and 504 come from a gateway in front of
/// WeChat's servers, which may have passed the request on before it gave up.
pub fn is_ambiguous(error: &CallError) -> bool {
    matches!(
        error,
        CallError::Timeout | CallError::Broken(_) | CallError::Http { status: 502..=504 }
    )
}

/// The label for a failed call in metrics: the class, or `timeout` for calls never answered.
pub fn outcome_label(error: &CallError) -> &'static str {
    match error {
        CallError::Timeout => "timeout",
        other => classify_call(other).as_str(),
    }
}

/// A short human explanation of an errcode, for logs and dead-letter reasons.
pub fn describe(errcode: i64) -> &'static str {
    TABLE
        .iter()
        .find(|(code, _, _)| *code == errcode)
        .map_or("unknown errcode", |(_, _, text)| text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_classes() {
        for code in [40001, 40014, 42001] {
            assert_eq!(classify(code), ErrorClass::Token, "{code}");
        }
        assert_eq!(classify(-1), ErrorClass::Transient);
        for code in [45009, 45011] {
            assert_eq!(classify(code), ErrorClass::Limits, "{code}");
        }
        let wechat = |errcode| CallError::WeChat {
            errcode,
            errmsg: String::new(),
        };
        assert_eq!(action_of(&wechat(45009)), Action::WaitForQuota);
        assert_eq!(action_of(&wechat(45011)), Action::WaitForNextMinute);
        for code in [40003, 40037, 47003, 41030] {
            assert_eq!(classify(code), ErrorClass::Permanent, "{code}");
        }
        assert_eq!(classify(43101), ErrorClass::Refused);
        for code in [40013, 40125, 40164] {
            assert_eq!(classify(code), ErrorClass::Credential, "{code}");
        }
        assert_eq!(classify(99999), ErrorClass::Unknown);
        assert_eq!(classify(99999).action(), Action::RetryLater);
        assert_eq!(classify(-1).action(), Action::RetryLater);
        assert_eq!(classify(40003).action(), Action::DeadLetter);
        assert_eq!(classify(40001).action(), Action::RefreshTokenAndRetry);
        assert_eq!(classify(43101).action(), Action::ApplyRefusedPolicy);
        assert_eq!(classify(40125).action(), Action::ParkApp);
        assert_eq!(classify_call(&CallError::Timeout), ErrorClass::Transient);
        assert!(is_ambiguous(&CallError::Timeout));
        assert!(!is_ambiguous(&CallError::Connect("refused".into())));
        for status in [502, 503, 504] {
            assert!(is_ambiguous(&CallError::Http { status }), "{status}");
        }
        for status in [500, 501, 505, 429] {
            assert!(!is_ambiguous(&CallError::Http { status }), "{status}");
        }
        assert_eq!(
            classify_call(&CallError::Http { status: 502 }),
            ErrorClass::Transient
        );
    }
}
