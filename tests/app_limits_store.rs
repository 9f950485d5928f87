//! The Redis side of the app limits, script by script against the real Redis: the
//! fleet-wide hold of an app's sends (`store::app_hold`) and the `max_rate` limiter
//! (`store::rate_limit`).

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands, aio::MultiplexedConnection};
use wxpush::store::app_hold::{self, HoldReason};
use wxpush::store::rate_limit::{self, Slot};

const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
const PROBE_EVERY: Duration = Duration::from_secs(300);

fn key(name: &str) -> String {
    format!("test-limits-{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn conn() -> MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379")
}

/// How long from Redis's now until the next 00:00 in China (UTC+8).
async fn until_china_midnight(c: &mut MultiplexedConnection) -> Duration {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    let day = 86_400_000;
    let china = 28_800_000;
    let midnight = ((now_ms + china) / day + 1) * day - china;
    Duration::from_millis(midnight - now_ms)
}

#[tokio::test]
async fn a_quota_hold_waits_for_the_next_probe_but_never_past_china_midnight() {
    let mut c = conn().await;
    let k = key("quota");
    let wait = app_hold::hold(&mut c, &k, HoldReason::Quota, PROBE_EVERY)
        .await
        .unwrap()
        .expect("held")
        .wait;
    let midnight = until_china_midnight(&mut c).await;
    let expected = PROBE_EVERY.min(midnight);
    assert!(
        wait <= expected && wait + Duration::from_secs(1) >= expected,
        "wait {wait:?}, expected about {expected:?}"
    );
    let hold = app_hold::read(&mut c, &k).await.unwrap().expect("held");
    assert_eq!(hold.reason, HoldReason::Quota);
    assert!(hold.wait <= wait);
    // A probe every 10 days: the next one is at China's midnight, when the quota comes back.
    let k2 = key("quota-midnight");
    let long = Duration::from_secs(10 * 86_400);
    let wait = app_hold::hold(&mut c, &k2, HoldReason::Quota, long)
        .await
        .unwrap()
        .expect("held")
        .wait;
    let midnight = until_china_midnight(&mut c).await;
    assert!(
        wait <= midnight + Duration::from_secs(1) && wait + Duration::from_secs(1) >= midnight,
        "wait {wait:?}, midnight in {midnight:?}"
    );
}

#[tokio::test]
async fn one_probe_at_a_time_and_a_success_releases_the_hold_for_everyone() {
    let mut c = conn().await;
    let k = key("probe");
    let every = Duration::from_millis(200);
    app_hold::hold(&mut c, &k, HoldReason::Quota, every)
        .await
        .unwrap();
    assert!(
        !app_hold::take_probe(&mut c, &k, every).await.unwrap(),
        "no probe before it is due"
    );
    // Wait until the probe is due, as Redis counts.
    loop {
        let hold = app_hold::read(&mut c, &k).await.unwrap().unwrap();
        if hold.wait.is_zero() {
            break;
        }
        tokio::time::sleep(hold.wait).await;
    }
    let (mut c1, mut c2) = (conn().await, conn().await);
    let (a, b) = tokio::join!(
        app_hold::take_probe(&mut c1, &k, every),
        app_hold::take_probe(&mut c2, &k, every)
    );
    assert!(
        a.unwrap() ^ b.unwrap(),
        "exactly one of two workers gets the probe"
    );
    let hold = app_hold::read(&mut c, &k).await.unwrap().unwrap();
    assert!(hold.wait > Duration::ZERO, "the next probe moved on");
    assert_eq!(
        app_hold::release(&mut c, &k).await.unwrap(),
        Some(HoldReason::Quota)
    );
    assert_eq!(app_hold::read(&mut c, &k).await.unwrap(), None);
}

#[tokio::test]
async fn a_minute_hold_ends_at_the_next_minute_and_never_replaces_a_quota_hold() {
    let mut c = conn().await;
    let k = key("minute");
    let wait = app_hold::hold(&mut c, &k, HoldReason::Minute, PROBE_EVERY)
        .await
        .unwrap()
        .expect("held")
        .wait;
    assert!(wait <= Duration::from_secs(60));
    let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let pttl: i64 = c.pttl(&k).await.unwrap();
    let to_next_minute = (60 - secs % 60) * 1000;
    assert!(
        pttl > 0 && pttl as u64 <= to_next_minute,
        "expires with the minute: pttl {pttl} ms, next minute in {to_next_minute} ms"
    );
    assert_eq!(
        app_hold::release(&mut c, &k).await.unwrap(),
        None,
        "a success does not cut a minute hold short: WeChat counts the minute"
    );

    let k = key("quota-then-minute");
    app_hold::hold(&mut c, &k, HoldReason::Quota, PROBE_EVERY)
        .await
        .unwrap();
    app_hold::hold(&mut c, &k, HoldReason::Minute, PROBE_EVERY)
        .await
        .unwrap();
    let hold = app_hold::read(&mut c, &k).await.unwrap().unwrap();
    assert_eq!(hold.reason, HoldReason::Quota);
    assert!(c.pttl::<_, i64>(&k).await.unwrap() > 3_600_000);
}

#[tokio::test]
async fn the_limiter_spaces_reservations_in_the_order_they_came() {
    let mut c = conn().await;
    let k = key("rate");
    let interval = Duration::from_millis(10);
    let max_wait = Duration::from_secs(5);
    let mut waits = Vec::new();
    for _ in 0..50 {
        match rate_limit::reserve(&mut c, &k, interval, max_wait)
            .await
            .unwrap()
        {
            Slot::Reserved(wait) => waits.push(wait),
            Slot::TooFar(wait) => panic!("refused at {wait:?}"),
        }
    }
    for pair in waits.windows(2) {
        // Each slot is `interval` after the previous one, less the time between the calls.
        assert!(pair[1] > pair[0], "{waits:?}");
        assert!(pair[1] <= pair[0] + interval, "{waits:?}");
    }
    assert!(
        waits[49] >= Duration::from_millis(400),
        "49 slots ahead is ~490 ms away: {:?}",
        waits[49]
    );
}

#[tokio::test]
async fn a_slot_too_far_away_is_not_reserved() {
    let mut c = conn().await;
    let k = key("rate-far");
    let interval = Duration::from_millis(100);
    let max_wait = Duration::from_millis(250);
    let mut reserved = 0;
    let far = loop {
        match rate_limit::reserve(&mut c, &k, interval, max_wait)
            .await
            .unwrap()
        {
            Slot::Reserved(_) => reserved += 1,
            Slot::TooFar(wait) => break wait,
        }
    };
    assert_eq!(reserved, 3, "slots at 0, 100 and 200 ms fit in 250 ms");
    assert!(far > max_wait);
    // Refusing reserved nothing: the next ask sees the same next slot.
    match rate_limit::reserve(&mut c, &k, interval, max_wait)
        .await
        .unwrap()
    {
        Slot::TooFar(again) => assert!(again <= far),
        Slot::Reserved(wait) => panic!("reserved at {wait:?}"),
    }
}

async fn redis_now(c: &mut MultiplexedConnection) -> Duration {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(c).await.unwrap();
    Duration::from_micros(secs * 1_000_000 + micros)
}

#[tokio::test]
async fn concurrent_workers_never_share_a_slot() {
    let k = key("rate-concurrent");
    let interval = Duration::from_millis(2);
    let mut c = conn().await;
    let start = redis_now(&mut c).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = conn().await;
            let mut reserved = 0;
            for _ in 0..50 {
                let slot = rate_limit::reserve(&mut c, &k, interval, Duration::from_secs(5));
                if let Slot::Reserved(_) = slot.await.unwrap() {
                    reserved += 1;
                }
            }
            reserved
        }));
    }
    let mut count = 0;
    for task in tasks {
        count += task.await.unwrap();
    }
    assert_eq!(count, 200);
    // 200 distinct slots 2 ms apart end at least 400 ms after the start: had two workers
    // shared a slot, the next free one would come sooner.
    let Slot::Reserved(wait) = rate_limit::reserve(&mut c, &k, interval, Duration::from_secs(5))
        .await
        .unwrap()
    else {
        panic!("the 201st slot is within 5 s");
    };
    let elapsed = redis_now(&mut c).await - start;
    assert!(
        wait + elapsed >= interval * 200,
        "next slot {wait:?} after {elapsed:?}"
    );
    assert!(wait <= interval * 200, "no slot was skipped: {wait:?}");
}
