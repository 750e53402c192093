//! When the next cleanup attempt runs: the backend's `Retry-After`, the retry pause, jitter, and the spread of first attempts.
//!
//! Pure: the time and the random numbers come in as arguments (`rand` in `[0, 1)`), so tests are
//! deterministic. The adaptive policy is the default; `RETRY_POLICY=fixed` keeps the original one
//! (a fixed pause after every failing attempt, no `Retry-After`, no stop, no jitter) for
//! comparison in the benchmark.

pub use crate::lab::config::Policy;
use crate::lab::session::Ending;

/// A `Retry-After` is honored for at least this long: the backend asked for a pause.
pub const MIN_RETRY_AFTER_MS: i64 = 1_000;
/// ... and for at most this long: a larger value is taken as this (a lab is never parked for a
/// day on the word of an overloaded backend).
pub const MAX_RETRY_AFTER_MS: i64 = 3_600_000;
/// The retry pause is spread uniformly over ±this fraction, so labs that failed together do not
/// come back together.
pub const PAUSE_JITTER: f64 = 0.2;
/// A connection that fails before any answer is tried once more in the same attempt after a
/// pause drawn from this range (milliseconds).
pub const RECONNECT_PAUSE_MS: (u64, u64) = (100, 1_000);

/// Reads a `Retry-After` value, delta-seconds (`"120"`) or an HTTP date
/// (`"Wed, 21 Oct 2026 07:28:00 GMT"`), as a wait in milliseconds from `now_ms`, within
/// `[MIN_RETRY_AFTER_MS, MAX_RETRY_AFTER_MS]`. `None` for a value that is neither.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<i64> {
    let value = value.trim();
    let wait_ms = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Delta-seconds; absurdly long digit strings saturate.
        value
            .parse::<i64>()
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
    } else {
        http_date_ms(value)?.saturating_sub(now_ms)
    };
    Some(wait_ms.clamp(MIN_RETRY_AFTER_MS, MAX_RETRY_AFTER_MS))
}

/// Reads an HTTP date in the format every sender must use (RFC 9110 IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`) as epoch milliseconds. Written out rather than with chrono's
/// RFC 2822 parser, which would add about 18 KB to the worker.
fn http_date_ms(value: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let (weekday, rest) = value.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let number = |text: &str, digits: usize| -> Option<u32> {
        (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    use crate::lab::time::{days_from_civil, days_in_month, epoch_ms, weekday as day_of_week};
    let month = MONTHS.iter().position(|m| m == month)? as u32 + 1;
    let (year, day) = (i64::from(number(year, 4)?), number(day, 2)?);
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let [h, m, s] = time.split(':').collect::<Vec<_>>()[..] else {
        return None;
    };
    let (h, m, s) = (number(h, 2)?, number(m, 2)?, number(s, 2)?);
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    // The weekday must agree with the date: a mangled date is no date.
    let days = days_from_civil(year, month, day);
    (DAYS.get(day_of_week(days) as usize) == Some(&weekday))
        .then(|| epoch_ms((year, month, day), h, m, s))
}

/// When the next attempt runs, for an attempt that ended at `end_ms`.
///
/// - fixed: `end + retry` exactly;
/// - adaptive, refused with `Retry-After` RA: uniformly in `[end + RA, end + 2 RA]` (never before
///   RA; the spread over a whole RA was measured to refuse far fewer calls than ±20 % when a
///   class of labs comes back together, see docs/PERFORMANCE.md);
/// - adaptive, any other failure (a refusal without `Retry-After` included): `end + retry ± 20 %`.
pub fn next_attempt_at(
    policy: Policy,
    ending: Ending,
    end_ms: i64,
    retry_ms: i64,
    rand: f64,
) -> Option<i64> {
    let rand = rand.clamp(0.0, 1.0);
    let wait_ms = match (policy, ending) {
        (_, Ending::Done) => return None,
        (_, Ending::Continued) => CONTINUE_MS,
        (Policy::Fixed, _) => retry_ms,
        (
            Policy::Adaptive,
            Ending::Refused {
                retry_after_ms: Some(ra),
            },
        ) => ra.saturating_add((ra as f64 * rand) as i64),
        (Policy::Adaptive, _) => {
            let spread = retry_ms as f64 * PAUSE_JITTER;
            (retry_ms as f64 - spread + 2.0 * spread * rand).round() as i64
        }
    };
    Some(end_ms.saturating_add(wait_ms.max(1)))
}

/// How long after an attempt that its invocation's limits cut short the next one starts.
pub const CONTINUE_MS: i64 = 1_000;

/// The longest a lab whose calls keep timing out waits between attempts: `CLEANUP_RETRY_SECONDS`
/// doubled per attempt that timed out in a row, at most this many times over (and an hour).
pub const TIMEOUT_BACKOFF_MAX_FACTOR: i64 = 8;

/// The pause after the `streak`-th attempt in a row whose calls timed out (budget on): `retry`
/// doubled per attempt, capped at `TIMEOUT_BACKOFF_MAX_FACTOR` times and `MAX_RETRY_AFTER_MS`,
/// plus up to 20 % of jitter, and never less than `retry` (`rand` in `[0, 1)`).
pub fn timeout_backoff_ms(retry_ms: i64, streak: u32, rand: f64) -> i64 {
    let factor = 1i64 << streak.saturating_sub(1).min(3);
    let base = retry_ms
        .saturating_mul(factor.min(TIMEOUT_BACKOFF_MAX_FACTOR))
        .min(MAX_RETRY_AFTER_MS.max(retry_ms));
    base.saturating_add((base as f64 * PAUSE_JITTER * rand.clamp(0.0, 1.0)) as i64)
        .max(retry_ms)
}

/// The delay of a lab's first attempt after its expiry: uniform in `[0, spread_ms)` under the
/// adaptive policy, so a class that expires in the same second does not call the backend in the
/// same second. Never negative: no attempt before the expiry.
pub fn first_attempt_delay(policy: Policy, spread_ms: i64, rand: f64) -> i64 {
    match policy {
        Policy::Fixed => 0,
        Policy::Adaptive => (spread_ms.max(0) as f64 * rand.clamp(0.0, 1.0)) as i64,
    }
}

/// An attempt whose alarm fires this much later than planned is late: the runtime was paused
/// or restarted (an outage, a deploy), and every lab that fell due meanwhile fires at once.
/// Alarms otherwise fire within a second or two of their time.
pub const LATE_AFTER_MS: i64 = 30_000;
/// The longest a late attempt is put off to spread such a burst.
pub const LATE_SPREAD_MAX_MS: i64 = 60_000;

/// How long to put off an attempt `late_ms` past its time (adaptive policy): uniform in
/// `[0, min(late, LATE_SPREAD_MAX_MS))`, so the labs that fell due during a pause start over
/// about as long as they took to fall due (at most a minute more), instead of all in the
/// same second on the one budget coordinator and the backend. `None`: not late, start now.
pub fn late_start_delay(policy: Policy, late_ms: i64, rand: f64) -> Option<i64> {
    if policy == Policy::Fixed || late_ms <= LATE_AFTER_MS {
        return None;
    }
    let spread = late_ms.min(LATE_SPREAD_MAX_MS);
    Some((spread as f64 * rand.clamp(0.0, 1.0)) as i64)
}

/// The pause before the one reconnect of a call whose connection failed before any answer.
pub fn reconnect_pause_ms(rand: f64) -> u64 {
    let (low, high) = RECONNECT_PAUSE_MS;
    low + ((high - low) as f64 * rand.clamp(0.0, 1.0)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000_000;

    #[test]
    fn a_late_attempt_is_spread_over_how_late_it_is_at_most_a_minute() {
        let a = Policy::Adaptive;
        assert_eq!(late_start_delay(a, 0, 0.5), None);
        assert_eq!(late_start_delay(a, LATE_AFTER_MS, 0.99), None);
        assert_eq!(late_start_delay(Policy::Fixed, 600_000, 0.5), None);
        assert_eq!(late_start_delay(a, 40_000, 0.5), Some(20_000));
        assert_eq!(late_start_delay(a, 40_000, 0.0), Some(0));
        assert_eq!(late_start_delay(a, 3_600_000, 0.999), Some(59_940));
        assert_eq!(late_start_delay(a, i64::MAX, 2.0), Some(LATE_SPREAD_MAX_MS));
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(parse_retry_after("2", NOW), Some(2_000));
        assert_eq!(parse_retry_after(" 120 ", NOW), Some(120_000));
        assert_eq!(
            parse_retry_after("0", NOW),
            Some(1_000),
            "never sooner than 1 s"
        );
        assert_eq!(
            parse_retry_after("86400", NOW),
            Some(3_600_000),
            "at most 1 h"
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", NOW),
            Some(3_600_000)
        );
    }

    #[test]
    fn http_dates_are_read_exactly() {
        // RFC 9110's own example.
        assert_eq!(
            http_date_ms("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        for bad in [
            "Mon, 06 Nov 1994 08:49:37 GMT", // wrong weekday
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(http_date_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates_at_every_edge_of_a_field() {
        // The last valid value of each field is read as chrono reads it; one past it is no date.
        let chrono = |text: &str| {
            chrono::DateTime::parse_from_rfc2822(text)
                .ok()
                .map(|d| d.timestamp_millis())
        };
        for good in [
            "Sat, 31 Jan 2026 23:59:59 GMT",
            "Sat, 28 Feb 2026 00:00:00 GMT",
            "Thu, 29 Feb 2024 12:00:00 GMT",
            "Thu, 30 Apr 2026 23:59:00 GMT",
            "Thu, 31 Dec 2026 00:59:59 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
        ] {
            assert!(chrono(good).is_some(), "{good}");
            assert_eq!(http_date_ms(good), chrono(good), "{good}");
        }
        for bad in [
            "Sun, 01 Mar 2026 24:00:00 GMT",
            "Sat, 28 Feb 2026 23:60:00 GMT",
            "Sat, 28 Feb 2026 23:59:60 GMT",
            "Sun, 29 Feb 2026 12:00:00 GMT",
            "Fri, 31 Apr 2026 12:00:00 GMT",
            "Sun, 00 Mar 2026 12:00:00 GMT",
            "Sun, 32 Jan 2026 12:00:00 GMT",
            "Sat, 28 Feb 2026 23:59 GMT",
            "Sat, 28 Feb 2026 3:59:59 GMT",
        ] {
            assert_eq!(http_date_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_as_an_http_date() {
        use chrono::DateTime;
        // NOW is 2026-11-18T...; 90 s later as an IMF-fixdate.
        let at = DateTime::from_timestamp_millis(NOW + 90_000).unwrap();
        let text = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        assert_eq!(parse_retry_after(&text, NOW), Some(90_000));
        // A date in the past: come back as soon as allowed.
        let past = DateTime::from_timestamp_millis(NOW - 60_000).unwrap();
        let text = past.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        assert_eq!(parse_retry_after(&text, NOW), Some(1_000));
        let far = DateTime::from_timestamp_millis(NOW + 86_400_000).unwrap();
        let text = far.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        assert_eq!(parse_retry_after(&text, NOW), Some(3_600_000));
    }

    #[test]
    fn unreadable_retry_after_is_ignored() {
        for bad in ["", "soon", "-5", "1.5", "2 s", "Mon, 99 Foo 2026"] {
            assert_eq!(parse_retry_after(bad, NOW), None, "{bad:?}");
        }
    }

    #[test]
    fn fixed_policy_is_the_original_pause() {
        for ending in [
            Ending::Failed,
            Ending::Refused {
                retry_after_ms: Some(2_000),
            },
            Ending::Refused {
                retry_after_ms: None,
            },
        ] {
            for rand in [0.0, 0.5, 0.999] {
                assert_eq!(
                    next_attempt_at(Policy::Fixed, ending, NOW, 300_000, rand),
                    Some(NOW + 300_000)
                );
            }
        }
        assert_eq!(first_attempt_delay(Policy::Fixed, 5_000, 0.9), 0);
    }

    #[test]
    fn a_retry_after_is_honored_and_spread_over_one_more_of_it() {
        let refused = Ending::Refused {
            retry_after_ms: Some(2_000),
        };
        assert_eq!(
            next_attempt_at(Policy::Adaptive, refused, NOW, 300_000, 0.0),
            Some(NOW + 2_000),
            "exactly the Retry-After at the low end"
        );
        assert_eq!(
            next_attempt_at(Policy::Adaptive, refused, NOW, 300_000, 0.5),
            Some(NOW + 3_000)
        );
        let high = next_attempt_at(Policy::Adaptive, refused, NOW, 300_000, 0.999_999).unwrap();
        assert!(
            (NOW + 3_999..=NOW + 4_000).contains(&high),
            "{}",
            high - NOW
        );
        // Never before the Retry-After, whatever the random number.
        for i in 0..1000 {
            let rand = i as f64 / 1000.0;
            let at = next_attempt_at(Policy::Adaptive, refused, NOW, 300_000, rand).unwrap();
            assert!(
                (NOW + 2_000..NOW + 4_000).contains(&at),
                "{rand}: {}",
                at - NOW
            );
        }
    }

    #[test]
    fn other_failures_keep_the_pause_within_twenty_percent() {
        for ending in [
            Ending::Failed,
            Ending::Refused {
                retry_after_ms: None,
            },
        ] {
            assert_eq!(
                next_attempt_at(Policy::Adaptive, ending, NOW, 300_000, 0.0),
                Some(NOW + 240_000)
            );
            assert_eq!(
                next_attempt_at(Policy::Adaptive, ending, NOW, 300_000, 0.5),
                Some(NOW + 300_000)
            );
            for i in 0..1000 {
                let rand = i as f64 / 1000.0;
                let at = next_attempt_at(Policy::Adaptive, ending, NOW, 300_000, rand).unwrap();
                assert!((NOW + 240_000..=NOW + 360_000).contains(&at));
            }
        }
        // Out-of-range random numbers are clamped, never a negative pause.
        assert_eq!(
            next_attempt_at(Policy::Adaptive, Ending::Failed, NOW, 1_000, -3.0),
            Some(NOW + 800)
        );
        assert_eq!(
            next_attempt_at(Policy::Adaptive, Ending::Failed, NOW, 1_000, 7.0),
            Some(NOW + 1_200)
        );
    }

    #[test]
    fn done_has_no_next_attempt() {
        assert_eq!(
            next_attempt_at(Policy::Adaptive, Ending::Done, NOW, 1, 0.3),
            None
        );
        assert_eq!(
            next_attempt_at(Policy::Fixed, Ending::Done, NOW, 1, 0.3),
            None
        );
    }

    #[test]
    fn first_attempts_spread_after_the_expiry_never_before() {
        assert_eq!(first_attempt_delay(Policy::Adaptive, 5_000, 0.0), 0);
        assert_eq!(first_attempt_delay(Policy::Adaptive, 5_000, 0.5), 2_500);
        assert_eq!(first_attempt_delay(Policy::Adaptive, 0, 0.9), 0);
        assert_eq!(first_attempt_delay(Policy::Adaptive, -5, 0.9), 0);
        for i in 0..100 {
            let d = first_attempt_delay(Policy::Adaptive, 5_000, i as f64 / 100.0);
            assert!((0..5_000).contains(&d));
        }
    }

    #[test]
    fn reconnect_pauses_are_short() {
        assert_eq!(reconnect_pause_ms(0.0), 100);
        assert_eq!(reconnect_pause_ms(1.0), 1_000);
        assert!((100..=1_000).contains(&reconnect_pause_ms(0.37)));
    }

    #[test]
    fn policy_names() {
        assert_eq!(Policy::parse("adaptive"), Some(Policy::Adaptive));
        assert_eq!(Policy::parse(" fixed "), Some(Policy::Fixed));
        assert_eq!(Policy::parse("exponential"), None);
    }
}
