//! WeChat's message push, emulated: the subscription events WeChat POSTs to the developer's
//! server (popup choices, a template turned off, the final result of each accepted send),
//! signed, optionally encrypted (safe mode), as JSON or XML; and the GET URL verification.
//!
//! Sources: the subscribe-message guide, "订阅消息事件推送" (the three events, their fields,
//! "若 List 只有一个对象，则只返回对象本身；若 List 多于一个对象，则返回一个包含所有对象的数组",
//! and "失败仅包含因异步推送导致的系统失败": only `ErrorCode` 0 / `success` is documented):
//! <https://developers.weixin.qq.com/miniprogram/dev/framework/open-ability/subscribe-message.html>;
//! the message-push page for the URL parameters and the safe-mode body (see `push_crypto`):
//! <https://developers.weixin.qq.com/miniprogram/dev/framework/server-ability/message-push.html>
//!
//! Readings: JSON bodies carry every value as a string, as the documented examples do;
//! `openid` is added to the URL in safe mode only, as in the documented example;
//! `ToUserName` is a stable `gh_…` id derived from the appid.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::push_crypto;

/// How long a push waits for the receiver.
const PUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The data format chosen in the mini program console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushFormat {
    #[default]
    Json,
    Xml,
}

/// Where and how an app's pushes go: the console's URL, Token, EncodingAESKey (safe mode
/// when set) and data format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTarget {
    pub url: String,
    pub token: String,
    #[serde(default)]
    pub aes_key: Option<String>,
    #[serde(default)]
    pub format: PushFormat,
}

/// One push made, with the receiver's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRecord {
    pub appid: String,
    /// `subscribe_msg_popup_event`, `subscribe_msg_change_event` or `subscribe_msg_sent_event`.
    pub event: String,
    /// The event before encryption, in its JSON form whatever the format.
    pub message: Value,
    /// The HTTP status the receiver answered; `None` when it could not be reached in time.
    pub status: Option<u16>,
    pub at_ms: u64,
}

/// One event: its name, its `List` items (field, value, numeric in XML) and the user.
pub(crate) struct Event {
    pub name: &'static str,
    pub openid: String,
    pub items: Vec<Vec<(&'static str, String, bool)>>,
}

impl Event {
    fn wrapper(&self) -> &'static str {
        match self.name {
            "subscribe_msg_popup_event" => "SubscribeMsgPopupEvent",
            "subscribe_msg_change_event" => "SubscribeMsgChangeEvent",
            _ => "SubscribeMsgSentEvent",
        }
    }

    fn to_json(&self, to_user: &str, now_s: u64) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|fields| {
                let map: Map<String, Value> = fields
                    .iter()
                    .map(|(k, v, _)| ((*k).to_owned(), Value::String(v.clone())))
                    .collect();
                Value::Object(map)
            })
            .collect();
        let list = if items.len() == 1 {
            items.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(items)
        };
        json!({
            "ToUserName": to_user,
            "FromUserName": self.openid,
            "CreateTime": now_s.to_string(),
            "MsgType": "event",
            "Event": self.name,
            "List": list,
        })
    }

    fn to_xml(&self, to_user: &str, now_s: u64) -> String {
        let items: String = self
            .items
            .iter()
            .map(|fields| {
                let inner: String = fields
                    .iter()
                    .map(|(k, v, numeric)| {
                        if *numeric {
                            format!("<{k}>{v}</{k}>")
                        } else {
                            format!("<{k}><![CDATA[{v}]]></{k}>")
                        }
                    })
                    .collect();
                format!("<List>{inner}</List>")
            })
            .collect();
        let w = self.wrapper();
        format!(
            "<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName><CreateTime>{now_s}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{}]]></Event><{w}>{items}</{w}></xml>",
            self.openid, self.name
        )
    }
}

/// The mini program's original id as pushes name it.
pub(crate) fn to_user_name(appid: &str) -> String {
    format!("gh_{}", &push_crypto::sign_parts(&[appid])[..12])
}

/// The configured targets, the sent-event result to report, and the pushes made.
pub(crate) struct Pusher {
    client: reqwest::Client,
    targets: RwLock<HashMap<String, PushTarget>>,
    sent_results: Mutex<HashMap<String, (i64, String)>>,
    records: Mutex<Vec<PushRecord>>,
    recorded: tokio::sync::Notify,
}

impl Default for Pusher {
    fn default() -> Pusher {
        Pusher {
            client: reqwest::Client::builder()
                .timeout(PUSH_TIMEOUT)
                .build()
                .unwrap_or_default(),
            targets: RwLock::default(),
            sent_results: Mutex::default(),
            records: Mutex::default(),
            recorded: tokio::sync::Notify::new(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pusher {
    pub(crate) fn configure(&self, appid: &str, target: PushTarget) -> Result<(), String> {
        if !target.url.starts_with("http://") && !target.url.starts_with("https://") {
            return Err(format!(
                "push url {:?} must start with http:// or https://",
                target.url
            ));
        }
        if target.token.is_empty() {
            return Err("push token must not be empty".into());
        }
        if let Some(key) = &target.aes_key {
            push_crypto::aes_key(key).map_err(|e| e.to_string())?;
        }
        self.targets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(appid.to_owned(), target);
        Ok(())
    }

    pub(crate) fn target(&self, appid: &str) -> Option<PushTarget> {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(appid)
            .cloned()
    }

    pub(crate) fn is_configured(&self, appid: &str) -> bool {
        self.targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(appid)
    }

    pub(crate) fn set_sent_result(&self, appid: &str, error_code: i64, error_status: &str) {
        lock(&self.sent_results).insert(appid.to_owned(), (error_code, error_status.to_owned()));
    }

    pub(crate) fn sent_result(&self, appid: &str) -> (i64, String) {
        lock(&self.sent_results)
            .get(appid)
            .cloned()
            .unwrap_or_else(|| (0, "success".to_owned()))
    }

    pub(crate) fn records(&self) -> Vec<PushRecord> {
        lock(&self.records).clone()
    }

    pub(crate) fn clear_records(&self) {
        lock(&self.records).clear();
    }

    /// Waits until at least `n` pushes are recorded or `within` has passed.
    pub(crate) async fn wait_for(&self, n: usize, within: Duration) -> Vec<PushRecord> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.recorded.notified();
            let records = self.records();
            if records.len() >= n {
                return records;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.records();
            }
        }
    }

    /// POSTs the event to the app's target; `Ok(None)` when none is configured.
    pub(crate) async fn push(&self, appid: &str, event: Event) -> Result<Option<u16>, String> {
        let Some(target) = self.target(appid) else {
            return Ok(None);
        };
        let now_ms = crate::state::unix_ms();
        let now_s = now_ms / 1000;
        let to_user = to_user_name(appid);
        let message = event.to_json(&to_user, now_s);
        let plain = match target.format {
            PushFormat::Json => message.to_string(),
            PushFormat::Xml => event.to_xml(&to_user, now_s),
        };
        let timestamp = now_s.to_string();
        let nonce = fastrand::u32(..).to_string();
        let mut query = vec![
            (
                "signature",
                push_crypto::sign(&target.token, &timestamp, &nonce),
            ),
            ("timestamp", timestamp.clone()),
            ("nonce", nonce.clone()),
        ];
        let body = match &target.aes_key {
            None => plain,
            Some(key) => {
                let encrypt =
                    push_crypto::encrypt(key, appid, &plain).map_err(|e| e.to_string())?;
                let msg_signature =
                    push_crypto::msg_signature(&target.token, &timestamp, &nonce, &encrypt);
                query.push(("openid", event.openid.clone()));
                query.push(("encrypt_type", "aes".to_owned()));
                query.push(("msg_signature", msg_signature));
                match target.format {
                    PushFormat::Json => {
                        json!({"ToUserName": to_user, "Encrypt": encrypt}).to_string()
                    }
                    PushFormat::Xml => format!(
                        "<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
                    ),
                }
            }
        };
        let content_type = match target.format {
            PushFormat::Json => "application/json",
            PushFormat::Xml => "text/xml",
        };
        let answer = self
            .client
            .post(&target.url)
            .query(&query)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await;
        let status = answer.as_ref().ok().map(|r| r.status().as_u16());
        lock(&self.records).push(PushRecord {
            appid: appid.to_owned(),
            event: event.name.to_owned(),
            message,
            status,
            at_ms: now_ms,
        });
        self.recorded.notify_waiters();
        answer
            .map(|r| Some(r.status().as_u16()))
            .map_err(|e| format!("push to {} failed: {e}", target.url))
    }

    /// The GET verification: whether the receiver echoes `echostr` back.
    pub(crate) async fn verify_url(&self, appid: &str) -> Result<bool, String> {
        let target = self
            .target(appid)
            .ok_or_else(|| format!("no push target configured for {appid}"))?;
        let timestamp = (crate::state::unix_ms() / 1000).to_string();
        let nonce = fastrand::u32(..).to_string();
        let echostr = fastrand::u64(..).to_string();
        let signature = push_crypto::sign(&target.token, &timestamp, &nonce);
        let answer = self
            .client
            .get(&target.url)
            .query(&[
                ("signature", signature.as_str()),
                ("timestamp", &timestamp),
                ("nonce", &nonce),
                ("echostr", &echostr),
            ])
            .send()
            .await
            .map_err(|e| format!("verification GET to {} failed: {e}", target.url))?;
        let ok = answer.status().is_success();
        let text = answer.text().await.unwrap_or_default();
        Ok(ok && text == echostr)
    }
}

/// The popup choices WeChat reports.
pub(crate) const CHOICES: &[&str] = &["accept", "reject", "acceptWithAudio"];

pub(crate) fn popup_event(openid: &str, choices: &[(&str, &str)]) -> Event {
    Event {
        name: "subscribe_msg_popup_event",
        openid: openid.to_owned(),
        items: choices
            .iter()
            .map(|(template_id, status)| {
                vec![
                    ("TemplateId", (*template_id).to_owned(), false),
                    ("SubscribeStatusString", (*status).to_owned(), false),
                    ("PopupScene", "0".to_owned(), true),
                ]
            })
            .collect(),
    }
}

pub(crate) fn change_event(openid: &str, template_id: &str) -> Event {
    Event {
        name: "subscribe_msg_change_event",
        openid: openid.to_owned(),
        items: vec![vec![
            ("TemplateId", template_id.to_owned(), false),
            ("SubscribeStatusString", "reject".to_owned(), false),
        ]],
    }
}

pub(crate) fn sent_event(
    openid: &str,
    template_id: &str,
    msgid: u64,
    result: (i64, String),
) -> Event {
    Event {
        name: "subscribe_msg_sent_event",
        openid: openid.to_owned(),
        items: vec![vec![
            ("TemplateId", template_id.to_owned(), false),
            ("MsgID", msgid.to_string(), true),
            ("ErrorCode", result.0.to_string(), true),
            ("ErrorStatus", result.1, false),
        ]],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_an_object_for_one_item_and_an_array_for_several() {
        let one = popup_event("o1", &[("T1", "accept")]).to_json("gh_x", 1);
        assert_eq!(
            one["List"],
            json!({"TemplateId": "T1", "SubscribeStatusString": "accept", "PopupScene": "0"})
        );
        assert_eq!(one["CreateTime"], "1");
        let two = popup_event("o1", &[("T1", "accept"), ("T2", "reject")]).to_json("gh_x", 1);
        assert_eq!(two["List"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn xml_nests_the_list_in_the_events_element() {
        let xml = sent_event("o1", "T1", 7, (0, "success".into())).to_xml("gh_x", 5);
        assert_eq!(
            xml,
            "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>5</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe_msg_sent_event]]></Event><SubscribeMsgSentEvent><List><TemplateId><![CDATA[T1]]></TemplateId><MsgID>7</MsgID><ErrorCode>0</ErrorCode><ErrorStatus><![CDATA[success]]></ErrorStatus></List></SubscribeMsgSentEvent></xml>"
        );
    }
}
