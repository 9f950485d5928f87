//! The grant ledger: what wxpush knows of each user's subscriptions, per (app, openid,
//! template_id), from WeChat's message push (the receiver) and from sends (the worker).
//!
//! Key layout: one hash per (app, openid), `{prefix}:grants:{<app>:<openid>}` (see
//! [`crate::store::Keys::grants`]), TTL [`LEDGER_TTL`] refreshed by every write. Per
//! template `T` it holds:
//! - `t:T:n`: one-time templates: the grants left (never below 0); long-term: 1 on, 0 off;
//! - `t:T:kind`: `once` or `long`, as the config said when the user last chose (absent when
//!   only a send or a 43101 was recorded);
//! - `t:T:choice`, `t:T:choice_at`: the user's last choice (`accept`, `acceptWithAudio`,
//!   `reject` from the popup; `off`/`on` from the settings) and when (Redis time, ms);
//! - `t:T:at`: when the entry last changed (any of the changes below).
//!
//! Every change is one run of the [`CHANGE`] script on the user's hash only, so receivers
//! and workers may change the same user's grants at once and no update is lost. The
//! receiver's dedupe marker for a push (`{prefix}:push-seen:{<app>:<openid>}:…`) carries the
//! same hash tag, so "not seen before → mark seen → apply" is one script as well: a retried
//! push is applied exactly once, and a push that failed half way is never marked seen.
//!
//! What the ledger cannot know: grants made before wxpush listened to the pushes, or while
//! the receiver was unreachable; such a template reads [`Grant::Unknown`], not
//! [`Grant::None`] (so `policy.without_grant = "send"` is the safe default).

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

/// How long a user's ledger lives after its last change: a long-term subscription or an
/// unused one-time grant outlives a year of silence, abandoned users do not stay forever.
pub const LEDGER_TTL: Duration = Duration::from_secs(400 * 24 * 3600);

/// A template's kind, from `long_term` in its `[[templates]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Each accept allows one send.
    OneTime,
    /// Accept turns it on until the user turns it off.
    LongTerm,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::OneTime => "once",
            Kind::LongTerm => "long",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        match text {
            "once" => Some(Kind::OneTime),
            "long" => Some(Kind::LongTerm),
            _ => None,
        }
    }

    /// `one-time` / `long-term`, for people.
    pub fn label(self) -> &'static str {
        match self {
            Kind::OneTime => "one-time",
            Kind::LongTerm => "long-term",
        }
    }
}

/// The user's choice in the `wx.requestSubscribeMessage` popup (`SubscribeStatusString`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Accept,
    AcceptWithAudio,
    Reject,
}

impl Choice {
    /// WeChat's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Accept => "accept",
            Choice::AcceptWithAudio => "acceptWithAudio",
            Choice::Reject => "reject",
        }
    }

    /// `None` for a value WeChat does not document.
    pub fn parse(text: &str) -> Option<Choice> {
        [Choice::Accept, Choice::AcceptWithAudio, Choice::Reject]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

/// One change to a template's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A popup choice: accept adds a one-time grant or turns a long-term template on;
    /// reject is only recorded.
    Chose(Choice, Kind),
    /// The user turned the template off in the settings: nothing left.
    TurnedOff,
    /// The user turned it back on in the settings: a long-term template is on again; a
    /// one-time template gains nothing (only a popup tap grants a send).
    TurnedOn,
    /// A send succeeded: one one-time grant used.
    Used,
    /// WeChat answered 43101: nothing left (long-term: off).
    Refused,
    /// A grant taken for a send that then did not happen goes back (one-time: +1).
    Returned,
}

impl Change {
    fn op(self) -> (&'static str, &'static str) {
        match self {
            Change::Chose(choice, kind) => (choice.as_str(), kind.as_str()),
            Change::TurnedOff => ("off", ""),
            Change::TurnedOn => ("on", ""),
            Change::Used => ("use", ""),
            Change::Refused => ("refused", ""),
            Change::Returned => ("return", ""),
        }
    }
}

/// Whether a send of the template may go, as far as the ledger knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Nothing recorded for (user, template): granted before wxpush listened, or never.
    Unknown,
    /// A one-time grant left, or a long-term template on.
    Available,
    /// Recorded, and nothing left (used, rejected, turned off, refused).
    None,
}

/// What [`use_one`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// One one-time grant used; `left` remain.
    OneTime { left: u64 },
    /// A long-term template: nothing to use up.
    LongTerm,
    /// Recorded with none left (sent anyway, e.g. under `without_grant = "send"`): stays 0.
    WasEmpty,
    /// Nothing recorded for the template: nothing changed.
    Unknown,
}

/// A template's entry as `wxpush grants` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GrantRecord {
    pub template_id: String,
    /// `None` when only a send or a 43101 was recorded.
    #[serde(serialize_with = "kind_label")]
    pub kind: Option<Kind>,
    /// One-time grants left; long-term: 1 on, 0 off.
    pub count: u64,
    /// The user's last choice (`accept`, `acceptWithAudio`, `reject`, `off`, `on`).
    pub choice: Option<String>,
    pub choice_at_ms: Option<u64>,
    /// When the entry last changed.
    pub updated_at_ms: Option<u64>,
}

fn kind_label<S: serde::Serializer>(kind: &Option<Kind>, s: S) -> Result<S::Ok, S::Error> {
    match kind {
        Some(k) => s.serialize_str(k.label()),
        None => s.serialize_none(),
    }
}

/// KEYS[1] the user's ledger, KEYS[2] a push's dedupe marker (only when ARGV[1] ~= '0').
/// ARGV[1] marker TTL ms ('0': no marker), ARGV[2] ledger TTL ms, then per change: op,
/// template id, kind ('once' | 'long' | '' = keep the recorded one). Returns {'duplicate'}
/// when the marker was there (nothing changed), else one result per change:
/// 'before:after:kind' counts, or 'unknown' for a use of a template with no entry (nothing
/// written).
///
/// A use (or give-back) of a template with no entry is the common case on the send path
/// (no grant was ever recorded): it costs one `HGET` and writes nothing, not even the TTL.
static CHANGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if ARGV[1] ~= '0' and not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  return {'duplicate'}
end
local now
local out = {}
for i = 3, #ARGV, 3 do
  local op, f, kind = ARGV[i], 't:' .. ARGV[i + 1] .. ':', ARGV[i + 2]
  local recorded = redis.call('HGET', KEYS[1], f .. 'n')
  if (op == 'use' or op == 'return') and not recorded then
    table.insert(out, 'unknown')
  else
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    local n = tonumber(recorded or '0')
    if kind == '' then
      kind = redis.call('HGET', KEYS[1], f .. 'kind') or ''
    else
      redis.call('HSET', KEYS[1], f .. 'kind', kind)
    end
    local long = kind == 'long'
    if op == 'accept' or op == 'acceptWithAudio' then
      if long then n = 1 else n = n + 1 end
    elseif op == 'off' or op == 'refused' then
      n = 0
    elseif op == 'on' then
      if long then n = 1 end
    elseif op == 'use' then
      if not long and n > 0 then n = n - 1 end
    elseif op == 'return' then
      if not long then n = n + 1 end
    end
    if op ~= 'use' and op ~= 'refused' and op ~= 'return' then
      redis.call('HSET', KEYS[1], f .. 'choice', op, f .. 'choice_at', now)
    end
    redis.call('HSET', KEYS[1], f .. 'n', n, f .. 'at', now)
    table.insert(out, tonumber(recorded or '0') .. ':' .. n .. ':' .. kind)
  end
end
if now then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return out",
    )
});

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

/// A template's entry around one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    pub before: u64,
    pub after: u64,
    pub kind: Option<Kind>,
}

/// Whether [`apply`] changed the ledger or found the push already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied; one result per change (`None` for a use of a template with no entry).
    Done(Vec<Option<Changed>>),
    /// The dedupe marker was there: the same push was applied before; nothing changed.
    Duplicate,
}

/// Applies `changes` to the user's ledger at `key` in one atomic step. With `seen` (a
/// marker key with the ledger's hash tag, and its TTL) nothing is applied if the marker
/// exists, and the marker is set with the changes: the receiver's exactly-once for
/// WeChat's retried pushes.
pub async fn apply(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    seen: Option<(&str, Duration)>,
    changes: &[(&str, Change)],
) -> redis::RedisResult<Applied> {
    let mut invocation = CHANGE.key(key);
    match seen {
        Some((marker, ttl)) => invocation.key(marker).arg(ms(ttl)),
        None => invocation.arg("0"),
    };
    invocation.arg(ms(LEDGER_TTL));
    for (template_id, change) in changes {
        let (op, kind) = change.op();
        invocation.arg(op).arg(*template_id).arg(kind);
    }
    let reply: Vec<String> = invocation.invoke_async(conn).await?;
    if reply.first().map(String::as_str) == Some("duplicate") {
        return Ok(Applied::Duplicate);
    }
    Ok(Applied::Done(
        reply
            .iter()
            .map(|r| {
                let mut parts = r.splitn(3, ':');
                Some(Changed {
                    before: parts.next()?.parse().ok()?,
                    after: parts.next()?.parse().ok()?,
                    kind: parts.next().and_then(Kind::parse),
                })
            })
            .collect(),
    ))
}

async fn change_one(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    template_id: &str,
    change: Change,
) -> redis::RedisResult<Option<Changed>> {
    Ok(
        match apply(conn, key, None, &[(template_id, change)]).await? {
            Applied::Done(mut results) => results.pop().flatten(),
            Applied::Duplicate => None,
        },
    )
}

/// Records a popup choice: accept/acceptWithAudio adds one grant to a one-time template and
/// turns a long-term one on; reject is recorded, the count unchanged.
pub async fn record_choice(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    template_id: &str,
    choice: Choice,
    long_term: bool,
) -> redis::RedisResult<()> {
    let kind = if long_term {
        Kind::LongTerm
    } else {
        Kind::OneTime
    };
    change_one(conn, key, template_id, Change::Chose(choice, kind)).await?;
    Ok(())
}

/// The user turned the template off (`subscribe_msg_change_event` with reject).
pub async fn turn_off(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    template_id: &str,
) -> redis::RedisResult<()> {
    change_one(conn, key, template_id, Change::TurnedOff).await?;
    Ok(())
}

/// After a successful send: one one-time grant used (never below 0), long-term unchanged;
/// nothing written for a template with no entry.
pub async fn use_one(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    template_id: &str,
) -> redis::RedisResult<Used> {
    Ok(
        match change_one(conn, key, template_id, Change::Used).await? {
            None => Used::Unknown,
            Some(Changed {
                kind: Some(Kind::LongTerm),
                ..
            }) => Used::LongTerm,
            Some(Changed { before: 0, .. }) => Used::WasEmpty,
            Some(Changed { after, .. }) => Used::OneTime { left: after },
        },
    )
}

/// Gives back a grant [`use_one`] took for a send that did not happen (one-time: +1).
pub async fn give_back(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    template_id: &str,
) -> redis::RedisResult<()> {
    change_one(conn, key, template_id, Change::Returned).await?;
    Ok(())
}

/// WeChat answered 43101: nothing left for the template (long-term: off).
pub async fn refused(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    template_id: &str,
) -> redis::RedisResult<()> {
    change_one(conn, key, template_id, Change::Refused).await?;
    Ok(())
}

async fn check_entry(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    template_id: &str,
) -> redis::RedisResult<Option<u64>> {
    let n: Option<u64> = redis::cmd("HGET")
        .arg(key)
        .arg(format!("t:{template_id}:n"))
        .query_async(conn)
        .await?;
    Ok(n)
}

/// Whether a send of `template_id` to the ledger's user may go, as far as the ledger knows.
pub async fn check(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    template_id: &str,
) -> redis::RedisResult<Grant> {
    Ok(match check_entry(conn, key, template_id).await? {
        None => Grant::Unknown,
        Some(0) => Grant::None,
        Some(_) => Grant::Available,
    })
}

/// Every template entry of the user, sorted by template id.
pub async fn read_all(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> redis::RedisResult<Vec<GrantRecord>> {
    let fields: std::collections::BTreeMap<String, String> =
        redis::cmd("HGETALL").arg(key).query_async(conn).await?;
    let mut records: std::collections::BTreeMap<&str, GrantRecord> = Default::default();
    for (field, value) in &fields {
        let Some((template_id, name)) = field
            .strip_prefix("t:")
            .and_then(|rest| rest.rsplit_once(':'))
        else {
            continue;
        };
        let record = records.entry(template_id).or_insert_with(|| GrantRecord {
            template_id: template_id.to_owned(),
            kind: None,
            count: 0,
            choice: None,
            choice_at_ms: None,
            updated_at_ms: None,
        });
        match name {
            "n" => record.count = value.parse().unwrap_or(0),
            "kind" => record.kind = Kind::parse(value),
            "choice" => record.choice = Some(value.clone()),
            "choice_at" => record.choice_at_ms = value.parse().ok(),
            "at" => record.updated_at_ms = value.parse().ok(),
            _ => {}
        }
    }
    Ok(records.into_values().collect())
}
