//! Checks the crate's layering from its own source: no import loop between files, and no module
//! importing one that stands above it (ARCHITECTURE.md, "Architecture invariants").
//!
//! Imports are read from `use` declarations and from `crate::`/`super::` paths in code, and
//! resolved to the file that defines the module they name. A `mod.rs` is a table of contents:
//! nothing in its own subtree imports through it, or the parent and the child would form a
//! loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first; a module may import only from lower layers and from its own
/// top-level module. Modules of one layer (the roles) do not import each other.
const LAYERS: &[&[&str]] = &[
    &["client_id", "metrics", "lazy_timeout"],
    &["ops", "config"],
    &["wire", "http_listener"],
    &["transport"],
    &["local", "register", "nats"],
    &["links"],
    &["gateway", "worker", "push", "web", "admin"],
    &["gatewayworker"],
    &["process"],
    &["cli"],
];

/// Every source file's module path (`worker::dispatch`) and text, test-only files left out.
fn sources() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().to_str().unwrap();
            let Some(rel) = rel.strip_suffix(".rs") else {
                continue;
            };
            if rel.ends_with("tests") || rel == "main" {
                continue;
            }
            let module = rel.strip_suffix("/mod").unwrap_or(rel).replace('/', "::");
            let module = if module == "lib" {
                String::new()
            } else {
                module
            };
            out.insert(module, std::fs::read_to_string(&path).unwrap());
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The code of a file without comments and without its inline test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a `use` tree stands for: `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap().trim().to_owned()];
    };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.rfind('}').unwrap()]);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

/// The module of `modules` that `path`, written in `from`, refers to (the longest prefix
/// that is a module), if it is one of this crate's.
fn resolve(path: &str, from: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    let here: Vec<&str> = from.split("::").filter(|p| !p.is_empty()).collect();
    let absolute: Vec<&str> = match parts.first()? {
        &"crate" => parts.split_off(1),
        &"super" | &"self" => {
            let mut base = here.clone();
            while let Some(&first) = parts.first() {
                match first {
                    "super" => drop(base.pop()),
                    "self" => {}
                    _ => break,
                }
                parts.remove(0);
            }
            base.extend(parts);
            base
        }
        // A path starting with a child module's name.
        _ => here.iter().copied().chain(parts).collect(),
    };
    (1..=absolute.len())
        .rev()
        .map(|n| absolute[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// Each module's imports of other modules.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (module, text) in &sources {
        let code = code(text);
        let mut paths = Vec::new();
        for statement in code.split(';') {
            if let Some(at) = statement.find("use ")
                && is_visibility(&statement[..at])
            {
                paths.extend(expand(&statement[at + 4..]));
            }
        }
        for start in ["crate::", "super::"] {
            for (at, _) in code.match_indices(start) {
                let rest = &code[at..];
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                paths.push(rest[..end].to_owned());
            }
        }
        let targets = paths
            .iter()
            .filter_map(|p| resolve(p, module, &modules))
            .filter(|t| t != module)
            .collect();
        edges.insert(module.clone(), targets);
    }
    edges
}

/// Whether what stands before `use` is nothing or a visibility (`pub`, `pub(crate)` …).
fn is_visibility(prefix: &str) -> bool {
    let Some(rest) = prefix.trim().strip_prefix("pub") else {
        return prefix.trim().is_empty();
    };
    let rest = rest.trim_start();
    match rest.strip_prefix('(') {
        Some(scope) => scope
            .split_once(')')
            .is_some_and(|(_, after)| after.trim().is_empty()),
        None => rest.is_empty(),
    }
}

fn layer(module: &str) -> (usize, &str) {
    let top = module.split("::").next().unwrap();
    let rank = LAYERS
        .iter()
        .position(|layer| layer.contains(&top))
        .unwrap_or_else(|| panic!("module `{top}` is in no layer: add it to LAYERS"));
    (rank, top)
}

#[test]
fn no_module_imports_one_above_it() {
    let mut wrong = Vec::new();
    for (module, targets) in imports() {
        if module.is_empty() {
            continue;
        }
        let (rank, top) = layer(&module);
        for target in targets {
            let (target_rank, target_top) = layer(&target);
            if target_top != top && target_rank >= rank {
                wrong.push(format!("{module} → {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering: {wrong:#?}");
}

#[test]
fn no_import_loop() {
    let edges = imports();
    // Depth-first search for a back edge; reports the loop it closes.
    fn visit(
        module: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            return Some(path[at..].to_vec());
        }
        if !done.insert(module.to_owned()) {
            return None;
        }
        path.push(module.to_owned());
        for next in edges.get(module).into_iter().flatten() {
            if let Some(found) = visit(next, edges, done, path) {
                return Some(found);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        let found = visit(module, &edges, &mut done, &mut Vec::new());
        assert_eq!(found, None, "an import loop");
    }
}

#[test]
fn the_checker_sees_imports() {
    let edges = imports();
    assert!(edges["worker::dispatch"].contains("links"));
    assert!(edges["process"].contains("worker"));
    assert!(edges["gateway::internal"].contains("gateway::shared"));
    assert_eq!(
        expand("a::{b, c::{d, e as f}}"),
        ["a::b", "a::c::d", "a::c::e"]
    );
}
