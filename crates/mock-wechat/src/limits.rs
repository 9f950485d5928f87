//! The per-app limits on subscribe/send: the daily quota (45009), the per-second rate
//! (45011), and the monthly allowance of `clear_quota` resets (48006).
//!
//! Pure logic with the clock passed in (Unix milliseconds), so every rule is unit-tested
//! without sleeping.
//!
//! # Sources
//!
//! - Daily quota: the subscribe-message guide, step 3 ("次数限制：开通支付能力的小程序下发上限是
//!   3kw/日，没开通的是1kw/日"), hence the default of 10,000,000 sends a day:
//!   <https://developers.weixin.qq.com/miniprogram/dev/framework/open-ability/subscribe-message.html>
//! - The day: quotas come back at 00:00 China time (UTC+8, no daylight saving), which is
//!   when [`china_day`] changes.
//! - get_api_quota (`POST /cgi-bin/openapi/quota/get`, `quota.{daily_limit,used,remain}`,
//!   errcodes 76021 "cgi_path not found, please check", 76022 "could not use this cgi_path,
//!   no permission" for `/sns/...` paths, 76003 for a path without its leading `/`):
//!   <https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/openApi-mgnt/getApiQuota.html>
//! - clear_quota (`POST /cgi-bin/clear_quota {"appid"}`, "每个帐号每月共10次清零操作机会", 48006
//!   "forbid to clear quota because of reaching the limit"):
//!   <https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/openApi-mgnt/clearQuota.html>
//!
//! # Readings where the documentation leaves a choice
//!
//! - The quota counts accepted sends only: a send refused for any reason (bad body, no
//!   subscription, rate) spends nothing, so `used` equals the sends WeChat delivered.
//! - The rate is a sliding window: a send is refused when the app already had `rate`
//!   accepted sends in the 1000 ms before it. So no 1-second window, wherever it starts,
//!   ever holds more than `rate` accepted sends, which is what a test measuring the
//!   recorded send timestamps checks. WeChat's errmsg speaks of a minute; its real window
//!   is not documented.
//! - A clear resets the app's counts of every API (sends and token fetches) and counts
//!   against the calendar month in China time.

use std::collections::{HashMap, VecDeque};

const DAY_MS: u64 = 24 * 3600 * 1000;
/// China Standard Time is UTC+8 all year.
const CHINA_OFFSET_MS: u64 = 8 * 3600 * 1000;
const WINDOW_MS: u64 = 1000;

/// The days since 1970-01-01 in China time: changes at 00:00 UTC+8.
pub(crate) fn china_day(now_ms: u64) -> u64 {
    (now_ms + CHINA_OFFSET_MS) / DAY_MS
}

/// `year * 12 + month - 1` of a China-time day, for the monthly clear allowance
/// (Howard Hinnant's `civil_from_days`).
fn china_month(day: u64) -> u64 {
    let z = i64::try_from(day).unwrap_or(i64::MAX) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    u64::try_from(year * 12 + month - 1).unwrap_or(0)
}

/// An app's subscribe/send quota as get_api_quota reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SendQuota {
    pub daily_limit: u64,
    pub used: u64,
    pub remain: u64,
}

/// Why a send was refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// 45009: today's quota is used up.
    Daily,
    /// 45011: too many sends in the last second.
    Rate,
}

#[derive(Default)]
struct AppSends {
    /// Overrides the default limit (`set_send_quota`).
    daily_limit: Option<u64>,
    used: u64,
    /// The China day `used` counts for.
    day: u64,
    /// Accepted send times (Unix ms) within the last second, oldest first.
    recent: VecDeque<u64>,
    clears: u32,
    /// The China month `clears` counts for.
    clear_month: u64,
}

pub(crate) struct SendLimits {
    default_daily_limit: u64,
    rate_per_sec: Option<u32>,
    clear_monthly_limit: u32,
    apps: HashMap<String, AppSends>,
}

impl SendLimits {
    pub(crate) fn new(
        default_daily_limit: u64,
        rate_per_sec: Option<u32>,
        clear_monthly_limit: u32,
    ) -> SendLimits {
        SendLimits {
            default_daily_limit,
            rate_per_sec,
            clear_monthly_limit,
            apps: HashMap::new(),
        }
    }

    /// The app's counters, with yesterday's count dropped when the China day has changed.
    fn app(&mut self, appid: &str, now_ms: u64) -> &mut AppSends {
        if !self.apps.contains_key(appid) {
            self.apps.insert(appid.to_owned(), AppSends::default());
        }
        let app = self.apps.get_mut(appid).expect("inserted above");
        let today = china_day(now_ms);
        if app.day != today {
            app.day = today;
            app.used = 0;
        }
        app
    }

    /// Whether one more send may be accepted now; spends nothing (see [`Self::record`]).
    pub(crate) fn check(&mut self, appid: &str, now_ms: u64) -> Result<(), Refused> {
        let (default_limit, rate) = (self.default_daily_limit, self.rate_per_sec);
        let app = self.app(appid, now_ms);
        if app.used >= app.daily_limit.unwrap_or(default_limit) {
            return Err(Refused::Daily);
        }
        while app.recent.front().is_some_and(|&t| t + WINDOW_MS <= now_ms) {
            app.recent.pop_front();
        }
        match rate {
            Some(rate) if app.recent.len() >= rate as usize => Err(Refused::Rate),
            _ => Ok(()),
        }
    }

    /// Counts an accepted send (after [`Self::check`] allowed it).
    pub(crate) fn record(&mut self, appid: &str, now_ms: u64) {
        let tracks_rate = self.rate_per_sec.is_some();
        let app = self.app(appid, now_ms);
        app.used += 1;
        if tracks_rate {
            app.recent.push_back(now_ms);
        }
    }

    pub(crate) fn quota(&mut self, appid: &str, now_ms: u64) -> SendQuota {
        let default_limit = self.default_daily_limit;
        let app = self.app(appid, now_ms);
        let daily_limit = app.daily_limit.unwrap_or(default_limit);
        SendQuota {
            daily_limit,
            used: app.used,
            remain: daily_limit.saturating_sub(app.used),
        }
    }

    pub(crate) fn set_daily_limit(&mut self, appid: &str, daily_limit: u64, now_ms: u64) {
        self.app(appid, now_ms).daily_limit = Some(daily_limit);
    }

    /// Uses up what is left of today's quota.
    pub(crate) fn exhaust(&mut self, appid: &str, now_ms: u64) {
        let default_limit = self.default_daily_limit;
        let app = self.app(appid, now_ms);
        app.used = app.used.max(app.daily_limit.unwrap_or(default_limit));
    }

    pub(crate) fn set_rate(&mut self, rate_per_sec: Option<u32>) {
        self.rate_per_sec = rate_per_sec;
        if rate_per_sec.is_none() {
            for app in self.apps.values_mut() {
                app.recent.clear();
            }
        }
    }

    /// What 00:00 UTC+8 does: every app's count starts again from zero.
    pub(crate) fn new_day(&mut self) {
        for app in self.apps.values_mut() {
            app.used = 0;
        }
    }

    /// clear_quota: `false` (48006) once this month's allowance is spent.
    pub(crate) fn clear(&mut self, appid: &str, now_ms: u64) -> bool {
        let limit = self.clear_monthly_limit;
        let app = self.app(appid, now_ms);
        let month = china_month(app.day);
        if app.clear_month != month {
            app.clear_month = month;
            app.clears = 0;
        }
        if app.clears >= limit {
            return false;
        }
        app.clears += 1;
        app.used = 0;
        true
    }

    /// Forgets every count and override (the server's `reset`).
    pub(crate) fn clear_all(&mut self) {
        self.apps.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-24 10:00:00 China time.
    const T0: u64 = 1_795_485_600_000;

    #[test]
    fn the_day_changes_at_midnight_china_time() {
        // 2026-11-24 23:59:59.999 and 2026-11-25 00:00:00 in UTC+8.
        let before = T0 + 14 * 3600 * 1000 - 1;
        assert_eq!(china_day(before), china_day(T0));
        assert_eq!(china_day(before + 1), china_day(T0) + 1);
        // 16:00 UTC is already the next day in China.
        assert_eq!(china_day(before + 1) * DAY_MS, before + 1 + CHINA_OFFSET_MS);
    }

    #[test]
    fn months_follow_the_calendar() {
        let day = china_day(T0);
        assert_eq!(china_month(day), 2026 * 12 + 10, "November 2026");
        assert_eq!(china_month(day + 6), 2026 * 12 + 10, "30 November");
        assert_eq!(china_month(day + 7), 2026 * 12 + 11, "1 December");
        assert_eq!(china_month(day + 38), 2027 * 12, "1 January 2027");
        assert_eq!(china_month(0), 1970 * 12);
    }

    #[test]
    fn daily_quota_counts_recorded_sends_and_comes_back_the_next_day() {
        let mut l = SendLimits::new(2, None, 10);
        for _ in 0..2 {
            l.check("a", T0).unwrap();
            l.record("a", T0);
        }
        assert_eq!(l.check("a", T0), Err(Refused::Daily));
        assert!(l.check("b", T0).is_ok(), "per app");
        assert_eq!(
            l.quota("a", T0),
            SendQuota {
                daily_limit: 2,
                used: 2,
                remain: 0
            }
        );
        assert!(l.check("a", T0 + DAY_MS).is_ok(), "the next day");
        assert_eq!(l.quota("a", T0 + DAY_MS).used, 0);
    }

    #[test]
    fn set_exhaust_and_new_day() {
        let mut l = SendLimits::new(1_000, None, 10);
        l.set_daily_limit("a", 1, T0);
        l.record("a", T0);
        assert_eq!(l.check("a", T0), Err(Refused::Daily));
        l.new_day();
        assert!(l.check("a", T0).is_ok());
        l.exhaust("b", T0);
        assert_eq!(l.quota("b", T0).remain, 0);
        assert_eq!(l.check("b", T0), Err(Refused::Daily));
        l.new_day();
        assert_eq!(l.quota("b", T0).remain, 1_000);
    }

    #[test]
    fn rate_is_a_sliding_one_second_window() {
        let mut l = SendLimits::new(1_000, Some(2), 10);
        let send = |l: &mut SendLimits, t| {
            let r = l.check("a", t);
            if r.is_ok() {
                l.record("a", t);
            }
            r
        };
        assert!(send(&mut l, T0).is_ok());
        assert!(send(&mut l, T0 + 600).is_ok());
        assert_eq!(send(&mut l, T0 + 999), Err(Refused::Rate));
        assert!(send(&mut l, T0 + 1000).is_ok(), "the first left the window");
        assert_eq!(send(&mut l, T0 + 1599), Err(Refused::Rate));
        assert!(send(&mut l, T0 + 1600).is_ok());
        assert!(send(&mut l, T0 + 1600).is_err());
        assert_eq!(l.quota("a", T0).used, 4, "refused sends spend no quota");
        l.set_rate(None);
        assert!(send(&mut l, T0 + 1600).is_ok());
    }

    #[test]
    fn clears_are_limited_per_month() {
        let mut l = SendLimits::new(5, None, 2);
        l.exhaust("a", T0);
        assert!(l.clear("a", T0));
        assert_eq!(l.quota("a", T0).used, 0);
        assert!(l.clear("a", T0));
        assert!(!l.clear("a", T0), "third clear in a month");
        assert!(l.clear("b", T0), "per app");
        assert!(l.clear("a", T0 + 7 * DAY_MS), "December");
    }
}
