//! The broker side of "exactly once": returned publishes credited to the right publish,
//! quorum delivery limits, failed republishes, resource alarms, replay's route, and the
//! properties a republished copy keeps. Real RabbitMQ and Redis, the WeChat emulator in this
//! process; each test has its own queues and Redis prefix.
//!
//! One test raises a RabbitMQ memory alarm (every publisher on the broker is blocked while it
//! lasts, a few seconds): it holds `BROKER` for writing, every other test here for reading,
//! so no test of this file publishes during the alarm. The watermark is restored by a guard
//! whatever happens to the test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use wxpush::broker::publish::{PublishError, Publisher};
use wxpush::broker::topology::{self, Topology};
use wxpush::config::QueueType;
use wxpush_mock_wechat::{AcceptedSend, Fault, FaultTarget, MockOptions};

static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn rabbitmqctl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `wxpush ARGS` with this config file.
async fn cli_with(path: &std::path::Path, args: &[&str]) -> CliOutput {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxpush"));
    command
        .arg("--config")
        .arg(path)
        .args(args)
        .env(SECRET_ENV, SECRET)
        .env("WXPUSH_LOG_FORMAT", "json")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("wxpush finishes within 2 minutes")
        .expect("wxpush runs");
    CliOutput::from(output)
}

/// `order.paid` events whose `order_no` (rendered as `character_string1`) is the event id.
fn traced_events(tag: &str, n: usize) -> (Vec<String>, Vec<Value>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let events = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({
                "id": id,
                "type": "order.paid",
                "recipient": {"openid": openid(i)},
                "data": {"order_no": id, "amount": "12.5",
                         "paid_at": "2026-11-24T10:00:00+08:00", "remark": "broker test"}
            })
        })
        .collect();
    (ids, events)
}

/// The event a send belongs to (see [`traced_events`]).
fn send_id(send: &AcceptedSend) -> String {
    send.body["data"]["character_string1"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Publishes every event pipelined on the test's control channel (fast), all confirmed.
async fn publish_quickly(app: &TestApp, events: &[Value]) {
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        let body = serde_json::to_vec(event).unwrap();
        pending.push(
            app.publisher
                .start(
                    &app.config.amqp.exchange,
                    "order.paid",
                    &body,
                    BasicProperties::default(),
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in pending {
        assert!(
            confirm.wait().await.expect("confirmed").is_none(),
            "routable"
        );
    }
}

/// Takes every dead letter now in the queue off it.
async fn take_dead(app: &TestApp, into: &mut Vec<DeadLetter>) {
    let channel = app.connection.create_channel().await.unwrap();
    let queue = app.config.amqp.dead_letter_queue.as_str();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        m.delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .unwrap();
        into.push(DeadLetter::of(&m.delivery));
    }
    let _ = channel.close(200, "taken".into()).await;
}

// ----- 9. a returned publish is reported to the publish it belongs to -----

/// 400 publishes at once through one publisher, every other one to a queue that does not
/// exist (returned as unroutable). Each must learn its own fate: lapin pairs a return with
/// whichever confirm comes first, so on a channel shared by concurrent publishes a returned
/// one can be told "confirmed" (and a worker would ack the message it was retrying: lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_concurrent_publish_learns_whether_it_was_returned() {
    let _shared = BROKER.read().await;
    let app = TestApp::start("returns").await;
    let good = app.config.amqp.queue.clone();
    let missing = format!("{}.no-such-queue", app.prefix);
    let n = 400;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let publisher = app.publisher.clone();
        let queue = if i % 2 == 0 {
            good.clone()
        } else {
            missing.clone()
        };
        tasks.spawn(async move {
            let properties = BasicProperties::default().with_message_id(format!("m-{i}").into());
            let body = format!("{i}").into_bytes();
            (i, publisher.publish("", &queue, &body, properties).await)
        });
    }
    let mut wrong = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (i, result) = done.expect("publish task");
        let as_expected = matches!(
            (i % 2 == 0, &result),
            (true, Ok(())) | (false, Err(PublishError::Unroutable { .. }))
        );
        if !as_expected {
            wrong.push((i, format!("{result:?}")));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {n} publishes were told another publish's fate (even: routable, odd: returned): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    let arrived: BTreeSet<String> = app
        .drain_exactly(&good, n / 2)
        .await
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect();
    let expected: BTreeSet<String> = (0..n).step_by(2).map(|i| i.to_string()).collect();
    assert_eq!(arrived, expected);
    app.cleanup().await;
}

/// A publisher whose channels all failed answers `Closed` at once instead of waiting for a
/// channel forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_whose_channels_all_failed_says_so() {
    let _shared = BROKER.read().await;
    let app = TestApp::start("pub-closed").await;
    let publisher = Publisher::open_with(&app.connection, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let nowhere = format!("{}.no-such-exchange", app.prefix);
    for _ in 0..2 {
        // A publish to a missing exchange closes its channel (404).
        let e = publisher
            .publish(&nowhere, "k", b"x", BasicProperties::default())
            .await
            .unwrap_err();
        assert!(matches!(e, PublishError::Broker(_)), "{e:?}");
    }
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        publisher.publish("", &app.config.amqp.queue, b"x", BasicProperties::default()),
    )
    .await
    .expect("answers at once");
    assert!(matches!(closed, Err(PublishError::Closed)), "{closed:?}");
    app.cleanup().await;
}

/// `wxpush publish` of 300 pipelined events, every tenth of a type no queue is bound to:
/// the error names returned events only (by their ids), whichever confirm carried each
/// return, and the confirmed count is what reached the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_names_the_events_that_were_returned() {
    let _shared = BROKER.read().await;
    let app = TestApp::start_with("pub-returned", MockOptions::default(), |c| {
        c.amqp.bindings = vec!["order.paid".into()];
    })
    .await;
    let config = app.config_file_with(|t| {
        set_toml(t, "amqp", "bindings", vec!["order.paid"]);
    });
    let path = config.path().to_path_buf();
    let mut lines = Vec::new();
    let mut unbound = BTreeSet::new();
    for i in 0..300 {
        let event = if i % 10 == 5 {
            unbound.insert(format!("line {} (id unbound-{i})", i + 1));
            json!({"id": format!("unbound-{i}"), "type": "task.due",
                   "recipient": {"openid": openid(i)}, "data": {"title": "t", "status": "ok"}})
        } else {
            order_paid(&format!("bound-{i}"), i)
        };
        lines.push(event.to_string());
    }
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), lines.join("\n")).unwrap();
    let out = cli_with(&path, &["publish", input.path().to_str().unwrap()]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    let named: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("was returned"))
        .collect();
    assert!(!named.is_empty(), "{out:#?}");
    for line in &named {
        assert!(
            unbound.iter().any(|u| line.contains(u.as_str())),
            "a bound event named as returned: {line}\n{out:#?}"
        );
    }
    assert!(named[0].contains("line 6 (id unbound-5)"), "{out:#?}");
    let confirmed: usize = out
        .stderr
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "event(s)")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("a confirmed count in {out:#?}"));
    let queue = app.config.amqp.queue.clone();
    eventually(
        "the confirmed events in the queue",
        Duration::from_secs(10),
        || async { (app.queue_len(&queue).await as usize == confirmed).then_some(()) },
    )
    .await;
    app.cleanup().await;
}

// ----- 10. quorum queues: no delivery limit where the broker allows it -----

/// The probe's answer matches the broker: RabbitMQ 4 reads `x-delivery-limit = -1` as "no
/// limit", 3.x as "drop at the first return" (so wxpush must not set it there); and 25
/// `dead` listings of a quorum dead-letter queue (each hands every letter back: a delivery)
/// keep every letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_dead_letters_survive_25_listings() {
    let _shared = BROKER.read().await;
    let app = TestApp::start_with("quorum-dead", MockOptions::default(), |c| {
        c.amqp.queue_type = QueueType::Quorum;
    })
    .await;
    let version = rabbitmqctl(&["-q", "version"]).await;
    let major: u32 = version
        .trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("a version");
    assert_eq!(
        topology::unlimited_delivery_supported(app.publisher.channel()).await,
        major >= 4,
        "RabbitMQ {version}"
    );
    let config = app.config_file_with(|t| set_toml(t, "amqp", "queue_type", "quorum"));
    let path = config.path().to_path_buf();
    let letters = mixed_dead_letters(&app.prefix, 10);
    app.fill_mixed(&letters).await;
    for round in 0..25 {
        let out = cli_with(&path, &["dead", "--json"]).await;
        assert_eq!(out.code, Some(0), "{out:#?}");
        let listed: Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(
            listed.as_array().map(Vec::len),
            Some(10),
            "listing {round}: {out:#?}"
        );
        // The listing's letters are back before the next one looks.
        eventually("the letters back", Duration::from_secs(10), || async {
            (app.dead_len().await == 10).then_some(())
        })
        .await;
    }
    let kept: BTreeSet<String> = app.drain_dead_ids(10).await.into_iter().collect();
    let all: BTreeSet<String> = letters.iter().map(|l| l.id.clone()).collect();
    assert_eq!(kept, all);
    app.cleanup().await;
}

/// A quorum queue that exists with another delivery limit (an operator's, or none from an
/// older wxpush on RabbitMQ 4) cannot be redeclared with ours: the worker and the commands
/// use it as it is and say how to lift its limit; the strict declare says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_quorum_queue_with_another_delivery_limit_is_used_as_it_is() {
    let _shared = BROKER.read().await;
    let app = TestApp::start_with("quorum-limit", MockOptions::default(), |c| {
        c.amqp.queue_type = QueueType::Quorum;
    })
    .await;
    let dlq = app.config.amqp.dead_letter_queue.clone();
    let channel = app.connection.create_channel().await.unwrap();
    channel
        .queue_delete(dlq.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(5));
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(dlq.as_str().into(), durable, args)
        .await
        .unwrap();
    let topology = Topology::new(&app.config.amqp, &app.config.retry);
    let strict = app.connection.create_channel().await.unwrap();
    let err = topology.declare(&strict).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("policy"),
        "the hint names the cure: {err:#}"
    );
    topology
        .declare_on(&app.connection)
        .await
        .expect("the existing queue is used");
    app.cleanup().await;
}

// ----- 11. a failed republish ends the session; the topology comes back -----

/// Every send fails (-1): each event goes through the retry tiers and dead-letters after 5
/// attempts. Mid-stream the two longest tiers are deleted, so republishing into them fails.
/// The worker that fails hands the message back and ends its session; its next session
/// declares the tiers again. Ledger: every event dead-lettered exactly once with 5
/// attempts, none lost; sends are the 5 attempts per event plus at most one per message in
/// flight when a session ended (not one per turn of a hot loop, as when a failed republish
/// was only handed back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_retry_tier_ends_the_session_and_is_declared_again() {
    let _shared = BROKER.read().await;
    let prefetch = 8;
    let app = TestApp::start_with("tier-gone", MockOptions::default(), |c| {
        c.amqp.prefetch = prefetch;
        c.retry.max_attempts = 5;
        c.retry.initial = Duration::from_millis(200);
        c.retry.max = Duration::from_secs(1);
    })
    .await;
    app.mock
        .set_fault_rate(FaultTarget::Send, Some(Fault::Errcode(-1)), 1.0);
    let workers = [app.worker().await, app.worker().await];
    for w in &workers {
        await_readyz(w.admin_addr, 200, Duration::from_secs(30)).await;
    }
    let n = 60;
    let (ids, events) = traced_events(&app.prefix, n);
    publish_quickly(&app, &events).await;
    eventually("the first sends", Duration::from_secs(10), || async {
        (app.mock.stats().send_calls >= 1).then_some(())
    })
    .await;
    // Tiers for attempts 3 and 4 (800 ms, 1 s): still empty this early. Deleted only if
    // empty (the test must not destroy messages itself).
    let tiers = app.tier_queues();
    assert_eq!(tiers.len(), 4, "{tiers:?}");
    for tier in &tiers[2..] {
        eventually(
            &format!("{tier} deleted while empty"),
            Duration::from_secs(10),
            || async {
                let channel = app.connection.create_channel().await.ok()?;
                let if_empty = QueueDeleteOptions {
                    if_empty: true,
                    ..QueueDeleteOptions::default()
                };
                channel
                    .queue_delete(tier.as_str().into(), if_empty)
                    .await
                    .ok()
            },
        )
        .await;
    }
    let dead = app.dead_letters(n).await;
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dead {
        assert_eq!(d.attempts, Some(5), "{d:?}");
        assert_eq!(d.class.as_deref(), Some("transient"), "{d:?}");
        *by_id.entry(d.event_id().unwrap_or_default()).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(by_id, expected, "every event dead-lettered exactly once");
    eventually("nothing left anywhere", Duration::from_secs(30), || async {
        (app.pending().await == 0 && app.dead_len().await == 0).then_some(())
    })
    .await;
    for w in workers {
        w.shutdown().await.unwrap();
    }
    for tier in &tiers {
        app.queue_len(tier).await; // panics if a tier was not declared again
    }
    let stats = app.mock.stats();
    assert_eq!(stats.sends_ok, 0);
    let attempts = 5 * n as u64;
    let extra = stats.send_calls - attempts;
    eprintln!(
        "[tier-gone] {} send calls: {attempts} attempts + {extra} after failed republishes",
        stats.send_calls
    );
    assert!(stats.send_calls >= attempts, "{stats:?}");
    assert!(
        extra >= 1,
        "no republish failed: nothing tested ({stats:?})"
    );
    // Each session end resends at most the messages it had in flight; a worker's sessions
    // fail until one of them has declared the tiers again (one, maybe two each).
    let bound = 2 * 2 * u64::from(prefetch);
    assert!(
        extra <= bound,
        "{extra} extra sends, more than {bound}: failed republishes were resent in a loop"
    );
    app.cleanup().await;
}

// ----- 12. a memory alarm: acks keep flowing, SIGTERM exits -----

/// Restores the memory watermark when dropped, whatever happened to the test.
struct WatermarkComesBack;

impl WatermarkComesBack {
    async fn raise_alarm() -> WatermarkComesBack {
        let guard = WatermarkComesBack;
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]).await;
        guard
    }

    async fn memory_alarm() -> bool {
        rabbitmqctl(&["-q", "eval", "rabbit_alarm:get_alarms()."])
            .await
            .contains("memory")
    }
}

impl Drop for WatermarkComesBack {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.4"])
            .output();
    }
}

/// The state (`blocked`, `running`, …) of each AMQP connection of process `pid`, by name.
async fn connection_states(pid: u32) -> Vec<(String, String)> {
    let out = rabbitmqctl(&["-q", "list_connections", "client_properties", "state"]).await;
    out.lines()
        .filter(|l| l.contains(&format!("(pid {pid})")))
        .map(|l| {
            let name = l
                .split("wxpush ")
                .nth(1)
                .and_then(|r| r.split(" (pid").next())
                .unwrap_or_default()
                .to_owned();
            let state = l.rsplit('\t').next().unwrap_or_default().trim().to_owned();
            (name, state)
        })
        .collect()
}

/// A worker process is mid-stream (sends, 20 % of them failing, so it publishes retries)
/// when RabbitMQ raises a memory alarm: its publishing connection is blocked. Acks travel
/// on the consuming connection, which RabbitMQ does not block, so sends go on well past the
/// prefetch; SIGTERM during the alarm exits 0 within the grace period (confirms and closes
/// are bounded). After the alarm clears a new worker finishes the stream: every event sent
/// once or dead-lettered once (`on_ambiguous = "dead_letter"`), none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_blocks_no_acks_and_sigterm_still_exits() {
    let _exclusive = BROKER.write().await;
    let options = MockOptions {
        latency: Duration::from_millis(150),
        ..MockOptions::default()
    };
    let app = TestApp::start_with("alarm", options, |_| {}).await;
    app.mock
        .set_fault_rate(FaultTarget::Send, Some(Fault::Errcode(-1)), 0.2);
    let grace = Duration::from_secs(5);
    let config = app.config_file_with(|t| {
        set_toml(t, "policy", "on_ambiguous", "dead_letter");
        set_toml(t, "policy", "unsafe_redis", true); // the test Redis keeps nothing on disk
        set_toml(t, "amqp", "confirm_timeout", "3s");
        set_toml(t, "worker", "shutdown_grace", "5s");
    });
    let path = config.path().to_path_buf();
    let n = 4000;
    let (ids, events) = traced_events(&app.prefix, n);
    let t0 = Instant::now();
    publish_quickly(&app, &events).await;
    eprintln!("[alarm] T+{:?} published", t0.elapsed());

    let worker = WorkerProcess::start(&path, &[]);
    await_readyz(worker.admin_addr().await, 200, Duration::from_secs(30)).await;
    app.sent(100).await;
    let alarm = WatermarkComesBack::raise_alarm().await;
    eventually("the memory alarm", Duration::from_secs(30), || async {
        WatermarkComesBack::memory_alarm().await.then_some(())
    })
    .await;
    let pid = worker.pid();
    let states = eventually(
        "the worker's publishing connection blocked",
        Duration::from_secs(30),
        || async {
            let states = connection_states(pid).await;
            states.iter().any(|(_, s)| s == "blocked").then_some(states)
        },
    )
    .await;
    eprintln!("[alarm] T+{:?} blocked", t0.elapsed());
    let at_block = app.mock.sends().len();
    eprintln!("[alarm] connections {states:?}; {at_block} of {n} sent when blocked");
    assert!(
        at_block < n - 500,
        "the stream was nearly done; nothing tested"
    );
    // Acks flow: the worker takes (and sends) well over a prefetch of new messages.
    let prefetch = app.config.amqp.prefetch as usize;
    eventually(
        "sends going on during the alarm",
        Duration::from_secs(20),
        || async { (app.mock.sends().len() >= at_block + prefetch + 100).then_some(()) },
    )
    .await;
    assert!(WatermarkComesBack::memory_alarm().await, "the alarm held");
    let started = Instant::now();
    let (status, lines) = worker.terminate(grace + Duration::from_secs(8)).await;
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM during the alarm: {status:?} after {:?}; log tail:\n{tail}",
        started.elapsed()
    );
    eprintln!("[alarm] exited {:?} after SIGTERM", started.elapsed());
    drop(alarm);
    eventually("the alarm cleared", Duration::from_secs(30), || async {
        (!WatermarkComesBack::memory_alarm().await).then_some(())
    })
    .await;

    // A new worker finishes the stream.
    eprintln!("[alarm] T+{:?} alarm cleared, second worker", t0.elapsed());
    let worker = WorkerProcess::start(&path, &[]);
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        take_dead(&app, &mut dead).await;
        let mut accounted: BTreeSet<String> = app.mock.sends().iter().map(send_id).collect();
        accounted.extend(dead.iter().filter_map(DeadLetter::event_id));
        if app.pending().await == 0 && ids.iter().all(|id| accounted.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream did not finish after the alarm"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("[alarm] T+{:?} settled", t0.elapsed());
    let (status, _) = worker.terminate(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    eprintln!("[alarm] T+{:?} stopped", t0.elapsed());
    take_dead(&app, &mut dead).await;
    assert_eq!(app.pending().await, 0);
    let mut sends: BTreeMap<String, usize> = BTreeMap::new();
    for s in app.mock.sends() {
        *sends.entry(send_id(&s)).or_default() += 1;
    }
    let mut dead_by_id: BTreeMap<String, Vec<&DeadLetter>> = BTreeMap::new();
    for d in &dead {
        dead_by_id
            .entry(d.event_id().unwrap_or_default())
            .or_default()
            .push(d);
    }
    let known: BTreeSet<&String> = ids.iter().collect();
    assert!(
        sends.keys().all(|id| known.contains(id)),
        "a send of no event"
    );
    assert!(
        dead_by_id.keys().all(|id| known.contains(id)),
        "a dead letter of no event"
    );
    for id in &ids {
        let s = sends.get(id).copied().unwrap_or(0);
        let d = dead_by_id.get(id).map(Vec::as_slice).unwrap_or_default();
        assert!(s + d.len() >= 1, "event {id} lost");
        assert!(s <= 1, "event {id} sent {s} times");
        // A dead letter whose publish timed out during the alarm may still land when the
        // alarm clears, next to the one its redelivery published: copies of one dead letter
        // with one letter id, which every reader collapses; never a send, never a second
        // decision. docs/reliability.md §1 states this bound.
        assert!(
            d.iter()
                .all(|l| l.letter_id.is_some() && l.letter_id == d[0].letter_id),
            "event {id} dead-lettered twice (letter ids differ): {d:?}"
        );
        if d.len() > 1 {
            eprintln!("[alarm] {id}: {} copies of one dead letter", d.len());
        }
        if s == 1 && !d.is_empty() {
            assert_eq!(d[0].class.as_deref(), Some("ambiguous"), "{id}: {:?}", d[0]);
        }
    }
    eprintln!(
        "[alarm] ledger: {} sent, {} dead letters",
        sends.len(),
        dead.len()
    );
    app.cleanup().await;
}

// ----- 14. replay goes straight to the events queue -----

/// Another service's queue bound to the exchange with `#` gets no replayed copies, and a
/// type no longer bound to our queue is replayed into our queue all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reaches_only_the_events_queue() {
    let _shared = BROKER.read().await;
    let app = TestApp::start_with("replay-direct", MockOptions::default(), |c| {
        c.amqp.bindings = vec!["order.paid".into()];
    })
    .await;
    let config = app.config_file_with(|t| {
        set_toml(t, "amqp", "bindings", vec!["order.paid"]);
    });
    let path = config.path().to_path_buf();
    let foreign = format!("{}.foreign", app.prefix);
    let channel = app.connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            foreign.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            foreign.as_str().into(),
            app.config.amqp.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let headers = dead_headers("permanent", Some(40003), "x", 1, "2026-01-01T00:00:00Z");
    let props = BasicProperties::default().with_headers(headers);
    let paid = serde_json::to_vec(&order_paid("direct-1", 1)).unwrap();
    let unbound = serde_json::to_vec(&json!({"id": "direct-2", "type": "task.due",
        "recipient": {"openid": openid(2)}, "data": {"title": "t", "status": "ok"}}))
    .unwrap();
    app.fill_dead(&[
        (paid.clone(), props.clone()),
        (unbound.clone(), props.clone()),
        (b"not json".to_vec(), props),
    ])
    .await;
    let out = cli_with(&path, &["replay"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let queue = app.config.amqp.queue.clone();
    let replayed = app.drain_exactly(&queue, 3).await;
    for (m, body) in replayed.iter().zip([&paid, &unbound]) {
        assert_eq!(&m.data, body);
    }
    for m in &replayed {
        assert_eq!(m.exchange.as_str(), "", "straight to the queue: {m:?}");
        assert_eq!(m.routing_key.as_str(), queue);
    }
    assert_eq!(
        app.queue_len(&foreign).await,
        0,
        "no copy for the other service"
    );
    assert_eq!(app.dead_len().await, 0);
    let _ = channel
        .queue_delete(foreign.as_str().into(), QueueDeleteOptions::default())
        .await;
    app.cleanup().await;
}

// ----- 15. what a republished copy keeps -----

/// A producer's per-message TTL (`expiration`) is not copied onto the dead letter (nor a
/// retry): in the dead-letter queue it would expire and be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_does_not_inherit_the_producers_expiration() {
    let _shared = BROKER.read().await;
    let app = TestApp::start("expiration").await;
    let worker = app.worker().await;
    let body = serde_json::to_vec(&json!({"id": "ttl-1", "type": "no.such.type"})).unwrap();
    let properties = BasicProperties::default()
        .with_expiration("600000".into())
        .with_message_id("ttl-1".into());
    app.publisher
        .publish(&app.config.amqp.exchange, "no.such.type", &body, properties)
        .await
        .unwrap();
    let queue = app.config.amqp.dead_letter_queue.clone();
    let dead = app.drain_exactly(&queue, 1).await;
    assert_eq!(dead[0].data, body);
    assert_eq!(
        dead[0].properties.expiration(),
        &None,
        "{:?}",
        dead[0].properties
    );
    assert_eq!(
        dead[0].properties.message_id().as_ref().map(|s| s.as_str()),
        Some("ttl-1"),
        "other properties kept"
    );
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

// ----- the cost of one publish at a time per channel -----

/// Not a check, a measurement (`cargo test --release --test broker_faults -- --ignored
/// --nocapture publish_throughput`): 20,000 persistent `mandatory` publishes to a durable
/// queue from 256 concurrent tasks (as 256 message tasks republishing retries would),
/// confirmed one by one, on one shared pipelined channel (the old way, which cannot tell
/// whose message came back) and through the pool at several sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn publish_throughput() {
    let _shared = BROKER.read().await;
    let app = TestApp::start("pub-rate").await;
    let queue = app.config.amqp.queue.clone();
    let n = 20_000;
    let tasks = 256;
    let body = vec![b'x'; 300];
    async fn run(
        n: usize,
        tasks: usize,
        body: &[u8],
        publish: impl Fn(Vec<u8>) -> tokio::task::JoinHandle<()>,
    ) -> f64 {
        let started = Instant::now();
        let mut set = Vec::new();
        for _ in 0..tasks {
            set.push(publish(body.to_vec()));
        }
        for t in set {
            t.await.unwrap();
        }
        n as f64 / started.elapsed().as_secs_f64()
    }
    let per_task = n / tasks;
    let shared = app.publisher.channel().clone();
    let q = queue.clone();
    let rate = run(n, tasks, &body, |body| {
        let (channel, q) = (shared.clone(), q.clone());
        tokio::spawn(async move {
            for _ in 0..per_task {
                let options = lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                };
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        q.as_str().into(),
                        options,
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap();
                assert_eq!(confirm.await.unwrap(), lapin::Confirmation::Ack(None));
            }
        })
    })
    .await;
    eprintln!("one shared pipelined channel: {rate:.0} publishes/s");
    app.drain_exactly(&queue, per_task * tasks).await;
    for channels in [1, 4, 16, 32, 64] {
        let publisher = Publisher::open_with(&app.connection, channels, Duration::from_secs(30))
            .await
            .unwrap();
        let q = queue.clone();
        let rate = run(n, tasks, &body, |body| {
            let (publisher, q) = (publisher.clone(), q.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    publisher
                        .publish("", &q, &body, BasicProperties::default())
                        .await
                        .unwrap();
                }
            })
        })
        .await;
        eprintln!(
            "pool of {channels:>2} channels, one publish each at a time: {rate:.0} publishes/s"
        );
        publisher.close().await;
        app.drain_exactly(&queue, per_task * tasks).await;
    }
    app.cleanup().await;
}
