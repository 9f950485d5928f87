//! WeChat's rules for the values of subscribe-message data keys, as the emulator enforces
//! them: written from WeChat's documentation alone.
//!
//! The emulator is the test oracle for the product's renderer: the root package's
//! `tests/agreement.rs` feeds both random values and fails where they disagree. An oracle
//! built from the product's code would pass the product's mistakes, so this file shares no
//! code with `src/template/rules.rs` and has its own shape (a table of key types, a small
//! cursor parser for amounts, times and dates). What the two share is the documentation.
//!
//! # Sources
//!
//! - subscribeMessage.send (发送订阅消息), table "订阅消息参数值内容限制说明" (columns 参数类别 /
//!   参数说明 / 参数值限制 / 说明), quoted row by row in [`KEY_TYPES`]:
//!   <https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/sendMessage.html>
//!   (formerly `.../api-backend/open-api/subscribe-message/subscribeMessage.send.html`). Its
//!   time and date rows add: "支持填时间段，两个时间点之间用“~”符号连接" (a range of two points
//!   joined by `~`).
//! - The server-side subscribe-message guide (the template's keys are a type plus a number,
//!   each `{ "value": … }` checked against its type):
//!   <https://developers.weixin.qq.com/miniprogram/dev/framework/open-ability/subscribe-message.html>
//! - The same table in WeChat's subscription-notification API, with notes under it
//!   (<https://developers.weixin.qq.com/doc/offiaccount/Subscription_Messages/api.html>; read
//!   here from a copy of the page, as quoted):
//!   "符号表示除中文、英文、数字外的常见符号，不能带有换行等控制字符。时间格式支持HH:MM:SS或者HH:MM。
//!   日期包含年月日，为y年m月d日，y年m月、m月d日格式，或者用‘-’、‘/’、‘.’符号连接，如2018-01-01，
//!   2018/01/01，2018.01.01，2018-01，01-01。每个模板参数都会以类型为前缀…"
//!
//! # Readings where the documentation leaves a choice
//!
//! - Limits count characters (Unicode scalar values), not bytes.
//! - 汉字 (Chinese character): the CJK Unified Ideographs block, its extensions A to I and
//!   the compatibility ideographs. 字母 (letter): A–Z and a–z ("英文" in the notes).
//!   数字 (digit): 0–9.
//! - 符号 (symbol): a visible character that is neither Chinese, a letter nor a digit. Letters
//!   and digits of other scripts (é, я, あ, １) are not "常见符号"; neither are whitespace,
//!   control characters, invisible ones (zero-width space, direction marks, variation
//!   selectors: Unicode's default-ignorable code points) or private-use ones. The standard
//!   library has no general-category table, so combining marks count as symbols.
//! - `thing` is free text ("可汉字、数字、字母或符号组合"): anything but control characters, the
//!   one exclusion the notes spell out, so words may be separated by spaces.
//! - A `name` may separate its words with spaces ("纯英文名" is a full English name).
//! - An `amount`'s currency symbol is optional (at most one); its decimals are not limited.
//! - Dates and times are checked for shape and field ranges (month 1–12, day 1–31, hour
//!   00–23, minute and second 00–59), not against a calendar. A year has 4 digits, a month or
//!   day 1 or 2, an hour, minute or second exactly 2 (`HH:MM`). A time may be preceded by a
//!   date and one space; a date may be followed by one space and a time. In a range the `~`
//!   may have one space on either side.
//! - Empty values are refused (WeChat answers 47003 "data.<key>.value is empty").
//! - `enum.DATA` | 枚举值 | 只能上传枚举值范围内的字段值 | 调用接口获取参考枚举值: a documented
//!   type whose values are the template's own list (getTemplateList's `keywordEnumValueList`;
//!   its example names such keys `enum_string2`, so `enum` and `enum_string` are both this
//!   type). [`accepts`] knows the key and refuses an empty value; whether a value is on the
//!   list is [`accepts_enum`]'s question, asked by whoever holds the template's list.

use std::fmt;

/// Why WeChat refuses a value. WeChat itself only answers `data.<key>.value invalid`; the
/// reason is for the emulator's tests and for whoever debugs a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The key names no documented type (`colour1`).
    UnknownType,
    Empty,
    /// More characters than the type allows.
    TooLong {
        chars: usize,
        limit: usize,
    },
    /// A character the type does not take, at a 0-based character position.
    Character {
        found: char,
        position: usize,
    },
    /// Not in the type's documented format; says which format.
    Format(&'static str),
    /// An enum key's value that is not on the template's list.
    NotListed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::UnknownType => f.write_str("the key names no documented type"),
            Reason::Empty => f.write_str("the value is empty"),
            Reason::TooLong { chars, limit } => {
                write!(f, "{chars} characters, the type allows {limit}")
            }
            Reason::Character { found, position } => {
                write!(f, "{found:?} at character {position} is not allowed")
            }
            Reason::Format(format) => write!(f, "not {format}"),
            Reason::NotListed => f.write_str("not one of the template's enum values"),
        }
    }
}

/// How long a value of a type may be.
#[derive(Clone, Copy)]
enum Length {
    /// At most this many characters.
    Chars(usize),
    /// `name`: 10 characters once any Chinese character is in it, else 20.
    Name,
    /// The documented format bounds the length (amount, time, date).
    ByFormat,
}

/// One documented key type: its name (the key without its number), its length rule and
/// what its content must be.
struct KeyType {
    name: &'static str,
    length: Length,
    content: fn(&str) -> Result<(), Reason>,
}

/// The documentation's table, one row per type, in the documentation's order; each comment
/// quotes the row (参数类别 | 参数说明 | 参数值限制 | 说明).
const KEY_TYPES: &[KeyType] = &[
    // thing.DATA | 事物 | 20个以内字符 | 可汉字、数字、字母或符号组合
    KeyType {
        name: "thing",
        length: Length::Chars(20),
        content: free_text,
    },
    // number.DATA | 数字 | 32位以内数字 | 只能数字，可带小数
    KeyType {
        name: "number",
        length: Length::Chars(32),
        content: number,
    },
    // letter.DATA | 字母 | 32位以内字母 | 只能字母
    KeyType {
        name: "letter",
        length: Length::Chars(32),
        content: letters,
    },
    // symbol.DATA | 符号 | 5位以内符号 | 只能符号
    KeyType {
        name: "symbol",
        length: Length::Chars(5),
        content: symbols,
    },
    // character_string.DATA | 字符串 | 32位以内数字、字母或符号 | 可数字、字母或符号组合
    KeyType {
        name: "character_string",
        length: Length::Chars(32),
        content: digits_letters_symbols,
    },
    // time.DATA | 时间 | 24小时制时间格式（支持+年月日），支持填时间段，两个时间点之间用“~”符号连接
    //   | 例如：15:01，或：2019年10月1日 15:01
    KeyType {
        name: "time",
        length: Length::ByFormat,
        content: time,
    },
    // date.DATA | 日期 | 年月日格式（支持+24小时制时间），支持填时间段，两个时间点之间用“~”符号连接
    //   | 例如：2019年10月1日，或：2019年10月1日 15:01
    KeyType {
        name: "date",
        length: Length::ByFormat,
        content: date,
    },
    // amount.DATA | 金额 | 1个币种符号+10位以内纯数字，可带小数，结尾可带“元” | 可带小数
    KeyType {
        name: "amount",
        length: Length::ByFormat,
        content: amount,
    },
    // phone_number.DATA | 电话 | 17位以内，数字、符号 | 电话号码，例：+86-0766-66888866
    KeyType {
        name: "phone_number",
        length: Length::Chars(17),
        content: digits_symbols,
    },
    // car_number.DATA | 车牌 | 8位以内，第一位与最后一位可为汉字，其余为字母或数字
    //   | 车牌号码：粤A8Z888挂
    KeyType {
        name: "car_number",
        length: Length::Chars(8),
        content: car_number,
    },
    // name.DATA | 姓名 | 10个以内纯汉字或20个以内纯字母或符号 | 中文名10个汉字内；纯英文名20个字母内；
    //   中文和字母混合按中文名算，10个字内
    KeyType {
        name: "name",
        length: Length::Name,
        content: name,
    },
    // phrase.DATA | 汉字 | 5个以内汉字 | 5个以内纯汉字，例如：配送中
    KeyType {
        name: "phrase",
        length: Length::Chars(5),
        content: chinese,
    },
    // enum.DATA | 枚举值 | 只能上传枚举值范围内的字段值 | 调用接口获取参考枚举值
    KeyType {
        name: "enum",
        length: Length::ByFormat,
        content: listed,
    },
    // The same type as WeChat's templates name it (getTemplateList: {{enum_string2.DATA}}).
    KeyType {
        name: "enum_string",
        length: Length::ByFormat,
        content: listed,
    },
];

/// The documented type a key belongs to: the key without its trailing number
/// ("每个模板参数都会以类型为前缀": `thing4` is a `thing`).
fn key_type(key: &str) -> Option<&'static KeyType> {
    let type_name = key.trim_end_matches(|c: char| c.is_ascii_digit());
    KEY_TYPES.iter().find(|t| t.name == type_name)
}

/// Whether a data key names a documented type (`thing4` does, `colour1` does not).
pub fn is_known_key(key: &str) -> bool {
    key_type(key).is_some()
}

/// Whether a data key is of the `enum` type (`enum3`, `enum_string2`), whose values only
/// the template's own list defines.
pub fn is_enum_key(key: &str) -> bool {
    key_type(key).is_some_and(|t| t.name == "enum" || t.name == "enum_string")
}

/// Checks one data value the way WeChat does: `Ok` when WeChat accepts `value` for `key`.
pub fn accepts(key: &str, value: &str) -> Result<(), Reason> {
    let key_type = key_type(key).ok_or(Reason::UnknownType)?;
    if value.is_empty() {
        return Err(Reason::Empty);
    }
    let limit = match key_type.length {
        Length::Chars(limit) => Some(limit),
        Length::Name if value.chars().any(is_chinese) => Some(10),
        Length::Name => Some(20),
        Length::ByFormat => None,
    };
    let chars = value.chars().count();
    if let Some(limit) = limit
        && chars > limit
    {
        return Err(Reason::TooLong { chars, limit });
    }
    (key_type.content)(value)
}

/// An enum key's value against the template's list ("只能上传枚举值范围内的字段值").
pub fn accepts_enum(value: &str, allowed: &[&str]) -> Result<(), Reason> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(Reason::NotListed)
    }
}

/// An enum value's content: which values are allowed is the template's list, checked by
/// [`accepts_enum`] where the list is known; the type itself takes any non-empty value.
fn listed(_value: &str) -> Result<(), Reason> {
    Ok(())
}

// ----- character classes -----

/// 汉字: CJK Unified Ideographs and extensions A–I, and the compatibility ideographs.
fn is_chinese(c: char) -> bool {
    matches!(c,
        '\u{3400}'..='\u{4DBF}'       // extension A
        | '\u{4E00}'..='\u{9FFF}'     // the main block
        | '\u{F900}'..='\u{FAFF}'     // compatibility ideographs
        | '\u{20000}'..='\u{2A6DF}'   // extension B
        | '\u{2A700}'..='\u{2EE5F}'   // extensions C, D, E, F, I
        | '\u{2F800}'..='\u{2FA1F}'   // compatibility supplement
        | '\u{30000}'..='\u{323AF}' // extensions G, H
    )
}

/// 字母: the notes contrast "中文、英文、数字", so English letters.
fn is_letter(c: char) -> bool {
    c.is_ascii_alphabetic()
}

/// 数字.
fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
}

/// 符号: "除中文、英文、数字外的常见符号，不能带有换行等控制字符". Everything visible that is not
/// a letter or digit of any script (Chinese characters are letters too).
fn is_symbol(c: char) -> bool {
    !c.is_alphanumeric() && !c.is_whitespace() && !c.is_control() && !is_invisible(c)
}

/// Characters that show nothing: Unicode's default-ignorable code points (zero-width
/// space and joiners, direction marks and overrides, variation selectors, tags) and the
/// private-use areas, whose look no one can know.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{034F}'
        | '\u{061C}'
        | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}'
        | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}'
        | '\u{E000}'..='\u{F8FF}'
        | '\u{F0000}'..='\u{10FFFF}'
    )
}

/// 币种符号: the currency signs of Unicode's Latin-1, Currency Symbols and fullwidth blocks.
fn is_currency_sign(c: char) -> bool {
    matches!(
        c,
        '$' | '¢' | '£' | '¤' | '¥' | '\u{20A0}'..='\u{20C0}' | '＄' | '￠' | '￡' | '￥' | '￦'
    )
}

// ----- content rules, one per row -----

/// Every character passes `allowed`, else the first that does not.
fn every_char(value: &str, allowed: fn(char) -> bool) -> Result<(), Reason> {
    match value.chars().enumerate().find(|(_, c)| !allowed(*c)) {
        Some((position, found)) => Err(Reason::Character { found, position }),
        None => Ok(()),
    }
}

fn free_text(value: &str) -> Result<(), Reason> {
    every_char(value, |c| !c.is_control())
}

fn letters(value: &str) -> Result<(), Reason> {
    every_char(value, is_letter)
}

fn symbols(value: &str) -> Result<(), Reason> {
    every_char(value, is_symbol)
}

fn digits_letters_symbols(value: &str) -> Result<(), Reason> {
    every_char(value, |c| is_digit(c) || is_letter(c) || is_symbol(c))
}

fn digits_symbols(value: &str) -> Result<(), Reason> {
    every_char(value, |c| is_digit(c) || is_symbol(c))
}

fn chinese(value: &str) -> Result<(), Reason> {
    every_char(value, is_chinese)
}

/// Chinese, letters or symbols, and spaces between the words of a name.
fn name(value: &str) -> Result<(), Reason> {
    every_char(value, |c| {
        is_chinese(c) || is_letter(c) || is_symbol(c) || c == ' '
    })
}

/// "第一位与最后一位可为汉字，其余为字母或数字".
fn car_number(value: &str) -> Result<(), Reason> {
    let last = value.chars().count().saturating_sub(1);
    for (position, c) in value.chars().enumerate() {
        let at_an_end = position == 0 || position == last;
        let allowed = is_letter(c) || is_digit(c) || (at_an_end && is_chinese(c));
        if !allowed {
            return Err(Reason::Character { found: c, position });
        }
    }
    Ok(())
}

/// "只能数字，可带小数": digits, optionally one decimal point between digits.
fn number(value: &str) -> Result<(), Reason> {
    let mut at = Cursor::new(value);
    let whole = !at.digits().is_empty();
    let fraction = !at.eat('.') || !at.digits().is_empty();
    if whole && fraction && at.at_end() {
        Ok(())
    } else {
        Err(Reason::Format(
            "a number: digits, optionally with decimals (12 or 12.5)",
        ))
    }
}

/// "1个币种符号+10位以内纯数字，可带小数，结尾可带“元”".
fn amount(value: &str) -> Result<(), Reason> {
    let mut at = Cursor::new(value);
    at.eat_if(is_currency_sign);
    let whole = at.digits().len();
    let fraction = !at.eat('.') || !at.digits().is_empty();
    at.eat('元');
    if (1..=10).contains(&whole) && fraction && at.at_end() {
        Ok(())
    } else {
        Err(Reason::Format(
            "an amount: one optional currency symbol, at most 10 digits, optional decimals, optional 元",
        ))
    }
}

fn time(value: &str) -> Result<(), Reason> {
    if one_or_a_range(value, time_point) {
        Ok(())
    } else {
        Err(Reason::Format(
            "a 24-hour time (15:01, 15:01:05), optionally after a date, or a range a~b",
        ))
    }
}

fn date(value: &str) -> Result<(), Reason> {
    if one_or_a_range(value, date_point) {
        Ok(())
    } else {
        Err(Reason::Format(
            "a date (2019年10月1日, 2018-01-01, 2018/01/01, 2018.01.01, 2018-01, 01-01), optionally with a time, or a range a~b",
        ))
    }
}

// ----- the time and date grammar -----

/// A point, or two points joined by `~` (one optional space either side).
fn one_or_a_range(value: &str, point: fn(&mut Cursor) -> bool) -> bool {
    let mut at = Cursor::new(value);
    if !point(&mut at) {
        return false;
    }
    if at.at_end() {
        return true;
    }
    at.eat(' ');
    if !at.eat('~') {
        return false;
    }
    at.eat(' ');
    point(&mut at) && at.at_end()
}

/// A time point: `[date ' '] HH:MM[:SS]`.
fn time_point(at: &mut Cursor) -> bool {
    let mut dated = *at;
    if calendar_date(&mut dated) && dated.eat(' ') && clock(&mut dated) {
        *at = dated;
        return true;
    }
    clock(at)
}

/// A date point: `date [' ' HH:MM[:SS]]`.
fn date_point(at: &mut Cursor) -> bool {
    if !calendar_date(at) {
        return false;
    }
    let mut timed = *at;
    if timed.eat(' ') && clock(&mut timed) {
        *at = timed;
    }
    true
}

/// `HH:MM` or `HH:MM:SS`, 24-hour.
fn clock(at: &mut Cursor) -> bool {
    if !(two_digits_at_most(at, 23) && at.eat(':') && two_digits_at_most(at, 59)) {
        return false;
    }
    let mut seconds = *at;
    if seconds.eat(':') {
        if !two_digits_at_most(&mut seconds, 59) {
            return false;
        }
        *at = seconds;
    }
    true
}

fn two_digits_at_most(at: &mut Cursor, max: u32) -> bool {
    let run = at.digits();
    run.len() == 2 && run.parse::<u32>().is_ok_and(|n| n <= max)
}

/// One of the documented date forms: `y年m月d日`, `y年m月`, `m月d日`, or the same fields
/// joined by one of `-` `/` `.` (`2018-01-01`, `2018-01`, `01-01`).
fn calendar_date(at: &mut Cursor) -> bool {
    let first = at.digits();
    let is_year = first.len() == 4;
    if is_year && at.eat('年') {
        if !(is_month(at.digits()) && at.eat('月')) {
            return false;
        }
        let mut with_day = *at;
        if is_day(with_day.digits()) && with_day.eat('日') {
            *at = with_day;
        }
        return true;
    }
    if at.eat('月') {
        return is_month(first) && is_day(at.digits()) && at.eat('日');
    }
    let Some(separator) = at.eat_if(|c| matches!(c, '-' | '/' | '.')) else {
        return false;
    };
    if is_year {
        if !is_month(at.digits()) {
            return false;
        }
        let mut with_day = *at;
        if with_day.eat(separator) && is_day(with_day.digits()) {
            *at = with_day;
        }
        true
    } else {
        is_month(first) && is_day(at.digits())
    }
}

fn is_month(digits: &str) -> bool {
    (1..=2).contains(&digits.len()) && digits.parse::<u32>().is_ok_and(|m| (1..=12).contains(&m))
}

fn is_day(digits: &str) -> bool {
    (1..=2).contains(&digits.len()) && digits.parse::<u32>().is_ok_and(|d| (1..=31).contains(&d))
}

/// A read position in a value. Copying it is how a parse tries an optional part and backs
/// out when the part is not there.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn new(value: &'a str) -> Cursor<'a> {
        Cursor { rest: value }
    }

    fn at_end(&self) -> bool {
        self.rest.is_empty()
    }

    /// Steps over `expected` when it comes next.
    fn eat(&mut self, expected: char) -> bool {
        self.eat_if(|c| c == expected).is_some()
    }

    /// Steps over the next character when it passes `wanted`, and returns it.
    fn eat_if(&mut self, wanted: impl Fn(char) -> bool) -> Option<char> {
        let c = self.rest.chars().next().filter(|c| wanted(*c))?;
        self.rest = &self.rest[c.len_utf8()..];
        Some(c)
    }

    /// Steps over the longest run of ASCII digits here (maybe none) and returns it.
    fn digits(&mut self) -> &'a str {
        let end = self
            .rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(self.rest.len());
        let (run, rest) = self.rest.split_at(end);
        self.rest = rest;
        run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_is_the_key_without_its_number() {
        assert!(is_known_key("thing4"));
        assert!(is_known_key("character_string12"));
        assert!(is_known_key("number01"));
        assert!(!is_known_key("colour1"));
        assert!(is_known_key("enum1"));
        assert!(is_known_key("enum_string2"));
        assert_eq!(accepts("colour1", "red"), Err(Reason::UnknownType));
    }

    #[test]
    fn reasons_say_what_is_wrong() {
        assert_eq!(accepts("thing1", ""), Err(Reason::Empty));
        assert_eq!(
            accepts("phrase1", "配送中配送中"),
            Err(Reason::TooLong { chars: 6, limit: 5 })
        );
        assert_eq!(
            accepts("letter1", "abc1"),
            Err(Reason::Character {
                found: '1',
                position: 3
            })
        );
        assert_eq!(
            accepts("car_number1", "粤A中"),
            Ok(()),
            "the last character may be Chinese"
        );
        assert_eq!(
            accepts("car_number1", "粤中A"),
            Err(Reason::Character {
                found: '中',
                position: 1
            })
        );
        assert!(matches!(accepts("amount1", "¥¥1"), Err(Reason::Format(_))));
    }

    #[test]
    fn symbols_are_visible_non_letters() {
        for c in [
            '!', '-', '+', '#', '¥', '€', '…', '，', '。', '✓', '😀', '·',
        ] {
            assert!(is_symbol(c), "{c:?}");
        }
        for c in [
            'a', 'Z', '0', '中', 'é', 'я', 'あ', '１', ' ', '\u{3000}', '\t', '\u{7f}', '\u{200B}',
            '\u{202E}', '\u{FE0F}', '\u{E000}',
        ] {
            assert!(!is_symbol(c), "{c:?}");
        }
    }

    #[test]
    fn chinese_includes_the_extensions() {
        for c in [
            '中',
            '\u{3400}',
            '\u{9FFF}',
            '\u{20000}',
            '\u{2A700}',
            '\u{30000}',
        ] {
            assert!(is_chinese(c), "{c:?}");
        }
        for c in ['a', '。', 'あ', '\u{3007}'] {
            assert!(!is_chinese(c), "{c:?}");
        }
    }

    #[test]
    fn the_cursor_backs_out_of_optional_parts() {
        // The optional day after 2018-01 is not there: the date ends at 2018-01 and the
        // rest is left for the caller, which refuses it.
        let mut at = Cursor::new("2018-01-x");
        assert!(calendar_date(&mut at));
        assert_eq!(at.rest, "-x");
        let mut at = Cursor::new("2019年10月 15:01");
        assert!(calendar_date(&mut at));
        assert_eq!(at.rest, " 15:01");
        let mut at = Cursor::new("15:01:6");
        assert!(!clock(&mut at));
    }
}
