//! Message pushes to a receiver over real HTTP: the popup, change and sent events, plaintext
//! and safe mode, JSON and XML, the signatures checked with `push_crypto` (the oracle), the
//! GET verification, and the receiver's answers recorded.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use support::{APPID, Api, OPENID, emulator};
use wxpush_mock_wechat::push_crypto;
use wxpush_mock_wechat::{MockOptions, PushFormat, PushTarget};

const TOKEN: &str = "AAAAA";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE";
const WAIT: Duration = Duration::from_secs(10);

/// What the receiver saw: each request's query and body.
type Seen = Arc<Mutex<Vec<(std::collections::HashMap<String, String>, String)>>>;

/// A receiver answering `status` to POSTs and echoing `echostr` to GETs.
async fn receiver(status: StatusCode) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/push",
            get(
                |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    q.get("echostr").cloned().unwrap_or_default()
                },
            )
            .post(
                move |State(seen): State<Seen>,
                      Query(q): Query<std::collections::HashMap<String, String>>,
                      body: String| async move {
                    seen.lock().unwrap().push((q, body));
                    (status, "success")
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/push"), seen)
}

/// An emulator pushing [`APPID`]'s events to a receiver that takes them all, and what that
/// receiver saw.
async fn pushing(aes: bool, format: PushFormat) -> (Api, Seen) {
    let (url, seen) = receiver(StatusCode::OK).await;
    let api = Api::start(MockOptions::default()).await;
    api.server
        .configure_push(APPID, target(&url, aes, format))
        .unwrap();
    (api, seen)
}

fn target(url: &str, aes: bool, format: PushFormat) -> PushTarget {
    PushTarget {
        url: url.to_owned(),
        token: TOKEN.to_owned(),
        aes_key: aes.then(|| KEY.to_owned()),
        format,
    }
}

/// Checks a safe-mode request as a receiver must and returns the decrypted message.
fn open_safe(q: &std::collections::HashMap<String, String>, body: &str) -> String {
    let (ts, nonce) = (&q["timestamp"], &q["nonce"]);
    assert_eq!(q["encrypt_type"], "aes");
    assert_eq!(q["signature"], push_crypto::sign(TOKEN, ts, nonce));
    let encrypt = serde_json::from_str::<Value>(body).unwrap()["Encrypt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        q["msg_signature"],
        push_crypto::msg_signature(TOKEN, ts, nonce, &encrypt)
    );
    let d = push_crypto::decrypt(KEY, &encrypt).unwrap();
    assert_eq!(d.appid, APPID);
    d.msg
}

#[tokio::test]
async fn popup_choices_record_grants_and_push_a_signed_encrypted_event() {
    let (api, seen) = pushing(true, PushFormat::Json).await;
    let server = &api.server;
    let status = server
        .user_taps_subscribe(APPID, OPENID, &[("T1", "accept"), ("T2", "reject")])
        .await
        .unwrap();
    assert_eq!(status, Some(200));
    assert_eq!(server.subscriptions_left(OPENID, "T1"), 1);
    assert_eq!(server.subscriptions_left(OPENID, "T2"), 0);

    let (q, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(q["openid"], OPENID);
    let msg: Value = serde_json::from_str(&open_safe(&q, &body)).unwrap();
    assert_eq!(msg["Event"], "subscribe_msg_popup_event");
    assert_eq!(msg["FromUserName"], OPENID);
    assert_eq!(
        msg["List"],
        json!([
            {"TemplateId": "T1", "SubscribeStatusString": "accept", "PopupScene": "0"},
            {"TemplateId": "T2", "SubscribeStatusString": "reject", "PopupScene": "0"}
        ])
    );
    // One template: `List` is the object itself.
    server
        .user_taps_subscribe(APPID, OPENID, &[("T1", "acceptWithAudio")])
        .await
        .unwrap();
    assert_eq!(server.subscriptions_left(OPENID, "T1"), 2);
    let (q, body) = seen.lock().unwrap()[1].clone();
    let msg: Value = serde_json::from_str(&open_safe(&q, &body)).unwrap();
    assert_eq!(msg["List"]["SubscribeStatusString"], "acceptWithAudio");
    assert_eq!(server.pushes().len(), 2);
    assert_eq!(server.stats().pushes, 2);

    let bad = server
        .user_taps_subscribe(APPID, OPENID, &[("T3", "maybe")])
        .await;
    assert!(bad.unwrap_err().contains("maybe"));
    assert_eq!(server.subscriptions_left(OPENID, "T3"), 0);
}

#[tokio::test]
async fn each_accepted_send_pushes_its_result_in_plaintext_xml() {
    let (api, seen) = pushing(false, PushFormat::Xml).await;
    let server = &api.server;
    let token = api.token().await;
    let send = || async {
        let body =
            json!({"touser": OPENID, "template_id": "T1", "data": {"thing1": {"value": "hi"}}});
        api.send(&token, &body).await["msgid"].as_u64().unwrap()
    };
    let first = send().await;
    server.set_sent_result(APPID, 10005, "fail_user_block");
    let second = send().await;
    let pushes = server.wait_for_pushes(2, WAIT).await;
    assert_eq!(pushes.len(), 2);

    let seen = seen.lock().unwrap().clone();
    let mut bodies: Vec<&String> = seen.iter().map(|(_, b)| b).collect();
    bodies.sort_by_key(|b| !b.contains(&format!("<MsgID>{first}</MsgID>")));
    for (q, _) in &seen {
        assert_eq!(
            q["signature"],
            push_crypto::sign(TOKEN, &q["timestamp"], &q["nonce"])
        );
        assert!(!q.contains_key("encrypt_type"));
    }
    assert!(bodies[0].contains("<Event><![CDATA[subscribe_msg_sent_event]]></Event>"));
    assert!(bodies[0].contains(&format!(
        "<SubscribeMsgSentEvent><List><TemplateId><![CDATA[T1]]></TemplateId><MsgID>{first}</MsgID><ErrorCode>0</ErrorCode><ErrorStatus><![CDATA[success]]></ErrorStatus></List></SubscribeMsgSentEvent>"
    )));
    assert!(bodies[1].contains(&format!("<MsgID>{second}</MsgID><ErrorCode>10005</ErrorCode><ErrorStatus><![CDATA[fail_user_block]]></ErrorStatus>")));
    let records = server.pushes();
    assert!(
        records
            .iter()
            .all(|r| r.event == "subscribe_msg_sent_event" && r.status == Some(200))
    );
}

#[tokio::test]
async fn turning_a_template_off_removes_grants_and_pushes_a_change_event() {
    let (api, seen) = pushing(true, PushFormat::Xml).await;
    let server = &api.server;
    server.grant_subscription(OPENID, "T1", 3);
    assert_eq!(
        server.user_turns_off(APPID, OPENID, "T1").await.unwrap(),
        Some(200)
    );
    assert_eq!(server.subscriptions_left(OPENID, "T1"), 0);
    let (q, body) = seen.lock().unwrap()[0].clone();
    assert!(body.starts_with("<xml><ToUserName><![CDATA[gh_"), "{body}");
    let encrypt = body
        .split("<Encrypt><![CDATA[")
        .nth(1)
        .and_then(|rest| rest.split("]]>").next())
        .unwrap();
    assert_eq!(
        q["msg_signature"],
        push_crypto::msg_signature(TOKEN, &q["timestamp"], &q["nonce"], encrypt)
    );
    let xml = push_crypto::decrypt(KEY, encrypt).unwrap().msg;
    assert!(xml.contains("<SubscribeMsgChangeEvent><List><TemplateId><![CDATA[T1]]></TemplateId><SubscribeStatusString><![CDATA[reject]]></SubscribeStatusString></List></SubscribeMsgChangeEvent>"), "{xml}");
}

#[tokio::test]
async fn verification_failures_and_no_target() {
    let (url, _) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let server = emulator(MockOptions::default()).await;
    assert_eq!(
        server
            .user_taps_subscribe(APPID, OPENID, &[("T1", "accept")])
            .await,
        Ok(None),
        "no target: grant only"
    );
    assert_eq!(server.subscriptions_left(OPENID, "T1"), 1);
    assert!(server.verify_url(APPID).await.is_err());
    server
        .configure_push(APPID, target(&url, false, PushFormat::Json))
        .unwrap();
    assert_eq!(server.verify_url(APPID).await, Ok(true));
    assert_eq!(
        server.user_turns_off(APPID, OPENID, "T1").await,
        Ok(Some(500))
    );
    let stats = server.stats();
    assert_eq!((stats.pushes, stats.pushes_failed), (1, 1));
    assert_eq!(server.pushes()[0].status, Some(500));
    assert!(
        server
            .configure_push(
                APPID,
                PushTarget {
                    aes_key: Some("short".into()),
                    ..target(&url, false, PushFormat::Json)
                }
            )
            .unwrap_err()
            .contains("43 base64")
    );
    assert!(
        server
            .configure_push(APPID, target("ftp://x", false, PushFormat::Json))
            .is_err()
    );
}
