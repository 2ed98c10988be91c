//! The five filters' JSON configurations (`config::parse`): what Envoy hands `on_configure`,
//! written by operators or generated.
//!
//! Properties, for any bytes:
//! - no panic;
//! - a refusal names its rule (a non-empty `rule`; the path is empty or well-formed);
//! - the result depends only on the JSON value, not on how it is spelled: the same value written
//!   compactly and pretty-printed parses to the same configuration or the same error. Istio's
//!   `pluginConfig` is YAML that the control plane re-serializes, so a config that meant one
//!   thing in the file must mean it after any re-serialization. (The config types only
//!   deserialize, so "parse, serialize, parse again" is this, from the JSON side.)
//! - a configuration the parser accepts validates against the filter's JSON Schema
//!   (`schemas/*.schema.json`, generated from the same types): editors and CI that check
//!   configs with the schema must never refuse one Envoy would load.

use std::fmt::Debug;

use resilience_core::config::ConfigError;
use serde_json::Value;

/// One filter's parser.
struct Filter<C> {
    name: &'static str,
    parse: fn(&[u8]) -> Result<C, ConfigError>,
}

/// A compiled schema, kept per thread (the fuzzer calls a target millions of times).
struct Compiled {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

fn compile(name: &str, schema: Value) -> Compiled {
    let id = resilience_core::schema::schema_id(name);
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.add_resource(&id, schema).unwrap();
    let index = compiler.compile(&id, &mut schemas).unwrap();
    Compiled { schemas, index }
}

/// Whether `path` reads as one unambiguous path: a plain name (letters, digits, `_`, `-`),
/// then `.name`, `[index]` or `["any key"]` (a JSON string) segments.
fn well_formed_path(path: &str) -> bool {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut rest = path;
    let mut first = true;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            if let Some(quoted) = inner.strip_prefix('"') {
                // The shortest JSON string, then `]`.
                let Some(end) = (1..=quoted.len()).find(|&i| {
                    quoted.is_char_boundary(i)
                        && quoted[..i].ends_with('"')
                        && serde_json::from_str::<String>(&format!("\"{}", &quoted[..i])).is_ok()
                }) else {
                    return false;
                };
                let Some(after) = quoted[end..].strip_prefix(']') else {
                    return false;
                };
                rest = after;
            } else {
                let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
                let Some(after) = inner[digits..].strip_prefix(']') else {
                    return false;
                };
                if digits == 0 {
                    return false;
                }
                rest = after;
            }
        } else {
            let body = if first {
                rest
            } else {
                match rest.strip_prefix('.') {
                    Some(b) => b,
                    None => return false,
                }
            };
            let len = body
                .chars()
                .take_while(|c| plain(*c))
                .map(char::len_utf8)
                .sum::<usize>();
            if len == 0 {
                return false;
            }
            rest = &body[len..];
        }
        first = false;
    }
    true
}

fn check_error(name: &str, e: &ConfigError) {
    assert!(!e.rule.is_empty(), "{name}: an error without a rule: {e:?}");
    assert!(
        e.path.is_empty() || well_formed_path(&e.path),
        "{name}: a malformed error path: {e:?}"
    );
}

fn run<C: Debug>(filter: &Filter<C>, data: &[u8], schema: &Compiled) {
    let name = filter.name;
    let first = (filter.parse)(data);
    let shown = |r: &Result<C, ConfigError>| format!("{r:?}");
    if let Err(e) = &first {
        check_error(name, e);
    }
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for respelled in [
        serde_json::to_vec(&value).unwrap(),
        serde_json::to_vec_pretty(&value).unwrap(),
    ] {
        let again = (filter.parse)(&respelled);
        assert_eq!(
            shown(&first),
            shown(&again),
            "{name}: the same JSON value, spelled differently, parses differently"
        );
    }
    if first.is_ok() {
        if let Err(e) = schema.schemas.validate(&value, schema.index) {
            panic!("{name}: the parser accepts a configuration its schema refuses: {e:#}");
        }
    }
}

macro_rules! config_target {
    ($fn_name:ident, $name:literal, $krate:ident) => {
        #[doc = concat!("`", $name, "`'s `config::parse`; see the module docs.")]
        pub fn $fn_name(data: &[u8]) {
            thread_local! {
                static SCHEMA: Compiled = compile($name, $krate::config::json_schema());
            }
            let filter = Filter {
                name: $name,
                parse: $krate::config::parse,
            };
            SCHEMA.with(|schema| run(&filter, data, schema));
        }
    };
}

config_target!(config_breaker, "circuit-breaker", circuit_breaker);
config_target!(config_budget, "retry-budget", retry_budget);
config_target!(config_padding, "failure-padding", failure_padding);
config_target!(config_validator, "request-validator", request_validator);
config_target!(config_slow_start, "slow-start", slow_start);

#[cfg(test)]
mod tests {
    use super::well_formed_path;

    #[test]
    fn an_error_path_is_names_indexes_and_quoted_keys_and_nothing_ambiguous() {
        for ok in [
            "x",
            "routes[1].failure_rate_threshold",
            r#"routes[0][".window"]"#,
            r#"["a\"b["].c"#,
            "[2].x",
        ] {
            assert!(well_formed_path(ok), "{ok}");
        }
        for bad in [
            ".x",
            "x.",
            "routes[0]..ame",
            "a[]",
            "a[x]",
            r#"a["b"#,
            "a b",
        ] {
            assert!(!well_formed_path(bad), "{bad}");
        }
    }
}
