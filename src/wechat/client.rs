//! The HTTP client for the WeChat endpoints wxpush uses: token (stable and classic),
//! `jscode2session`, `subscribe/send`, and for the operator's commands the quota
//! (`openapi/quota/get`, `clear_quota`) and the account's templates (`gettemplate`).
//!
//! It reports what happened as a [`CallError`] and nothing more; what that means for a
//! message is decided in `errcode.rs`. No secret or token ever reaches an error: reqwest
//! errors are stripped of their URL (the URL carries `access_token`), secrets are
//! [`SecretString`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{TokenEndpoint, WechatConfig};

/// An access_token. Its `Debug` and `Display` show only a fingerprint.
#[derive(Clone)]
pub struct AccessToken(SecretString);

impl AccessToken {
    pub fn new(token: String) -> AccessToken {
        AccessToken(SecretString::from(token))
    }

    /// The token itself, for the one place that needs it: the request URL.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// A short, stable, non-reversible identifier for logs and `wxpush token`.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.expose())
    }
}

/// FNV-1a, shortened: enough to tell tokens apart in logs, useless to recover one.
pub fn fingerprint(secret: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in secret.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", hash >> 32)
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken({})", self.fingerprint())
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token {}", self.fingerprint())
    }
}

/// A token fresh from WeChat.
#[derive(Debug, Clone)]
pub struct FetchedToken {
    pub token: AccessToken,
    pub expires_in: Duration,
}

/// What went wrong with a call, as observed; see `errcode::classify_call` for its meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// WeChat answered with a non-zero errcode.
    #[error("WeChat errcode {errcode}: {errmsg}")]
    WeChat { errcode: i64, errmsg: String },
    /// An HTTP status other than 200 (no WeChat body).
    #[error("HTTP {status} from WeChat")]
    Http { status: u16 },
    /// No answer within the timeout: WeChat may or may not have acted.
    #[error("no answer from WeChat within the timeout")]
    Timeout,
    /// The request never reached WeChat (refused, DNS, TLS).
    #[error("cannot connect to WeChat: {0}")]
    Connect(String),
    /// The connection broke after the request was sent, or the answer was unreadable.
    #[error("broken exchange with WeChat: {0}")]
    Broken(String),
}

impl CallError {
    pub fn errcode(&self) -> Option<i64> {
        match self {
            CallError::WeChat { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }
}

impl From<reqwest::Error> for CallError {
    fn from(e: reqwest::Error) -> Self {
        let e = e.without_url();
        if e.is_timeout() {
            CallError::Timeout
        } else if e.is_connect() {
            CallError::Connect(error_chain(&e))
        } else {
            CallError::Broken(error_chain(&e))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One value of a subscribe message's `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataValue {
    pub value: String,
}

/// The body of `subscribe/send`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeMessage {
    pub touser: String,
    pub template_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miniprogram_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    pub data: BTreeMap<String, DataValue>,
}

#[derive(Deserialize)]
struct Answer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    openid: Option<String>,
    msgid: Option<u64>,
}

/// Every answer's status; the rest of the body is read only when `errcode` is 0.
#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// One API's daily quota for the app, as `openapi/quota/get` reports it
/// (<https://developers.weixin.qq.com/doc/oplatform/Third-party_Platforms/2.0/api/openApi/get_api_quota.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Quota {
    /// Calls allowed today.
    #[serde(default)]
    pub daily_limit: u64,
    /// Calls made today.
    #[serde(default)]
    pub used: u64,
    /// Calls left today.
    #[serde(default)]
    pub remain: u64,
}

#[derive(Deserialize)]
struct QuotaAnswer {
    quota: Quota,
}

/// The cgi_path of subscribe/send, as `openapi/quota/get` takes it.
pub const SEND_CGI_PATH: &str = "/cgi-bin/message/subscribe/send";

/// Whether a template grants one send per user tap or many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// `type` 2: 一次性订阅, one send per `wx.requestSubscribeMessage` grant.
    OneTime,
    /// `type` 3: 长期订阅, for the service categories that have it.
    LongTerm,
    /// A `type` the documentation does not name.
    Other(i64),
}

impl TemplateKind {
    fn of(code: i64) -> TemplateKind {
        match code {
            2 => TemplateKind::OneTime,
            3 => TemplateKind::LongTerm,
            other => TemplateKind::Other(other),
        }
    }
}

impl fmt::Display for TemplateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateKind::OneTime => f.write_str("one-time"),
            TemplateKind::LongTerm => f.write_str("long-term"),
            TemplateKind::Other(code) => write!(f, "type {code}"),
        }
    }
}

/// One template of the account, from `gettemplate` (getTemplateList,
/// <https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/getTemplateList.html>).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountTemplate {
    /// `priTmplId`: the template_id a send names.
    pub id: String,
    pub title: String,
    /// The template text with `{{key.DATA}}` placeholders.
    pub content: String,
    pub example: String,
    pub kind: TemplateKind,
    /// The data keys, in the order `content` names them (`thing1`, `enum_string2`, …).
    pub keys: Vec<String>,
    /// Each enum key's allowed values (`keywordEnumValueList`), by key without `.DATA`.
    pub enums: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTemplate {
    pri_tmpl_id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    example: String,
    #[serde(default, rename = "type")]
    kind: i64,
    #[serde(default)]
    keyword_enum_value_list: Vec<RawEnum>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnum {
    keyword_code: String,
    #[serde(default)]
    enum_value_list: Vec<String>,
}

#[derive(Deserialize)]
struct TemplatesAnswer {
    #[serde(default)]
    data: Vec<RawTemplate>,
}

impl From<RawTemplate> for AccountTemplate {
    fn from(raw: RawTemplate) -> AccountTemplate {
        AccountTemplate {
            keys: template_keys(&raw.content),
            enums: raw
                .keyword_enum_value_list
                .into_iter()
                .map(|e| (strip_data(&e.keyword_code).to_owned(), e.enum_value_list))
                .collect(),
            id: raw.pri_tmpl_id,
            title: raw.title,
            content: raw.content,
            example: raw.example,
            kind: TemplateKind::of(raw.kind),
        }
    }
}

/// The data keys a template's content names as `{{key.DATA}}`, in order, each once.
pub fn template_keys(content: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let inside = after[..end].trim();
        if let Some(key) = inside.strip_suffix(".DATA")
            && !key.is_empty()
            && !keys.iter().any(|k| k == key)
        {
            keys.push(key.to_owned());
        }
        rest = &after[end + 2..];
    }
    keys
}

/// `enum_string2.DATA` → `enum_string2`.
fn strip_data(code: &str) -> &str {
    code.strip_suffix(".DATA").unwrap_or(code)
}

/// The WeChat API client. Cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    base: String,
    /// subscribe/send's URL, parsed once: the hot path only appends the token.
    send_url: reqwest::Url,
}

impl fmt::Debug for WechatClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WechatClient")
            .field("base", &self.base)
            .finish()
    }
}

impl WechatClient {
    pub fn new(config: &WechatConfig) -> Result<WechatClient, CallError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(3)))
            .pool_max_idle_per_host(config.max_idle_connections)
            .tcp_nodelay(true)
            .user_agent(concat!("wxpush/", env!("CARGO_PKG_VERSION")))
            // WeChat's API never redirects; following one would carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CallError::Connect(error_chain(&e.without_url())))?;
        let base = config.api_base.trim_end_matches('/').to_owned();
        let send_url = reqwest::Url::parse(&format!("{base}/cgi-bin/message/subscribe/send"))
            .map_err(|e| {
                CallError::Connect(format!(
                    "wechat.api_base `{base}` is not a URL ({e}); write e.g. https://api.weixin.qq.com"
                ))
            })?;
        Ok(WechatClient {
            http,
            base,
            send_url,
        })
    }

    /// Fetches a token. `force_refresh` applies to the stable endpoint only.
    pub async fn fetch_token(
        &self,
        endpoint: TokenEndpoint,
        appid: &str,
        secret: &SecretString,
        force_refresh: bool,
    ) -> Result<FetchedToken, CallError> {
        let request = match endpoint {
            TokenEndpoint::Stable => self
                .http
                .post(format!("{}/cgi-bin/stable_token", self.base))
                .json(&serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": appid,
                    "secret": secret.expose_secret(),
                    "force_refresh": force_refresh,
                })),
            TokenEndpoint::Classic => {
                self.http
                    .get(format!("{}/cgi-bin/token", self.base))
                    .query(&[
                        ("grant_type", "client_credential"),
                        ("appid", appid),
                        ("secret", secret.expose_secret()),
                    ])
            }
        };
        let answer = self.call(request).await?;
        match (answer.access_token, answer.expires_in) {
            (Some(token), Some(expires_in)) if !token.is_empty() => Ok(FetchedToken {
                token: AccessToken::new(token),
                expires_in: Duration::from_secs(expires_in),
            }),
            _ => Err(CallError::Broken(
                "token answer without access_token".into(),
            )),
        }
    }

    /// Exchanges a single-use `wx.login` code for the user's openid.
    pub async fn jscode2session(
        &self,
        appid: &str,
        secret: &SecretString,
        js_code: &str,
    ) -> Result<String, CallError> {
        let request = self
            .http
            .get(format!("{}/sns/jscode2session", self.base))
            .query(&[
                ("appid", appid),
                ("secret", secret.expose_secret()),
                ("js_code", js_code),
                ("grant_type", "authorization_code"),
            ]);
        self.call(request)
            .await?
            .openid
            .ok_or_else(|| CallError::Broken("jscode2session answer without openid".into()))
    }

    /// Sends a subscribe message; returns WeChat's msgid.
    pub async fn send(
        &self,
        token: &AccessToken,
        message: &SubscribeMessage,
    ) -> Result<u64, CallError> {
        let body = serde_json::to_vec(message).expect("a SubscribeMessage always serializes");
        let mut url = self.send_url.clone();
        url.query_pairs_mut()
            .append_pair("access_token", token.expose());
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        Ok(self.call(request).await?.msgid.unwrap_or(0))
    }

    /// The app's daily quota of one API (`cgi_path`, e.g. [`SEND_CGI_PATH`]).
    pub async fn get_api_quota(
        &self,
        token: &AccessToken,
        cgi_path: &str,
    ) -> Result<Quota, CallError> {
        let request = self
            .http
            .post(self.with_token("/cgi-bin/openapi/quota/get", token))
            .json(&serde_json::json!({ "cgi_path": cgi_path }));
        Ok(self.call_as::<QuotaAnswer>(request).await?.quota)
    }

    /// Resets the app's daily API counts (`clear_quota`; WeChat allows 10 a month).
    pub async fn clear_quota(&self, token: &AccessToken, appid: &str) -> Result<(), CallError> {
        let request = self
            .http
            .post(self.with_token("/cgi-bin/clear_quota", token))
            .json(&serde_json::json!({ "appid": appid }));
        self.call_as::<serde::de::IgnoredAny>(request).await?;
        Ok(())
    }

    /// The account's subscribe-message templates (`gettemplate`).
    pub async fn get_templates(
        &self,
        token: &AccessToken,
    ) -> Result<Vec<AccountTemplate>, CallError> {
        let request = self
            .http
            .get(self.with_token("/wxaapi/newtmpl/gettemplate", token));
        let answer = self.call_as::<TemplatesAnswer>(request).await?;
        Ok(answer.data.into_iter().map(AccountTemplate::from).collect())
    }

    fn with_token(&self, path: &str, token: &AccessToken) -> String {
        format!("{}{path}?access_token={}", self.base, token.expose())
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Answer, CallError> {
        self.call_as(request).await
    }

    /// Sends the request and reads the answer as `T` once its errcode is 0.
    async fn call_as<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, CallError> {
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(CallError::Http {
                status: status.as_u16(),
            });
        }
        let bytes = response.bytes().await?;
        parse_answer(&bytes)
    }
}

/// An answer body: WeChat's errcode when it is not 0, else the body as `T`.
fn parse_answer<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CallError> {
    let unreadable = |e: serde_json::Error| CallError::Broken(format!("unreadable answer: {e}"));
    let status: Status = serde_json::from_slice(bytes).map_err(unreadable)?;
    if status.errcode != 0 {
        return Err(CallError::WeChat {
            errcode: status.errcode,
            errmsg: status.errmsg.chars().take(200).collect(),
        });
    }
    serde_json::from_slice(bytes).map_err(unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// getTemplateList's documented answer (its 返回数据示例), enum list shortened.
    const GETTEMPLATE_EXAMPLE: &str = r#"{
        "errcode": 0,
        "errmsg": "ok",
        "data": [
            {
                "priTmplId": "9Aw5ZV1j9xdWTFEkqCpZ7mIBbSC34khK55OtzUPl0rU",
                "title": "报名结果通知",
                "content": "会议时间:{{date2.DATA}}\n会议地点:{{thing1.DATA}}\n",
                "example": "会议时间:2016年8月8日\n会议地点:TIT会议室\n",
                "type": 2
            },
            {
                "priTmplId": "cy_DfOZL7lypxHh3ja3DyAUbn1GYQRGwezuy5LBTFME",
                "title": "洗衣机故障提醒",
                "content": "完成时间:{{time1.DATA}}\n所在位置:{{enum_string2.DATA}}\n提示说明:{{enum_string3.DATA}}\n",
                "example": "完成时间:2021年10月21日 12:00:00\n所在位置:客厅\n提示说明:设备发生故障，导致工作异常，请及时查看\n",
                "keywordEnumValueList": [
                    {"enumValueList": ["客厅", "餐厅", "其他房间"], "keywordCode": "enum_string2.DATA"},
                    {"enumValueList": ["设备发生故障，导致工作异常，请及时查看"], "keywordCode": "enum_string3.DATA"}
                ],
                "type": 3
            }
        ]
    }"#;

    #[test]
    fn gettemplate_answer_is_read_as_documented() {
        let answer: TemplatesAnswer = parse_answer(GETTEMPLATE_EXAMPLE.as_bytes()).unwrap();
        let templates: Vec<AccountTemplate> =
            answer.data.into_iter().map(AccountTemplate::from).collect();
        assert_eq!(templates.len(), 2);
        let first = &templates[0];
        assert_eq!(first.id, "9Aw5ZV1j9xdWTFEkqCpZ7mIBbSC34khK55OtzUPl0rU");
        assert_eq!(first.title, "报名结果通知");
        assert_eq!(first.keys, ["date2", "thing1"]);
        assert_eq!(first.kind, TemplateKind::OneTime);
        assert!(first.enums.is_empty());
        let second = &templates[1];
        assert_eq!(second.keys, ["time1", "enum_string2", "enum_string3"]);
        assert_eq!(second.kind, TemplateKind::LongTerm);
        assert_eq!(second.enums["enum_string2"], ["客厅", "餐厅", "其他房间"]);
        assert_eq!(second.enums["enum_string3"].len(), 1);
    }

    #[test]
    fn quota_answer_is_read_as_documented() {
        // get_api_quota's 返回结果示例, with numbers.
        let body = r#"{"errcode":0,"errmsg":"ok","quota":{"daily_limit":100000,"used":150,"remain":99850}}"#;
        let answer: QuotaAnswer = parse_answer(body.as_bytes()).unwrap();
        assert_eq!(
            answer.quota,
            Quota {
                daily_limit: 100000,
                used: 150,
                remain: 99850
            }
        );
    }

    #[test]
    fn an_errcode_answer_is_a_wechat_error() {
        // clear_quota's 48006: the month's ten resets are used.
        let body =
            r#"{"errcode":48006,"errmsg":"forbid to clear quota because of reaching the limit"}"#;
        let err = parse_answer::<serde::de::IgnoredAny>(body.as_bytes()).unwrap_err();
        assert_eq!(err.errcode(), Some(48006));
        assert!(matches!(
            parse_answer::<QuotaAnswer>(b"not json"),
            Err(CallError::Broken(_))
        ));
    }

    #[test]
    fn template_keys_are_the_data_placeholders_in_order() {
        assert_eq!(
            template_keys("A:{{thing1.DATA}} B:{{ amount2.DATA }} again {{thing1.DATA}} {{x}} {{"),
            ["thing1", "amount2"]
        );
        assert!(template_keys("no keys").is_empty());
    }

    #[test]
    fn token_debug_and_display_show_only_a_fingerprint() {
        let t = AccessToken::new("ACCESS_TOKEN_VALUE_123".into());
        assert!(!format!("{t:?}").contains("ACCESS_TOKEN_VALUE"));
        assert!(!format!("{t}").contains("ACCESS_TOKEN_VALUE"));
        assert_eq!(
            t.fingerprint(),
            AccessToken::new("ACCESS_TOKEN_VALUE_123".into()).fingerprint()
        );
        assert_ne!(
            t.fingerprint(),
            AccessToken::new("other".into()).fingerprint()
        );
    }

    #[test]
    fn optional_fields_are_left_out_of_the_body() {
        let m = SubscribeMessage {
            touser: "o1".into(),
            template_id: "T".into(),
            page: None,
            miniprogram_state: None,
            lang: Some("zh_CN".into()),
            data: BTreeMap::from([("thing1".into(), DataValue { value: "x".into() })]),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"touser":"o1","template_id":"T","lang":"zh_CN","data":{"thing1":{"value":"x"}}}"#
        );
    }
}
