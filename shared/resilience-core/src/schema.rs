//! JSON Schemas of the filter configurations, generated from the configuration types themselves.
//!
//! # Why
//!
//! A filter's JSON sits in a string inside an Envoy or Istio manifest, where no YAML tool looks
//! at it: a typo surfaces only when Envoy refuses the filter at load. A schema lets an editor or a
//! CI step catch it first. It is derived from the same serde types the filter parses with (field
//! names, types, defaults, doc comments, `deny_unknown_fields`), so it cannot drift from them;
//! only the custom value types below describe themselves by hand.
//!
//! # What a schema can and cannot say
//!
//! The schema checks the shape: known field names at every level, types, enumerations, the
//! spelling of durations, percentages, status and gRPC code sets, and the route structure of
//! [`crate::routes::parse_filter_config`]. It is deliberately never stricter than the parser.
//! Ranges a filter checks after parsing and rules that relate fields (`max_open_duration` at
//! least `open_duration`, sub-millisecond durations) stay with the filter, which names the field
//! in its load error.
//!
//! Only native tooling enables the `schema` feature; the .wasm modules never link this.

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::transform::{RestrictFormats, Transform};
use schemars::{json_schema, JsonSchema, Schema};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::{json, Map, Value};

use crate::config::{DurationMs, Percent};
use crate::outcome::{
    grpc_code_name, GrpcCodeSet, LocalFailure, LocalFailureSet, StatusSet, GRPC_CODE_NAMES,
};
use crate::routes::{RouteMatch, MAX_ROUTES};

/// The JSON Schema dialect of every generated schema.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The spelling [`crate::config::parse_duration`] accepts, less its finer rules (at most 1 ms
/// resolution, no overflow), which the filter reports at load.
pub const DURATION_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$";

/// One status (`"503"`), an inclusive range (`"500-504"`) or a class (`"5xx"`), as strings.
pub const STATUS_ITEM_PATTERN: &str = r"^([1-5][0-9]{2}(-[1-5][0-9]{2})?|[1-5][xX]{2})$";

// ---------------------------------------------------------------------------------------------
// The value types' schemas
// ---------------------------------------------------------------------------------------------

impl JsonSchema for DurationMs {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: a decimal number and a unit, ms, s, m or h (\"250ms\", \"10s\", \"1.5s\", \"1m\"). Bare numbers are refused: \"250\" could mean any unit. Millisecond resolution.",
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

impl JsonSchema for Percent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Percent".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A percentage, a number from 0 to 100 (12.5 is allowed; 0.5 is half a percent, not half).",
            "type": "number",
            "minimum": 0,
            "maximum": 100,
        })
    }
}

impl JsonSchema for StatusSet {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StatusSet".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "HTTP statuses: numbers (503), or strings naming a status (\"503\"), an inclusive range (\"500-504\") or a class (\"5xx\"), all within 100-599.",
            "type": "array",
            "items": {
                "anyOf": [
                    { "type": "integer", "minimum": 100, "maximum": 599 },
                    { "type": "string", "pattern": STATUS_ITEM_PATTERN },
                ]
            },
        })
    }
}

/// `UNAVAILABLE` as `^([Uu][Nn]...)$`: the parser ignores ASCII case, and JSON Schema has no
/// case-insensitive `enum`; a pattern of character classes works in every regex dialect.
fn grpc_name_pattern() -> String {
    let names: Vec<String> = GRPC_CODE_NAMES
        .iter()
        .map(|name| {
            name.chars()
                .map(|c| {
                    if c.is_ascii_alphabetic() {
                        format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
        .collect();
    format!("^({})$", names.join("|"))
}

impl JsonSchema for GrpcCodeSet {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GrpcCodeSet".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let max_code = GRPC_CODE_NAMES.len().saturating_sub(1);
        json_schema!({
            "description": format!(
                "gRPC statuses: canonical names in any case ({}) or their numbers 0-{max_code}.",
                GRPC_CODE_NAMES.join(", ")
            ),
            "type": "array",
            "items": {
                "anyOf": [
                    { "type": "integer", "minimum": 0, "maximum": max_code },
                    { "type": "string", "pattern": grpc_name_pattern() },
                ]
            },
        })
    }
}

impl JsonSchema for LocalFailureSet {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LocalFailureSet".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Failures Envoy observed itself, before or instead of an upstream response.",
            "type": "array",
            "items": generator.subschema_for::<LocalFailure>(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Defaults: schemars writes a field's `default` only for types it can serialize
// ---------------------------------------------------------------------------------------------

impl Serialize for DurationMs {
    /// The configuration spelling, in the largest exact unit (`"10s"`).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Serialize for Percent {
    /// `50`, not `50.0`, when whole: what an operator writes.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let v = self.value();
        if v.fract() == 0.0 && (0.0..=100.0).contains(&v) {
            serializer.serialize_u64(v as u64)
        } else {
            serializer.serialize_f64(v)
        }
    }
}

impl Serialize for StatusSet {
    /// Sorted ranges as strings: `["500", "502-599"]`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ranges = self.ranges();
        let mut seq = serializer.serialize_seq(Some(ranges.len()))?;
        for (lo, hi) in ranges {
            if lo == hi {
                seq.serialize_element(&lo.to_string())?;
            } else {
                seq.serialize_element(&format!("{lo}-{hi}"))?;
            }
        }
        seq.end()
    }
}

impl Serialize for GrpcCodeSet {
    /// Canonical names in code order.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let names: Vec<&str> = (0u32..32)
            .filter(|c| self.contains(*c))
            .filter_map(grpc_code_name)
            .collect();
        names.serialize(serializer)
    }
}

impl Serialize for LocalFailureSet {
    /// Configuration names in declaration order.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let names: Vec<&str> = LocalFailure::ALL
            .iter()
            .filter(|f| self.contains(**f))
            .map(|f| f.as_str())
            .collect();
        names.serialize(serializer)
    }
}

// ---------------------------------------------------------------------------------------------
// A whole filter's schema
// ---------------------------------------------------------------------------------------------

/// What names and describes one filter's schema.
pub struct FilterSchema<'a> {
    /// The filter crate's name (`circuit-breaker`): the schema's file and `$id`.
    pub name: &'a str,
    /// One or two sentences on what the filter does.
    pub description: &'a str,
}

/// The `$id` of a filter's schema. A URN, because the pack has no canonical URL; tools resolve
/// the schema's own `#/$defs/...` references against it and never fetch it.
pub fn schema_id(name: &str) -> String {
    format!("urn:resilience-pack:schema:{name}")
}

/// The schema of a filter configuration whose filter-wide fields are `G` and whose per-route
/// fields are `S`, shaped as [`crate::routes::parse_filter_config`] reads it: at the top level
/// the fields of both and `routes`; in each route a `match`, an optional `name` and any field of
/// `S`. Unknown fields are refused at both levels, as serde refuses them (a filter-wide field in
/// a route is unknown there too).
pub fn filter_schema<G: JsonSchema, S: JsonSchema>(filter: &FilterSchema<'_>) -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let global = properties(G::json_schema(&mut generator));
    let per_route = properties(S::json_schema(&mut generator));
    let matcher = generator.subschema_for::<RouteMatch>().to_value();

    let mut top = Map::new();
    for (name, mut schema) in global {
        append_description(
            &mut schema,
            "Filter-wide: set at the top level only, never in a route.",
        );
        top.insert(name, schema);
    }
    top.extend(per_route.clone());
    top.insert(
        "routes".to_owned(),
        json!({
            "description": "Per-route overrides: the first route whose `match` holds applies; its fields are laid over the top-level ones one by one, and a request no route matches gets the top-level ones.",
            "type": ["array", "null"],
            "items": { "$ref": "#/$defs/Route" },
            "maxItems": MAX_ROUTES,
            "default": [],
        }),
    );

    let mut route = per_route;
    route.insert("match".to_owned(), matcher);
    route.insert(
        "name".to_owned(),
        json!({
            "description": "The route's name in stats and logs, and the key of its state: unique in the list. Defaults to its position, `routes[i]`.",
            "type": ["string", "null"],
            "minLength": 1,
        }),
    );

    let mut defs = generator.take_definitions(true);
    defs.insert(
        "Route".to_owned(),
        json!({
            "description": "One per-route override: which requests (`match`) and the settings that differ for them.",
            "type": "object",
            "properties": route,
            "required": ["match"],
            "additionalProperties": false,
        }),
    );

    let mut root = json_schema!({
        "$schema": DIALECT,
        "$id": schema_id(filter.name),
        "title": format!("{} filter configuration", filter.name),
        "description": format!(
            "{} Every field is optional unless marked required; the filter checks ranges and rules that relate fields at load.",
            filter.description
        ),
        "type": "object",
        "properties": top,
        "additionalProperties": false,
        "$defs": defs,
    });
    // Rust's widths (`uint32`, `double`) are no JSON Schema format: validators would warn.
    let mut formats = RestrictFormats::default();
    formats.infer_from_meta_schema = false;
    formats.transform(&mut root);
    let mut root = root.to_value();
    unwrap_descriptions(&mut root);
    root
}

/// Doc comments wrap at 100 columns; an editor's hover wraps by itself. Single line breaks in
/// every `description` become spaces, paragraph breaks stay.
fn unwrap_descriptions(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for (key, v) in object.iter_mut() {
                match v {
                    Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| paragraph.split('\n').collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

fn properties(schema: Schema) -> Map<String, Value> {
    match schema.to_value() {
        Value::Object(mut object) => match object.remove("properties") {
            Some(Value::Object(props)) => props,
            _ => Map::new(),
        },
        _ => Map::new(),
    }
}

fn append_description(schema: &mut Value, sentence: &str) {
    if let Value::Object(object) = schema {
        let text = match object.get("description").and_then(Value::as_str) {
            Some(existing) => format!("{existing} {sentence}"),
            None => sentence.to_owned(),
        };
        object.insert("description".to_owned(), Value::String(text));
    }
}

/// Pretty JSON with keys sorted at every level and a final newline: the committed files' form,
/// the same whichever `serde_json` features the build unified.
pub fn to_canonical_string(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(object) => {
                let mut keys: Vec<&String> = object.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for key in keys {
                    if let Some(v) = object.get(key) {
                        out.insert(key.clone(), sorted(v));
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let mut text = serde_json::to_string_pretty(&sorted(value)).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serialize_in_the_configuration_spelling() {
        assert_eq!(
            serde_json::to_value(DurationMs(10_000)).unwrap(),
            json!("10s")
        );
        assert_eq!(
            serde_json::to_value(DurationMs(1_500)).unwrap(),
            json!("1500ms")
        );
        assert_eq!(
            serde_json::to_value(Percent::clamped(50.0)).unwrap(),
            json!(50)
        );
        assert_eq!(
            serde_json::to_value(Percent::clamped(12.5)).unwrap(),
            json!(12.5)
        );
        assert_eq!(
            serde_json::to_value(StatusSet::from_strs(&["500", "502-599"]).unwrap()).unwrap(),
            json!(["500", "502-599"])
        );
        assert_eq!(
            serde_json::to_value(GrpcCodeSet::from_codes(&[14, 2])).unwrap(),
            json!(["UNKNOWN", "UNAVAILABLE"])
        );
        assert_eq!(
            serde_json::to_value(LocalFailureSet::from_slice(&[LocalFailure::Timeout])).unwrap(),
            json!(["timeout"])
        );
    }

    #[test]
    fn the_grpc_name_pattern_spells_every_name_in_either_case() {
        let p = grpc_name_pattern();
        assert!(p.starts_with("^([Oo][Kk]|[Cc][Aa]"), "{p}");
        assert!(p.contains("|[Dd][Ee][Aa][Dd][Ll][Ii][Nn][Ee]_[Ee]"), "{p}");
    }

    #[test]
    fn canonical_text_sorts_keys_and_ends_with_a_newline() {
        let text = to_canonical_string(&json!({"b": 1, "a": {"d": 2, "c": 3}}));
        assert_eq!(
            text,
            "{\n  \"a\": {\n    \"c\": 3,\n    \"d\": 2\n  },\n  \"b\": 1\n}\n"
        );
    }
}
