//! access_token life cycles as WeChat runs them: classic tokens superseded on every fetch,
//! stable tokens shared until they near expiry, forced refreshes, daily quotas.
//!
//! Pure logic with the clock passed in, so every timing rule is unit-tested without sleeping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DAY: Duration = Duration::from_secs(24 * 3600);
const TOKEN_LEN: usize = 136;
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// The timing and quota rules, copied out of `MockOptions`.
#[derive(Debug, Clone)]
pub(crate) struct TokenRules {
    pub ttl: Duration,
    pub classic_overlap: Duration,
    pub stable_rotate_before: Duration,
    pub force_refresh_min_interval: Duration,
    pub force_refresh_daily_limit: u32,
    pub classic_daily_limit: u32,
}

/// A token handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issued {
    pub token: String,
    pub expires_in: u64,
    /// False when a stable call answered with the token it already had.
    pub minted: bool,
}

/// Why a token fetch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaError {
    /// 45009: the daily quota is used up.
    Daily,
    /// 45011: forced refreshes too close together.
    TooFrequent,
}

/// Why a token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// 40001: never issued, or superseded / force-refreshed away.
    Invalid,
    /// 42001: past its lifetime, or expired by `expire_all`.
    Expired,
}

struct TokenInfo {
    appid: Arc<str>,
    expires_at: Instant,
    revoked_at: Option<Instant>,
    epoch: u64,
}

#[derive(Default)]
struct DayQuota {
    start: Option<Instant>,
    used: u32,
}

impl DayQuota {
    /// Takes one unit of today's quota. "Today" is the 24 h since the first call, which is
    /// what matters to a caller without tying tests to the wall-clock midnight.
    fn take(&mut self, now: Instant, limit: u32) -> bool {
        if self
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= DAY)
        {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used >= limit {
            return false;
        }
        self.used += 1;
        true
    }
}

#[derive(Default)]
struct AppTokens {
    classic_current: Option<String>,
    classic_quota: DayQuota,
    /// The token stable calls hand out; the others in `stable_live` were rotated out but
    /// stay valid until they expire (unless a forced refresh kills them).
    stable_current: Option<String>,
    stable_live: Vec<String>,
    last_force: Option<Instant>,
    force_quota: DayQuota,
}

pub(crate) struct TokenStore {
    rules: TokenRules,
    tokens: HashMap<String, TokenInfo>,
    apps: HashMap<String, AppTokens>,
    /// Bumped by `expire_all`: tokens from an older epoch are expired.
    epoch: u64,
    purge_at_len: usize,
}

const PURGE_MIN: usize = 4096;

impl TokenStore {
    pub(crate) fn new(rules: TokenRules) -> TokenStore {
        TokenStore {
            rules,
            tokens: HashMap::new(),
            apps: HashMap::new(),
            epoch: 0,
            purge_at_len: PURGE_MIN,
        }
    }

    /// `GET /cgi-bin/token`: always a new token; the previous one lives on for the overlap.
    pub(crate) fn classic(&mut self, appid: &str, now: Instant) -> Result<Issued, QuotaError> {
        let limit = self.rules.classic_daily_limit;
        let app = self.apps.entry(appid.to_owned()).or_default();
        if !app.classic_quota.take(now, limit) {
            return Err(QuotaError::Daily);
        }
        let previous = app.classic_current.take();
        let token = self.mint(appid, now);
        if let Some(old) = previous.and_then(|t| self.tokens.get_mut(&t)) {
            let cutoff = now + self.rules.classic_overlap;
            // A token that would expire within the overlap anyway just expires (42001).
            if cutoff < old.expires_at {
                old.revoked_at = Some(old.revoked_at.map_or(cutoff, |r| r.min(cutoff)));
            }
        }
        self.app(appid).classic_current = Some(token.clone());
        Ok(Issued {
            token,
            expires_in: self.rules.ttl.as_secs(),
            minted: true,
        })
    }

    /// `POST /cgi-bin/stable_token`.
    pub(crate) fn stable(
        &mut self,
        appid: &str,
        force_refresh: bool,
        now: Instant,
    ) -> Result<Issued, QuotaError> {
        if force_refresh {
            return self.force_refresh(appid, now);
        }
        // A ttl shorter than the rotation margin (common in tests) would mint on every call;
        // capping the margin at half the ttl keeps "same token until it nears expiry" true.
        let rotate_before = self.rules.stable_rotate_before.min(self.rules.ttl / 2);
        let current = self
            .apps
            .get(appid)
            .and_then(|a| a.stable_current.as_ref())
            .and_then(|t| self.tokens.get(t).map(|info| (t, info)));
        if let Some((token, info)) = current {
            let fresh = info.epoch == self.epoch && info.revoked_at.is_none();
            let left = info.expires_at.saturating_duration_since(now);
            if fresh && left > rotate_before {
                return Ok(Issued {
                    token: token.clone(),
                    expires_in: left.as_secs(),
                    minted: false,
                });
            }
        }
        Ok(self.new_stable(appid, now))
    }

    fn force_refresh(&mut self, appid: &str, now: Instant) -> Result<Issued, QuotaError> {
        let (limit, min_interval) = (
            self.rules.force_refresh_daily_limit,
            self.rules.force_refresh_min_interval,
        );
        let app = self.apps.entry(appid.to_owned()).or_default();
        if app
            .last_force
            .is_some_and(|last| now.saturating_duration_since(last) < min_interval)
        {
            return Err(QuotaError::TooFrequent);
        }
        if !app.force_quota.take(now, limit) {
            return Err(QuotaError::Daily);
        }
        app.last_force = Some(now);
        // Every stable token still in use dies, not only the current one: a forced refresh
        // exists to get rid of whatever the callers hold.
        for token in std::mem::take(&mut app.stable_live) {
            if let Some(info) = self.tokens.get_mut(&token) {
                info.revoked_at = Some(info.revoked_at.map_or(now, |r| r.min(now)));
            }
        }
        Ok(self.new_stable(appid, now))
    }

    fn new_stable(&mut self, appid: &str, now: Instant) -> Issued {
        let token = self.mint(appid, now);
        let tokens = &self.tokens;
        let app = self.apps.entry(appid.to_owned()).or_default();
        app.stable_live
            .retain(|t| tokens.get(t).is_some_and(|info| info.expires_at > now));
        app.stable_live.push(token.clone());
        app.stable_current = Some(token.clone());
        Issued {
            token,
            expires_in: self.rules.ttl.as_secs(),
            minted: true,
        }
    }

    /// Whether a token may be used for a send, and for which app.
    pub(crate) fn check(&self, token: &str, now: Instant) -> Result<Arc<str>, Stale> {
        let info = self.tokens.get(token).ok_or(Stale::Invalid)?;
        if info.epoch != self.epoch {
            return Err(Stale::Expired);
        }
        if info.revoked_at.is_some_and(|r| r <= now) {
            return Err(Stale::Invalid);
        }
        if info.expires_at <= now {
            return Err(Stale::Expired);
        }
        Ok(info.appid.clone())
    }

    /// Every token issued so far answers 42001 from now on; the next fetches mint new ones.
    pub(crate) fn expire_all(&mut self) {
        self.epoch += 1;
        for app in self.apps.values_mut() {
            app.classic_current = None;
            app.stable_current = None;
            app.stable_live.clear();
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = TokenStore::new(self.rules.clone());
    }

    /// clear_quota for one app: its token fetch counts start again from zero.
    pub(crate) fn clear_quota(&mut self, appid: &str) {
        if let Some(app) = self.apps.get_mut(appid) {
            app.classic_quota = DayQuota::default();
            app.force_quota = DayQuota::default();
        }
    }

    /// What 00:00 UTC+8 does to every app's token fetch counts.
    pub(crate) fn new_day(&mut self) {
        for app in self.apps.values_mut() {
            app.classic_quota = DayQuota::default();
            app.force_quota = DayQuota::default();
        }
    }

    fn app(&mut self, appid: &str) -> &mut AppTokens {
        self.apps.entry(appid.to_owned()).or_default()
    }

    fn mint(&mut self, appid: &str, now: Instant) -> String {
        if self.tokens.len() >= self.purge_at_len {
            self.purge(now);
        }
        let token = random_token();
        self.tokens.insert(
            token.clone(),
            TokenInfo {
                appid: Arc::from(appid),
                expires_at: now + self.rules.ttl,
                revoked_at: None,
                epoch: self.epoch,
            },
        );
        token
    }

    /// Forgets tokens long past their expiry so a long benchmark does not grow the map
    /// forever; recently expired ones are kept so they still answer 42001, not 40001.
    fn purge(&mut self, now: Instant) {
        let grace = self.rules.ttl;
        self.tokens
            .retain(|_, info| now.saturating_duration_since(info.expires_at) < grace);
        // Doubling the threshold keeps purging amortised O(1) even with many live tokens.
        self.purge_at_len = (self.tokens.len() * 2).max(PURGE_MIN);
    }
}

/// A token shaped like WeChat's: 136 characters of [A-Za-z0-9_-].
pub(crate) fn random_token() -> String {
    (0..TOKEN_LEN)
        .map(|_| TOKEN_CHARS[fastrand::usize(..TOKEN_CHARS.len())] as char)
        .collect()
}

/// Whether every character could appear in a real token (else the answer is 40014).
pub(crate) fn well_formed(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> TokenRules {
        TokenRules {
            ttl: Duration::from_secs(7200),
            classic_overlap: Duration::from_secs(300),
            stable_rotate_before: Duration::from_secs(300),
            force_refresh_min_interval: Duration::from_secs(30),
            force_refresh_daily_limit: 20,
            classic_daily_limit: 2000,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn tokens_look_like_wechat_tokens() {
        let t = random_token();
        assert_eq!(t.len(), 136);
        assert!(well_formed(&t));
        assert!(!well_formed("abc def"));
        assert!(!well_formed("abc%2F"));
        assert_ne!(random_token(), t);
    }

    #[test]
    fn classic_fetch_supersedes_the_previous_token_after_the_overlap() {
        let mut s = TokenStore::new(rules());
        let t0 = Instant::now();
        let a = s.classic("app", t0).unwrap();
        assert_eq!(a.expires_in, 7200);
        let b = s.classic("app", t0 + secs(10)).unwrap();
        assert_ne!(a.token, b.token);
        assert!(s.check(&a.token, t0 + secs(309)).is_ok());
        assert_eq!(s.check(&a.token, t0 + secs(310)), Err(Stale::Invalid));
        assert!(s.check(&b.token, t0 + secs(310)).is_ok());
        assert_eq!(s.check(&b.token, t0 + secs(7210)), Err(Stale::Expired));
    }

    #[test]
    fn classic_token_near_expiry_expires_rather_than_being_revoked() {
        let mut s = TokenStore::new(rules());
        let t0 = Instant::now();
        let a = s.classic("app", t0).unwrap();
        s.classic("app", t0 + secs(7000)).unwrap();
        assert!(s.check(&a.token, t0 + secs(7199)).is_ok());
        assert_eq!(s.check(&a.token, t0 + secs(7200)), Err(Stale::Expired));
    }

    #[test]
    fn classic_daily_quota() {
        let mut s = TokenStore::new(TokenRules {
            classic_daily_limit: 2,
            ..rules()
        });
        let t0 = Instant::now();
        assert!(s.classic("app", t0).is_ok());
        assert!(s.classic("app", t0).is_ok());
        assert_eq!(s.classic("app", t0), Err(QuotaError::Daily));
        assert!(s.classic("other", t0).is_ok(), "quota is per app");
        assert!(s.classic("app", t0 + DAY).is_ok(), "a new day");
    }

    #[test]
    fn clear_quota_and_new_day_reset_fetch_counts() {
        let mut s = TokenStore::new(TokenRules {
            classic_daily_limit: 1,
            force_refresh_daily_limit: 1,
            force_refresh_min_interval: Duration::ZERO,
            ..rules()
        });
        let t0 = Instant::now();
        s.classic("app", t0).unwrap();
        s.stable("app", true, t0).unwrap();
        assert_eq!(s.classic("app", t0), Err(QuotaError::Daily));
        assert_eq!(s.stable("app", true, t0), Err(QuotaError::Daily));
        s.clear_quota("app");
        assert!(s.classic("app", t0).is_ok());
        assert!(s.stable("app", true, t0).is_ok());
        s.new_day();
        assert!(s.classic("app", t0).is_ok());
        assert!(s.stable("app", true, t0).is_ok());
    }

    #[test]
    fn stable_returns_the_same_token_until_it_nears_expiry() {
        let mut s = TokenStore::new(rules());
        let t0 = Instant::now();
        let a = s.stable("app", false, t0).unwrap();
        assert!(a.minted);
        let again = s.stable("app", false, t0 + secs(100)).unwrap();
        assert_eq!(again.token, a.token);
        assert!(!again.minted);
        assert_eq!(again.expires_in, 7100);
        // 299 s left: rotate, the old one stays valid to its own expiry.
        let b = s.stable("app", false, t0 + secs(6901)).unwrap();
        assert_ne!(b.token, a.token);
        assert!(b.minted);
        assert!(s.check(&a.token, t0 + secs(7199)).is_ok());
        assert_eq!(s.check(&a.token, t0 + secs(7200)), Err(Stale::Expired));
        assert_eq!(
            s.stable("app", false, t0 + secs(7000)).unwrap().token,
            b.token
        );
    }

    #[test]
    fn stable_rotation_margin_is_capped_by_a_short_ttl() {
        let mut s = TokenStore::new(TokenRules {
            ttl: secs(4),
            ..rules()
        });
        let t0 = Instant::now();
        let a = s.stable("app", false, t0).unwrap();
        assert_eq!(s.stable("app", false, t0 + secs(1)).unwrap().token, a.token);
        assert_ne!(s.stable("app", false, t0 + secs(2)).unwrap().token, a.token);
    }

    #[test]
    fn force_refresh_kills_the_current_token_and_is_rate_limited() {
        let mut s = TokenStore::new(TokenRules {
            force_refresh_daily_limit: 2,
            ..rules()
        });
        let t0 = Instant::now();
        let a = s.stable("app", false, t0).unwrap();
        let b = s.stable("app", true, t0).unwrap();
        assert_ne!(a.token, b.token);
        assert_eq!(s.check(&a.token, t0), Err(Stale::Invalid));
        assert_eq!(s.stable("app", false, t0).unwrap().token, b.token);
        assert_eq!(
            s.stable("app", true, t0 + secs(29)),
            Err(QuotaError::TooFrequent)
        );
        assert!(
            s.check(&b.token, t0 + secs(29)).is_ok(),
            "refused force keeps it"
        );
        let c = s.stable("app", true, t0 + secs(30)).unwrap();
        assert_eq!(s.check(&b.token, t0 + secs(30)), Err(Stale::Invalid));
        assert!(s.check(&c.token, t0 + secs(30)).is_ok());
        assert_eq!(s.stable("app", true, t0 + secs(60)), Err(QuotaError::Daily));
    }

    #[test]
    fn stable_and_classic_are_independent() {
        let mut s = TokenStore::new(TokenRules {
            classic_overlap: Duration::ZERO,
            ..rules()
        });
        let t0 = Instant::now();
        let st = s.stable("app", false, t0).unwrap();
        let c1 = s.classic("app", t0).unwrap();
        let c2 = s.classic("app", t0).unwrap();
        assert_eq!(s.check(&c1.token, t0), Err(Stale::Invalid));
        assert!(s.check(&st.token, t0).is_ok());
        s.stable("app", true, t0).unwrap();
        assert!(s.check(&c2.token, t0).is_ok());
        assert_eq!(&*s.check(&c2.token, t0).unwrap(), "app");
    }

    #[test]
    fn expire_all_expires_everything_and_next_fetches_mint() {
        let mut s = TokenStore::new(rules());
        let t0 = Instant::now();
        let st = s.stable("app", false, t0).unwrap();
        let c = s.classic("app", t0).unwrap();
        s.expire_all();
        assert_eq!(s.check(&st.token, t0), Err(Stale::Expired));
        assert_eq!(s.check(&c.token, t0), Err(Stale::Expired));
        let st2 = s.stable("app", false, t0).unwrap();
        assert!(st2.minted);
        assert!(s.check(&st2.token, t0).is_ok());
        assert_eq!(s.check("nope", t0), Err(Stale::Invalid));
    }

    #[test]
    fn purge_forgets_only_long_expired_tokens() {
        let mut s = TokenStore::new(TokenRules {
            ttl: secs(10),
            classic_daily_limit: u32::MAX,
            ..rules()
        });
        let t0 = Instant::now();
        let old = s.classic("app", t0).unwrap();
        for _ in 0..PURGE_MIN - 2 {
            s.classic("app", t0).unwrap();
        }
        let recent = s.classic("app", t0 + secs(15)).unwrap();
        assert_eq!(s.tokens.len(), PURGE_MIN);
        assert_eq!(s.check(&old.token, t0 + secs(15)), Err(Stale::Expired));
        // This mint purges: the t0 tokens expired 15 s ago (more than a ttl), `recent` just now.
        s.classic("app", t0 + secs(25)).unwrap();
        assert_eq!(s.tokens.len(), 2);
        assert_eq!(s.check(&old.token, t0 + secs(25)), Err(Stale::Invalid));
        assert_eq!(s.check(&recent.token, t0 + secs(25)), Err(Stale::Expired));
    }
}
