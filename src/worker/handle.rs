//! What to do with one message: a short sequence of phases, each of which either hands the
//! next one what it needs or ends the message with its [`Disposition`].
//!
//! prepare (parse, template, app, render) → gate (the app is not parked or held) → token → claim
//! (the event is ours to send) → recipient (js_code resolved) → send (`send.rs`).
//!
//! Nothing here touches the broker: `settle.rs` carries the disposition out.

// Phases return `Result<_, Disposition>`: the fate is moved once per message, so boxing it
// would only add an allocation.
#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use lapin::types::FieldTable;
use tracing::Span;
use tracing::field::Value;

use super::Ctx;
use super::app_hold::HoldGate;
use super::breaker::{Gate, PROBE_EVERY};
use super::claim_keeper::ClaimSlot;
use super::disposition::{
    DeadRecord, Disposition, ParkReason, Unconfirmed, after_failure, invalid, on_ambiguous,
    retry_or_dead,
};
use super::send::{self, Attempt};
use crate::admin::metrics as m;
use crate::broker::dead_letter::{self, Failure, FailureClass};
use crate::broker::outcome;
use crate::config::WithoutGrant;
use crate::event::{Event, Recipient};
use crate::store::claims::{
    self, CLAIM_LEASE, Claim, ClaimId, ClaimRequest, Decided, PendingDeadLetter,
};
use crate::store::grants::{self, Used};
use crate::template::Template;
use crate::token::TokenError;
use crate::wechat::client::SubscribeMessage;
use crate::wechat::errcode::{Action, ErrorClass};

/// What the delivery says about the message's past.
#[derive(Debug, Clone, Copy)]
struct History {
    /// Failed sends so far.
    attempts: u32,
    /// The message's `x-wxpush-replayed` count.
    replayed: i64,
    /// It was handled before: redelivered, retried or once found busy. An event that was
    /// handled before cannot have "no state" unless Redis lost it.
    seen_before: bool,
}

/// One delivery, as the decision needs it.
pub struct Incoming<'a> {
    pub body: &'a [u8],
    pub headers: &'a FieldTable,
    /// The broker's `redelivered` flag.
    pub redelivered: bool,
    /// Where this delivery's claim is kept alive.
    pub slot: &'a ClaimSlot,
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
    claim_id: ClaimId,
    claimed_at: Instant,
    /// Redis's time at the claim (Unix ms): the base of the sent mark's time.
    claimed_at_ms: Option<u64>,
    /// The openid a js_code of this event was already exchanged for.
    remembered_openid: Option<String>,
}

/// Decides a message's fate. Records the event id, type and app on the current span.
pub async fn handle(ctx: &Ctx, incoming: Incoming<'_>) -> Disposition {
    let mut claimed = None;
    let fate = decide(ctx, &incoming, &mut claimed)
        .await
        .unwrap_or_else(|fate| fate);
    // A decision without a send is recorded on the claim, so a redelivery acks too.
    if let (Disposition::Dropped | Disposition::Skipped, Some((key, claim_id))) = (&fate, &claimed)
    {
        record_decided(ctx, key, claim_id, &fate).await;
    }
    // A dead letter of an event this delivery claimed is recorded on the claim.
    match (fate, claimed) {
        (
            Disposition::DeadLetter {
                attempts,
                failure,
                record: DeadRecord::Unrecorded,
            },
            Some((key, claim_id)),
        ) => Disposition::DeadLetter {
            attempts,
            failure,
            record: DeadRecord::Claimed {
                key,
                claim_id,
                replayed: dead_letter::replays(incoming.headers),
            },
        },
        (fate, _) => fate,
    }
}

async fn record_decided(ctx: &Ctx, key: &str, claim_id: &ClaimId, fate: &Disposition) {
    let decided = match fate {
        Disposition::Skipped => Decided::Skipped,
        _ => Decided::Refused,
    };
    let marked = ctx
        .hot_path
        .run("decision record", async |conn| {
            claims::mark_decided(conn, key, claim_id, decided).await
        })
        .await;
    if let Err(e) = marked {
        tracing::warn!(error = %crate::telemetry::ErrorChain(&e), "could not record the decision in Redis; a redelivery would try again");
    }
}

async fn decide(
    ctx: &Ctx,
    incoming: &Incoming<'_>,
    claimed_by_us: &mut Option<(String, ClaimId)>,
) -> Result<Disposition, Disposition> {
    let headers = incoming.headers;
    let attempts = dead_letter::attempts(headers);
    let history = History {
        attempts,
        replayed: dead_letter::replays(headers),
        seen_before: incoming.redelivered || attempts > 0 || dead_letter::times_busy(headers) > 0,
    };
    let prepared = prepare(ctx, incoming.body)?;
    let app = prepared.app.as_str();
    gate(ctx, app).await?;
    let token = match ctx.tokens.get(app).await {
        Ok(token) => token,
        Err(e) => return Err(token_failure(ctx, app, history.attempts, e).await),
    };
    let claimed = claim(ctx, &prepared, history, incoming.slot, claimed_by_us).await?;
    let openid = recipient(ctx, &prepared, &claimed, history.attempts).await?;
    let grant_taken = granted(ctx, &prepared, &openid, history.attempts).await?;
    let mut message = prepared.message;
    message.touser = openid;
    let attempt = Attempt {
        event_id: &prepared.event.id,
        app,
        template_id: &prepared.template.template_id,
        key: &claimed.key,
        claim_id: &claimed.claim_id,
        claimed_at: claimed.claimed_at,
        claimed_at_ms: claimed.claimed_at_ms,
        attempts: history.attempts,
        openid: &message.touser,
        grant_taken,
    };
    Ok(send::send(ctx, &attempt, token, &message).await)
}

/// Parses the body and renders its template; a message that fails here is invalid.
fn prepare<'a>(ctx: &'a Ctx, body: &[u8]) -> Result<Prepared<'a>, Disposition> {
    let event = Event::parse(body).map_err(|e| {
        metrics::counter!(m::EVENTS_CONSUMED, "type" => "unknown").increment(1);
        invalid(format!("malformed event: {e}"), None)
    })?;
    let Some(template) = ctx.templates.get(&event.kind) else {
        name_span(&event.id, &event.kind, None);
        metrics::counter!(m::EVENTS_CONSUMED, "type" => "unknown").increment(1);
        return Err(invalid(
            format!("no template for event type `{}`", event.kind),
            event.app.as_deref(),
        ));
    };
    metrics::counter!(m::EVENTS_CONSUMED, "type" => template.event.clone()).increment(1);
    let app = event.app.clone().unwrap_or_else(|| template.app.clone());
    name_span(&event.id, &event.kind, Some(&app));
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

/// Records the event on the message's span in one go: each `record` call renders the span's
/// fields anew (in the JSON log format, a parse and a serialisation of all of them).
fn name_span(event_id: &str, event_type: &str, app: Option<&str>) {
    let span = Span::current();
    let Some(fields) = span.metadata().map(|metadata| metadata.fields()) else {
        return;
    };
    let (Some(id_field), Some(type_field), Some(app_field)) = (
        fields.field("event_id"),
        fields.field("event_type"),
        fields.field("app"),
    ) else {
        return;
    };
    let app = app.as_ref().map(|app| app as &dyn Value);
    span.record_all(&fields.value_set(&[
        (&id_field, Some(&event_id as &dyn Value)),
        (&type_field, Some(&event_type as &dyn Value)),
        (&app_field, app),
    ]));
}

/// Whether the app may send now: not while its credentials are refused (this worker's
/// breaker) or its sends are held fleet-wide for its quota or rate.
async fn gate(ctx: &Ctx, app: &str) -> Result<(), Disposition> {
    let park = |reason, wait| Disposition::Park {
        app: app.to_owned(),
        reason,
        wait,
    };
    if ctx.breaker.gate(app) == Gate::Tripped {
        return Err(park(ParkReason::Credential, PROBE_EVERY));
    }
    match ctx.holds.gate(&ctx.hot_path, app).await? {
        HoldGate::Open | HoldGate::Probe => Ok(()),
        HoldGate::Held { reason, wait } => Err(park(ParkReason::Held(reason), wait)),
    }
}

/// A token could not be had: a broken app parks, a used-up token quota holds the app,
/// Redis trouble pauses, the rest retries.
pub(super) async fn token_failure(
    ctx: &Ctx,
    app: &str,
    attempts: u32,
    error: TokenError,
) -> Disposition {
    match error {
        TokenError::Quota {
            errcode, errmsg, ..
        } => {
            let failure = Failure {
                class: FailureClass::Call(ErrorClass::Limits),
                errcode: Some(errcode),
                errmsg,
                app: Some(app.to_owned()),
            };
            after_failure(ctx, app, attempts, Action::WaitForQuota, failure, true).await
        }
        TokenError::Credential {
            errcode, errmsg, ..
        } => {
            let failure = Failure {
                class: FailureClass::Call(ErrorClass::Credential),
                errcode: Some(errcode),
                errmsg,
                app: Some(app.to_owned()),
            };
            after_failure(ctx, app, attempts, Action::ParkApp, failure, true).await
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
    slot: &ClaimSlot,
    claimed_by_us: &mut Option<(String, ClaimId)>,
) -> Result<Claimed, Disposition> {
    let key = ctx.keys.event(&prepared.event.id);
    let epoch_key = ctx.keys.event_epoch(&prepared.event.id);
    let app = prepared.app.as_str();
    let claim_id = ClaimId::new();
    let request = ClaimRequest {
        key: &key,
        epoch_key: &epoch_key,
        claim_id: &claim_id,
        lease: CLAIM_LEASE,
        ttl: ctx.config.policy.idempotency_ttl,
        replayed: history.replayed,
        seen_before: history.seen_before,
        loss_window: ctx.loss_window,
        event_type: &prepared.event.kind,
        app,
    };
    let claimed_at = Instant::now();
    let mut conn = ctx.hot_path.get().await?;
    let reply = claims::claim(&mut conn, &request).await.map_err(|e| {
        // The script may have run although its reply was lost: release that claim later.
        ctx.keeper.orphan(&key, &claim_id);
        Disposition::redis("claim", e)
    })?;
    let found = reply.claim;
    if matches!(
        found,
        Claim::Fresh { .. } | Claim::Ambiguous { .. } | Claim::Lost
    ) && let Err(e) = ctx.hot_path.replicated(&mut conn, &key).await
    {
        // A failover now could forget the claim: do not send on it; release it later.
        ctx.keeper.orphan(&key, &claim_id);
        return Err(e.into());
    }
    let unconfirmed = match &found {
        Claim::Ambiguous { .. } => Some(Unconfirmed::LapsedClaim),
        Claim::Lost => Some(Unconfirmed::LostState),
        _ => None,
    };
    let remembered_openid = match found {
        Claim::AlreadySent { .. } | Claim::AlreadyDead | Claim::AlreadyDecided(_) => {
            metrics::counter!(m::DUPLICATES_SKIPPED).increment(1);
            let msgid = match found {
                Claim::AlreadySent { msgid } => msgid,
                _ => None,
            };
            return Err(Disposition::Duplicate {
                decided: Some(already(&found)),
                msgid,
            });
        }
        Claim::Busy => return Err(Disposition::Later),
        Claim::DeadLetterPending { pending, letter_id } => {
            return Err(dead_letter_again(&key, app, history, pending, letter_id));
        }
        Claim::Fresh { openid } | Claim::Ambiguous { openid } => openid,
        Claim::Lost => None,
    };
    // From here on the claim is ours: kept alive while we work, recorded on a dead letter.
    slot.hold(&key, &claim_id, ctx.claim_hold);
    *claimed_by_us = Some((key.clone(), claim_id.clone()));
    if let Some(why) = unconfirmed {
        on_ambiguous(ctx, history.attempts, app, why)?;
    }
    Ok(Claimed {
        key,
        claim_id,
        claimed_at,
        claimed_at_ms: reply.at_ms,
        remembered_openid,
    })
}

/// The outcome an already decided event had.
fn already(found: &Claim) -> outcome::Kind {
    match found {
        Claim::AlreadySent { .. } => outcome::Kind::Sent,
        Claim::AlreadyDecided(Decided::Refused) => outcome::Kind::Refused,
        Claim::AlreadyDecided(Decided::Skipped) => outcome::Kind::Skipped,
        _ => outcome::Kind::DeadLettered,
    }
}

/// A redelivery of an event whose dead letter was decided but not confirmed: the same dead
/// letter again, never a send.
fn dead_letter_again(
    key: &str,
    app: &str,
    history: History,
    pending: PendingDeadLetter,
    letter_id: String,
) -> Disposition {
    Disposition::DeadLetter {
        attempts: history.attempts,
        failure: Failure {
            class: pending.class.parse().unwrap_or(FailureClass::Ambiguous),
            errcode: pending.errcode,
            errmsg: pending.errmsg,
            app: Some(app.to_owned()),
        },
        record: DeadRecord::Pending {
            key: key.to_owned(),
            replayed: history.replayed,
            letter_id,
        },
    }
}

/// `policy.without_grant`: under `"send"` (the default) the ledger is advisory and not
/// read (`Ok(false)`). Otherwise a send goes only with a grant the ledger knows of, and takes
/// it at once, atomically, so concurrent deliveries to one user never count one grant
/// twice (`Ok(true)`: a grant was taken, and goes back if no send follows).
async fn granted(
    ctx: &Ctx,
    prepared: &Prepared<'_>,
    openid: &str,
    attempts: u32,
) -> Result<bool, Disposition> {
    let policy = ctx.config.policy.without_grant;
    if policy == WithoutGrant::Send {
        return Ok(false);
    }
    let key = ctx.keys.grants(&prepared.app, openid);
    let template_id = &prepared.template.template_id;
    let taken = ctx
        .hot_path
        .run("grant check", async |conn| {
            grants::use_one(conn, &key, template_id).await
        })
        .await?;
    let nothing_recorded = match taken {
        Used::OneTime { .. } => return Ok(true),
        Used::LongTerm => return Ok(false),
        Used::WasEmpty => false,
        Used::Unknown => true,
    };
    metrics::counter!(m::NO_GRANT, "app" => prepared.app.clone(), "action" => match policy {
        WithoutGrant::Skip => "skip",
        _ => "dead_letter",
    })
    .increment(1);
    Err(match policy {
        WithoutGrant::DeadLetter => Disposition::dead_letter(
            attempts,
            Failure {
                class: FailureClass::NoGrant,
                errcode: None,
                errmsg: format!(
                    "no grant for template {template_id} and this user ({}); not sent (policy.without_grant = \"dead_letter\")",
                    if nothing_recorded {
                        "nothing recorded"
                    } else {
                        "all used, rejected or turned off"
                    }
                ),
                app: Some(prepared.app.clone()),
            },
        ),
        _ => Disposition::Skipped,
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
            resolve_js_code(ctx, &prepared.app, claimed, code, attempts).await
        }
    }
}

async fn resolve_js_code(
    ctx: &Ctx,
    app: &str,
    claimed: &Claimed,
    code: &str,
    attempts: u32,
) -> Result<String, Disposition> {
    let key = claimed.key.as_str();
    let (appid, secret) = ctx
        .tokens
        .credentials(app)
        .map_err(|e| invalid(e.to_string(), Some(app)))?;
    let openid = match ctx.client.jscode2session(appid, secret, code).await {
        Ok(openid) => openid,
        Err(error) => {
            send::mark_failed(ctx, key, &claimed.claim_id, &error).await;
            return Err(send::call_failure(ctx, app, attempts, &error, "jscode2session").await);
        }
    };
    let mut conn = ctx.hot_path.get().await?;
    // If this fails the code is spent and the openid lost: the event cannot be sent.
    let kept = claims::remember_openid(&mut conn, key, &claimed.claim_id, &openid)
        .await
        .map_err(|e| e.to_string())
        .and_then(|kept| {
            kept.then_some(())
                .ok_or_else(|| "the claim was lost".to_owned())
        });
    if let Err(e) = kept {
        let failure = Failure {
            class: FailureClass::Call(ErrorClass::Transient),
            errcode: None,
            errmsg: format!("js_code exchanged but the openid could not be stored in Redis: {e}"),
            app: Some(app.to_owned()),
        };
        return Err(Disposition::dead_letter(attempts, failure));
    }
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

/// How long after Redis lost its data an event without state that was handled before reads
/// as ambiguous: as long as a copy handled before the loss can still come back (the longest
/// retry delay, a claim's hold), with a margin.
pub fn loss_window(config: &crate::config::Config) -> Duration {
    config.retry.max + claim_hold(config) + Duration::from_secs(60)
}
