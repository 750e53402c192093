//! The links' pages: each answer's status and words, nothing unescaped, a policy that allows the page's own style and nothing else.

use super::*;
use crate::lab::link::{url, LinkConfig};

const MINUTE: i64 = 60_000;
const AT: i64 = 1_796_738_700_000; // 2026-12-08T14:05:00Z

fn link(action: Action) -> Link {
    Link {
        lab: "k8s-master-abc-123".into(),
        action,
        minutes: if action == Action::Extend { 30 } else { 0 },
        warning: "msg_1".into(),
        until_ms: AT,
    }
}

#[test]
fn only_link_paths_name_an_action() {
    assert_eq!(action("/links/extend"), Some("extend"));
    assert_eq!(action("/links/anything"), Some("anything"));
    for path in [
        "/links",
        "/links/",
        "/links/a/b",
        "/linksx/extend",
        "/api/v1/links/extend",
    ] {
        assert!(action(path).filter(|a| !a.is_empty()).is_none(), "{path}");
    }
}

#[test]
fn a_get_offers_and_its_button_posts_back() {
    let p = answered(
        &link(Action::Extend),
        &Answer::Offer {
            ends_at_ms: AT,
            new_ends_at_ms: AT + 30 * MINUTE,
        },
        MINUTE,
    );
    assert_eq!(p.status, 200);
    assert!(
        p.html
            .contains("Lab <b>k8s-master-abc-123</b> ends at <b>14:05:00 UTC on 2026-12-08</b>."),
        "{}",
        p.html
    );
    assert!(p
        .html
        .contains("Give it 30 minutes more? It would then end at 14:35:00 UTC on 2026-12-08."));
    assert!(p.html.contains(
        "<form method=\"post\"><button type=\"submit\">Give it 30 minutes more</button></form>"
    ));
    // No script, no outside resource.
    for absent in ["<script", "src=", "href=", "http"] {
        assert!(!p.html.contains(absent), "{absent}");
    }
    let keep = answered(
        &link(Action::KeepActive),
        &Answer::Offer {
            ends_at_ms: AT,
            new_ends_at_ms: AT + 20 * MINUTE,
        },
        MINUTE,
    );
    assert!(keep.html.contains("Keep it active</button>"));
}

#[test]
fn every_answer_has_its_status_and_only_an_offer_a_button() {
    let cases = [
        (
            Answer::Applied { ends_at_ms: AT },
            200,
            "now ends at <b>14:05:00 UTC",
        ),
        (
            Answer::Used {
                at_ms: AT,
                ends_at_ms: AT,
                same: true,
            },
            200,
            "This link was used already",
        ),
        (
            Answer::Used {
                at_ms: AT,
                ends_at_ms: AT,
                same: false,
            },
            200,
            "Another link of this warning was used already",
        ),
        (
            Answer::Outdated {
                ends_at_ms: Some(AT),
            },
            409,
            "has moved",
        ),
        (
            Answer::Outdated { ends_at_ms: None },
            409,
            "no longer applies",
        ),
        (Answer::Expired { until_ms: AT }, 410, "expired"),
        (
            Answer::Over {
                status: "stopped".into(),
            },
            409,
            "its status is stopped",
        ),
        (
            Answer::Capped { max_minutes: 240 },
            409,
            "maximum of 240 minutes",
        ),
        (Answer::Unknown, 404, "There is no lab"),
    ];
    for (answer, status, words) in cases {
        let p = answered(&link(Action::Extend), &answer, MINUTE);
        assert_eq!(p.status, status, "{answer:?}");
        assert!(p.html.contains(words), "{answer:?}: {}", p.html);
        assert!(!p.html.contains("<form"), "{answer:?}");
        if !matches!(answer, Answer::Applied { .. }) {
            assert!(p.html.contains("Nothing was changed."), "{answer:?}");
        }
    }
    assert_eq!(refused(&Refused::Forged).status, 403);
    assert_eq!(off().status, 404);
    let wrong = wrong_method("DELETE");
    assert_eq!((wrong.status, wrong.allow), (405, Some("GET, POST")));
    assert_eq!(unavailable().status, 503);
}

#[test]
fn nothing_from_outside_reaches_a_page_unescaped() {
    let hostile = "<script>alert('x')</script>&\"";
    let l = Link {
        lab: hostile.into(),
        ..link(Action::Extend)
    };
    let p = answered(
        &l,
        &Answer::Over {
            status: hostile.into(),
        },
        MINUTE,
    );
    assert!(!p.html.contains("<script"), "{}", p.html);
    assert!(p
        .html
        .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
    assert!(!wrong_method(hostile).html.contains("<script"));
}

#[test]
fn the_policy_allows_exactly_the_pages_own_style() {
    let csp = headers()
        .into_iter()
        .find(|(k, _)| *k == "Content-Security-Policy")
        .unwrap()
        .1;
    assert!(csp.starts_with("default-src 'none'; style-src 'sha256-"));
    assert!(csp.contains("form-action 'self'") && csp.contains("frame-ancestors 'none'"));
    // The hash is the style's, as a browser computes it (base64 of the SHA-256 of its text).
    let hash = crate::lab::base64::base64_encode(&Sha256::digest(STYLE.as_bytes()));
    assert!(csp.contains(&format!("'sha256-{hash}'")));
    let page = answered(&link(Action::Extend), &Answer::Unknown, MINUTE);
    assert!(page.html.contains(&format!("<style>{STYLE}</style>")));
}

#[test]
fn check_takes_this_services_links_and_refuses_the_rest() {
    let config = LinkConfig {
        secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        previous_secret: None,
        public_url: "https://c.example".into(),
        extend_minutes: vec![30],
    };
    let l = link(Action::Extend);
    let u = url(&config, &l);
    let query = u.split_once('?').unwrap().1;
    assert_eq!(check(&config, "extend", query), Ok(l.clone()));
    assert_eq!(
        check(
            &config,
            "extend",
            &query.replace("minutes=30", "minutes=300")
        ),
        Err(Refused::Forged)
    );
    assert_eq!(
        check(&config, "keep_active", query),
        Err(Refused::Malformed("minutes"))
    );
    let other = LinkConfig {
        secret: b"another secret, thirty-two bytes".to_vec(),
        ..config.clone()
    };
    assert_eq!(check(&other, "extend", query), Err(Refused::Forged));
}
