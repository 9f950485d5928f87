//! Fault tests: real RabbitMQ and Redis, the WeChat emulator in this process, and separate
//! `wxpush run` worker processes (each with its JSON stderr captured line by line, which
//! survives SIGKILL). Every test ends with an exact ledger, the emulator's accepted sends
//! being the truth (each send maps back to its event through `character_string1`, which is
//! the event id):
//!
//! - every published event is sent or dead-lettered (nothing here is refused), and no event
//!   is dead-lettered twice or sent when it was never published;
//! - `policy.on_ambiguous = "dead_letter"`: no event is sent twice, and an event both sent and
//!   dead-lettered was dead-lettered as `ambiguous`;
//! - `"resend"`: an event's extra outcomes (duplicate sends, or a send and a dead letter) are
//!   at most the ambiguous attempts the workers logged for it (an expired claim resent, or a
//!   send that timed out or broke mid-exchange).
//!
//! The tests restart shared services (RabbitMQ, Redis) and kill processes, so they hold
//! `SERIAL` and never overlap. Sizes fit CI: the file runs in a few minutes on two cores.
//!
//! Soak: `WXPUSH_SOAK=1 cargo test --test faults` runs the SIGKILL tests with 50,000 events
//! and 20 kills over 150 s (and the other streams ten times longer); expect ~15 minutes.
//! `WXPUSH_FAULT_SEED=N` replays the random kill schedule of a run (each run prints its seed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use serde_json::{Value, json};
use wxpush::broker::topology::Topology;
use wxpush::config::{QueueType, load_str};
use wxpush_mock_wechat::{AcceptedSend, Fault, FaultTarget, MockOptions, MockServer};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn soak() -> bool {
    std::env::var("WXPUSH_SOAK").is_ok_and(|v| v == "1")
}

/// `n` in CI, `10 × n` under `WXPUSH_SOAK=1`.
fn scaled(n: usize) -> usize {
    if soak() { n * 10 } else { n }
}

fn seeded_rng() -> fastrand::Rng {
    let seed = std::env::var("WXPUSH_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("random schedule seed: WXPUSH_FAULT_SEED={seed}");
    fastrand::Rng::with_seed(seed)
}

fn latency(ms: u64) -> MockOptions {
    MockOptions {
        latency: Duration::from_millis(ms),
        ..MockOptions::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Resend,
    DeadLetter,
}

impl Policy {
    fn as_str(self) -> &'static str {
        match self {
            Policy::Resend => "resend",
            Policy::DeadLetter => "dead_letter",
        }
    }
}

/// `order.paid` events whose `order_no` (rendered as `character_string1`) is the event id.
fn events(tag: &str, n: usize) -> (Vec<String>, Vec<Value>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let events = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({
                "id": id,
                "type": "order.paid",
                "recipient": {"openid": openid(i)},
                "data": {"order_no": id, "amount": "12.5",
                         "paid_at": "2026-11-24T10:00:00+08:00", "remark": "fault test"}
            })
        })
        .collect();
    (ids, events)
}

/// The event a send belongs to.
fn send_id(send: &AcceptedSend) -> Option<String> {
    send.body["data"]["character_string1"]["value"]
        .as_str()
        .map(str::to_owned)
}

/// Per event id, the attempts the workers logged as ambiguous: an expired claim resent
/// (`a previous attempt ended without an answer; sending again`), or a send that got no
/// answer (timeout) or broke mid-exchange, retried or dead-lettered.
fn ambiguous_by_event(lines: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let message = v["message"].as_str().unwrap_or_default();
        let errmsg = v["errmsg"].as_str().unwrap_or_default();
        let ambiguous = message
            .contains("a previous attempt ended without an answer; sending again")
            || ((message == "retry scheduled" || message == "dead-lettered")
                && (errmsg.starts_with("send: no answer from WeChat")
                    || errmsg.starts_with("send: broken exchange")));
        if ambiguous && let Some(id) = v["span"]["event_id"].as_str() {
            *out.entry(id.to_owned()).or_default() += 1;
        }
    }
    out
}

/// How many log lines have this `message` (and, if given, an `errmsg` containing `errmsg`).
fn count_lines(lines: &[String], message: &str, errmsg: Option<&str>) -> usize {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .filter(|v| errmsg.is_none_or(|e| v["errmsg"].as_str().is_some_and(|m| m.contains(e))))
        .count()
}

/// What a test's run came to.
#[derive(Debug, Default)]
struct Ledger {
    events: usize,
    sent_once: usize,
    sent_more: usize,
    never_sent_dead: usize,
    sent_and_dead: usize,
    dead_by_class: BTreeMap<String, usize>,
    ambiguous_logged: usize,
    extra_outcomes: usize,
}

/// Three worker processes' worth of a test: the app (queues, prefix, emulator), the config
/// file they share, the running processes and the logs of those gone.
struct Fleet {
    name: String,
    app: TestApp,
    policy: Policy,
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    workers: Vec<Option<WorkerProcess>>,
    retired: Vec<String>,
    /// Accepted sends of emulators already shut down.
    earlier_sends: Vec<AcceptedSend>,
    /// Dead letters taken off the queue so far.
    dead: Vec<DeadLetter>,
}

impl Fleet {
    /// A new app with `workers` worker slots (not started yet: [`Fleet::spawn_all`]).
    /// The config is the test config made fast (1 s WeChat timeout, 5 attempts with 200 ms
    /// … 1 s backoff, one immediate token retry), with `tweak` applied last.
    async fn new(
        name: &str,
        options: MockOptions,
        policy: Policy,
        workers: usize,
        tweak: impl FnOnce(&mut toml::Table),
    ) -> Fleet {
        Fleet::on_queues(name, options, policy, workers, QueueType::Classic, tweak).await
    }

    /// [`Fleet::new`] on queues of the given type.
    async fn on_queues(
        name: &str,
        options: MockOptions,
        policy: Policy,
        workers: usize,
        queue_type: QueueType,
        tweak: impl FnOnce(&mut toml::Table),
    ) -> Fleet {
        let mut app = TestApp::start_with(name, options, |c| c.amqp.queue_type = queue_type).await;
        let mut table: toml::Table =
            toml::from_str(&config_text(&app.prefix, &app.mock.base_url()))
                .expect("the test config is TOML");
        set_toml(&mut table, "wechat", "timeout", "1s");
        set_toml(&mut table, "wechat", "lock_ttl", "1500ms");
        set_toml(&mut table, "retry", "max_attempts", 5);
        set_toml(&mut table, "retry", "initial", "200ms");
        set_toml(&mut table, "retry", "max", "1s");
        set_toml(&mut table, "retry", "token_retries", 1);
        set_toml(&mut table, "policy", "on_ambiguous", policy.as_str());
        // The test Redis keeps nothing on disk; these tests are about the worker, not Redis.
        set_toml(&mut table, "policy", "unsafe_redis", true);
        set_toml(&mut table, "worker", "shutdown_grace", "5s");
        let queue_type_name = match queue_type {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        };
        set_toml(&mut table, "amqp", "queue_type", queue_type_name);
        tweak(&mut table);
        let text = toml::to_string(&table).expect("config serializes");
        let loaded = load_str(&text, Path::new("faults.toml"), vec![]).expect("config parses");
        assert_eq!(loaded.problems(), vec![], "the fault config is clean");
        // The test's own view (retry tiers for `pending`, cleanup) must match the workers'.
        app.config = loaded.config;
        Topology::new(&app.config.amqp, &app.config.retry)
            .declare(app.publisher.channel())
            .await
            .expect("topology");
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("wxpush.toml");
        std::fs::write(&config_path, text).expect("config written");
        Fleet {
            name: name.to_owned(),
            app,
            policy,
            _dir: dir,
            config_path,
            workers: (0..workers).map(|_| None).collect(),
            retired: Vec::new(),
            earlier_sends: Vec::new(),
            dead: Vec::new(),
        }
    }

    /// Starts worker `i` and waits until its `/readyz` says 200.
    async fn spawn(&mut self, i: usize) {
        assert!(self.workers[i].is_none(), "worker {i} is running");
        let worker = WorkerProcess::start(&self.config_path, &[]);
        let admin = worker.admin_addr().await;
        await_readyz(admin, 200, Duration::from_secs(60)).await;
        self.workers[i] = Some(worker);
    }

    async fn spawn_all(&mut self) {
        for i in 0..self.workers.len() {
            self.spawn(i).await;
        }
    }

    /// SIGKILL worker `i`.
    async fn kill(&mut self, i: usize) {
        let worker = self.workers[i].take().expect("worker running");
        self.retired.extend(worker.kill().await);
    }

    fn pids(&self) -> Vec<u32> {
        self.workers
            .iter()
            .flatten()
            .map(WorkerProcess::pid)
            .collect()
    }

    async fn admin(&self, i: usize) -> std::net::SocketAddr {
        self.workers[i]
            .as_ref()
            .expect("worker running")
            .admin_addr()
            .await
    }

    /// SIGTERM every worker; each must exit 0 within its grace period.
    async fn stop(&mut self) {
        for (i, slot) in self.workers.iter_mut().enumerate() {
            if let Some(worker) = slot.take() {
                let (status, lines) = worker.terminate(Duration::from_secs(20)).await;
                let ok = status.is_some_and(|s| s.success());
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                self.retired.extend(lines);
                assert!(
                    ok,
                    "worker {i} exit on SIGTERM: {status:?}; log tail:\n{tail}"
                );
            }
        }
    }

    fn logs(&self) -> Vec<String> {
        let mut lines = self.retired.clone();
        for worker in self.workers.iter().flatten() {
            lines.extend(worker.log());
        }
        lines
    }

    fn all_sends(&self) -> Vec<AcceptedSend> {
        let mut sends = self.earlier_sends.clone();
        sends.extend(self.app.mock.sends());
        sends
    }

    /// Publishes `events` in the background, spread evenly over `over`, each confirmed.
    fn publish_paced(&self, events: Vec<Value>, over: Duration) -> tokio::task::JoinHandle<()> {
        let publisher = self.app.publisher.clone();
        let exchange = self.app.config.amqp.exchange.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let n = events.len();
            for (i, event) in events.into_iter().enumerate() {
                let body = serde_json::to_vec(&event).unwrap();
                publisher
                    .publish(&exchange, "order.paid", &body, BasicProperties::default())
                    .await
                    .expect("publish confirmed");
                if i % 20 == 19 {
                    tokio::time::sleep_until(start + over.mul_f64((i + 1) as f64 / n as f64)).await;
                }
            }
        })
    }

    /// Moves whatever is in the dead-letter queue into `self.dead`.
    async fn drain_dead(&mut self) {
        let Ok(channel) = self.app.connection.create_channel().await else {
            return;
        };
        let queue = self.app.config.amqp.dead_letter_queue.clone();
        while let Ok(Some(m)) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
        {
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack a dead letter");
            self.dead.push(DeadLetter::of(&m.delivery));
        }
        let _ = channel.close(200, "drained".into()).await;
    }

    /// Waits until every event is sent or dead-lettered and nothing is left waiting in the
    /// queues, steadily for 3 s (a message waiting on another worker's claim cycles through
    /// a retry tier, so it shows up as pending).
    async fn await_settled(&mut self, ids: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut quiet: Option<(Instant, (usize, usize))> = None;
        loop {
            self.drain_dead().await;
            let sends = self.all_sends();
            let mut accounted: BTreeSet<String> = sends.iter().filter_map(send_id).collect();
            accounted.extend(self.dead.iter().filter_map(DeadLetter::event_id));
            let pending = self.app.pending().await;
            let marker = (sends.len(), self.dead.len());
            if pending == 0 && ids.iter().all(|id| accounted.contains(id)) {
                match quiet {
                    Some((since, m)) if m == marker => {
                        if since.elapsed() >= Duration::from_secs(3) {
                            return;
                        }
                    }
                    _ => quiet = Some((Instant::now(), marker)),
                }
            } else {
                quiet = None;
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = ids.iter().filter(|id| !accounted.contains(*id)).collect();
                let log = self.logs();
                panic!(
                    "[{}] not settled after {timeout:?}: {} of {} events accounted, {pending} pending; missing (first 20): {:?}\nlog tail:\n{}",
                    self.name,
                    ids.len() - missing.len(),
                    ids.len(),
                    &missing[..missing.len().min(20)],
                    log[log.len().saturating_sub(40)..].join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the workers and checks the ledger: `allowed_dead` are the dead-letter classes
    /// this test may produce.
    async fn finish(&mut self, ids: &[String], allowed_dead: &[&str]) -> Ledger {
        self.stop().await;
        assert_eq!(
            self.app.pending().await,
            0,
            "[{}] messages left in the events queue or retry tiers after every worker stopped",
            self.name
        );
        self.drain_dead().await;
        let logs = self.logs();
        let panics: Vec<_> = logs.iter().filter(|l| l.contains("panicked")).collect();
        assert!(
            panics.is_empty(),
            "[{}] a worker panicked: {panics:#?}",
            self.name
        );
        let ledger = self.ledger(ids, allowed_dead, &logs);
        eprintln!("[{}] ledger: {ledger:?}", self.name);
        ledger
    }

    fn ledger(&self, ids: &[String], allowed_dead: &[&str], logs: &[String]) -> Ledger {
        let name = &self.name;
        let known: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let mut sends: BTreeMap<String, usize> = BTreeMap::new();
        for send in self.all_sends() {
            let id = send_id(&send).unwrap_or_default();
            assert!(
                known.contains(id.as_str()),
                "[{name}] a send for no published event: {send:?}"
            );
            *sends.entry(id).or_default() += 1;
        }
        let mut dead: BTreeMap<String, Vec<&DeadLetter>> = BTreeMap::new();
        for d in &self.dead {
            let id = d.event_id().unwrap_or_default();
            assert!(
                known.contains(id.as_str()),
                "[{name}] a dead letter for no published event: {d:?}"
            );
            dead.entry(id).or_default().push(d);
        }
        let ambiguous = ambiguous_by_event(logs);
        let mut ledger = Ledger {
            events: ids.len(),
            ambiguous_logged: ambiguous.values().sum(),
            ..Ledger::default()
        };
        for id in ids {
            let s = sends.get(id).copied().unwrap_or(0);
            let d = dead.get(id).map(Vec::as_slice).unwrap_or_default();
            assert!(
                s + d.len() > 0,
                "[{name}] event {id} was lost: neither sent nor dead-lettered"
            );
            // One dead letter per event: copies of it (a kill between its confirm and its
            // Redis record, docs/reliability.md §1) carry the deciding claim's letter id,
            // which every reader collapses; a second id would be a second decision.
            assert!(
                d.iter()
                    .all(|l| l.letter_id.is_some() && l.letter_id == d[0].letter_id),
                "[{name}] event {id} dead-lettered twice (letter ids differ): {d:?}"
            );
            if d.len() > 1 {
                eprintln!("[{name}] event {id}: {} copies of one dead letter", d.len());
            }
            if let Some(letter) = d.first() {
                let class = letter.class.clone().unwrap_or_default();
                assert!(
                    allowed_dead.contains(&class.as_str()),
                    "[{name}] event {id} dead-lettered as `{class}`; this test allows {allowed_dead:?}: {letter:?}"
                );
                *ledger.dead_by_class.entry(class).or_default() += 1;
            }
            match (s, d.len()) {
                (0, _) => ledger.never_sent_dead += 1,
                (1, 0) => ledger.sent_once += 1,
                (_, 0) => ledger.sent_more += 1,
                _ => ledger.sent_and_dead += 1,
            }
            let extra = s.saturating_sub(1) + usize::from(s > 0 && !d.is_empty());
            ledger.extra_outcomes += extra;
            match self.policy {
                Policy::DeadLetter => {
                    assert!(
                        s <= 1,
                        "[{name}] event {id} sent {s} times under on_ambiguous = \"dead_letter\""
                    );
                    if s == 1 && !d.is_empty() {
                        assert_eq!(
                            d[0].class.as_deref(),
                            Some("ambiguous"),
                            "[{name}] event {id} was sent and also dead-lettered, not as ambiguous: {:?}",
                            d[0]
                        );
                    }
                }
                Policy::Resend => {
                    let logged = ambiguous.get(id).copied().unwrap_or(0);
                    assert!(
                        extra <= logged,
                        "[{name}] event {id}: sent {s} times and dead-lettered {} times, but only {logged} ambiguous attempts were logged for it",
                        d.len()
                    );
                }
            }
        }
        assert_eq!(
            ledger.sent_once + ledger.sent_more + ledger.never_sent_dead + ledger.sent_and_dead,
            ledger.events,
            "[{name}] every event has exactly one line in the ledger"
        );
        if self.policy == Policy::DeadLetter {
            assert_eq!(
                count_lines(
                    logs,
                    "a previous attempt ended without an answer; sending again (policy.on_ambiguous = \"resend\")",
                    None
                ),
                0,
                "[{name}] resent an ambiguous event under on_ambiguous = \"dead_letter\""
            );
        }
        ledger
    }

    async fn cleanup(mut self) {
        self.stop().await;
        self.app.cleanup().await;
    }
}

// ----- services: RabbitMQ and Redis restarts, closing connections -----

async fn rabbitmqctl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts the RabbitMQ app again when dropped, whatever happened to the test.
struct RabbitComesBack;

impl RabbitComesBack {
    async fn stop_app() -> RabbitComesBack {
        let guard = RabbitComesBack;
        rabbitmqctl(&["stop_app"]).await;
        guard
    }

    async fn start_app(&self) {
        rabbitmqctl(&["start_app"]).await;
        rabbitmqctl(&["await_startup"]).await;
    }
}

impl Drop for RabbitComesBack {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("await_startup")
            .output();
    }
}

/// The broker-side ids of the AMQP connections of these worker processes (their
/// connections are named `wxpush worker (pid N)`), so other tests sharing the broker are
/// left alone.
async fn worker_connections(pids: &[u32]) -> Vec<String> {
    let out = rabbitmqctl(&["list_connections", "-q", "pid", "client_properties"]).await;
    out.lines()
        .filter(|line| {
            line.contains("wxpush worker")
                && pids.iter().any(|p| line.contains(&format!("(pid {p})")))
        })
        .filter_map(|line| line.split('\t').next())
        .map(|pid| pid.trim().to_owned())
        .collect()
}

async fn sleep_until(start: Instant, at: Duration) {
    tokio::time::sleep_until((start + at).into()).await;
}

// ----- 1. SIGKILL -----

/// 5,000 events through 3 worker processes; 5 times a random worker is SIGKILLed at a random
/// moment while events flow, and restarted. Sends take 50 ms, so a kill usually catches
/// some mid-call: their claims expire into the ambiguous case.
async fn sigkill_workers(policy: Policy, queue_type: QueueType) {
    let _serial = SERIAL.lock().await;
    let mut rng = seeded_rng();
    let (n, kills, stream) = if soak() {
        (50_000, 20, Duration::from_secs(150))
    } else {
        (5_000, 5, Duration::from_secs(15))
    };
    let queues = match queue_type {
        QueueType::Classic => "",
        QueueType::Quorum => "-quorum",
    };
    let name = format!("kill-{}{queues}", policy.as_str().replace('_', ""));
    let mut fleet = Fleet::on_queues(&name, latency(50), policy, 3, queue_type, |_| {}).await;
    fleet.spawn_all().await;
    let (ids, events) = events("k", n);
    let start = Instant::now();
    let publishing = fleet.publish_paced(events, stream);
    let mut moments: Vec<Duration> = (0..kills)
        .map(|_| stream.mul_f64(0.05 + 0.85 * rng.f64()))
        .collect();
    moments.sort();
    for at in moments {
        sleep_until(start, at).await;
        let i = rng.usize(0..3);
        let sent = fleet.app.mock.sends().len();
        fleet.kill(i).await;
        eprintln!(
            "[{name}] SIGKILL worker {i} at {:?} ({sent} of {n} sent)",
            start.elapsed()
        );
        assert!(
            sent < n,
            "[{name}] every event was sent before the kill; nothing tested"
        );
        tokio::time::sleep(Duration::from_millis(rng.u64(0..800))).await;
        fleet.spawn(i).await;
    }
    publishing.await.expect("publisher task");
    fleet
        .await_settled(&ids, Duration::from_secs(if soak() { 600 } else { 120 }))
        .await;
    let allowed: &[&str] = match policy {
        Policy::Resend => &[],
        Policy::DeadLetter => &["ambiguous"],
    };
    fleet.finish(&ids, allowed).await;
    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_workers_at_random_moments_resend() {
    sigkill_workers(Policy::Resend, QueueType::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_workers_at_random_moments_dead_letter() {
    sigkill_workers(Policy::DeadLetter, QueueType::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_workers_at_random_moments_resend_quorum() {
    sigkill_workers(Policy::Resend, QueueType::Quorum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_workers_at_random_moments_dead_letter_quorum() {
    sigkill_workers(Policy::DeadLetter, QueueType::Quorum).await;
}

// ----- 2. the broker and Redis -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_mid_stream() {
    let _serial = SERIAL.lock().await;
    let n = scaled(2_000);
    // 2 workers × prefetch 8 / 80 ms: about 200 sends a second, so the stream is mid-way
    // when the broker has stopped (stop_app takes seconds).
    let mut fleet = Fleet::new("rabbit-restart", latency(80), Policy::Resend, 2, |t| {
        set_toml(t, "amqp", "prefetch", 8);
    })
    .await;
    let (ids, events) = events("rr", n);
    fleet.app.publish_all(&events).await;
    fleet.spawn_all().await;
    let admin = fleet.admin(0).await;
    fleet.app.sent(300).await;

    let rabbit = RabbitComesBack::stop_app().await;
    let at_stop = fleet.app.mock.sends().len();
    assert!(
        at_stop < n,
        "everything was sent before the broker stopped; nothing tested"
    );
    await_readyz(admin, 503, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbit.start_app().await;
    eprintln!("[rabbit-restart] broker stopped at {at_stop} of {n} sends, started again");
    fleet.app.reconnect().await;
    await_readyz(admin, 200, Duration::from_secs(90)).await;

    fleet.await_settled(&ids, Duration::from_secs(120)).await;
    fleet.finish(&ids, &[]).await;
    drop(rabbit);
    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_connections_force_closed() {
    let _serial = SERIAL.lock().await;
    let n = scaled(3_000);
    let mut fleet = Fleet::new("conn-closed", latency(50), Policy::DeadLetter, 3, |t| {
        set_toml(t, "amqp", "prefetch", 8);
    })
    .await;
    fleet.spawn_all().await;
    let (ids, events) = events("cc", n);
    let stream = Duration::from_secs(if soak() { 150 } else { 15 });
    let start = Instant::now();
    let publishing = fleet.publish_paced(events, stream);
    for round in 0..3 {
        sleep_until(start, stream.mul_f64(0.1 + 0.2 * f64::from(round))).await;
        let pids = fleet.pids();
        // A worker may be between sessions right now: wait until each has its connection.
        let connections = eventually(
            "a connection of every worker",
            Duration::from_secs(30),
            || async {
                let c = worker_connections(&pids).await;
                (c.len() >= pids.len()).then_some(c)
            },
        )
        .await;
        let sent = fleet.app.mock.sends().len();
        assert!(
            !publishing.is_finished(),
            "the stream ended before round {round}; nothing tested"
        );
        // rabbitmqctl takes about a second per call here: close them all at once.
        let closing: Vec<_> = connections
            .iter()
            .map(|pid| {
                let pid = pid.clone();
                tokio::spawn(async move {
                    rabbitmqctl(&[
                        "close_connection",
                        &pid,
                        "test: the broker closes the connection",
                    ])
                    .await
                })
            })
            .collect();
        for close in closing {
            close.await.expect("close_connection");
        }
        eprintln!(
            "[conn-closed] round {round}: closed {} connections at {sent} of {n} sends, {:?} in",
            connections.len(),
            start.elapsed()
        );
    }
    publishing.await.expect("publisher task");
    fleet.await_settled(&ids, Duration::from_secs(120)).await;
    fleet.finish(&ids, &["ambiguous"]).await;
    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream() {
    let _serial = SERIAL.lock().await;
    let n = scaled(1_500);
    let mut fleet = Fleet::new("redis-restart", latency(20), Policy::DeadLetter, 2, |t| {
        set_toml(t, "amqp", "prefetch", 8);
    })
    .await;
    fleet.spawn_all().await;
    let admin = fleet.admin(0).await;
    let (ids, events) = events("rd", n);
    let publishing =
        fleet.publish_paced(events, Duration::from_secs(if soak() { 100 } else { 10 }));
    fleet.app.sent(200).await;

    let redis = RedisComesBack::stop_redis();
    let at_stop = fleet.app.mock.sends().len();
    assert!(
        at_stop < n,
        "everything was sent before Redis stopped; nothing tested"
    );
    await_readyz(admin, 503, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart().await;
    eprintln!("[redis-restart] Redis stopped at {at_stop} of {n} sends, started again (empty)");
    await_readyz(admin, 200, Duration::from_secs(60)).await;

    publishing.await.expect("publisher task");
    fleet.await_settled(&ids, Duration::from_secs(120)).await;
    fleet.finish(&ids, &["ambiguous"]).await;
    drop(redis);
    fleet.cleanup().await;
}

/// A replay (issue 13) while the broker restarts: the replay fails when its connection
/// goes; afterwards every letter is in exactly one of the two queues (a batch's republishes
/// and acks are one transaction), and replaying the rest then delivering sends each event
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_under_a_broker_restart() {
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;
    use wxpush::dead_letters::{self, Progress};

    let _serial = SERIAL.lock().await;
    let n = scaled(3_000);
    let mut app = TestApp::start("replay-restart").await;
    let letters: Vec<_> = mixed_dead_letters(&app.prefix, n)
        .into_iter()
        .map(|l| (l.body, l.properties.with_delivery_mode(2)))
        .collect();
    app.fill_dead(&letters).await;
    let progress = Arc::new(Progress::default());
    let run = tokio::spawn({
        let (progress, queues, order) = (progress.clone(), app.dead_queues(8), replay_all());
        async move {
            let connection = wxpush::broker::connect(AMQP_URL, "replay restart").await?;
            dead_letters::run(
                &connection,
                &queues,
                &order,
                &progress,
                &CancellationToken::new(),
                |_| {},
            )
            .await
        }
    });
    eventually("the replay under way", Duration::from_secs(30), || async {
        (progress.snapshot().done >= 200).then_some(())
    })
    .await;
    let rabbit = RabbitComesBack::stop_app().await;
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the replay ends when the broker goes")
        .unwrap();
    let done = progress.snapshot().done as usize;
    eprintln!("[replay-restart] {done} of {n} replayed when the broker stopped: {result:?}");
    assert!(result.is_err() && done < n, "stopped mid-way");
    rabbit.start_app().await;
    app.reconnect().await;

    let ids: BTreeSet<String> = letters.iter().filter_map(|(b, _)| body_id(b)).collect();
    app.assert_each_in_one_queue(&ids).await;

    // Everything back to the dead-letter queue, replayed whole, delivered: each sent once.
    app.replay_all_and_deliver_once(&letters).await;
    drop(rabbit);
    app.cleanup().await;
}

// ----- 3. the emulator misbehaves -----

/// Sends that hang until the worker's 1 s timeout: the answer never came, so the policy
/// decides. The emulator never processes a hung call, so under "resend" every event is sent
/// exactly once; under "dead_letter" exactly the hung ones are dead letters, never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangs_time_out_and_follow_policy() {
    let _serial = SERIAL.lock().await;
    for policy in [Policy::Resend, Policy::DeadLetter] {
        let name = format!("hang-{}", policy.as_str().replace('_', ""));
        let n = scaled(300);
        let mut fleet = Fleet::new(&name, MockOptions::default(), policy, 2, |_| {}).await;
        fleet.spawn_all().await;
        let (ids, events) = events("h", n);
        let start = Instant::now();
        let publishing = fleet.publish_paced(events, Duration::from_secs(3));
        sleep_until(start, Duration::from_millis(500)).await;
        fleet
            .app
            .mock
            .push_faults(FaultTarget::Send, vec![Fault::Hang; 5]);
        sleep_until(start, Duration::from_millis(1500)).await;
        fleet
            .app
            .mock
            .push_faults(FaultTarget::Send, vec![Fault::Hang; 5]);
        publishing.await.expect("publisher task");
        fleet.await_settled(&ids, Duration::from_secs(60)).await;
        let logs = fleet.logs();
        let timeouts = count_lines(&logs, "retry scheduled", Some("no answer from WeChat"));
        match policy {
            Policy::Resend => {
                let ledger = fleet.finish(&ids, &[]).await;
                assert_eq!(ledger.sent_once, n, "{ledger:?}");
                assert_eq!(timeouts, 10, "each hang timed out once and was retried");
                assert_eq!(ledger.ambiguous_logged, 10);
            }
            Policy::DeadLetter => {
                let ledger = fleet.finish(&ids, &["ambiguous"]).await;
                assert_eq!(ledger.never_sent_dead, 10, "{ledger:?}");
                assert_eq!(ledger.sent_once, n - 10, "{ledger:?}");
                assert_eq!(timeouts, 0);
            }
        }
        fleet.cleanup().await;
    }
}

/// Three bursts of 30 × HTTP 500: transient, definite failures, retried with backoff; each
/// event sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_bursts() {
    let _serial = SERIAL.lock().await;
    let n = scaled(1_000);
    let mut fleet = Fleet::new(
        "http500",
        MockOptions::default(),
        Policy::DeadLetter,
        2,
        |_| {},
    )
    .await;
    fleet.spawn_all().await;
    let (ids, events) = events("e", n);
    let start = Instant::now();
    let publishing = fleet.publish_paced(events, Duration::from_secs(5));
    for at in [1000, 2500, 4000] {
        sleep_until(start, Duration::from_millis(at)).await;
        fleet
            .app
            .mock
            .push_faults(FaultTarget::Send, vec![Fault::Http(500); 30]);
    }
    publishing.await.expect("publisher task");
    fleet.await_settled(&ids, Duration::from_secs(60)).await;
    assert_eq!(
        fleet.app.mock.stats().http_errors,
        90,
        "every burst was served"
    );
    let logs = fleet.logs();
    let ledger = fleet.finish(&ids, &[]).await;
    assert_eq!(ledger.sent_once, n, "{ledger:?}");
    assert_eq!(
        count_lines(&logs, "retry scheduled", Some("HTTP 500")),
        90,
        "each 500 scheduled one retry"
    );
    fleet.cleanup().await;
}

/// 30 % of sends answer -1 (system busy). With 5 attempts about 0.3⁵ of the events run out
/// of attempts: those are dead letters with 5 attempts and errcode -1, never also sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_system_busy() {
    let _serial = SERIAL.lock().await;
    let n = scaled(1_000);
    let mut fleet = Fleet::new(
        "busy30",
        MockOptions::default(),
        Policy::DeadLetter,
        2,
        |_| {},
    )
    .await;
    fleet
        .app
        .mock
        .set_fault_rate(FaultTarget::Send, Some(Fault::Errcode(-1)), 0.3);
    fleet.spawn_all().await;
    let (ids, events) = events("b", n);
    fleet.app.publish_all(&events).await;
    fleet.await_settled(&ids, Duration::from_secs(90)).await;
    let ledger = fleet.finish(&ids, &["transient"]).await;
    assert_eq!(ledger.sent_and_dead + ledger.sent_more, 0, "{ledger:?}");
    for d in &fleet.dead {
        assert_eq!(d.attempts, Some(5), "{d:?}");
        assert_eq!(d.errcode, Some(-1), "{d:?}");
    }
    let stats = fleet.app.mock.stats();
    let busy = stats.sends_by_errcode.get("-1").copied().unwrap_or(0);
    assert_eq!(stats.sends_ok + busy, stats.send_calls, "{stats:?}");
    assert_eq!(stats.sends_ok as usize, ledger.sent_once);
    assert_eq!(
        busy as usize,
        count_lines(&fleet.logs(), "retry scheduled", Some("errcode -1")) + fleet.dead.len(),
        "every -1 was retried, or ended its event's attempts"
    );
    let ratio = busy as f64 / stats.send_calls as f64;
    assert!((0.2..0.4).contains(&ratio), "fault ratio {ratio}");
    fleet.cleanup().await;
}

/// Every token expires at once mid-stream (42001 for all of them): the workers invalidate
/// it and exactly one of them fetches a new one; nothing is dead-lettered or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_expired_at_once() {
    let _serial = SERIAL.lock().await;
    let n = scaled(1_500);
    let mut fleet = Fleet::new(
        "expired",
        MockOptions::default(),
        Policy::DeadLetter,
        3,
        |_| {},
    )
    .await;
    fleet.spawn_all().await;
    let (ids, events) = events("x", n);
    let publishing = fleet.publish_paced(events, Duration::from_secs(6));
    fleet.app.sent(n / 3).await;
    let before = fleet.app.mock.stats();
    assert_eq!(
        before.tokens_issued, 1,
        "one token for a cold start of 3 workers"
    );
    fleet.app.mock.expire_all_tokens();
    let at_expiry = fleet.app.mock.sends().len();
    assert!(
        at_expiry < n,
        "everything was sent before the expiry; nothing tested"
    );
    publishing.await.expect("publisher task");
    fleet.await_settled(&ids, Duration::from_secs(60)).await;
    let ledger = fleet.finish(&ids, &[]).await;
    assert_eq!(ledger.sent_once, n, "{ledger:?}");
    let after = fleet.app.mock.stats();
    assert_eq!(
        after.tokens_issued,
        before.tokens_issued + 1,
        "one refresh for all workers: {after:?}"
    );
    assert!(
        after.sends_by_errcode.get("42001").copied().unwrap_or(0) >= 1,
        "the expiry hit some sends: {after:?}"
    );
    assert_eq!(after.force_refresh_calls, 0, "{after:?}");
    fleet.cleanup().await;
}

/// The emulator answers in 2 s for a while, the workers give up after 1 s: those sends are
/// ambiguous, and each policy is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_spikes() {
    let _serial = SERIAL.lock().await;
    for policy in [Policy::Resend, Policy::DeadLetter] {
        let name = format!("spike-{}", policy.as_str().replace('_', ""));
        let n = scaled(600);
        let mut fleet = Fleet::new(&name, MockOptions::default(), policy, 2, |t| {
            // A spike may cost a message three attempts.
            set_toml(t, "retry", "max_attempts", 8);
        })
        .await;
        fleet.spawn_all().await;
        let (ids, events) = events("l", n);
        let start = Instant::now();
        let publishing = fleet.publish_paced(events, Duration::from_secs(6));
        sleep_until(start, Duration::from_millis(1500)).await;
        fleet.app.mock.set_latency(Duration::from_secs(2));
        sleep_until(start, Duration::from_millis(4000)).await;
        fleet.app.mock.set_latency(Duration::ZERO);
        publishing.await.expect("publisher task");
        fleet.await_settled(&ids, Duration::from_secs(60)).await;
        let allowed: &[&str] = match policy {
            Policy::Resend => &[],
            Policy::DeadLetter => &["ambiguous"],
        };
        let ledger = fleet.finish(&ids, allowed).await;
        match policy {
            Policy::Resend => assert!(ledger.ambiguous_logged > 0, "no send timed out: {ledger:?}"),
            Policy::DeadLetter => assert!(
                ledger.dead_by_class.get("ambiguous").copied().unwrap_or(0) > 0,
                "no send timed out: {ledger:?}"
            ),
        }
        fleet.cleanup().await;
    }
}

/// The emulator goes away for 10 s (connection refused) and a new one starts on the same
/// port. It does not know the old token (40001): one refresh, and every event is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_for_10s() {
    let _serial = SERIAL.lock().await;
    let n = scaled(800);
    let mut fleet = Fleet::new("refused", MockOptions::default(), Policy::Resend, 2, |t| {
        // Enough attempts to outlast the outage (about 1 s apart once backed off).
        set_toml(t, "retry", "max_attempts", 40);
    })
    .await;
    fleet.spawn_all().await;
    let (ids, events) = events("r", n);
    let start = Instant::now();
    let publishing = fleet.publish_paced(events, Duration::from_secs(if soak() { 60 } else { 14 }));
    sleep_until(start, Duration::from_secs(2)).await;

    // Quiesce the first emulator so its record of accepted sends is final, then stop it.
    fleet
        .app
        .mock
        .set_fault_rate(FaultTarget::Send, Some(Fault::Http(503)), 1.0);
    eventually("no call in flight", Duration::from_secs(10), || async {
        (fleet.app.mock.stats().in_flight == 0).then_some(())
    })
    .await;
    fleet.earlier_sends = fleet.app.mock.sends();
    let addr = fleet.app.mock.addr();
    let placeholder = MockServer::start(MockOptions::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let first = std::mem::replace(&mut fleet.app.mock, placeholder);
    first.shutdown().await;
    let down_at = fleet.earlier_sends.len();
    assert!(
        down_at < n,
        "everything was sent before the outage; nothing tested"
    );
    eprintln!("[refused] emulator down at {down_at} of {n} sends");

    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = MockServer::start(MockOptions::default(), addr)
        .await
        .expect("a new emulator on the same port");
    second.register_app(APPID, SECRET);
    let placeholder = std::mem::replace(&mut fleet.app.mock, second);
    placeholder.shutdown().await;

    publishing.await.expect("publisher task");
    fleet.await_settled(&ids, Duration::from_secs(90)).await;
    let logs = fleet.logs();
    let ledger = fleet.finish(&ids, &[]).await;
    assert_eq!(ledger.sent_once + ledger.sent_more, n, "{ledger:?}");
    let stats = fleet.app.mock.stats();
    assert_eq!(
        stats.tokens_issued, 1,
        "one refresh for both workers: {stats:?}"
    );
    assert!(
        stats.sends_by_errcode.get("40001").copied().unwrap_or(0) >= 1,
        "the old token was refused: {stats:?}"
    );
    assert!(
        count_lines(&logs, "retry scheduled", Some("cannot connect to WeChat")) > 0,
        "the outage was seen as connection failures"
    );
    fleet.cleanup().await;
}

// ----- 4. retry exhaustion -----

/// Every send answers -1: each message is tried 5 times (`max_attempts`), then lands in the
/// dead-letter queue exactly once with `x-wxpush-attempts = 5`, with 2 workers taking turns
/// on its retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_exhaustion_lands_in_dlq_exactly_once() {
    let _serial = SERIAL.lock().await;
    let n = 40;
    let mut fleet = Fleet::new(
        "exhaust",
        MockOptions::default(),
        Policy::DeadLetter,
        2,
        |_| {},
    )
    .await;
    fleet
        .app
        .mock
        .set_fault_rate(FaultTarget::Send, Some(Fault::Errcode(-1)), 1.0);
    fleet.spawn_all().await;
    let (ids, events) = events("z", n);
    fleet.app.publish_all(&events).await;
    fleet.await_settled(&ids, Duration::from_secs(60)).await;
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, worker) in fleet.workers.iter().enumerate() {
        let log = worker.as_ref().expect("running").log();
        assert!(
            count_lines(&log, "retry scheduled", None) > 0,
            "worker {i} took no part in the retries"
        );
    }
    let ledger = fleet.finish(&ids, &["transient"]).await;
    assert_eq!(ledger.never_sent_dead, n, "{ledger:?}");
    assert_eq!(fleet.dead.len(), n);
    for d in &fleet.dead {
        assert_eq!(d.attempts, Some(5), "{d:?}");
        assert_eq!(d.errcode, Some(-1), "{d:?}");
        assert_eq!(d.class.as_deref(), Some("transient"), "{d:?}");
        assert!(d.first_failed_at.is_some(), "{d:?}");
    }
    let stats = fleet.app.mock.stats();
    assert_eq!(stats.send_calls, 5 * n as u64, "{stats:?}");
    assert_eq!(stats.sends_ok, 0);
    fleet.cleanup().await;
}

// ----- 5. a bug: an ambiguous dead letter that could not be published -----

/// Under `on_ambiguous = "dead_letter"` an event whose earlier attempt may have reached
/// WeChat must never be sent. Here a worker died mid-send (its claim is left, expired); the
/// next worker finds it ambiguous and dead-letters it, but the dead-letter publish fails once
/// (here the queue is missing; in production the connection drops or the worker is killed
/// between the Redis update and the broker's confirm). The message comes back, and the
/// event must still not be sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_event_is_never_sent_when_its_dead_letter_fails_once() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::new(
        "amb-dl",
        MockOptions::default(),
        Policy::DeadLetter,
        1,
        |_| {},
    )
    .await;
    fleet.spawn_all().await;
    let id = "amb-0";
    // A worker claimed the event and died mid-send: its claim expired long ago.
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{}:event:{{{id}}}", fleet.app.prefix))
        .arg("state")
        .arg("claimed")
        .arg("owner")
        .arg("a-worker-killed-mid-send")
        .arg("deadline_ms")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The dead-letter publish fails (returned: no such queue) until the queue is back.
    let channel = fleet.app.connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            fleet.app.config.amqp.dead_letter_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let (ids, events) = events("amb", 1);
    assert_eq!(ids[0], id);
    fleet.app.publish(&events[0]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Topology::new(&fleet.app.config.amqp, &fleet.app.config.retry)
        .declare(fleet.app.publisher.channel())
        .await
        .unwrap();
    fleet.await_settled(&ids, Duration::from_secs(30)).await;
    let sends = fleet.app.mock.sends();
    let ledger = fleet.finish(&ids, &["ambiguous"]).await;
    fleet.cleanup().await;
    assert!(
        sends.is_empty(),
        "the ambiguous event was sent after its dead letter failed once: {sends:?}"
    );
    assert_eq!(
        ledger.dead_by_class.get("ambiguous"),
        Some(&1),
        "{ledger:?}"
    );
}
