//! Exactly-once under the failures that used to break it: a worker killed with events in
//! flight, Redis losing its data while a killed worker's send may have gone through, a
//! gateway error that may hide an accepted send, and a Redis that cannot keep the promise
//! of `on_ambiguous = "dead_letter"`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use wxpush::config::OnAmbiguous;
use wxpush_mock_wechat::{Fault, FaultTarget, MockOptions};

fn latency(d: Duration) -> MockOptions {
    MockOptions {
        latency: d,
        ..MockOptions::default()
    }
}

/// Accepted sends per event id (`order_no` is `A<n>`, the user is `n`: one per event).
fn accepted_per_user(app: &TestApp) -> BTreeMap<String, usize> {
    let mut per_user = BTreeMap::new();
    for send in app.mock.sends() {
        let user = send.body["touser"].as_str().unwrap_or_default().to_owned();
        *per_user.entry(user).or_default() += 1;
    }
    per_user
}

/// A worker killed with 256 events in flight (WeChat answering in 1 s): its claims lapse
/// within seconds because nobody renews them, and another worker decides every event —
/// before claims were renewed, they were held for the longest possible send (~100 s).
/// Under `on_ambiguous = "dead_letter"`, with the same guarantee as ever: none sent twice.
#[tokio::test]
async fn a_killed_workers_in_flight_events_are_decided_within_seconds() {
    let app = TestApp::start_with("recover", latency(Duration::from_secs(1)), |c| {
        c.amqp.prefetch = 256;
        c.policy.on_ambiguous = OnAmbiguous::DeadLetter;
        c.policy.unsafe_redis = true; // the test Redis keeps nothing on disk
    })
    .await;
    let file = app.config_file_with(|t| {
        set_toml(t, "amqp", "prefetch", 256);
        set_toml(t, "policy", "on_ambiguous", "dead_letter");
        set_toml(t, "policy", "unsafe_redis", true);
    });
    let doomed = WorkerProcess::start(file.path(), &[]);
    let n = 256;
    app.publish_all(&order_events("rec", n)).await;
    eventually("256 sends in flight", Duration::from_secs(30), || async {
        (app.mock.stats().send_calls >= n as u64).then_some(())
    })
    .await;
    let _ = doomed.kill().await;
    let killed_at = Instant::now();

    let rescuer = app.worker().await;
    eventually("every event decided", Duration::from_secs(20), || async {
        let decided = accepted_per_user(&app).len() + app.dead_len().await as usize;
        (decided >= n && app.pending().await == 0).then_some(())
    })
    .await;
    let took = killed_at.elapsed();
    eprintln!("all {n} in-flight events of the killed worker decided {took:?} after the kill");
    rescuer.shutdown().await.unwrap();
    let per_user = accepted_per_user(&app);
    let twice: Vec<_> = per_user.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    let letters = app.dead_letters(app.dead_len().await as usize).await;
    for letter in &letters {
        assert_eq!(letter.class.as_deref(), Some("ambiguous"), "{letter:?}");
    }
    eprintln!(
        "{} sent, {} dead-lettered as ambiguous",
        per_user.len(),
        letters.len()
    );
    let dead: std::collections::BTreeSet<String> =
        letters.iter().filter_map(|l| l.event_id()).collect();
    for i in 0..n {
        assert!(
            per_user.contains_key(&openid(i)) || dead.contains(&format!("rec-{i}")),
            "rec-{i} lost"
        );
    }
    app.cleanup().await;
}

/// Under `on_ambiguous = "dead_letter"`, a worker is killed while its sends may have gone
/// through, and then Redis loses everything the deployment had (its keys are deleted, the
/// epoch key included: what a restart without persistence or a flush does). The
/// redelivered events have no state, but they were handled before: they are dead-lettered
/// as ambiguous, never sent a second time; the rest are sent once; nothing is lost.
#[tokio::test]
async fn redis_losing_everything_after_a_kill_sends_nothing_twice() {
    let app = TestApp::start_with("redis-lost", latency(Duration::from_millis(300)), |c| {
        c.policy.on_ambiguous = OnAmbiguous::DeadLetter;
        c.policy.unsafe_redis = true; // the test Redis keeps nothing on disk
    })
    .await;
    let file = app.config_file_with(|t| {
        set_toml(t, "policy", "on_ambiguous", "dead_letter");
        set_toml(t, "policy", "unsafe_redis", true);
    });
    let doomed = WorkerProcess::start(file.path(), &[]);
    let n = 300;
    app.publish_all(&order_events("lost", n)).await;
    eventually("sends under way", Duration::from_secs(30), || async {
        (app.mock.stats().sends_ok >= 20).then_some(())
    })
    .await;
    let _ = doomed.kill().await;
    let pool = wxpush::store::pooled(&app.config.redis).unwrap();
    wxpush::store::delete_prefix(&pool, &app.prefix)
        .await
        .unwrap();

    let rescuer = app.worker().await;
    let ids: Vec<String> = (0..n).map(|i| format!("lost-{i}")).collect();
    eventually(
        "every event sent or dead-lettered",
        Duration::from_secs(60),
        || async {
            let queued = app.pending().await;
            let sent = accepted_per_user(&app).len();
            let dead = app.dead_len().await as usize;
            (queued == 0 && sent + dead >= n).then_some(())
        },
    )
    .await;
    rescuer.shutdown().await.unwrap();
    let per_user = accepted_per_user(&app);
    let twice: Vec<_> = per_user.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    let letters = app.dead_letters(app.dead_len().await as usize).await;
    let mut dead_ids = std::collections::BTreeSet::new();
    for letter in &letters {
        // An ambiguous dead letter may stand for an event that was in fact sent: allowed;
        // what is not allowed is a second send.
        assert_eq!(letter.class.as_deref(), Some("ambiguous"), "{letter:?}");
        let id = letter.event_id().unwrap();
        assert!(dead_ids.insert(id.clone()), "{id} dead-lettered twice");
    }
    for (i, id) in ids.iter().enumerate() {
        assert!(
            per_user.contains_key(&openid(i)) || dead_ids.contains(id),
            "{id} lost: neither sent nor dead-lettered"
        );
    }
    eprintln!(
        "after the loss: {} sent, {} dead-lettered as ambiguous",
        per_user.len(),
        letters.len()
    );
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}

/// 502, 503 and 504 come from a gateway that may have passed the send on: under
/// `dead_letter` they are ambiguous (dead-lettered, not retried); under `resend` retried.
#[tokio::test]
async fn gateway_errors_are_ambiguous() {
    for (status, policy) in [(503, OnAmbiguous::DeadLetter), (502, OnAmbiguous::Resend)] {
        let app = TestApp::start_with("gateway", MockOptions::default(), |c| {
            c.policy.on_ambiguous = policy;
            c.policy.unsafe_redis = true; // the test Redis keeps nothing on disk
        })
        .await;
        let worker = app.worker().await;
        app.mock
            .push_faults(FaultTarget::Send, vec![Fault::Http(status)]);
        app.publish(&order_paid("gw-1", 1)).await;
        match policy {
            OnAmbiguous::DeadLetter => {
                let dl = app.dead_letters(1).await.remove(0);
                assert_eq!(dl.class.as_deref(), Some("ambiguous"), "{status}: {dl:?}");
                assert!(app.mock.sends().is_empty());
            }
            OnAmbiguous::Resend => {
                app.sent(1).await;
                assert_eq!(app.mock.stats().send_calls, 2, "{status}: retried once");
            }
        }
        worker.shutdown().await.unwrap();
        app.cleanup().await;
    }
}

/// "Never sent twice" rests on Redis keeping its records: a worker under
/// `on_ambiguous = "dead_letter"` refuses to start on a Redis that can evict or lose them,
/// naming the settings and the fix, unless `policy.unsafe_redis = true`.
#[tokio::test]
async fn dead_letter_policy_needs_a_redis_that_keeps_its_records() {
    let app = TestApp::start_with("durability", MockOptions::default(), |c| {
        c.policy.on_ambiguous = OnAmbiguous::DeadLetter;
    })
    .await;
    let pool = wxpush::store::pooled(&app.config.redis).unwrap();
    let mut conn = pool.get().await.unwrap();
    let risks = wxpush::store::durability::inspect(&mut *conn)
        .await
        .unwrap()
        .risks();
    drop(conn);
    match wxpush::worker::Worker::start(app.config.clone()).await {
        Ok(worker) => {
            assert!(risks.is_empty(), "started on a Redis with risks: {risks:?}");
            worker.shutdown().await.unwrap();
        }
        Err(e) => {
            assert!(!risks.is_empty(), "refused a durable Redis: {e}");
            let text = e.to_string();
            assert!(
                text.contains("policy.unsafe_redis = true") && text.contains("appendonly"),
                "{text}"
            );
        }
    }
    let mut accepted = app.config.clone();
    accepted.policy.unsafe_redis = true;
    let worker = wxpush::worker::Worker::start(accepted)
        .await
        .expect("starts when the risk is accepted");
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}
