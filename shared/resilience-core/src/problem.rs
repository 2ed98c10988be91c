//! RFC 9457 `application/problem+json` bodies for the local replies the pack sends.
//!
//! # Why problem details
//!
//! When a filter answers on the upstream's behalf (circuit open, retry budget spent, deadline
//! already passed) the client must be able to tell *that* the proxy answered and *why*, without
//! parsing prose. RFC 9457 gives a standard envelope: a stable `type` URI per cause
//! (`urn:resilience-pack:problem:circuit-open`), a short human `title`, the `status`, an
//! occurrence-specific `detail`, and extension members such as `retry_after_ms`.
//!
//! # Why bounded
//!
//! A detail often quotes something from the request (a route name, a header value). Echoing it
//! unbounded turns every local reply into an amplifier and a log-injection vector, so anything
//! taken from input goes through [`bounded`] first: cut to a byte budget on a character boundary,
//! control characters replaced.
//!
//! Members are written in a fixed order (`type`, `title`, `status`, `detail`, then extensions) so
//! bodies are byte-for-byte stable and easy to assert on.

use serde_json::Value;

/// The media type of every problem body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// Prefix of every problem `type`; the rest is the problem's stable slug.
pub const TYPE_PREFIX: &str = "urn:resilience-pack:problem:";

/// Appended when [`bounded`] cuts a string.
const ELLIPSIS: char = '…';

/// Members the RFC defines; extensions with these names are dropped rather than written twice.
const RESERVED: [&str; 5] = ["type", "title", "status", "detail", "instance"];

/// One local reply's problem details.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: u16,
    /// Stable slug, e.g. `"circuit-open"`; the `type` member is [`TYPE_PREFIX`] + `kind`.
    pub kind: &'static str,
    /// Short, fixed summary of the problem kind (the same for every occurrence).
    pub title: &'static str,
    /// This occurrence; omitted from the body when empty. Pass input through [`bounded`].
    pub detail: String,
    /// Extra members, written in this order after `detail`.
    pub extensions: Vec<(&'static str, Value)>,
}

impl Problem {
    pub fn new(status: u16, kind: &'static str, title: &'static str) -> Self {
        Self {
            status,
            kind,
            title,
            detail: String::new(),
            extensions: Vec::new(),
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn with_extension(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.extensions.push((name, value.into()));
        self
    }

    /// The `type` member: [`TYPE_PREFIX`] followed by the slug.
    pub fn type_uri(&self) -> String {
        format!("{TYPE_PREFIX}{}", self.kind)
    }

    /// The JSON body, members in a fixed order.
    pub fn body(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push('{');
        push_member(&mut out, "type", &Value::String(self.type_uri()), true);
        push_member(&mut out, "title", &Value::from(self.title), false);
        push_member(&mut out, "status", &Value::from(self.status), false);
        if !self.detail.is_empty() {
            push_member(
                &mut out,
                "detail",
                &Value::from(self.detail.as_str()),
                false,
            );
        }
        let mut seen: Vec<&str> = Vec::with_capacity(self.extensions.len());
        for (name, value) in &self.extensions {
            if RESERVED.contains(name) || seen.contains(name) {
                continue;
            }
            seen.push(name);
            push_member(&mut out, name, value, false);
        }
        out.push('}');
        out
    }
}

fn push_member(out: &mut String, name: &str, value: &Value, first: bool) {
    if !first {
        out.push(',');
    }
    // Serialising a `&str` or a `Value` cannot fail (no maps with non-string keys exist in a
    // `Value`); `null` is written should that ever change, rather than panicking.
    out.push_str(&serde_json::to_string(name).unwrap_or_else(|_| "\"\"".to_owned()));
    out.push(':');
    out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()));
}

/// `s` cut to at most `max_bytes` bytes on a character boundary, with `…` appended when cut (the
/// ellipsis counts towards the budget), and every control character (newlines included)
/// replaced by U+FFFD so input can't forge log lines or header continuations. If the budget is too
/// small even for the ellipsis, the cut string is returned without it.
pub fn bounded(s: &str, max_bytes: usize) -> String {
    let clean = |c: char| if c.is_control() { '\u{FFFD}' } else { c };
    let full_len: usize = s.chars().map(|c| clean(c).len_utf8()).sum();
    let mut out = String::with_capacity(full_len.min(max_bytes));
    if full_len <= max_bytes {
        out.extend(s.chars().map(clean));
        return out;
    }
    let ellipsis_len = ELLIPSIS.len_utf8();
    let (budget, with_ellipsis) = if max_bytes >= ellipsis_len {
        (max_bytes - ellipsis_len, true)
    } else {
        (max_bytes, false)
    };
    for c in s.chars().map(clean) {
        if out.len() + c.len_utf8() > budget {
            break;
        }
        out.push(c);
    }
    if with_ellipsis {
        out.push(ELLIPSIS);
    }
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    #[test]
    fn body_members_come_in_rfc_order_then_extensions() {
        let p = Problem::new(503, "circuit-open", "Circuit open")
            .with_detail("route \"api\" is failing")
            .with_extension("retry_after_ms", 1500)
            .with_extension("route", "api");
        assert_eq!(
            p.body(),
            r#"{"type":"urn:resilience-pack:problem:circuit-open","title":"Circuit open","status":503,"detail":"route \"api\" is failing","retry_after_ms":1500,"route":"api"}"#
        );
    }

    #[test]
    fn the_body_is_valid_json_with_the_same_members() {
        let p = Problem::new(429, "budget-exhausted", "Retry budget exhausted")
            .with_extension("limits", json!({"b": 1, "a": [1, 2]}));
        let parsed: Value = serde_json::from_str(&p.body()).unwrap();
        assert_eq!(
            parsed,
            json!({
                "type": "urn:resilience-pack:problem:budget-exhausted",
                "title": "Retry budget exhausted",
                "status": 429,
                "limits": {"b": 1, "a": [1, 2]},
            })
        );
    }

    #[test]
    fn an_empty_detail_is_left_out() {
        let body = Problem::new(504, "deadline-exceeded", "Deadline exceeded").body();
        assert!(!body.contains("detail"), "{body}");
    }

    #[test]
    fn extensions_cannot_overwrite_standard_members_or_repeat() {
        let p = Problem::new(503, "x", "X")
            .with_extension("status", 200)
            .with_extension("type", "evil")
            .with_extension("n", 1)
            .with_extension("n", 2);
        assert_eq!(
            p.body(),
            r#"{"type":"urn:resilience-pack:problem:x","title":"X","status":503,"n":1}"#
        );
    }

    #[test]
    fn short_strings_pass_through_bounded_unchanged() {
        assert_eq!(bounded("hello", 5), "hello");
        assert_eq!(bounded("", 0), "");
    }

    #[test]
    fn long_strings_are_cut_with_an_ellipsis_inside_the_budget() {
        let out = bounded("abcdefghij", 8);
        assert_eq!(out, "abcde…");
        assert!(out.len() <= 8);
    }

    #[test]
    fn cuts_never_split_a_character() {
        // "é" is two bytes: a 6-byte budget leaves 3 bytes before the ellipsis, room for one "é".
        assert_eq!(bounded("ééééé", 6), "é…");
    }

    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(bounded("a\r\nb\u{0}", 100), "a\u{FFFD}\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn a_budget_smaller_than_the_ellipsis_just_cuts() {
        assert_eq!(bounded("abcdef", 2), "ab");
        assert_eq!(bounded("abcdef", 0), "");
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn bounded_never_exceeds_its_budget_or_keeps_a_control_char(
                s in "\\PC{0,30}|[\\x00-\\x7f]{0,30}",
                max in 0usize..40,
            ) {
                let out = bounded(&s, max);
                prop_assert!(out.len() <= max);
                prop_assert!(!out.chars().any(char::is_control));
            }
        }
    }
}
