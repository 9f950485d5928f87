//! Grants end to end: the emulator's users tap "accept" in the subscribe popup, WeChat
//! (the emulator) pushes the choices, signed and encrypted, to the worker's message-push
//! receiver, the grant ledger counts them, and under `policy.without_grant = "skip"` the
//! worker sends exactly as many messages as each user granted: no 43101, no dead letter.
//! The delivery results WeChat pushes after each send end up in `wxpush trace`.

mod common;

use std::time::Duration;

use common::push::{ONCE, grant_count};
use common::*;
use serde_json::{Value, json};
use wxpush::config::WithoutGrant;
use wxpush::store::grants::{self, Choice};
use wxpush::worker::Worker;
use wxpush_mock_wechat::MockOptions;

#[tokio::test]
async fn without_grant_skip_sends_exactly_the_granted_messages() {
    let app = TestApp::start_with(
        "grants",
        MockOptions {
            strict_subscriptions: true,
            ..MockOptions::default()
        },
        |c| {
            c.policy.without_grant = WithoutGrant::Skip;
            enable_push(c);
        },
    )
    .await;
    let worker = Worker::start(app.config.clone()).await.unwrap();
    push_to(&app.mock, &worker);
    // Users 0, 1 and 2 grant 0, 1 and 2 one-time sends of the template.
    for (user, taps) in [(1, 1), (2, 2)] {
        for tap in 0..taps {
            if tap > 0 {
                // A person taps again seconds later at the earliest. WeChat's CreateTime counts
                // seconds, and the same push within one second is WeChat retrying it (the
                // receiver counts it once), so the second tap happens in a later second.
                tokio::time::sleep(until_next_second()).await;
            }
            let status = app
                .mock
                .user_taps_subscribe(APPID, &openid(user), &[("TPL_ORDER_PAID", "accept")])
                .await
                .unwrap();
            assert_eq!(status, Some(200), "the receiver took the popup event");
        }
    }
    let events: Vec<Value> = (0..3)
        .flat_map(|user| (0..2).map(move |n| order_paid(&format!("grant-{user}-{n}"), user)))
        .collect();
    app.publish_all(&events).await;
    let sends = app.sent(3).await;
    eventually("every event decided", Duration::from_secs(20), || async {
        let mut decided = 0;
        for e in &events {
            let id = e["id"].as_str().unwrap();
            if matches!(
                app.event_state(id).await.as_deref(),
                Some("sent" | "skipped")
            ) {
                decided += 1;
            }
        }
        (decided == events.len()).then_some(())
    })
    .await;
    worker.shutdown().await.unwrap();

    assert_eq!(sends_to(&sends, &openid(0)), 0);
    assert_eq!(sends_to(&sends, &openid(1)), 1);
    assert_eq!(sends_to(&sends, &openid(2)), 2);
    assert_eq!(app.mock.sends().len(), 3);
    assert_eq!(
        app.mock.stats().errcode_counts.get("43101"),
        None,
        "no 43101"
    );
    assert_eq!(app.dead_len().await, 0);

    // The sent event WeChat pushed after user 1's one send is in that event's trace.
    let traced = eventually("a delivery result", Duration::from_secs(10), || async {
        for n in 0..2 {
            let out = app.cli(&["trace", &format!("grant-1-{n}"), "--json"]).await;
            let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
            if v["record"]["state"] == "sent" && v["record"]["delivery"]["errcode"] == 0 {
                return Some(v);
            }
        }
        None
    })
    .await;
    assert_eq!(
        traced["record"]["msgid"],
        json!(sends_for(&sends, &openid(1))),
        "{traced}"
    );
    app.cleanup().await;
}

fn sends_for(sends: &[wxpush_mock_wechat::AcceptedSend], openid: &str) -> u64 {
    sends
        .iter()
        .find(|s| s.body["touser"] == openid)
        .map(|s| s.msgid)
        .unwrap()
}

fn until_next_second() -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    Duration::from_millis(1005 - u64::from(now.subsec_millis()))
}

/// Under the default `policy.without_grant = "send"` the ledger is kept after the fact: a
/// send uses one of the user's recorded one-time grants when the app receives pushes (has a
/// push Token). An app without one can have no grants (its pushes are refused), so its
/// sends leave the ledger as it is: its only entries are 43101 zeros.
#[tokio::test]
async fn a_send_uses_a_recorded_grant_only_for_an_app_with_push() {
    for with_push in [true, false] {
        let app = TestApp::start_with("grant-use", MockOptions::default(), |c| {
            if with_push {
                enable_push(c);
            }
        })
        .await;
        let user = openid(7);
        let key = wxpush::store::Keys::new(&app.prefix).grants("default", &user);
        let mut conn = redis_conn(&app.config.redis).await;
        for _ in 0..2 {
            grants::record_choice(&mut conn, &key, ONCE, Choice::Accept, false)
                .await
                .unwrap();
        }
        let worker = app.worker().await;
        let mut event = order_paid("grant-use-1", 1);
        event["recipient"] = json!({ "openid": user });
        app.publish(&event).await;
        app.sent(1).await;
        // A graceful shutdown waits for the message's task: its ledger write is done.
        worker.shutdown().await.unwrap();
        let expected = if with_push { 1 } else { 2 };
        let records = grants::read_all(&mut conn, &key).await.unwrap();
        assert_eq!(
            grant_count(&records, ONCE),
            Some(expected),
            "with push: {with_push}"
        );
        app.cleanup().await;
    }
}
