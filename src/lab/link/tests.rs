//! The links' signature, parser and decision: any change to a link fails it; a link applies once, only while its warning is the lab's latest word.

use super::*;
use crate::lab::session::{Event, NewSession};

const T0: i64 = 1_795_000_000_000;
const MINUTE: i64 = 60_000;

fn config() -> LinkConfig {
    LinkConfig {
        secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        previous_secret: None,
        public_url: "https://cleanup.example.com".into(),
        extend_minutes: vec![30, 60],
    }
}

fn session(idle_minutes: Option<u64>) -> Session {
    let mut s = Session::schedule(
        NewSession {
            lab_request_id: "k8s-master-abc-123".into(),
            user_id: "u".into(),
            worker_lab_request_ids: Vec::new(),
            duration: 60,
            vm_name: None,
            idle_timeout: idle_minutes,
            labels: Default::default(),
            keep_stopped_minutes: None,
        },
        T0,
        60 * MINUTE,
    );
    if let Some(m) = idle_minutes {
        s.idle.timeout_minutes = Some(m);
        s.idle.timeout_ms = Some(m as i64 * MINUTE);
    }
    s
}

fn extend_link(s: &Session, minutes: u64) -> Link {
    Link {
        lab: s.lab_request_id.clone(),
        action: Action::Extend,
        minutes,
        warning: "msg_00112233445566778899aabbccddeeff".into(),
        until_ms: s.expires_at_ms,
    }
}

/// The query string of `url` and its action.
fn split(url: &str) -> (&str, &str) {
    let rest = url
        .strip_prefix("https://cleanup.example.com/links/")
        .unwrap();
    rest.split_once('?').unwrap()
}

/// Percent-decoding as the route does it (`api::percent`, outside the core): `%XX` only here.
fn decode(v: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut bytes = v.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: String = [bytes.next()?, bytes.next()?]
                .iter()
                .map(|&c| char::from(c))
                .collect();
            out.push(u8::from_str_radix(&hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[test]
fn a_link_reads_back_as_signed_and_verifies() {
    let c = config();
    let s = session(None);
    let link = Link {
        lab: "user@x:1+2".into(),
        ..extend_link(&s, 30)
    };
    let url = url(&c, &link);
    assert!(url.starts_with(
        "https://cleanup.example.com/links/extend?lab=user%40x%3A1%2B2&minutes=30&warning=msg_"
    ));
    let (action, query) = split(&url);
    let (read, sig) = parse(action, query, decode).unwrap();
    assert_eq!(read, link);
    assert_eq!(sig.len(), SIGNATURE_CHARS);
    assert!(verify(&c, &read, &sig));
}

#[test]
fn any_change_to_a_link_fails_its_signature() {
    let c = config();
    let s = session(Some(20));
    let link = extend_link(&s, 30);
    let sig = signature(&c.secret, &link);
    assert!(verify(&c, &link, &sig));
    let changed = [
        Link {
            lab: "k8s-master-abc-124".into(),
            ..link.clone()
        },
        Link {
            action: Action::KeepActive,
            ..link.clone()
        },
        Link {
            minutes: 31,
            ..link.clone()
        },
        Link {
            warning: "msg_00112233445566778899aabbccddeefe".into(),
            ..link.clone()
        },
        Link {
            until_ms: link.until_ms + 1,
            ..link.clone()
        },
    ];
    for other in changed {
        assert!(!verify(&c, &other, &sig), "{other:?}");
    }
    // A signature changed in one digit, cut short, in capitals or under another secret.
    let mut flipped = sig.clone().into_bytes();
    flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
    for bad in [
        String::from_utf8(flipped).unwrap(),
        sig[..63].to_string(),
        sig.to_uppercase(),
        signature(b"another secret, also 32 bytes ok", &link),
        String::new(),
        "é".repeat(32),
    ] {
        if bad != sig {
            assert!(!verify(&c, &link, &bad), "{bad}");
        }
    }
}

#[test]
fn during_a_rotation_both_secrets_verify_and_only_they() {
    let old = config();
    let s = session(None);
    let link = extend_link(&s, 30);
    let old_sig = signature(&old.secret, &link);
    let new = LinkConfig {
        secret: b"a new secret of thirty-two bytes".to_vec(),
        previous_secret: Some(old.secret.clone()),
        ..old.clone()
    };
    assert!(verify(&new, &link, &old_sig));
    assert!(verify(&new, &link, &signature(&new.secret, &link)));
    let done = LinkConfig {
        previous_secret: None,
        ..new.clone()
    };
    assert!(!verify(&done, &link, &old_sig));
}

#[test]
fn malformed_links_are_named_never_read() {
    let q = "lab=a&minutes=30&warning=msg_1&until=5&sig=00";
    assert!(parse("extend", q, decode).is_ok());
    for (action, query, part) in [
        ("stretch", q, "unknown action"),
        ("extend", "lab=a&warning=msg_1&until=5&sig=00", "minutes"),
        (
            "extend",
            "lab=a&minutes=0&warning=msg_1&until=5&sig=00",
            "minutes",
        ),
        (
            "extend",
            "lab=a&minutes=-1&warning=msg_1&until=5&sig=00",
            "minutes",
        ),
        ("keep_active", q, "minutes"),
        (
            "extend",
            "lab=&minutes=30&warning=msg_1&until=5&sig=00",
            "lab",
        ),
        (
            "extend",
            "lab=a&lab=b&minutes=30&warning=msg_1&until=5&sig=00",
            "a repeated part",
        ),
        (
            "extend",
            "lab=a&minutes=30&warning=msg_1&until=x&sig=00",
            "until",
        ),
        ("extend", "lab=a&minutes=30&warning=msg_1&until=5", "sig"),
        (
            "extend",
            "lab=a&minutes=30&warning=&until=5&sig=00",
            "warning",
        ),
        (
            "extend",
            "lab=%zz&minutes=30&warning=msg_1&until=5&sig=00",
            "an escape",
        ),
        (
            "extend",
            "lab=a&minutes=30&warning=msg_1&until=5&sig=00&x=1",
            "an unknown part",
        ),
        ("extend", "lab", "a part"),
    ] {
        assert_eq!(
            parse(action, query, decode),
            Err(Refused::Malformed(part)),
            "{action}?{query}"
        );
    }
}

#[test]
fn a_link_applies_only_while_its_warning_is_the_latest_word() {
    let s = session(None);
    let link = extend_link(&s, 30);
    let now = s.expires_at_ms - 5 * MINUTE;
    assert_eq!(
        decide(&s, &link, now, 600, MINUTE),
        Ok(s.expires_at_ms + 30 * MINUTE)
    );
    // At the deadline it named, and after: expired.
    assert_eq!(
        decide(&s, &link, s.expires_at_ms, 600, MINUTE),
        Err(Answer::Expired {
            until_ms: s.expires_at_ms
        })
    );
    // The lab's expiry moved (an extend by the API): outdated, with the expiry now.
    let mut moved = s.clone();
    moved.expires_at_ms += MINUTE;
    assert_eq!(
        decide(&moved, &link, now, 600, MINUTE),
        Err(Answer::Outdated {
            ends_at_ms: Some(moved.expires_at_ms)
        })
    );
    // Past the lifetime cap: capped (60 + 30 > 80).
    assert_eq!(
        decide(&s, &link, now, 80, MINUTE),
        Err(Answer::Capped { max_minutes: 80 })
    );
    // A lab that ended: over.
    let mut ended = s.clone();
    ended.end_now(now);
    assert!(matches!(
        decide(&ended, &link, now, 600, MINUTE),
        Err(Answer::Over { .. })
    ));
}

#[test]
fn a_used_link_answers_what_it_did_and_its_siblings_too() {
    let mut s = session(None);
    let thirty = extend_link(&s, 30);
    let sixty = extend_link(&s, 60);
    let now = s.expires_at_ms - 5 * MINUTE;
    let until = decide(&s, &thirty, now, 600, MINUTE).unwrap();
    // What the lab's object does on a click.
    let from = s.expires_at_ms;
    s.extend(30, MINUTE, 600).unwrap();
    assert_eq!(s.expires_at_ms, until);
    s.timeline.push(Event {
        from: Some(from),
        to: Some(s.expires_at_ms),
        by: Some(By::Link),
        ..Event::new(Kind::Extended, now)
    });
    let used = |same| Answer::Used {
        at_ms: now,
        ends_at_ms: until,
        same,
    };
    assert_eq!(decide(&s, &thirty, now + 1, 600, MINUTE), Err(used(true)));
    assert_eq!(decide(&s, &sixty, now + 1, 600, MINUTE), Err(used(false)));
    // Still after the deadline it named, and after the lab ended.
    assert_eq!(
        decide(&s, &thirty, until + MINUTE, 600, MINUTE),
        Err(used(true))
    );
    // An extend by the API (not a link) from the same expiry is not a use of the link.
    let mut by_api = session(None);
    by_api.timeline.push(Event {
        from: Some(by_api.expires_at_ms),
        to: Some(by_api.expires_at_ms + MINUTE),
        by: Some(By::Api),
        ..Event::new(Kind::Extended, now)
    });
    by_api.expires_at_ms += MINUTE;
    assert!(matches!(
        decide(&by_api, &thirty, now, 600, MINUTE),
        Err(Answer::Outdated { .. })
    ));
}

#[test]
fn keep_active_needs_the_idle_deadline_it_named() {
    let s = session(Some(20));
    let deadline = crate::lab::wake::idle_at(&s).unwrap();
    let link = Link {
        action: Action::KeepActive,
        minutes: 0,
        until_ms: deadline,
        ..extend_link(&s, 0)
    };
    let now = deadline - 2 * MINUTE;
    assert_eq!(decide(&s, &link, now, 600, MINUTE), Ok(now + 20 * MINUTE));
    // Near the expiry the idle deadline is capped by it.
    let late = Session {
        expires_at_ms: now + 10 * MINUTE,
        ..s.clone()
    };
    assert_eq!(
        decide(&late, &link, now, 600, MINUTE),
        Ok(now + 10 * MINUTE)
    );
    // Activity since the warning moved the deadline: outdated.
    let mut active = s.clone();
    active.idle.last_activity_ms = Some(now - MINUTE);
    assert!(matches!(
        decide(&active, &link, now, 600, MINUTE),
        Err(Answer::Outdated { .. })
    ));
    // A lab without an idle timeout has no idle deadline.
    assert_eq!(
        decide(&session(None), &link, now, 600, MINUTE),
        Err(Answer::Outdated { ends_at_ms: None })
    );
}

#[test]
fn warnings_offer_what_the_cap_allows_and_links_rebuild_the_same() {
    let c = config();
    let s = session(None);
    assert_eq!(extend_minutes(&c, &s, 600), vec![30, 60]);
    assert_eq!(extend_minutes(&c, &s, 100), vec![30]);
    assert_eq!(extend_minutes(&c, &s, 60), Vec::<u64>::new());
    let links = links(&c, "lab-1", "lab.expiring", "msg_1", 99, &[30, 60]);
    let extend = links.extend.clone().unwrap();
    assert_eq!(extend.len(), 2);
    assert_eq!(links.keep_active, None);
    assert_eq!(extend[1].minutes, 60);
    assert!(extend[1]
        .url
        .contains("/links/extend?lab=lab-1&minutes=60&warning=msg_1&until=99&sig="));
    assert_eq!(
        links,
        super::links(&c, "lab-1", "lab.expiring", "msg_1", 99, &[30, 60])
    );
    let idle = super::links(&c, "lab-1", "lab.idle_warning", "msg_2", 77, &[]);
    assert_eq!(idle.extend, None);
    // A warning whose lab the cap allows nothing more: an empty list, said as such.
    let none = super::links(&c, "lab-1", "lab.expiring", "msg_1", 99, &[]);
    assert_eq!(serde_json::to_string(&none).unwrap(), r#"{"extend":[]}"#);
    let url = idle.keep_active.unwrap().url;
    assert!(url.contains("/links/keep_active?lab=lab-1&warning=msg_2&until=77&sig="));
    let (action, query) = split(&url);
    let (link, sig) = parse(action, query, decode).unwrap();
    assert!(verify(&c, &link, &sig));
}
