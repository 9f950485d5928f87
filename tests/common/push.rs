//! The message-push test harness: a config with two push-enabled apps (`default` in
//! plaintext mode, `safe` in safe mode) and one without push secrets (`bare`), receivers
//! served on random ports, signed requests made by hand with the emulator's `push_crypto`
//! (the oracle), and readers of what landed in Redis.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wxpush::config::{Config, load_str};
use wxpush::store::grants::{self, GrantRecord};
use wxpush::store::{self, HotPath, Keys};
use wxpush_mock_wechat::push_crypto;
use wxpush_mock_wechat::{MockOptions, MockServer, PushFormat, PushTarget};

use super::{APPID, SECRET, SECRET_ENV};

pub const TOKEN: &str = "test-push-token";
pub const TOKEN_ENV: &str = "WXPUSH_TEST_PUSH_TOKEN";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE";
pub const AES_KEY_ENV: &str = "WXPUSH_TEST_PUSH_AES_KEY";
pub const SAFE_APPID: &str = "wxtestsafe0000001";
/// A one-time and a long-term template of the `default` app, and one of `safe`.
pub const ONCE: &str = "TPL_ORDER_PAID";
pub const LONG: &str = "TPL_LONG_TERM";

pub struct PushHarness {
    pub prefix: String,
    pub config: Config,
    pub keys: Keys,
    pub redis: HotPath,
    pub mock: MockServer,
    pub http: reqwest::Client,
    stop: CancellationToken,
}

fn config(prefix: &str, api_base: &str) -> Config {
    let text = format!(
        r#"{}
[[templates]]
event = "plan.renewed"
template_id = "{LONG}"
long_term = true
[templates.data]
thing1 = "{{{{title}}}}"

[apps.safe]
appid = "{SAFE_APPID}"
secret_env = "{SECRET_ENV}"
push_token_env = "{TOKEN_ENV}"
push_aes_key_env = "{AES_KEY_ENV}"

[apps.bare]
appid = "wxtestbare0000001"
secret_env = "{SECRET_ENV}"

[push]
listen = "127.0.0.1:0"
"#,
        super::config_text(prefix, api_base)
    );
    let loaded = load_str(
        &text,
        Path::new("push-test.toml"),
        vec![(
            "WXPUSH_APPS__DEFAULT__PUSH_TOKEN_ENV".to_owned(),
            TOKEN_ENV.to_owned(),
        )],
    )
    .expect("push test config parses");
    assert_eq!(loaded.problems(), vec![], "push test config is clean");
    loaded.config
}

impl PushHarness {
    pub async fn start(name: &str) -> PushHarness {
        // SAFETY: every test in the process sets the same values.
        unsafe {
            std::env::set_var(SECRET_ENV, SECRET);
            std::env::set_var(TOKEN_ENV, TOKEN);
            std::env::set_var(AES_KEY_ENV, AES_KEY);
        }
        let prefix = format!(
            "t-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mock = MockServer::start(MockOptions::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("mock starts");
        let config = config(&prefix, &mock.base_url());
        PushHarness {
            keys: Keys::new(&prefix),
            redis: HotPath::new(&config.redis).unwrap(),
            prefix,
            config,
            mock,
            http: reqwest::Client::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Starts one more receiver on this config; returns its address.
    pub async fn receiver(&self) -> SocketAddr {
        let receiver = wxpush::push::Receiver::new(&self.config, self.redis.clone()).unwrap();
        wxpush::push::serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(receiver),
            self.stop.child_token(),
        )
        .await
        .unwrap()
    }

    /// Points the emulator's pushes for `appid` at `/wechat/push/<app>` of `addr`.
    pub fn point_emulator(&self, addr: SocketAddr, app: &str, format: PushFormat) {
        let (appid, aes_key) = match app {
            "safe" => (SAFE_APPID, Some(AES_KEY.to_owned())),
            _ => (APPID, None),
        };
        self.mock
            .configure_push(
                appid,
                PushTarget {
                    url: url(addr, app),
                    token: TOKEN.into(),
                    aes_key,
                    format,
                },
            )
            .unwrap();
    }

    pub async fn grants(&self, app: &str, openid: &str) -> Vec<GrantRecord> {
        let mut conn = self.redis.get().await.unwrap();
        grants::read_all(&mut conn, &self.keys.grants(app, openid))
            .await
            .unwrap()
    }

    /// The one-time count (or long-term 1/0) recorded for the template; `None`: no entry.
    pub async fn count(&self, app: &str, openid: &str, template_id: &str) -> Option<u64> {
        grant_count(&self.grants(app, openid).await, template_id)
    }

    /// Keys under this run's prefix, e.g. to show that a refusal wrote nothing.
    pub async fn keys_written(&self) -> Vec<String> {
        let mut conn = self.redis.get().await.unwrap();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.sort();
        keys
    }

    /// POSTs `body` to `/wechat/push/<app>` with `query`; the status and text answered.
    pub async fn post(
        &self,
        addr: SocketAddr,
        app: &str,
        query: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, String) {
        let answer = self
            .http
            .post(url(addr, app))
            .query(query)
            .body(body)
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    pub async fn cleanup(self) {
        self.stop.cancel();
        let pool = store::pooled(&self.config.redis).unwrap();
        store::delete_prefix(&pool, &self.prefix).await.unwrap();
        self.mock.shutdown().await;
    }
}

pub fn url(addr: SocketAddr, app: &str) -> String {
    format!("http://{addr}/wechat/push/{app}")
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fresh nonce, as WeChat makes them (digits).
pub fn nonce() -> String {
    fastrand::u64(..).to_string()
}

/// The query of a plaintext push signed with `token` at `timestamp`.
pub fn plain_query(token: &str, timestamp: u64, nonce: &str) -> Vec<(&'static str, String)> {
    let ts = timestamp.to_string();
    vec![
        ("signature", push_crypto::sign(token, &ts, nonce)),
        ("timestamp", ts),
        ("nonce", nonce.to_owned()),
    ]
}

/// The query and body of a safe-mode push of `msg` (JSON envelope) for `appid`.
pub fn safe_push(
    appid: &str,
    msg: &str,
    timestamp: u64,
    nonce: &str,
) -> (Vec<(&'static str, String)>, String) {
    let encrypt = push_crypto::encrypt(AES_KEY, appid, msg).unwrap();
    let ts = timestamp.to_string();
    let query = vec![
        ("signature", push_crypto::sign(TOKEN, &ts, nonce)),
        ("timestamp", ts.clone()),
        ("nonce", nonce.to_owned()),
        ("encrypt_type", "aes".to_owned()),
        (
            "msg_signature",
            push_crypto::msg_signature(TOKEN, &ts, nonce, &encrypt),
        ),
    ];
    let body = serde_json::json!({"ToUserName": "gh_test", "Encrypt": encrypt}).to_string();
    (query, body)
}

/// A popup event in JSON: one List object per choice, an array when several.
pub fn popup_json(openid: &str, create_time: u64, choices: &[(&str, &str)]) -> String {
    let items: Vec<serde_json::Value> = choices
        .iter()
        .map(|(t, c)| serde_json::json!({"TemplateId": t, "SubscribeStatusString": c, "PopupScene": "0"}))
        .collect();
    let list = if items.len() == 1 {
        items[0].clone()
    } else {
        serde_json::Value::Array(items)
    };
    serde_json::json!({
        "ToUserName": "gh_test",
        "FromUserName": openid,
        "CreateTime": create_time.to_string(),
        "MsgType": "event",
        "Event": "subscribe_msg_popup_event",
        "List": list,
    })
    .to_string()
}

/// The one-time count (or long-term 1/0) the ledger `records` hold for the template;
/// `None`: no entry.
pub fn grant_count(records: &[GrantRecord], template_id: &str) -> Option<u64> {
    records
        .iter()
        .find(|r| r.template_id == template_id)
        .map(|r| r.count)
}
