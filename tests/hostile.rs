//! Hostile events through a running worker: bodies that are not UTF-8, not JSON, nested
//! 10,000 levels deep, 10 MB large, numbers out of range, wrong types, template-injection
//! attempts, control characters, emoji and CJK at and over the limits, RTL and zero-width
//! characters. Each case is, as asserted per case, either a dead letter with a reason or a
//! correct send (values exactly as expected). The worker never panics or stalls: after the
//! corpus a good event is sent, nothing is left in the queues and `/healthz` answers.

mod common;

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics anywhere in this process (the in-process worker's tasks included).
fn count_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

#[derive(Debug, Clone)]
enum Expect {
    /// Sent to `openid(user)` with exactly these data values (and page, when given).
    Sent {
        user: usize,
        data: Vec<(&'static str, String)>,
        page: Option<String>,
    },
    /// A dead letter (the body unchanged) of this class, errcode, and a reason containing
    /// `reason`.
    Dead {
        class: &'static str,
        errcode: Option<i64>,
        reason: &'static str,
    },
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    body: Vec<u8>,
    expect: Expect,
}

const PAID_AT: &str = "2026-11-24T10:00:00+08:00";

fn invalid(reason: &'static str) -> Expect {
    Expect::Dead {
        class: "invalid",
        errcode: None,
        reason,
    }
}

fn permanent(errcode: i64) -> Expect {
    Expect::Dead {
        class: "permanent",
        errcode: Some(errcode),
        reason: "",
    }
}

/// The cases, each with its own user number (for sends) and event id.
struct Corpus {
    cases: Vec<Case>,
    next_user: usize,
}

impl Corpus {
    fn user(&mut self) -> usize {
        self.next_user += 1;
        self.next_user
    }

    fn raw(&mut self, name: &str, body: impl Into<Vec<u8>>, expect: Expect) {
        self.cases.push(Case {
            name: name.to_owned(),
            body: body.into(),
            expect,
        });
    }

    fn event(&mut self, name: &str, event: Value, expect: Expect) {
        self.raw(name, serde_json::to_vec(&event).unwrap(), expect);
    }

    /// An `order.paid` event for a fresh user, its data `base` merged with `data`.
    fn order(&mut self, name: &str, data: Value) -> (usize, Value) {
        let user = self.user();
        let mut merged =
            json!({"order_no": format!("H{user}"), "amount": "12.5", "paid_at": PAID_AT});
        for (k, v) in data.as_object().expect("data object") {
            merged[k] = v.clone();
        }
        let event = json!({
            "id": format!("h-{user}-{}", name.replace(' ', "-")),
            "type": "order.paid",
            "recipient": {"openid": openid(user)},
            "data": merged,
        });
        (user, event)
    }

    /// An `order.paid` event expected to be sent with these values.
    fn sent(&mut self, name: &str, data: Value, expected: &[(&'static str, &str)]) {
        let (user, event) = self.order(name, data);
        self.event(
            name,
            event,
            Expect::Sent {
                user,
                data: expected
                    .iter()
                    .map(|(k, v)| (*k, (*v).to_owned()))
                    .collect(),
                page: None,
            },
        );
    }

    /// An `order.paid` event expected to be dead-lettered.
    fn dead(&mut self, name: &str, data: Value, expect: Expect) {
        let (_, event) = self.order(name, data);
        self.event(name, event, expect);
    }
}

fn nested(depth: usize, open: &str, close: &str, inner: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

fn corpus() -> Vec<Case> {
    let mut c = Corpus {
        cases: Vec::new(),
        next_user: 100,
    };
    let good = |id: &str, user: usize| {
        json!({"id": id, "type": "order.paid", "recipient": {"openid": openid(user)},
               "data": {"order_no": "A1", "amount": "1", "paid_at": PAID_AT}})
    };

    // --- not UTF-8, not JSON ---
    let mut body = format!(
        r#"{{"id":"h-utf8","type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"order_no":"A"#,
        openid(1)
    )
    .into_bytes();
    body.extend_from_slice(b"\xff\xfe\"}}");
    c.raw("invalid UTF-8 in a value", body, invalid("not UTF-8"));
    c.raw(
        "invalid UTF-8 only",
        b"\xc3\x28\xa0\xa1".to_vec(),
        invalid("not UTF-8"),
    );
    c.raw(
        "overlong UTF-8 encoding of '/'",
        b"{\"id\":\"h-overlong\xc0\xaf\"}".to_vec(),
        invalid("not UTF-8"),
    );
    c.raw(
        "lone surrogate escape",
        format!(
            r#"{{"id":"h-surrogate","type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"order_no":"A1","remark":"\ud800"}}}}"#,
            openid(1)
        ),
        invalid("not a JSON event object"),
    );
    c.raw("empty body", Vec::new(), invalid("not a JSON event object"));
    c.raw("null", "null", invalid("not a JSON event object"));
    c.raw("an array", "[1,2,3]", invalid("not a JSON event object"));
    c.raw(
        "a string",
        r#""order.paid""#,
        invalid("not a JSON event object"),
    );
    c.raw("empty object", "{}", invalid("missing `id`"));
    c.raw(
        "truncated JSON",
        r#"{"id":"h-trunc","type":"#,
        invalid("not a JSON event object"),
    );
    c.raw(
        "byte order mark before the JSON",
        [
            b"\xef\xbb\xbf".as_slice(),
            &serde_json::to_vec(&good("h-bom", 1)).unwrap(),
        ]
        .concat(),
        invalid("not a JSON event object"),
    );
    c.raw(
        "duplicate id key",
        format!(
            r#"{{"id":"h-dup-a","id":"h-dup-b","type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"order_no":"A1"}}}}"#,
            openid(1)
        ),
        invalid("duplicate field"),
    );
    c.raw(
        "NaN literal",
        format!(
            r#"{{"id":"h-nan","type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"amount":NaN}}}}"#,
            openid(1)
        ),
        invalid("not a JSON event object"),
    );

    // --- deep nesting ---
    c.raw(
        "10,000 nested arrays in data",
        format!(
            r#"{{"id":"h-deep-arrays","type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"order_no":"A1","x":{}}}}}"#,
            openid(1),
            nested(10_000, "[", "]", "1")
        ),
        invalid("recursion limit"),
    );
    c.raw(
        "10,000 nested objects in data",
        format!(
            r#"{{"id":"h-deep-objects","type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"order_no":"A1","x":{}}}}}"#,
            openid(1),
            nested(10_000, r#"{"a":"#, "}", "1")
        ),
        invalid("recursion limit"),
    );
    // serde skips an unknown field without recursing: the event itself is fine.
    let user = c.user();
    c.raw(
        "10,000 nested arrays in an unknown top-level field",
        format!(
            r#"{{"id":"h-deep-extra","type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"order_no":"A10000"}},"extra":{}}}"#,
            openid(user),
            nested(10_000, "[", "]", "")
        ),
        Expect::Sent {
            user,
            data: vec![("character_string1", "A10000".into())],
            page: None,
        },
    );
    c.raw(
        "10,000 unclosed brackets",
        "[".repeat(10_000),
        invalid("not a JSON event object"),
    );
    let user = c.user();
    c.event(
        "100 nested arrays in an unused field (under the limit)",
        json!({"id": "h-nested-100", "type": "order.paid", "recipient": {"openid": openid(user)},
               "data": {"order_no": "A100", "deep": serde_json::from_str::<Value>(&nested(100, "[", "]", "1")).unwrap()}}),
        Expect::Sent {
            user,
            data: vec![("character_string1", "A100".into())],
            page: None,
        },
    );

    // --- size ---
    let (_, mut big) = c.order("10 MB body", json!({}));
    big["data"]["remark"] = Value::String("x".repeat(10 * 1024 * 1024));
    c.event("10 MB body", big, invalid("the limit is 262144"));
    c.sent(
        "200 KB value (under the body limit) is truncated",
        json!({"remark": "x".repeat(200 * 1024)}),
        &[("thing4", &format!("{}…", "x".repeat(19)))],
    );
    let many: serde_json::Map<String, Value> =
        (0..5_000).map(|i| (format!("k{i}"), json!(i))).collect();
    c.sent(
        "5,000 unused data keys",
        Value::Object(many),
        &[("amount2", "12.50")],
    );

    // --- numbers ---
    c.raw(
        "1e400 (out of range)",
        format!(
            r#"{{"id":"h-1e400","type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"order_no":"A1","amount":1e400}}}}"#,
            openid(1)
        ),
        invalid("not a JSON event object"),
    );
    c.raw(
        "2^128 as the amount",
        format!(
            r#"{{"id":"h-2e128-amount","type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"order_no":"A1","amount":340282366920938463463374607431768211456}}}}"#,
            openid(1)
        ),
        invalid("amount2"),
    );
    c.sent(
        "u64::MAX as the order number",
        json!({"order_no": u64::MAX}),
        &[("character_string1", "18446744073709551615")],
    );
    c.sent(
        "a number as the amount",
        json!({"amount": 12.345}),
        &[("amount2", "12.35")],
    );
    c.dead(
        "a negative exponent as the amount",
        json!({"amount": 1e-7}),
        invalid("amount2"),
    );

    // --- wrong types ---
    c.raw(
        "id as a number",
        format!(
            r#"{{"id":12345,"type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"order_no":"A1"}}}}"#,
            openid(1)
        ),
        invalid("`id` must be a string"),
    );
    c.raw(
        "id null",
        format!(
            r#"{{"id":null,"type":"order.paid","recipient":{{"openid":"{}"}}}}"#,
            openid(1)
        ),
        invalid("missing `id`"),
    );
    c.raw(
        "id empty",
        format!(
            r#"{{"id":"","type":"order.paid","recipient":{{"openid":"{}"}}}}"#,
            openid(1)
        ),
        invalid("`id` is empty"),
    );
    c.raw(
        "type as an object",
        format!(
            r#"{{"id":"h-type-obj","type":{{"x":1}},"recipient":{{"openid":"{}"}}}}"#,
            openid(1)
        ),
        invalid("`type` must be a string"),
    );
    c.raw(
        "data as an array",
        format!(
            r#"{{"id":"h-data-array","type":"order.paid","recipient":{{"openid":"{}"}},"data":["A1"]}}"#,
            openid(1)
        ),
        invalid("`data` must be a JSON object"),
    );
    c.raw(
        "data as a string",
        format!(
            r#"{{"id":"h-data-string","type":"order.paid","recipient":{{"openid":"{}"}},"data":"A1"}}"#,
            openid(1)
        ),
        invalid("`data` must be a JSON object"),
    );
    c.raw(
        "recipient as a string",
        format!(
            r#"{{"id":"h-recipient-string","type":"order.paid","recipient":"{}","data":{{"order_no":"A1"}}}}"#,
            openid(1)
        ),
        invalid("not a JSON event object"),
    );
    c.raw(
        "openid as a number",
        r#"{"id":"h-openid-number","type":"order.paid","recipient":{"openid":42},"data":{"order_no":"A1"}}"#,
        invalid("not a JSON event object"),
    );
    c.raw(
        "recipient with an unknown field",
        format!(
            r#"{{"id":"h-recipient-extra","type":"order.paid","recipient":{{"openid":"{}","unionid":"u"}},"data":{{"order_no":"A1"}}}}"#,
            openid(1)
        ),
        invalid("not a JSON event object"),
    );
    c.raw(
        "both openid and js_code",
        format!(
            r#"{{"id":"h-both","type":"order.paid","recipient":{{"openid":"{}","js_code":"c"}},"data":{{"order_no":"A1"}}}}"#,
            openid(1)
        ),
        invalid("exactly one"),
    );
    c.raw(
        "app as a number",
        format!(
            r#"{{"id":"h-app-number","type":"order.paid","app":7,"recipient":{{"openid":"{}"}},"data":{{"order_no":"A1"}}}}"#,
            openid(1)
        ),
        invalid("`app` must be a string"),
    );
    c.raw(
        "page as an array",
        format!(
            r#"{{"id":"h-page-array","type":"order.paid","page":["p"],"recipient":{{"openid":"{}"}},"data":{{"order_no":"A1"}}}}"#,
            openid(1)
        ),
        invalid("`page` must be a string"),
    );
    c.dead(
        "a value as an object",
        json!({"order_no": {"no": "A1"}}),
        invalid("character_string1"),
    );
    c.dead(
        "a value as an array",
        json!({"remark": ["a", "b"]}),
        invalid("thing4"),
    );
    c.sent(
        "a value as a boolean",
        json!({"remark": true}),
        &[("thing4", "true")],
    );
    c.dead(
        "a timestamp that is not one",
        json!({"paid_at": "2026-13-45T99:99:99Z"}),
        invalid("time3"),
    );
    let mut e = good("h-unknown-type", 1);
    e["type"] = json!("order.paid{x}");
    c.event("unknown event type", e, invalid("no template"));
    let mut e = good("h-unknown-app", 1);
    e["app"] = json!("{secret}");
    c.event("unknown app", e, invalid("unknown app"));

    // --- injection attempts: values are never patterns ---
    c.sent(
        "a placeholder as a value",
        json!({"remark": "{secret}", "secret": "hunter2"}),
        &[("thing4", "{secret}")],
    );
    let user = c.user();
    c.event(
        "a double-brace placeholder as the order number (also in the page)",
        json!({"id": "h-inject-order", "type": "order.paid", "recipient": {"openid": openid(user)},
               "data": {"order_no": "{{order_no}}", "amount": "1"}}),
        Expect::Sent {
            user,
            data: vec![("character_string1", "{{order_no}}".into())],
            page: Some("pages/order/detail?id={{order_no}}".into()),
        },
    );
    c.sent(
        "a filter expression as a value",
        json!({"order_no": "{amount|amount}"}),
        &[("character_string1", "{amount|amount}")],
    );
    c.sent(
        "printf directives",
        json!({"remark": "%s%n%x%d%%"}),
        &[("thing4", "%s%n%x%d%%")],
    );
    c.sent(
        "a JNDI lookup",
        json!({"remark": "${jndi:ldap://x/a}"}),
        &[("thing4", "${jndi:ldap://x/a}")],
    );
    let user = c.user();
    c.event(
        "a placeholder in the page override",
        json!({"id": "h-inject-page", "type": "order.paid", "recipient": {"openid": openid(user)},
               "page": "pages/x?id={order_no}&s={secret}", "data": {"order_no": "A9", "secret": "hunter2"}}),
        Expect::Sent {
            user,
            data: vec![("character_string1", "A9".into())],
            page: Some("pages/x?id={order_no}&s={secret}".into()),
        },
    );
    let user = c.user();
    c.event(
        "an id that looks like another Redis key",
        json!({"id": "x}:token:{wxtest00000000001", "type": "order.paid",
               "recipient": {"openid": openid(user)}, "data": {"order_no": "A7"}}),
        Expect::Sent {
            user,
            data: vec![("character_string1", "A7".into())],
            page: None,
        },
    );
    let user = c.user();
    c.event(
        "an id of exactly 200 characters",
        json!({"id": "i".repeat(200), "type": "order.paid",
               "recipient": {"openid": openid(user)}, "data": {"order_no": "A8"}}),
        Expect::Sent {
            user,
            data: vec![("character_string1", "A8".into())],
            page: None,
        },
    );
    let mut e = good("", 1);
    e["id"] = json!("i".repeat(201));
    c.event("an id of 201 characters", e, invalid("at most 200"));

    // --- control characters ---
    c.dead(
        "NUL in a thing",
        json!({"remark": "ok\u{0}bad"}),
        invalid("thing4"),
    );
    c.dead(
        "a newline in a thing",
        json!({"remark": "line\nbreak"}),
        invalid("thing4"),
    );
    c.dead(
        "DEL in a thing",
        json!({"remark": "a\u{7f}"}),
        invalid("thing4"),
    );
    c.dead(
        "a C1 control (NEL) in a thing",
        json!({"remark": "a\u{85}b"}),
        invalid("thing4"),
    );
    c.dead(
        "a tab in the order number",
        json!({"order_no": "A\tB"}),
        invalid("character_string1"),
    );
    let mut e = good("h-ctl-\u{1}", 1);
    e["id"] = json!("h-ctl-\u{1}");
    c.event(
        "a control character in the id",
        e,
        invalid("control characters"),
    );
    let mut e = good("h-ctl-type", 1);
    e["type"] = json!("order.paid\u{0}");
    c.event("NUL in the type", e, invalid("no template"));

    // --- limits: characters, not bytes ---
    c.sent(
        "20 emoji (thing at its limit)",
        json!({"remark": "😀".repeat(20)}),
        &[("thing4", &"😀".repeat(20))],
    );
    c.sent(
        "20 CJK characters (thing at its limit)",
        json!({"remark": "订".repeat(20)}),
        &[("thing4", &"订".repeat(20))],
    );
    let mixed: String = "订单😀已付款✓".chars().cycle().take(20).collect();
    c.sent(
        "20 mixed CJK, emoji and symbols",
        json!({"remark": mixed}),
        &[("thing4", &mixed)],
    );
    c.sent(
        "10 flags (20 code points)",
        json!({"remark": "🇨🇳".repeat(10)}),
        &[("thing4", &"🇨🇳".repeat(10))],
    );
    c.sent(
        "21 emoji are truncated",
        json!({"remark": "😀".repeat(21)}),
        &[("thing4", &format!("{}…", "😀".repeat(19)))],
    );
    c.sent(
        "21 CJK characters are truncated",
        json!({"remark": "订".repeat(21)}),
        &[("thing4", &format!("{}…", "订".repeat(19)))],
    );
    c.dead(
        "33 characters of order number are never truncated",
        json!({"order_no": "A".repeat(33)}),
        invalid("character_string1"),
    );
    c.sent(
        "32 characters of order number",
        json!({"order_no": "B".repeat(32)}),
        &[("character_string1", &"B".repeat(32))],
    );
    let user = c.user();
    c.event(
        "task: thing at its limit, a phrase one over is a dead letter (cutting could change its meaning)",
        json!({"id": "h-task-phrase", "type": "task.due", "recipient": {"openid": openid(user)},
               "data": {"title": "任".repeat(20), "status": "完成了吗啊呀"}}),
        invalid("`phrase2` (phrase) is 6 characters, the limit is 5"),
    );
    let user = c.user();
    c.event(
        "task: a latin phrase is refused even when cut",
        json!({"id": "h-task-latin", "type": "task.due", "recipient": {"openid": openid(user)},
               "data": {"title": "t", "status": "abcdef"}}),
        invalid("phrase2"),
    );

    // --- RTL and zero-width ---
    c.sent(
        "an RTL override",
        json!({"remark": "\u{202E}evil\u{202C}"}),
        &[("thing4", "\u{202E}evil\u{202C}")],
    );
    c.sent(
        "zero-width characters",
        json!({"remark": "a\u{200B}b\u{200D}c\u{FEFF}d\u{200E}"}),
        &[("thing4", "a\u{200B}b\u{200D}c\u{FEFF}d\u{200E}")],
    );
    let rtl: String = "\u{200F}مرحبا שלום".chars().cycle().take(20).collect();
    c.sent(
        "Arabic and Hebrew with an RTL mark, at the limit",
        json!({"remark": rtl}),
        &[("thing4", &rtl)],
    );
    c.dead(
        "a zero-width space in the order number",
        json!({"order_no": "A\u{200B}1"}),
        invalid("character_string1"),
    );
    let user = c.user();
    c.event(
        "an RTL override in the id",
        json!({"id": "h-\u{202E}lrt", "type": "order.paid", "recipient": {"openid": openid(user)},
               "data": {"order_no": "A6"}}),
        Expect::Sent {
            user,
            data: vec![("character_string1", "A6".into())],
            page: None,
        },
    );
    let mut e = good("h-zw-openid", 1);
    e["recipient"]["openid"] = json!(format!("{}\u{200B}", openid(1)));
    c.event("a zero-width space in the openid", e, permanent(40003));
    let mut e = good("h-jscode", 1);
    e["recipient"] = json!({"js_code": "{secret}\u{202E}"});
    c.event("a js_code nobody issued", e, permanent(40029));

    c.cases
}

/// What went wrong with one case, if anything.
fn check_case(
    case: &Case,
    sends: &[wxpush_mock_wechat::AcceptedSend],
    dead: &[DeadLetter],
) -> Option<String> {
    let dead_for: Vec<_> = dead.iter().filter(|d| d.body == case.body).collect();
    match &case.expect {
        Expect::Sent { user, data, page } => {
            let to = openid(*user);
            let mine: Vec<_> = sends.iter().filter(|s| s.body["touser"] == to).collect();
            if mine.len() != 1 || !dead_for.is_empty() {
                return Some(format!(
                    "expected one send, got {} sends and dead letters {:?}",
                    mine.len(),
                    dead_for
                        .iter()
                        .map(|d| (&d.class, &d.errmsg))
                        .collect::<Vec<_>>()
                ));
            }
            let body = &mine[0].body;
            for (key, value) in data {
                let got = &body["data"][key]["value"];
                if got != value.as_str() {
                    return Some(format!("data.{key} is {got}, expected {value:?}"));
                }
            }
            if let Some(page) = page
                && body["page"] != page.as_str()
            {
                return Some(format!("page is {}, expected {page:?}", body["page"]));
            }
            None
        }
        Expect::Dead {
            class,
            errcode,
            reason,
        } => {
            if dead_for.len() != 1 {
                return Some(format!("expected one dead letter, got {}", dead_for.len()));
            }
            let d = dead_for[0];
            if d.class.as_deref() != Some(*class)
                || d.errcode != *errcode
                || !d.errmsg.contains(reason)
            {
                return Some(format!(
                    "dead letter {:?}/{:?} `{}`, expected {class}/{errcode:?} with `{reason}`",
                    d.class, d.errcode, d.errmsg
                ));
            }
            None
        }
    }
}

async fn get_status(url: &str) -> u16 {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_are_dead_letters_with_a_reason_or_correct_sends() {
    count_panics();
    let app = TestApp::start("hostile").await;
    let worker = app.worker().await;
    await_readyz(worker.admin_addr, 200, Duration::from_secs(30)).await;

    let cases = corpus();
    for case in &cases {
        app.publish_raw("order.paid", &case.body).await;
    }
    let to_send: Vec<String> = cases
        .iter()
        .filter_map(|c| match &c.expect {
            Expect::Sent { user, .. } => Some(openid(*user)),
            Expect::Dead { .. } => None,
        })
        .collect();
    let n_dead = cases.len() - to_send.len();
    // Everything settles (the worker does not stall): the sends we expect, and as many dead
    // letters as there are cases expected to be dead (a wrong outcome shows per case below).
    let expected_total = cases.len();
    eventually("every case settled", Duration::from_secs(60), || async {
        let settled = app.mock.sends().len() + app.dead_len().await as usize;
        (settled >= expected_total && app.pending().await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sends = app.mock.sends();
    let dead = app.dead_letters(app.dead_len().await as usize).await;

    let mut wrong = Vec::new();
    for case in &cases {
        if let Some(problem) = check_case(case, &sends, &dead) {
            wrong.push(format!("{}: {problem}", case.name));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} hostile cases went wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert_eq!(
        sends.len(),
        to_send.len(),
        "no send beyond the expected ones"
    );
    assert_eq!(
        dead.len(),
        n_dead,
        "no dead letter beyond the expected ones"
    );
    for d in &dead {
        assert!(
            d.first_failed_at.is_some() && d.attempts.is_some(),
            "dead-letter headers: {d:?}"
        );
    }

    // Still alive and well: a good event goes through, the admin endpoints answer.
    app.publish(&order_paid("h-good-after", 1)).await;
    app.sent(sends.len() + 1).await;
    assert_eq!(
        sends_to(&app.mock.sends(), &openid(1)),
        1,
        "the good event after the corpus was sent"
    );
    assert_eq!(
        get_status(&format!("http://{}/healthz", worker.admin_addr)).await,
        200
    );
    assert_eq!(readyz(worker.admin_addr).await, 200);
    assert_eq!(app.pending().await, 0, "nothing left waiting");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    worker.shutdown().await.unwrap();
    app.cleanup().await;
}

/// A JSON number beyond what parsing keeps exactly (2^64, 2^128) would be sent changed
/// (`1.8446744073709552e+19`): it is refused with a reason telling to send it as a string,
/// while the largest u64 is sent digit for digit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_integers_are_sent_exactly_or_refused() {
    let app = TestApp::start("hostile-bigint").await;
    let worker = app.worker().await;
    let body = |id: &str, user: usize, number: &str| {
        format!(
            r#"{{"id":"{id}","type":"order.paid","recipient":{{"openid":"{}"}},"data":{{"order_no":{number}}}}}"#,
            openid(user)
        )
    };
    app.publish_raw(
        "order.paid",
        body("big-64", 1, "18446744073709551616").as_bytes(),
    )
    .await;
    app.publish_raw(
        "order.paid",
        body("big-128", 2, "340282366920938463463374607431768211456").as_bytes(),
    )
    .await;
    app.publish_raw(
        "order.paid",
        body("u64-max", 3, "18446744073709551615").as_bytes(),
    )
    .await;
    eventually("all three settled", Duration::from_secs(30), || async {
        (app.mock.sends().len() + app.dead_len().await as usize >= 3).then_some(())
    })
    .await;
    let sends = app.mock.sends();
    let dead = app.dead_letters(app.dead_len().await as usize).await;
    worker.shutdown().await.unwrap();
    app.cleanup().await;
    let to = |user: usize| {
        sends
            .iter()
            .find(|s| s.body["touser"] == openid(user))
            .map(|s| s.body["data"]["character_string1"]["value"].clone())
    };
    assert_eq!(to(1), None, "2^64 is refused, not sent changed");
    assert_eq!(to(2), None, "2^128 is refused, not sent changed");
    assert_eq!(
        to(3),
        Some(json!("18446744073709551615")),
        "the largest u64 is sent exactly"
    );
    let mut refused: Vec<String> = dead.iter().filter_map(DeadLetter::event_id).collect();
    refused.sort();
    assert_eq!(refused, ["big-128", "big-64"]);
    for d in &dead {
        assert_eq!(d.class.as_deref(), Some("invalid"));
        assert!(d.errmsg.contains("send it as a string"), "{d:?}");
    }
}
