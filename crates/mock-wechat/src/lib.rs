//! The project's WeChat API emulator: the token, stable_token, subscribe/send,
//! jscode2session, get_api_quota, clear_quota and gettemplate endpoints with WeChat's rules and errcodes,
//! plus a control API under `/mock/` and the same controls as Rust methods on
//! [`MockServer`].
//!
//! Message push (`push.rs`, `push_crypto`): with [`MockServer::configure_push`] the
//! emulator POSTs WeChat's subscription events to a receiver, signed and (safe mode)
//! encrypted, as JSON or XML: the user's popup choices, a template turned off, and the final
//! result of every accepted send.
//!
//! Limits as WeChat applies them (sources in `limits.rs`): a daily subscribe/send quota per
//! app (45009, back at 00:00 UTC+8 or after `clear_quota`), an optional per-app rate per
//! second (45011), and the token fetch quotas.
//!
//! The demo, the integration tests and the benchmark all run against it, so it follows
//! WeChat closely (token overlap and rotation, quotas, validation order, errmsg with a rid)
//! and stays cheap per request so it is never the bottleneck being measured.
//!
//! It is also the test oracle for the product's value rules: [`value_rules`] is written from
//! WeChat's documentation and shares no code with the product, and [`accepts_value`] lets
//! the product's tests ask it directly.

pub mod cli;
mod control;
mod faults;
mod limits;
mod push;
pub mod push_crypto;
mod routes;
mod state;
mod stats;
mod templates;
mod tokens;
mod validate;
pub mod value_rules;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

pub use faults::{Fault, FaultTarget};
pub use limits::SendQuota;
pub use push::{PushFormat, PushRecord, PushTarget};
pub use stats::MockStats;
pub use templates::{TemplateDef, TemplateKind};

/// Whether WeChat accepts `value` for the data key `key` (`thing4`, `amount2`, …): the same
/// check the emulator's subscribe/send applies to each `data.<key>.value`.
pub fn accepts_value(key: &str, value: &str) -> bool {
    value_rules::accepts(key, value).is_ok()
}

use state::Shared;

/// How the emulator behaves; the defaults are WeChat's.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Lifetime of every token (WeChat: 7200 s).
    pub token_ttl: Duration,
    /// After a classic fetch the previous classic token stays valid this long.
    pub classic_overlap: Duration,
    /// stable_token hands out a new token once the current one has less than this left
    /// (capped at half of `token_ttl`, so a short test ttl still shares tokens).
    pub stable_rotate_before: Duration,
    pub force_refresh_min_interval: Duration,
    pub force_refresh_daily_limit: u32,
    pub classic_daily_limit: u32,
    /// Added to every WeChat endpoint call.
    pub latency: Duration,
    /// Each send needs a granted one-time subscription for (openid, template_id), else 43101.
    pub strict_subscriptions: bool,
    /// How many accepted sends [`MockServer::sends`] keeps (the oldest are dropped first);
    /// bounds memory in long benchmarks. 0 keeps none.
    pub max_recorded_sends: usize,
    /// Accepted subscribe/sends per app per day (China time) before 45009. WeChat's
    /// documented limit is 10,000,000 a day (30,000,000 with payments enabled).
    pub send_daily_limit: u64,
    /// Accepted sends per app in any 1-second window (sliding) before 45011; `None` is
    /// unlimited, as WeChat documents no per-second figure.
    pub send_rate_per_sec: Option<u32>,
    /// `clear_quota` calls allowed per app per month before 48006 (WeChat: 10).
    pub clear_quota_monthly_limit: u32,
}

impl Default for MockOptions {
    fn default() -> MockOptions {
        MockOptions {
            token_ttl: Duration::from_secs(7200),
            classic_overlap: Duration::from_secs(300),
            stable_rotate_before: Duration::from_secs(300),
            force_refresh_min_interval: Duration::from_secs(30),
            force_refresh_daily_limit: 20,
            classic_daily_limit: 2000,
            latency: Duration::ZERO,
            strict_subscriptions: false,
            max_recorded_sends: 100_000,
            send_daily_limit: 10_000_000,
            send_rate_per_sec: None,
            clear_quota_monthly_limit: 10,
        }
    }
}

/// One send WeChat accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AcceptedSend {
    pub msgid: u64,
    pub appid: String,
    /// The request body as received.
    pub body: serde_json::Value,
    /// Unix time in milliseconds, read when the send passed the rate limit: the time the
    /// rate window counted.
    pub received_at_ms: u64,
}

/// A running emulator. Dropping it stops the server too; [`MockServer::shutdown`] also
/// waits for it.
pub struct MockServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

/// How long shutdown waits for in-flight calls (delays, latency) before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl MockServer {
    /// Binds `listen` (port 0 picks a free port) and serves in the background.
    pub async fn start(opts: MockOptions, listen: SocketAddr) -> std::io::Result<MockServer> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(&opts));
        let app = router(shared.clone());
        let listener = listener.tap_io(|tcp| {
            // Small request/response pairs: Nagle would only add delay.
            let _ = tcp.set_nodelay(true);
        });
        let cancel = shared.cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "mock-wechat server stopped");
            }
        });
        tracing::debug!(%addr, "mock-wechat listening");
        Ok(MockServer {
            shared,
            addr,
            task: Some(task),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, usable as `wechat.api_base`; an unspecified bind address
    /// (0.0.0.0, ::) is given as loopback.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Once any app is registered, unknown appids get 40013 and wrong secrets 40125.
    pub fn register_app(&self, appid: &str, secret: &str) {
        self.shared.register_app(appid, secret);
    }

    /// A `js_code` exchangeable once, within 5 minutes, for `openid`.
    pub fn register_code(&self, appid: &str, js_code: &str, openid: &str) {
        self.shared.register_code(appid, js_code, openid);
    }

    /// Adds `count` one-time subscriptions (only enforced with `strict_subscriptions`).
    pub fn grant_subscription(&self, openid: &str, template_id: &str, count: u32) {
        self.shared.grant_subscription(openid, template_id, count);
    }

    /// One-time subscriptions left for (openid, template_id).
    pub fn subscriptions_left(&self, openid: &str, template_id: &str) -> u32 {
        self.shared.subscriptions_left(openid, template_id)
    }

    /// A one-time template titled by its id (see [`MockServer::add_template`]). Keys are
    /// not checked here, so a test can register one WeChat would never accept.
    pub fn register_template(&self, template_id: &str, keys: &[&str]) {
        self.shared
            .add_template(TemplateDef::new(template_id, keys));
    }

    /// Adds (or replaces) a template: gettemplate lists it, and once any template is
    /// registered, sends must name a registered one, carry exactly its keys and give each
    /// enum key one of its listed values. `Err` says what is wrong with the definition.
    pub fn add_template(&self, def: TemplateDef) -> Result<(), String> {
        def.check()?;
        self.shared.add_template(def);
        Ok(())
    }

    /// Queues faults for the next calls to `target`, consumed one per call in order.
    pub fn push_faults(&self, target: FaultTarget, faults: Vec<Fault>) {
        self.shared.faults.push(target, faults);
    }

    /// Gives a random `ratio` (0..=1) of `target`'s calls the fault once its queue is empty;
    /// `None` clears it.
    pub fn set_fault_rate(&self, target: FaultTarget, fault: Option<Fault>, ratio: f64) {
        self.shared.faults.set_rate(target, fault, ratio);
    }

    /// Added to every WeChat endpoint call from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.set_latency(latency);
    }

    /// Every token issued so far answers 42001 from now on; the next fetches issue new ones.
    pub fn expire_all_tokens(&self) {
        self.shared.expire_all_tokens();
    }

    /// Sets `appid`'s daily subscribe/send limit (today's count is kept).
    pub fn set_send_quota(&self, appid: &str, daily_limit: u64) {
        self.shared.set_send_quota(appid, daily_limit);
    }

    /// Uses up what is left of `appid`'s quota today: its next sends answer 45009 until
    /// [`MockServer::new_quota_day`], a `clear_quota` call, or the real 00:00 UTC+8.
    pub fn exhaust_send_quota(&self, appid: &str) {
        self.shared.exhaust_send_quota(appid);
    }

    /// `appid`'s subscribe/send quota today, as get_api_quota reports it.
    pub fn send_quota(&self, appid: &str) -> SendQuota {
        self.shared.send_quota(appid)
    }

    /// Accepted sends per app in any 1-second window from now on; `None` lifts the limit,
    /// `Some(0)` refuses every send with 45011.
    pub fn set_send_rate(&self, per_sec: Option<u32>) {
        self.shared.set_send_rate(per_sec);
    }

    /// Does what 00:00 UTC+8 does: every app's send and token fetch counts start again.
    pub fn new_quota_day(&self) {
        self.shared.new_quota_day();
    }

    pub fn stats(&self) -> MockStats {
        self.shared.counters.snapshot()
    }

    /// The accepted sends, oldest first (at most `max_recorded_sends`).
    pub fn sends(&self) -> Vec<AcceptedSend> {
        self.shared.sends()
    }

    /// `received_at_ms` of every recorded accepted send, oldest first: what a rate test
    /// slides its 1-second window over.
    pub fn send_times_ms(&self) -> Vec<u64> {
        self.shared.send_times_ms()
    }

    /// Clears tokens, faults, counters, sends, codes, subscriptions and quota counts and
    /// overrides; keeps apps, templates, latency and the send rate.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Sends `appid`'s message pushes to `target` from now on (safe mode when it has an
    /// `aes_key`); each accepted send then pushes its `subscribe_msg_sent_event`.
    pub fn configure_push(&self, appid: &str, target: PushTarget) -> Result<(), String> {
        self.shared.push.configure(appid, target)
    }

    /// The user's choices in the `wx.requestSubscribeMessage` popup, per template:
    /// `"accept"`, `"acceptWithAudio"` (each adds one grant, or turns a registered long-term
    /// template on) or `"reject"`; then one `subscribe_msg_popup_event` with all of them.
    /// `Ok(None)` when the app has no push target (the grants are still recorded),
    /// `Ok(Some(status))` with the receiver's HTTP status, `Err` for an unknown choice
    /// (nothing recorded) or a receiver that could not be reached (grants recorded).
    pub async fn user_taps_subscribe(
        &self,
        appid: &str,
        openid: &str,
        choices: &[(&str, &str)],
    ) -> Result<Option<u16>, String> {
        self.shared.user_taps(appid, openid, choices).await
    }

    /// The user turned `template_id` off in the settings: no grant is left, and a
    /// `subscribe_msg_change_event` (reject) is pushed. Results as for
    /// [`MockServer::user_taps_subscribe`].
    pub async fn user_turns_off(
        &self,
        appid: &str,
        openid: &str,
        template_id: &str,
    ) -> Result<Option<u16>, String> {
        self.shared.user_turns_off(appid, openid, template_id).await
    }

    /// The `ErrorCode`/`ErrorStatus` of `appid`'s next sent events (default 0 /
    /// `"success"`, the only values WeChat documents; its failures are "system failures of
    /// the asynchronous push").
    pub fn set_sent_result(&self, appid: &str, error_code: i64, error_status: &str) {
        self.shared
            .push
            .set_sent_result(appid, error_code, error_status);
    }

    /// WeChat's GET verification of the app's push URL: `Ok(true)` when the receiver
    /// answered 2xx with the `echostr` it was sent.
    pub async fn verify_url(&self, appid: &str) -> Result<bool, String> {
        self.shared.push.verify_url(appid).await
    }

    /// The pushes made so far, oldest first, with the receiver's status.
    pub fn pushes(&self) -> Vec<PushRecord> {
        self.shared.push.records()
    }

    /// Waits (up to `within`) until at least `n` pushes were made; returns them all. Sent
    /// events are pushed after the send's answer, so tests await them here.
    pub async fn wait_for_pushes(&self, n: usize, within: Duration) -> Vec<PushRecord> {
        self.shared.push.wait_for(n, within).await
    }

    /// Stops accepting, ends hung calls, waits for the rest (up to a few seconds).
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/cgi-bin/token", get(routes::classic_token))
        .route("/cgi-bin/stable_token", post(routes::stable_token))
        .route("/cgi-bin/message/subscribe/send", post(routes::send))
        .route("/sns/jscode2session", get(routes::jscode2session))
        .route("/cgi-bin/openapi/quota/get", post(routes::quota_get))
        .route("/cgi-bin/clear_quota", post(routes::clear_quota))
        .route("/wxaapi/newtmpl/gettemplate", get(routes::gettemplate))
        .merge(control::router())
        .with_state(shared)
}
