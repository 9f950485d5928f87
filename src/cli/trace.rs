//! `wxpush trace EVENT_ID [--json]`: what happened to one event, from its delivery record in
//! Redis: received, each failed attempt, sent (msgid), dead-lettered, skipped or refused.
//! Exit 1 when Redis has no record of it.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::CliResult;
use crate::config::Config;
use crate::store::event_record::{self, Trace};
use crate::store::{self, Keys};

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The event's `id`
    pub event_id: String,
    /// Print the record as JSON
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, args: TraceArgs) -> CliResult {
    let pool = store::pooled(&config.redis)?;
    let mut conn = pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Redis: {e}"))?;
    let keys = Keys::new(&config.redis.key_prefix);
    let traced = event_record::trace(&mut *conn, &keys, &args.event_id)
        .await
        .map_err(|e| anyhow::anyhow!("reading the record of `{}`: {e}", args.event_id))?;
    let Some(traced) = traced else {
        return Err(anyhow::anyhow!(
            "no delivery record for event `{}` in Redis (key prefix `{}`): never received by a worker, or older than policy.idempotency_ttl ({}). An event refused as invalid before it was claimed is only in the dead-letter queue: `wxpush dead --show {}`",
            args.event_id,
            config.redis.key_prefix,
            humantime::format_duration(config.policy.idempotency_ttl),
            args.event_id
        )
        .into());
    };
    if args.json {
        let json = serde_json::json!({ "id": args.event_id, "record": traced });
        println!(
            "{}",
            serde_json::to_string_pretty(&json).map_err(anyhow::Error::from)?
        );
    } else {
        print!("{}", human(&args.event_id, &traced));
    }
    Ok(())
}

fn at(ms: u64) -> String {
    i128::from(ms)
        .checked_mul(1_000_000)
        .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The record as lines a person reads, in the order things happened.
fn human(id: &str, traced: &Trace) -> String {
    let r = &traced.record;
    let mut out = format!("event     {id}\nstate     {}\n", r.state);
    let mut line = |label: &str, text: String| out.push_str(&format!("{label:<9} {text}\n"));
    if let Some(kind) = &r.event_type {
        line("type", kind.clone());
    }
    if let Some(app) = &r.app {
        line("app", app.clone());
    }
    if let Some(openid) = &r.openid {
        line("openid", format!("{openid} (from its js_code)"));
    }
    if let Some(ms) = r.received_ms {
        line("received", at(ms));
    }
    for (n, attempt) in r.failed_attempts.iter().enumerate() {
        let errcode = attempt
            .errcode
            .map_or_else(|| "no errcode".to_owned(), |c| format!("errcode {c}"));
        line(
            &format!("attempt {}", n + 1),
            format!(
                "{}  failed: {} ({errcode})",
                at(attempt.at_ms),
                attempt.class
            ),
        );
    }
    if let (Some(ms), Some(msgid)) = (r.sent_ms, r.msgid) {
        line("sent", format!("{}  msgid {msgid}", at(ms)));
    }
    if let Some(d) = &traced.delivery {
        let verdict = if d.errcode == 0 {
            "delivered"
        } else {
            "not delivered"
        };
        line(
            "result",
            format!(
                "{}  {verdict} (WeChat ErrorCode {}, {})",
                at(d.at_ms),
                d.errcode,
                d.status
            ),
        );
    }
    if let Some(dead) = &r.dead_letter {
        let when = dead.dead_ms.map_or_else(|| "pending".to_owned(), at);
        let errcode = dead
            .errcode
            .map(|c| format!(" errcode {c}"))
            .unwrap_or_default();
        line(
            "dead",
            format!("{when}  {}{errcode}: {}", dead.class, dead.errmsg),
        );
    }
    if let Some(ms) = r.decided_ms {
        line(&r.state, at(ms));
    }
    if r.replayed > 0 {
        line("replayed", format!("{} time(s)", r.replayed));
    }
    out
}
