//! The shared access_token: one per app, kept in Redis, refreshed by one worker at a time.
//!
//! Reading a token costs nothing on the hot path: each process keeps a local copy and goes
//! to Redis only when it has none, or the copy is due for refresh. Refreshing is single-flight
//! twice over: a tokio mutex per app inside the process, a Redis lease across processes.
//! Waiters poll Redis for the winner's token instead of fetching their own, so a cold start
//! of any number of workers costs one fetch. A send that reports a stale token invalidates
//! exactly that token (compare-and-delete), so a burst of failures causes one refresh.
//!
//! How the token and the lease are written in Redis is `store::token_record` and
//! `store::lease`; this module decides when to read, refresh and invalidate.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_redis::Pool;
use secrecy::SecretString;

use crate::admin::metrics as m;
use crate::config::{Config, TokenEndpoint};
use crate::store::lease::{self, Lease};
use crate::store::token_record;
pub use crate::store::token_record::{TokenInfo, TokenSource};
use crate::store::{Keys, StoreError};
use crate::wechat::client::{AccessToken, CallError, WechatClient};
use crate::wechat::errcode::{ErrorClass, classify_call};

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("no app `{0}` in the config")]
    UnknownApp(String),
    #[error(transparent)]
    Redis(#[from] StoreError),
    #[error(
        "app `{app}` (appid {appid}) is misconfigured: WeChat errcode {errcode} ({errmsg}); check its appid, secret and IP whitelist"
    )]
    Credential {
        app: String,
        appid: String,
        errcode: i64,
        errmsg: String,
    },
    #[error("token fetch for app `{app}` failed: {error}")]
    Fetch { app: String, error: CallError },
    #[error("gave up waiting for another worker's token refresh of app `{app}`")]
    WaitTimeout { app: String },
}

/// Labels a Redis failure of the token store with what it was doing.
fn redis<E: std::error::Error + Send + Sync + 'static>(
    action: &'static str,
) -> impl FnOnce(E) -> TokenError {
    move |e| TokenError::Redis(StoreError::new(action, e))
}

impl TokenInfo {
    fn usable(&self, now: u64, stale: Option<&AccessToken>) -> bool {
        now < self.expires_at_ms && stale != Some(&self.token)
    }

    fn fresh(&self, now: u64, stale: Option<&AccessToken>) -> bool {
        now < self.refresh_at_ms && self.usable(now, stale)
    }
}

struct AppSlot {
    name: String,
    appid: String,
    secret: SecretString,
    local: RwLock<Option<TokenInfo>>,
    flight: tokio::sync::Mutex<()>,
}

/// The token store for every configured app. Cheap to clone.
#[derive(Clone)]
pub struct TokenStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    keys: Keys,
    client: WechatClient,
    endpoint: TokenEndpoint,
    refresh_ahead: Duration,
    lock_ttl: Duration,
    apps: HashMap<String, AppSlot>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl TokenStore {
    /// Builds the store; fails when an app's secret cannot be read.
    pub fn new(config: &Config, pool: Pool, client: WechatClient) -> anyhow::Result<TokenStore> {
        let mut apps = HashMap::new();
        for (name, app) in &config.apps {
            let app = app.get_ref();
            let secret = app
                .secret()
                .map_err(|e| anyhow::anyhow!("[apps.{name}]: {e}"))?;
            apps.insert(
                name.clone(),
                AppSlot {
                    name: name.clone(),
                    appid: app.appid.clone(),
                    secret,
                    local: RwLock::new(None),
                    flight: tokio::sync::Mutex::new(()),
                },
            );
        }
        Ok(TokenStore {
            inner: Arc::new(Inner {
                pool,
                keys: Keys::new(&config.redis.key_prefix),
                client,
                endpoint: config.wechat.token_endpoint,
                refresh_ahead: config.wechat.refresh_ahead,
                lock_ttl: config.wechat.lock_ttl,
                apps,
            }),
        })
    }

    /// The configured app names.
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.inner.apps.keys().map(String::as_str)
    }

    /// The app's appid and secret, for `jscode2session`.
    pub fn credentials(&self, app: &str) -> Result<(&str, &SecretString), TokenError> {
        let slot = self.slot(app)?;
        Ok((&slot.appid, &slot.secret))
    }

    /// A valid token for the app. The hot path: no Redis round trip while the local copy is
    /// fresh.
    pub async fn get(&self, app: &str) -> Result<AccessToken, TokenError> {
        Ok(self.info(app, None).await?.token)
    }

    /// Like [`get`](Self::get), with the token's timing and origin (for `wxpush token`).
    pub async fn info(
        &self,
        app: &str,
        stale: Option<&AccessToken>,
    ) -> Result<TokenInfo, TokenError> {
        let slot = self.slot(app)?;
        if let Some(local) = self.local(slot, now_ms(), stale) {
            return Ok(local);
        }
        let _flight = slot.flight.lock().await;
        self.refresh(slot, stale).await
    }

    /// Called after a send answered 40001/40014/42001 with `stale`: deletes exactly that
    /// token (locally and in Redis) and returns a different, valid one.
    pub async fn replace_stale(
        &self,
        app: &str,
        stale: &AccessToken,
    ) -> Result<AccessToken, TokenError> {
        let slot = self.slot(app)?;
        {
            let mut local = slot.local.write().expect("token lock poisoned");
            if local.as_ref().is_some_and(|t| &t.token == stale) {
                *local = None;
            }
        }
        let mut conn = self.inner.pool.get().await.map_err(redis("connection"))?;
        let deleted =
            token_record::invalidate(&mut *conn, &self.inner.keys.token(&slot.appid), stale)
                .await
                .map_err(redis("token invalidation"))?;
        drop(conn);
        if deleted {
            metrics::counter!(m::TOKEN_INVALIDATIONS, "app" => slot.name.clone()).increment(1);
            tracing::info!(app = %slot.name, stale = %stale.fingerprint(), "stale access_token invalidated");
        }
        Ok(self.info(app, Some(stale)).await?.token)
    }

    /// Forces a new token now, whatever is cached (`wxpush token --refresh`).
    pub async fn force_refresh(&self, app: &str) -> Result<TokenInfo, TokenError> {
        let slot = self.slot(app)?;
        let current = self.info(app, None).await?.token;
        let _flight = slot.flight.lock().await;
        *slot.local.write().expect("token lock poisoned") = None;
        let mut conn = self.inner.pool.get().await.map_err(redis("connection"))?;
        token_record::invalidate(&mut *conn, &self.inner.keys.token(&slot.appid), &current)
            .await
            .map_err(redis("token invalidation"))?;
        drop(conn);
        self.refresh(slot, Some(&current)).await
    }

    fn slot(&self, app: &str) -> Result<&AppSlot, TokenError> {
        self.inner
            .apps
            .get(app)
            .ok_or_else(|| TokenError::UnknownApp(app.to_owned()))
    }

    fn local(&self, slot: &AppSlot, now: u64, stale: Option<&AccessToken>) -> Option<TokenInfo> {
        let local = slot.local.read().expect("token lock poisoned");
        local
            .as_ref()
            .filter(|t| t.fresh(now, stale))
            .map(|t| TokenInfo {
                source: TokenSource::Local,
                ..t.clone()
            })
    }

    fn remember(&self, slot: &AppSlot, info: &TokenInfo) {
        *slot.local.write().expect("token lock poisoned") = Some(info.clone());
    }

    /// The slow path, run by one task per app at a time.
    async fn refresh(
        &self,
        slot: &AppSlot,
        stale: Option<&AccessToken>,
    ) -> Result<TokenInfo, TokenError> {
        let inner = &self.inner;
        let token_key = inner.keys.token(&slot.appid);
        let lock_key = inner.keys.token_lock(&slot.appid);
        // Bounded: a holder that died is replaced after its lease lapses, so waiting longer
        // than a few leases means Redis or WeChat is unreachable.
        let deadline = Instant::now() + inner.lock_ttl * 3;
        let mut waited = false;
        loop {
            if let Some(local) = self.local(slot, now_ms(), stale) {
                return Ok(local);
            }
            let mut conn = inner.pool.get().await.map_err(redis("connection"))?;
            let stored = token_record::read(&mut *conn, &token_key)
                .await
                .map_err(redis("token read"))?;
            let now = now_ms();
            if let Some(info) = stored.as_ref().filter(|t| t.fresh(now, stale)) {
                self.remember(slot, info);
                return Ok(info.clone());
            }
            let lease = lease::try_acquire(&mut *conn, &lock_key, inner.lock_ttl)
                .await
                .map_err(redis("lease"))?;
            match lease {
                Some(lease) => {
                    // Someone may have stored a token between our read and our lease.
                    let again = token_record::read(&mut *conn, &token_key)
                        .await
                        .map_err(redis("token read"))?;
                    if let Some(info) = again.filter(|t| t.fresh(now_ms(), stale)) {
                        lease
                            .release(&mut *conn)
                            .await
                            .map_err(redis("lease release"))?;
                        self.remember(slot, &info);
                        return Ok(info);
                    }
                    drop(conn);
                    let fetched = self.fetch_and_store(slot, stale, &lease).await;
                    let mut conn = inner.pool.get().await.map_err(redis("connection"))?;
                    lease
                        .release(&mut *conn)
                        .await
                        .map_err(redis("lease release"))?;
                    match fetched? {
                        Some(info) => {
                            self.remember(slot, &info);
                            return Ok(info);
                        }
                        // We lost the lease while fetching; loop to read the winner's token.
                        None => continue,
                    }
                }
                None => {
                    // Another worker is refreshing. A still-valid token in its refresh
                    // window is good enough meanwhile.
                    if let Some(info) = stored.filter(|t| t.usable(now, stale)) {
                        return Ok(info);
                    }
                    if !waited {
                        waited = true;
                        metrics::counter!(m::TOKEN_LOCK_WAITS, "app" => slot.name.clone())
                            .increment(1);
                    }
                    drop(conn);
                    if Instant::now() > deadline {
                        return Err(TokenError::WaitTimeout {
                            app: slot.name.clone(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(10 + fastrand::u64(0..20))).await;
                }
            }
        }
    }

    /// Fetches from WeChat and stores the token if we still hold the lease. `Ok(None)` when
    /// the lease was lost meanwhile (the token is then discarded).
    async fn fetch_and_store(
        &self,
        slot: &AppSlot,
        stale: Option<&AccessToken>,
        lease: &Lease,
    ) -> Result<Option<TokenInfo>, TokenError> {
        let inner = &self.inner;
        let fetch = |force: bool| {
            inner
                .client
                .fetch_token(inner.endpoint, &slot.appid, &slot.secret, force)
        };
        let mut result = fetch(false).await;
        // The stable endpoint hands back the current token until it nears expiry; if that is
        // the very token that just failed, only a forced refresh replaces it.
        if inner.endpoint == TokenEndpoint::Stable
            && let (Ok(fetched), Some(stale)) = (&result, stale)
            && &fetched.token == stale
        {
            result = fetch(true).await;
        }
        let app_label = slot.name.clone();
        let fetched = match result {
            Ok(f) => {
                metrics::counter!(m::TOKEN_FETCHES, "app" => app_label, "result" => "ok")
                    .increment(1);
                f
            }
            Err(error) => {
                metrics::counter!(m::TOKEN_FETCHES, "app" => app_label, "result" => "error")
                    .increment(1);
                return Err(match (classify_call(&error), &error) {
                    (ErrorClass::Credential, CallError::WeChat { errcode, errmsg }) => {
                        TokenError::Credential {
                            app: slot.name.clone(),
                            appid: slot.appid.clone(),
                            errcode: *errcode,
                            errmsg: errmsg.clone(),
                        }
                    }
                    _ => TokenError::Fetch {
                        app: slot.name.clone(),
                        error,
                    },
                });
            }
        };
        let fetched_at_ms = now_ms();
        let lifetime = fetched.expires_in.as_millis() as u64;
        let expires_at_ms = fetched_at_ms + lifetime;
        // Refresh ahead of expiry, but never sooner than half the lifetime: a token that comes
        // back with little time left must not trigger a refresh on every read.
        let ahead = (inner.refresh_ahead.as_millis() as u64).min(lifetime / 2);
        let refresh_at_ms = expires_at_ms - ahead;
        let endpoint = match inner.endpoint {
            TokenEndpoint::Stable => "stable",
            TokenEndpoint::Classic => "classic",
        };
        let info = TokenInfo {
            token: fetched.token,
            expires_at_ms,
            refresh_at_ms,
            fetched_at_ms,
            endpoint: endpoint.to_owned(),
            source: TokenSource::Fetched,
        };
        let mut conn = inner.pool.get().await.map_err(redis("connection"))?;
        let stored =
            token_record::store_if_owner(&mut *conn, &inner.keys.token(&slot.appid), lease, &info)
                .await
                .map_err(redis("token write"))?;
        if !stored {
            tracing::warn!(app = %slot.name, "token refresh outlived its lease; discarding the fetched token");
            return Ok(None);
        }
        tracing::info!(app = %slot.name, token = %info.token.fingerprint(), expires_in_s = fetched.expires_in.as_secs(), "access_token refreshed");
        Ok(Some(info))
    }
}
