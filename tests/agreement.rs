//! The product and the emulator must agree on which values WeChat accepts.
//!
//! The emulator (`wxpush-mock-wechat`) reads WeChat's documented value rules on its own and
//! shares no code with the product's `template::rules`. These properties give both random
//! values for every key type (ASCII letters, digits, symbols, Chinese characters, currency
//! signs, date and time separators, invisible and control characters, lengths around each
//! limit) and fail on any value where they disagree. A disagreement is a bug in one of them:
//! check the documentation (cited in both) to see which.
//!
//! Rendering is covered too: a value the product sends, after its filters and truncation,
//! must be one the emulator accepts, and a value it refuses must be one the emulator refuses.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};
use wxpush::config::{Overflow, load_str};
use wxpush::template::Templates;
use wxpush::template::pattern::Pattern;
use wxpush::template::render::render;
use wxpush::template::rules::KeyType;
use wxpush_mock_wechat::accepts_value;

/// What the product decides for `key = value`: the rule the renderer applies.
fn product_accepts(key: &str, value: &str) -> bool {
    KeyType::of_key(key).is_some_and(|kind| kind.check(value).is_ok())
}

/// Fails the case with both verdicts when the product and the emulator disagree.
fn assert_agree(key: &str, value: &str) -> Result<(), TestCaseError> {
    let product = KeyType::of_key(key).map(|kind| kind.check(value));
    let emulator = accepts_value(key, value);
    prop_assert_eq!(
        product.as_ref().is_some_and(Result::is_ok),
        emulator,
        "{} = {:?}: product says {:?}, emulator says {}",
        key,
        value,
        product,
        if emulator { "accepted" } else { "refused" }
    );
    Ok(())
}

// ----- characters -----

fn pick(chars: &str) -> BoxedStrategy<char> {
    prop::sample::select(chars.chars().collect::<Vec<_>>()).boxed()
}

fn ascii_letter() -> BoxedStrategy<char> {
    prop_oneof![prop::char::range('a', 'z'), prop::char::range('A', 'Z')].boxed()
}

fn digit() -> BoxedStrategy<char> {
    prop::char::range('0', '9').boxed()
}

fn ascii_symbol() -> BoxedStrategy<char> {
    pick("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
}

/// Chinese characters: the main block, extension A and B, compatibility ideographs.
fn chinese() -> BoxedStrategy<char> {
    prop_oneof![
        8 => prop::char::range('\u{4E00}', '\u{9FA5}'),
        1 => prop::char::range('\u{3400}', '\u{3420}'),
        1 => prop::char::range('\u{20000}', '\u{20020}'),
        1 => prop::char::range('\u{F900}', '\u{F910}'),
    ]
    .boxed()
}

/// Symbols beyond ASCII: currency, CJK and fullwidth punctuation, marks, emoji.
fn wide_symbol() -> BoxedStrategy<char> {
    prop_oneof![
        pick("¥￥€£₩₹¢…—·•，。！？：；、「」（）《》✓★→①½°±×÷"),
        prop::char::range('\u{1F600}', '\u{1F64F}'),
    ]
    .boxed()
}

fn currency_sign() -> BoxedStrategy<char> {
    pick("¥￥$€£₩₹¢₿＄")
}

/// Characters that are in no documented class, or only in `thing`: letters and digits of
/// other scripts, fullwidth letters and digits, odd whitespace, invisible and control
/// characters.
fn outsider() -> BoxedStrategy<char> {
    pick(
        "éüαяあア한ＡＺ１９\u{3000}\u{A0}\u{2003}\u{200B}\u{200D}\u{FE0F}\u{202E}\u{AD}\u{E000}\t\n\r\u{7F}\u{85}\u{3007}",
    )
}

/// Pieces of dates, times and amounts.
fn format_char() -> BoxedStrategy<char> {
    pick("年月日元~～:-/. ")
}

/// Any character the strategies know, for intruders in otherwise well-formed values.
fn any_char() -> BoxedStrategy<char> {
    prop_oneof![
        3 => ascii_letter(),
        3 => digit(),
        2 => ascii_symbol(),
        1 => Just(' '),
        3 => chinese(),
        2 => wide_symbol(),
        1 => currency_sign(),
        1 => format_char(),
        2 => outsider(),
    ]
    .boxed()
}

// ----- values -----

/// A length around `limit`: anywhere up to a few over, often right at the edge.
fn length_around(limit: usize) -> BoxedStrategy<usize> {
    prop_oneof![
        1 => 0..=limit + 3,
        2 => limit.saturating_sub(1)..=limit + 1,
    ]
    .boxed()
}

/// Text of `usual` characters with, on average, half an intruder from anywhere, of a
/// length around `limit`.
fn text(usual: BoxedStrategy<char>, limit: usize) -> BoxedStrategy<String> {
    let usual_weight = 2 * limit as u32;
    length_around(limit)
        .prop_flat_map(move |len| {
            prop::collection::vec(
                prop_oneof![usual_weight => usual.clone(), 1 => any_char()],
                len,
            )
        })
        .prop_map(|chars| chars.into_iter().collect())
        .boxed()
}

/// Sometimes changes a value in one or two places: inserts, deletes or replaces a
/// character, so well-formed values are also tried just off their format.
fn nudged(value: BoxedStrategy<String>) -> BoxedStrategy<String> {
    let edit = (0..3u8, any::<prop::sample::Index>(), any_char());
    let edits = prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec(edit, 1..=2),
    ];
    (value, edits)
        .prop_map(|(value, edits)| {
            let mut chars: Vec<char> = value.chars().collect();
            for (kind, at, c) in edits {
                // 0 inserts, 1 deletes, 2 replaces; on an empty value all three add `c`.
                match kind {
                    0 => chars.insert(at.index(chars.len() + 1), c),
                    1 if !chars.is_empty() => {
                        chars.remove(at.index(chars.len()));
                    }
                    _ if !chars.is_empty() => {
                        let i = at.index(chars.len());
                        chars[i] = c;
                    }
                    _ => chars.push(c),
                }
            }
            chars.into_iter().collect()
        })
        .boxed()
}

fn digits(len: impl Strategy<Value = usize> + 'static) -> BoxedStrategy<String> {
    len.prop_flat_map(|n| prop::collection::vec(digit(), n))
        .prop_map(|d| d.into_iter().collect())
        .boxed()
}

fn maybe(value: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![Just(String::new()), value].boxed()
}

/// A minus sign now and then: neither numbers nor amounts take one.
fn rare_minus() -> BoxedStrategy<String> {
    prop_oneof![6 => Just(String::new()), 1 => Just("-".to_owned())].boxed()
}

fn number() -> BoxedStrategy<String> {
    let shaped = (
        rare_minus(),
        digits(0..=34usize),
        maybe(digits(0..=3usize).prop_map(|d| format!(".{d}")).boxed()),
    )
        .prop_map(|(sign, whole, fraction)| format!("{sign}{whole}{fraction}"))
        .boxed();
    prop_oneof![
        3 => nudged(shaped),
        1 => text(prop_oneof![digit(), Just('.')].boxed(), 32),
    ]
    .boxed()
}

fn amount() -> BoxedStrategy<String> {
    let signs = prop_oneof![3 => Just(0usize), 3 => Just(1usize), 1 => Just(2usize)]
        .prop_flat_map(|n| prop::collection::vec(currency_sign(), n))
        .prop_map(|s| s.into_iter().collect::<String>());
    let shaped = (
        rare_minus(),
        signs,
        digits(prop_oneof![0..=12usize, 9..=11usize]),
        maybe(digits(0..=4usize).prop_map(|d| format!(".{d}")).boxed()),
        prop::sample::select(vec!["", "", "", "元", "元", "元元"]),
    )
        .prop_map(|(minus, signs, whole, fraction, yuan)| {
            format!("{minus}{signs}{whole}{fraction}{yuan}")
        })
        .boxed();
    nudged(shaped)
}

/// A number field of 1 to 3 digits (usually 2), zero-padded: usually in `low..=high`,
/// sometimes anywhere up to 99.
fn field(low: u32, high: u32) -> BoxedStrategy<String> {
    let width = prop_oneof![16 => Just(2usize), 1 => Just(1usize), 1 => Just(3usize)];
    let n = prop_oneof![19 => low..=high, 1 => 0u32..=99];
    (n, width)
        .prop_map(|(n, width)| format!("{n:0width$}"))
        .boxed()
}

fn year() -> BoxedStrategy<String> {
    prop_oneof![
        6 => (1970u32..=2099).prop_map(|y| y.to_string()),
        1 => field(0, 99_999),
    ]
    .boxed()
}

fn date_separator() -> BoxedStrategy<char> {
    prop_oneof![12 => pick("-/."), 1 => pick(":_ 年月")].boxed()
}

fn calendar_date() -> BoxedStrategy<String> {
    let (month, day) = (|| field(1, 12), || field(1, 31));
    prop_oneof![
        (year(), month(), day()).prop_map(|(y, m, d)| format!("{y}年{m}月{d}日")),
        (year(), month()).prop_map(|(y, m)| format!("{y}年{m}月")),
        (month(), day()).prop_map(|(m, d)| format!("{m}月{d}日")),
        (year(), month(), day(), date_separator())
            .prop_map(|(y, m, d, s)| format!("{y}{s}{m}{s}{d}")),
        (year(), month(), date_separator()).prop_map(|(y, m, s)| format!("{y}{s}{m}")),
        (month(), day(), date_separator()).prop_map(|(m, d, s)| format!("{m}{s}{d}")),
        (year(), month(), day(), date_separator(), date_separator())
            .prop_map(|(y, m, d, s, t)| format!("{y}{s}{m}{t}{d}")),
    ]
    .boxed()
}

fn clock() -> BoxedStrategy<String> {
    (field(0, 23), field(0, 59), maybe(field(0, 59)))
        .prop_map(|(h, m, s)| {
            if s.is_empty() {
                format!("{h}:{m}")
            } else {
                format!("{h}:{m}:{s}")
            }
        })
        .boxed()
}

/// A point of a `time` or `date` value: mostly of the type's own shape (`usual`), and any
/// other shape either type might take.
fn point(usual: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![
        8 => usual,
        1 => clock(),
        1 => calendar_date(),
        1 => (calendar_date(), clock()).prop_map(|(d, t)| format!("{d} {t}")),
        1 => (calendar_date(), clock(), pick("T \u{3000}"))
            .prop_map(|(d, t, s)| format!("{d}{s}{s}{t}")),
    ]
    .boxed()
}

/// One point or a range of two, joined in the documented way or not.
fn one_or_two(point: BoxedStrategy<String>) -> BoxedStrategy<String> {
    let joint = prop::sample::select(vec![
        "~", "~", " ~ ", " ~ ", " ~", "~ ", "  ~ ", "～", "~~", " ",
    ]);
    let shaped = prop_oneof![
        2 => point.clone(),
        1 => (point.clone(), joint, point).prop_map(|(a, j, b)| format!("{a}{j}{b}")),
    ]
    .boxed();
    nudged(shaped)
}

fn time() -> BoxedStrategy<String> {
    one_or_two(point(
        prop_oneof![
            clock(),
            (calendar_date(), clock()).prop_map(|(d, t)| format!("{d} {t}"))
        ]
        .boxed(),
    ))
}

fn date() -> BoxedStrategy<String> {
    one_or_two(point(
        prop_oneof![
            calendar_date(),
            (calendar_date(), clock()).prop_map(|(d, t)| format!("{d} {t}"))
        ]
        .boxed(),
    ))
}

fn car_number() -> BoxedStrategy<String> {
    let end = || prop_oneof![chinese(), ascii_letter(), digit()];
    let middle = prop_oneof![
        6 => ascii_letter(),
        6 => digit(),
        1 => chinese(),
        1 => any_char(),
    ];
    (end(), prop::collection::vec(middle, 0..=8), end())
        .prop_map(|(first, middle, last)| {
            std::iter::once(first)
                .chain(middle)
                .chain(std::iter::once(last))
                .collect::<String>()
        })
        .prop_flat_map(|plate| {
            // Also the one-character plate and the empty value.
            let len = plate.chars().count();
            (Just(plate), 0..=len)
        })
        .prop_map(|(plate, keep)| {
            if keep <= 1 {
                plate.chars().take(keep).collect()
            } else {
                plate
            }
        })
        .boxed()
}

fn name() -> BoxedStrategy<String> {
    prop_oneof![
        // Chinese names, sometimes with letters or a middle dot: limit 10.
        text(
            prop_oneof![8 => chinese(), 1 => ascii_letter(), 1 => Just('·')].boxed(),
            10
        ),
        // Latin names with spaces and symbols: limit 20.
        text(
            prop_oneof![12 => ascii_letter(), 2 => Just(' '), 1 => pick("-'.·")].boxed(),
            20
        ),
    ]
    .boxed()
}

/// Every key type with the strategy for its values.
fn key_types() -> Vec<(&'static str, BoxedStrategy<String>)> {
    let any_visible = prop_oneof![
        ascii_letter(),
        digit(),
        ascii_symbol(),
        Just(' '),
        chinese(),
        wide_symbol()
    ]
    .boxed();
    vec![
        ("thing1", text(any_visible, 20)),
        ("number2", number()),
        ("letter3", text(ascii_letter(), 32)),
        (
            "symbol4",
            text(prop_oneof![ascii_symbol(), wide_symbol()].boxed(), 5),
        ),
        (
            "character_string5",
            text(
                prop_oneof![ascii_letter(), digit(), ascii_symbol(), wide_symbol()].boxed(),
                32,
            ),
        ),
        ("time6", time()),
        ("date7", date()),
        ("amount8", amount()),
        (
            "phone_number9",
            text(prop_oneof![4 => digit(), 1 => pick("+-()#*")].boxed(), 17),
        ),
        ("car_number10", car_number()),
        ("name11", name()),
        ("phrase12", text(chinese(), 5)),
    ]
}

fn strategy_for(key: &str) -> BoxedStrategy<String> {
    key_types()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, strategy)| strategy)
        .unwrap_or_else(|| panic!("no strategy for {key}"))
}

// ----- the value rules agree -----

macro_rules! agreement {
    ($($test:ident: $key:literal;)*) => {
        proptest! {
            $(
                #[test]
                fn $test(value in strategy_for($key)) {
                    assert_agree($key, &value)?;
                }
            )*
        }
    };
}

agreement! {
    thing_values_agree: "thing1";
    number_values_agree: "number2";
    letter_values_agree: "letter3";
    symbol_values_agree: "symbol4";
    character_string_values_agree: "character_string5";
    time_values_agree: "time6";
    date_values_agree: "date7";
    amount_values_agree: "amount8";
    phone_number_values_agree: "phone_number9";
    car_number_values_agree: "car_number10";
    name_values_agree: "name11";
    phrase_values_agree: "phrase12";
}

proptest! {
    /// Any value for any type, including values shaped for another type.
    #[test]
    fn any_value_for_any_type_agrees(
        key in prop::sample::select(key_types().into_iter().map(|(k, _)| k).collect::<Vec<_>>()),
        value in prop::sample::select(key_types().into_iter().map(|(_, s)| s).collect::<Vec<_>>())
            .prop_flat_map(|strategy| strategy),
    ) {
        assert_agree(key, &value)?;
    }
}

/// Agreement means little if the values are all accepted or all refused: each type's
/// strategy must give plenty of both. Sampled with a fixed seed, so this is deterministic.
#[test]
fn every_strategy_yields_accepted_and_refused_values() {
    const SAMPLES: usize = 400;
    let mut runner = TestRunner::deterministic();
    let mut shares = Vec::new();
    for (key, strategy) in key_types() {
        let accepted = (0..SAMPLES)
            .filter(|_| {
                let value = strategy.new_tree(&mut runner).unwrap().current();
                accepts_value(key, &value)
            })
            .count();
        shares.push((key, accepted));
    }
    let report: Vec<String> = shares
        .iter()
        .map(|(key, accepted)| format!("{key}: {accepted} of {SAMPLES} accepted"))
        .collect();
    assert!(
        shares
            .iter()
            .all(|(_, accepted)| (SAMPLES / 5..=SAMPLES * 4 / 5).contains(accepted)),
        "want between a fifth and four fifths accepted for every type:\n{}",
        report.join("\n")
    );
}

/// The documented values the product once judged differently from the documentation
/// (found by the properties above), kept as plain examples.
#[test]
fn documented_cases_the_product_once_got_wrong() {
    for (key, value, accepted) in [
        ("date1", "2018.01.01", true),
        ("date1", "2018/01/01", true),
        ("time1", "15:01:59", true),
        ("time1", "::1", false),
        ("amount1", "¥¥1", false),
        ("amount1", "12345678901", false),
        ("amount1", "1234567890.12345", true),
        ("number1", "-1", false),
        ("car_number1", "粤A粤888挂", false),
        ("name1", "Mary-Jane O'Brien-Sm", true),
        ("name1", "Agent 007", false),
        ("character_string1", "No.1￥", true),
        ("phone_number1", "(0766)6688#102", true),
        ("phone_number1", "0766 66888866", false),
    ] {
        assert_eq!(
            accepts_value(key, value),
            accepted,
            "emulator: {key} = {value:?}"
        );
        assert_eq!(
            product_accepts(key, value),
            accepted,
            "product: {key} = {value:?}"
        );
    }
}

// ----- rendering agrees -----

/// One template per key type, `{v}` as is, plus the filters that produce WeChat's formats.
fn templates() -> &'static Templates {
    static TEMPLATES: OnceLock<Templates> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut text = String::from("[apps.default]\nappid = \"wx1\"\nsecret_env = \"UNUSED\"\n");
        let mut add = |event: &str, key: &str, pattern: &str| {
            text.push_str(&format!(
                "[[templates]]\nevent = \"{event}\"\ntemplate_id = \"T\"\n[templates.data]\n{key} = \"{pattern}\"\n"
            ));
        };
        for (key, _) in key_types() {
            add(key, key, "{v}");
        }
        add("time_filter", "time1", "{v|time}");
        add("date_filter", "date1", "{v|date}");
        add("amount_filter", "amount1", "{v|amount}");
        let config = load_str(&text, Path::new("agreement.toml"), vec![])
            .unwrap()
            .config;
        Templates::compile(&config).unwrap()
    })
}

fn event_data(value: Value) -> Map<String, Value> {
    Map::from_iter([("v".to_owned(), value)])
}

/// Renders `value` with the template for `event` under `overflow`; `Ok` is what would be
/// sent for its only key.
fn rendered(event: &str, value: Value, overflow: Overflow) -> Result<String, String> {
    let template = templates().get(event).expect("a template per event");
    let message = template
        .render("o", &event_data(value), None, overflow)
        .map_err(|e| e.0)?;
    let (_, sent) = message.data.into_iter().next().expect("one key");
    Ok(sent.value)
}

/// RFC 3339 timestamps, the input of the `time` and `date` filters.
fn timestamp() -> BoxedStrategy<String> {
    let offset = prop_oneof![
        Just("Z".to_owned()),
        (0u32..=14, prop::sample::select(vec!["+", "-"]), 0u32..=59)
            .prop_map(|(h, sign, m)| format!("{sign}{h:02}:{m:02}")),
    ];
    (
        0u32..=9999,
        1u32..=12,
        1u32..=28,
        0u32..=23,
        0u32..=59,
        0u32..=59,
        offset,
    )
        .prop_map(|(y, mo, d, h, mi, s, offset)| {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{offset}")
        })
        .boxed()
}

/// Decimals as strings and as JSON numbers, the input of the `amount` filter.
fn decimal() -> BoxedStrategy<Value> {
    prop_oneof![
        (
            maybe(Just("-".to_owned()).boxed()),
            digits(1..=13usize),
            digits(0..=4usize)
        )
            .prop_map(|(sign, whole, fraction)| {
                let text = if fraction.is_empty() {
                    format!("{sign}{whole}")
                } else {
                    format!("{sign}{whole}.{fraction}")
                };
                json!(text)
            }),
        (-1.0e12f64..1.0e12).prop_map(|f| json!(f)),
        any::<i64>().prop_map(|n| json!(n)),
    ]
    .boxed()
}

proptest! {
    /// Under `policy.overflow = "reject"` the product sends a value exactly when the
    /// emulator accepts it, and sends it unchanged.
    #[test]
    fn rendering_sends_exactly_what_the_emulator_accepts(
        (key, value) in prop::sample::select(key_types()).prop_flat_map(|(key, strategy)| (Just(key), strategy)),
    ) {
        let sent = rendered(key, json!(value), Overflow::Reject);
        prop_assert_eq!(
            sent.is_ok(),
            accepts_value(key, &value),
            "{} = {:?}: rendered {:?}", key, value, sent
        );
        if let Ok(sent) = sent {
            prop_assert_eq!(sent, value);
        }
    }

    /// Under `policy.overflow = "truncate"` whatever the product sends, cut or not, is
    /// accepted by the emulator.
    #[test]
    fn truncated_values_are_accepted(
        (key, value) in prop::sample::select(key_types()).prop_flat_map(|(key, strategy)| (Just(key), strategy)),
    ) {
        if let Ok(sent) = rendered(key, json!(value), Overflow::Truncate) {
            prop_assert!(accepts_value(key, &sent), "{} = {:?} was sent as {:?}", key, value, sent);
        }
    }

    /// The `time` and `date` filters always produce a value both sides accept.
    #[test]
    fn time_and_date_filters_produce_accepted_values(at in timestamp()) {
        for (event, key, filter) in [("time_filter", "time1", "time"), ("date_filter", "date1", "date")] {
            let pattern = Pattern::parse(&format!("{{v|{filter}}}")).unwrap();
            let formatted = render(&pattern, &event_data(json!(at))).unwrap().unwrap();
            assert_agree(key, &formatted)?;
            prop_assert!(accepts_value(key, &formatted), "{} of {} = {:?}", filter, at, formatted);
            prop_assert_eq!(rendered(event, json!(at), Overflow::Reject), Ok(formatted));
        }
    }

    /// What the `amount` filter produces is sent exactly when the emulator accepts it.
    #[test]
    fn amount_filter_output_is_judged_alike(amount in decimal()) {
        let pattern = Pattern::parse("{v|amount}").unwrap();
        if let Ok(Some(formatted)) = render(&pattern, &event_data(amount.clone())) {
            assert_agree("amount1", &formatted)?;
            let sent = rendered("amount_filter", amount, Overflow::Reject);
            prop_assert_eq!(sent.is_ok(), accepts_value("amount1", &formatted), "{:?}: {:?}", formatted, sent);
        }
    }
}
