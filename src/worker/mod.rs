//! `wxpush run`: the worker. Consumes events, hands each to `handle.rs`, settles the result
//! with `settle.rs`, and keeps going through broker and Redis outages.
//!
//! The unit of concurrency is the message: every delivery runs as its own task, and the
//! broker's prefetch bounds how many are in flight. A session is two AMQP connections, one
//! consuming (deliveries and acks) and one publishing (retries, parked messages, dead
//! letters): RabbitMQ blocks a connection that publishes during a memory or disk alarm, and
//! a blocked connection sends nothing, acks included. When either breaks, a publish fails
//! (a retry tier was deleted, say) or Redis does, the session ends, unacked messages return
//! to the queue, and the supervisor starts a new one, declaring the topology again, after a
//! jittered backoff.

pub mod acker;
pub mod app_hold;
pub mod breaker;
pub mod claim_keeper;
pub mod disposition;
pub mod handle;
pub mod pacing;
pub mod redis_guard;
pub mod send;
pub mod settle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::store::Pool;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin::{self, Health, metrics as m};
use crate::broker::publish::Publisher;
use crate::broker::topology::Topology;
use crate::broker::{self};
use crate::config::{Config, redact_url};
use crate::store::{self, Keys};
use crate::telemetry::ErrorChain;
use crate::template::Templates;
use crate::token::TokenStore;
use crate::wechat::client::WechatClient;
use acker::Acker;
use app_hold::AppHolds;
use breaker::Breaker;
use claim_keeper::ClaimKeeper;

/// Everything a message handler needs, shared by all tasks.
pub struct Ctx {
    pub config: Config,
    pub templates: Templates,
    pub tokens: TokenStore,
    pub client: WechatClient,
    /// Pooled Redis connections for occasional work: health pings (the token store has its
    /// own handle on the pool).
    pub pooled: Pool,
    /// The per-message path's Redis connection (claims, marks).
    pub hot_path: store::HotPath,
    pub keys: Keys,
    pub topology: Topology,
    pub breaker: Breaker,
    /// Apps whose sends are held fleet-wide (quota, minute rate), as this worker knows them.
    pub holds: AppHolds,
    pub health: Arc<Health>,
    /// This worker's identity (its consumer tag).
    pub owner: String,
    /// The index in `amqp.nodes()` of the RabbitMQ node the next session tries first.
    pub amqp_node: AtomicUsize,
    /// The longest a delivery may hold its claim (see `handle::claim_hold`).
    pub claim_hold: Duration,
    /// The claims this worker holds, renewed while it works on them.
    pub keeper: ClaimKeeper,
    /// How long after Redis lost its data an event without state that was handled before
    /// is ambiguous (see `store::claims`).
    pub loss_window: Duration,
}

impl Ctx {
    pub fn new(config: Config) -> anyhow::Result<Ctx> {
        let pooled = store::pooled(&config.redis)?;
        let client = WechatClient::new(&config.wechat)?;
        let tokens = TokenStore::new(&config, pooled.clone(), client.clone())?;
        Ok(Ctx {
            templates: Templates::compile(&config)?,
            keys: Keys::new(&config.redis.key_prefix),
            hot_path: store::HotPath::new(&config.redis)?,
            topology: Topology::new(&config.amqp, &config.retry),
            claim_hold: handle::claim_hold(&config),
            keeper: ClaimKeeper::default(),
            loss_window: handle::loss_window(&config),
            breaker: Breaker::default(),
            holds: AppHolds::new(
                Keys::new(&config.redis.key_prefix),
                config.wechat.quota_probe_every,
            ),
            health: Health::new(),
            owner: uuid::Uuid::new_v4().simple().to_string(),
            amqp_node: AtomicUsize::new(0),
            config,
            tokens,
            client,
            pooled,
        })
    }
}

/// A running worker: stop it with [`Worker::shutdown`], or let a signal do it.
pub struct Worker {
    pub admin_addr: SocketAddr,
    /// Where the message-push receiver listens, when `[push]` is set.
    pub push_addr: Option<SocketAddr>,
    pub ctx: Arc<Ctx>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    /// Starts the admin server and the consuming loop.
    pub async fn start(config: Config) -> anyhow::Result<Worker> {
        let ctx = Arc::new(Ctx::new(config)?);
        // A Redis that cannot keep the policy's promise stops the start; one that cannot be
        // reached yet does not (the supervisor waits for it and checks again).
        if let Ok(Err(unsafe_redis @ redis_guard::Unfit::Unsafe(_))) =
            tokio::time::timeout(Duration::from_secs(5), redis_guard::verify(&ctx)).await
        {
            return Err(unsafe_redis.into());
        }
        let stop = CancellationToken::new();
        let api = Arc::new(admin::api::Api::new(
            admin::auth::Access::new(
                ctx.config.admin.token().map_err(anyhow::Error::msg)?,
                ctx.config.admin.listen,
            ),
            ctx.clone(),
        ));
        let admin_addr = admin::serve(
            ctx.config.admin.listen,
            ctx.health.clone(),
            api,
            stop.child_token(),
        )
        .await?;
        let push_addr = match &ctx.config.push {
            Some(push) => {
                let receiver = crate::push::Receiver::new(&ctx.config, ctx.hot_path.clone())?;
                Some(crate::push::serve(push.listen, Arc::new(receiver), stop.child_token()).await?)
            }
            None => None,
        };
        tracing::info!(
            amqp = %redact_url(&ctx.config.amqp.url),
            redis = %ctx.config.redis.describe(),
            queue = %ctx.config.amqp.queue,
            prefetch = ctx.config.amqp.prefetch,
            admin = %admin_addr,
            "wxpush worker starting"
        );
        let task = tokio::spawn(supervise(ctx.clone(), stop.clone()));
        // The configured templates against the account's, in the background: WeChat may be
        // unreachable at start, and a mismatch is logged, never a reason to stop.
        tokio::spawn({
            let (ctx, stop) = (ctx.clone(), stop.clone());
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = crate::template::remote::check_and_log(&ctx.templates, &ctx.tokens, &ctx.client) => {}
                }
            }
        });
        Ok(Worker {
            admin_addr,
            push_addr,
            ctx,
            stop,
            task,
        })
    }

    /// Stops taking messages, lets in-flight ones finish within `worker.shutdown_grace`,
    /// and returns when the worker has closed its connections.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }

    /// Runs until the supervisor ends by itself (it only does on shutdown).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// `wxpush run`: starts a worker and stops it on SIGTERM or SIGINT.
pub async fn run_until_signal(config: Config) -> anyhow::Result<()> {
    let worker = Worker::start(config).await?;
    let stop = worker.stop_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: finishing in-flight messages, taking no new ones");
        stop.cancel();
    });
    worker.wait().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

const REDIS_CHECK_EVERY: Duration = Duration::from_secs(2);

/// How a session ended.
enum SessionEnd {
    Shutdown,
    RedisDown,
    /// A message's next step could not be published (it went back to the queue).
    PublishFailed,
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn supervise(ctx: Arc<Ctx>, stop: CancellationToken) -> anyhow::Result<()> {
    let periodic = tokio::spawn({
        let ctx = ctx.clone();
        let stop = stop.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            while stop.run_until_cancelled(tick.tick()).await.is_some() {
                ctx.breaker.log_tripped();
                ctx.health
                    .set(&ctx.health.apps_ok, !ctx.breaker.any_tripped());
            }
        }
    });
    let holds = tokio::spawn({
        let ctx = ctx.clone();
        let stop = stop.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while stop.run_until_cancelled(tick.tick()).await.is_some() {
                ctx.holds
                    .refresh(&ctx.hot_path, ctx.config.apps.keys())
                    .await;
            }
        }
    });
    let keeper = tokio::spawn(ctx.keeper.clone().run(ctx.hot_path.clone(), stop.clone()));
    let mut delays = backoff();
    let result = loop {
        if stop.is_cancelled() {
            break Ok(());
        }
        if let Err(e) = redis_guard::verify(&ctx).await {
            ctx.health.set(&ctx.health.redis, false);
            let delay = delays.next().unwrap_or(Duration::from_secs(30));
            match &e {
                redis_guard::Unfit::Unreachable(_) => {
                    tracing::warn!(error = %ErrorChain(&e), retry_in_ms = delay.as_millis() as u64, "Redis unreachable; not consuming until it is back")
                }
                redis_guard::Unfit::Unsafe(_) => {
                    tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "not consuming")
                }
            }
            let _ = stop.run_until_cancelled(tokio::time::sleep(delay)).await;
            continue;
        }
        ctx.health.set(&ctx.health.redis, true);
        let started = Instant::now();
        let ended = session(&ctx, &stop).await;
        // A session that got going means the outage is over: the next one starts quickly.
        // Not after a failed publish: while publishing keeps failing (a resource alarm, no
        // permission), each session resends the messages it had to hand back, so sessions
        // must come ever less often.
        let publish_failed = matches!(ended, Ok(SessionEnd::PublishFailed));
        if started.elapsed() > Duration::from_secs(5) && !publish_failed {
            delays = backoff();
        }
        match ended {
            Ok(SessionEnd::Shutdown) => break Ok(()),
            Ok(SessionEnd::RedisDown) => {
                ctx.health.set(&ctx.health.redis, false);
                tracing::warn!("Redis failed mid-stream; unacked messages went back to the queue");
            }
            Ok(SessionEnd::PublishFailed) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "publishing a message's next step failed (it went back to the queue); reconnecting to declare the topology again"
                );
                let _ = stop.run_until_cancelled(tokio::time::sleep(delay)).await;
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "AMQP session ended; reconnecting");
                let _ = stop.run_until_cancelled(tokio::time::sleep(delay)).await;
            }
        }
    };
    periodic.abort();
    holds.abort();
    keeper.abort();
    ctx.health.set(&ctx.health.consuming, false);
    tracing::info!("wxpush worker stopped");
    result
}

async fn redis_ping(pool: &Pool) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let _: String = deadpool_redis::redis::cmd("PING")
        .query_async(&mut *conn)
        .await?;
    Ok(())
}

/// A session's open AMQP resources.
struct Session {
    /// Deliveries and acks only: it never publishes, so RabbitMQ never blocks it.
    consuming: lapin::Connection,
    /// Retries, parked messages, dead letters (and the topology declarations).
    publishing: lapin::Connection,
    publisher: Publisher,
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    tag: String,
}

/// How long each step of closing a session may take (a blocked or dead connection never
/// answers): SIGTERM exits within `worker.shutdown_grace` plus a few of these.
const CLOSE_STEP: Duration = Duration::from_secs(2);
/// How long opening a session (two connections, the topology) may take.
const OPEN_WITHIN: Duration = Duration::from_secs(60);

/// Runs a teardown step for at most [`CLOSE_STEP`].
async fn bounded<F: Future>(what: &str, step: F) {
    if tokio::time::timeout(CLOSE_STEP, step).await.is_err() {
        tracing::warn!(
            step = what,
            "closing the session: no answer from RabbitMQ in time; going on"
        );
    }
}

/// One session of consuming: open, consume until told to stop or something breaks, then
/// drain the in-flight messages and close.
async fn session(ctx: &Arc<Ctx>, stop: &CancellationToken) -> anyhow::Result<SessionEnd> {
    let opened = tokio::select! {
        _ = stop.cancelled() => return Ok(SessionEnd::Shutdown),
        opened = tokio::time::timeout(OPEN_WITHIN, open_session(ctx)) => opened,
    };
    let mut session = opened
        .map_err(|_| anyhow::anyhow!("opening the AMQP session took over {OPEN_WITHIN:?}"))??;
    ctx.health.set(&ctx.health.amqp, true);
    ctx.health.set(&ctx.health.consuming, true);
    tracing::info!(queue = %ctx.config.amqp.queue, "consuming");
    let tracker = TaskTracker::new();
    let (acker, acks_flushed) = Acker::spawn(session.channel.clone());
    let end = consume(ctx, stop, &mut session, &tracker, &acker).await;
    if matches!(end, Err(_) | Ok(SessionEnd::PublishFailed)) {
        // Its node may be gone: the next session starts at the next node.
        let next = (ctx.amqp_node.load(Ordering::Relaxed) + 1) % ctx.config.amqp.nodes().len();
        ctx.amqp_node.store(next, Ordering::Relaxed);
    }
    ctx.health.set(&ctx.health.consuming, false);
    let cancel = session
        .channel
        .basic_cancel(session.tag.as_str().into(), BasicCancelOptions::default());
    bounded("cancel the consumer", cancel).await;
    let grace = match &end {
        Ok(SessionEnd::Shutdown) => ctx.config.worker.shutdown_grace,
        _ => Duration::from_secs(5),
    };
    drain(&tracker, grace).await;
    // The last acks go out (on the consuming connection) before it closes.
    drop(acker);
    bounded("flush the last acks", acks_flushed.finish()).await;
    ctx.health.set(&ctx.health.amqp, false);
    // A blocked connection writes nothing: closing it politely cannot work.
    if session.publishing.status().blocked() {
        tracing::warn!(
            "the publishing connection is blocked by RabbitMQ (memory or disk alarm); dropping it"
        );
    } else {
        session.publisher.close_within(CLOSE_STEP).await;
        let close = session
            .publishing
            .close(200, "wxpush worker session over".into());
        bounded("close the publishing connection", close).await;
    }
    // Closing the consuming connection returns every unacked message to the queue.
    let close = session
        .consuming
        .close(200, "wxpush worker session over".into());
    bounded("close the consuming connection", close).await;
    end
}

async fn open_session(ctx: &Ctx) -> anyhow::Result<Session> {
    let amqp = &ctx.config.amqp;
    // Both connections to one node, starting where the last session was: a session that
    // ended because its node went away has moved the start on (see `session`).
    let nodes = amqp.nodes();
    let start = ctx.amqp_node.load(Ordering::Relaxed);
    let (publishing, node) = broker::connect_first(&nodes, start, "worker publishing").await?;
    ctx.amqp_node.store(node, Ordering::Relaxed);
    let publisher = Publisher::for_config(&publishing, amqp).await?;
    ctx.topology.declare_on(&publishing).await?;
    let (consuming, _) = broker::connect_first(&nodes, node, "worker consuming").await?;
    if nodes.len() > 1 {
        tracing::info!(node = %redact_url(&nodes[node]), "connected to RabbitMQ");
    }
    let channel = consuming.create_channel().await?;
    channel
        .basic_qos(amqp.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("wxpush-{}", ctx.owner);
    let consumer = channel
        .basic_consume(
            amqp.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(Session {
        consuming,
        publishing,
        publisher,
        channel,
        consumer,
        tag,
    })
}

/// Spawns a task per delivery until the worker stops, Redis fails or the consumer ends.
async fn consume(
    ctx: &Arc<Ctx>,
    stop: &CancellationToken,
    session: &mut Session,
    tracker: &TaskTracker,
    acker: &Acker,
) -> anyhow::Result<SessionEnd> {
    let redis_down = CancellationToken::new();
    let publish_failed = CancellationToken::new();
    // An idle worker must notice a Redis outage too (for /readyz, and to stop consuming).
    let mut redis_check = tokio::time::interval(REDIS_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(SessionEnd::Shutdown),
            _ = redis_down.cancelled() => return Ok(SessionEnd::RedisDown),
            _ = publish_failed.cancelled() => return Ok(SessionEnd::PublishFailed),
            _ = redis_check.tick() => {
                if let Err(e) = redis_ping(&ctx.pooled).await {
                    tracing::warn!(error = %e, "Redis unreachable; pausing consumption");
                    return Ok(SessionEnd::RedisDown);
                }
                redis_guard::detect_loss(ctx).await;
            }
            next = session.consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let session_ends = SessionEnds {
                        redis_down: redis_down.clone(),
                        publish_failed: publish_failed.clone(),
                    };
                    let publisher = session.publisher.clone();
                    // Boxed: a message's future is large (it holds every phase's state),
                    // and tokio moves a task's future by value when it spawns it and when
                    // it finishes (about five copies per message); boxed, it is copied
                    // once and the task holds a pointer (see docs/benchmarks.md).
                    let message = Box::pin(process(ctx.clone(), publisher, acker.clone(), delivery, session_ends));
                    tracker.spawn(message);
                }
                Some(Err(e)) => return Err(anyhow::anyhow!("consumer failed: {e}")),
                None => return Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
        }
    }
}

/// Lets the in-flight messages finish, up to `grace`.
async fn drain(tracker: &TaskTracker, grace: Duration) {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            in_flight = tracker.len(),
            "in-flight messages did not finish in time; they go back to the queue unacked"
        );
    }
}

/// What a message task can tell its session: end now.
struct SessionEnds {
    redis_down: CancellationToken,
    publish_failed: CancellationToken,
}

async fn process(
    ctx: Arc<Ctx>,
    publisher: Publisher,
    acker: Acker,
    delivery: Delivery,
    session_ends: SessionEnds,
) {
    metrics::gauge!(m::IN_FLIGHT).increment(1.0);
    let mut unsettled = Unsettled {
        delivery: &delivery,
        acker: &acker,
        settled: false,
    };
    let span = tracing::info_span!(
        "message",
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        app = tracing::field::Empty
    );
    async {
        crate::failpoint::hit("worker.process").await;
        let headers = crate::broker::headers::of(&delivery.properties);
        let slot = ctx.keeper.slot();
        let incoming = handle::Incoming {
            body: &delivery.data,
            headers: &headers,
            redelivered: delivery.redelivered,
            slot: &slot,
        };
        let disposition = handle::handle(&ctx, incoming).await;
        if matches!(disposition, disposition::Disposition::RedisUnavailable(_)) {
            session_ends.redis_down.cancel();
        }
        let outcome = settle::settle(&ctx, &publisher, &acker, &delivery, &disposition).await;
        unsettled.settled = true;
        if outcome == settle::REPUBLISH_FAILED {
            session_ends.publish_failed.cancel();
        }
        tracing::debug!(outcome, "settled");
    }
    .instrument(span)
    .await;
}

/// Settles a message whose task ended without settling it: it panicked (or was dropped).
/// The message goes back to the queue (nack, requeue) and the acker learns that its tag is
/// settled: the batched acker acks only contiguous runs of settled tags, so one tag left
/// open would hold up the acks of every later message for the rest of the session.
struct Unsettled<'a> {
    delivery: &'a Delivery,
    acker: &'a Acker,
    settled: bool,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
        if self.settled {
            return;
        }
        let event_id = crate::event::peek(&self.delivery.data).id;
        tracing::error!(
            event_id = event_id.as_deref().unwrap_or("(none)"),
            delivery_tag = self.delivery.delivery_tag,
            panicked = std::thread::panicking(),
            "a message task ended without settling its message (a bug); handing the message back to the queue"
        );
        let (Ok(runtime), delivery_acker, acker, tag) = (
            tokio::runtime::Handle::try_current(),
            self.delivery.acker.clone(),
            self.acker.clone(),
            self.delivery.delivery_tag,
        ) else {
            return;
        };
        runtime.spawn(async move {
            let requeue = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            // Sent before the acker hears of it: a later multiple-ack cannot cover this tag.
            let _ = delivery_acker.nack(requeue).await;
            acker.settled_elsewhere(tag);
        });
    }
}
