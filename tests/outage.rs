//! Disruptive tests: a worker process killed with SIGTERM, the broker closing connections,
//! Redis restarting. They touch shared services (RabbitMQ connections, the one Redis), so
//! they live in their own test binary and each holds `SERIAL` so they never overlap.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use wxpush_mock_wechat::MockOptions;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn latency(ms: u64) -> MockOptions {
    MockOptions {
        latency: Duration::from_millis(ms),
        ..MockOptions::default()
    }
}

// ----- a. SIGTERM -----

#[tokio::test]
async fn sigterm_finishes_in_flight_messages_and_exits_0() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::start_with("sigterm", latency(200), |_| {}).await;
    let mut config_file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    config_file
        .write_all(config_text(&app.prefix, &app.mock.base_url()).as_bytes())
        .unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();

    app.publish_all(&order_events("term", 200)).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpush"))
        .arg("run")
        .arg("--config")
        .arg(config_file.path())
        .env(SECRET_ENV, SECRET)
        .env("WXPUSH_ADMIN__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.reopen().unwrap()))
        .stderr(Stdio::from(log.reopen().unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("the wxpush binary starts");
    let pid = child.id().expect("running");
    let log_text = || std::fs::read_to_string(log.path()).unwrap_or_default();

    app.sent(1).await;
    let before_term = app.mock.sends().len();
    assert!(
        before_term < 200,
        "all 200 sent before SIGTERM; nothing tested"
    );
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let grace = app.config.worker.shutdown_grace + Duration::from_secs(5);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => panic!("no exit within {grace:?} of SIGTERM; log:\n{}", log_text()),
    };
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        log_text()
    );

    // Everything in flight was finished and acked: what was sent is gone from the queue and
    // the rest is back in it.
    let sent_by_first = app.mock.sends().len();
    assert!(
        sent_by_first < 200,
        "the worker stopped taking messages after SIGTERM"
    );
    assert_eq!(
        app.queue_len(&app.config.amqp.queue).await as usize,
        200 - sent_by_first,
        "in-flight messages finished and acked; log:\n{}",
        log_text()
    );

    let worker = app.worker().await;
    app.sent(200).await;
    worker.shutdown().await.unwrap();
    assert_each_sent_once(&app.mock.sends(), 200);
    assert_eq!(app.pending().await, 0);
    assert_eq!(app.dead_len().await, 0);
    app.cleanup().await;
}

// ----- b. broker closes the connections -----

/// The broker-side ids of this process's AMQP connections (`wxpush … (pid N)`).
async fn own_connections() -> Vec<String> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "{out:?}");
    let marker = format!("(pid {})", std::process::id());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(&marker))
        .filter_map(|line| line.split('\t').next())
        .map(|pid| pid.trim().to_owned())
        .collect()
}

async fn close_connection(pid: String) {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args([
            "close_connection",
            &pid,
            "test: broker closes the connection",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn broker_closing_connections_mid_stream_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    // A small prefetch keeps the stream flowing long enough (300 × 50 ms / 8) to cut it.
    let mut app = TestApp::start_with("conn-closed", latency(50), |c| {
        c.amqp.prefetch = 8;
    })
    .await;
    let worker = app.worker().await;
    await_readyz(worker.admin_addr, 200, Duration::from_secs(30)).await;
    // Only this process's connections (the worker's and the test's own), so that other test
    // processes sharing the broker are not disturbed.
    let connections = own_connections().await;
    assert!(connections.len() >= 2, "{connections:?}");

    app.publish_all(&order_events("cut", 300)).await;
    app.sent(1).await;
    // rabbitmqctl takes about a second a call, and a worker has two connections (consuming,
    // publishing): close them all at once.
    let closing: Vec<_> = connections
        .iter()
        .map(|pid| tokio::spawn(close_connection(pid.clone())))
        .collect();
    for close in closing {
        close.await.expect("close_connection");
    }
    let at_close = app.mock.sends().len();
    assert!(
        at_close < 300,
        "all 300 sent before the close; nothing tested"
    );

    app.reconnect().await;
    let sends = eventually("300 accepted sends", Duration::from_secs(60), || async {
        let sends = app.mock.sends();
        (sends.len() >= 300).then_some(sends)
    })
    .await;
    await_readyz(worker.admin_addr, 200, Duration::from_secs(30)).await;
    worker.shutdown().await.unwrap();
    assert_each_sent_once(&app.mock.sends(), 300);
    assert_eq!(sends.len(), 300);
    assert_eq!(app.pending().await, 0);
    assert_eq!(app.dead_len().await, 0);
    app.cleanup().await;
}

// ----- c. Redis restarts -----

#[tokio::test]
async fn redis_restart_mid_stream_turns_readyz_off_then_on_and_sends_each_once() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::start_with("redis-restart", latency(50), |c| {
        c.amqp.prefetch = 8;
    })
    .await;
    let worker = app.worker().await;
    await_readyz(worker.admin_addr, 200, Duration::from_secs(30)).await;
    app.publish_all(&order_events("redis", 300)).await;
    app.sent(10).await;

    let redis = RedisComesBack::stop_redis();
    eventually("Redis down", Duration::from_secs(10), || async {
        (!redis_up()).then_some(())
    })
    .await;
    await_readyz(worker.admin_addr, 503, Duration::from_secs(30)).await;
    let at_outage = app.mock.sends().len();
    assert!(
        at_outage < 300,
        "all 300 sent before the outage; nothing tested"
    );
    redis.restart().await;
    await_readyz(worker.admin_addr, 200, Duration::from_secs(60)).await;

    let sends = eventually("300 accepted sends", Duration::from_secs(60), || async {
        let sends = app.mock.sends();
        (sends.len() >= 300).then_some(sends)
    })
    .await;
    worker.shutdown().await.unwrap();
    assert_eq!(sends.len(), 300);
    assert_each_sent_once(&app.mock.sends(), 300);
    assert_eq!(app.pending().await, 0);
    assert_eq!(app.dead_len().await, 0);
    drop(redis);
    app.cleanup().await;
}

/// The contract: while Redis is down, `/readyz` is false, also for a worker with no traffic
/// (it checks Redis every 2 s while consuming).
#[tokio::test]
async fn redis_down_while_idle_turns_readyz_off() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::start("redis-idle").await;
    let worker = app.worker().await;
    await_readyz(worker.admin_addr, 200, Duration::from_secs(30)).await;
    let redis = RedisComesBack::stop_redis();
    eventually("Redis down", Duration::from_secs(10), || async {
        (!redis_up()).then_some(())
    })
    .await;
    await_readyz(worker.admin_addr, 503, Duration::from_secs(30)).await;
    redis.restart().await;
    await_readyz(worker.admin_addr, 200, Duration::from_secs(60)).await;
    worker.shutdown().await.unwrap();
    drop(redis);
    app.cleanup().await;
}
