//! Configuration building blocks: typed errors that name the JSON path and the rule, durations and
//! percentages.
//!
//! # Why errors carry a path and a rule
//!
//! A filter configuration lives inside an Envoy YAML file, often generated, often long. When it is
//! wrong the only feedback an operator gets is one log line from `on_configure` and a filter that
//! refuses to start, so that line has to point at the exact field and say the rule it broke:
//!
//! ```text
//! routes[1].failure_rate_threshold: must be between 0 and 100, got 150
//! ```
//!
//! [`parse_json`] and [`parse_value`] find the path from serde_json's error position (see
//! `json_path.rs`) and render it as `a.b[1].c`; the types here ([`DurationMs`], [`Percent`]) phrase their own rules so the two halves
//! read as one sentence.
//!
//! # Why durations are strings
//!
//! `"timeout": 250` is ambiguous (milliseconds? seconds?) and is how outages get configured.
//! Durations are therefore always strings with a unit (`"250ms"`, `"10s"`, `"1.5s"`, `"1m"`), the
//! same spelling Envoy's own YAML uses, and bare numbers are rejected with a hint.

use core::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;

use crate::json_path;

/// A configuration problem: where it is (`routes[1].failure_rate_threshold`) and which rule it
/// broke (`must be between 0 and 100, got 150`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path to the offending value, `a.b[1].c` style; empty for the whole document.
    pub path: String,
    /// The rule, phrased to follow the path: "must be ...", "unknown field ...".
    pub rule: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            rule: rule.into(),
        }
    }

    /// The same error one level further out: `prefix` is prepended to the path.
    pub fn within(mut self, prefix: &str) -> Self {
        self.path = join_path(prefix, &self.path);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.rule)
        } else {
            write!(f, "{}: {}", self.path, self.rule)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Joins two path fragments: `routes[1]` + `x` = `routes[1].x`, `routes` + `[1]` = `routes[1]`.
pub(crate) fn join_path(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_owned()
    } else if rest.is_empty() {
        prefix.to_owned()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

/// Appends a map key to a path: a plain name (letters, digits, `_`, `-`) after a `.`, any other
/// key as `["..."]` (a JSON string), so that a key with a `.` or a `[` in it (a typo, or a
/// generated config, or an OpenAPI path template like `/pets`) cannot read as two fields or an
/// index.
pub fn push_key(out: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    } else {
        out.push('[');
        out.push_str(&serde_json::Value::from(key).to_string());
        out.push(']');
    }
}

/// serde's own messages quote names with backticks (written for Rust developers); operators read
/// them in YAML context, where double quotes are the norm.
fn tidy_rule(message: &str) -> String {
    if message.starts_with("unknown field")
        || message.starts_with("unknown variant")
        || message.starts_with("missing field")
        || message.starts_with("duplicate field")
    {
        message.replace('`', "\"")
    } else {
        message.to_owned()
    }
}

/// serde_json's message without the " at line L column C" it appends: the path says where.
fn message_of(err: &serde_json::Error) -> String {
    let mut message = err.to_string();
    if err.line() != 0 {
        let suffix = format!(" at line {} column {}", err.line(), err.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
    }
    message
}

/// How serde's tree deserializer would have described the JSON token `token`: `integer `5``,
/// `boolean `true``, `null`, `sequence`.
fn describe_token(token: &[u8]) -> String {
    // Through serde_json's own number reader (already linked), not `str::parse::<f64>`.
    let value = match token.first() {
        Some(b'[' | b'{') => None,
        _ => serde_json::from_slice::<serde_json::Value>(token).ok(),
    };
    let text = String::from_utf8_lossy(token);
    let unexpected = match (token.first(), &value) {
        (Some(b'['), _) => de::Unexpected::Seq,
        (Some(b'{'), _) => de::Unexpected::Map,
        (_, Some(serde_json::Value::Bool(b))) => de::Unexpected::Bool(*b),
        (_, Some(serde_json::Value::Null)) => de::Unexpected::Unit,
        (_, Some(serde_json::Value::Number(n))) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => de::Unexpected::Unsigned(u),
            (None, Some(i), _) => de::Unexpected::Signed(i),
            (None, None, Some(f)) => de::Unexpected::Float(f),
            (None, None, None) => de::Unexpected::Other(&text),
        },
        _ => de::Unexpected::Other(&text),
    };
    unexpected.to_string()
}

/// The JSON token starting at `at` (a literal, a number, or just the bracket of a container).
fn token_at(text: &[u8], at: usize) -> &[u8] {
    let rest = text.get(at..).unwrap_or_default();
    let len = rest
        .iter()
        .position(|b| matches!(b, b',' | b']' | b'}' | b':') || b.is_ascii_whitespace())
        .unwrap_or(rest.len())
        .max(1);
    rest.get(..len).unwrap_or_default()
}

/// Turns serde_json's error from reading `text` into a path and a rule. `text` is well-formed
/// JSON that [`parse_value`] wrote itself, so a "syntax" error is really one of the few type
/// mismatches serde_json's text deserializer reports as syntax; those are rephrased as serde's
/// tree deserializer (the one configs were read with before) phrases them.
fn data_error(err: &serde_json::Error, text: &[u8], prefix: &str) -> ConfigError {
    let message = message_of(err);
    let Some(offset) = json_path::offset_of(text, err.line(), err.column()) else {
        return ConfigError::new(prefix, tidy_rule(&message));
    };
    let spot = json_path::locate(text, offset);
    let syntax = matches!(
        err.classify(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof
    );
    let (path, rule) = if syntax && message == "expected value" {
        // An enum read from a value that is neither a string nor an object: serde_json peeked at
        // the value's first byte. Or an enum object with more than one key: serde_json stopped
        // after the first member's value, at its last byte.
        let starts_value = offset
            .checked_sub(1)
            .and_then(|before| text.get(before))
            .is_some_and(|b| matches!(b, b':' | b'[' | b','))
            && text.get(offset).is_some_and(|b| {
                matches!(b, b'[' | b'{' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9')
            });
        if starts_value {
            let got = describe_token(token_at(text, offset));
            (
                spot.path,
                format!("invalid type: {got}, expected string or map"),
            )
        } else {
            let object = json_path::locate(text, offset.saturating_add(1));
            (
                object.path,
                "invalid value: map, expected map with a single key".to_owned(),
            )
        }
    } else if syntax && message == "trailing characters" && spot.array.is_some() {
        // A fixed-length sequence (tuple, array) given more elements: serde_json peeked at the
        // first one too many.
        let (path, len) = spot.array.unwrap_or_default();
        (
            path,
            format!("invalid length {len}, expected fewer elements in array"),
        )
    } else if message.starts_with("invalid type: unit variant") {
        // A variant that carries data, given as a bare string: serde_json raises this one without
        // a position, so it lands on the string, or on the enclosing container's closing bracket
        // when the enum was its last member. The path names the variant, as for variants given as objects.
        let at_string = if spot.string.is_none()
            && matches!(text.get(offset), Some(b'}' | b']'))
            && offset.checked_sub(1).and_then(|b| text.get(b)) == Some(&b'"')
        {
            json_path::locate(text, offset.saturating_sub(1))
        } else {
            spot
        };
        match at_string.string {
            Some(variant) => (join_path(&at_string.path, &variant), message),
            None => (at_string.path, message),
        }
    } else if message.starts_with("unknown variant") && spot.key_of.is_some() {
        // `{"variant": ...}` with an unknown variant names the enum, not the key.
        (spot.key_of.unwrap_or_default(), message)
    } else if message.starts_with("invalid type: map")
        || message.starts_with("invalid type: sequence")
    {
        // A container refused without being entered: serde_json stopped at the delimiter before.
        match spot.next {
            Some((next, true)) => (next, message),
            _ => (spot.path, message),
        }
    } else {
        (spot.path, message)
    };
    ConfigError::new(join_path(prefix, &path), tidy_rule(&rule))
}

fn syntax_error(err: &serde_json::Error) -> ConfigError {
    let mut message = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    if let Some(stripped) = message.strip_suffix(&suffix) {
        message = stripped.to_owned();
    }
    ConfigError::new(
        "",
        format!(
            "invalid JSON at line {} column {}: {message}",
            err.line(),
            err.column()
        ),
    )
}

/// Reads raw JSON bytes (an empty or all-whitespace configuration means `{}`).
pub fn parse_json_value(json: &[u8]) -> Result<serde_json::Value, ConfigError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    serde_json::from_slice(json).map_err(|e| syntax_error(&e))
}

/// Parses a configuration document into `T`. An empty or all-whitespace document is read as `{}`,
/// so a filter whose settings all have defaults needs no configuration at all.
pub fn parse_json<T: DeserializeOwned>(json: &[u8]) -> Result<T, ConfigError> {
    parse_value(parse_json_value(json)?, "")
}

/// Parses an already-read JSON value; error paths are prefixed with `path_prefix`
/// (`routes[1]` + `failure_rate_threshold` = `routes[1].failure_rate_threshold`).
///
/// The value is written back to compact JSON text and read from there: serde_json's text
/// deserializer reports where an error happened, which `json_path` turns into the path, and
/// every configuration type is then compiled for that one deserializer only (the filters' built-in
/// defaults are read from text too). Configurations are small and parsed once per load.
pub fn parse_value<T: DeserializeOwned>(
    value: serde_json::Value,
    path_prefix: &str,
) -> Result<T, ConfigError> {
    let text = serde_json::to_string(&value)
        .map_err(|e| ConfigError::new(path_prefix, format!("cannot be re-encoded: {e}")))?;
    drop(value);
    serde_json::from_str(&text).map_err(|err| data_error(&err, text.as_bytes(), path_prefix))
}

/// Describes a JSON value briefly for a "got ..." clause, never echoing more than a few bytes.
pub(crate) fn describe_unexpected(unexpected: de::Unexpected<'_>) -> String {
    match unexpected {
        de::Unexpected::Bool(b) => b.to_string(),
        de::Unexpected::Unsigned(n) => n.to_string(),
        de::Unexpected::Signed(n) => n.to_string(),
        de::Unexpected::Float(n) => n.to_string(),
        de::Unexpected::Str(s) => format!("{:?}", crate::problem::bounded(s, 64)),
        de::Unexpected::Unit | de::Unexpected::Option => "null".to_owned(),
        de::Unexpected::Seq => "an array".to_owned(),
        de::Unexpected::Map => "an object".to_owned(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

const DURATION_HINT: &str = r#"must be a duration string like "250ms", "10s" or "1m""#;

/// Longest fraction accepted, in digits: finer than a nanosecond of an hour is never meant.
const MAX_FRACTION_DIGITS: u32 = 12;
/// Longest integer part accepted, in digits; anything longer overflows `u64` milliseconds anyway.
const MAX_INTEGER_DIGITS: usize = 20;

/// A duration in whole milliseconds, read from strings like `"250ms"`, `"10s"`, `"1.5s"`, `"1m"`,
/// `"1h"`. Milliseconds are the resolution of every timer the pack uses, so finer values
/// (`"0.5ms"`) are rejected instead of silently rounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationMs(pub u64);

impl DurationMs {
    pub const ZERO: DurationMs = DurationMs(0);

    pub const fn from_secs(secs: u64) -> Self {
        DurationMs(secs.saturating_mul(1000))
    }

    pub const fn as_ms(self) -> u64 {
        self.0
    }
}

impl fmt::Display for DurationMs {
    /// The largest unit that represents the value exactly: `10s`, `1500ms`, `2m`, `1h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            f.write_str("0ms")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Parses `"<number><unit>"` into milliseconds. The number is decimal digits with an optional
/// fraction (`1.5`); the unit is `ms`, `s`, `m` or `h`. Arithmetic is exact (no floating point)
/// and overflow is an error, not a wrap.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let shown = crate::problem::bounded(s, 64);
    let hint = || format!("{DURATION_HINT}, got {shown:?}");

    let unit_at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(hint)?;
    let (number, unit) = s.split_at(unit_at);
    let unit_ms: u128 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(hint()),
    };

    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    let has_dot = number.contains('.');
    if int_part.is_empty()
        || (has_dot && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(hint());
    }
    let too_large = || format!("duration {shown:?} is too large");
    if int_part.len() > MAX_INTEGER_DIGITS {
        return Err(too_large());
    }
    let frac_trimmed = frac_part.trim_end_matches('0');
    let frac_digits = u32::try_from(frac_trimmed.len()).unwrap_or(u32::MAX);
    if frac_digits > MAX_FRACTION_DIGITS {
        return Err(format!(
            "duration {shown:?} is finer than the 1 ms resolution"
        ));
    }

    let int_value: u128 = int_part.parse().map_err(|_| too_large())?;
    let frac_value: u128 = if frac_trimmed.is_empty() {
        0
    } else {
        frac_trimmed.parse().map_err(|_| hint())?
    };
    let scale = 10u128.pow(frac_digits);
    let frac_scaled = frac_value.saturating_mul(unit_ms);
    if !frac_scaled.is_multiple_of(scale) {
        return Err(format!(
            "duration {shown:?} is finer than the 1 ms resolution"
        ));
    }
    let total = int_value
        .checked_mul(unit_ms)
        .and_then(|v| v.checked_add(frac_scaled / scale))
        .ok_or_else(too_large)?;
    u64::try_from(total).map_err(|_| too_large())
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl DurationVisitor {
            fn reject<E: de::Error>(got: de::Unexpected<'_>) -> E {
                E::custom(format!("{DURATION_HINT}, got {}", describe_unexpected(got)))
            }
        }

        impl<'de> Visitor<'de> for DurationVisitor {
            type Value = DurationMs;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string like "250ms", "10s" or "1m""#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationMs, E> {
                parse_duration(v).map(DurationMs).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationMs, E> {
                Err(Self::reject(de::Unexpected::Unsigned(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationMs, E> {
                Err(Self::reject(de::Unexpected::Signed(v)))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationMs, E> {
                Err(Self::reject(de::Unexpected::Float(v)))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<DurationMs, E> {
                Err(Self::reject(de::Unexpected::Bool(v)))
            }

            fn visit_unit<E: de::Error>(self) -> Result<DurationMs, E> {
                Err(Self::reject(de::Unexpected::Unit))
            }

            fn visit_none<E: de::Error>(self) -> Result<DurationMs, E> {
                Err(Self::reject(de::Unexpected::Unit))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<DurationMs, A::Error> {
                Err(Self::reject(de::Unexpected::Seq))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<DurationMs, A::Error> {
                Err(Self::reject(de::Unexpected::Map))
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Percentages
// ---------------------------------------------------------------------------------------------

/// A percentage between 0 and 100 inclusive, read from a JSON number (`50`, `12.5`).
///
/// Percentages, not fractions: operators write thresholds as "50 percent", and `0.5` meaning
/// "half" next to `50` meaning "half" in the same file is a trap. [`Percent::fraction`] gives the
/// 0..=1 form for arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct Percent(f64);

impl Percent {
    pub const ZERO: Percent = Percent(0.0);
    pub const HUNDRED: Percent = Percent(100.0);

    /// Checks the range; the error is the rule, ready to follow a path.
    pub fn new(value: f64) -> Result<Self, String> {
        if (0.0..=100.0).contains(&value) {
            Ok(Percent(value))
        } else {
            Err(format!("must be between 0 and 100, got {value}"))
        }
    }

    /// For defaults written in code: out-of-range values are clamped, NaN becomes 0.
    pub const fn clamped(value: f64) -> Self {
        if value.is_nan() || value < 0.0 {
            Percent(0.0)
        } else if value > 100.0 {
            Percent(100.0)
        } else {
            Percent(value)
        }
    }

    /// 0..=100.
    pub const fn value(self) -> f64 {
        self.0
    }

    /// 0..=1.
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PercentVisitor;

        impl PercentVisitor {
            fn reject<E: de::Error>(got: de::Unexpected<'_>) -> E {
                E::custom(format!(
                    "must be a number between 0 and 100, got {}",
                    describe_unexpected(got)
                ))
            }
        }

        impl<'de> Visitor<'de> for PercentVisitor {
            type Value = Percent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number between 0 and 100")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Percent::new(v).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                if v <= 100 {
                    Ok(Percent(v as f64))
                } else {
                    Err(E::custom(format!("must be between 0 and 100, got {v}")))
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("must be between 0 and 100, got {v}"))),
                }
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                Err(Self::reject(de::Unexpected::Str(v)))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Percent, E> {
                Err(Self::reject(de::Unexpected::Bool(v)))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Percent, E> {
                Err(Self::reject(de::Unexpected::Unit))
            }

            fn visit_none<E: de::Error>(self) -> Result<Percent, E> {
                Err(Self::reject(de::Unexpected::Unit))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Percent, A::Error> {
                Err(Self::reject(de::Unexpected::Seq))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Percent, A::Error> {
                Err(Self::reject(de::Unexpected::Map))
            }
        }

        deserializer.deserialize_any(PercentVisitor)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Thresholds {
        failure_rate_threshold: Percent,
        #[serde(default)]
        open_for: DurationMs,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        routes: Vec<Thresholds>,
    }

    #[test]
    fn valid_documents_parse_into_their_types() {
        let doc = parse_json::<Doc>(
            br#"{"routes": [{"failure_rate_threshold": 12.5, "open_for": "1.5s"}]}"#,
        )
        .unwrap();
        assert_eq!(doc.routes[0].failure_rate_threshold.value(), 12.5);
        assert_eq!(doc.routes[0].open_for, DurationMs(1_500));
    }

    #[test]
    fn a_full_error_names_the_path_and_the_rule() {
        let err = parse_value::<Thresholds>(json!({ "failure_rate_threshold": 150 }), "routes[1]")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "routes[1].failure_rate_threshold: must be between 0 and 100, got 150"
        );
    }

    #[test]
    fn paths_into_arrays_read_with_brackets_not_dots() {
        let json =
            br#"{"routes": [{"failure_rate_threshold": 5}, {"failure_rate_threshold": 150}]}"#;
        let err = parse_json::<Doc>(json).unwrap_err();
        assert_eq!(err.path, "routes[1].failure_rate_threshold");
        assert_eq!(err.rule, "must be between 0 and 100, got 150");
    }

    #[test]
    fn data_errors_from_bytes_carry_no_line_and_column() {
        let err = parse_json::<Thresholds>(br#"{"failure_rate_threshold": 50, "open_for": 5}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"open_for: must be a duration string like "250ms", "10s" or "1m", got 5"#
        );
    }

    #[test]
    fn an_empty_document_is_an_empty_object() {
        #[derive(Deserialize)]
        struct AllDefault {
            #[serde(default)]
            n: u32,
        }
        assert_eq!(parse_json::<AllDefault>(b"").unwrap().n, 0);
        assert_eq!(parse_json::<AllDefault>(b"  \n\t ").unwrap().n, 0);
    }

    #[test]
    fn a_key_that_is_not_a_plain_name_is_quoted_in_the_path_so_it_cannot_read_as_two_fields() {
        // Found by the config fuzz targets: an unknown key ".window" under `routes[0]` gave the
        // path `routes[0]..window`.
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Route {
            window: Option<u32>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            routes: Vec<Route>,
        }
        let err = parse_json::<Doc>(br#"{"routes": [{".window": 1}]}"#).unwrap_err();
        assert_eq!(err.path, r#"routes[0][".window"]"#);
        let err = parse_json::<Doc>(br#"{"routes": [{"a\"b[": 1}]}"#).unwrap_err();
        assert_eq!(err.path, r#"routes[0]["a\"b["]"#);
        let err = parse_json::<Doc>(br#"{"routes": [{"x_y-z": 1}]}"#).unwrap_err();
        assert_eq!(err.path, "routes[0].x_y-z");
    }

    #[test]
    fn a_long_decimal_reads_within_one_ulp_of_its_reserialization() {
        // The modules read numbers without serde_json's float_roundtrip (see Cargo.toml): a
        // decimal longer than f64 holds may come back one ULP off after a control plane
        // re-serializes it, never more. (Native builds that include the fuzz targets read it
        // exactly.)
        let text = "51111111111111111111111111111111111111111111111111111111111111111111111.5";
        let direct: f64 = parse_json(text.as_bytes()).unwrap();
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        let again: f64 = parse_json(value.to_string().as_bytes()).unwrap();
        assert!(
            direct.to_bits().abs_diff(again.to_bits()) <= 1,
            "{direct} {again}"
        );
        let e: f64 = parse_json(b"1.00000007e+65").unwrap();
        assert!((e / 1.00000007e65 - 1.0).abs() < 1e-15, "{e}");
    }

    #[test]
    fn a_syntax_error_has_no_path_and_says_where_it_is() {
        let err = parse_json::<Doc>(b"{\n  \"routes\": [,]\n}").unwrap_err();
        assert_eq!(err.path, "");
        assert!(
            err.rule.starts_with("invalid JSON at line 2 column 14: "),
            "{}",
            err.rule
        );
        assert!(!err.rule.ends_with("column 14"), "{}", err.rule);
    }

    #[test]
    fn trailing_garbage_after_the_document_is_a_syntax_error() {
        let err = parse_json::<Doc>(br#"{} x"#).unwrap_err();
        assert!(
            err.rule.starts_with("invalid JSON at line 1"),
            "{}",
            err.rule
        );
    }

    #[test]
    fn unknown_fields_are_named_in_double_quotes() {
        let err = parse_value::<Thresholds>(
            json!({ "failure_rate_threshold": 5, "bogus": 1 }),
            "routes[0]",
        )
        .unwrap_err();
        assert!(err.path.starts_with("routes[0]"), "{err}");
        assert!(
            err.rule.starts_with(r#"unknown field "bogus", expected"#),
            "{err}"
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = parse_value::<Thresholds>(json!({}), "").unwrap_err();
        assert_eq!(err.to_string(), r#"missing field "failure_rate_threshold""#);
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields, rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Action {
        Reject { status: u16 },
        Pass,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shapes {
        #[serde(default)]
        action: Option<Action>,
        #[serde(default)]
        pair: Option<(u8, String)>,
        #[serde(default)]
        list: Vec<u32>,
        #[serde(default)]
        z: u8,
    }

    fn shapes_error(value: serde_json::Value) -> String {
        parse_value::<Shapes>(value, "routes[3]")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_enum_given_a_number_or_an_array_names_the_field_and_what_it_got() {
        assert_eq!(
            shapes_error(json!({"action": 5})),
            "routes[3].action: invalid type: integer `5`, expected string or map"
        );
        assert_eq!(
            shapes_error(json!({"action": [true], "z": 1})),
            "routes[3].action: invalid type: sequence, expected string or map"
        );
        assert_eq!(
            shapes_error(json!({"action": -1.5})),
            "routes[3].action: invalid type: floating point `-1.5`, expected string or map"
        );
        assert_eq!(
            shapes_error(json!({"action": null, "z": 300})),
            "routes[3].z: invalid value: integer `300`, expected u8"
        );
    }

    #[test]
    fn an_enum_object_with_two_variants_names_the_enum() {
        assert_eq!(
            shapes_error(json!({"action": {"pass": null, "reject": {"status": 1}}})),
            "routes[3].action: invalid value: map, expected map with a single key"
        );
    }

    #[test]
    fn variants_are_named_like_fields() {
        assert_eq!(
            shapes_error(json!({"action": {"reject": {}}})),
            r#"routes[3].action.reject: missing field "status""#
        );
        assert_eq!(
            shapes_error(json!({"action": {"bogus": {}}})),
            r#"routes[3].action: unknown variant "bogus", expected "reject" or "pass""#
        );
        for value in [
            json!({"action": "reject"}),
            json!({"action": "reject", "z": 1}),
        ] {
            assert_eq!(
                shapes_error(value),
                "routes[3].action.reject: invalid type: unit variant, expected struct variant"
            );
        }
        let err = parse_value::<Vec<Action>>(json!(["pass", "reject"]), "actions").unwrap_err();
        assert_eq!(err.path, "actions[1].reject");
    }

    #[test]
    fn sequences_of_the_wrong_length_or_element_type_are_named() {
        assert_eq!(
            shapes_error(json!({"pair": [1, "a", 3]})),
            "routes[3].pair: invalid length 3, expected fewer elements in array"
        );
        assert_eq!(
            shapes_error(json!({"pair": [1]})),
            "routes[3].pair: invalid length 1, expected a tuple of size 2"
        );
        assert_eq!(
            shapes_error(json!({"list": [1, [2]]})),
            "routes[3].list[1]: invalid type: sequence, expected u32"
        );
        assert_eq!(
            shapes_error(json!({"list": [{}]})),
            "routes[3].list[0]: invalid type: map, expected u32"
        );
        assert_eq!(
            shapes_error(json!({"list": {}})),
            "routes[3].list: invalid type: map, expected a sequence"
        );
    }

    #[test]
    fn a_duration_refusing_a_container_names_the_duration_not_an_element() {
        let err = parse_value::<Thresholds>(
            json!({"failure_rate_threshold": 1, "open_for": [["1s"]]}),
            "",
        )
        .unwrap_err();
        assert_eq!(err.path, "open_for");
        let err = parse_value::<Thresholds>(
            json!({"failure_rate_threshold": 1, "open_for": {"s": 1}}),
            "",
        )
        .unwrap_err();
        assert_eq!(err.path, "open_for");
    }

    #[test]
    fn keys_with_dots_quotes_and_non_ascii_are_named_as_quoted_json_strings() {
        let err = parse_value::<std::collections::BTreeMap<String, Percent>>(
            json!({"a.b\"c": 5, "ключ\n": 101}),
            "weights",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "weights[\"ключ\\n\"]: must be between 0 and 100, got 101"
        );
    }

    #[test]
    fn an_error_without_a_path_displays_just_the_rule() {
        assert_eq!(ConfigError::new("", "boom").to_string(), "boom");
        assert_eq!(ConfigError::new("a.b", "boom").to_string(), "a.b: boom");
        assert_eq!(
            ConfigError::new("[2].x", "boom").within("routes").path,
            "routes[2].x"
        );
    }

    #[test]
    fn durations_read_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("10s"), Ok(10_000));
        assert_eq!(parse_duration("1.5s"), Ok(1_500));
        assert_eq!(parse_duration("1m"), Ok(60_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("0s"), Ok(0));
        assert_eq!(parse_duration("0.25m"), Ok(15_000));
        assert_eq!(parse_duration("2.000s"), Ok(2_000));
    }

    #[test]
    fn durations_finer_than_a_millisecond_are_rejected() {
        let err = parse_duration("0.5ms").unwrap_err();
        assert_eq!(err, r#"duration "0.5ms" is finer than the 1 ms resolution"#);
        assert!(parse_duration("1.0005s").is_err());
    }

    #[test]
    fn malformed_durations_get_the_hint() {
        for bad in [
            "", "10", "s", "10x", "1.s", ".5s", "-1s", "1 s", "1us", "1S", "1.2.3s", "1e3ms",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.starts_with(r#"must be a duration string like "250ms", "10s" or "1m", got "#),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn durations_that_overflow_are_rejected_not_wrapped() {
        assert_eq!(
            parse_duration("18446744073709551615ms"),
            Ok(u64::MAX),
            "the largest value still fits"
        );
        assert!(parse_duration("18446744073709551616ms")
            .unwrap_err()
            .ends_with("is too large"));
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("999999999999999999999999ms").is_err());
    }

    #[test]
    fn a_number_where_a_duration_belongs_is_rejected_with_the_hint() {
        let err = parse_value::<DurationMs>(json!(250), "timeout").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"timeout: must be a duration string like "250ms", "10s" or "1m", got 250"#
        );
        let err = parse_value::<DurationMs>(json!(true), "").unwrap_err();
        assert!(err.rule.ends_with("got true"), "{err}");
        let err = parse_value::<DurationMs>(json!(null), "").unwrap_err();
        assert!(err.rule.ends_with("got null"), "{err}");
        let err = parse_value::<DurationMs>(json!(["1s"]), "").unwrap_err();
        assert!(err.rule.ends_with("got an array"), "{err}");
    }

    #[test]
    fn durations_display_in_the_largest_exact_unit() {
        assert_eq!(DurationMs(250).to_string(), "250ms");
        assert_eq!(DurationMs(10_000).to_string(), "10s");
        assert_eq!(DurationMs(1_500).to_string(), "1500ms");
        assert_eq!(DurationMs(120_000).to_string(), "2m");
        assert_eq!(DurationMs(3_600_000).to_string(), "1h");
        assert_eq!(DurationMs(0).to_string(), "0ms");
        assert_eq!(DurationMs::from_secs(3).as_ms(), 3_000);
    }

    #[test]
    fn percentages_accept_integers_and_fractions_in_range() {
        assert_eq!(parse_value::<Percent>(json!(0), "").unwrap().value(), 0.0);
        assert_eq!(
            parse_value::<Percent>(json!(100), "").unwrap().value(),
            100.0
        );
        let p = parse_value::<Percent>(json!(12.5), "").unwrap();
        assert_eq!(p.value(), 12.5);
        assert_eq!(p.fraction(), 0.125);
    }

    #[test]
    fn percentages_out_of_range_say_the_range_and_the_value() {
        let err = parse_value::<Percent>(json!(-1), "p").unwrap_err();
        assert_eq!(err.to_string(), "p: must be between 0 and 100, got -1");
        let err = parse_value::<Percent>(json!(100.5), "p").unwrap_err();
        assert_eq!(err.to_string(), "p: must be between 0 and 100, got 100.5");
        assert_eq!(
            Percent::new(f64::NAN).unwrap_err(),
            "must be between 0 and 100, got NaN"
        );
    }

    #[test]
    fn a_string_where_a_percentage_belongs_is_rejected() {
        let err = parse_value::<Percent>(json!("50%"), "p").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"p: must be a number between 0 and 100, got "50%""#
        );
    }

    #[test]
    fn clamped_percentages_stay_in_range() {
        assert_eq!(Percent::clamped(150.0), Percent::HUNDRED);
        assert_eq!(Percent::clamped(-3.0), Percent::ZERO);
        assert_eq!(Percent::clamped(f64::NAN), Percent::ZERO);
        assert_eq!(Percent::clamped(42.0).value(), 42.0);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn every_duration_displays_to_a_string_that_parses_back(ms in any::<u64>()) {
                let shown = DurationMs(ms).to_string();
                prop_assert_eq!(parse_duration(&shown), Ok(ms));
            }

            #[test]
            fn whole_seconds_with_a_millisecond_fraction_are_exact(
                secs in 0u64..1_000_000_000,
                millis in 0u64..1000,
            ) {
                let text = format!("{secs}.{millis:03}s");
                prop_assert_eq!(parse_duration(&text), Ok(secs * 1000 + millis));
            }

            #[test]
            fn arbitrary_strings_never_panic(s in ".{0,40}") {
                let _ = parse_duration(&s);
            }

            #[test]
            fn digit_and_unit_soup_never_panics_or_wraps(
                s in "[0-9.]{0,30}(ms|s|m|h|)",
            ) {
                if let Ok(ms) = parse_duration(&s) {
                    // Whatever parsed is at least the integer part in milliseconds.
                    let int: String = s.chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(n) = int.parse::<u64>() {
                        prop_assert!(ms >= n);
                    }
                }
            }
        }
    }
}

/// The JSON path of field `name` under `prefix` (`""` for the top level, `routes[1]` for a route).
pub fn field_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Whether `b` may appear in an HTTP header name (an RFC 9110 token character).
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A configured header name: 1 to 128 token characters, returned lowercased (how the proxy
/// compares header names).
pub fn check_header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty() || name.len() > 128 || !name.bytes().all(is_token_byte) {
        return Err(ConfigError::new(
            path,
            format!("must be an HTTP header name of 1 to 128 token characters, got {name:?}"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// The headers of a request a filter sends on its own (a callout): `:method`, `:path`,
/// `:authority` and `extra`, each checked, names lowercased. `prefix` is the callout's field
/// (`active_probe`); errors name `prefix.method`, `prefix.path`, `prefix.authority` or
/// `prefix.headers`.
pub fn check_callout_headers(
    prefix: &str,
    method: &str,
    path: &str,
    authority: &str,
    extra: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let at = |f: &str| join_path(prefix, f);
    if method.is_empty() || method.len() > 32 || !method.bytes().all(is_token_byte) {
        return Err(ConfigError::new(
            at("method"),
            format!("must be an HTTP method (1 to 32 token characters), got {method:?}"),
        ));
    }
    let clean = |v: &str| !v.is_empty() && !v.bytes().any(|b| b.is_ascii_control() || b == b' ');
    if !path.starts_with('/') || !clean(path) || path.len() > 2048 {
        return Err(ConfigError::new(
            at("path"),
            format!(
                "must start with \"/\" and hold no spaces or control characters (at most 2048 bytes), got {:?}",
                crate::problem::bounded(path, 64)
            ),
        ));
    }
    if !clean(authority) || authority.len() > 256 {
        return Err(ConfigError::new(
            at("authority"),
            format!("must be a host name of 1 to 256 characters, got {authority:?}"),
        ));
    }
    let mut headers = vec![
        (":method".to_owned(), method.to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":authority".to_owned(), authority.to_owned()),
    ];
    for (name, value) in extra {
        let name = check_header_name(&at("headers"), name)?;
        if name == "host" {
            return Err(ConfigError::new(
                at("headers"),
                "must not set host (use authority)",
            ));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ConfigError::new(
                at(&format!("headers.{name}")),
                "must not contain CR, LF or NUL",
            ));
        }
        headers.push((name, value.clone()));
    }
    Ok(headers)
}

/// The filter-wide `max_keys`: every key space in shared data is bounded (it cannot delete).
pub fn check_max_keys(max_keys: u32) -> Result<u32, ConfigError> {
    if !(1..=10_000).contains(&max_keys) {
        return Err(ConfigError::new(
            "max_keys",
            format!("must be between 1 and 10000, got {max_keys}"),
        ));
    }
    Ok(max_keys)
}

/// The default `generic_route_names`: Istio names every inbound route, and every destination
/// without a VirtualService, `default`.
pub fn default_generic_route_names() -> Vec<String> {
    vec!["default".to_owned()]
}

/// The filter-wide `generic_route_names`: Envoy route names that do not identify a destination,
/// so a request no `routes` entry matched is keyed by its cluster instead (see
/// [`crate::routes::Selected::key`]). At most 16 names, each 1–256 bytes.
pub fn check_generic_route_names(names: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if names.len() > 16 {
        return Err(ConfigError::new(
            "generic_route_names",
            format!("lists at most 16 names, got {}", names.len()),
        ));
    }
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() || n.len() > 256 {
            return Err(ConfigError::new(
                format!("generic_route_names[{i}]"),
                format!("must be 1 to 256 bytes long, got {}", n.len()),
            ));
        }
    }
    Ok(names)
}

/// The filter-wide `sync_interval` (the tick that publishes per-worker state), in ms.
pub fn check_sync_interval(sync_interval: DurationMs) -> Result<u64, ConfigError> {
    let ms = sync_interval.as_ms();
    if !(10..=10_000).contains(&ms) {
        return Err(ConfigError::new(
            "sync_interval",
            format!("must be between 10ms and 10s, got {sync_interval}"),
        ));
    }
    Ok(ms)
}

/// The filter-wide `stat_prefix`: the first segment of every stat name, so no dots (they would
/// split it into tag segments).
pub fn check_stat_prefix(stat_prefix: &str) -> Result<(), ConfigError> {
    if stat_prefix.is_empty()
        || stat_prefix.len() > 64
        || !stat_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(ConfigError::new(
            "stat_prefix",
            format!("must be 1 to 64 characters of [A-Za-z0-9_], got {stat_prefix:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod filter_wide_checks {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn filter_wide_fields_are_checked_with_the_field_named() {
        assert_eq!(
            check_max_keys(0).unwrap_err().to_string(),
            "max_keys: must be between 1 and 10000, got 0"
        );
        assert_eq!(
            check_sync_interval(DurationMs(1)).unwrap_err().to_string(),
            "sync_interval: must be between 10ms and 10s, got 1ms"
        );
        assert_eq!(check_sync_interval(DurationMs(100)), Ok(100));
        assert!(check_stat_prefix("a.b")
            .unwrap_err()
            .to_string()
            .starts_with("stat_prefix: must be 1 to 64 characters"));
        assert_eq!(
            check_header_name("h", "X-Tenant"),
            Ok("x-tenant".to_owned())
        );
        assert!(check_header_name("h", "bad header").is_err());
        assert_eq!(field_path("", "window"), "window");
        assert_eq!(field_path("routes[2]", "window"), "routes[2].window");
    }
}
