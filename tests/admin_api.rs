//! The admin JSON API against a real worker, RabbitMQ and Redis: 401 without the token,
//! 403 for a console session's state-changing call without its CSRF token, dead-letter
//! filters and groups, a dry run, a purge (only with `"confirm": true`), two replays of the
//! same filter at once (no letter replayed twice), background jobs, apps and grants.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wxpush::worker::Worker;

const TOKEN_ENV: &str = "WXPUSH_TEST_ADMIN_TOKEN_API";
const TOKEN: &str = "test-admin-token-api-7c1e";

async fn worker_with_token(app: &TestApp) -> Worker {
    // SAFETY: every test in this process sets the same value.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    let mut config = app.config.clone();
    config.admin.token_env = Some(TOKEN_ENV.into());
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

/// A form body of plain values (none here needs escaping).
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
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
    let wrong = client
        .post(format!("{}/login", admin.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("password", "nope")]))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let login = client
        .post(format!("{}/login", admin.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("password", TOKEN)]))
        .send()
        .await
        .unwrap();
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
    let refused = client
        .post(format!("{}/api/purge", admin.base))
        .header("cookie", &session)
        .json(&json!({"confirm": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");
    // The console's own forms too.
    let form = client
        .post(format!("{}/dead/act", admin.base))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("action", "purge"),
            ("step", "run"),
            ("confirm", "yes"),
        ]))
        .send()
        .await
        .unwrap();
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
    let (status, bad) = admin.get("/api/dead?errcode=abc").await;
    assert_eq!(status, 400);
    assert!(
        bad["error"].as_str().unwrap().contains("errcode `abc`"),
        "{bad}"
    );
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
    let (status, refused) = admin.post("/api/purge", json!({"errcode": 47003})).await;
    assert_eq!(status, 400);
    assert!(
        refused["error"].as_str().unwrap().contains("confirm"),
        "{refused}"
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
