//! Turning an event into a subscribe message: placeholders, filters, WeChat's value rules.
//!
//! `pattern.rs` parses `{field|filter}` patterns, `render.rs` fills them from an event,
//! `rules.rs` holds WeChat's per-type value limits. This file compiles the config's
//! `[[templates]]` once and renders a whole message.

pub mod pattern;
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
    data: Vec<(String, KeyType, Pattern)>,
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
                data.push((key.clone(), kind, pattern));
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
        for (key, kind, pattern) in &self.data {
            let Some(value) = render::render(pattern, data)
                .map_err(|e| RenderFailure(format!("data key `{key}`: {e}")))?
            else {
                continue;
            };
            let checked = match kind.check(&value) {
                Err(ValueError::TooLong { .. })
                    if overflow == Overflow::Truncate && kind.truncatable() =>
                {
                    // The cut value must pass on its own: a phrase of latin letters is still
                    // refused after shortening.
                    let cut = kind.truncate(&value);
                    kind.check(&cut).map(|()| cut)
                }
                other => other.map(|()| value),
            };
            let value = match checked {
                Ok(value) => value,
                Err(e) => {
                    return Err(RenderFailure(format!(
                        "data key `{key}` ({}) {e}{}",
                        kind.name(),
                        match (&e, overflow) {
                            (ValueError::TooLong { .. }, Overflow::Reject) =>
                                " (policy.overflow = \"reject\")",
                            (ValueError::TooLong { .. }, Overflow::Truncate) =>
                                " (this type is never truncated)",
                            _ => "",
                        }
                    )));
                }
            };
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
}
