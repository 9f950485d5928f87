//! `wxpush replay`: moves dead letters back to the events queue, optionally only those
//! matching filters, at most `--limit` of them, or only shows what would move (`--dry-run`);
//! `wxpush purge` drops those the filters select. Both run [`crate::dead_letters::run`],
//! the implementation the API and the console share; what follows is what it guarantees.
//!
//! How nothing is lost or reordered:
//! - the dead-letter queue is scanned by a consumer on a channel of its own (no auto-ack),
//!   up to its length at start (dead letters arriving meanwhile wait for the next replay);
//! - a matching message is republished straight to the events queue (the default
//!   exchange, routing key = `amqp.queue`), never through `amqp.exchange`: other services'
//!   queues bound there would get copies, and a type no longer bound to our queue would be
//!   "confirmed" into someone else's queue and leave the dead-letter queue. Republishes and
//!   acks go out in batches of `--window`, each one AMQP transaction: a batch moves whole
//!   or not at all, so no letter is ever in both queues;
//! - a message that does not match is held unacked until the scan ends; closing the channel
//!   then hands them all back, and RabbitMQ puts requeued messages of a classic queue back
//!   in their original positions; one whose republish was returned as unroutable is put
//!   back in the dead-letter queue;
//! - Ctrl-C (SIGINT) or SIGTERM stops the scan after the batch in progress, which is
//!   committed; everything else goes back. A second signal exits at once, which is still
//!   safe: an uncommitted batch is discarded by the broker with the connection.
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
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::dead::{format_age, warn_if_quorum};
use super::{CliError, CliResult, progress};
use crate::broker::{self, topology::Topology};
use crate::config::Config;
use crate::dead_letters::{self, Action, Filter, Order, Progress, Queues, Tally};

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
    /// Only the dead letter(s) of this event id (repeatable)
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
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
    /// Letters per batch: each batch's republishes and acks are one transaction
    #[arg(long, value_name = "N", default_value_t = dead_letters::DEFAULT_WINDOW)]
    pub window: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub select: ReplayArgs,
    /// Really drop them (without it, or with --dry-run, only count)
    #[arg(long)]
    pub yes: bool,
}

impl ReplayArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            errcodes: self.errcodes.clone(),
            classes: self.classes.clone(),
            types: self.types.clone(),
            apps: self.apps.clone(),
            ids: self.ids.clone(),
            older_than: self.older_than,
            newer_than: self.newer_than,
        }
    }
}

/// A token cancelled on the first SIGINT/SIGTERM; the second one exits the process.
fn install_interrupt() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered now, before any message is taken, not on first poll.
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let set = token.clone();
        tokio::spawn(async move {
            for round in 0..2 {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if round == 0 {
                    set.cancel();
                    eprintln!(
                        "interrupted: stopping after the batch in progress (again to quit at once)"
                    );
                } else {
                    eprintln!(
                        "quitting at once: unacked dead letters return to the queue; the batch in flight, if any, may now be in both queues"
                    );
                    std::process::exit(130);
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let set = token.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                set.cancel();
                eprintln!("interrupted: stopping after the batch in progress");
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    }
    Ok(token)
}

pub async fn run(config: &Config, args: ReplayArgs) -> CliResult {
    let action = if args.dry_run {
        Action::Count
    } else {
        Action::Replay
    };
    execute(config, &args, action).await
}

pub async fn purge(config: &Config, args: PurgeArgs) -> CliResult {
    let action = if args.yes && !args.select.dry_run {
        Action::Purge
    } else {
        Action::Count
    };
    if action == Action::Count && !args.select.dry_run {
        eprintln!("counting only: add --yes to drop the selected dead letters");
    }
    execute(config, &args.select, action).await
}

async fn execute(config: &Config, args: &ReplayArgs, action: Action) -> CliResult {
    if args.limit == Some(0) {
        return Err(CliError::Usage("--limit must be at least 1".into()));
    }
    if args.window == 0 {
        return Err(CliError::Usage("--window must be at least 1".into()));
    }
    warn_if_quorum(config);
    let cancel = install_interrupt().map_err(|e| anyhow::anyhow!("cannot catch signals: {e}"))?;
    let connection = broker::connect_any(&config.amqp, "replay").await?;
    let progress = Arc::new(Progress::default());
    let result = replay(&connection, config, args, action, &progress, &cancel).await;
    let _ = connection.close(200, "replay done".into()).await;
    let mut tally = progress.snapshot();
    tally.interrupted = cancel.is_cancelled();
    if result.is_ok() || tally.scanned > 0 {
        println!("{}", summary(config, action, &tally));
    }
    result?;
    if tally.interrupted {
        return Err(anyhow::anyhow!(
            "interrupted after {} {} dead letter(s); the others are still in `{}`",
            verb(action),
            tally.done,
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

fn verb(action: Action) -> &'static str {
    match action {
        Action::Count => "would move",
        Action::Replay => "moved",
        Action::Purge => "purged",
    }
}

fn summary(config: &Config, action: Action, tally: &Tally) -> String {
    let mut summary = format!(
        "{} {} dead letter(s); skipped by filter: {}",
        verb(action),
        tally.done,
        tally.scanned - tally.matched
    );
    if tally.unroutable > 0 {
        summary.push_str(&format!("; unroutable (kept): {}", tally.unroutable));
    }
    if tally.scanned < tally.total {
        summary.push_str(&format!("; not scanned: {}", tally.total - tally.scanned));
    }
    let left = if action == Action::Count {
        tally.total
    } else {
        tally.total.saturating_sub(tally.done)
    };
    summary.push_str(&format!(
        "; left in `{}`: {left}",
        config.amqp.dead_letter_queue
    ));
    if action == Action::Count {
        summary.push_str(" (dry run: nothing was changed)");
    }
    summary
}

async fn replay(
    connection: &lapin::Connection,
    config: &Config,
    args: &ReplayArgs,
    action: Action,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let amqp = &config.amqp;
    if action == Action::Replay {
        // The events queue must exist for the republishes to land.
        Topology::new(amqp, &config.retry)
            .declare_on(connection)
            .await?;
    }
    let queues = Queues {
        window: args.window,
        ..Queues::of(amqp)
    };
    let label = match action {
        Action::Count => "scanning",
        Action::Replay => "replaying",
        Action::Purge => "purging",
    };
    let bar = progress::bar(0, label);
    let ticker = progress::follow(&bar, progress);
    let now = OffsetDateTime::now_utc();
    let result = dead_letters::run(
        connection,
        &queues,
        &Order {
            filter: args.filter(),
            action,
            limit: args.limit,
        },
        progress,
        cancel,
        |letter| {
            if action == Action::Count {
                bar.suspend(|| {
                    println!(
                        "would move #{} {} (type {}, errcode {}, age {}) to queue `{}`",
                        letter.position,
                        letter.id_label().escape_debug(),
                        letter.kind.as_deref().unwrap_or("-").escape_debug(),
                        letter.errcode.map_or_else(|| "-".into(), |c| c.to_string()),
                        letter.age(now).map_or_else(|| "-".into(), format_age),
                        amqp.queue,
                    );
                });
            }
        },
    )
    .await;
    ticker.abort();
    bar.finish_and_clear();
    result.map(|_| ())
}
