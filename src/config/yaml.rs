//! YAML text → [`FileConfig`]: the parse (with serde-saphyr's positions turned into
//! file:line:key errors) and the index of where each dotted key is written, which
//! validation uses to blame a line.

use std::collections::HashMap;
use std::path::Path;

use super::ConfigError;
use super::schema::{FileConfig, KEYS, S, keys_of};

pub(super) fn parse(text: &str, path: &Path, index: &KeyIndex) -> Result<FileConfig, ConfigError> {
    use serde_saphyr::MessageFormatter;

    let options = serde_saphyr::options! { strict_booleans: true, with_snippet: false };
    let err = match serde_saphyr::from_str_with_options::<Option<FileConfig>>(text, options) {
        // An empty file (or one holding only comments) is an empty mapping; the missing
        // required keys are reported by validation.
        Ok(file) => return Ok(file.unwrap_or_default()),
        Err(err) => err,
    };
    let location = err.location().filter(|l| l.line() > 0);
    let line = location.map(|l| l.line() as usize);
    let mut message = sanitize(&serde_saphyr::UserMessageFormatter.format_message(&err));
    if message == "invalid u64" || message == "invalid u32" {
        message = "expected a whole number (0 or more)".to_string();
    }
    let mut key = line
        .and_then(|l| index.path_at(l))
        .unwrap_or_else(|| "(file)".to_string());
    if let Some(field) = between(&message, "unknown field `", "`").map(str::to_string) {
        // In a flow mapping (`tls: {cert: a, bad: b}`) the line names only the parent.
        if key.rsplit('.').next() != Some(field.as_str()) {
            key = if key == "(file)" {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
        }
        message = unknown_key_message(&message, &key, &field, line, index);
    } else if message.starts_with("duplicate") {
        message = duplicate_key_message(&message, &key, line, index);
    } else {
        let found = location.and_then(|l| text_at(text, l.line(), l.column()));
        message = match (message.as_str(), found) {
            ("expected sequence start", Some(found)) => format!(
                "expected a list, found `{found}`: write `[{found}]`, or one `- {found}` \
                 per line below the key"
            ),
            ("expected sequence start", None) => {
                "expected a list: write `[a, b]`, or one `- item` per line below the key"
                    .to_string()
            }
            (m, Some(found))
                if m.starts_with("expected mapping start") || m.contains("expected struct") =>
            {
                format!("expected a section (keys indented below `{key}:`), found `{found}`")
            }
            (_, Some(found)) => format!("{message} (found `{found}`)"),
            (_, None) => message,
        };
    }
    Err(ConfigError {
        file: path.to_path_buf(),
        line,
        key,
        message,
    })
}

/// An unknown key: the nearest key of its section ("did you mean"), or the section it
/// belongs to when it was dedented out of (or written outside) it.
fn unknown_key_message(
    message: &str,
    key: &str,
    field: &str,
    line: Option<usize>,
    index: &KeyIndex,
) -> String {
    let section = key.rsplit_once('.').map_or("", |(parent, _)| parent);
    let where_ = if section.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in `{section}`")
    };
    let known = keys_of(section).unwrap_or_default();
    let list = if known.is_empty() {
        String::new()
    } else {
        format!(" (keys {where_}: {})", known.join(", "))
    };
    let head = message
        .split_once(", expected")
        .map_or(message, |(head, _)| head);
    if let Some(near) = nearest(field, known) {
        return format!("{head}: did you mean `{near}`?{list}");
    }
    if let Some(home) = home_section(field, section, line, index) {
        return format!(
            "{head} {where_}: {}{list}",
            belongs_under(field, &home, index)
        );
    }
    let homes: Vec<String> = KEYS
        .iter()
        .filter(|(p, k)| *p != section && k.contains(&field))
        .map(|(p, _)| format!("`{p}`"))
        .collect();
    if homes.is_empty() {
        format!("{head}{list}")
    } else {
        format!(
            "{head} {where_}: it is a key of {}; indent it under the section it belongs to{list}",
            homes.join(", ")
        )
    }
}

/// A key written twice in one mapping, typically because a line was dedented out of the
/// section above it into the enclosing one.
fn duplicate_key_message(
    message: &str,
    key: &str,
    line: Option<usize>,
    index: &KeyIndex,
) -> String {
    let field = key.rsplit('.').next().unwrap_or(key);
    let section = key.rsplit_once('.').map_or("", |(parent, _)| parent);
    let first = index.line_of(key).filter(|l| Some(*l) != line);
    let mut out = match first {
        Some(first) => format!("`{field}` is written twice here (first at line {first})"),
        None => message.to_string(),
    };
    match home_section(field, section, line, index) {
        Some(home) => {
            out.push_str(": if this line belongs to the section above, ");
            out.push_str(&belongs_under(field, &home, index));
        }
        None => out.push_str(": keep one of them"),
    }
    out
}

/// "indent it under `tls:` (line 2)".
fn belongs_under(field: &str, home: &str, index: &KeyIndex) -> String {
    let shown = home.rsplit('.').next().unwrap_or(home);
    match index.lines.get(home) {
        Some(l) => format!("`{field}` is a key of `{home}`; indent it under `{shown}:` (line {l})"),
        None => format!("`{field}` is a key of `{home}`; write it under a `{shown}:` section"),
    }
}

/// The section `field` belongs to, other than `section`: preferably one that encloses the
/// lines just above `line` (a dedented key), else the only section that has it.
fn home_section(
    field: &str,
    section: &str,
    line: Option<usize>,
    index: &KeyIndex,
) -> Option<String> {
    let has = |s: &str| s != section && keys_of(s).is_some_and(|k| k.contains(&field));
    if let Some(line) = line {
        let above = (1..line)
            .rev()
            .find_map(|l| index.path_at(l).filter(|_| l != line));
        if let Some(mut path) = above.as_deref() {
            loop {
                if has(path) {
                    return Some(path.to_string());
                }
                match path.rfind(['.', '[']) {
                    Some(i) => path = &path[..i],
                    None => break,
                }
            }
        }
    }
    let mut homes = KEYS.iter().map(|(p, _)| *p).filter(|p| has(p));
    match (homes.next(), homes.next()) {
        (Some(only), None) => Some(only.to_string()),
        _ => None,
    }
}

/// The key of `known` closest to `field`, when it is close enough to be a typo.
fn nearest<'k>(field: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = match field.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    known
        .iter()
        .map(|k| (edit_distance(&field.to_ascii_lowercase(), k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The text of `s` between the first `start` and the following `end`.
pub(super) fn between<'s>(s: &'s str, start: &str, end: &str) -> Option<&'s str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// The scalar written at 1-based `line`/`column`, without a trailing comment; `None` when
/// it is empty or too long to quote in a message.
pub(super) fn text_at(text: &str, line: u64, column: u64) -> Option<String> {
    let l = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let l = strip_comment(l);
    let start = l
        .char_indices()
        .nth(usize::try_from(column).ok()?.checked_sub(1)?)?
        .0;
    let found = l[start..].trim();
    (!found.is_empty() && found.len() <= 80).then(|| sanitize(found))
}

/// Removes control characters so a message stays on one line.
pub(super) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Removes a `# comment` that is outside quotes.
pub(super) fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && prev != '\\' => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// Where `key` is written in the config file at `path`: `file:line`, or the file with
/// "(default)" when the key is not written there or the file cannot be read now.
pub fn key_location(path: &Path, key: &str) -> String {
    let line = super::read::regular_text(path, super::read::MAX_CONFIG_BYTES)
        .ok()
        .and_then(|text| KeyIndex::new(&text).line_of_exact(key));
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => format!("{} (default)", path.display()),
    }
}

/// Where each dotted key is written, recovered from the block layout of the text. Serde
/// errors only carry a line; this turns the line back into the key an operator must fix,
/// and gives a line to errors about keys that are not scalars (`client_auth.trusted_cas`).
/// It understands block mappings and sequences, which is what config files use; inside a
/// flow collection it names the key that holds the collection.
pub(super) struct KeyIndex {
    /// Dotted path per 1-based line (index 0 unused).
    paths: Vec<Option<String>>,
    /// First line of each dotted path.
    lines: HashMap<String, usize>,
}

impl KeyIndex {
    pub(super) fn new(text: &str) -> Self {
        let mut paths = vec![None];
        let mut lines = HashMap::new();
        // (indent, dotted path) of the mapping keys enclosing the current line.
        let mut stack: Vec<(usize, String)> = Vec::new();
        let mut items: HashMap<String, usize> = HashMap::new();
        for raw in text.lines() {
            let line = strip_comment(raw).trim_end();
            let content = line.trim_start_matches([' ', '\t']);
            let indent = line.len() - content.len();
            if content.is_empty() || content.starts_with("---") || content.starts_with("...") {
                paths.push(stack.last().map(|(_, p)| p.clone()));
                continue;
            }
            if content == "-" || content.starts_with("- ") {
                while stack.last().is_some_and(|(i, _)| *i > indent) {
                    stack.pop();
                }
                let parent = stack.last().map(|(_, p)| p.clone()).unwrap_or_default();
                let n = items.entry(parent.clone()).or_insert(0);
                paths.push(Some(format!("{parent}[{n}]")));
                *n += 1;
                continue;
            }
            if let Some(key) = mapping_key(content) {
                while stack.last().is_some_and(|(i, _)| *i >= indent) {
                    stack.pop();
                }
                let path = match stack.last() {
                    Some((_, parent)) => format!("{parent}.{key}"),
                    None => key.to_string(),
                };
                items.remove(&path);
                lines.entry(path.clone()).or_insert(paths.len());
                paths.push(Some(path.clone()));
                stack.push((indent, path));
            } else {
                paths.push(stack.last().map(|(_, p)| p.clone()));
            }
        }
        KeyIndex { paths, lines }
    }

    pub(super) fn path_at(&self, line: usize) -> Option<String> {
        self.paths.get(line).cloned().flatten()
    }

    /// The line of `key` itself, when it is written.
    pub(super) fn line_of_exact(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }

    /// The line of `key`, or of its nearest written parent (`tls.cert` → `tls`).
    pub(super) fn line_of(&self, key: &str) -> Option<usize> {
        let mut key = key;
        loop {
            if let Some(line) = self.lines.get(key) {
                return Some(*line);
            }
            key = &key[..key.rfind(['.', '['])?];
        }
    }
}

/// The key of a block mapping line (`key: value` or `key:`), unquoted.
pub(super) fn mapping_key(content: &str) -> Option<&str> {
    if content.starts_with(['{', '[', '|', '>', '&', '*', '!']) {
        return None;
    }
    let end = content
        .find(": ")
        .or_else(|| content.find(":\t"))
        .or_else(|| content.ends_with(':').then(|| content.len() - 1))?;
    let key = content[..end].trim();
    let key = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
        .unwrap_or(key);
    (!key.is_empty()).then_some(key)
}

/// 1-based line of a spanned value, when known.
pub(super) fn span_line<T>(v: &S<T>) -> Option<usize> {
    let line = v.referenced.line();
    (line > 0).then_some(line as usize)
}
