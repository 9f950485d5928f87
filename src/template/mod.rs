//! Turning an event into a subscribe message: placeholders, filters, WeChat's value rules.
//!
//! `pattern.rs` parses `{field|filter}` patterns, `render.rs` fills them from an event,
//! `rules.rs` holds WeChat's per-type value limits. This file compiles the config's
//! `[[templates]]` once and renders a whole message.

pub mod pattern;
pub mod remote;
pub mod render;
pub mod rules;

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::config::{Config, Overflow};
use crate::wechat::client::{DataValue, SubscribeMessage};
use pattern::Pattern;
use rules::{KeyType, ValueError};

/// One `[[templates]]` entry, parsed.
#[derive(Debug, Clone)]
pub struct Template {
    pub event: String,
    pub app: String,
    pub template_id: String,
    page: Option<Pattern>,
    miniprogram_state: Option<&'static str>,
    lang: Option<&'static str>,
    data: Vec<DataKey>,
}

/// One data key of a template: its WeChat type, the pattern that fills it and, for an enum
/// key, the template's allowed values.
#[derive(Debug, Clone)]
struct DataKey {
    key: String,
    kind: KeyType,
    pattern: Pattern,
    allowed: Option<Vec<String>>,
}

/// All templates by event type.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    by_event: HashMap<String, Template>,
}

impl Templates {
    /// Compiles the config's templates. The config must have passed `check` (patterns and
    /// key types valid); anything invalid is reported here too rather than assumed.
    pub fn compile(config: &Config) -> anyhow::Result<Templates> {
        let mut by_event = HashMap::new();
        for spanned in &config.templates {
            let t = spanned.get_ref();
            let page = t
                .page
                .as_deref()
                .map(Pattern::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("template `{}` page: {e}", t.event))?;
            let mut data = Vec::with_capacity(t.data.len());
            for (key, pattern) in &t.data {
                let kind = KeyType::of_key(key).ok_or_else(|| {
                    anyhow::anyhow!(
                        "template `{}`: data key `{key}` has no WeChat type",
                        t.event
                    )
                })?;
                let pattern = Pattern::parse(pattern.get_ref())
                    .map_err(|e| anyhow::anyhow!("template `{}` key `{key}`: {e}", t.event))?;
                let allowed = t.enums.get(key).cloned();
                if kind == KeyType::Enum && allowed.as_ref().is_none_or(Vec::is_empty) {
                    anyhow::bail!(
                        "template `{}`: enum key `{key}` has no allowed values: add [templates.enums] {key} = [\"…\"]",
                        t.event
                    );
                }
                data.push(DataKey {
                    key: key.clone(),
                    kind,
                    pattern,
                    allowed,
                });
            }
            by_event.insert(
                t.event.clone(),
                Template {
                    event: t.event.clone(),
                    app: t.app.clone(),
                    template_id: t.template_id.clone(),
                    page,
                    miniprogram_state: t.miniprogram_state.map(|s| s.as_str()),
                    lang: t.lang.map(|l| l.as_str()),
                    data,
                },
            );
        }
        Ok(Templates { by_event })
    }

    pub fn get(&self, event_type: &str) -> Option<&Template> {
        self.by_event.get(event_type)
    }

    /// Every configured template (for `check --remote`).
    pub fn all(&self) -> impl Iterator<Item = &Template> {
        self.by_event.values()
    }

    /// The configured event types (for queue bindings and metric labels).
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.by_event.keys().map(String::as_str)
    }
}

/// Why an event cannot become a message. Always a dead letter: it would fail again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderFailure(pub String);

impl Template {
    /// Renders the message for `touser`. `page_override` is the event's own `page`.
    pub fn render(
        &self,
        touser: &str,
        data: &Map<String, Value>,
        page_override: Option<&str>,
        overflow: Overflow,
    ) -> Result<SubscribeMessage, RenderFailure> {
        let mut out = BTreeMap::new();
        for DataKey {
            key,
            kind,
            pattern,
            allowed,
        } in &self.data
        {
            let Some(value) = render::render(pattern, data)
                .map_err(|e| RenderFailure(format!("data key `{key}`: {e}")))?
            else {
                continue;
            };
            let value = checked(*kind, allowed.as_deref(), value, overflow)
                .map_err(|e| RenderFailure(reason(key, *kind, &e, overflow)))?;
            out.insert(key.clone(), DataValue { value });
        }
        if out.is_empty() {
            return Err(RenderFailure(
                "every data key's fields are missing from the event".into(),
            ));
        }
        let page = match (page_override, &self.page) {
            (Some(page), _) => Some(page.to_owned()),
            (None, Some(pattern)) => {
                render::render(pattern, data).map_err(|e| RenderFailure(format!("page: {e}")))?
            }
            (None, None) => None,
        };
        Ok(SubscribeMessage {
            touser: touser.to_owned(),
            template_id: self.template_id.clone(),
            page,
            miniprogram_state: self.miniprogram_state.map(str::to_owned),
            lang: self.lang.map(str::to_owned),
            data: out,
        })
    }
}

impl Template {
    /// The configured data keys, in order (for `check --remote`).
    pub fn data_keys(&self) -> impl Iterator<Item = &str> {
        self.data.iter().map(|d| d.key.as_str())
    }

    /// The configured allowed values of an enum key.
    pub fn enum_values(&self, key: &str) -> Option<&[String]> {
        self.data
            .iter()
            .find(|d| d.key == key)
            .and_then(|d| d.allowed.as_deref())
    }
}

/// A rendered value as it will be sent: checked against its type, cut where the type and
/// `policy.overflow` allow it, and checked against the enum list of an enum key.
fn checked(
    kind: KeyType,
    allowed: Option<&[String]>,
    value: String,
    overflow: Overflow,
) -> Result<String, ValueError> {
    let value = match kind.check(&value) {
        Err(ValueError::TooLong { .. }) if overflow == Overflow::Truncate && kind.truncatable() => {
            // The cut value must pass on its own (a symbol cut mid-way is still symbols).
            let cut = kind.truncate(&value);
            kind.check(&cut).map(|()| cut)?
        }
        other => other.map(|()| value)?,
    };
    match allowed {
        Some(allowed) if kind == KeyType::Enum => rules::check_enum(&value, allowed)?,
        _ => {}
    }
    Ok(value)
}

/// The dead letter's reason: the key, its type, what is wrong and, for a value over its
/// limit, why it was not cut.
fn reason(key: &str, kind: KeyType, error: &ValueError, overflow: Overflow) -> String {
    let why_not_cut = match (error, overflow) {
        (ValueError::TooLong { .. }, Overflow::Reject) => " (policy.overflow = \"reject\")",
        (ValueError::TooLong { .. }, Overflow::Truncate) => {
            " (policy.overflow = \"truncate\" cuts only thing and symbol values)"
        }
        _ => "",
    };
    format!("data key `{key}` ({}) {error}{why_not_cut}", kind.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn templates() -> Templates {
        let text = r#"
[apps.default]
appid = "wx1"
secret_env = "X"
[[templates]]
event = "order.paid"
template_id = "TPL"
page = "pages/order/detail?id={order_no}"
miniprogram_state = "formal"
lang = "zh_CN"
[templates.data]
character_string1 = "{order_no}"
amount2 = "{amount|amount}"
time3 = "{paid_at|time}"
thing4 = "{remark}"
"#;
        let loaded = crate::config::load_str(text, "t.toml".as_ref(), vec![]).unwrap();
        Templates::compile(&loaded.config).unwrap()
    }

    fn data(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn renders_the_contract_example_exactly() {
        let t = templates();
        let msg = t
            .get("order.paid")
            .unwrap()
            .render(
                "o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
                &data(json!({"order_no": "A1001", "amount": "12.5", "paid_at": "2026-11-24T10:00:00+08:00"})),
                None,
                Overflow::Truncate,
            )
            .unwrap();
        assert_eq!(
            serde_json::to_value(&msg).unwrap(),
            json!({
                "touser": "o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
                "template_id": "TPL",
                "page": "pages/order/detail?id=A1001",
                "miniprogram_state": "formal",
                "lang": "zh_CN",
                "data": {
                    "character_string1": {"value": "A1001"},
                    "amount2": {"value": "12.50"},
                    "time3": {"value": "2026-11-24 10:00"}
                }
            })
        );
    }

    #[test]
    fn overflow_policies() {
        let t = templates();
        let tpl = t.get("order.paid").unwrap();
        let long =
            data(json!({"order_no": "A1", "remark": "一二三四五六七八九十一二三四五六七八九十超"}));
        let msg = tpl.render("o", &long, None, Overflow::Truncate).unwrap();
        assert_eq!(msg.data["thing4"].value.chars().count(), 20);
        let err = tpl.render("o", &long, None, Overflow::Reject).unwrap_err();
        assert!(
            err.0.contains("thing4") && err.0.contains("reject"),
            "{err}"
        );
        let long_no = data(json!({"order_no": "A".repeat(33)}));
        let err = tpl
            .render("o", &long_no, None, Overflow::Truncate)
            .unwrap_err();
        assert!(err.0.contains("character_string1"), "{err}");
    }

    #[test]
    fn event_page_overrides_the_template_page() {
        let t = templates();
        let msg = t
            .get("order.paid")
            .unwrap()
            .render(
                "o",
                &data(json!({"order_no": "A1"})),
                Some("pages/x"),
                Overflow::Truncate,
            )
            .unwrap();
        assert_eq!(msg.page.as_deref(), Some("pages/x"));
    }

    fn compile(text: &str) -> Templates {
        let loaded = crate::config::load_str(text, "t.toml".as_ref(), vec![]).unwrap();
        Templates::compile(&loaded.config).unwrap()
    }

    const APP: &str = "[apps.default]\nappid = \"wx1\"\nsecret_env = \"X\"\n";

    #[test]
    fn under_truncate_only_thing_and_symbol_are_cut() {
        let t = compile(&format!(
            "{APP}[[templates]]\nevent = \"e\"\ntemplate_id = \"T\"\n[templates.data]\nthing1 = \"{{t}}\"\nsymbol2 = \"{{s}}\"\nname3 = \"{{n}}\"\nphrase4 = \"{{p}}\"\n"
        ));
        let tpl = t.get("e").unwrap();
        let msg = tpl
            .render(
                "o",
                &data(json!({"t": "一".repeat(25), "s": "!!!!!!!!"})),
                None,
                Overflow::Truncate,
            )
            .unwrap();
        assert_eq!(msg.data["thing1"].value.chars().count(), 20);
        assert_eq!(msg.data["symbol2"].value, "!!!!…");
        // A name or phrase over its limit is refused, naming the key, its type and the limit.
        let err = tpl
            .render(
                "o",
                &data(json!({"n": "欧阳诸葛司马上官慕容长名"})),
                None,
                Overflow::Truncate,
            )
            .unwrap_err();
        assert_eq!(
            err.0,
            "data key `name3` (name) is 12 characters, the limit is 10 (policy.overflow = \"truncate\" cuts only thing and symbol values)"
        );
        let err = tpl
            .render(
                "o",
                &data(json!({"p": "配送中已完成"})),
                None,
                Overflow::Truncate,
            )
            .unwrap_err();
        assert!(
            err.0
                .contains("`phrase4` (phrase) is 6 characters, the limit is 5"),
            "{err}"
        );
    }

    #[test]
    fn enum_keys_take_only_the_listed_values() {
        let t = compile(&format!(
            "{APP}[[templates]]\nevent = \"e\"\ntemplate_id = \"T\"\n[templates.data]\nenum_string2 = \"{{room}}\"\n[templates.enums]\nenum_string2 = [\"客厅\", \"餐厅\"]\n"
        ));
        let tpl = t.get("e").unwrap();
        let msg = tpl
            .render(
                "o",
                &data(json!({"room": "客厅"})),
                None,
                Overflow::Truncate,
            )
            .unwrap();
        assert_eq!(msg.data["enum_string2"].value, "客厅");
        let err = tpl
            .render(
                "o",
                &data(json!({"room": "阁楼"})),
                None,
                Overflow::Truncate,
            )
            .unwrap_err();
        assert_eq!(
            err.0,
            "data key `enum_string2` (enum) is not one of the template's enum values (客厅, 餐厅)"
        );
        assert_eq!(
            tpl.enum_values("enum_string2"),
            Some(&["客厅".to_owned(), "餐厅".to_owned()][..])
        );
    }

    #[test]
    fn an_enum_key_without_values_is_a_config_problem() {
        let text = format!(
            "{APP}[[templates]]\nevent = \"e\"\ntemplate_id = \"T\"\n[templates.data]\nenum1 = \"{{v}}\"\nthing2 = \"{{v}}\"\n[templates.enums]\nthing2 = [\"a\"]\n"
        );
        let loaded = crate::config::load_str(&text, "t.toml".as_ref(), vec![]).unwrap();
        let problems: Vec<String> = loaded
            .problems()
            .iter()
            .map(|p| p.message.clone())
            .collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`enum1` is an enum: list its allowed values")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("only enum keys")),
            "{problems:?}"
        );
        assert!(Templates::compile(&loaded.config).is_err());
    }
}
