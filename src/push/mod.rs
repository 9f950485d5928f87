//! WeChat's message push (消息推送), received: `wxpush run` serves
//! `GET/POST /wechat/push/<app name>` on `[push] listen` and writes what WeChat reports into
//! Redis: popup choices and settings changes into the grant ledger (`store::grants`), the
//! final result of each send into `store::delivery_result`.
//!
//! Every request is checked before anything is written, and refused with a 4xx and a log
//! line naming the reason ([`Refusal`]): a body over 64 KiB, an unknown app or one without
//! a push Token, a missing parameter, a timestamp more than 5 minutes off, a bad
//! `signature`/`msg_signature` (compared in constant time), a plaintext push to an app in
//! safe mode, a ciphertext that does not decrypt or names another appid, a malformed body
//! (XML is read without entity expansion, see [`message`]), and a (timestamp, nonce) seen
//! before (a replay; remembered in Redis for [`NONCE_TTL`]).
//!
//! WeChat retries a push it got no answer to within 5 s, up to 3 times, with the same
//! content: a popup or change event is applied once per (user, `CreateTime`, `Event`), as
//! WeChat advises, plus a digest of its `List` (so two different popups of one user in the
//! same second both count), the marker and the changes written by one script. Sent events are keyed
//! by `MsgID`, so writing one again changes nothing. A push answered `success` is recorded;
//! a Redis failure answers 503 (and forgets the nonce), so WeChat's retry can land.

pub mod crypto;
pub mod message;
pub mod outcomes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use deadpool_redis::redis;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::admin::metrics as m;
use crate::config::Config;
use crate::store::delivery_result::{self, Reported};
use crate::store::grants::{self, Applied, Change, Kind};
use crate::store::{HotPath, Keys, StoreError};
use crypto::AesKey;
use message::{Body, Push};

/// The largest body accepted; WeChat's subscription events are a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// How far a push's `timestamp` may be from this machine's clock.
pub const TIMESTAMP_WINDOW: Duration = Duration::from_secs(300);

/// How long an accepted (timestamp, nonce) is remembered: past it, the timestamp is stale.
pub const NONCE_TTL: Duration = Duration::from_secs(2 * 300 + 60);

/// How long a popup/change push is remembered as applied; WeChat's retries come within
/// seconds.
pub const SEEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// One app's push settings, secrets kept out of logs.
struct PushApp {
    appid: String,
    token: Option<SecretString>,
    aes_key: Option<AesKey>,
}

/// Everything the receiver needs: the apps' secrets, the templates' kinds, Redis.
pub struct Receiver {
    apps: HashMap<String, PushApp>,
    /// (app, template_id) → long-term, from `[[templates]]`.
    long_term: HashMap<(String, String), bool>,
    keys: Keys,
    redis: HotPath,
    result_ttl: Duration,
    /// `delivered` / `failed` outcome events, when `amqp.outcome_exchange` is set.
    outcomes: Option<outcomes::OutcomePublisher>,
}

impl Receiver {
    /// Reads every app's push Token and EncodingAESKey; an unreadable one stops the start.
    pub fn new(config: &Config, redis: HotPath) -> anyhow::Result<Receiver> {
        let mut apps = HashMap::new();
        for (name, app) in &config.apps {
            let app = app.get_ref();
            let problem = |e: String| anyhow::anyhow!("[apps.{name}]: {e}");
            apps.insert(
                name.clone(),
                PushApp {
                    appid: app.appid.clone(),
                    token: app.push_token().map_err(problem)?,
                    aes_key: app.push_aes_key().map_err(problem)?,
                },
            );
        }
        let long_term = config
            .templates
            .iter()
            .map(|t| {
                let t = t.get_ref();
                ((t.app.clone(), t.template_id.clone()), t.long_term)
            })
            .collect();
        Ok(Receiver {
            apps,
            long_term,
            keys: Keys::new(&config.redis.key_prefix),
            redis,
            result_ttl: config.policy.idempotency_ttl,
            outcomes: outcomes::OutcomePublisher::new(config),
        })
    }

    fn kind(&self, app: &str, template_id: &str) -> Kind {
        let long = self
            .long_term
            .get(&(app.to_owned(), template_id.to_owned()))
            .copied()
            .unwrap_or(false);
        if long { Kind::LongTerm } else { Kind::OneTime }
    }
}

/// Binds `listen` and serves the receiver until `stop`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    receiver: Arc<Receiver>,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on push.listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/wechat/push/{app}", get(verify).post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(receiver);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "push receiver stopped");
        }
    });
    tracing::info!(listen = %addr, "message-push receiver listening on /wechat/push/<app>");
    Ok(addr)
}

/// The URL parameters WeChat adds.
#[derive(Debug, Default, Deserialize)]
struct Params {
    signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    echostr: Option<String>,
    encrypt_type: Option<String>,
    msg_signature: Option<String>,
}

/// Why a request was refused: its status and the reason logged and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// A stable label for the metric (`too_large`, `unknown_app`, …).
    pub reason: &'static str,
    pub detail: String,
}

fn refuse(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason,
        detail: detail.into(),
    }
}

type Answer = (StatusCode, String);

fn answer(app: &str, result: Result<String, Refusal>) -> Answer {
    match result {
        Ok(text) => (StatusCode::OK, text),
        Err(r) => {
            tracing::warn!(
                app,
                reason = r.reason,
                detail = %r.detail,
                status = r.status.as_u16(),
                "message push refused"
            );
            metrics::counter!(m::PUSH_REFUSED, "reason" => r.reason).increment(1);
            (r.status, format!("refused: {}\n", r.detail))
        }
    }
}

/// WeChat's GET verification of the URL: echo `echostr` when `signature` is right.
async fn verify(
    State(receiver): State<Arc<Receiver>>,
    Path(app): Path<String>,
    params: Result<Query<Params>, QueryRejection>,
) -> Answer {
    let result = (|| {
        let params = params.map(|q| q.0).unwrap_or_default();
        let token = token_of(&receiver, &app)?;
        let (timestamp, nonce) = timestamp_and_nonce(&params)?;
        check_signature(params.signature.as_deref(), &[token, timestamp, nonce])?;
        params
            .echostr
            .clone()
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "missing_param", "no echostr"))
    })();
    answer(&app, result)
}

/// A push: checked, read, then recorded.
async fn receive(
    State(receiver): State<Arc<Receiver>>,
    Path(app): Path<String>,
    params: Result<Query<Params>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let params = params.map(|q| q.0).unwrap_or_default();
    let result = match check(&receiver, &app, &params, body) {
        Ok(push) => record(&receiver, &app, &params, push).await,
        Err(refusal) => Err(refusal),
    };
    answer(&app, result)
}

fn token_of<'a>(receiver: &'a Receiver, app: &str) -> Result<&'a str, Refusal> {
    let push_app = receiver.apps.get(app).ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("no app named {app:?}"),
        )
    })?;
    push_app
        .token
        .as_ref()
        .map(|t| t.expose_secret())
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "no_push_secrets",
                format!("[apps.{app}] has no push_token_env/push_token_file"),
            )
        })
}

fn timestamp_and_nonce(params: &Params) -> Result<(&str, &str), Refusal> {
    let missing = |name| {
        refuse(
            StatusCode::BAD_REQUEST,
            "missing_param",
            format!("no {name}"),
        )
    };
    Ok((
        params
            .timestamp
            .as_deref()
            .ok_or_else(|| missing("timestamp"))?,
        params.nonce.as_deref().ok_or_else(|| missing("nonce"))?,
    ))
}

fn check_signature(given: Option<&str>, parts: &[&str]) -> Result<(), Refusal> {
    let given = given.unwrap_or_default();
    if crypto::verify(given, parts) {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::FORBIDDEN,
            "bad_signature",
            "signature does not match the push Token",
        ))
    }
}

fn check_timestamp(timestamp: &str) -> Result<(), Refusal> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let sent: i64 = timestamp.parse().map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            "missing_param",
            format!("timestamp {timestamp:?} is not a number"),
        )
    })?;
    if sent.abs_diff(now) > TIMESTAMP_WINDOW.as_secs() {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "stale_timestamp",
            format!(
                "timestamp {sent} is {}s from now (at most 300s)",
                sent - now
            ),
        ));
    }
    Ok(())
}

/// Everything that needs no Redis: size, app, timestamp, signatures, decryption, format.
fn check(
    receiver: &Receiver,
    app: &str,
    params: &Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Push, Refusal> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("body over {} KiB", MAX_BODY / 1024),
            )
        } else {
            refuse(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!("body unreadable: {e}"),
            )
        }
    })?;
    let token = token_of(receiver, app)?;
    let push_app = &receiver.apps[app];
    let (timestamp, nonce) = timestamp_and_nonce(params)?;
    check_timestamp(timestamp)?;
    let malformed = |detail: String| refuse(StatusCode::BAD_REQUEST, "malformed", detail);
    let body = std::str::from_utf8(&body).map_err(|_| malformed("body is not UTF-8".into()))?;
    let raw = if params.encrypt_type.as_deref() == Some("aes") {
        let key = push_app.aes_key.as_ref().ok_or_else(|| {
            malformed(format!(
                "a safe-mode push, but [apps.{app}] has no push_aes_key_env/push_aes_key_file"
            ))
        })?;
        let envelope = message::parse(body).map_err(|e| malformed(e.0))?;
        let encrypt = envelope
            .fields
            .get("Encrypt")
            .ok_or_else(|| malformed("a safe-mode push without Encrypt".into()))?;
        check_signature(
            params.msg_signature.as_deref(),
            &[token, timestamp, nonce, encrypt],
        )?;
        if params.signature.is_some() {
            check_signature(params.signature.as_deref(), &[token, timestamp, nonce])?;
        }
        let decrypted = crypto::decrypt(key, encrypt).map_err(|e| malformed(e.to_string()))?;
        if decrypted.appid != push_app.appid {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "wrong_appid",
                format!(
                    "the message is for appid {:?}, not [apps.{app}]'s",
                    decrypted.appid
                ),
            ));
        }
        message::parse(&decrypted.msg).map_err(|e| malformed(e.0))?
    } else {
        check_signature(params.signature.as_deref(), &[token, timestamp, nonce])?;
        if push_app.aes_key.is_some() {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "plaintext_refused",
                format!("a plaintext push, but [apps.{app}] is in safe mode (push_aes_key set)"),
            ));
        }
        message::parse(body).map_err(|e| malformed(e.0))?
    };
    message::interpret(&raw).map_err(|e| malformed(e.0))
}

fn unavailable(e: StoreError) -> Refusal {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "redis",
        crate::telemetry::ErrorChain(&e).to_string(),
    )
}

/// Claims the nonce, then writes what the push says; on a Redis failure the nonce is
/// released so WeChat's retry is not taken for a replay.
async fn record(
    receiver: &Receiver,
    app: &str,
    params: &Params,
    push: Push,
) -> Result<String, Refusal> {
    let (timestamp, nonce) = timestamp_and_nonce(params)?;
    let nonce_key = receiver.keys.push_nonce(app, timestamp, nonce);
    let mut conn = receiver.redis.get().await.map_err(unavailable)?;
    let fresh: Option<String> = redis::cmd("SET")
        .arg(&nonce_key)
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(NONCE_TTL.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .map_err(|e| unavailable(StoreError::new("push nonce", e)))?;
    if fresh.is_none() {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "replay",
            format!("nonce {nonce} with timestamp {timestamp} was seen before"),
        ));
    }
    let applied = match apply(receiver, app, &push, &mut conn).await {
        Ok(result) => publish_outcomes(receiver, app, &push, &mut conn)
            .await
            .map(|()| result),
        Err(e) => Err(unavailable(e)),
    };
    match applied {
        Ok(result) => {
            metrics::counter!(m::PUSH_EVENTS, "app" => app.to_owned(), "event" => event_label(&push.body), "result" => result)
                .increment(1);
            tracing::info!(app, event = %push.event, result, "message push");
            Ok("success".into())
        }
        Err(refusal) => {
            let _: redis::RedisResult<i64> = redis::cmd("DEL")
                .arg(&nonce_key)
                .query_async(&mut conn)
                .await;
            Err(refusal)
        }
    }
}

/// How long the receiver waits for the worker to index a msgid it has just been told of:
/// WeChat may report a send's result within milliseconds of answering the send, while the
/// worker writes the index right after that answer.
const INDEX_WAIT: Duration = Duration::from_millis(500);

/// The event id the worker indexed for `msgid`, waiting up to [`INDEX_WAIT`] for a send
/// whose answer just came; `None` when there is none (the worker died right after the send,
/// or the index expired): the outcome then carries the msgid only.
async fn event_behind(
    receiver: &Receiver,
    app: &str,
    msgid: &str,
    conn: &mut impl redis::aio::ConnectionLike,
) -> Result<Option<String>, Refusal> {
    let key = receiver.keys.msg_event(app, msgid);
    let deadline = tokio::time::Instant::now() + INDEX_WAIT;
    loop {
        let found: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(conn)
            .await
            .map_err(|e| unavailable(StoreError::new("msgid index", e)))?;
        if found.is_some() || tokio::time::Instant::now() >= deadline {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For a sent event, the `delivered`/`failed` outcome of each send it reports.
async fn publish_outcomes(
    receiver: &Receiver,
    app: &str,
    push: &Push,
    conn: &mut impl redis::aio::ConnectionLike,
) -> Result<(), Refusal> {
    let (Some(outcomes), Body::Sent(results)) = (&receiver.outcomes, &push.body) else {
        return Ok(());
    };
    for r in results {
        let event_id = event_behind(receiver, app, &r.msgid, conn).await?;
        outcomes
            .delivery(app, event_id, &r.msgid, r.error_code, &r.error_status)
            .await
            .map_err(|e| {
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outcome",
                    format!("could not publish the outcome event: {e:#}"),
                )
            })?;
    }
    Ok(())
}

fn event_label(body: &Body) -> &'static str {
    match body {
        Body::Popup(_) => "subscribe_msg_popup_event",
        Body::Change(_) => "subscribe_msg_change_event",
        Body::Sent(_) => "subscribe_msg_sent_event",
        Body::Other => "other",
    }
}

/// Writes the push; the result label: `recorded`, `duplicate` or `ignored`.
async fn apply(
    receiver: &Receiver,
    app: &str,
    push: &Push,
    conn: &mut impl redis::aio::ConnectionLike,
) -> Result<&'static str, StoreError> {
    let changes: Vec<(&str, Change)> = match &push.body {
        Body::Other => return Ok("ignored"),
        Body::Sent(results) => {
            for r in results {
                let reported = Reported {
                    errcode: r.error_code,
                    status: &r.error_status,
                    template_id: &r.template_id,
                    openid: &push.openid,
                };
                delivery_result::write(
                    conn,
                    &receiver.keys.msg_result(app, &r.msgid),
                    &reported,
                    receiver.result_ttl,
                )
                .await
                .map_err(|e| StoreError::new("delivery result", e))?;
            }
            return Ok("recorded");
        }
        Body::Popup(choices) => choices
            .iter()
            .map(|(t, c)| (t.as_str(), Change::Chose(*c, receiver.kind(app, t))))
            .collect(),
        Body::Change(items) => items
            .iter()
            .map(|(t, on)| {
                (
                    t.as_str(),
                    if *on {
                        Change::TurnedOn
                    } else {
                        Change::TurnedOff
                    },
                )
            })
            .collect(),
    };
    if changes.is_empty() {
        return Ok("ignored");
    }
    let digest_parts: Vec<String> = changes
        .iter()
        .map(|(template_id, change)| format!("{template_id}={change:?};"))
        .collect();
    let digest = crypto::sign(&digest_parts.iter().map(String::as_str).collect::<Vec<_>>());
    let push_id = format!("{}:{}:{}", push.create_time, push.event, &digest[..16]);
    let seen = receiver.keys.push_seen(app, &push.openid, &push_id);
    let applied = grants::apply(
        conn,
        &receiver.keys.grants(app, &push.openid),
        Some((&seen, SEEN_TTL)),
        &changes,
    )
    .await
    .map_err(|e| StoreError::new("grant ledger", e))?;
    Ok(match applied {
        Applied::Done(_) => "recorded",
        Applied::Duplicate => "duplicate",
    })
}
