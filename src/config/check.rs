//! Everything about a config that can be checked without the network: each problem with the
//! line it is on, so `wxpush check` can list them all at once.

use std::collections::BTreeMap;
use std::fmt;

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::load::{Loaded, Origin};
use super::{AmqpConfig, AppConfig, Config, RedisConfig, RedisMode, redact_url};
use crate::push::crypto::AesKey;
use crate::template::pattern::Pattern;
use crate::template::rules::KeyType;

/// One thing wrong with the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub origin: Origin,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// A secret from an environment variable or a file (trailing newline dropped); `Ok(None)`
/// when neither is set. `what` names the keys in errors, e.g. `"secret"` for
/// `secret_env`/`secret_file`.
fn read_secret(
    what: &str,
    env: Option<&String>,
    file: Option<&PathBuf>,
) -> Result<Option<SecretString>, String> {
    let value = match (env, file) {
        (Some(var), None) => std::env::var(var)
            .map_err(|_| format!("{what}_env names {var}, which is not set in the environment"))?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("{what}_file {}: {e}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        (Some(_), Some(_)) => return Err(format!("set {what}_env or {what}_file, not both")),
        (None, None) => return Ok(None),
    };
    if value.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    Ok(Some(SecretString::from(value)))
}

impl AppConfig {
    /// Whether the app's message pushes are accepted (it has the console's push Token):
    /// only such an app's grant ledger can hold grants; without pushes it records 43101s
    /// alone.
    pub fn receives_pushes(&self) -> bool {
        self.push_token_env.is_some() || self.push_token_file.is_some()
    }

    /// Reads the app's secret from its environment variable or file.
    pub fn secret(&self) -> Result<SecretString, String> {
        read_secret(
            "secret",
            self.secret_env.as_ref(),
            self.secret_file.as_ref(),
        )?
        .ok_or_else(|| "no secret: set secret_env = \"VAR\" or secret_file = \"/path\"".into())
    }

    /// The message-push Token, if the app has one.
    pub fn push_token(&self) -> Result<Option<SecretString>, String> {
        read_secret(
            "push_token",
            self.push_token_env.as_ref(),
            self.push_token_file.as_ref(),
        )
    }

    /// The EncodingAESKey, if the app's pushes come in safe mode; checked for its form.
    pub fn push_aes_key(&self) -> Result<Option<AesKey>, String> {
        let Some(text) = read_secret(
            "push_aes_key",
            self.push_aes_key_env.as_ref(),
            self.push_aes_key_file.as_ref(),
        )?
        else {
            return Ok(None);
        };
        if self.push_token_env.is_none() && self.push_token_file.is_none() {
            return Err(
                "push_aes_key_* is set without push_token_env/push_token_file: safe mode needs the console's Token too".into(),
            );
        }
        AesKey::from_encoding_key(text.expose_secret().trim())
            .map(Some)
            .map_err(|e| format!("push_aes_key: {e}"))
    }
}

impl super::AdminConfig {
    /// The bearer token for `/api/*` and the console, if one is configured.
    pub fn token(&self) -> Result<Option<SecretString>, String> {
        read_secret(
            "admin.token",
            self.token_env.as_ref(),
            self.token_file.as_ref(),
        )
    }
}

impl Loaded {
    /// Every problem found, in file order of the sections checked. Empty means valid.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut add = |origin: Origin, message: String| problems.push(Problem { origin, message });
        let config: &Config = &self.config;
        let nowhere = Origin::Unknown;

        for (name, app) in &config.apps {
            let at = self.origin(app.span());
            if app.get_ref().secret.is_some() {
                add(
                    at.clone(),
                    format!(
                        "[apps.{name}] has `secret` written in the file; secrets come only from the environment or a file: use secret_env = \"WXPUSH_{}_SECRET\" or secret_file",
                        name.to_ascii_uppercase()
                    ),
                );
            } else if let Err(e) = app.get_ref().secret() {
                add(at.clone(), format!("[apps.{name}]: {e}"));
            }
            if app.get_ref().appid.trim().is_empty() {
                add(at.clone(), format!("[apps.{name}]: appid is empty"));
            }
            if let Err(e) = app.get_ref().push_token() {
                add(at.clone(), format!("[apps.{name}]: {e}"));
            }
            if let Err(e) = app.get_ref().push_aes_key() {
                add(at, format!("[apps.{name}]: {e}"));
            }
        }
        if config.push.is_some()
            && !config
                .apps
                .values()
                .any(|app| app.get_ref().receives_pushes())
        {
            add(
                nowhere.clone(),
                "[push] is set but no app has push_token_env or push_token_file: every push would be refused".into(),
            );
        }

        if let Err(e) = config.admin.token() {
            add(nowhere.clone(), format!("[admin]: {e}"));
        }

        if config.templates.is_empty() {
            add(
                nowhere.clone(),
                "no [[templates]]: no event type would be delivered".into(),
            );
        }
        let mut seen: BTreeMap<&str, Origin> = BTreeMap::new();
        for spanned in &config.templates {
            let at = self.origin(spanned.span());
            let t = spanned.get_ref();
            let event = &t.event;
            if event.trim().is_empty() {
                add(at.clone(), "template has an empty `event`".into());
            }
            if let Some(first) = seen.insert(event, at.clone()) {
                add(
                    at.clone(),
                    format!(
                        "event `{event}` is mapped twice (first at {first}); one event type has one template"
                    ),
                );
            }
            if !config.apps.contains_key(&t.app) {
                add(
                    at.clone(),
                    format!(
                        "template for `{event}` uses app `{}`, but there is no [apps.{}] (apps: {})",
                        t.app,
                        t.app,
                        config.apps.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
            if t.template_id.trim().is_empty() {
                add(
                    at.clone(),
                    format!("template for `{event}` has an empty template_id"),
                );
            }
            if let Some(page) = &t.page
                && let Err(e) = Pattern::parse(page)
            {
                add(at.clone(), format!("template for `{event}`: page: {e}"));
            }
            if t.data.is_empty() {
                add(
                    at.clone(),
                    format!("template for `{event}` has no [templates.data] keys"),
                );
            }
            for (key, value) in &t.data {
                let at = self.origin(value.span());
                if KeyType::of_key(key).is_none() {
                    add(
                        at.clone(),
                        format!(
                            "template for `{event}`: data key `{key}` has no WeChat type (a key is a type plus digits, e.g. thing4; types: thing, number, letter, symbol, character_string, phone_number, car_number, name, phrase, amount, time, date, enum)"
                        ),
                    );
                }
                if let Err(e) = Pattern::parse(value.get_ref()) {
                    add(
                        at.clone(),
                        format!("template for `{event}`: data key `{key}`: {e}"),
                    );
                }
                if KeyType::of_key(key) == Some(KeyType::Enum) {
                    match t.enums.get(key) {
                        None => add(
                            at,
                            format!(
                                "template for `{event}`: data key `{key}` is an enum: list its allowed values as [templates.enums] {key} = [\"…\"] (`wxpush templates` prints the template's list)"
                            ),
                        ),
                        Some(values) if values.is_empty() => add(
                            at,
                            format!("template for `{event}`: [templates.enums] {key} is empty"),
                        ),
                        Some(_) => {}
                    }
                }
            }
            for key in t.enums.keys() {
                if !t.data.contains_key(key) {
                    add(
                        at.clone(),
                        format!(
                            "template for `{event}`: [templates.enums] {key} names no key of [templates.data]"
                        ),
                    );
                } else if KeyType::of_key(key) != Some(KeyType::Enum) {
                    add(
                        at.clone(),
                        format!(
                            "template for `{event}`: [templates.enums] {key}: only enum keys (enum1, enum_string2, …) take a list of values"
                        ),
                    );
                }
            }
        }

        let retry = &config.retry;
        if retry.max_attempts == 0 {
            add(
                nowhere.clone(),
                "retry.max_attempts must be at least 1".into(),
            );
        }
        if retry.initial.is_zero() || retry.initial > retry.max {
            add(
                nowhere.clone(),
                format!(
                    "retry.initial ({}) must be above zero and at most retry.max ({})",
                    humantime::format_duration(retry.initial),
                    humantime::format_duration(retry.max)
                ),
            );
        }
        let wechat = &config.wechat;
        if !(wechat.api_base.starts_with("http://") || wechat.api_base.starts_with("https://")) {
            add(
                nowhere.clone(),
                format!(
                    "wechat.api_base `{}` is not an http(s) URL",
                    wechat.api_base
                ),
            );
        }
        if wechat.timeout.is_zero() || wechat.lock_ttl <= wechat.timeout {
            add(
                nowhere.clone(),
                "wechat.lock_ttl must be longer than wechat.timeout (above zero): a refresher must finish its call before its lock lapses".into(),
            );
        }
        let amqp = &config.amqp;
        if amqp.prefetch == 0 {
            add(nowhere.clone(), "amqp.prefetch must be at least 1".into());
        }
        if amqp.confirm_timeout.is_zero() {
            add(
                nowhere.clone(),
                "amqp.confirm_timeout must be above zero".into(),
            );
        }
        if amqp.publish_channels == 0 {
            add(
                nowhere.clone(),
                "amqp.publish_channels must be at least 1".into(),
            );
        }
        if config.admin.dead_scan_max == 0 {
            add(
                nowhere.clone(),
                "admin.dead_scan_max must be at least 1 (letters a dead-letter listing reads)"
                    .into(),
            );
        }
        if amqp.queue == amqp.dead_letter_queue {
            add(
                nowhere.clone(),
                "amqp.queue and amqp.dead_letter_queue must differ".into(),
            );
        }
        for message in amqp_problems(amqp)
            .into_iter()
            .chain(redis_problems(&config.redis))
        {
            add(nowhere.clone(), message);
        }
        if config.policy.idempotency_ttl.is_zero() {
            add(nowhere, "policy.idempotency_ttl must be above zero".into());
        }
        problems
    }
}

fn amqp_problems(amqp: &AmqpConfig) -> Vec<String> {
    amqp.nodes()
        .iter()
        .filter(|url| !(url.starts_with("amqp://") || url.starts_with("amqps://")))
        .map(|url| {
            format!(
                "amqp.url(s): `{}` is not an amqp:// or amqps:// URL",
                redact_url(url)
            )
        })
        .collect()
}

/// The `[redis]` settings that cannot work: a mode without its addresses, a URL that is not
/// Redis's, a key prefix that would split a script's keys over Redis Cluster slots.
fn redis_problems(redis: &RedisConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if redis.key_prefix.contains(['{', '}']) {
        problems.push(format!(
            "redis.key_prefix `{}` contains `{{` or `}}`: Redis Cluster would hash on it and split the keys one script needs across slots; pick a prefix without braces",
            redis.key_prefix
        ));
    }
    let urls: Vec<&String> = match redis.mode {
        RedisMode::Single => {
            if !redis.urls.is_empty() {
                problems.push("redis.urls is only read in cluster and sentinel mode: set redis.mode = \"cluster\" or \"sentinel\", or use redis.url for one Redis".into());
            }
            vec![&redis.url]
        }
        RedisMode::Cluster | RedisMode::Sentinel if redis.urls.is_empty() => {
            let what = if redis.mode == RedisMode::Cluster {
                "some of the cluster's nodes (seeds)"
            } else {
                "the sentinels"
            };
            problems.push(format!(
                "redis.mode = \"{}\" needs redis.urls: {what}, e.g. urls = [\"redis://10.0.0.1:{}\"]",
                redis.mode.as_str(),
                if redis.mode == RedisMode::Cluster { 6379 } else { 26379 }
            ));
            Vec::new()
        }
        RedisMode::Cluster | RedisMode::Sentinel => redis.urls.iter().collect(),
    };
    for url in urls {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            problems.push(format!(
                "redis: `{}` is not a redis:// or rediss:// URL",
                redact_url(url)
            ));
        }
    }
    let master = redis.sentinel_master.as_deref().unwrap_or("");
    if redis.mode == RedisMode::Sentinel && master.trim().is_empty() {
        problems.push("redis.mode = \"sentinel\" needs redis.sentinel_master: the name the sentinels know the primary by (`sentinel monitor <name> …`, often \"mymaster\")".into());
    }
    if redis.mode != RedisMode::Sentinel && redis.sentinel_master.is_some() {
        problems.push(
            "redis.sentinel_master is only read in sentinel mode (redis.mode = \"sentinel\")"
                .into(),
        );
    }
    problems.extend(login_problems(redis));
    if redis.replicas_ack() > 0
        && (redis.replicas_timeout.is_zero() || redis.replicas_timeout >= MAX_REPLICAS_TIMEOUT)
    {
        problems.push(format!(
            "redis.replicas_timeout ({}) must be above zero and below {} (the Redis response timeout): WAIT 0 would block forever",
            humantime::format_duration(redis.replicas_timeout),
            humantime::format_duration(MAX_REPLICAS_TIMEOUT)
        ));
    }
    problems
}

/// Logins that cannot work: cluster seeds with different logins or schemes (the cluster
/// client has one login and one TLS setting for every node), the primary's own login
/// outside sentinel mode or a username without its password.
fn login_problems(redis: &RedisConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if redis.mode == RedisMode::Cluster
        && redis
            .urls
            .windows(2)
            .any(|w| login_of(&w[0]) != login_of(&w[1]))
    {
        problems.push("redis.urls: every cluster seed needs the same scheme (redis:// or rediss://), username and password: the cluster client logs in to every node, seeds and the nodes they name alike, with one login and one TLS setting".into());
    }
    let own_login =
        redis.sentinel_master_username.is_some() || redis.sentinel_master_password.is_some();
    if redis.mode != RedisMode::Sentinel && own_login {
        problems.push("redis.sentinel_master_username and redis.sentinel_master_password are only read in sentinel mode; in cluster mode the login goes in redis.urls, in single mode in redis.url".into());
    }
    if redis.sentinel_master_username.is_some() && redis.sentinel_master_password.is_none() {
        problems.push("redis.sentinel_master_username needs redis.sentinel_master_password: Redis logs an ACL user in with both".into());
    }
    problems
}

/// A URL's scheme and userinfo (`user:password`), compared, never shown.
fn login_of(url: &str) -> (&str, Option<&str>) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    (
        scheme,
        authority.rsplit_once('@').map(|(userinfo, _)| userinfo),
    )
}

/// Above this a `WAIT` outlasts the connection's response timeout (`store::connection`).
const MAX_REPLICAS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(edit: impl FnOnce(&mut RedisConfig)) -> Vec<String> {
        let mut redis = RedisConfig::default();
        edit(&mut redis);
        redis_problems(&redis)
    }

    #[test]
    fn each_mode_needs_its_addresses() {
        assert!(problems_of(|_| {}).is_empty());
        let cluster = problems_of(|r| r.mode = RedisMode::Cluster);
        assert!(cluster[0].contains("needs redis.urls"), "{cluster:?}");
        let sentinel = problems_of(|r| {
            r.mode = RedisMode::Sentinel;
            r.urls = vec!["redis://127.0.0.1:26379".into()];
        });
        assert!(
            sentinel[0].contains("needs redis.sentinel_master"),
            "{sentinel:?}"
        );
        let ok = problems_of(|r| {
            r.mode = RedisMode::Sentinel;
            r.urls = vec!["rediss://:pw@127.0.0.1:26379".into()];
            r.sentinel_master = Some("mymaster".into());
        });
        assert!(ok.is_empty(), "{ok:?}");
        let stray = problems_of(|r| r.urls = vec!["redis://a:7000".into()]);
        assert!(stray[0].contains("only read in cluster and sentinel mode"));
    }

    #[test]
    fn braces_in_the_prefix_and_bad_urls_are_refused() {
        let braces = problems_of(|r| r.key_prefix = "app{1}".into());
        assert!(braces[0].contains("contains `{` or `}`"), "{braces:?}");
        let bad = problems_of(|r| {
            r.mode = RedisMode::Cluster;
            r.urls = vec!["http://:secret@a:7000".into()];
        });
        assert!(
            bad[0].contains("not a redis:// or rediss:// URL"),
            "{bad:?}"
        );
        assert!(!bad[0].contains("secret"), "passwords stay hidden: {bad:?}");
    }

    #[test]
    fn cluster_seeds_share_one_login_and_the_primary_login_is_sentinel_only() {
        let mixed = problems_of(|r| {
            r.mode = RedisMode::Cluster;
            r.urls = vec![
                "rediss://u:secret@a:7000".into(),
                "rediss://u:other@b:7000/".into(),
            ];
        });
        assert!(mixed[0].contains("same scheme"), "{mixed:?}");
        assert!(
            !mixed[0].contains("secret"),
            "passwords stay hidden: {mixed:?}"
        );
        let same = problems_of(|r| {
            r.mode = RedisMode::Cluster;
            r.urls = vec![
                "rediss://u:pw@a:7000".into(),
                "rediss://u:pw@b:7001/0".into(),
            ];
        });
        assert!(same.is_empty(), "{same:?}");
        let outside = problems_of(|r| r.sentinel_master_password = Some("pw".into()));
        assert!(
            outside[0].contains("only read in sentinel mode"),
            "{outside:?}"
        );
        let half = problems_of(|r| {
            r.mode = RedisMode::Sentinel;
            r.urls = vec!["rediss://:s@a:26379".into()];
            r.sentinel_master = Some("mymaster".into());
            r.sentinel_master_username = Some("wxpush".into());
        });
        assert_eq!(half.len(), 1, "{half:?}");
        assert!(
            half[0].contains("needs redis.sentinel_master_password"),
            "{half:?}"
        );
    }

    #[test]
    fn replicas_are_awaited_by_default_only_where_there_are_replicas() {
        let mut redis = RedisConfig::default();
        assert_eq!(redis.replicas_ack(), 0);
        redis.mode = RedisMode::Cluster;
        assert_eq!(redis.replicas_ack(), 1);
        redis.replicas_ack = Some(0);
        assert_eq!(redis.replicas_ack(), 0);
        let zero = problems_of(|r| {
            r.replicas_ack = Some(1);
            r.replicas_timeout = std::time::Duration::ZERO;
        });
        assert!(zero[0].contains("replicas_timeout"), "{zero:?}");
    }
}
