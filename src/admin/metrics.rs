//! Metric names and their help texts: the one list that code, dashboards and alert rules
//! share (deploy/ reads these exact names).
//!
//! Recording goes through the `metrics` facade; `/metrics` renders it with
//! `metrics-exporter-prometheus`. Labels are kept bounded: event types that are not
//! configured are recorded as `unknown`, so hostile input cannot explode cardinality.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const EVENTS_CONSUMED: &str = "wxpush_events_consumed_total";
pub const SENDS: &str = "wxpush_sends_total";
pub const SEND_DURATION: &str = "wxpush_send_duration_seconds";
pub const RETRIES_SCHEDULED: &str = "wxpush_retries_scheduled_total";
pub const DEAD_LETTERS: &str = "wxpush_dead_letters_total";
pub const REFUSED_DROPPED: &str = "wxpush_refused_dropped_total";
pub const DUPLICATES_SKIPPED: &str = "wxpush_duplicates_skipped_total";
pub const AMBIGUOUS: &str = "wxpush_ambiguous_total";
pub const TOKEN_FETCHES: &str = "wxpush_token_fetches_total";
pub const TOKEN_LOCK_WAITS: &str = "wxpush_token_lock_waits_total";
pub const TOKEN_INVALIDATIONS: &str = "wxpush_token_invalidations_total";
pub const IN_FLIGHT: &str = "wxpush_in_flight";
pub const CONSUMER_UP: &str = "wxpush_consumer_up";
pub const READY: &str = "wxpush_ready";
pub const APP_CREDENTIAL_FAILED: &str = "wxpush_app_credential_failed";
pub const APP_PARKED: &str = "wxpush_app_parked";
pub const THROTTLED: &str = "wxpush_throttled_total";
pub const NO_GRANT: &str = "wxpush_no_grant_total";
pub const OUTCOMES: &str = "wxpush_outcomes_published_total";
pub const PARKED: &str = "wxpush_parked_total";
pub const REDIS_UNSAFE: &str = "wxpush_redis_unsafe";
pub const REDIS_DATA_LOST: &str = "wxpush_redis_data_lost_total";
pub const PUSH_EVENTS: &str = "wxpush_push_events_total";
pub const PUSH_REFUSED: &str = "wxpush_push_refused_total";

/// Registers help texts and units; call once after installing the recorder.
pub fn describe() {
    describe_gauge!(
        REDIS_UNSAFE,
        "1 when on_ambiguous = dead_letter runs on a Redis that can evict or lose event records (policy.unsafe_redis)."
    );
    describe_counter!(
        REDIS_DATA_LOST,
        "Times this worker found that Redis had lost wxpush's data (the epoch key gone)."
    );
    describe_counter!(
        EVENTS_CONSUMED,
        "Event messages taken from the events queue, by type."
    );
    describe_counter!(
        SENDS,
        "subscribe/send calls by app, template, outcome (ok or the error class) and errcode."
    );
    describe_histogram!(
        SEND_DURATION,
        Unit::Seconds,
        "Latency of subscribe/send calls."
    );
    describe_counter!(
        RETRIES_SCHEDULED,
        "Messages parked in a delayed-retry tier, by tier."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Messages dead-lettered, by reason (error class)."
    );
    describe_counter!(
        REFUSED_DROPPED,
        "43101 refusals dropped under on_refused = \"drop\"."
    );
    describe_counter!(
        DUPLICATES_SKIPPED,
        "Redelivered events already sent, acked without sending."
    );
    describe_counter!(
        AMBIGUOUS,
        "Sends whose answer never came, by the action taken."
    );
    describe_counter!(
        TOKEN_FETCHES,
        "access_token fetches from WeChat, by app and result."
    );
    describe_counter!(
        TOKEN_LOCK_WAITS,
        "Times a worker waited for another's token refresh."
    );
    describe_counter!(
        TOKEN_INVALIDATIONS,
        "Stale tokens invalidated after a token errcode."
    );
    describe_gauge!(IN_FLIGHT, "Messages being processed right now.");
    describe_gauge!(CONSUMER_UP, "1 while the AMQP consumer is running.");
    describe_gauge!(
        READY,
        "1 while the worker is ready (broker, Redis, consumer, apps)."
    );
    describe_gauge!(
        APP_CREDENTIAL_FAILED,
        "1 while an app is stopped by a credential errcode."
    );
    describe_gauge!(
        APP_PARKED,
        "1 while an app's sends are parked, by reason: credential, quota (45009 on send), token_quota (45009 on a token fetch), minute (45011)."
    );
    describe_counter!(
        PARKED,
        "Messages parked in a retry tier without spending an attempt, by reason: credential, quota, token_quota, minute, rate."
    );
    describe_counter!(
        PUSH_EVENTS,
        "Message pushes from WeChat answered success, by app, event (subscribe_msg_popup_event, subscribe_msg_change_event, subscribe_msg_sent_event, other) and result (recorded, duplicate: a retry already applied, ignored: an event type wxpush does not use)."
    );
    describe_counter!(
        PUSH_REFUSED,
        "Message pushes refused, by reason: too_large, unknown_app, no_push_secrets, missing_param, stale_timestamp, bad_signature, plaintext_refused, wrong_appid, malformed, replay, redis."
    );
    describe_counter!(
        OUTCOMES,
        "Outcome events published to amqp.outcome_exchange, by outcome."
    );
    describe_counter!(
        NO_GRANT,
        "Events with no grant in the ledger under policy.without_grant skip or dead_letter, by app and action."
    );
    describe_counter!(
        THROTTLED,
        "Sends that waited for the app's max_rate limiter."
    );
}

/// Installs the process-wide Prometheus recorder once and returns its handle (later calls,
/// e.g. several workers in one test process, share it).
pub fn install() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(SEND_DURATION.to_owned()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .expect("static bucket list is not empty")
                .install_recorder()
                .expect("the metrics recorder is installed only here, once");
            describe();
            // Histogram samples accumulate until upkeep folds them in; without it a worker
            // nobody scrapes grows by ~1 GB a day at 2,000 sends/s. A thread, not a task, so
            // it outlives whichever runtime installed the recorder.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("a thread can be spawned at start-up");
            handle
        })
        .clone()
}
