//! The configured templates against the account's own (WeChat's `gettemplate`): what
//! `wxpush check --remote` reports, what `wxpush run` logs at start, and the ready-to-paste
//! `[[templates]]` stubs of `wxpush templates`.
//!
//! The account's template is the truth: its `{{key.DATA}}` placeholders name the keys and
//! their types, its `keywordEnumValueList` the enum values. Comparing is plain data in,
//! mismatches out ([`compare`]); fetching is [`verify`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::Templates;
use super::rules::KeyType;
use crate::token::TokenStore;
use crate::wechat::client::{AccountTemplate, WechatClient};

/// One way a configured template differs from the account's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The template_id is not among the account's templates. `same_keys`: an account
    /// template with exactly the configured keys, when there is one (likely the right id).
    UnknownTemplate {
        event: String,
        template_id: String,
        same_keys: Option<String>,
    },
    /// The account's template has a key the config does not fill.
    MissingKey {
        event: String,
        template_id: String,
        key: String,
    },
    /// The config fills a key the account's template does not have.
    ExtraKey {
        event: String,
        template_id: String,
        key: String,
    },
    /// The config allows an enum value the account's template does not list.
    EnumValue {
        event: String,
        template_id: String,
        key: String,
        value: String,
    },
}

impl Mismatch {
    /// The configured template_id the mismatch is about.
    pub fn template_id(&self) -> &str {
        match self {
            Mismatch::UnknownTemplate { template_id, .. }
            | Mismatch::MissingKey { template_id, .. }
            | Mismatch::ExtraKey { template_id, .. }
            | Mismatch::EnumValue { template_id, .. } => template_id,
        }
    }

    /// The data key the mismatch is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Mismatch::UnknownTemplate { .. } => None,
            Mismatch::MissingKey { key, .. }
            | Mismatch::ExtraKey { key, .. }
            | Mismatch::EnumValue { key, .. } => Some(key),
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::UnknownTemplate {
                event,
                template_id,
                same_keys,
            } => {
                write!(
                    f,
                    "template for `{event}`: template_id `{template_id}` is not one of the account's templates (`wxpush templates` lists them)"
                )?;
                match same_keys {
                    Some(id) => write!(f, "; `{id}` has exactly these keys"),
                    None => Ok(()),
                }
            }
            Mismatch::MissingKey {
                event,
                template_id,
                key,
            } => write!(
                f,
                "template for `{event}` ({template_id}): key `{key}` of the account's template is missing from [templates.data]"
            ),
            Mismatch::ExtraKey {
                event,
                template_id,
                key,
            } => write!(
                f,
                "template for `{event}` ({template_id}): data key `{key}` is not a key of the account's template (WeChat answers 47003)"
            ),
            Mismatch::EnumValue {
                event,
                template_id,
                key,
                value,
            } => write!(
                f,
                "template for `{event}` ({template_id}): [templates.enums] {key} allows `{value}`, which the account's template does not list"
            ),
        }
    }
}

/// Every mismatch between the configured templates of `app` and the account's templates.
pub fn compare(configured: &Templates, app: &str, account: &[AccountTemplate]) -> Vec<Mismatch> {
    let mut ours: Vec<_> = configured.all().filter(|t| t.app == app).collect();
    ours.sort_by(|a, b| a.event.cmp(&b.event));
    let mut out = Vec::new();
    for template in ours {
        let event = || template.event.clone();
        let template_id = || template.template_id.clone();
        let keys: Vec<&str> = template.data_keys().collect();
        let Some(theirs) = account.iter().find(|a| a.id == template.template_id) else {
            let same_keys = account
                .iter()
                .find(|a| same_set(&a.keys, &keys))
                .map(|a| a.id.clone());
            out.push(Mismatch::UnknownTemplate {
                event: event(),
                template_id: template_id(),
                same_keys,
            });
            continue;
        };
        for key in &theirs.keys {
            if !keys.contains(&key.as_str()) {
                out.push(Mismatch::MissingKey {
                    event: event(),
                    template_id: template_id(),
                    key: key.clone(),
                });
            }
        }
        for key in &keys {
            if !theirs.keys.iter().any(|k| k == key) {
                out.push(Mismatch::ExtraKey {
                    event: event(),
                    template_id: template_id(),
                    key: (*key).to_owned(),
                });
                continue;
            }
            let (Some(allowed), Some(listed)) = (template.enum_values(key), theirs.enums.get(*key))
            else {
                continue;
            };
            for value in allowed.iter().filter(|v| !listed.contains(v)) {
                out.push(Mismatch::EnumValue {
                    event: event(),
                    template_id: template_id(),
                    key: (*key).to_owned(),
                    value: value.clone(),
                });
            }
        }
    }
    out
}

fn same_set(theirs: &[String], ours: &[&str]) -> bool {
    theirs.len() == ours.len() && theirs.iter().all(|k| ours.contains(&k.as_str()))
}

/// A ready-to-paste `[[templates]]` entry for an account template: the event type is a
/// placeholder to replace, each key maps to a field of the same name.
pub fn stub(app: &str, template: &AccountTemplate) -> String {
    let mut out = format!(
        "# {} ({}) — {}\n",
        template.title,
        template.kind,
        template
            .example
            .replace('\n', " / ")
            .trim_end_matches([' ', '/'])
    );
    out.push_str("[[templates]]\n");
    out.push_str("event = \"EVENT.TYPE\"                # the event type to map: replace\n");
    out.push_str(&format!("app = {}\n", quoted(app)));
    out.push_str(&format!("template_id = {}\n", quoted(&template.id)));
    out.push_str("[templates.data]\n");
    for key in &template.keys {
        let kind = KeyType::of_key(key).map_or("unknown type", KeyType::name);
        let line = format!("{key} = \"{{{key}}}\"");
        out.push_str(&format!("{line:<34}# {kind}\n"));
    }
    let enums: BTreeMap<_, _> = template
        .enums
        .iter()
        .filter(|(key, _)| template.keys.contains(key))
        .collect();
    if !enums.is_empty() {
        out.push_str("[templates.enums]\n");
        for (key, values) in enums {
            let list: Vec<String> = values.iter().map(|v| quoted(v)).collect();
            out.push_str(&format!("{key} = [{}]\n", list.join(", ")));
        }
    }
    out
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The result of checking one app against WeChat.
#[derive(Debug)]
pub struct AppCheck {
    pub app: String,
    /// The mismatches, or why the account's templates could not be read.
    pub result: Result<Vec<Mismatch>, String>,
}

/// Fetches each app's templates (with the shared token) and compares the configured ones.
/// An app WeChat cannot be asked about is reported as such, not as a mismatch.
pub async fn verify(
    configured: &Templates,
    tokens: &TokenStore,
    client: &WechatClient,
) -> Vec<AppCheck> {
    let mut out = Vec::new();
    for app in configured_apps(configured) {
        let result = account_templates(tokens, client, &app)
            .await
            .map(|account| compare(configured, &app, &account));
        out.push(AppCheck { app, result });
    }
    out
}

/// How often `wxpush run`'s check looks for an app's first token.
const TOKEN_WAIT: Duration = Duration::from_secs(5);

/// `wxpush run`'s check at start: each mismatch logged as a warning by template and key;
/// an app WeChat cannot be asked about is a warning too, and nothing stops the worker.
///
/// It fetches no token of its own: it waits until the worker holds one for the app (its
/// first message fetched it), so starting a worker costs WeChat no extra token fetch and a
/// broken app is still found, and parked, by the message path alone.
pub async fn check_and_log(configured: &Templates, tokens: &TokenStore, client: &WechatClient) {
    let mut waiting = configured_apps(configured);
    loop {
        let mut still = Vec::new();
        for app in waiting {
            match tokens.cached(&app) {
                Some(token) => {
                    let result = client
                        .get_templates(&token)
                        .await
                        .map(|account| compare(configured, &app, &account))
                        .map_err(|e| format!("gettemplate for app `{app}`: {e}"));
                    log_check(&app, result);
                }
                None => still.push(app),
            }
        }
        if still.is_empty() {
            return;
        }
        waiting = still;
        tokio::time::sleep(TOKEN_WAIT).await;
    }
}

fn log_check(app: &str, result: Result<Vec<Mismatch>, String>) {
    match result {
        Ok(mismatches) if mismatches.is_empty() => {
            tracing::info!(app, "templates match the account's on WeChat");
        }
        Ok(mismatches) => {
            for mismatch in mismatches {
                tracing::warn!(app, template = %mismatch.template_id(), key = mismatch.key().unwrap_or(""), "{mismatch}");
            }
        }
        Err(error) => {
            tracing::warn!(app, %error, "could not verify the templates against WeChat; carrying on");
        }
    }
}

/// The apps the configured templates use, each once.
fn configured_apps(configured: &Templates) -> Vec<String> {
    let mut apps: Vec<String> = configured.all().map(|t| t.app.clone()).collect();
    apps.sort_unstable();
    apps.dedup();
    apps
}

/// The account templates of one app.
pub async fn account_templates(
    tokens: &TokenStore,
    client: &WechatClient,
    app: &str,
) -> Result<Vec<AccountTemplate>, String> {
    let token = tokens
        .get(app)
        .await
        .map_err(|e| format!("no token for app `{app}`: {e}"))?;
    client
        .get_templates(&token)
        .await
        .map_err(|e| format!("gettemplate for app `{app}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::client::TemplateKind;

    fn configured() -> Templates {
        let text = r#"
[apps.default]
appid = "wx1"
secret_env = "X"
[[templates]]
event = "order.paid"
template_id = "TPL_ORDER"
[templates.data]
character_string1 = "{order_no}"
amount2 = "{amount}"
thing9 = "{remark}"
[[templates]]
event = "device.fault"
template_id = "TPL_WRONG"
[templates.data]
time1 = "{at|time}"
enum_string2 = "{room}"
[templates.enums]
enum_string2 = ["客厅", "阁楼"]
"#;
        let loaded = crate::config::load_str(text, "t.toml".as_ref(), vec![]).unwrap();
        Templates::compile(&loaded.config).unwrap()
    }

    fn account(id: &str, keys: &[&str]) -> AccountTemplate {
        AccountTemplate {
            id: id.into(),
            title: "T".into(),
            content: String::new(),
            example: String::new(),
            kind: TemplateKind::OneTime,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            enums: BTreeMap::new(),
        }
    }

    #[test]
    fn missing_extra_keys_and_a_wrong_id_are_each_reported() {
        let account = vec![
            account("TPL_ORDER", &["character_string1", "amount2", "time3"]),
            account("TPL_DEVICE", &["time1", "enum_string2"]),
        ];
        let found = compare(&configured(), "default", &account);
        assert_eq!(
            found,
            vec![
                Mismatch::UnknownTemplate {
                    event: "device.fault".into(),
                    template_id: "TPL_WRONG".into(),
                    same_keys: Some("TPL_DEVICE".into()),
                },
                Mismatch::MissingKey {
                    event: "order.paid".into(),
                    template_id: "TPL_ORDER".into(),
                    key: "time3".into(),
                },
                Mismatch::ExtraKey {
                    event: "order.paid".into(),
                    template_id: "TPL_ORDER".into(),
                    key: "thing9".into(),
                },
            ]
        );
        assert!(
            found[0]
                .to_string()
                .contains("`TPL_DEVICE` has exactly these keys")
        );
        assert!(found[2].to_string().contains("data key `thing9`"));
        assert!(compare(&configured(), "other", &account).is_empty());
    }

    #[test]
    fn enum_values_the_template_does_not_list_are_reported() {
        let mut device = account("TPL_WRONG", &["time1", "enum_string2"]);
        device
            .enums
            .insert("enum_string2".into(), vec!["客厅".into(), "餐厅".into()]);
        let order = account("TPL_ORDER", &["character_string1", "amount2", "thing9"]);
        let found = compare(&configured(), "default", &[device, order]);
        assert_eq!(
            found,
            vec![Mismatch::EnumValue {
                event: "device.fault".into(),
                template_id: "TPL_WRONG".into(),
                key: "enum_string2".into(),
                value: "阁楼".into(),
            }]
        );
    }

    #[test]
    fn a_stub_is_a_valid_template_entry() {
        let mut t = account(
            "cy_DfOZL7lypxHh3ja3DyAUbn1GYQRGwezuy5LBTFME",
            &["time1", "enum_string2"],
        );
        t.title = "洗衣机故障提醒".into();
        t.kind = TemplateKind::LongTerm;
        t.example = "完成时间:2021年10月21日 12:00:00\n所在位置:客厅\n".into();
        t.enums
            .insert("enum_string2".into(), vec!["客厅".into(), "餐厅\"".into()]);
        let text = stub("default", &t);
        assert!(
            text.starts_with("# 洗衣机故障提醒 (long-term) — 完成时间"),
            "{text}"
        );
        assert!(text.contains("time1 = \"{time1}\""), "{text}");
        assert!(text.contains("# time\n"), "{text}");
        assert!(text.contains("# enum\n"), "{text}");
        // The stub, with its event filled in, is a config `check` accepts.
        let config = format!(
            "[apps.default]\nappid = \"wx1\"\nsecret_env = \"X\"\n{}",
            text.replace("EVENT.TYPE", "device.fault")
        );
        let loaded = crate::config::load_str(&config, "t.toml".as_ref(), vec![]).unwrap();
        let templates = Templates::compile(&loaded.config).unwrap();
        let tpl = templates.get("device.fault").unwrap();
        assert_eq!(tpl.template_id, t.id);
        assert_eq!(
            tpl.enum_values("enum_string2"),
            Some(&["客厅".to_owned(), "餐厅\"".to_owned()][..])
        );
    }
}
