//! The fate of a message, and the one place that turns a failure into a fate.
//!
//! `handle.rs` and `send.rs` decide; `settle.rs` carries the [`Disposition`] out. What a
//! WeChat errcode *means* is the errcode table's ([`crate::wechat::errcode::action_of`]); what that
//! meaning does to *this* message under the configured policies is [`after_failure`] here,
//! and `policy.on_ambiguous` is [`on_ambiguous`] here. Nothing else decides either.

// Phases return `Result<_, Disposition>`: the fate is moved once per message, so boxing it
// would only add an allocation.
#![allow(clippy::result_large_err)]

use crate::admin::metrics as m;
use crate::broker::dead_letter::{Failure, FailureClass};
use crate::broker::outcome;
use crate::config::{OnAmbiguous, OnRefused};
use std::time::Duration;

use crate::store::StoreError;
use crate::store::app_hold::HoldReason;
use crate::store::claims::ClaimId;
use crate::wechat::errcode::Action;

use super::Ctx;
use super::breaker::PROBE_EVERY;

/// The fate of a message.
#[derive(Debug)]
pub enum Disposition {
    /// WeChat accepted it: ack.
    Sent { msgid: u64 },
    /// A redelivery of an event already decided (sent, dead-lettered, skipped, refused): ack
    /// without sending, repeating its outcome event (its first may not have been confirmed).
    Duplicate {
        decided: Option<outcome::Kind>,
        msgid: Option<u64>,
    },
    /// 43101 under `on_refused = "drop"`: ack, counted, logged and recorded (`refused`).
    Dropped,
    /// No grant for (user, template) under `policy.without_grant = "skip"`: WeChat is not
    /// called; ack, counted and recorded (`skipped`).
    Skipped,
    /// Try again later from the retry tier for `attempts` failures so far.
    Retry { attempts: u32, failure: Failure },
    /// Another worker is sending this event right now: look again shortly, no attempt spent.
    Later,
    /// The app cannot send now (its credentials are refused, its quota or rate is used up):
    /// hold the message for about `wait` in a retry tier, no attempt spent.
    Park {
        app: String,
        reason: ParkReason,
        wait: Duration,
    },
    /// Never deliverable (or out of attempts): to the dead-letter queue.
    DeadLetter {
        attempts: u32,
        failure: Failure,
        record: DeadRecord,
    },
    /// Redis cannot be reached, so nothing about the event can be decided safely: the
    /// message goes back to the queue unacked and the session stops consuming until Redis
    /// is back.
    RedisUnavailable(StoreError),
}

/// Why a message is parked, which decides how long it stays away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkReason {
    /// The app's credentials are refused (the breaker, `breaker.rs`).
    Credential,
    /// The app's sends are held fleet-wide (`app_hold.rs`).
    Held(HoldReason),
    /// The app's `max_rate` has no slot soon enough (`pacing.rs`).
    Rate,
}

impl ParkReason {
    /// Whether a message parked again and again should stay away longer each time: yes
    /// while the app waits for something that may take hours (an operator, the quota's
    /// day), no when the wait is known and short (the next minute, the next rate slot).
    pub fn grows(self) -> bool {
        matches!(
            self,
            ParkReason::Credential | ParkReason::Held(HoldReason::Quota | HoldReason::TokenQuota)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::Credential => "credential",
            ParkReason::Held(reason) => reason.as_str(),
            ParkReason::Rate => "rate",
        }
    }
}

/// What the event's Redis record says around its dead letter (see `store::claims`).
#[derive(Debug, Clone, Default)]
pub enum DeadRecord {
    /// None: the delivery never held a claim (unparsable, invalid, or not ours to decide).
    #[default]
    Unrecorded,
    /// This delivery holds the claim: mark `dead_pending` before the publish, `dead` after.
    Claimed {
        key: String,
        claim_id: ClaimId,
        replayed: i64,
    },
    /// The record already says `dead_pending` (a redelivery): publish, then mark `dead`.
    Pending {
        key: String,
        replayed: i64,
        /// The id the letter was decided with (the deciding claim's).
        letter_id: String,
    },
}

impl DeadRecord {
    /// The dead letter's id (`x-wxpush-letter-id`): the id of the claim that decided it, so
    /// that every copy a redelivery publishes carries the same one; for a message no
    /// claim stands behind, derived from its body.
    pub fn letter_id(&self, body: &[u8]) -> String {
        match self {
            DeadRecord::Claimed { claim_id, .. } => claim_id.as_str().to_owned(),
            DeadRecord::Pending { letter_id, .. } if !letter_id.is_empty() => letter_id.clone(),
            DeadRecord::Pending { .. } | DeadRecord::Unrecorded => {
                crate::broker::dead_letter::letter_id_of_body(body)
            }
        }
    }
}

impl Disposition {
    /// A dead letter with no Redis record yet (the caller adds the claim, if it holds one).
    pub fn dead_letter(attempts: u32, failure: Failure) -> Disposition {
        Disposition::DeadLetter {
            attempts,
            failure,
            record: DeadRecord::Unrecorded,
        }
    }

    /// Shorthand for a Redis failure while doing `action`.
    pub fn redis(
        action: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Disposition {
        Disposition::RedisUnavailable(StoreError::new(action, error))
    }
}

impl From<StoreError> for Disposition {
    fn from(error: StoreError) -> Disposition {
        Disposition::RedisUnavailable(error)
    }
}

/// A message that can never be sent as it is (it never reached WeChat).
pub fn invalid(message: impl Into<String>, app: Option<&str>) -> Disposition {
    Disposition::dead_letter(
        0,
        Failure {
            class: FailureClass::Invalid,
            errcode: None,
            errmsg: message.into(),
            app: app.map(str::to_owned),
        },
    )
}

/// Retry, unless that was the last attempt `retry.max_attempts` allows.
pub fn retry_or_dead(ctx: &Ctx, attempts: u32, failure: Failure) -> Disposition {
    if attempts >= ctx.config.retry.max_attempts {
        Disposition::dead_letter(attempts, failure)
    } else {
        Disposition::Retry { attempts, failure }
    }
}

/// The fate of a message whose call failed definitely, `attempts` failures counted
/// (this one included): the errcode table's [`Action`] under the configured policies.
/// A limit (45009, 45011) holds the app's sends fleet-wide and parks the message without
/// counting the attempt; `token_fetch` says the limit was the token endpoint's.
pub async fn after_failure(
    ctx: &Ctx,
    app: &str,
    attempts: u32,
    action: Action,
    failure: Failure,
    token_fetch: bool,
) -> Disposition {
    let reason = match action {
        Action::WaitForQuota if token_fetch => HoldReason::TokenQuota,
        Action::WaitForQuota => HoldReason::Quota,
        Action::WaitForNextMinute => HoldReason::Minute,
        Action::ParkApp => {
            ctx.breaker.trip(app, failure.errcode, &failure.errmsg);
            return Disposition::Park {
                app: app.to_owned(),
                reason: ParkReason::Credential,
                wait: PROBE_EVERY,
            };
        }
        Action::DeadLetter => return Disposition::dead_letter(attempts, failure),
        Action::ApplyRefusedPolicy => return refused(ctx, attempts, failure),
        // A stale token that is still stale after the refreshes a message may make is a
        // failure like any transient one.
        Action::RefreshTokenAndRetry | Action::RetryLater => {
            return retry_or_dead(ctx, attempts, failure);
        }
    };
    match ctx.holds.hold(&ctx.hot_path, app, reason).await {
        Ok(wait) => Disposition::Park {
            app: app.to_owned(),
            reason: ParkReason::Held(reason),
            wait,
        },
        Err(e) => Disposition::RedisUnavailable(e),
    }
}

/// 43101: `policy.on_refused`.
fn refused(ctx: &Ctx, attempts: u32, failure: Failure) -> Disposition {
    match ctx.config.policy.on_refused {
        OnRefused::Drop => {
            metrics::counter!(m::REFUSED_DROPPED).increment(1);
            tracing::info!(
                "user has no subscription left (43101); dropped (policy.on_refused = \"drop\")"
            );
            Disposition::Dropped
        }
        OnRefused::DeadLetter => Disposition::dead_letter(attempts, failure),
    }
}

/// Why WeChat may have accepted a send that no answer confirmed.
#[derive(Debug, Clone, Copy)]
pub enum Unconfirmed<'a> {
    /// An earlier claim lapsed: its worker died or lost Redis in the middle of a send.
    LapsedClaim,
    /// The event has no state although it was handled before: Redis lost it.
    LostState,
    /// This worker's call went out and no answer came (`cause` says how).
    NoAnswer { cause: &'a str },
}

const LAPSED_CLAIM: &str =
    "a previous attempt ended without an answer from WeChat; it may have been delivered";
const LOST_STATE: &str =
    "Redis lost this event's delivery state after it was handled; it may have been delivered";

impl Unconfirmed<'_> {
    fn errmsg(self) -> String {
        match self {
            Unconfirmed::LapsedClaim => LAPSED_CLAIM.to_owned(),
            Unconfirmed::LostState => LOST_STATE.to_owned(),
            Unconfirmed::NoAnswer { cause } => format!("{cause}; it may have been delivered"),
        }
    }
}

/// `policy.on_ambiguous`, applied wherever WeChat may have accepted a send that no answer
/// confirmed. `Ok` means "send again"; `Err` is the dead letter (`"dead_letter"`), which
/// `settle` records as `dead_pending` on the claim before publishing it, so no redelivery
/// can send the event.
pub fn on_ambiguous(
    ctx: &Ctx,
    attempts: u32,
    app: &str,
    why: Unconfirmed<'_>,
) -> Result<(), Disposition> {
    match ctx.config.policy.on_ambiguous {
        OnAmbiguous::Resend => {
            metrics::counter!(m::AMBIGUOUS, "action" => "resend").increment(1);
            // A call without an answer is logged with its retry; the others only here.
            if !matches!(why, Unconfirmed::NoAnswer { .. }) {
                tracing::warn!(
                    reason = %why.errmsg(),
                    "a previous attempt ended without an answer; sending again (policy.on_ambiguous = \"resend\")"
                );
            }
            Ok(())
        }
        OnAmbiguous::DeadLetter => {
            metrics::counter!(m::AMBIGUOUS, "action" => "dead_letter").increment(1);
            Err(Disposition::dead_letter(
                attempts,
                ambiguous_failure(app, why.errmsg()),
            ))
        }
    }
}

/// What a dead letter of an event that may have been delivered says.
fn ambiguous_failure(app: &str, errmsg: impl Into<String>) -> Failure {
    Failure {
        class: FailureClass::Ambiguous,
        errcode: None,
        errmsg: errmsg.into(),
        app: Some(app.to_owned()),
    }
}
