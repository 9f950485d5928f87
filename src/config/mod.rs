//! The configuration: one TOML file (`--config`, `$WXPUSH_CONFIG`, `./wxpush.toml`), any key
//! overridable as `WXPUSH_<SECTION>__<KEY>`, app secrets only from the environment or a file.
//!
//! `load.rs` reads and locates errors by line, `check.rs` validates everything that can be
//! checked without the network. The types here are plain data with defaults.

mod check;
mod load;
mod rate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use check::Problem;
pub use load::{ConfigError, Loaded, config_path, load, load_str};
pub use rate::Rate;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub amqp: AmqpConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub wechat: WechatConfig,
    #[serde(default)]
    pub apps: BTreeMap<String, Spanned<AppConfig>>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub templates: Vec<Spanned<TemplateConfig>>,
    /// WeChat's message-push receiver; off when the section is absent.
    #[serde(default)]
    pub push: Option<PushConfig>,
}

/// `[push]`: where `wxpush run` serves `/wechat/push/<app name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    Classic,
    Quorum,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// May hold a password: log only [`crate::config::redact_url`] of it.
    pub url: String,
    /// The nodes of a RabbitMQ cluster, tried in order: a worker connects to the first that
    /// answers and moves on to the next when its node goes away. Empty: `url` alone.
    pub urls: Vec<String>,
    pub exchange: String,
    pub queue: String,
    pub dead_letter_queue: String,
    pub prefetch: u16,
    pub queue_type: QueueType,
    /// Event types bound to the events queue; empty binds `#` (every type).
    pub bindings: Vec<String>,
    /// How long a publish (a retry, a parked message, a dead letter, a replay) may wait for
    /// the broker's confirm before it counts as failed. While RabbitMQ blocks publishers
    /// (memory or disk alarm) confirms never come: this bounds the wait.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// Channels a worker publishes on. Each carries one publish at a time, so a message
    /// the broker returns (unroutable) is always reported to the publish it belongs to;
    /// this many publishes wait for their confirms at once.
    pub publish_channels: usize,
    /// A topic exchange that gets one JSON message per final outcome of each event
    /// (routing key `outcome.<kind>`); none when absent.
    pub outcome_exchange: Option<String>,
}

impl AmqpConfig {
    /// The broker nodes to try, in order: `urls`, or `url` when `urls` is empty.
    pub fn nodes(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            urls: Vec::new(),
            exchange: "wxpush.events".into(),
            queue: "wxpush.events".into(),
            dead_letter_queue: "wxpush.dead".into(),
            prefetch: 256,
            queue_type: QueueType::Classic,
            bindings: Vec::new(),
            confirm_timeout: Duration::from_secs(10),
            publish_channels: 32,
            outcome_exchange: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// One Redis (`url`), a Redis Cluster (`urls`: seed nodes) or a Sentinel-guarded primary
    /// (`urls`: the sentinels, `sentinel_master`: the name they watch).
    pub mode: RedisMode,
    /// The Redis of `single` mode. May hold a password: log only
    /// [`crate::config::redact_url`] of it.
    pub url: String,
    /// Cluster seed nodes or sentinels, with their username and password
    /// (`redis://user:password@host:port`) and `rediss://` for TLS. Cluster: one login and
    /// one scheme for every node. Sentinel: each sentinel logs in with its own URL's; the
    /// primary with `sentinel_master_username`/`_password` when set, else with the first
    /// URL's, and over TLS when that URL is `rediss://`. May hold passwords, like `url`.
    pub urls: Vec<String>,
    /// The master name the sentinels know the primary by.
    pub sentinel_master: Option<String>,
    /// Sentinel mode: the ACL user for the primary, when the sentinels' differs.
    pub sentinel_master_username: Option<String>,
    /// Sentinel mode: the primary's password (its `requirepass`, or the ACL user's), when
    /// the sentinels' differs. A secret: never logged.
    pub sentinel_master_password: Option<String>,
    pub key_prefix: String,
    pub pool_size: usize,
    /// How many replicas must hold the writes "never sent twice" rests on (the claim and the
    /// sent / dead-letter marks) before the worker acts on them (`WAIT`). Unset: 1 in
    /// cluster and sentinel mode, 0 (no wait) in single mode.
    pub replicas_ack: Option<u32>,
    /// How long a worker waits for those replicas; below the 2 s Redis response timeout.
    #[serde(with = "humantime_serde")]
    pub replicas_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    #[default]
    Single,
    Cluster,
    Sentinel,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Single => "single",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

impl RedisConfig {
    /// Replicas each guarded write waits for (see `replicas_ack`).
    pub fn replicas_ack(&self) -> u32 {
        self.replicas_ack.unwrap_or(match self.mode {
            RedisMode::Single => 0,
            RedisMode::Cluster | RedisMode::Sentinel => 1,
        })
    }

    /// Where this connects, passwords hidden: for logs and errors.
    pub fn describe(&self) -> String {
        match self.mode {
            RedisMode::Single => redact_url(&self.url),
            RedisMode::Cluster | RedisMode::Sentinel => {
                let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
                let master = self
                    .sentinel_master
                    .as_deref()
                    .map_or(String::new(), |m| format!(" master {m}"));
                format!("{} [{}]{master}", self.mode.as_str(), urls.join(", "))
            }
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            mode: RedisMode::Single,
            url: "redis://127.0.0.1:6379/0".into(),
            urls: Vec::new(),
            sentinel_master: None,
            sentinel_master_username: None,
            sentinel_master_password: None,
            key_prefix: "wxpush".into(),
            pool_size: 16,
            replicas_ack: None,
            replicas_timeout: Duration::from_millis(1000),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpoint {
    Stable,
    Classic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WechatConfig {
    pub api_base: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub token_endpoint: TokenEndpoint,
    /// Refresh a token this long before it expires. Below WeChat's 5-minute stable-token
    /// rotation window, so a stable refresh really yields the next token.
    #[serde(with = "humantime_serde")]
    pub refresh_ahead: Duration,
    /// How long a refresher holds the cross-process lock at most; must exceed `timeout`.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// HTTP connections kept open to WeChat per worker.
    pub max_idle_connections: usize,
    /// While an app's daily quota is used up (45009): one probe send this often (and one at
    /// 00:00 China time, when WeChat resets the quota).
    #[serde(with = "humantime_serde")]
    pub quota_probe_every: Duration,
}

impl Default for WechatConfig {
    fn default() -> Self {
        WechatConfig {
            api_base: "https://api.weixin.qq.com".into(),
            timeout: Duration::from_secs(5),
            token_endpoint: TokenEndpoint::Stable,
            refresh_ahead: Duration::from_secs(180),
            lock_ttl: Duration::from_secs(15),
            max_idle_connections: 512,
            quota_probe_every: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub appid: String,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Only so that an inline secret gets a clear refusal instead of "unknown field".
    #[serde(default)]
    pub secret: Option<toml::Value>,
    /// The most sends per unit of time of all workers together (e.g. `"200/s"`).
    #[serde(default)]
    pub max_rate: Option<Rate>,
    /// The message-push Token of the mini program console (an environment variable or a
    /// file, like the secret); the app's pushes are refused without one.
    #[serde(default)]
    pub push_token_env: Option<String>,
    #[serde(default)]
    pub push_token_file: Option<PathBuf>,
    /// The console's EncodingAESKey (43 characters): safe mode; absent: plaintext mode.
    #[serde(default)]
    pub push_aes_key_env: Option<String>,
    #[serde(default)]
    pub push_aes_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Immediate resends after a token errcode and refresh, before it counts as transient.
    pub token_retries: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 8,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            token_retries: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRefused {
    DeadLetter,
    Drop,
}

/// What to do with an event whose (user, template) has no grant in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithoutGrant {
    /// Send anyway: the ledger is advisory (grants made before wxpush listened are unknown).
    Send,
    /// Do not call WeChat: ack with the outcome `skipped`, counted and recorded.
    Skip,
    /// Dead-letter it (class `no_grant`).
    DeadLetter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    Truncate,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAmbiguous {
    Resend,
    DeadLetter,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub on_refused: OnRefused,
    pub without_grant: WithoutGrant,
    pub overflow: Overflow,
    pub on_ambiguous: OnAmbiguous,
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// Run even when Redis can evict or lose keys although `on_ambiguous = "dead_letter"`
    /// promises "never twice" (warned about loudly and counted in metrics).
    pub unsafe_redis: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            // 43101 is routine (a one-time grant used up), not an incident: counted, recorded
            // on the event and in the grant ledger, acked.
            on_refused: OnRefused::Drop,
            without_grant: WithoutGrant::Send,
            overflow: Overflow::Truncate,
            on_ambiguous: OnAmbiguous::Resend,
            idempotency_ttl: Duration::from_secs(7 * 24 * 3600),
            unsafe_redis: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The environment variable holding the bearer token for `/api/*` and the console.
    pub token_env: Option<String>,
    /// Or a file holding it.
    pub token_file: Option<PathBuf>,
    /// A dead-letter listing (`GET /api/dead`, the console) reads at most this many
    /// letters from the head of the queue: each is held unacked while the listing runs.
    /// Past it, counts and groups cover the letters read and say so (`partial`).
    pub dead_scan_max: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: ([127, 0, 0, 1], 9464).into(),
            token_env: None,
            token_file: None,
            dead_scan_max: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// After SIGTERM, how long in-flight messages may take before the worker exits anyway
    /// (unacked messages go back to the queue).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MiniprogramState {
    Developer,
    Trial,
    Formal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Lang {
    #[serde(rename = "zh_CN")]
    ZhCn,
    #[serde(rename = "en_US")]
    EnUs,
    #[serde(rename = "zh_HK")]
    ZhHk,
    #[serde(rename = "zh_TW")]
    ZhTw,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub event: String,
    #[serde(default = "default_app")]
    pub app: String,
    pub template_id: String,
    pub page: Option<String>,
    pub miniprogram_state: Option<MiniprogramState>,
    pub lang: Option<Lang>,
    pub data: BTreeMap<String, Spanned<String>>,
    /// The allowed values of each `enum` / `enum_string` data key (the template's
    /// `keywordEnumValueList`, as `wxpush templates` prints it).
    #[serde(default)]
    pub enums: BTreeMap<String, Vec<String>>,
    /// A long-term subscription template (one accept allows sends until the user turns it
    /// off); default: one-time (one accept, one send). The grant ledger counts by it.
    #[serde(default)]
    pub long_term: bool,
}

fn default_app() -> String {
    "default".into()
}

impl MiniprogramState {
    pub fn as_str(self) -> &'static str {
        match self {
            MiniprogramState::Developer => "developer",
            MiniprogramState::Trial => "trial",
            MiniprogramState::Formal => "formal",
        }
    }
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::ZhCn => "zh_CN",
            Lang::EnUs => "en_US",
            Lang::ZhHk => "zh_HK",
            Lang::ZhTw => "zh_TW",
        }
    }
}

/// A URL with any password replaced by `***`, safe for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redact_url_hides_passwords_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
    }
}
