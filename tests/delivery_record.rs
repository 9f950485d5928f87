//! Every event's delivery record: what `wxpush trace` and `GET /api/events/{id}` answer
//! after real deliveries (a retry then a send, a 43101 refusal), and how the API refuses
//! requests without the admin token.

mod common;

use common::*;
use serde_json::Value;
use wxpush::worker::Worker;
use wxpush_mock_wechat::{Fault, FaultTarget};

const TOKEN_ENV: &str = "WXPUSH_TEST_ADMIN_TOKEN";
const TOKEN: &str = "test-admin-token-9f3a";

async fn worker_with_token(app: &TestApp) -> Worker {
    // SAFETY: every test in this process sets the same value.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    let mut config = app.config.clone();
    config.admin.token_env = Some(TOKEN_ENV.into());
    Worker::start(config).await.expect("worker starts")
}

async fn get(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("admin answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_retried_then_sent_event_shows_its_attempt_and_msgid() {
    let app = TestApp::start("record-sent").await;
    let worker = worker_with_token(&app).await;
    app.mock
        .push_faults(FaultTarget::Send, vec![Fault::Errcode(-1)]);
    app.publish(&order_paid("rec-1", 1)).await;
    let sent = app.sent(1).await.remove(0);
    let url = format!("http://{}/api/events/rec-1", worker.admin_addr);
    let record = eventually(
        "the sent mark",
        std::time::Duration::from_secs(10),
        || async {
            let (status, body) = get(&url, Some(TOKEN)).await;
            (status == 200 && body["record"]["state"] == "sent").then_some(body)
        },
    )
    .await;
    assert_eq!(record["record"]["msgid"], sent.msgid);
    assert_eq!(record["record"]["type"], "order.paid");
    assert_eq!(record["record"]["app"], "default");
    let attempts = record["record"]["failed_attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{record}");
    assert_eq!(attempts[0]["errcode"], -1);
    assert_eq!(attempts[0]["class"], "transient");
    assert!(
        record["record"]["received_ms"].as_u64().unwrap()
            <= record["record"]["sent_ms"].as_u64().unwrap()
    );

    let trace = app.cli(&["trace", "rec-1", "--json"]).await;
    let traced: Value = serde_json::from_str(trace.ok()).unwrap();
    assert_eq!(
        traced["record"], record["record"],
        "trace and the API agree"
    );
    let human = app.cli(&["trace", "rec-1"]).await;
    assert!(
        human.ok().contains(&format!("msgid {}", sent.msgid))
            && human.stdout.contains("errcode -1"),
        "{}",
        human.stdout
    );
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn the_api_refuses_without_the_right_token_and_trace_exits_1_for_an_unknown_event() {
    let app = TestApp::start("record-auth").await;
    let worker = worker_with_token(&app).await;
    let url = format!("http://{}/api/events/nothing-here", worker.admin_addr);
    let (status, body) = get(&url, None).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("bearer"), "{body}");
    let (status, _) = get(&url, Some("test-admin-token-9f3b")).await;
    assert_eq!(status, 401);
    let (status, body) = get(&url, Some(TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nothing-here"));

    let trace = app.cli(&["trace", "nothing-here"]).await;
    assert_eq!(trace.code, Some(1), "{trace:?}");
    assert!(
        trace.stderr.contains("no delivery record"),
        "{}",
        trace.stderr
    );
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

/// 43101 under the default `on_refused = "drop"`: acked, recorded as `refused`, and a
/// redelivered copy is acked without a second call.
#[tokio::test]
async fn a_refused_event_is_recorded_and_a_copy_is_not_sent_again() {
    let app = TestApp::start("record-refused").await;
    let worker = app.worker().await;
    app.mock
        .push_faults(FaultTarget::Send, vec![Fault::Errcode(43101)]);
    app.publish(&order_paid("ref-1", 1)).await;
    eventually(
        "refused recorded",
        std::time::Duration::from_secs(10),
        || async { (app.event_state("ref-1").await.as_deref() == Some("refused")).then_some(()) },
    )
    .await;
    app.publish(&order_paid("ref-1", 1)).await;
    eventually(
        "the copy acked",
        std::time::Duration::from_secs(10),
        || async { (app.pending().await == 0).then_some(()) },
    )
    .await;
    worker.shutdown().await.unwrap();
    assert_eq!(
        app.mock.stats().send_calls,
        1,
        "one call: the copy was not sent"
    );
    assert_eq!(app.dead_len().await, 0);
    let trace = app.cli(&["trace", "ref-1"]).await;
    assert!(trace.ok().contains("refused"), "{}", trace.stdout);
    app.cleanup().await;
}
