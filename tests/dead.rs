//! `wxpush dead`, the real binary against the real RabbitMQ: listing, `--show`, `--summary`,
//! and that looking never takes, loses or reorders a dead letter.

mod common;

use common::*;
use lapin::BasicProperties;
use serde_json::Value;

fn ids(letters: &[MixedDead]) -> Vec<String> {
    letters.iter().map(|l| l.id.clone()).collect()
}

#[tokio::test]
async fn json_lists_every_dead_letter_and_leaves_the_queue_unchanged() {
    let app = TestApp::start("dead-json").await;
    let letters = mixed_dead_letters(&app.prefix, 100);
    app.fill_mixed(&letters).await;

    let out = app.cli(&["dead", "--json"]).await;
    let listed: Value = serde_json::from_str(out.ok()).expect("a JSON array");
    let listed = listed.as_array().expect("a JSON array");
    assert_eq!(listed.len(), 100);
    for (i, (got, l)) in listed.iter().zip(&letters).enumerate() {
        assert_eq!(got["position"], i + 1);
        assert_eq!(got["id"], l.id.as_str());
        assert_eq!(got["parsable"], true);
        assert_eq!(got["type"], "order.paid");
        assert_eq!(got["app"], "default");
        assert_eq!(got["class"], l.class);
        assert_eq!(got["errcode"], l.errcode);
        assert_eq!(got["errmsg"], l.errmsg);
        assert_eq!(got["attempts"], l.attempts);
        assert_eq!(got["dead_at"], l.dead_at.as_str());
        assert_eq!(got["replayed"], l.replayed);
        // Dead for an hour (the listing ran within minutes of the fixture).
        let age = got["age_seconds"].as_u64().expect("an age");
        assert!((3600..3900).contains(&age), "age {age}");
        assert!(got["age"].as_str().unwrap().starts_with("1h"), "{got}");
        assert!(got.get("body").is_none(), "bodies only with --show");
    }

    // Listing again (as a table) sees the same; then the queue holds all, in order.
    let table = app.cli(&["dead"]).await;
    let table = table.ok();
    assert_eq!(
        table.lines().filter(|l| l.contains(&app.prefix)).count(),
        100,
        "{table}"
    );
    assert!(table.contains("ERRCODE"), "{table}");
    assert_eq!(app.drain_dead_ids(100).await, ids(&letters));
    app.cleanup().await;
}

#[tokio::test]
async fn show_prints_the_headers_and_body() {
    let app = TestApp::start("dead-show").await;
    let letters = mixed_dead_letters(&app.prefix, 20);
    app.fill_mixed(&letters).await;
    let binary = b"\xff\xfebinary\x01".to_vec();
    app.fill_dead(&[(binary.clone(), BasicProperties::default())])
        .await;
    let l = &letters[14];
    let body = String::from_utf8(l.body.clone()).unwrap();

    let out = app.cli(&["dead", "--show", &l.id]).await;
    let text = out.ok();
    assert!(text.contains(&body), "body printed as is: {text}");
    assert!(text.contains("x-wxpush-errcode: -1"), "{text}");
    assert!(text.contains("x-wxpush-errmsg: system error"), "{text}");
    assert!(text.contains("x-wxpush-attempts: 3"), "{text}");
    assert!(text.contains("content-type: application/json"), "{text}");
    assert!(!text.contains(&letters[15].id), "only that one: {text}");

    let json: Value =
        serde_json::from_str(app.cli(&["dead", "--json", "--show", &l.id]).await.ok()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["body"], body.as_str());
    assert_eq!(json[0]["headers"]["x-wxpush-errcode"], -1);

    // A body without an id is shown by position; a non-UTF-8 one escaped (JSON: base64).
    let out = app.cli(&["dead", "--show", "#21"]).await;
    assert!(out.ok().contains(r"\xff\xfebinary\x01"), "{out:#?}");
    let json: Value =
        serde_json::from_str(app.cli(&["dead", "--json", "--show", "#21"]).await.ok()).unwrap();
    assert_eq!(json[0]["body_base64"], "//5iaW5hcnkB");

    let missing = app.cli(&["dead", "--show", "no-such-id"]).await;
    assert_eq!(missing.code, Some(1), "{missing:#?}");
    assert!(missing.stderr.contains("no-such-id"), "{missing:#?}");

    let mut expected = ids(&letters);
    expected.push(String::new());
    assert_eq!(app.drain_dead_ids(21).await, expected, "nothing taken");
    app.cleanup().await;
}

#[tokio::test]
async fn summary_counts_by_errcode_and_type() {
    let app = TestApp::start("dead-summary").await;
    let letters = mixed_dead_letters(&app.prefix, 100);
    app.fill_mixed(&letters).await;

    let json: Value =
        serde_json::from_str(app.cli(&["dead", "--summary", "--json"]).await.ok()).unwrap();
    assert_eq!(json["total"], 100);
    assert_eq!(
        json["by_errcode"],
        serde_json::json!({"40003": 40, "-1": 30, "47003": 30})
    );
    assert_eq!(json["by_type"], serde_json::json!({"order.paid": 100}));

    let out = app.cli(&["dead", "--summary"]).await;
    let text = out.ok();
    let count_of = |key: &str| -> Option<u64> {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(key))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
    };
    assert!(text.starts_with("100 dead letter(s)"), "{text}");
    assert_eq!(count_of("40003"), Some(40), "{text}");
    assert_eq!(count_of("-1"), Some(30), "{text}");
    assert_eq!(count_of("47003"), Some(30), "{text}");
    assert_eq!(count_of("order.paid"), Some(100), "{text}");
    assert!(!text.contains(&app.prefix), "only the summary: {text}");

    // The listing's own summary, at its end, says the same.
    let full = app.cli(&["dead"]).await;
    let full = full.ok();
    let tail = &full[full.find("100 dead letter(s)").expect("summary at the end")..];
    assert!(
        tail.contains("40003") && !tail.contains(&app.prefix),
        "{full}"
    );

    assert_eq!(app.drain_dead_ids(100).await, ids(&letters));
    app.cleanup().await;
}
