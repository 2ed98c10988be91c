//! JSON bodies: well-formedness, then validation against a JSON Schema compiled at load.
//!
//! # Why a real JSON Schema engine
//!
//! Schemas are where an API's contract already lives (OpenAPI documents, shared `$defs`), and
//! users expect `oneOf`, `$ref`, `patternProperties`, `unevaluatedProperties` and friends to mean
//! what the specification says. The engine is [`boon`]: drafts 2020-12, 2019-09, 7, 6 and 4, the
//! official test suite passes, and it builds for `wasm32-wasip1`. Schemas are compiled once, when
//! the configuration loads; a schema the engine refuses refuses the configuration, with the path
//! of the offending keyword.
//!
//! # What a client sees
//!
//! A body that is not JSON (syntax, non-UTF-8, nesting deeper than 128) is a 400 with the
//! parser's position; a document that breaks the schema is a 422 naming the *instance path* of
//! the deepest failing value (`/items/0/qty`) and the keyword that failed. Everything quoted is
//! bounded. References must stay inside the schema (`$defs`, `#/...`): nothing is ever fetched.

use boon::{CompileError, Compiler, Draft, SchemaIndex, Schemas, ValidationError};
use serde_json::Value;

use super::{Rule, Violation, MAX_DETAIL, MAX_QUOTED};
use resilience_core::problem::bounded;

/// The base URL schemas are registered under (never fetched: the loader refuses every URL).
pub const SCHEMA_BASE: &str = "http://request-validator.invalid/";

/// A JSON Schema draft, as configured (`"2020-12"`, `"2019-09"`, `"7"`, `"6"`, `"4"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonDraft {
    V4,
    V6,
    V7,
    V2019_09,
    V2020_12,
}

/// `JsonDraft::parse` and `JsonDraft::SPELLINGS` from one list, so the configuration's JSON
/// Schema names exactly the spellings the parser takes; `parse` stays a plain `match`.
macro_rules! draft_spellings {
    ($($spelling:literal => $draft:ident),* $(,)?) => {
        /// Every spelling `json_schema_draft` accepts.
        pub const SPELLINGS: &'static [&'static str] = &[$($spelling),*];

        pub fn parse(s: &str) -> Option<Self> {
            match s {
                $($spelling => Some(JsonDraft::$draft),)*
                _ => None,
            }
        }
    };
}

impl JsonDraft {
    draft_spellings! {
        "4" => V4,
        "draft-04" => V4,
        "6" => V6,
        "draft-06" => V6,
        "7" => V7,
        "draft-07" => V7,
        "2019-09" => V2019_09,
        "2020-12" => V2020_12,
    }

    pub fn name(self) -> &'static str {
        match self {
            JsonDraft::V4 => "4",
            JsonDraft::V6 => "6",
            JsonDraft::V7 => "7",
            JsonDraft::V2019_09 => "2019-09",
            JsonDraft::V2020_12 => "2020-12",
        }
    }

    fn boon(self) -> Draft {
        match self {
            JsonDraft::V4 => Draft::V4,
            JsonDraft::V6 => Draft::V6,
            JsonDraft::V7 => Draft::V7,
            JsonDraft::V2019_09 => Draft::V2019_09,
            JsonDraft::V2020_12 => Draft::V2020_12,
        }
    }
}

/// Refuses every URL: schemas are self-contained, and a proxy must not fetch at config load.
struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(format!(
            "{} is outside the configuration; only references inside the schema are supported",
            bounded(url, 128)
        )
        .into())
    }
}

/// Where in the configured schema document a compile error is, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaError {
    /// JSON pointer into the registered document (`/properties/age/minimum`), `""` for its root.
    pub pointer: String,
    pub message: String,
}

/// A set of compiled schemas registered from one document (a schema, or an OpenAPI document).
pub struct SchemaSet {
    schemas: Schemas,
    compiler: Compiler,
    url: String,
    draft: JsonDraft,
}

impl std::fmt::Debug for SchemaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaSet")
            .field("url", &self.url)
            .field("draft", &self.draft)
            .finish()
    }
}

/// One compiled schema inside a [`SchemaSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaRef(SchemaIndex);

impl SchemaSet {
    /// Registers `document` under `name` (a file name below [`SCHEMA_BASE`]). `draft` applies to
    /// schemas without `$schema`; `assert_formats` turns `format` into an assertion.
    pub fn new(
        name: &str,
        document: Value,
        draft: JsonDraft,
        assert_formats: bool,
    ) -> Result<Self, SchemaError> {
        let url = format!("{SCHEMA_BASE}{name}");
        let mut compiler = Compiler::new();
        compiler.set_default_draft(draft.boon());
        compiler.use_loader(Box::new(NoLoader));
        if assert_formats {
            compiler.enable_format_assertions();
        }
        compiler
            .add_resource(&url, document)
            .map_err(|e| schema_error(&e, &url))?;
        Ok(SchemaSet {
            schemas: Schemas::new(),
            compiler,
            url,
            draft,
        })
    }

    /// Compiles the subschema at JSON `pointer` (`""` for the whole document).
    pub fn compile(&mut self, pointer: &str) -> Result<SchemaRef, SchemaError> {
        let loc = format!("{}#{}", self.url, escape_fragment(pointer));
        self.compiler
            .compile(&loc, &mut self.schemas)
            .map(SchemaRef)
            .map_err(|e| {
                let mut err = schema_error(&e, &self.url);
                if err.pointer.is_empty() {
                    err.pointer = pointer.to_owned();
                }
                err
            })
    }

    pub fn draft(&self) -> JsonDraft {
        self.draft
    }

    /// Validates `instance`; the violation names `rule`, the instance path and the keyword.
    pub fn validate(
        &self,
        schema: SchemaRef,
        instance: &Value,
        rule: Rule,
    ) -> Result<(), Violation> {
        match self.schemas.validate(instance, schema.0) {
            Ok(()) => Ok(()),
            Err(e) => Err(schema_violation(&e, rule)),
        }
    }
}

/// Whitespace runs (the engine's multi-line messages included) as single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes what a URL fragment may not hold verbatim (the engine decodes it again).
fn escape_fragment(pointer: &str) -> String {
    let mut out = String::with_capacity(pointer.len());
    for b in pointer.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The JSON pointer in a `<base>#<fragment>` location, percent-decoded.
fn pointer_of(location: &str, url: &str) -> Option<String> {
    let frag = location.strip_prefix(url)?.strip_prefix('#')?;
    let mut out = Vec::with_capacity(frag.len());
    let bytes = frag.as_bytes();
    let mut i = 0usize;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
            if let (Some(h), Some(l)) = (hex(i.saturating_add(1)), hex(i.saturating_add(2))) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i = i.saturating_add(3);
                continue;
            }
        }
        out.push(b);
        i = i.saturating_add(1);
    }
    String::from_utf8(out).ok()
}

/// The most specific thing that is wrong: among the leaf causes, the one whose instance location
/// is deepest (the first such leaf on ties). For `anyOf`/`oneOf` failures this picks the branch
/// that got furthest into the value rather than the first branch tried.
fn deepest<'a, 's, 'v>(e: &'a ValidationError<'s, 'v>) -> &'a ValidationError<'s, 'v> {
    let mut best = e;
    let mut best_depth = 0usize;
    let mut stack = vec![e];
    // The tree is finite (one node per failed keyword); visited in document order.
    while let Some(node) = stack.pop() {
        if node.causes.is_empty() {
            let depth = node.instance_location.tokens.len();
            if depth > best_depth || std::ptr::eq(best, e) {
                best = node;
                best_depth = depth;
            }
        }
        stack.extend(node.causes.iter().rev());
    }
    best
}

fn schema_error(e: &CompileError, url: &str) -> SchemaError {
    match e {
        CompileError::ValidationError { url: at, src } => {
            let leaf = deepest(src);
            let base = pointer_of(at, url).unwrap_or_default();
            let inner = leaf.instance_location.to_string();
            SchemaError {
                pointer: format!("{base}{inner}"),
                message: format!(
                    "is not a valid JSON Schema: {}",
                    bounded(&one_line(&leaf.kind.to_string()), MAX_DETAIL)
                ),
            }
        }
        CompileError::InvalidRegex { url: at, regex, .. } => SchemaError {
            pointer: pointer_of(at, url).unwrap_or_default(),
            message: format!(
                "has a pattern that is not a valid ECMA-262 regular expression: {:?}",
                bounded(regex, 64)
            ),
        },
        CompileError::LoadUrlError { url: what, .. }
        | CompileError::UnsupportedUrlScheme { url: what } => SchemaError {
            pointer: String::new(),
            message: format!(
                "references {}, which is outside the configuration; only references inside the schema ($defs, #/...) are supported",
                bounded(what, 128)
            ),
        },
        CompileError::JsonPointerNotFound(loc) => SchemaError {
            pointer: String::new(),
            message: format!(
                "references {}, which does not exist",
                bounded(loc.strip_prefix(url).unwrap_or(loc), 128)
            ),
        },
        other => SchemaError {
            pointer: String::new(),
            message: format!("is not a valid JSON Schema: {}", bounded(&one_line(&other.to_string()), MAX_DETAIL)),
        },
    }
}

/// The JSON Schema keyword that failed. boon 0.6 names `additionalProperties` "additionalProperty"
/// in its keyword paths; the keyword's real name is reported here.
fn keyword_of(kind: &boon::ErrorKind<'_, '_>) -> &'static str {
    match kind {
        boon::ErrorKind::AdditionalProperties { .. } => "additionalProperties",
        boon::ErrorKind::FalseSchema => "false",
        other => other.keyword_path().map_or("schema", |k| k.keyword),
    }
}

fn schema_violation(e: &ValidationError<'_, '_>, rule: Rule) -> Violation {
    let leaf = deepest(e);
    let path = bounded(&leaf.instance_location.to_string(), MAX_QUOTED * 2);
    let keyword = keyword_of(&leaf.kind);
    let what = bounded(&one_line(&leaf.kind.to_string()), MAX_DETAIL / 2);
    let shown = if path.is_empty() {
        "the document root"
    } else {
        path.as_str()
    };
    Violation::new(
        rule,
        format!("The value at {shown} is invalid ({keyword}): {what}."),
    )
    .with("instance_path", path)
    .with("keyword", keyword)
}

/// Parses a JSON body. RFC 8259 requires UTF-8 without a byte-order mark; the parser enforces
/// both and limits nesting to 128 levels.
pub fn parse_body(bytes: &[u8], rule_for_errors: Rule) -> Result<Value, Violation> {
    serde_json::from_slice::<Value>(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "ends before the JSON document does",
            _ => "is not well-formed JSON",
        };
        let message = e.to_string();
        let reason = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(r, _)| r);
        Violation::new(
            rule_for_errors,
            format!(
                "The request body {what}: {} at line {} column {}.",
                bounded(reason, 96),
                e.line(),
                e.column()
            ),
        )
        .with("line", e.line())
        .with("column", e.column())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compiled(schema: Value, draft: JsonDraft) -> (SchemaSet, SchemaRef) {
        let mut set = SchemaSet::new("schema.json", schema, draft, false).unwrap();
        let r = set.compile("").unwrap();
        (set, r)
    }

    fn order_schema() -> Value {
        json!({
            "type": "object",
            "required": ["customer", "items"],
            "properties": {
                "customer": { "type": "object", "required": ["id"], "properties": { "id": { "type": "string" } } },
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": { "$ref": "#/$defs/item" }
                }
            },
            "$defs": {
                "item": {
                    "type": "object",
                    "required": ["sku", "qty"],
                    "properties": { "sku": { "type": "string" }, "qty": { "type": "integer", "minimum": 1 } }
                }
            }
        })
    }

    #[test]
    fn a_valid_document_passes_and_a_nested_failure_names_its_instance_path() {
        let (set, r) = compiled(order_schema(), JsonDraft::V2020_12);
        let ok = json!({"customer": {"id": "c1"}, "items": [{"sku": "a", "qty": 2}]});
        assert!(set.validate(r, &ok, Rule::JsonSchema).is_ok());
        let bad = json!({"customer": {"id": "c1"}, "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 0}]});
        let v = set.validate(r, &bad, Rule::JsonSchema).unwrap_err();
        assert_eq!(v.rule, Rule::JsonSchema);
        let ext: std::collections::BTreeMap<_, _> = v.extensions.iter().cloned().collect();
        assert_eq!(ext["instance_path"], json!("/items/1/qty"));
        assert_eq!(ext["keyword"], json!("minimum"));
        assert!(
            v.detail
                .starts_with("The value at /items/1/qty is invalid (minimum)"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn draft_7_schemas_validate_with_draft_7_semantics() {
        // In draft 7, `items` as an array is a tuple and `additionalItems` constrains the rest.
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "array",
            "items": [{"type": "string"}],
            "additionalItems": false
        });
        let (set, r) = compiled(schema.clone(), JsonDraft::V2020_12);
        assert!(set.validate(r, &json!(["a"]), Rule::JsonSchema).is_ok());
        assert!(set.validate(r, &json!(["a", 1]), Rule::JsonSchema).is_err());
        // Without `$schema`, the configured draft decides.
        let mut bare = schema;
        bare.as_object_mut().unwrap().remove("$schema");
        let (set, r) = compiled(bare, JsonDraft::V7);
        assert_eq!(set.draft(), JsonDraft::V7);
        assert!(set.validate(r, &json!(["a", 1]), Rule::JsonSchema).is_err());
    }

    #[test]
    fn a_schema_with_a_wrong_keyword_type_is_refused_with_its_pointer() {
        let mut set = SchemaSet::new(
            "schema.json",
            json!({"properties": {"age": {"minimum": "ten"}}}),
            JsonDraft::V2020_12,
            false,
        )
        .unwrap();
        let e = set.compile("").unwrap_err();
        assert_eq!(e.pointer, "/properties/age/minimum");
        assert!(
            e.message.starts_with("is not a valid JSON Schema: "),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_bad_pattern_inside_a_schema_is_refused_with_its_pointer() {
        let mut set = SchemaSet::new(
            "schema.json",
            json!({"properties": {"code": {"type": "string", "pattern": "([a-z"}}}),
            JsonDraft::V2020_12,
            false,
        )
        .unwrap();
        let e = set.compile("").unwrap_err();
        assert_eq!(e.pointer, "/properties/code/pattern", "{e:?}");
    }

    #[test]
    fn references_outside_the_schema_are_refused_never_fetched() {
        let mut set = SchemaSet::new(
            "schema.json",
            json!({"$ref": "https://example.com/other.json"}),
            JsonDraft::V2020_12,
            false,
        )
        .unwrap();
        let e = set.compile("").unwrap_err();
        assert!(e.message.contains("outside the configuration"), "{e:?}");
        let mut set = SchemaSet::new(
            "schema.json",
            json!({"$ref": "#/$defs/missing"}),
            JsonDraft::V2020_12,
            false,
        )
        .unwrap();
        assert!(set.compile("").is_err());
    }

    #[test]
    fn subschemas_are_compiled_by_pointer_even_with_odd_characters() {
        let doc = json!({"paths": {"/pets/{id}": {"get": {"schema": {"type": "integer"}}}}});
        let mut set = SchemaSet::new("openapi.json", doc, JsonDraft::V2020_12, false).unwrap();
        let r = set.compile("/paths/~1pets~1{id}/get/schema").unwrap();
        assert!(set.validate(r, &json!(3), Rule::OpenapiParameters).is_ok());
        assert!(set
            .validate(r, &json!("x"), Rule::OpenapiParameters)
            .is_err());
    }

    #[test]
    fn formats_are_annotations_unless_asserted() {
        let schema = json!({"type": "string", "format": "email"});
        let (set, r) = compiled(schema.clone(), JsonDraft::V2020_12);
        assert!(set
            .validate(r, &json!("not an email"), Rule::JsonSchema)
            .is_ok());
        let mut set = SchemaSet::new("s.json", schema, JsonDraft::V2020_12, true).unwrap();
        let r = set.compile("").unwrap();
        assert!(set
            .validate(r, &json!("not an email"), Rule::JsonSchema)
            .is_err());
    }

    /// The trade-off of pinning `idna_adapter` to the table-free 1.0.0 (root Cargo.toml): asserted
    /// IDN formats accept ASCII and punycode names but refuse every non-ASCII one.
    #[test]
    fn asserted_idn_formats_refuse_non_ascii_names_since_idna_has_no_unicode_tables() {
        let schema = json!({"type": "string", "format": "idn-hostname"});
        let mut set = SchemaSet::new("s.json", schema, JsonDraft::V2020_12, true).unwrap();
        let r = set.compile("").unwrap();
        for ok in ["example.com", "xn--bcher-kva.example"] {
            assert!(
                set.validate(r, &json!(ok), Rule::JsonSchema).is_ok(),
                "{ok}"
            );
        }
        assert!(set
            .validate(r, &json!("bücher.example"), Rule::JsonSchema)
            .is_err());
        let schema = json!({"type": "string", "format": "idn-email"});
        let mut set = SchemaSet::new("s.json", schema, JsonDraft::V2020_12, true).unwrap();
        let r = set.compile("").unwrap();
        assert!(set
            .validate(r, &json!("user@example.com"), Rule::JsonSchema)
            .is_ok());
        assert!(set
            .validate(r, &json!("user@bücher.example"), Rule::JsonSchema)
            .is_err());
    }

    #[test]
    fn malformed_and_non_utf8_bodies_are_json_body_violations_with_a_position() {
        let v = parse_body(b"{\"a\": [1, 2", Rule::JsonBody).unwrap_err();
        assert_eq!(v.rule, Rule::JsonBody);
        assert!(
            v.detail
                .starts_with("The request body ends before the JSON document does"),
            "{}",
            v.detail
        );
        let v = parse_body(b"{\"a\": \"\xff\xfe\"}", Rule::JsonBody).unwrap_err();
        assert!(v.detail.contains("not well-formed JSON"), "{}", v.detail);
        assert!(
            parse_body(b"\xef\xbb\xbf{}", Rule::JsonBody).is_err(),
            "a BOM is refused"
        );
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(
            parse_body(deep.as_bytes(), Rule::JsonBody).is_err(),
            "nesting is limited"
        );
        assert!(parse_body(b" {\"ok\": true} ", Rule::JsonBody).is_ok());
    }

    #[test]
    fn keywords_are_named_as_the_specification_spells_them() {
        let (set, r) = compiled(
            json!({"properties": {"a": false}, "additionalProperties": false}),
            JsonDraft::V2020_12,
        );
        let v = set
            .validate(r, &json!({"b": 1}), Rule::JsonSchema)
            .unwrap_err();
        assert!(
            v.extensions
                .contains(&("keyword", json!("additionalProperties"))),
            "{v:?}"
        );
        let v = set
            .validate(r, &json!({"a": 1}), Rule::JsonSchema)
            .unwrap_err();
        assert!(
            v.extensions.contains(&("instance_path", json!("/a"))),
            "{v:?}"
        );
    }

    #[test]
    fn violations_never_echo_unbounded_input() {
        let (set, r) = compiled(
            json!({"type": "object", "additionalProperties": false}),
            JsonDraft::V2020_12,
        );
        let key = "k".repeat(100_000);
        let v = set
            .validate(r, &json!({ key.clone(): 1 }), Rule::JsonSchema)
            .unwrap_err();
        assert!(v.detail.len() <= MAX_DETAIL);
        let body = v.problem().body();
        assert!(body.len() < 1_000, "{}", body.len());
        let (set, r) = compiled(
            json!({"properties": {"a": {"type": "integer"}}}),
            JsonDraft::V2020_12,
        );
        let v = set
            .validate(r, &json!({ key.clone(): {}, "a": "x" }), Rule::JsonSchema)
            .unwrap_err();
        assert!(v.problem().body().len() < 1_000);
    }
}
