//! Failovers mid-stream, on the loopback clusters of `scripts/clusters.sh start` (a test
//! whose cluster is not running fails, saying so): the Sentinel primary killed, a Redis
//! Cluster master killed, the RabbitMQ node the worker is connected to stopped. Each ends
//! with an exact ledger under `on_ambiguous = "dead_letter"`: every event sent or
//! dead-lettered, none lost, none sent twice.
//!
//! These tests kill and restart nodes of the loopback clusters (never the main RabbitMQ or
//! Redis) and put them back with `scripts/clusters.sh start`; they run one at a time.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use wxpush::config::{OnAmbiguous, QueueType};
use wxpush_mock_wechat::MockOptions;

/// The clusters are shared: one failover at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn slow_wechat() -> MockOptions {
    MockOptions {
        latency: Duration::from_millis(100),
        ..MockOptions::default()
    }
}

fn clusters_script() -> String {
    std::env::var("WXPUSH_TEST_CLUSTERS_SCRIPT")
        .unwrap_or_else(|_| format!("{}/scripts/clusters.sh", env!("CARGO_MANIFEST_DIR")))
}

/// Brings every killed or stopped node back (`scripts/clusters.sh start` is idempotent).
async fn restore_clusters() {
    let status = tokio::task::spawn_blocking(|| {
        Command::new("bash")
            .arg(clusters_script())
            .arg("start")
            .stdout(std::process::Stdio::null())
            .status()
    })
    .await
    .unwrap()
    .expect("scripts/clusters.sh runs");
    assert!(status.success(), "scripts/clusters.sh start failed");
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills the Redis on `port` outright (SIGKILL: no shutdown, no last write).
fn kill_redis(port: u16) {
    let info = redis_cli(port, &["info", "server"]);
    let pid = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .unwrap_or_else(|| panic!("no Redis answering on {port}"))
        .to_owned();
    let status = Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// The sentinels' current primary.
fn sentinel_primary() -> u16 {
    let sentinel = port_of(&cluster_env("WXPUSH_TEST_REDIS_SENTINEL")[0]);
    let reply = redis_cli(
        sentinel,
        &["sentinel", "get-master-addr-by-name", "mymaster"],
    );
    reply
        .lines()
        .nth(1)
        .expect("a primary")
        .trim()
        .parse()
        .unwrap()
}

/// A master of the Redis Cluster, as a live seed sees it.
fn a_cluster_master() -> u16 {
    for seed in cluster_env("WXPUSH_TEST_REDIS_CLUSTER") {
        let nodes = redis_cli(port_of(&seed), &["cluster", "nodes"]);
        let masters = wxpush::store::connection::cluster_masters(&nodes);
        if let Some((_, port)) = masters.first() {
            return *port;
        }
    }
    panic!("no Redis Cluster master found");
}

/// Whether the killed master's replica has taken over.
fn promoted(mode: RedisMode, killed: u16) -> bool {
    match mode {
        RedisMode::Sentinel => sentinel_primary() != killed,
        _ => cluster_env("WXPUSH_TEST_REDIS_CLUSTER")
            .iter()
            .map(|seed| port_of(seed))
            .filter(|port| *port != killed)
            .any(|port| {
                redis_cli(port, &["cluster", "info"]).contains("cluster_state:ok")
                    && !wxpush::store::connection::cluster_masters(&redis_cli(
                        port,
                        &["cluster", "nodes"],
                    ))
                    .iter()
                    .any(|(_, p)| *p == killed)
            }),
    }
}

fn accepted_per_user(app: &TestApp) -> BTreeMap<String, usize> {
    let mut per_user = BTreeMap::new();
    for send in app.mock.sends() {
        let user = send.body["touser"].as_str().unwrap_or_default().to_owned();
        *per_user.entry(user).or_default() += 1;
    }
    per_user
}

/// The exact ledger: each of the `n` events (`prefix-<i>`, user `i`) sent once or
/// dead-lettered, never both, never twice; nothing left in the queues.
async fn assert_exact_ledger(app: &TestApp, prefix: &str, n: usize) {
    eventually("every event decided", Duration::from_secs(120), || async {
        let decided = accepted_per_user(app).len() + app.dead_len().await as usize;
        (decided >= n && app.pending().await == 0).then_some(())
    })
    .await;
    let per_user = accepted_per_user(app);
    let twice: Vec<_> = per_user.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    let dead_ids = app.drain_dead_ids(app.dead_len().await as usize).await;
    for i in 0..n {
        let sent = per_user.contains_key(&openid(i));
        let dead = dead_ids.contains(&format!("{prefix}-{i}"));
        assert!(
            sent || dead,
            "{prefix}-{i} lost: neither sent nor dead-lettered"
        );
        assert!(!(sent && dead), "{prefix}-{i} both sent and dead-lettered");
    }
    eprintln!(
        "ledger: {} sent, {} dead-lettered, of {n}",
        per_user.len(),
        dead_ids.len()
    );
}

/// Publishes `n` events, waits until `at` of them were sent, then runs `fail`.
async fn stream_then(app: &TestApp, prefix: &str, n: usize, at: u64, fail: impl FnOnce()) {
    app.publish_all(&order_events(prefix, n)).await;
    eventually("sends under way", Duration::from_secs(60), || async {
        (app.mock.stats().send_calls >= at).then_some(())
    })
    .await;
    fail();
}

async fn redis_failover(mode: RedisMode, prefix: &str, kill: impl FnOnce() -> u16) {
    let _one = ONE_AT_A_TIME.lock().await;
    restore_clusters().await;
    let app = TestApp::start_with(prefix, slow_wechat(), |c| {
        use_redis(&mut c.redis, mode);
        c.amqp.prefetch = 8;
        c.policy.on_ambiguous = OnAmbiguous::DeadLetter;
    })
    .await;
    let worker = app.worker().await;
    let n = 300;
    let mut killed = 0;
    stream_then(&app, prefix, n, 60, || killed = kill()).await;
    eprintln!("killed the Redis master on {killed}");
    eventually("a replica promoted", Duration::from_secs(60), || async {
        (promoted(mode, killed)).then_some(())
    })
    .await;
    eprintln!("a replica took over from {killed}");
    // The killed node comes back as a replica, so that writes are acknowledged by a replica
    // again (redis.replicas_ack = 1): until then the worker sends nothing.
    restore_clusters().await;
    assert_exact_ledger(&app, prefix, n).await;
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn sentinel_primary_killed_mid_stream_nothing_lost_nothing_twice() {
    redis_failover(RedisMode::Sentinel, "fo-sentinel", || {
        let primary = sentinel_primary();
        kill_redis(primary);
        primary
    })
    .await;
}

#[tokio::test]
async fn cluster_master_killed_mid_stream_nothing_lost_nothing_twice() {
    redis_failover(RedisMode::Cluster, "fo-cluster", || {
        let master = a_cluster_master();
        kill_redis(master);
        master
    })
    .await;
}

#[tokio::test]
async fn rabbitmq_node_of_the_worker_stopped_mid_stream_with_quorum_queues() {
    let _one = ONE_AT_A_TIME.lock().await;
    restore_clusters().await;
    let nodes = cluster_env("WXPUSH_TEST_AMQP_CLUSTER");
    let mut app = TestApp::start_with("fo-rabbit", slow_wechat(), |c| {
        c.amqp.urls = nodes.clone();
        c.amqp.queue_type = QueueType::Quorum;
        c.amqp.prefetch = 8;
        c.policy.on_ambiguous = OnAmbiguous::DeadLetter;
        // Under test is the broker; the single-mode test Redis keeps nothing on disk.
        c.policy.unsafe_redis = c.redis.mode == RedisMode::Single;
    })
    .await;
    // Sessions start at the first node: that is the worker's node.
    let worker = app.worker().await;
    let n = 300;
    stream_then(&app, "fo-rabbit", n, 60, || {
        let out = Command::new("bash")
            .arg(clusters_script())
            .args(["rabbitmqctl", "1", "stop_app"])
            .output()
            .expect("rabbitmqctl runs");
        assert!(out.status.success(), "stop_app: {out:?}");
    })
    .await;
    eprintln!("stopped wxpush-c1, the worker's node");
    // The test's own connection was on that node too.
    app.reconnect().await;
    assert_exact_ledger(&app, "fo-rabbit", n).await;
    worker.shutdown().await.unwrap();
    app.cleanup().await;
    restore_clusters().await;
}
