//! What the JSON API and the console both show and do, in one place: dead letters listed
//! and grouped, one letter read, queue depths, app status, a user's grants, and replay or
//! purge jobs ([`Jobs`]). The handlers in `api.rs` and `console` only translate.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Connection;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, dead_letter::Letter};
use crate::dead_letters::{self, Action, Filter, Order, Progress, Queues, Tally};
use crate::store::app_hold;
use crate::store::grants::{self, GrantRecord};
use crate::store::token_record;
use crate::worker::Ctx;

/// Letters a listing returns at most (the groups always cover the whole queue).
pub const MAX_LISTED: usize = 1000;

/// One group of dead letters with the same cause.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Group {
    pub class: Option<String>,
    pub errcode: Option<i64>,
    pub app: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub count: u64,
    /// `x-wxpush-dead-at` of the oldest and newest letter (RFC 3339), when they have one.
    pub oldest: Option<String>,
    pub newest: Option<String>,
}

/// The dead letters a filter selects.
#[derive(Debug, Clone)]
pub struct DeadView {
    /// Matching letters in the queue (all of them, not only those listed).
    pub total: u64,
    /// Letters in the queue.
    pub in_queue: u64,
    /// Letters read: all of them, or the first `admin.dead_scan_max` (then `total` and
    /// `groups` cover those only).
    pub scanned: u64,
    /// The first `limit` matching letters, in queue order.
    pub letters: Vec<Letter>,
    /// Matching letters grouped by (class, errcode, app, type), largest group first.
    pub groups: Vec<Group>,
}

async fn connect(ctx: &Ctx, purpose: &str) -> anyhow::Result<Connection> {
    broker::connect_any(&ctx.config.amqp, purpose).await
}

async fn close(connection: Connection) {
    let _ = connection.close(200, "admin request done".into()).await;
}

/// Reads the dead-letter queue, at most `admin.dead_scan_max` letters from its head
/// (nothing is taken), and keeps what `filter` selects.
pub async fn dead(ctx: &Ctx, filter: &Filter, limit: usize) -> anyhow::Result<DeadView> {
    let connection = connect(ctx, "admin dead").await?;
    let now = OffsetDateTime::now_utc();
    let progress = Progress::default();
    let read = dead_letters::read(
        &connection,
        &ctx.config.amqp.dead_letter_queue,
        Some(ctx.config.admin.dead_scan_max),
        &progress,
        &CancellationToken::new(),
        |_| false,
    )
    .await;
    close(connection).await;
    let (all, _) = read?;
    let read = progress.snapshot();
    let matching: Vec<Letter> = all.into_iter().filter(|l| filter.matches(l, now)).collect();
    Ok(DeadView {
        total: matching.len() as u64,
        in_queue: read.total,
        scanned: read.scanned,
        groups: groups(&matching),
        letters: matching.into_iter().take(limit).collect(),
    })
}

/// Groups by cause, largest first (then by errcode, app, type).
pub fn groups(letters: &[Letter]) -> Vec<Group> {
    type Key = (Option<String>, Option<i64>, Option<String>, Option<String>);
    let mut by: BTreeMap<Key, Group> = BTreeMap::new();
    for l in letters {
        let key = (l.class.clone(), l.errcode, l.app.clone(), l.kind.clone());
        let g = by.entry(key).or_insert_with(|| Group {
            class: l.class.clone(),
            errcode: l.errcode,
            app: l.app.clone(),
            kind: l.kind.clone(),
            count: 0,
            oldest: None,
            newest: None,
        });
        g.count += 1;
        if let (Some(at), Some(raw)) = (l.dead_at, &l.dead_at_raw) {
            let earlier = |other: &Option<String>, older: bool| {
                other
                    .as_deref()
                    .and_then(|o| {
                        OffsetDateTime::parse(o, &time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .is_none_or(|o| if older { at < o } else { at > o })
            };
            if earlier(&g.oldest, true) {
                g.oldest = Some(raw.clone());
            }
            if earlier(&g.newest, false) {
                g.newest = Some(raw.clone());
            }
        }
    }
    let mut groups: Vec<Group> = by.into_values().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    groups
}

/// The dead letter(s) with this event id, or `#N` for the N-th in the queue.
pub async fn show(ctx: &Ctx, wanted: &str) -> anyhow::Result<Vec<dead_letters::Read>> {
    let connection = connect(ctx, "admin dead").await?;
    let read = dead_letters::read(
        &connection,
        &ctx.config.amqp.dead_letter_queue,
        None,
        &Progress::default(),
        &CancellationToken::new(),
        |l| {
            l.id.as_deref() == Some(wanted)
                || wanted
                    .strip_prefix('#')
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n == l.position)
        },
    )
    .await;
    close(connection).await;
    Ok(read?.1)
}

/// The ready messages of each queue wxpush declares (`None`: not reachable or not there).
pub async fn queue_depths(ctx: &Ctx) -> Vec<(String, String, Option<u32>)> {
    let topology = &ctx.topology;
    let mut wanted = vec![
        ("events".to_owned(), topology.queue.clone()),
        (
            "dead letters".to_owned(),
            topology.dead_letter_queue.clone(),
        ),
    ];
    for tier in &topology.tiers {
        wanted.push((format!("retry {}", tier.label), tier.queue.clone()));
    }
    let Ok(connection) = connect(ctx, "admin depths").await else {
        return wanted.into_iter().map(|(l, q)| (l, q, None)).collect();
    };
    let mut out = Vec::new();
    for (label, queue) in wanted {
        // A passive declare of a missing queue closes its channel: one channel each.
        let depth = match connection.create_channel().await {
            Ok(channel) => {
                let depth = broker::inspect_queue(&channel, &queue)
                    .await
                    .ok()
                    .map(|q| q.message_count());
                let _ = channel.close(200, "looked".into()).await;
                depth
            }
            Err(_) => None,
        };
        out.push((label, queue, depth));
    }
    close(connection).await;
    out
}

/// An app as the console and `/api/apps` show it.
#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub app: String,
    pub appid: String,
    /// Seconds since the shared token was fetched; `None` when none is stored.
    pub token_age_seconds: Option<u64>,
    pub token_expires_in_seconds: Option<u64>,
    /// The first 12 hex digits of the token's SHA-1: tells tokens apart, reveals nothing.
    pub token_fingerprint: Option<String>,
    /// `credential`, `quota`, `token_quota` or `minute`, when the app's sends are parked.
    pub parked: Option<String>,
    /// Why (errcode and errmsg for a credential park).
    pub parked_why: Option<String>,
    pub parked_for_seconds: Option<u64>,
    /// Users with a grant ledger for the app (counted up to [`GRANT_COUNT_CAP`]).
    pub grants_known: Option<u64>,
    pub grants_capped: bool,
}

/// Keys a grant count looks at, at most.
pub const GRANT_COUNT_CAP: u64 = 100_000;

pub async fn apps(ctx: &Ctx) -> Vec<AppStatus> {
    let mut out = Vec::new();
    let tripped = ctx.breaker.tripped();
    for app in ctx.tokens.apps() {
        let appid = ctx
            .tokens
            .credentials(app)
            .map(|(id, _)| id.to_owned())
            .unwrap_or_default();
        let mut status = AppStatus {
            app: app.to_owned(),
            appid: appid.clone(),
            token_age_seconds: None,
            token_expires_in_seconds: None,
            token_fingerprint: None,
            parked: None,
            parked_why: None,
            parked_for_seconds: None,
            grants_known: None,
            grants_capped: false,
        };
        let key = ctx.keys.token(&appid);
        if let Ok((Some(info), now)) = ctx
            .hot_path
            .run("token record", async |c| token_record::read(c, &key).await)
            .await
        {
            status.token_age_seconds = Some(now.saturating_sub(info.fetched_at_ms) / 1000);
            status.token_expires_in_seconds = Some(info.expires_at_ms.saturating_sub(now) / 1000);
            status.token_fingerprint = Some(fingerprint(info.token.expose()));
        }
        if let Some((errcode, errmsg, since)) = tripped.get(app) {
            status.parked = Some("credential".into());
            status.parked_why = Some(format!(
                "WeChat refused the credentials: errcode {} {errmsg}",
                errcode.map_or_else(|| "-".into(), |c| c.to_string())
            ));
            status.parked_for_seconds = Some(since.as_secs());
        } else {
            let key = ctx.keys.app_hold(app);
            if let Ok(Some(hold)) = ctx
                .hot_path
                .run("app hold", async |c| app_hold::read(c, &key).await)
                .await
            {
                status.parked = Some(hold.reason.as_str().into());
                status.parked_why = Some(hold_why(hold));
                status.parked_for_seconds = Some(hold.age.as_secs());
            }
        }
        if let Ok((n, capped)) = count_grants(ctx, app).await {
            status.grants_known = Some(n);
            status.grants_capped = capped;
        }
        out.push(status);
    }
    out
}

fn hold_why(hold: app_hold::Hold) -> String {
    use app_hold::HoldReason as R;
    let wait = humantime::format_duration(Duration::from_secs(hold.wait.as_secs()));
    match hold.reason {
        R::Quota => format!("45009: the daily send quota is used up; next probe in {wait}"),
        R::TokenQuota => {
            format!(
                "45009 from the token endpoint: its daily quota is used up; next probe in {wait}"
            )
        }
        R::Minute => format!("45011: the minute rate is reached; ends in {wait}"),
    }
}

/// The first 12 hex digits of SHA-1(token).
pub fn fingerprint(token: &str) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(token.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

async fn count_grants(ctx: &Ctx, app: &str) -> Result<(u64, bool), crate::store::StoreError> {
    // Every user's ledger key of the app: `<prefix>:grants:{app:openid}`.
    let pattern = ctx.keys.grants(app, "*");
    ctx.hot_path
        .run("count grants", async |c| {
            let mut cursor: u64 = 0;
            let (mut n, mut looked) = (0u64, 0u64);
            loop {
                let (next, keys): (u64, Vec<String>) = deadpool_redis::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(c)
                    .await?;
                n += keys.len() as u64;
                looked += 1000;
                cursor = next;
                if cursor == 0 {
                    return Ok((n, false));
                }
                if looked >= GRANT_COUNT_CAP {
                    return Ok((n, true));
                }
            }
        })
        .await
}

/// The user's grants per app (all configured apps, or `app`).
pub async fn user_grants(
    ctx: &Ctx,
    openid: &str,
    app: Option<&str>,
) -> anyhow::Result<Vec<(String, GrantRecord)>> {
    let apps: Vec<String> = match app {
        Some(a) if ctx.tokens.apps().any(|x| x == a) => vec![a.to_owned()],
        Some(a) => anyhow::bail!(
            "unknown app `{a}` (configured: {})",
            ctx.tokens.apps().collect::<Vec<_>>().join(", ")
        ),
        None => ctx.tokens.apps().map(str::to_owned).collect(),
    };
    let mut rows = Vec::new();
    for app in apps {
        let key = ctx.keys.grants(&app, openid);
        let records = ctx
            .hot_path
            .run("grants", async |c| grants::read_all(c, &key).await)
            .await?;
        rows.extend(records.into_iter().map(|r| (app.clone(), r)));
    }
    Ok(rows)
}

/// A replay, purge or count running (or run) in the background.
pub struct Job {
    pub id: u64,
    pub action: Action,
    pub filter: Filter,
    pub limit: Option<u64>,
    pub started_at: OffsetDateTime,
    pub progress: Arc<Progress>,
    pub cancel: CancellationToken,
    /// Set once the job ended: its error, if it failed.
    outcome: Mutex<Option<Result<(), String>>>,
    ended: tokio::sync::Notify,
}

impl Job {
    /// Waits until the job ended.
    pub async fn wait(&self) {
        loop {
            let ended = self.ended.notified();
            if self
                .outcome
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
            {
                return;
            }
            ended.await;
        }
    }

    pub fn error(&self) -> Option<String> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .and_then(Result::err)
    }

    pub fn state(&self) -> &'static str {
        match &*self.outcome.lock().unwrap_or_else(|e| e.into_inner()) {
            None => "running",
            Some(Ok(())) if self.cancel.is_cancelled() => "cancelled",
            Some(Ok(())) => "done",
            Some(Err(_)) => "failed",
        }
    }

    pub fn tally(&self) -> Tally {
        let mut t = self.progress.snapshot();
        t.interrupted = self.cancel.is_cancelled();
        t
    }

    pub fn json(&self) -> Value {
        let t = self.tally();
        json!({
            "id": self.id.to_string(),
            "action": self.action,
            "state": self.state(),
            "filter": self.filter,
            "limit": self.limit,
            "started_at": self.started_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "total": t.total,
            "scanned": t.scanned,
            "matched": t.matched,
            "done": t.done,
            "unroutable": t.unroutable,
            "copies": t.copies,
            "error": self.error(),
        })
    }
}

/// The jobs of this process (in memory; the last [`Jobs::KEPT`] are kept).
pub struct Jobs {
    next: AtomicU64,
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
}

impl Default for Jobs {
    /// Numbers its jobs on from a random thousand, so that behind a load balancer a job's
    /// page landing on another worker finds no job rather than that worker's job of the
    /// same number (jobs are per process; sessions are not).
    fn default() -> Jobs {
        let block = uuid::Uuid::new_v4().as_u64_pair().0 % 1_000_000;
        Jobs {
            next: AtomicU64::new(block * 1000),
            jobs: Mutex::default(),
        }
    }
}

impl Jobs {
    pub const KEPT: usize = 100;

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let id: u64 = id.parse().ok()?;
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Every kept job, newest first.
    pub fn list(&self) -> Vec<Arc<Job>> {
        let mut all: Vec<_> = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|j| std::cmp::Reverse(j.id));
        all
    }

    /// Starts a job on a connection of its own.
    pub fn start(
        &self,
        ctx: Arc<Ctx>,
        filter: Filter,
        action: Action,
        limit: Option<u64>,
    ) -> Arc<Job> {
        let job = Arc::new(Job {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            action,
            filter,
            limit,
            started_at: OffsetDateTime::now_utc(),
            progress: Arc::new(Progress::default()),
            cancel: CancellationToken::new(),
            outcome: Mutex::new(None),
            ended: tokio::sync::Notify::new(),
        });
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if jobs.len() >= Self::KEPT {
                let oldest_done = jobs
                    .values()
                    .filter(|j| j.state() != "running")
                    .map(|j| j.id)
                    .min();
                if let Some(id) = oldest_done {
                    jobs.remove(&id);
                }
            }
            jobs.insert(job.id, job.clone());
        }
        let running = job.clone();
        tokio::spawn(async move {
            let result = run_job(&ctx, &running).await;
            if let Err(e) = &result {
                tracing::warn!(job = running.id, error = %format!("{e:#}"), "dead-letter job failed");
            }
            *running.outcome.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(result.map(|_| ()).map_err(|e| format!("{e:#}")));
            running.ended.notify_waiters();
        });
        job
    }
}

async fn run_job(ctx: &Ctx, job: &Job) -> anyhow::Result<Tally> {
    let connection = connect(ctx, &format!("admin {:?} job {}", job.action, job.id)).await?;
    if job.action == Action::Replay {
        // The events queue must exist for the republishes to land.
        if let Err(e) = ctx.topology.declare_on(&connection).await {
            close(connection).await;
            return Err(e);
        }
    }
    let result = dead_letters::run(
        &connection,
        &Queues::of(&ctx.config.amqp),
        &Order {
            filter: job.filter.clone(),
            action: job.action,
            limit: job.limit,
        },
        &job.progress,
        &job.cancel,
        |_| {},
    )
    .await;
    close(connection).await;
    result
}
