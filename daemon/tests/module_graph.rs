//! The module graph inside each crate is a DAG: no two sibling modules use each other
//! (docs/architecture.md, "Modules inside a crate"). A module's uses are the `crate::…` and
//! `super::…` paths in its files (its submodules' files included, its `#[cfg(test)] mod tests`
//! left out); a path that names an item its parent re-exports (`pub use child::Item`) counts as
//! a use of that child.

#![allow(
    clippy::expect_used,
    reason = "test helpers: allow-expect-in-tests covers only #[test] fns"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module, as the path of names from the crate root (`["statuses", "plan"]`).
type ModPath = Vec<String>;

const CRATES: &[&str] = &[
    "spec",
    "status",
    "forge",
    "nixcli",
    "agent",
    "reconcilers",
    "web",
    "daemon",
    "fakeforge",
    "e2e",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the daemon crate sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file
        .strip_prefix(src)
        .expect("file under src")
        .with_extension("");
    let mut parts: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("lib" | "main" | "mod")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without line comments and without its trailing `#[cfg(test)] mod`.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    let mut cut = out.len();
    let mut from = 0;
    while let Some(at) = out[from..].find("#[cfg(test)]") {
        let start = from + at;
        let rest = out[start + "#[cfg(test)]".len()..].trim_start();
        let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
        if rest.starts_with("mod ")
            && rest
                .split_once('{')
                .is_some_and(|(head, _)| !head.contains(';'))
        {
            cut = start;
            break;
        }
        from = start + 1;
    }
    out.truncate(cut);
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Reads the path after a `crate::` or `super::` at `rest`: every full path it names, a braced
/// group giving one path per member.
fn paths_at(rest: &str) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    let mut s = rest;
    loop {
        let name: String = s.chars().take_while(|c| is_ident(*c)).collect();
        if name.is_empty() {
            if let Some(group) = s.strip_prefix('{') {
                let mut depth = 1;
                let mut end = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                let mut out = Vec::new();
                let mut depth = 0;
                let mut start = 0;
                let inner = &group[..end];
                for (i, c) in inner.char_indices().chain([(inner.len(), ',')]) {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            let member = inner[start..i].trim();
                            start = i + 1;
                            if member.is_empty() || member == "self" {
                                continue;
                            }
                            for tail in paths_at(member) {
                                let mut p = prefix.clone();
                                p.extend(tail);
                                out.push(p);
                            }
                        }
                        _ => {}
                    }
                }
                return out;
            }
            return vec![prefix];
        }
        s = &s[name.len()..];
        prefix.push(name);
        match s.strip_prefix("::") {
            Some(next) => s = next,
            None => return vec![prefix],
        }
    }
}

/// Every module-relative path the code uses, made absolute from `module`.
fn uses(module: &ModPath, code: &str) -> Vec<ModPath> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && is_ident(bytes[at - 1] as char) {
            continue;
        }
        out.extend(paths_at(&code[at + "crate::".len()..]));
    }
    let mut at = 0;
    while let Some(found) = code[at..].find("super::") {
        let start = at + found;
        at = start + 1;
        if start > 0 && (is_ident(bytes[start - 1] as char) || code[..start].ends_with("::")) {
            continue;
        }
        let mut rest = &code[start..];
        let mut base = module.clone();
        while let Some(next) = rest.strip_prefix("super::") {
            base.pop();
            rest = next;
        }
        for tail in paths_at(rest) {
            let mut p = base.clone();
            p.extend(tail);
            out.push(p);
        }
    }
    out
}

/// `pub use child::…` in a parent: the name it re-exports, pointing at that child module.
fn reexports(
    module: &ModPath,
    code: &str,
    modules: &BTreeSet<ModPath>,
) -> BTreeMap<ModPath, ModPath> {
    let mut out = BTreeMap::new();
    for statement in code.split(';') {
        let s = statement.trim();
        let Some(rest) = s
            .strip_prefix("pub use ")
            .or_else(|| s.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        let rest = rest.strip_prefix("self::").unwrap_or(rest);
        for path in paths_at(rest) {
            let Some(child) = path.first() else { continue };
            let mut child_mod = module.clone();
            child_mod.push(child.clone());
            if !modules.contains(&child_mod) {
                continue;
            }
            let last = s
                .rsplit_once(" as ")
                .filter(|_| !rest.contains('{'))
                .map_or_else(
                    || path.last().cloned().unwrap_or_default(),
                    |(_, alias)| alias.trim().to_owned(),
                );
            let mut name = module.clone();
            name.push(last);
            out.insert(name, child_mod.clone());
        }
    }
    out
}

/// The pairs of sibling modules of one crate that use each other.
fn mutual_pairs(src: &Path) -> Vec<(ModPath, ModPath)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<ModPath, String> = files
        .iter()
        .map(|f| {
            (
                module_of(src, f),
                code(&std::fs::read_to_string(f).expect("readable source")),
            )
        })
        .collect();
    let names: BTreeSet<ModPath> = modules.keys().cloned().collect();
    let mut reexported = BTreeMap::new();
    for (module, code) in &modules {
        reexported.extend(reexports(module, code, &names));
    }
    let mut edges = BTreeSet::new();
    for (module, code) in &modules {
        if module.last().is_some_and(|m| m == "tests") {
            continue;
        }
        for path in uses(module, code) {
            let mut target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| names.contains(p));
            if let Some(found) = &target
                && let Some(child) = path.get(found.len())
            {
                let mut item = found.clone();
                item.push(child.clone());
                if let Some(via) = reexported.get(&item) {
                    target = Some(via.clone());
                }
            }
            let Some(target) = target else { continue };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common >= module.len() || common >= target.len() {
                continue;
            }
            edges.insert((module[..=common].to_vec(), target[..=common].to_vec()));
        }
    }
    edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .cloned()
        .collect()
}

#[test]
fn no_two_modules_of_a_crate_should_use_each_other() {
    let root = workspace();
    let mut found = Vec::new();
    for krate in CRATES {
        for (a, b) in mutual_pairs(&root.join(krate).join("src")) {
            found.push(format!("{krate}: {} <-> {}", a.join("::"), b.join("::")));
        }
    }
    assert!(
        found.is_empty(),
        "modules that use each other:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_should_see_uses_through_braces_super_and_reexports() {
    let module: ModPath = vec!["a".into(), "b".into()];
    let got = uses(
        &module,
        "use crate::{x::{Y, z}, w};\nlet v = super::super::q::f();\n",
    );
    assert!(got.contains(&vec!["x".into(), "Y".into()]), "{got:?}");
    assert!(got.contains(&vec!["x".into(), "z".into()]), "{got:?}");
    assert!(got.contains(&vec!["w".into()]), "{got:?}");
    assert!(got.contains(&vec!["q".into(), "f".into()]), "{got:?}");
    let names: BTreeSet<ModPath> = [vec![], vec!["child".into()]].into_iter().collect();
    let map = reexports(&vec![], "pub use child::{Thing, other as Renamed};", &names);
    assert_eq!(
        map.get(&vec!["Thing".to_owned()]),
        Some(&vec!["child".to_owned()])
    );
    assert!(
        code("use crate::a;\n#[cfg(test)]\nmod tests {\n use crate::b;\n}\n").contains("crate::a")
    );
    assert!(
        !code("use crate::a;\n#[cfg(test)]\nmod tests {\n use crate::b;\n}\n").contains("crate::b")
    );
}
