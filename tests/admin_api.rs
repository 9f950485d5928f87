//! The admin JSON API against a real worker, RabbitMQ and Redis: 401 without the token,
//! 403 for a console session's state-changing call without its CSRF token, a console
//! session used on a second worker (sessions live in Redis) until a logout or its expiry,
//! 503 naming Redis for a session while Redis is down (the bearer token still works),
//! dead-letter filters and groups, the age filter (API and console forms), a dry run, a
//! purge (only with `"confirm": true`), two replays of the same filter at once (no letter
//! replayed twice), background jobs, apps and grants.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use deadpool_redis::redis;
use serde_json::{Value, json};
use wxpush::worker::Worker;

const TOKEN_ENV: &str = "WXPUSH_TEST_ADMIN_TOKEN_API";
const TOKEN: &str = "test-admin-token-api-7c1e";

async fn worker_with_token(app: &TestApp) -> Worker {
    worker_with_token_and(app, |_| {}).await
}

/// A worker with the admin token, its config changed by `tweak`.
async fn worker_with_token_and(app: &TestApp, tweak: impl FnOnce(&mut Config)) -> Worker {
    // SAFETY: every test in this process sets the same value.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    let mut config = app.config.clone();
    config.admin.token_env = Some(TOKEN_ENV.into());
    tweak(&mut config);
    Worker::start(config).await.expect("worker starts")
}

struct Admin {
    base: String,
    client: reqwest::Client,
}

impl Admin {
    fn of(worker: &Worker) -> Admin {
        Admin {
            base: format!("http://{}", worker.admin_addr),
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("admin answers");
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin answers");
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }
}

/// Asserts that an answer is a 400 whose error names `what`.
fn refused_naming((status, body): (u16, Value), what: &str) {
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(what), "the error names {what}: {body}");
}

/// Posts a form of plain values (none here needs escaping), with the session cookie if
/// given.
async fn post_form(
    client: &reqwest::Client,
    url: String,
    cookie: Option<&str>,
    pairs: &[(&str, &str)],
) -> reqwest::Response {
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut request = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

/// A client that shows redirects instead of following them (the console answers a request
/// without an open session with a redirect to `/login`).
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The answer to a console login with `password`.
async fn login_answer(client: &reqwest::Client, url: String, password: &str) -> reqwest::Response {
    post_form(client, url, None, &[("password", password)]).await
}

/// Logs in to the console at `base`: the session cookie (`wxpush_session=…`).
async fn log_in(client: &reqwest::Client, base: &str) -> String {
    let login = login_answer(client, format!("{base}/login"), TOKEN).await;
    assert_eq!(login.status().as_u16(), 303, "login accepted");
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

/// `GET {base}{path}` with the session cookie (and no bearer token).
async fn get_with_cookie(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: &str,
) -> reqwest::Response {
    client
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// A console page with the cookie: its status, the CSRF token its forms carry, its HTML.
async fn console_page(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: &str,
) -> (u16, Option<String>, String) {
    let page = get_with_cookie(client, base, path, cookie).await;
    let status = page.status().as_u16();
    let html = page.text().await.unwrap();
    let csrf = html
        .split_once(r#"name="csrf" value=""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(token, _)| token.to_owned());
    (status, csrf, html)
}

/// A JSON `POST` with the session cookie and, if given, its CSRF token (no bearer token).
async fn post_with_cookie(
    client: &reqwest::Client,
    url: String,
    cookie: &str,
    csrf: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = client.post(url).header("cookie", cookie).json(body);
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    request.send().await.unwrap()
}

/// The status of `GET /api/queues` with the session cookie (no bearer token).
async fn api_with_cookie(client: &reqwest::Client, base: &str, cookie: &str) -> u16 {
    let answer = get_with_cookie(client, base, "/api/queues", cookie).await;
    answer.status().as_u16()
}

/// Whether the console at `base` refuses the cookie: `/` sends to the login form and the
/// API answers 401.
async fn refused(client: &reqwest::Client, base: &str, cookie: &str) -> bool {
    let page = get_with_cookie(client, base, "/", cookie).await;
    let to_login = page.status().as_u16() == 303 && page.headers()["location"] == "/login";
    to_login && api_with_cookie(client, base, cookie).await == 401
}

/// Logs out with the cookie and the session's CSRF token.
async fn log_out(client: &reqwest::Client, base: &str, cookie: &str, csrf: &str) {
    let out = post_form(
        client,
        format!("{base}/logout"),
        Some(cookie),
        &[("csrf", csrf)],
    )
    .await;
    assert_eq!(out.status().as_u16(), 303);
    assert_eq!(out.headers()["location"], "/login");
}

/// The Redis key of a session: `{prefix}:console:session:<hex SHA-1 of the id>`.
fn session_key(prefix: &str, cookie: &str) -> String {
    use sha1::Digest;
    let id = cookie.strip_prefix("wxpush_session=").unwrap();
    let digest = sha1::Sha1::digest(id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}:console:session:{hex}")
}

#[tokio::test]
async fn a_console_session_works_on_every_worker_until_logout_or_expiry() {
    let app = TestApp::start("api-replicas").await;
    // Two replicas of one deployment: same config, same Redis and key prefix.
    let (one, two) = (worker_with_token(&app).await, worker_with_token(&app).await);
    let (admin_a, admin_b) = (Admin::of(&one), Admin::of(&two));
    let (a, b) = (admin_a.base.clone(), admin_b.base.clone());
    let client = no_redirects();
    let mut redis = redis_conn(&app.config.redis).await;

    // Log in on one; the session is in Redis as a digest of its id, with the CSRF token.
    let cookie = log_in(&client, &a).await;
    let (status, csrf, _) = console_page(&client, &a, "/", &cookie).await;
    let csrf = csrf.expect("the overview carries the CSRF token");
    assert_eq!(status, 200);
    let key = session_key(&app.prefix, &cookie);
    let (stored, ttl): (Option<String>, i64) = redis::pipe()
        .cmd("GET")
        .arg(&key)
        .cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(csrf.as_str()), "{key}");
    assert!((11 * 3600..=12 * 3600).contains(&ttl), "TTL {ttl}");
    let id = cookie.strip_prefix("wxpush_session=").unwrap();
    assert!(!key.contains(id), "the key names a digest, not the id");

    // A has a job of its own (the first of each worker).
    let (status, _) = admin_a.post("/api/replay", json!({"dry_run": true})).await;
    assert_eq!(status, 200);

    // The other worker knows the session: its pages, and a state change with the token.
    let (status, other_csrf, _) = console_page(&client, &b, "/dead", &cookie).await;
    assert_eq!((status, other_csrf.as_deref()), (200, Some(csrf.as_str())));
    let dry_run = json!({"dry_run": true});
    let dry = post_with_cookie(
        &client,
        format!("{b}/api/replay"),
        &cookie,
        Some(&csrf),
        &dry_run,
    )
    .await;
    assert_eq!(dry.status().as_u16(), 200);
    // Its job is B's: A, asked for that job, has none (not its own first job numbered alike).
    let job = dry.json::<Value>().await.unwrap()["job"].clone();
    let (on_b, _) = admin_b
        .get(&format!("/api/jobs/{}", job.as_str().unwrap()))
        .await;
    let (on_a, _) = admin_a
        .get(&format!("/api/jobs/{}", job.as_str().unwrap()))
        .await;
    assert_eq!((on_b, on_a), (200, 404), "job {job}");
    let no_token =
        post_with_cookie(&client, format!("{b}/api/replay"), &cookie, None, &dry_run).await;
    assert_eq!(
        no_token.status().as_u16(),
        403,
        "still needs its CSRF token"
    );

    // A logout on the second ends it on both.
    log_out(&client, &b, &cookie, &csrf).await;
    assert!(refused(&client, &a, &cookie).await, "logged out on A");
    assert!(refused(&client, &b, &cookie).await, "logged out on B");
    let gone: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!gone, "the logout deleted the key");

    // And the other way round: logged in on the second, out on the first.
    let cookie = log_in(&client, &b).await;
    let (_, csrf, _) = console_page(&client, &a, "/", &cookie).await;
    log_out(&client, &a, &cookie, &csrf.expect("open on A")).await;
    assert!(refused(&client, &b, &cookie).await, "logged out on B");

    // An unknown session, and an expired one: refused as when never logged in.
    assert!(refused(&client, &a, "wxpush_session=0123456789abcdef").await);
    let cookie = log_in(&client, &a).await;
    assert_eq!(api_with_cookie(&client, &b, &cookie).await, 200);
    let _: () = redis::cmd("PEXPIRE")
        .arg(session_key(&app.prefix, &cookie))
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    eventually(
        "the expired session refused",
        Duration::from_secs(10),
        || async {
            (refused(&client, &a, &cookie).await && refused(&client, &b, &cookie).await)
                .then_some(())
        },
    )
    .await;
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn the_api_refuses_without_the_token_and_a_session_without_its_csrf_token() {
    let app = TestApp::start("api-auth").await;
    let worker = worker_with_token(&app).await;
    let admin = Admin::of(&worker);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/api/dead", "/api/apps", "/api/jobs", "/api/queues"] {
        let r = client
            .get(format!("{}{path}", admin.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    let r = client
        .post(format!("{}/api/replay", admin.base))
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // A console login: a wrong token is refused, the right one sets the cookie.
    let wrong = login_answer(&client, format!("{}/login", admin.base), "nope").await;
    assert_eq!(wrong.status().as_u16(), 401);
    let login = login_answer(&client, format!("{}/login", admin.base), TOKEN).await;
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    // Reading with the cookie works; changing state without the CSRF token does not.
    let read = client
        .get(format!("{}/api/queues", admin.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    let purge = json!({"confirm": true});
    let url = format!("{}/api/purge", admin.base);
    let refused = post_with_cookie(&client, url, &session, None, &purge).await;
    assert_eq!(refused.status().as_u16(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");
    // The console's own forms too.
    let form = post_form(
        &client,
        format!("{}/dead/act", admin.base),
        Some(&session),
        &[("action", "purge"), ("step", "run"), ("confirm", "yes")],
    )
    .await;
    assert_eq!(form.status().as_u16(), 403);
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn filters_groups_dry_run_and_purge() {
    const N: usize = 100;
    let app = TestApp::start("api-dead").await;
    let letters = mixed_dead_letters(&app.prefix, N);
    app.fill_mixed(&letters).await;
    let worker = worker_with_token(&app).await;
    let admin = Admin::of(&worker);

    let (status, all) = admin.get("/api/dead?limit=5").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total"], 100);
    assert_eq!(all["letters"].as_array().unwrap().len(), 5);
    assert_eq!(all["letters"][0]["id"], letters[0].id.as_str());
    let groups = all["groups"].as_array().unwrap();
    let by_errcode: BTreeSet<(i64, u64)> = groups
        .iter()
        .map(|g| (g["errcode"].as_i64().unwrap(), g["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        by_errcode,
        BTreeSet::from([(40003, 40), (-1, 30), (47003, 30)])
    );
    assert_eq!(groups[0]["class"], "permanent");
    assert_eq!(groups[0]["type"], "order.paid");
    assert_eq!(groups[0]["app"], "default");
    assert!(groups[0]["oldest"].is_string() && groups[0]["newest"].is_string());

    let (_, minus_one) = admin
        .get("/api/dead?errcode=-1&class=transient&type=order.paid&app=default")
        .await;
    assert_eq!(minus_one["total"], 30);
    let (_, none) = admin.get("/api/dead?errcode=-1&class=permanent").await;
    assert_eq!(none["total"], 0);
    refused_naming(admin.get("/api/dead?errcode=abc").await, "errcode `abc`");
    let (status, _) = admin.get("/api/dead?colour=red").await;
    assert_eq!(status, 400, "unknown parameters are refused");

    let (status, one) = admin.get(&format!("/api/dead/{}", letters[4].id)).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["letters"][0]["errcode"], -1);
    assert_eq!(one["letters"][0]["headers"]["x-wxpush-error"], "transient");
    assert!(
        one["letters"][0]["body"]
            .as_str()
            .unwrap()
            .contains(&letters[4].id)
    );

    // A dry run counts and changes nothing.
    let (status, dry) = admin
        .post("/api/replay", json!({"errcode": -1, "dry_run": true}))
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["matched"].as_u64(), dry["replayed"].as_u64()),
        (Some(30), Some(0))
    );
    assert_eq!(app.dead_len().await, 100);

    // A purge needs "confirm": true.
    refused_naming(
        admin.post("/api/purge", json!({"errcode": 47003})).await,
        "confirm",
    );
    let (status, purged) = admin
        .post(
            "/api/purge",
            json!({"errcode": 47003, "limit": 10, "confirm": true}),
        )
        .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["purged"], 10);
    let (_, after) = admin.get("/api/dead").await;
    assert_eq!(after["total"], 90);
    assert_eq!(app.mock.sends().len(), 0, "a purge sends nothing");

    // Replay a selection by id: exactly those are sent.
    let chosen = [letters[0].id.clone(), letters[1].id.clone()];
    let (status, replayed) = admin.post("/api/replay", json!({"ids": chosen})).await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"], 2);
    let sends = app.sent(2).await;
    let to: BTreeSet<String> = sends
        .iter()
        .map(|s| s.body["touser"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(to, BTreeSet::from([openid(0), openid(1)]));
    let (status, bad) = admin.post("/api/replay", json!({"errcodes": [1]})).await;
    assert_eq!(status, 400, "{bad}");
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn without_redis_the_console_answers_503_naming_it_and_the_bearer_token_still_works() {
    let app = TestApp::start("api-no-redis").await;
    // Nothing listens on port 1: every Redis call fails.
    let worker = worker_with_token_and(&app, |config| {
        use_redis(&mut config.redis, RedisMode::Single);
        config.redis.url = "redis://127.0.0.1:1".into();
    })
    .await;
    let admin = Admin::of(&worker);
    let client = no_redirects();
    let redis_named = |text: &str| text.contains("Redis is unavailable");

    let login = login_answer(&client, format!("{}/login", admin.base), TOKEN).await;
    assert_eq!(login.status().as_u16(), 503);
    assert!(redis_named(&login.text().await.unwrap()));
    let cookie = "wxpush_session=0123456789abcdef";
    let (status, _, page) = console_page(&client, &admin.base, "/dead", cookie).await;
    assert_eq!(status, 503);
    assert!(redis_named(&page), "{page}");
    let api = get_with_cookie(&client, &admin.base, "/api/queues", cookie).await;
    assert_eq!(api.status().as_u16(), 503);
    let body: Value = api.json().await.unwrap();
    assert!(redis_named(body["error"].as_str().unwrap()), "{body}");

    // Without a cookie Redis is not asked: the login form, and the bearer-token API.
    let page = get_with_cookie(&client, &admin.base, "/", "").await;
    assert_eq!(page.status().as_u16(), 303);
    let (status, queues) = admin.get("/api/queues").await;
    assert_eq!(status, 200, "{queues}");
    assert_eq!(queues["queues"][0]["label"], "events");
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn an_age_filter_selects_only_the_old_letters() {
    let app = TestApp::start("api-age").await;
    // 20 letters dead for an hour, then 10 dead for three days.
    let recent = mixed_dead_letters(&app.prefix, 20);
    let three_days_ago = (time::OffsetDateTime::now_utc() - time::Duration::days(3))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let old: Vec<MixedDead> = mixed_dead_letters(&format!("{}-old", app.prefix), 10)
        .into_iter()
        .map(|mut l| {
            let headers = dead_headers(
                l.class,
                Some(l.errcode),
                l.errmsg,
                l.attempts,
                &three_days_ago,
            );
            l.properties = l.properties.with_headers(headers);
            l
        })
        .collect();
    app.fill_mixed(&[recent.clone(), old.clone()].concat())
        .await;
    let worker = worker_with_token(&app).await;
    let admin = Admin::of(&worker);
    let ids = |listing: &Value| -> BTreeSet<String> {
        listing["letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let (status, older) = admin.get("/api/dead?older_than=1day").await;
    assert_eq!(status, 200, "{older}");
    assert_eq!(
        (older["total"].as_u64(), older["in_queue"].as_u64()),
        (Some(10), Some(30))
    );
    assert_eq!(ids(&older), old.iter().map(|l| l.id.clone()).collect());
    let (_, newer) = admin.get("/api/dead?newer_than=1day&errcode=40003").await;
    assert_eq!(newer["total"], 8, "{newer}");
    assert!(
        ids(&newer).iter().all(|id| !id.contains("-old-")),
        "{newer}"
    );
    refused_naming(
        admin.get("/api/dead?older_than=soon").await,
        "older_than `soon`",
    );

    // Replay and purge take it too.
    let (_, dry) = admin
        .post(
            "/api/replay",
            json!({"older_than": "1day", "dry_run": true}),
        )
        .await;
    assert_eq!(dry["matched"], 10, "{dry}");
    let (status, purged) = admin
        .post(
            "/api/purge",
            json!({"older_than": "1day", "errcode": 40003, "confirm": true}),
        )
        .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["purged"], 4);
    let (_, left) = admin.get("/api/dead").await;
    assert_eq!(left["total"], 26, "only old 40003 letters purged");

    // The console's filter, and its replay form's dry run, carry the age.
    let client = no_redirects();
    let cookie = log_in(&client, &admin.base).await;
    let (status, csrf, listing) =
        console_page(&client, &admin.base, "/dead?older_than=1day", &cookie).await;
    let csrf = csrf.expect("the dead letters page carries the CSRF token");
    assert_eq!(status, 200);
    assert!(listing.contains("6 matching of 26"), "{listing}");
    assert!(
        listing.contains(r#"name="older_than" value="1day""#),
        "{listing}"
    );
    let dry_run = post_form(
        &client,
        format!("{}/dead/act", admin.base),
        Some(&cookie),
        &[
            ("csrf", csrf.as_str()),
            ("action", "replay"),
            ("older_than", "1day"),
            ("newer_than", ""),
        ],
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(
        dry_run.contains(r#"<strong id="matched">6</strong>"#),
        "{dry_run}"
    );
    assert!(dry_run.contains("dead for at least 1day"), "{dry_run}");
    assert!(
        dry_run.contains(r#"name="older_than" value="1day""#),
        "the run keeps the age: {dry_run}"
    );
    assert_eq!(app.dead_len().await, 26, "a dry run changes nothing");
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn two_replays_at_once_replay_each_letter_once() {
    const N: usize = 600;
    let app = TestApp::start("api-twice").await;
    let letters = mixed_dead_letters(&app.prefix, N);
    app.fill_mixed(&letters).await;
    let worker = worker_with_token(&app).await;
    let admin = Admin::of(&worker);
    let body = json!({"errcode": 40003});
    let (a, b) = tokio::join!(
        admin.post("/api/replay", body.clone()),
        admin.post("/api/replay", body)
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    let total = a.1["replayed"].as_u64().unwrap() + b.1["replayed"].as_u64().unwrap();
    assert_eq!(
        total, 240,
        "each of the 240 matching letters replayed once: {a:?} {b:?}"
    );
    let sends = app.sent(240).await;
    let to: Vec<String> = sends
        .iter()
        .map(|s| s.body["touser"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = letters
        .iter()
        .filter(|l| l.errcode == 40003)
        .map(|l| openid(l.user))
        .collect();
    assert_eq!(to.len(), 240, "each sent once");
    assert_eq!(to.into_iter().collect::<BTreeSet<_>>(), expected);
    eventually(
        "the other dead letters still there",
        Duration::from_secs(10),
        || async { (app.dead_len().await == 360).then_some(()) },
    )
    .await;

    // A background job is followed at /api/jobs/{id}.
    let (status, started) = admin
        .post("/api/replay", json!({"errcode": -1, "background": true}))
        .await;
    assert_eq!(status, 202, "{started}");
    let path = started["status"].as_str().unwrap().to_owned();
    let job = eventually("the job done", Duration::from_secs(30), || async {
        let (_, job) = admin.get(&path).await;
        (job["state"] == "done").then_some(job)
    })
    .await;
    assert_eq!(job["done"], 180, "{job}");
    let (_, jobs) = admin.get("/api/jobs").await;
    assert!(jobs["jobs"].as_array().unwrap().len() >= 3);
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn apps_and_grants() {
    let app = TestApp::start("api-apps").await;
    let worker = worker_with_token(&app).await;
    let admin = Admin::of(&worker);
    // A send fetches the app's token.
    app.publish(&order_paid(&format!("{}-1", app.prefix), 1))
        .await;
    app.sent(1).await;
    let (status, apps) = admin.get("/api/apps").await;
    assert_eq!(status, 200, "{apps}");
    let first = &apps["apps"][0];
    assert_eq!(first["app"], "default");
    let fingerprint = first["token_fingerprint"]
        .as_str()
        .expect("a token was fetched");
    assert_eq!(fingerprint.len(), 12);
    assert!(first["token_age_seconds"].as_u64().is_some());
    assert_eq!(first["parked"], Value::Null);
    assert!(
        first
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k == "app" || k == "appid" || !k.ends_with("token")),
        "never the token itself: {first}"
    );

    let (status, grants) = admin.get("/api/grants/nobody?app=default").await;
    assert_eq!(status, 200, "{grants}");
    assert_eq!(grants["grants"], json!([]));
    let (status, unknown) = admin.get("/api/grants/nobody?app=elsewhere").await;
    assert_eq!(status, 400, "{unknown}");
    let (status, queues) = admin.get("/api/queues").await;
    assert_eq!(status, 200);
    assert_eq!(queues["queues"][0]["label"], "events");
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}
