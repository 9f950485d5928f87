//! The control API under `/mock/`: lets a demo, a shell script or a test in another process
//! set the emulator up and read what it saw, mirroring the `MockServer` methods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::faults::{Fault, FaultTarget};
use super::push::PushTarget;
use super::state::Shared;
use crate::templates::{TemplateDef, TemplateKind};

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/mock/apps", post(apps))
        .route("/mock/codes", post(codes))
        .route("/mock/subscriptions", post(subscriptions))
        .route("/mock/templates", post(templates))
        .route("/mock/faults", post(faults))
        .route("/mock/fault-rate", post(fault_rate))
        .route("/mock/latency", post(latency))
        .route("/mock/expire-tokens", post(expire_tokens))
        .route("/mock/send-quota", post(send_quota))
        .route("/mock/send-rate", post(send_rate))
        .route("/mock/new-quota-day", post(new_quota_day))
        .route("/mock/push-target", post(push_target))
        .route("/mock/user-taps", post(user_taps))
        .route("/mock/user-turns-off", post(user_turns_off))
        .route("/mock/sent-result", post(sent_result))
        .route("/mock/verify-url", post(verify_url))
        .route("/mock/pushes", get(pushes))
        .route("/mock/stats", get(stats))
        .route("/mock/sends", get(sends))
        .route("/mock/reset", post(reset))
}

/// A control request that cannot be applied: answered 400 `{"error": "…"}`.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, Json(json!({"error": self.0}))).into_response()
    }
}

type Answer = Result<Response, BadRequest>;

fn reply(body: serde_json::Value) -> Answer {
    Ok(Json(body).into_response())
}

fn ok() -> Answer {
    reply(json!({"ok": true}))
}

/// A control request's JSON body, parsed whatever its content type so `curl -d` works
/// without `-H`; one that does not parse is a [`BadRequest`].
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&body)
            .map(Body)
            .map_err(|e| BadRequest(format!("bad request body: {e}")).into_response())
    }
}

/// Refuses the first of `fields` (name, value) that is empty: serde takes `""` for a string
/// field, but no app, code, user or template is named by it.
fn non_empty(fields: &[(&str, &str)]) -> Result<(), BadRequest> {
    match fields.iter().find(|(_, value)| value.is_empty()) {
        Some((field, _)) => Err(BadRequest(format!("{field} must not be empty"))),
        None => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppBody {
    appid: String,
    secret: String,
}

async fn apps(State(s): State<Arc<Shared>>, Body(b): Body<AppBody>) -> Answer {
    non_empty(&[("appid", &b.appid), ("secret", &b.secret)])?;
    s.register_app(&b.appid, &b.secret);
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    appid: String,
    js_code: String,
    openid: String,
}

async fn codes(State(s): State<Arc<Shared>>, Body(b): Body<CodeBody>) -> Answer {
    non_empty(&[
        ("appid", &b.appid),
        ("js_code", &b.js_code),
        ("openid", &b.openid),
    ])?;
    s.register_code(&b.appid, &b.js_code, &b.openid);
    ok()
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionBody {
    openid: String,
    template_id: String,
    #[serde(default = "one")]
    count: u32,
}

async fn subscriptions(State(s): State<Arc<Shared>>, Body(b): Body<SubscriptionBody>) -> Answer {
    non_empty(&[("openid", &b.openid), ("template_id", &b.template_id)])?;
    s.grant_subscription(&b.openid, &b.template_id, b.count);
    let left = s.subscriptions_left(&b.openid, &b.template_id);
    reply(json!({"ok": true, "remaining": left}))
}

fn one_time() -> u8 {
    2
}

/// `{"template_id", "keys", "title"?, "type"?: 2|3, "enums"?: {key: [values]},
/// "labels"?: {key: label}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateBody {
    template_id: String,
    keys: Vec<String>,
    title: Option<String>,
    #[serde(rename = "type", default = "one_time")]
    kind: u8,
    #[serde(default)]
    enums: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

async fn templates(State(s): State<Arc<Shared>>, Body(b): Body<TemplateBody>) -> Answer {
    let kind = TemplateKind::from_code(b.kind).ok_or_else(|| {
        BadRequest(format!(
            "type {} is not a template type (2 one-time, 3 long-term)",
            b.kind
        ))
    })?;
    let def = TemplateDef {
        title: b.title.unwrap_or_else(|| b.template_id.clone()),
        template_id: b.template_id,
        kind,
        keys: b.keys,
        enum_values: b.enums,
        labels: b.labels,
    };
    // A key WeChat has no type for could never be sent; catch the typo here.
    def.check().map_err(BadRequest)?;
    s.add_template(def);
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsBody {
    target: FaultTarget,
    faults: Vec<Fault>,
}

async fn faults(State(s): State<Arc<Shared>>, Body(b): Body<FaultsBody>) -> Answer {
    s.faults.push(b.target, b.faults);
    ok()
}

fn full_ratio() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRateBody {
    target: FaultTarget,
    fault: Option<Fault>,
    /// Defaults to 1.0: "every call" is the common case when a fault is named.
    #[serde(default = "full_ratio")]
    ratio: f64,
}

async fn fault_rate(State(s): State<Arc<Shared>>, Body(b): Body<FaultRateBody>) -> Answer {
    if !(0.0..=1.0).contains(&b.ratio) {
        return Err(BadRequest("ratio must be between 0 and 1".into()));
    }
    s.faults.set_rate(b.target, b.fault, b.ratio);
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyBody {
    ms: u64,
}

async fn latency(State(s): State<Arc<Shared>>, Body(b): Body<LatencyBody>) -> Answer {
    s.set_latency(Duration::from_millis(b.ms));
    ok()
}

async fn expire_tokens(State(s): State<Arc<Shared>>) -> Answer {
    s.expire_all_tokens();
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendQuotaBody {
    appid: String,
    daily_limit: Option<u64>,
    #[serde(default)]
    exhaust: bool,
}

/// Sets the app's daily limit and/or uses up today's quota, then answers the quota as
/// get_api_quota would; `{"appid"}` alone only reads it.
async fn send_quota(State(s): State<Arc<Shared>>, Body(b): Body<SendQuotaBody>) -> Answer {
    non_empty(&[("appid", &b.appid)])?;
    if let Some(limit) = b.daily_limit {
        s.set_send_quota(&b.appid, limit);
    }
    if b.exhaust {
        s.exhaust_send_quota(&b.appid);
    }
    reply(json!({"ok": true, "quota": s.send_quota(&b.appid)}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRateBody {
    /// `null` lifts the limit; 0 refuses every send with 45011.
    per_sec: Option<u32>,
}

async fn send_rate(State(s): State<Arc<Shared>>, Body(b): Body<SendRateBody>) -> Answer {
    s.set_send_rate(b.per_sec);
    ok()
}

async fn new_quota_day(State(s): State<Arc<Shared>>) -> Answer {
    s.new_quota_day();
    ok()
}

/// `deny_unknown_fields` does not work with `flatten`, so a misspelt optional field of
/// this body is ignored.
#[derive(Deserialize)]
struct PushTargetBody {
    appid: String,
    #[serde(flatten)]
    target: PushTarget,
}

async fn push_target(State(s): State<Arc<Shared>>, Body(b): Body<PushTargetBody>) -> Answer {
    non_empty(&[("appid", &b.appid)])?;
    s.push.configure(&b.appid, b.target).map_err(BadRequest)?;
    ok()
}

fn pushed(result: Result<Option<u16>, String>) -> Answer {
    let status = result.map_err(BadRequest)?;
    reply(json!({"ok": true, "status": status}))
}

/// `{"appid", "openid", "choices": [["TEMPLATE_ID", "accept"], …]}`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserTapsBody {
    appid: String,
    openid: String,
    choices: Vec<(String, String)>,
}

async fn user_taps(State(s): State<Arc<Shared>>, Body(b): Body<UserTapsBody>) -> Answer {
    let choices: Vec<(&str, &str)> = b
        .choices
        .iter()
        .map(|(t, c)| (t.as_str(), c.as_str()))
        .collect();
    pushed(s.user_taps(&b.appid, &b.openid, &choices).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserTurnsOffBody {
    appid: String,
    openid: String,
    template_id: String,
}

async fn user_turns_off(State(s): State<Arc<Shared>>, Body(b): Body<UserTurnsOffBody>) -> Answer {
    pushed(s.user_turns_off(&b.appid, &b.openid, &b.template_id).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SentResultBody {
    appid: String,
    error_code: i64,
    error_status: String,
}

async fn sent_result(State(s): State<Arc<Shared>>, Body(b): Body<SentResultBody>) -> Answer {
    s.push
        .set_sent_result(&b.appid, b.error_code, &b.error_status);
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppBodyOnly {
    appid: String,
}

async fn verify_url(State(s): State<Arc<Shared>>, Body(b): Body<AppBodyOnly>) -> Answer {
    let echoed = s.push.verify_url(&b.appid).await.map_err(BadRequest)?;
    reply(json!({"ok": echoed}))
}

async fn pushes(State(s): State<Arc<Shared>>) -> Response {
    Json(s.push.records()).into_response()
}

async fn stats(State(s): State<Arc<Shared>>) -> Response {
    Json(s.counters.snapshot()).into_response()
}

async fn sends(State(s): State<Arc<Shared>>) -> Response {
    Json(s.sends()).into_response()
}

async fn reset(State(s): State<Arc<Shared>>) -> Answer {
    s.reset();
    ok()
}
