//! Reading a message push: the body (JSON or XML, as the console's data format says) into
//! flat fields and `List` items, then into the subscription event it reports.
//!
//! XML is read with `quick-xml`, which never expands entities: a `<!DOCTYPE>` (the only
//! place entities can be declared) is refused outright, and a reference to anything but
//! XML's five predefined entities or a character is malformed. So a "billion laughs" body
//! costs no more than its 64 KiB.
//!
//! WeChat's shapes (the subscribe-message guide, "订阅消息事件推送"): every event has
//! `ToUserName`, `FromUserName` (the user's openid), `CreateTime`, `MsgType` = `event`,
//! `Event`, and a `List` that is one object or an array (JSON), or one `<List>` element per
//! item inside `<SubscribeMsg…Event>` (XML). JSON values may be strings or numbers.

use std::collections::BTreeMap;

use quick_xml::events::Event as Xml;

use crate::store::grants::Choice;

/// Flat fields and `List` items of a push, whatever its format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raw {
    pub fields: BTreeMap<String, String>,
    pub list: Vec<BTreeMap<String, String>>,
}

/// Why a body is malformed; shown in the refusal's log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

fn malformed(text: impl Into<String>) -> Malformed {
    Malformed(text.into())
}

/// How deep an XML push may nest: `<xml><SubscribeMsg…Event><List><Field>` is 4.
const MAX_XML_DEPTH: usize = 8;

/// Reads a body: XML when it starts with `<`, JSON when with `{`.
pub fn parse(body: &str) -> Result<Raw, Malformed> {
    match body.trim_start().as_bytes().first() {
        Some(b'<') => parse_xml(body),
        Some(b'{') => parse_json(body),
        _ => Err(malformed("the body is neither JSON nor XML")),
    }
}

fn scalar(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn json_item(value: &serde_json::Value) -> Result<BTreeMap<String, String>, Malformed> {
    let object = value
        .as_object()
        .ok_or_else(|| malformed("a List item is not an object"))?;
    Ok(object
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), scalar(v)?)))
        .collect())
}

fn parse_json(body: &str) -> Result<Raw, Malformed> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| malformed(format!("bad JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| malformed("the JSON body is not an object"))?;
    let mut raw = Raw::default();
    for (name, value) in object {
        if name == "List" {
            raw.list = match value {
                serde_json::Value::Array(items) => {
                    items.iter().map(json_item).collect::<Result<_, _>>()?
                }
                item => vec![json_item(item)?],
            };
        } else if let Some(text) = scalar(value) {
            raw.fields.insert(name.clone(), text);
        }
    }
    Ok(raw)
}

/// XML's predefined entities; anything else would need a DTD, which is refused.
fn predefined_entity(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => return None,
    })
}

fn parse_xml(body: &str) -> Result<Raw, Malformed> {
    let mut reader = quick_xml::Reader::from_str(body);
    reader.config_mut().check_end_names = true;
    let mut raw = Raw::default();
    // The open elements, and the text of the innermost one.
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut item: Option<BTreeMap<String, String>> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| malformed(format!("bad XML: {e}")))?;
        match event {
            Xml::DocType(_) => {
                return Err(malformed(
                    "XML with a <!DOCTYPE> (entity declarations are never read)",
                ));
            }
            Xml::Start(start) => {
                let name = start.local_name().as_ref().to_owned();
                if path.len() >= MAX_XML_DEPTH {
                    return Err(malformed("XML nested too deep"));
                }
                if name == "List" && !path.is_empty() {
                    item = Some(BTreeMap::new());
                }
                path.push(name);
                text.clear();
            }
            Xml::Empty(_) => {}
            Xml::Text(t) => text.push_str(&t.xml10_content()),
            Xml::CData(c) => text.push_str(&c.xml10_content()),
            Xml::GeneralRef(r) => {
                let resolved = r
                    .resolve_char_ref()
                    .map_err(|e| malformed(format!("bad XML: {e}")))?
                    .or_else(|| predefined_entity(&r.xml10_content()));
                match resolved {
                    Some(c) => text.push(c),
                    None => {
                        return Err(malformed(format!(
                            "XML refers to the undeclared entity &{};",
                            r.xml10_content()
                        )));
                    }
                }
            }
            Xml::End(_) => {
                let name = path.pop().unwrap_or_default();
                if name == "List" && item.is_some() {
                    raw.list.extend(item.take());
                } else if let Some(fields) = item.as_mut() {
                    fields.insert(name, std::mem::take(&mut text));
                } else if path.len() == 1 {
                    raw.fields.insert(name, std::mem::take(&mut text));
                }
                text.clear();
            }
            Xml::Eof => break,
            Xml::Comment(_) | Xml::Decl(_) | Xml::PI(_) => {}
        }
    }
    if raw.fields.is_empty() {
        return Err(malformed(
            "the XML body has no fields under its root element",
        ));
    }
    Ok(raw)
}

/// A subscription event, as the receiver acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// `FromUserName`: the user's openid.
    pub openid: String,
    pub create_time: String,
    /// `Event` (or `MsgType` when the push is not an event).
    pub event: String,
    pub body: Body,
}

/// What a push says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `subscribe_msg_popup_event`: the user's choice per template; items with a status
    /// WeChat does not document are left out (and logged).
    Popup(Vec<(String, Choice)>),
    /// `subscribe_msg_change_event`: per template, `false` = turned off (reject), `true` =
    /// turned on (accept).
    Change(Vec<(String, bool)>),
    /// `subscribe_msg_sent_event`: the final result of sends.
    Sent(Vec<SentResult>),
    /// Anything else: accepted and ignored.
    Other,
}

/// One `subscribe_msg_sent_event` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentResult {
    pub template_id: String,
    pub msgid: String,
    pub error_code: i64,
    pub error_status: String,
}

fn field<'a>(map: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, Malformed> {
    map.get(name)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed(format!("no {name}")))
}

/// What the push reports. Malformed when a known event lacks what it must carry.
pub fn interpret(raw: &Raw) -> Result<Push, Malformed> {
    let msg_type = field(&raw.fields, "MsgType")?;
    let event = if msg_type == "event" {
        field(&raw.fields, "Event")?
    } else {
        msg_type
    };
    let body = match event {
        "subscribe_msg_popup_event" => Body::Popup(popup(&raw.list)?),
        "subscribe_msg_change_event" => Body::Change(change(&raw.list)?),
        "subscribe_msg_sent_event" => Body::Sent(sent(&raw.list)?),
        _ => Body::Other,
    };
    if body != Body::Other && raw.list.is_empty() {
        return Err(malformed(format!("{event} without a List")));
    }
    Ok(Push {
        openid: field(&raw.fields, "FromUserName")?.to_owned(),
        create_time: field(&raw.fields, "CreateTime")?.to_owned(),
        event: event.to_owned(),
        body,
    })
}

fn popup(list: &[BTreeMap<String, String>]) -> Result<Vec<(String, Choice)>, Malformed> {
    let mut choices = Vec::new();
    for item in list {
        let template_id = field(item, "TemplateId")?;
        let status = field(item, "SubscribeStatusString")?;
        match Choice::parse(status) {
            Some(choice) => choices.push((template_id.to_owned(), choice)),
            None => tracing::warn!(
                template_id,
                status,
                "message push: a popup status WeChat does not document; item ignored"
            ),
        }
    }
    Ok(choices)
}

fn change(list: &[BTreeMap<String, String>]) -> Result<Vec<(String, bool)>, Malformed> {
    list.iter()
        .map(|item| {
            let template_id = field(item, "TemplateId")?.to_owned();
            Ok((
                template_id,
                field(item, "SubscribeStatusString")? != "reject",
            ))
        })
        .collect()
}

fn sent(list: &[BTreeMap<String, String>]) -> Result<Vec<SentResult>, Malformed> {
    list.iter()
        .map(|item| {
            let error_code = field(item, "ErrorCode")?;
            Ok(SentResult {
                template_id: field(item, "TemplateId")?.to_owned(),
                msgid: field(item, "MsgID")?.to_owned(),
                error_code: error_code
                    .parse()
                    .map_err(|_| malformed(format!("ErrorCode {error_code:?} is not a number")))?,
                error_status: item.get("ErrorStatus").cloned().unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_lists_and_fields() {
        let raw = parse("<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>5</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_popup_event]]></Event><SubscribeMsgPopupEvent><List><TemplateId><![CDATA[T1]]></TemplateId><SubscribeStatusString><![CDATA[accept]]></SubscribeStatusString><PopupScene>0</PopupScene></List><List><TemplateId>T2</TemplateId><SubscribeStatusString>reject</SubscribeStatusString></List></SubscribeMsgPopupEvent></xml>").unwrap();
        let push = interpret(&raw).unwrap();
        assert_eq!(push.openid, "o1");
        assert_eq!(
            push.body,
            Body::Popup(vec![
                ("T1".into(), Choice::Accept),
                ("T2".into(), Choice::Reject)
            ])
        );
    }

    #[test]
    fn json_list_as_object_or_array_and_numbers() {
        let one = parse(r#"{"FromUserName":"o1","CreateTime":5,"MsgType":"event","Event":"subscribe_msg_sent_event","List":{"TemplateId":"T1","MsgID":7,"ErrorCode":0,"ErrorStatus":"success"}}"#).unwrap();
        assert_eq!(
            interpret(&one).unwrap().body,
            Body::Sent(vec![SentResult {
                template_id: "T1".into(),
                msgid: "7".into(),
                error_code: 0,
                error_status: "success".into()
            }])
        );
        let two = parse(r#"{"FromUserName":"o1","CreateTime":"5","MsgType":"event","Event":"subscribe_msg_change_event","List":[{"TemplateId":"T1","SubscribeStatusString":"reject"},{"TemplateId":"T2","SubscribeStatusString":"accept"}]}"#).unwrap();
        assert_eq!(
            interpret(&two).unwrap().body,
            Body::Change(vec![("T1".into(), false), ("T2".into(), true)])
        );
    }

    #[test]
    fn refuses_entities_doctypes_and_missing_fields() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><xml><Event>&lol2;</Event></xml>"#;
        assert!(parse(bomb).unwrap_err().0.contains("DOCTYPE"));
        let undeclared = "<xml><Event>&lol;</Event></xml>";
        assert!(parse(undeclared).unwrap_err().0.contains("&lol;"));
        let escaped = parse("<xml><Event>a&amp;b&#65;</Event></xml>").unwrap();
        assert_eq!(escaped.fields["Event"], "a&bA");
        assert!(parse("not a push").is_err());
        assert!(parse("<xml><Event>x</Wrong></xml>").is_err());
        let no_list = parse(r#"{"FromUserName":"o1","CreateTime":"5","MsgType":"event","Event":"subscribe_msg_popup_event"}"#).unwrap();
        assert!(interpret(&no_list).is_err());
        let other =
            parse(r#"{"FromUserName":"o1","CreateTime":"5","MsgType":"text","Content":"hi"}"#)
                .unwrap();
        assert_eq!(interpret(&other).unwrap().body, Body::Other);
    }
}
