//! The shared access_token: one per app, kept in Redis, refreshed by one worker at a time.
//!
//! Reading a token costs nothing on the hot path: each process keeps a local copy and goes
//! to Redis only when it has none, or the copy is due for refresh. Refreshing is single-flight
//! twice over: a tokio mutex per app inside the process, a Redis lease across processes.
//! Waiters poll Redis for the winner's token instead of fetching their own, so a cold start
//! of any number of workers costs one fetch. A send that reports a stale token invalidates
//! exactly that token (compare-and-delete), so a burst of failures causes one refresh.
//!
//! Time is Redis's: the stored expiry and refresh times come from Redis's clock, every read
//! returns Redis's time with the record, and the local copy keeps the pair (Redis's time, this
//! process's monotonic clock) from its last Redis call to know Redis's time without asking.
//! A worker whose wall clock is off therefore cannot make anyone treat a token as fresh or
//! stale wrongly.
//!
//! How the token and the lease are written in Redis is `store::token_record` and
//! `store::lease`; this module decides when to read, refresh and invalidate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::store::{Connection, Pool};
use backon::{BackoffBuilder, ExponentialBuilder};
use secrecy::SecretString;

use crate::admin::metrics as m;
use crate::config::{Config, TokenEndpoint};
use crate::store::lease::{self, Lease};
use crate::store::token_record::{self, NewToken};
pub use crate::store::token_record::{TokenInfo, TokenSource};
use crate::store::{Keys, StoreError};
use crate::wechat::client::{AccessToken, CallError, WechatClient};
use crate::wechat::errcode::{
    Action, ErrorClass, action_of_token_fetch, classify_token_fetch_call,
};

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
    #[error(
        "app `{app}` used up its daily access_token quota: WeChat errcode {errcode} ({errmsg}); its sends wait until a fetch succeeds again"
    )]
    Quota {
        app: String,
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
    /// `now` is Redis's time (Unix ms), as the record's times are.
    fn usable(&self, now: u64, stale: Option<&AccessToken>) -> bool {
        now < self.expires_at_ms && stale != Some(&self.token)
    }

    fn fresh(&self, now: u64, stale: Option<&AccessToken>) -> bool {
        now < self.refresh_at_ms && self.usable(now, stale)
    }
}

/// This process's clock, used only to measure how long ago Redis's clock was read: never
/// compared with a time from Redis. Monotonic, so wall-clock steps do not move it either.
struct LocalClock {
    origin: Instant,
    /// Shifts every reading; 0 except in tests that prove nothing depends on it.
    skew_ms: i64,
}

impl LocalClock {
    fn now_ms(&self) -> i64 {
        self.origin.elapsed().as_millis() as i64 + self.skew_ms
    }
}

/// Redis's time as last heard, and this process's clock just before it asked: Redis's time
/// now is at least `redis_ms` plus the local time elapsed since `local_ms` (an estimate that
/// errs late by up to one round trip, so a token is treated as expired early, never late).
#[derive(Debug, Clone, Copy)]
struct RedisNow {
    redis_ms: u64,
    local_ms: i64,
}

impl RedisNow {
    fn at(&self, local_now_ms: i64) -> u64 {
        let elapsed = local_now_ms.saturating_sub(self.local_ms).max(0) as u64;
        self.redis_ms.saturating_add(elapsed)
    }
}

/// The process's copy of an app's token, with the Redis time it was last checked against.
struct LocalCopy {
    info: TokenInfo,
    heard: RedisNow,
}

/// A refresh that failed, for the callers that were queued behind it.
struct Failure {
    at: Instant,
    error: TokenError,
}

struct AppSlot {
    name: String,
    appid: String,
    secret: SecretString,
    local: RwLock<Option<LocalCopy>>,
    flight: tokio::sync::Mutex<()>,
    /// How the last refresh of this process ended, if it failed.
    last_failure: Mutex<Option<Failure>>,
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
    clock: LocalClock,
    apps: HashMap<String, AppSlot>,
}

/// This host's wall clock in Unix ms, for display (`wxpush token`). Whether a token is fresh
/// is decided on Redis's clock, never on this one.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A waiter's first poll of Redis comes after 10–20 ms; each wait doubles, up to 125–250 ms
/// (backon's jitter adds up to the wait again), so a long refresh costs a few polls, not
/// one every 20 ms.
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(125);

fn poll_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(POLL_FIRST)
        .with_max_delay(POLL_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
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
                    last_failure: Mutex::new(None),
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
                clock: LocalClock {
                    origin: Instant::now(),
                    skew_ms: 0,
                },
                apps,
            }),
        })
    }

    /// For tests: a store whose local clock reads `skew_ms` off, as on a worker whose clock
    /// is wrong. Freshness is judged on Redis's clock, so this must change nothing.
    #[doc(hidden)]
    pub fn with_local_clock_skew(
        config: &Config,
        pool: Pool,
        client: WechatClient,
        skew_ms: i64,
    ) -> anyhow::Result<TokenStore> {
        let mut store = TokenStore::new(config, pool, client)?;
        Arc::get_mut(&mut store.inner)
            .expect("a new store is not shared yet")
            .clock
            .skew_ms = skew_ms;
        Ok(store)
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

    /// The app's token if this process already holds a fresh one; never fetches (for
    /// background work that must not add token fetches of its own).
    pub fn cached(&self, app: &str) -> Option<AccessToken> {
        let slot = self.slot(app).ok()?;
        self.local(slot, None).map(|info| info.token)
    }

    /// Like [`get`](Self::get), with the token's timing and origin (for `wxpush token`).
    pub async fn info(
        &self,
        app: &str,
        stale: Option<&AccessToken>,
    ) -> Result<TokenInfo, TokenError> {
        let slot = self.slot(app)?;
        if let Some(local) = self.local(slot, stale) {
            return Ok(local);
        }
        let arrived = Instant::now();
        let _flight = slot.flight.lock().await;
        if let Some(local) = self.local(slot, stale) {
            return Ok(local);
        }
        // A refresh that failed while we queued for the mutex is our answer too: N callers
        // behind a failing fetch cost one fetch, not N in a row.
        if let Some(error) = failed_since(slot, arrived) {
            return Err(error);
        }
        self.refresh_noted(slot, stale).await
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
            if local.as_ref().is_some_and(|t| &t.info.token == stale) {
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
        self.refresh_noted(slot, Some(&current)).await
    }

    fn slot(&self, app: &str) -> Result<&AppSlot, TokenError> {
        self.inner
            .apps
            .get(app)
            .ok_or_else(|| TokenError::UnknownApp(app.to_owned()))
    }

    /// The local copy, if it is fresh by Redis's time as this process reckons it.
    fn local(&self, slot: &AppSlot, stale: Option<&AccessToken>) -> Option<TokenInfo> {
        let local = slot.local.read().expect("token lock poisoned");
        let now_local = self.inner.clock.now_ms();
        local
            .as_ref()
            .filter(|t| t.info.fresh(t.heard.at(now_local), stale))
            .map(|t| TokenInfo {
                source: TokenSource::Local,
                ..t.info.clone()
            })
    }

    fn remember(&self, slot: &AppSlot, info: &TokenInfo, heard: RedisNow) {
        *slot.local.write().expect("token lock poisoned") = Some(LocalCopy {
            info: info.clone(),
            heard,
        });
    }

    /// Reads the stored token with Redis's time.
    async fn read(
        &self,
        conn: &mut Connection,
        key: &str,
    ) -> Result<(Option<TokenInfo>, RedisNow), TokenError> {
        let local_ms = self.inner.clock.now_ms();
        let (info, redis_ms) = token_record::read(&mut **conn, key)
            .await
            .map_err(redis("token read"))?;
        Ok((info, RedisNow { redis_ms, local_ms }))
    }

    /// [`refresh`](Self::refresh), noting how it ended for the callers queued behind it.
    async fn refresh_noted(
        &self,
        slot: &AppSlot,
        stale: Option<&AccessToken>,
    ) -> Result<TokenInfo, TokenError> {
        let result = self.refresh(slot, stale).await;
        *slot.last_failure.lock().expect("token lock poisoned") =
            result.as_ref().err().map(|error| Failure {
                at: Instant::now(),
                error: error.clone(),
            });
        result
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
        let mut polls = poll_delays();
        let mut waited = false;
        loop {
            if let Some(local) = self.local(slot, stale) {
                return Ok(local);
            }
            let mut conn = inner.pool.get().await.map_err(redis("connection"))?;
            let (stored, heard) = self.read(&mut conn, &token_key).await?;
            let now = heard.redis_ms;
            if let Some(info) = stored.as_ref().filter(|t| t.fresh(now, stale)) {
                self.remember(slot, info, heard);
                return Ok(info.clone());
            }
            // Every turn ends here once the deadline has passed, whether it waited for
            // another worker or lost its own lease.
            if Instant::now() >= deadline {
                return Err(TokenError::WaitTimeout {
                    app: slot.name.clone(),
                });
            }
            let lease = lease::try_acquire(&mut *conn, &lock_key, inner.lock_ttl)
                .await
                .map_err(redis("lease"))?;
            match lease {
                Some(lease) => {
                    let held = HeldLease {
                        lease: Some(lease),
                        pool: inner.pool.clone(),
                        app: slot.name.clone(),
                    };
                    let outcome = self.refresh_holding(slot, stale, held.lease(), conn).await;
                    // On every path out, error or not; a cancelled task releases from `Drop`.
                    held.release().await;
                    if let Some(info) = outcome? {
                        return Ok(info);
                    }
                    // We lost the lease while fetching; go round to read the winner's token.
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
                    let left = deadline.saturating_duration_since(Instant::now());
                    let pause = polls.next().unwrap_or(POLL_MAX).min(left);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// The part of a refresh done under the lease. `Ok(None)` when the lease was lost.
    async fn refresh_holding(
        &self,
        slot: &AppSlot,
        stale: Option<&AccessToken>,
        lease: &Lease,
        mut conn: Connection,
    ) -> Result<Option<TokenInfo>, TokenError> {
        // Someone may have stored a token between our read and our lease.
        let (again, heard) = self
            .read(&mut conn, &self.inner.keys.token(&slot.appid))
            .await?;
        if let Some(info) = again.filter(|t| t.fresh(heard.redis_ms, stale)) {
            self.remember(slot, &info, heard);
            return Ok(Some(info));
        }
        drop(conn);
        self.fetch_and_store(slot, stale, lease).await
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
        let count = |result: &'static str| {
            metrics::counter!(m::TOKEN_FETCHES, "app" => slot.name.clone(), "result" => result)
                .increment(1);
        };
        let lost = || {
            tracing::warn!(app = %slot.name, "token refresh outlived its lease; discarding the fetched token");
        };
        let mut started = Instant::now();
        let mut result = fetch(false).await;
        // The stable endpoint hands back the current token until it nears expiry; if that is
        // the very token that just failed, only a forced refresh replaces it. That is a
        // second call under the same lease: renew the lease for it first, and force nothing
        // once the lease is lost (its new holder is refreshing, and a forced fetch would
        // kill the token it stores).
        if inner.endpoint == TokenEndpoint::Stable
            && let (Ok(fetched), Some(stale)) = (&result, stale)
            && &fetched.token == stale
        {
            let renewed = async {
                let mut conn = inner.pool.get().await.map_err(redis("connection"))?;
                lease
                    .extend(&mut *conn, inner.lock_ttl)
                    .await
                    .map_err(redis("lease"))
            }
            .await;
            match renewed {
                Ok(true) => {
                    started = Instant::now();
                    result = fetch(true).await;
                }
                Ok(false) => {
                    count("ok");
                    lost();
                    return Ok(None);
                }
                Err(e) => {
                    count("ok");
                    return Err(e);
                }
            }
        }
        let fetched = match result {
            Ok(f) => {
                count("ok");
                f
            }
            Err(error) => {
                count("error");
                return Err(match (classify_token_fetch_call(&error), &error) {
                    (ErrorClass::Credential, CallError::WeChat { errcode, errmsg }) => {
                        TokenError::Credential {
                            app: slot.name.clone(),
                            appid: slot.appid.clone(),
                            errcode: *errcode,
                            errmsg: errmsg.clone(),
                        }
                    }
                    (_, CallError::WeChat { errcode, errmsg })
                        if action_of_token_fetch(&error) == Action::WaitForQuota =>
                    {
                        TokenError::Quota {
                            app: slot.name.clone(),
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
        let endpoint = match inner.endpoint {
            TokenEndpoint::Stable => "stable",
            TokenEndpoint::Classic => "classic",
        };
        let mut conn = inner.pool.get().await.map_err(redis("connection"))?;
        // The lifetime counts from when we asked, not from when the answer came: WeChat's
        // clock started no earlier, so the stored expiry is never later than WeChat's.
        let lifetime = fetched.expires_in.saturating_sub(started.elapsed());
        // Refresh ahead of expiry, but never sooner than half the lifetime: a token that comes
        // back with little time left must not trigger a refresh on every read.
        let refresh_ahead = inner.refresh_ahead.min(lifetime / 2);
        let local_ms = inner.clock.now_ms();
        let stored = token_record::store_if_owner(
            &mut *conn,
            &inner.keys.token(&slot.appid),
            lease,
            &NewToken {
                token: &fetched.token,
                lifetime,
                refresh_ahead,
                endpoint,
            },
        )
        .await
        .map_err(redis("token write"))?;
        let Some(info) = stored else {
            lost();
            return Ok(None);
        };
        tracing::info!(app = %slot.name, token = %info.token.fingerprint(), expires_in_s = fetched.expires_in.as_secs(), "access_token refreshed");
        self.remember(
            slot,
            &info,
            RedisNow {
                redis_ms: info.fetched_at_ms,
                local_ms,
            },
        );
        Ok(Some(info))
    }
}

/// The error of a refresh that failed after `arrived`, i.e. while the caller queued for it.
fn failed_since(slot: &AppSlot, arrived: Instant) -> Option<TokenError> {
    let last = slot.last_failure.lock().expect("token lock poisoned");
    last.as_ref()
        .filter(|f| f.at >= arrived)
        .map(|f| f.error.clone())
}

/// The refresh lease while a refresh holds it. [`HeldLease::release`] releases it; if the
/// task is cancelled first (its future dropped mid-fetch), `Drop` releases it from a
/// spawned task. Either way best effort: a failed release is logged, and the lease's TTL
/// (`wechat.lock_ttl`) bounds it.
struct HeldLease {
    lease: Option<Lease>,
    pool: Pool,
    app: String,
}

impl HeldLease {
    fn lease(&self) -> &Lease {
        self.lease.as_ref().expect("held until released")
    }

    async fn release(mut self) {
        if let Some(lease) = &self.lease {
            release_lease(&self.pool, lease, &self.app).await;
        }
        // Only now: a release cancelled halfway is done again by `Drop`.
        self.lease = None;
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            let app = std::mem::take(&mut self.app);
            runtime.spawn(async move { release_lease(&pool, &lease, &app).await });
        }
    }
}

async fn release_lease(pool: &Pool, lease: &Lease, app: &str) {
    let released = async {
        let mut conn = pool.get().await.map_err(redis("connection"))?;
        lease
            .release(&mut *conn)
            .await
            .map_err(redis("lease release"))
    }
    .await;
    if let Err(e) = released {
        tracing::warn!(app = %app, error = %e, "could not release the token refresh lease; other workers wait until it lapses (wechat.lock_ttl)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_back_off_from_10_ms_to_at_most_250_ms() {
        for _ in 0..100 {
            let delays: Vec<Duration> = poll_delays().take(40).collect();
            let first = delays[0];
            assert!(
                (POLL_FIRST..POLL_FIRST * 2).contains(&first),
                "first poll after {first:?}"
            );
            assert!(
                delays.iter().all(|d| *d < Duration::from_millis(250)),
                "{delays:?}"
            );
            assert!(
                delays[6..].iter().all(|d| *d >= POLL_MAX),
                "grows to the cap: {delays:?}"
            );
            // Waiting out a whole 15 s lease (the default lock_ttl) takes at most ~130 polls
            // instead of ~750 at a fixed 10–30 ms.
            let mut waited = Duration::ZERO;
            let polls = poll_delays()
                .take_while(|d| {
                    waited += *d;
                    waited < Duration::from_secs(15)
                })
                .count();
            assert!(polls <= 130, "{polls} polls");
        }
    }

    #[test]
    fn redis_time_is_estimated_from_elapsed_local_time_whatever_the_local_clock_reads() {
        for skew in [-3_600_000_i64, 0, 3_600_000, i64::from(i32::MAX)] {
            let heard = RedisNow {
                redis_ms: 1_800_000_000_000,
                local_ms: 5_000 + skew,
            };
            assert_eq!(heard.at(5_000 + skew), 1_800_000_000_000);
            assert_eq!(heard.at(6_500 + skew), 1_800_000_001_500);
            // A local clock that reads earlier than at the anchor (it cannot, being
            // monotonic, but the estimate must never go back) gives the anchor.
            assert_eq!(heard.at(4_000 + skew), 1_800_000_000_000);
        }
    }
}
