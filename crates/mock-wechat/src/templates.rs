//! The account's subscribe-message templates as the emulator knows them: what
//! `GET /wxaapi/newtmpl/gettemplate` lists and what subscribe/send checks a body against
//! (the template id, exactly its keys, and the allowed values of its `enum` keys).
//!
//! # Sources
//!
//! - getMessageTemplateList (`gettemplate`): `data[]` of `priTmplId`, `title`, `content`
//!   (`"会议时间:{{date2.DATA}}\n会议地点:{{thing1.DATA}}\n"`), `example`, `type` (2 one-time,
//!   3 long-term) and, for templates with enum keys, `keywordEnumValueList[]` of
//!   `keywordCode` (`"enum_string2.DATA"`) and `enumValueList` (the allowed values):
//!   <https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/getMessageTemplateList.html>
//! - subscribeMessage.send refuses a value outside an enum key's list like any bad value:
//!   47003 `argument invalid! data.<key>.value invalid`.
//!
//! # Readings
//!
//! - The documentation's example names its enum keys `enum_string<N>`; any key given a
//!   list of values is treated as an enum key, whatever its name, and its values are then
//!   the only rule (they are not also checked against the type's length rule: the
//!   documented example lists a 19-character value).
//! - Labels (`订单号`) are the template's own wording and are not in the send body; a label
//!   not given is derived from the key's type.
//! - Templates belong to the whole emulator, not to one app.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::value_rules;

/// One-time (`type` 2) or long-term (`type` 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TemplateKind {
    #[default]
    OneTime,
    LongTerm,
}

impl TemplateKind {
    /// The `type` number gettemplate answers.
    pub fn code(self) -> u8 {
        match self {
            TemplateKind::OneTime => 2,
            TemplateKind::LongTerm => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<TemplateKind> {
        match code {
            2 => Some(TemplateKind::OneTime),
            3 => Some(TemplateKind::LongTerm),
            _ => None,
        }
    }
}

/// A template as added to the account: what gettemplate lists and sends are checked against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateDef {
    /// `priTmplId`, the `template_id` of sends.
    pub template_id: String,
    pub title: String,
    pub kind: TemplateKind,
    /// The data keys in the template's order (`character_string1`, `amount2`, …).
    pub keys: Vec<String>,
    /// The allowed values of each enum key.
    pub enum_values: BTreeMap<String, Vec<String>>,
    /// Each key's label in `content` (`订单号`); derived from the type when absent.
    pub labels: BTreeMap<String, String>,
}

impl TemplateDef {
    /// A one-time template titled by its id.
    pub fn new(template_id: &str, keys: &[&str]) -> TemplateDef {
        TemplateDef {
            template_id: template_id.to_owned(),
            title: template_id.to_owned(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..TemplateDef::default()
        }
    }

    pub fn title(mut self, title: &str) -> TemplateDef {
        self.title = title.to_owned();
        self
    }

    pub fn long_term(mut self) -> TemplateDef {
        self.kind = TemplateKind::LongTerm;
        self
    }

    /// Makes `key` an enum key with these allowed values (added to the keys if missing).
    pub fn enum_key(mut self, key: &str, values: &[&str]) -> TemplateDef {
        if !self.keys.iter().any(|k| k == key) {
            self.keys.push(key.to_owned());
        }
        self.enum_values.insert(
            key.to_owned(),
            values.iter().map(|v| (*v).to_owned()).collect(),
        );
        self
    }

    pub fn label(mut self, key: &str, label: &str) -> TemplateDef {
        self.labels.insert(key.to_owned(), label.to_owned());
        self
    }

    /// What is wrong with the definition, in words naming the field and the fix.
    pub fn check(&self) -> Result<(), String> {
        if self.template_id.is_empty() {
            return Err("template_id must not be empty".into());
        }
        if self.keys.is_empty() {
            return Err("keys must list the template's data keys".into());
        }
        for key in &self.keys {
            if self.keys.iter().filter(|k| *k == key).count() > 1 {
                return Err(format!("key {key:?} is listed twice"));
            }
            let listed = self.enum_values.contains_key(key);
            if !listed && (!value_rules::is_known_key(key) || value_rules::is_enum_key(key)) {
                return Err(format!(
                    "key {key:?} has no WeChat type (thing1, amount2, time3, …); an enum key needs its values"
                ));
            }
        }
        for (key, values) in &self.enum_values {
            if !self.keys.contains(key) {
                return Err(format!("enum key {key:?} is not one of the keys"));
            }
            if values.is_empty() || values.iter().any(String::is_empty) {
                return Err(format!(
                    "enum key {key:?} needs a list of non-empty allowed values"
                ));
            }
        }
        Ok(())
    }

    /// The allowed values when `key` is an enum key.
    pub(crate) fn enum_of(&self, key: &str) -> Option<&[String]> {
        self.enum_values.get(key).map(Vec::as_slice)
    }

    /// This template's entry in gettemplate's `data`.
    pub(crate) fn listing(&self) -> Value {
        let line = |key: &String, value: &str| format!("{}:{value}\n", self.label_of(key));
        let content: String = self
            .keys
            .iter()
            .map(|k| line(k, &format!("{{{{{k}.DATA}}}}")))
            .collect();
        let example: String = self
            .keys
            .iter()
            .map(|k| line(k, &self.example_of(k)))
            .collect();
        let mut entry = json!({
            "priTmplId": self.template_id,
            "title": self.title,
            "content": content,
            "example": example,
            "type": self.kind.code(),
        });
        if !self.enum_values.is_empty() {
            entry["keywordEnumValueList"] = self
                .enum_values
                .iter()
                .map(|(k, values)| json!({"keywordCode": format!("{k}.DATA"), "enumValueList": values}))
                .collect();
        }
        entry
    }

    fn label_of(&self, key: &str) -> String {
        if let Some(label) = self.labels.get(key) {
            return label.clone();
        }
        let label = TYPE_WORDS
            .iter()
            .find(|(type_name, _, _)| type_of(key) == *type_name)
            .map_or("选项", |(_, label, _)| label);
        label.to_owned()
    }

    fn example_of(&self, key: &str) -> String {
        if let Some(first) = self.enum_values.get(key).and_then(|v| v.first()) {
            return first.clone();
        }
        TYPE_WORDS
            .iter()
            .find(|(type_name, _, _)| type_of(key) == *type_name)
            .map_or("", |(_, _, example)| example)
            .to_owned()
    }
}

fn type_of(key: &str) -> &str {
    key.trim_end_matches(|c: char| c.is_ascii_digit())
}

/// Per key type: the label used when none is given, and an example value the type accepts
/// (the examples are the documentation's own where it gives one).
const TYPE_WORDS: &[(&str, &str, &str)] = &[
    ("thing", "事项", "TIT会议室"),
    ("number", "数量", "1"),
    ("letter", "字母", "ABC"),
    ("symbol", "符号", "#"),
    ("character_string", "编号", "A1001"),
    ("time", "时间", "2019年10月1日 15:01"),
    ("date", "日期", "2019年10月1日"),
    ("amount", "金额", "¥12.50元"),
    ("phone_number", "电话", "+86-0766-66888866"),
    ("car_number", "车牌", "粤A8Z888挂"),
    ("name", "姓名", "张三"),
    ("phrase", "状态", "配送中"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_values_the_type_accepts() {
        for (type_name, _, example) in TYPE_WORDS {
            let key = format!("{type_name}1");
            assert!(
                value_rules::accepts(&key, example).is_ok(),
                "{key}: {example}"
            );
        }
    }

    #[test]
    fn listing_is_shaped_like_gettemplate() {
        let def = TemplateDef::new("TPL", &["character_string1", "amount2"])
            .title("订单支付成功通知")
            .label("character_string1", "订单号")
            .enum_key("enum_string3", &["客厅", "餐厅"])
            .long_term();
        def.check().unwrap();
        assert_eq!(
            def.listing(),
            json!({
                "priTmplId": "TPL",
                "title": "订单支付成功通知",
                "content": "订单号:{{character_string1.DATA}}\n金额:{{amount2.DATA}}\n选项:{{enum_string3.DATA}}\n",
                "example": "订单号:A1001\n金额:¥12.50元\n选项:客厅\n",
                "type": 3,
                "keywordEnumValueList": [
                    {"keywordCode": "enum_string3.DATA", "enumValueList": ["客厅", "餐厅"]}
                ]
            })
        );
        let plain = TemplateDef::new("T2", &["thing1"]).listing();
        assert_eq!(plain["type"], 2);
        assert!(plain.get("keywordEnumValueList").is_none());
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let cases = [
            (TemplateDef::new("", &["thing1"]), "template_id"),
            (TemplateDef::new("T", &[]), "keys"),
            (TemplateDef::new("T", &["thing1", "thing1"]), "twice"),
            (TemplateDef::new("T", &["colour1"]), "no WeChat type"),
            (TemplateDef::new("T", &["enum_string1"]), "enum key needs"),
            (
                TemplateDef::new("T", &["thing1"]).enum_key("enum_string2", &[]),
                "non-empty allowed values",
            ),
        ];
        for (def, says) in cases {
            let err = def.check().unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        let mut stray = TemplateDef::new("T", &["thing1"]);
        stray.enum_values.insert("thing9".into(), vec!["x".into()]);
        assert!(stray.check().unwrap_err().contains("not one of the keys"));
    }
}
