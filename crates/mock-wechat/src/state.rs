//! What the emulator knows: apps and secrets, tokens, login codes, subscriptions, templates,
//! send limits, accepted sends; and the WeChat logic of each endpoint on top of it, free of
//! HTTP.
//!
//! Each piece has its own short-lived lock so concurrent sends only ever contend on the
//! token map lookup, the limits (a map lookup and a counter) and the append to the send log.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::faults::Faults;
use super::limits::{Refused, SendLimits, SendQuota};
use super::push::{self, Event, Pusher};
use super::stats::{Counters, bump};
use super::templates::TemplateDef;
use super::tokens::{Issued, QuotaError, Stale, TokenRules, TokenStore, well_formed};
use super::validate::{Templates, check_send};
use super::{AcceptedSend, MockOptions};

/// How long a `js_code` from `wx.login` can be exchanged.
const CODE_LIFETIME: Duration = Duration::from_secs(300);

/// A WeChat error answer: errcode and errmsg (the rid is added when it is sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WxError {
    pub errcode: i64,
    pub errmsg: String,
}

impl WxError {
    pub(crate) fn new(errcode: i64, errmsg: impl Into<String>) -> WxError {
        WxError {
            errcode,
            errmsg: errmsg.into(),
        }
    }
}

struct Code {
    openid: String,
    issued: Instant,
    used: bool,
}

struct Recorded {
    msgid: u64,
    appid: Arc<str>,
    // Raw bytes, copied: far smaller than a parsed Value, and a copy does not pin the
    // connection's read buffer the way the request's `Bytes` would.
    body: Box<[u8]>,
    received_at_ms: u64,
}

/// The parameters a token call needs, from a query string or a JSON body.
pub(crate) struct Credentials<'a> {
    pub grant_type: Option<&'a str>,
    pub appid: Option<&'a str>,
    pub secret: Option<&'a str>,
}

pub(crate) struct Shared {
    strict_subscriptions: bool,
    max_recorded_sends: usize,
    latency_us: AtomicU64,
    apps: RwLock<HashMap<String, String>>,
    tokens: Mutex<TokenStore>,
    codes: Mutex<HashMap<(String, String), Code>>,
    subscriptions: Mutex<HashMap<(String, String), u32>>,
    /// Locked before `subscriptions` when both are needed (a send), never after.
    limits: Mutex<SendLimits>,
    // Copy-on-write: a send clones the Arc and validates without holding any lock.
    templates: RwLock<Arc<Templates>>,
    sends: Mutex<VecDeque<Recorded>>,
    next_msgid: AtomicU64,
    pub(crate) faults: Faults,
    pub(crate) counters: Counters,
    pub(crate) push: Pusher,
    /// Cancelled at shutdown: hung and sleeping calls give up so the server can stop.
    pub(crate) cancel: CancellationToken,
}

/// Poisoning only means another request panicked mid-update; the maps stay usable and an
/// emulator that keeps answering is more useful than one that cascades the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Shared {
    pub(crate) fn new(opts: &MockOptions) -> Shared {
        Shared {
            strict_subscriptions: opts.strict_subscriptions,
            max_recorded_sends: opts.max_recorded_sends,
            latency_us: AtomicU64::new(micros(opts.latency)),
            apps: RwLock::default(),
            tokens: Mutex::new(TokenStore::new(TokenRules {
                ttl: opts.token_ttl,
                classic_overlap: opts.classic_overlap,
                stable_rotate_before: opts.stable_rotate_before,
                force_refresh_min_interval: opts.force_refresh_min_interval,
                force_refresh_daily_limit: opts.force_refresh_daily_limit,
                classic_daily_limit: opts.classic_daily_limit,
            })),
            codes: Mutex::default(),
            subscriptions: Mutex::default(),
            limits: Mutex::new(SendLimits::new(
                opts.send_daily_limit,
                opts.send_rate_per_sec,
                opts.clear_quota_monthly_limit,
            )),
            templates: RwLock::default(),
            sends: Mutex::default(),
            next_msgid: AtomicU64::new(1),
            faults: Faults::default(),
            counters: Counters::default(),
            push: Pusher::default(),
            cancel: CancellationToken::new(),
        }
    }

    // ----- set-up (Rust API and control API) -----

    pub(crate) fn register_app(&self, appid: &str, secret: &str) {
        write(&self.apps).insert(appid.to_owned(), secret.to_owned());
    }

    pub(crate) fn register_code(&self, appid: &str, js_code: &str, openid: &str) {
        lock(&self.codes).insert(
            (appid.to_owned(), js_code.to_owned()),
            Code {
                openid: openid.to_owned(),
                issued: Instant::now(),
                used: false,
            },
        );
    }

    pub(crate) fn grant_subscription(&self, openid: &str, template_id: &str, count: u32) {
        let mut subs = lock(&self.subscriptions);
        let left = subs
            .entry((openid.to_owned(), template_id.to_owned()))
            .or_default();
        *left = left.saturating_add(count);
    }

    pub(crate) fn subscriptions_left(&self, openid: &str, template_id: &str) -> u32 {
        lock(&self.subscriptions)
            .get(&(openid.to_owned(), template_id.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Adds or replaces a template (checked by the caller).
    pub(crate) fn add_template(&self, def: TemplateDef) {
        let mut guard = write(&self.templates);
        let mut next = Templates::clone(&guard);
        next.insert(def.template_id.clone(), def);
        *guard = Arc::new(next);
    }

    /// `GET /wxaapi/newtmpl/gettemplate`: every registered template, by template_id.
    pub(crate) fn list_templates(&self, access_token: Option<&str>) -> Result<Vec<Value>, WxError> {
        self.check_token(access_token)?;
        let templates = Arc::clone(&read(&self.templates));
        let mut defs: Vec<&TemplateDef> = templates.values().collect();
        defs.sort_by(|a, b| a.template_id.cmp(&b.template_id));
        Ok(defs.into_iter().map(TemplateDef::listing).collect())
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        self.latency_us.store(micros(latency), Relaxed);
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Relaxed))
    }

    pub(crate) fn expire_all_tokens(&self) {
        lock(&self.tokens).expire_all();
    }

    pub(crate) fn sends(&self) -> Vec<AcceptedSend> {
        lock(&self.sends)
            .iter()
            .map(|r| AcceptedSend {
                msgid: r.msgid,
                appid: r.appid.to_string(),
                body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
                received_at_ms: r.received_at_ms,
            })
            .collect()
    }

    pub(crate) fn set_send_quota(&self, appid: &str, daily_limit: u64) {
        lock(&self.limits).set_daily_limit(appid, daily_limit, unix_ms());
    }

    pub(crate) fn exhaust_send_quota(&self, appid: &str) {
        lock(&self.limits).exhaust(appid, unix_ms());
    }

    pub(crate) fn send_quota(&self, appid: &str) -> SendQuota {
        lock(&self.limits).quota(appid, unix_ms())
    }

    pub(crate) fn set_send_rate(&self, per_sec: Option<u32>) {
        lock(&self.limits).set_rate(per_sec);
    }

    /// What 00:00 UTC+8 does: send and token fetch counts start again for every app.
    pub(crate) fn new_quota_day(&self) {
        lock(&self.limits).new_day();
        lock(&self.tokens).new_day();
    }

    pub(crate) fn send_times_ms(&self) -> Vec<u64> {
        lock(&self.sends).iter().map(|r| r.received_at_ms).collect()
    }

    /// Clears tokens, faults, counters, sends, codes, subscriptions and quota counts; apps,
    /// templates and latency are configuration and stay. msgids keep increasing so they stay
    /// unique per server.
    pub(crate) fn reset(&self) {
        lock(&self.tokens).clear();
        lock(&self.limits).clear_all();
        self.faults.clear();
        self.counters.reset();
        lock(&self.sends).clear();
        lock(&self.codes).clear();
        lock(&self.subscriptions).clear();
        self.push.clear_records();
    }

    pub(crate) async fn user_taps(
        &self,
        appid: &str,
        openid: &str,
        choices: &[(&str, &str)],
    ) -> Result<Option<u16>, String> {
        if choices.is_empty() {
            return Err("the popup needs at least one (template_id, choice)".into());
        }
        if let Some((_, bad)) = choices.iter().find(|(_, c)| !push::CHOICES.contains(c)) {
            return Err(format!(
                "choice {bad:?} is not one of accept, reject, acceptWithAudio"
            ));
        }
        for (template_id, choice) in choices {
            self.record_popup_choice(openid, template_id, choice);
        }
        self.push_event(appid, push::popup_event(openid, choices))
            .await
    }

    pub(crate) async fn user_turns_off(
        &self,
        appid: &str,
        openid: &str,
        template_id: &str,
    ) -> Result<Option<u16>, String> {
        self.revoke_subscription(openid, template_id);
        self.push_event(appid, push::change_event(openid, template_id))
            .await
    }

    /// A popup choice: accept and acceptWithAudio add one grant to a one-time template and
    /// turn a registered long-term one on (unlimited sends); reject changes nothing.
    pub(crate) fn record_popup_choice(&self, openid: &str, template_id: &str, choice: &str) {
        if choice == "reject" {
            return;
        }
        let long_term = read(&self.templates)
            .get(template_id)
            .is_some_and(|t| t.kind == super::templates::TemplateKind::LongTerm);
        let count = if long_term { u32::MAX } else { 1 };
        self.grant_subscription(openid, template_id, count);
    }

    /// The user turned the template off: no grant is left.
    pub(crate) fn revoke_subscription(&self, openid: &str, template_id: &str) {
        lock(&self.subscriptions).remove(&(openid.to_owned(), template_id.to_owned()));
    }

    /// Pushes an event to the app's target and counts it (failed: no answer or not 2xx).
    pub(crate) async fn push_event(
        &self,
        appid: &str,
        event: Event,
    ) -> Result<Option<u16>, String> {
        let result = self.push.push(appid, event).await;
        match &result {
            Ok(None) => {}
            Ok(Some(status)) => {
                bump(&self.counters.pushes);
                if !(200..300).contains(status) {
                    bump(&self.counters.pushes_failed);
                }
            }
            Err(_) => {
                bump(&self.counters.pushes);
                bump(&self.counters.pushes_failed);
            }
        }
        result
    }

    // ----- WeChat logic -----

    /// With no app registered every pair is accepted, so demos need no set-up.
    pub(crate) fn check_app(
        &self,
        appid: Option<&str>,
        secret: Option<&str>,
    ) -> Result<(), WxError> {
        let appid = appid
            .filter(|a| !a.is_empty())
            .ok_or_else(|| WxError::new(41002, "appid missing"))?;
        let secret = secret
            .filter(|s| !s.is_empty())
            .ok_or_else(|| WxError::new(41004, "appsecret missing"))?;
        let apps = read(&self.apps);
        if apps.is_empty() {
            return Ok(());
        }
        match apps.get(appid) {
            None => Err(WxError::new(40013, "invalid appid")),
            Some(known) if known != secret => Err(WxError::new(40125, "invalid appsecret")),
            Some(_) => Ok(()),
        }
    }

    fn token_call(
        &self,
        creds: &Credentials<'_>,
        fetch: impl FnOnce(&mut TokenStore, &str) -> Result<Issued, QuotaError>,
    ) -> Result<Issued, WxError> {
        if creds.grant_type != Some("client_credential") {
            return Err(WxError::new(40002, "invalid grant_type"));
        }
        self.check_app(creds.appid, creds.secret)?;
        let appid = creds.appid.unwrap_or_default();
        let issued = fetch(&mut lock(&self.tokens), appid).map_err(|e| match e {
            QuotaError::Daily => WxError::new(45009, "reach max api daily quota limit"),
            QuotaError::TooFrequent => WxError::new(
                45011,
                "api minute-quota reach limit  mustslower  retry next minute",
            ),
        })?;
        if issued.minted {
            bump(&self.counters.tokens_issued);
        }
        Ok(issued)
    }

    pub(crate) fn classic_token(&self, creds: &Credentials<'_>) -> Result<Issued, WxError> {
        let now = Instant::now();
        self.token_call(creds, |store, appid| store.classic(appid, now))
    }

    pub(crate) fn stable_token(
        &self,
        creds: &Credentials<'_>,
        force_refresh: bool,
    ) -> Result<Issued, WxError> {
        let now = Instant::now();
        self.token_call(creds, |store, appid| {
            store.stable(appid, force_refresh, now)
        })
    }

    /// Returns `(openid, session_key)`.
    pub(crate) fn jscode2session(
        &self,
        appid: Option<&str>,
        secret: Option<&str>,
        js_code: Option<&str>,
        grant_type: Option<&str>,
    ) -> Result<(String, String), WxError> {
        if grant_type != Some("authorization_code") {
            return Err(WxError::new(40002, "invalid grant_type"));
        }
        self.check_app(appid, secret)?;
        let js_code = js_code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| WxError::new(41008, "missing code"))?;
        let key = (appid.unwrap_or_default().to_owned(), js_code.to_owned());
        let mut codes = lock(&self.codes);
        match codes.get_mut(&key) {
            Some(code) if code.used => Err(WxError::new(40163, "code been used")),
            Some(code) if code.issued.elapsed() < CODE_LIFETIME => {
                code.used = true;
                Ok((code.openid.clone(), session_key()))
            }
            _ => Err(WxError::new(40029, "invalid code")),
        }
    }

    /// The app a token belongs to, or WeChat's answer to a missing, malformed, superseded or
    /// expired one: the first check of every call that carries an access_token.
    pub(crate) fn check_token(&self, access_token: Option<&str>) -> Result<Arc<str>, WxError> {
        let token = access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| WxError::new(41001, "access_token missing"))?;
        if !well_formed(token) {
            return Err(WxError::new(40014, "invalid access_token"));
        }
        lock(&self.tokens)
            .check(token, Instant::now())
            .map_err(|stale| match stale {
                Stale::Invalid => WxError::new(
                    40001,
                    "invalid credential, access_token is invalid or not latest",
                ),
                Stale::Expired => WxError::new(42001, "access_token expired"),
            })
    }

    /// Returns the msgid of the accepted message.
    #[cfg(test)]
    pub(crate) fn send(&self, access_token: Option<&str>, body: &[u8]) -> Result<u64, WxError> {
        self.accept_send(access_token, body).map(|(msgid, _)| msgid)
    }

    /// Returns the msgid of the accepted message, and its sent event when the app has a
    /// push target.
    pub(crate) fn accept_send(
        &self,
        access_token: Option<&str>,
        body: &[u8],
    ) -> Result<(u64, Option<(String, Event)>), WxError> {
        let appid = self.check_token(access_token)?;

        let parsed: Map<String, Value> =
            serde_json::from_slice(body).map_err(|_| WxError::new(47001, "data format error"))?;
        let templates = Arc::clone(&read(&self.templates));
        let valid =
            check_send(&parsed, &templates).map_err(|r| WxError::new(r.errcode, r.errmsg))?;

        // Checked and spent under one lock, with the clock read inside it, so concurrent
        // sends can never together pass a limit and the recorded times are the ones the
        // rate window saw.
        let mut limits = lock(&self.limits);
        let now_ms = unix_ms();
        limits
            .check(&appid, now_ms)
            .map_err(|refused| match refused {
                Refused::Daily => WxError::new(45009, "reach max api daily quota limit"),
                Refused::Rate => WxError::new(
                    45011,
                    "api minute-quota reach limit  mustslower  retry next minute",
                ),
            })?;
        if self.strict_subscriptions {
            self.use_subscription(valid.touser, valid.template_id)?;
        }
        limits.record(&appid, now_ms);
        drop(limits);

        let msgid = self.next_msgid.fetch_add(1, Relaxed);
        let sent_event = self.push.is_configured(&appid).then(|| {
            let result = self.push.sent_result(&appid);
            let event = push::sent_event(valid.touser, valid.template_id, msgid, result);
            (appid.to_string(), event)
        });
        if self.max_recorded_sends > 0 {
            let record = Recorded {
                msgid,
                appid,
                body: body.into(),
                received_at_ms: now_ms,
            };
            let mut sends = lock(&self.sends);
            while sends.len() >= self.max_recorded_sends {
                sends.pop_front();
            }
            sends.push_back(record);
        }
        Ok((msgid, sent_event))
    }

    fn use_subscription(&self, openid: &str, template_id: &str) -> Result<(), WxError> {
        let mut subs = lock(&self.subscriptions);
        // Looking up by borrowed strings would need a custom key type; two short
        // allocations per strict send are cheap next to the JSON parse before it.
        let key = (openid.to_owned(), template_id.to_owned());
        match subs.get_mut(&key) {
            Some(left) if *left > 0 => {
                *left -= 1;
                Ok(())
            }
            _ => Err(WxError::new(43101, "user refuse to accept the msg")),
        }
    }

    /// `POST /cgi-bin/openapi/quota/get` `{"cgi_path"}`: only subscribe/send has a quota
    /// here; `/sns/` paths are refused as WeChat documents, other paths are unknown.
    pub(crate) fn api_quota(
        &self,
        access_token: Option<&str>,
        body: &[u8],
    ) -> Result<SendQuota, WxError> {
        let appid = self.check_token(access_token)?;
        let parsed: Map<String, Value> =
            serde_json::from_slice(body).map_err(|_| WxError::new(47001, "data format error"))?;
        let path = parsed.get("cgi_path").and_then(Value::as_str).unwrap_or("");
        if !path.starts_with('/') {
            return Err(WxError::new(76003, "invalid cgi_path"));
        }
        if path.contains("/sns/") {
            return Err(WxError::new(
                76022,
                "could not use this cgi_path, no permission",
            ));
        }
        if path != SEND_PATH {
            return Err(WxError::new(76021, "cgi_path not found, please check"));
        }
        Ok(self.send_quota(&appid))
    }

    /// `POST /cgi-bin/clear_quota` `{"appid"}`: the token's own app only; resets its send
    /// and token fetch counts, at most `clear_quota_monthly_limit` times a month.
    pub(crate) fn clear_quota(
        &self,
        access_token: Option<&str>,
        body: &[u8],
    ) -> Result<(), WxError> {
        let token_app = self.check_token(access_token)?;
        let parsed: Map<String, Value> =
            serde_json::from_slice(body).map_err(|_| WxError::new(47001, "data format error"))?;
        let appid = parsed
            .get("appid")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| WxError::new(41002, "appid missing"))?;
        if appid != &*token_app {
            return Err(WxError::new(40013, "invalid appid"));
        }
        if !lock(&self.limits).clear(appid, unix_ms()) {
            return Err(WxError::new(
                48006,
                "forbid to clear quota because of reaching the limit",
            ));
        }
        lock(&self.tokens).clear_quota(appid);
        Ok(())
    }
}

/// The one cgi_path with a quota in the emulator.
const SEND_PATH: &str = "/cgi-bin/message/subscribe/send";

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A session_key shaped like WeChat's: 24 base64 characters.
fn session_key() -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut key: String = (0..22)
        .map(|_| B64[fastrand::usize(..B64.len())] as char)
        .collect();
    key.push_str("==");
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENID: &str = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M";

    fn creds<'a>(appid: &'a str, secret: &'a str) -> Credentials<'a> {
        Credentials {
            grant_type: Some("client_credential"),
            appid: Some(appid),
            secret: Some(secret),
        }
    }

    fn body() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "touser": OPENID, "template_id": "TPL", "data": {"thing1": {"value": "hi"}}
        }))
        .unwrap()
    }

    #[test]
    fn open_mode_until_an_app_is_registered() {
        let s = Shared::new(&MockOptions::default());
        assert!(s.check_app(Some("any"), Some("thing")).is_ok());
        assert_eq!(s.check_app(None, Some("x")).unwrap_err().errcode, 41002);
        assert_eq!(s.check_app(Some("a"), Some("")).unwrap_err().errcode, 41004);
        s.register_app("wx1", "s1");
        assert_eq!(
            s.check_app(Some("any"), Some("thing")).unwrap_err().errcode,
            40013
        );
        assert_eq!(
            s.check_app(Some("wx1"), Some("bad")).unwrap_err().errcode,
            40125
        );
        assert!(s.check_app(Some("wx1"), Some("s1")).is_ok());
    }

    #[test]
    fn send_records_and_strict_mode_counts_down() {
        let s = Shared::new(&MockOptions {
            strict_subscriptions: true,
            max_recorded_sends: 2,
            ..MockOptions::default()
        });
        let token = s.stable_token(&creds("wx1", "s"), false).unwrap().token;
        assert_eq!(s.send(Some(&token), &body()).unwrap_err().errcode, 43101);
        s.grant_subscription(OPENID, "TPL", 2);
        let first = s.send(Some(&token), &body()).unwrap();
        assert_eq!(s.subscriptions_left(OPENID, "TPL"), 1);
        let second = s.send(Some(&token), &body()).unwrap();
        assert_eq!(second, first + 1);
        assert_eq!(s.send(Some(&token), &body()).unwrap_err().errcode, 43101);
        s.grant_subscription(OPENID, "TPL", 1);
        s.send(Some(&token), &body()).unwrap();
        let sends = s.sends();
        assert_eq!(
            sends.len(),
            2,
            "the log keeps the latest max_recorded_sends"
        );
        assert_eq!(sends[1].appid, "wx1");
        assert_eq!(sends[1].body["touser"], OPENID);
    }

    #[test]
    fn token_checks_come_before_the_body() {
        let s = Shared::new(&MockOptions::default());
        assert_eq!(s.send(None, b"{}").unwrap_err().errcode, 41001);
        assert_eq!(s.send(Some("a b"), b"{}").unwrap_err().errcode, 40014);
        assert_eq!(s.send(Some("abc"), b"{}").unwrap_err().errcode, 40001);
        let token = s.classic_token(&creds("wx1", "s")).unwrap().token;
        assert_eq!(s.send(Some(&token), b"[1]").unwrap_err().errcode, 47001);
        assert_eq!(s.send(Some(&token), b"{").unwrap_err().errcode, 47001);
        s.expire_all_tokens();
        assert_eq!(s.send(Some(&token), b"[1]").unwrap_err().errcode, 42001);
    }

    #[test]
    fn codes_are_single_use_and_per_app() {
        let s = Shared::new(&MockOptions::default());
        s.register_code("wx1", "code1", OPENID);
        let call = |appid, code| {
            s.jscode2session(
                Some(appid),
                Some("s"),
                Some(code),
                Some("authorization_code"),
            )
        };
        assert_eq!(call("wx2", "code1").unwrap_err().errcode, 40029);
        let (openid, key) = call("wx1", "code1").unwrap();
        assert_eq!(openid, OPENID);
        assert_eq!(key.len(), 24);
        assert_eq!(call("wx1", "code1").unwrap_err().errcode, 40163);
        assert_eq!(call("wx1", "nope").unwrap_err().errcode, 40029);
        assert_eq!(
            s.jscode2session(Some("wx1"), Some("s"), Some("c"), None)
                .unwrap_err()
                .errcode,
            40002
        );
    }

    #[test]
    fn reset_keeps_apps_and_templates() {
        let s = Shared::new(&MockOptions::default());
        s.register_app("wx1", "s");
        s.add_template(TemplateDef::new("TPL", &["thing1"]));
        let token = s.stable_token(&creds("wx1", "s"), false).unwrap().token;
        s.send(Some(&token), &body()).unwrap();
        s.reset();
        assert!(s.sends().is_empty());
        assert_eq!(s.send(Some(&token), &body()).unwrap_err().errcode, 40001);
        assert_eq!(
            s.check_app(Some("x"), Some("s")).unwrap_err().errcode,
            40013
        );
        let token = s.stable_token(&creds("wx1", "s"), false).unwrap().token;
        assert!(s.send(Some(&token), &body()).is_ok());
    }
}
