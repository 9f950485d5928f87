//! What to do with one message: parse, render, claim, send, and decide its fate.
//!
//! [`handle`] returns a [`Disposition`] and touches the broker not at all; `settle.rs`
//! carries the disposition out. The meaning of each WeChat answer comes from the errcode
//! table (`wechat::errcode`), the policies from the config.

use std::time::{Duration, Instant};

use lapin::types::FieldTable;
use tracing::Span;

use super::Ctx;
use super::breaker::Gate;
use super::idempotency::{self, Claim};
use crate::admin::metrics as m;
use crate::broker::headers;
use crate::config::{OnAmbiguous, OnRefused};
use crate::event::{Event, Recipient};
use crate::token::TokenError;
use crate::wechat::client::{AccessToken, CallError};
use crate::wechat::errcode::{self, ErrorClass, classify_call, is_ambiguous, outcome_label};

/// Why a message failed, as recorded in retry and dead-letter headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `invalid`, `ambiguous`, or an [`ErrorClass`] name.
    pub class: &'static str,
    pub errcode: Option<i64>,
    pub errmsg: String,
    pub app: Option<String>,
}

/// The fate of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// WeChat accepted it: ack.
    Sent { msgid: u64 },
    /// A redelivery of an event already sent: ack without sending.
    Duplicate,
    /// 43101 under `on_refused = "drop"`: ack, counted and logged.
    Dropped,
    /// Try again later from the retry tier for `attempts` failures so far.
    Retry { attempts: u32, failure: Failure },
    /// Another worker is sending this event right now: look again shortly, no attempt spent.
    Later,
    /// The app's credentials are refused: hold the message, no attempt spent.
    Park { app: String },
    /// Never deliverable (or out of attempts): to the dead-letter queue.
    DeadLetter { attempts: u32, failure: Failure },
    /// Redis is unreachable: give the message back unacked and pause consuming.
    Requeue { reason: String },
}

fn failure(
    class: &'static str,
    errcode: Option<i64>,
    errmsg: impl Into<String>,
    app: Option<&str>,
) -> Failure {
    Failure {
        class,
        errcode,
        errmsg: errmsg.into(),
        app: app.map(str::to_owned),
    }
}

fn invalid(message: impl Into<String>, app: Option<&str>) -> Disposition {
    Disposition::DeadLetter {
        attempts: 0,
        failure: failure("invalid", None, message, app),
    }
}

/// The number of failed sends recorded on the message so far.
pub fn attempts_so_far(headers: &FieldTable) -> u32 {
    headers::get_i64(headers, headers::ATTEMPTS)
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32
}

/// Decides a message's fate. Records the event id, type and app on the current span.
pub async fn handle(ctx: &Ctx, body: &[u8], headers: &FieldTable) -> Disposition {
    let attempts = attempts_so_far(headers);
    let replayed = headers::get_i64(headers, headers::REPLAYED).unwrap_or(0);
    let event = match Event::parse(body) {
        Ok(event) => event,
        Err(e) => {
            metrics::counter!(m::EVENTS_CONSUMED, "type" => "unknown").increment(1);
            return invalid(format!("malformed event: {e}"), None);
        }
    };
    let span = Span::current();
    span.record("event_id", event.id.as_str());
    span.record("event_type", event.kind.as_str());
    let Some(template) = ctx.templates.get(&event.kind) else {
        metrics::counter!(m::EVENTS_CONSUMED, "type" => "unknown").increment(1);
        return invalid(
            format!("no template for event type `{}`", event.kind),
            event.app.as_deref(),
        );
    };
    metrics::counter!(m::EVENTS_CONSUMED, "type" => template.event.clone()).increment(1);
    let app = event.app.as_deref().unwrap_or(&template.app);
    span.record("app", app);
    if ctx.tokens.credentials(app).is_err() {
        return invalid(format!("unknown app `{app}` (not in [apps])"), Some(app));
    }
    let mut message = match template.render(
        "",
        &event.data,
        event.page.as_deref(),
        ctx.config.policy.overflow,
    ) {
        Ok(message) => message,
        Err(e) => {
            return invalid(
                format!("cannot render template for `{}`: {e}", event.kind),
                Some(app),
            );
        }
    };
    if ctx.breaker.gate(app) == Gate::Tripped {
        return Disposition::Park {
            app: app.to_owned(),
        };
    }
    let token = match ctx.tokens.get(app).await {
        Ok(token) => token,
        Err(e) => return token_failure(ctx, app, attempts, e),
    };

    let key = ctx.keys.event(&event.id);
    let mut conn = match ctx.redis.get().await {
        Ok(conn) => conn,
        Err(e) => {
            return Disposition::Requeue {
                reason: format!("Redis: {e}"),
            };
        }
    };
    let claim = idempotency::claim(
        &mut conn,
        &key,
        &ctx.owner,
        ctx.claim_hold,
        ctx.config.policy.idempotency_ttl,
        replayed,
    )
    .await;
    let remembered_openid = match claim {
        Err(e) => {
            return Disposition::Requeue {
                reason: format!("Redis: {e}"),
            };
        }
        Ok(Claim::AlreadySent | Claim::AlreadyDead) => {
            metrics::counter!(m::DUPLICATES_SKIPPED).increment(1);
            return Disposition::Duplicate;
        }
        Ok(Claim::Busy) => return Disposition::Later,
        Ok(Claim::AmbiguousDeadLettered) => {
            return ambiguous_dead_letter(attempts, app, PREVIOUS_ATTEMPT);
        }
        Ok(Claim::Fresh { openid }) => openid,
        Ok(Claim::Ambiguous { openid }) => match ctx.config.policy.on_ambiguous {
            OnAmbiguous::Resend => {
                metrics::counter!(m::AMBIGUOUS, "action" => "resend").increment(1);
                tracing::warn!(
                    "a previous attempt ended without an answer; sending again (policy.on_ambiguous = \"resend\")"
                );
                openid
            }
            OnAmbiguous::DeadLetter => {
                metrics::counter!(m::AMBIGUOUS, "action" => "dead_letter").increment(1);
                if let Err(e) = idempotency::mark_ambiguous(&mut conn, &key, replayed).await {
                    return Disposition::Requeue {
                        reason: format!("Redis: {e}"),
                    };
                }
                return ambiguous_dead_letter(attempts, app, PREVIOUS_ATTEMPT);
            }
        },
    };
    drop(conn);

    let openid = match (&event.recipient, remembered_openid) {
        (Recipient::Openid(openid), _) => openid.clone(),
        (Recipient::JsCode(_), Some(openid)) => openid,
        (Recipient::JsCode(code), None) => {
            match resolve_js_code(ctx, app, &key, code, attempts).await {
                Ok(openid) => openid,
                Err(disposition) => return disposition,
            }
        }
    };
    message.touser = openid;
    let this = Attempt {
        app,
        template_id: &template.template_id,
        key: &key,
        attempts,
        replayed,
    };
    send(ctx, &this, token, &message).await
}

/// The message being sent: what the send loop needs to record and decide its outcome.
struct Attempt<'a> {
    app: &'a str,
    template_id: &'a str,
    /// The event's idempotency key in Redis.
    key: &'a str,
    /// Failed sends before this one.
    attempts: u32,
    /// The message's `x-wxpush-replayed` count.
    replayed: i64,
}

/// A token could not be had: a broken app parks, Redis trouble pauses, the rest retries.
fn token_failure(ctx: &Ctx, app: &str, attempts: u32, error: TokenError) -> Disposition {
    match error {
        TokenError::Credential {
            errcode, errmsg, ..
        } => {
            ctx.breaker.trip(app, errcode, &errmsg);
            Disposition::Park {
                app: app.to_owned(),
            }
        }
        TokenError::Redis(reason) => Disposition::Requeue {
            reason: format!("Redis: {reason}"),
        },
        other => retry_or_dead(
            ctx,
            attempts + 1,
            failure("transient", None, other.to_string(), Some(app)),
        ),
    }
}

fn retry_or_dead(ctx: &Ctx, attempts: u32, failure: Failure) -> Disposition {
    if attempts >= ctx.config.retry.max_attempts {
        Disposition::DeadLetter { attempts, failure }
    } else {
        Disposition::Retry { attempts, failure }
    }
}

async fn mark_failed(ctx: &Ctx, key: &str, reason: &str) {
    // Best effort: if Redis is down the claim simply expires, which later reads as ambiguous.
    if let Ok(mut conn) = ctx.redis.get().await
        && let Err(e) = idempotency::mark_failed(&mut conn, key, &ctx.owner, reason).await
    {
        tracing::warn!(error = %e, "could not record the failure in Redis");
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
    match ctx.client.jscode2session(appid, secret, code).await {
        Ok(openid) => {
            let mut conn = ctx.redis.get().await.map_err(|e| Disposition::Requeue {
                reason: format!("Redis: {e}"),
            })?;
            // If this fails the code is spent and the openid lost: the event cannot be sent.
            idempotency::remember_openid(&mut conn, key, &openid)
                .await
                .map_err(|e| Disposition::DeadLetter {
                    attempts,
                    failure: failure(
                        "transient",
                        None,
                        format!(
                            "js_code exchanged but the openid could not be stored in Redis: {e}"
                        ),
                        Some(app),
                    ),
                })?;
            Ok(openid)
        }
        Err(error) => {
            mark_failed(ctx, key, &failure_code(&error)).await;
            Err(call_failure(ctx, app, attempts, &error, "jscode2session"))
        }
    }
}

const PREVIOUS_ATTEMPT: &str =
    "a previous attempt ended without an answer from WeChat; it may have been delivered";

fn ambiguous_dead_letter(attempts: u32, app: &str, errmsg: &str) -> Disposition {
    Disposition::DeadLetter {
        attempts,
        failure: failure("ambiguous", None, errmsg, Some(app)),
    }
}

/// What a definite failure is recorded as in the event's Redis state.
fn failure_code(error: &CallError) -> String {
    error
        .errcode()
        .map_or_else(|| "transport".to_owned(), |code| code.to_string())
}

/// The disposition for a failed call that is not a stale token.
fn call_failure(ctx: &Ctx, app: &str, attempts: u32, error: &CallError, what: &str) -> Disposition {
    let class = classify_call(error);
    let errmsg = match error.errcode() {
        Some(code) => format!("{what}: {error} ({})", errcode::describe(code)),
        None => format!("{what}: {error}"),
    };
    let f = failure(class.as_str(), error.errcode(), errmsg, Some(app));
    match class {
        ErrorClass::Credential => {
            ctx.breaker
                .trip(app, error.errcode().unwrap_or(0), &f.errmsg);
            Disposition::Park {
                app: app.to_owned(),
            }
        }
        ErrorClass::Permanent => Disposition::DeadLetter {
            attempts: attempts + 1,
            failure: f,
        },
        ErrorClass::Refused => match ctx.config.policy.on_refused {
            OnRefused::Drop => {
                metrics::counter!(m::REFUSED_DROPPED).increment(1);
                tracing::info!(
                    "user has no subscription left (43101); dropped (policy.on_refused = \"drop\")"
                );
                Disposition::Dropped
            }
            OnRefused::DeadLetter => Disposition::DeadLetter {
                attempts: attempts + 1,
                failure: f,
            },
        },
        ErrorClass::Token | ErrorClass::Transient | ErrorClass::Unknown => {
            retry_or_dead(ctx, attempts + 1, f)
        }
    }
}

async fn send(
    ctx: &Ctx,
    this: &Attempt<'_>,
    mut token: AccessToken,
    message: &crate::wechat::client::SubscribeMessage,
) -> Disposition {
    let Attempt {
        app,
        template_id,
        key,
        attempts,
        replayed,
    } = *this;
    let mut token_retries = 0;
    loop {
        let started = Instant::now();
        let result = ctx.client.send(&token, message).await;
        metrics::histogram!(m::SEND_DURATION, "app" => app.to_owned())
            .record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(msgid) => {
                record_send(app, template_id, "ok", 0);
                ctx.breaker.reset(app);
                match ctx.redis.get().await {
                    Ok(mut conn) => {
                        if let Err(e) = idempotency::mark_sent(
                            &mut conn,
                            key,
                            msgid,
                            ctx.config.policy.idempotency_ttl,
                        )
                        .await
                        {
                            tracing::warn!(error = %e, "sent, but could not record it in Redis; acking anyway");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sent, but could not record it in Redis; acking anyway")
                    }
                }
                return Disposition::Sent { msgid };
            }
            Err(error) => error,
        };
        record_send(
            app,
            template_id,
            outcome_label(&error),
            error.errcode().unwrap_or(-2),
        );
        let class = classify_call(&error);
        if class == ErrorClass::Token && token_retries < ctx.config.retry.token_retries {
            token_retries += 1;
            token = match ctx.tokens.replace_stale(app, &token).await {
                Ok(token) => token,
                Err(e) => {
                    mark_failed(ctx, key, "token").await;
                    return token_failure(ctx, app, attempts, e);
                }
            };
            continue;
        }
        if is_ambiguous(&error) {
            return match ctx.config.policy.on_ambiguous {
                OnAmbiguous::Resend => {
                    metrics::counter!(m::AMBIGUOUS, "action" => "resend").increment(1);
                    mark_failed(ctx, key, "ambiguous").await;
                    retry_or_dead(
                        ctx,
                        attempts + 1,
                        failure("transient", None, format!("send: {error}"), Some(app)),
                    )
                }
                OnAmbiguous::DeadLetter => {
                    metrics::counter!(m::AMBIGUOUS, "action" => "dead_letter").increment(1);
                    let marked = match ctx.redis.get().await {
                        Ok(mut conn) => idempotency::mark_ambiguous(&mut conn, key, replayed)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    // Unrecorded, a redelivery would claim the event afresh and might send it
                    // a second time; handing it back lets the claim expire into "ambiguous".
                    if let Err(e) = marked {
                        return Disposition::Requeue {
                            reason: format!("Redis: {e}"),
                        };
                    }
                    ambiguous_dead_letter(
                        attempts + 1,
                        app,
                        &format!("send: {error}; it may have been delivered"),
                    )
                }
            };
        }
        mark_failed(ctx, key, &failure_code(&error)).await;
        return call_failure(ctx, app, attempts, &error, "send");
    }
}

fn record_send(app: &str, template_id: &str, outcome: &'static str, errcode: i64) {
    let errcode = if errcode == -2 {
        "none".to_owned()
    } else {
        errcode.to_string()
    };
    metrics::counter!(m::SENDS, "app" => app.to_owned(), "template" => template_id.to_owned(), "outcome" => outcome, "errcode" => errcode).increment(1);
}

/// How long a claim is held before it reads as ambiguous: long enough for every call a
/// message can make (sends with token refreshes, each possibly waiting on the lock).
pub fn claim_hold(config: &crate::config::Config) -> Duration {
    let calls = config.retry.token_retries + 2;
    config.wechat.timeout * calls
        + config.wechat.lock_ttl * 3 * (config.retry.token_retries + 1)
        + Duration::from_secs(5)
}
