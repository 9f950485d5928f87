//! Holding an app's sends fleet-wide while WeChat refuses them for the app's own limits:
//! the daily quota (45009, from a send or a token fetch) or the minute rate (45011).
//!
//! The hold is written to Redis (`store::app_hold`) by the worker that got the answer, and
//! every worker keeps a local copy, refreshed once a second ([`AppHolds::refresh`]), so the
//! gate costs no round trip per message. Held messages are parked in a retry tier (no
//! attempt spent, no prefetch slot held, never a dead letter). A quota hold lets one probe
//! send through every `wechat.quota_probe_every` and at 00:00 China time, fleet-wide (Redis
//! decides who takes it); the first success anywhere releases the hold for everyone. A
//! minute hold ends by itself at the next minute.
//!
//! While an app is held, `wxpush_app_parked{app,reason}` is 1 and one line a minute says so.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::admin::metrics as m;
use crate::store::app_hold::{self, Hold, HoldReason};
use crate::store::{HotPath, Keys, StoreError};

const LOG_EVERY: Duration = Duration::from_secs(60);

/// What the gate says about a message of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldGate {
    /// Not held.
    Open,
    /// Held, but this message is the probe: send it.
    Probe,
    /// Held: park the message for about `wait`.
    Held { reason: HoldReason, wait: Duration },
}

/// This worker's view of the holds, keyed by app name.
#[derive(Debug)]
pub struct AppHolds {
    keys: Keys,
    probe_every: Duration,
    apps: Mutex<HashMap<String, Known>>,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    reason: HoldReason,
    since: Instant,
    /// When the hold ends (minute) or the next probe may go (quota).
    until: Instant,
    last_log: Instant,
}

impl AppHolds {
    pub fn new(keys: Keys, probe_every: Duration) -> AppHolds {
        AppHolds {
            keys,
            probe_every,
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a message of `app` may be sent now. A round trip only when a probe is due.
    pub async fn gate(&self, redis: &HotPath, app: &str) -> Result<HoldGate, StoreError> {
        let Some(known) = self.known(app) else {
            return Ok(HoldGate::Open);
        };
        let now = Instant::now();
        if now < known.until {
            return Ok(HoldGate::Held {
                reason: known.reason,
                wait: known.until - now,
            });
        }
        if known.reason == HoldReason::Minute {
            self.forget(app);
            return Ok(HoldGate::Open);
        }
        let key = self.keys.app_hold(app);
        let taken = redis
            .run("quota probe", async |conn| {
                app_hold::take_probe(conn, &key, self.probe_every).await
            })
            .await?;
        if taken {
            tracing::info!(
                app,
                reason = known.reason.as_str(),
                "probing whether WeChat accepts the app's sends again"
            );
            return Ok(HoldGate::Probe);
        }
        // Another worker took the probe, or the hold is gone: ask Redis what it is now.
        let hold = redis
            .run("hold read", async |conn| app_hold::read(conn, &key).await)
            .await?;
        Ok(match self.learn(app, hold) {
            Some(known) => HoldGate::Held {
                reason: known.reason,
                wait: known.until.saturating_duration_since(Instant::now()),
            },
            None => HoldGate::Open,
        })
    }

    /// WeChat refused a call of `app` for its limits: hold the app's sends fleet-wide.
    /// Returns how long a message should wait before it comes back.
    pub async fn hold(
        &self,
        redis: &HotPath,
        app: &str,
        reason: HoldReason,
    ) -> Result<Duration, StoreError> {
        let key = self.keys.app_hold(app);
        let hold = redis
            .run("hold", async |conn| {
                app_hold::hold(conn, &key, reason, self.probe_every).await
            })
            .await?;
        Ok(self.learn(app, hold).map_or(Duration::ZERO, |known| {
            known.until.saturating_duration_since(Instant::now())
        }))
    }

    /// A call of `app` succeeded: if its sends were held for a quota, the quota is back.
    /// No round trip unless this worker knew of a hold.
    pub async fn succeeded(&self, redis: &HotPath, app: &str) {
        if self
            .known(app)
            .is_none_or(|k| k.reason == HoldReason::Minute)
        {
            return;
        }
        let key = self.keys.app_hold(app);
        let released = redis
            .run("hold release", async |conn| {
                app_hold::release(conn, &key).await
            })
            .await;
        match released {
            Ok(_) => {
                self.learn(app, None);
            }
            Err(e) => {
                tracing::warn!(app, error = %crate::telemetry::ErrorChain(&e), "WeChat accepts the app's sends again, but the hold could not be released in Redis; the next probe will")
            }
        }
    }

    /// Reads every app's hold from Redis (other workers' holds and releases) and logs the
    /// held ones once a minute. Called every second by the worker.
    pub async fn refresh<'a>(&self, redis: &HotPath, apps: impl Iterator<Item = &'a String>) {
        for app in apps {
            let key = self.keys.app_hold(app);
            match redis
                .run("hold read", async |conn| app_hold::read(conn, &key).await)
                .await
            {
                Ok(hold) => {
                    self.learn(app, hold);
                }
                // Redis trouble is handled (and logged) where messages meet it.
                Err(_) => return,
            }
        }
        self.log_held();
    }

    fn known(&self, app: &str) -> Option<Known> {
        self.apps.lock().expect("holds lock").get(app).copied()
    }

    fn forget(&self, app: &str) {
        self.learn(app, None);
    }

    /// Takes Redis's word for `app`'s hold; returns what is now known.
    fn learn(&self, app: &str, hold: Option<Hold>) -> Option<Known> {
        let mut apps = self.apps.lock().expect("holds lock");
        let now = Instant::now();
        let Some(hold) = hold else {
            if let Some(old) = apps.remove(app) {
                set_gauge(app, old.reason, false);
                tracing::info!(
                    app,
                    reason = old.reason.as_str(),
                    held_for_s = old.since.elapsed().as_secs(),
                    "the app's sends are no longer held; delivering"
                );
            }
            return None;
        };
        let known = match apps.get(app) {
            Some(old) if old.reason == hold.reason => Known {
                until: now + hold.wait,
                ..*old
            },
            old => {
                if let Some(old) = old {
                    set_gauge(app, old.reason, false);
                }
                set_gauge(app, hold.reason, true);
                tracing::warn!(
                    app,
                    reason = hold.reason.as_str(),
                    wait_s = hold.wait.as_secs(),
                    "{}",
                    explain(hold.reason)
                );
                Known {
                    reason: hold.reason,
                    since: now.checked_sub(hold.age).unwrap_or(now),
                    until: now + hold.wait,
                    last_log: now,
                }
            }
        };
        apps.insert(app.to_owned(), known);
        Some(known)
    }

    fn log_held(&self) {
        let mut apps = self.apps.lock().expect("holds lock");
        let now = Instant::now();
        for (app, known) in apps.iter_mut() {
            if known.reason != HoldReason::Minute && now.duration_since(known.last_log) >= LOG_EVERY
            {
                known.last_log = now;
                tracing::warn!(app = %app, reason = known.reason.as_str(), held_for_s = known.since.elapsed().as_secs(), next_probe_in_s = known.until.saturating_duration_since(now).as_secs(), "the app's sends are still held: {}", explain(known.reason));
            }
        }
    }
}

fn set_gauge(app: &str, reason: HoldReason, held: bool) {
    metrics::gauge!(m::APP_PARKED, "app" => app.to_owned(), "reason" => reason.as_str())
        .set(if held { 1.0 } else { 0.0 });
}

fn explain(reason: HoldReason) -> &'static str {
    match reason {
        HoldReason::Quota => {
            "WeChat says the app's daily subscribe/send quota is used up (45009): its messages wait (nothing is dead-lettered) until a probe succeeds, at the latest after 00:00 China time; `wxpush quota` shows the quota"
        }
        HoldReason::TokenQuota => {
            "WeChat says the app's daily access_token quota is used up (45009 on a token fetch): its messages wait until a probe gets a token"
        }
        HoldReason::Minute => {
            "WeChat says the app's minute rate is reached (45011): its messages wait until the next minute; set apps.NAME.max_rate below WeChat's limit to avoid this"
        }
    }
}
