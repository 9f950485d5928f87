//! `wxpush publish`: events reach the queue confirmed and in the order of the input, routed
//! by their type, whatever the input format.

mod common;

use common::*;

#[tokio::test]
async fn publishes_ndjson_in_file_order_with_confirms() {
    let app = TestApp::start("publish").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let ids: Vec<String> = (0..300).map(|i| format!("p-{i}")).collect();
    let lines: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| order_paid(id, i).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();

    let out = app
        .cli(&["publish", "--window", "64", file.to_str().unwrap()])
        .await;
    assert!(out.ok().contains("published 300 event(s)"), "{out:?}");
    assert!(
        !out.stderr.contains("ERROR"),
        "no error logged on a clean run: {}",
        out.stderr
    );

    let queued = app.drain_exactly(&app.config.amqp.queue, 300).await;
    let queued_ids: Vec<String> = queued.iter().map(|d| body_id(&d.data).unwrap()).collect();
    assert_eq!(queued_ids, ids, "the queue holds the events in file order");
    assert_eq!(queued[0].routing_key.as_str(), "order.paid");
    assert_eq!(
        queued[0]
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some("p-0")
    );
    app.cleanup().await;
}

#[tokio::test]
async fn publishes_a_json_array_from_stdin_and_it_is_delivered() {
    let app = TestApp::start("publish-stdin").await;
    let worker = app.worker().await;
    let events =
        serde_json::Value::Array((0..3).map(|i| order_paid(&format!("s-{i}"), i)).collect());
    let (mut command, _config) = app.command(&["publish", "-"]);
    command.stdin(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(events.to_string().as_bytes())
            .await
            .unwrap();
    }
    let out = CliOutput::from(child.wait_with_output().await.unwrap());
    assert!(out.ok().contains("published 3 event(s)"), "{out:?}");
    let sends = app.sent(3).await;
    assert_each_sent_once(&sends, 3);
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}
