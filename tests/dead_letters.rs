//! `dead_letters::run`, the replay shared by the CLI, the API and the console, against the
//! real RabbitMQ: its connection force-closed mid-replay (nothing lost, no letter in both
//! queues, and the worker sends each event once), two replays of the
//! same filter at once (no letter replayed twice), and (ignored: a measurement) its rate.
//!
//! The forced close uses `rabbitmqctl close_connection` on this replay's own connection
//! only: the shared broker keeps running for everyone else.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio_util::sync::CancellationToken;
use wxpush::dead_letters::{self, Action, Filter, Order, Progress, Queues};

#[tokio::test]
async fn a_forced_close_mid_replay_loses_nothing_and_sends_each_event_once() {
    const N: usize = 3000;
    let app = TestApp::start("dl-close").await;
    let letters = mixed_dead_letters(&app.prefix, N);
    app.fill_mixed(&letters).await;
    let name = format!("replay-close {}", app.prefix);
    let connection = wxpush::broker::connect(AMQP_URL, &name).await.unwrap();
    let pid = eventually(
        "the replay's connection listed",
        Duration::from_secs(30),
        || async { broker_connection_pids(&name).into_iter().next() },
    )
    .await;

    // Small batches so that the close lands mid-way.
    const WINDOW: usize = 4;
    let progress = Arc::new(Progress::default());
    let run = tokio::spawn({
        let (progress, queues) = (progress.clone(), app.dead_queues(WINDOW));
        async move {
            let cancel = CancellationToken::new();
            let result = dead_letters::run(
                &connection,
                &queues,
                &replay_all(),
                &progress,
                &cancel,
                |_| {},
            )
            .await;
            drop(connection);
            result
        }
    });
    eventually("the replay under way", Duration::from_secs(30), || async {
        (progress.snapshot().done >= 100).then_some(())
    })
    .await;
    close_broker_connection(&pid, "test: forced close mid-replay");
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the replay ends after its connection closed")
        .unwrap();
    let done = progress.snapshot().done as usize;
    eprintln!("replayed {done} of {N} before the forced close: {result:?}");
    assert!(result.is_err(), "a closed connection is an error");
    assert!(done < N, "closed mid-way");

    // Nothing lost, nothing in both queues: a batch's republishes and acks are one
    // transaction, committed whole or not at all.
    let ids: BTreeSet<String> = letters.iter().map(|l| l.id.clone()).collect();
    let replayed = app.assert_each_in_one_queue(&ids).await;
    assert!(
        replayed.len() >= done,
        "every counted replay is in the events queue"
    );

    // Put them all back and replay again, then let a worker deliver: each event once.
    let again: Vec<_> = letters
        .iter()
        .map(|l| (l.body.clone(), l.properties.clone()))
        .collect();
    app.replay_all_and_deliver_once(&again).await;
    app.cleanup().await;
}

#[tokio::test]
async fn two_replays_of_the_same_filter_take_each_letter_once() {
    const N: usize = 4000;
    let app = TestApp::start("dl-twice").await;
    let letters = mixed_dead_letters(&app.prefix, N);
    app.fill_mixed(&letters).await;
    let order = Order {
        filter: Filter {
            errcodes: vec![-1],
            ..Filter::default()
        },
        action: Action::Replay,
        limit: None,
    };
    let one = |name: &'static str| {
        let (order, queues) = (order.clone(), app.dead_queues(64));
        async move {
            let connection = wxpush::broker::connect(AMQP_URL, name).await.unwrap();
            let tally = run_order(&connection, &queues, &order).await;
            let _ = connection.close(200, "done".into()).await;
            tally.expect("replay runs")
        }
    };
    let (a, b) = tokio::join!(one("replay twice a"), one("replay twice b"));
    eprintln!("replay a moved {}, replay b moved {}", a.done, b.done);
    let expected: Vec<&MixedDead> = letters.iter().filter(|l| l.errcode == -1).collect();
    assert_eq!(
        (a.done + b.done) as usize,
        expected.len(),
        "together they moved each matching letter once"
    );
    let events = app.config.amqp.queue.clone();
    let replayed: Vec<String> = app
        .drain_exactly(&events, expected.len())
        .await
        .iter()
        .map(|d| body_id(&d.data).unwrap())
        .collect();
    let distinct: BTreeSet<&String> = replayed.iter().collect();
    assert_eq!(distinct.len(), expected.len(), "no letter replayed twice");
    let wanted: BTreeSet<&String> = expected.iter().map(|l| &l.id).collect();
    assert_eq!(distinct, wanted);
    // The rest is still dead, in its order.
    let rest: Vec<String> = letters
        .iter()
        .filter(|l| l.errcode != -1)
        .map(|l| l.id.clone())
        .collect();
    assert_eq!(app.drain_dead_ids(rest.len()).await, rest);
    app.cleanup().await;
}

/// The events queue is gone (deleted under the replay): RabbitMQ returns the republishes
/// as unroutable at the commit, whose acks went with them; each is put back in the
/// dead-letter queue as it was, none lost, and the tally says so.
#[tokio::test]
async fn a_replay_into_a_deleted_events_queue_puts_every_letter_back() {
    use lapin::options::QueueDeleteOptions;
    const N: usize = 50;
    let app = TestApp::start("dl-gone").await;
    let letters = mixed_dead_letters(&app.prefix, N);
    app.fill_mixed(&letters).await;
    let channel = app.connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            app.config.amqp.queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let connection = wxpush::broker::connect(AMQP_URL, "replay gone")
        .await
        .unwrap();
    let tally = run_order(&connection, &app.dead_queues(16), &replay_all())
        .await
        .expect("the replay runs");
    let _ = connection.close(200, "done".into()).await;
    assert_eq!((tally.done, tally.unroutable), (0, N as u64), "{tally:?}");
    let back: BTreeSet<String> = app.drain_dead_ids(N).await.into_iter().collect();
    let ids: BTreeSet<String> = letters.iter().map(|l| l.id.clone()).collect();
    assert_eq!(back, ids, "every letter is back in the dead-letter queue");
    app.cleanup().await;
}

#[tokio::test]
async fn a_purge_drops_only_the_selected_letters() {
    const N: usize = 200;
    let app = TestApp::start("dl-purge").await;
    let letters = mixed_dead_letters(&app.prefix, N);
    app.fill_mixed(&letters).await;
    let connection = wxpush::broker::connect(AMQP_URL, "purge test")
        .await
        .unwrap();
    let order = Order {
        filter: Filter {
            errcodes: vec![47003],
            ..Filter::default()
        },
        action: Action::Purge,
        limit: Some(10),
    };
    let tally = run_order(&connection, &app.dead_queues(64), &order)
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(tally.done, 10);
    let purged: Vec<&String> = letters
        .iter()
        .filter(|l| l.errcode == 47003)
        .take(10)
        .map(|l| &l.id)
        .collect();
    let rest: Vec<String> = letters
        .iter()
        .filter(|l| !purged.contains(&&l.id))
        .map(|l| l.id.clone())
        .collect();
    assert_eq!(app.pending().await, 0, "nothing republished");
    assert_eq!(app.drain_dead_ids(N - 10).await, rest, "the rest in order");
    app.cleanup().await;
}

/// The replay rate on this machine: `cargo test --release --test dead_letters -- --ignored
/// --nocapture replay_rate` (see docs/benchmarks.md).
#[tokio::test]
#[ignore = "a measurement"]
async fn replay_rate() {
    const N: usize = 20_000;
    let app = TestApp::start("dl-rate").await;
    let letters = mixed_dead_letters(&app.prefix, N);
    app.fill_mixed(&letters).await;
    let connection = wxpush::broker::connect(AMQP_URL, "replay rate")
        .await
        .unwrap();
    let started = Instant::now();
    let tally = run_order(&connection, &Queues::of(&app.config.amqp), &replay_all())
        .await
        .unwrap();
    let took = started.elapsed();
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(tally.done as usize, N);
    eprintln!(
        "replayed {N} dead letters in {:.2} s: {:.0} letters/s (window {})",
        took.as_secs_f64(),
        N as f64 / took.as_secs_f64(),
        dead_letters::DEFAULT_WINDOW
    );
    let events = app.config.amqp.queue.clone();
    eventually(
        "all in the events queue",
        Duration::from_secs(30),
        || async { (app.queue_len(&events).await as usize == N).then_some(()) },
    )
    .await;
    app.cleanup().await;
}
