//! The fate of a message, and the one place that turns a failure into a fate.
//!
//! `handle.rs` and `send.rs` decide; `settle.rs` carries the [`Disposition`] out. What a
//! WeChat errcode *means* is the errcode table's ([`ErrorClass::action`]); what that
//! meaning does to *this* message under the configured policies is [`after_failure`] here,
//! and `policy.on_ambiguous` is [`on_ambiguous`] here. Nothing else decides either.

use crate::admin::metrics as m;
use crate::broker::dead_letter::{Failure, FailureClass};
use crate::config::{OnAmbiguous, OnRefused};
use crate::store::{StoreError, claims};
use crate::wechat::errcode::Action;

use super::Ctx;

/// The fate of a message.
#[derive(Debug)]
pub enum Disposition {
    /// WeChat accepted it: ack.
    Sent { msgid: u64 },
    /// A redelivery of an event already sent (or already dead-lettered): ack without sending.
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
    /// Redis cannot be reached, so nothing about the event can be decided safely: the
    /// message goes back to the queue unacked and the session stops consuming until Redis
    /// is back.
    RedisUnavailable(StoreError),
}

impl Disposition {
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
    Disposition::DeadLetter {
        attempts: 0,
        failure: Failure {
            class: FailureClass::Invalid,
            errcode: None,
            errmsg: message.into(),
            app: app.map(str::to_owned),
        },
    }
}

/// Retry, unless that was the last attempt `retry.max_attempts` allows.
pub fn retry_or_dead(ctx: &Ctx, attempts: u32, failure: Failure) -> Disposition {
    if attempts >= ctx.config.retry.max_attempts {
        Disposition::DeadLetter { attempts, failure }
    } else {
        Disposition::Retry { attempts, failure }
    }
}

/// The fate of a message whose call failed definitely, `attempts` failures counted
/// (this one included): the errcode table's [`Action`] under the configured policies.
pub fn after_failure(
    ctx: &Ctx,
    app: &str,
    attempts: u32,
    action: Action,
    failure: Failure,
) -> Disposition {
    match action {
        Action::ParkApp => {
            ctx.breaker.trip(app, failure.errcode, &failure.errmsg);
            Disposition::Park {
                app: app.to_owned(),
            }
        }
        Action::DeadLetter => Disposition::DeadLetter { attempts, failure },
        Action::ApplyRefusedPolicy => match ctx.config.policy.on_refused {
            OnRefused::Drop => {
                metrics::counter!(m::REFUSED_DROPPED).increment(1);
                tracing::info!(
                    "user has no subscription left (43101); dropped (policy.on_refused = \"drop\")"
                );
                Disposition::Dropped
            }
            OnRefused::DeadLetter => Disposition::DeadLetter { attempts, failure },
        },
        // A stale token that is still stale after the refreshes a message may make is a
        // failure like any transient one.
        Action::RefreshTokenAndRetry | Action::RetryLater => retry_or_dead(ctx, attempts, failure),
    }
}

/// The dead letter of an event marked ambiguous earlier (its dead letter not yet
/// confirmed): dead-letter it again, never send it.
pub fn ambiguous_again(attempts: u32, app: &str) -> Disposition {
    Disposition::DeadLetter {
        attempts,
        failure: ambiguous_failure(app, LAPSED_CLAIM),
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

/// Why WeChat may have accepted a send that no answer confirmed.
#[derive(Debug, Clone, Copy)]
pub enum Unconfirmed<'a> {
    /// An earlier claim lapsed: its worker died or lost Redis in the middle of a send.
    LapsedClaim,
    /// This worker's call went out and no answer came (`cause` says how).
    NoAnswer { cause: &'a str },
}

const LAPSED_CLAIM: &str =
    "a previous attempt ended without an answer from WeChat; it may have been delivered";

impl Unconfirmed<'_> {
    fn errmsg(self) -> String {
        match self {
            Unconfirmed::LapsedClaim => LAPSED_CLAIM.to_owned(),
            Unconfirmed::NoAnswer { cause } => format!("{cause}; it may have been delivered"),
        }
    }
}

/// `policy.on_ambiguous`, applied wherever WeChat may have accepted a send that no answer
/// confirmed. `Ok` means "send again"; under `"dead_letter"` the event is first recorded as
/// ambiguous in Redis (terminal until replayed, so no redelivery can send it), then its
/// dead letter is the answer.
pub async fn on_ambiguous(
    ctx: &Ctx,
    key: &str,
    replayed: i64,
    attempts: u32,
    app: &str,
    why: Unconfirmed<'_>,
) -> Result<(), Disposition> {
    match ctx.config.policy.on_ambiguous {
        OnAmbiguous::Resend => {
            metrics::counter!(m::AMBIGUOUS, "action" => "resend").increment(1);
            // A call without an answer is logged with its retry; a lapsed claim only here.
            if let Unconfirmed::LapsedClaim = why {
                tracing::warn!(
                    "a previous attempt ended without an answer; sending again (policy.on_ambiguous = \"resend\")"
                );
            }
            Ok(())
        }
        OnAmbiguous::DeadLetter => {
            metrics::counter!(m::AMBIGUOUS, "action" => "dead_letter").increment(1);
            let mut conn = ctx.hot_path.get().await?;
            // Unrecorded, a redelivery would claim the event afresh and might send it a
            // second time; handing it back instead lets the claim lapse into "ambiguous".
            claims::mark_ambiguous(&mut conn, key, replayed)
                .await
                .map_err(|e| Disposition::redis("mark ambiguous", e))?;
            Err(Disposition::DeadLetter {
                attempts,
                failure: ambiguous_failure(app, why.errmsg()),
            })
        }
    }
}
