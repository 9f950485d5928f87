//! `apps.NAME.max_rate` across a fleet of worker processes, measured where WeChat counts:
//! the emulator's clock. In a test binary of its own, so that the other tests' load does
//! not add to the network and scheduling delays the limiter's jitter guard absorbs.

mod common;

use std::time::Duration;

use common::*;
use wxpush::config::Rate;

/// The most sends in any 1-second window `[t, t + 1000 ms)` of these times, and the
/// sends of that window (ms after its first).
fn busiest_second(times_ms: &[u64]) -> (usize, Vec<u64>) {
    let mut times = times_ms.to_vec();
    times.sort_unstable();
    let (mut most, mut at) = (0, 0);
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= 1000 {
            start += 1;
        }
        if end - start + 1 > most {
            (most, at) = (end - start + 1, start);
        }
    }
    let window = times[at..at + most].iter().map(|t| t - times[at]).collect();
    (most, window)
}

/// Three worker processes share `max_rate = "100/s"`: no second of the emulator's clock
/// sees more than 100 sends, even when one of them is killed mid-stream, and no event is
/// sent twice or lost. (Under `on_ambiguous = "dead_letter"`: a send the kill cut off
/// between WeChat's acceptance and the sent mark is ambiguous; under the default `resend`
/// it would rightly go out again.)
#[tokio::test]
async fn max_rate_holds_for_the_fleet_even_when_a_worker_dies() {
    let app = TestApp::start("max-rate").await;
    let rate: Rate = "100/s".parse().unwrap();
    let file = app.config_file_with(|t| {
        set_toml(t, "apps.default", "max_rate", rate.to_string());
        set_toml(t, "amqp", "prefetch", 64);
        set_toml(t, "policy", "on_ambiguous", "dead_letter");
        set_toml(t, "policy", "unsafe_redis", true); // the test Redis keeps nothing on disk
    });
    let mut fleet: Vec<WorkerProcess> = (0..3)
        .map(|_| WorkerProcess::start(file.path(), &[]))
        .collect();
    let n = 700;
    app.publish_all(&order_events("rate", n)).await;
    eventually("a third sent", Duration::from_secs(60), || async {
        (app.mock.stats().sends_ok >= n as u64 / 3).then_some(())
    })
    .await;
    let _ = fleet.remove(0).kill().await;
    eventually("every event decided", Duration::from_secs(60), || async {
        let decided = app.mock.sends().len() + app.dead_len().await as usize;
        (decided >= n && app.pending().await == 0).then_some(())
    })
    .await;
    for worker in fleet {
        worker.kill().await;
    }
    let sends = app.mock.sends();
    let letters = app.dead_letters(app.dead_len().await as usize).await;
    for letter in &letters {
        assert_eq!(letter.class.as_deref(), Some("ambiguous"), "{letter:?}");
    }
    let dead: Vec<usize> = letters
        .iter()
        .filter_map(|l| l.event_id()?.strip_prefix("rate-")?.parse().ok())
        .collect();
    eprintln!(
        "{} sent, {} dead-lettered as ambiguous",
        sends.len(),
        dead.len()
    );
    assert_each_sent_once_but(&sends, n, &dead);
    let (busiest, window) = busiest_second(&app.mock.send_times_ms());
    eprintln!("busiest second: {busiest} sends (max_rate {rate})");
    assert!(
        busiest <= 100,
        "{busiest} sends in one second, at these ms into it: {window:?}"
    );
    assert!(
        busiest >= 50,
        "the limiter is not far below its rate: {busiest}"
    );
    app.cleanup().await;
}

#[test]
fn busiest_second_counts_half_open_windows() {
    assert_eq!(busiest_second(&[0, 999, 1000, 1500, 1999]).0, 3);
    assert_eq!(
        busiest_second(&[1000, 1500, 1999, 0, 999]).1,
        vec![0, 1, 501]
    );
    assert_eq!(busiest_second(&[]).0, 0);
    assert_eq!(busiest_second(&[5, 5, 5]).0, 3);
}
