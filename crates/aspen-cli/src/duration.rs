//! Human durations on the command line: `500ms`, `10s`, `1.5s`, `2m`, `1h30m`, `1d`; a
//! bare number is seconds.

use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write e.g. 10s, 500ms, 2m or 1h")]
    Empty,
    #[error("bad duration {input:?}: {problem}; write e.g. 10s, 500ms, 2m or 1h")]
    Bad { input: String, problem: String },
}

/// Parses a duration such as `10s`, `500ms`, `1.5s`, `1h30m`, or `30` (seconds).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let bad = |problem: String| DurationError::Bad { input: input.to_string(), problem };
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs).ok_or_else(|| bad(format!("{text} is not a usable number of seconds")));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(bad(format!("expected a number at {rest:?}")));
        }
        let unit_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let value: f64 = number.parse().map_err(|_| bad(format!("{number:?} is not a number")))?;
        let unit_secs = match unit {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(bad(format!("{number} has no unit (ms, s, m, h or d)"))),
            other => return Err(bad(format!("unknown unit {other:?} (use ms, s, m, h or d)"))),
        };
        let part = seconds(value * unit_secs).ok_or_else(|| bad("the duration is too large".into()))?;
        total = total.checked_add(part).ok_or_else(|| bad("the duration is too large".into()))?;
        rest = next;
    }
    Ok(total)
}

fn seconds(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}

/// Formats a duration compactly: `10s`, `1.5s`, `250ms`, `2m`, `1h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms.is_multiple_of(3_600_000) {
        return format!("{}h", ms / 3_600_000);
    }
    if ms.is_multiple_of(60_000) {
        return format!("{}m", ms / 60_000);
    }
    if ms.is_multiple_of(1000) {
        return format!("{}s", ms / 1000);
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_units_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn fractions_compounds_and_bare_seconds_parse() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn bad_durations_name_the_problem() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        let err = parse_duration("10x").unwrap_err().to_string();
        assert!(err.contains("unknown unit \"x\""), "{err}");
        let err = parse_duration("s").unwrap_err().to_string();
        assert!(err.contains("expected a number"), "{err}");
        assert!(parse_duration("-5").is_err());
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("10s5").is_err());
    }

    #[test]
    fn durations_format_compactly() {
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}
