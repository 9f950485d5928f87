//! Every errcode the product must classify can be injected on every WeChat endpoint it
//! calls (classic and stable token, subscribe/send, jscode2session), over HTTP and through
//! the control API, and each answer is counted in the stats.

use std::net::SocketAddr;

use serde_json::{Value, json};
use wxpush_mock_wechat::{Fault, FaultTarget, MockOptions, MockServer};

/// The errcodes of issue 11 and CONTRACT §2: credential, permanent, limits, token, refused
/// and transient classes.
const ERRCODES: &[i64] = &[
    61004, 40243, 48001, 48004, 40226, 47001, 50002, 45009, 45011, 40001, 40014, 42001, 40013,
    40125, 40164, 43101, 40003, 40037, 47003, 41030, 40029, 40163, -1,
];

struct Call {
    target: FaultTarget,
    name: &'static str,
}

const CALLS: &[Call] = &[
    Call {
        target: FaultTarget::Token,
        name: "classic token",
    },
    Call {
        target: FaultTarget::Token,
        name: "stable token",
    },
    Call {
        target: FaultTarget::Send,
        name: "send",
    },
    Call {
        target: FaultTarget::Jscode2session,
        name: "jscode2session",
    },
];

async fn call(http: &reqwest::Client, base: &str, token: &str, name: &str) -> Value {
    let req = match name {
        "classic token" => http.get(format!("{base}/cgi-bin/token")).query(&[
            ("grant_type", "client_credential"),
            ("appid", "wx1"),
            ("secret", "s"),
        ]),
        "stable token" => http
            .post(format!("{base}/cgi-bin/stable_token"))
            .json(&json!({"grant_type": "client_credential", "appid": "wx1", "secret": "s"})),
        "send" => http
            .post(format!("{base}/cgi-bin/message/subscribe/send"))
            .query(&[("access_token", token)])
            .json(&json!({
                "touser": "o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
                "template_id": "TPL",
                "data": {"thing1": {"value": "hi"}}
            })),
        _ => http.get(format!("{base}/sns/jscode2session")).query(&[
            ("appid", "wx1"),
            ("secret", "s"),
            ("js_code", "code"),
            ("grant_type", "authorization_code"),
        ]),
    };
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn every_errcode_can_be_injected_on_every_endpoint() {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = MockServer::start(MockOptions::default(), listen)
        .await
        .unwrap();
    let (http, base) = (reqwest::Client::new(), server.base_url());
    let token = call(&http, &base, "", "stable token").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    for c in CALLS {
        let faults = ERRCODES.iter().map(|&code| Fault::Errcode(code)).collect();
        server.push_faults(c.target, faults);
        for &code in ERRCODES {
            let answer = call(&http, &base, &token, c.name).await;
            assert_eq!(answer["errcode"], code, "{}: {answer}", c.name);
            assert!(
                answer["errmsg"].as_str().unwrap().contains(" rid: "),
                "{answer}"
            );
        }
    }
    let stats = server.stats();
    for &code in ERRCODES {
        assert_eq!(
            stats.errcode_counts.get(&code.to_string()),
            Some(&(CALLS.len() as u64)),
            "{code}"
        );
        assert_eq!(
            stats.sends_by_errcode.get(&code.to_string()),
            Some(&1),
            "{code}"
        );
    }
}

#[tokio::test]
async fn errcodes_can_be_injected_through_the_control_api() {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = MockServer::start(MockOptions::default(), listen)
        .await
        .unwrap();
    let (http, base) = (reqwest::Client::new(), server.base_url());
    for (target, name) in [
        ("token", "stable token"),
        ("send", "send"),
        ("jscode2session", "jscode2session"),
    ] {
        let faults: Vec<Value> = [61004, 40243, 48004]
            .iter()
            .map(|c| json!({"errcode": c}))
            .collect();
        let status = http
            .post(format!("{base}/mock/faults"))
            .json(&json!({"target": target, "faults": faults}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        for code in [61004, 40243, 48004] {
            assert_eq!(
                call(&http, &base, "x", name).await["errcode"],
                code,
                "{name}"
            );
        }
    }
}
