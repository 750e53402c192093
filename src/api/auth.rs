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

/// Which of its role's two values a caller presented: the current one, or during a rotation
/// the previous one (`API_TOKEN_PREVIOUS`, `OPERATOR_TOKEN_PREVIOUS`). Logged by name, never a
/// value or a part of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Current,
    Previous,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::Current => "current",
            Slot::Previous => "previous",
        }
    }
}

/// The configured token values, each `None` when unset or blank: per role the current value and,
/// during a rotation, the previous one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokens<'a> {
    pub api: Option<&'a str>,
    pub api_previous: Option<&'a str>,
    pub operator: Option<&'a str>,
    pub operator_previous: Option<&'a str>,
}

/// Identifies the caller from `authorization` (the request's `Authorization` header) against
/// every configured token value, each compared in constant time. Authentication comes before
/// anything else, the configuration's state included: a caller without a valid token learns
/// nothing but `401` (no token configured at all: nobody has a valid one, so the API never runs
/// open).
pub fn authenticate(
    tokens: &Tokens<'_>,
    authorization: Option<&str>,
) -> Result<(Caller, Slot), ApiError> {
    let presented = authorization
        .and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
    let matches = |value: Option<&str>| {
        value
            .filter(|t| !t.trim().is_empty())
            .is_some_and(|t| constant_time_eq(presented.as_bytes(), t.as_bytes()))
    };
    // Every comparison always runs, so the time says nothing about which value was close.
    let found = [
        (matches(tokens.operator), Caller::Operator, Slot::Current),
        (
            matches(tokens.operator_previous),
            Caller::Operator,
            Slot::Previous,
        ),
        (matches(tokens.api), Caller::Frontend, Slot::Current),
        (
            matches(tokens.api_previous),
            Caller::Frontend,
            Slot::Previous,
        ),
    ];
    found
        .into_iter()
        .find(|(hit, _, _)| *hit)
        .map(|(_, caller, slot)| (caller, slot))
        .ok_or_else(|| ApiError::Unauthorized("the bearer token is not valid".into()))
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
        let tokens = Tokens {
            api: expected,
            ..Tokens::default()
        };
        authenticate(&tokens, header).map(|(caller, _)| caller)
    }

    /// The two tokens of the roles, no rotation.
    fn two(api: Option<&str>, operator: Option<&str>, header: &str) -> Result<Caller, ApiError> {
        let tokens = Tokens {
            api,
            operator,
            ..Tokens::default()
        };
        authenticate(&tokens, Some(header)).map(|(caller, _)| caller)
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
        let both = |h: &str| two(Some("front"), Some("ops"), h);
        assert_eq!(both("Bearer front"), Ok(Caller::Frontend));
        assert_eq!(both("Bearer ops"), Ok(Caller::Operator));
        assert_eq!(both("Bearer other").unwrap_err().status(), 401);
        // Only the operator token configured: it authenticates; nothing else does, and nobody
        // without it learns what is missing.
        assert_eq!(two(None, Some("ops"), "Bearer ops"), Ok(Caller::Operator));
        let e = two(None, Some("ops"), "Bearer front").unwrap_err();
        assert_eq!((e.status(), e.code()), (401, "unauthorized"));
    }

    #[test]
    fn during_a_rotation_both_values_of_a_role_pass_and_name_their_slot() {
        let tokens = Tokens {
            api: Some("front-new"),
            api_previous: Some("front-old"),
            operator: Some("ops-new"),
            operator_previous: Some("ops-old"),
        };
        let who = |h: &str| authenticate(&tokens, Some(h));
        assert_eq!(
            who("Bearer front-new"),
            Ok((Caller::Frontend, Slot::Current))
        );
        assert_eq!(
            who("Bearer front-old"),
            Ok((Caller::Frontend, Slot::Previous))
        );
        assert_eq!(who("Bearer ops-new"), Ok((Caller::Operator, Slot::Current)));
        assert_eq!(
            who("Bearer ops-old"),
            Ok((Caller::Operator, Slot::Previous))
        );
        for wrong in [
            "Bearer front",
            "Bearer ops-ol",
            "Bearer front-old2",
            "Bearer ",
        ] {
            assert_eq!(who(wrong).unwrap_err().status(), 401, "{wrong}");
        }
        // The previous value removed: it fails; blank counts as unset.
        for gone in [None, Some(""), Some("  ")] {
            let after = Tokens {
                api_previous: gone,
                ..tokens
            };
            let e = authenticate(&after, Some("Bearer front-old")).unwrap_err();
            assert_eq!((e.status(), e.code()), (401, "unauthorized"));
            assert!(!e.to_string().contains("front"), "never echo a token");
        }
        // A previous operator value is still the operator, on the fleet routes too.
        let (caller, _) = who("Bearer ops-old").unwrap();
        assert_eq!(authorize(caller, Access::Fleet, true), Ok(()));
        let (caller, _) = who("Bearer front-old").unwrap();
        assert_eq!(
            authorize(caller, Access::Fleet, true).unwrap_err().status(),
            403
        );
        assert_eq!(Slot::Previous.name(), "previous");
        assert_eq!(Slot::Current.name(), "current");
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
