//! The WeChat endpoints over HTTP: latency, injected faults, then the logic in `state.rs`,
//! answered the way WeChat answers (HTTP 200, errcode JSON, errmsg ending in a rid).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::faults::{Fault, FaultTarget};
use super::state::{Credentials, Shared, WxError};
use super::stats::bump;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// A query string that does not even parse is treated as one without parameters, which
/// yields WeChat's "missing" errcodes instead of a framework 400.
fn params(q: Params) -> HashMap<String, String> {
    q.map(|Query(p)| p).unwrap_or_default()
}

/// WeChat's request id suffix: three groups of 8 hex digits.
fn rid() -> String {
    format!(
        "{:08x}-{:08x}-{:08x}",
        fastrand::u32(..),
        fastrand::u32(..),
        fastrand::u32(..)
    )
}

/// An errcode answer, counted in `errcode_counts`.
fn errcode_response(shared: &Shared, errcode: i64, errmsg: &str) -> Response {
    shared.counters.answered(errcode);
    Json(json!({"errcode": errcode, "errmsg": format!("{errmsg} rid: {}", rid())})).into_response()
}

fn error(shared: &Shared, e: &WxError) -> Response {
    errcode_response(shared, e.errcode, &e.errmsg)
}

/// Sleeps unless the server is shutting down; true when the sleep was cut short.
async fn sleep(shared: &Shared, d: Duration) -> bool {
    if d.is_zero() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = shared.cancel.cancelled() => true,
    }
}

fn shutting_down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "mock-wechat is shutting down",
    )
        .into_response()
}

/// The latency and fault every WeChat call goes through first (the quota and template
/// endpoints take no faults). `Err` is the answer to give instead of processing the call.
async fn prelude(shared: &Shared, target: Option<FaultTarget>) -> Result<(), Response> {
    if sleep(shared, shared.latency()).await {
        return Err(shutting_down());
    }
    match target.and_then(|t| shared.faults.next(t)) {
        None => Ok(()),
        Some(Fault::Errcode(code)) => {
            if target == Some(FaultTarget::Send) {
                shared.counters.send_error(code);
            }
            Err(errcode_response(shared, code, "injected fault"))
        }
        Some(Fault::Http(status)) => {
            bump(&shared.counters.http_errors);
            // 1xx and other non-final codes would break HTTP framing; 500 keeps the intent.
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Err((status, "injected HTTP error").into_response())
        }
        Some(Fault::Hang) => {
            // Only shutdown ends a hang; a client giving up drops this future with its
            // connection, which also frees the in-flight slot.
            shared.cancel.cancelled().await;
            Err(shutting_down())
        }
        Some(Fault::Delay(d)) => {
            if sleep(shared, d).await {
                Err(shutting_down())
            } else {
                Ok(())
            }
        }
    }
}

fn issued_response(shared: &Shared, r: Result<super::tokens::Issued, WxError>) -> Response {
    match r {
        Ok(issued) => Json(json!({
            "access_token": issued.token,
            "expires_in": issued.expires_in,
        }))
        .into_response(),
        Err(e) => error(shared, &e),
    }
}

/// `GET /cgi-bin/token?grant_type=client_credential&appid=&secret=`
pub(crate) async fn classic_token(State(shared): State<Arc<Shared>>, q: Params) -> Response {
    let _in_flight = shared.counters.enter();
    if let Err(answer) = prelude(&shared, Some(FaultTarget::Token)).await {
        return answer;
    }
    bump(&shared.counters.token_calls);
    bump(&shared.counters.classic_token_calls);
    let p = params(q);
    let get = |k: &str| p.get(k).map(String::as_str);
    issued_response(
        &shared,
        shared.classic_token(&Credentials {
            grant_type: get("grant_type"),
            appid: get("appid"),
            secret: get("secret"),
        }),
    )
}

/// `POST /cgi-bin/stable_token` with a JSON body.
pub(crate) async fn stable_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let _in_flight = shared.counters.enter();
    if let Err(answer) = prelude(&shared, Some(FaultTarget::Token)).await {
        return answer;
    }
    bump(&shared.counters.token_calls);
    bump(&shared.counters.stable_token_calls);
    let Ok(b) = serde_json::from_slice::<Map<String, Value>>(&body) else {
        return errcode_response(&shared, 47001, "data format error");
    };
    let force_refresh = match b.get("force_refresh") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => return errcode_response(&shared, 47001, "data format error"),
    };
    if force_refresh {
        bump(&shared.counters.force_refresh_calls);
    }
    let get = |k: &str| b.get(k).and_then(Value::as_str);
    issued_response(
        &shared,
        shared.stable_token(
            &Credentials {
                grant_type: get("grant_type"),
                appid: get("appid"),
                secret: get("secret"),
            },
            force_refresh,
        ),
    )
}

/// `GET /sns/jscode2session?appid&secret&js_code&grant_type=authorization_code`
pub(crate) async fn jscode2session(State(shared): State<Arc<Shared>>, q: Params) -> Response {
    let _in_flight = shared.counters.enter();
    bump(&shared.counters.jscode2session_calls);
    if let Err(answer) = prelude(&shared, Some(FaultTarget::Jscode2session)).await {
        return answer;
    }
    let p = params(q);
    let get = |k: &str| p.get(k).map(String::as_str);
    match shared.jscode2session(
        get("appid"),
        get("secret"),
        get("js_code"),
        get("grant_type"),
    ) {
        Ok((openid, session_key)) => {
            Json(json!({"openid": openid, "session_key": session_key})).into_response()
        }
        Err(e) => error(&shared, &e),
    }
}

/// `POST /cgi-bin/message/subscribe/send?access_token=…`
pub(crate) async fn send(State(shared): State<Arc<Shared>>, q: Params, body: Bytes) -> Response {
    let _in_flight = shared.counters.enter();
    bump(&shared.counters.send_calls);
    if let Err(answer) = prelude(&shared, Some(FaultTarget::Send)).await {
        return answer;
    }
    let p = params(q);
    match shared.accept_send(p.get("access_token").map(String::as_str), &body) {
        Ok((msgid, sent_event)) => {
            bump(&shared.counters.sends_ok);
            if let Some((appid, event)) = sent_event {
                // After the answer, as WeChat reports the final result asynchronously.
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = shared.push_event(&appid, event).await;
                });
            }
            Json(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid})).into_response()
        }
        Err(e) => {
            shared.counters.send_error(e.errcode);
            error(&shared, &e)
        }
    }
}

/// `POST /cgi-bin/openapi/quota/get?access_token=…` `{"cgi_path": …}`
pub(crate) async fn quota_get(
    State(shared): State<Arc<Shared>>,
    q: Params,
    body: Bytes,
) -> Response {
    let _in_flight = shared.counters.enter();
    bump(&shared.counters.quota_get_calls);
    if let Err(answer) = prelude(&shared, None).await {
        return answer;
    }
    let p = params(q);
    match shared.api_quota(p.get("access_token").map(String::as_str), &body) {
        Ok(quota) => Json(json!({"errcode": 0, "errmsg": "ok", "quota": quota})).into_response(),
        Err(e) => error(&shared, &e),
    }
}

/// `GET /wxaapi/newtmpl/gettemplate?access_token=…`
pub(crate) async fn gettemplate(State(shared): State<Arc<Shared>>, q: Params) -> Response {
    let _in_flight = shared.counters.enter();
    bump(&shared.counters.gettemplate_calls);
    if let Err(answer) = prelude(&shared, None).await {
        return answer;
    }
    let p = params(q);
    match shared.list_templates(p.get("access_token").map(String::as_str)) {
        Ok(data) => Json(json!({"errcode": 0, "errmsg": "ok", "data": data})).into_response(),
        Err(e) => error(&shared, &e),
    }
}

/// `POST /cgi-bin/clear_quota?access_token=…` `{"appid": …}`
pub(crate) async fn clear_quota(
    State(shared): State<Arc<Shared>>,
    q: Params,
    body: Bytes,
) -> Response {
    let _in_flight = shared.counters.enter();
    bump(&shared.counters.clear_quota_calls);
    if let Err(answer) = prelude(&shared, None).await {
        return answer;
    }
    let p = params(q);
    match shared.clear_quota(p.get("access_token").map(String::as_str), &body) {
        Ok(()) => Json(json!({"errcode": 0, "errmsg": "ok"})).into_response(),
        Err(e) => error(&shared, &e),
    }
}
