//! Times as the worker writes and reads them: RFC 3339 in UTC with milliseconds, the RFC 3339 times a caller or a backend sends, and calendar dates; on the proleptic Gregorian calendar, in epoch milliseconds.
//!
//! Written out (the days-from-civil arithmetic of Howard Hinnant's date algorithms) rather than
//! with chrono, which cost the wasm about 3 KB gzipped for these three uses; the unit tests check
//! every function against chrono on random input.

/// Days from 1970-01-01 to `year-month-day` (a valid date).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01: (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days in `month` of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// The weekday of a day since 1970-01-01, Monday 0 … Sunday 6.
pub fn weekday(days: i64) -> u32 {
    // 1970-01-01 was a Thursday (3).
    (days + 3).rem_euclid(7) as u32
}

/// Epoch milliseconds of a date and time (valid fields; `second` up to 60, a leap second).
pub fn epoch_ms(date: (i64, u32, u32), hour: u32, minute: u32, second: u32) -> i64 {
    let days = days_from_civil(date.0, date.1, date.2);
    let seconds = days * 86_400 + i64::from(hour * 3_600 + minute * 60 + second);
    seconds * 1_000
}

/// `units` of `unit_ms` each, in ms, saturating (a `duration` in minutes as a span of time).
pub fn units_ms(units: u64, unit_ms: i64) -> i64 {
    i64::try_from(units)
        .unwrap_or(i64::MAX)
        .saturating_mul(unit_ms)
}

/// Years this worker writes and reads: four digits, as RFC 3339 has them.
const YEARS: std::ops::RangeInclusive<i64> = 0..=9_999;

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision, e.g.
/// `2026-11-26T12:00:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    if !YEARS.contains(&year) {
        return format!("invalid-time({ms})");
    }
    let (h, m, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// Reads an RFC 3339 time (`2026-11-27T10:00:00Z`, `2026-11-27t10:00:00.5+01:00`, a space for
/// the `T`) as epoch milliseconds, fractions of a millisecond dropped; `None` when it is not one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |at: usize, n: usize| -> Option<u32> {
        let part = b.get(at..at + n)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |v, d| v * 10 + u32::from(d - b'0')))
    };
    let year = i64::from(digits(0, 4)?);
    let month = digits(5, 2)?;
    let day = digits(8, 2)?;
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut milli = 0;
    if b.get(at) == Some(&b'.') {
        let fraction = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if fraction == 0 {
            return None;
        }
        for (i, d) in b[at + 1..at + 1 + fraction.min(3)].iter().enumerate() {
            milli += i64::from(d - b'0') * [100, 10, 1][i];
        }
        at += 1 + fraction;
    }
    let offset_minutes = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == b.len() && b[at + 3] == b':' => {
            let (h, m) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = i64::from(h * 60 + m);
            if *sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    Some(epoch_ms((year, month, day), hour, minute, second) + milli - offset_minutes * 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat};
    use proptest::prelude::*;

    #[test]
    fn known_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MAX), format!("invalid-time({})", i64::MAX));
        assert_eq!(
            parse_rfc3339("2026-11-27T10:00:00Z"),
            Some(1_795_773_600_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-27t11:00:00.5+01:00"),
            Some(1_795_773_600_500)
        );
        for bad in [
            "",
            "2026-11-27",
            "2026-02-29T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T10:00:00",
            "2026-11-27T10:00:00.Z",
            "2026-11-27T10:00:00+0100",
            "2026-11-27T10:00:00Z ",
            "２026-11-27T10:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
        assert_eq!(weekday(0), 3, "a Thursday");
    }

    proptest! {
        #[test]
        fn formatting_agrees_with_chrono(ms in -62_135_596_800_000i64..253_402_300_799_999) {
            let chrono = DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            prop_assert_eq!(rfc3339(ms), chrono);
        }

        #[test]
        fn dates_agree_with_chrono(days in -719_162i64..2_932_896) {
            let date = NaiveDate::from_num_days_from_ce_opt(days as i32 + 719_163).unwrap();
            prop_assert_eq!(
                civil_from_days(days),
                (i64::from(date.year()), date.month(), date.day())
            );
            prop_assert_eq!(days_from_civil(i64::from(date.year()), date.month(), date.day()), days);
            prop_assert_eq!(weekday(days), date.weekday().num_days_from_monday());
            prop_assert_eq!(
                days_in_month(i64::from(date.year()), date.month()),
                date.with_day(1).and_then(|d| {
                    let next = if d.month() == 12 {
                        NaiveDate::from_ymd_opt(d.year() + 1, 1, 1)
                    } else {
                        NaiveDate::from_ymd_opt(d.year(), d.month() + 1, 1)
                    };
                    next.map(|n| (n - d).num_days() as u32)
                }).unwrap()
            );
        }

        #[test]
        fn parsing_agrees_with_chrono(
            y in 0u32..10_000, mo in 0u32..14, d in 0u32..33, h in 0u32..26, mi in 0u32..62,
            s in 0u32..62, frac in proptest::option::of("[0-9]{1,12}"),
            sep in prop::sample::select(vec!['T', 't', ' ', 'x']),
            zone in prop::sample::select(vec![
                "Z".to_string(), "z".to_string(), "+01:00".to_string(), "-23:59".to_string(),
                "+24:00".to_string(), "+05:60".to_string(), "".to_string(), "+0100".to_string(),
            ]),
        ) {
            let text = format!(
                "{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{}{zone}",
                frac.map(|f| format!(".{f}")).unwrap_or_default()
            );
            let chrono = DateTime::parse_from_rfc3339(&text).ok().map(|t| t.timestamp_millis());
            prop_assert_eq!(parse_rfc3339(&text), chrono, "{}", text);
        }

        #[test]
        fn any_text_parses_as_chrono_does_or_not_at_all(text in "\\PC{0,40}") {
            let chrono = DateTime::parse_from_rfc3339(&text).ok().map(|t| t.timestamp_millis());
            prop_assert_eq!(parse_rfc3339(&text), chrono);
        }
    }
}
