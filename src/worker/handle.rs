//! What to do with one message: a short sequence of phases, each of which either hands the
//! next one what it needs or ends the message with its [`Disposition`].
//!
//! prepare (parse, template, app, render) → gate (the app is not parked) → token → claim
//! (the event is ours to send) → recipient (js_code resolved) → send (`send.rs`).
//!
//! Nothing here touches the broker: `settle.rs` carries the disposition out.

use std::time::Duration;

use lapin::types::FieldTable;
use tracing::Span;

use super::Ctx;
use super::breaker::Gate;
use super::disposition::{
    Disposition, Unconfirmed, after_failure, ambiguous_again, invalid, on_ambiguous, retry_or_dead,
};
use super::send::{self, Attempt};
use crate::admin::metrics as m;
use crate::broker::dead_letter::{self, Failure, FailureClass};
use crate::event::{Event, Recipient};
use crate::store::claims::{self, Claim};
use crate::template::Template;
use crate::token::TokenError;
use crate::wechat::client::SubscribeMessage;
use crate::wechat::errcode::ErrorClass;

/// What the message's headers say about its past.
#[derive(Debug, Clone, Copy)]
struct History {
    /// Failed sends so far.
    attempts: u32,
    /// The message's `x-wxpush-replayed` count.
    replayed: i64,
}

/// An event that parsed and rendered: everything a send needs but the recipient.
struct Prepared<'a> {
    event: Event,
    template: &'a Template,
    app: String,
    message: SubscribeMessage,
}

/// The event's claim in Redis, held by this delivery.
struct Claimed {
    key: String,
    /// The openid a js_code of this event was already exchanged for.
    remembered_openid: Option<String>,
}

/// Decides a message's fate. Records the event id, type and app on the current span.
pub async fn handle(ctx: &Ctx, body: &[u8], headers: &FieldTable) -> Disposition {
    decide(ctx, body, headers).await.unwrap_or_else(|fate| fate)
}

async fn decide(ctx: &Ctx, body: &[u8], headers: &FieldTable) -> Result<Disposition, Disposition> {
    let history = History {
        attempts: dead_letter::attempts(headers),
        replayed: dead_letter::replays(headers),
    };
    let prepared = prepare(ctx, body)?;
    let app = prepared.app.as_str();
    if ctx.breaker.gate(app) == Gate::Tripped {
        return Err(Disposition::Park {
            app: app.to_owned(),
        });
    }
    let token = ctx
        .tokens
        .get(app)
        .await
        .map_err(|e| token_failure(ctx, app, history.attempts, e))?;
    let claimed = claim(ctx, &prepared, history).await?;
    let openid = recipient(ctx, &prepared, &claimed, history.attempts).await?;
    let mut message = prepared.message;
    message.touser = openid;
    let attempt = Attempt {
        app,
        template_id: &prepared.template.template_id,
        key: &claimed.key,
        attempts: history.attempts,
        replayed: history.replayed,
    };
    Ok(send::send(ctx, &attempt, token, &message).await)
}

/// Parses the body and renders its template; a message that fails here is invalid.
fn prepare<'a>(ctx: &'a Ctx, body: &[u8]) -> Result<Prepared<'a>, Disposition> {
    let event = Event::parse(body).map_err(|e| {
        metrics::counter!(m::EVENTS_CONSUMED, "type" => "unknown").increment(1);
        invalid(format!("malformed event: {e}"), None)
    })?;
    let span = Span::current();
    span.record("event_id", event.id.as_str());
    span.record("event_type", event.kind.as_str());
    let Some(template) = ctx.templates.get(&event.kind) else {
        metrics::counter!(m::EVENTS_CONSUMED, "type" => "unknown").increment(1);
        return Err(invalid(
            format!("no template for event type `{}`", event.kind),
            event.app.as_deref(),
        ));
    };
    metrics::counter!(m::EVENTS_CONSUMED, "type" => template.event.clone()).increment(1);
    let app = event.app.clone().unwrap_or_else(|| template.app.clone());
    span.record("app", app.as_str());
    if ctx.tokens.credentials(&app).is_err() {
        return Err(invalid(
            format!("unknown app `{app}` (not in [apps])"),
            Some(&app),
        ));
    }
    let message = template
        .render(
            "",
            &event.data,
            event.page.as_deref(),
            ctx.config.policy.overflow,
        )
        .map_err(|e| {
            invalid(
                format!("cannot render template for `{}`: {e}", event.kind),
                Some(&app),
            )
        })?;
    Ok(Prepared {
        event,
        template,
        app,
        message,
    })
}

/// A token could not be had: a broken app parks, Redis trouble pauses, the rest retries.
pub(super) fn token_failure(ctx: &Ctx, app: &str, attempts: u32, error: TokenError) -> Disposition {
    match error {
        TokenError::Credential {
            errcode, errmsg, ..
        } => {
            let failure = Failure {
                class: FailureClass::Call(ErrorClass::Credential),
                errcode: Some(errcode),
                errmsg,
                app: Some(app.to_owned()),
            };
            after_failure(ctx, app, attempts, ErrorClass::Credential.action(), failure)
        }
        TokenError::Redis(error) => Disposition::RedisUnavailable(error),
        other => retry_or_dead(
            ctx,
            attempts + 1,
            Failure {
                class: FailureClass::Call(ErrorClass::Transient),
                errcode: None,
                errmsg: other.to_string(),
                app: Some(app.to_owned()),
            },
        ),
    }
}

/// Claims the event for this delivery; ends the message when it is not ours to send.
async fn claim(
    ctx: &Ctx,
    prepared: &Prepared<'_>,
    history: History,
) -> Result<Claimed, Disposition> {
    let key = ctx.keys.event(&prepared.event.id);
    let app = prepared.app.as_str();
    let mut conn = ctx.hot_path.get().await?;
    let found = claims::claim(
        &mut conn,
        &key,
        &ctx.owner,
        ctx.claim_hold,
        ctx.config.policy.idempotency_ttl,
        history.replayed,
    )
    .await
    .map_err(|e| Disposition::redis("claim", e))?;
    let remembered_openid = match found {
        Claim::AlreadySent | Claim::AlreadyDead => {
            metrics::counter!(m::DUPLICATES_SKIPPED).increment(1);
            return Err(Disposition::Duplicate);
        }
        Claim::Busy => return Err(Disposition::Later),
        Claim::AmbiguousDeadLettered => return Err(ambiguous_again(history.attempts, app)),
        Claim::Fresh { openid } => openid,
        Claim::Ambiguous { openid } => {
            on_ambiguous(
                ctx,
                &key,
                history.replayed,
                history.attempts,
                app,
                Unconfirmed::LapsedClaim,
            )
            .await?;
            openid
        }
    };
    Ok(Claimed {
        key,
        remembered_openid,
    })
}

/// The openid to send to: given, remembered from an earlier exchange, or exchanged now.
async fn recipient(
    ctx: &Ctx,
    prepared: &Prepared<'_>,
    claimed: &Claimed,
    attempts: u32,
) -> Result<String, Disposition> {
    match (&prepared.event.recipient, &claimed.remembered_openid) {
        (Recipient::Openid(openid), _) => Ok(openid.clone()),
        (Recipient::JsCode(_), Some(openid)) => Ok(openid.clone()),
        (Recipient::JsCode(code), None) => {
            resolve_js_code(ctx, &prepared.app, &claimed.key, code, attempts).await
        }
    }
}

async fn resolve_js_code(
    ctx: &Ctx,
    app: &str,
    key: &str,
    code: &str,
    attempts: u32,
) -> Result<String, Disposition> {
    let (appid, secret) = ctx
        .tokens
        .credentials(app)
        .map_err(|e| invalid(e.to_string(), Some(app)))?;
    let openid = match ctx.client.jscode2session(appid, secret, code).await {
        Ok(openid) => openid,
        Err(error) => {
            send::mark_failed(ctx, key, &error).await;
            return Err(send::call_failure(
                ctx,
                app,
                attempts,
                &error,
                "jscode2session",
            ));
        }
    };
    let mut conn = ctx.hot_path.get().await?;
    // If this fails the code is spent and the openid lost: the event cannot be sent.
    claims::remember_openid(&mut conn, key, &openid)
        .await
        .map_err(|e| Disposition::DeadLetter {
            attempts,
            failure: Failure {
                class: FailureClass::Call(ErrorClass::Transient),
                errcode: None,
                errmsg: format!(
                    "js_code exchanged but the openid could not be stored in Redis: {e}"
                ),
                app: Some(app.to_owned()),
            },
        })?;
    Ok(openid)
}

/// How long a claim is held before it reads as ambiguous: long enough for every call a
/// message can make (sends with token refreshes, each possibly waiting on the lock).
pub fn claim_hold(config: &crate::config::Config) -> Duration {
    let calls = config.retry.token_retries + 2;
    config.wechat.timeout * calls
        + config.wechat.lock_ttl * 3 * (config.retry.token_retries + 1)
        + Duration::from_secs(5)
}
