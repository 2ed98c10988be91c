//! The documentation's links, proven to lead somewhere on a code host.
//!
//! Why: the docs are split over many files (the root README is a map; each filter's reference is
//! `filters/<name>/README.md`; longer general references are under `docs/`). A section that moves
//! or a heading that is renamed silently breaks every link to it, and nobody notices until a
//! reader clicks. This test reads every Markdown file a reader can reach — `README.md`,
//! `docs/**/*.md`, `filters/*/README.md`, `examples/**/*.md`, `envoy-configs/**/*.md` — and
//! checks every relative link `[text](target)` and every reference definition `[ref]: target`:
//! - the target file or directory exists, resolved from the linking file's folder, inside the
//!   repository;
//! - a `#anchor` names a heading of the target Markdown file, slugged the way GitHub slugs it
//!   (lowercase; letters, digits, spaces, `-` and `_` kept, spaces to `-`; a repeated heading
//!   gets `-1`, `-2`, … in order).
//!
//! Links with a scheme (`https:`, `mailto:`) and anything inside code (fenced blocks and inline
//! code spans) are not checked. Only std: the rules GitHub applies are small enough to write out.
//!
//! A second test keeps the root README a map rather than a manual: under 550 lines.

// Test code: a failed expectation should panic with its message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The root README's line budget: enough for the tour, the lab and the bench blocks and the map.
const ROOT_README_MAX_LINES: usize = 550;

/// One link found in a Markdown file.
#[derive(Debug, PartialEq, Eq)]
struct Link {
    /// 1-based line of the link's target.
    line: usize,
    target: String,
}

/// A line that opens or closes a fenced code block: its fence character and length.
fn fence(line: &str) -> Option<(char, usize)> {
    let trimmed = line.trim_start();
    let first = trimmed.chars().next()?;
    if first != '`' && first != '~' {
        return None;
    }
    let len = trimmed.chars().take_while(|&c| c == first).count();
    (len >= 3).then_some((first, len))
}

/// The file's lines with fenced code blocks blanked out (line numbers are kept).
fn prose_lines(text: &str) -> Vec<String> {
    let mut open: Option<(char, usize)> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        match (open, fence(line)) {
            (None, Some(f)) => {
                open = Some(f);
                out.push(String::new());
            }
            (Some((c, n)), Some((c2, n2))) if c == c2 && n2 >= n && closes(line, c) => {
                open = None;
                out.push(String::new());
            }
            (Some(_), _) => out.push(String::new()),
            (None, None) => out.push(line.to_string()),
        }
    }
    out
}

/// A closing fence is only fence characters (and trailing spaces), no info string.
fn closes(line: &str, c: char) -> bool {
    line.trim().chars().all(|x| x == c)
}

/// Every inline link target and reference definition in `text`, outside code.
///
/// Link text may span lines and contain code spans and nested brackets (an image inside a link).
/// An unmatched `[` is forgotten at the end of its paragraph.
fn links(text: &str) -> Vec<Link> {
    let lines = prose_lines(text);
    let mut found = Vec::new();
    // Lines of the `[`s still open; only their count matters for matching.
    let mut open_brackets: Vec<usize> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            open_brackets.clear();
            continue;
        }
        if let Some(target) = reference_definition(line) {
            found.push(Link {
                line: i + 1,
                target,
            });
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut j = 0;
        while j < chars.len() {
            match chars[j] {
                '\\' => j += 2,
                '`' => j = skip_code_span(&chars, j),
                '[' => {
                    open_brackets.push(i);
                    j += 1;
                }
                ']' => {
                    j += 1;
                    if open_brackets.pop().is_some() && chars.get(j) == Some(&'(') {
                        if let Some((target, end)) = inline_target(&chars, j) {
                            found.push(Link {
                                line: i + 1,
                                target,
                            });
                            j = end;
                        }
                    }
                }
                _ => j += 1,
            }
        }
    }
    found
}

/// Past the code span starting at `start` (a run of backticks), or just past the run when it is
/// never closed on this line.
fn skip_code_span(chars: &[char], start: usize) -> usize {
    let run = chars[start..].iter().take_while(|&&c| c == '`').count();
    let mut k = start + run;
    while k < chars.len() {
        if chars[k] == '`' {
            let n = chars[k..].iter().take_while(|&&c| c == '`').count();
            if n == run {
                return k + n;
            }
            k += n;
        } else {
            k += 1;
        }
    }
    start + run
}

/// The target of `(target "title")` starting at the `(` at `open`, and the index past `)`.
fn inline_target(chars: &[char], open: usize) -> Option<(String, usize)> {
    let mut k = open + 1;
    while chars.get(k) == Some(&' ') {
        k += 1;
    }
    if chars.get(k) == Some(&'<') {
        let end = k + 1 + chars[k + 1..].iter().position(|&c| c == '>')?;
        let close = end + 1 + chars[end + 1..].iter().position(|&c| c == ')')?;
        return Some((chars[k + 1..end].iter().collect(), close + 1));
    }
    let start = k;
    let mut depth = 0usize;
    while k < chars.len() {
        match chars[k] {
            '\\' => k += 1,
            '(' => depth += 1,
            ')' if depth == 0 => break,
            ')' => depth -= 1,
            ' ' => break,
            _ => {}
        }
        k += 1;
    }
    let target: String = chars.get(start..k)?.iter().collect();
    let close = k + chars.get(k..)?.iter().position(|&c| c == ')')?;
    Some((target, close + 1))
}

/// `[label]: target` at the start of a line (up to three spaces in).
fn reference_definition(line: &str) -> Option<String> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = line.trim_start().strip_prefix('[')?;
    let (label, after) = rest.split_once("]:")?;
    if label.is_empty() || label.starts_with('^') {
        return None;
    }
    let target = after.split_whitespace().next()?;
    Some(
        target
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string(),
    )
}

/// The heading texts of a Markdown file, in order (ATX `#` headings and setext underlines),
/// outside fenced code.
fn headings(text: &str) -> Vec<String> {
    let lines = prose_lines(text);
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(h) = atx_heading(line) {
            out.push(h);
            continue;
        }
        let under = line.trim_end();
        let indent = under.len() - under.trim_start_matches(' ').len();
        let is_underline = indent <= 3
            && !under.trim().is_empty()
            && (under.trim().chars().all(|c| c == '=') || under.trim().chars().all(|c| c == '-'));
        if is_underline && i > 0 {
            let above = lines[i - 1].trim();
            let is_paragraph = !above.is_empty()
                && atx_heading(&lines[i - 1]).is_none()
                && !above.starts_with(['-', '*', '+', '>', '|'])
                // One-line paragraphs only: the line above the text is blank or the file's start.
                && (i == 1 || lines[i - 2].trim().is_empty());
            if is_paragraph {
                out.push(above.to_string());
            }
        }
    }
    out
}

fn atx_heading(line: &str) -> Option<String> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let t = line.trim_start();
    let level = t.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &t[level..];
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    // A closing run of `#` preceded by a space is not part of the text.
    let rest = rest.trim();
    let rest = match rest.trim_end_matches('#') {
        r if r.is_empty() => r,
        r if r.ends_with(' ') => r.trim_end(),
        _ => rest,
    };
    Some(rest.to_string())
}

/// The text a reader sees for inline Markdown: code spans keep their content, links and images
/// keep their text, emphasis markers and HTML tags go.
fn rendered_text(markdown: &str) -> String {
    let chars: Vec<char> = markdown.chars().collect();
    let mut out = String::new();
    let mut j = 0;
    while j < chars.len() {
        match chars[j] {
            '\\' if j + 1 < chars.len() => {
                out.push(chars[j + 1]);
                j += 2;
            }
            '`' => {
                let end = skip_code_span(&chars, j);
                let run = chars[j..].iter().take_while(|&&c| c == '`').count();
                if end > j + run {
                    let inner: String = chars[j + run..end - run].iter().collect();
                    out.push_str(inner.trim());
                } else {
                    out.extend(&chars[j..end]);
                }
                j = end;
            }
            '!' if chars.get(j + 1) == Some(&'[') => j += 1,
            '[' | ']' => {
                if chars[j] == ']' && chars.get(j + 1) == Some(&'(') {
                    if let Some((_, end)) = inline_target(&chars, j + 1) {
                        j = end;
                        continue;
                    }
                }
                j += 1;
            }
            '<' => match chars[j..].iter().position(|&c| c == '>') {
                Some(p)
                    if chars
                        .get(j + 1)
                        .is_some_and(|c| c.is_ascii_alphabetic() || *c == '/') =>
                {
                    j += p + 1;
                }
                _ => {
                    out.push('<');
                    j += 1;
                }
            },
            '*' => j += 1,
            // `_` is emphasis only at a word's edge; inside a word (`max_keys`) it is text.
            '_' => {
                let before = j.checked_sub(1).map(|b| chars[b]);
                let after = chars.get(j + 1).copied();
                let inside_word = before.is_some_and(char::is_alphanumeric)
                    && after.is_some_and(char::is_alphanumeric);
                if inside_word {
                    out.push('_');
                }
                j += 1;
            }
            c => {
                out.push(c);
                j += 1;
            }
        }
    }
    out
}

/// GitHub's anchor for a heading's text, before duplicates are numbered.
fn slug(heading: &str) -> String {
    rendered_text(heading)
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a Markdown file's headings produce: a repeated slug gets `-1`, `-2`, … in order,
/// skipping any that an earlier heading already produced.
fn anchors(text: &str) -> Vec<String> {
    let mut taken: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for heading in headings(text) {
        let base = slug(&heading);
        let mut anchor = base.clone();
        while taken.contains_key(&anchor) {
            let n = taken.entry(base.clone()).or_insert(0);
            *n += 1;
            anchor = format!("{base}-{n}");
        }
        taken.insert(anchor.clone(), 0);
        out.push(anchor);
    }
    out
}

/// `%20` and friends, as a code host decodes them before looking the path up.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(Ok(b)) = s.get(i + 1..i + 3).map(|hex| u8::from_str_radix(hex, 16)) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A target with a URL scheme (`https:`, `mailto:`, …) leaves the repository.
fn has_scheme(target: &str) -> bool {
    match target.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !scheme.contains('/')
        }
        None => false,
    }
}

/// `path` made lexical (no `.` or `..`), or `None` when it climbs above the repository root.
fn normalize(root: &Path, path: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in relative.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().fold(root.to_path_buf(), |acc, p| acc.join(p)))
}

/// Why `target`, linked from `from`, does not resolve; `None` when it does.
fn broken(
    root: &Path,
    from: &Path,
    target: &str,
    cache: &mut BTreeMap<PathBuf, Vec<String>>,
) -> Option<String> {
    let (path_part, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let path_part = path_part.split('?').next().unwrap_or_default();
    let file = if path_part.is_empty() {
        from.to_path_buf()
    } else {
        let decoded = percent_decode(path_part);
        let joined = match decoded.strip_prefix('/') {
            Some(from_root) => root.join(from_root),
            None => from.parent().unwrap_or(root).join(&decoded),
        };
        match normalize(root, &joined) {
            Some(p) => p,
            None => return Some("leaves the repository".to_string()),
        }
    };
    if !file.exists() {
        return Some(format!("{} does not exist", display(root, &file)));
    }
    let anchor = anchor?;
    if file.is_dir() {
        return Some(format!(
            "{} is a folder, it has no #{anchor}",
            display(root, &file)
        ));
    }
    if file.extension().and_then(|e| e.to_str()) != Some("md") {
        let is_line = anchor.strip_prefix('L').is_some_and(|n| {
            n.split("-L")
                .all(|x| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit()))
        });
        return (!is_line).then(|| {
            format!(
                "{} is not Markdown, it has no #{anchor}",
                display(root, &file)
            )
        });
    }
    let anchors = cache
        .entry(file.clone())
        .or_insert_with(|| anchors(&fs::read_to_string(&file).unwrap_or_default()));
    let wanted = percent_decode(anchor).to_lowercase();
    (!anchors.contains(&wanted)).then(|| {
        format!(
            "{} has no heading with anchor #{anchor} (its anchors: {})",
            display(root, &file),
            anchors.join(", ")
        )
    })
}

fn display(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Markdown files under `dir` (recursively), skipping build output and downloaded tools.
fn markdown_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target"
                && name != "node_modules"
                && !name.to_string_lossy().starts_with('.')
            {
                markdown_under(&path, out);
            }
        } else if path.extension().and_then(|e| e.to_str()) == Some("md") {
            out.push(path);
        }
    }
}

/// The Markdown a reader of the repository reaches: the root README, `docs/`, each filter's
/// README, the examples and the Envoy configs' notes.
fn documentation(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "examples", "envoy-configs"] {
        markdown_under(&root.join(dir), &mut files);
    }
    if let Ok(filters) = fs::read_dir(root.join("filters")) {
        for filter in filters.flatten() {
            let readme = filter.path().join("README.md");
            if readme.is_file() {
                files.push(readme);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_relative_link_in_the_docs_resolves_to_a_file_and_heading() {
    let root = harness::paths::workspace_root();
    let files = documentation(&root);
    assert!(
        files.len() > 1,
        "found no documentation under {}",
        root.display()
    );
    let mut cache = BTreeMap::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        for link in links(&text) {
            if link.target.is_empty() || has_scheme(&link.target) {
                continue;
            }
            checked += 1;
            if let Some(why) = broken(&root, file, &link.target, &mut cache) {
                problems.push(format!(
                    "{}:{}: ({}) {why}",
                    display(&root, file),
                    link.line,
                    link.target
                ));
            }
        }
    }
    assert!(
        checked > 0,
        "no relative links found in {} files",
        files.len()
    );
    assert!(
        problems.is_empty(),
        "{} of {checked} relative links are broken:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_root_readme_stays_a_map_under_550_lines() {
    let root = harness::paths::workspace_root();
    let lines = fs::read_to_string(root.join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines < ROOT_README_MAX_LINES,
        "README.md has {lines} lines; keep it under {ROOT_README_MAX_LINES}: move reference \
         material to filters/<name>/README.md or docs/ and leave a summary and a link"
    );
}

#[test]
fn anchors_follow_the_code_hosts_slug_rule() {
    let text = "# Circuit breaker reference\n\
                ## Why: compared with what you already have\n\
                ## `max_keys` and *emphasis* — 100% [linked](x.md)\n\
                ## Stats\n\
                ### Stats\n\
                ## Stats ##\n\
                ## Stats-1\n\
                ```\n## not a heading\n```\n\
                Setext title\n\
                ============\n";
    assert_eq!(
        anchors(text),
        [
            "circuit-breaker-reference",
            "why-compared-with-what-you-already-have",
            "max_keys-and-emphasis--100-linked",
            "stats",
            "stats-1",
            "stats-2",
            "stats-1-1",
            "setext-title",
        ]
    );
}

#[test]
fn links_are_found_across_lines_and_never_inside_code() {
    let text =
        "See the [failure\nlab](#the-failure-lab) and [`pack.yaml`](envoy-configs/pack.yaml).\n\
                Not `[code](nope.md)`, and [a] bracket [b]: not a definition.\n\
                ```sh\n[fenced](nope.md)\n```\n\
                [![chart](docs/lab/x.svg)](docs/lab/)\n\
                [ref]: ../other.md#top\n";
    let found: Vec<(usize, String)> = links(text)
        .into_iter()
        .map(|l| (l.line, l.target))
        .collect();
    let expected = [
        (2, "#the-failure-lab"),
        (2, "envoy-configs/pack.yaml"),
        (7, "docs/lab/x.svg"),
        (7, "docs/lab/"),
        (8, "../other.md#top"),
    ]
    .map(|(line, target)| (line, target.to_string()));
    assert_eq!(found, expected);
}
