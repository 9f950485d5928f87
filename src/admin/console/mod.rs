//! The operator console at `/` on the admin listener: server-rendered HTML (maud), one
//! embedded stylesheet, readable without JavaScript (a running job's page refreshes itself
//! with a `<meta refresh>`).
//!
//! Login takes the admin token in a password field and opens a session (`auth::Sessions`,
//! kept in Redis so every worker behind a load balancer knows it): an HttpOnly,
//! SameSite=Strict cookie; while Redis fails, console pages answer 503 naming it. Every
//! form that changes something carries the session's CSRF token and is refused (403)
//! without it. Without a configured token the console is open only on a loopback listener;
//! elsewhere it is off.
//!
//! Pages: overview (rates, in flight, queue depths, apps), dead letters (groups, a list
//! filtered by cause and age, one letter), replay and purge (a dry-run count first, then a
//! job with live progress), event lookup, a user's grants. Everything they show or do
//! comes from `admin::ops`, as the JSON API's does. Every column table is built by
//! [`table`].

pub mod rates;

use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;

use super::api::{Api, DeadQuery};
use super::auth::{self, Access};
use super::ops;
use crate::dead_letters::{Action, Filter};
use crate::store::{StoreError, event_record};

const CSS: &str = include_str!("style.css");

/// What the console's handlers need.
pub struct Console {
    pub api: Arc<Api>,
    pub rates: Arc<rates::Sampler>,
}

/// The console's routes, at the root of the admin listener.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/console.css", get(css))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/dead", get(dead))
        .route("/dead/letter", get(letter))
        .route("/dead/act", post(act))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/events", get(event))
        .route("/grants", get(grants))
        .with_state(console)
}

type Pairs = Vec<(String, String)>;

fn field<'a>(pairs: &'a Pairs, name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// The CSRF token of the request's open console session. Extracting it refuses the request
/// when there is none: a redirect to the login form, or a page saying why (console off,
/// Redis unavailable).
struct Session(String);

impl FromRequestParts<Arc<Console>> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        c.session(&parts.headers).await.map(Session)
    }
}

// A refusal is a whole response, returned at once by the handler: no gain in boxing it.
#[allow(clippy::result_large_err)]
impl Console {
    /// The session's CSRF token, or the response that sends the browser to log in.
    async fn session(&self, headers: &HeaderMap) -> Result<String, Response> {
        if matches!(self.api.access, Access::Off) {
            return Err(off());
        }
        match self.api.sessions.csrf(headers).await {
            Ok(Some(csrf)) => Ok(csrf),
            Ok(None) => Err(Redirect::to("/login").into_response()),
            Err(e) => Err(redis_down(&e)),
        }
    }

    /// Like [`Console::session`], for a form: its `csrf` field must be the session's.
    async fn form_session(&self, headers: &HeaderMap, form: &Pairs) -> Result<String, Response> {
        let csrf = self.session(headers).await?;
        if auth::csrf_ok(&csrf, field(form, "csrf")) {
            Ok(csrf)
        } else {
            tracing::warn!("console form refused: missing or wrong CSRF token");
            Err((
                StatusCode::FORBIDDEN,
                page_bare(
                    "Refused",
                    html! { p.notice.error { "This form lacks its CSRF token (or the session changed). Go back, reload the page and try again." } },
                ),
            )
                .into_response())
        }
    }
}

/// The page for a console request while Redis, where the sessions are kept, fails.
fn redis_down(e: &StoreError) -> Response {
    let (status, _) = auth::redis_down(e);
    (
        status,
        page_bare(
            "Redis unavailable",
            html! { p.notice.error { "The console cannot check your session: Redis is unavailable, and console sessions are kept there. Reload this page once Redis is back (/readyz says when)." } },
        ),
    )
        .into_response()
}

fn off() -> Response {
    (
        StatusCode::FORBIDDEN,
        page_bare(
            "Console off",
            html! { p.notice.error { "The console is off: admin.listen is not loopback and no admin token is set (set admin.token_env or admin.token_file)." } },
        ),
    )
        .into_response()
}

/// A page without the navigation (login, refusals).
fn page_bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · wxpush" }
                link rel="stylesheet" href="/console.css";
            }
            body { main { (body) } }
        }
    }
}

/// A page with the navigation; `here` names the current section.
fn page(title: &str, here: &str, csrf: &str, refresh: Option<u32>, body: Markup) -> Markup {
    let nav = [
        ("/", "Overview"),
        ("/dead", "Dead letters"),
        ("/events", "Events"),
        ("/grants", "Grants"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = refresh { meta http-equiv="refresh" content=(s); }
                title { (title) " · wxpush" }
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    span.brand { "wxpush" }
                    @for (href, label) in nav {
                        a href=(href) class=[(label == here).then_some("here")] { (label) }
                    }
                    form method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        button.secondary type="submit" { "Log out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A table: a heading row from `cols`, then one row per item of `rows` (one cell per
/// column), scrolled sideways inside `div.wrap` when the screen is narrow. A column is its
/// heading and the classes of its cells (`num`, `mono`, `hide-narrow`, …); its heading
/// carries the layout ones too (`num` aligns it, `hide-narrow` hides the whole column).
fn table(
    id: Option<&str>,
    cols: &[(&str, &'static str)],
    rows: impl IntoIterator<Item = Vec<Markup>>,
) -> Markup {
    let class = |c: &'static str| (!c.is_empty()).then_some(c);
    let heading = |c: &str| {
        let layout: Vec<&str> = c
            .split_whitespace()
            .filter(|w| matches!(*w, "num" | "hide-narrow"))
            .collect();
        (!layout.is_empty()).then(|| layout.join(" "))
    };
    html! {
        div.wrap { table id=[id] {
            thead { tr { @for (head, c) in cols { th class=[heading(c)] { (head) } } } }
            tbody { @for row in rows {
                tr { @for ((_, c), cell) in cols.iter().zip(row) { td class=[class(c)] { (cell) } } }
            } }
        } }
    }
}

/// Percent-encodes a query value.
fn enc(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn age_text(seconds: Option<u64>) -> String {
    seconds.map_or_else(
        || "-".into(),
        |s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string(),
    )
}

// ----- login -----

async fn login_form(State(c): State<Arc<Console>>) -> Response {
    if matches!(c.api.access, Access::Off) {
        return off();
    }
    login_page(None).into_response()
}

fn login_page(problem: Option<&str>) -> Markup {
    page_bare(
        "Log in",
        html! {
            form.login method="post" action="/login" {
                h1 { "wxpush console" }
                @if let Some(p) = problem { p.notice.error { (p) } }
                label for="password" { "Admin token" }
                input #password type="password" name="password" autocomplete="current-password" autofocus;
                button type="submit" { "Log in" }
            }
        },
    )
}

async fn login(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<Pairs>,
) -> Response {
    if matches!(c.api.access, Access::Off) {
        return off();
    }
    if !c
        .api
        .access
        .password_ok(field(&form, "password").unwrap_or_default())
    {
        tracing::warn!("console login refused: wrong admin token");
        return (
            StatusCode::UNAUTHORIZED,
            login_page(Some("Wrong admin token.")),
        )
            .into_response();
    }
    let id = match c.api.sessions.open().await {
        Ok(id) => id,
        Err(e) => return redis_down(&e),
    };
    (
        [(header::SET_COOKIE, auth::session_cookie(&id, &headers))],
        Redirect::to("/"),
    )
        .into_response()
}

async fn logout(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<Pairs>,
) -> Response {
    if let Err(refused) = c.form_session(&headers, &form).await {
        return refused;
    }
    if let Err(e) = c.api.sessions.close(&headers).await {
        return redis_down(&e);
    }
    (
        [(header::SET_COOKIE, auth::cleared_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

// ----- overview -----

async fn overview(State(c): State<Arc<Console>>, Session(csrf): Session) -> Response {
    let ctx = &c.api.ctx;
    let (depths, apps) = tokio::join!(ops::queue_depths(ctx), ops::apps(ctx));
    let r = c.rates.rates();
    let health = &ctx.health;
    let body = html! {
        div.cards {
            div.card { span.muted { "consumed /s" } b { (format!("{:.1}", r.consumed_per_s)) } }
            div.card { span.muted { "sent /s" } b { (format!("{:.1}", r.sent_per_s)) } }
            div.card { span.muted { "in flight" } b { (r.in_flight) } }
            div.card { span.muted { "ready" } b class=(if health.ready() { "ok" } else { "bad" }) { (if health.ready() { "yes" } else { "no" }) } }
        }
        h2 { "Queues" }
        (table(None, &[("queue", ""), ("name", "mono hide-narrow"), ("ready", "num")],
            depths.iter().map(|(label, queue, ready)| vec![
                html! { @if label == "dead letters" { a href="/dead" { (label) } } @else { (label) } },
                html! { (queue) },
                html! { (or_dash(*ready)) },
            ])))
        h2 { "Apps" }
        (table(None, &[("app", ""), ("appid", "mono hide-narrow"), ("token age", ""), ("fingerprint", "mono"),
                        ("parked", ""), ("why", ""), ("grants known", "num")],
            apps.iter().map(|a| vec![
                html! { (a.app) },
                html! { (a.appid) },
                html! { (age_text(a.token_age_seconds)) },
                html! { (or_dash(a.token_fingerprint.as_deref())) },
                html! { @match &a.parked { Some(p) => span.bad { (p) " for " (age_text(a.parked_for_seconds)) }, None => span.ok { "no" } } },
                html! { (or_dash(a.parked_why.as_deref())) },
                html! { (or_dash(a.grants_known)) @if a.grants_capped { "+" } },
            ])))
    };
    page("Overview", "Overview", &csrf, Some(10), body).into_response()
}

// ----- dead letters -----

/// The filter's criteria as the forms carry them: (field name, label, value, input size).
fn criteria(q: &DeadQuery) -> [(&'static str, &'static str, String, u8); 6] {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    [
        ("errcode", "errcode", v(&q.errcode), 7),
        ("class", "class", v(&q.class), 9),
        ("type", "type", v(&q.kind), 20),
        ("app", "app", v(&q.app), 9),
        ("older_than", "older than", v(&q.older_than), 7),
        ("newer_than", "newer than", v(&q.newer_than), 7),
    ]
}

/// Whether a form field is part of the filter a dry run passes on to its run.
fn is_filter_field(name: &str) -> bool {
    matches!(
        name,
        "errcode" | "class" | "type" | "app" | "older_than" | "newer_than" | "ids" | "limit"
    )
}

fn filter_fields(q: &DeadQuery) -> Markup {
    html! {
        @for (name, label, value, size) in criteria(q) {
            label {
                (label)
                input type="text" name=(name) value=(value) size=(size)
                    placeholder=[name.ends_with("_than").then_some("e.g. 2h")];
            }
        }
    }
}

/// The link of a group: its cause, within the page's age criteria.
fn group_query(g: &ops::Group, q: &DeadQuery) -> String {
    let v = |o: &Option<String>| enc(o.as_deref().unwrap_or_default());
    format!(
        "errcode={}&class={}&app={}&type={}&older_than={}&newer_than={}",
        g.errcode.map(|c| c.to_string()).unwrap_or_default(),
        v(&g.class),
        v(&g.app),
        v(&g.kind),
        v(&q.older_than),
        v(&q.newer_than),
    )
}

fn hidden_filter(q: &DeadQuery) -> Markup {
    html! {
        @for (name, _, value, _) in criteria(q) {
            input type="hidden" name=(name) value=(value);
        }
    }
}

async fn dead(
    State(c): State<Arc<Console>>,
    Session(csrf): Session,
    Query(q): Query<DeadQuery>,
) -> Response {
    let (filter, limit) = match (q.filter(), q.limit()) {
        (Ok(f), Ok(l)) => (f, l),
        (Err(e), _) | (_, Err(e)) => {
            return page(
                "Dead letters",
                "Dead letters",
                &csrf,
                None,
                html! { p.notice.error { (e) } },
            )
            .into_response();
        }
    };
    let view = match ops::dead(&c.api.ctx, &filter, limit.min(200)).await {
        Ok(v) => v,
        Err(e) => {
            return page(
                "Dead letters",
                "Dead letters",
                &csrf,
                None,
                html! { p.notice.error { "Cannot read the dead letters: " (format!("{e:#}")) } },
            )
            .into_response();
        }
    };
    let now = OffsetDateTime::now_utc();
    let body = html! {
        form.inline method="get" action="/dead" {
            (filter_fields(&q))
            button type="submit" { "Filter" }
            a href="/dead" { "clear" }
        }
        p.muted {
            (view.total) " matching of " (view.in_queue) " in the queue"
            @if view.scanned < view.in_queue {
                " (counted over the first " (view.scanned) "; `admin.dead_scan_max` sets how many a listing reads)"
            }
        }
        h2 { "By cause" }
        (table(Some("groups"), &[("class", ""), ("errcode", "errcode"), ("app", ""), ("type", ""), ("count", "num"),
                                 ("oldest", "hide-narrow"), ("newest", "hide-narrow")],
            view.groups.iter().map(|g| vec![
                html! { (or_dash(g.class.as_deref())) },
                html! { a href={ "/dead?" (group_query(g, &q)) } { (or_dash(g.errcode)) } },
                html! { (or_dash(g.app.as_deref())) },
                html! { (or_dash(g.kind.as_deref())) },
                html! { (g.count) },
                html! { (or_dash(g.oldest.as_deref())) },
                html! { (or_dash(g.newest.as_deref())) },
            ])))
        h2 { "Act on all " (view.total) " matching" }
        form.inline method="post" action="/dead/act" {
            input type="hidden" name="csrf" value=(csrf);
            (hidden_filter(&q))
            label { "at most" input type="number" name="limit" min="1" placeholder="all"; }
            button #replay-filter type="submit" name="action" value="replay" { "Replay…" }
            button.danger #purge-filter type="submit" name="action" value="purge" { "Purge…" }
        }
        h2 { "Letters" @if view.letters.len() < view.total as usize { " (first " (view.letters.len()) ")" } }
        form method="post" action="/dead/act" {
            input type="hidden" name="csrf" value=(csrf);
            (table(Some("letters"), &[("", ""), ("#", "num"), ("event id", "mono"), ("type", ""), ("app", ""), ("class", ""),
                                      ("errcode", ""), ("errmsg", "hide-narrow"), ("attempts", "num"), ("age", "")],
                view.letters.iter().map(|l| vec![
                    html! { @if let Some(id) = &l.id { input type="checkbox" name="ids" value=(id); } },
                    html! { (l.position) },
                    html! { a href={ "/dead/letter?id=" (enc(&l.id.clone().unwrap_or_else(|| format!("#{}", l.position)))) } { (l.id_label()) } },
                    html! { (or_dash(l.kind.as_deref())) },
                    html! { (or_dash(l.app.as_deref())) },
                    html! { (or_dash(l.class.as_deref())) },
                    html! { (or_dash(l.errcode)) },
                    html! { (or_dash(l.errmsg.as_deref())) },
                    html! { (or_dash(l.attempts)) },
                    html! { (l.age(now).map_or_else(|| "-".into(), |a| age_text(Some(a.as_secs())))) },
                ])))
            @if !view.letters.is_empty() {
                button #replay-selected type="submit" name="action" value="replay" { "Replay selected…" }
            }
        }
    };
    page("Dead letters", "Dead letters", &csrf, None, body).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct IdQuery {
    id: Option<String>,
}

async fn letter(
    State(c): State<Arc<Console>>,
    Session(csrf): Session,
    Query(q): Query<IdQuery>,
) -> Response {
    let id = q.id.unwrap_or_default();
    let found = ops::show(&c.api.ctx, &id).await;
    let now = OffsetDateTime::now_utc();
    let body = match found {
        Err(e) => html! { p.notice.error { "Cannot read the dead letters: " (format!("{e:#}")) } },
        Ok(found) if found.is_empty() => {
            html! { p.notice.error { "No dead letter with id " code { (id) } " (replayed or purged meanwhile?)." } }
        }
        Ok(found) => html! { @for r in &found {
            @let l = &r.letter;
            table {
                tbody {
                    tr { th { "position" } td { (l.position) } }
                    tr { th { "event id" } td.mono { (l.id_label()) } }
                    tr { th { "type" } td { (or_dash(l.kind.as_deref())) } }
                    tr { th { "app" } td { (or_dash(l.app.as_deref())) } }
                    tr { th { "class" } td { (or_dash(l.class.as_deref())) } }
                    tr { th { "errcode" } td { (or_dash(l.errcode)) } }
                    tr { th { "errmsg" } td { (or_dash(l.errmsg.as_deref())) } }
                    tr { th { "attempts" } td { (or_dash(l.attempts)) } }
                    tr { th { "first failed" } td { (or_dash(l.first_failed_at.as_deref())) } }
                    tr { th { "dead since" } td { (or_dash(l.dead_at_raw.as_deref())) " (" (l.age(now).map_or_else(|| "-".into(), |a| age_text(Some(a.as_secs())))) ")" } }
                    tr { th { "replayed before" } td { (l.replayed) } }
                    tr { th { "letter id" } td { (or_dash(l.letter_id.as_deref())) } }
                    @if l.copies > 1 {
                        tr { th { "copies" } td { (l.copies) " (one letter: a replay moves it once and drops the copies)" } }
                    }
                }
            }
            h2 { "Headers" }
            pre #headers { (serde_json::to_string_pretty(&crate::dead_letters::view::table_json(&crate::broker::headers::of(&r.properties))).unwrap_or_default()) }
            h2 { "Body (" (r.body.len()) " bytes)" }
            pre #body { @match std::str::from_utf8(&r.body) {
                Ok(text) => (pretty_json(text)),
                Err(_) => (r.body.escape_ascii().to_string()),
            } }
            @if let Some(id) = &l.id {
                form.inline method="post" action="/dead/act" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="ids" value=(id);
                    button type="submit" name="action" value="replay" { "Replay this letter…" }
                    button.danger type="submit" name="action" value="purge" { "Purge…" }
                }
            }
        } },
    };
    page("Dead letter", "Dead letters", &csrf, None, body).into_response()
}

fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned())
}

/// The filter a form carries: the criteria, or selected ids.
fn form_filter(form: &Pairs) -> Result<(Filter, Option<u64>), String> {
    let one = |name: &str| field(form, name).map(str::to_owned);
    let query = DeadQuery {
        errcode: one("errcode"),
        class: one("class"),
        kind: one("type"),
        app: one("app"),
        id: None,
        older_than: one("older_than"),
        newer_than: one("newer_than"),
        limit: None,
    };
    let mut filter = query.filter()?;
    filter.ids = form
        .iter()
        .filter(|(k, v)| k == "ids" && !v.is_empty())
        .map(|(_, v)| v.clone())
        .collect();
    let limit = match field(form, "limit")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(l) => Some(
            l.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("\"at most\" must be a count of 1 or more, not `{l}`"))?,
        ),
    };
    Ok((filter, limit))
}

fn describe(filter: &Filter) -> String {
    let mut parts = Vec::new();
    if !filter.errcodes.is_empty() {
        parts.push(format!("errcode {:?}", filter.errcodes));
    }
    for (name, values) in [
        ("class", &filter.classes),
        ("type", &filter.types),
        ("app", &filter.apps),
    ] {
        if !values.is_empty() {
            parts.push(format!("{name} {}", values.join(", ")));
        }
    }
    for (name, age) in [
        ("dead for at least", filter.older_than),
        ("dead for less than", filter.newer_than),
    ] {
        if let Some(age) = age {
            parts.push(format!("{name} {}", humantime::format_duration(age)));
        }
    }
    if !filter.ids.is_empty() {
        parts.push(format!("{} selected event id(s)", filter.ids.len()));
    }
    if parts.is_empty() {
        "every dead letter".into()
    } else {
        parts.join("; ")
    }
}

/// Replay or purge: `step=count` (the default) shows the dry-run count and asks; `step=run`
/// starts the job and goes to its page.
async fn act(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<Pairs>,
) -> Response {
    let csrf = match c.form_session(&headers, &form).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let action = match field(&form, "action") {
        Some("purge") => Action::Purge,
        _ => Action::Replay,
    };
    let verb = if action == Action::Purge {
        "Purge"
    } else {
        "Replay"
    };
    let (filter, limit) = match form_filter(&form) {
        Ok(f) => f,
        Err(e) => {
            return page(
                verb,
                "Dead letters",
                &csrf,
                None,
                html! { p.notice.error { (e) } },
            )
            .into_response();
        }
    };
    if field(&form, "step") == Some("run") {
        if action == Action::Purge && field(&form, "confirm") != Some("yes") {
            return page(
                verb,
                "Dead letters",
                &csrf,
                None,
                html! { p.notice.error { "Tick the confirmation box to purge." } },
            )
            .into_response();
        }
        let job = c.api.jobs.start(c.api.ctx.clone(), filter, action, limit);
        return Redirect::to(&format!("/jobs/{}", job.id)).into_response();
    }
    // The dry run: count what the filter selects now.
    let count = c
        .api
        .jobs
        .start(c.api.ctx.clone(), filter.clone(), Action::Count, limit);
    count.wait().await;
    let t = count.tally();
    let body = html! {
        @if let Some(e) = count.error() { p.notice.error { "The count failed: " (e) } }
        p #dry-run { "Dry run: " strong #matched { (t.done) } " dead letter(s) of " (t.total) " match " (describe(&filter))
            @if let Some(l) = limit { " (at most " (l) ")" } "." }
        @if t.done > 0 {
            form.inline method="post" action="/dead/act" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="action" value=(if action == Action::Purge { "purge" } else { "replay" });
                input type="hidden" name="step" value="run";
                @for (k, v) in form.iter().filter(|(k, _)| is_filter_field(k)) {
                    input type="hidden" name=(k) value=(v);
                }
                @if action == Action::Purge {
                    label { input type="checkbox" name="confirm" value="yes"; " drop them for good" }
                    button.danger #run type="submit" { "Purge " (t.done) " letter(s)" }
                } @else {
                    button #run type="submit" { "Replay " (t.done) " letter(s) to the events queue" }
                }
            }
        }
        p { a href="/dead" { "Back to the dead letters" } }
    };
    page(
        &format!("{verb}: dry run"),
        "Dead letters",
        &csrf,
        None,
        body,
    )
    .into_response()
}

async fn job(
    State(c): State<Arc<Console>>,
    Session(csrf): Session,
    Path(id): Path<String>,
) -> Response {
    let Some(job) = c.api.jobs.get(&id) else {
        return page(
            "Job",
            "Dead letters",
            &csrf,
            None,
            html! { p.notice.error { "No job " (id) " on this worker. A job's progress is kept by the worker that runs it: behind a load balancer this page may have reached another one (the job runs on regardless; the counts on the dead letters page show its effect)." } },
        )
        .into_response();
    };
    let t = job.tally();
    let state = job.state();
    let running = state == "running";
    let done_word = match job.action {
        Action::Replay => "replayed",
        Action::Purge => "purged",
        Action::Count => "counted",
    };
    let body = html! {
        p { "Filter: " (describe(&job.filter)) @if let Some(l) = job.limit { "; at most " (l) } }
        p #state { "State: " strong class=(match state { "done" => "ok", "failed" => "bad", _ => "warn" }) { (state) } }
        progress max=(t.total.max(1)) value=(t.scanned) {}
        table { tbody {
            tr { th { "in the queue at start" } td.num { (t.total) } }
            tr { th { "scanned" } td.num { (t.scanned) } }
            tr { th { "matched" } td.num { (t.matched) } }
            tr { th { (done_word) } td.num #done { (t.done) } }
            @if t.unroutable > 0 { tr { th { "unroutable (kept)" } td.num.bad { (t.unroutable) } } }
        } }
        @if let Some(e) = job.error() { p.notice.error { (e) } }
        @if running {
            form method="post" action={ "/jobs/" (job.id) "/cancel" } {
                input type="hidden" name="csrf" value=(csrf);
                button.secondary type="submit" { "Cancel" }
            }
        } @else {
            p { a href="/dead" { "Back to the dead letters" } }
        }
    };
    let verb = match job.action {
        Action::Replay => "Replay",
        Action::Purge => "Purge",
        Action::Count => "Count",
    };
    page(
        &format!("{verb} job {}", job.id),
        "Dead letters",
        &csrf,
        running.then_some(1),
        body,
    )
    .into_response()
}

async fn cancel(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Pairs>,
) -> Response {
    if let Err(r) = c.form_session(&headers, &form).await {
        return r;
    }
    if let Some(job) = c.api.jobs.get(&id) {
        job.cancel.cancel();
    }
    Redirect::to(&format!("/jobs/{id}")).into_response()
}

// ----- events and grants -----

async fn event(
    State(c): State<Arc<Console>>,
    Session(csrf): Session,
    Query(q): Query<IdQuery>,
) -> Response {
    let id = q.id.unwrap_or_default().trim().to_owned();
    let record = if id.is_empty() {
        None
    } else {
        let (redis, keys) = (&c.api.ctx.hot_path, &c.api.ctx.keys);
        Some(
            redis
                .run("event record", async |conn| {
                    event_record::trace(conn, keys, &id).await
                })
                .await,
        )
    };
    let body = html! {
        form.inline method="get" action="/events" {
            label { "event id" input #event-id type="text" name="id" value=(id) size="40"; }
            button #lookup type="submit" { "Look up" }
        }
        @match record {
            None => {},
            Some(Err(e)) => p.notice.error { "Redis is unavailable: " (e) },
            Some(Ok(None)) => p.notice.error { "No delivery record for " code { (id) } " (never received, or older than policy.idempotency_ttl)." },
            Some(Ok(Some(record))) => {
                @let v = serde_json::to_value(&record).unwrap_or_default();
                @if let serde_json::Value::Object(fields) = &v {
                    table #record { tbody { @for (k, v) in fields {
                        @if !matches!(v, serde_json::Value::Array(_) | serde_json::Value::Object(_)) {
                            tr { th { (k.strip_suffix("_ms").unwrap_or(k)) } td.mono { (record_cell(k, v)) } }
                        }
                    } } }
                }
                h2 { "Record" }
                pre #record-json { (serde_json::to_string_pretty(&v).unwrap_or_default()) }
            },
        }
    };
    page("Event lookup", "Events", &csrf, None, body).into_response()
}

/// A delivery record's value as text: `*_ms` times as RFC 3339.
fn record_cell(key: &str, value: &serde_json::Value) -> String {
    use time::format_description::well_known::Rfc3339;
    match value {
        serde_json::Value::Number(n) if key.ends_with("_ms") => n
            .as_u64()
            .and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| n.to_string()),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct GrantQuery {
    openid: Option<String>,
    app: Option<String>,
}

async fn grants(
    State(c): State<Arc<Console>>,
    Session(csrf): Session,
    Query(q): Query<GrantQuery>,
) -> Response {
    let openid = q.openid.unwrap_or_default().trim().to_owned();
    let app = q.app.filter(|a| !a.trim().is_empty());
    let rows = if openid.is_empty() {
        None
    } else {
        Some(ops::user_grants(&c.api.ctx, &openid, app.as_deref()).await)
    };
    let apps: Vec<String> = c.api.ctx.tokens.apps().map(str::to_owned).collect();
    let body = html! {
        form.inline method="get" action="/grants" {
            label { "openid" input type="text" name="openid" value=(openid) size="32"; }
            label { "app" select name="app" {
                option value="" { "all" }
                @for a in &apps { option value=(a) selected[app.as_deref() == Some(a.as_str())] { (a) } }
            } }
            button type="submit" { "Show grants" }
        }
        @match rows {
            None => {},
            Some(Err(e)) => p.notice.error { (format!("{e:#}")) },
            Some(Ok(rows)) if rows.is_empty() => p { "No grants recorded for " code { (openid) } " (the ledger knows only what WeChat pushed since wxpush listened)." },
            Some(Ok(rows)) => (table(None, &[("app", ""), ("template", "mono"), ("kind", ""), ("grants", "num"), ("last choice", "")],
                rows.iter().map(|(app, r)| vec![
                    html! { (app) },
                    html! { (r.template_id) },
                    html! { (r.kind.map_or("-", |k| k.label())) },
                    html! { (r.count) },
                    html! { (or_dash(r.choice.as_deref())) },
                ]))),
        }
    };
    page("Grants", "Grants", &csrf, None, body).into_response()
}
