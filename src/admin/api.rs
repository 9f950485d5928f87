//! The admin JSON API under `/api/` on `admin.listen`, guarded by [`super::auth`] (bearer
//! token, or the console's session with its CSRF token); documented in `docs/api.md`:
//! - `GET /api/dead?errcode=&class=&type=&app=&id=&older_than=&newer_than=&limit=`:
//!   matching dead letters and their groups; `GET /api/dead/{id}`: one letter (`%23N` for
//!   the N-th) with headers and body;
//! - `POST /api/replay`, `POST /api/purge`: by filter (`older_than`/`newer_than` included)
//!   or ids; a dry run counts; `"background": true` answers at once with a job, followed at
//!   `GET /api/jobs/{id}` (`POST /api/jobs/{id}/cancel` stops it);
//! - `GET /api/events/{id}`: an event's delivery record; `GET /api/grants/{openid}?app=`;
//! - `GET /api/apps`: token age and fingerprint, parked and why, grants known;
//! - `GET /api/queues`: queue depths.
//!
//! Every refusal is answered with a JSON `{"error": …}` naming why, and logged.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::auth::{Access, Sessions};
use super::ops::{self, Jobs};
use crate::dead_letters::{Action, Filter};
use crate::store::event_record;
use crate::telemetry::ErrorChain;
use crate::worker::Ctx;

/// What the API (and the console) handlers need.
pub struct Api {
    pub access: Access,
    pub ctx: Arc<Ctx>,
    pub jobs: Jobs,
    pub sessions: Sessions,
}

impl Api {
    pub fn new(access: Access, ctx: Arc<Ctx>) -> Api {
        Api {
            access,
            sessions: Sessions::new(ctx.hot_path.clone(), ctx.keys.clone()),
            ctx,
            jobs: Jobs::default(),
        }
    }
}

/// The `/api` routes, to be nested under `/api`.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/events/{id}", get(event))
        .route("/dead", get(dead))
        .route("/dead/{id}", get(dead_one))
        .route("/replay", post(replay))
        .route("/purge", post(purge))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/grants/{openid}", get(user_grants))
        .route("/apps", get(apps))
        .route("/queues", get(queues))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .with_state(api)
}

async fn authenticate(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    match api
        .access
        .authorize(&api.sessions, request.method(), request.headers())
        .await
    {
        Ok(()) => next.run(request).await,
        Err((status, reason)) => {
            tracing::warn!(path = %request.uri().path(), status = status.as_u16(), reason, "admin API request refused");
            error(status, reason)
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn unavailable(what: &str, e: &anyhow::Error) -> Response {
    tracing::warn!(error = %format!("{e:#}"), "admin API: {what} failed");
    error(StatusCode::SERVICE_UNAVAILABLE, format!("{what}: {e:#}"))
}

async fn event(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let (redis, keys) = (&api.ctx.hot_path, &api.ctx.keys);
    let found = redis
        .run("event record", async |conn| {
            event_record::trace(conn, keys, &id).await
        })
        .await;
    match found {
        Ok(Some(record)) => Json(json!({ "id": id, "record": record })).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no delivery record for event `{id}` (never received, or older than policy.idempotency_ttl)"
            ),
        ),
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "admin API: Redis unavailable");
            error(StatusCode::SERVICE_UNAVAILABLE, "Redis is unavailable")
        }
    }
}

/// The filter of `GET /api/dead` and of the console's forms: one value per criterion.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    pub errcode: Option<String>,
    pub class: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub app: Option<String>,
    pub id: Option<String>,
    /// Dead for at least this long (on `x-wxpush-dead-at`), e.g. `2h`.
    pub older_than: Option<String>,
    /// Dead for less than this long, e.g. `30m`.
    pub newer_than: Option<String>,
    pub limit: Option<String>,
}

impl DeadQuery {
    /// The filter, or what is wrong with it. Empty values mean "any".
    pub fn filter(&self) -> Result<Filter, String> {
        let one = |v: &Option<String>| -> Vec<String> {
            v.iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let errcodes = one(&self.errcode)
            .iter()
            .map(|e| {
                e.parse::<i64>()
                    .map_err(|_| format!("errcode `{e}` is not a number (e.g. errcode=-1)"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            errcodes,
            classes: one(&self.class),
            types: one(&self.kind),
            apps: one(&self.app),
            ids: one(&self.id),
            older_than: age("older_than", &self.older_than)?,
            newer_than: age("newer_than", &self.newer_than)?,
        })
    }

    /// The listing's size: `limit`, default 100, at most [`ops::MAX_LISTED`].
    pub fn limit(&self) -> Result<usize, String> {
        match self
            .limit
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => Ok(100),
            Some(l) => l
                .parse::<usize>()
                .map(|n| n.min(ops::MAX_LISTED))
                .map_err(|_| format!("limit `{l}` is not a count (e.g. limit=50)")),
        }
    }
}

/// An age criterion (`older_than`, `newer_than`): a duration as the CLI takes it (`90s`,
/// `10m`, `2h`, `3days`); empty means "any".
fn age(name: &str, value: &Option<String>) -> Result<Option<std::time::Duration>, String> {
    match value.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => humantime::parse_duration(v).map(Some).map_err(|e| {
            format!("{name} `{v}` is not a duration ({e}); write e.g. {name}=10m, 2h or 3days")
        }),
    }
}

async fn dead(
    State(api): State<Arc<Api>>,
    query: Result<Query<DeadQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (filter, limit) = match (query.filter(), query.limit()) {
        (Ok(f), Ok(l)) => (f, l),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    match ops::dead(&api.ctx, &filter, limit).await {
        Ok(view) => {
            let now = OffsetDateTime::now_utc();
            let letters: Vec<_> = view
                .letters
                .iter()
                .map(|l| crate::dead_letters::view::letter_json(l, now))
                .collect();
            Json(json!({
                "total": view.total,
                "in_queue": view.in_queue,
                "scanned": view.scanned,
                "partial": view.scanned < view.in_queue,
                "letters": letters,
                "groups": view.groups,
            }))
            .into_response()
        }
        Err(e) => unavailable("reading the dead letters", &e),
    }
}

async fn dead_one(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    match ops::show(&api.ctx, &id).await {
        Ok(found) if found.is_empty() => error(
            StatusCode::NOT_FOUND,
            format!("no dead letter with id `{id}` (or `#N` for the N-th in the queue)"),
        ),
        Ok(found) => {
            let now = OffsetDateTime::now_utc();
            let letters: Vec<_> = found
                .iter()
                .map(|r| {
                    crate::dead_letters::view::read_json(&r.letter, &r.properties, &r.body, now)
                })
                .collect();
            Json(json!({ "letters": letters })).into_response()
        }
        Err(e) => unavailable("reading the dead letters", &e),
    }
}

/// The body of `POST /api/replay` and `POST /api/purge`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActRequest {
    pub errcode: Option<i64>,
    pub class: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub app: Option<String>,
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub older_than: Option<std::time::Duration>,
    #[serde(default, with = "humantime_serde")]
    pub newer_than: Option<std::time::Duration>,
    pub limit: Option<u64>,
    #[serde(default)]
    pub dry_run: bool,
    /// Answer at once with the job (202) instead of when it ends.
    #[serde(default)]
    pub background: bool,
    /// Required (true) by a purge that is not a dry run.
    #[serde(default)]
    pub confirm: bool,
}

impl ActRequest {
    fn filter(&self) -> Filter {
        Filter {
            errcodes: self.errcode.into_iter().collect(),
            classes: self.class.iter().cloned().collect(),
            types: self.kind.iter().cloned().collect(),
            apps: self.app.iter().cloned().collect(),
            ids: self.ids.clone(),
            older_than: self.older_than,
            newer_than: self.newer_than,
        }
    }
}

async fn replay(
    State(api): State<Arc<Api>>,
    body: Result<Json<ActRequest>, JsonRejection>,
) -> Response {
    act(api, body, Action::Replay).await
}

async fn purge(
    State(api): State<Arc<Api>>,
    body: Result<Json<ActRequest>, JsonRejection>,
) -> Response {
    act(api, body, Action::Purge).await
}

async fn act(
    api: Arc<Api>,
    body: Result<Json<ActRequest>, JsonRejection>,
    action: Action,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if request.limit == Some(0) {
        return error(StatusCode::BAD_REQUEST, "limit must be at least 1");
    }
    if action == Action::Purge && !request.dry_run && !request.confirm {
        return error(
            StatusCode::BAD_REQUEST,
            "a purge drops dead letters for good: send \"confirm\": true (or \"dry_run\": true to count them)",
        );
    }
    let run = if request.dry_run {
        Action::Count
    } else {
        action
    };
    let job = api
        .jobs
        .start(api.ctx.clone(), request.filter(), run, request.limit);
    if request.background {
        let body = json!({ "job": job.id.to_string(), "status": format!("/api/jobs/{}", job.id) });
        return (StatusCode::ACCEPTED, Json(body)).into_response();
    }
    job.wait().await;
    let t = job.tally();
    if let Some(e) = job.error() {
        let done_word = if action == Action::Replay {
            "replayed"
        } else {
            "purged"
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e, "matched": t.matched, done_word: t.done, "job": job.id.to_string() })),
        )
            .into_response();
    }
    let done = if request.dry_run { 0 } else { t.done };
    let mut body = json!({
        "matched": t.matched,
        "dry_run": request.dry_run,
        "unroutable": t.unroutable,
        "copies": t.copies,
        "job": job.id.to_string(),
    });
    body[if action == Action::Replay {
        "replayed"
    } else {
        "purged"
    }] = json!(done);
    Json(body).into_response()
}

async fn jobs(State(api): State<Arc<Api>>) -> Response {
    let list: Vec<_> = api.jobs.list().iter().map(|j| j.json()).collect();
    Json(json!({ "jobs": list })).into_response()
}

async fn job(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    match api.jobs.get(&id) {
        Some(job) => Json(job.json()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no job `{id}` on this worker (a job is followed on the worker that runs it)"),
        ),
    }
}

async fn cancel(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    match api.jobs.get(&id) {
        Some(job) => {
            job.cancel.cancel();
            job.wait().await;
            Json(job.json()).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no job `{id}` on this worker (a job is followed on the worker that runs it)"),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppQuery {
    app: Option<String>,
}

async fn user_grants(
    State(api): State<Arc<Api>>,
    Path(openid): Path<String>,
    query: Result<Query<AppQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match ops::user_grants(&api.ctx, &openid, query.app.as_deref()).await {
        Ok(rows) => {
            let grants: Vec<_> = rows
                .iter()
                .map(|(app, r)| json!({ "app": app, "grant": r }))
                .collect();
            Json(json!({ "openid": openid, "grants": grants })).into_response()
        }
        Err(e) if e.to_string().starts_with("unknown app") => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => unavailable("reading the grants", &e),
    }
}

async fn apps(State(api): State<Arc<Api>>) -> Response {
    Json(json!({ "apps": ops::apps(&api.ctx).await })).into_response()
}

async fn queues(State(api): State<Arc<Api>>) -> Response {
    let depths: Vec<_> = ops::queue_depths(&api.ctx)
        .await
        .into_iter()
        .map(|(label, queue, ready)| json!({ "label": label, "queue": queue, "ready": ready }))
        .collect();
    Json(json!({ "queues": depths })).into_response()
}
