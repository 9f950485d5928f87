//! `wxpush grants OPENID [--app A] [--json]`: the user's grants as the ledger records them
//! (see `store::grants`), one row per (app, template): its kind, the one-time grants left or
//! on/off, the user's last choice and when.
//!
//! A template that is not listed has no entry: the ledger does not know (a grant made before
//! wxpush listened to WeChat's pushes is not in it).

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::CliResult;
use crate::config::Loaded;
use crate::store::grants::{self, GrantRecord, Kind};
use crate::store::{self, Keys};

#[derive(Debug, clap::Args)]
pub struct GrantsArgs {
    /// The user's openid
    pub openid: String,
    /// Only this app (a name from [apps.NAME])
    #[arg(long)]
    pub app: Option<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub async fn run(loaded: &Loaded, args: GrantsArgs) -> CliResult {
    let config = &loaded.config;
    let apps = super::templates::chosen_apps(loaded, args.app.as_deref())?;
    let keys = Keys::new(&config.redis.key_prefix);
    let pool = store::pooled(&config.redis)?;
    let mut conn = pool.get().await.map_err(anyhow::Error::from)?;
    let mut rows = Vec::new();
    for app in &apps {
        let records = grants::read_all(&mut *conn, &keys.grants(app, &args.openid))
            .await
            .map_err(|e| anyhow::anyhow!("reading the grants of app `{app}`: {e}"))?;
        rows.extend(records.into_iter().map(|r| (app.as_str(), r)));
    }
    let event_of = |app: &str, template_id: &str| {
        config
            .templates
            .iter()
            .map(|t| t.get_ref())
            .find(|t| t.app == app && t.template_id == template_id)
            .map(|t| t.event.clone())
    };
    if args.json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(app, r)| row_json(app, r, event_of(app, &r.template_id)))
            .collect();
        println!("{}", json!({"openid": args.openid, "grants": list}));
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no grants recorded for {} (the ledger knows only what WeChat pushed since wxpush listened)",
            args.openid
        );
        return Ok(());
    }
    println!(
        "{:<12} {:<44} {:<16} {:<10} {:>6}  {:<16} when",
        "app", "template_id", "event", "kind", "grant", "last choice"
    );
    for (app, r) in &rows {
        println!(
            "{app:<12} {:<44} {:<16} {:<10} {:>6}  {:<16} {}",
            r.template_id,
            event_of(app, &r.template_id).unwrap_or_else(|| "-".into()),
            r.kind.map_or("-", Kind::label),
            grant_text(r),
            r.choice.as_deref().unwrap_or("-"),
            r.choice_at_ms.map_or_else(|| "-".into(), time_text),
        );
    }
    Ok(())
}

/// `3` one-time grants left, or `on`/`off` for a long-term template.
fn grant_text(r: &GrantRecord) -> String {
    match (r.kind, r.count) {
        (Some(Kind::LongTerm), 0) => "off".into(),
        (Some(Kind::LongTerm), _) => "on".into(),
        (_, n) => n.to_string(),
    }
}

fn time_text(ms: u64) -> String {
    i128::from(ms)
        .checked_mul(1_000_000)
        .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn row_json(app: &str, r: &GrantRecord, event: Option<String>) -> Value {
    json!({
        "app": app,
        "template_id": r.template_id,
        "event": event,
        "kind": r.kind.map(Kind::label),
        "count": r.count,
        "available": r.count > 0,
        "choice": r.choice,
        "choice_at": r.choice_at_ms.map(time_text),
        "updated_at": r.updated_at_ms.map(time_text),
    })
}
