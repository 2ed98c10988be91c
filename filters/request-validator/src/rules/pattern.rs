//! Regular expressions for header and query values.
//!
//! Patterns follow JSON Schema's `pattern`: the expression is *searched* in the value, so anchor
//! it (`^...$`) to constrain the whole value. They run on bytes (`regex::bytes`), so a non-UTF-8
//! value is matched, not trusted or trapped on. The engine is `regex` (linear time, no
//! backtracking: a hostile value cannot make a pattern slow), with a compiled-size cap so a
//! configuration cannot make the proxy allocate without bound.

use regex::bytes::{Regex, RegexBuilder};

/// Longest pattern source accepted.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Cap on one compiled pattern's memory (the engine's `size_limit`).
const COMPILED_SIZE_LIMIT: usize = 1 << 20;

/// A compiled pattern and its source.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Pattern {
    /// Compiles `source`; the error is a rule phrased to follow a configuration path.
    pub fn new(source: &str) -> Result<Self, String> {
        if source.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "must be a regular expression of at most {MAX_PATTERN_LEN} bytes, got {}",
                source.len()
            ));
        }
        let regex = RegexBuilder::new(source)
            .size_limit(COMPILED_SIZE_LIMIT)
            .build()
            .map_err(|e| {
                format!(
                    "is not a valid regular expression ({:?}): {}",
                    resilience_core::problem::bounded(source, 64),
                    one_line(&e)
                )
            })?;
        Ok(Pattern {
            source: source.to_owned(),
            regex,
        })
    }

    /// Whether the pattern is found in `value`.
    pub fn is_match(&self, value: &[u8]) -> bool {
        self.regex.is_match(value)
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The engine's multi-line error (source excerpt, caret, message) as its message alone.
fn one_line(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .map_or_else(|| text.replace('\n', " "), str::to_owned),
        regex::Error::CompiledTooBig(limit) => {
            format!("compiles to more than the {limit} byte limit")
        }
        other => other.to_string().replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_search_the_value_and_anchors_constrain_it_whole() {
        let p = Pattern::new("[0-9]+").unwrap();
        assert!(p.is_match(b"abc123"));
        let p = Pattern::new("^[0-9]+$").unwrap();
        assert!(!p.is_match(b"abc123"));
        assert!(p.is_match(b"123"));
    }

    #[test]
    fn non_utf8_values_are_matched_without_trouble() {
        let p = Pattern::new("^[a-z]+$").unwrap();
        assert!(!p.is_match(b"ab\xffcd"));
        assert!(Pattern::new("^.*$").unwrap().is_match(b"ok"));
    }

    #[test]
    fn a_bad_pattern_is_refused_with_a_one_line_reason() {
        let e = Pattern::new("([a-z]").unwrap_err();
        assert_eq!(
            e,
            r#"is not a valid regular expression ("([a-z]"): unclosed group"#
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn huge_patterns_are_refused() {
        assert!(Pattern::new(&"a".repeat(MAX_PATTERN_LEN + 1))
            .unwrap_err()
            .starts_with("must be a regular expression of at most 1024 bytes"));
        let e = Pattern::new("\\w{1000}{1000}").unwrap_err();
        assert!(e.contains("limit") || e.contains("repetition"), "{e}");
    }
}
