//! Log timestamps as `SystemTime`: the combined format's
//! `10/Oct/2026:13:55:36 -0700` and RFC 3339. Integer calendar arithmetic,
//! no allocation. The combined format's fixed layout is read by position;
//! anything else falls back to a field-by-field reading.

use std::time::{Duration, SystemTime};

use super::{LineError, clip};

/// `10/Oct/2026:13:55:36 -0700`.
pub(super) fn parse_clf_time(s: &str) -> Result<SystemTime, LineError> {
    clf_fixed(s.as_bytes())
        .or_else(|| clf_fields(s))
        .and_then(to_system_time)
        .ok_or_else(|| LineError(format!("`{}` is not a log time", clip(s))))
}

/// The layout nginx and Apache write, `dd/Mon/yyyy:HH:MM:SS +hhmm`, read
/// by position: seconds since the epoch, or `None` for anything else.
fn clf_fixed(s: &[u8]) -> Option<i64> {
    let s: &[u8; 26] = s.try_into().ok()?;
    let separators = [
        (2, b'/'),
        (6, b'/'),
        (11, b':'),
        (14, b':'),
        (17, b':'),
        (20, b' '),
    ];
    if separators.iter().any(|&(at, sep)| s[at] != sep) {
        return None;
    }
    let clock = Clock {
        hours: digits(&s[12..14])?,
        minutes: digits(&s[15..17])?,
        seconds: digits(&s[18..20])?,
    };
    let day = digits(&s[0..2])?;
    let month = month_number(&s[3..6])?;
    let year = digits(&s[7..11])?;
    let utc = civil_seconds(i64::from(year), month, day, clock)?;
    Some(utc - zone_offset(&s[21..26])?)
}

/// The same time read field by field (days or hours of one digit, say).
fn clf_fields(s: &str) -> Option<i64> {
    let (date_time, zone) = s.split_once(' ')?;
    let mut it = date_time.splitn(4, [':', '/']);
    let day: u32 = it.next()?.parse().ok()?;
    let month = month_number(it.next()?.as_bytes())?;
    let year: i64 = it.next()?.parse().ok()?;
    let clock = Clock::parse(it.next()?)?;
    let utc = civil_seconds(year, month, day, clock)?;
    Some(utc - zone_offset(zone.as_bytes())?)
}

/// `2026-11-26T03:31:41Z`, `2026-11-26T03:31:41.25+01:00`.
pub(super) fn parse_rfc3339(s: &str) -> Result<SystemTime, LineError> {
    rfc3339(s).ok_or_else(|| LineError(format!("`{}` is not an RFC 3339 time", clip(s))))
}

fn rfc3339(s: &str) -> Option<SystemTime> {
    if !s.is_ascii() || s.len() < 20 {
        return None;
    }
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    d.next().is_none().then_some(())?;
    let zone_at = time.find(['Z', 'z', '+', '-']).filter(|&i| i >= 8)?;
    let (clock, zone) = time.split_at(zone_at);
    let (clock, nanos) = match clock.split_once('.') {
        Some((clock, fraction)) => (clock, fraction_nanos(fraction)?),
        None => (clock, 0),
    };
    let utc = civil_seconds(year, month, day, Clock::parse(clock)?)?;
    let offset = match zone {
        "Z" | "z" => 0,
        zone => rfc3339_offset(zone.as_bytes())?,
    };
    to_system_time(utc - offset)?.checked_add(Duration::from_nanos(nanos))
}

/// `+01:00`, or `+0100` as the combined format writes it.
fn rfc3339_offset(z: &[u8]) -> Option<i64> {
    match *z {
        [sign, h1, h2, b':', m1, m2] => zone_offset(&[sign, h1, h2, m1, m2]),
        _ => zone_offset(z),
    }
}

/// Decimal fractions of a second as nanoseconds (digits past the ninth are
/// dropped).
fn fraction_nanos(f: &str) -> Option<u64> {
    if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kept = &f.as_bytes()[..f.len().min(9)];
    let value = kept.iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
    Some(value * 10u64.pow(9 - kept.len() as u32))
}

/// A time of day.
#[derive(Clone, Copy)]
struct Clock {
    hours: u32,
    minutes: u32,
    seconds: u32,
}

impl Clock {
    /// `HH:MM:SS`.
    fn parse(s: &str) -> Option<Clock> {
        let mut c = s.split(':');
        let clock = Clock {
            hours: c.next()?.parse().ok()?,
            minutes: c.next()?.parse().ok()?,
            seconds: c.next()?.parse().ok()?,
        };
        c.next().is_none().then_some(clock)
    }
}

/// ASCII digits as a number (at most a few: no overflow).
fn digits(s: &[u8]) -> Option<u32> {
    s.iter().try_fold(0u32, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

fn month_number(m: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    MONTHS
        .iter()
        .position(|x| x[..] == *m)
        .map(|i| i as u32 + 1)
}

/// `+0100` / `-0700` as seconds east of UTC.
fn zone_offset(z: &[u8]) -> Option<i64> {
    let (sign, digits) = match z.split_first()? {
        (b'+', digits) => (1, digits),
        (b'-', digits) => (-1, digits),
        _ => return None,
    };
    let [h1, h2, m1, m2] = *digits else {
        return None;
    };
    let hours = i64::from(self::digits(&[h1, h2])?);
    let minutes = i64::from(self::digits(&[m1, m2])?);
    (hours < 24 && minutes < 60).then_some(sign * (hours * 3600 + minutes * 60))
}

/// Seconds since the epoch of a UTC calendar date and time of day.
fn civil_seconds(year: i64, month: u32, day: u32, clock: Clock) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1970..=9999).contains(&year) {
        return None;
    }
    let Clock {
        hours,
        minutes,
        seconds,
    } = clock;
    if day == 0 || day > days_in_month(year, month) || hours > 23 || minutes > 59 || seconds > 60 {
        return None;
    }
    let time_of_day = i64::from(hours * 3600 + minutes * 60 + seconds);
    Some(days_since_epoch(year, month, day) * 86_400 + time_of_day)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date (year ≥ 1970), by counting whole years
/// and months.
fn days_since_epoch(y: i64, m: u32, d: u32) -> i64 {
    let leap_days = |y: i64| (y - 1) / 4 - (y - 1) / 100 + (y - 1) / 400;
    let years = (y - 1970) * 365 + leap_days(y) - leap_days(1970);
    let months: i64 = (1..m).map(|mm| i64::from(days_in_month(y, mm))).sum();
    years + months + i64::from(d) - 1
}

fn to_system_time(secs: i64) -> Option<SystemTime> {
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::log::unix;

    #[test]
    fn calendar_arithmetic() {
        let midnight = Clock {
            hours: 0,
            minutes: 0,
            seconds: 0,
        };
        assert_eq!(days_since_epoch(1970, 1, 1), 0);
        assert_eq!(days_since_epoch(2000, 3, 1), 11_017);
        assert_eq!(days_since_epoch(2024, 12, 31), 20_088);
        assert!(civil_seconds(2023, 2, 29, midnight).is_none());
        assert!(civil_seconds(2024, 2, 29, midnight).is_some());
    }

    #[test]
    fn fixed_layout_and_field_reading_agree() {
        for s in [
            "10/Oct/2026:13:55:36 -0700",
            "01/Jan/1970:00:00:00 +0000",
            "29/Feb/2024:23:59:60 +0100",
            "31/Dec/9999:23:59:59 -2359",
            "26/Nov/2025:00:00:01 +0530",
        ] {
            let fixed = clf_fixed(s.as_bytes());
            assert!(fixed.is_some(), "{s}");
            assert_eq!(fixed, clf_fields(s), "{s}");
        }
        assert_eq!(
            unix(parse_clf_time("10/Oct/2026:13:55:36 -0700").unwrap()),
            1_791_665_736.0
        );
    }

    #[test]
    fn loose_layouts_still_read() {
        // One-digit fields are not the fixed layout but are a time.
        assert!(clf_fixed(b"1/Oct/2026:13:55:36 -0700").is_none());
        assert_eq!(
            parse_clf_time("1/Oct/2026:3:05:06 +0000").unwrap(),
            parse_clf_time("01/Oct/2026:03:05:06 +0000").unwrap()
        );
    }

    #[test]
    fn malformed_log_times_are_errors() {
        for s in [
            "",
            "10/Oct/2026:13:55:36",
            "10/Oct/2026:13:55:36 -07",
            "10/Oct/2026:13:55:36 -07000",
            "10/Oct/2026:13:55:36 *0700",
            "10/Oct/2026:13:55:36 +2400",
            "10/Oct/2026:13:55:36 +0060",
            "10/Foo/2026:13:55:36 -0700",
            "10/oct/2026:13:55:36 -0700",
            "31/Feb/2026:13:55:36 -0700",
            "00/Feb/2026:13:55:36 -0700",
            "10/Oct/1969:13:55:36 -0700",
            "01/Jan/1970:00:00:00 +0100",
            "10/Oct/2026:24:00:00 -0700",
            "10/Oct/2026:13:60:00 -0700",
            "10/Oct/2026:13:55:61 -0700",
            "10/Oct/2026:13:55:36:01 -0700",
            "10/Oct/2026 13:55:36 -0700",
            "1x/Oct/2026:13:55:36 -0700",
            "10/Oct/2026:13:5x:36 -0700",
            "10/Oct/2026:13:55:36 -07x0",
            "10/Oct/20é6:13:55:36 -0700",
            "10/Oct/2026:13:55:36\u{a0}-0700",
            "99999999999/Oct/2026:13:55:36 -0700",
        ] {
            assert!(parse_clf_time(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn rfc3339_times_parse() {
        let at = |s| unix(parse_rfc3339(s).unwrap());
        assert_eq!(at("2026-11-26T03:31:41.5+01:00"), 1_795_660_301.5);
        assert_eq!(at("2026-11-26T02:31:41.5Z"), 1_795_660_301.5);
        assert_eq!(at("2026-11-26t02:31:41z"), 1_795_660_301.0);
        assert_eq!(at("2026-11-26 02:31:41+0000"), 1_795_660_301.0);
        assert_eq!(at("2026-11-25T21:31:41-05:00"), 1_795_660_301.0);
        let t = parse_rfc3339("2026-11-26T02:31:41.1234567891Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
            123_456_789
        );
    }

    #[test]
    fn malformed_rfc3339_times_are_errors() {
        for s in [
            "",
            "yesterday",
            "2026-11-26",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-26T25:00:00Z",
            "2026-11-26-99T00:00:00Z",
            "2026-11-26T03:31:41.Z",
            "2026-11-26T03:31:41.5xZ",
            "2026-11-26T03:31:41+1:00",
            "2026-11-26T03:31:41+01:00:00",
            "2026-11-26T03:31:41+25:00",
            "2026-11-26T03:31:41",
            "2026-11-26T03:31:41 +01:00",
            "2026-11-26T03:31:4é+01:00",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_rfc3339(s).is_err(), "{s:?}");
        }
    }
}
