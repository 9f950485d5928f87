//! Broker-side faults made with the test-only fault points (`src/failpoint.rs`; run with
//! `cargo test --features failpoints`). The fault points are global to this test process,
//! so this file holds one test at a time (`SERIAL`).

mod common;

use std::time::Duration;

use common::*;
use wxpush::failpoint::{self, Action};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One message task panics. Its message goes back to the queue and is delivered again; the
/// batched acker, which acks contiguous runs of settled tags only, is told the tag is
/// settled, so the acks of every later message keep flowing (without that, the worker
/// stops at `prefetch` unacked messages for the rest of the session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_message_task_holds_up_no_acks() {
    let _serial = SERIAL.lock().await;
    failpoint::clear_all();
    let app = TestApp::start("panic").await;
    let n = 300;
    assert!(n > 2 * usize::from(app.config.amqp.prefetch));
    failpoint::set_times("worker.process", Action::Panic, 1);
    let worker = app.worker().await;
    app.publish_all(&order_events(&app.prefix, n)).await;
    let sends = app.sent(n).await;
    assert!(
        failpoint::hits("worker.process") > n,
        "the panicked message came back"
    );
    eventually("every message acked", Duration::from_secs(30), || async {
        (app.pending().await == 0).then_some(())
    })
    .await;
    worker.shutdown().await.unwrap();
    // Acked, not merely handed back at the shutdown: nothing returns to the queue.
    assert_eq!(app.pending().await, 0);
    assert_each_sent_once(&app.mock.sends(), n);
    assert_eq!(sends.len(), n);
    assert_eq!(app.dead_len().await, 0);
    failpoint::clear_all();
    app.cleanup().await;
}

/// A worker dies between a dead letter's confirm and its `dead` record in Redis (issue 15's
/// window 6): its message comes back, the redelivery finds `dead_pending` and publishes the
/// dead letter again. The broker then holds two copies, with the one letter id of the
/// deciding claim, and every reader takes them as one letter: the listing shows it once
/// with 2 copies, a replay republishes it once and acks both copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_dead_letter_left_by_a_kill_are_one_letter() {
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;
    use wxpush::dead_letters::{self, Action as Run, Filter, Order, Progress, Queues};
    use wxpush_mock_wechat::{Fault, FaultTarget};

    let _serial = SERIAL.lock().await;
    failpoint::clear_all();
    let app = TestApp::start("dl-copies").await;
    app.mock
        .push_faults(FaultTarget::Send, vec![Fault::Errcode(40003)]);
    let confirmed = Arc::new(tokio::sync::Notify::new());
    failpoint::set_times(
        "settle.dead_letter_confirmed",
        Action::Pause(confirmed.clone()),
        1,
    );
    let first = app.worker().await;
    let own = format!("wxpush worker consuming (pid {})", std::process::id());
    let first_consuming = eventually(
        "the first worker's consuming connection",
        Duration::from_secs(30),
        || async { broker_connection_pids(&own).into_iter().next() },
    )
    .await;
    app.publish(&order_paid(&format!("{}-0", app.prefix), 0))
        .await;
    eventually(
        "the dead letter confirmed, its record not yet written",
        Duration::from_secs(30),
        || async { (failpoint::hits("settle.dead_letter_confirmed") == 1).then_some(()) },
    )
    .await;
    assert_eq!(app.dead_len().await, 1);

    // The "kill": the first worker's consuming connection goes, its task stays stuck
    // before the record. A second worker takes the redelivery.
    let second = app.worker().await;
    close_broker_connection(&first_consuming, "test: the worker dies after the confirm");
    eventually(
        "the redelivery dead-lettered again",
        Duration::from_secs(30),
        || async { (app.dead_len().await == 2).then_some(()) },
    )
    .await;
    confirmed.notify_waiters();
    second.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
    assert_eq!(app.mock.sends().len(), 0, "never sent");

    let connection = wxpush::broker::connect(AMQP_URL, "dl-copies test")
        .await
        .unwrap();
    let queues = Queues::of(&app.config.amqp);
    let (letters, _) = dead_letters::read(
        &connection,
        &queues.dead,
        None,
        &Progress::default(),
        &CancellationToken::new(),
        |_| false,
    )
    .await
    .unwrap();
    assert_eq!(letters.len(), 1, "two copies, one letter: {letters:?}");
    assert_eq!(letters[0].copies, 2);
    assert_eq!(letters[0].errcode, Some(40003));
    assert!(letters[0].letter_id.is_some());

    let dry_run = Order {
        filter: Filter::default(),
        action: Run::Count,
        limit: None,
    };
    let counted = run_order(&connection, &queues, &dry_run).await.unwrap();
    assert_eq!((counted.matched, counted.copies), (1, 1));
    let replay = Order {
        action: Run::Replay,
        ..dry_run
    };
    let replayed = run_order(&connection, &queues, &replay).await.unwrap();
    assert_eq!((replayed.done, replayed.copies), (1, 1));
    assert_eq!(
        app.dead_len().await,
        0,
        "both copies acked with their letter"
    );
    assert_eq!(
        app.queue_len(&app.config.amqp.queue).await,
        1,
        "the event goes back once"
    );
    let _ = connection.close(200, "done".into()).await;
    failpoint::clear_all();
    app.cleanup().await;
}
