//! Checks `docs/openapi.yaml` and the documented examples against the code: one source of truth where the docs restate it.

use std::collections::BTreeSet;

use serde_yaml::Value;

use crate::api::error::ApiError;
use crate::api::routes::routes;
use crate::lab::config;
use crate::lab::session::{NewSession, Session};

const SPEC: &str = include_str!("../../docs/openapi.yaml");
const API_MD: &str = include_str!("../../docs/API.md");
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn spec() -> Value {
    serde_yaml::from_str(SPEC).expect("docs/openapi.yaml is YAML")
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, key| {
        v.get(*key)
            .unwrap_or_else(|| panic!("docs/openapi.yaml has no {}", path.join(".")))
    })
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_sequence()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// The keys of the status view as the code serializes it.
fn view_keys() -> BTreeSet<String> {
    let session = Session::schedule(
        NewSession {
            lab_request_id: "m".into(),
            user_id: "u".into(),
            worker_lab_request_ids: vec![],
            duration: 1,
            vm_name: None,
            idle_timeout: None,
            labels: Default::default(),
            keep_stopped_minutes: None,
        },
        0,
        1,
    );
    serde_json::to_value(session.view())
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_spec_lists_exactly_the_served_routes() {
    let spec = spec();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in get(&spec, &["paths"]).as_mapping().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                documented.push((path.as_str().unwrap().into(), method.to_uppercase()));
            }
        }
    }
    let mut served: Vec<(String, String)> = routes()
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(|m| (p.to_string(), m.to_string())))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
}

#[test]
fn every_operation_declares_the_answers_every_route_can_give() {
    let spec = spec();
    for (path, item) in get(&spec, &["paths"]).as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let responses = get(op, &["responses"]);
            let mut must = vec!["405", "500", "503"];
            if path.starts_with("/api/") {
                must.push("401");
            }
            for status in must {
                assert!(
                    responses.get(status).is_some(),
                    "{method} {path} does not declare {status}"
                );
            }
        }
    }
}

#[test]
fn the_error_codes_are_those_of_the_code() {
    let spec = spec();
    let documented = get(
        &spec,
        &[
            "components",
            "schemas",
            "Error",
            "properties",
            "error",
            "properties",
            "code",
            "enum",
        ],
    );
    let documented: Vec<&str> = documented
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(documented, ApiError::CODES);
    // docs/API.md's error table has a row per code.
    for code in ApiError::CODES {
        assert!(
            API_MD.contains(&format!("| `{code}` |")),
            "docs/API.md has no row for {code}"
        );
    }
}

#[test]
fn the_session_schema_is_the_status_view() {
    let spec = spec();
    let schema = get(&spec, &["components", "schemas", "Session"]);
    let required = strings(get(schema, &["required"]));
    let properties: BTreeSet<String> = get(schema, &["properties"])
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let view = view_keys();
    assert_eq!(required, view, "Session.required");
    // A stopped lab's view says when its VMs are deleted (the grace stage); no other does.
    let mut stopped = view.clone();
    stopped.insert("delete_at".into());
    assert_eq!(properties, stopped, "Session.properties");
}

#[test]
fn the_documented_status_body_is_the_status_view() {
    // The first JSON block after "## The session" in docs/API.md.
    let section = API_MD
        .split("## The session")
        .nth(1)
        .expect("docs/API.md has a section on the session");
    let block = section
        .split("```json")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a JSON example");
    let example: serde_json::Value = serde_json::from_str(block).expect("the example is JSON");
    let keys: BTreeSet<String> = example.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, view_keys());
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn required_and_properties(schema: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let required = strings(get(schema, &["required"]));
    let properties = get(schema, &["properties"])
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    (required, properties)
}

#[test]
fn the_fleet_schemas_are_what_the_code_answers() {
    use crate::api::fleet;
    use crate::lab::index::IndexRow;
    let spec = spec();
    let row = IndexRow {
        lab_request_id: "m".into(),
        user_id: "u".into(),
        lab_type: "single_vm".into(),
        vm_count: 1,
        status: crate::lab::status::Status::Retrying,
        created_at: 0,
        expires_at: 1,
        attempts: 1,
        next_attempt_at: Some(2),
        pending_count: 1,
        already_gone_count: 0,
        last_error: None,
        completed_at: None,
        updated_at: 3,
        revision: 4,
        origin: crate::lab::session::Origin::Inventory,
        end_reason: None,
        labels: Default::default(),
        vms_done: None,
        first: false,
    };
    let listed = serde_json::to_value(fleet::listed(&row, 3)).unwrap();
    let (required, properties) =
        required_and_properties(get(&spec, &["components", "schemas", "ListedLab"]));
    assert_eq!(required, keys(&listed), "ListedLab.required");
    // A stopped lab's row adds when its VMs are deleted (the grace stage).
    let stopped = IndexRow {
        status: crate::lab::status::Status::Stopped,
        ..row.clone()
    };
    let stopped = serde_json::to_value(fleet::listed(&stopped, 3)).unwrap();
    assert_eq!(stopped["delete_at"], "1970-01-01T00:00:00.002Z");
    assert_eq!(properties, keys(&stopped), "ListedLab.properties");

    let stats = fleet::stats(
        &crate::lab::index::Counts::default(),
        Some(&crate::lab::index::ReconciliationRow::default()),
        0,
        &[crate::lab::config::Previous::ApiToken],
    );
    let schema = get(&spec, &["components", "schemas", "Stats"]);
    let (required, properties) = required_and_properties(schema);
    assert_eq!(required, keys(&stats), "Stats.required");
    assert_eq!(properties, keys(&stats), "Stats.properties");
    let (required, _) = required_and_properties(get(schema, &["properties", "by_status"]));
    assert_eq!(required, keys(&stats["by_status"]), "Stats.by_status");

    let outcome = serde_json::to_value(crate::lab::session::Outcome::default()).unwrap();
    let (required, properties) =
        required_and_properties(get(&spec, &["components", "schemas", "Outcome"]));
    assert_eq!(required, keys(&outcome), "Outcome.required");
    assert_eq!(properties, keys(&outcome), "Outcome.properties");
}

#[test]
fn the_webhooks_are_the_events_the_code_sends() {
    use crate::lab::webhook::EventType;
    let spec = spec();
    let documented: BTreeSet<String> = get(&spec, &["webhooks"])
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let sent: BTreeSet<String> = [
        EventType::Expiring,
        EventType::IdleWarning,
        EventType::CleanupCompleted,
        EventType::CleanupStuck,
        EventType::Stopped,
        EventType::Resumed,
    ]
    .iter()
    .map(|e| e.name().to_string())
    .collect();
    assert_eq!(documented, sent);
    let listed = strings(get(
        &spec,
        &[
            "components",
            "schemas",
            "WebhookEvent",
            "properties",
            "type",
            "enum",
        ],
    ));
    assert_eq!(listed, sent);
}

#[test]
fn limits_that_are_settings_carry_their_default() {
    let defaults = [
        ("MAX_DURATION_MINUTES", config::DEFAULT_MAX_DURATION_MINUTES),
        ("MAX_WORKER_NODES", config::DEFAULT_MAX_WORKER_NODES as u64),
    ];
    let mut seen = 0;
    let spec = spec();
    visit(&spec, &mut |node| {
        if let Some(setting) = node.get("x-setting").and_then(Value::as_str) {
            let default = node
                .get("x-default")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("{setting} has no x-default"));
            let (_, expected) = defaults
                .iter()
                .find(|(name, _)| *name == setting)
                .unwrap_or_else(|| panic!("unknown setting {setting}"));
            assert_eq!(default, *expected, "x-default of {setting}");
            for fixed in ["maximum", "maxItems"] {
                assert!(
                    node.get(fixed).is_none(),
                    "{setting} is a setting; the spec must not fix its {fixed}"
                );
            }
            seen += 1;
        }
    });
    assert!(
        seen >= 3,
        "duration, worker_nodes and minutes carry x-setting"
    );
}

fn visit(v: &Value, f: &mut impl FnMut(&Value)) {
    f(v);
    match v {
        Value::Mapping(m) => m.values().for_each(|v| visit(v, f)),
        Value::Sequence(s) => s.iter().for_each(|v| visit(v, f)),
        _ => {}
    }
}
