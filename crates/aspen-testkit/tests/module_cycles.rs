//! No module of any workspace crate imports a module that imports it back: the layering
//! rule ("lower layers never import upper ones") applied inside each crate.
//!
//! The graph is read from the source: every `crate::name` path in a file under `src/` is an
//! edge from the file's top-level module to `name`. A submodule counts as its top-level
//! module (`service/kv.rs` is `service`), and the crate root (`lib.rs`, `main.rs`, `bin/`)
//! is left out, since it declares every module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src` belongs to, or `None` for the crate root.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    match first.as_str() {
        "lib.rs" | "main.rs" | "bin" => None,
        name => Some(name.trim_end_matches(".rs").to_string()),
    }
}

/// The names after every `crate::` in `text`, outside comments.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            // `aspen_core::crate::` never occurs; `$crate::` in macros is not an import.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
        // `use crate::{a, b::c}` names several modules at once.
        if let Some(at) = code.find("crate::{") {
            let group = &code[at + "crate::{".len()..];
            for part in group.split([',', '}']) {
                let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        }
    }
    names
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let crates = aspen_core::golden::crate_dir(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut problems = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).unwrap().flatten() {
        let src = entry.path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(module) = top_module(&src, file) else { continue };
            let text = std::fs::read_to_string(file).unwrap();
            let edges = graph.entry(module.clone()).or_default();
            edges.extend(crate_paths(&text).into_iter().filter(|m| *m != module));
        }
        // Only edges between this crate's own modules matter.
        let modules: BTreeSet<String> = graph.keys().cloned().collect();
        for edges in graph.values_mut() {
            edges.retain(|m| modules.contains(m));
        }
        checked += 1;
        if let Some(cycle) = find_cycle(&graph) {
            problems.push(format!("{}: {}", entry.file_name().to_string_lossy(), cycle.join(" -> ")));
        }
    }
    assert!(checked >= 8, "found only {checked} crates under {}", crates.display());
    assert!(problems.is_empty(), "module import cycles:\n  {}", problems.join("\n  "));
}

#[test]
fn the_checker_finds_a_cycle_and_reads_grouped_imports() {
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    let acyclic = BTreeMap::from([("a".to_string(), BTreeSet::from(["b".to_string()]))]);
    assert!(find_cycle(&acyclic).is_none());
    let names = crate_paths("use crate::{state::X, forward};\nlet y = crate::batcher::now(); // crate::ignored");
    assert_eq!(names, BTreeSet::from(["state".into(), "forward".into(), "batcher".into()]));
}
