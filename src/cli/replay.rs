//! `wxpush replay`: moves dead letters back to the events queue, optionally only those
//! matching filters, at most `--limit` of them, or only shows what would move (`--dry-run`).
//!
//! How nothing is lost or reordered:
//! - the dead-letter queue is scanned with `basic.get` (no auto-ack) on a channel of its own,
//!   up to its length at start (dead letters arriving meanwhile wait for the next replay);
//! - a matching message is republished on a confirm channel straight to the events queue
//!   (the default exchange, routing key = `amqp.queue`), never through `amqp.exchange`:
//!   other services' queues bound there would get copies, and a type no longer bound to our
//!   queue would be "confirmed" into someone else's queue and leave the dead-letter queue.
//!   It is acked from the dead-letter queue only once the broker confirmed it;
//! - a message that does not match, or whose republish was returned as unroutable, is held
//!   unacked until the scan ends; closing the channel then hands them all back, and RabbitMQ
//!   puts requeued messages of a classic queue back in their original positions;
//! - Ctrl-C (SIGINT) or SIGTERM stops the scan after the message in progress; everything
//!   not yet acked goes back. A second signal exits at once, which is still safe: a message
//!   is never acked before its republish is confirmed, so at worst the one message in flight
//!   ends up in both queues (and event ids make that harmless).
//!
//! The replayed message keeps its properties and headers except the dead-letter reason
//! (`x-wxpush-error`, `-errcode`, `-errmsg`, `-attempts`, `-first-failed-at`, `-dead-at`), so
//! it starts with fresh attempts, and `x-wxpush-replayed` counts the replays; a producer's
//! `expiration` and `user-id` are not copied (see `broker::publish::republished`).
//!
//! A scan holds every message it read unacked until it ends. RabbitMQ closes a channel
//! whose delivery stays unacked longer than its `consumer_timeout` (30 minutes by default):
//! a scan that long fails, everything not yet acked goes back, nothing is lost (use
//! `--limit` to replay in parts).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::BasicAckOptions;
use lapin::options::BasicGetOptions;
use time::OffsetDateTime;

use super::dead::{format_age, open_queue, warn_if_quorum};
use super::{CliError, CliResult, progress};
use crate::broker::dead_letter::{self, Letter};
use crate::broker::publish::{self, PublishError, Publisher};
use crate::broker::topology::Topology;
use crate::broker::{self, headers as h};
use crate::config::Config;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplayArgs {
    /// Only dead letters with this errcode (repeatable: any of them)
    #[arg(long = "errcode", value_name = "N", allow_negative_numbers = true)]
    pub errcodes: Vec<i64>,
    /// Only events of this type (repeatable: any of them)
    #[arg(long = "type", value_name = "T")]
    pub types: Vec<String>,
    /// Only events of this app: `x-wxpush-app`, else the event's `app` (repeatable)
    #[arg(long = "app", value_name = "A")]
    pub apps: Vec<String>,
    /// Only dead letters of this error class, e.g. permanent, transient, invalid (repeatable)
    #[arg(long = "class", value_name = "C")]
    pub classes: Vec<String>,
    /// Only dead letters older than DUR (e.g. 30m, 2h); without `x-wxpush-dead-at` a message
    /// counts as infinitely old
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Only dead letters newer than DUR
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub newer_than: Option<Duration>,
    /// Move at most N dead letters
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Print what would move; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

impl ReplayArgs {
    /// Whether the filters select this dead letter (all given filters must hold; a
    /// repeated filter holds when any of its values does).
    pub fn matches(&self, letter: &Letter, now: OffsetDateTime) -> bool {
        fn any_of(wanted: &[String], actual: Option<&str>) -> bool {
            wanted.is_empty() || actual.is_some_and(|a| wanted.iter().any(|w| w == a))
        }
        let age = letter.age(now);
        (self.errcodes.is_empty() || letter.errcode.is_some_and(|c| self.errcodes.contains(&c)))
            && any_of(&self.types, letter.kind.as_deref())
            && any_of(&self.apps, letter.app.as_deref())
            && any_of(&self.classes, letter.class.as_deref())
            // No dead-at: infinitely old.
            && self.older_than.is_none_or(|d| age.is_none_or(|a| a >= d))
            && self.newer_than.is_none_or(|d| age.is_some_and(|a| a < d))
    }
}

/// Set on the first SIGINT/SIGTERM; the second one exits the process.
fn install_interrupt() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered now, before any message is taken, not on first poll.
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let set = flag.clone();
        tokio::spawn(async move {
            for round in 0..2 {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if round == 0 {
                    set.store(true, Ordering::SeqCst);
                    eprintln!(
                        "interrupted: stopping after the message in progress (again to quit at once)"
                    );
                } else {
                    eprintln!(
                        "quitting at once: unacked dead letters return to the queue; the message in flight, if any, may now be in both queues"
                    );
                    std::process::exit(130);
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let set = flag.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                set.store(true, Ordering::SeqCst);
                eprintln!("interrupted: stopping after the message in progress");
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    }
    Ok(flag)
}

#[derive(Debug, Default)]
struct Tally {
    total: u64,
    scanned: u64,
    moved: u64,
    skipped: u64,
    unroutable: u64,
    interrupted: bool,
}

pub async fn run(config: &Config, args: ReplayArgs) -> CliResult {
    if args.limit == Some(0) {
        return Err(CliError::Usage("--limit must be at least 1".into()));
    }
    warn_if_quorum(config);
    let interrupt =
        install_interrupt().map_err(|e| anyhow::anyhow!("cannot catch signals: {e}"))?;
    let connection = broker::connect_any(&config.amqp, "replay").await?;
    let mut tally = Tally::default();
    let result = replay(&connection, config, &args, &interrupt, &mut tally).await;
    let _ = connection.close(200, "replay done".into()).await;
    let left = tally.total - tally.moved;
    let verb = if args.dry_run { "would move" } else { "moved" };
    let mut summary = format!(
        "{verb} {} dead letter(s); skipped by filter: {}",
        tally.moved, tally.skipped
    );
    if tally.unroutable > 0 {
        summary.push_str(&format!("; unroutable (kept): {}", tally.unroutable));
    }
    if tally.scanned < tally.total {
        summary.push_str(&format!("; not scanned: {}", tally.total - tally.scanned));
    }
    summary.push_str(&format!(
        "; left in `{}`: {}",
        config.amqp.dead_letter_queue,
        if args.dry_run { tally.total } else { left }
    ));
    if args.dry_run {
        summary.push_str(" (dry run: nothing was changed)");
    }
    if result.is_ok() || tally.scanned > 0 {
        println!("{summary}");
    }
    result?;
    if tally.interrupted {
        return Err(anyhow::anyhow!(
            "interrupted after moving {} dead letter(s); the others are still in `{}`",
            tally.moved,
            config.amqp.dead_letter_queue
        )
        .into());
    }
    if tally.unroutable > 0 {
        return Err(anyhow::anyhow!(
            "{} dead letter(s) could not be routed (the events queue `{}` is gone) and were kept",
            tally.unroutable,
            config.amqp.queue
        )
        .into());
    }
    Ok(())
}

async fn replay(
    connection: &lapin::Connection,
    config: &Config,
    args: &ReplayArgs,
    interrupt: &AtomicBool,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let amqp = &config.amqp;
    // One publish at a time: one channel is enough.
    let publisher = Publisher::open_with(connection, 1, amqp.confirm_timeout).await?;
    Topology::new(amqp, &config.retry)
        .declare_on(connection)
        .await?;
    let queue = amqp.dead_letter_queue.as_str();
    let (channel, count) = open_queue(connection, queue).await?;
    tally.total = u64::from(count);
    let bar = progress::bar(
        tally.total,
        if args.dry_run {
            "scanning"
        } else {
            "replaying"
        },
    );
    let now = OffsetDateTime::now_utc();
    let mut result = Ok(());
    while tally.scanned < tally.total {
        if interrupt.load(Ordering::SeqCst) {
            tally.interrupted = true;
            break;
        }
        if args.limit.is_some_and(|l| tally.moved >= l) {
            break;
        }
        let message = match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
        {
            Ok(Some(m)) => m.delivery,
            Ok(None) => break,
            Err(e) => {
                result = Err(anyhow::anyhow!("cannot read `{queue}`: {e}"));
                break;
            }
        };
        tally.scanned += 1;
        bar.inc(1);
        let letter = Letter::of_delivery(tally.scanned as usize, &message);
        if !args.matches(&letter, now) {
            // Held unacked: it goes back to its place when the channel closes.
            tally.skipped += 1;
            continue;
        }
        let (exchange, routing_key) = ("", amqp.queue.as_str());
        if args.dry_run {
            tally.moved += 1;
            bar.suspend(|| {
                println!(
                    "would move #{} {} (type {}, errcode {}, age {}) to queue `{routing_key}`",
                    letter.position,
                    letter.id_label().escape_debug(),
                    letter.kind.as_deref().unwrap_or("-").escape_debug(),
                    letter.errcode.map_or_else(|| "-".into(), |c| c.to_string()),
                    letter.age(now).map_or_else(|| "-".into(), format_age),
                );
            });
            continue;
        }
        let properties = publish::republished(
            &message.properties,
            dead_letter::for_replay(&h::of(&message.properties)),
        );
        match publisher
            .publish(exchange, routing_key, &message.data, properties)
            .await
        {
            Ok(()) => {}
            Err(e @ PublishError::Unroutable { .. }) => {
                // Nothing was enqueued: keep the dead letter where it is.
                tally.unroutable += 1;
                tracing::warn!(event_id = %letter.id_label(), error = %e, "dead letter kept");
                continue;
            }
            Err(e) => {
                result = Err(anyhow::anyhow!(
                    "republishing {} failed, it stays dead-lettered: {e}",
                    letter.id_label()
                ));
                break;
            }
        }
        // Confirmed: only now may it leave the dead-letter queue.
        match message.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => tally.moved += 1,
            Ok(false) | Err(_) => {
                result = Err(anyhow::anyhow!(
                    "the dead-letter channel closed before {} was acked: it was replayed and is also back in `{queue}`",
                    letter.id_label()
                ));
                tally.moved += 1;
                break;
            }
        }
    }
    bar.finish_and_clear();
    // Every message not acked (filtered out, unroutable, or not reached) returns to its place.
    let _ = channel.close(200, "replay done".into()).await;
    // Closed here rather than on drop, where it would race the connection's close.
    publisher.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::dead_letter::{Failure, FailureClass};
    use crate::wechat::errcode::ErrorClass;
    use lapin::BasicProperties;
    use lapin::types::FieldTable;
    use time::format_description::well_known::Rfc3339;

    /// A dead letter as the worker writes it, or (`None`) a foreign message without our headers.
    fn letter(dead: Option<(i64, &str)>, body: &[u8]) -> Letter {
        let headers = match dead {
            None => FieldTable::default(),
            Some((errcode, dead_at)) => {
                let failure = Failure {
                    class: FailureClass::Call(ErrorClass::Permanent),
                    errcode: Some(errcode),
                    errmsg: "x".into(),
                    app: None,
                };
                let at = OffsetDateTime::parse(dead_at, &Rfc3339).unwrap();
                dead_letter::for_dead_letter(FieldTable::default(), 1, &failure, at)
            }
        };
        Letter::of(1, &BasicProperties::default().with_headers(headers), body)
    }

    #[test]
    fn filters_combine_and_repeat() {
        let now = OffsetDateTime::parse("2026-01-01T12:00:00Z", &Rfc3339).unwrap();
        let body = br#"{"id":"1","type":"order.paid","app":"shop"}"#;
        let l = letter(Some((-1, "2026-01-01T11:00:00Z")), body);
        let args = |f: fn(&mut ReplayArgs)| {
            let mut a = ReplayArgs::default();
            f(&mut a);
            a
        };
        assert!(args(|_| {}).matches(&l, now));
        assert!(args(|a| a.errcodes = vec![40003, -1]).matches(&l, now));
        assert!(!args(|a| a.errcodes = vec![40003]).matches(&l, now));
        assert!(args(|a| a.types = vec!["order.paid".into()]).matches(&l, now));
        assert!(!args(|a| a.types = vec!["task.due".into()]).matches(&l, now));
        assert!(args(|a| a.apps = vec!["shop".into()]).matches(&l, now));
        assert!(args(|a| a.classes = vec!["permanent".into()]).matches(&l, now));
        assert!(args(|a| a.older_than = Some(Duration::from_secs(1800))).matches(&l, now));
        assert!(!args(|a| a.older_than = Some(Duration::from_secs(7200))).matches(&l, now));
        assert!(args(|a| a.newer_than = Some(Duration::from_secs(7200))).matches(&l, now));
        assert!(!args(|a| a.newer_than = Some(Duration::from_secs(60))).matches(&l, now));
        // A foreign message: no errcode, no class, no dead-at (infinitely old).
        let foreign = letter(None, b"\x00binary");
        assert!(args(|_| {}).matches(&foreign, now));
        assert!(!args(|a| a.errcodes = vec![-1]).matches(&foreign, now));
        assert!(!args(|a| a.classes = vec!["permanent".into()]).matches(&foreign, now));
        assert!(args(|a| a.older_than = Some(Duration::from_secs(1 << 40))).matches(&foreign, now));
        assert!(
            !args(|a| a.newer_than = Some(Duration::from_secs(1 << 40))).matches(&foreign, now)
        );
    }
}
