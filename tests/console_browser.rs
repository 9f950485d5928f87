//! The operator console in a real browser: headless Chromium driven over WebDriver
//! (fantoccini + chromedriver, Debian's `chromium` and `chromium-driver`, which
//! `scripts/test.sh` installs). Logs in, sees the dead letters grouped by errcode, opens one,
//! filters them by age, replays a filter after its dry run, watches the emulator receive the
//! sends, looks an event up by id, and opens a user's grants.
//!
//! With `WXPUSH_CONSOLE_SCREENSHOTS=docs/console` it saves one PNG per page there (the
//! README's screenshots come from this run):
//! `WXPUSH_CONSOLE_SCREENSHOTS=$PWD/docs/console cargo test --test console_browser`.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use wxpush::worker::Worker;

const TOKEN_ENV: &str = "WXPUSH_TEST_ADMIN_TOKEN_BROWSER";
const TOKEN: &str = "test-admin-token-browser-51d0";

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    let found = Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "chromedriver is not installed: run `bash scripts/test.sh` once (it installs Debian's chromium and chromium-driver), or `apt-get install -y chromium chromium-driver`"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    Driver { child, port }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800", "--hide-scrollbars"],
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.port);
    eventually("chromedriver answers", Duration::from_secs(20), || {
        let (url, caps) = (url.clone(), caps.clone());
        async move {
            ClientBuilder::rustls()
                .expect("rustls")
                .capabilities(caps)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await
}

/// Saves a screenshot of the page when `WXPUSH_CONSOLE_SCREENSHOTS` names a directory.
async fn shot(c: &Client, name: &str) {
    let Some(dir) = std::env::var_os("WXPUSH_CONSOLE_SCREENSHOTS") else {
        return;
    };
    let png = c.screenshot().await.expect("screenshot");
    let path = PathBuf::from(dir).join(format!("{name}.png"));
    std::fs::write(&path, png).expect("screenshot written");
}

/// The text of the element `css` selects, once the page has one. Looked up again when the
/// element goes stale between finding and reading it (a page that refreshes itself, such
/// as a running job's).
async fn text(c: &Client, css: &str) -> String {
    eventually(
        &format!("`{css}` on the page"),
        Duration::from_secs(20),
        || async {
            let element = c.find(Locator::Css(css)).await.ok()?;
            element.text().await.ok()
        },
    )
    .await
}

/// Clicks the element `css` selects.
async fn click(c: &Client, css: &str) {
    let element = c.find(Locator::Css(css)).await;
    let element = element.unwrap_or_else(|e| panic!("no `{css}` to click: {e}"));
    element.click().await.unwrap();
}

/// Types `keys` into the field `css` selects.
async fn type_into(c: &Client, css: &str, keys: &str) {
    let element = c.find(Locator::Css(css)).await;
    let element = element.unwrap_or_else(|e| panic!("no `{css}` to type into: {e}"));
    element.send_keys(keys).await.unwrap();
}

#[tokio::test]
async fn log_in_see_replay_and_look_up_in_a_real_browser() {
    let driver = start_driver();
    let app = TestApp::start("console").await;
    let letters = mixed_dead_letters(&app.prefix, 30);
    app.fill_mixed(&letters).await;
    // SAFETY: every test in this process sets the same value.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    let mut config = app.config.clone();
    config.admin.token_env = Some(TOKEN_ENV.into());
    let worker = Worker::start(config).await.expect("worker starts");
    let base = format!("http://{}", worker.admin_addr);
    let c = browser(&driver).await;

    // Not logged in: sent to the login form; a wrong token is refused.
    c.goto(&format!("{base}/dead")).await.unwrap();
    let password = c.find(Locator::Css("input[type=password]")).await.unwrap();
    shot(&c, "login").await;
    password.send_keys("wrong").await.unwrap();
    click(&c, "form.login button").await;
    assert!(
        text(&c, ".notice.error")
            .await
            .contains("Wrong admin token")
    );
    let password = c.find(Locator::Css("input[type=password]")).await.unwrap();
    password.send_keys(TOKEN).await.unwrap();
    click(&c, "form.login button").await;

    // The overview: queues and apps.
    let overview = text(&c, "main").await;
    assert!(
        overview.contains("dead letters") && overview.contains("default"),
        "{overview}"
    );
    shot(&c, "overview").await;

    // Dead letters grouped by errcode.
    c.goto(&format!("{base}/dead")).await.unwrap();
    let groups = text(&c, "#groups").await;
    for (errcode, count) in [("40003", "12"), ("-1", "9"), ("47003", "9")] {
        let row: Vec<&str> = groups
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.get(1) == Some(&errcode))
            .unwrap_or_else(|| panic!("no group for {errcode} in {groups}"));
        assert_eq!(row.get(4), Some(&count), "{row:?}");
    }
    shot(&c, "dead-letters").await;

    // One letter: its headers and body.
    click(&c, "#letters tbody tr:first-child td.mono a").await;
    let body = text(&c, "#body").await;
    assert!(body.contains(&letters[0].id), "{body}");
    assert!(text(&c, "#headers").await.contains("x-wxpush-errcode"));
    shot(&c, "dead-letter").await;

    // The age filter: every letter died an hour ago, so none is older than two hours.
    c.goto(&format!("{base}/dead")).await.unwrap();
    type_into(&c, "input[name=older_than]", "2h").await;
    click(&c, "form.inline button[type=submit]").await;
    assert!(
        text(&c, "main p.muted")
            .await
            .starts_with("0 matching of 30")
    );
    type_into(&c, "input[name=newer_than]", "2h").await;
    c.find(Locator::Css("input[name=older_than]"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    click(&c, "form.inline button[type=submit]").await;
    assert!(
        text(&c, "main p.muted")
            .await
            .starts_with("30 matching of 30")
    );

    // Replay errcode -1: the group's link filters, the dry run counts, then the job runs.
    c.goto(&format!("{base}/dead")).await.unwrap();
    c.find(Locator::XPath(
        "//table[@id='groups']//td[contains(@class,'errcode')]/a[text()='-1']",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    assert!(text(&c, "main p.muted").await.starts_with("9 matching"));
    click(&c, "#replay-filter").await;
    assert_eq!(text(&c, "#matched").await, "9");
    assert_eq!(app.dead_len().await, 30, "a dry run changes nothing");
    shot(&c, "replay-dry-run").await;
    click(&c, "#run").await;
    // The job's page refreshes itself until it is done.
    eventually("the replay job done", Duration::from_secs(30), || async {
        let state = c
            .find(Locator::Css("#state"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        state.contains("done").then_some(())
    })
    .await;
    assert_eq!(text(&c, "#done").await, "9");
    shot(&c, "replay-job").await;

    // The worker sends them: the emulator records each once.
    let replayed: Vec<&MixedDead> = letters.iter().filter(|l| l.errcode == -1).collect();
    let sends = app.sent(9).await;
    let to: std::collections::BTreeSet<String> = sends
        .iter()
        .map(|s| s.body["touser"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sends.len(), 9, "each sent once");
    assert_eq!(to, replayed.iter().map(|l| openid(l.user)).collect());

    // Look one up by id: its delivery record says sent, with WeChat's msgid.
    c.goto(&format!("{base}/events")).await.unwrap();
    let id = &replayed[0].id;
    type_into(&c, "#event-id", id).await;
    click(&c, "#lookup").await;
    let record = eventually("the record says sent", Duration::from_secs(20), || async {
        c.refresh().await.ok()?;
        let record = c
            .find(Locator::Css("#record"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (record.contains("sent") && record.contains("msgid")).then_some(record)
    })
    .await;
    assert!(record.contains("order.paid"), "{record}");
    shot(&c, "event").await;

    // A user's grants (none recorded for this user).
    c.goto(&format!("{base}/grants?openid={}", openid(4)))
        .await
        .unwrap();
    assert!(text(&c, "main").await.contains("No grants recorded"));
    shot(&c, "grants").await;

    // The overview after the replay: the app's token fetched, sends counted.
    c.goto(&base).await.unwrap();
    let overview = text(&c, "main").await;
    assert!(overview.contains("sent /s"), "{overview}");
    shot(&c, "overview").await;

    // On a phone-sized screen the dead letters stay usable.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/dead")).await.unwrap();
    assert!(text(&c, "#groups").await.contains("40003"));
    shot(&c, "dead-letters-phone").await;

    c.close().await.unwrap();
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}
