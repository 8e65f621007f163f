//! The broker's modules form layers that point one way (see the crate
//! docs): a module may name only modules below it. This reads the sources
//! and fails on any reference upwards or sideways across a layer, so an
//! import circle inside `warden` cannot come back unnoticed.

use std::collections::BTreeMap;
use std::path::Path;

/// Layers, top first; modules in one layer may not name each other unless
/// listed in an earlier position of the same line (a strict order inside
/// the layer too).
const LAYERS: &[&[&str]] = &[
    &["broker"],
    &["transport"],
    &["router", "builtins", "invite_methods", "pubsub", "view"],
    &["audit"],
    &["handler"],
    &["local"],
    &["calls"],
    &["monitor"],
    &["registry"],
    &[
        "channel",
        "peer",
        "queue",
        "stats",
        "shutdown",
        "session_lookup",
        "invitations",
    ],
];

/// Names `lib.rs` re-exports, and the module each comes from.
const REEXPORTS: &[(&str, &str)] = &[
    ("Broker", "broker"),
    ("BrokerBuilder", "broker"),
    ("BrokerError", "broker"),
    ("ServeError", "broker"),
    ("Reloader", "builtins"),
    ("TEST_PANIC_METHOD", "transport"),
    ("CallerChannel", "channel"),
    ("Pushed", "channel"),
    ("Handler", "handler"),
    ("HandlerContext", "handler"),
    ("HandlerFuture", "handler"),
    ("BrokerHandle", "local"),
    ("CallOptions", "local"),
    ("Charge", "queue"),
    ("Shutdown", "shutdown"),
    ("ShutdownTrigger", "shutdown"),
    ("SessionLookup", "session_lookup"),
];

/// (layer, position in layer) of a module.
fn rank(module: &str) -> Option<(usize, usize)> {
    LAYERS
        .iter()
        .enumerate()
        .find_map(|(l, mods)| mods.iter().position(|m| *m == module).map(|p| (l, p)))
}

/// The module a file belongs to: its stem, or its directory under src/.
fn module_of(rel: &Path) -> String {
    let mut comps = rel.components();
    let first = comps
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

/// The modules `code` names through `crate::...` (comments skipped).
fn referenced(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        let mut rest = t;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                // `use crate::{a, b}`
                if let Some(group) = rest.strip_prefix('{') {
                    let end = group.find('}').unwrap_or(group.len());
                    for item in group[..end].split(',') {
                        let n: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        out.push(n);
                    }
                }
                continue;
            }
            out.push(name);
        }
    }
    out.into_iter()
        .map(|n| {
            REEXPORTS
                .iter()
                .find(|(name, _)| *name == n)
                .map_or(n.clone(), |(_, m)| (*m).to_owned())
        })
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_name_only_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap_or(f);
        let from = module_of(rel);
        if from == "lib" {
            continue;
        }
        let code = std::fs::read_to_string(f).unwrap_or_default();
        // Unit tests of a module may use anything.
        let code = code.split("#[cfg(test)]").next().unwrap_or("");
        let Some(from_rank) = rank(&from) else {
            wrong.push(format!("{from}: not in any layer; add it to LAYERS"));
            continue;
        };
        for to in referenced(code) {
            if to == from || to == "SERVER_NAME" {
                continue;
            }
            let Some(to_rank) = rank(&to) else {
                wrong.push(format!("{from} names crate::{to}, which is in no layer"));
                continue;
            };
            if to_rank <= from_rank {
                wrong.push(format!(
                    "{from} {from_rank:?} names {to} {to_rank:?}, not below it"
                ));
            }
            edges.entry(from.clone()).or_default().push(to);
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // The check saw the references it should (it is not vacuous).
    assert!(edges
        .get("router")
        .is_some_and(|v| v.iter().any(|m| m == "registry")));
    assert!(edges
        .get("transport")
        .is_some_and(|v| v.iter().any(|m| m == "router")));
}
