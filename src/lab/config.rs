//! Configuration: every `[vars]` entry and secret is read and checked here, and nowhere else.

use thiserror::Error;

use crate::lab::limits::MAX_WORKERS;

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
/// Default seconds after its start an attempt may start a backend call (`ATTEMPT_DEADLINE_SECONDS`),
/// and the most it may be: an alarm has 15 minutes of wall time, and the last call must end
/// within it (`ATTEMPT_DEADLINE_SECONDS + BACKEND_TIMEOUT_SECONDS` at most `MAX_ATTEMPT_WALL_SECONDS`).
pub const DEFAULT_ATTEMPT_DEADLINE_SECONDS: u64 = 600;
pub const MAX_ATTEMPT_DEADLINE_SECONDS: u64 = 840;
pub const MAX_ATTEMPT_WALL_SECONDS: u64 = ((crate::lab::invocation::plan::WALL_MS
    - crate::lab::invocation::plan::WALL_MARGIN_MS)
    / 1_000) as u64;
/// Backend calls of a cleanup attempt besides the workers': the master VM and the services call.
pub const CALLS_BESIDES_WORKERS: u64 = 2;
/// Default warning before the expiry, in `duration` units (minutes): `lab.expiring`.
pub const DEFAULT_WARN_BEFORE_MINUTES: u64 = 10;
/// Most stages `WARN_BEFORE_MINUTES` may list (each is remembered in the lab's record).
pub const MAX_WARN_STAGES: usize = 8;
/// Default warning before an idle end, in `duration` units: `lab.idle_warning`.
pub const DEFAULT_IDLE_WARN_MINUTES: u64 = 5;
/// Default least time between two writes of a lab's activity (`POST .../activity`).
pub const DEFAULT_ACTIVITY_WRITE_SECONDS: u64 = 60;
/// Default number of attempts after which a lab that is not completed counts as stuck.
pub const DEFAULT_STUCK_AFTER_ATTEMPTS: u64 = 3;
/// Default age, in `duration` units, an unknown VM an inventory reports must reach before a
/// reconciliation that acts schedules it for cleanup.
pub const DEFAULT_ORPHAN_GRACE_MINUTES: u64 = 60;
/// How long a stopped lab's VMs are kept before they are deleted, in `duration` units
/// (`KEEP_STOPPED_MINUTES`, and a create's `keep_stopped_minutes`): a day by default, 30 at most.
pub const DEFAULT_KEEP_STOPPED_MINUTES: u64 = 1_440;
pub const MAX_KEEP_STOPPED_MINUTES: u64 = 43_200;
/// Stop attempts before a lab whose VMs do not stop is deleted as without the stage.
pub const DEFAULT_STOP_ATTEMPTS: u64 = 3;
/// Default least time, in `duration` units, between the two reports of an unknown VM that
/// confirm it an orphan (and after a VM's deletion before an inventory that still lists it has
/// it deleted again): more than one Cron Trigger interval (15 minutes), so that two runs confirm.
pub const DEFAULT_ORPHAN_CONFIRM_MINUTES: u64 = 10;
/// Default grace before the sweep pokes a lab whose due time has passed.
pub const DEFAULT_SWEEP_GRACE_SECONDS: u64 = 300;
/// Default spread of first attempts after the expiry: a class that expires in the same second
/// starts its cleanups over this many seconds (see docs/PERFORMANCE.md for the measurement).
pub const DEFAULT_EXPIRY_SPREAD_SECONDS: u64 = 5;

/// Which retry rules apply (`RETRY_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Honor `Retry-After`, stop an attempt on overload, jitter, one reconnect, spread first
    /// attempts, one deletion at a time after a refusal.
    Adaptive,
    /// The original behaviour: `CLEANUP_RETRY_SECONDS` after every failing attempt, nothing else.
    Fixed,
}

impl Policy {
    pub fn parse(value: &str) -> Option<Policy> {
        match value.trim() {
            "adaptive" => Some(Policy::Adaptive),
            "fixed" => Some(Policy::Fixed),
            _ => None,
        }
    }
}

/// What can be wrong with the configuration.
///
/// The message (`Display`) names the setting and the rule, never the value: it is what an API
/// caller sees. `detail()` adds the value of a non-secret setting, for the log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{name} must be {expected}")]
    Invalid {
        name: &'static str,
        expected: String,
        /// The value found; `None` for a secret, whose value is never repeated anywhere.
        value: Option<String>,
    },
}

impl ConfigError {
    /// The setting at fault.
    pub fn setting(&self) -> &'static str {
        match self {
            ConfigError::Missing(name) | ConfigError::Invalid { name, .. } => name,
        }
    }

    /// The message with the offending value (never a secret's), for the worker's log only.
    pub fn detail(&self) -> String {
        match self {
            ConfigError::Invalid {
                value: Some(value), ..
            } => format!("{self} (got {value:?})"),
            _ => self.to_string(),
        }
    }
}

/// The checked configuration of the worker and of the `SessionManager` object.
/// The timing settings the wake-up times depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// How long a completed record is kept.
    pub retention_ms: i64,
    /// Whether webhooks are on. Off, no event is created and the outbox is left as it is.
    pub webhooks: bool,
    /// The stages of `lab.expiring`, in `duration` units before the expiry, largest first.
    pub warn_stages: Vec<u64>,
    /// Milliseconds in one `duration` unit.
    pub unit_ms: i64,
    /// How long before an idle end `lab.idle_warning` is due (webhooks on).
    pub idle_warn_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the lab backend, without a trailing slash.
    pub backend_url: String,
    /// Sent as `Authorization: Bearer <token>` on every backend call when set.
    pub backend_api_token: Option<String>,
    /// The token API callers must present (`Authorization: Bearer`); `None` refuses every call.
    pub api_token: Option<String>,
    /// The operator's token: every route, the fleet-wide ones included; `None` closes those.
    pub operator_token: Option<String>,
    /// `API_TOKEN_PREVIOUS`: during a rotation, the API token being replaced, still accepted.
    pub api_token_previous: Option<String>,
    /// `OPERATOR_TOKEN_PREVIOUS`: during a rotation, the operator token being replaced.
    pub operator_token_previous: Option<String>,
    /// A lab not completed after this many attempts counts as stuck (fleet view, webhooks).
    pub stuck_after_attempts: u32,
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
    /// `PLAN`: the Workers plan whose limits every invocation stays within (free by default).
    pub plan: crate::lab::invocation::Plan,
    /// Subrequests to the Internet one invocation may make: the plan's, or `SUBREQUEST_LIMIT`
    /// (a Paid account that configured another number); bounds `max_worker_nodes`.
    pub subrequest_limit: u64,
    /// `ENFORCE_PLAN_LIMITS = "true"` (dev and tests): a call past the plan's limit fails as the
    /// platform fails it.
    pub enforce_plan_limits: bool,
    /// `ATTEMPT_DEADLINE_SECONDS`: an attempt starts no backend call later than this after it
    /// started (the rest goes on in the next alarm, a second later).
    pub attempt_deadline_seconds: u64,
    /// `RETRY_POLICY`: adaptive (default) or fixed (the original behaviour, for comparison).
    pub retry_policy: Policy,
    /// First attempts start up to this long after the expiry, at random (adaptive policy).
    pub expiry_spread_seconds: u64,
    /// `LOG_STORAGE_OPS = "true"`: each invocation logs its storage operation count (debug level;
    /// the benchmark reads it). Off by default: a log line per request is not free.
    pub log_storage_ops: bool,
    /// The webhooks: off, on, or broken (the API refuses calls, the cleanup goes on).
    pub webhooks: Webhooks,
    /// `FLEET_INDEX = "off"`: no lab writes a row in the D1 index (the list and stats routes then
    /// answer 503). On by default.
    pub fleet_index: bool,
    /// `ORPHAN_GRACE_MINUTES`: how old an unknown VM must be before a reconciliation acts on it.
    pub orphan_grace_minutes: u64,
    /// `ORPHAN_CONFIRM_MINUTES`: an unknown VM is an orphan only when reported unknown again at
    /// least this long after its first report; a finished VM is deleted again only this long
    /// after its lab last changed.
    pub orphan_confirm_minutes: u64,
    /// `INVENTORY_PATH`: where the scheduled run pulls the backend's inventory from (unset: no
    /// pull).
    pub inventory_path: Option<String>,
    /// `RECONCILE_ACT`: whether the scheduled pull acts (otherwise it only reports).
    pub reconcile_act: bool,
    /// `LEGACY_CUTOVER_AT` (RFC 3339): when the previous worker took its last create. Until
    /// each of its labs could have expired (`MAX_DURATION_MINUTES` later), an unknown VM that
    /// may be one of theirs (created before it, or of unknown age) is never taken for an
    /// orphan: its lab is adopted at its expiry at the latest, and claims it then. Unset: no
    /// previous worker.
    pub legacy_cutover_at_ms: Option<i64>,
    /// `SWEEP_GRACE_SECONDS`: how long past its due time a lab waits before the sweep pokes it.
    pub sweep_grace_seconds: u64,
    /// `BACKEND_MAX_CONCURRENCY`: the most backend calls the whole fleet has in flight (unset:
    /// no fleet-wide budget, each lab's own adaptive policy only).
    pub backend_max_concurrency: Option<u32>,
    /// `IDLE_TIMEOUT_MINUTES`: the idle timeout of a lab created without `idle_timeout`, in
    /// `duration` units (unset: none).
    pub idle_timeout_minutes: Option<u64>,
    /// `ACTIVITY_WRITE_SECONDS`: a lab writes its activity at most once in this long.
    pub activity_write_seconds: u64,
    /// `STOP_PATH` and the stage's settings: at its end a lab's VMs are stopped, and deleted
    /// `KEEP_STOPPED_MINUTES` later (unset: deleted at once, the stage off).
    pub stop: Option<StopStage>,
    /// `START_PATH`: where a stopped lab's VMs are started again by a resume (unset: resume is
    /// refused).
    pub start_path: Option<String>,
}

/// The grace stage between a lab's end and its deletion (see `lab::session::stage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopStage {
    /// `STOP_PATH`: `POST {BACKEND_URL}{STOP_PATH}` with `{"lab_request_id": ...}` stops a VM.
    pub stop_path: String,
    /// `KEEP_STOPPED_MINUTES`: how long the VMs stay stopped, in `duration` units, for a lab
    /// created without its own `keep_stopped_minutes`.
    pub keep_stopped_minutes: u64,
    /// `STOP_ATTEMPTS`: stop attempts before the lab is deleted as without the stage.
    pub stop_attempts: u32,
}

/// Whether the worker sends webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Webhooks {
    /// No `WEBHOOK_URL`: no event is created.
    Off,
    On(WebhookConfig),
    /// `WEBHOOK_URL` is set but a webhook setting is wrong (e.g. no valid `WEBHOOK_SECRET`): every
    /// `/api/v1` route answers 503 naming it, `/healthz` stays 200, and the alarm logs it and
    /// keeps cleaning up, sending nothing.
    Broken(ConfigError),
}

/// The webhook settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// The key bytes of `WEBHOOK_SECRET` (the base64 after `whsec_`).
    pub secret: Vec<u8>,
    /// `WEBHOOK_SECRET_PREVIOUS`, during a rotation: every delivery is signed with it too.
    pub previous_secret: Option<Vec<u8>>,
    /// `lab.expiring` this many `duration` units before the expiry, once per stage; largest
    /// first, no repeats, at most `MAX_WARN_STAGES`.
    pub warn_stages: Vec<u64>,
    /// `lab.idle_warning` this many `duration` units before an idle end.
    pub idle_warn_minutes: u64,
    pub schedule: Schedule,
    /// The signed links of the warnings (`LINK_SECRET` and `PUBLIC_URL` set), else `None`.
    pub links: Option<crate::lab::link::signed::LinkConfig>,
}

/// The webhook settings the timing depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Pauses after failed deliveries, in ms; the last one repeats.
    pub pauses_ms: Vec<i64>,
    /// An event not delivered this long after its creation is dropped.
    pub max_age_ms: i64,
}

/// The default pauses: 5 s, 30 s, 2 min, 10 min, 30 min, then hourly; for 24 hours.
pub const DEFAULT_PAUSES_SECONDS: [u64; 6] = [5, 30, 120, 600, 1800, 3600];
pub const DEFAULT_MAX_AGE_SECONDS: u64 = 86_400;

/// Reads a `WEBHOOK_SECRET` (`whsec_` + base64 of 24 to 64 bytes) as its key bytes.
pub fn parse_secret(value: &str) -> Option<Vec<u8>> {
    let key = crate::lab::base64::base64_decode(value.trim().strip_prefix("whsec_")?)?;
    (24..=64).contains(&key.len()).then_some(key)
}

impl Config {
    /// Reads and checks every setting through `get` (a `[vars]`/secret lookup by name).
    ///
    /// Empty values count as unset, so a blank `[vars]` entry falls back to the default (or is
    /// reported missing where there is none).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let s = Settings(&get);
        let backend_url = get("BACKEND_URL").ok_or(ConfigError::Missing("BACKEND_URL"))?;
        let backend_url = http_url("BACKEND_URL", backend_url.trim().trim_end_matches('/'))?;
        let calls = Calls::read(&s)?;
        let tokens = tokens(&s)?;
        Ok(Config {
            backend_url,
            backend_api_token: get("BACKEND_API_TOKEN"),
            api_token: tokens.api,
            operator_token: tokens.operator,
            api_token_previous: tokens.api_previous,
            operator_token_previous: tokens.operator_previous,
            stuck_after_attempts: s.number(STUCK_AFTER_ATTEMPTS)? as u32,
            dry_run: s.flag("DRY_RUN")?,
            cleanup_retry_seconds: s.number(CLEANUP_RETRY_SECONDS)?,
            duration_unit_seconds: s.number(DURATION_UNIT_SECONDS)?,
            max_duration_minutes: s.number(MAX_DURATION_MINUTES)?,
            max_worker_nodes: calls.max_worker_nodes as usize,
            cleanup_concurrency: s.number(CLEANUP_CONCURRENCY)? as usize,
            backend_timeout_seconds: calls.backend_timeout_seconds,
            retention_days: s.number(RETENTION_DAYS)?,
            retention_unit_seconds: s.number(RETENTION_UNIT_SECONDS)?,
            plan: calls.plan,
            subrequest_limit: calls.subrequest_limit,
            enforce_plan_limits: s.flag("ENFORCE_PLAN_LIMITS")?,
            attempt_deadline_seconds: calls.attempt_deadline_seconds,
            retry_policy: s
                .choice("RETRY_POLICY", Policy::parse, "\"adaptive\" or \"fixed\"")?
                .unwrap_or(Policy::Adaptive),
            // With the fleet-wide budget, the budget paces a class expiring at once: no spread
            // unless one is asked for.
            expiry_spread_seconds: s.number(Number {
                default: if get("BACKEND_MAX_CONCURRENCY").is_some() {
                    0
                } else {
                    DEFAULT_EXPIRY_SPREAD_SECONDS
                },
                ..EXPIRY_SPREAD_SECONDS
            })?,
            log_storage_ops: s.flag("LOG_STORAGE_OPS")?,
            orphan_grace_minutes: s.number(ORPHAN_GRACE_MINUTES)?,
            orphan_confirm_minutes: s.number(ORPHAN_CONFIRM_MINUTES)?,
            inventory_path: s.choice("INVENTORY_PATH", backend_path, BACKEND_PATH)?,
            reconcile_act: s.flag("RECONCILE_ACT")?,
            legacy_cutover_at_ms: s.choice(
                "LEGACY_CUTOVER_AT",
                crate::lab::time::parse_rfc3339,
                "an RFC 3339 time, e.g. 2026-12-01T09:00:00Z",
            )?,
            backend_max_concurrency: s.optional(BACKEND_MAX_CONCURRENCY)?.map(|n| n as u32),
            sweep_grace_seconds: s.number(SWEEP_GRACE_SECONDS)?,
            idle_timeout_minutes: s.optional(IDLE_TIMEOUT_MINUTES)?,
            activity_write_seconds: s.number(ACTIVITY_WRITE_SECONDS)?,
            stop: match s.choice("STOP_PATH", backend_path, BACKEND_PATH)? {
                Some(stop_path) => Some(StopStage {
                    stop_path,
                    keep_stopped_minutes: s.number(KEEP_STOPPED_MINUTES)?,
                    stop_attempts: s.number(STOP_ATTEMPTS)? as u32,
                }),
                None => None,
            },
            start_path: s.choice("START_PATH", backend_path, BACKEND_PATH)?,
            webhooks: webhooks(&get),
            fleet_index: s
                .choice("FLEET_INDEX", on_off, "\"on\" or \"off\"")?
                .unwrap_or(true),
        })
    }

    /// Every setting at its default, for what must go on when the settings are broken (adopting
    /// a legacy record, timing the next look). No backend call is ever made with it.
    pub fn defaults() -> Config {
        Config::from_lookup(|name| (name == "BACKEND_URL").then(|| "https://unset.invalid".into()))
            .expect("the defaults are a valid configuration (unit-tested)")
    }

    /// What one invocation may use on the account's plan (`SUBREQUEST_LIMIT` for the Internet).
    pub fn limits(&self) -> crate::lab::invocation::Limits {
        crate::lab::invocation::Limits {
            external: self.subrequest_limit,
            ..self.plan.limits()
        }
    }

    /// Milliseconds after its start an attempt may start a call.
    pub fn attempt_deadline_ms(&self) -> i64 {
        (self.attempt_deadline_seconds * 1000) as i64
    }

    /// The stages of `lab.expiring`, in minutes before the expiry, largest first (none when
    /// webhooks are off).
    pub fn warn_stages(&self) -> Vec<u64> {
        match &self.webhooks {
            Webhooks::On(w) => w.warn_stages.clone(),
            _ => Vec::new(),
        }
    }

    /// Milliseconds before an idle end `lab.idle_warning` is due (0 when webhooks are off).
    pub fn idle_warn_ms(&self) -> i64 {
        match &self.webhooks {
            Webhooks::On(w) => self.duration_ms(w.idle_warn_minutes),
            _ => 0,
        }
    }

    /// Milliseconds at least between two writes of a lab's activity.
    pub fn activity_write_ms(&self) -> i64 {
        (self.activity_write_seconds * 1000) as i64
    }

    /// How long one backend call may take (`BACKEND_TIMEOUT_SECONDS`).
    pub fn backend_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.backend_timeout_seconds)
    }

    /// How long one webhook delivery may take: as long as a backend call.
    pub fn webhook_timeout_ms(&self) -> i64 {
        (self.backend_timeout_seconds * 1000) as i64
    }

    /// How long a query or write of the fleet index may take: as long as a backend call.
    pub fn index_timeout(&self) -> std::time::Duration {
        self.backend_timeout()
    }

    /// How long a call to a lab's object may take when another object, a Cron Trigger run or a
    /// bulk job makes it: the request makes at most one call to another lab's object and one
    /// write of the index, each within the backend's timeout, and its storage in the third.
    pub fn lab_call_timeout_ms(&self) -> u32 {
        self.backend_timeout_seconds.saturating_mul(3_000) as u32
    }

    /// Milliseconds between cleanup attempts.
    pub fn retry_ms(&self) -> i64 {
        (self.cleanup_retry_seconds * 1000) as i64
    }

    /// Milliseconds a completed session's record is kept.
    pub fn retention_ms(&self) -> i64 {
        (self.retention_days * self.retention_unit_seconds * 1000) as i64
    }

    /// The timing settings of the object's alarm.
    pub fn timing(&self) -> Timing {
        Timing {
            retention_ms: self.retention_ms(),
            webhooks: matches!(self.webhooks, Webhooks::On(_)),
            warn_stages: self.warn_stages(),
            unit_ms: self.duration_unit_ms(),
            idle_warn_ms: self.idle_warn_ms(),
        }
    }

    /// Milliseconds over which first attempts are spread after the expiry.
    pub fn expiry_spread_ms(&self) -> i64 {
        (self.expiry_spread_seconds * 1000) as i64
    }

    /// Milliseconds in one unit of `duration`.
    pub fn duration_unit_ms(&self) -> i64 {
        (self.duration_unit_seconds * 1000) as i64
    }

    /// Milliseconds in `units` of `duration`.
    pub fn duration_ms(&self, units: u64) -> i64 {
        i64::try_from(units)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.duration_unit_ms())
    }
}

/// An `http://` or `https://` URL without white space, as the setting `name`.
fn http_url(name: &'static str, value: &str) -> Result<String, ConfigError> {
    if (value.starts_with("http://") || value.starts_with("https://"))
        && !value.contains(char::is_whitespace)
    {
        Ok(value.to_string())
    } else {
        Err(ConfigError::Invalid {
            name,
            expected: "an http:// or https:// URL".into(),
            value: Some(value.to_string()),
        })
    }
}

/// The setting `name` as a whole number from `min` to `max`, or `default` when unset.
fn whole_number(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ConfigError::Invalid {
                name,
                expected: format!("a whole number from {min} to {max}"),
                value: Some(raw),
            }),
        },
    }
}

/// A whole-number setting: its name, default and bounds.
#[derive(Debug, Clone, Copy)]
struct Number {
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
}

const fn num(name: &'static str, default: u64, min: u64, max: u64) -> Number {
    Number {
        name,
        default,
        min,
        max,
    }
}

const STUCK_AFTER_ATTEMPTS: Number = num(
    "STUCK_AFTER_ATTEMPTS",
    DEFAULT_STUCK_AFTER_ATTEMPTS,
    1,
    1_000_000,
);
const CLEANUP_RETRY_SECONDS: Number = num(
    "CLEANUP_RETRY_SECONDS",
    DEFAULT_CLEANUP_RETRY_SECONDS,
    1,
    86_400,
);
const DURATION_UNIT_SECONDS: Number = num(
    "DURATION_UNIT_SECONDS",
    DEFAULT_DURATION_UNIT_SECONDS,
    1,
    3_600,
);
const MAX_DURATION_MINUTES: Number = num(
    "MAX_DURATION_MINUTES",
    DEFAULT_MAX_DURATION_MINUTES,
    1,
    525_600,
);
const CLEANUP_CONCURRENCY: Number = num(
    "CLEANUP_CONCURRENCY",
    MAX_CONCURRENT_CONNECTIONS as u64,
    1,
    MAX_CONCURRENT_CONNECTIONS as u64,
);
const RETENTION_DAYS: Number = num("RETENTION_DAYS", DEFAULT_RETENTION_DAYS, 0, 3_650);
const RETENTION_UNIT_SECONDS: Number = num(
    "RETENTION_UNIT_SECONDS",
    DEFAULT_RETENTION_UNIT_SECONDS,
    1,
    86_400,
);
const EXPIRY_SPREAD_SECONDS: Number = num(
    "EXPIRY_SPREAD_SECONDS",
    DEFAULT_EXPIRY_SPREAD_SECONDS,
    0,
    3_600,
);
const ORPHAN_GRACE_MINUTES: Number = num(
    "ORPHAN_GRACE_MINUTES",
    DEFAULT_ORPHAN_GRACE_MINUTES,
    0,
    525_600,
);
const ORPHAN_CONFIRM_MINUTES: Number = num(
    "ORPHAN_CONFIRM_MINUTES",
    DEFAULT_ORPHAN_CONFIRM_MINUTES,
    0,
    10_080,
);
const BACKEND_MAX_CONCURRENCY: Number = num("BACKEND_MAX_CONCURRENCY", 0, 1, 10_000);
const SWEEP_GRACE_SECONDS: Number = num(
    "SWEEP_GRACE_SECONDS",
    DEFAULT_SWEEP_GRACE_SECONDS,
    0,
    86_400,
);
const IDLE_TIMEOUT_MINUTES: Number = num("IDLE_TIMEOUT_MINUTES", 0, 1, 525_600);
const KEEP_STOPPED_MINUTES: Number = num(
    "KEEP_STOPPED_MINUTES",
    DEFAULT_KEEP_STOPPED_MINUTES,
    0,
    MAX_KEEP_STOPPED_MINUTES,
);
const STOP_ATTEMPTS: Number = num("STOP_ATTEMPTS", DEFAULT_STOP_ATTEMPTS, 1, 10);
const ACTIVITY_WRITE_SECONDS: Number = num(
    "ACTIVITY_WRITE_SECONDS",
    DEFAULT_ACTIVITY_WRITE_SECONDS,
    1,
    3_600,
);
const BACKEND_TIMEOUT_SECONDS: Number = num(
    "BACKEND_TIMEOUT_SECONDS",
    DEFAULT_BACKEND_TIMEOUT_SECONDS,
    1,
    600,
);

/// The settings as set (a value of only white space counts as unset), read by kind.
struct Settings<'g, G: Fn(&str) -> Option<String>>(&'g G);

impl<G: Fn(&str) -> Option<String>> Settings<'_, G> {
    fn number(&self, n: Number) -> Result<u64, ConfigError> {
        whole_number(self.0, n.name, n.default, n.min, n.max)
    }

    /// A number that has no default: unset, `None`.
    fn optional(&self, n: Number) -> Result<Option<u64>, ConfigError> {
        match (self.0)(n.name) {
            None => Ok(None),
            Some(_) => self.number(n).map(Some),
        }
    }

    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        match (self.0)(name).as_deref().map(str::trim) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ConfigError::Invalid {
                name,
                expected: "\"true\" or \"false\"".into(),
                value: Some(other.to_string()),
            }),
        }
    }

    /// A setting read by `parse` (`None`: not one it takes, so `expected` says what is).
    fn choice<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>, ConfigError> {
        match (self.0)(name) {
            None => Ok(None),
            Some(raw) => match parse(raw.trim()) {
                Some(value) => Ok(Some(value)),
                None => Err(ConfigError::Invalid {
                    name,
                    expected: expected.into(),
                    value: Some(raw.trim().to_string()),
                }),
            },
        }
    }
}

fn on_off(raw: &str) -> Option<bool> {
    match raw {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

const BACKEND_PATH: &str = "a path on the backend starting with /";

fn backend_path(raw: &str) -> Option<String> {
    (raw.starts_with('/') && !raw.contains(char::is_whitespace)).then(|| raw.to_string())
}

/// The settings that bound one invocation's calls, checked together: the plan, its
/// subrequests, the per-call timeout, the attempt's deadline and the largest lab.
struct Calls {
    plan: crate::lab::invocation::Plan,
    subrequest_limit: u64,
    backend_timeout_seconds: u64,
    attempt_deadline_seconds: u64,
    max_worker_nodes: u64,
}

impl Calls {
    fn read<G: Fn(&str) -> Option<String>>(s: &Settings<'_, G>) -> Result<Calls, ConfigError> {
        use crate::lab::invocation::Plan;
        let plan = s
            .choice(
                "PLAN",
                Plan::parse,
                "\"free\" or \"paid\" (the account's Workers plan)",
            )?
            .unwrap_or(Plan::Free);
        let plan_external = plan.limits().external;
        let subrequest_limit = s.number(num(
            "SUBREQUEST_LIMIT",
            plan_external,
            CALLS_BESIDES_WORKERS + 1,
            10_000_000,
        ))?;
        if plan == Plan::Free && subrequest_limit > plan_external {
            return Err(ConfigError::Invalid {
                name: "SUBREQUEST_LIMIT",
                expected: format!(
                    "at most {plan_external} with PLAN=free (the Workers Free plan's subrequests per invocation); on Workers Paid set PLAN=paid"
                ),
                value: Some(subrequest_limit.to_string()),
            });
        }
        let backend_timeout_seconds = s.number(BACKEND_TIMEOUT_SECONDS)?;
        Ok(Calls {
            plan,
            subrequest_limit,
            backend_timeout_seconds,
            attempt_deadline_seconds: attempt_deadline(s, backend_timeout_seconds)?,
            max_worker_nodes: max_worker_nodes(s, subrequest_limit)?,
        })
    }
}

/// `ATTEMPT_DEADLINE_SECONDS`: the last call of an attempt must end within the alarm's wall time.
fn attempt_deadline<G: Fn(&str) -> Option<String>>(
    s: &Settings<'_, G>,
    backend_timeout_seconds: u64,
) -> Result<u64, ConfigError> {
    let wall_room = MAX_ATTEMPT_WALL_SECONDS.saturating_sub(backend_timeout_seconds);
    let deadline = s.number(num(
        "ATTEMPT_DEADLINE_SECONDS",
        DEFAULT_ATTEMPT_DEADLINE_SECONDS.min(wall_room),
        1,
        MAX_ATTEMPT_DEADLINE_SECONDS,
    ))?;
    if deadline > wall_room {
        return Err(ConfigError::Invalid {
            name: "ATTEMPT_DEADLINE_SECONDS",
            expected: format!(
                "at most {wall_room} with BACKEND_TIMEOUT_SECONDS={backend_timeout_seconds}: the sum must stay within {MAX_ATTEMPT_WALL_SECONDS} s (an alarm has 15 minutes of wall time)"
            ),
            value: Some(deadline.to_string()),
        });
    }
    Ok(deadline)
}

/// `MAX_WORKER_NODES`: at most what a lab's record can hold (`session::bound`), and one
/// attempt (a call per VM plus the services call) within one invocation's subrequests, or the
/// last calls of a large lab would always fail.
fn max_worker_nodes<G: Fn(&str) -> Option<String>>(
    s: &Settings<'_, G>,
    subrequest_limit: u64,
) -> Result<u64, ConfigError> {
    let workers = s.number(num(
        "MAX_WORKER_NODES",
        DEFAULT_MAX_WORKER_NODES as u64,
        0,
        MAX_WORKERS as u64,
    ))?;
    if workers + CALLS_BESIDES_WORKERS > subrequest_limit {
        return Err(ConfigError::Invalid {
            name: "MAX_WORKER_NODES",
            expected: format!(
                "at most SUBREQUEST_LIMIT minus {CALLS_BESIDES_WORKERS} ({}): one cleanup attempt makes a call per VM plus the services call",
                subrequest_limit - CALLS_BESIDES_WORKERS
            ),
            value: Some(workers.to_string()),
        });
    }
    Ok(workers)
}

/// The four token settings, checked.
struct Tokens {
    api: Option<String>,
    operator: Option<String>,
    api_previous: Option<String>,
    operator_previous: Option<String>,
}

/// `API_TOKEN` and `OPERATOR_TOKEN`, each with its `_PREVIOUS` value during a rotation: one
/// token per role (with a value shared, the frontend's server would hold every fleet route:
/// every user's labs, retry now), so no API value equals an operator value; a previous value
/// only beside a current one (the new value), and never equal to it.
fn tokens<G: Fn(&str) -> Option<String>>(s: &Settings<'_, G>) -> Result<Tokens, ConfigError> {
    let t = Tokens {
        api: (s.0)("API_TOKEN"),
        operator: (s.0)("OPERATOR_TOKEN"),
        api_previous: (s.0)(API_TOKEN_PREVIOUS),
        operator_previous: (s.0)(OPERATOR_TOKEN_PREVIOUS),
    };
    let invalid = |name, expected: &str| ConfigError::Invalid {
        name,
        expected: expected.into(),
        // A secret: its value is never repeated, not even in the log.
        value: None,
    };
    for (previous, name, current, current_name) in [
        (&t.api_previous, API_TOKEN_PREVIOUS, &t.api, "API_TOKEN"),
        (
            &t.operator_previous,
            OPERATOR_TOKEN_PREVIOUS,
            &t.operator,
            "OPERATOR_TOKEN",
        ),
    ] {
        match (previous, current) {
            (Some(_), None) => {
                return Err(invalid(
                    name,
                    &format!("set only during a rotation, beside {current_name} (the new value)"),
                ))
            }
            (Some(p), Some(c)) if p == c => {
                return Err(invalid(
                    name,
                    &format!("different from {current_name} (the value being replaced)"),
                ))
            }
            _ => {}
        }
    }
    let api = [&t.api, &t.api_previous];
    for (operator, name) in [
        (&t.operator, "OPERATOR_TOKEN"),
        (&t.operator_previous, OPERATOR_TOKEN_PREVIOUS),
    ] {
        if operator.is_some() && api.contains(&operator) {
            return Err(invalid(
                name,
                "different from API_TOKEN and API_TOKEN_PREVIOUS (one token per role)",
            ));
        }
    }
    Ok(t)
}

/// A secret setting that holds, during a rotation, the value being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    ApiToken,
    OperatorToken,
    WebhookSecret,
    LinkSecret,
}

pub const API_TOKEN_PREVIOUS: &str = "API_TOKEN_PREVIOUS";
pub const OPERATOR_TOKEN_PREVIOUS: &str = "OPERATOR_TOKEN_PREVIOUS";
pub const WEBHOOK_SECRET_PREVIOUS: &str = "WEBHOOK_SECRET_PREVIOUS";
pub const LINK_SECRET_PREVIOUS: &str = "LINK_SECRET_PREVIOUS";
/// Shortest `LINK_SECRET`, in bytes (256 bits, as HMAC-SHA256's key).
pub const MIN_LINK_SECRET_BYTES: usize = 32;
/// Longest `LINK_SECRET`, in bytes (HMAC-SHA256 hashes a longer key first: no gain).
pub const MAX_LINK_SECRET_BYTES: usize = 64;
/// The extend links of `lab.expiring` by default, in `duration` units.
pub const DEFAULT_EXTEND_LINK_MINUTES: [u64; 2] = [30, 60];

impl Previous {
    pub const ALL: [Previous; 4] = [
        Previous::ApiToken,
        Previous::OperatorToken,
        Previous::WebhookSecret,
        Previous::LinkSecret,
    ];

    /// The setting's name.
    pub fn setting(self) -> &'static str {
        match self {
            Previous::ApiToken => API_TOKEN_PREVIOUS,
            Previous::OperatorToken => OPERATOR_TOKEN_PREVIOUS,
            Previous::WebhookSecret => WEBHOOK_SECRET_PREVIOUS,
            Previous::LinkSecret => LINK_SECRET_PREVIOUS,
        }
    }

    /// The secret it rotates (the `secret` label of the metric).
    pub fn secret(self) -> &'static str {
        match self {
            Previous::ApiToken => "API_TOKEN",
            Previous::OperatorToken => "OPERATOR_TOKEN",
            Previous::WebhookSecret => "WEBHOOK_SECRET",
            Previous::LinkSecret => "LINK_SECRET",
        }
    }

    /// What an operator is told while it is set: a rotation left half done.
    pub fn notice(self) -> &'static str {
        match self {
            Previous::ApiToken => "a previous API token is still accepted (API_TOKEN_PREVIOUS is set): remove it once every caller uses the new API_TOKEN",
            Previous::OperatorToken => "a previous operator token is still accepted (OPERATOR_TOKEN_PREVIOUS is set): remove it once every operator uses the new OPERATOR_TOKEN",
            Previous::WebhookSecret => "webhooks are still signed with a previous secret too (WEBHOOK_SECRET_PREVIOUS is set): remove it once every receiver verifies with the new WEBHOOK_SECRET",
            Previous::LinkSecret => "links signed with a previous secret are still accepted (LINK_SECRET_PREVIOUS is set): remove it once the warnings sent before the rotation have expired",
        }
    }
}

impl Config {
    /// Whether `previous` is set: a rotation of its secret is under way.
    pub fn rotating(&self, previous: Previous) -> bool {
        match previous {
            Previous::ApiToken => self.api_token_previous.is_some(),
            Previous::OperatorToken => self.operator_token_previous.is_some(),
            Previous::WebhookSecret => matches!(
                &self.webhooks,
                Webhooks::On(w) if w.previous_secret.is_some()
            ),
            Previous::LinkSecret => matches!(
                &self.webhooks,
                Webhooks::On(WebhookConfig { links: Some(l), .. }) if l.previous_secret.is_some()
            ),
        }
    }

    /// The rotations under way, in `Previous::ALL`'s order.
    pub fn rotations(&self) -> Vec<Previous> {
        Previous::ALL
            .into_iter()
            .filter(|p| self.rotating(*p))
            .collect()
    }
}

/// A comma-separated list of whole numbers, each within `range`; `None` when one is not (the
/// list is read whole or not at all).
fn whole_numbers(raw: &str, range: std::ops::RangeInclusive<u64>) -> Option<Vec<u64>> {
    raw.split(',')
        .map(|p| p.trim().parse::<u64>().ok().filter(|n| range.contains(n)))
        .collect()
}

/// `WARN_BEFORE_MINUTES` as stages: whole minutes, largest first, repeats dropped.
fn warn_stages(raw: &str) -> Option<Vec<u64>> {
    let mut stages = whole_numbers(raw, 1..=525_600)?;
    // Largest first, by insertion (at most a handful: a sort's code would cost the worker more).
    for i in 1..stages.len() {
        let mut j = i;
        while j > 0 && stages[j - 1] < stages[j] {
            stages.swap(j - 1, j);
            j -= 1;
        }
    }
    stages.dedup();
    (!stages.is_empty() && stages.len() <= MAX_WARN_STAGES).then_some(stages)
}

/// Reads the links' settings (with the webhooks'): on when `LINK_SECRET` and `PUBLIC_URL` are
/// both set, off when neither is; one without the other is an error naming the missing one.
fn links(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<crate::lab::link::signed::LinkConfig>, ConfigError> {
    use crate::lab::link::signed::{LinkConfig, MAX_EXTEND_LINKS, MAX_PUBLIC_URL_CHARS};
    let (secret, public_url) = match (get("LINK_SECRET"), get("PUBLIC_URL")) {
        (None, None) => return Ok(None),
        (Some(secret), Some(url)) => (secret, url),
        (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                name: "LINK_SECRET",
                expected: "set (a secret) whenever PUBLIC_URL is: the links of the warnings are signed with it".into(),
                value: None,
            })
        }
        (Some(_), None) => {
            return Err(ConfigError::Invalid {
                name: "PUBLIC_URL",
                expected: "set whenever LINK_SECRET is: where this worker answers the links of the warnings, e.g. https://labs-cleanup.example.com".into(),
                value: None,
            })
        }
    };
    let secret_bytes = |name: &'static str, raw: &str| {
        let bytes = raw.trim().as_bytes().to_vec();
        if (MIN_LINK_SECRET_BYTES..=MAX_LINK_SECRET_BYTES).contains(&bytes.len()) {
            Ok(bytes)
        } else {
            Err(ConfigError::Invalid {
                name,
                expected: format!(
                    "{MIN_LINK_SECRET_BYTES} to {MAX_LINK_SECRET_BYTES} characters (e.g. `openssl rand -base64 32`)"
                ),
                // A secret: its value is never repeated, not even in the log.
                value: None,
            })
        }
    };
    let secret = secret_bytes("LINK_SECRET", &secret)?;
    let previous_secret = match get(LINK_SECRET_PREVIOUS) {
        None => None,
        Some(raw) => {
            let previous = secret_bytes(LINK_SECRET_PREVIOUS, &raw)?;
            if previous == secret {
                return Err(ConfigError::Invalid {
                    name: LINK_SECRET_PREVIOUS,
                    expected: "different from LINK_SECRET (the secret being replaced)".into(),
                    value: None,
                });
            }
            Some(previous)
        }
    };
    let trimmed = public_url.trim().trim_end_matches('/');
    let public_url = http_url("PUBLIC_URL", trimmed)?;
    if public_url.chars().count() > MAX_PUBLIC_URL_CHARS
        || public_url.contains(['?', '#'])
        || public_url.split("://").nth(1).is_none_or(str::is_empty)
    {
        return Err(ConfigError::Invalid {
            name: "PUBLIC_URL",
            expected: format!(
                "an http:// or https:// URL of at most {MAX_PUBLIC_URL_CHARS} characters, without a query or fragment"
            ),
            value: Some(public_url),
        });
    }
    let extend_minutes = match get("EXTEND_LINK_MINUTES") {
        None => DEFAULT_EXTEND_LINK_MINUTES.to_vec(),
        Some(raw) => {
            let mut minutes = whole_numbers(&raw, 1..=525_600)
                .filter(|m| !m.is_empty() && m.len() <= MAX_EXTEND_LINKS)
                .ok_or(ConfigError::Invalid {
                    name: "EXTEND_LINK_MINUTES",
                    expected: format!(
                        "minutes to extend by (1 to 525600), comma-separated, at most {MAX_EXTEND_LINKS}, e.g. \"30,60\""
                    ),
                    value: Some(raw),
                })?;
            minutes.sort_unstable();
            minutes.dedup();
            minutes
        }
    };
    Ok(Some(LinkConfig {
        secret,
        previous_secret,
        public_url,
        extend_minutes,
    }))
}

/// Reads the webhook settings (only when `WEBHOOK_URL` is set).
fn webhooks(get: &impl Fn(&str) -> Option<String>) -> Webhooks {
    let Some(url) = get("WEBHOOK_URL") else {
        return Webhooks::Off;
    };
    let read = || -> Result<WebhookConfig, ConfigError> {
        let url = http_url("WEBHOOK_URL", url.trim())?;
        let secret = get("WEBHOOK_SECRET").ok_or(ConfigError::Invalid {
            name: "WEBHOOK_SECRET",
            expected: "set (a secret) whenever WEBHOOK_URL is".into(),
            value: None,
        })?;
        let secret = parse_secret(&secret).ok_or(ConfigError::Invalid {
            name: "WEBHOOK_SECRET",
            expected: "whsec_ followed by the base64 of 24 to 64 random bytes".into(),
            // A secret: its value is never repeated, not even in the log.
            value: None,
        })?;
        let previous_secret = match get(WEBHOOK_SECRET_PREVIOUS) {
            None => None,
            Some(raw) => Some(
                parse_secret(&raw)
                    .filter(|p| *p != secret)
                    .ok_or(ConfigError::Invalid {
                        name: WEBHOOK_SECRET_PREVIOUS,
                        expected: "whsec_ followed by the base64 of 24 to 64 random bytes, different from WEBHOOK_SECRET (the secret being replaced)".into(),
                        value: None,
                    })?,
            ),
        };
        let whole = |name, default, min, max| whole_number(get, name, default, min, max);
        let warn_stages = match get("WARN_BEFORE_MINUTES") {
            None => vec![DEFAULT_WARN_BEFORE_MINUTES],
            Some(raw) => warn_stages(&raw).ok_or(ConfigError::Invalid {
                name: "WARN_BEFORE_MINUTES",
                expected: format!(
                    "minutes before the expiry (1 to 525600), comma-separated, at most {MAX_WARN_STAGES}, e.g. \"30,5\""
                ),
                value: Some(raw),
            })?,
        };
        let idle_warn_minutes = whole("IDLE_WARN_MINUTES", DEFAULT_IDLE_WARN_MINUTES, 1, 525_600)?;
        let max_age_seconds = whole(
            "WEBHOOK_MAX_AGE_SECONDS",
            DEFAULT_MAX_AGE_SECONDS,
            1,
            30 * 86_400,
        )?;
        let pauses = match get("WEBHOOK_RETRY_SCHEDULE_SECONDS") {
            None => DEFAULT_PAUSES_SECONDS.to_vec(),
            Some(raw) => whole_numbers(&raw, 1..=86_400)
                .filter(|p| !p.is_empty())
                .ok_or(ConfigError::Invalid {
                    name: "WEBHOOK_RETRY_SCHEDULE_SECONDS",
                    expected:
                        "pauses in seconds (1 to 86400), comma-separated; the last one repeats"
                            .into(),
                    value: Some(raw),
                })?,
        };
        let links = links(get)?;
        Ok(WebhookConfig {
            url,
            secret,
            previous_secret,
            links,
            warn_stages,
            idle_warn_minutes,
            schedule: Schedule {
                pauses_ms: pauses.iter().map(|s| (*s * 1000) as i64).collect(),
                max_age_ms: (max_age_seconds * 1000) as i64,
            },
        })
    };
    match read() {
        Ok(config) => Webhooks::On(config),
        Err(e) => Webhooks::Broken(e),
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
        assert_eq!(c.retry_policy, Policy::Adaptive);
        assert_eq!(c.expiry_spread_ms(), 5_000);
        assert_eq!(c.operator_token, None);
        assert_eq!(c.stuck_after_attempts, 3);
        assert!(c.fleet_index);
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
            ("RETRY_POLICY", "fixed"),
            ("EXPIRY_SPREAD_SECONDS", "0"),
            ("FLEET_INDEX", "off"),
        ])
        .unwrap();
        assert!(!c.fleet_index);
        assert_eq!(c.retry_policy, Policy::Fixed);
        assert_eq!(c.expiry_spread_ms(), 0);
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
            ("RETRY_POLICY", "exponential"),
            ("EXPIRY_SPREAD_SECONDS", "3601"),
            ("FLEET_INDEX", "maybe"),
        ] {
            let e = config(&[("BACKEND_URL", "http://x"), (name, value)]).unwrap_err();
            assert!(e.to_string().starts_with(name), "{e}");
        }
    }

    #[test]
    fn the_message_names_the_setting_and_only_the_log_detail_has_the_value() {
        let e = config(&[
            ("BACKEND_URL", "http://x"),
            ("CLEANUP_RETRY_SECONDS", "fifty"),
        ])
        .unwrap_err();
        assert_eq!(e.setting(), "CLEANUP_RETRY_SECONDS");
        assert_eq!(
            e.to_string(),
            "CLEANUP_RETRY_SECONDS must be a whole number from 1 to 86400"
        );
        assert!(!e.to_string().contains("fifty"));
        assert_eq!(
            e.detail(),
            "CLEANUP_RETRY_SECONDS must be a whole number from 1 to 86400 (got \"fifty\")"
        );
        let e = config(&[("BACKEND_URL", "ftp://internal.example")]).unwrap_err();
        assert!(!e.to_string().contains("internal.example"), "{e}");
        assert!(e.detail().contains("internal.example"));
    }

    #[test]
    fn worker_nodes_must_fit_the_subrequest_limit_and_the_record() {
        // Free plan: 50 subrequests, so 48 workers + the master + the services call.
        let ok = config(&[("BACKEND_URL", "http://x"), ("MAX_WORKER_NODES", "48")]).unwrap();
        assert_eq!(ok.subrequest_limit, 50);
        let e = config(&[("BACKEND_URL", "http://x"), ("SUBREQUEST_LIMIT", "40")]).unwrap_err();
        assert_eq!(e.setting(), "MAX_WORKER_NODES");
        assert!(
            e.to_string()
                .contains("at most SUBREQUEST_LIMIT minus 2 (38)"),
            "{e}"
        );
        // More than a lab's record can hold, whatever the plan (`session::bound`).
        let e = config(&[
            ("BACKEND_URL", "http://x"),
            ("PLAN", "paid"),
            ("SUBREQUEST_LIMIT", "10000"),
            ("MAX_WORKER_NODES", "49"),
        ])
        .unwrap_err();
        assert_eq!(e.setting(), "MAX_WORKER_NODES");
        assert!(e.to_string().contains("from 0 to 48"), "{e}");
        let e = config(&[("BACKEND_URL", "http://x"), ("SUBREQUEST_LIMIT", "10")]).unwrap_err();
        assert!(e.to_string().contains("(8)"), "{e}");
    }

    #[test]
    fn the_plan_sets_the_limits_and_subrequest_limit_overrides_them_on_paid_only() {
        let base = ("BACKEND_URL", "http://x");
        let free = config(&[base]).unwrap();
        assert_eq!(free.plan, crate::lab::invocation::Plan::Free);
        assert_eq!(free.limits(), crate::lab::invocation::plan::FREE);
        let paid = config(&[base, ("PLAN", "paid")]).unwrap();
        assert_eq!(paid.subrequest_limit, 10_000);
        assert_eq!(paid.limits().d1_queries, 1_000);
        let raised = config(&[base, ("PLAN", "paid"), ("SUBREQUEST_LIMIT", "50000")]).unwrap();
        assert_eq!(raised.limits().external, 50_000);
        // A Paid account's number on the Free plan: the setting and the plan named.
        let e = config(&[base, ("SUBREQUEST_LIMIT", "10000")]).unwrap_err();
        assert_eq!(e.setting(), "SUBREQUEST_LIMIT");
        assert!(
            e.to_string().contains("PLAN=free") && e.to_string().contains("PLAN=paid"),
            "{e}"
        );
        assert_eq!(
            config(&[base, ("PLAN", "pro")]).unwrap_err().setting(),
            "PLAN"
        );
    }

    #[test]
    fn an_attempt_ends_its_calls_within_the_alarms_wall_time() {
        let base = ("BACKEND_URL", "http://x");
        assert_eq!(config(&[base]).unwrap().attempt_deadline_seconds, 600);
        // The default gives way to a long backend timeout; an explicit value does not.
        let slow = config(&[base, ("BACKEND_TIMEOUT_SECONDS", "600")]).unwrap();
        assert_eq!(slow.attempt_deadline_seconds, 270);
        let e = config(&[
            base,
            ("BACKEND_TIMEOUT_SECONDS", "600"),
            ("ATTEMPT_DEADLINE_SECONDS", "600"),
        ])
        .unwrap_err();
        assert_eq!(e.setting(), "ATTEMPT_DEADLINE_SECONDS");
        assert!(e.to_string().contains("at most 270"), "{e}");
        let e = config(&[base, ("ATTEMPT_DEADLINE_SECONDS", "841")]).unwrap_err();
        assert!(e.to_string().contains("from 1 to 840"), "{e}");
    }

    #[test]
    fn the_budget_makes_the_spread_unnecessary_unless_asked_for() {
        let base = ("BACKEND_URL", "http://x");
        assert_eq!(config(&[base]).unwrap().expiry_spread_seconds, 5);
        let budget = ("BACKEND_MAX_CONCURRENCY", "20");
        assert_eq!(config(&[base, budget]).unwrap().expiry_spread_seconds, 0);
        let asked = ("EXPIRY_SPREAD_SECONDS", "3");
        assert_eq!(
            config(&[base, budget, asked])
                .unwrap()
                .expiry_spread_seconds,
            3
        );
    }

    #[test]
    fn webhooks_are_off_on_or_broken() {
        let base = [("BACKEND_URL", "http://x")];
        assert_eq!(config(&base).unwrap().webhooks, Webhooks::Off);
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let on = config(&[
            ("BACKEND_URL", "http://x"),
            ("WEBHOOK_URL", "https://hooks.example.com/labs"),
            ("WEBHOOK_SECRET", secret),
        ])
        .unwrap();
        let Webhooks::On(w) = &on.webhooks else {
            panic!("{:?}", on.webhooks)
        };
        assert_eq!(w.secret.len(), 24);
        assert_eq!(w.warn_stages, vec![10]);
        assert_eq!(w.idle_warn_minutes, 5);
        assert_eq!(w.schedule.pauses_ms[..2], [5_000, 30_000]);
        assert_eq!(on.warn_stages(), vec![10]);
        assert_eq!(on.timing().warn_stages, vec![10]);
        assert_eq!(on.idle_warn_ms(), 300_000);
        assert!(on.timing().webhooks);
        // Stages: largest first, repeats dropped.
        let staged = config(&[
            ("BACKEND_URL", "http://x"),
            ("WEBHOOK_URL", "https://hooks.example.com/labs"),
            ("WEBHOOK_SECRET", secret),
            ("WARN_BEFORE_MINUTES", " 5, 30,5 "),
        ])
        .unwrap();
        assert_eq!(staged.warn_stages(), vec![30, 5]);

        for (pairs, name) in [
            (vec![("WEBHOOK_URL", "https://h")], "WEBHOOK_SECRET"),
            (
                vec![
                    ("WEBHOOK_URL", "https://h"),
                    ("WEBHOOK_SECRET", "whsec_c2hvcnQ="),
                ],
                "WEBHOOK_SECRET",
            ),
            (
                vec![("WEBHOOK_URL", "ftp://h"), ("WEBHOOK_SECRET", secret)],
                "WEBHOOK_URL",
            ),
            (
                vec![
                    ("WEBHOOK_URL", "https://h"),
                    ("WEBHOOK_SECRET", secret),
                    ("WARN_BEFORE_MINUTES", "0"),
                ],
                "WARN_BEFORE_MINUTES",
            ),
            (
                vec![
                    ("WEBHOOK_URL", "https://h"),
                    ("WEBHOOK_SECRET", secret),
                    ("WARN_BEFORE_MINUTES", "1,2,3,4,5,6,7,8,9"),
                ],
                "WARN_BEFORE_MINUTES",
            ),
            (
                vec![
                    ("WEBHOOK_URL", "https://h"),
                    ("WEBHOOK_SECRET", secret),
                    ("WARN_BEFORE_MINUTES", "30,"),
                ],
                "WARN_BEFORE_MINUTES",
            ),
            (
                vec![
                    ("WEBHOOK_URL", "https://h"),
                    ("WEBHOOK_SECRET", secret),
                    ("IDLE_WARN_MINUTES", "0"),
                ],
                "IDLE_WARN_MINUTES",
            ),
            (
                vec![
                    ("WEBHOOK_URL", "https://h"),
                    ("WEBHOOK_SECRET", secret),
                    ("WEBHOOK_RETRY_SCHEDULE_SECONDS", "5,x"),
                ],
                "WEBHOOK_RETRY_SCHEDULE_SECONDS",
            ),
        ] {
            let mut all = base.to_vec();
            all.extend(pairs);
            let c = config(&all).expect("a webhook error never stops the cleanup's settings");
            let Webhooks::Broken(e) = &c.webhooks else {
                panic!("{all:?}: {:?}", c.webhooks)
            };
            assert_eq!(e.setting(), name);
            assert!(
                !e.detail().contains("c2hvcnQ"),
                "never the secret: {}",
                e.detail()
            );
            assert!(c.warn_stages().is_empty());
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

    #[test]
    fn the_defaults_are_valid() {
        let c = Config::defaults();
        assert_eq!(c.retry_ms(), 300_000);
        assert_eq!(c.max_worker_nodes, 48);
        assert_eq!(c.webhooks, Webhooks::Off);
    }

    #[test]
    fn one_token_per_role() {
        let e = config(&[
            ("BACKEND_URL", "http://x"),
            ("API_TOKEN", "same-value-1"),
            ("OPERATOR_TOKEN", "same-value-1"),
        ])
        .unwrap_err();
        assert_eq!(e.setting(), "OPERATOR_TOKEN");
        assert!(e.to_string().contains("different from API_TOKEN"));
        assert!(!e.detail().contains("same-value-1"), "{}", e.detail());
        assert!(config(&[
            ("BACKEND_URL", "http://x"),
            ("API_TOKEN", "a-1"),
            ("OPERATOR_TOKEN", "b-2"),
        ])
        .is_ok());
    }

    #[test]
    fn a_rotation_holds_every_rule_of_the_tokens_for_all_four_values() {
        let base = [
            ("BACKEND_URL", "http://x"),
            ("API_TOKEN", "api-new"),
            ("OPERATOR_TOKEN", "ops-new"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            config(&all)
        };
        let c = with(&[
            (API_TOKEN_PREVIOUS, "api-old"),
            (OPERATOR_TOKEN_PREVIOUS, "ops-old"),
        ])
        .unwrap();
        assert_eq!(c.api_token_previous.as_deref(), Some("api-old"));
        assert_eq!(c.operator_token_previous.as_deref(), Some("ops-old"));
        assert_eq!(c.rotations(), [Previous::ApiToken, Previous::OperatorToken]);
        assert!(with(&[]).unwrap().rotations().is_empty());
        assert!(with(&[(API_TOKEN_PREVIOUS, " ")])
            .unwrap()
            .rotations()
            .is_empty());
        for (extra, setting, says) in [
            // A previous value equal to the current one: a rotation that was not done.
            (
                vec![(API_TOKEN_PREVIOUS, "api-new")],
                API_TOKEN_PREVIOUS,
                "different from API_TOKEN",
            ),
            (
                vec![(OPERATOR_TOKEN_PREVIOUS, "ops-new")],
                OPERATOR_TOKEN_PREVIOUS,
                "different from OPERATOR_TOKEN",
            ),
            // One token per role, across the four values.
            (
                vec![(API_TOKEN_PREVIOUS, "ops-new")],
                "OPERATOR_TOKEN",
                "one token per role",
            ),
            (
                vec![(OPERATOR_TOKEN_PREVIOUS, "api-new")],
                OPERATOR_TOKEN_PREVIOUS,
                "one token per role",
            ),
            (
                vec![
                    (API_TOKEN_PREVIOUS, "x-old"),
                    (OPERATOR_TOKEN_PREVIOUS, "x-old"),
                ],
                OPERATOR_TOKEN_PREVIOUS,
                "one token per role",
            ),
        ] {
            let e = with(&extra).unwrap_err();
            assert_eq!(e.setting(), setting, "{extra:?}");
            assert!(e.to_string().contains(says), "{e}");
            for (_, value) in &extra {
                assert!(!e.detail().contains(value), "{}", e.detail());
            }
        }
        // A previous value alone: no rotation is under way, only a mistake.
        let e = config(&[
            ("BACKEND_URL", "http://x"),
            ("OPERATOR_TOKEN", "ops-new"),
            (API_TOKEN_PREVIOUS, "api-old"),
        ])
        .unwrap_err();
        assert_eq!(e.setting(), API_TOKEN_PREVIOUS);
        assert!(e.to_string().contains("beside API_TOKEN"), "{e}");
    }

    #[test]
    fn a_previous_webhook_secret_is_read_checked_and_reported() {
        let current = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let previous = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let hooks = |extra: Option<&'static str>| {
            let mut all = vec![
                ("BACKEND_URL", "http://x"),
                ("WEBHOOK_URL", "https://h"),
                ("WEBHOOK_SECRET", current),
            ];
            all.extend(extra.map(|p| (WEBHOOK_SECRET_PREVIOUS, p)));
            config(&all).unwrap()
        };
        let c = hooks(Some(previous));
        let Webhooks::On(w) = &c.webhooks else {
            panic!("webhooks on: {:?}", c.webhooks)
        };
        assert_eq!(w.previous_secret.as_ref().map(Vec::len), Some(24));
        assert_eq!(c.rotations(), [Previous::WebhookSecret]);
        assert!(hooks(None).rotations().is_empty());
        for wrong in [current, "whsec_c2hvcnQ=", "not-a-secret"] {
            let c = hooks(Some(wrong));
            let Webhooks::Broken(e) = &c.webhooks else {
                panic!("{wrong}: {:?}", c.webhooks)
            };
            assert_eq!(e.setting(), WEBHOOK_SECRET_PREVIOUS);
            assert!(
                !e.detail().contains(wrong),
                "never the secret: {}",
                e.detail()
            );
        }
    }

    #[test]
    fn every_previous_setting_has_its_name_secret_and_notice() {
        for p in Previous::ALL {
            assert_eq!(p.setting(), format!("{}_PREVIOUS", p.secret()));
            assert!(p.notice().contains(p.setting()), "{}", p.notice());
        }
    }

    #[test]
    fn links_are_on_with_a_secret_and_a_public_url_and_refused_half_set() {
        const SECRET: &str = "0123456789abcdef0123456789abcdef";
        let with = |pairs: &[(&str, &str)]| {
            let mut all = vec![
                ("BACKEND_URL", "https://b.test"),
                ("WEBHOOK_URL", "https://h.test"),
                ("WEBHOOK_SECRET", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            ];
            all.extend_from_slice(pairs);
            config(&all).unwrap().webhooks
        };
        let links = |w: &Webhooks| match w {
            Webhooks::On(h) => h.links.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(links(&with(&[])), None);
        let on = links(&with(&[
            ("LINK_SECRET", SECRET),
            ("PUBLIC_URL", "https://cleanup.example.com/ "),
        ]))
        .unwrap();
        assert_eq!(on.public_url, "https://cleanup.example.com");
        assert_eq!(on.extend_minutes, vec![30, 60]);
        assert_eq!(on.secret, SECRET.as_bytes());
        let listed = links(&with(&[
            ("LINK_SECRET", SECRET),
            ("PUBLIC_URL", "https://c.example"),
            ("EXTEND_LINK_MINUTES", " 120, 15,15 "),
        ]))
        .unwrap();
        assert_eq!(listed.extend_minutes, vec![15, 120]);
        // Each wrong value names its setting, never a secret's value.
        for (pairs, setting) in [
            (vec![("LINK_SECRET", SECRET)], "PUBLIC_URL"),
            (vec![("PUBLIC_URL", "https://c.example")], "LINK_SECRET"),
            (
                vec![
                    ("LINK_SECRET", "too-short"),
                    ("PUBLIC_URL", "https://c.example"),
                ],
                "LINK_SECRET",
            ),
            (
                vec![("LINK_SECRET", SECRET), ("PUBLIC_URL", "ftp://c.example")],
                "PUBLIC_URL",
            ),
            (
                vec![
                    ("LINK_SECRET", SECRET),
                    ("PUBLIC_URL", "https://c.example/?q"),
                ],
                "PUBLIC_URL",
            ),
            (
                vec![("LINK_SECRET", SECRET), ("PUBLIC_URL", "https://")],
                "PUBLIC_URL",
            ),
            (
                vec![
                    ("LINK_SECRET", SECRET),
                    ("PUBLIC_URL", "https://c.example"),
                    ("EXTEND_LINK_MINUTES", "1,2,3,4,5"),
                ],
                "EXTEND_LINK_MINUTES",
            ),
            (
                vec![
                    ("LINK_SECRET", SECRET),
                    ("PUBLIC_URL", "https://c.example"),
                    ("EXTEND_LINK_MINUTES", "0"),
                ],
                "EXTEND_LINK_MINUTES",
            ),
            (
                vec![
                    ("LINK_SECRET", SECRET),
                    ("PUBLIC_URL", "https://c.example"),
                    (LINK_SECRET_PREVIOUS, SECRET),
                ],
                LINK_SECRET_PREVIOUS,
            ),
        ] {
            let Webhooks::Broken(e) = with(&pairs) else {
                panic!("{pairs:?} refused")
            };
            assert_eq!(e.setting(), setting, "{pairs:?}");
            assert!(!e.detail().contains(SECRET), "{}", e.detail());
        }
        // During a rotation: both secrets, and the rotation listed.
        let previous = "fedcba9876543210fedcba9876543210";
        let c = config(&[
            ("BACKEND_URL", "https://b.test"),
            ("WEBHOOK_URL", "https://h.test"),
            ("WEBHOOK_SECRET", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            ("LINK_SECRET", SECRET),
            ("PUBLIC_URL", "https://c.example"),
            (LINK_SECRET_PREVIOUS, previous),
        ])
        .unwrap();
        assert_eq!(
            links(&c.webhooks).unwrap().previous_secret.as_deref(),
            Some(previous.as_bytes())
        );
        assert_eq!(c.rotations(), [Previous::LinkSecret]);
    }
}
