//! `apps.NAME.max_rate`: a number of sends per unit of time, written `"200/s"`, `"6000/m"`
//! or with any duration after the slash (`"50/500ms"`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// At most `count` sends per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

/// How much later than its slot a send may reach WeChat than another one (network,
/// scheduling): the limiter spaces sends as if each period were this much longer, so that
/// WeChat never counts more than `count` in any period however the delays fall.
pub const JITTER_GUARD: Duration = Duration::from_millis(50);

impl Rate {
    /// The time between two sends at this rate: `per / count`, stretched by
    /// [`JITTER_GUARD`] (`"100/s"` spaces sends 10.5 ms apart, about 95 a second).
    pub fn interval(&self) -> Duration {
        (self.per + JITTER_GUARD) / self.count
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        let usage =
            "write it as sends per unit of time, e.g. \"200/s\", \"6000/m\" or \"50/500ms\"";
        let (count, per) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not a rate: {usage}"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("`{text}`: `{count}` is not a whole number of sends: {usage}"))?;
        let per = per.trim();
        // "/s" means "/1s": humantime wants the number.
        let per_text = if per.starts_with(|c: char| c.is_ascii_digit()) {
            per.to_owned()
        } else {
            format!("1{per}")
        };
        let per = humantime::parse_duration(&per_text)
            .map_err(|e| format!("`{text}`: `{per}` is not a unit of time ({e}): {usage}"))?;
        if count == 0 || per.is_zero() {
            return Err(format!("`{text}` allows no sends at all: {usage}"));
        }
        if per / count < Duration::from_micros(1) {
            return Err(format!(
                "`{text}` is faster than one send per microsecond, which the limiter cannot space"
            ));
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.per))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let rate: Rate = "200/s".parse().unwrap();
        assert_eq!(rate.count, 200);
        assert_eq!(rate.per, Duration::from_secs(1));
        assert_eq!(rate.interval(), Duration::from_micros(5_250));
        assert_eq!(
            "6000/m".parse::<Rate>().unwrap().interval(),
            Duration::from_nanos(10_008_333)
        );
        assert_eq!(
            "50/500ms".parse::<Rate>().unwrap().interval(),
            Duration::from_millis(11)
        );
    }

    #[test]
    fn refuses_what_is_not_a_rate_with_the_form_to_use() {
        for bad in ["200", "x/s", "0/s", "200/fortnight", "-3/s", "10/0s"] {
            let error = bad.parse::<Rate>().unwrap_err();
            assert!(error.contains(bad), "{bad}: {error}");
            assert!(error.contains("\"200/s\""), "{bad}: {error}");
        }
    }
}
