//! What the bench reads from outside the worker: `/proc` (CPU time, peak RSS), Redis
//! `INFO commandstats`, the queues' counts, and the emulator's counters while waiting.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, AsyncCommands, aio::MultiplexedConnection};
use lapin::Channel;

use super::Plan;
use super::emulator::{self, Emulator};
use super::workers::Workers;
use wxpush::cli::progress;

/// Kernel clock ticks per second, for `/proc/*/stat` times.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `(comm, utime + stime in seconds)` from a `/proc/…/stat` file.
fn stat_cpu(path: &str) -> Option<(String, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state is field 3, utime 14 and stime 15 (1-based) of proc(5).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / clock_ticks()))
}

/// CPU seconds used so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// Of the worker processes, or of the whole bench process for in-process workers.
    pub total_s: f64,
    /// Of the in-process emulator's threads (0 with `--mock-url`).
    pub emulator_s: f64,
    /// Context switches (voluntary and not) of every thread counted in `total_s`.
    pub switches: u64,
}

/// Context switches of all threads of `pid` (or of this process) so far.
pub fn context_switches(pid: Option<u32>) -> u64 {
    let dir = pid.map_or("/proc/self/task".into(), |p| format!("/proc/{p}/task"));
    std::fs::read_dir(dir)
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
                .flat_map(|status| {
                    status
                        .lines()
                        .filter_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.ends_with("ctxt_switches")
                                .then(|| v.trim().parse::<u64>().ok())
                                .flatten()
                        })
                        .collect::<Vec<_>>()
                })
                .sum()
        })
        .unwrap_or(0)
}

/// CPU seconds of a process.
pub fn process_cpu(pid: u32) -> Option<f64> {
    stat_cpu(&format!("/proc/{pid}/stat")).map(|(_, s)| s)
}

/// CPU seconds of this process, and of its threads whose name starts with the emulator's.
pub fn own_cpu() -> Cpu {
    let total_s = stat_cpu("/proc/self/stat").map_or(0.0, |(_, s)| s);
    let emulator_s = std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.flatten()
                .filter_map(|task| {
                    stat_cpu(&format!("{}/stat", task.path().display()))
                        .filter(|(comm, _)| comm.starts_with(emulator::THREAD_NAME))
                        .map(|(_, s)| s)
                })
                .sum()
        })
        .unwrap_or(0.0);
    Cpu {
        total_s,
        emulator_s,
        switches: context_switches(None),
    }
}

/// CPU seconds of the RabbitMQ server (`beam.smp`) on this machine, if it runs here.
pub fn broker_cpu() -> Option<f64> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .find_map(|e| {
            let stat = stat_cpu(&format!("{}/stat", e.path().display()))?;
            (stat.0 == "beam.smp").then_some(stat.1)
        })
}

/// Peak resident set size (`VmHWM`) in bytes of `pid`, or of this process.
pub fn peak_rss(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or("/proc/self/status".into(), |p| format!("/proc/{p}/status"));
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One Redis connection held for the whole run, so the bench itself adds nothing but the
/// `INFO` calls (which are left out of the counts).
pub struct Redis {
    conn: MultiplexedConnection,
}

impl Redis {
    pub async fn connect(url: &str) -> anyhow::Result<Redis> {
        let client = redis::Client::open(url)?;
        Ok(Redis {
            conn: client.get_multiplexed_async_connection().await?,
        })
    }

    /// Calls per command since the server started (`cmdstat_<name>:calls=N,…`). Commands run
    /// inside a Lua script are counted under their own names too.
    pub async fn commandstats(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        let text: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn)
            .await?;
        Ok(parse_commandstats(&text))
    }

    /// CPU seconds the Redis server used (`used_cpu_sys` + `used_cpu_user`).
    pub async fn cpu(&mut self) -> Option<f64> {
        let text: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut self.conn)
            .await
            .ok()?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        Some(field("used_cpu_sys")? + field("used_cpu_user")?)
    }

    pub async fn version(&mut self) -> Option<String> {
        let text: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn)
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_owned())
    }
}

fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Deletes `prefix:*` with SCAN and UNLINK (never KEYS on a shared server).
pub async fn delete_keys(url: &str, prefix: &str) -> anyhow::Result<()> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let pattern = format!("{prefix}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(2000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: () = conn.unlink(keys).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

async fn queue_counts(channel: &Channel, queue: &str) -> anyhow::Result<(u32, u32)> {
    let q = wxpush::broker::inspect_queue(channel, queue).await?;
    Ok((q.message_count(), q.consumer_count()))
}

/// Polls `done` every 20 ms until it is true or `timeout` passes.
pub async fn wait_until(
    timeout: Duration,
    what: &str,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done().await? {
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until `count` consumers are on the queue (the workers are up).
pub async fn wait_for_consumers(
    channel: &Channel,
    queue: &str,
    count: usize,
    workers: &mut Workers,
) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(60),
        "the workers to consume",
        async || {
            workers.check_alive()?;
            Ok(queue_counts(channel, queue).await?.1 as usize >= count)
        },
    )
    .await
}

/// When the run ended.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// When the emulator was first seen to have accepted one of the run's sends.
    pub first_seen: Option<Instant>,
    /// When it was seen to have accepted (or the dead-letter queue to hold) all of them.
    pub done_at: Instant,
    pub sends: u64,
    pub dead_letters: u64,
}

/// Waits until every event was sent or dead-lettered, watching the emulator's counter
/// (`sends_ok` above `base`) and the dead-letter queue.
pub async fn wait_done(
    plan: &Plan,
    emulator: &Emulator,
    monitor: &Channel,
    workers: &mut Workers,
    base: u64,
) -> anyhow::Result<Done> {
    let total = plan.args.events as u64;
    let bar = progress::bar(total, "delivering");
    let mut first_seen = None;
    let mut dead = 0;
    let mut last_progress = (0, Instant::now());
    let mut tick = 0u64;
    loop {
        let sends = emulator.stats().await?.sends_ok.saturating_sub(base);
        let now = Instant::now();
        if sends > 0 && first_seen.is_none() {
            first_seen = Some(now);
        }
        if tick.is_multiple_of(25) {
            workers.check_alive()?;
            dead = u64::from(
                queue_counts(monitor, &plan.config.amqp.dead_letter_queue)
                    .await?
                    .0,
            );
        }
        tick += 1;
        bar.set_position(sends + dead);
        if sends + dead >= total {
            bar.finish_and_clear();
            return Ok(Done {
                first_seen,
                done_at: now,
                sends,
                dead_letters: dead,
            });
        }
        if sends + dead != last_progress.0 {
            last_progress = (sends + dead, now);
        } else if now - last_progress.1 > plan.args.stall_timeout {
            bar.abandon();
            anyhow::bail!(
                "stalled: {sends} sent and {dead} dead-lettered of {total}, nothing new for {:?}",
                plan.args.stall_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_parse() {
        let text = "# Commandstats\r\ncmdstat_evalsha:calls=20000,usec=1,usec_per_call=0.1,rejected_calls=0,failed_calls=0\r\ncmdstat_client|list:calls=3,usec=1\r\n";
        let stats = parse_commandstats(text);
        assert_eq!(stats.get("evalsha"), Some(&20000));
        assert_eq!(stats.get("client|list"), Some(&3));
    }

    #[test]
    fn own_process_is_readable() {
        assert!(peak_rss(None).unwrap() > 0);
        assert!(stat_cpu("/proc/self/stat").is_some());
    }
}
