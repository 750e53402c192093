//! A link as signed: its fields, its HMAC-SHA256 under `LINK_SECRET`, its URL and the parser that reads it back; the links a warning carries.
//!
//! A leaf of the core (it reads no record): the settings, the webhook bodies and the routes use it.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Where links are answered: `{PUBLIC_URL}/links/{action}?...`.
pub const LINKS_PATH: &str = "/links";
/// Most values of `EXTEND_LINK_MINUTES` (links per `lab.expiring`).
pub const MAX_EXTEND_LINKS: usize = 4;
/// Longest `PUBLIC_URL`, in characters (a link is at most about this plus 300).
pub const MAX_PUBLIC_URL_CHARS: usize = 200;
/// The characters of a signature: hex of the 32 bytes of an HMAC-SHA256.
pub const SIGNATURE_CHARS: usize = 64;

/// The links' settings (on when `LINK_SECRET` and `PUBLIC_URL` are set, with webhooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// `LINK_SECRET`'s bytes: links are signed with it.
    pub secret: Vec<u8>,
    /// `LINK_SECRET_PREVIOUS`, during a rotation: links signed with it are still accepted.
    pub previous_secret: Option<Vec<u8>>,
    /// `PUBLIC_URL` without a trailing slash: where this worker answers.
    pub public_url: String,
    /// `EXTEND_LINK_MINUTES`: the extend links of `lab.expiring`, in `duration` units.
    pub extend_minutes: Vec<u64>,
}

/// What a link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The expiry `minutes` later, as `POST .../extend` does.
    Extend,
    /// Counts as activity, as `POST .../activity` does.
    KeepActive,
}

impl Action {
    pub const ALL: [Action; 2] = [Action::Extend, Action::KeepActive];

    pub fn name(self) -> &'static str {
        match self {
            Action::Extend => "extend",
            Action::KeepActive => "keep_active",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

crate::lab::named_enum!(Action, Action::parse);

/// One link, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub lab: String,
    pub action: Action,
    /// The extension, in `duration` units (0 for keep-active).
    pub minutes: u64,
    /// The `webhook-id` of the warning it came with.
    pub warning: String,
    /// The deadline the warning was for (expiry or idle deadline, ms): the link's own expiry.
    pub until_ms: i64,
}

/// Why a link is refused before its lab is asked (a 403 page: the words say which part).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this link is incomplete or malformed ({0})")]
    Malformed(&'static str),
    #[error(
        "this link's signature does not match it: it was changed or was not made by this service"
    )]
    Forged,
}

type HmacSha256 = Hmac<Sha256>;

/// The signed message: the five fields as one JSON array (unambiguous, whatever they hold).
fn mac(secret: &[u8], link: &Link) -> HmacSha256 {
    let message = serde_json::to_string(&(
        "labs-cleanup link v1",
        &link.lab,
        link.action.name(),
        link.minutes,
        &link.warning,
        link.until_ms,
    ))
    .unwrap_or_default();
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    mac
}

/// The link's signature under `secret`: 64 hex digits.
pub fn signature(secret: &[u8], link: &Link) -> String {
    mac(secret, link)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `signature` (as the URL carried it) is the link's under the current secret or,
/// during a rotation, the previous one. Compared in constant time (`Mac::verify_slice`), both
/// secrets always tried.
pub fn verify(config: &LinkConfig, link: &Link, signature: &str) -> bool {
    let Some(bytes) = from_hex(signature) else {
        return false;
    };
    let current = mac(&config.secret, link).verify_slice(&bytes).is_ok();
    let previous = config
        .previous_secret
        .as_ref()
        .is_some_and(|p| mac(p, link).verify_slice(&bytes).is_ok());
    current | previous
}

/// 32 bytes from exactly 64 lowercase hex digits (as `signature` writes them: one spelling).
fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if text.len() != SIGNATURE_CHARS || !text.bytes().all(digit) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// `text` percent-encoded for a query string: everything but the unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The link's query string (without `?`), signature last.
pub fn query(config: &LinkConfig, link: &Link) -> String {
    let mut q = format!("lab={}", encode(&link.lab));
    if link.action == Action::Extend {
        q.push_str(&format!("&minutes={}", link.minutes));
    }
    q.push_str(&format!(
        "&warning={}&until={}&sig={}",
        encode(&link.warning),
        link.until_ms,
        signature(&config.secret, link)
    ));
    q
}

/// The link's URL: `{PUBLIC_URL}/links/{action}?lab=...&minutes=...&warning=...&until=...&sig=...`.
pub fn url(config: &LinkConfig, link: &Link) -> String {
    format!(
        "{}{LINKS_PATH}/{}?{}",
        config.public_url,
        link.action.name(),
        query(config, link)
    )
}

/// The link a request names, and its signature: the action from the path's last segment, the
/// rest from the query string (`decode` percent-decodes). Every field exactly once, nothing
/// else; a malformed part is named.
pub fn parse(
    action: &str,
    query: &str,
    decode: impl Fn(&str) -> Option<String>,
) -> Result<(Link, String), Refused> {
    let action = Action::parse(action).ok_or(Refused::Malformed("unknown action"))?;
    let (mut lab, mut minutes, mut warning, mut until, mut sig) = (None, None, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or(Refused::Malformed("a part"))?;
        let value = decode(value).ok_or(Refused::Malformed("an escape"))?;
        let slot = match key {
            "lab" => &mut lab,
            "minutes" => &mut minutes,
            "warning" => &mut warning,
            "until" => &mut until,
            "sig" => &mut sig,
            _ => return Err(Refused::Malformed("an unknown part")),
        };
        if slot.replace(value).is_some() {
            return Err(Refused::Malformed("a repeated part"));
        }
    }
    let minutes = match (action, minutes) {
        (Action::Extend, Some(m)) => m
            .parse::<u64>()
            .ok()
            .filter(|m| *m > 0)
            .ok_or(Refused::Malformed("minutes"))?,
        (Action::Extend, None) => return Err(Refused::Malformed("minutes")),
        (Action::KeepActive, None) => 0,
        (Action::KeepActive, Some(_)) => return Err(Refused::Malformed("minutes")),
    };
    let link = Link {
        lab: lab
            .filter(|l| !l.is_empty())
            .ok_or(Refused::Malformed("lab"))?,
        action,
        minutes,
        warning: warning
            .filter(|w| !w.is_empty())
            .ok_or(Refused::Malformed("warning"))?,
        until_ms: until
            .and_then(|u| u.parse::<i64>().ok())
            .ok_or(Refused::Malformed("until"))?,
    };
    Ok((link, sig.ok_or(Refused::Malformed("sig"))?))
}

/// `data.links` of the warning `warning` (its `webhook-id`) of type `event_type` for lab `lab`,
/// naming the deadline `until_ms`: an extend link per value of `minutes` for `lab.expiring`,
/// the keep-active link for `lab.idle_warning`. Built at each delivery from what the event
/// keeps (the deadline, the minutes), signed with the current secret.
pub fn links(
    config: &LinkConfig,
    lab: &str,
    event_type: &str,
    warning: &str,
    until_ms: i64,
    minutes: &[u64],
) -> Links {
    let link = |action, minutes| Link {
        lab: lab.to_string(),
        action,
        minutes,
        warning: warning.to_string(),
        until_ms,
    };
    if event_type == "lab.idle_warning" {
        Links {
            extend: None,
            keep_active: Some(KeepActiveLink {
                url: url(config, &link(Action::KeepActive, 0)),
            }),
        }
    } else {
        Links {
            extend: Some(
                minutes
                    .iter()
                    .map(|&m| ExtendLink {
                        minutes: m,
                        url: url(config, &link(Action::Extend, m)),
                    })
                    .collect(),
            ),
            keep_active: None,
        }
    }
}

/// `data.links` of a warning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    /// `lab.expiring`: one per extension the lifetime cap allows (an empty list: none does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend: Option<Vec<ExtendLink>>,
    /// `lab.idle_warning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_active: Option<KeepActiveLink>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendLink {
    pub minutes: u64,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepActiveLink {
    pub url: String,
}
