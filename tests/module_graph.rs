//! The module graph of `src/`, read from the source text, kept free of cycles: the layout
//! rule of the code map in README.md, checked on every run of the suite.
//!
//! - `core` is the pure layer: it names nothing of ours outside `core`.
//! - No two top-level modules (a folder or a file under `src/`) import each other, directly
//!   or through others.
//! - No two files import each other, directly or through others. A `pub use` (a module
//!   handing on a name) is not counted as an import; test modules are left out.
//!
//! An edge is any path that names one of our modules: `crate::a::b`, `super::x`, a glob
//! (`super::*`), or a child module by its name (`identity::parse` in `tls/mod.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file and its module path (`["state", "cache"]` for `src/state/cache.rs`).
struct File {
    path: String,
    module: Vec<String>,
    text: String,
}

fn collect(dir: &Path, root: &Path, out: &mut Vec<File>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, root, out);
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = p.strip_prefix(root).expect("under src");
        let mut module: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let last = module.last().cloned().unwrap_or_default();
        if last == "mod" || last == "lib" || last == "main" {
            module.pop();
        }
        if last == "tests" || last == "main" {
            continue; // test bodies beside a module; the binary's three lines
        }
        let text = std::fs::read_to_string(&p).expect("read file");
        out.push(File {
            path: format!("src/{}", rel.display()),
            module,
            text,
        });
    }
}

/// The code that builds into the library: comments, `pub use` lines and test modules out.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut in_pub_use = false;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            break; // test modules close their file by convention
        }
        if t.starts_with("//") {
            continue;
        }
        if t.starts_with("pub use ") || in_pub_use {
            in_pub_use = !t.ends_with(';');
            continue;
        }
        // Drop a trailing comment and string contents that are not code.
        let t = t.split(" //").next().unwrap_or(t);
        out.push_str(t);
        out.push('\n');
    }
    out
}

/// Identifier-path chains in `code`: `crate::a::b::{c, d}` gives `crate::a::b::c` and
/// `crate::a::b::d` (one level of braces, as rustfmt writes imports).
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            segs.push(code[start..j].to_string());
            if code[j..].starts_with("::") && j + 2 < bytes.len() {
                j += 2;
                if bytes[j] == b'{' {
                    let close = code[j..].find('}').map_or(bytes.len(), |c| j + c);
                    for part in code[j + 1..close].split(',') {
                        let head: String = part
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !head.is_empty() {
                            let mut p = segs.clone();
                            p.push(head);
                            out.push(p);
                        }
                    }
                    j = close;
                    break;
                }
                if ident(bytes[j]) {
                    continue;
                }
                if bytes[j] == b'*' {
                    // A glob import depends on the module it reads from.
                    segs.push("*".to_string());
                    j += 1;
                    break;
                }
            }
            break;
        }
        if segs.len() > 1 {
            out.push(segs);
        }
        i = j.max(i + 1);
    }
    out
}

struct Graph {
    files: Vec<File>,
    /// Module path → index into `files`.
    by_module: BTreeMap<Vec<String>, usize>,
}

impl Graph {
    fn read() -> Graph {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        collect(&root, &root, &mut files);
        let by_module = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.module.clone(), i))
            .collect();
        Graph { files, by_module }
    }

    /// The file a path names, if it names one of ours: the longest module prefix.
    fn resolve(&self, from: &File, path: &[String]) -> Option<usize> {
        let mut abs: Vec<String> = match path[0].as_str() {
            "crate" => Vec::new(),
            "super" => {
                let mut m = from.module.clone();
                let mut k = 0;
                while path.get(k).is_some_and(|s| s == "super") {
                    // A file's `super` is its folder's module; a mod.rs's is the parent's.
                    m.pop();
                    k += 1;
                }
                m.extend(path[k..].iter().cloned());
                return self.longest(&m);
            }
            "self" => from.module.clone(),
            first => {
                // A child module named by its bare name.
                let mut child = from.module.clone();
                child.push(first.to_string());
                if self.by_module.contains_key(&child) {
                    child.extend(path[1..].iter().cloned());
                    return self.longest(&child);
                }
                return None;
            }
        };
        abs.extend(path[1..].iter().cloned());
        self.longest(&abs)
    }

    fn longest(&self, abs: &[String]) -> Option<usize> {
        (1..=abs.len())
            .rev()
            .find_map(|n| self.by_module.get(&abs[..n]).copied())
    }

    fn edges(&self) -> BTreeSet<(usize, usize)> {
        let mut edges = BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            for p in paths(&code(&f.text)) {
                if let Some(j) = self.resolve(f, &p)
                    && j != i
                {
                    edges.insert((i, j));
                }
            }
        }
        edges
    }
}

/// Tarjan's bookkeeping for [`cycles`].
struct Tarjan<N> {
    next: usize,
    /// Node → (index, low link).
    seen: BTreeMap<N, (usize, usize)>,
    stack: Vec<N>,
    on_stack: BTreeSet<N>,
    found: Vec<Vec<N>>,
}

impl<N: Ord + Clone> Tarjan<N> {
    fn visit(&mut self, v: &N, edges: &BTreeSet<(N, N)>) {
        let idx = self.next;
        self.next += 1;
        self.seen.insert(v.clone(), (idx, idx));
        self.stack.push(v.clone());
        self.on_stack.insert(v.clone());
        for (_, w) in edges.iter().filter(|(a, _)| a == v) {
            let low = if !self.seen.contains_key(w) {
                self.visit(w, edges);
                Some(self.seen[w].1)
            } else if self.on_stack.contains(w) {
                Some(self.seen[w].0)
            } else {
                None
            };
            if let Some(low) = low {
                let e = self.seen.get_mut(v).expect("visited");
                e.1 = e.1.min(low);
            }
        }
        let (i, low) = self.seen[v];
        if i == low {
            let mut comp = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                self.found.push(comp);
            }
        }
    }
}

/// Strongly connected components with more than one member (Tarjan).
fn cycles<N: Ord + Clone>(nodes: &[N], edges: &BTreeSet<(N, N)>) -> Vec<Vec<N>> {
    let mut t = Tarjan {
        next: 0,
        seen: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for n in nodes {
        if !t.seen.contains_key(n) {
            t.visit(n, edges);
        }
    }
    t.found
}

fn describe(g: &Graph, comps: &[Vec<usize>], edges: &BTreeSet<(usize, usize)>) -> String {
    let mut s = String::new();
    for c in comps {
        s.push_str("cycle:\n");
        for &(a, b) in edges {
            if c.contains(&a) && c.contains(&b) {
                s.push_str(&format!("  {} -> {}\n", g.files[a].path, g.files[b].path));
            }
        }
    }
    s
}

#[test]
fn no_file_imports_itself_through_others() {
    let g = Graph::read();
    assert!(g.files.len() > 20, "read only {} files", g.files.len());
    let edges = g.edges();
    let nodes: Vec<usize> = (0..g.files.len()).collect();
    let comps = cycles(&nodes, &edges);
    assert!(comps.is_empty(), "{}", describe(&g, &comps, &edges));
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let g = Graph::read();
    let top = |i: usize| g.files[i].module.first().cloned().unwrap_or_default();
    let edges: BTreeSet<(String, String)> = g
        .edges()
        .into_iter()
        .map(|(a, b)| (top(a), top(b)))
        .filter(|(a, b)| a != b && !a.is_empty() && !b.is_empty())
        .collect();
    let nodes: Vec<String> = edges
        .iter()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let comps = cycles(&nodes, &edges);
    let shown: Vec<String> = comps
        .iter()
        .map(|c| {
            let inner: Vec<String> = edges
                .iter()
                .filter(|(a, b)| c.contains(a) && c.contains(b))
                .map(|(a, b)| format!("{a} -> {b}"))
                .collect();
            inner.join(", ")
        })
        .collect();
    assert!(comps.is_empty(), "module cycles: {shown:#?}");
}

#[test]
fn core_names_nothing_of_ours_outside_core() {
    let g = Graph::read();
    let mut wrong = Vec::new();
    for (a, b) in g.edges() {
        let (fa, fb) = (&g.files[a], &g.files[b]);
        if fa.module.first().is_some_and(|m| m == "core")
            && fb.module.first().is_none_or(|m| m != "core")
        {
            wrong.push(format!("{} -> {}", fa.path, fb.path));
        }
    }
    assert!(wrong.is_empty(), "core must stay pure: {wrong:#?}");
}

#[test]
fn the_reader_sees_the_imports_it_must() {
    // The checks above are only as good as the reading: known edges must be found.
    let g = Graph::read();
    let edges = g.edges();
    let has = |a: &str, b: &str| {
        edges
            .iter()
            .any(|&(x, y)| g.files[x].path == a && g.files[y].path == b)
    };
    assert!(has("src/proxy/mod.rs", "src/core/gate.rs"), "crate:: path");
    assert!(
        has("src/state/cache.rs", "src/state/mod.rs"),
        "super:: path"
    );
    assert!(
        has("src/tls/mod.rs", "src/tls/identity.rs"),
        "child by name"
    );
    assert!(has("src/app.rs", "src/reload.rs"), "braced import");
    assert!(
        has("src/state/redis/events.rs", "src/state/redis/mod.rs"),
        "glob import"
    );
    // A cycle is found when one is there.
    let fake: BTreeSet<(usize, usize)> = [(0, 1), (1, 2), (2, 0), (2, 3)].into_iter().collect();
    assert_eq!(cycles(&[0, 1, 2, 3], &fake), vec![vec![0, 1, 2]]);
}
