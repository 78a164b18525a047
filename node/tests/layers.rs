//! The architecture of `node/src`, checked by reading its source text (so it holds even while the
//! crate does not build, and needs no parser):
//!
//! - at most 16 top-level modules (`src/X.rs` or `src/X/`), each placed in `LAYERS`;
//! - a module names (`crate::X`, `use crate::{X, ..}`) only itself and strictly lower layers, so
//!   the import graph has no cycle;
//! - `engine` stays pure (no tokio, file system, network, processes, threads, environment, clock
//!   reads or async), so that scenarios replay it deterministically;
//! - files stay within 1000 lines and functions within 150.
//!
//! Comments and strings are not code here: intra-doc links are not imports. Code from a file's
//! `#[cfg(test)]` line on is exempt, since tests sit at the bottom and may use any helper.
//! `cargo test -p halley-node --test layers -- --nocapture` prints the import graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom (layer 0) to top. Modules in one group are peers and may not use each other.
const LAYERS: &[&[&str]] = &[
    &["error", "scenario"],
    &["clock", "random"],
    &["engine"],
    &["store"],
    &["mesh"],
    &["cluster"],
    &["proxy"],
    &["host"],
    &["rollout"],
    &["daemon"],
    &["cli"],
];
const MAX_MODULES: usize = 16;
const MAX_FILE_LINES: usize = 1000;
const MAX_FN_LINES: usize = 150;
/// The parts of std that reach outside the process's memory, banned from `engine`.
const IMPURE_STD: &[&str] = &["fs", "net", "process", "thread", "env"];
/// Token sequences (split at spaces) banned from `engine`: a runtime, clock reads and async.
const IMPURE: &[&str] = &[
    "tokio",
    "Instant :: now",
    "SystemTime :: now",
    "async",
    ". await",
];

fn src_root() -> PathBuf {
    // `env!` would not compile under a bare `rustc --test`; the runtime variable covers that case.
    let dir = option_env!("CARGO_MANIFEST_DIR")
        .map(String::from)
        .or_else(|| std::env::var("CARGO_MANIFEST_DIR").ok())
        .expect("set CARGO_MANIFEST_DIR to the halley-node package directory");
    Path::new(&dir).join("src")
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|group| group.contains(&module))
}

/// A line number and an identifier, `::` or a punctuation character.
type Tok = (usize, String);
type Graph = BTreeMap<String, BTreeSet<String>>;

/// One source file reduced to code and cut at its `#[cfg(test)]` line.
struct Source {
    name: String,
    /// `None` for the crate roots (`lib.rs`, `main.rs`), which may use anything.
    module: Option<String>,
    /// Entry `i` is line `i + 1` of the file.
    code: Vec<String>,
}

fn sources(root: &Path) -> Vec<Source> {
    let (mut dirs, mut files) = (vec![root.to_path_buf()], Vec::new());
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    let source = |path: PathBuf| {
        let rel = path.strip_prefix(root).unwrap().to_string_lossy();
        let rel = rel.replace('\\', "/");
        let module = match rel.split_once('/') {
            Some((dir, _)) => Some(dir.to_string()),
            None if rel == "lib.rs" || rel == "main.rs" => None,
            None => Some(rel.trim_end_matches(".rs").to_string()),
        };
        let mut code = clean(&fs::read_to_string(&path).unwrap());
        if let Some(cut) = code.iter().position(|line| line.trim() == "#[cfg(test)]") {
            code.truncate(cut);
        }
        let name = format!("src/{rel}");
        Source { name, module, code }
    };
    files.into_iter().map(source).collect()
}

/// `src/X.rs` (but not the crate roots) and `src/X/` (when it holds Rust files).
fn top_modules(root: &Path) -> BTreeSet<String> {
    sources(root).into_iter().filter_map(|s| s.module).collect()
}

#[derive(Clone, Copy)]
enum In {
    Code,
    LineComment,
    Block(usize),
    Str,
    Raw(usize),
}

/// Blanks comments and the insides of string and char literals, one output line per input line,
/// so that line numbers stay true and only real code is searched and brace-counted.
fn clean(text: &str) -> Vec<String> {
    let s: Vec<char> = text.chars().collect();
    let at = |i: usize| s.get(i).copied().unwrap_or('\0');
    let (mut lines, mut line, mut state, mut i) = (Vec::new(), String::new(), In::Code, 0);
    while i < s.len() {
        let (c, next) = (s[i], at(i + 1));
        let mut step = 1;
        match state {
            _ if c == '\n' => {
                lines.push(std::mem::take(&mut line));
                if matches!(state, In::LineComment) {
                    state = In::Code;
                }
            }
            In::Code if c == '/' && next == '/' => state = In::LineComment,
            In::Code if c == '/' && next == '*' => (state, step) = (In::Block(1), 2),
            In::Code => match literal(&s, i) {
                Some((inside, len, blank)) => {
                    (state, step) = (inside, len);
                    line.push_str(blank);
                }
                None => line.push(c),
            },
            In::LineComment => {}
            // Rust block comments nest.
            In::Block(n) if c == '/' && next == '*' => (state, step) = (In::Block(n + 1), 2),
            In::Block(1) if c == '*' && next == '/' => (state, step) = (In::Code, 2),
            In::Block(n) if c == '*' && next == '/' => (state, step) = (In::Block(n - 1), 2),
            // A backslash before a newline continues the string: keep the newline countable.
            In::Str if c == '\\' && next != '\n' => step = 2,
            In::Str if c == '"' => state = In::Code,
            In::Raw(n) if c == '"' && (1..=n).all(|k| at(i + k) == '#') => {
                (state, step) = (In::Code, n + 1)
            }
            In::Block(_) | In::Str | In::Raw(_) => {}
        }
        i += step;
    }
    if !text.is_empty() && !text.ends_with('\n') {
        lines.push(line);
    }
    lines
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A literal opening at `s[i]`: the state inside it, how far to step, and an empty literal to
/// leave behind so that the code around it still reads as code. Since edition 2021 reserves
/// `name"`, any `r#*"` opens a raw string (`r"`, `br#"`), while `r#type` is an identifier. A char
/// literal is `'x'` or an escape like `'\''`, `'\u{7f}'`, so `'a` and `'static` are lifetimes.
fn literal(s: &[char], i: usize) -> Option<(In, usize, &'static str)> {
    let hashes = s[i + 1..].iter().take_while(|&&c| c == '#').count();
    match s[i] {
        '"' => Some((In::Str, 1, "\"\"")),
        'r' if s.get(i + 1 + hashes) == Some(&'"') => Some((In::Raw(hashes), hashes + 2, "\"\"")),
        // Search from after the escaped char, so that `'\''` closes at its last quote.
        '\'' if s.get(i + 1) == Some(&'\\') => (i + 3..s.len().min(i + 12))
            .find(|&k| s[k] == '\'')
            .map(|k| (In::Code, k + 1 - i, "' '")),
        '\'' if s.get(i + 1).is_some_and(|&c| c != '\n') && s.get(i + 2) == Some(&'\'') => {
            Some((In::Code, 3, "' '"))
        }
        _ => None,
    }
}

fn tokens(code: &[String]) -> Vec<Tok> {
    let mut out = Vec::new();
    for (n, line) in code.iter().enumerate() {
        let s: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < s.len() {
            let start = i;
            i += match s[i] {
                c if is_ident(c) => s[i..].iter().take_while(|&&c| is_ident(c)).count(),
                ':' if s.get(i + 1) == Some(&':') => 2,
                _ => 1,
            };
            if !s[start].is_whitespace() {
                out.push((n + 1, s[start..i].iter().collect()));
            }
        }
    }
    out
}

/// The first segment after each `root ::`: one for `crate::a::b`, one per entry of a group like
/// `crate::{a::{b, c}, d}`, which may span lines.
fn heads<'t>(toks: &'t [Tok], roots: &[&str]) -> Vec<&'t Tok> {
    let mut out = Vec::new();
    for (k, pair) in toks.windows(2).enumerate() {
        if !roots.contains(&pair[0].1.as_str()) || pair[1].1 != "::" {
            continue;
        }
        let (mut depth, mut fresh) = (0, true);
        for t in &toks[k + 2..] {
            match t.1.as_str() {
                "{" => depth += 1,
                "}" => depth -= 1,
                "," if depth == 1 => fresh = true,
                _ if fresh => {
                    out.push(t);
                    fresh = false;
                }
                _ => {}
            }
            if depth == 0 {
                break;
            }
        }
    }
    out
}

/// (file, line, from, to) for each path from one top-level module to another. Other names after
/// `crate::` are crate-root items (`Error`, `VERSION`), which every layer may use.
fn module_refs(root: &Path) -> Vec<(String, usize, String, String)> {
    let modules = top_modules(root);
    let mut refs = Vec::new();
    for src in sources(root) {
        let Some(from) = src.module else { continue };
        for (line, to) in heads(&tokens(&src.code), &["crate", "halley_node"]) {
            if modules.contains(to) && *to != from {
                refs.push((src.name.clone(), *line, from.clone(), to.clone()));
            }
        }
    }
    refs
}

fn module_count_problems(root: &Path) -> Vec<String> {
    let modules = Vec::from_iter(top_modules(root));
    if modules.len() <= MAX_MODULES {
        return Vec::new();
    }
    let list = modules.join(", ");
    vec![format!(
        "src has more than {MAX_MODULES} top-level modules ({list}): group them into the layer folders of LAYERS"
    )]
}

fn layer_problems(root: &Path) -> Vec<String> {
    let unplaced = top_modules(root)
        .into_iter()
        .filter(|m| layer_of(m).is_none());
    let mut problems = Vec::from_iter(unplaced.map(|m| format!(
        "src/{m}: module `{m}` has no layer: add it to LAYERS in node/tests/layers.rs at its place"
    )));
    for (file, line, from, to) in module_refs(root) {
        let (Some(low), Some(high)) = (layer_of(&from), layer_of(&to)) else {
            continue;
        };
        if high >= low {
            problems.push(format!("{file}:{line}: `{from}` (layer {low}) uses `{to}` (layer {high}), but a module may use only lower layers: move the shared code down, or pass it in from above"));
        }
    }
    problems
}

fn graph(root: &Path) -> Graph {
    let mut graph = Graph::new();
    for (_, _, from, to) in module_refs(root) {
        graph.entry(from).or_default().insert(to);
    }
    graph
}

/// Some cycle as a path that ends where it starts, e.g. `[a, b, a]`. With at most 16 modules a
/// plain search of all paths is quick.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn walk(graph: &Graph, path: &mut Vec<String>) -> Option<Vec<String>> {
        for next in graph.get(path.last()?).into_iter().flatten() {
            if let Some(at) = path.iter().position(|n| n == next) {
                return Some([&path[at..], std::slice::from_ref(next)].concat());
            }
            path.push(next.clone());
            if let Some(cycle) = walk(graph, path) {
                return Some(cycle);
            }
            path.pop();
        }
        None
    }
    let mut starts = graph.keys();
    starts.find_map(|start| walk(graph, &mut vec![start.clone()]))
}

fn purity_problems(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for src in sources(root) {
        if src.module.as_deref() != Some("engine") {
            continue;
        }
        let toks = tokens(&src.code);
        // `use std::{fs, ..}` counts as much as `std::fs::read`.
        let std_paths = heads(&toks, &["std"]).into_iter();
        let std_paths = std_paths.filter(|(_, name)| IMPURE_STD.contains(&name.as_str()));
        let mut found = Vec::from_iter(std_paths.map(|(l, name)| (*l, format!("std::{name}"))));
        let words = Vec::from_iter(toks.iter().map(|t| t.1.as_str()));
        for (k, (line, _)) in toks.iter().enumerate() {
            let banned = IMPURE.iter().map(|seq| Vec::from_iter(seq.split(' ')));
            for seq in banned.filter(|seq| words[k..].starts_with(seq)) {
                found.push((*line, seq.concat()));
            }
        }
        found.sort();
        for (line, what) in found {
            problems.push(format!("{}:{line}: engine uses `{what}`, but engine must stay pure (no IO, clock, threads or async): take the value as a parameter, or move the code up a layer", src.name));
        }
    }
    problems
}

/// `NAME` when the line starts an `fn` item, after `pub(..)`, `const`, `async`, `unsafe`, `extern "C"`.
fn fn_name(line: &str) -> Option<&str> {
    let qualifier = |w: &&str| {
        w.starts_with("pub") || ["const", "async", "unsafe", "extern", "\"\""].contains(w)
    };
    let mut words = line.split_whitespace().skip_while(qualifier);
    let name = words.next().filter(|w| *w == "fn").and(words.next())?;
    let name = &name[..name.find(|c: char| !is_ident(c)).unwrap_or(name.len())];
    (!name.is_empty()).then_some(name)
}

/// The index of the line closing the body of the `fn` on line `start`; `None` when it has no body
/// (`fn f();` in a trait). A `;` inside `[u8; 4]` in the signature does not end it.
fn body_end(code: &[String], start: usize) -> Option<usize> {
    let (mut braces, mut brackets) = (0usize, 0usize);
    for (n, line) in code.iter().enumerate().skip(start) {
        for c in line.chars() {
            match c {
                '(' | '[' if braces == 0 => brackets += 1,
                ')' | ']' if braces == 0 => brackets = brackets.saturating_sub(1),
                ';' if braces == 0 && brackets == 0 => return None,
                '{' => braces += 1,
                '}' if braces == 1 => return Some(n),
                '}' => braces = braces.checked_sub(1)?,
                _ => {}
            }
        }
    }
    None
}

fn size_problems(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for src in sources(root) {
        let (name, lines) = (&src.name, src.code.len());
        if lines > MAX_FILE_LINES {
            problems.push(format!("{name}: {lines} lines before its tests (max {MAX_FILE_LINES}): split it by responsibility"));
        }
        for (start, line) in src.code.iter().enumerate() {
            let Some(func) = fn_name(line) else { continue };
            let len = body_end(&src.code, start).map_or(0, |end| end - start + 1);
            if len > MAX_FN_LINES {
                let at = start + 1;
                problems.push(format!("{name}:{at}: fn `{func}` is {len} lines (max {MAX_FN_LINES}): split it into named steps"));
            }
        }
    }
    problems
}

fn assert_none(problems: Vec<String>) {
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn at_most_16_top_level_modules() {
    assert_none(module_count_problems(&src_root()));
}

#[test]
fn modules_use_only_lower_layers() {
    assert_none(layer_problems(&src_root()));
}

#[test]
fn import_graph_has_no_cycle() {
    let graph = graph(&src_root());
    println!("import graph of node/src (module -> modules it uses):");
    for (from, to) in &graph {
        println!("  {from} -> {}", Vec::from_iter(to.clone()).join(", "));
    }
    if let Some(cycle) = find_cycle(&graph) {
        let cycle = cycle.join(" -> ");
        panic!("import cycle {cycle}: move the shared code down a layer");
    }
}

#[test]
fn engine_is_pure() {
    assert_none(purity_problems(&src_root()));
}

#[test]
fn files_and_functions_are_small() {
    assert_none(size_problems(&src_root()));
}

/// The checks themselves, run on throwaway `src` trees.
mod fixtures {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A `src` tree under the temp dir, removed on drop (also when an assertion fails).
    struct Tree(PathBuf);

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Each file in `spec` follows a line `=== path`.
    fn tree(spec: &str) -> Tree {
        static TREES: AtomicUsize = AtomicUsize::new(0);
        let (pid, n) = (std::process::id(), TREES.fetch_add(1, Ordering::Relaxed));
        let root = std::env::temp_dir().join(format!("halley-layers-{pid}-{n}"));
        for part in spec.split("=== ").skip(1) {
            let (path, text) = part.split_once('\n').unwrap();
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        Tree(root)
    }

    /// Every wanted message is there, and nothing else.
    fn expect(problems: Vec<String>, wanted: &[&str]) {
        for want in wanted {
            let found = problems.iter().any(|p| p.contains(want));
            assert!(found, "{want}: {problems:#?}");
        }
        assert_eq!(problems.len(), wanted.len(), "{problems:#?}");
    }

    #[test]
    fn clean_layered_tree_passes() {
        // Each hidden `crate::host` or `crate::store` would show as an upward import from engine,
        // and a misread lifetime would swallow the `crate::error` after it.
        let spec = r###"
=== lib.rs
use crate::host::x;
=== error.rs
=== engine/mod.rs
//! See [`crate::host`] and [`crate::store::Db`].
use crate::Result;
/* crate::host::a /* nested */ crate::host::b */
fn f<'a>(x: &'a str, r#type: &'a u8) -> crate::error::Error { let _ = ('{', '\'', '\u{7b}'); }
const R: &[u8] = br##"x "# crate::store "##;
#[cfg(test)]
mod tests { use crate::host::helper; }
=== store.rs
use crate::{engine, error::Error};
=== host/mod.rs
use crate::{
    store,
    engine::{a, b},
    VERSION,
};
pub async fn run() { tokio::spawn(x).await; }
"###;
        let t = tree(spec);
        for check in [
            module_count_problems,
            layer_problems,
            purity_problems,
            size_problems,
        ] {
            assert_none(check(&t.0));
        }
        let graph = graph(&t.0);
        let edges = Vec::from_iter(graph.iter().map(|(m, to)| format!("{m} -> {to:?}")));
        let expected = [
            r#"engine -> {"error"}"#,
            r#"host -> {"engine", "store"}"#,
            r#"store -> {"engine", "error"}"#,
        ];
        assert_eq!(edges, expected);
        assert_eq!(find_cycle(&graph), None);
    }

    #[test]
    fn upward_peer_cyclic_and_unplaced_modules_fail() {
        let spec = r#"
=== error.rs
use crate::scenario::Step;
=== scenario.rs
fn f() -> crate::error::Error {}
=== store.rs
=== host.rs
=== engine/mod.rs
use crate::host::x;
=== engine/a.rs
use crate::{
    error,
    host::{a, b},
    store,
};
const S: &str = "a\"b\
    crate::host {";
fn f() { halley_node::store::g() }
=== gizmo.rs
"#;
        let t = tree(spec);
        let wanted = [
            "src/engine/mod.rs:1: `engine` (layer 2) uses `host` (layer 7), but",
            "src/engine/a.rs:3: `engine` (layer 2) uses `host`",
            "src/engine/a.rs:4: `engine` (layer 2) uses `store`",
            "src/engine/a.rs:8: `engine` (layer 2) uses `store`",
            "src/error.rs:1: `error` (layer 0) uses `scenario` (layer 0)",
            "src/scenario.rs:1: `scenario` (layer 0) uses `error` (layer 0)",
            "`gizmo` has no layer: add it to LAYERS in node/tests/layers.rs at its place",
        ];
        expect(layer_problems(&t.0), &wanted);
        let cycle = find_cycle(&graph(&t.0)).map(|path| path.join(" -> "));
        assert_eq!(cycle.as_deref(), Some("error -> scenario -> error"));

        let t = tree(&String::from_iter(
            (0..=MAX_MODULES).map(|n| format!("=== m{n}.rs\n")),
        ));
        expect(
            module_count_problems(&t.0),
            &["more than 16 top-level modules (m0, m1,"],
        );
    }

    #[test]
    fn impure_engine_fails() {
        let spec = r#"
=== engine.rs
// tokio::spawn in a comment
fn f() { tokio::spawn(g()); let _ = "std::fs"; }
use std::{
    collections::HashMap,
    fs::File,
    net,
};
use std::time::{Duration, Instant};
fn now() -> Instant { Instant::now() }
async fn g() { h().await }
#[cfg(test)]
mod tests { #[tokio::test] async fn t() {} }
=== host.rs
async fn run() { tokio::spawn(x).await; std::fs::read(p); }
"#;
        let t = tree(spec);
        let wanted = [
            "src/engine.rs:2: engine uses `tokio`",
            "src/engine.rs:5: engine uses `std::fs`",
            "src/engine.rs:6: engine uses `std::net`",
            "src/engine.rs:9: engine uses `Instant::now`",
            "src/engine.rs:10: engine uses `async`",
            "src/engine.rs:10: engine uses `.await`",
        ];
        expect(purity_problems(&t.0), &wanted);
    }

    #[test]
    fn long_functions_and_files_fail() {
        // Braces that only a careless count would see.
        let body = |n: usize| "    let _ = ('{', \"{\", b'{'); // {\n".repeat(n);
        let (fits, long, test) = (body(MAX_FN_LINES - 2), body(MAX_FN_LINES - 1), body(500));
        let spec = format!(
            "=== engine.rs\npub(crate) fn fits() {{\n{fits}}}\n\
             fn long<'a>(x: [u8; 2]) -> &'a str {{\n{long}}}\n\
             trait T {{\n    fn decl(&self);\n}}\n#[cfg(test)]\nfn test_only() {{\n{test}}}\n\
             === store.rs\n{}=== mesh.rs\n{}#[cfg(test)]\n{}",
            "\n".repeat(MAX_FILE_LINES + 1),
            "\n".repeat(MAX_FILE_LINES),
            "\n".repeat(50),
        );
        let t = tree(&spec);
        let wanted = [
            "src/engine.rs:151: fn `long` is 151 lines (max 150)",
            "src/store.rs: 1001 lines before its tests (max 1000)",
        ];
        expect(size_problems(&t.0), &wanted);
    }
}
