//! Configuration: every `[vars]` entry and secret is read and checked here, and nowhere else.

use thiserror::Error;

/// Default seconds between cleanup attempts while any VM is still undeleted.
pub const DEFAULT_CLEANUP_RETRY_SECONDS: u64 = 300;
/// Default seconds in one unit of `duration` (a minute). Tests shrink it; production never does.
pub const DEFAULT_DURATION_UNIT_SECONDS: u64 = 60;
/// Default cap on a lab's lifetime, in `duration` units: 7 days of minutes.
pub const DEFAULT_MAX_DURATION_MINUTES: u64 = 10_080;
/// The Workers platform allows at most 6 simultaneous open outbound connections per invocation
/// (<https://developers.cloudflare.com/workers/platform/limits/#simultaneous-open-connections>).
pub const MAX_CONCURRENT_CONNECTIONS: usize = 6;
/// Default cap on worker nodes per lab: 48 workers + the master VM + the services call is 50
/// subrequests, the free plan's per-invocation limit
/// (<https://developers.cloudflare.com/workers/platform/limits/#subrequests>).
pub const DEFAULT_MAX_WORKER_NODES: usize = 48;
/// Default days a completed session's record is kept for status queries.
pub const DEFAULT_RETENTION_DAYS: u64 = 7;
/// Seconds in one unit of `RETENTION_DAYS` (a day). Tests shrink it; production never does.
pub const DEFAULT_RETENTION_UNIT_SECONDS: u64 = 86_400;
/// Default timeout of one backend call.
pub const DEFAULT_BACKEND_TIMEOUT_SECONDS: u64 = 15;

/// What can be wrong with the configuration. Messages name the setting, never a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{name} must be {expected} (got {value:?})")]
    Invalid {
        name: &'static str,
        expected: String,
        value: String,
    },
}

/// The checked configuration of the worker and of the `SessionManager` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the lab backend, without a trailing slash.
    pub backend_url: String,
    /// Sent as `Authorization: Bearer <token>` on every backend call when set.
    pub backend_api_token: Option<String>,
    /// The token API callers must present (`Authorization: Bearer`); `None` refuses every call.
    pub api_token: Option<String>,
    /// `DRY_RUN = "true"`: the cleanup logs the calls it would make and makes none.
    pub dry_run: bool,
    pub cleanup_retry_seconds: u64,
    pub duration_unit_seconds: u64,
    pub max_duration_minutes: u64,
    pub max_worker_nodes: usize,
    /// VM deletions in flight at once (1 = one by one, the old behaviour).
    pub cleanup_concurrency: usize,
    pub backend_timeout_seconds: u64,
    pub retention_days: u64,
    pub retention_unit_seconds: u64,
}

impl Config {
    /// Reads and checks every setting through `get` (a `[vars]`/secret lookup by name).
    ///
    /// Empty values count as unset, so a blank `[vars]` entry falls back to the default (or is
    /// reported missing where there is none).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());

        let backend_url = get("BACKEND_URL").ok_or(ConfigError::Missing("BACKEND_URL"))?;
        let backend_url = backend_url.trim().trim_end_matches('/').to_string();
        if !(backend_url.starts_with("http://") || backend_url.starts_with("https://"))
            || backend_url.contains(char::is_whitespace)
        {
            return Err(ConfigError::Invalid {
                name: "BACKEND_URL",
                expected: "an http:// or https:// URL".into(),
                value: backend_url,
            });
        }

        let number = |name: &'static str, default: u64, min: u64, max: u64| match get(name) {
            None => Ok(default),
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ConfigError::Invalid {
                    name,
                    expected: format!("a whole number from {min} to {max}"),
                    value: raw,
                }),
            },
        };

        Ok(Config {
            backend_url,
            backend_api_token: get("BACKEND_API_TOKEN"),
            api_token: get("API_TOKEN"),
            dry_run: match get("DRY_RUN").as_deref().map(str::trim) {
                None | Some("false") | Some("0") => false,
                Some("true") | Some("1") => true,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        name: "DRY_RUN",
                        expected: "\"true\" or \"false\"".into(),
                        value: other.to_string(),
                    })
                }
            },
            cleanup_retry_seconds: number(
                "CLEANUP_RETRY_SECONDS",
                DEFAULT_CLEANUP_RETRY_SECONDS,
                1,
                86_400,
            )?,
            duration_unit_seconds: number(
                "DURATION_UNIT_SECONDS",
                DEFAULT_DURATION_UNIT_SECONDS,
                1,
                3_600,
            )?,
            max_duration_minutes: number(
                "MAX_DURATION_MINUTES",
                DEFAULT_MAX_DURATION_MINUTES,
                1,
                525_600,
            )?,
            max_worker_nodes: number(
                "MAX_WORKER_NODES",
                DEFAULT_MAX_WORKER_NODES as u64,
                0,
                1_000,
            )? as usize,
            cleanup_concurrency: number(
                "CLEANUP_CONCURRENCY",
                MAX_CONCURRENT_CONNECTIONS as u64,
                1,
                MAX_CONCURRENT_CONNECTIONS as u64,
            )? as usize,
            backend_timeout_seconds: number(
                "BACKEND_TIMEOUT_SECONDS",
                DEFAULT_BACKEND_TIMEOUT_SECONDS,
                1,
                600,
            )?,
            retention_days: number("RETENTION_DAYS", DEFAULT_RETENTION_DAYS, 0, 3_650)?,
            retention_unit_seconds: number(
                "RETENTION_UNIT_SECONDS",
                DEFAULT_RETENTION_UNIT_SECONDS,
                1,
                86_400,
            )?,
        })
    }

    /// Reads the configuration from the worker's `[vars]` and secrets.
    pub fn from_env(env: &worker::Env) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| env.var(name).ok().map(|v| v.to_string()))
    }

    /// Milliseconds between cleanup attempts.
    pub fn retry_ms(&self) -> i64 {
        (self.cleanup_retry_seconds * 1000) as i64
    }

    /// Milliseconds a completed session's record is kept.
    pub fn retention_ms(&self) -> i64 {
        (self.retention_days * self.retention_unit_seconds * 1000) as i64
    }

    /// Milliseconds in one unit of `duration`.
    pub fn duration_unit_ms(&self) -> i64 {
        (self.duration_unit_seconds * 1000) as i64
    }

    /// Milliseconds in `units` of `duration`.
    pub fn duration_ms(&self, units: u64) -> i64 {
        units as i64 * self.duration_unit_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_when_only_backend_url_is_set() {
        let c = config(&[("BACKEND_URL", "https://labs.example.com/")]).unwrap();
        assert_eq!(c.backend_url, "https://labs.example.com");
        assert_eq!(c.backend_api_token, None);
        assert_eq!(c.api_token, None);
        assert!(!c.dry_run);
        assert_eq!(c.cleanup_retry_seconds, 300);
        assert_eq!(c.duration_unit_seconds, 60);
        assert_eq!(c.max_duration_minutes, 10_080);
        assert_eq!(c.max_worker_nodes, 48);
        assert_eq!(c.cleanup_concurrency, 6);
        assert_eq!(c.backend_timeout_seconds, 15);
        assert_eq!(c.retention_days, 7);
        assert_eq!(c.retention_ms(), 7 * 86_400_000);
        assert_eq!(c.retry_ms(), 300_000);
        assert_eq!(c.duration_ms(60), 3_600_000);
    }

    #[test]
    fn overrides_are_read() {
        let c = config(&[
            ("BACKEND_URL", "http://127.0.0.1:8788"),
            ("BACKEND_API_TOKEN", "s3cret"),
            ("CLEANUP_RETRY_SECONDS", "2"),
            ("DURATION_UNIT_SECONDS", "1"),
            ("CLEANUP_CONCURRENCY", "1"),
            ("API_TOKEN", "api"),
            ("DRY_RUN", "true"),
        ])
        .unwrap();
        assert_eq!(c.api_token.as_deref(), Some("api"));
        assert!(c.dry_run);
        assert_eq!(c.backend_api_token.as_deref(), Some("s3cret"));
        assert_eq!(c.cleanup_retry_seconds, 2);
        assert_eq!(c.duration_unit_seconds, 1);
        assert_eq!(c.cleanup_concurrency, 1);
        assert_eq!(c.duration_ms(3), 3_000);
    }

    #[test]
    fn missing_or_blank_backend_url_is_an_error() {
        assert_eq!(config(&[]), Err(ConfigError::Missing("BACKEND_URL")));
        assert_eq!(
            config(&[("BACKEND_URL", "  ")]),
            Err(ConfigError::Missing("BACKEND_URL"))
        );
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let e = config(&[("BACKEND_URL", "ftp://x")]).unwrap_err();
        assert!(e.to_string().starts_with("BACKEND_URL must be"), "{e}");
        for (name, value) in [
            ("CLEANUP_RETRY_SECONDS", "0"),
            ("CLEANUP_RETRY_SECONDS", "five"),
            ("DURATION_UNIT_SECONDS", "-1"),
            ("CLEANUP_CONCURRENCY", "7"),
            ("BACKEND_TIMEOUT_SECONDS", "1.5"),
            ("DRY_RUN", "yes"),
        ] {
            let e = config(&[("BACKEND_URL", "http://x"), (name, value)]).unwrap_err();
            assert!(e.to_string().starts_with(name), "{e}");
        }
    }

    #[test]
    fn token_value_never_appears_in_errors() {
        let e = config(&[
            ("BACKEND_URL", "http://x"),
            ("BACKEND_API_TOKEN", "top-secret"),
            ("CLEANUP_RETRY_SECONDS", "x"),
        ])
        .unwrap_err();
        assert!(!e.to_string().contains("top-secret"));
    }
}
