//! `apps.NAME.max_rate`: every send of a rate-limited app first reserves a slot in the
//! app's fleet-wide limiter (`store::rate_limit`, one round trip) and waits for it, so all
//! workers together never send faster, and throttled messages go in the order they asked.
//! A slot more than [`MAX_WAIT`] away is not waited for in memory: the message is parked
//! that long (no attempt spent) and asks again when it comes back.

// Phases return `Result<_, Disposition>`: the fate is moved once per message, so boxing it
// would only add an allocation.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use super::Ctx;
use super::disposition::{Disposition, ParkReason};
use crate::admin::metrics as m;
use crate::store::rate_limit::{self, Slot};

/// The longest a message waits for its slot while holding its prefetch slot and claim.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Waits for the app's next send slot, if the app has a `max_rate`.
pub async fn pace(ctx: &Ctx, app: &str) -> Result<(), Disposition> {
    let Some(rate) = ctx.config.apps.get(app).and_then(|a| a.get_ref().max_rate) else {
        return Ok(());
    };
    let key = ctx.keys.app_rate(app);
    let slot = ctx
        .hot_path
        .run("rate limit", async |conn| {
            rate_limit::reserve(conn, &key, rate.interval(), MAX_WAIT).await
        })
        .await?;
    match slot {
        Slot::Reserved(wait) => {
            if !wait.is_zero() {
                metrics::counter!(m::THROTTLED, "app" => app.to_owned()).increment(1);
                tokio::time::sleep(wait).await;
            }
            Ok(())
        }
        Slot::TooFar(wait) => {
            metrics::counter!(m::THROTTLED, "app" => app.to_owned()).increment(1);
            Err(Disposition::Park {
                app: app.to_owned(),
                reason: ParkReason::Rate,
                wait,
            })
        }
    }
}
