//! Outcome events: with `amqp.outcome_exchange` set, each event's final outcome is published
//! there once, as JSON with routing key `outcome.<kind>`, and a redelivered copy of a decided
//! event repeats its outcome (the first may not have been confirmed before a crash).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use wxpush_mock_wechat::{Fault, FaultTarget};

/// A queue bound to every outcome of `exchange`.
async fn bind_all(app: &TestApp, exchange: &str) -> String {
    let queue = format!("{exchange}.all");
    let channel = app.connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "outcome.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue
}

fn exchange_name() -> String {
    format!(
        "t-outcomes-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

#[tokio::test]
async fn each_final_outcome_is_published_once_with_its_kind() {
    let exchange = format!(
        "t-outcomes-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let app = TestApp::start_with("outcomes", Default::default(), |c| {
        c.amqp.outcome_exchange = Some(exchange.clone());
    })
    .await;
    let worker = app.worker().await; // declares the outcome exchange
    let queue = bind_all(&app, &exchange).await;

    app.mock
        .push_faults(FaultTarget::Send, vec![Fault::Errcode(43101)]);
    app.publish(&order_paid("out-refused", 1)).await;
    eventually("the refusal recorded", Duration::from_secs(10), || async {
        (app.event_state("out-refused").await.as_deref() == Some("refused")).then_some(())
    })
    .await;
    app.publish(&order_paid("out-sent", 2)).await;
    let mut bad = order_paid("out-dead", 3);
    bad["recipient"] = json!({"openid": "bad-openid"});
    app.publish(&bad).await;
    let sent = app.sent(1).await.remove(0);
    app.dead_letters(1).await;
    // A copy of the sent event: acked as a duplicate, its outcome repeated.
    app.publish(&order_paid("out-sent", 2)).await;

    let outcomes: Vec<Value> = app
        .drain_exactly(&queue, 4)
        .await
        .iter()
        .map(|d| {
            let body: Value = serde_json::from_slice(&d.data).unwrap();
            assert_eq!(
                d.routing_key.as_str(),
                format!("outcome.{}", body["outcome"].as_str().unwrap())
            );
            body
        })
        .collect();
    worker.shutdown().await.unwrap();
    let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for o in outcomes {
        by_id
            .entry(o["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(o);
    }
    assert_eq!(by_id["out-refused"].len(), 1);
    assert_eq!(by_id["out-refused"][0]["outcome"], "refused");
    assert_eq!(by_id["out-dead"].len(), 1);
    assert_eq!(by_id["out-dead"][0]["outcome"], "dead_lettered");
    assert_eq!(by_id["out-dead"][0]["errcode"], 40003);
    assert_eq!(by_id["out-dead"][0]["class"], "permanent");
    assert_eq!(by_id["out-sent"].len(), 2, "the copy repeats the outcome");
    for o in &by_id["out-sent"] {
        assert_eq!(o["outcome"], "sent");
        assert_eq!(o["msgid"], sent.msgid);
        assert_eq!(o["type"], "order.paid");
    }
    app.cleanup().await;
}

/// WeChat's pushed final result of each send becomes a `delivered` or `failed` outcome,
/// with the event id behind the msgid.
#[tokio::test]
async fn pushed_delivery_results_become_delivered_and_failed_outcomes() {
    let exchange = exchange_name();
    let app = TestApp::start_with("outcomes-push", Default::default(), |c| {
        c.amqp.outcome_exchange = Some(exchange.clone());
        enable_push(c);
    })
    .await;
    let worker = wxpush::worker::Worker::start(app.config.clone())
        .await
        .unwrap();
    push_to(&app.mock, &worker);
    let queue = bind_all(&app, &exchange).await;
    app.publish(&order_paid("out-delivered", 1)).await;
    app.sent(1).await;
    app.mock.wait_for_pushes(1, Duration::from_secs(10)).await;
    app.mock.set_sent_result(APPID, 10005, "fail_user_block");
    app.publish(&order_paid("out-failed", 2)).await;
    app.sent(2).await;
    app.mock.wait_for_pushes(2, Duration::from_secs(10)).await;
    let outcomes: Vec<Value> = app
        .drain_exactly(&queue, 4)
        .await
        .iter()
        .map(|d| serde_json::from_slice(&d.data).unwrap())
        .collect();
    worker.shutdown().await.unwrap();
    let find = |id: &str, kind: &str| {
        outcomes
            .iter()
            .find(|o| o["id"] == id && o["outcome"] == kind)
            .unwrap_or_else(|| panic!("no {kind} outcome for {id}: {outcomes:#?}"))
            .clone()
    };
    let sent = find("out-delivered", "sent");
    let delivered = find("out-delivered", "delivered");
    assert_eq!(delivered["msgid"], sent["msgid"]);
    assert_eq!(delivered["errcode"], 0);
    let failed = find("out-failed", "failed");
    assert_eq!(failed["errcode"], 10005);
    assert_eq!(failed["errmsg"], "fail_user_block");
    app.cleanup().await;
}
