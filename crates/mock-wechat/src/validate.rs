//! The checks WeChat runs on a subscribe/send body, in WeChat's order, with its errcodes.
//!
//! Each data value is checked by [`crate::value_rules`], the emulator's own reading of
//! WeChat's documented value rules (never the product's), so that a misreading in the
//! product shows up as a 47003 here instead of passing both; an enum key of a registered
//! template takes only the template's listed values (see `templates.rs`).

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::templates::TemplateDef;
use crate::value_rules;

/// A send body that passed every check: what the subscription check needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ValidSend<'a> {
    pub touser: &'a str,
    pub template_id: &'a str,
}

/// A refused send: errcode and the errmsg (without the rid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub errcode: i64,
    pub errmsg: String,
}

impl Refusal {
    fn new(errcode: i64, errmsg: impl Into<String>) -> Refusal {
        Refusal {
            errcode,
            errmsg: errmsg.into(),
        }
    }

    fn data(key: &str) -> Refusal {
        Refusal::new(47003, format!("argument invalid! data.{key}.value invalid"))
    }
}

/// Registered templates by template_id. Empty means "accept any template".
pub(crate) type Templates = HashMap<String, TemplateDef>;

const STATES: &[&str] = &["developer", "trial", "formal"];
const LANGS: &[&str] = &["zh_CN", "en_US", "zh_HK", "zh_TW"];

/// Checks a parsed body (47001 for "not a JSON object" is the caller's, since it parses).
pub(crate) fn check_send<'a>(
    body: &'a Map<String, Value>,
    templates: &Templates,
) -> Result<ValidSend<'a>, Refusal> {
    let touser = body
        .get("touser")
        .and_then(Value::as_str)
        .filter(|s| is_openid(s))
        .ok_or_else(|| Refusal::new(40003, "invalid openid"))?;

    let template_id = body
        .get("template_id")
        .and_then(Value::as_str)
        .filter(|s| (1..=64).contains(&s.len()) && is_token_chars(s))
        .ok_or_else(|| Refusal::new(40037, "invalid template_id"))?;
    let template = if templates.is_empty() {
        None
    } else {
        Some(
            templates
                .get(template_id)
                .ok_or_else(|| Refusal::new(40037, "invalid template_id"))?,
        )
    };

    if let Some(page) = present(body, "page")
        && !page.as_str().is_some_and(is_valid_page)
    {
        return Err(Refusal::new(41030, "invalid page"));
    }
    if let Some(state) = present(body, "miniprogram_state")
        && !state.as_str().is_some_and(|s| STATES.contains(&s))
    {
        return Err(Refusal::new(
            47003,
            "argument invalid! miniprogram_state invalid",
        ));
    }
    if let Some(lang) = present(body, "lang")
        && !lang.as_str().is_some_and(|s| LANGS.contains(&s))
    {
        return Err(Refusal::new(47003, "argument invalid! lang invalid"));
    }

    check_data(body.get("data"), template)?;
    Ok(ValidSend {
        touser,
        template_id,
    })
}

fn check_data(data: Option<&Value>, template: Option<&TemplateDef>) -> Result<(), Refusal> {
    let template_keys = template.map(|t| t.keys.as_slice());
    let data = data
        .and_then(Value::as_object)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| Refusal::new(47003, "argument invalid! data invalid"))?;
    for (key, entry) in data {
        let value = entry
            .as_object()
            .and_then(|e| e.get("value"))
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::data(key))?;
        if let Some(allowed) = template.and_then(|t| t.enum_of(key)) {
            if !allowed.iter().any(|a| a == value) {
                return Err(Refusal::data(key));
            }
            continue;
        }
        if !value_rules::is_known_key(key)
            || template_keys.is_some_and(|keys| !keys.iter().any(|k| k == key))
        {
            return Err(Refusal::data(key));
        }
        value_rules::accepts(key, value).map_err(|_| Refusal::data(key))?;
    }
    if let Some(missing) =
        template_keys.and_then(|keys| keys.iter().find(|k| !data.contains_key(*k)))
    {
        return Err(Refusal::data(missing));
    }
    Ok(())
}

/// An explicit `null` counts as absent, as serialisers often emit one for a missing option.
fn present<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

/// `^o[A-Za-z0-9_-]{27}$`: the shape of every mini program openid.
pub(crate) fn is_openid(s: &str) -> bool {
    s.len() == 28 && s.starts_with('o') && is_token_chars(s)
}

fn is_token_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Mini program pages are relative paths (`pages/x/y?id=1`), never absolute or blank.
fn is_valid_page(page: &str) -> bool {
    !page.is_empty()
        && !page.starts_with('/')
        && !page.chars().any(char::is_whitespace)
        && page.chars().count() <= 1024
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OPENID: &str = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M";

    fn body(extra: Value) -> Map<String, Value> {
        let mut b = json!({
            "touser": OPENID,
            "template_id": "TPL_ORDER_PAID",
            "data": {"character_string1": {"value": "A1001"}, "amount2": {"value": "12.50"}}
        });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.as_object().unwrap().clone()
    }

    fn code(b: Map<String, Value>, templates: &Templates) -> i64 {
        check_send(&b, templates).map_or_else(|r| r.errcode, |_| 0)
    }

    #[test]
    fn a_good_body_passes() {
        let b = body(
            json!({"page": "pages/order/detail?id=A1001", "miniprogram_state": "formal", "lang": "zh_CN"}),
        );
        assert_eq!(
            check_send(&b, &Templates::new()),
            Ok(ValidSend {
                touser: OPENID,
                template_id: "TPL_ORDER_PAID"
            })
        );
        assert_eq!(
            code(body(json!({"page": null, "lang": null})), &Templates::new()),
            0
        );
    }

    #[test]
    fn openid_shape() {
        assert!(is_openid(OPENID));
        for bad in [
            "",
            "x6_bmjrPTlm6_2sgVt7hMZOPfL2M",
            "o6_bmjrPTlm6_2sgVt7hMZOPfL2",
            "o6_bmjrPTlm6_2sgVt7hMZOPfL2MM",
            "o6_bmjrPTlm6_2sgVt7hMZOP L2M",
        ] {
            assert!(!is_openid(bad), "{bad:?}");
        }
        assert_eq!(code(body(json!({"touser": 5})), &Templates::new()), 40003);
    }

    #[test]
    fn errcodes_in_wechat_order() {
        let none = Templates::new();
        let cases = [
            (json!({"touser": "bad"}), 40003),
            (json!({"template_id": ""}), 40037),
            (json!({"template_id": "a".repeat(65)}), 40037),
            (json!({"template_id": "bad id"}), 40037),
            (json!({"page": ""}), 41030),
            (json!({"page": "/pages/x"}), 41030),
            (json!({"page": "pages/x y"}), 41030),
            (json!({"page": "p".repeat(1025)}), 41030),
            (json!({"page": 7}), 41030),
            (json!({"miniprogram_state": "prod"}), 47003),
            (json!({"lang": "fr_FR"}), 47003),
            (json!({"data": {}}), 47003),
            (json!({"data": []}), 47003),
            (json!({"data": {"thing1": "x"}}), 47003),
            (json!({"data": {"thing1": {"value": 5}}}), 47003),
            (json!({"data": {"colour1": {"value": "red"}}}), 47003),
            (
                json!({"data": {"thing1": {"value": "x".repeat(21)}}}),
                47003,
            ),
            (json!({"data": {"phrase1": {"value": "paid"}}}), 47003),
            // Errors are reported in WeChat's order: the openid before the page.
            (json!({"touser": "bad", "page": "/x"}), 40003),
        ];
        for (extra, want) in cases {
            assert_eq!(code(body(extra.clone()), &none), want, "{extra}");
        }
        assert_eq!(code(body(json!({"page": "p".repeat(1024)})), &none), 0);
    }

    #[test]
    fn data_errmsg_names_the_key() {
        let b = body(json!({"data": {"thing4": {"value": ""}}}));
        assert_eq!(
            check_send(&b, &Templates::new()).unwrap_err().errmsg,
            "argument invalid! data.thing4.value invalid"
        );
    }

    #[test]
    fn registered_templates_fix_the_id_and_the_key_set() {
        let mut t = Templates::new();
        t.insert(
            "TPL_ORDER_PAID".into(),
            TemplateDef::new("TPL_ORDER_PAID", &["character_string1", "amount2"]),
        );
        assert_eq!(code(body(json!({})), &t), 0);
        assert_eq!(code(body(json!({"template_id": "OTHER"})), &t), 40037);
        let missing = body(json!({"data": {"character_string1": {"value": "A1"}}}));
        assert_eq!(
            check_send(&missing, &t).unwrap_err().errmsg,
            "argument invalid! data.amount2.value invalid"
        );
        let extra = body(json!({"data": {
            "character_string1": {"value": "A1"}, "amount2": {"value": "1"}, "thing3": {"value": "x"}
        }}));
        assert_eq!(
            check_send(&extra, &t).unwrap_err().errmsg,
            "argument invalid! data.thing3.value invalid"
        );
    }
}

#[cfg(test)]
mod enum_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn enum_keys_take_only_their_listed_values() {
        let mut t = Templates::new();
        t.insert(
            "TPL".into(),
            TemplateDef::new("TPL", &["time1"]).enum_key(
                "enum_string2",
                &["客厅", "设备发生故障，导致工作异常，请及时查看"],
            ),
        );
        let body = |room: &str| {
            json!({
                "touser": "o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
                "template_id": "TPL",
                "data": {"time1": {"value": "15:01"}, "enum_string2": {"value": room}}
            })
            .as_object()
            .unwrap()
            .clone()
        };
        assert!(check_send(&body("客厅"), &t).is_ok());
        assert!(
            check_send(&body("设备发生故障，导致工作异常，请及时查看"), &t).is_ok(),
            "longer than a thing, still allowed: the list is the rule"
        );
        let refused = check_send(&body("阳台"), &t).unwrap_err();
        assert_eq!(refused.errcode, 47003);
        assert_eq!(
            refused.errmsg,
            "argument invalid! data.enum_string2.value invalid"
        );
    }
}
