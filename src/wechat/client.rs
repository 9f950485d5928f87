//! The HTTP client for the WeChat endpoints wxpush uses: token (stable and classic),
//! `jscode2session` and `subscribe/send`.
//!
//! It reports what happened as a [`CallError`] and nothing more; what that means for a
//! message is decided in `errcode.rs`. No secret or token ever reaches an error: reqwest
//! errors are stripped of their URL (the URL carries `access_token`), secrets are
//! [`SecretString`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
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
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    access_token: Option<String>,
    expires_in: Option<u64>,
    openid: Option<String>,
    msgid: Option<u64>,
}

/// The WeChat API client. Cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct WechatClient {
    http: reqwest::Client,
    base: String,
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
            .build()
            .map_err(|e| CallError::Connect(error_chain(&e.without_url())))?;
        Ok(WechatClient {
            http,
            base: config.api_base.trim_end_matches('/').to_owned(),
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
        let request = self
            .http
            .post(format!(
                "{}/cgi-bin/message/subscribe/send?access_token={}",
                self.base,
                token.expose()
            ))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        Ok(self.call(request).await?.msgid.unwrap_or(0))
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Answer, CallError> {
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(CallError::Http {
                status: status.as_u16(),
            });
        }
        let bytes = response.bytes().await?;
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Broken(format!("unreadable answer: {e}")))?;
        if answer.errcode != 0 {
            return Err(CallError::WeChat {
                errcode: answer.errcode,
                errmsg: answer.errmsg.chars().take(200).collect(),
            });
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
