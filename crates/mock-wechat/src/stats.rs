//! Call counters, kept lock-free so counting never slows the endpoints being measured.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// A snapshot of what the emulator has seen since start (or the last reset).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MockStats {
    /// Classic and stable token calls that reached the token logic (errors included,
    /// injected faults other than delays not).
    pub token_calls: u64,
    /// Tokens actually minted; a stable call answering with the current token is not one.
    pub tokens_issued: u64,
    pub classic_token_calls: u64,
    pub stable_token_calls: u64,
    /// Stable calls with `force_refresh: true`, refused ones included.
    pub force_refresh_calls: u64,
    /// Every jscode2session call, faulted ones included.
    pub jscode2session_calls: u64,
    /// Every send call, faulted ones included.
    pub send_calls: u64,
    pub sends_ok: u64,
    /// Non-zero send errcodes (injected ones included), keyed by the errcode as a string.
    pub sends_by_errcode: BTreeMap<String, u64>,
    /// Every non-zero errcode answered by any WeChat endpoint (tokens, send, jscode2session,
    /// quota, templates; injected ones included), keyed by the errcode as a string: how
    /// many `45009` or `45011` answers a run caused, whichever call got them.
    pub errcode_counts: BTreeMap<String, u64>,
    /// `POST /cgi-bin/openapi/quota/get` calls.
    pub quota_get_calls: u64,
    /// `POST /cgi-bin/clear_quota` calls, refused ones included.
    pub clear_quota_calls: u64,
    /// `GET /wxaapi/newtmpl/gettemplate` calls.
    pub gettemplate_calls: u64,
    /// Message pushes made to a configured target.
    pub pushes: u64,
    /// Pushes the receiver did not answer with a 2xx in time.
    pub pushes_failed: u64,
    /// Injected HTTP error statuses, all endpoints.
    pub http_errors: u64,
    /// WeChat-endpoint requests being handled right now.
    pub in_flight: u64,
    /// The most WeChat-endpoint requests handled at once.
    pub max_in_flight: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub token_calls: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub classic_token_calls: AtomicU64,
    pub stable_token_calls: AtomicU64,
    pub force_refresh_calls: AtomicU64,
    pub jscode2session_calls: AtomicU64,
    pub send_calls: AtomicU64,
    pub sends_ok: AtomicU64,
    pub http_errors: AtomicU64,
    pub quota_get_calls: AtomicU64,
    pub clear_quota_calls: AtomicU64,
    pub gettemplate_calls: AtomicU64,
    pub pushes: AtomicU64,
    pub pushes_failed: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    // Errors are the rare path; a map behind a mutex is simpler than an atomic per errcode.
    send_errcodes: Mutex<BTreeMap<i64, u64>>,
    errcodes: Mutex<BTreeMap<i64, u64>>,
}

fn count(map: &Mutex<BTreeMap<i64, u64>>, errcode: i64) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    *map.entry(errcode).or_default() += 1;
}

fn keyed_as_strings(map: &Mutex<BTreeMap<i64, u64>>) -> BTreeMap<String, u64> {
    let map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Holds one in-flight slot; dropping it (answer sent, or client gone) frees the slot.
pub(crate) struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl Counters {
    pub(crate) fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Relaxed);
        InFlight(self)
    }

    pub(crate) fn send_error(&self, errcode: i64) {
        count(&self.send_errcodes, errcode);
    }

    /// An errcode answer from any WeChat endpoint.
    pub(crate) fn answered(&self, errcode: i64) {
        count(&self.errcodes, errcode);
    }

    pub(crate) fn snapshot(&self) -> MockStats {
        let get = |c: &AtomicU64| c.load(Relaxed);
        MockStats {
            token_calls: get(&self.token_calls),
            tokens_issued: get(&self.tokens_issued),
            classic_token_calls: get(&self.classic_token_calls),
            stable_token_calls: get(&self.stable_token_calls),
            force_refresh_calls: get(&self.force_refresh_calls),
            jscode2session_calls: get(&self.jscode2session_calls),
            send_calls: get(&self.send_calls),
            sends_ok: get(&self.sends_ok),
            sends_by_errcode: keyed_as_strings(&self.send_errcodes),
            errcode_counts: keyed_as_strings(&self.errcodes),
            quota_get_calls: get(&self.quota_get_calls),
            clear_quota_calls: get(&self.clear_quota_calls),
            gettemplate_calls: get(&self.gettemplate_calls),
            pushes: get(&self.pushes),
            pushes_failed: get(&self.pushes_failed),
            http_errors: get(&self.http_errors),
            in_flight: get(&self.in_flight),
            max_in_flight: get(&self.max_in_flight),
        }
    }

    /// Zeroes everything except the requests still in flight: their guards will decrement
    /// later, and `max_in_flight` restarts from what is running now.
    pub(crate) fn reset(&self) {
        for c in [
            &self.token_calls,
            &self.tokens_issued,
            &self.classic_token_calls,
            &self.stable_token_calls,
            &self.force_refresh_calls,
            &self.jscode2session_calls,
            &self.send_calls,
            &self.sends_ok,
            &self.http_errors,
            &self.quota_get_calls,
            &self.clear_quota_calls,
            &self.gettemplate_calls,
            &self.pushes,
            &self.pushes_failed,
        ] {
            c.store(0, Relaxed);
        }
        self.max_in_flight
            .store(self.in_flight.load(Relaxed), Relaxed);
        for map in [&self.send_errcodes, &self.errcodes] {
            map.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_tracks_guards_and_max() {
        let c = Counters::default();
        let a = c.enter();
        let b = c.enter();
        drop(a);
        let _c = c.enter();
        drop(b);
        let s = c.snapshot();
        assert_eq!((s.in_flight, s.max_in_flight), (1, 2));
        c.reset();
        assert_eq!(c.snapshot().max_in_flight, 1);
    }

    #[test]
    fn errcodes_are_keyed_as_strings() {
        let c = Counters::default();
        c.send_error(-1);
        c.send_error(-1);
        c.send_error(40003);
        c.answered(45009);
        let s = c.snapshot();
        assert_eq!(s.errcode_counts.get("45009"), Some(&1));
        assert_eq!(s.sends_by_errcode.get("-1"), Some(&2));
        assert_eq!(s.sends_by_errcode.get("40003"), Some(&1));
    }
}
