//! Properties of parsing and rendering over generated input (proptest).

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Map, Value};
use wxpush::config::{Overflow, load_str};
use wxpush::event::Event;
use wxpush::template::Templates;
use wxpush::template::rules::KeyType;

fn templates() -> Templates {
    let text = r#"
[apps.default]
appid = "wx1"
secret_env = "UNUSED"
[[templates]]
event = "t"
template_id = "T"
[templates.data]
thing1 = "{a}"
name2 = "{b}"
phrase3 = "{c|default(无)}"
symbol4 = "{d|default(!)}"
thing5 = "{a} and {b|truncate(3)}"
"#;
    let config = load_str(text, Path::new("p.toml"), vec![]).unwrap().config;
    Templates::compile(&config).unwrap()
}

/// Text mixing ASCII, CJK, emoji and punctuation, up to 60 characters.
fn mixed_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::char::range('a', 'z'),
            prop::char::range('\u{4E00}', '\u{4E80}'),
            prop::char::range('\u{1F600}', '\u{1F64F}'),
            Just('!'),
            Just(' '),
        ],
        1..60,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #[test]
    fn rendered_values_always_fit_their_type_under_truncate(a in mixed_text(), b in mixed_text(), c in mixed_text(), d in mixed_text()) {
        let t = templates();
        let data: Map<String, Value> = [("a", a), ("b", b), ("c", c), ("d", d)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        // A value may still be refused (a phrase with latin letters): then it is a dead
        // letter with a reason. What is sent must always be within the rules.
        if let Ok(message) = t.get("t").unwrap().render("o", &data, None, Overflow::Truncate) {
            for (key, value) in &message.data {
                let kind = KeyType::of_key(key).unwrap();
                prop_assert!(kind.check(&value.value).is_ok(), "{key} = {:?}", value.value);
            }
        }
    }

    #[test]
    fn rendering_reads_only_its_placeholders(a in mixed_text(), b in mixed_text(), extra_key in "[a-z_]{1,12}", extra in mixed_text()) {
        prop_assume!(!["a", "b", "c", "d"].contains(&extra_key.as_str()));
        let t = templates();
        let template = t.get("t").unwrap();
        let mut data: Map<String, Value> = [("a", a), ("b", b)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        let without = template.render("o", &data, None, Overflow::Truncate);
        data.insert(extra_key, Value::String(extra));
        let with = template.render("o", &data, None, Overflow::Truncate);
        prop_assert_eq!(without, with);
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Event::parse(&bytes);
    }

    #[test]
    fn parsing_json_shaped_input_never_panics(value in json_value()) {
        let _ = Event::parse(value.to_string().as_bytes());
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("type".to_owned()),
                    Just("recipient".to_owned()),
                    Just("data".to_owned()),
                    Just("openid".to_owned()),
                    "[a-z]{1,6}".prop_map(|s| s)
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
