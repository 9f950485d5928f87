//! Consume and send rates for the console's overview, from this process's own metrics:
//! the Prometheus text is sampled every [`EVERY`] and the rate is taken over the last
//! [`WINDOW`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::admin::metrics as m;

const EVERY: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(30);

/// One reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub consumed: f64,
    /// Sends WeChat accepted (`outcome="ok"`).
    pub sent: f64,
    pub in_flight: f64,
}

/// The rates and the current in-flight count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub consumed_per_s: f64,
    pub sent_per_s: f64,
    pub in_flight: f64,
}

#[derive(Default)]
pub struct Sampler {
    samples: Mutex<VecDeque<(Instant, Reading)>>,
}

impl Sampler {
    /// Samples `metrics` until the process ends.
    pub fn spawn(self: &std::sync::Arc<Self>, metrics: PrometheusHandle) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                me.record(Instant::now(), read(&metrics.render()));
            }
        });
    }

    fn record(&self, at: Instant, reading: Reading) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((at, reading));
        while samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > WINDOW)
        {
            samples.pop_front();
        }
    }

    pub fn rates(&self) -> Rates {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (Some((t0, first)), Some((t1, last))) = (samples.front(), samples.back()) else {
            return Rates::default();
        };
        let dt = t1.duration_since(*t0).as_secs_f64();
        let per_s = |a: f64, b: f64| {
            if dt > 0.0 {
                ((b - a) / dt).max(0.0)
            } else {
                0.0
            }
        };
        Rates {
            consumed_per_s: per_s(first.consumed, last.consumed),
            sent_per_s: per_s(first.sent, last.sent),
            in_flight: last.in_flight,
        }
    }
}

/// Sums the counters the overview needs from Prometheus text.
pub fn read(text: &str) -> Reading {
    let mut r = Reading::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        if name == m::EVENTS_CONSUMED {
            r.consumed += value;
        } else if name == m::SENDS && series.contains("outcome=\"ok\"") {
            r.sent += value;
        } else if name == m::IN_FLIGHT {
            r.in_flight += value;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_series_and_takes_the_rate_over_the_window() {
        let text = "# HELP x\nwxpush_events_consumed_total{type=\"a\"} 10\nwxpush_events_consumed_total{type=\"b\"} 5\nwxpush_sends_total{app=\"d\",outcome=\"ok\",errcode=\"0\"} 7\nwxpush_sends_total{app=\"d\",outcome=\"transient\",errcode=\"-1\"} 3\nwxpush_in_flight 4\n";
        let r = read(text);
        assert_eq!((r.consumed, r.sent, r.in_flight), (15.0, 7.0, 4.0));
        let s = Sampler::default();
        let t = Instant::now();
        s.record(t, Reading::default());
        s.record(t + Duration::from_secs(2), r);
        let rates = s.rates();
        assert_eq!((rates.consumed_per_s, rates.sent_per_s), (7.5, 3.5));
    }
}
