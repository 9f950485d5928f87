//! WeChat's limits on an app, end to end against the emulator's real quota and rate rules:
//! the daily quota (45009) parks the app's sends fleet-wide until it comes back, and the
//! minute rate (45011) holds them until the next minute. Neither spends a message's
//! attempts or dead-letters anything. (`apps.NAME.max_rate` is `tests/max_rate.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use wxpush_mock_wechat::MockOptions;

fn answers(app: &TestApp, errcode: &str) -> u64 {
    app.mock
        .stats()
        .errcode_counts
        .get(errcode)
        .copied()
        .unwrap_or(0)
}

/// Two workers; the app's daily quota runs out mid-stream and comes back later (a new day
/// in China). Every event is sent exactly once, nothing is dead-lettered, and WeChat hears
/// 45009 about as often as the probes ask, not once per waiting message.
#[tokio::test]
async fn a_used_up_daily_quota_parks_the_app_until_it_comes_back() {
    let prefetch = 16;
    let app = TestApp::start_with("quota", MockOptions::default(), |c| {
        c.amqp.prefetch = prefetch;
        c.wechat.quota_probe_every = Duration::from_millis(500);
    })
    .await;
    let quota = 100;
    app.mock.set_send_quota(APPID, quota);
    let workers = [app.worker().await, app.worker().await];
    let n = 400;
    app.publish_all(&order_events("quota", n)).await;

    eventually("the quota used up", Duration::from_secs(30), || async {
        (app.mock.stats().sends_ok >= quota && answers(&app, "45009") > 0).then_some(())
    })
    .await;
    let parked_at = Instant::now();
    let held = Duration::from_secs(4);
    tokio::time::sleep(held).await; // the outage being simulated, not a synchronisation
    assert_eq!(
        app.mock.stats().sends_ok,
        quota,
        "nothing sent past the quota"
    );
    assert_eq!(
        app.dead_len().await,
        0,
        "nothing dead-lettered while parked"
    );
    let refused_while_parked = answers(&app, "45009");
    app.mock.new_quota_day();
    app.mock.set_send_quota(APPID, 1_000_000);

    let sends = app.sent(n).await;
    for worker in workers {
        worker.shutdown().await.unwrap();
    }
    assert_each_sent_once(&sends, n);
    assert_eq!(app.dead_len().await, 0);
    // In flight when the quota ran out (each worker's prefetch, and what a worker took in
    // the second before it heard of the hold), plus one probe per probe interval.
    let in_flight = 2 * 2 * u64::from(prefetch);
    let probes = parked_at.elapsed().as_millis() as u64 / 500 + 2;
    eprintln!(
        "45009 answered {refused_while_parked} times while parked ({} total) for {} waiting events",
        answers(&app, "45009"),
        n as u64 - quota
    );
    assert!(
        answers(&app, "45009") <= in_flight + probes,
        "45009 answers {} exceed in-flight {in_flight} + probes {probes}",
        answers(&app, "45009")
    );
    app.cleanup().await;
}

/// 45011 holds the app's sends until the next minute: every event is sent once and none is
/// dead-lettered, though the held ones come back from their retry tier many times over
/// their 3 attempts before the minute ends.
#[tokio::test]
async fn the_minute_rate_holds_sends_until_the_next_minute() {
    let app = TestApp::start_with(
        "minute",
        MockOptions {
            send_rate_per_sec: Some(30),
            ..MockOptions::default()
        },
        |_| {},
    )
    .await;
    let worker = app.worker().await;
    let n = 50;
    app.publish_all(&order_events("minute", n)).await;
    // 30 go in the first second, the rest after the next minute starts.
    let sends = eventually("all sent", Duration::from_secs(90), || async {
        let sends = app.mock.sends();
        (sends.len() >= n).then_some(sends)
    })
    .await;
    worker.shutdown().await.unwrap();
    assert_each_sent_once(&sends, n);
    assert_eq!(app.dead_len().await, 0);
    assert!(
        answers(&app, "45011") > 0,
        "the emulator's rate was reached"
    );
    app.cleanup().await;
}

/// 45009 on a token fetch (the token endpoint's daily quota) holds the app the same way:
/// its messages wait parked, nothing is dead-lettered, a probe fetches again, and when the
/// quota is back every event is sent once.
#[tokio::test]
async fn a_used_up_token_quota_parks_the_app_until_a_probe_gets_a_token() {
    use wxpush_mock_wechat::{Fault, FaultTarget};
    let app = TestApp::start_with("token-quota", MockOptions::default(), |c| {
        c.wechat.quota_probe_every = Duration::from_millis(500);
    })
    .await;
    // The first three fetches hit the quota: the first parks the app, the probes after it
    // find the quota still used up, then it is back.
    app.mock.push_faults(
        FaultTarget::Token,
        vec![
            Fault::Errcode(45009),
            Fault::Errcode(45009),
            Fault::Errcode(45009),
        ],
    );
    let worker = app.worker().await;
    let n = 50;
    app.publish_all(&order_events("tq", n)).await;
    let sends = app.sent(n).await;
    worker.shutdown().await.unwrap();
    assert_each_sent_once(&sends, n);
    assert_eq!(app.dead_len().await, 0, "nothing dead-lettered");
    assert_eq!(
        answers(&app, "45009"),
        3,
        "one fetch per probe, not one per message"
    );
    app.cleanup().await;
}
