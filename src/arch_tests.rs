//! The layout's rules, checked on the source: the core (`src/lab`) has no import cycle between its modules, never reaches the runtime (`worker::`) or the layers above it (`api`, `platform`), and `src/lib.rs` only wires.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)] mod … { … }` blocks.
fn code(text: &str) -> String {
    let mut kept = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let after = &rest[at..];
        match after.find('{') {
            Some(open) if after[..open].contains(" mod ") || after[..open].contains("\nmod ") => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (i, c) in after[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            _ => {
                kept.push_str("#[cfg(test)]");
                rest = &after["#[cfg(test)]".len()..];
            }
        }
    }
    kept.push_str(rest);
    kept.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `lab/fleet/mod.rs` → `fleet`, `lab/fleet/sweep.rs` → `fleet::sweep`.
fn module(lab: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(lab).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The paths a piece of code names after `prefix` (`crate::lab::a::b`, and each item of
/// `crate::lab::{a, b::c}`).
fn named(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(group[..end].split(',').map(|s| s.trim().to_string()));
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.push(rest[..end].trim_end_matches(':').to_string());
        }
    }
    out
}

/// Each core module and the core modules it imports (test files left out: a test may import
/// what it likes).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let lab = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lab");
    let mut all = Vec::new();
    files(&lab, &mut all);
    all.retain(|f| {
        let s = f.to_string_lossy();
        !s.contains("/tests/") && !s.ends_with("tests.rs")
    });
    let modules: BTreeMap<String, String> = all
        .iter()
        .map(|f| (module(&lab, f), code(&fs::read_to_string(f).unwrap())))
        .collect();
    let mut graph = BTreeMap::new();
    for (m, code) in &modules {
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
        let mut refs = named(code, "crate::lab::");
        refs.extend(named(code, "super::").into_iter().map(|r| {
            if parent.is_empty() {
                r
            } else {
                format!("{parent}::{r}")
            }
        }));
        let mut deps = BTreeSet::new();
        for r in refs {
            let parts: Vec<&str> = r.split("::").collect();
            if let Some(target) = (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find(|c| modules.contains_key(c))
            {
                if target != *m {
                    deps.insert(target);
                }
            }
        }
        graph.insert(m.clone(), deps);
    }
    graph
}

/// A cycle through `start`'s strongly connected part, if any, as a path.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_core_has_no_import_cycle() {
    let graph = graph();
    assert!(graph.len() > 20, "the core's modules were found");
    if let Some(found) = cycle(&graph) {
        panic!(
            "an import cycle in src/lab: {} (a module imports one that imports it back: move \
             what both need into a leaf module)",
            found.join(" -> ")
        );
    }
}

#[test]
fn the_check_finds_a_cycle() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycle(&graph).unwrap(), vec!["a", "b", "c", "a"]);
    graph.get_mut("c").unwrap().clear();
    assert_eq!(cycle(&graph), None);
    assert_eq!(
        named(
            "use crate::lab::{a, b::C};\ncrate::lab::d::e(1)",
            "crate::lab::"
        ),
        vec!["a", "b::C", "d::e"]
    );
}

#[test]
fn the_core_reaches_neither_the_runtime_nor_the_layers_above() {
    let lab = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lab");
    let mut all = Vec::new();
    files(&lab, &mut all);
    for f in all {
        let code = code(&fs::read_to_string(&f).unwrap());
        for banned in ["worker::", "crate::api", "crate::platform"] {
            assert!(
                !code.contains(banned),
                "{} uses {banned}: the core takes the runtime through its ports",
                f.display()
            );
        }
    }
}

#[test]
fn the_entry_point_only_wires() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let lines = lib.lines().count();
    assert!(
        lines <= 200,
        "src/lib.rs has {lines} lines: routes go through platform::router"
    );
}
