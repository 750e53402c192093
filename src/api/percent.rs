//! Percent-decoding of a path segment or a query string's parts: the one decoder of the API.

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, as forms send query
/// strings); `None` for a malformed escape or a result that is not UTF-8. Works on bytes: any
/// input, multi-byte characters included, is read without slicing a string.
pub fn decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let digit = |b: u8| (b as char).to_digit(16);
                out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_plus() {
        assert_eq!(decode("user%40x%3A1", false).as_deref(), Some("user@x:1"));
        assert_eq!(decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(decode("%C3%A9", true).as_deref(), Some("é"));
        assert_eq!(decode("é%20", true).as_deref(), Some("é "));
        for bad in ["%", "%2", "%zz", "%+1", "%ff", "%C3", "%%"] {
            assert_eq!(decode(bad, true), None, "{bad}");
        }
    }
}
