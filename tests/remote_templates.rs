//! The account's templates from WeChat (gettemplate) against the config, on the emulator:
//! `wxpush check --remote` passing when they match and naming each mismatch (a wrong key, a
//! wrong template id) by template and key; `wxpush templates` printing ready stubs; and
//! `wxpush run` logging the same mismatches once it holds the app's token, and running on.
//!
//! The emulator serves `GET /wxaapi/newtmpl/gettemplate` from its registered templates
//! only from branch `emu-limits` on; until that is merged these tests are ignored.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The test config's two templates, registered in the account exactly as configured.
fn register_matching(app: &TestApp) {
    app.mock.register_template(
        "TPL_ORDER_PAID",
        &["character_string1", "amount2", "time3", "thing4"],
    );
    app.mock
        .register_template("TPL_TASK_DUE", &["thing1", "phrase2"]);
}

/// The account as a user gets it wrong: order.paid's template has `thing5` where the
/// config says `thing4`, and task.due's template has another id than the config's.
fn register_mismatching(app: &TestApp) {
    app.mock.register_template(
        "TPL_ORDER_PAID",
        &["character_string1", "amount2", "time3", "thing5"],
    );
    app.mock
        .register_template("TPL_TASK_DUE_V2", &["thing1", "phrase2"]);
}

#[tokio::test]
async fn check_remote_passes_when_every_template_matches() {
    let app = TestApp::start("remote-ok").await;
    register_matching(&app);
    let out = app.cli(&["check", "--remote"]).await;
    assert!(
        out.ok()
            .contains("app `default`: templates match the account"),
        "{out:#?}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn check_remote_names_a_wrong_key_and_a_wrong_template_id() {
    let app = TestApp::start("remote-bad").await;
    register_mismatching(&app);
    let out = app.cli(&["check", "--remote"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    let text = &out.stdout;
    assert!(
        text.contains("template for `order.paid` (TPL_ORDER_PAID): key `thing5` of the account's template is missing from [templates.data]"),
        "{text}"
    );
    assert!(
        text.contains("template for `order.paid` (TPL_ORDER_PAID): data key `thing4` is not a key of the account's template"),
        "{text}"
    );
    assert!(
        text.contains("template for `task.due`: template_id `TPL_TASK_DUE` is not one of the account's templates"),
        "{text}"
    );
    assert!(
        text.contains("`TPL_TASK_DUE_V2` has exactly these keys"),
        "{text}"
    );
    assert!(
        out.stderr
            .contains("3 problem(s) against the templates on WeChat"),
        "{out:#?}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn templates_prints_a_ready_stub_for_each_account_template() {
    let app = TestApp::start("templates").await;
    register_matching(&app);
    let out = app.cli(&["templates"]).await;
    let text = out.ok();
    assert!(text.contains("# app `default`: 2 template(s)"), "{text}");
    assert!(text.contains("template_id = \"TPL_ORDER_PAID\""), "{text}");
    assert!(text.contains("template_id = \"TPL_TASK_DUE\""), "{text}");
    assert!(text.contains("thing4 = \"{thing4}\""), "{text}");
    assert!(text.contains("phrase2 = \"{phrase2}\""), "{text}");
    app.cleanup().await;
}

#[tokio::test]
async fn run_logs_each_mismatch_and_keeps_running() {
    let app = TestApp::start("remote-run").await;
    register_mismatching(&app);
    let (mut command, _file) = app.command(&["run"]);
    let mut child = command.spawn().expect("wxpush run starts");
    // The check runs once the worker holds the app's token: one message fetches it (its
    // send then fails on the wrong key, which is the point of the check).
    app.publish(&json!({
        "id": "remote-run-1",
        "type": "order.paid",
        "recipient": {"openid": openid(1)},
        "data": {"order_no": "A1", "amount": "1", "paid_at": "2026-11-24T10:00:00+08:00"}
    }))
    .await;
    // Logs are JSON lines on stderr.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let wanted = [
        "key `thing5` of the account's template is missing",
        "data key `thing4` is not a key of the account's template",
        "template_id `TPL_TASK_DUE` is not one of the account's templates",
    ];
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("\"level\":\"WARN\"") {
                seen.push(line);
            }
            if wanted.iter().all(|w| seen.iter().any(|l| l.contains(w))) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "warnings seen: {seen:#?}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker keeps running after logging the mismatches"
    );
    child.kill().await.unwrap();
    app.cleanup().await;
}
