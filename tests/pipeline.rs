//! The delivery pipeline end to end: real RabbitMQ and Redis, the emulator for WeChat.

mod common;

use std::time::Duration;

use common::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use wxpush::config::{OnAmbiguous, OnRefused, Overflow, QueueType};
use wxpush_mock_wechat::{Fault, FaultTarget, MockOptions};

#[tokio::test]
async fn happy_path_sends_the_exact_rendered_message() {
    let app = TestApp::start("happy").await;
    let worker = app.worker().await;
    app.publish(&json!({
        "id": "ord-1001-paid", "type": "order.paid",
        "recipient": {"openid": openid(1)},
        "data": {"order_no": "A1001", "amount": "12.5", "paid_at": "2026-11-24T10:00:00+08:00", "remark": "感谢您的购买"}
    }))
    .await;
    let sends = app.sent(1).await;
    assert_eq!(
        sends[0].body,
        json!({
            "touser": openid(1),
            "template_id": "TPL_ORDER_PAID",
            "page": "pages/order/detail?id=A1001",
            "miniprogram_state": "formal",
            "lang": "zh_CN",
            "data": {
                "character_string1": {"value": "A1001"},
                "amount2": {"value": "12.50"},
                "time3": {"value": "2026-11-24 10:00"},
                "thing4": {"value": "感谢您的购买"}
            }
        })
    );
    assert_eq!(sends[0].appid, APPID);
    assert_eq!(app.mock.stats().tokens_issued, 1);
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

// ----- 1. each errcode class -----

#[tokio::test]
async fn permanent_errcodes_are_dead_lettered_with_class_and_errcode() {
    let app = TestApp::start("permanent").await;
    let worker = app.worker().await;

    // 40003 from the emulator's own validation of a malformed openid.
    let mut bad = order_paid("perm-40003", 1);
    bad["recipient"] = json!({"openid": "bad-openid"});
    app.publish(&bad).await;
    let dl = app.dead_letters(1).await.remove(0);
    assert_eq!(dl.event_id().as_deref(), Some("perm-40003"));
    assert_eq!(dl.body, serde_json::to_vec(&bad).unwrap(), "body unchanged");
    assert_eq!(dl.class.as_deref(), Some("permanent"));
    assert_eq!(dl.errcode, Some(40003));
    assert_eq!(dl.attempts, Some(1));

    // 40037 and 47003 injected on the next send.
    for (code, n) in [(40037, 2), (47003, 3)] {
        app.mock
            .push_faults(FaultTarget::Send, vec![Fault::Errcode(code)]);
        let id = format!("perm-{code}");
        app.publish(&order_paid(&id, n)).await;
        let dl = app.dead_letters(1).await.remove(0);
        assert_eq!(dl.event_id().as_deref(), Some(id.as_str()));
        assert_eq!(dl.class.as_deref(), Some("permanent"), "{code}: {dl:?}");
        assert_eq!(dl.errcode, Some(code));
        assert_eq!(dl.attempts, Some(1), "{code}: not retried");
        assert_eq!(dl.app.as_deref(), Some("default"));
    }

    let stats = app.mock.stats();
    assert_eq!(stats.send_calls, 3, "each tried exactly once: {stats:?}");
    assert!(app.mock.sends().is_empty());
    worker.shutdown().await.unwrap();
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn refused_43101_is_dead_lettered_under_on_refused_dead_letter() {
    let options = MockOptions {
        strict_subscriptions: true,
        ..MockOptions::default()
    };
    let app = TestApp::start_with("refused-dl", options, |c| {
        c.policy.on_refused = OnRefused::DeadLetter;
    })
    .await;
    let worker = app.worker().await;
    app.publish(&order_paid("refused-1", 1)).await;
    let dl = app.dead_letters(1).await.remove(0);
    assert_eq!(dl.event_id().as_deref(), Some("refused-1"));
    assert_eq!(dl.class.as_deref(), Some("refused"));
    assert_eq!(dl.errcode, Some(43101));
    assert_eq!(app.mock.stats().send_calls, 1);
    assert!(app.mock.sends().is_empty());
    worker.shutdown().await.unwrap();
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn refused_43101_is_acked_and_dropped_under_on_refused_drop() {
    let options = MockOptions {
        strict_subscriptions: true,
        ..MockOptions::default()
    };
    let app = TestApp::start_with("refused-drop", options, |c| {
        c.policy.on_refused = OnRefused::Drop;
    })
    .await;
    let worker = app.worker().await;
    app.publish(&order_paid("refused-2", 1)).await;
    eventually("the send call", Duration::from_secs(30), || async {
        (app.mock.stats().send_calls >= 1).then_some(())
    })
    .await;
    // Shutting down lets the in-flight message settle; anything not acked would go back to
    // the events queue when the worker closes its connection.
    worker.shutdown().await.unwrap();
    assert_eq!(app.pending().await, 0, "acked, not requeued nor retried");
    assert_eq!(app.dead_len().await, 0, "no dead letter");
    assert!(app.mock.sends().is_empty(), "nothing sent");
    let stats = app.mock.stats();
    assert_eq!(stats.send_calls, 1, "{stats:?}");
    assert_eq!(stats.sends_by_errcode.get("43101"), Some(&1));
    app.cleanup().await;
}

/// A stale-token errcode on the send: the exact token is replaced and the message resent at
/// once. The retry tiers are 10 minutes long here, so a send within the test proves that it
/// did not go through a retry tier.
async fn token_errcode_is_resent_at_once(name: &str, code: i64) {
    let app = TestApp::start_with(name, MockOptions::default(), |c| {
        c.retry.initial = Duration::from_secs(600);
        c.retry.max = Duration::from_secs(600);
    })
    .await;
    let worker = app.worker().await;
    app.mock
        .push_faults(FaultTarget::Send, vec![Fault::Errcode(code)]);
    app.publish(&order_paid("token-1", 1)).await;
    let sends = app.sent(1).await;
    assert_eq!(sends_to(&sends, &openid(1)), 1);
    let stats = app.mock.stats();
    assert_eq!(
        stats.send_calls, 2,
        "one refused send, one resend: {stats:?}"
    );
    assert_eq!(
        stats.tokens_issued, 2,
        "exactly one extra token issued: {stats:?}"
    );
    worker.shutdown().await.unwrap();
    assert_eq!(app.dead_len().await, 0, "never a dead letter");
    assert_eq!(app.pending().await, 0);
    assert_eq!(app.mock.sends().len(), 1);
    app.cleanup().await;
}

#[tokio::test]
async fn token_errcode_40001_is_resent_at_once_with_one_new_token() {
    token_errcode_is_resent_at_once("token-40001", 40001).await;
}

#[tokio::test]
async fn token_errcode_42001_is_resent_at_once_with_one_new_token() {
    token_errcode_is_resent_at_once("token-42001", 42001).await;
}

/// 40125 on the token fetch trips the app's breaker: the event is parked (not dead-lettered),
/// `/readyz` turns 503, and after the breaker's 30 s probe the event is delivered.
#[tokio::test]
async fn credential_errcode_parks_the_app_and_delivers_after_the_fault_clears() {
    let app = TestApp::start("credential").await;
    let worker = app.worker().await;
    await_readyz(worker.admin_addr, 200, Duration::from_secs(30)).await;
    app.mock
        .push_faults(FaultTarget::Token, vec![Fault::Errcode(40125)]);
    app.publish(&order_paid("cred-1", 1)).await;
    // The readiness flag for apps is refreshed every 10 s.
    await_readyz(worker.admin_addr, 503, Duration::from_secs(30)).await;
    assert!(app.mock.sends().is_empty());
    assert_eq!(app.dead_len().await, 0, "not dead-lettered while tripped");
    // The fault was a single one: the probe (every 30 s) finds the app working again.
    let sends = app.sent(1).await;
    assert_eq!(sends_to(&sends, &openid(1)), 1);
    await_readyz(worker.admin_addr, 200, Duration::from_secs(30)).await;
    worker.shutdown().await.unwrap();
    assert_eq!(app.dead_len().await, 0, "never a dead letter");
    assert_eq!(app.pending().await, 0);
    assert_eq!(app.mock.sends().len(), 1);
    app.cleanup().await;
}

// ----- 2. transient failures are retried without holding up the queue -----

#[tokio::test]
async fn transient_failures_are_retried_without_holding_up_later_events() {
    // One 2 s tier: the retried event is away long enough for the later one to overtake it.
    let app = TestApp::start_with("transient", MockOptions::default(), |c| {
        c.retry.initial = Duration::from_secs(2);
        c.retry.max = Duration::from_secs(2);
    })
    .await;
    let worker = app.worker().await;
    app.mock.push_faults(
        FaultTarget::Send,
        vec![Fault::Errcode(-1), Fault::Http(500)],
    );
    app.publish(&order_paid("retried", 1)).await;
    // Both faults consumed by the retried event: it now waits in the retry tier.
    eventually("two failed sends", Duration::from_secs(30), || async {
        (app.mock.stats().send_calls >= 2).then_some(())
    })
    .await;
    app.publish(&order_paid("later", 2)).await;
    let sends = app.sent(2).await;
    assert_eq!(
        sends[0].body["touser"],
        openid(2),
        "the event published later is accepted first"
    );
    assert_eq!(sends[1].body["touser"], openid(1));
    worker.shutdown().await.unwrap();
    let sends = app.mock.sends();
    assert_eq!(sends_to(&sends, &openid(1)), 1, "retried event sent once");
    assert_eq!(sends_to(&sends, &openid(2)), 1);
    assert_eq!(app.mock.stats().send_calls, 4);
    assert_eq!(app.dead_len().await, 0);
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}

// ----- 3. retries exhausted -----

#[tokio::test]
async fn exhausted_retries_dead_letter_with_the_full_reason() {
    let app = TestApp::start("exhausted").await;
    let worker = app.worker().await;
    app.mock
        .set_fault_rate(FaultTarget::Send, Some(Fault::Errcode(-1)), 1.0);
    let event = order_paid("exhausted-1", 1);
    app.publish(&event).await;
    let dl = app.dead_letters(1).await.remove(0);
    assert_eq!(
        dl.body,
        serde_json::to_vec(&event).unwrap(),
        "body unchanged"
    );
    assert_eq!(dl.class.as_deref(), Some("transient"));
    assert_eq!(dl.errcode, Some(-1));
    assert_eq!(dl.attempts, Some(3));
    assert!(
        dl.first_failed_at.as_deref().is_some_and(|t| !t.is_empty()),
        "{dl:?}"
    );
    assert_eq!(dl.app.as_deref(), Some("default"));
    assert!(!dl.errmsg.is_empty());
    worker.shutdown().await.unwrap();
    assert_eq!(app.mock.stats().send_calls, 3);
    assert_eq!(app.dead_len().await, 0, "exactly one dead letter");
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}

// ----- 4. invalid events -----

#[tokio::test]
async fn invalid_events_are_dead_lettered_and_the_worker_keeps_going() {
    let app = TestApp::start("invalid").await;
    let worker = app.worker().await;
    app.publish_raw("order.paid", b"{\"id\": \"broken\", \"type\": ")
        .await;
    let mut unknown_type = order_paid("unknown-type", 1);
    unknown_type["type"] = json!("order.refunded");
    app.publish(&unknown_type).await;
    let mut unknown_app = order_paid("unknown-app", 2);
    unknown_app["app"] = json!("nope");
    app.publish(&unknown_app).await;

    let dls = app.dead_letters(3).await;
    for dl in &dls {
        assert_eq!(dl.class.as_deref(), Some("invalid"), "{dl:?}");
    }
    let malformed = dls
        .iter()
        .find(|d| d.event_id().is_none())
        .expect("the malformed body");
    assert_eq!(malformed.body, b"{\"id\": \"broken\", \"type\": ");
    assert!(
        malformed.errmsg.contains("malformed") && malformed.errmsg.contains("JSON"),
        "{}",
        malformed.errmsg
    );
    let by_id = |id: &str| {
        dls.iter()
            .find(|d| d.event_id().as_deref() == Some(id))
            .unwrap_or_else(|| panic!("dead letter for {id}: {dls:?}"))
    };
    assert!(
        by_id("unknown-type").errmsg.contains("order.refunded"),
        "{}",
        by_id("unknown-type").errmsg
    );
    assert!(
        by_id("unknown-app").errmsg.contains("nope"),
        "{}",
        by_id("unknown-app").errmsg
    );

    app.publish(&order_paid("good", 3)).await;
    let sends = app.sent(1).await;
    assert_eq!(sends_to(&sends, &openid(3)), 1);
    worker.shutdown().await.unwrap();
    assert_eq!(app.mock.stats().send_calls, 1, "invalid events never sent");
    app.cleanup().await;
}

// ----- 5. over-long values -----

fn with_long_remark(id: &str) -> (Value, String) {
    let remark = "一二三四五六七八九十".repeat(3);
    assert_eq!(remark.chars().count(), 30);
    let mut event = order_paid(id, 1);
    event["data"]["remark"] = json!(remark);
    (event, remark)
}

#[tokio::test]
async fn overflow_truncate_cuts_a_thing_to_20_characters() {
    let app = TestApp::start_with("truncate", MockOptions::default(), |c| {
        c.policy.overflow = Overflow::Truncate;
    })
    .await;
    let worker = app.worker().await;
    let (event, remark) = with_long_remark("long-1");
    app.publish(&event).await;
    let sends = app.sent(1).await;
    let value = sends[0].body["data"]["thing4"]["value"]
        .as_str()
        .expect("thing4 sent")
        .to_owned();
    assert_eq!(value.chars().count(), 20, "{value}");
    assert!(value.ends_with('…'), "{value}");
    let kept: String = remark.chars().take(19).collect();
    assert_eq!(value, format!("{kept}…"));
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn overflow_reject_dead_letters_naming_the_key() {
    let app = TestApp::start_with("reject", MockOptions::default(), |c| {
        c.policy.overflow = Overflow::Reject;
    })
    .await;
    let worker = app.worker().await;
    let (event, _) = with_long_remark("long-2");
    app.publish(&event).await;
    let dl = app.dead_letters(1).await.remove(0);
    assert_eq!(dl.class.as_deref(), Some("invalid"));
    assert!(dl.errmsg.contains("thing4"), "{}", dl.errmsg);
    worker.shutdown().await.unwrap();
    assert_eq!(app.mock.stats().send_calls, 0);
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}

// ----- 6. js_code recipients -----

fn with_js_code(id: &str, code: &str) -> Value {
    let mut event = order_paid(id, 0);
    event["recipient"] = json!({"js_code": code});
    event
}

#[tokio::test]
async fn js_code_is_exchanged_once_even_across_a_retry() {
    let app = TestApp::start("jscode").await;
    app.mock.register_code(APPID, "code-1", &openid(7));
    app.mock
        .push_faults(FaultTarget::Send, vec![Fault::Errcode(-1)]);
    let worker = app.worker().await;
    app.publish(&with_js_code("js-1", "code-1")).await;
    let sends = app.sent(1).await;
    assert_eq!(sends[0].body["touser"], openid(7));
    worker.shutdown().await.unwrap();
    let stats = app.mock.stats();
    assert_eq!(stats.send_calls, 2, "one transient failure, one resend");
    assert_eq!(stats.jscode2session_calls, 1, "the code is spent once");
    assert_eq!(app.mock.sends().len(), 1);
    assert_eq!(app.dead_len().await, 0);
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn unknown_js_code_is_dead_lettered_40029() {
    let app = TestApp::start("jscode-bad").await;
    let worker = app.worker().await;
    app.publish(&with_js_code("js-2", "never-issued")).await;
    let dl = app.dead_letters(1).await.remove(0);
    assert_eq!(dl.event_id().as_deref(), Some("js-2"));
    assert_eq!(dl.class.as_deref(), Some("permanent"));
    assert_eq!(dl.errcode, Some(40029));
    worker.shutdown().await.unwrap();
    let stats = app.mock.stats();
    assert_eq!(stats.jscode2session_calls, 1);
    assert_eq!(stats.send_calls, 0);
    app.cleanup().await;
}

// ----- 7. redelivery -----

#[tokio::test]
async fn redelivery_of_a_sent_event_is_acked_without_a_second_send() {
    let app = TestApp::start("redelivery").await;
    let event = order_paid("redelivered-1", 1);
    let worker_a = app.worker().await;
    app.publish(&event).await;
    app.sent(1).await;
    // Worker A sent it and recorded it; the redelivery is the same body (same id) again, as
    // the broker would hand it out had A died before its ack.
    eventually(
        "the event recorded as sent",
        Duration::from_secs(30),
        || async {
            (app.event_state("redelivered-1").await.as_deref() == Some("sent")).then_some(())
        },
    )
    .await;
    worker_a.shutdown().await.unwrap();
    let worker_b = app.worker().await;
    app.publish(&event).await;
    eventually(
        "the redelivery consumed",
        Duration::from_secs(30),
        || async { (app.pending().await == 0).then_some(()) },
    )
    .await;
    // Settles what is in flight; an unacked message would return to the queue.
    worker_b.shutdown().await.unwrap();
    assert_eq!(app.pending().await, 0, "the redelivery was acked");
    assert_eq!(app.dead_len().await, 0);
    assert_eq!(app.mock.sends().len(), 1, "no second send");
    assert_eq!(app.mock.stats().send_calls, 1);
    app.cleanup().await;
}

// ----- 8. two workers -----

#[tokio::test]
async fn two_workers_send_500_events_exactly_once_with_one_token_fetch() {
    let app = TestApp::start("two-workers").await;
    app.publish_all(&order_events("pair", 500)).await;
    let (a, b) = tokio::join!(app.worker(), app.worker());
    app.sent(500).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert_each_sent_once(&app.mock.sends(), 500);
    let stats = app.mock.stats();
    assert_eq!(stats.tokens_issued, 1, "{stats:?}");
    assert_eq!(stats.token_calls, 1, "one token fetch: {stats:?}");
    assert_eq!(stats.send_calls, 500);
    assert_eq!(app.pending().await, 0);
    assert_eq!(app.dead_len().await, 0);
    app.cleanup().await;
}

// ----- 9. ambiguous sends -----

#[tokio::test]
async fn ambiguous_send_is_dead_lettered_under_on_ambiguous_dead_letter() {
    let app = TestApp::start_with("ambiguous-dl", MockOptions::default(), |c| {
        c.wechat.timeout = Duration::from_secs(1);
        c.policy.on_ambiguous = OnAmbiguous::DeadLetter;
        c.policy.unsafe_redis = true; // the test Redis keeps nothing on disk
    })
    .await;
    let worker = app.worker().await;
    app.mock.push_faults(FaultTarget::Send, vec![Fault::Hang]);
    app.publish(&order_paid("hung-1", 1)).await;
    let dl = app.dead_letters(1).await.remove(0);
    assert_eq!(dl.event_id().as_deref(), Some("hung-1"));
    assert_eq!(dl.class.as_deref(), Some("ambiguous"));
    worker.shutdown().await.unwrap();
    assert!(app.mock.sends().is_empty(), "never sent");
    assert_eq!(app.mock.stats().send_calls, 1, "never sent again");
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn an_ambiguous_dead_letter_is_never_sent_by_redelivery_only_by_replay() {
    let app = TestApp::start_with("ambiguous-replay", MockOptions::default(), |c| {
        c.wechat.timeout = Duration::from_secs(1);
        c.policy.on_ambiguous = OnAmbiguous::DeadLetter;
        c.policy.unsafe_redis = true; // the test Redis keeps nothing on disk
    })
    .await;
    let worker = app.worker().await;
    app.mock.push_faults(FaultTarget::Send, vec![Fault::Hang]);
    let event = order_paid("hung-3", 3);
    app.publish(&event).await;
    assert_eq!(
        app.dead_letters(1).await[0].class.as_deref(),
        Some("ambiguous")
    );
    // The dead letter is recorded in Redis after its confirm (and before its ack): the
    // redelivery below is what a crash after that record would bring.
    eventually(
        "the dead letter recorded",
        Duration::from_secs(10),
        || async { (app.event_state("hung-3").await.as_deref() == Some("dead")).then_some(()) },
    )
    .await;
    // The same message again, as a redelivery after a crash between the dead letter's confirm
    // and its ack would bring it: acked, neither sent nor dead-lettered a second time. A good
    // event published after it is delivered after it; the shutdown drains what is in flight.
    app.publish(&event).await;
    app.publish(&order_paid("after-3", 4)).await;
    app.sent(1).await;
    worker.shutdown().await.unwrap();
    assert_eq!(app.pending().await, 0, "the redelivered copy was acked");
    assert_eq!(app.dead_len().await, 0, "and not dead-lettered again");
    assert_eq!(
        app.mock.stats().send_calls,
        2,
        "the hung call and the good event"
    );
    // An operator replays it on purpose: now it is sent.
    let worker = app.worker().await;
    app.publish_raw_with_headers(
        "order.paid",
        event.to_string().as_bytes(),
        &[("x-wxpush-replayed", 1)],
    )
    .await;
    let sends = app.sent(2).await;
    assert_eq!(
        sends_to(&sends, &openid(3)),
        1,
        "the replayed event is sent"
    );
    worker.shutdown().await.unwrap();
    assert_eq!(app.mock.sends().len(), 2);
    app.cleanup().await;
}

#[tokio::test]
async fn ambiguous_send_is_resent_once_under_on_ambiguous_resend() {
    let app = TestApp::start_with("ambiguous-resend", MockOptions::default(), |c| {
        c.wechat.timeout = Duration::from_secs(1);
        c.policy.on_ambiguous = OnAmbiguous::Resend;
    })
    .await;
    let worker = app.worker().await;
    app.mock.push_faults(FaultTarget::Send, vec![Fault::Hang]);
    app.publish(&order_paid("hung-2", 1)).await;
    let sends = app.sent(1).await;
    assert_eq!(sends[0].body["touser"], openid(1));
    worker.shutdown().await.unwrap();
    assert_eq!(app.mock.sends().len(), 1, "sent exactly once");
    assert_eq!(
        app.mock.stats().send_calls,
        2,
        "the hung call and the resend"
    );
    assert_eq!(app.dead_len().await, 0);
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}

// ----- 10. quorum queues -----

#[tokio::test]
async fn quorum_queues_happy_path() {
    let app = TestApp::start_with("quorum", MockOptions::default(), |c| {
        c.amqp.queue_type = QueueType::Quorum;
    })
    .await;
    // Re-declaring with quorum arguments succeeds only if the queue really is a quorum queue.
    let channel = app.connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            app.config.amqp.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("the events queue is a quorum queue");
    let worker = app.worker().await;
    app.publish(&order_paid("quorum-1", 1)).await;
    let sends = app.sent(1).await;
    assert_eq!(sends_to(&sends, &openid(1)), 1);
    worker.shutdown().await.unwrap();
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}
