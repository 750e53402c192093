//! The public routes: maps a method and path to a `Route`, or to a 404/405 `ApiError`.

use crate::error::ApiError;

/// Path of the collection of lab sessions.
pub const SESSIONS_PATH: &str = "/api/v1/labs/sessions";

/// A request the API serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/v1/labs/sessions`: schedule a lab's cleanup.
    CreateSession,
}

/// Every path the API serves with its allowed methods, for 405 answers and for the docs.
pub const ROUTES: &[(&str, &[&str])] = &[(SESSIONS_PATH, &["POST"])];

/// Finds the route for `method` and `path`. A trailing slash is not significant.
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    match (method, trimmed) {
        ("POST", SESSIONS_PATH) => Ok(Route::CreateSession),
        _ => match ROUTES.iter().find(|(p, _)| *p == trimmed) {
            Some((_, methods)) => Err(ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: trimmed.to_string(),
                allow: methods.join(", "),
            }),
            None => Err(ApiError::NotFound(format!("no route for {trimmed}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_session_is_routed() {
        assert_eq!(route("POST", SESSIONS_PATH), Ok(Route::CreateSession));
        assert_eq!(
            route("POST", "/api/v1/labs/sessions/"),
            Ok(Route::CreateSession)
        );
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        for method in ["GET", "PUT", "DELETE", "PATCH"] {
            let e = route(method, SESSIONS_PATH).unwrap_err();
            assert_eq!(e.status(), 405, "{method}");
            assert_eq!(e.headers(), vec![("Allow", "POST".to_string())]);
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/",
            "/api",
            "/api/v1/labs",
            "/api/v1/labs/sessionsX",
            "/API/V1/LABS/SESSIONS",
        ] {
            let e = route("POST", path).unwrap_err();
            assert_eq!(e.code(), "not_found", "{path}");
        }
    }
}
