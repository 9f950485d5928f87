#![allow(dead_code)] // Temporary copy, rewritten from WeChat's documentation next.
//! WeChat's value rules for subscribe-message data keys.
//!
//! A key's type is its name without trailing digits (`thing10` is a `thing`). Each type has
//! a length limit in characters (not bytes) and a character set. This is the one place those
//! facts live: the renderer checks values against it, `check` uses it to validate template
//! mappings, and the emulator enforces it like WeChat does.

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
];

impl KeyType {
    /// The type of a data key such as `thing4`, or `None` when WeChat has no such type.
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

    /// The length limit in characters. For `name` this is the limit for values that are not
    /// all ASCII letters (those may have 20).
    pub fn max_chars(self) -> usize {
        match self {
            KeyType::Thing => 20,
            KeyType::Number | KeyType::Letter | KeyType::CharacterString => 32,
            KeyType::Symbol | KeyType::Phrase => 5,
            KeyType::PhoneNumber => 17,
            KeyType::CarNumber => 8,
            KeyType::Name => 10,
            KeyType::Amount => 16,
            KeyType::Time | KeyType::Date => 40,
        }
    }

    /// Whether an over-long value may be shortened under `policy.overflow = "truncate"`.
    /// Cutting a number, amount, date, phone number or an identifier (letter,
    /// character_string: order numbers, codes) would change its meaning, so those are always
    /// rejected instead.
    pub fn truncatable(self) -> bool {
        matches!(
            self,
            KeyType::Thing | KeyType::Symbol | KeyType::Name | KeyType::Phrase
        )
    }

    /// The limit that applies to this particular value.
    pub fn limit_for(self, value: &str) -> usize {
        if self == KeyType::Name && is_latin_name(value) {
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
        match self {
            KeyType::Thing | KeyType::Name => bad(&|c| !c.is_control()),
            KeyType::Number => {
                if is_decimal(value.strip_prefix('-').unwrap_or(value)) {
                    Ok(())
                } else {
                    Err(ValueError::BadFormat(
                        "a number (digits, optional decimals)",
                    ))
                }
            }
            KeyType::Letter => bad(&|c| c.is_ascii_alphabetic()),
            KeyType::Symbol => bad(&|c| {
                c.is_ascii_punctuation()
                    || (!c.is_alphanumeric() && !c.is_control() && !c.is_whitespace())
            }),
            KeyType::CharacterString => bad(&|c| c.is_ascii_graphic()),
            KeyType::PhoneNumber => bad(&|c| c.is_ascii_digit() || "+-() ".contains(c)),
            KeyType::CarNumber => bad(&|c| c.is_ascii_alphanumeric() || is_cjk(c)),
            KeyType::Phrase => bad(&is_cjk),
            KeyType::Amount => {
                let digits = value
                    .trim_start_matches(['¥', '￥', '$', '€', '£'])
                    .trim_end_matches('元');
                if is_decimal(digits) {
                    Ok(())
                } else {
                    Err(ValueError::BadFormat("an amount such as 12.50 or ¥12.50"))
                }
            }
            KeyType::Time | KeyType::Date => {
                let ok = value.chars().any(|c| c.is_ascii_digit())
                    && value
                        .chars()
                        .all(|c| c.is_ascii_digit() || " :-/~年月日".contains(c));
                if ok {
                    Ok(())
                } else {
                    Err(ValueError::BadFormat(
                        "a date or 24-hour time such as 2026-11-24 10:00",
                    ))
                }
            }
        }
    }

    /// Shortens a value to the type's limit, ending with `…` so a reader sees it was cut
    /// where the type allows that character (a `phrase` is Chinese characters only).
    pub fn truncate(self, value: &str) -> String {
        let max = self.limit_for(value);
        if value.chars().count() <= max {
            return value.to_owned();
        }
        let mut marked: String = value.chars().take(max - 1).collect();
        marked.push('…');
        // "…" is not a letter, so a latin name that was allowed 20 characters must now fit 10.
        if marked.chars().count() > self.limit_for(&marked) {
            marked = value.chars().take(self.limit_for(&marked) - 1).collect();
            marked.push('…');
        }
        if self.check(&marked).is_ok() {
            marked
        } else {
            value.chars().take(max).collect()
        }
    }
}

fn is_latin_name(value: &str) -> bool {
    value.chars().all(|c| c.is_ascii_alphabetic() || c == ' ')
}

fn is_decimal(s: &str) -> bool {
    let mut parts = s.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    !int.is_empty()
        && int.chars().all(|c| c.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()))
}

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{F900}'..='\u{FAFF}')
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

    #[test]
    fn truncate_fits_the_limit_and_marks_the_cut() {
        let long = "这是一条非常非常非常非常非常非常长的备注信息啊";
        let cut = KeyType::Thing.truncate(long);
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.ends_with('…'));
        assert!(KeyType::Thing.check(&cut).is_ok());
        assert_eq!(KeyType::Thing.truncate("short"), "short");
        let latin = "Bartholomew Montgomery Smith";
        assert!(KeyType::Name.check(&KeyType::Name.truncate(latin)).is_ok());
        assert_eq!(KeyType::Phrase.truncate("一二三四五六七"), "一二三四五");
    }
}
