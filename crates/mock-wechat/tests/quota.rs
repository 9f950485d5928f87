//! The emulator's send limits over real HTTP: the daily quota (45009) with get_api_quota,
//! clear_quota and the new day, the per-second rate (45011), and what the stats and the
//! send log tell a test about them.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{APPID, Api, OPENID, SECRET, SEND_PATH, errcode, errmsg};
use wxpush_mock_wechat::{MockOptions, SendQuota};

/// An emulator with the app registered: only then does it check appids, which
/// clear_quota's 40013 needs.
async fn start(opts: MockOptions) -> Api {
    let api = Api::start(opts).await;
    api.server.register_app(APPID, SECRET);
    api
}

/// One valid send: these tests count sends, not what they carry.
fn order() -> Value {
    json!({
        "touser": OPENID,
        "template_id": "TPL_ORDER_PAID",
        "data": {"character_string1": {"value": "A1001"}}
    })
}

fn count(map: &std::collections::BTreeMap<String, u64>, errcode: &str) -> u64 {
    map.get(errcode).copied().unwrap_or(0)
}

#[tokio::test]
async fn the_daily_quota_answers_45009_and_comes_back_on_a_new_day() {
    let api = start(MockOptions {
        send_daily_limit: 3,
        ..MockOptions::default()
    })
    .await;
    let token = api.token().await;
    for _ in 0..3 {
        assert_eq!(errcode(&api.send(&token, &order()).await), 0);
    }
    let refused = api.send(&token, &order()).await;
    assert_eq!(errcode(&refused), 45009, "{refused}");
    assert!(
        errmsg(&refused).starts_with("reach max api daily quota limit rid: "),
        "{refused}"
    );
    assert_eq!(errcode(&api.send(&token, &order()).await), 45009);

    let quota = api.quota(&token, SEND_PATH).await;
    assert_eq!(
        quota,
        json!({"errcode": 0, "errmsg": "ok", "quota": {"daily_limit": 3, "used": 3, "remain": 0}})
    );
    assert_eq!(
        api.server.sends().len(),
        3,
        "refused sends are not recorded"
    );
    let stats = api.server.stats();
    assert_eq!(stats.sends_ok, 3);
    assert_eq!(count(&stats.sends_by_errcode, "45009"), 2);
    assert_eq!(count(&stats.errcode_counts, "45009"), 2);
    assert_eq!(stats.quota_get_calls, 1);

    api.server.new_quota_day();
    assert_eq!(errcode(&api.send(&token, &order()).await), 0);
    assert_eq!(
        api.server.send_quota(APPID),
        SendQuota {
            daily_limit: 3,
            used: 1,
            remain: 2
        }
    );
}

#[tokio::test]
async fn refused_bodies_and_missing_grants_spend_no_quota() {
    let api = start(MockOptions {
        send_daily_limit: 1,
        strict_subscriptions: true,
        ..MockOptions::default()
    })
    .await;
    let token = api.token().await;
    assert_eq!(errcode(&api.send(&token, &order()).await), 43101);
    let bad = api.send(&token, &json!({"touser": "x"})).await;
    assert_eq!(errcode(&bad), 40003);
    assert_eq!(api.server.send_quota(APPID).used, 0);
    api.server.grant_subscription(OPENID, "TPL_ORDER_PAID", 2);
    assert_eq!(errcode(&api.send(&token, &order()).await), 0);
    assert_eq!(errcode(&api.send(&token, &order()).await), 45009);
    assert_eq!(
        api.server.subscriptions_left(OPENID, "TPL_ORDER_PAID"),
        1,
        "a send refused for the quota keeps the user's grant"
    );
}

#[tokio::test]
async fn quota_get_checks_the_token_and_the_cgi_path() {
    let api = start(MockOptions::default()).await;
    let token = api.token().await;
    let fresh = api.quota(&token, SEND_PATH).await;
    assert_eq!(fresh["quota"]["daily_limit"], 10_000_000);
    assert_eq!(fresh["quota"]["remain"], 10_000_000);
    let cases = [
        ("/cgi-bin/message/custom/send", 76021),
        ("/sns/jscode2session", 76022),
        ("cgi-bin/message/subscribe/send", 76003),
        (
            "https://api.weixin.qq.com/cgi-bin/message/subscribe/send",
            76003,
        ),
    ];
    for (path, want) in cases {
        assert_eq!(errcode(&api.quota(&token, path).await), want, "{path}");
    }
    assert_eq!(errcode(&api.quota("nope", SEND_PATH).await), 40001);
    let missing = api
        .post(
            "/cgi-bin/openapi/quota/get",
            &[],
            &json!({"cgi_path": SEND_PATH}),
        )
        .await;
    assert_eq!(errcode(&missing), 41001);
    api.server.expire_all_tokens();
    assert_eq!(errcode(&api.quota(&token, SEND_PATH).await), 42001);
}

#[tokio::test]
async fn clear_quota_resets_sends_and_token_fetches_ten_times_a_month() {
    let api = start(MockOptions {
        send_daily_limit: 1,
        classic_daily_limit: 1,
        clear_quota_monthly_limit: 2,
        ..MockOptions::default()
    })
    .await;
    let token = api.token().await;
    assert_eq!(errcode(&api.send(&token, &order()).await), 0);
    assert_eq!(errcode(&api.send(&token, &order()).await), 45009);
    assert!(api.classic(APPID, SECRET).await["access_token"].is_string());
    assert_eq!(errcode(&api.classic(APPID, SECRET).await), 45009);

    assert_eq!(
        errcode(&api.clear_quota(&token, "wx_other_app_00001").await),
        40013
    );
    let missing = api
        .post(
            "/cgi-bin/clear_quota",
            &[("access_token", &token)],
            &json!({}),
        )
        .await;
    assert_eq!(errcode(&missing), 41002);

    assert_eq!(
        api.clear_quota(&token, APPID).await,
        json!({"errcode": 0, "errmsg": "ok"})
    );
    assert_eq!(errcode(&api.send(&token, &order()).await), 0);
    assert!(
        api.classic(APPID, SECRET).await["access_token"].is_string(),
        "token quota cleared too"
    );
    assert_eq!(errcode(&api.clear_quota(&token, APPID).await), 0);
    let spent = api.clear_quota(&token, APPID).await;
    assert_eq!(errcode(&spent), 48006, "{spent}");
    assert!(errmsg(&spent).starts_with("forbid to clear quota because of reaching the limit"));
    assert_eq!(api.server.stats().clear_quota_calls, 5);
}

#[tokio::test]
async fn quota_controls_in_rust_and_over_http() {
    let api = start(MockOptions::default()).await;
    let token = api.token().await;
    api.server.set_send_quota(APPID, 2);
    assert_eq!(errcode(&api.send(&token, &order()).await), 0);
    api.server.exhaust_send_quota(APPID);
    assert_eq!(errcode(&api.send(&token, &order()).await), 45009);
    assert_eq!(api.server.send_quota(APPID).remain, 0);

    let (status, answer) = api.control("new-quota-day", json!({})).await;
    assert_eq!((status, answer), (200, json!({"ok": true})));
    assert_eq!(errcode(&api.send(&token, &order()).await), 0);

    let (status, answer) = api
        .control("send-quota", json!({"appid": APPID, "daily_limit": 5}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["quota"],
        json!({"daily_limit": 5, "used": 1, "remain": 4})
    );
    let (_, answer) = api
        .control("send-quota", json!({"appid": APPID, "exhaust": true}))
        .await;
    assert_eq!(answer["quota"]["remain"], 0);
    assert_eq!(errcode(&api.send(&token, &order()).await), 45009);

    let (status, answer) = api.control("send-quota", json!({"appid": ""})).await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = api
        .control("send-quota", json!({"appid": APPID, "limit": 1}))
        .await;
    assert_eq!(status, 400, "unknown fields are refused");

    let (status, _) = api.control("send-rate", json!({"per_sec": 0})).await;
    assert_eq!(status, 200);
    api.server.new_quota_day();
    assert_eq!(
        errcode(&api.send(&token, &order()).await),
        45011,
        "rate 0 refuses all"
    );
    let (status, _) = api.control("send-rate", json!({"per_sec": null})).await;
    assert_eq!(status, 200);
    assert_eq!(errcode(&api.send(&token, &order()).await), 0);
    let (status, _) = api.control("send-rate", json!({"per_sec": -1})).await;
    assert_eq!(status, 400);
}

/// Every 1000 ms window over the accepted send times holds at most `rate` sends.
fn max_in_any_second(times: &[u64]) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|&&t| t < sorted[i] + 1000)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn the_rate_limit_answers_45011_and_no_second_holds_more_than_the_rate() {
    const RATE: usize = 3;
    let api = start(MockOptions {
        send_rate_per_sec: Some(RATE as u32),
        ..MockOptions::default()
    })
    .await;
    let token = api.token().await;
    let (mut accepted, mut refused) = (0, 0);
    // Bursts of 10 concurrent sends until one is refused: a burst reaches the emulator
    // well within a second, so this ends at the first burst on any sane machine.
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused == 0 {
        assert!(Instant::now() < deadline, "no 45011 after {accepted} sends");
        for answer in burst(&api, &token, 10).await {
            match errcode(&answer) {
                0 => accepted += 1,
                45011 => {
                    assert_eq!(
                        errmsg(&answer).split(" rid: ").next(),
                        Some("api minute-quota reach limit  mustslower  retry next minute")
                    );
                    refused += 1;
                }
                other => panic!("unexpected errcode {other}: {answer}"),
            }
        }
    }
    let times = api.server.send_times_ms();
    assert_eq!(times.len(), accepted);
    assert!(max_in_any_second(&times) <= RATE, "{times:?}");
    let stats = api.server.stats();
    assert_eq!(stats.sends_ok as usize, accepted);
    assert_eq!(count(&stats.errcode_counts, "45011") as usize, refused);
    assert_eq!(
        api.server.send_quota(APPID).used as usize,
        accepted,
        "refused sends are not counted"
    );

    api.server.set_send_rate(None);
    let answers = burst(&api, &token, 10).await;
    assert!(answers.iter().all(|a| errcode(a) == 0), "{answers:?}");
}

/// `n` sends at once, each on its own task; their answers in completion order.
async fn burst(api: &Api, token: &str, n: usize) -> Vec<Value> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = format!("{}{SEND_PATH}?access_token={token}", api.base);
        let http = api.http.clone();
        calls.spawn(async move {
            let answer: Value = http.post(url).json(&order()).send().await?.json().await?;
            Ok::<_, reqwest::Error>(answer)
        });
    }
    let mut answers = Vec::with_capacity(n);
    while let Some(answer) = calls.join_next().await {
        answers.push(answer.unwrap().unwrap());
    }
    answers
}
