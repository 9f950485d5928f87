//! `wxpush replay`, the real binary against the real RabbitMQ: filters and `--limit`,
//! `--dry-run`, interruption, and dead letters put there by other clients.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use lapin::BasicProperties;
use lapin::options::BasicGetOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use wxpush::broker::dead_letter::Letter;
use wxpush::broker::headers as h;

/// The number in "moved N dead letter(s)" (or "would move N …") of replay's summary.
fn moved(stdout: &str) -> usize {
    let line = stdout
        .lines()
        .find(|l| {
            (l.starts_with("moved ") || l.starts_with("would move "))
                && l.contains("dead letter(s)")
        })
        .unwrap_or_else(|| panic!("no summary line in {stdout:?}"));
    line.split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

#[tokio::test]
async fn errcode_and_limit_move_exactly_those_and_keep_the_rest_in_order() {
    let app = TestApp::start("replay-limit").await;
    let letters = mixed_dead_letters(&app.prefix, 100);
    app.fill_mixed(&letters).await;
    // The first ten dead letters with errcode -1, in queue order.
    let chosen: Vec<&MixedDead> = letters
        .iter()
        .filter(|l| l.errcode == -1)
        .take(10)
        .collect();
    let chosen_ids: Vec<&str> = chosen.iter().map(|l| l.id.as_str()).collect();

    let out = app
        .cli(&["replay", "--errcode", "-1", "--limit", "10"])
        .await;
    let stdout = out.ok();
    assert_eq!(moved(stdout), 10, "{stdout}");
    assert!(stdout.contains("skipped by filter: "), "{stdout}");

    // They are in the events queue, in their dead-letter order, published straight to it
    // (not through the shared exchange), with the dead-letter reason gone (fresh attempts)
    // and the replay counted. Look without taking them: the channel's close puts them back
    // for the worker.
    let events = app.config.amqp.queue.clone();
    eventually("10 replayed events", Duration::from_secs(10), || async {
        (app.queue_len(&events).await == 10).then_some(())
    })
    .await;
    let channel = app.connection.create_channel().await.unwrap();
    for expected in &chosen {
        let m = channel
            .basic_get(events.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a replayed event")
            .delivery;
        assert_eq!(body_id(&m.data).as_deref(), Some(expected.id.as_str()));
        assert_eq!(m.data, expected.body, "body unchanged");
        assert_eq!(m.exchange.as_str(), "");
        assert_eq!(m.routing_key.as_str(), events);
        let letter = Letter::of_delivery(1, &m);
        assert_eq!(
            (
                &letter.class,
                letter.errcode,
                &letter.errmsg,
                letter.attempts,
                &letter.first_failed_at,
                &letter.dead_at_raw
            ),
            (&None, None, &None, None, &None, &None),
            "the failure is gone from {m:?}"
        );
        assert_eq!(letter.replayed, expected.replayed + 1);
        assert_eq!(letter.app.as_deref(), Some("default"));
        assert_eq!(
            m.properties.message_id().as_ref().map(|s| s.as_str()),
            Some(expected.id.as_str()),
            "properties kept"
        );
    }
    channel.close(200, "looked".into()).await.unwrap();

    // The other 90 are still dead, in their original order.
    let rest: Vec<String> = letters
        .iter()
        .filter(|l| !chosen_ids.contains(&l.id.as_str()))
        .map(|l| l.id.clone())
        .collect();
    assert_eq!(app.drain_dead_ids(90).await, rest);

    // A worker delivers the ten, once each.
    let worker = app.worker().await;
    let sends = app.sent(10).await;
    let to: BTreeSet<String> = sends
        .iter()
        .map(|s| s.body["touser"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected: BTreeSet<String> = chosen.iter().map(|l| openid(l.user)).collect();
    assert_eq!(to, expected);
    eventually(
        "the events queue drained",
        Duration::from_secs(10),
        || async { (app.pending().await == 0).then_some(()) },
    )
    .await;
    assert_eq!(app.mock.sends().len(), 10, "each sent exactly once");
    assert_eq!(app.dead_len().await, 0, "none dead-lettered again");
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let app = TestApp::start("replay-dry").await;
    let letters = mixed_dead_letters(&app.prefix, 100);
    app.fill_mixed(&letters).await;

    let out = app.cli(&["replay", "--dry-run", "--errcode", "-1"]).await;
    let stdout = out.ok();
    let would: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("would move #"))
        .collect();
    let expected: Vec<&MixedDead> = letters.iter().filter(|l| l.errcode == -1).collect();
    assert_eq!(would.len(), 30, "{stdout}");
    for (line, l) in would.iter().zip(&expected) {
        assert!(line.contains(&format!(" {} ", l.id)), "{line} for {}", l.id);
    }
    assert_eq!(moved(stdout), 30, "{stdout}");
    assert!(stdout.contains("nothing was changed"), "{stdout}");

    // Nothing was published: a publish would have been confirmed, so queued, before the
    // command exited.
    assert_eq!(app.pending().await, 0, "nothing went to the events queue");
    assert!(app.mock.sends().is_empty());
    let ids: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();
    assert_eq!(
        app.drain_dead_ids(100).await,
        ids,
        "same dead letters, same order"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_interrupted_replay_loses_nothing() {
    const N: usize = 3000;
    let app = TestApp::start("replay-int").await;
    let letters = mixed_dead_letters(&app.prefix, N);
    app.fill_mixed(&letters).await;
    assert_eq!(app.dead_len().await as usize, N);

    // No worker: whatever replay moves stays in the events queue where we can count it.
    let (mut command, _config) = app.command(&["replay"]);
    let child = command.spawn().expect("replay starts");
    let pid = child.id().expect("replay is running");
    let events = app.config.amqp.queue.clone();
    eventually(
        "replay to have moved some",
        Duration::from_secs(60),
        || async { (app.queue_len(&events).await > 0).then_some(()) },
    )
    .await;
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let out: CliOutput = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("replay stops after SIGINT")
        .expect("replay output")
        .into();
    let moved = moved(&out.stdout);
    eprintln!("replay moved {moved} of {N} before SIGINT");
    assert_eq!(out.code, Some(1), "interrupted is not success: {out:#?}");
    assert!(out.stderr.contains("interrupted"), "{out:#?}");
    assert!(
        0 < moved && moved < N,
        "interrupted mid-way, moved {moved} of {N}"
    );

    // Exactly: dead letters + replayed events == N, no id missing, no id in both. A message
    // is acked from the dead-letter queue only after its republish was confirmed, and the
    // SIGINT lets the message in progress finish (publish, confirm, ack) before the channel
    // closes; the ack precedes the close on the same channel, so the broker applies it
    // before requeueing the rest. Only a hard kill between a confirm and its ack could leave
    // one message (the one in flight) in both queues; SIGINT never does.
    let replayed: Vec<String> = app
        .drain_exactly(&events, moved)
        .await
        .iter()
        .map(|d| body_id(&d.data).unwrap())
        .collect();
    let still_dead = app.drain_dead_ids(N - moved).await;
    assert_eq!(replayed.len() + still_dead.len(), N);
    let ids: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();
    // Without filters replay takes the head of the queue: the first `moved` went, in order,
    // and the rest stayed, in order.
    assert_eq!(replayed, ids[..moved]);
    assert_eq!(still_dead, ids[moved..]);
    app.cleanup().await;
}

#[tokio::test]
async fn third_party_dead_letters_can_be_listed_and_replayed() {
    let app = TestApp::start("replay-foreign").await;
    // Put there by other clients: none of our headers; one a valid event with someone
    // else's headers, one binary, one plain text.
    let event = serde_json::to_vec(&order_paid("foreign-1", 7)).unwrap();
    let mut theirs = FieldTable::default();
    theirs.insert(
        "x-first-death-reason".into(),
        AMQPValue::LongString("rejected".into()),
    );
    theirs.insert("x-retries".into(), AMQPValue::LongInt(5));
    let binary = b"\xff\xfe\x00\x01 not utf-8".to_vec();
    let text = b"hello from another client".to_vec();
    app.fill_dead(&[
        (
            event.clone(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(theirs),
        ),
        (binary.clone(), BasicProperties::default()),
        (text.clone(), BasicProperties::default()),
    ])
    .await;

    let listed: Value = serde_json::from_str(app.cli(&["dead", "--json"]).await.ok()).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["id"], "foreign-1");
    assert_eq!(listed[0]["type"], "order.paid");
    for l in listed {
        assert_eq!(l["class"], Value::Null);
        assert_eq!(l["errcode"], Value::Null);
        assert_eq!(l["age"], Value::Null);
        assert_eq!(l["replayed"], 0);
    }
    assert_eq!(listed[1]["id"], Value::Null);
    assert_eq!(listed[1]["parsable"], false);
    let table = app.cli(&["dead"]).await;
    assert!(table.ok().contains("(unparsable)"), "{table:#?}");

    let out = app.cli(&["replay"]).await;
    assert_eq!(moved(out.ok()), 3, "{out:#?}");
    let events = app.config.amqp.queue.clone();
    let replayed = app.drain_exactly(&events, 3).await;
    // Straight to the events queue, with or without a readable type.
    assert_eq!(replayed[0].data, event);
    let headers = h::of(&replayed[0].properties);
    assert_eq!(
        h::get_str(&headers, "x-first-death-reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(h::get_i64(&headers, "x-retries"), Some(5));
    for (m, body) in replayed[1..].iter().zip([&binary, &text]) {
        assert_eq!(&m.data, body);
    }
    for m in &replayed {
        assert_eq!(m.exchange.as_str(), "");
        assert_eq!(m.routing_key.as_str(), events);
        assert_eq!(Letter::of_delivery(1, m).replayed, 1);
    }
    assert_eq!(app.dead_len().await, 0);
    app.cleanup().await;
}
