//! Rendering a [`Pattern`] against an event's `data`, applying filters.
//!
//! Rendering reads only the fields the pattern names: a value such as `"{secret}"` inside the
//! event data stays literal text, because values are never parsed as patterns.

use std::fmt;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use super::pattern::{Filter, Pattern, Segment};

/// Why an event's data cannot fill a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}` {}", self.field, self.message)
    }
}

impl std::error::Error for RenderError {}

/// Renders the pattern. `Ok(None)` means a placeholder's field is missing (and has no
/// `default`), so the caller leaves the whole key out rather than send half a sentence.
pub fn render(pattern: &Pattern, data: &Map<String, Value>) -> Result<Option<String>, RenderError> {
    let mut out = String::new();
    for segment in &pattern.segments {
        match segment {
            Segment::Literal(text) => out.push_str(text),
            Segment::Placeholder { path, filters } => {
                let field = || path.join(".");
                let raw = lookup(data, path).map_err(|message| RenderError {
                    field: field(),
                    message,
                })?;
                match apply_filters(raw, filters).map_err(|message| RenderError {
                    field: field(),
                    message,
                })? {
                    Some(value) => out.push_str(&value),
                    None => return Ok(None),
                }
            }
        }
    }
    Ok(Some(out))
}

/// The scalar at `path` as text; `Ok(None)` when absent or null.
fn lookup(data: &Map<String, Value>, path: &[String]) -> Result<Option<String>, String> {
    let mut current = match data.get(&path[0]) {
        Some(v) => v,
        None => return Ok(None),
    };
    for name in &path[1..] {
        current = match current {
            Value::Object(map) => match map.get(name) {
                Some(v) => v,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
    }
    match current {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => exact_number(n).map(Some),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Array(_) | Value::Object(_) => {
            Err("is an array or object; a placeholder needs a string or number".into())
        }
    }
}

/// A JSON number as the text it stands for. Integers beyond 64 bits and floats that print
/// with an exponent have lost digits in parsing: sending them would change an order number
/// or amount without anyone noticing, so they are refused with a way out.
fn exact_number(n: &serde_json::Number) -> Result<String, String> {
    if n.is_i64() || n.is_u64() {
        return Ok(n.to_string());
    }
    let text = n.to_string();
    let exact = n
        .as_f64()
        .is_some_and(|f| f.abs() < 9_007_199_254_740_992.0)
        && !text.contains(['e', 'E']);
    if exact {
        Ok(text)
    } else {
        Err(format!(
            "is the number {text}, too large to be represented exactly; send it as a string"
        ))
    }
}

fn apply_filters(mut value: Option<String>, filters: &[Filter]) -> Result<Option<String>, String> {
    for filter in filters {
        value = match (filter, value) {
            (Filter::Default(text), None) => Some(text.clone()),
            (Filter::Default(text), Some(v)) if v.is_empty() => Some(text.clone()),
            (_, None) => None,
            (Filter::Default(_), Some(v)) => Some(v),
            (Filter::Time, Some(v)) => Some(format_time(&v)?),
            (Filter::Date, Some(v)) => Some(format_date(&v)?),
            (Filter::Amount, Some(v)) => Some(format_amount(&v)?),
            (Filter::Truncate(n), Some(v)) => Some(truncate(&v, *n)),
        };
    }
    Ok(value)
}

fn parse_timestamp(v: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(v.trim(), &Rfc3339).map_err(|_| {
        format!(
            "is `{}`, not an RFC 3339 timestamp such as 2026-11-24T10:00:00+08:00",
            clip(v)
        )
    })
}

fn format_time(v: &str) -> Result<String, String> {
    let t = parse_timestamp(v)?;
    Ok(
        t.format(format_description!("[year]-[month]-[day] [hour]:[minute]"))
            .expect("fixed format with fields every OffsetDateTime has"),
    )
}

fn format_date(v: &str) -> Result<String, String> {
    let v = v.trim();
    let date = match parse_timestamp(v) {
        Ok(t) => t.date(),
        Err(_) => {
            time::Date::parse(v, format_description!("[year]-[month]-[day]")).map_err(|_| {
                format!(
                    "is `{}`, not a date (2026-11-24) or RFC 3339 timestamp",
                    clip(v)
                )
            })?
        }
    };
    Ok(date
        .format(format_description!("[year]-[month]-[day]"))
        .expect("fixed format with fields every Date has"))
}

/// Formats a decimal with exactly two fraction digits, rounding half up, without going
/// through floating point (an amount must not gain or lose a cent).
fn format_amount(v: &str) -> Result<String, String> {
    let not_amount = || format!("is `{}`, not an amount such as 12.5", clip(v));
    let trimmed = v.trim();
    let (negative, digits) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if int.is_empty() || int.len() > 18 || !all_digits(int) || !all_digits(frac) {
        return Err(not_amount());
    }
    let mut cents: u128 = int.parse::<u128>().map_err(|_| not_amount())? * 100;
    let mut frac_digits = frac.chars().map(|c| c as u128 - '0' as u128);
    cents += frac_digits.next().unwrap_or(0) * 10 + frac_digits.next().unwrap_or(0);
    if frac_digits.next().unwrap_or(0) >= 5 {
        cents += 1;
    }
    let sign = if negative && cents > 0 { "-" } else { "" };
    Ok(format!("{sign}{}.{:02}", cents / 100, cents % 100))
}

fn truncate(v: &str, n: usize) -> String {
    if v.chars().count() <= n {
        return v.to_owned();
    }
    let mut out: String = v.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Keeps error messages short when a hostile event sends a huge value.
fn clip(v: &str) -> String {
    truncate(v, 40)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn r(pattern: &str, v: Value) -> Result<Option<String>, RenderError> {
        render(&Pattern::parse(pattern).unwrap(), &data(v))
    }

    #[test]
    fn fields_nested_and_numbers() {
        let d = json!({"order": {"no": "A1"}, "qty": 3});
        assert_eq!(r("{order.no} x{qty}", d).unwrap().as_deref(), Some("A1 x3"));
    }

    #[test]
    fn missing_field_omits_the_key_unless_defaulted() {
        assert_eq!(r("note: {remark}", json!({})).unwrap(), None);
        assert_eq!(
            r("{remark|default(无)}", json!({})).unwrap().as_deref(),
            Some("无")
        );
    }

    #[test]
    fn filters_format_wechat_values() {
        let d = json!({"at": "2026-11-24T10:00:01+08:00", "amount": "12.5", "n": 3.456});
        assert_eq!(
            r("{at|time}", d.clone()).unwrap().as_deref(),
            Some("2026-11-24 10:00")
        );
        assert_eq!(
            r("{at|date}", d.clone()).unwrap().as_deref(),
            Some("2026-11-24")
        );
        assert_eq!(
            r("{amount|amount}", d.clone()).unwrap().as_deref(),
            Some("12.50")
        );
        assert_eq!(r("{n|amount}", d).unwrap().as_deref(), Some("3.46"));
        assert_eq!(
            r("{s|truncate(3)}", json!({"s": "abcdef"}))
                .unwrap()
                .as_deref(),
            Some("ab…")
        );
    }

    #[test]
    fn amount_rounds_half_up_without_floats() {
        for (input, out) in [
            ("0.125", "0.13"),
            ("1", "1.00"),
            ("-0.004", "0.00"),
            ("99.995", "100.00"),
        ] {
            assert_eq!(format_amount(input).unwrap(), out, "{input}");
        }
        assert!(format_amount("12,50").is_err());
        assert!(format_amount("").is_err());
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = r("{at|time}", json!({"at": "yesterday"})).unwrap_err();
        assert_eq!(err.field, "at");
        assert!(err.to_string().contains("RFC 3339"));
        assert!(r("{o}", json!({"o": {"a": 1}})).is_err());
    }

    #[test]
    fn numbers_are_sent_exactly_or_refused() {
        let d: Value = serde_json::from_str(
            r#"{"big": 18446744073709551616, "ok": 18446744073709551615, "f": 12.5}"#,
        )
        .unwrap();
        assert_eq!(
            r("{ok}", d.clone()).unwrap().as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(r("{f}", d.clone()).unwrap().as_deref(), Some("12.5"));
        let err = r("{big}", d).unwrap_err();
        assert!(err.to_string().contains("send it as a string"), "{err}");
    }

    #[test]
    fn values_are_never_parsed_as_patterns() {
        let d = json!({"remark": "{secret}", "secret": "hunter2"});
        assert_eq!(r("{remark}", d).unwrap().as_deref(), Some("{secret}"));
    }
}
