//! The bench's findings: computed from what the run observed, printed as a table and
//! written as JSON (`--json`) for `scripts/plot_bench.py` and `docs/benchmarks.md`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Plan;
use super::baseline::Baseline;
use super::emulator::Emulator;
use super::load::{self, Published};
use super::probe::{Cpu, Done};
use super::workers::Memory;
use wxpush_mock_wechat::{AcceptedSend, MockStats};

const MB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: u32,
    /// `bulk` (preloaded queue, then drained) or `steady` (`--rate`).
    pub mode: &'static str,
    pub params: Params,
    pub machine: Machine,
    pub publish: PublishStats,
    pub throughput: Throughput,
    /// Publish → WeChat (emulator) accepted, over the recorded sends of the run.
    pub latency_ms: Option<Percentiles>,
    /// The same minus the emulator's latency: what wxpush, RabbitMQ and Redis add.
    pub added_latency_ms: Option<Percentiles>,
    pub tokens: Tokens,
    pub redis: RedisStats,
    pub memory: MemoryStats,
    pub cpu: CpuStats,
    pub baseline: Option<Baseline>,
    pub emulator: EmulatorStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub events: usize,
    pub workers: usize,
    /// `in-process` or `processes`.
    pub worker_kind: &'static str,
    pub prefetch: u16,
    pub latency_ms: Option<f64>,
    pub rate_per_s: Option<f64>,
    pub publish_window: usize,
    /// `in-process` or the URL of the running emulator.
    pub emulator: String,
    pub queue_type: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub redis_version: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishStats {
    pub seconds: f64,
    pub rate: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    pub sends: u64,
    pub dead_letters: u64,
    /// From the first send WeChat accepted to the last.
    pub first_to_last_s: f64,
    pub sends_per_s: f64,
    /// From the start of publishing until every event was sent or dead-lettered.
    pub publish_to_done_s: f64,
    pub sends_per_s_publish_to_done: f64,
    /// `sends_per_s` over the baseline's rate.
    pub ratio_to_baseline: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of values in µs, reported in ms.
    fn of(mut us: Vec<i64>) -> Option<Percentiles> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let at = |p: f64| {
            let rank = ((p / 100.0) * us.len() as f64).ceil() as usize;
            us[rank.clamp(1, us.len()) - 1] as f64 / 1000.0
        };
        Some(Percentiles {
            samples: us.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: *us.last().expect("not empty") as f64 / 1000.0,
            mean: us.iter().sum::<i64>() as f64 / us.len() as f64 / 1000.0,
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Tokens {
    /// Tokens the emulator minted during the run (cold start included).
    pub issued: u64,
    pub token_calls: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisStats {
    /// Every command Redis executed during the run (bench's INFO excluded), per message.
    /// Commands inside Lua scripts count too; a pipeline is one round trip for several.
    pub commands_per_msg: f64,
    pub per_msg_by_command: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryStats {
    pub scope: String,
    pub peak_rss_mb: Vec<f64>,
    pub peak_rss_mb_max: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuStats {
    pub scope: String,
    /// CPU seconds (user + system) while the workers were delivering.
    pub seconds: f64,
    pub per_1000_msgs: f64,
    /// CPU of the in-process emulator's threads over the same time (not in `seconds` for
    /// worker processes; included in it for in-process workers).
    pub emulator_seconds: f64,
    /// Context switches of the same threads, per message.
    pub context_switches_per_msg: f64,
    /// For in-process workers: `seconds` minus the emulator's share.
    pub per_1000_msgs_without_emulator: Option<f64>,
    /// The Redis server's CPU over the same time, per 1000 messages (server-wide).
    pub redis_per_1000_msgs: Option<f64>,
    /// The RabbitMQ server's (`beam.smp` on this machine) CPU, per 1000 messages
    /// (server-wide: includes any other traffic on the broker).
    pub broker_per_1000_msgs: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EmulatorStats {
    pub send_calls: u64,
    pub sends_ok: u64,
    /// The most calls the emulator handled at once: the effective concurrency.
    pub max_in_flight: u64,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_default(),
        ..Machine::default()
    }
}

impl Report {
    pub fn new(plan: &Plan, emulator: &Emulator) -> Report {
        let args = &plan.args;
        Report {
            version: 1,
            mode: if args.rate.is_some() {
                "steady"
            } else {
                "bulk"
            },
            params: Params {
                events: args.events,
                workers: plan.worker_count(),
                worker_kind: if args.processes.is_some() {
                    "processes"
                } else {
                    "in-process"
                },
                prefetch: args.prefetch,
                latency_ms: emulator.latency().map(|l| l.as_secs_f64() * 1000.0),
                rate_per_s: args.rate,
                publish_window: args.publish_window,
                emulator: match args.mock_url.as_deref() {
                    Some(url) => url.to_owned(),
                    None => "in-process".into(),
                },
                queue_type: format!("{:?}", plan.config.amqp.queue_type).to_lowercase(),
            },
            machine: machine(),
            publish: PublishStats::default(),
            throughput: Throughput::default(),
            latency_ms: None,
            added_latency_ms: None,
            tokens: Tokens::default(),
            redis: RedisStats::default(),
            memory: MemoryStats::default(),
            cpu: CpuStats::default(),
            baseline: None,
            emulator: EmulatorStats::default(),
        }
    }

    pub fn set_baseline(&mut self, baseline: Baseline) {
        self.baseline = Some(baseline);
    }

    pub fn set_resources(&mut self, memory: Memory, before: Cpu, after: Cpu, messages: usize) {
        let peaks: Vec<f64> = memory.peak_rss.iter().map(|b| *b as f64 / MB).collect();
        self.memory = MemoryStats {
            scope: memory.scope.to_owned(),
            peak_rss_mb_max: peaks.iter().copied().fold(0.0, f64::max),
            peak_rss_mb: peaks,
        };
        let seconds = after.total_s - before.total_s;
        let emulator_seconds = after.emulator_s - before.emulator_s;
        let per_1000 = |s: f64| s / messages.max(1) as f64 * 1000.0;
        let in_process = self.params.worker_kind == "in-process";
        self.cpu = CpuStats {
            scope: if in_process {
                "bench process (in-process workers, emulator, bench)".into()
            } else {
                "worker processes (sum)".into()
            },
            seconds,
            per_1000_msgs: per_1000(seconds),
            context_switches_per_msg: after.switches.saturating_sub(before.switches) as f64
                / messages.max(1) as f64,
            emulator_seconds,
            per_1000_msgs_without_emulator: (in_process && self.params.emulator == "in-process")
                .then(|| per_1000(seconds - emulator_seconds)),
            redis_per_1000_msgs: None,
            broker_per_1000_msgs: None,
        };
    }

    /// The CPU of Redis and RabbitMQ, each `(redis, broker)` seconds, before and after.
    pub fn set_other_cpu(
        &mut self,
        before: (Option<f64>, Option<f64>),
        after: (Option<f64>, Option<f64>),
    ) {
        let n = self.params.events.max(1) as f64;
        let per_1000 = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / n * 1000.0);
        self.cpu.redis_per_1000_msgs = per_1000(before.0, after.0);
        self.cpu.broker_per_1000_msgs = per_1000(before.1, after.1);
    }

    pub fn set_redis(&mut self, before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) {
        let n = self.params.events.max(1) as f64;
        let per_msg: BTreeMap<String, f64> = after
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .filter_map(|(name, calls)| {
                let delta = calls.saturating_sub(before.get(name).copied().unwrap_or(0));
                (delta > 0).then(|| (name.clone(), delta as f64 / n))
            })
            .collect();
        self.redis = RedisStats {
            commands_per_msg: per_msg.values().sum(),
            per_msg_by_command: per_msg,
        };
    }

    pub fn set_emulator(&mut self, before: &MockStats, after: &MockStats) {
        self.tokens = Tokens {
            issued: after.tokens_issued - before.tokens_issued,
            token_calls: after.token_calls - before.token_calls,
        };
        self.emulator = EmulatorStats {
            send_calls: after.send_calls - before.send_calls,
            sends_ok: after.sends_ok - before.sends_ok,
            max_in_flight: after.max_in_flight,
        };
    }

    /// Throughput and latency from the publish times and the emulator's records.
    pub fn set_outcome(
        &mut self,
        tag: &str,
        published: &Published,
        done: &Done,
        sends: &[AcceptedSend],
    ) {
        let n = self.params.events;
        self.publish = PublishStats {
            seconds: published.seconds(),
            rate: n as f64 / published.seconds().max(1e-9),
        };
        let mut accepted_ms = Vec::new();
        let mut e2e_us = Vec::new();
        for send in sends {
            let Some(seq) = send.body["data"]["character_string1"]["value"]
                .as_str()
                .and_then(|o| load::sequence(tag, o))
            else {
                continue;
            };
            let Some(at) = published.at_us.get(seq) else {
                continue;
            };
            accepted_ms.push(send.received_at_ms);
            e2e_us.push((send.received_at_ms * 1000) as i64 - *at as i64);
        }
        let publish_to_done = (done.done_at - published.started).as_secs_f64();
        // The emulator's records give the exact span when they cover the run; otherwise the
        // polled counter does (to within its 10 ms period).
        let first_to_last = if accepted_ms.len() as u64 >= done.sends && !accepted_ms.is_empty() {
            let (min, max) = (
                accepted_ms.iter().min().copied().unwrap_or(0),
                accepted_ms.iter().max().copied().unwrap_or(0),
            );
            (max - min) as f64 / 1000.0
        } else {
            done.first_seen
                .map_or(0.0, |f| (done.done_at - f).as_secs_f64())
        };
        let rate = done.sends.saturating_sub(1) as f64 / first_to_last.max(1e-3);
        self.throughput = Throughput {
            sends: done.sends,
            dead_letters: done.dead_letters,
            first_to_last_s: first_to_last,
            sends_per_s: rate,
            publish_to_done_s: publish_to_done,
            sends_per_s_publish_to_done: done.sends as f64 / publish_to_done.max(1e-9),
            ratio_to_baseline: self.baseline.as_ref().map(|b| rate / b.rate.max(1e-9)),
        };
        let latency_us = self
            .params
            .latency_ms
            .map(|ms| (ms * 1000.0).round() as i64);
        self.added_latency_ms =
            latency_us.and_then(|l| Percentiles::of(e2e_us.iter().map(|e| e - l).collect()));
        self.latency_ms = Percentiles::of(e2e_us);
    }

    pub fn print(&self) {
        let p = &self.params;
        let t = &self.throughput;
        println!();
        println!(
            "wxpush-bench ({} mode): {} events, {} {}, prefetch {}, emulator {} latency {}",
            self.mode,
            p.events,
            p.workers,
            match (p.worker_kind, p.workers) {
                ("processes", 1) => "worker process",
                ("processes", _) => "worker processes",
                (_, 1) => "in-process worker",
                _ => "in-process workers",
            },
            p.prefetch,
            p.emulator,
            p.latency_ms.map_or("unknown".into(), |l| format!("{l} ms")),
        );
        println!(
            "  machine: {} CPUs ({}), load {} → {}, Redis {}",
            self.machine.nproc,
            self.machine.cpu_model,
            self.machine.loadavg_start,
            self.machine.loadavg_end,
            self.machine.redis_version.as_deref().unwrap_or("?")
        );
        println!();
        let row = |name: &str, value: String, note: String| {
            println!("  {name:<34} {value:>14}  {note}");
        };
        row(
            "published",
            format!("{:.0}/s", self.publish.rate),
            format!(
                "{} in {:.2} s{}",
                p.events,
                self.publish.seconds,
                p.rate_per_s
                    .map_or(String::new(), |r| format!(" (target {r:.0}/s)"))
            ),
        );
        row(
            "sends/s, first → last accepted",
            format!("{:.0}", t.sends_per_s),
            format!("{} sent in {:.2} s", t.sends, t.first_to_last_s),
        );
        row(
            "sends/s, publish → all done",
            format!("{:.0}", t.sends_per_s_publish_to_done),
            format!("{:.2} s", t.publish_to_done_s),
        );
        if let Some(b) = &self.baseline {
            row(
                "ceiling: plain consume+ack",
                format!("{:.0}/s", b.rate),
                format!(
                    "ours = {:.1}% of it (acks pipelined {:.0}/s, awaited one by one {:.0}/s)",
                    t.ratio_to_baseline.unwrap_or(0.0) * 100.0,
                    b.pipelined_rate,
                    b.serial_rate
                ),
            );
        }
        row("dead letters", t.dead_letters.to_string(), String::new());
        println!();
        let percentiles = |name: &str, p: &Option<Percentiles>| match p {
            Some(p) => println!(
                "  {name:<34} {:>8.1} {:>8.1} {:>8.1} {:>8.1}   (n={}, mean {:.1})",
                p.p50, p.p90, p.p99, p.max, p.samples, p.mean
            ),
            None => println!("  {name:<34} {:>8}", "n/a"),
        };
        println!(
            "  {:<34} {:>8} {:>8} {:>8} {:>8}",
            "latency publish → accepted (ms)", "p50", "p90", "p99", "max"
        );
        percentiles("end to end", &self.latency_ms);
        percentiles("added (minus emulator latency)", &self.added_latency_ms);
        if self.mode == "bulk" {
            println!(
                "  (bulk mode: the queue was filled first, so latency is mostly waiting in it; use --rate)"
            );
        }
        println!();
        row(
            "token fetches (tokens issued)",
            self.tokens.issued.to_string(),
            format!("{} token calls", self.tokens.token_calls),
        );
        let by_command = self
            .redis
            .per_msg_by_command
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        row(
            "Redis commands / message",
            format!("{:.2}", self.redis.commands_per_msg),
            by_command,
        );
        row(
            "peak RSS",
            format!("{:.1} MB", self.memory.peak_rss_mb_max),
            format!(
                "{}{}",
                self.memory.scope,
                if self.memory.peak_rss_mb.len() > 1 {
                    format!(
                        ": {}",
                        self.memory
                            .peak_rss_mb
                            .iter()
                            .map(|m| format!("{m:.1}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    String::new()
                }
            ),
        );
        row(
            "CPU s / 1000 messages",
            format!("{:.3}", self.cpu.per_1000_msgs),
            format!(
                "{}{}",
                self.cpu.scope,
                self.cpu
                    .per_1000_msgs_without_emulator
                    .map_or(String::new(), |c| format!(
                        "; {c:.3} without the emulator's threads"
                    ))
            ),
        );
        row(
            "  context switches / message",
            format!("{:.2}", self.cpu.context_switches_per_msg),
            "same threads as the CPU above".into(),
        );
        let opt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.3}"));
        row(
            "  Redis server CPU s / 1000",
            opt(self.cpu.redis_per_1000_msgs),
            "server-wide (INFO cpu)".into(),
        );
        row(
            "  RabbitMQ server CPU s / 1000",
            opt(self.cpu.broker_per_1000_msgs),
            "beam.smp, server-wide (other traffic included)".into(),
        );
        row(
            "emulator: most calls at once",
            self.emulator.max_in_flight.to_string(),
            format!("emulator CPU {:.2} s", self.cpu.emulator_seconds),
        );
        println!();
    }
}
