//! The WeChat emulator over real HTTP: each test starts its own server on a free port and
//! talks to it the way the worker (or a curl user) would.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{APPID, Api, OPENID, SECRET, errcode, errmsg, token_of};
use wxpush_mock_wechat::{Fault, FaultTarget, MockOptions, MockServer, MockStats};

fn message() -> Value {
    json!({
        "touser": OPENID,
        "template_id": "TPL_ORDER_PAID",
        "page": "pages/order/detail?id=A1001",
        "miniprogram_state": "formal",
        "lang": "zh_CN",
        "data": {
            "character_string1": {"value": "A1001"},
            "amount2": {"value": "12.50"},
            "time3": {"value": "2026-11-24 10:00"},
            "thing4": {"value": "请尽快取货"}
        }
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut m = message();
    m[field] = value;
    m
}

/// Polls until `done` holds, failing after `within`: waits for a timed condition without
/// guessing a sleep long enough for a slow CI machine.
async fn eventually<F, Fut>(within: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn classic_fetch_with_zero_overlap_invalidates_the_previous_token_at_once() {
    let api = Api::start(MockOptions {
        classic_overlap: Duration::ZERO,
        ..MockOptions::default()
    })
    .await;
    let first = api.classic(APPID, SECRET).await;
    assert_eq!(first["expires_in"], 7200);
    let a = token_of(&first);
    let b = token_of(&api.classic(APPID, SECRET).await);
    assert_ne!(a, b);
    let stale = api.send(&a, &message()).await;
    assert_eq!(errcode(&stale), 40001, "{stale}");
    assert!(
        errmsg(&stale)
            .starts_with("invalid credential, access_token is invalid or not latest rid: ")
    );
    assert_eq!(errcode(&api.send(&b, &message()).await), 0);
}

#[tokio::test]
async fn classic_fetch_with_a_large_overlap_keeps_both_tokens_valid() {
    let api = Api::start(MockOptions::default()).await;
    let a = token_of(&api.classic(APPID, SECRET).await);
    let b = token_of(&api.classic(APPID, SECRET).await);
    assert_eq!(errcode(&api.send(&a, &message()).await), 0);
    assert_eq!(errcode(&api.send(&b, &message()).await), 0);
}

#[tokio::test]
async fn classic_previous_token_dies_when_the_overlap_ends() {
    let api = Api::start(MockOptions {
        classic_overlap: Duration::from_secs(1),
        ..MockOptions::default()
    })
    .await;
    let a = token_of(&api.classic(APPID, SECRET).await);
    let fetched = Instant::now();
    let b = token_of(&api.classic(APPID, SECRET).await);
    assert_eq!(
        errcode(&api.send(&a, &message()).await),
        0,
        "within overlap"
    );
    eventually(
        Duration::from_secs(5),
        "old classic token invalid",
        || async { errcode(&api.send(&a, &message()).await) == 40001 },
    )
    .await;
    assert!(fetched.elapsed() >= Duration::from_millis(900));
    assert_eq!(errcode(&api.send(&b, &message()).await), 0);
}

#[tokio::test]
async fn classic_token_errors_grant_type_and_daily_quota() {
    let api = Api::start(MockOptions {
        classic_daily_limit: 2,
        ..MockOptions::default()
    })
    .await;
    let wrong = api
        .get(
            "/cgi-bin/token",
            &[
                ("grant_type", "password"),
                ("appid", APPID),
                ("secret", SECRET),
            ],
        )
        .await;
    assert_eq!(errcode(&wrong), 40002);
    let missing = api
        .get("/cgi-bin/token", &[("grant_type", "client_credential")])
        .await;
    assert_eq!(errcode(&missing), 41002);
    token_of(&api.classic(APPID, SECRET).await);
    token_of(&api.classic(APPID, SECRET).await);
    assert_eq!(errcode(&api.classic(APPID, SECRET).await), 45009);
    let stats = api.server.stats();
    assert_eq!(stats.classic_token_calls, 5);
    assert_eq!(stats.token_calls, 5);
    assert_eq!(stats.tokens_issued, 2);
}

#[tokio::test]
async fn stable_returns_the_same_token_and_force_refresh_invalidates_it() {
    let api = Api::start(MockOptions::default()).await;
    let first = api.stable(APPID, SECRET, false).await;
    let a = token_of(&first);
    assert_eq!(a.len(), 136);
    assert_eq!(first["expires_in"], 7200);
    let again = api.stable(APPID, SECRET, false).await;
    assert_eq!(token_of(&again), a);
    assert!(again["expires_in"].as_u64().unwrap() <= 7200);

    let b = token_of(&api.stable(APPID, SECRET, true).await);
    assert_ne!(a, b);
    assert_eq!(errcode(&api.send(&a, &message()).await), 40001);
    assert_eq!(errcode(&api.send(&b, &message()).await), 0);
    assert_eq!(token_of(&api.stable(APPID, SECRET, false).await), b);

    // A second force within 30 s is refused and leaves the current token alone.
    let refused = api.stable(APPID, SECRET, true).await;
    assert_eq!(errcode(&refused), 45011, "{refused}");
    assert_eq!(errcode(&api.send(&b, &message()).await), 0);

    let stats = api.server.stats();
    assert_eq!(stats.stable_token_calls, 5);
    assert_eq!(stats.force_refresh_calls, 2);
    assert_eq!(stats.tokens_issued, 2);
    assert_eq!(stats.classic_token_calls, 0);
}

#[tokio::test]
async fn force_refresh_daily_limit() {
    let api = Api::start(MockOptions {
        force_refresh_min_interval: Duration::ZERO,
        force_refresh_daily_limit: 2,
        ..MockOptions::default()
    })
    .await;
    token_of(&api.stable(APPID, SECRET, true).await);
    token_of(&api.stable(APPID, SECRET, true).await);
    assert_eq!(errcode(&api.stable(APPID, SECRET, true).await), 45009);
}

#[tokio::test]
async fn stable_and_classic_tokens_are_independent() {
    let api = Api::start(MockOptions {
        classic_overlap: Duration::ZERO,
        ..MockOptions::default()
    })
    .await;
    let stable = api.token().await;
    let c1 = token_of(&api.classic(APPID, SECRET).await);
    let c2 = token_of(&api.classic(APPID, SECRET).await);
    assert_ne!(stable, c2);
    assert_eq!(errcode(&api.send(&c1, &message()).await), 40001);
    assert_eq!(
        errcode(&api.send(&stable, &message()).await),
        0,
        "classic fetches leave the stable token alone"
    );
    assert_eq!(api.token().await, stable);
    token_of(&api.stable(APPID, SECRET, true).await);
    assert_eq!(errcode(&api.send(&stable, &message()).await), 40001);
    assert_eq!(
        errcode(&api.send(&c2, &message()).await),
        0,
        "a forced stable refresh leaves the classic token alone"
    );
}

#[tokio::test]
async fn stable_token_bad_body_answers_47001() {
    let api = Api::start(MockOptions::default()).await;
    for body in [
        "not json",
        "[1,2]",
        r#"{"grant_type":"client_credential","appid":"a","secret":"b","force_refresh":"yes"}"#,
    ] {
        let answer: Value = api
            .post_raw("/cgi-bin/stable_token", &[], body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(errcode(&answer), 47001, "{body}: {answer}");
    }
    let no_grant = api
        .post(
            "/cgi-bin/stable_token",
            &[],
            &json!({"appid": APPID, "secret": SECRET}),
        )
        .await;
    assert_eq!(errcode(&no_grant), 40002);
}

#[tokio::test]
async fn send_success_answers_ok_with_increasing_msgids_and_is_recorded() {
    let api = Api::start(MockOptions::default()).await;
    let token = api.token().await;
    let first = api.send(&token, &message()).await;
    assert_eq!(first["errcode"], 0);
    assert_eq!(first["errmsg"], "ok");
    let second = api.send(&token, &message()).await;
    assert_eq!(
        second["msgid"].as_u64().unwrap(),
        first["msgid"].as_u64().unwrap() + 1
    );
    let sends = api.server.sends();
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0].appid, APPID);
    assert_eq!(sends[0].body, message());
    assert_eq!(sends[0].msgid, first["msgid"].as_u64().unwrap());
    assert!(sends[1].received_at_ms >= sends[0].received_at_ms);
    assert!(sends[0].received_at_ms > 1_700_000_000_000);
}

#[tokio::test]
async fn send_token_errcodes() {
    let api = Api::start(MockOptions::default()).await;
    let body = message().to_string();
    let answer = |r: reqwest::Response| async move { r.json::<Value>().await.unwrap() };

    let missing = answer(api.send_raw(None, &body).await).await;
    assert_eq!(errcode(&missing), 41001, "{missing}");
    let empty = answer(api.send_raw(Some(""), &body).await).await;
    assert_eq!(errcode(&empty), 41001, "{empty}");
    let malformed = answer(api.send_raw(Some("abc def"), &body).await).await;
    assert_eq!(errcode(&malformed), 40014, "{malformed}");
    let unknown = answer(api.send_raw(Some("abcdef"), &body).await).await;
    assert_eq!(errcode(&unknown), 40001, "{unknown}");

    // Token checks come before the body is looked at.
    let token = api.token().await;
    for bad in ["not json", "[1]", "\"x\"", ""] {
        let a = answer(api.send_raw(Some(&token), bad).await).await;
        assert_eq!(errcode(&a), 47001, "{bad:?}: {a}");
        assert!(errmsg(&a).starts_with("data format error rid: "));
    }
    let a = answer(api.send_raw(Some("abc def"), "not json").await).await;
    assert_eq!(errcode(&a), 40014);
}

#[tokio::test]
async fn send_expired_token_by_time_answers_42001() {
    let api = Api::start(MockOptions {
        token_ttl: Duration::from_secs(1),
        ..MockOptions::default()
    })
    .await;
    let token = api.token().await;
    assert_eq!(errcode(&api.send(&token, &message()).await), 0);
    eventually(Duration::from_secs(5), "token expired", || async {
        errcode(&api.send(&token, &message()).await) == 42001
    })
    .await;
    let fresh = api.token().await;
    assert_ne!(fresh, token);
    assert_eq!(errcode(&api.send(&fresh, &message()).await), 0);
}

#[tokio::test]
async fn send_body_errcodes() {
    let api = Api::start(MockOptions::default()).await;
    let token = api.token().await;
    let cases = [
        (with("touser", json!("oShort")), 40003, "invalid openid"),
        (with("touser", json!(null)), 40003, "invalid openid"),
        (with("template_id", json!("")), 40037, "invalid template_id"),
        (
            with("template_id", json!("has space")),
            40037,
            "invalid template_id",
        ),
        (
            with("template_id", json!("x".repeat(65))),
            40037,
            "invalid template_id",
        ),
        (with("page", json!("")), 41030, "invalid page"),
        (with("page", json!("/pages/index")), 41030, "invalid page"),
        (with("page", json!("pages/a b")), 41030, "invalid page"),
        (with("page", json!("p".repeat(1025))), 41030, "invalid page"),
        (
            with("miniprogram_state", json!("release")),
            47003,
            "argument invalid! miniprogram_state invalid",
        ),
        (
            with("lang", json!("fr")),
            47003,
            "argument invalid! lang invalid",
        ),
        (
            with("data", json!({"thing4": {"value": "x".repeat(21)}})),
            47003,
            "argument invalid! data.thing4.value invalid",
        ),
        (
            with("data", json!({"amount2": {"value": "twelve"}})),
            47003,
            "argument invalid! data.amount2.value invalid",
        ),
        (
            with("data", json!({"colour1": {"value": "red"}})),
            47003,
            "argument invalid! data.colour1.value invalid",
        ),
        (
            with("data", json!({"thing4": "not an object"})),
            47003,
            "argument invalid! data.thing4.value invalid",
        ),
        (
            with("data", json!(null)),
            47003,
            "argument invalid! data invalid",
        ),
    ];
    for (body, want, msg) in cases {
        let answer = api.send(&token, &body).await;
        assert_eq!(errcode(&answer), want, "{body} -> {answer}");
        let errmsg = answer["errmsg"].as_str().unwrap();
        assert!(errmsg.starts_with(&format!("{msg} rid: ")), "{errmsg}");
    }
    let stats = api.server.stats();
    assert_eq!(stats.sends_by_errcode["40003"], 2);
    assert_eq!(stats.sends_by_errcode["40037"], 3);
    assert_eq!(stats.sends_by_errcode["41030"], 4);
    assert_eq!(stats.sends_by_errcode["47003"], 7);
    assert_eq!(stats.sends_ok, 0);
    assert!(api.server.sends().is_empty());
}

#[tokio::test]
async fn registered_templates_fix_the_template_id_and_its_keys() {
    let api = Api::start(MockOptions::default()).await;
    api.server.register_template(
        "TPL_ORDER_PAID",
        &["character_string1", "amount2", "time3", "thing4"],
    );
    let token = api.token().await;
    assert_eq!(errcode(&api.send(&token, &message()).await), 0);
    assert_eq!(
        errcode(
            &api.send(&token, &with("template_id", json!("TPL_OTHER")))
                .await
        ),
        40037
    );
    let mut missing = message();
    missing["data"].as_object_mut().unwrap().remove("thing4");
    let answer = api.send(&token, &missing).await;
    assert_eq!(errcode(&answer), 47003);
    assert!(errmsg(&answer).contains("data.thing4.value"));
    let mut extra = message();
    extra["data"]["thing5"] = json!({"value": "x"});
    assert_eq!(errcode(&api.send(&token, &extra).await), 47003);
}

#[tokio::test]
async fn strict_subscriptions_refuse_without_a_grant_and_count_grants_down() {
    let api = Api::start(MockOptions {
        strict_subscriptions: true,
        ..MockOptions::default()
    })
    .await;
    let token = api.token().await;
    let refused = api.send(&token, &message()).await;
    assert_eq!(errcode(&refused), 43101);
    assert!(errmsg(&refused).starts_with("user refuse to accept the msg rid: "));
    api.server.grant_subscription(OPENID, "TPL_ORDER_PAID", 2);
    assert_eq!(errcode(&api.send(&token, &message()).await), 0);
    assert_eq!(api.server.subscriptions_left(OPENID, "TPL_ORDER_PAID"), 1);
    // A refused send (bad data) does not use up a grant.
    let bad = with("data", json!({"thing4": {"value": ""}}));
    assert_eq!(errcode(&api.send(&token, &bad).await), 47003);
    assert_eq!(api.server.subscriptions_left(OPENID, "TPL_ORDER_PAID"), 1);
    assert_eq!(errcode(&api.send(&token, &message()).await), 0);
    assert_eq!(api.server.subscriptions_left(OPENID, "TPL_ORDER_PAID"), 0);
    assert_eq!(errcode(&api.send(&token, &message()).await), 43101);
    // Grants are per template.
    api.server.grant_subscription(OPENID, "TPL_OTHER", 1);
    assert_eq!(errcode(&api.send(&token, &message()).await), 43101);
    let stats = api.server.stats();
    assert_eq!(stats.sends_by_errcode["43101"], 3);
    assert_eq!(stats.sends_ok, 2);
}

#[tokio::test]
async fn jscode2session_codes_are_single_use() {
    let api = Api::start(MockOptions::default()).await;
    api.server.register_code(APPID, "code-1", OPENID);
    let ok = api.jscode(APPID, SECRET, "code-1").await;
    assert_eq!(ok["openid"], OPENID);
    assert!(!ok["session_key"].as_str().unwrap().is_empty());
    let used = api.jscode(APPID, SECRET, "code-1").await;
    assert_eq!(errcode(&used), 40163, "{used}");
    assert!(errmsg(&used).starts_with("code been used rid: "));
    let unknown = api.jscode(APPID, SECRET, "code-2").await;
    assert_eq!(errcode(&unknown), 40029, "{unknown}");
    api.server.register_code(APPID, "code-3", OPENID);
    assert_eq!(
        errcode(&api.jscode("wxother", SECRET, "code-3").await),
        40029
    );
    assert_eq!(api.server.stats().jscode2session_calls, 4);
}

#[tokio::test]
async fn credentials_are_checked_once_an_app_is_registered() {
    let api = Api::start(MockOptions::default()).await;
    // Open mode: anything goes.
    token_of(&api.classic("wxanything", "whatever").await);
    api.server.register_app(APPID, SECRET);
    api.server.register_code(APPID, "code-1", OPENID);

    let unknown = api.classic("wxunknown", SECRET).await;
    assert_eq!(errcode(&unknown), 40013);
    assert!(errmsg(&unknown).starts_with("invalid appid rid: "));
    assert_eq!(errcode(&api.classic(APPID, "wrong").await), 40125);
    assert_eq!(
        errcode(&api.stable("wxunknown", SECRET, false).await),
        40013
    );
    assert_eq!(errcode(&api.stable(APPID, "wrong", false).await), 40125);
    assert_eq!(
        errcode(&api.jscode("wxunknown", SECRET, "code-1").await),
        40013
    );
    assert_eq!(errcode(&api.jscode(APPID, "wrong", "code-1").await), 40125);

    token_of(&api.classic(APPID, SECRET).await);
    token_of(&api.stable(APPID, SECRET, false).await);
    assert_eq!(api.jscode(APPID, SECRET, "code-1").await["openid"], OPENID);
}

#[tokio::test]
async fn queued_faults_apply_in_order_then_calls_are_normal() {
    let api = Api::start(MockOptions::default()).await;
    let token = api.token().await;
    api.server.push_faults(
        FaultTarget::Send,
        vec![
            Fault::Errcode(-1),
            Fault::Http(500),
            Fault::Delay(Duration::from_millis(300)),
        ],
    );
    let busy = api.send(&token, &message()).await;
    assert_eq!(errcode(&busy), -1);
    assert!(errmsg(&busy).starts_with("injected fault"));

    let resp = api.send_raw(Some(&token), &message().to_string()).await;
    assert_eq!(resp.status().as_u16(), 500);
    assert!(
        !resp.text().await.unwrap().starts_with('{'),
        "plain text body"
    );

    let started = Instant::now();
    assert_eq!(errcode(&api.send(&token, &message()).await), 0);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let started = Instant::now();
    assert_eq!(errcode(&api.send(&token, &message()).await), 0);
    assert!(started.elapsed() < Duration::from_millis(300));

    let stats = api.server.stats();
    assert_eq!(stats.send_calls, 4);
    assert_eq!(stats.sends_ok, 2);
    assert_eq!(stats.http_errors, 1);
    assert_eq!(stats.sends_by_errcode.get("-1"), Some(&1));
    assert_eq!(api.server.sends().len(), 2);
}

#[tokio::test]
async fn token_faults_cover_classic_and_stable_and_skip_token_logic() {
    let api = Api::start(MockOptions::default()).await;
    api.server.push_faults(
        FaultTarget::Token,
        vec![Fault::Errcode(-1), Fault::Http(503)],
    );
    assert_eq!(errcode(&api.classic(APPID, SECRET).await), -1);
    let body = json!({"grant_type": "client_credential", "appid": APPID, "secret": SECRET});
    let resp = api
        .post_raw("/cgi-bin/stable_token", &[], &body.to_string())
        .await;
    assert_eq!(resp.status().as_u16(), 503);
    token_of(&api.stable(APPID, SECRET, false).await);
    let stats = api.server.stats();
    assert_eq!(
        stats.token_calls, 1,
        "faulted calls never reached the token logic"
    );
    assert_eq!(stats.http_errors, 1);
    assert!(
        stats.sends_by_errcode.is_empty(),
        "token errcodes are not send errcodes"
    );
}

#[tokio::test]
async fn hang_fault_never_answers_and_blocks_nothing_else() {
    let api = Api::start(MockOptions::default()).await;
    let token = api.token().await;
    api.server.push_faults(FaultTarget::Send, vec![Fault::Hang]);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = impatient
        .post(format!(
            "{}/cgi-bin/message/subscribe/send?access_token={token}",
            api.base
        ))
        .json(&message())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Other calls go through while (or after) the hung one waits.
    assert_eq!(errcode(&api.send(&token, &message()).await), 0);
    drop(impatient);
    eventually(Duration::from_secs(5), "hung call released", || async {
        api.server.stats().in_flight == 0
    })
    .await;
    assert_eq!(api.server.stats().sends_ok, 1);
}

#[tokio::test]
async fn shutdown_ends_hung_calls() {
    let api = Api::start(MockOptions::default()).await;
    api.server
        .push_faults(FaultTarget::Jscode2session, vec![Fault::Hang]);
    let url = format!(
        "{}/sns/jscode2session?appid=a&secret=b&js_code=c&grant_type=authorization_code",
        api.base
    );
    let hung = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    eventually(Duration::from_secs(5), "call hanging", || async {
        api.server.stats().in_flight == 1
    })
    .await;
    let started = Instant::now();
    api.server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    // Whatever the client saw (a 503 or a closed connection), it is no longer waiting.
    let _ = tokio::time::timeout(Duration::from_secs(2), hung)
        .await
        .expect("client still waiting after shutdown");
}

#[tokio::test]
async fn fault_rate_one_hits_every_call_until_cleared() {
    let api = Api::start(MockOptions::default()).await;
    let token = api.token().await;
    api.server
        .set_fault_rate(FaultTarget::Send, Some(Fault::Errcode(-1)), 1.0);
    for _ in 0..10 {
        assert_eq!(errcode(&api.send(&token, &message()).await), -1);
    }
    // The queue goes first.
    api.server
        .push_faults(FaultTarget::Send, vec![Fault::Http(502)]);
    let resp = api.send_raw(Some(&token), &message().to_string()).await;
    assert_eq!(resp.status().as_u16(), 502);
    api.server.set_fault_rate(FaultTarget::Send, None, 0.0);
    assert_eq!(errcode(&api.send(&token, &message()).await), 0);
    let stats = api.server.stats();
    assert_eq!(stats.sends_by_errcode["-1"], 10);
    assert_eq!(stats.send_calls, 12);
    assert_eq!(stats.sends_ok, 1);
}

#[tokio::test]
async fn expire_all_tokens_answers_42001_then_new_fetches_work() {
    let api = Api::start(MockOptions::default()).await;
    let stable = api.token().await;
    let classic = token_of(&api.classic(APPID, SECRET).await);
    api.server.expire_all_tokens();
    for token in [&stable, &classic] {
        let answer = api.send(token, &message()).await;
        assert_eq!(errcode(&answer), 42001, "{answer}");
        assert!(errmsg(&answer).starts_with("access_token expired rid: "));
    }
    let new_stable = api.token().await;
    assert_ne!(new_stable, stable, "normal stable fetch mints after expiry");
    assert_eq!(errcode(&api.send(&new_stable, &message()).await), 0);
    let new_classic = token_of(&api.classic(APPID, SECRET).await);
    assert_eq!(errcode(&api.send(&new_classic, &message()).await), 0);
    assert_eq!(errcode(&api.send(&stable, &message()).await), 42001);
    assert_eq!(api.server.stats().tokens_issued, 4);
}

#[tokio::test]
async fn concurrent_calls_are_counted_in_flight() {
    let api = Api::start(MockOptions::default()).await;
    let token = api.token().await;
    api.server.set_latency(Duration::from_millis(200));
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, base, token) = (api.http.clone(), api.base.clone(), token.clone());
        calls.spawn(async move {
            let url = format!("{base}/cgi-bin/message/subscribe/send?access_token={token}");
            let answer: Value = http.post(url).json(&message()).send().await?.json().await?;
            Ok::<_, reqwest::Error>(answer)
        });
    }
    while let Some(answer) = calls.join_next().await {
        assert_eq!(errcode(&answer.unwrap().unwrap()), 0);
    }
    // All twenty waited on the latency together, not one after another.
    assert!(started.elapsed() < Duration::from_millis(200 * 10));
    let stats = api.server.stats();
    assert!(
        (2..=20).contains(&stats.max_in_flight),
        "max_in_flight {}",
        stats.max_in_flight
    );
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.send_calls, 20);
    assert_eq!(stats.sends_ok, 20);
    assert_eq!(stats.stable_token_calls, 1);
    assert_eq!(api.server.sends().len(), 20);
}

#[tokio::test]
async fn latency_applies_to_every_wechat_endpoint() {
    let api = Api::start(MockOptions {
        latency: Duration::from_millis(150),
        ..MockOptions::default()
    })
    .await;
    let started = Instant::now();
    let token = api.token().await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    let started = Instant::now();
    api.send(&token, &message()).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    let started = Instant::now();
    api.jscode(APPID, SECRET, "nope").await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    // The control API is not slowed down.
    api.server.set_latency(Duration::from_secs(10));
    let started = Instant::now();
    api.control_get("stats").await;
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn control_api_sets_up_apps_codes_templates_and_subscriptions() {
    let api = Api::start(MockOptions {
        strict_subscriptions: true,
        ..MockOptions::default()
    })
    .await;
    let (status, body) = api
        .control("apps", json!({"appid": APPID, "secret": SECRET}))
        .await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    assert_eq!(errcode(&api.classic(APPID, "wrong").await), 40125);

    assert_eq!(
        api.control(
            "codes",
            json!({"appid": APPID, "js_code": "c1", "openid": OPENID})
        )
        .await
        .0,
        200
    );
    assert_eq!(api.jscode(APPID, SECRET, "c1").await["openid"], OPENID);

    assert_eq!(
        api.control(
            "templates",
            json!({"template_id": "TPL_ORDER_PAID", "keys": ["character_string1", "amount2", "time3", "thing4"]})
        )
        .await
        .0,
        200
    );
    let (status, body) = api
        .control(
            "subscriptions",
            json!({"openid": OPENID, "template_id": "TPL_ORDER_PAID", "count": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["remaining"], 1);

    let token = api.token().await;
    assert_eq!(errcode(&api.send(&token, &message()).await), 0);
    assert_eq!(errcode(&api.send(&token, &message()).await), 43101);
    assert_eq!(
        errcode(&api.send(&token, &with("template_id", json!("TPL_X"))).await),
        40037
    );
}

#[tokio::test]
async fn control_api_faults_latency_expiry_stats_sends_reset() {
    let api = Api::start(MockOptions::default()).await;
    let token = api.token().await;

    let (status, _) = api
        .control(
            "faults",
            json!({"target": "send", "faults": [{"errcode": -1}, {"http": 500}, {"delay_ms": 50}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(errcode(&api.send(&token, &message()).await), -1);
    let resp = api.send_raw(Some(&token), &message().to_string()).await;
    assert_eq!(resp.status().as_u16(), 500);
    assert_eq!(errcode(&api.send(&token, &message()).await), 0);

    let (status, _) = api
        .control(
            "fault-rate",
            json!({"target": "token", "fault": {"errcode": 45009}, "ratio": 1.0}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(errcode(&api.stable(APPID, SECRET, false).await), 45009);
    assert_eq!(errcode(&api.classic(APPID, SECRET).await), 45009);
    let (status, _) = api
        .control(
            "fault-rate",
            json!({"target": "token", "fault": null, "ratio": 0.0}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(api.token().await, token);

    assert_eq!(api.control("latency", json!({"ms": 100})).await.0, 200);
    let started = Instant::now();
    api.send(&token, &message()).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(api.control("latency", json!({"ms": 0})).await.0, 200);

    assert_eq!(api.control("expire-tokens", json!(null)).await.0, 200);
    assert_eq!(errcode(&api.send(&token, &message()).await), 42001);

    let stats: MockStats = serde_json::from_value(api.control_get("stats").await).unwrap();
    assert_eq!(stats, api.server.stats());
    assert_eq!(stats.send_calls, 5);
    assert_eq!(stats.sends_ok, 2);
    assert_eq!(stats.sends_by_errcode["-1"], 1);
    assert_eq!(stats.sends_by_errcode["42001"], 1);
    assert_eq!(stats.http_errors, 1);
    assert_eq!(stats.stable_token_calls, 2, "the faulted one did not count");

    let sends = api.control_get("sends").await;
    assert_eq!(sends.as_array().unwrap().len(), 2);
    assert_eq!(sends[0]["appid"], APPID);
    assert_eq!(sends[0]["body"], message());

    assert_eq!(api.control("reset", json!(null)).await.0, 200);
    assert_eq!(api.server.stats(), MockStats::default());
    assert_eq!(api.control_get("sends").await, json!([]));
    let new_token = api.token().await;
    assert_ne!(new_token, token);
}

#[tokio::test]
async fn control_api_refuses_bad_requests_with_400() {
    let api = Api::start(MockOptions::default()).await;
    let bad = [
        ("apps", json!({"appid": APPID})),
        ("apps", json!({"appid": "", "secret": "x"})),
        ("codes", json!({"appid": APPID, "js_code": "c"})),
        ("subscriptions", json!({"openid": OPENID})),
        ("templates", json!({"template_id": "T", "keys": []})),
        (
            "templates",
            json!({"template_id": "T", "keys": ["colour1"]}),
        ),
        ("faults", json!({"target": "sendd", "faults": []})),
        (
            "faults",
            json!({"target": "send", "faults": [{"hang": false}]}),
        ),
        (
            "faults",
            json!({"target": "send", "faults": [{"errcode": 1, "http": 500}]}),
        ),
        (
            "faults",
            json!({"target": "send", "faults": [{"http": 42}]}),
        ),
        (
            "fault-rate",
            json!({"target": "send", "fault": {"errcode": -1}, "ratio": 1.5}),
        ),
        ("latency", json!({"ms": -1})),
        ("latency", json!({"millis": 1})),
    ];
    for (path, body) in bad {
        let (status, answer) = api.control(path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    let resp = api.post_raw("/mock/apps", &[], "{not json").await;
    assert_eq!(resp.status().as_u16(), 400);
    // Nothing half-applied.
    token_of(&api.classic("wxany", "any").await);
    assert_eq!(api.server.stats().http_errors, 0);
}

#[tokio::test]
async fn base_url_is_loopback_with_the_real_port() {
    let server = MockServer::start(MockOptions::default(), "0.0.0.0:0".parse().unwrap())
        .await
        .unwrap();
    let port = server.addr().port();
    assert_ne!(port, 0);
    assert_eq!(server.base_url(), format!("http://127.0.0.1:{port}"));
    server.shutdown().await;
}
