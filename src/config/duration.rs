//! Durations in config files: a number and a unit, like `250ms`, `10s`,
//! `1.5m` or `2h`. At most a week; timeouts at least a millisecond.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

const MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parse `<number><unit>` with unit `ms`, `s`, `m` or `h`, between 1ms and
/// a week.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let duration = parse_any(s)?;
    if duration < Duration::from_millis(1) {
        return Err(format!("`{s}`: a duration must be at least 1ms"));
    }
    Ok(duration)
}

fn parse_any(s: &str) -> Result<Duration, String> {
    let err = || format!("`{s}` is not a duration like \"250ms\", \"10s\", \"5m\" or \"1h\"");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| err())?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(err()),
    };
    let duration = Duration::try_from_secs_f64(seconds).map_err(|_| err())?;
    if duration > MAX {
        return Err(format!("`{s}`: a duration must be at most a week"));
    }
    Ok(duration)
}

/// `deserialize_with` helper for duration fields.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// `deserialize_with` helper for durations that may be zero (`"0s"`).
pub fn deserialize_allow_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    match parse_any(&s) {
        Ok(d) if d.is_zero() => Ok(d),
        _ => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

/// A duration between `min` and `max` (inclusive), for the key `what`.
pub fn deserialize_within<'de, D: Deserializer<'de>>(
    d: D,
    (min, max): (Duration, Duration),
    what: &str,
    range: &str,
) -> Result<Duration, D::Error> {
    let duration = deserialize(d)?;
    if !(min..=max).contains(&duration) {
        return Err(serde::de::Error::custom(format!(
            "{what} must be between {range}"
        )));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_any("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "", "s", "10", "10 s", "-1s", "1.2.3s", "10sec", "0s", "0.0001ms", "1e9h", "99999h",
            "NaNs", "ｓ",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
