//! Durations in the three syntaxes the adapter reads and writes: Go's (`time.ParseDuration`, for
//! flags, and `time.Duration.String`, for the `window` of resource metrics) and Prometheus' (range
//! selectors and `resourceRules.window`). A leaf: it imports nothing from the crate.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid duration {0:?}: expected a Go duration such as 30s, 2m or 1h30m")]
    Go(String),
    #[error("{0:?} is not a Prometheus duration such as 5m or 1h30m")]
    Prometheus(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a Go `time.ParseDuration` string: a sequence of decimal numbers with units
/// `ns`, `us`, `µs`, `ms`, `s`, `m`, `h` (e.g. `300ms`, `1.5h`, `2h45m`). Negative durations are refused,
/// since no flag takes one.
pub fn parse_go(s: &str) -> Result<Duration> {
    let err = || Error::Go(s.to_owned());
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let number: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += number * nanos_per_unit;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(err());
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Go's `time.Duration.String()` to the millisecond, as metav1.Duration serialises: `5m0s`, `30s`,
/// `1h0m0s`, `1.5s`.
pub fn format_go(duration: Duration) -> String {
    let total_ms = duration.as_millis();
    if total_ms == 0 {
        return "0s".to_owned();
    }
    let (hours, rest) = (total_ms / 3_600_000, total_ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let seconds = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        format!(
            "{}s",
            format!("{}.{:03}", rest / 1000, rest % 1000).trim_end_matches('0')
        )
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// Prometheus's duration syntax (`model.ParseDuration`): units y, w, d, h, m, s, ms in that order,
/// each at most once, or `0`.
pub fn parse_prometheus(text: &str) -> Result<Duration> {
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 24 * 3600 * 1000),
        ("w", 7 * 24 * 3600 * 1000),
        ("d", 24 * 3600 * 1000),
        ("h", 3600 * 1000),
        ("ms", 1),
        ("m", 60 * 1000),
        ("s", 1000),
    ];
    // The order units must appear in; "ms" is listed before "m" only so that it matches first.
    const ORDER: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    let err = || Error::Prometheus(text.to_owned());
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut millis: u64 = 0;
    let mut last = None;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let (unit, factor) = UNITS.iter().find(|(u, _)| rest.starts_with(u)).ok_or_else(err)?;
        let rank = ORDER.iter().position(|u| u == unit).ok_or_else(err)?;
        if last.is_some_and(|l| l >= rank) {
            return Err(err());
        }
        last = Some(rank);
        let add = number.checked_mul(*factor).ok_or_else(err)?;
        millis = millis.checked_add(add).ok_or_else(err)?;
        rest = &rest[unit.len()..];
    }
    last.map(|_| Duration::from_millis(millis)).ok_or_else(err)
}

/// Renders a duration as a PromQL range duration in its largest exact unit (`2m`, `90s`, `1500ms`).
pub fn format_prometheus(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax() {
        let cases = [
            ("2m", 120_000),
            ("10s", 10_000),
            ("1h30m", 5_400_000),
            ("1.5m", 90_000),
            ("300ms", 300),
            ("0", 0),
            ("1m30s", 90_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_go(text).unwrap(), Duration::from_millis(ms), "{text}");
        }
        for bad in ["", "2", "m", "2x", "-1s", "1..2s", "2 m"] {
            assert!(parse_go(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn go_strings() {
        assert_eq!(format_go(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_go(Duration::from_secs(30)), "30s");
        assert_eq!(format_go(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go(Duration::ZERO), "0s");
    }

    #[test]
    fn prometheus_syntax() {
        let parse = |s| parse_prometheus(s).ok();
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("1m500ms"), Some(Duration::from_millis(60_500)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("2d1w"), None);
        assert_eq!(parse("5"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("1.5m"), None);
    }

    #[test]
    fn prometheus_strings() {
        assert_eq!(format_prometheus(Duration::from_secs(120)), "2m");
        assert_eq!(format_prometheus(Duration::from_secs(90)), "90s");
        assert_eq!(format_prometheus(Duration::from_secs(7200)), "2h");
        assert_eq!(format_prometheus(Duration::from_millis(1500)), "1500ms");
    }
}
