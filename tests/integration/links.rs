//! More time in one click, on real workerd: the signed links of `lab.expiring` and
//! `lab.idle_warning` as the webhook receiver gets them; a GET changes nothing, a POST applies
//! once, a changed or forged link is a 403 page, the lifetime cap holds, a lab that ended says
//! so; and in a real browser, the page, the click, the new end time.

use mock_backend::http::Response;
use serde_json::{json, Value};

use labs_cleanup::lab::link::{self, Action, Link, LinkConfig};

use crate::support::*;

const LINK_SECRET: &str = "itest-link-secret-0123456789abcdef";
const SESSIONS: &str = "/api/v1/labs/sessions";

/// The settings of the test's worker (durations in seconds: one `duration` unit is 1 s here).
const VARS: [(&str, &str); 5] = [
    ("PUBLIC_URL", "http://{addr}"),
    // 50 for the browser's lab of 60 (the others are shorter: that stage is skipped for them).
    ("WARN_BEFORE_MINUTES", "50,25"),
    ("EXTEND_LINK_MINUTES", "30,60"),
    ("MAX_DURATION_MINUTES", "100"),
    ("IDLE_WARN_MINUTES", "15"),
];

/// The path and query of a link (its origin is this worker's: `PUBLIC_URL`).
fn path(ctx: &Ctx, url: &str) -> String {
    url.strip_prefix(&format!("http://{}", ctx.worker.addr))
        .unwrap_or_else(|| panic!("a link to this worker: {url}"))
        .to_string()
}

fn open(ctx: &Ctx, method: &str, url: &str) -> Response {
    ctx.worker
        .unauthenticated(method, &path(ctx, url), &[], b"")
}

/// The warning of type `kind` for `lab`, once the receiver has it: its `data.links`.
fn links_of(ctx: &Ctx, lab: &str, kind: &str) -> Value {
    let got = ctx
        .receiver
        .wait(lab, 60, |d| d.iter().any(|d| d["type"] == kind));
    let body: Value = got
        .iter()
        .find(|d| d["type"] == kind)
        .and_then(|d| serde_json::from_str(d["body"].as_str()?).ok())
        .expect("the warning's body");
    body["data"]["links"].clone()
}

fn extend_url(links: &Value, minutes: u64) -> String {
    links["extend"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["minutes"] == minutes))
        .and_then(|l| l["url"].as_str())
        .unwrap_or_else(|| panic!("an extend link of {minutes}: {links}"))
        .to_string()
}

fn status(ctx: &Ctx, id: &str) -> Value {
    let r = ctx.worker.raw("GET", &format!("{SESSIONS}/{id}"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The timeline's events of `kind` with `by: link`.
fn by_link(ctx: &Ctx, id: &str, kind: &str) -> Vec<Value> {
    lab_events(ctx, id)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["type"] == kind && e["by"] == "link")
        .collect()
}

/// Every page: HTML, never cached, a policy that allows no script and no outside resource.
fn assert_a_page(r: &Response, status: u16, words: &str) {
    let text = r.text();
    assert_eq!(r.status, status, "{text}");
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    assert_eq!(r.header("Referrer-Policy"), Some("no-referrer"));
    let csp = r.header("Content-Security-Policy").unwrap_or_default();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-")
            && csp.contains("form-action 'self'"),
        "{csp}"
    );
    assert!(text.contains(words), "{words:?} in:\n{text}");
    assert!(!text.contains("<script") && !text.contains(LINK_SECRET));
}

/// `tests/browser/links.mjs`: opens `url` in Chromium, reads the page, clicks its button, and
/// reads the answer. `false`: no browser here (`support::browser`).
fn in_a_browser(url: &str) -> bool {
    let Some(chromium) = browser("links_more_time_in_one_click") else {
        return false;
    };
    run_browser("links.mjs", &chromium, &[("LINK_URL", url.to_string())]);
    true
}

pub fn links_more_time_in_one_click(ctx: &mut Ctx) {
    ctx.on_a_worker_with("links", &VARS, &[("LINK_SECRET", LINK_SECRET)], |ctx| {
        let (extend, idle, capped, ended, browser) = (
            "link-extend",
            "link-idle",
            "link-capped",
            "link-ended",
            "link-browser",
        );
        create_lab(ctx, extend, "link-user", 40, &[]);
        create_lab(ctx, browser, "link-user", 60, &[]);
        create_lab(ctx, capped, "link-user", 45, &[]);
        create_lab(ctx, ended, "link-user", 30, &[]);
        let r = ctx.worker.create(&json!({
            "lab_request_id": idle, "user_id": "link-user", "duration": 90, "idle_timeout": 20
        }));
        assert_eq!(r.status, 201, "{}", r.text());

        // lab.idle_warning: keep it active, once. A GET (a mail scanner) changes nothing.
        let keep = links_of(ctx, idle, "lab.idle_warning")["keep_active"]["url"]
            .as_str()
            .expect("data.links.keep_active.url")
            .to_string();
        assert!(
            keep.contains("/links/keep_active?lab=link-idle&warning=msg_"),
            "{keep}"
        );
        assert_a_page(&open(ctx, "GET", &keep), 200, "Keep it active</button>");
        assert!(
            by_link(ctx, idle, "activity").is_empty(),
            "a GET changed nothing"
        );
        assert_eq!(status(ctx, idle)["last_activity_at"], Value::Null);
        assert_a_page(&open(ctx, "POST", &keep), 200, "counts as active");
        let activity = by_link(ctx, idle, "activity");
        assert_eq!(activity.len(), 1, "{activity:?}");
        assert_eq!(status(ctx, idle)["last_activity_at"], activity[0]["at"]);
        let new_deadline = epoch_ms(&activity[0]["to"]);
        assert_eq!(new_deadline, epoch_ms(&activity[0]["at"]) + 20_000);
        assert_a_page(&open(ctx, "POST", &keep), 200, "This link was used already");
        assert_eq!(by_link(ctx, idle, "activity").len(), 1);

        // lab.expiring: 30 and 60 more (both within the cap of 100 for a lab of 40).
        let links = links_of(ctx, extend, "lab.expiring");
        let (thirty, sixty) = (extend_url(&links, 30), extend_url(&links, 60));
        let expires = epoch_ms(&status(ctx, extend)["expires_at"]);
        let offer = open(ctx, "GET", &thirty);
        assert_a_page(
            &offer,
            200,
            "Give it 30 duration units (30 s) more</button>",
        );
        assert_eq!(
            epoch_ms(&status(ctx, extend)["expires_at"]),
            expires,
            "a GET changed nothing"
        );
        assert!(by_link(ctx, extend, "extended").is_empty());
        assert_a_page(&open(ctx, "POST", &thirty), 200, "now ends at");
        let moved = epoch_ms(&status(ctx, extend)["expires_at"]);
        assert_eq!(moved, expires + 30_000, "extended by 30 s, once");
        let extended = by_link(ctx, extend, "extended");
        assert_eq!(extended.len(), 1, "{extended:?}");
        // Again, and the warning's other link: the same answer, the expiry moved once.
        assert_a_page(
            &open(ctx, "POST", &thirty),
            200,
            "This link was used already",
        );
        assert_a_page(
            &open(ctx, "POST", &sixty),
            200,
            "Another link of this warning was used already",
        );
        assert_eq!(epoch_ms(&status(ctx, extend)["expires_at"]), moved);

        // Changed or forged: a 403 page, nothing changed.
        let query = thirty.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let sig = query
            .rsplit_once("sig=")
            .map(|(_, s)| s)
            .unwrap_or_default();
        let flipped = format!(
            "{}{}",
            &sig[..63],
            if sig.ends_with('0') { '1' } else { '0' }
        );
        for forged in [
            thirty.replace("minutes=30", "minutes=300"),
            thirty.replace(sig, &flipped),
            thirty.replace("lab=link-extend", "lab=link-capped"),
            thirty.replace("/links/extend?", "/links/keep_active?"),
            thirty.replace(&format!("&sig={sig}"), ""),
            format!(
                "http://{}/links/extend?lab=link-extend&minutes=30&warning=msg_x&until=1&sig={}",
                ctx.worker.addr,
                "0".repeat(64)
            ),
        ] {
            for method in ["GET", "POST"] {
                assert_a_page(&open(ctx, method, &forged), 403, "This link is not valid");
            }
        }
        assert_a_page(
            &open(ctx, "PUT", &thirty),
            405,
            "Open this link in a browser",
        );
        assert_eq!(epoch_ms(&status(ctx, extend)["expires_at"]), moved);
        assert_eq!(by_link(ctx, extend, "extended").len(), 1);

        // The cap: a lab of 45 is offered 30 (45 + 60 > 100); a link for 60 signed all the same
        // (as an older setting could have) is refused, and changes nothing.
        let offered = links_of(ctx, capped, "lab.expiring");
        let minutes: Vec<u64> = offered["extend"]
            .as_array()
            .map(|l| l.iter().filter_map(|l| l["minutes"].as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(minutes, [30], "{offered}");
        let capped_at = epoch_ms(&status(ctx, capped)["expires_at"]);
        let config = LinkConfig {
            secret: LINK_SECRET.as_bytes().to_vec(),
            previous_secret: None,
            public_url: format!("http://{}", ctx.worker.addr),
            extend_minutes: vec![60],
        };
        let thirty_capped = extend_url(&offered, 30);
        let warning = thirty_capped
            .split("warning=")
            .nth(1)
            .and_then(|w| w.split('&').next())
            .expect("warning=")
            .to_string();
        let sixty_capped = link::url(
            &config,
            &Link {
                lab: capped.into(),
                action: Action::Extend,
                minutes: 60,
                warning,
                until_ms: capped_at as i64,
            },
        );
        assert_a_page(
            &open(ctx, "GET", &sixty_capped),
            409,
            "cannot be given more time",
        );
        assert_a_page(
            &open(ctx, "POST", &sixty_capped),
            409,
            "cannot be given more time",
        );
        assert_eq!(epoch_ms(&status(ctx, capped)["expires_at"]), capped_at);

        // A lab that ended: its link says so and changes nothing.
        let ended_link = extend_url(&links_of(ctx, ended, "lab.expiring"), 30);
        poll_status(ctx, ended, 60, |v| v["status"] != "scheduled");
        assert_a_page(&open(ctx, "POST", &ended_link), 409, "not running any more");
        assert!(by_link(ctx, ended, "extended").is_empty());

        // The idle lab was not ended at its old idle deadline, but at the new one: no backend
        // call for it before then (its record may be purged already: retention is seconds here).
        let calls = wait_calls(ctx, &[idle], 60, |c| !c.is_empty());
        assert_not_before(&calls, new_deadline);

        // In a real browser: the page, the click, the new end time.
        let link = extend_url(&links_of(ctx, browser, "lab.expiring"), 30);
        let before = epoch_ms(&status(ctx, browser)["expires_at"]);
        if in_a_browser(&link) {
            assert_eq!(
                epoch_ms(&status(ctx, browser)["expires_at"]),
                before + 30_000,
                "the click in the browser extended the lab once"
            );
        }

        // Nothing secret in the log.
        let log = ctx.worker.log();
        assert!(!log.contains(LINK_SECRET), "the link secret in the log");
        assert!(
            log.contains("extended by 30 duration units (30 s) with a signed link of warning msg_")
        );
    });
}
