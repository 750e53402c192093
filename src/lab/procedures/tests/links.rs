//! Signed links end to end at the lab's object: the warnings carry them, a GET changes nothing, a POST applies once within the cap, the timeline says `by: link`.

use super::*;
use crate::lab::link::{Action, Answer, Link};

const LINKS: [(&str, &str); 3] = [
    ("LINK_SECRET", "0123456789abcdef0123456789abcdef"),
    ("PUBLIC_URL", "https://cleanup.example.com/"),
    ("WARN_BEFORE_MINUTES", "10"),
];

/// The links of the deliveries of type `kind`, read back from their URLs.
fn links_of(world: &World, kind: &str) -> Vec<Link> {
    let config = match &world.config.webhooks {
        crate::lab::config::Webhooks::On(h) => h.links.clone().unwrap(),
        _ => panic!("webhooks on"),
    };
    let mut out = Vec::new();
    for d in world.deliveries.borrow().iter() {
        let v: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        if v["type"] != kind {
            continue;
        }
        let links = &v["data"]["links"];
        let urls: Vec<String> = match kind {
            "lab.expiring" => links["extend"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["url"].as_str().unwrap().to_string())
                .collect(),
            _ => vec![links["keep_active"]["url"].as_str().unwrap().to_string()],
        };
        for url in urls {
            let rest = url
                .strip_prefix("https://cleanup.example.com/links/")
                .unwrap();
            let (action, query) = rest.split_once('?').unwrap();
            // No escapes in these links (ids of plain characters): read as they are.
            let (link, sig) = crate::lab::link::parse(action, query, |v| Some(v.to_string()))
                .expect("a well-formed link");
            assert!(crate::lab::link::verify(&config, &link, &sig));
            out.push(link);
        }
    }
    out
}

fn click(world: &World, link: &Link, apply: bool) -> Answer {
    match world.request(Request::Link {
        link: link.clone(),
        apply,
    }) {
        Ok(Reply::Link { answer, .. }) => answer,
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expiring_warning_links_extend_once_and_a_get_changes_nothing() {
    let world = World::new(config(&LINKS));
    world.create(lab("m", &[], 60));
    world.run(T0 + 51 * MINUTE);
    let links = links_of(&world, "lab.expiring");
    assert_eq!(
        links.iter().map(|l| l.minutes).collect::<Vec<_>>(),
        vec![30, 60]
    );
    assert!(links
        .iter()
        .all(|l| l.until_ms == T0 + 60 * MINUTE && l.lab == "m"));
    let (thirty, sixty) = (&links[0], &links[1]);

    // A GET (a mail scanner, a preview): the offer, and nothing written.
    let before = world.session().unwrap();
    let rows = world.storage_rows.get();
    assert_eq!(
        click(&world, thirty, false),
        Answer::Offer {
            ends_at_ms: T0 + 60 * MINUTE,
            new_ends_at_ms: T0 + 90 * MINUTE
        }
    );
    assert_eq!(world.session().unwrap(), before);
    assert_eq!(world.storage_rows.get(), rows);

    // The click: extended once, by the link, in the timeline.
    let clicked = world.now.get();
    assert_eq!(
        click(&world, thirty, true),
        Answer::Applied {
            ends_at_ms: T0 + 90 * MINUTE
        }
    );
    let s = world.session().unwrap();
    assert_eq!(s.expires_at_ms, T0 + 90 * MINUTE);
    assert_eq!(s.extended_minutes, 30);
    let view = s.timeline.view(&s.vm_ids(), &Default::default());
    let last = view["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "extended");
    assert_eq!(last["by"], "link");
    assert_eq!(world.alarm.get().map(|a| a > T0 + 60 * MINUTE), Some(true));

    // Again, and its sibling: the same answer, nothing more.
    let used = |same| Answer::Used {
        at_ms: clicked,
        ends_at_ms: T0 + 90 * MINUTE,
        same,
    };
    assert_eq!(click(&world, thirty, true), used(true));
    assert_eq!(click(&world, sixty, true), used(false));
    assert_eq!(world.session().unwrap().expires_at_ms, T0 + 90 * MINUTE);

    // The next warning, for the new expiry, carries links of its own, which work.
    world.run(T0 + 81 * MINUTE);
    let next: Vec<Link> = links_of(&world, "lab.expiring")
        .into_iter()
        .filter(|l| l.until_ms == T0 + 90 * MINUTE)
        .collect();
    assert_eq!(next.len(), 2);
    assert_eq!(
        click(&world, &next[0], true),
        Answer::Applied {
            ends_at_ms: T0 + 120 * MINUTE
        }
    );
    // The first warning's link still answers what it did, and changes nothing.
    assert_eq!(click(&world, thirty, true), used(true));
    assert_eq!(world.session().unwrap().expires_at_ms, T0 + 120 * MINUTE);
}

#[test]
fn links_stay_within_the_lifetime_cap_and_end_with_the_lab() {
    let world = World::new(config(&[
        LINKS[0],
        LINKS[1],
        LINKS[2],
        ("MAX_DURATION_MINUTES", "100"),
    ]));
    world.create(lab("m", &[], 60));
    world.run(T0 + 51 * MINUTE);
    // Only what the cap allows is offered: 60 + 30 <= 100 < 60 + 60.
    let links = links_of(&world, "lab.expiring");
    assert_eq!(
        links.iter().map(|l| l.minutes).collect::<Vec<_>>(),
        vec![30]
    );
    // A link for more (signed, as an older setting may have made it) is capped, changing nothing.
    let sixty = Link {
        minutes: 60,
        ..links[0].clone()
    };
    assert_eq!(
        click(&world, &sixty, true),
        Answer::Capped { max_minutes: 100 }
    );
    assert_eq!(world.session().unwrap().expires_at_ms, T0 + 60 * MINUTE);
    // The lab ended: the link is over; past its deadline, the link has expired.
    world.run(T0 + 61 * MINUTE);
    assert!(matches!(
        click(&world, &links[0], true),
        Answer::Over { .. }
    ));
    assert_eq!(world.session().unwrap().extended_minutes, 0);
    // A lab that does not exist.
    let other = World::new(config(&LINKS));
    assert_eq!(click(&other, &links[0], true), Answer::Unknown);
}

#[test]
fn an_idle_warning_links_keep_active_as_activity() {
    let world = World::new(config(&[LINKS[0], LINKS[1], ("IDLE_WARN_MINUTES", "5")]));
    world.create(NewSession {
        idle_timeout: Some(20),
        ..lab("m", &[], 120)
    });
    world.run(T0 + 16 * MINUTE);
    let links = links_of(&world, "lab.idle_warning");
    assert_eq!(links.len(), 1);
    let keep = &links[0];
    assert_eq!(keep.action, Action::KeepActive);
    assert_eq!(keep.until_ms, T0 + 20 * MINUTE);
    assert!(matches!(click(&world, keep, false), Answer::Offer { .. }));
    assert_eq!(world.session().unwrap().idle.last_activity_ms, None);
    let clicked = world.now.get();
    assert_eq!(
        click(&world, keep, true),
        Answer::Applied {
            ends_at_ms: clicked + 20 * MINUTE
        }
    );
    let s = world.session().unwrap();
    assert_eq!(s.idle.last_activity_ms, Some(clicked));
    assert_eq!(crate::lab::wake::idle_at(&s), Some(clicked + 20 * MINUTE));
    let view = s.timeline.view(&s.vm_ids(), &Default::default());
    let last = view["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["type"].clone(), last["by"].clone()),
        ("activity".into(), "link".into())
    );
    assert!(matches!(
        click(&world, keep, true),
        Answer::Used { same: true, .. }
    ));
    // Not ended at the old idle deadline.
    world.run(T0 + 25 * MINUTE);
    assert_eq!(status(&world), Some(Status::Scheduled));
}

#[test]
fn without_links_the_warnings_carry_none() {
    let world = World::new(config(&[LINKS[2]]));
    world.create(lab("m", &[], 60));
    world.run(T0 + 51 * MINUTE);
    let body: serde_json::Value = serde_json::from_str(&world.deliveries.borrow()[0].body).unwrap();
    assert_eq!(body["type"], "lab.expiring");
    assert!(body["data"].get("links").is_none());
    // A link the lab is asked about anyway (made under settings since removed) is judged the
    // same: the route refuses it first when links are off.
    let l = Link {
        lab: "m".into(),
        action: Action::Extend,
        minutes: 30,
        warning: "msg_1".into(),
        until_ms: T0 + 60 * MINUTE,
    };
    assert!(matches!(click(&world, &l, false), Answer::Offer { .. }));
}
