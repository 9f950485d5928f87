//! The send phase: call WeChat, replace a stale token and call again, and turn the answer
//! into the message's [`Disposition`].

// Phases return `Result<_, Disposition>`: the fate is moved once per message, so boxing it
// would only add an allocation.
#![allow(clippy::result_large_err)]

use std::time::Instant;

use super::Ctx;
use super::disposition::{Disposition, Unconfirmed, after_failure, on_ambiguous, retry_or_dead};
use super::handle::token_failure;
use super::pacing;
use crate::admin::metrics as m;
use crate::broker::dead_letter::{Failure, FailureClass};
use crate::store::claims::{self, CLAIM_LEASE, ClaimId};
use crate::store::grants;
use crate::telemetry::ErrorChain;
use crate::wechat::client::{AccessToken, CallError, SubscribeMessage};
use crate::wechat::errcode::{
    self, Action, ErrorClass, classify_call, is_ambiguous, outcome_label,
};
use deadpool_redis::redis;

/// The message being sent: what the send loop needs to record and decide its outcome.
pub struct Attempt<'a> {
    pub event_id: &'a str,
    pub app: &'a str,
    pub template_id: &'a str,
    /// The event's idempotency key in Redis.
    pub key: &'a str,
    /// This delivery's claim on the event.
    pub claim_id: &'a ClaimId,
    /// When the claim was asked for (its lease runs from a moment after this).
    pub claimed_at: Instant,
    /// Redis's time at the claim (Unix ms), if it said.
    pub claimed_at_ms: Option<u64>,
    /// Failed sends before this one.
    pub attempts: u32,
    /// The recipient, for the grant ledger.
    pub openid: &'a str,
    /// A grant was taken from the ledger for this send (`policy.without_grant`): it is used
    /// by a send, and goes back when none happens.
    pub grant_taken: bool,
}

/// Sends, and keeps the grant ledger in step: a grant taken for this send goes back unless
/// WeChat took the message or refused it for want of a grant (43101).
pub async fn send(
    ctx: &Ctx,
    this: &Attempt<'_>,
    token: AccessToken,
    message: &SubscribeMessage,
) -> Disposition {
    let fate = send_with_fresh_token(ctx, this, token, message).await;
    let refused = match &fate {
        Disposition::Dropped => true,
        Disposition::DeadLetter { failure, .. } => {
            failure.class == FailureClass::Call(ErrorClass::Refused)
        }
        _ => false,
    };
    if this.grant_taken && !refused && !matches!(fate, Disposition::Sent { .. }) {
        update_ledger(ctx, this, Ledger::GiveBack).await;
    }
    fate
}

/// Sends until WeChat answers something other than a stale token (at most
/// `retry.token_retries` token replacements).
async fn send_with_fresh_token(
    ctx: &Ctx,
    this: &Attempt<'_>,
    mut token: AccessToken,
    message: &SubscribeMessage,
) -> Disposition {
    let mut token_retries = 0;
    loop {
        if let Err(fate) = pace_and_check(ctx, this).await {
            return fate;
        }
        let started = Instant::now();
        let result = ctx.client.send(&token, message).await;
        metrics::histogram!(m::SEND_DURATION, "app" => this.app.to_owned())
            .record(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(msgid) => return sent(ctx, this, msgid).await,
            Err(error) => error,
        };
        record_send(
            this.app,
            this.template_id,
            outcome_label(&error),
            error.errcode(),
        );
        let action = errcode::action_of(&error);
        if action == Action::RefreshTokenAndRetry && token_retries < ctx.config.retry.token_retries
        {
            token_retries += 1;
            token = match ctx.tokens.replace_stale(this.app, &token).await {
                Ok(token) => token,
                Err(e) => {
                    mark_failed_as(ctx, this.key, this.claim_id, "token", "token").await;
                    return token_failure(ctx, this.app, this.attempts, e).await;
                }
            };
            continue;
        }
        if is_ambiguous(&error) {
            return unanswered(ctx, this, &error).await;
        }
        mark_failed(ctx, this.key, this.claim_id, &error).await;
        if action == Action::ApplyRefusedPolicy {
            update_ledger(ctx, this, Ledger::Refused).await;
        }
        return call_failure(ctx, this.app, this.attempts, &error, "send").await;
    }
}

/// Before each send: the app's `max_rate` slot, then the claim (checked after any wait).
async fn pace_and_check(ctx: &Ctx, this: &Attempt<'_>) -> Result<(), Disposition> {
    if let Err(fate) = pacing::pace(ctx, this.app).await {
        // Parked before the send: the next attempt claims afresh.
        mark_failed_as(ctx, this.key, this.claim_id, "throttled", "rate").await;
        return Err(fate);
    }
    still_ours(ctx, this).await
}

/// WeChat took the message: records it. The sent mark, the grant ledger's use and the
/// msgid index are independent writes (each on its own key, in a cluster each in its own
/// slot), so they go out together: the message waits one Redis round trip for them, not
/// three, and on the shared connection their requests share socket writes.
async fn sent(ctx: &Ctx, this: &Attempt<'_>, msgid: u64) -> Disposition {
    record_send(this.app, this.template_id, "ok", None);
    ctx.breaker.reset(this.app);
    ctx.holds.succeeded(&ctx.hot_path, this.app).await;
    let ledger = async {
        // A grant taken before the send was already used then. An app without message push
        // has no grant to use: its ledger only ever records 43101s (nothing left), which a
        // use would leave at 0, so the round trip is skipped.
        if !this.grant_taken && receives_pushes(ctx, this.app) {
            update_ledger(ctx, this, Ledger::Used).await;
        }
    };
    tokio::join!(
        mark_sent(ctx, this, msgid),
        ledger,
        remember_msgid(ctx, this, msgid)
    );
    Disposition::Sent { msgid }
}

fn receives_pushes(ctx: &Ctx, app: &str) -> bool {
    ctx.config
        .apps
        .get(app)
        .is_some_and(|config| config.get_ref().receives_pushes())
}

/// Best effort: the message is sent whatever Redis says, so it is acked either way.
async fn mark_sent(ctx: &Ctx, this: &Attempt<'_>, msgid: u64) {
    let ttl = ctx.config.policy.idempotency_ttl;
    let sent_ms = sent_at_ms(this);
    let marked = ctx
        .hot_path
        .run_replicated("mark sent", this.key, async |conn| {
            claims::mark_sent(conn, this.key, msgid, sent_ms, ttl).await
        })
        .await;
    if let Err(e) = marked {
        tracing::warn!(error = %ErrorChain(&e), "sent, but could not record it in Redis; acking anyway");
    }
}

/// When the send was accepted, on Redis's clock: its time at the claim plus the time since
/// (measured from just before the claim was asked for, so never before it). Without it (a
/// reply cut short), this machine's clock.
fn sent_at_ms(this: &Attempt<'_>) -> u64 {
    let since = u64::try_from(this.claimed_at.elapsed().as_millis()).unwrap_or(u64::MAX);
    this.claimed_at_ms
        .map_or_else(crate::token::now_ms, |at| at.saturating_add(since))
}

/// Where WeChat's pushed result for this send will publish an outcome event, it needs the
/// event id behind the msgid: one more write, only in deployments with both.
async fn remember_msgid(ctx: &Ctx, this: &Attempt<'_>, msgid: u64) {
    if ctx.config.push.is_none() || ctx.topology.outcome_exchange.is_none() {
        return;
    }
    let key = ctx.keys.msg_event(this.app, &msgid.to_string());
    let ttl = ctx.config.policy.idempotency_ttl;
    let written = ctx
        .hot_path
        .run("msgid index", async |conn| {
            redis::cmd("SET")
                .arg(&key)
                .arg(this.event_id)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async::<()>(conn)
                .await
        })
        .await;
    if let Err(e) = written {
        tracing::warn!(error = %ErrorChain(&e), "could not index the msgid; its delivery outcome will carry no event id");
    }
}

/// What a send tells the grant ledger.
#[derive(Debug, Clone, Copy)]
enum Ledger {
    /// Sent: one one-time grant used.
    Used,
    /// 43101: nothing left.
    Refused,
    /// A grant taken for a send that did not happen goes back.
    GiveBack,
}

/// Best effort: the ledger is advisory, a Redis failure here changes no message's fate.
async fn update_ledger(ctx: &Ctx, this: &Attempt<'_>, change: Ledger) {
    let key = ctx.keys.grants(this.app, this.openid);
    let updated = ctx
        .hot_path
        .run("grant ledger", async |conn| match change {
            Ledger::Used => grants::use_one(conn, &key, this.template_id)
                .await
                .map(drop),
            Ledger::Refused => grants::refused(conn, &key, this.template_id).await,
            Ledger::GiveBack => grants::give_back(conn, &key, this.template_id).await,
        })
        .await;
    if let Err(e) = updated {
        tracing::warn!(error = %ErrorChain(&e), "could not update the grant ledger");
    }
}

/// The call went out and no answer came: WeChat may have accepted it.
async fn unanswered(ctx: &Ctx, this: &Attempt<'_>, error: &CallError) -> Disposition {
    let attempts = this.attempts + 1;
    let cause = format!("send: {error}");
    let why = Unconfirmed::NoAnswer { cause: &cause };
    if let Err(fate) = on_ambiguous(ctx, attempts, this.app, why) {
        return fate;
    }
    mark_failed_as(ctx, this.key, this.claim_id, "none", "ambiguous").await;
    retry_or_dead(
        ctx,
        attempts,
        Failure {
            class: FailureClass::Call(ErrorClass::Transient),
            errcode: None,
            errmsg: format!("send: {error}"),
            app: Some(this.app.to_owned()),
        },
    )
}

/// The disposition for a definitely failed call (`what`: the API called).
pub(super) async fn call_failure(
    ctx: &Ctx,
    app: &str,
    attempts: u32,
    error: &CallError,
    what: &str,
) -> Disposition {
    let class = classify_call(error);
    let errmsg = match error.errcode() {
        Some(code) => format!("{what}: {error} ({})", errcode::describe(code)),
        None => format!("{what}: {error}"),
    };
    let failure = Failure {
        class: FailureClass::Call(class),
        errcode: error.errcode(),
        errmsg,
        app: Some(app.to_owned()),
    };
    after_failure(
        ctx,
        app,
        attempts + 1,
        errcode::action_of(error),
        failure,
        false,
    )
    .await
}

/// Makes sure the claim is still this delivery's before a send: no send without a live
/// claim of one's own, and none after the claim's hold ran out.
///
/// A claim younger than half its lease is live without asking: only its holder can change
/// it while it is live, and the lease was counted by Redis from after `claimed_at`. An older
/// one is renewed (one round trip); if it is no longer ours, another delivery has the
/// event, or its state is gone, and this copy goes round once more (`Later`) for the claim
/// to decide.
async fn still_ours(ctx: &Ctx, this: &Attempt<'_>) -> Result<(), Disposition> {
    let age = this.claimed_at.elapsed();
    if age >= ctx.claim_hold {
        mark_failed_as(ctx, this.key, this.claim_id, "none", "hold_expired").await;
        let failure = Failure {
            class: FailureClass::Call(ErrorClass::Transient),
            errcode: None,
            errmsg: format!(
                "the claim's hold ({}) ran out before the send (token refresh or WeChat too slow)",
                humantime::format_duration(ctx.claim_hold)
            ),
            app: Some(this.app.to_owned()),
        };
        return Err(retry_or_dead(ctx, this.attempts + 1, failure));
    }
    if age < CLAIM_LEASE / 2 {
        return Ok(());
    }
    let renewed = ctx
        .hot_path
        .run("claim renewal", async |conn| {
            claims::renew(conn, this.key, this.claim_id, CLAIM_LEASE).await
        })
        .await?;
    if renewed {
        Ok(())
    } else {
        tracing::warn!("the event's claim is no longer this delivery's; not sending");
        Err(Disposition::Later)
    }
}

/// Records a definite failure so the next attempt claims afresh (not as ambiguous).
pub(super) async fn mark_failed(ctx: &Ctx, key: &str, claim_id: &ClaimId, error: &CallError) {
    let code = error
        .errcode()
        .map_or_else(|| "none".to_owned(), |code| code.to_string());
    mark_failed_as(ctx, key, claim_id, &code, outcome_label(error)).await;
}

/// `errcode` (or `none`) and `class` go to the event's delivery record.
async fn mark_failed_as(ctx: &Ctx, key: &str, claim_id: &ClaimId, errcode: &str, class: &str) {
    // Best effort: if Redis is down the claim simply expires, which later reads as ambiguous.
    let marked = ctx
        .hot_path
        .run("mark failed", async |conn| {
            claims::mark_failed(conn, key, claim_id, errcode, class).await
        })
        .await;
    if let Err(e) = marked {
        tracing::warn!(error = %ErrorChain(&e), "could not record the failure in Redis");
    }
}

fn record_send(app: &str, template_id: &str, outcome: &'static str, errcode: Option<i64>) {
    let errcode = errcode.map_or_else(|| "none".to_owned(), |code| code.to_string());
    metrics::counter!(m::SENDS, "app" => app.to_owned(), "template" => template_id.to_owned(), "outcome" => outcome, "errcode" => errcode).increment(1);
}
