//! API authentication: a bearer token checked in constant time, failing closed when none is configured.

use crate::api::error::ApiError;

/// Checks `authorization` (the request's `Authorization` header) against the configured token.
///
/// No configured token refuses everything (503): the API never runs open by mistake. The
/// comparison takes the same time whatever the first differing byte is.
pub fn check_bearer(expected: Option<&str>, authorization: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = expected.filter(|t| !t.is_empty()) else {
        return Err(ApiError::NotConfigured(
            "API_TOKEN is not set; the API refuses every request until it is".into(),
        ));
    };
    let presented = authorization
        .and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "the bearer token is not valid".into(),
        ))
    }
}

/// Compares two byte strings without an early exit: the time depends only on the longer length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_token_passes() {
        assert_eq!(check_bearer(Some("s3cret"), Some("Bearer s3cret")), Ok(()));
        assert_eq!(
            check_bearer(Some("s3cret"), Some("bearer  s3cret ")),
            Ok(())
        );
    }

    #[test]
    fn missing_or_wrong_tokens_are_401() {
        for header in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic czNjcmV0"),
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Bearer S3CRET"),
            Some("s3cret"),
        ] {
            let e = check_bearer(Some("s3cret"), header).unwrap_err();
            assert_eq!(e.status(), 401, "{header:?}");
            assert_eq!(e.code(), "unauthorized");
            assert!(!e.to_string().contains("s3cret"), "never echo a token");
        }
    }

    #[test]
    fn no_configured_token_fails_closed() {
        for expected in [None, Some("")] {
            let e = check_bearer(expected, Some("Bearer anything")).unwrap_err();
            assert_eq!(e.status(), 503);
            assert_eq!(e.code(), "not_configured");
        }
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(!constant_time_eq(b"a\0", b"a"));
    }
}
