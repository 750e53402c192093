//! The signed links' route and pages: `GET|POST /links/{action}?...`, checked (`lab::link`), and every answer as a small HTML page with no outside resource and a strict Content-Security-Policy.
//!
//! A GET only shows what a click would do, with a button that POSTs the same URL: mail
//! scanners and chat previews that open a link change nothing. Every dynamic part of a page is
//! HTML-escaped; nothing secret is on it (the signature is in the address the student opened).

use sha2::{Digest, Sha256};

use crate::lab::link::{self, Action, Answer, Link, Refused, LINKS_PATH};
use crate::lab::text::duration_units;
use crate::lab::time::rfc3339;

/// The action a path names, if it is a link's path (`/links/{action}`, any action: an unknown
/// one is refused as a wrong link).
pub fn action(path: &str) -> Option<&str> {
    path.strip_prefix(LINKS_PATH)?
        .strip_prefix('/')
        .filter(|a| !a.contains('/'))
}

/// A page: its status, its HTML, and the headers it needs beyond the fixed ones (`headers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub status: u16,
    pub html: String,
    /// `Allow`, on a 405.
    pub allow: Option<&'static str>,
}

/// The page's stylesheet: inline, allowed by its hash in the policy.
const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\
main{max-width:34rem;margin:4rem auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 4px #0002}\
h1{font-size:1.3rem;margin-top:0}button{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:6px;background:#1f6feb;color:#fff;cursor:pointer}\
.note{color:#5b6475;font-size:.9rem}";

/// The headers every page carries: no script, no outside resource, its own style by hash, a
/// form that posts only back to this worker, never framed, never cached, never a referrer (the
/// address holds the link's signature).
pub fn headers() -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "text/html; charset=utf-8".into()),
        ("Cache-Control", "no-store".into()),
        (
            "Content-Security-Policy",
            format!(
                "default-src 'none'; style-src 'sha256-{}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                style_hash()
            ),
        ),
        ("Referrer-Policy", "no-referrer".into()),
        ("X-Content-Type-Options", "nosniff".into()),
        ("X-Robots-Tag", "noindex".into()),
    ]
}

/// The base64 of the SHA-256 of the stylesheet, as a policy names an inline style.
fn style_hash() -> String {
    crate::lab::base64::base64_encode(&Sha256::digest(STYLE.as_bytes()))
}

/// `text` for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A time as a page shows it: `14:05:00 UTC on 2026-12-08`.
fn clock(ms: i64) -> String {
    let t = rfc3339(ms);
    match (t.get(11..19), t.get(..10)) {
        (Some(time), Some(date)) => format!("{time} UTC on {date}"),
        _ => t,
    }
}

fn page(status: u16, title: &str, paragraphs: &[String], button: Option<&str>) -> Page {
    let mut body = String::new();
    for p in paragraphs {
        body.push_str(&format!("<p>{p}</p>"));
    }
    if let Some(label) = button {
        // No `action`: the form posts to the address of this page, the link itself.
        body.push_str(&format!(
            "<form method=\"post\"><button type=\"submit\">{}</button></form>",
            escape(label)
        ));
    }
    Page {
        status,
        html: format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title>\
             <style>{STYLE}</style></head><body><main><h1>{title}</h1>{body}</main></body></html>",
            title = escape(title),
        ),
        allow: None,
    }
}

const NOTHING: &str = "<span class=\"note\">Nothing was changed.</span>";

/// The page for a link refused before its lab was asked: 403.
pub fn refused(why: &Refused) -> Page {
    page(
        403,
        "This link is not valid",
        &[format!("{}.", escape(&why.to_string())), NOTHING.into()],
        None,
    )
}

/// The page when this worker sends no links (`LINK_SECRET`, `PUBLIC_URL` unset): 404.
pub fn off() -> Page {
    page(
        404,
        "No such link",
        &["This service does not answer links.".into()],
        None,
    )
}

/// The page for a method other than GET and POST: 405.
pub fn wrong_method(method: &str) -> Page {
    Page {
        allow: Some("GET, POST"),
        ..page(
            405,
            "Open this link in a browser",
            &[format!(
                "A link answers GET and POST, not {}.",
                escape(method)
            )],
            None,
        )
    }
}

/// The page when the lab's object could not be asked: 503, try again.
pub fn unavailable() -> Page {
    page(
        503,
        "Try again in a moment",
        &["The service could not reach this lab just now. Nothing was changed; open the link again in a minute.".into()],
        None,
    )
}

/// The page of a lab's `answer` to `link`; `unit_ms`: one `duration` unit (for the words).
pub fn answered(link: &Link, answer: &Answer, unit_ms: i64) -> Page {
    let lab = escape(&link.lab);
    let more = escape(&duration_units(link.minutes, unit_ms));
    match (answer, link.action) {
        (Answer::Offer { ends_at_ms, new_ends_at_ms }, Action::Extend) => page(
            200,
            &format!("More time for lab {}?", link.lab),
            &[
                format!("Lab <b>{lab}</b> ends at <b>{}</b>.", clock(*ends_at_ms)),
                format!("Give it {more} more? It would then end at {}.", clock(*new_ends_at_ms)),
            ],
            Some(&format!("Give it {} more", duration_units(link.minutes, unit_ms))),
        ),
        (Answer::Offer { ends_at_ms, new_ends_at_ms }, Action::KeepActive) => page(
            200,
            &format!("Keep lab {} active?", link.lab),
            &[
                format!(
                    "Lab <b>{lab}</b> has been idle and ends at <b>{}</b>.",
                    clock(*ends_at_ms)
                ),
                format!(
                    "Keep it active? It would then not end for being idle before {}.",
                    clock(*new_ends_at_ms)
                ),
            ],
            Some("Keep it active"),
        ),
        (Answer::Applied { ends_at_ms }, Action::Extend) => page(
            200,
            "Done",
            &[format!(
                "Lab <b>{lab}</b> now ends at <b>{}</b>.",
                clock(*ends_at_ms)
            )],
            None,
        ),
        (Answer::Applied { ends_at_ms }, Action::KeepActive) => page(
            200,
            "Done",
            &[format!(
                "Lab <b>{lab}</b> counts as active: it does not end for being idle before <b>{}</b>.",
                clock(*ends_at_ms)
            )],
            None,
        ),
        (Answer::Used { at_ms, ends_at_ms, same }, action) => page(
            200,
            if *same {
                "This link was used already"
            } else {
                "Another link of this warning was used already"
            },
            &[
                format!(
                    "It was used at {}: lab <b>{lab}</b> then {} <b>{}</b>.",
                    clock(*at_ms),
                    match action {
                        Action::Extend => "ended at",
                        Action::KeepActive => "would not end for being idle before",
                    },
                    clock(*ends_at_ms)
                ),
                NOTHING.into(),
            ],
            None,
        ),
        (Answer::Outdated { ends_at_ms }, _) => page(
            409,
            "This link is out of date",
            &[
                match ends_at_ms {
                    Some(at) => format!(
                        "The end of lab <b>{lab}</b> has moved since this warning was sent: it now ends at <b>{}</b>.",
                        clock(*at)
                    ),
                    None => format!(
                        "Lab <b>{lab}</b> has changed since this warning was sent: this link no longer applies."
                    ),
                },
                NOTHING.into(),
            ],
            None,
        ),
        (Answer::Expired { until_ms }, _) => page(
            410,
            "This link has expired",
            &[
                format!(
                    "It could be used until {}, when lab <b>{lab}</b> was due to end.",
                    clock(*until_ms)
                ),
                NOTHING.into(),
            ],
            None,
        ),
        (Answer::Over { status }, _) => page(
            409,
            "This lab is not running any more",
            &[
                format!(
                    "Lab <b>{lab}</b> has ended (its status is {}).",
                    escape(status)
                ),
                NOTHING.into(),
            ],
            None,
        ),
        (Answer::Capped { max_minutes }, _) => page(
            409,
            "This lab cannot be given more time",
            &[
                format!(
                    "{more} more would make the lifetime of lab <b>{lab}</b> longer than the maximum of {}.",
                    escape(&duration_units(*max_minutes, unit_ms))
                ),
                NOTHING.into(),
            ],
            None,
        ),
        (Answer::Unknown, _) => page(
            404,
            "No such lab",
            &[
                format!("There is no lab <b>{lab}</b> (it may have been cleaned up long ago)."),
                NOTHING.into(),
            ],
            None,
        ),
    }
}

/// The link a request names (`action`: the path's last segment, `query` without `?`), checked
/// against `config`, or why it is refused (a 403 page).
pub fn check(config: &link::LinkConfig, action: &str, query: &str) -> Result<Link, Refused> {
    let (link, signature) = link::parse(action, query, |v| crate::api::percent::decode(v, true))?;
    if !link::verify(config, &link, &signature) {
        return Err(Refused::Forged);
    }
    Ok(link)
}

#[cfg(test)]
mod tests;
