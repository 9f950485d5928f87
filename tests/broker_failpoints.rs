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
