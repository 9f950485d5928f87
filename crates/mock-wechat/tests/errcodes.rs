//! Every errcode the product must classify can be injected on every WeChat endpoint it
//! calls (classic and stable token, subscribe/send, jscode2session), over HTTP and through
//! the control API, and each answer is counted in the stats.

mod support;

use serde_json::{Value, json};
use support::{APPID, Api, OPENID, SECRET};
use wxpush_mock_wechat::{Fault, FaultTarget, MockOptions};

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

async fn call(api: &Api, token: &str, name: &str) -> Value {
    match name {
        "classic token" => api.classic(APPID, SECRET).await,
        "stable token" => api.stable(APPID, SECRET, false).await,
        "send" => {
            let body = json!({
                "touser": OPENID,
                "template_id": "TPL",
                "data": {"thing1": {"value": "hi"}}
            });
            api.send(token, &body).await
        }
        _ => api.jscode(APPID, SECRET, "code").await,
    }
}

#[tokio::test]
async fn every_errcode_can_be_injected_on_every_endpoint() {
    let api = Api::start(MockOptions::default()).await;
    let token = api.token().await;

    for c in CALLS {
        let faults = ERRCODES.iter().map(|&code| Fault::Errcode(code)).collect();
        api.server.push_faults(c.target, faults);
        for &code in ERRCODES {
            let answer = call(&api, &token, c.name).await;
            assert_eq!(answer["errcode"], code, "{}: {answer}", c.name);
            assert!(
                answer["errmsg"].as_str().unwrap().contains(" rid: "),
                "{answer}"
            );
        }
    }
    let stats = api.server.stats();
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
    let api = Api::start(MockOptions::default()).await;
    for (target, name) in [
        ("token", "stable token"),
        ("send", "send"),
        ("jscode2session", "jscode2session"),
    ] {
        let faults: Vec<Value> = [61004, 40243, 48004]
            .iter()
            .map(|c| json!({"errcode": c}))
            .collect();
        let (status, _) = api
            .control("faults", json!({"target": target, "faults": faults}))
            .await;
        assert_eq!(status, 200);
        for code in [61004, 40243, 48004] {
            assert_eq!(call(&api, "x", name).await["errcode"], code, "{name}");
        }
    }
}
