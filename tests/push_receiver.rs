//! The message-push receiver against the emulator's real pushes and hand-made requests:
//! the GET verification, plaintext and safe mode in JSON and XML with `List` as an object
//! and as an array, every refusal (each leaves Redis untouched), WeChat's retries counted
//! once, and the emulator's `push_crypto` (the oracle) against the product's decryption.

mod common;

use common::push::*;
use common::{APPID, openid};
use proptest::prelude::*;
use wxpush::push::crypto::{self, AesKey};
use wxpush::store::delivery_result;
use wxpush_mock_wechat::{PushFormat, push_crypto};

#[tokio::test]
async fn get_verification_echoes_echostr_only_when_signed() {
    let h = PushHarness::start("push-verify").await;
    let addr = h.receiver().await;
    h.point_emulator(addr, "default", PushFormat::Json);
    assert_eq!(h.mock.verify_url(APPID).await, Ok(true));

    let ts = now_s().to_string();
    let forged = h
        .http
        .get(url(addr, "default"))
        .query(&[
            ("signature", push_crypto::sign("wrong-token", &ts, "1")),
            ("timestamp", ts.clone()),
            ("nonce", "1".into()),
            ("echostr", "42".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    assert_ne!(forged.text().await.unwrap(), "42");
    h.cleanup().await;
}

#[tokio::test]
async fn plaintext_json_and_xml_with_list_as_object_and_array() {
    let h = PushHarness::start("push-plain").await;
    let addr = h.receiver().await;
    let user = openid(1);

    h.point_emulator(addr, "default", PushFormat::Json);
    let one = h
        .mock
        .user_taps_subscribe(APPID, &user, &[(ONCE, "accept")])
        .await;
    assert_eq!(one, Ok(Some(200)), "List as one object, JSON");
    assert_eq!(h.count("default", &user, ONCE).await, Some(1));

    h.point_emulator(addr, "default", PushFormat::Xml);
    let two = h
        .mock
        .user_taps_subscribe(APPID, &user, &[(ONCE, "acceptWithAudio"), (LONG, "accept")])
        .await;
    assert_eq!(two, Ok(Some(200)), "several <List> elements, XML");
    assert_eq!(h.count("default", &user, ONCE).await, Some(2));
    assert_eq!(h.count("default", &user, LONG).await, Some(1));

    let ts = now_s();
    let array = popup_json(&openid(2), ts, &[(ONCE, "accept"), (LONG, "reject")]);
    let (status, text) = h
        .post(addr, "default", &plain_query(TOKEN, ts, &nonce()), array)
        .await;
    assert_eq!(
        (status, text.as_str()),
        (200, "success"),
        "List as an array, JSON"
    );
    assert_eq!(h.count("default", &openid(2), ONCE).await, Some(1));
    let rejected = h.grants("default", &openid(2)).await;
    let long = rejected.iter().find(|r| r.template_id == LONG).unwrap();
    assert_eq!((long.count, long.choice.as_deref()), (0, Some("reject")));
    h.cleanup().await;
}

#[tokio::test]
async fn safe_mode_json_and_xml_decrypt_and_land() {
    let h = PushHarness::start("push-safe").await;
    let addr = h.receiver().await;
    let user = openid(3);

    h.point_emulator(addr, "safe", PushFormat::Json);
    let json = h
        .mock
        .user_taps_subscribe(common::push::SAFE_APPID, &user, &[("TPL_SAFE", "accept")])
        .await;
    assert_eq!(json, Ok(Some(200)));
    h.point_emulator(addr, "safe", PushFormat::Xml);
    let xml = h
        .mock
        .user_taps_subscribe(
            common::push::SAFE_APPID,
            &user,
            &[("TPL_SAFE", "accept"), ("TPL_SAFE2", "accept")],
        )
        .await;
    assert_eq!(xml, Ok(Some(200)));
    assert_eq!(h.count("safe", &user, "TPL_SAFE").await, Some(2));
    assert_eq!(h.count("safe", &user, "TPL_SAFE2").await, Some(1));
    h.cleanup().await;
}

#[tokio::test]
async fn each_refusal_answers_4xx_and_records_nothing() {
    let h = PushHarness::start("push-refuse").await;
    let addr = h.receiver().await;
    let user = openid(4);
    let ts = now_s();
    let body = || popup_json(&user, ts, &[(ONCE, "accept")]);

    let forged = plain_query("not-the-token", ts, &nonce());
    assert_eq!(
        h.post(addr, "default", &forged, body()).await.0,
        403,
        "forged signature"
    );
    let stale = plain_query(TOKEN, ts - 301, &nonce());
    assert_eq!(
        h.post(addr, "default", &stale, body()).await.0,
        403,
        "stale timestamp"
    );
    let future = plain_query(TOKEN, ts + 301, &nonce());
    assert_eq!(
        h.post(addr, "default", &future, body()).await.0,
        403,
        "future timestamp"
    );
    let big = format!("{}{}", body(), " ".repeat(64 * 1024));
    assert_eq!(
        h.post(addr, "default", &plain_query(TOKEN, ts, &nonce()), big)
            .await
            .0,
        413,
        "body over 64 KiB"
    );
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><xml><FromUserName>&lol3;</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>subscribe_msg_popup_event</Event></xml>"#;
    assert_eq!(
        h.post(addr, "default", &plain_query(TOKEN, ts, &nonce()), bomb)
            .await
            .0,
        400,
        "XML bomb"
    );
    let undeclared = "<xml><FromUserName>&lol;</FromUserName></xml>";
    assert_eq!(
        h.post(
            addr,
            "default",
            &plain_query(TOKEN, ts, &nonce()),
            undeclared
        )
        .await
        .0,
        400,
        "an undeclared entity"
    );
    for bad in [
        "{\"FromUserName\": ",
        "<xml><a></b></xml>",
        "hello",
        r#"{"FromUserName":"o","CreateTime":"1","MsgType":"event","Event":"subscribe_msg_popup_event"}"#,
    ] {
        assert_eq!(
            h.post(addr, "default", &plain_query(TOKEN, ts, &nonce()), bad)
                .await
                .0,
            400,
            "malformed: {bad}"
        );
    }
    assert_eq!(
        h.post(addr, "nosuchapp", &plain_query(TOKEN, ts, &nonce()), body())
            .await
            .0,
        404,
        "unknown app"
    );
    assert_eq!(
        h.post(addr, "bare", &plain_query(TOKEN, ts, &nonce()), body())
            .await
            .0,
        404,
        "app without push secrets"
    );
    assert_eq!(
        h.post(addr, "safe", &plain_query(TOKEN, ts, &nonce()), body())
            .await
            .0,
        403,
        "plaintext push to a safe-mode app"
    );
    let (query, envelope) = safe_push("wxsomeoneelse0001", &body(), ts, &nonce());
    assert_eq!(
        h.post(addr, "safe", &query, envelope).await.0,
        403,
        "another app's ciphertext"
    );
    let (mut query, envelope) = safe_push(common::push::SAFE_APPID, &body(), ts, &nonce());
    query.retain(|(k, _)| *k != "msg_signature");
    query.push(("msg_signature", push_crypto::sign(TOKEN, "1", "2")));
    assert_eq!(
        h.post(addr, "safe", &query, envelope).await.0,
        403,
        "forged msg_signature"
    );
    assert_eq!(
        h.keys_written().await,
        Vec::<String>::new(),
        "nothing recorded"
    );

    // A refused request does not use up its nonce; an accepted one does.
    let n = nonce();
    assert_eq!(
        h.post(addr, "default", &plain_query("x", ts, &n), body())
            .await
            .0,
        403
    );
    assert_eq!(
        h.post(addr, "default", &plain_query(TOKEN, ts, &n), body())
            .await,
        (200, "success".into())
    );
    let replay = h
        .post(
            addr,
            "default",
            &plain_query(TOKEN, ts, &n),
            popup_json(&user, ts + 1, &[(ONCE, "accept")]),
        )
        .await;
    assert_eq!(replay.0, 403, "replayed nonce");
    assert_eq!(
        h.count("default", &user, ONCE).await,
        Some(1),
        "the replay recorded nothing"
    );
    h.cleanup().await;
}

#[tokio::test]
async fn the_same_push_delivered_three_times_counts_once() {
    let h = PushHarness::start("push-retry").await;
    let addr = h.receiver().await;
    let user = openid(5);
    let created = now_s();
    let push = popup_json(&user, created, &[(ONCE, "accept"), (LONG, "accept")]);
    for _ in 0..3 {
        // WeChat's retry: the same event, a fresh request.
        let answer = h
            .post(
                addr,
                "default",
                &plain_query(TOKEN, now_s(), &nonce()),
                push.clone(),
            )
            .await;
        assert_eq!(answer, (200, "success".into()));
    }
    assert_eq!(h.count("default", &user, ONCE).await, Some(1));
    // A later tap (another CreateTime) is a new grant.
    let later = popup_json(&user, created + 1, &[(ONCE, "accept")]);
    h.post(
        addr,
        "default",
        &plain_query(TOKEN, now_s(), &nonce()),
        later,
    )
    .await;
    assert_eq!(h.count("default", &user, ONCE).await, Some(2));
    h.cleanup().await;
}

#[tokio::test]
async fn emulator_taps_and_turn_off_land_in_the_ledger() {
    let h = PushHarness::start("push-journey").await;
    let addr = h.receiver().await;
    h.point_emulator(addr, "default", PushFormat::Json);
    let user = openid(6);
    let tapped = h
        .mock
        .user_taps_subscribe(APPID, &user, &[(ONCE, "accept"), (LONG, "accept")])
        .await;
    assert_eq!(tapped, Ok(Some(200)));
    let off = h.mock.user_turns_off(APPID, &user, LONG).await;
    assert_eq!(off, Ok(Some(200)));

    let records = h.grants("default", &user).await;
    let once = records.iter().find(|r| r.template_id == ONCE).unwrap();
    assert_eq!(once.count, 1);
    assert_eq!(once.kind, Some(wxpush::store::grants::Kind::OneTime));
    assert_eq!(once.choice.as_deref(), Some("accept"));
    let long = records.iter().find(|r| r.template_id == LONG).unwrap();
    assert_eq!(long.kind, Some(wxpush::store::grants::Kind::LongTerm));
    assert_eq!((long.count, long.choice.as_deref()), (0, Some("off")));
    assert!(h.mock.pushes().iter().all(|p| p.status == Some(200)));
    h.cleanup().await;
}

#[tokio::test]
async fn sent_events_record_the_final_result_by_msgid() {
    let h = PushHarness::start("push-sent").await;
    let addr = h.receiver().await;
    let ts = now_s();
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_sent_event]]></Event><SubscribeMsgSentEvent><List><TemplateId><![CDATA[{ONCE}]]></TemplateId><MsgID>1700000000000001</MsgID><ErrorCode>0</ErrorCode><ErrorStatus><![CDATA[success]]></ErrorStatus></List></SubscribeMsgSentEvent></xml>",
        openid(7)
    );
    let (query, body) = safe_push(common::push::SAFE_APPID, &xml, ts, &nonce());
    assert_eq!(
        h.post(addr, "safe", &query, body).await,
        (200, "success".into())
    );
    let mut conn = h.redis.get().await.unwrap();
    let result = delivery_result::read(&mut conn, &h.keys.msg_result("safe", "1700000000000001"))
        .await
        .unwrap()
        .expect("result recorded");
    assert_eq!((result.errcode, result.status.as_str()), (0, "success"));
    assert_eq!(
        (result.template_id.as_str(), result.openid.as_str()),
        (ONCE, openid(7).as_str())
    );
    assert!(
        h.keys_written()
            .await
            .iter()
            .all(|k| !k.contains(":grants:")),
        "no ledger change"
    );
    h.cleanup().await;
}

#[tokio::test]
async fn unknown_event_types_are_accepted_and_ignored() {
    let metrics = wxpush::admin::metrics::install();
    let h = PushHarness::start("push-other").await;
    let addr = h.receiver().await;
    let ts = now_s();
    let text = serde_json::json!({"ToUserName": "gh_x", "FromUserName": openid(8), "CreateTime": ts, "MsgType": "text", "Content": "hi"}).to_string();
    let event = serde_json::json!({"ToUserName": "gh_x", "FromUserName": openid(8), "CreateTime": ts, "MsgType": "event", "Event": "user_enter_tempsession"}).to_string();
    for body in [text, event] {
        let answer = h
            .post(addr, "default", &plain_query(TOKEN, ts, &nonce()), body)
            .await;
        assert_eq!(answer, (200, "success".into()));
    }
    let written = h.keys_written().await;
    assert_eq!(written.len(), 2, "the two nonces: {written:?}");
    let counted = metrics
        .render()
        .lines()
        .find(|l| {
            l.starts_with("wxpush_push_events_total{")
                && l.contains(r#"event="other""#)
                && l.contains(r#"result="ignored""#)
        })
        .map(|l| l.rsplit(' ').next().unwrap().to_owned());
    assert_eq!(counted.as_deref(), Some("2"), "counted as ignored");
    assert!(
        written.iter().all(|k| k.contains(":push-nonce:")),
        "only nonces: {written:?}"
    );
    h.cleanup().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The emulator's encryption (written from WeChat's docs on its own) and the product's
    /// decryption agree on any message and appid.
    #[test]
    fn emulator_encrypt_then_product_decrypt_round_trips(msg in ".{0,300}", appid in "[a-zA-Z0-9_]{0,40}") {
        let encrypt = push_crypto::encrypt(AES_KEY, &appid, &msg).unwrap();
        let key = AesKey::from_encoding_key(AES_KEY).unwrap();
        let decrypted = crypto::decrypt(&key, &encrypt).unwrap();
        prop_assert_eq!(decrypted.msg, msg);
        prop_assert_eq!(decrypted.appid, appid);
        let ts = "1714112445";
        prop_assert!(crypto::verify(&push_crypto::msg_signature(TOKEN, ts, "1", &encrypt), &[TOKEN, ts, "1", &encrypt]));
    }
}

#[tokio::test]
async fn wxpush_run_serves_the_receiver_when_push_listen_is_set() {
    // SAFETY: every test in the process sets the same value.
    unsafe { std::env::set_var(TOKEN_ENV, TOKEN) };
    let app = common::TestApp::start_with("push-run", Default::default(), |config| {
        config.push = Some(wxpush::config::PushConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
        });
        let default = config.apps.get_mut("default").unwrap().get_mut();
        default.push_token_env = Some(TOKEN_ENV.into());
    })
    .await;
    let worker = app.worker().await;
    let addr = worker.push_addr.expect("the receiver is served");
    app.mock
        .configure_push(
            APPID,
            wxpush_mock_wechat::PushTarget {
                url: url(addr, "default"),
                token: TOKEN.into(),
                aes_key: None,
                format: PushFormat::Json,
            },
        )
        .unwrap();
    assert_eq!(app.mock.verify_url(APPID).await, Ok(true));
    let tapped = app
        .mock
        .user_taps_subscribe(APPID, &openid(9), &[(ONCE, "accept")])
        .await;
    assert_eq!(tapped, Ok(Some(200)));
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}
