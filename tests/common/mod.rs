//! The test app: each test gets its own exchange, queues and Redis key prefix, an in-process
//! WeChat emulator on a random port, and workers started on the real RabbitMQ and Redis.
//! Nothing here sleeps to synchronise: helpers poll for the condition a test awaits.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{BasicProperties, Connection};
use serde_json::{Value, json};
use wxpush::broker::dead_letter::{self, Failure, Letter};
use wxpush::broker::headers as h;
use wxpush::broker::publish::Publisher;
use wxpush::broker::topology::Topology;
pub use wxpush::config::{Config, RedisConfig, RedisMode, load_str};
use wxpush::worker::Worker;
use wxpush_mock_wechat::{MockOptions, MockServer};

pub mod push;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
pub const APPID: &str = "wxtest00000000001";
pub const SECRET: &str = "test-app-secret-do-not-log";
pub const SECRET_ENV: &str = "WXPUSH_TEST_APP_SECRET";

/// A valid-looking openid (28 characters starting with `o`) derived from `n`.
pub fn openid(n: usize) -> String {
    format!("o{:0>27}", format!("user{n}"))
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which Redis the suites run against: `WXPUSH_TEST_REDIS_MODE` = `single` (default, the
/// Redis on 6379), `cluster` or `sentinel` (the loopback clusters of
/// `scripts/clusters.sh start`, found through the `WXPUSH_TEST_REDIS_*` variables it
/// prints). The same tests, parameterised: `scripts/test.sh` runs the pipeline, token and
/// claims suites once per mode.
pub fn redis_mode() -> RedisMode {
    match std::env::var("WXPUSH_TEST_REDIS_MODE").as_deref() {
        Err(_) | Ok("") | Ok("single") => RedisMode::Single,
        Ok("cluster") => RedisMode::Cluster,
        Ok("sentinel") => RedisMode::Sentinel,
        Ok(other) => panic!("WXPUSH_TEST_REDIS_MODE={other}: expected single, cluster or sentinel"),
    }
}

/// Points `redis` at the Redis of `mode`. A cluster mode whose variables are missing fails
/// the test, saying how to start the clusters: it never passes against the wrong Redis.
pub fn use_redis(redis: &mut RedisConfig, mode: RedisMode) {
    redis.mode = mode;
    match mode {
        RedisMode::Single => redis.urls.clear(),
        RedisMode::Cluster => redis.urls = cluster_env("WXPUSH_TEST_REDIS_CLUSTER"),
        RedisMode::Sentinel => {
            redis.urls = cluster_env("WXPUSH_TEST_REDIS_SENTINEL");
            redis.sentinel_master = Some(
                std::env::var("WXPUSH_TEST_REDIS_SENTINEL_MASTER")
                    .unwrap_or_else(|_| "mymaster".into()),
            );
        }
    }
}

/// The `[redis]` keys that reach the Redis of `mode`.
pub fn redis_section(mode: RedisMode) -> String {
    let mut redis = RedisConfig::default();
    use_redis(&mut redis, mode);
    let urls = toml::Value::from(redis.urls.clone());
    match (mode, &redis.sentinel_master) {
        (RedisMode::Single, _) => format!("url = \"{REDIS_URL}\""),
        (RedisMode::Cluster, _) => format!("mode = \"cluster\"\nurls = {urls}"),
        (RedisMode::Sentinel, master) => format!(
            "mode = \"sentinel\"\nurls = {urls}\nsentinel_master = \"{}\"",
            master.as_deref().unwrap_or("mymaster")
        ),
    }
}

/// A comma-separated list of URLs from `var`, set by `scripts/clusters.sh start`.
pub fn cluster_env(var: &str) -> Vec<String> {
    match std::env::var(var) {
        Ok(list) if !list.trim().is_empty() => list.split(',').map(str::to_owned).collect(),
        _ => panic!(
            "{var} is not set: this test needs the loopback clusters. Run: eval \"$(scripts/clusters.sh start)\" (scripts/test.sh does it)"
        ),
    }
}

/// The Redis config of the mode under test, with `prefix`.
pub fn redis_config(prefix: &str) -> RedisConfig {
    let mut redis = RedisConfig {
        key_prefix: prefix.to_owned(),
        ..RedisConfig::default()
    };
    use_redis(&mut redis, redis_mode());
    redis
}

/// A connection to the Redis of the mode under test (the one type every mode uses).
pub async fn redis_conn(redis: &RedisConfig) -> wxpush::store::Conn {
    wxpush::store::HotPath::new(redis)
        .expect("redis config")
        .get()
        .await
        .expect("Redis of the mode under test answers")
}

/// The test config, its `[redis]` section for the mode under test ([`redis_mode`]).
pub fn config_text(prefix: &str, api_base: &str) -> String {
    let redis = redis_section(redis_mode());
    format!(
        r#"
[amqp]
url = "{AMQP_URL}"
exchange = "{prefix}.x"
queue = "{prefix}.events"
dead_letter_queue = "{prefix}.dead"
prefetch = 64

[redis]
{redis}
key_prefix = "{prefix}"

[wechat]
api_base = "{api_base}"
timeout = "2s"
lock_ttl = "5s"

[apps.default]
appid = "{APPID}"
secret_env = "{SECRET_ENV}"

[retry]
max_attempts = 3
initial = "200ms"
max = "800ms"

[admin]
listen = "127.0.0.1:0"

[worker]
shutdown_grace = "5s"

[[templates]]
event = "order.paid"
template_id = "TPL_ORDER_PAID"
page = "pages/order/detail?id={{order_no}}"
miniprogram_state = "formal"
lang = "zh_CN"
[templates.data]
character_string1 = "{{order_no}}"
amount2 = "{{amount|amount}}"
time3 = "{{paid_at|time}}"
thing4 = "{{remark}}"

[[templates]]
event = "task.due"
template_id = "TPL_TASK_DUE"
[templates.data]
thing1 = "{{title}}"
phrase2 = "{{status}}"
"#
    )
}

/// Queues of test, demo and benchmark runs that were not cleaned up (a test that failed
/// before its cleanup) expire after 15 idle minutes instead of piling up on the broker.
fn expire_abandoned_run_queues() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = std::process::Command::new("rabbitmqctl")
            .args([
                "-q",
                "set_policy",
                "--apply-to",
                "queues",
                "--priority",
                "0",
                "wxpush-test-runs-expire",
                "^(t-|wxpush-bench-|wxpush-demo-)",
                r#"{"expires": 900000}"#,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    });
}

pub struct TestApp {
    pub prefix: String,
    pub mock: MockServer,
    pub config: Config,
    pub connection: Connection,
    pub publisher: Publisher,
}

impl TestApp {
    pub async fn start(name: &str) -> TestApp {
        TestApp::start_with(name, MockOptions::default(), |_| {}).await
    }

    pub async fn start_with(
        name: &str,
        options: MockOptions,
        tweak: impl FnOnce(&mut Config),
    ) -> TestApp {
        // SAFETY: every test in the process sets the same value.
        unsafe { std::env::set_var(SECRET_ENV, SECRET) };
        expire_abandoned_run_queues();
        let prefix = format!(
            "t-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mock = MockServer::start(options, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("mock starts");
        mock.register_app(APPID, SECRET);
        let loaded = load_str(
            &config_text(&prefix, &mock.base_url()),
            Path::new("test.toml"),
            vec![],
        )
        .expect("test config parses");
        assert_eq!(loaded.problems(), vec![], "test config is clean");
        let mut config = loaded.config;
        tweak(&mut config);
        let connection = wxpush::broker::connect_any(&config.amqp, "test")
            .await
            .expect("RabbitMQ is up");
        let publisher = Publisher::open(&connection).await.expect("confirm channel");
        Topology::new(&config.amqp, &config.retry)
            .declare(publisher.channel())
            .await
            .expect("topology");
        TestApp {
            prefix,
            mock,
            config,
            connection,
            publisher,
        }
    }

    pub async fn worker(&self) -> Worker {
        Worker::start(self.config.clone())
            .await
            .expect("worker starts")
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.publisher
            .publish(
                &self.config.amqp.exchange,
                routing_key,
                body,
                BasicProperties::default(),
            )
            .await
            .expect("publish confirmed");
    }

    /// Publishes with integer headers, e.g. `x-wxpush-replayed` as `wxpush replay` sets it.
    pub async fn publish_raw_with_headers(
        &self,
        routing_key: &str,
        body: &[u8],
        headers: &[(&str, i64)],
    ) {
        let mut table = lapin::types::FieldTable::default();
        for (name, value) in headers {
            h::set_i64(&mut table, name, *value);
        }
        self.publisher
            .publish(
                &self.config.amqp.exchange,
                routing_key,
                body,
                BasicProperties::default().with_headers(table),
            )
            .await
            .expect("publish confirmed");
    }

    pub async fn publish(&self, event: &Value) {
        let kind = event["type"].as_str().unwrap_or("none");
        self.publish_raw(kind, &serde_json::to_vec(event).unwrap())
            .await;
    }

    /// Waits until the emulator has accepted `n` sends (30 s, plus 20 ms an event: a debug
    /// build on a loaded 2-core CI machine sends a few hundred a second).
    pub async fn sent(&self, n: usize) -> Vec<wxpush_mock_wechat::AcceptedSend> {
        eventually(
            &format!("{n} accepted sends"),
            Duration::from_secs(30) + Duration::from_millis(20) * n as u32,
            || async {
                let sends = self.mock.sends();
                (sends.len() >= n).then_some(sends)
            },
        )
        .await
    }

    /// Takes `n` dead letters off the dead-letter queue (waiting for them).
    pub async fn dead_letters(&self, n: usize) -> Vec<DeadLetter> {
        let channel = self.connection.create_channel().await.unwrap();
        let queue = self.config.amqp.dead_letter_queue.as_str();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < n {
            match channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                Some(m) => {
                    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
                    out.push(DeadLetter::of(&m.delivery));
                }
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "timed out waiting for {n} dead letters, got {}: {out:?}",
                        out.len()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        out
    }

    /// Messages in a queue right now (ready, not unacked).
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        wxpush::broker::inspect_queue(&channel, queue)
            .await
            .unwrap()
            .message_count()
    }

    /// The retry tier queues of this app's topology.
    pub fn tier_queues(&self) -> Vec<String> {
        Topology::new(&self.config.amqp, &self.config.retry)
            .tiers
            .iter()
            .map(|t| t.queue.clone())
            .collect()
    }

    /// Ready messages in the events queue and every retry tier (not the dead-letter queue).
    pub async fn pending(&self) -> u32 {
        let mut total = self.queue_len(&self.config.amqp.queue).await;
        for q in self.tier_queues() {
            total += self.queue_len(&q).await;
        }
        total
    }

    /// Ready messages in the dead-letter queue.
    pub async fn dead_len(&self) -> u32 {
        self.queue_len(&self.config.amqp.dead_letter_queue).await
    }

    /// The `state` field of an event's idempotency record in Redis (`claimed`, `sent`, …).
    pub async fn event_state(&self, event_id: &str) -> Option<String> {
        let mut conn = wxpush::store::HotPath::new(&self.config.redis)
            .ok()?
            .get()
            .await
            .ok()?;
        redis::cmd("HGET")
            .arg(format!("{}:event:{{{event_id}}}", self.prefix))
            .arg("state")
            .query_async(&mut conn)
            .await
            .ok()?
    }

    /// Publishes every event, one after the other, each confirmed.
    pub async fn publish_all(&self, events: &[Value]) {
        for event in events {
            self.publish(event).await;
        }
    }

    /// Opens a fresh connection and confirm channel, e.g. after the broker closed them.
    pub async fn reconnect(&mut self) {
        let connection = eventually(
            "RabbitMQ accepts a connection",
            Duration::from_secs(30),
            || async {
                wxpush::broker::connect_any(&self.config.amqp, "test")
                    .await
                    .ok()
            },
        )
        .await;
        self.publisher = Publisher::open(&connection).await.expect("confirm channel");
        self.connection = connection;
    }

    /// Deletes the test's queues, exchange and Redis keys.
    pub async fn cleanup(self) {
        let channel = self.connection.create_channel().await.unwrap();
        Topology::new(&self.config.amqp, &self.config.retry)
            .delete(&channel)
            .await;
        let pool = wxpush::store::pooled(&self.config.redis).unwrap();
        let _ = wxpush::store::delete_prefix(&pool, &self.prefix).await;
        let _ = self.connection.close(200, "test done".into()).await;
        self.mock.shutdown().await;
    }
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub class: Option<String>,
    pub errcode: Option<i64>,
    pub errmsg: String,
    pub attempts: Option<i64>,
    pub first_failed_at: Option<String>,
    pub app: Option<String>,
    /// `x-wxpush-letter-id`: copies of one dead letter share it.
    pub letter_id: Option<String>,
    id: Option<String>,
}

impl DeadLetter {
    /// Read through the product's one reader of dead letters, [`Letter`].
    pub fn of(delivery: &lapin::message::Delivery) -> DeadLetter {
        let letter = Letter::of_delivery(1, delivery);
        DeadLetter {
            body: delivery.data.clone(),
            class: letter.class,
            errcode: letter.errcode,
            errmsg: letter.errmsg.unwrap_or_default(),
            attempts: letter.attempts,
            first_failed_at: letter.first_failed_at,
            app: letter.app,
            letter_id: letter.letter_id,
            id: letter.id,
        }
    }

    pub fn event_id(&self) -> Option<String> {
        self.id.clone()
    }
}

/// The HTTP status of `GET /readyz` on a worker's admin address (0 when unreachable).
pub async fn readyz(admin: std::net::SocketAddr) -> u16 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    match client.get(format!("http://{admin}/readyz")).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// Waits until `/readyz` answers `status`.
pub async fn await_readyz(admin: std::net::SocketAddr, status: u16, timeout: Duration) {
    eventually(&format!("/readyz {status}"), timeout, || async {
        (readyz(admin).await == status).then_some(())
    })
    .await;
}

/// How many accepted sends went to `openid`.
pub fn sends_to(sends: &[wxpush_mock_wechat::AcceptedSend], openid: &str) -> usize {
    sends.iter().filter(|s| s.body["touser"] == openid).count()
}

/// Asserts that the accepted sends are exactly one per user `0..n` (as [`order_paid`] makes
/// them) and nothing else.
pub fn assert_each_sent_once(sends: &[wxpush_mock_wechat::AcceptedSend], n: usize) {
    assert_each_sent_once_but(sends, n, &[]);
}

/// Like [`assert_each_sent_once`], where the users in `dead_lettered` may have no send
/// instead (their events were dead-lettered as ambiguous: sent once or not at all).
pub fn assert_each_sent_once_but(
    sends: &[wxpush_mock_wechat::AcceptedSend],
    n: usize,
    dead_lettered: &[usize],
) {
    let mut per_user = std::collections::BTreeMap::<String, usize>::new();
    for s in sends {
        *per_user
            .entry(s.body["touser"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = per_user.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    let missing: Vec<usize> = (0..n)
        .filter(|i| !per_user.contains_key(&openid(*i)) && !dead_lettered.contains(i))
        .collect();
    assert!(missing.is_empty(), "never sent: users {missing:?}");
    let users: std::collections::BTreeSet<String> = (0..n).map(openid).collect();
    let others: Vec<&String> = per_user.keys().filter(|u| !users.contains(*u)).collect();
    assert!(
        others.is_empty(),
        "sends to users beyond 0..{n}: {others:?}"
    );
}

/// `order_paid` events `{prefix}-0` … for users `0..n`.
pub fn order_events(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| order_paid(&format!("{prefix}-{i}"), i))
        .collect()
}

/// An `order.paid` event for user `n`.
pub fn order_paid(id: &str, n: usize) -> Value {
    json!({
        "id": id,
        "type": "order.paid",
        "recipient": {"openid": openid(n)},
        "data": {"order_no": format!("A{n}"), "amount": "12.5", "paid_at": "2026-11-24T10:00:00+08:00"}
    })
}

// ----- dead letters and the `wxpush` binary (tests/replay.rs, tests/dead.rs) -----

/// Dead-letter headers as the worker writes them (through the product's one writer).
pub fn dead_headers(
    class: &str,
    errcode: Option<i64>,
    errmsg: &str,
    attempts: i64,
    dead_at: &str,
) -> lapin::types::FieldTable {
    let failure = Failure {
        class: class.parse().expect("a known failure class"),
        errcode,
        errmsg: errmsg.to_owned(),
        app: Some("default".to_owned()),
    };
    let at = time::OffsetDateTime::parse(dead_at, &time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 time");
    let attempts = u32::try_from(attempts).expect("a non-negative attempt count");
    // Each call is a letter of its own (a fresh id), as each dead-letter decision is.
    let letter_id = uuid::Uuid::new_v4().simple().to_string();
    dead_letter::for_dead_letter(
        lapin::types::FieldTable::default(),
        attempts,
        &failure,
        &letter_id,
        at,
    )
}

/// The broker's pids of the connections whose name contains `name` (`rabbitmqctl
/// list_connections`: the client-given name is among the client properties); the product
/// names its connections `wxpush <purpose> (pid <process id>)`.
pub fn broker_connection_pids(name: &str) -> Vec<String> {
    let Ok(out) = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(name))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Closes one connection from the broker's side, as a crash of its client would end it.
pub fn close_broker_connection(pid: &str, reason: &str) {
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", pid, reason])
        .status()
        .expect("rabbitmqctl runs");
    assert!(closed.success(), "rabbitmqctl close_connection {pid}");
}

/// The event id of a body, if it is a JSON object with a string `id`.
pub fn body_id(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body).ok()?["id"]
        .as_str()
        .map(str::to_owned)
}

impl TestApp {
    /// Publishes messages straight into the dead-letter queue, in this order, and waits for
    /// every confirm.
    pub async fn fill_dead(&self, messages: &[(Vec<u8>, BasicProperties)]) {
        let channel = self.publisher.channel();
        let queue = self.config.amqp.dead_letter_queue.as_str();
        let mut confirms = Vec::with_capacity(messages.len());
        for (body, properties) in messages {
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        lapin::options::BasicPublishOptions::default(),
                        body,
                        properties.clone().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish to the dead-letter queue"),
            );
        }
        for confirm in confirms {
            assert_eq!(
                confirm.await.expect("confirm"),
                lapin::Confirmation::Ack(None),
                "dead letter confirmed"
            );
        }
        eventually(
            "the dead letters in their queue",
            Duration::from_secs(10),
            || async { (self.dead_len().await as usize >= messages.len()).then_some(()) },
        )
        .await;
    }

    /// Waits until `queue` holds exactly `n` ready messages, then takes them all off (acking
    /// each) and returns them in queue order.
    pub async fn drain_exactly(&self, queue: &str, n: usize) -> Vec<lapin::message::Delivery> {
        eventually(
            &format!("{n} ready messages in {queue}"),
            Duration::from_secs(30),
            || async { (self.queue_len(queue).await as usize == n).then_some(()) },
        )
        .await;
        let channel = self.connection.create_channel().await.unwrap();
        let mut out = Vec::with_capacity(n);
        while let Some(m) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
            out.push(m.delivery);
        }
        let _ = channel.close(200, "drained".into()).await;
        assert_eq!(out.len(), n, "messages taken off {queue}");
        out
    }

    /// Writes this app's config to a file for the binary, changed by `tweak` first (see
    /// [`set_toml`]).
    pub fn config_file_with(
        &self,
        tweak: impl FnOnce(&mut toml::Table),
    ) -> tempfile::NamedTempFile {
        let mut table: toml::Table =
            toml::from_str(&config_text(&self.prefix, &self.mock.base_url())).expect("test config");
        tweak(&mut table);
        let file = tempfile::Builder::new()
            .prefix(&self.prefix)
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        std::fs::write(file.path(), toml::to_string(&table).expect("toml"))
            .expect("config written");
        file
    }

    /// Writes this app's config (as the in-process tests use it) to a file for the binary.
    pub fn config_file(&self) -> tempfile::NamedTempFile {
        let file = tempfile::Builder::new()
            .prefix(&self.prefix)
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        std::fs::write(
            file.path(),
            config_text(&self.prefix, &self.mock.base_url()),
        )
        .expect("config written");
        file
    }

    /// The `wxpush` binary with this app's config; keep the file until the command ends.
    pub fn command(&self, args: &[&str]) -> (tokio::process::Command, tempfile::NamedTempFile) {
        let file = self.config_file();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpush"));
        command
            .arg("--config")
            .arg(file.path())
            .args(args)
            .env(SECRET_ENV, SECRET)
            .env("WXPUSH_LOG_FORMAT", "json")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        (command, file)
    }

    /// Runs `wxpush ARGS` to completion.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let (mut command, _file) = self.command(args);
        let output = tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .expect("wxpush finishes within 2 minutes")
            .expect("wxpush runs");
        CliOutput::from(output)
    }
}

/// What a run of the binary printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for CliOutput {
    fn from(o: std::process::Output) -> CliOutput {
        CliOutput {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl CliOutput {
    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "wxpush failed: {self:#?}");
        &self.stdout
    }
}

/// One dead letter of [`mixed_dead_letters`].
#[derive(Debug, Clone)]
pub struct MixedDead {
    pub id: String,
    pub user: usize,
    pub errcode: i64,
    pub class: &'static str,
    pub errmsg: &'static str,
    pub attempts: i64,
    pub dead_at: String,
    pub replayed: i64,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// `n` dead letters as the worker writes them, each a valid `order.paid` event `{prefix}-{i}`
/// for user `i`, dead for an hour. Errcodes repeat every ten: four `40003`, three `-1`
/// (transient, out of attempts), three `47003`; every 25th was replayed twice before.
pub fn mixed_dead_letters(prefix: &str, n: usize) -> Vec<MixedDead> {
    use time::format_description::well_known::Rfc3339;
    let dead_at = (time::OffsetDateTime::now_utc() - time::Duration::hours(1))
        .replace_nanosecond(0)
        .unwrap()
        .format(&Rfc3339)
        .unwrap();
    (0..n)
        .map(|i| {
            let (errcode, class, errmsg, attempts) = match i % 10 {
                0..4 => (40003, "permanent", "invalid openid", 1),
                4..7 => (-1, "transient", "system error", 3),
                _ => (47003, "permanent", "argument invalid! data.thing4.value", 1),
            };
            let id = format!("{prefix}-{i}");
            let replayed = if i % 25 == 0 { 2 } else { 0 };
            let mut headers = dead_headers(class, Some(errcode), errmsg, attempts, &dead_at);
            if replayed > 0 {
                h::set_i64(&mut headers, "x-wxpush-replayed", replayed);
            }
            MixedDead {
                body: serde_json::to_vec(&order_paid(&id, i)).unwrap(),
                properties: BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_message_id(id.as_str().into())
                    .with_headers(headers),
                id,
                user: i,
                errcode,
                class,
                errmsg,
                attempts,
                dead_at: dead_at.clone(),
                replayed,
            }
        })
        .collect()
}

impl TestApp {
    /// Fills the dead-letter queue with these, in order.
    pub async fn fill_mixed(&self, letters: &[MixedDead]) {
        let messages: Vec<_> = letters
            .iter()
            .map(|l| (l.body.clone(), l.properties.clone()))
            .collect();
        self.fill_dead(&messages).await;
    }

    /// The event ids in the dead-letter queue (exactly `n` of them), in order; takes them off.
    pub async fn drain_dead_ids(&self, n: usize) -> Vec<String> {
        let queue = self.config.amqp.dead_letter_queue.clone();
        self.drain_exactly(&queue, n)
            .await
            .iter()
            .map(|d| body_id(&d.data).unwrap_or_default())
            .collect()
    }
}

impl TestApp {
    /// This app's dead-letter and events queues, for a dead-letter order in batches of
    /// `window`.
    pub fn dead_queues(&self, window: usize) -> wxpush::dead_letters::Queues {
        wxpush::dead_letters::Queues {
            window,
            ..wxpush::dead_letters::Queues::of(&self.config.amqp)
        }
    }

    /// After an interrupted replay and [`TestApp::assert_each_in_one_queue`]: puts every
    /// letter back in the dead-letter queue, replays them all, lets a worker deliver, and
    /// checks each event was sent once.
    pub async fn replay_all_and_deliver_once(&self, letters: &[(Vec<u8>, BasicProperties)]) {
        let n = letters.len();
        self.fill_dead(letters).await;
        let connection = wxpush::broker::connect(AMQP_URL, "replay again")
            .await
            .unwrap();
        let tally = run_order(&connection, &self.dead_queues(256), &replay_all())
            .await
            .expect("the second replay runs");
        let _ = connection.close(200, "done".into()).await;
        assert_eq!(tally.done as usize, n);
        let worker = self.worker().await;
        let sends = self.sent(n).await;
        assert_each_sent_once(&sends, n);
        worker.shutdown().await.unwrap();
    }

    /// After an interrupted replay: takes every message off the events queue and the
    /// dead-letter queue and checks each of `ids` is in exactly one of them (none lost, none
    /// twice, none in both). Returns the ids found in the events queue.
    pub async fn assert_each_in_one_queue(&self, ids: &BTreeSet<String>) -> BTreeSet<String> {
        let events = self.config.amqp.queue.clone();
        let in_events = self.queue_len(&events).await as usize;
        let in_dead = self.dead_len().await as usize;
        let replayed: Vec<String> = self
            .drain_exactly(&events, in_events)
            .await
            .iter()
            .filter_map(|d| body_id(&d.data))
            .collect();
        let dead = self.drain_dead_ids(in_dead).await;
        let replayed_set: BTreeSet<String> = replayed.iter().cloned().collect();
        let dead_set: BTreeSet<String> = dead.iter().cloned().collect();
        assert_eq!(
            replayed_set.len(),
            replayed.len(),
            "an id twice in the events queue"
        );
        assert_eq!(
            dead_set.len(),
            dead.len(),
            "an id twice in the dead-letter queue"
        );
        let both: Vec<_> = replayed_set.intersection(&dead_set).collect();
        assert!(both.is_empty(), "in both queues: {both:?}");
        let all: BTreeSet<String> = replayed_set.union(&dead_set).cloned().collect();
        assert_eq!(&all, ids, "nothing lost");
        replayed_set
    }
}

// ----- `wxpush run` as a child process (tests/faults.rs) -----

/// `wxpush run --log-format json` as a child process. Its stderr is collected line by line as
/// it is written; every log line is one write, so the lines survive a SIGKILL. Waiting is
/// async (polling), so an in-process emulator on the test's runtime keeps answering
/// meanwhile. Dropping it kills the process.
pub struct WorkerProcess {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl WorkerProcess {
    /// Starts `wxpush run` with this config file (and `RUST_LOG=info` unless `env` sets it).
    pub fn start(config: &Path, env: &[(&str, &str)]) -> WorkerProcess {
        use std::io::BufRead;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wxpush"));
        command
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .env(SECRET_ENV, SECRET)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the wxpush binary starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        WorkerProcess {
            child,
            lines,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stderr lines so far.
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The admin address from the worker's start line.
    pub async fn admin_addr(&self) -> std::net::SocketAddr {
        eventually(
            "the worker's start line",
            Duration::from_secs(30),
            || async {
                self.log().iter().find_map(|l| {
                    let v: Value = serde_json::from_str(l).ok()?;
                    v["admin"].as_str()?.parse().ok()
                })
            },
        )
        .await
    }

    /// Waits (async) for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Joins the stderr reader (the pipe closes when the process is gone) and returns all
    /// lines.
    async fn drain(&mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            for _ in 0..250 {
                if reader.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        self.log()
    }

    /// SIGKILL: no chance to finish anything. Returns every line it wrote.
    pub async fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        self.wait_exit(Duration::from_secs(10))
            .await
            .expect("a SIGKILLed process exits");
        self.drain().await
    }

    /// SIGTERM, then waits up to `grace` for the exit. Returns the exit status (`None` when
    /// it did not exit in time; it is then killed) and every line it wrote.
    pub async fn terminate(
        mut self,
        grace: Duration,
    ) -> (Option<std::process::ExitStatus>, Vec<String>) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let status = self.wait_exit(grace).await;
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.wait_exit(Duration::from_secs(10)).await;
        }
        let lines = self.drain().await;
        (status, lines)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ----- Redis restarts, for the tests that break things on purpose -----

/// Whether the local Redis answers PING.
pub fn redis_up() -> bool {
    std::process::Command::new("redis-cli")
        .arg("ping")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

/// Starts the local Redis with the machine's command (nothing kept on disk).
pub fn start_redis() {
    let _ = std::process::Command::new("redis-server")
        .args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .status();
}

/// Brings Redis back when dropped, whatever happened to the test.
pub struct RedisComesBack;

impl RedisComesBack {
    /// Stops the local Redis; it comes back when the guard is dropped, if not before.
    pub fn stop_redis() -> RedisComesBack {
        let guard = RedisComesBack;
        let _ = std::process::Command::new("redis-cli")
            .args(["shutdown", "nosave"])
            .output();
        guard
    }

    /// Starts Redis again and waits until it answers.
    pub async fn restart(&self) {
        start_redis();
        eventually("redis-cli ping: PONG", Duration::from_secs(30), || async {
            redis_up().then_some(())
        })
        .await;
    }
}

impl Drop for RedisComesBack {
    fn drop(&mut self) {
        if redis_up() {
            return;
        }
        start_redis();
        for _ in 0..500 {
            if redis_up() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("Redis did not come back after the test");
    }
}

/// Sets `[section] key = value` in a config table (creating the section, or a dotted one
/// like `apps.default`).
pub fn set_toml(table: &mut toml::Table, section: &str, key: &str, value: impl Into<toml::Value>) {
    let mut at = table;
    for part in section.split('.') {
        at = at
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a table");
    }
    at.insert(key.into(), value.into());
}

// ----- WeChat's message push (tests/grant_flow.rs, tests/outcomes.rs) -----

const PUSH_TOKEN_ENV: &str = "WXPUSH_TEST_PUSH_TOKEN";
const PUSH_TOKEN: &str = "pushtoken123";
const PUSH_AES_ENV: &str = "WXPUSH_TEST_PUSH_AES_KEY";
/// 43 characters of canonical base64 (32 bytes).
const PUSH_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE";

/// Turns on the message-push receiver (any free port) for the `default` app, in safe mode.
pub fn enable_push(config: &mut Config) {
    // SAFETY: every test in the process sets the same values.
    unsafe {
        std::env::set_var(PUSH_TOKEN_ENV, PUSH_TOKEN);
        std::env::set_var(PUSH_AES_ENV, PUSH_AES_KEY);
    }
    config.push = Some(wxpush::config::PushConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
    });
    let default = config.apps.get_mut("default").unwrap().get_mut();
    default.push_token_env = Some(PUSH_TOKEN_ENV.into());
    default.push_aes_key_env = Some(PUSH_AES_ENV.into());
}

/// Points the emulator's pushes for the app at the worker's receiver (JSON, safe mode).
pub fn push_to(mock: &MockServer, worker: &Worker) {
    let push = worker.push_addr.expect("the receiver listens ([push] set)");
    mock.configure_push(
        APPID,
        wxpush_mock_wechat::PushTarget {
            url: format!("http://{push}/wechat/push/default"),
            token: PUSH_TOKEN.into(),
            aes_key: Some(PUSH_AES_KEY.into()),
            format: wxpush_mock_wechat::PushFormat::Json,
        },
    )
    .expect("push target");
}

// ----- the secured Redis Cluster and Sentinel of scripts/clusters.sh (tests/redis_secure_modes.rs) -----

/// One of `scripts/clusters.sh`'s `WXPUSH_TEST_REDIS_SECURE_*` variables. Missing: `None`
/// with a note on stdout (the test skips) on a developer's machine; a failure in CI
/// (`CI=true`), where scripts/test.sh starts the secured set and the test must run.
pub fn secure_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => panic!(
            "{var} is not set, and in CI this test must run: scripts/test.sh starts the secured Redis set with scripts/clusters.sh start"
        ),
        _ => {
            println!(
                "note: {var} is not set; skipped. Start the secured Redis set with: eval \"$(scripts/clusters.sh start-secure)\""
            );
            None
        }
    }
}

/// The Redis config for the secured `mode` (cluster or sentinel) of `scripts/clusters.sh`:
/// TLS and passwords as an operator writes them (in the URLs; the primary's own password in
/// sentinel mode), no replicas to wait for. Trusts the set's CA the way wxpush is told to,
/// through `SSL_CERT_FILE`, set for this whole process. `None` as [`secure_env`].
pub fn secure_redis(mode: RedisMode) -> Option<RedisConfig> {
    let ca = secure_env("WXPUSH_TEST_REDIS_SECURE_CA")?;
    // SAFETY: every test in the process sets the same value.
    unsafe { std::env::set_var("SSL_CERT_FILE", &ca) };
    let mut redis = RedisConfig {
        mode,
        replicas_ack: Some(0),
        ..RedisConfig::default()
    };
    match mode {
        RedisMode::Single => panic!("the secured set has cluster and sentinel mode only"),
        RedisMode::Cluster => redis.urls = list(&secure_env("WXPUSH_TEST_REDIS_SECURE_CLUSTER")?),
        RedisMode::Sentinel => {
            redis.urls = list(&secure_env("WXPUSH_TEST_REDIS_SECURE_SENTINEL")?);
            redis.sentinel_master = Some(secure_env("WXPUSH_TEST_REDIS_SECURE_SENTINEL_MASTER")?);
            redis.sentinel_master_password =
                Some(secure_env("WXPUSH_TEST_REDIS_SECURE_PRIMARY_PASSWORD")?);
        }
    }
    Some(redis)
}

fn list(urls: &str) -> Vec<String> {
    urls.split(',').map(str::to_owned).collect()
}

/// Runs a dead-letter order (`dead_letters::run`) to its end: no progress to watch, never
/// cancelled, nothing done per match.
pub async fn run_order(
    connection: &Connection,
    queues: &wxpush::dead_letters::Queues,
    order: &wxpush::dead_letters::Order,
) -> anyhow::Result<wxpush::dead_letters::Tally> {
    wxpush::dead_letters::run(
        connection,
        queues,
        order,
        &wxpush::dead_letters::Progress::default(),
        &tokio_util::sync::CancellationToken::new(),
        |_| {},
    )
    .await
}

/// The order that replays every dead letter.
pub fn replay_all() -> wxpush::dead_letters::Order {
    wxpush::dead_letters::Order {
        filter: wxpush::dead_letters::Filter::default(),
        action: wxpush::dead_letters::Action::Replay,
        limit: None,
    }
}
