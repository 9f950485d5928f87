//! The credential breaker: an app whose appid/secret/IP WeChat refuses (40013, 40125,
//! 40164) is stopped, not its events dead-lettered. Its messages are parked in a retry tier
//! (holding no prefetch slot, costing no attempt) and one probe every `PROBE_EVERY` tries
//! again; meanwhile `/readyz` is false and an error naming the app is logged every minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::admin::metrics as m;

pub const PROBE_EVERY: Duration = Duration::from_secs(30);
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Tripped {
    errcode: Option<i64>,
    errmsg: String,
    since: Instant,
    next_probe: Instant,
    last_log: Instant,
}

/// Whether a message of an app may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Tripped, but this message may probe whether the app works again.
    Probe,
    Tripped,
}

#[derive(Debug, Default)]
pub struct Breaker {
    apps: Mutex<HashMap<String, Tripped>>,
}

impl Breaker {
    pub fn gate(&self, app: &str) -> Gate {
        let mut apps = self.apps.lock().expect("breaker lock poisoned");
        match apps.get_mut(app) {
            None => Gate::Open,
            Some(t) => {
                let now = Instant::now();
                if now >= t.next_probe {
                    t.next_probe = now + PROBE_EVERY;
                    Gate::Probe
                } else {
                    Gate::Tripped
                }
            }
        }
    }

    pub fn trip(&self, app: &str, errcode: Option<i64>, errmsg: &str) {
        let mut apps = self.apps.lock().expect("breaker lock poisoned");
        let now = Instant::now();
        if apps.contains_key(app) {
            return;
        }
        tracing::error!(
            app,
            errcode,
            errmsg,
            "app credentials refused by WeChat: its events are parked, not sent, until this is fixed (check appid, secret and the IP whitelist)"
        );
        metrics::gauge!(m::APP_CREDENTIAL_FAILED, "app" => app.to_owned()).set(1.0);
        metrics::gauge!(m::APP_PARKED, "app" => app.to_owned(), "reason" => "credential").set(1.0);
        apps.insert(
            app.to_owned(),
            Tripped {
                errcode,
                errmsg: errmsg.to_owned(),
                since: now,
                next_probe: now + PROBE_EVERY,
                last_log: now,
            },
        );
    }

    /// Called after a success: the app works (again).
    pub fn reset(&self, app: &str) {
        let mut apps = self.apps.lock().expect("breaker lock poisoned");
        if let Some(t) = apps.remove(app) {
            tracing::info!(
                app,
                down_for_s = t.since.elapsed().as_secs(),
                "app credentials accepted again; delivering its events"
            );
            metrics::gauge!(m::APP_CREDENTIAL_FAILED, "app" => app.to_owned()).set(0.0);
            metrics::gauge!(m::APP_PARKED, "app" => app.to_owned(), "reason" => "credential")
                .set(0.0);
        }
    }

    /// The tripped apps: errcode, errmsg and for how long (for the console and `/api/apps`).
    pub fn tripped(&self) -> HashMap<String, (Option<i64>, String, Duration)> {
        let apps = self.apps.lock().expect("breaker lock poisoned");
        apps.iter()
            .map(|(app, t)| {
                (
                    app.clone(),
                    (t.errcode, t.errmsg.clone(), t.since.elapsed()),
                )
            })
            .collect()
    }

    pub fn any_tripped(&self) -> bool {
        !self.apps.lock().expect("breaker lock poisoned").is_empty()
    }

    /// Logs every tripped app once a minute; called from a periodic task.
    pub fn log_tripped(&self) {
        let mut apps = self.apps.lock().expect("breaker lock poisoned");
        let now = Instant::now();
        for (app, t) in apps.iter_mut() {
            if now.duration_since(t.last_log) >= LOG_EVERY {
                t.last_log = now;
                tracing::error!(app = %app, errcode = ?t.errcode, errmsg = %t.errmsg, down_for_s = t.since.elapsed().as_secs(), "app still refused by WeChat; its events stay parked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tripped_app_is_held_until_reset() {
        let b = Breaker::default();
        assert_eq!(b.gate("a"), Gate::Open);
        b.trip("a", Some(40125), "invalid appsecret");
        assert_eq!(b.gate("a"), Gate::Tripped);
        assert_eq!(b.gate("other"), Gate::Open);
        assert!(b.any_tripped());
        b.reset("a");
        assert_eq!(b.gate("a"), Gate::Open);
        assert!(!b.any_tripped());
    }
}
