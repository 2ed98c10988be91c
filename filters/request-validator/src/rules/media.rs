//! Media types (`content-type`) and the ranges an allow-list names.
//!
//! A request's media type is the part of `content-type` before any `;` parameter, trimmed and
//! compared without case (RFC 9110 §8.3.1). An allow-list entry is a type (`application/json`),
//! a type range (`text/*`, `*/*`), or a subtype pattern with one `*` (`application/*+json`,
//! `application/vnd.acme.*`).

/// One allow-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaRange {
    /// Lowercase type, or `*`.
    kind: String,
    /// Lowercase subtype before the `*` (all of it when there is no `*`).
    sub_prefix: String,
    /// Lowercase subtype after the `*`; `None` when the subtype has no `*`.
    sub_suffix: Option<String>,
    source: String,
}

impl MediaRange {
    /// Parses an allow-list entry; the error is a rule phrased to follow a configuration path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                r#"must be a media type like "application/json", "text/*" or "application/*+json", got {:?}"#,
                resilience_core::problem::bounded(text, 64)
            )
        };
        let lower = text.trim().to_ascii_lowercase();
        let (kind, sub) = lower.split_once('/').ok_or_else(bad)?;
        let token = |s: &str| !s.is_empty() && s.bytes().all(|b| is_token_byte(b) || b == b'*');
        if !token(kind) || !token(sub) || kind.contains('*') && kind != "*" {
            return Err(bad());
        }
        if sub.matches('*').count() > 1 || (kind == "*" && sub != "*") {
            return Err(bad());
        }
        let (sub_prefix, sub_suffix) = match sub.split_once('*') {
            Some((p, s)) => (p.to_owned(), Some(s.to_owned())),
            None => (sub.to_owned(), None),
        };
        Ok(MediaRange {
            kind: kind.to_owned(),
            sub_prefix,
            sub_suffix,
            source: text.trim().to_owned(),
        })
    }

    /// Whether `media` (an essence from [`essence`]) is in this range.
    pub fn contains(&self, media: &str) -> bool {
        let Some((kind, sub)) = media.split_once('/') else {
            return false;
        };
        if self.kind != "*" && self.kind != kind {
            return false;
        }
        match &self.sub_suffix {
            None => sub == self.sub_prefix,
            Some(suffix) => {
                sub.len() >= self.sub_prefix.len().saturating_add(suffix.len())
                    && sub.starts_with(self.sub_prefix.as_str())
                    && sub.ends_with(suffix.as_str())
            }
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The media type of a `content-type` value, lowercase, without parameters; `None` when the
/// value is not `type/subtype` of token characters.
pub fn essence(content_type: &[u8]) -> Option<String> {
    let end = content_type
        .iter()
        .position(|b| *b == b';')
        .unwrap_or(content_type.len());
    let raw = content_type.get(..end)?;
    let text = std::str::from_utf8(raw).ok()?.trim();
    let (kind, sub) = text.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && s.bytes().all(is_token_byte);
    if !ok(kind) || !ok(sub) {
        return None;
    }
    Some(text.to_ascii_lowercase())
}

/// Whether a media type carries JSON: `application/json` or any `+json` structured suffix.
pub fn is_json(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json")
}

/// RFC 9110 `tchar`.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> MediaRange {
        MediaRange::parse(s).unwrap()
    }

    #[test]
    fn essences_drop_parameters_and_case() {
        assert_eq!(
            essence(b"Application/JSON; charset=utf-8").as_deref(),
            Some("application/json")
        );
        assert_eq!(essence(b" text/plain ").as_deref(), Some("text/plain"));
        for bad in [
            &b""[..],
            b"json",
            b"/json",
            b"text/",
            b"te xt/plain",
            b"a/\xff",
        ] {
            assert_eq!(essence(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ranges_match_exact_types_type_ranges_and_subtype_patterns() {
        assert!(range("application/json").contains("application/json"));
        assert!(!range("application/json").contains("application/jsonx"));
        assert!(range("text/*").contains("text/csv"));
        assert!(!range("text/*").contains("application/csv"));
        assert!(range("*/*").contains("image/png"));
        assert!(range("application/*+json").contains("application/problem+json"));
        assert!(!range("application/*+json").contains("application/json"));
        assert!(range("application/vnd.acme.*").contains("application/vnd.acme.v2+json"));
        assert!(range("Application/JSON").contains("application/json"));
    }

    #[test]
    fn malformed_ranges_are_refused() {
        for bad in ["json", "*/json", "a/b/c", "a/**", "te xt/plain", "", "a*/b"] {
            assert!(MediaRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_media_types_include_structured_suffixes() {
        assert!(is_json("application/json"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
    }
}
