//! WeChat's value rules for subscribe-message data keys.
//!
//! A key's type is its name without trailing digits (`thing10` is a `thing`). Each type has
//! a length limit in characters (not bytes) and a content rule. The renderer checks values
//! against them and `check` uses the key types to validate template mappings.
//!
//! The rules follow WeChat's table "订阅消息参数值内容限制说明" on the subscribeMessage.send page
//! (<https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/sendMessage.html>)
//! and the notes under the same table in WeChat's subscription-notification API
//! (<https://developers.weixin.qq.com/doc/offiaccount/Subscription_Messages/api.html>): a symbol
//! is a common symbol other than Chinese, English letters and digits, never a control
//! character; times are `HH:MM` or `HH:MM:SS`; dates are `y年m月d日`, `y年m月`, `m月d日` or the
//! same joined by `-`, `/` or `.` (2018-01-01, 2018/01/01, 2018.01.01, 2018-01, 01-01).
//!
//! `enum.DATA` ("只能上传枚举值范围内的字段值"): the value must be one of the template's listed
//! values. WeChat's own templates name such keys `enum_string2` (getTemplateList's example,
//! <https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/getTemplateList.html>),
//! so both `enum` and `enum_string` are the enum type. The list is the template's
//! (`keywordEnumValueList`), given in the config as `[templates.enums]`; [`check_enum`]
//! checks a value against it.
//!
//! Under `policy.overflow = "truncate"` only `thing` and `symbol` are cut (see
//! [`KeyType::truncatable`]); every other type over its limit is refused.
//!
//! The emulator (`crates/mock-wechat`) has its own reading of the same documentation, written
//! separately; `tests/agreement.rs` checks on random values that the two agree.

use std::fmt;

/// The WeChat data-key types the product knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Thing,
    Number,
    Letter,
    Symbol,
    CharacterString,
    PhoneNumber,
    CarNumber,
    Name,
    Phrase,
    Amount,
    Time,
    Date,
    /// `enum` / `enum_string`: one of the template's listed values.
    Enum,
}

/// Why a value breaks its key's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    /// Longer than the type allows (`len` and `max` in characters).
    TooLong { len: usize, max: usize },
    /// Empty values are refused by WeChat.
    Empty,
    /// A character the type does not allow.
    BadCharacter(char),
    /// The value is not in the type's format (e.g. an amount that is not a number).
    BadFormat(&'static str),
    /// An enum key's value that is not one of the template's values (`allowed`: a preview
    /// of the list, for the reason).
    NotInEnum { allowed: String },
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::TooLong { len, max } => {
                write!(f, "is {len} characters, the limit is {max}")
            }
            ValueError::Empty => f.write_str("is empty"),
            ValueError::BadCharacter(c) => write!(f, "contains a character not allowed: {c:?}"),
            ValueError::BadFormat(expected) => write!(f, "is not {expected}"),
            ValueError::NotInEnum { allowed } => {
                write!(f, "is not one of the template's enum values ({allowed})")
            }
        }
    }
}

/// Every key type with its wire name, in the order WeChat documents them.
const NAMES: &[(&str, KeyType)] = &[
    ("thing", KeyType::Thing),
    ("number", KeyType::Number),
    ("letter", KeyType::Letter),
    ("symbol", KeyType::Symbol),
    ("character_string", KeyType::CharacterString),
    ("phone_number", KeyType::PhoneNumber),
    ("car_number", KeyType::CarNumber),
    ("name", KeyType::Name),
    ("phrase", KeyType::Phrase),
    ("amount", KeyType::Amount),
    ("time", KeyType::Time),
    ("date", KeyType::Date),
    ("enum", KeyType::Enum),
    ("enum_string", KeyType::Enum),
];

/// The longest `time` or `date` value the documented formats allow: two points of
/// `2019年10月10日 15:01:01` (20 characters) joined by ` ~ `.
const LONGEST_TIME_OR_DATE: usize = 43;

impl KeyType {
    /// The type of a data key such as `thing4`, or `None` when WeChat has no such type.
    ///
    /// ```
    /// use wxpush::template::rules::KeyType;
    ///
    /// let kind = KeyType::of_key("thing4").unwrap();
    /// assert_eq!(kind, KeyType::Thing);
    /// assert!(kind.check("订单已支付").is_ok());
    /// assert_eq!(kind.truncate(&"长".repeat(25)).chars().count(), 20);
    /// assert_eq!(KeyType::of_key("colour2"), None);
    /// ```
    pub fn of_key(key: &str) -> Option<KeyType> {
        let base = key.trim_end_matches(|c: char| c.is_ascii_digit());
        NAMES
            .iter()
            .find(|(name, _)| *name == base)
            .map(|(_, kind)| *kind)
    }

    /// The wire name of the type (`thing`, `character_string`, …).
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, kind)| *kind == self)
            .map(|(name, _)| *name)
            .unwrap_or("unknown")
    }

    /// The length limit in characters. For `name` this is the limit for values with a
    /// Chinese character (those without may have 20). An `amount` has no length limit
    /// (`usize::MAX`): WeChat limits its digits before the point to 10 and its decimals not
    /// at all, which [`KeyType::check`] enforces as its format.
    pub fn max_chars(self) -> usize {
        match self {
            KeyType::Thing => 20,
            KeyType::Number | KeyType::Letter | KeyType::CharacterString => 32,
            KeyType::Symbol | KeyType::Phrase => 5,
            KeyType::PhoneNumber => 17,
            KeyType::CarNumber => 8,
            KeyType::Name => 10,
            KeyType::Amount | KeyType::Enum => usize::MAX,
            KeyType::Time | KeyType::Date => LONGEST_TIME_OR_DATE,
        }
    }

    /// Whether an over-long value may be shortened under `policy.overflow = "truncate"`:
    /// only free text (`thing`) and `symbol`. Cutting a number, amount, date, phone number or
    /// an identifier would change its meaning; a cut `name` is another person's name and a
    /// cut `phrase` ("5个以内纯汉字", e.g. 配送中) another phrase. Those are refused instead.
    pub fn truncatable(self) -> bool {
        matches!(self, KeyType::Thing | KeyType::Symbol)
    }

    /// The limit that applies to this particular value.
    pub fn limit_for(self, value: &str) -> usize {
        // name: "10个以内纯汉字或20个以内纯字母或符号 … 中文和字母混合按中文名算，10个字内": any
        // Chinese character makes it a Chinese name (10); letters with symbols get 20.
        if self == KeyType::Name && !value.chars().any(is_chinese) {
            20
        } else {
            self.max_chars()
        }
    }

    /// Checks a value against the type's length and character rules.
    pub fn check(self, value: &str) -> Result<(), ValueError> {
        if value.is_empty() {
            return Err(ValueError::Empty);
        }
        let len = value.chars().count();
        let max = self.limit_for(value);
        if len > max {
            return Err(ValueError::TooLong { len, max });
        }
        self.check_characters(value)
    }

    fn check_characters(self, value: &str) -> Result<(), ValueError> {
        let bad = |allowed: &dyn Fn(char) -> bool| match value.chars().find(|c| !allowed(*c)) {
            Some(c) => Err(ValueError::BadCharacter(c)),
            None => Ok(()),
        };
        let format = |ok: bool, expected: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(ValueError::BadFormat(expected))
            }
        };
        match self {
            // thing: "可汉字、数字、字母或符号组合", free text; the notes exclude control characters.
            KeyType::Thing => bad(&|c| !c.is_control()),
            // number: "只能数字，可带小数": digits only, so no sign.
            KeyType::Number => format(is_decimal(value), "a number (digits, optional decimals)"),
            KeyType::Letter => bad(&|c| c.is_ascii_alphabetic()),
            KeyType::Symbol => bad(&is_symbol),
            // character_string: "可数字、字母或符号组合", and a symbol is any common symbol
            // (notes), not only ASCII punctuation.
            KeyType::CharacterString => bad(&|c| c.is_ascii_alphanumeric() || is_symbol(c)),
            // phone_number: "17位以内，数字、符号": digits and any symbol; a space is not one.
            KeyType::PhoneNumber => bad(&|c| c.is_ascii_digit() || is_symbol(c)),
            // car_number: "第一位与最后一位可为汉字，其余为字母或数字": Chinese only at either end.
            KeyType::CarNumber => {
                let last = value.chars().count().saturating_sub(1);
                match value.chars().enumerate().find(|&(i, c)| {
                    !(c.is_ascii_alphanumeric() || ((i == 0 || i == last) && is_chinese(c)))
                }) {
                    Some((_, c)) => Err(ValueError::BadCharacter(c)),
                    None => Ok(()),
                }
            }
            // name: "纯汉字或纯字母或符号": Chinese, letters, symbols and the spaces between
            // words; no digits.
            KeyType::Name => {
                bad(&|c| is_chinese(c) || c.is_ascii_alphabetic() || is_symbol(c) || c == ' ')
            }
            KeyType::Phrase => bad(&is_chinese),
            // amount: "1个币种符号+10位以内纯数字，可带小数，结尾可带“元”".
            KeyType::Amount => format(
                is_amount(value),
                "an amount: at most one currency symbol, up to 10 digits, optional decimals and 元 (¥12.50)",
            ),
            // time: "24小时制时间格式（支持+年月日），支持填时间段，两个时间点之间用“~”符号连接".
            KeyType::Time => format(
                is_range_of(value, is_time_point),
                "a 24-hour time such as 15:01 or 2026-11-24 10:00:00, or a range a~b",
            ),
            // date: "年月日格式（支持+24小时制时间），支持填时间段"; the notes' forms include 2018.01.01.
            KeyType::Date => format(
                is_range_of(value, is_date_point),
                "a date such as 2026-11-24, 2026/11/24, 2026.11.24 or 2026年11月24日, or a range a~b",
            ),
            // enum: which values are allowed is the template's list ([`check_enum`]).
            KeyType::Enum => Ok(()),
        }
    }

    /// Shortens a value to the type's limit, ending with `…` so a reader sees it was cut
    /// where the type allows that character (a `phrase` is Chinese characters only).
    pub fn truncate(self, value: &str) -> String {
        let max = self.limit_for(value);
        if value.chars().count() <= max {
            return value.to_owned();
        }
        // Cutting never lowers the limit (a name's only grows, from 10 to 20, when its
        // Chinese characters are cut away), so the marked cut fits. "…" is a symbol, which
        // every truncatable type but phrase allows; a phrase is cut without the mark.
        let mut marked: String = value.chars().take(max - 1).collect();
        marked.push('…');
        if self.check(&marked).is_ok() {
            marked
        } else {
            value.chars().take(max).collect()
        }
    }
}

/// An enum key's value against the template's list: "只能上传枚举值范围内的字段值".
pub fn check_enum(value: &str, allowed: &[String]) -> Result<(), ValueError> {
    if allowed.iter().any(|a| a == value) {
        return Ok(());
    }
    let mut preview: Vec<&str> = allowed.iter().take(5).map(String::as_str).collect();
    if allowed.len() > preview.len() {
        preview.push("…");
    }
    Err(ValueError::NotInEnum {
        allowed: preview.join(", "),
    })
}

/// 汉字: CJK Unified Ideographs with extensions A to I, and the compatibility ideographs.
fn is_chinese(c: char) -> bool {
    matches!(c,
        '\u{4E00}'..='\u{9FFF}'
        | '\u{3400}'..='\u{4DBF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{20000}'..='\u{2A6DF}'
        | '\u{2A700}'..='\u{2EE5F}'
        | '\u{2F800}'..='\u{2FA1F}'
        | '\u{30000}'..='\u{323AF}')
}

/// 符号 ("除中文、英文、数字外的常见符号，不能带有换行等控制字符"): punctuation and symbols one can
/// see. Not letters or digits of any script, whitespace, control characters, or characters
/// that show nothing (default-ignorable code points such as the zero-width space, and
/// private use).
fn is_symbol(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation();
    }
    let shows_nothing = matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}'
        | '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{10FFFF}');
    !(c.is_alphanumeric() || c.is_whitespace() || c.is_control() || shows_nothing)
}

/// Digits with at most one decimal point between digits.
fn is_decimal(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    all_digits(int) && frac.is_none_or(all_digits)
}

/// Non-empty and ASCII digits only.
fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// "1个币种符号+10位以内纯数字，可带小数，结尾可带“元”": one optional currency symbol, then at
/// most 10 digits, optional decimals, and an optional trailing 元.
fn is_amount(value: &str) -> bool {
    let unsigned = value.strip_prefix(is_currency_symbol).unwrap_or(value);
    let number = unsigned.strip_suffix('元').unwrap_or(unsigned);
    let int = number.split_once('.').map_or(number, |(int, _)| int);
    is_decimal(number) && int.len() <= 10
}

/// 币种符号: the currency signs of Unicode's Latin-1, Currency Symbols and fullwidth blocks.
fn is_currency_symbol(c: char) -> bool {
    matches!(
        c,
        '$' | '¢' | '£' | '¤' | '¥' | '＄' | '￠' | '￡' | '￥' | '￦'
    ) || ('\u{20A0}'..='\u{20C0}').contains(&c)
}

/// One point, or two joined by "~" with at most one space on either side.
fn is_range_of(value: &str, is_point: fn(&str) -> bool) -> bool {
    let mut points = value.split('~');
    let first = points.next().unwrap_or("");
    match (points.next(), points.next()) {
        (None, _) => is_point(first),
        (Some(second), None) => {
            is_point(first.strip_suffix(' ').unwrap_or(first))
                && is_point(second.strip_prefix(' ').unwrap_or(second))
        }
        (Some(_), Some(_)) => false,
    }
}

/// A time, optionally after a date and one space ("支持+年月日").
fn is_time_point(s: &str) -> bool {
    match s.split_once(' ') {
        Some((date, time)) => is_date(date) && is_clock(time),
        None => is_clock(s),
    }
}

/// A date, optionally followed by one space and a time ("支持+24小时制时间").
fn is_date_point(s: &str) -> bool {
    match s.split_once(' ') {
        Some((date, time)) => is_date(date) && is_clock(time),
        None => is_date(s),
    }
}

/// "时间格式支持HH:MM:SS或者HH:MM", 24-hour.
fn is_clock(s: &str) -> bool {
    let fields: Vec<&str> = s.split(':').collect();
    (2..=3).contains(&fields.len())
        && fields.iter().enumerate().all(|(i, field)| {
            let max = if i == 0 { 23 } else { 59 };
            field.len() == 2 && all_digits(field) && field.parse::<u32>().is_ok_and(|n| n <= max)
        })
}

/// "日期包含年月日，为y年m月d日，y年m月、m月d日格式，或者用‘-’、‘/’、‘.’符号连接，如2018-01-01，
/// 2018/01/01，2018.01.01，2018-01，01-01".
fn is_date(s: &str) -> bool {
    if let Some((year, rest)) = s.split_once('年') {
        return is_year(year)
            && match rest.split_once('月') {
                Some((month, "")) => is_month(month),
                Some((month, day)) => is_month(month) && day.strip_suffix('日').is_some_and(is_day),
                None => false,
            };
    }
    if let Some((month, day)) = s.split_once('月') {
        return is_month(month) && day.strip_suffix('日').is_some_and(is_day);
    }
    let Some(separator) = s.chars().find(|c| !c.is_ascii_digit()) else {
        return false;
    };
    if !matches!(separator, '-' | '/' | '.') {
        return false;
    }
    match s.split(separator).collect::<Vec<_>>()[..] {
        [year, month, day] => is_year(year) && is_month(month) && is_day(day),
        [year, month] if year.len() == 4 => is_year(year) && is_month(month),
        [month, day] => is_month(month) && is_day(day),
        _ => false,
    }
}

fn is_year(s: &str) -> bool {
    s.len() == 4 && all_digits(s)
}

fn is_month(s: &str) -> bool {
    s.len() <= 2 && all_digits(s) && s.parse::<u32>().is_ok_and(|m| (1..=12).contains(&m))
}

fn is_day(s: &str) -> bool {
    s.len() <= 2 && all_digits(s) && s.parse::<u32>().is_ok_and(|d| (1..=31).contains(&d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_is_the_name_without_trailing_digits() {
        assert_eq!(KeyType::of_key("thing10"), Some(KeyType::Thing));
        assert_eq!(
            KeyType::of_key("character_string1"),
            Some(KeyType::CharacterString)
        );
        assert_eq!(KeyType::of_key("time3"), Some(KeyType::Time));
        assert_eq!(KeyType::of_key("colour2"), None);
        assert_eq!(KeyType::of_key("enum1"), Some(KeyType::Enum));
        assert_eq!(KeyType::of_key("enum_string2"), Some(KeyType::Enum));
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let twenty_cjk = "订".repeat(20);
        assert_eq!(KeyType::Thing.check(&twenty_cjk), Ok(()));
        assert_eq!(
            KeyType::Thing.check(&format!("{twenty_cjk}a")),
            Err(ValueError::TooLong { len: 21, max: 20 })
        );
        assert_eq!(KeyType::Thing.check(&"😀".repeat(20)), Ok(()));
    }

    #[test]
    fn contract_limits() {
        for (kind, max) in [
            (KeyType::Thing, 20),
            (KeyType::Number, 32),
            (KeyType::Letter, 32),
            (KeyType::Symbol, 5),
            (KeyType::CharacterString, 32),
            (KeyType::PhoneNumber, 17),
            (KeyType::CarNumber, 8),
            (KeyType::Name, 10),
            (KeyType::Phrase, 5),
        ] {
            assert_eq!(kind.max_chars(), max, "{kind:?}");
        }
        assert_eq!(KeyType::Name.limit_for("Alexander Hamilton"), 20);
        assert_eq!(KeyType::Name.limit_for("诸葛孔明"), 10);
    }

    #[test]
    fn character_rules() {
        assert!(KeyType::Number.check("12.5").is_ok());
        assert!(KeyType::Number.check("12a").is_err());
        assert!(KeyType::Amount.check("¥12.50").is_ok());
        assert!(KeyType::Amount.check("12.50元").is_ok());
        assert!(KeyType::Amount.check("twelve").is_err());
        assert!(KeyType::Phrase.check("已支付").is_ok());
        assert!(KeyType::Phrase.check("paid").is_err());
        assert!(KeyType::Time.check("2026-11-24 10:00").is_ok());
        assert!(KeyType::Date.check("2026年11月24日").is_ok());
        assert!(KeyType::Letter.check("abc1").is_err());
        assert!(KeyType::CharacterString.check("A-1001").is_ok());
        assert!(KeyType::CharacterString.check("订单").is_err());
        assert_eq!(KeyType::Thing.check(""), Err(ValueError::Empty));
    }

    // Each of the following was found by tests/agreement.rs: the product disagreed with the
    // documentation (and the emulator's reading of it).

    #[test]
    fn number_has_no_sign() {
        // "只能数字，可带小数".
        assert_eq!(
            KeyType::Number.check("-12"),
            Err(ValueError::BadFormat(
                "a number (digits, optional decimals)"
            ))
        );
        assert!(KeyType::Number.check("12").is_ok());
    }

    #[test]
    fn amount_has_one_currency_symbol_and_at_most_ten_digits() {
        // "1个币种符号+10位以内纯数字，可带小数，结尾可带“元”".
        assert!(KeyType::Amount.check("¥1234567890").is_ok());
        assert!(KeyType::Amount.check("¥12345678901").is_err());
        assert!(KeyType::Amount.check("¥¥1").is_err());
        assert!(KeyType::Amount.check("1234567890.125元").is_ok());
        assert!(KeyType::Amount.check("₩500").is_ok());
        assert!(KeyType::Amount.check("-1").is_err());
        assert!(KeyType::Amount.check("12.5¥").is_err());
    }

    #[test]
    fn dates_and_times_in_every_documented_form() {
        for date in [
            "2019年10月1日",
            "2019年10月1日 15:01",
            "2018-01-01",
            "2018/01/01",
            "2018.01.01",
            "2018-01",
            "01-01",
            "2019年10月",
            "10月1日",
            "2018-01-01 08:00 ~ 2018-01-02 18:00:30",
        ] {
            assert!(KeyType::Date.check(date).is_ok(), "{date}");
        }
        for time in [
            "15:01",
            "15:01:59",
            "2019年10月1日 15:01",
            "2018.01.01 15:01",
            "15:01~16:00",
        ] {
            assert!(KeyType::Time.check(time).is_ok(), "{time}");
        }
        for not_date in ["2018-13-01", "2018-01/01", "15:01", "2019年", "::1", "-"] {
            assert!(KeyType::Date.check(not_date).is_err(), "{not_date}");
        }
        for not_time in ["24:00", "5:01", "2019年10月1日", "15:01~", "1~2~3", "10"] {
            assert!(KeyType::Time.check(not_time).is_err(), "{not_time}");
        }
        let longest = "2019年10月10日 15:01:01 ~ 2019年10月10日 15:01:01";
        assert_eq!(longest.chars().count(), LONGEST_TIME_OR_DATE);
        assert!(KeyType::Time.check(longest).is_ok());
    }

    #[test]
    fn car_number_has_chinese_only_at_either_end() {
        // "第一位与最后一位可为汉字，其余为字母或数字".
        assert!(KeyType::CarNumber.check("粤A8Z888挂").is_ok());
        assert_eq!(
            KeyType::CarNumber.check("粤A粤888挂"),
            Err(ValueError::BadCharacter('粤'))
        );
    }

    #[test]
    fn name_of_letters_and_symbols_gets_twenty() {
        // "10个以内纯汉字或20个以内纯字母或符号".
        assert_eq!(KeyType::Name.limit_for("O'Brien-Smith"), 20);
        assert!(KeyType::Name.check("Mary-Jane O'Brien-Sm").is_ok());
        assert!(KeyType::Name.check("李abcdefghij").is_err());
        assert_eq!(
            KeyType::Name.check("Agent 007"),
            Err(ValueError::BadCharacter('0'))
        );
    }

    #[test]
    fn symbols_are_any_visible_non_letters() {
        // "符号表示除中文、英文、数字外的常见符号，不能带有换行等控制字符".
        assert!(KeyType::CharacterString.check("No.1￥").is_ok());
        assert!(KeyType::CharacterString.check("A\u{200B}1").is_err());
        assert!(KeyType::PhoneNumber.check("(0766)6688#102").is_ok());
        assert!(KeyType::PhoneNumber.check("0766 66888866").is_err());
        assert!(KeyType::Symbol.check("￥…，").is_ok());
        assert!(KeyType::Symbol.check("é").is_err());
    }

    #[test]
    fn truncate_fits_the_limit_and_marks_the_cut() {
        let long = "这是一条非常非常非常非常非常非常长的备注信息啊";
        let cut = KeyType::Thing.truncate(long);
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.ends_with('…'));
        assert!(KeyType::Thing.check(&cut).is_ok());
        assert_eq!(KeyType::Thing.truncate("short"), "short");
        let latin = "Bartholomew Montgomery Smith";
        assert_eq!(
            KeyType::Name.truncate(latin),
            "Bartholomew Montgom…",
            "a latin name keeps 20 with the mark"
        );
        assert!(KeyType::Name.check(&KeyType::Name.truncate(latin)).is_ok());
        assert_eq!(KeyType::Phrase.truncate("一二三四五六七"), "一二三四五");
        assert_eq!(KeyType::Symbol.truncate("!!!!!!!"), "!!!!…");
    }

    #[test]
    fn only_thing_and_symbol_are_truncatable() {
        // A cut thing or symbol keeps its kind of meaning; a cut name, phrase (e.g. the
        // documented 配送中), number, amount, date or identifier does not.
        for (name, kind) in NAMES {
            assert_eq!(
                kind.truncatable(),
                matches!(kind, KeyType::Thing | KeyType::Symbol),
                "{name}"
            );
        }
    }

    #[test]
    fn enum_values_come_from_the_template_list() {
        // getTemplateList's example: enum_string2 takes 客厅, 餐厅, … 其他房间.
        let allowed: Vec<String> = ["客厅", "餐厅", "厨房", "卧室", "主卧", "次卧"]
            .map(String::from)
            .to_vec();
        assert_eq!(check_enum("客厅", &allowed), Ok(()));
        let err = check_enum("阁楼", &allowed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "is not one of the template's enum values (客厅, 餐厅, 厨房, 卧室, 主卧, …)"
        );
        assert_eq!(KeyType::Enum.check(""), Err(ValueError::Empty));
    }

    #[test]
    fn documented_examples_are_accepted() {
        // The "说明" column's own examples on subscribeMessage.send.
        for (kind, example) in [
            (KeyType::Time, "15:01"),
            (KeyType::Time, "2019年10月1日 15:01"),
            (KeyType::Date, "2019年10月1日"),
            (KeyType::Date, "2019年10月1日 15:01"),
            (KeyType::PhoneNumber, "+86-0766-66888866"),
            (KeyType::CarNumber, "粤A8Z888挂"),
            (KeyType::Phrase, "配送中"),
        ] {
            assert_eq!(kind.check(example), Ok(()), "{kind:?} {example}");
        }
    }
}
