//! `wxpush demo`: the whole pipeline on the local RabbitMQ and Redis in a minute.
//!
//! Starts the emulator in-process, declares its own queues (`wxpush-demo-<random>.*`),
//! publishes sample events, runs a worker, and tells what happened to each: sent (with the
//! rendered message), retried then sent, or dead-lettered (with the reason). Then it deletes
//! its queues and keys. `WXPUSH_AMQP__URL` / `WXPUSH_REDIS__URL` (or `--config`) point it
//! at other servers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use serde_json::{Value, json};

use super::CliResult;
use super::publish::{Prepared, prepare, publish_all};
use crate::broker::dead_letter::Letter;
use crate::broker::publish::Publisher;
use crate::broker::{self, topology::Topology};
use crate::config::{self, Config, Overflow};
use crate::worker::Worker;
use wxpush_mock_wechat::{Fault, FaultTarget, MockOptions, MockServer};

const DEMO_APPID: &str = "wx0123456789abcdef";
const DEMO_SECRET: &str = "demo-secret-not-real";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many ordinary good events to send
    #[arg(long, default_value_t = 24)]
    pub events: usize,
    /// Keep the demo's queues and Redis keys afterwards (to look at them)
    #[arg(long)]
    pub keep: bool,
}

fn openid(n: usize) -> String {
    format!("o{:0>27}", format!("demo{n}"))
}

fn demo_config(
    file: Option<&Path>,
    prefix: &str,
    api_base: &str,
    secret_file: &Path,
) -> anyhow::Result<Config> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        None => include_str!("../../examples/wxpush.toml").to_owned(),
    };
    let origin = file.unwrap_or(Path::new("examples/wxpush.toml"));
    let mut config = config::load_str(&text, origin, std::env::vars())?.config;
    config.amqp.exchange = format!("{prefix}.events");
    config.amqp.queue = format!("{prefix}.events");
    config.amqp.dead_letter_queue = format!("{prefix}.dead");
    config.amqp.bindings.clear();
    config.redis.key_prefix = prefix.to_owned();
    config.wechat.api_base = api_base.to_owned();
    config.wechat.timeout = Duration::from_secs(2);
    config.retry.initial = Duration::from_millis(500);
    config.retry.max = Duration::from_secs(2);
    config.retry.max_attempts = 4;
    config.policy.overflow = Overflow::Truncate;
    config.admin.listen = ([127, 0, 0, 1], 0).into();
    for app in config.apps.values_mut() {
        let app = app.get_mut();
        app.appid = DEMO_APPID.into();
        app.secret_env = None;
        app.secret_file = Some(secret_file.to_path_buf());
    }
    Ok(config)
}

/// The sample events and what the demo expects of each.
fn samples(n: usize) -> (Vec<String>, Vec<(String, &'static str)>) {
    let mut lines = Vec::new();
    let mut expect = Vec::new();
    let mut add = |id: String, expected: &'static str, event: Value| {
        expect.push((id, expected));
        lines.push(event.to_string());
    };
    add(
        "demo-retry".into(),
        "retried, then sent",
        json!({"id": "demo-retry", "type": "order.paid",
        "recipient": {"openid": openid(0)},
        "data": {"order_no": "A0000", "amount": "8", "paid_at": "2026-11-24T09:59:00+08:00"}}),
    );
    for i in 1..=n {
        add(
            format!("demo-order-{i}"),
            "sent",
            json!({"id": format!("demo-order-{i}"), "type": "order.paid",
            "recipient": {"openid": openid(i)},
            "data": {"order_no": format!("A{:04}", 1000 + i), "amount": format!("{}.5", 10 + i),
                     "paid_at": "2026-11-24T10:00:00+08:00", "remark": "感谢您的购买"}}),
        );
    }
    add(
        "demo-long-remark".into(),
        "sent (remark truncated to 20 characters)",
        json!({"id": "demo-long-remark", "type": "order.paid",
        "recipient": {"openid": openid(900)},
        "data": {"order_no": "A9000", "amount": "99", "paid_at": "2026-11-24T10:05:00+08:00",
                 "remark": "这是一条非常非常长的订单备注，超过了微信对 thing 类型二十个字的限制"}}),
    );
    add(
        "demo-long-order-no".into(),
        "dead letter (order number longer than 32, never truncated)",
        json!({"id": "demo-long-order-no", "type": "order.paid",
        "recipient": {"openid": openid(901)},
        "data": {"order_no": "A".repeat(40), "amount": "1", "paid_at": "2026-11-24T10:06:00+08:00"}}),
    );
    add(
        "demo-no-subscription".into(),
        "dead letter (43101: user has no subscription left)",
        json!({"id": "demo-no-subscription", "type": "order.paid",
        "recipient": {"openid": openid(999)},
        "data": {"order_no": "A9999", "amount": "5", "paid_at": "2026-11-24T10:07:00+08:00"}}),
    );
    add(
        "demo-unknown-type".into(),
        "dead letter (no template for the type)",
        json!({"id": "demo-unknown-type", "type": "order.shipped",
        "recipient": {"openid": openid(1)}, "data": {}}),
    );
    (lines, expect)
}

pub async fn run(file: Option<&Path>, args: DemoArgs) -> CliResult {
    let started = Instant::now();
    let prefix = format!(
        "wxpush-demo-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mock = MockServer::start(
        MockOptions {
            strict_subscriptions: true,
            ..MockOptions::default()
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot start the WeChat emulator: {e}"))?;
    mock.register_app(DEMO_APPID, DEMO_SECRET);
    let secret_dir = std::env::temp_dir().join(&prefix);
    let secret_file = secret_dir.join("secret");
    std::fs::create_dir_all(&secret_dir)
        .and_then(|()| std::fs::write(&secret_file, DEMO_SECRET))
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write the demo's secret file under {}: {e}",
                secret_dir.display()
            )
        })?;
    let config = demo_config(file, &prefix, &mock.base_url(), &secret_file)?;

    println!("wxpush demo");
    println!("  RabbitMQ  {}", config::redact_url(&config.amqp.url));
    println!("  Redis     {}", config.redis.describe());
    println!(
        "  WeChat    emulator at {} (one-time subscriptions enforced)",
        mock.base_url()
    );
    println!("  queues    {prefix}.events, {prefix}.dead, {prefix}.events.retry.*\n");
    if let Err(e) = check_servers(&config).await {
        let _ = std::fs::remove_dir_all(&secret_dir);
        mock.shutdown().await;
        return Err(e.into());
    }

    let (lines, expected) = samples(args.events);
    for i in 0..=args.events + 2 {
        mock.grant_subscription(
            &openid(if i > args.events {
                899 + i - args.events
            } else {
                i
            }),
            "TPL_ORDER_PAID",
            1,
        );
    }
    let mut events =
        prepare(&lines.join("\n")).map_err(|e| anyhow::anyhow!("demo events invalid: {e:?}"))?;
    events.push(Prepared {
        origin: "malformed sample".into(),
        id: "(malformed)".into(),
        kind: "order.paid".into(),
        body: br#"{"id": "demo-malformed", "type": "order.paid", "recipient": "#.to_vec(),
    });

    let outcome = run_demo(&config, &mock, &events).await;
    if !args.keep {
        cleanup(&config).await;
    }
    let _ = std::fs::remove_dir_all(&secret_dir);
    mock.shutdown().await;
    let (sent, dead) = outcome?;

    println!("what happened:");
    for (id, expect) in &expected {
        if let Some(body) = sent.get(id) {
            let mark = if id == "demo-retry" {
                "↻ retried, then sent"
            } else {
                "✓ sent"
            };
            let id = if id == "demo-retry" {
                "demo-retry (1st: -1 busy)"
            } else {
                id.as_str()
            };
            println!("  {mark:<22} {id:<26} {}", compact(body));
        } else if let Some(reason) = dead.get(id) {
            println!("  ✗ dead-lettered        {id:<26} {reason}");
        } else {
            println!("  ? missing              {id:<26} expected: {expect}");
        }
    }
    if let Some(reason) = dead.get("demo-malformed") {
        println!(
            "  ✗ dead-lettered        {:<26} {reason}",
            "(malformed JSON)"
        );
    }
    let missing = expected
        .iter()
        .filter(|(id, _)| !sent.contains_key(id) && !dead.contains_key(id))
        .count();
    println!(
        "\n{} sent, {} dead-lettered, {} missing, in {:.1}s{}",
        sent.len(),
        dead.len(),
        missing,
        started.elapsed().as_secs_f64(),
        if args.keep {
            format!(" (queues and keys kept under {prefix})")
        } else {
            String::new()
        }
    );
    if missing > 0 {
        return Err(anyhow::anyhow!("{missing} event(s) neither sent nor dead-lettered").into());
    }
    Ok(())
}

fn compact(body: &Value) -> String {
    let data = body["data"]
        .as_object()
        .map(|d| {
            d.iter()
                .map(|(k, v)| format!("{k}={}", v["value"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!("→ {} {{{data}}}", body["touser"].as_str().unwrap_or("?"))
}

type Sent = BTreeMap<String, Value>;
type Dead = BTreeMap<String, String>;

async fn run_demo(
    config: &Config,
    mock: &MockServer,
    events: &[Prepared],
) -> anyhow::Result<(Sent, Dead)> {
    let connection = broker::connect_any(&config.amqp, "demo").await?;
    let publisher = Publisher::open(&connection).await?;
    Topology::new(&config.amqp, &config.retry)
        .declare(publisher.channel())
        .await?;
    let worker = Worker::start(config.clone()).await?;

    // The first event meets a "system busy" answer, so the demo shows a retry.
    mock.push_faults(FaultTarget::Send, vec![Fault::Errcode(-1)]);
    publish_all(&publisher, &config.amqp.exchange, &events[..1], 1).await?;
    wait_for("the first send attempt", || mock.stats().send_calls >= 1).await?;
    publish_all(&publisher, &config.amqp.exchange, &events[1..], 64).await?;
    println!(
        "published {} events; a worker is delivering them…\n",
        events.len()
    );

    let expected_sent = events
        .iter()
        .filter(|e| {
            e.id.starts_with("demo-order") || e.id == "demo-retry" || e.id == "demo-long-remark"
        })
        .count();
    let expected_dead = events.len() - expected_sent;
    let channel = connection.create_channel().await?;
    let mut dead = Dead::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while mock.stats().sends_ok < expected_sent as u64 || dead.len() < expected_dead {
        while let Some(m) = channel
            .basic_get(
                config.amqp.dead_letter_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await?
        {
            let letter = Letter::of_delivery(dead.len() + 1, &m.delivery);
            let reason = format!(
                "[{}{}] {}",
                letter.class.as_deref().unwrap_or_default(),
                letter.errcode.map(|c| format!(" {c}")).unwrap_or_default(),
                letter.errmsg.as_deref().unwrap_or_default()
            );
            let id = letter.id.unwrap_or_else(|| "demo-malformed".into());
            dead.insert(id, reason);
            m.delivery.ack(BasicAckOptions::default()).await?;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown().await?;
    publisher.close().await;
    let _ = connection.close(200, "demo done".into()).await;
    let sent = mock
        .sends()
        .into_iter()
        .filter_map(|s| {
            let order = s.body["data"]["character_string1"]["value"]
                .as_str()?
                .to_owned();
            let id = events
                .iter()
                .find(|e| String::from_utf8_lossy(&e.body).contains(&format!("\"{order}\"")))?
                .id
                .clone();
            Some((id, s.body))
        })
        .collect();
    Ok((sent, dead))
}

/// What to do when RabbitMQ or Redis is not there: the demo's one prerequisite.
const START_SERVERS: &str = "The demo needs RabbitMQ and Redis running. To start them on this machine:
  rabbitmq-server -detached && rabbitmqctl await_startup
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no
(`bash scripts/test.sh --services` does both, installing them if needed), or point the demo at running servers with WXPUSH_AMQP__URL / WXPUSH_REDIS__URL.";

/// Both servers must answer before anything is declared or started: a missing one is then
/// named at once, with the fix, instead of the worker waiting for it until a timeout.
async fn check_servers(config: &Config) -> anyhow::Result<()> {
    const WAIT: Duration = Duration::from_secs(5);
    let amqp = config::redact_url(&config.amqp.url);
    match tokio::time::timeout(WAIT, broker::connect_any(&config.amqp, "demo check")).await {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "demo check done".into()).await;
        }
        Ok(Err(e)) => anyhow::bail!("{e:#}\n{START_SERVERS}"),
        Err(_) => anyhow::bail!("RabbitMQ at {amqp} did not answer within 5 s\n{START_SERVERS}"),
    }
    let redis = config.redis.describe();
    let ping = async {
        let pool = crate::store::pooled(&config.redis)?;
        let mut connection = pool.get().await?;
        deadpool_redis::redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(WAIT, ping).await {
        Ok(Ok(())) => Ok(()),
        // `{e}`, not `{e:#}`: the pool error already includes its cause.
        Ok(Err(e)) => anyhow::bail!("cannot reach Redis at {redis}: {e}\n{START_SERVERS}"),
        Err(_) => anyhow::bail!("Redis at {redis} did not answer within 5 s\n{START_SERVERS}"),
    }
}

async fn wait_for(what: &str, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "timed out waiting for {what}: is the worker connected to RabbitMQ and Redis?"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn cleanup(config: &Config) {
    if let Ok(connection) = broker::connect_any(&config.amqp, "demo cleanup").await
        && let Ok(channel) = connection.create_channel().await
    {
        Topology::new(&config.amqp, &config.retry)
            .delete(&channel)
            .await;
        let _ = connection.close(200, "demo cleanup done".into()).await;
    }
    if let Ok(pool) = crate::store::pooled(&config.redis) {
        let _ = crate::store::delete_prefix(&pool, &config.redis.key_prefix).await;
    }
}
