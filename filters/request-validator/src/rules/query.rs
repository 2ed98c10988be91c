//! Query-string rules: a parameter is required, matches a pattern, or is an integer in a range.
//!
//! The query is split on `&` into `name=value` pairs, and each side is percent-decoded with `+` as
//! a space (the `application/x-www-form-urlencoded` reading every web framework applies). A
//! malformed `%` escape is kept literally rather than rejected: the rules decide what is valid.
//!
//! A parameter may be repeated (`limit=5&limit=500`), and frameworks disagree on which occurrence
//! they read: some take the first, some the last, some all of them. Checking only one occurrence
//! would let a bad value ride behind a good one, so every reader here goes through [`values`], and
//! every occurrence of a repeated parameter must satisfy the rule. (OpenAPI mode goes further and
//! refuses repeats of a parameter its document declares as a single value.)

use std::borrow::Cow;

use super::pattern::Pattern;
use super::{Rule, Violation};

/// One query parameter's rule.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryRule {
    /// The decoded parameter name.
    pub name: String,
    pub required: bool,
    pub pattern: Option<Pattern>,
    pub integer: Option<IntRange>,
}

/// An inclusive integer range; a missing bound is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IntRange {
    pub min: Option<i64>,
    pub max: Option<i64>,
}

impl IntRange {
    fn describe(&self) -> String {
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => format!("an integer from {lo} to {hi}"),
            (Some(lo), None) => format!("an integer of at least {lo}"),
            (None, Some(hi)) => format!("an integer of at most {hi}"),
            (None, None) => "an integer".to_owned(),
        }
    }

    fn contains(&self, n: i64) -> bool {
        self.min.is_none_or(|lo| n >= lo) && self.max.is_none_or(|hi| n <= hi)
    }
}

/// Percent-decodes one query component, `+` read as a space. Borrowed when nothing changes.
pub fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|b| *b == b'%' || *b == b'+') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0usize;
    while let Some(&b) = raw.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |j: usize| raw.get(j).and_then(|c| (*c as char).to_digit(16));
                match (hex(i.saturating_add(1)), hex(i.saturating_add(2))) {
                    (Some(h), Some(l)) => {
                        // Two hex digits: at most 0xFF.
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i = i.saturating_add(2);
                    }
                    _ => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i = i.saturating_add(1);
    }
    Cow::Owned(out)
}

/// The decoded `(name, value)` pairs of a query string; a pair without `=` has an empty value.
pub fn pairs(query: &[u8]) -> impl Iterator<Item = (Cow<'_, [u8]>, Cow<'_, [u8]>)> {
    query
        .split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(i) => (
                decode(p.get(..i).unwrap_or_default()),
                decode(p.get(i.saturating_add(1)..).unwrap_or_default()),
            ),
            None => (decode(p), Cow::Borrowed(&b""[..])),
        })
}

/// The decoded values of every occurrence of parameter `name`, in order.
pub fn values<'q>(query: &'q [u8], name: &'q [u8]) -> impl Iterator<Item = Cow<'q, [u8]>> + 'q {
    pairs(query).filter_map(move |(n, v)| (n.as_ref() == name).then_some(v))
}

/// A strict decimal integer: optional `-`, 1–19 digits, nothing else.
pub fn parse_integer(v: &[u8]) -> Option<i64> {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Checks `rules` against the query string (`None`: no `?` in the path).
pub fn check(rules: &[QueryRule], query: Option<&[u8]>) -> Result<(), Violation> {
    let query = query.unwrap_or_default();
    for rule in rules {
        let mut seen = false;
        for value in values(query, rule.name.as_bytes()) {
            seen = true;
            check_value(rule, &value)?;
        }
        if rule.required && !seen {
            return Err(violation(rule, "is required"));
        }
    }
    Ok(())
}

fn check_value(rule: &QueryRule, value: &[u8]) -> Result<(), Violation> {
    if let Some(range) = &rule.integer {
        match parse_integer(value) {
            Some(n) if range.contains(n) => {}
            _ => return Err(violation(rule, &format!("must be {}", range.describe()))),
        }
    }
    if let Some(p) = &rule.pattern {
        if !p.is_match(value) {
            return Err(violation(rule, "does not match its pattern"));
        }
    }
    Ok(())
}

fn violation(rule: &QueryRule, what: &str) -> Violation {
    let name = resilience_core::problem::bounded(&rule.name, super::MAX_QUOTED);
    Violation::new(
        Rule::QueryParams,
        format!("Query parameter \"{name}\" {what}."),
    )
    .with("parameter", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str) -> QueryRule {
        QueryRule {
            name: name.to_owned(),
            required: false,
            pattern: None,
            integer: None,
        }
    }

    #[test]
    fn components_are_percent_decoded_with_plus_as_space() {
        assert_eq!(decode(b"a%20b+c").as_ref(), b"a b c");
        assert_eq!(decode(b"%7e%7E").as_ref(), b"~~");
        assert_eq!(decode(b"100%").as_ref(), b"100%");
        assert_eq!(decode(b"%zz%4").as_ref(), b"%zz%4");
        assert_eq!(decode(b"%ff").as_ref(), b"\xff");
        assert!(matches!(decode(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn pairs_split_on_ampersands_and_the_first_equals_sign() {
        let got: Vec<(Vec<u8>, Vec<u8>)> = pairs(b"a=1&&b&c=x=y&d%3D=%26")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            got,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"".to_vec()),
                (b"c".to_vec(), b"x=y".to_vec()),
                (b"d=".to_vec(), b"&".to_vec()),
            ]
        );
    }

    #[test]
    fn values_are_every_occurrence_of_the_decoded_name_in_order() {
        let got: Vec<Vec<u8>> = values(b"limit=5&x=1&li%6Dit=500&limit", b"limit")
            .map(Cow::into_owned)
            .collect();
        assert_eq!(got, vec![b"5".to_vec(), b"500".to_vec(), b"".to_vec()]);
        assert_eq!(values(b"limits=5", b"limit").count(), 0);
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse_integer(b"42"), Some(42));
        assert_eq!(parse_integer(b"-7"), Some(-7));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"1.0",
            b" 1",
            b"1e3",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_integer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_required_parameter_must_be_present() {
        let r = QueryRule {
            required: true,
            ..rule("page")
        };
        let v = check(std::slice::from_ref(&r), Some(b"x=1")).unwrap_err();
        assert_eq!(v.rule, Rule::QueryParams);
        assert_eq!(v.detail, "Query parameter \"page\" is required.");
        assert!(check(std::slice::from_ref(&r), None).is_err());
        assert!(check(&[r], Some(b"page=")).is_ok());
    }

    #[test]
    fn integer_ranges_check_every_occurrence() {
        let r = QueryRule {
            integer: Some(IntRange {
                min: Some(1),
                max: Some(100),
            }),
            ..rule("limit")
        };
        assert!(check(std::slice::from_ref(&r), Some(b"limit=100")).is_ok());
        assert!(
            check(std::slice::from_ref(&r), None).is_ok(),
            "optional when absent"
        );
        for polluted in [&b"limit=5&limit=500"[..], b"limit=500&limit=5"] {
            let v = check(std::slice::from_ref(&r), Some(polluted)).unwrap_err();
            assert_eq!(v.rule, Rule::QueryParams);
            assert_eq!(
                v.detail,
                "Query parameter \"limit\" must be an integer from 1 to 100."
            );
        }
        assert!(check(std::slice::from_ref(&r), Some(b"limit=5&limit=50")).is_ok());
        assert!(check(&[r], Some(b"limit=ten")).is_err());
    }

    #[test]
    fn patterns_see_the_decoded_value() {
        let r = QueryRule {
            pattern: Some(Pattern::new("^[a-z ]+$").unwrap()),
            ..rule("q")
        };
        assert!(check(std::slice::from_ref(&r), Some(b"q=red+shoes")).is_ok());
        assert!(check(std::slice::from_ref(&r), Some(b"q=red%20shoes")).is_ok());
        let v = check(&[r], Some(b"q=DROP%00TABLE")).unwrap_err();
        assert_eq!(
            v.detail,
            "Query parameter \"q\" does not match its pattern."
        );
        assert!(!v.detail.contains("DROP"), "the value is never echoed");
    }
}
