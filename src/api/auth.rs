//! API authentication: a bearer token checked in constant time, failing closed when none is configured.

use crate::api::error::ApiError;

/// Who is calling, by the token presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// `API_TOKEN`: the frontend's server. The per-lab routes only.
    Frontend,
    /// `OPERATOR_TOKEN`: every route, the fleet-wide ones included.
    Operator,
}

/// Which token a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create, status, end, extend: `API_TOKEN` or `OPERATOR_TOKEN`; needs `API_TOKEN` set.
    PerLab,
    /// List, stats, retry: they see every user's labs; `OPERATOR_TOKEN` only.
    Fleet,
}

/// Identifies the caller from `authorization` (the request's `Authorization` header) against
/// both configured tokens, each compared in constant time. Authentication comes before anything
/// else, the configuration's state included: a caller without a valid token learns nothing but
/// `401` (no token configured at all: nobody has a valid one, so the API never runs open).
pub fn authenticate(
    api_token: Option<&str>,
    operator_token: Option<&str>,
    authorization: Option<&str>,
) -> Result<Caller, ApiError> {
    let api_token = api_token.filter(|t| !t.trim().is_empty());
    let operator_token = operator_token.filter(|t| !t.trim().is_empty());
    let presented = authorization
        .and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
    // Both comparisons always run, so the time says nothing about which token was close.
    let is_operator =
        operator_token.is_some_and(|t| constant_time_eq(presented.as_bytes(), t.as_bytes()));
    let is_frontend =
        api_token.is_some_and(|t| constant_time_eq(presented.as_bytes(), t.as_bytes()));
    match (is_operator, is_frontend) {
        (true, _) => Ok(Caller::Operator),
        (false, true) => Ok(Caller::Frontend),
        (false, false) => Err(ApiError::Unauthorized(
            "the bearer token is not valid".into(),
        )),
    }
}

/// Whether an authenticated `caller` may use a route of `access`. The per-lab routes need
/// `API_TOKEN` configured (the operator learns it is missing: `503`); the fleet routes need the
/// operator's token.
pub fn authorize(caller: Caller, access: Access, api_token_set: bool) -> Result<(), ApiError> {
    match access {
        Access::PerLab if !api_token_set => Err(ApiError::NotConfigured(
            "API_TOKEN is not set; the per-lab routes refuse every request until it is".into(),
        )),
        Access::PerLab => Ok(()),
        Access::Fleet if caller == Caller::Operator => Ok(()),
        Access::Fleet => Err(ApiError::Forbidden(
            "this route sees every user's labs: it needs the operator token (OPERATOR_TOKEN), not API_TOKEN".into(),
        )),
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

    fn check(expected: Option<&str>, header: Option<&str>) -> Result<Caller, ApiError> {
        authenticate(expected, None, header)
    }

    #[test]
    fn the_right_token_passes() {
        assert_eq!(
            check(Some("s3cret"), Some("Bearer s3cret")),
            Ok(Caller::Frontend)
        );
        assert_eq!(
            check(Some("s3cret"), Some("bearer  s3cret ")),
            Ok(Caller::Frontend)
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
            let e = check(Some("s3cret"), header).unwrap_err();
            assert_eq!(e.status(), 401, "{header:?}");
            assert_eq!(e.code(), "unauthorized");
            assert!(!e.to_string().contains("s3cret"), "never echo a token");
        }
    }

    #[test]
    fn no_configured_token_fails_closed_with_401() {
        for expected in [None, Some(""), Some("  ")] {
            let e = check(expected, Some("Bearer anything")).unwrap_err();
            assert_eq!((e.status(), e.code()), (401, "unauthorized"));
            assert_eq!(check(expected, None).unwrap_err().status(), 401);
        }
    }

    #[test]
    fn two_tokens_two_callers() {
        let both = |h: &str| authenticate(Some("front"), Some("ops"), Some(h));
        assert_eq!(both("Bearer front"), Ok(Caller::Frontend));
        assert_eq!(both("Bearer ops"), Ok(Caller::Operator));
        assert_eq!(both("Bearer other").unwrap_err().status(), 401);
        // Only the operator token configured: it authenticates; nothing else does, and nobody
        // without it learns what is missing.
        assert_eq!(
            authenticate(None, Some("ops"), Some("Bearer ops")),
            Ok(Caller::Operator)
        );
        let e = authenticate(None, Some("ops"), Some("Bearer front")).unwrap_err();
        assert_eq!((e.status(), e.code()), (401, "unauthorized"));
    }

    #[test]
    fn the_fleet_routes_need_the_operator_token() {
        use Access::*;
        use Caller::*;
        assert_eq!(authorize(Operator, Fleet, true), Ok(()));
        assert_eq!(authorize(Operator, PerLab, true), Ok(()));
        assert_eq!(authorize(Frontend, PerLab, true), Ok(()));
        let e = authorize(Frontend, Fleet, true).unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "forbidden"));
        // The operator learns that API_TOKEN is missing.
        let e = authorize(Operator, PerLab, false).unwrap_err();
        assert_eq!((e.status(), e.code()), (503, "not_configured"));
        assert!(e.to_string().contains("API_TOKEN"));
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
