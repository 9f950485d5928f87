//! What operators see: exact metric values after a known run, JSON logs carrying the event
//! id on every message line, and no secret or token anywhere in a full run's output.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wxpush_mock_wechat::{Fault, FaultTarget};

async fn scrape(admin: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one exposition line, e.g. `wxpush_dead_letters_total{reason="permanent"}`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn a_known_run_gives_exact_metrics_and_clean_json_logs() {
    let app = TestApp::start("metrics").await;
    let config = app.config_file();
    let worker = WorkerProcess::start(config.path(), &[("RUST_LOG", "debug")]);
    let admin = worker.admin_addr().await;
    await_readyz(admin, 200, Duration::from_secs(20)).await;

    // 1 transient then ok, 4 ok, 1 permanent (bad openid), 1 malformed, 1 unknown type.
    app.mock
        .push_faults(FaultTarget::Send, vec![Fault::Errcode(-1)]);
    app.publish(&order_paid("m-retry", 0)).await;
    eventually("the first attempt", Duration::from_secs(20), || async {
        (app.mock.stats().send_calls >= 1).then_some(())
    })
    .await;
    for i in 1..=4 {
        app.publish(&order_paid(&format!("m-ok-{i}"), i)).await;
    }
    let mut bad = order_paid("m-bad-openid", 9);
    bad["recipient"] = json!({"openid": "not-an-openid"});
    app.publish(&bad).await;
    app.publish_raw("order.paid", b"{not json").await;
    app.publish(
        &json!({"id": "m-unknown", "type": "order.nope", "recipient": {"openid": openid(1)}}),
    )
    .await;

    app.sent(5).await;
    let dead = app.dead_letters(3).await;
    assert_eq!(dead.len(), 3);
    let m = eventually("metrics to settle", Duration::from_secs(20), || async {
        let m = scrape(admin).await;
        (metric(&m, "wxpush_dead_letters_total", &[]) == 3.0).then_some(m)
    })
    .await;

    assert_eq!(
        metric(&m, "wxpush_sends_total", &[("outcome", "ok")]),
        5.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "wxpush_sends_total",
            &[("outcome", "transient"), ("errcode", "-1")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "wxpush_sends_total",
            &[("outcome", "permanent"), ("errcode", "40003")]
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "wxpush_dead_letters_total", &[("reason", "permanent")]),
        1.0
    );
    assert_eq!(
        metric(&m, "wxpush_dead_letters_total", &[("reason", "invalid")]),
        2.0
    );
    assert_eq!(metric(&m, "wxpush_retries_scheduled_total", &[]), 1.0);
    // Deliveries: 7 of order.paid (the retried one twice) and 2 without a known type.
    assert_eq!(
        metric(
            &m,
            "wxpush_events_consumed_total",
            &[("type", "order.paid")]
        ),
        7.0
    );
    assert_eq!(
        metric(&m, "wxpush_events_consumed_total", &[("type", "unknown")]),
        2.0
    );
    assert_eq!(
        metric(&m, "wxpush_token_fetches_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(metric(&m, "wxpush_duplicates_skipped_total", &[]), 0.0);
    assert_eq!(metric(&m, "wxpush_send_duration_seconds_count", &[]), 7.0);
    assert_eq!(metric(&m, "wxpush_consumer_up", &[]), 1.0);
    assert_eq!(metric(&m, "wxpush_ready", &[]), 1.0);
    assert_eq!(metric(&m, "wxpush_in_flight", &[]), 0.0);

    let token = {
        let client = redis::Client::open(REDIS_URL).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let t: String = redis::cmd("HGET")
            .arg(format!("{}:token:{{{APPID}}}", app.prefix))
            .arg("token")
            .query_async(&mut conn)
            .await
            .unwrap();
        t
    };
    let (status, log) = worker.terminate(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "worker exits 0 on SIGTERM: {status:?}"
    );
    let all = log.join("\n");
    assert!(!all.contains(SECRET), "the app secret appears in the logs");
    assert!(
        !all.contains(&token),
        "the access_token appears in the logs"
    );
    assert!(
        !m.contains(&token) && !m.contains(SECRET),
        "a secret appears in the metrics"
    );
    for line in &log {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        if v["message"] == "dead-lettered"
            && v["errmsg"].as_str().is_some_and(|e| e.contains("40003"))
        {
            assert_eq!(v["span"]["event_id"], "m-bad-openid", "{line}");
            assert_eq!(v["span"]["app"], "default");
            assert_eq!(v["span"]["event_type"], "order.paid");
        }
    }
    assert!(
        log.iter()
            .any(|l| l.contains("\"retry scheduled\"") && l.contains("m-retry")),
        "{all}"
    );
    app.cleanup().await;
}
