//! Durations in configuration: `"25s"`, `"500ms"`, `"1m30s"`, `"720h"`, or a plain number of
//! seconds. Written back in the same text form.

use std::time::Duration;

use serde::de::{Error, Visitor};
use serde::{Deserializer, Serializer};

/// The longest duration accepted anywhere (100 years): beyond it, deadlines computed from
/// "now" would overflow.
pub const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn capped(d: Duration, text: &dyn std::fmt::Display) -> Result<Duration, String> {
    if d > MAX {
        Err(format!("duration {text} is too large (at most 100 years)"))
    } else {
        Ok(d)
    }
}

/// Parses `"1h2m3s"`, `"250ms"`, `"10"` (seconds). At most [`MAX`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return capped(Duration::from_secs(secs), &format_args!("{text:?}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: expected a number"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: a unit (ms, s, m, h) is needed after {number}"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
                ))
            }
        };
        let part = Duration::try_from_secs_f64(number * scale)
            .map_err(|_| format!("duration {text:?} is too large (at most 100 years)"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("duration {text:?} is too large (at most 100 years)"))?;
    }
    capped(total, &format_args!("{text:?}"))
}

/// Formats as the shortest of `Nms`, `Ns`, `Nm`, `Nh`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"25s\", \"500ms\", \"1h\", or a number of seconds")
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Duration, E> {
            capped(Duration::from_secs(v), &v).map_err(E::custom)
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Duration, E> {
            let v = u64::try_from(v).map_err(|_| E::custom("negative duration"))?;
            self.visit_u64(v)
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Duration, E> {
            let d = Duration::try_from_secs_f64(v).map_err(E::custom)?;
            capped(d, &v).map_err(E::custom)
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse("25s").unwrap(), Duration::from_secs(25));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("720h").unwrap(), Duration::from_secs(720 * 3600));
        assert_eq!(parse("7").unwrap(), Duration::from_secs(7));
        assert!(parse("5x").unwrap_err().contains("unknown unit"));
        assert!(parse("").is_err());
        assert!(parse("5").is_ok());
        assert!(parse("s").is_err());
        for d in ["25s", "500ms", "2m", "720h", "0s", "90s"] {
            assert_eq!(format(parse(d).unwrap()), d);
        }
    }

    #[test]
    fn huge_durations_are_errors_not_panics() {
        // Found by the config_parse fuzz target (fuzz/regressions/config_parse).
        for text in [
            "99999999999999999999h",
            "5000000000000000h5000000000000000h",
            "18446744073709551615s",
            "18446744073709551615",
            "876001h",
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains("too large"), "{text}: {e}");
        }
        assert_eq!(parse("876000h").unwrap(), MAX);
        // Whatever parses is written back in a form that parses again.
        assert_eq!(parse(&format(MAX)).unwrap(), MAX);
    }
}
