//! Text from outside made safe to show: control, format and line-separator characters escaped, lengths bounded.
//!
//! A backend's error body, a `vm.name` or a value adopted from the previous worker may hold a
//! newline (a forged log line), U+202E (text that reads backwards) or U+2028 (a line break in a
//! JavaScript string). Every log line, the index's `last_error` and the dashboard show such a
//! character as `\u{202e}` instead.

use std::borrow::Cow;

pub use crate::lab::time::rfc3339;

/// Unicode's format characters (general category Cf, Unicode 15.0), as inclusive ranges.
const FORMAT: [(u32, u32); 21] = [
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Whether `c` must not reach a log line or a page as it is: a control character (Cc), a format
/// character (Cf: bidi overrides, zero-width characters, ...), or U+2028/U+2029.
pub fn is_unsafe(c: char) -> bool {
    let cp = c as u32;
    c.is_control()
        || cp == 0x2028
        || cp == 0x2029
        || FORMAT.iter().any(|&(lo, hi)| (lo..=hi).contains(&cp))
}

/// `text` with every unsafe character written as `\u{hex}` (lower case, as Rust writes it).
/// Borrowed when there is nothing to escape, which is almost always.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// At most `max_chars` characters of `text`; a shortened text ends with `…` (counted).
pub fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    if max_chars == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `units` of the API's `duration` (`DURATION_UNIT_SECONDS` each, `unit_ms`) in words for a log
/// line: minutes where a unit is a minute (production), else the seconds they make (a local
/// run with short units), never "minutes" that are not.
pub fn duration_units(units: u64, unit_ms: i64) -> String {
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    if unit_ms == 60_000 {
        return format!("{units} minute{}", plural(units));
    }
    let seconds = i64::try_from(units)
        .unwrap_or(i64::MAX)
        .saturating_mul(unit_ms)
        / 1000;
    format!("{units} duration unit{} ({seconds} s)", plural(units))
}

/// `text` escaped, then at most `max_chars` characters: what the record and the index keep of an
/// error from outside.
pub fn safe(text: &str, max_chars: usize) -> String {
    shorten(&escape(text), max_chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_units_say_minutes_only_where_they_are() {
        assert_eq!(duration_units(1, 60_000), "1 minute");
        assert_eq!(duration_units(30, 60_000), "30 minutes");
        assert_eq!(duration_units(30, 1_000), "30 duration units (30 s)");
        assert_eq!(duration_units(1, 1_000), "1 duration unit (1 s)");
        assert_eq!(
            duration_units(u64::MAX, i64::MAX),
            format!("{} duration units ({} s)", u64::MAX, i64::MAX / 1000)
        );
    }

    #[test]
    fn controls_bidi_and_separators_are_escaped() {
        assert_eq!(
            escape("a\nb\u{202e}c\u{2028}d\u{2029}e\u{7f}f\u{200b}g\u{feff}"),
            "a\\u{a}b\\u{202e}c\\u{2028}d\\u{2029}e\\u{7f}f\\u{200b}g\\u{feff}"
        );
        assert_eq!(
            escape("\u{e0041}\u{13439}\u{9c}"),
            "\\u{e0041}\\u{13439}\\u{9c}"
        );
    }

    #[test]
    fn ordinary_text_is_borrowed_as_it_is() {
        for text in [
            "✅ Successfully deleted all 3 VMs",
            "⚠️ 1 of 3 VMs not deleted",
            "Ünïcödé 日本語 🎉",
            "k8s-master-abc-123",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn shortened_text_says_so() {
        assert_eq!(shorten("abcdef", 6), "abcdef");
        assert_eq!(shorten("abcdefg", 6), "abcde…");
        assert_eq!(shorten("日本語テキスト", 3), "日本…");
        assert_eq!(shorten("abc", 0), "");
        assert_eq!(shorten("abc", 1), "…");
        assert_eq!(safe("a\nbcdef", 5), "a\\u{…");
    }
}
