//! The one table that says what a WeChat answer means: its class and what the worker does.
//!
//! Retries, dead letters, the credential breaker, the quota park and metrics all read this
//! module ([`classify`], [`classify_token_fetch`], [`action_of`]); nothing else in the crate
//! matches on raw errcodes. Classification is kept apart from transport (see `client.rs`):
//! the client reports what happened, this module decides what it means.
//!
//! Each row cites the WeChat documentation page it comes from. One errcode means two things
//! depending on the call: `40001` on a call that carried a token is a stale token, but on a
//! token fetch it means the AppSecret is wrong (getAccessToken's and the global return-code
//! page's "获取 access_token 时 AppSecret 错误，或者 access_token 无效"). The token fetch's
//! meanings are the small [`TOKEN_FETCH`] table, read before the main one.

use std::fmt;

use super::client::CallError;

/// What kind of failure a WeChat answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The access_token is stale: invalidate exactly that token, refresh, retry at once.
    Token,
    /// Worth retrying later with backoff (system busy, 5xx, timeouts, connection errors).
    Transient,
    /// An app-wide limit (daily quota, minute rate): not the message's fault; it never
    /// spends a message's attempts and is never a dead letter.
    Limits,
    /// Can never succeed as sent: dead letter.
    Permanent,
    /// The user has no subscription left (43101): handled by `policy.on_refused`.
    Refused,
    /// The app itself is misconfigured: stop consuming its events, never dead-letter them.
    Credential,
    /// An errcode this table does not know: retried like a transient error, then dead-lettered.
    Unknown,
}

impl ErrorClass {
    /// Every class, in the order the documentation lists them.
    pub const ALL: &[ErrorClass] = &[
        ErrorClass::Token,
        ErrorClass::Transient,
        ErrorClass::Limits,
        ErrorClass::Permanent,
        ErrorClass::Refused,
        ErrorClass::Credential,
        ErrorClass::Unknown,
    ];

    /// The stable name used in dead-letter headers, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Token => "token",
            ErrorClass::Transient => "transient",
            ErrorClass::Limits => "limits",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Refused => "refused",
            ErrorClass::Credential => "credential",
            ErrorClass::Unknown => "unknown",
        }
    }
}

/// What the worker does about a failed call. Each row of the table carries its own action
/// (the two `limits` rows differ); [`action_of`] is the one way to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Invalidate exactly the token that failed, refresh under the lock, retry at once
    /// (a bounded number of times, then as [`Action::RetryLater`]). Never a dead letter.
    RefreshTokenAndRetry,
    /// Retry later with backoff; dead-letter once `retry.max_attempts` are spent.
    RetryLater,
    /// 45009, the daily quota is used up: park the app's sends until the quota comes back
    /// (00:00 China time or an operator's `clear_quota`). No attempt spent, never a dead letter.
    WaitForQuota,
    /// 45011, the minute rate is reached: hold the app's sends until the next minute.
    /// No attempt spent, never a dead letter.
    WaitForNextMinute,
    /// Never deliverable: dead letter.
    DeadLetter,
    /// The user has no subscription left: `policy.on_refused`.
    ApplyRefusedPolicy,
    /// The app is misconfigured: park its events (no attempt spent, never a dead letter).
    ParkApp,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One errcode: its class, the worker's action, what it means, and the page that says so.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub errcode: i64,
    pub class: ErrorClass,
    pub action: Action,
    pub meaning: &'static str,
    pub source: &'static str,
}

// The documentation pages the rows cite.
/// The global return codes (通用错误码), also listing each code's errmsg.
const GLOBAL: &str = "https://developers.weixin.qq.com/doc/oplatform/developers/errCode/";
/// The same codes with WeChat's errmsg and advice, e.g. 45009 "reach max api daily quota
/// limit … 用完后可通过clear_quota进行清空", 45011 "api minute-quota reach limit must slower
/// retry next minute", 47001 "data format error", 48001 "api unauthorized", 48004 "api
/// forbidden for irregularities", 50002 "user limited", 61004 "access clientip is not
/// registered, not in ip-white-list".
const COMMON: &str = "https://developers.weixin.qq.com/doc/channels/API/basics/commErrCode.html";
/// subscribeMessage.send: 40003, 40037, 43101, 47003, 41030.
const SEND: &str = "https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/sendMessage.html";
/// getAccessToken: 40013, 40125, 40164, and 40243 ("AppSecret冻结后 … 接口返回错误码 40243").
const GET_TOKEN: &str = "https://developers.weixin.qq.com/miniprogram/dev/server/API/mp-access-token/api_getaccesstoken.html";
/// code2Session: 40029 "code 无效", 40226 "code blocked 高风险等级用户，小程序登录拦截".
const CODE2SESSION: &str =
    "https://developers.weixin.qq.com/miniprogram/dev/server/API/user-login/api_code2session.html";
/// The server-API troubleshooting page: 48001 is a token of the wrong account or an API the
/// account has no permission for.
const TROUBLESHOOTING: &str =
    "https://developers.weixin.qq.com/doc/oplatform/developers/troubleshooting";

const fn row(
    errcode: i64,
    class: ErrorClass,
    action: Action,
    meaning: &'static str,
    source: &'static str,
) -> Row {
    Row {
        errcode,
        class,
        action,
        meaning,
        source,
    }
}

use Action as A;
use ErrorClass as C;

/// errcode → meaning, for every call but a token fetch (see [`TOKEN_FETCH`]).
pub const TABLE: &[Row] = &[
    row(-1, C::Transient, A::RetryLater, "system busy", GLOBAL),
    // token: the call carried a token WeChat no longer takes.
    row(
        40001,
        C::Token,
        A::RefreshTokenAndRetry,
        "access_token invalid or not the latest",
        GLOBAL,
    ),
    row(
        40014,
        C::Token,
        A::RefreshTokenAndRetry,
        "access_token malformed",
        GLOBAL,
    ),
    row(
        42001,
        C::Token,
        A::RefreshTokenAndRetry,
        "access_token expired",
        GLOBAL,
    ),
    // limits: app-wide, not the message's fault.
    row(
        45009,
        C::Limits,
        A::WaitForQuota,
        "API daily quota reached (back at 00:00 China time or after clear_quota)",
        COMMON,
    ),
    row(
        45011,
        C::Limits,
        A::WaitForNextMinute,
        "API minute rate limit reached; retry next minute",
        COMMON,
    ),
    // permanent: this message can never succeed.
    row(40003, C::Permanent, A::DeadLetter, "invalid openid", SEND),
    row(
        40037,
        C::Permanent,
        A::DeadLetter,
        "invalid template_id",
        SEND,
    ),
    row(
        47003,
        C::Permanent,
        A::DeadLetter,
        "template data invalid",
        SEND,
    ),
    row(
        47001,
        C::Permanent,
        A::DeadLetter,
        "request body is not valid JSON",
        COMMON,
    ),
    row(41030, C::Permanent, A::DeadLetter, "invalid page", SEND),
    row(
        40029,
        C::Permanent,
        A::DeadLetter,
        "invalid js_code",
        CODE2SESSION,
    ),
    row(
        40163,
        C::Permanent,
        A::DeadLetter,
        "js_code already used",
        GLOBAL,
    ),
    row(
        40226,
        C::Permanent,
        A::DeadLetter,
        "js_code blocked: high-risk user",
        CODE2SESSION,
    ),
    row(
        50002,
        C::Permanent,
        A::DeadLetter,
        "user account limited",
        COMMON,
    ),
    // refused: routine, `policy.on_refused`.
    row(
        43101,
        C::Refused,
        A::ApplyRefusedPolicy,
        "user refused or has no subscription left",
        SEND,
    ),
    // credential: the app is misconfigured; park it.
    row(40013, C::Credential, A::ParkApp, "invalid appid", GET_TOKEN),
    row(
        40125,
        C::Credential,
        A::ParkApp,
        "invalid appsecret",
        GET_TOKEN,
    ),
    row(
        40164,
        C::Credential,
        A::ParkApp,
        "caller IP not in the app's whitelist",
        GET_TOKEN,
    ),
    row(
        61004,
        C::Credential,
        A::ParkApp,
        "caller IP not registered in the app's IP whitelist",
        COMMON,
    ),
    row(
        40243,
        C::Credential,
        A::ParkApp,
        "AppSecret frozen: unfreeze it in the WeChat console",
        GET_TOKEN,
    ),
    row(
        48001,
        C::Credential,
        A::ParkApp,
        "API not authorised for this app (or a token of another account)",
        TROUBLESHOOTING,
    ),
    row(
        48004,
        C::Credential,
        A::ParkApp,
        "API banned for this app",
        COMMON,
    ),
];

/// What a token fetch's errcode means where it differs from [`TABLE`]: the fetch carries
/// the AppSecret, not a token, so `40001` there is a wrong AppSecret.
pub const TOKEN_FETCH: &[Row] = &[row(
    40001,
    C::Credential,
    A::ParkApp,
    "AppSecret wrong (40001 on a token fetch)",
    GET_TOKEN,
)];

/// How an errcode this table does not know is treated.
const UNKNOWN: Row = row(0, C::Unknown, A::RetryLater, "unknown errcode", GLOBAL);

fn lookup(errcode: i64) -> &'static Row {
    TABLE
        .iter()
        .find(|row| row.errcode == errcode)
        .unwrap_or(&UNKNOWN)
}

fn lookup_token_fetch(errcode: i64) -> &'static Row {
    TOKEN_FETCH
        .iter()
        .find(|row| row.errcode == errcode)
        .unwrap_or_else(|| lookup(errcode))
}

/// The class of a non-zero errcode answered by a call that carried an access_token.
pub fn classify(errcode: i64) -> ErrorClass {
    lookup(errcode).class
}

/// The class of a non-zero errcode answered by a token fetch (stable or classic).
pub fn classify_token_fetch(errcode: i64) -> ErrorClass {
    lookup_token_fetch(errcode).class
}

/// The class of a failed call that carried a token: WeChat's errcode through the table,
/// transport failures by kind. A timeout is transient here; whether it is also *ambiguous*
/// (WeChat may have acted) is [`is_ambiguous`]'s question.
pub fn classify_call(error: &CallError) -> ErrorClass {
    match error {
        CallError::WeChat { errcode, .. } => classify(*errcode),
        CallError::Http { .. }
        | CallError::Timeout
        | CallError::Connect(_)
        | CallError::Broken(_) => ErrorClass::Transient,
    }
}

/// The class of a failed token fetch (see [`classify_token_fetch`]).
pub fn classify_token_fetch_call(error: &CallError) -> ErrorClass {
    match error {
        CallError::WeChat { errcode, .. } => classify_token_fetch(*errcode),
        other => classify_call(other),
    }
}

/// What the worker does about a failed call that carried a token: the errcode's row, or
/// [`Action::RetryLater`] for a transport failure. The one place the worker asks.
pub fn action_of(error: &CallError) -> Action {
    match error {
        CallError::WeChat { errcode, .. } => lookup(*errcode).action,
        CallError::Http { .. }
        | CallError::Timeout
        | CallError::Connect(_)
        | CallError::Broken(_) => Action::RetryLater,
    }
}

/// What the worker does about a failed token fetch (`40001` parks the app there).
pub fn action_of_token_fetch(error: &CallError) -> Action {
    match error {
        CallError::WeChat { errcode, .. } => lookup_token_fetch(*errcode).action,
        other => action_of(other),
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
    lookup(errcode).meaning
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wechat(errcode: i64) -> CallError {
        CallError::WeChat {
            errcode,
            errmsg: String::new(),
        }
    }

    /// The contract's list (CONTRACT.md §2, issue 11), written out apart from the table:
    /// errcode, class and action on a call that carried a token.
    const EXPECTED: &[(i64, ErrorClass, Action)] = &[
        (-1, C::Transient, A::RetryLater),
        (40001, C::Token, A::RefreshTokenAndRetry),
        (40014, C::Token, A::RefreshTokenAndRetry),
        (42001, C::Token, A::RefreshTokenAndRetry),
        (45009, C::Limits, A::WaitForQuota),
        (45011, C::Limits, A::WaitForNextMinute),
        (40003, C::Permanent, A::DeadLetter),
        (40037, C::Permanent, A::DeadLetter),
        (47003, C::Permanent, A::DeadLetter),
        (47001, C::Permanent, A::DeadLetter),
        (41030, C::Permanent, A::DeadLetter),
        (40029, C::Permanent, A::DeadLetter),
        (40163, C::Permanent, A::DeadLetter),
        (40226, C::Permanent, A::DeadLetter),
        (50002, C::Permanent, A::DeadLetter),
        (43101, C::Refused, A::ApplyRefusedPolicy),
        (40013, C::Credential, A::ParkApp),
        (40125, C::Credential, A::ParkApp),
        (40164, C::Credential, A::ParkApp),
        (61004, C::Credential, A::ParkApp),
        (40243, C::Credential, A::ParkApp),
        (48001, C::Credential, A::ParkApp),
        (48004, C::Credential, A::ParkApp),
    ];

    #[test]
    fn every_errcode_has_its_class_and_action() {
        for &(code, class, action) in EXPECTED {
            assert_eq!(classify(code), class, "class of {code}");
            assert_eq!(classify_call(&wechat(code)), class, "call class of {code}");
            assert_eq!(action_of(&wechat(code)), action, "action of {code}");
        }
    }

    #[test]
    fn the_table_has_no_row_the_contract_does_not_name_and_each_cites_a_page() {
        for row in TABLE {
            assert!(
                EXPECTED.iter().any(|&(code, ..)| code == row.errcode),
                "row {} is not in the expected list",
                row.errcode
            );
            assert!(
                row.source.starts_with("https://developers.weixin.qq.com/"),
                "row {} cites {}",
                row.errcode,
                row.source
            );
            assert!(!row.meaning.is_empty());
        }
        let mut codes: Vec<i64> = TABLE.iter().map(|r| r.errcode).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len(), "an errcode appears twice");
    }

    #[test]
    fn the_two_limits_differ_in_action() {
        assert_eq!(classify(45009), ErrorClass::Limits);
        assert_eq!(classify(45011), ErrorClass::Limits);
        assert_eq!(ErrorClass::Limits.as_str(), "limits");
        assert_ne!(action_of(&wechat(45009)), action_of(&wechat(45011)));
    }

    #[test]
    fn a_token_fetch_reads_40001_as_a_wrong_secret() {
        assert_eq!(classify(40001), ErrorClass::Token);
        assert_eq!(classify_token_fetch(40001), ErrorClass::Credential);
        assert_eq!(
            classify_token_fetch_call(&wechat(40001)),
            ErrorClass::Credential
        );
        assert_eq!(action_of_token_fetch(&wechat(40001)), Action::ParkApp);
        // Everything else means on a fetch what it means anywhere.
        for &(code, class, action) in EXPECTED.iter().filter(|(code, ..)| *code != 40001) {
            assert_eq!(classify_token_fetch(code), class, "fetch class of {code}");
            assert_eq!(
                action_of_token_fetch(&wechat(code)),
                action,
                "fetch action of {code}"
            );
        }
        assert_eq!(
            classify_token_fetch_call(&CallError::Timeout),
            ErrorClass::Transient
        );
    }

    #[test]
    fn unknown_errcodes_and_transport_failures_retry_later() {
        assert_eq!(classify(99999), ErrorClass::Unknown);
        assert_eq!(action_of(&wechat(99999)), Action::RetryLater);
        assert_eq!(describe(99999), "unknown errcode");
        for error in [
            CallError::Timeout,
            CallError::Connect("refused".into()),
            CallError::Broken("reset".into()),
            CallError::Http { status: 502 },
        ] {
            assert_eq!(classify_call(&error), ErrorClass::Transient, "{error}");
            assert_eq!(action_of(&error), Action::RetryLater, "{error}");
        }
    }

    #[test]
    fn ambiguity_is_about_answers_never_had() {
        assert!(is_ambiguous(&CallError::Timeout));
        assert!(!is_ambiguous(&CallError::Connect("refused".into())));
        for status in [502, 503, 504] {
            assert!(is_ambiguous(&CallError::Http { status }), "{status}");
        }
        for status in [500, 501, 505, 429] {
            assert!(!is_ambiguous(&CallError::Http { status }), "{status}");
        }
        assert!(!is_ambiguous(&wechat(45009)));
    }

    #[test]
    fn every_class_has_a_distinct_name() {
        let mut names: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorClass::ALL.len());
    }
}
