//! Placeholder patterns such as `"{order_no}"`, `"Order {order.no|truncate(10)}"` or
//! `"{paid_at|time}"`: parsed once at start-up, so a typo is a config error, not a dead letter.
//!
//! Syntax: text with `{path|filter|filter(arg)}` placeholders; `path` is a field of the event's
//! `data`, dots reach into nested objects; `{{` and `}}` are literal braces.

use std::fmt;

/// A parsed pattern: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Literal(String),
    Placeholder {
        path: Vec<String>,
        filters: Vec<Filter>,
    },
}

/// Transformations from event fields to WeChat's formats.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// RFC 3339 timestamp → `2026-11-24 10:00` (in the timestamp's own offset).
    Time,
    /// RFC 3339 timestamp or date → `2026-11-24`.
    Date,
    /// A number → two decimals, `12.5` → `12.50`.
    Amount,
    /// Cut to at most n characters, marking the cut with `…`.
    Truncate(usize),
    /// Used when the field is missing or empty.
    Default(String),
}

/// Why a pattern does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

impl Pattern {
    /// Parses a pattern, naming the first problem found.
    ///
    /// ```
    /// use wxpush::template::pattern::Pattern;
    ///
    /// let p = Pattern::parse("Order {order.no} paid at {paid_at|time}").unwrap();
    /// assert_eq!(p.fields().collect::<Vec<_>>(), ["order.no", "paid_at"]);
    /// assert!(Pattern::parse("{paid_at|bogus}").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let end = rest.find('}').ok_or_else(|| {
                        PatternError(format!("unclosed `{{` at character {}", at + 1))
                    })?;
                    let inner = &rest[..end];
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(parse_placeholder(inner)?);
                    // Skip the placeholder's characters and its closing brace.
                    while let Some((i, _)) = chars.peek() {
                        if *i > at + end + 1 {
                            break;
                        }
                        chars.next();
                    }
                }
                '}' => {
                    return Err(PatternError(format!(
                        "unmatched `}}` at character {} (write `}}}}` for a literal brace)",
                        at + 1
                    )));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Pattern { segments })
    }

    /// The event fields this pattern reads, as dotted paths.
    pub fn fields(&self) -> impl Iterator<Item = String> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Placeholder { path, .. } => Some(path.join(".")),
            Segment::Literal(_) => None,
        })
    }
}

fn parse_placeholder(inner: &str) -> Result<Segment, PatternError> {
    let mut parts = inner.split('|');
    let path_text = parts.next().unwrap_or("").trim();
    if path_text.is_empty() {
        return Err(PatternError("empty placeholder `{}`".into()));
    }
    let path: Vec<String> = path_text.split('.').map(str::to_owned).collect();
    if let Some(bad) = path.iter().find(|p| {
        p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    }) {
        return Err(PatternError(format!(
            "`{path_text}` is not a field path (letters, digits, `_`, `-`, dots between names; got `{bad}`)"
        )));
    }
    let filters = parts.map(parse_filter).collect::<Result<_, _>>()?;
    Ok(Segment::Placeholder { path, filters })
}

fn parse_filter(text: &str) -> Result<Filter, PatternError> {
    let text = text.trim();
    let (name, arg) = match text.split_once('(') {
        Some((name, rest)) => {
            let arg = rest.strip_suffix(')').ok_or_else(|| {
                PatternError(format!("filter `{text}` is missing its closing `)`"))
            })?;
            (name.trim(), Some(arg))
        }
        None => (text, None),
    };
    match (name, arg) {
        ("time", None) => Ok(Filter::Time),
        ("date", None) => Ok(Filter::Date),
        ("amount", None) => Ok(Filter::Amount),
        ("truncate", Some(n)) => match n.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Filter::Truncate(n)),
            _ => Err(PatternError(format!(
                "truncate needs a positive number of characters, got `{n}`"
            ))),
        },
        ("default", Some(text)) => Ok(Filter::Default(text.to_owned())),
        (name, _) => Err(PatternError(format!(
            "unknown filter `{name}` (known: time, date, amount, truncate(n), default(text))"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholder(path: &[&str], filters: Vec<Filter>) -> Segment {
        Segment::Placeholder {
            path: path.iter().map(|s| s.to_string()).collect(),
            filters,
        }
    }

    #[test]
    fn parses_literals_placeholders_and_filters() {
        let p = Pattern::parse("Order {order.no|truncate(10)} at {paid_at|time}").unwrap();
        assert_eq!(
            p.segments,
            vec![
                Segment::Literal("Order ".into()),
                placeholder(&["order", "no"], vec![Filter::Truncate(10)]),
                Segment::Literal(" at ".into()),
                placeholder(&["paid_at"], vec![Filter::Time]),
            ]
        );
        assert_eq!(p.fields().collect::<Vec<_>>(), vec!["order.no", "paid_at"]);
    }

    #[test]
    fn escaped_braces_are_literal() {
        let p = Pattern::parse("{{x}} {y}").unwrap();
        assert_eq!(p.segments[0], Segment::Literal("{x} ".into()));
        assert_eq!(p.segments[1], placeholder(&["y"], vec![]));
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(
            Pattern::parse("{order_no")
                .unwrap_err()
                .0
                .contains("unclosed")
        );
        assert!(Pattern::parse("a}b").unwrap_err().0.contains("unmatched"));
        assert!(Pattern::parse("{}").unwrap_err().0.contains("empty"));
        assert!(
            Pattern::parse("{a|bogus}")
                .unwrap_err()
                .0
                .contains("unknown filter `bogus`")
        );
        assert!(
            Pattern::parse("{a|truncate(x)}")
                .unwrap_err()
                .0
                .contains("positive")
        );
        assert!(
            Pattern::parse("{a b}")
                .unwrap_err()
                .0
                .contains("not a field path")
        );
    }
}
