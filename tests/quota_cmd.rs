//! `wxpush quota` on the emulator: today's subscribe/send counts per app, the reset behind
//! `--clear` (never without a confirmation), and clear errors for bad usage.
//!
//! The emulator answers `POST /cgi-bin/openapi/quota/get` and `POST /cgi-bin/clear_quota`
//! only from branch `emu-limits` on; the tests that need them are ignored until then.

mod common;

use common::*;
use serde_json::{Value, json};

/// `n` accepted subscribe/send calls for the test app, straight to the emulator.
async fn send_directly(app: &TestApp, n: usize) {
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}/cgi-bin/stable_token", app.mock.base_url()))
        .json(&json!({"grant_type": "client_credential", "appid": APPID, "secret": SECRET}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().expect("a token").to_owned();
    for i in 0..n {
        let answer: Value = http
            .post(format!(
                "{}/cgi-bin/message/subscribe/send?access_token={token}",
                app.mock.base_url()
            ))
            .json(&json!({
                "touser": openid(i),
                "template_id": "TPL_TASK_DUE",
                "data": {"thing1": {"value": "x"}, "phrase2": {"value": "进行中"}}
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["errcode"], 0, "{answer}");
    }
}

/// The numbers of the `default` app's row: daily_limit, used, remain.
fn row(stdout: &str) -> Vec<u64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("default "))
        .unwrap_or_else(|| panic!("no row for app default in:\n{stdout}"));
    line.split_whitespace()
        .skip(2)
        .map(|n| n.parse().expect("a count"))
        .collect()
}

#[tokio::test]
async fn quota_shows_todays_subscribe_send_counts_and_clear_resets_them() {
    let app = TestApp::start("quota").await;
    send_directly(&app, 3).await;
    let out = app.cli(&["quota"]).await;
    let text = out.ok();
    assert!(text.contains("daily_limit"), "{text}");
    let [limit, used, remain] = row(text)[..] else {
        panic!("three numbers: {text}")
    };
    assert_eq!(used, 3, "{text}");
    assert_eq!(limit - used, remain, "{text}");
    let out = app.cli(&["quota", "--clear", "--yes"]).await;
    assert!(out.stderr.contains("quota cleared"), "{out:#?}");
    assert_eq!(row(out.ok())[1], 0, "used after clear_quota");
    app.cleanup().await;
}

#[tokio::test]
async fn clear_without_yes_off_a_terminal_is_refused_before_any_call() {
    let app = TestApp::start("quota-confirm").await;
    let out = app.cli(&["quota", "--clear"]).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("add --yes to confirm"), "{out:#?}");
    assert_eq!(
        app.mock.stats().token_calls,
        0,
        "nothing was asked of WeChat"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn yes_without_clear_and_an_unknown_app_are_usage_errors() {
    let app = TestApp::start("quota-usage").await;
    let out = app.cli(&["quota", "--yes"]).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("--clear"), "{out:#?}");
    let out = app.cli(&["quota", "--app", "nope"]).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stderr
            .contains("no [apps.nope] in the config (apps: default)"),
        "{out:#?}"
    );
    app.cleanup().await;
}
