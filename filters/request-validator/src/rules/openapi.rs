//! OpenAPI 3 documents compiled into per-operation rules.
//!
//! # Why
//!
//! An API's OpenAPI document already says which paths exist, which methods each accepts, which
//! parameters are required and what the request body must look like. Compiling it into the
//! validator at configuration load turns that contract into an edge check: a request for an
//! operation the API does not have is answered 404 (no such path) or 405 (the path exists, the
//! method does not) with `allow`, a missing or malformed parameter 400, an unlisted media type
//! 415, and a body that breaks the operation's schema 422, before any of them reaches the service.
//!
//! # What is compiled
//!
//! - `paths`: each template (`/pets/{petId}`) becomes an anchored pattern; concrete paths win
//!   over templated ones (the specification's rule), then fewer template expressions, then the
//!   longer literal text. The path of the first `servers` entry (`/v1`) is a prefix every request
//!   path must carry.
//! - Methods: `get`, `put`, `post`, `delete`, `options`, `head`, `patch`, `trace`; `HEAD` is
//!   accepted wherever `GET` is.
//! - `parameters` of the path item and the operation (the operation's win by `name` and `in`),
//!   `$ref`s into `#/components/parameters` followed: `in` `path`, `query`, `header` and `cookie`;
//!   `required`; and the `schema`, against which the value is checked after reading it as the
//!   schema's `type` (`integer`, `number`, `boolean`, `string`, `array` of those).
//! - Repeats. A parameter the document declares as one value must arrive once: frameworks
//!   disagree on which of `limit=5&limit=500` they read, so a repeat is refused (400) whatever
//!   the values; a list's every item is checked. Only an `array` in a form that is written by repeating the parameter
//!   may repeat: a query array with `explode` (the default for `style: form`), or a header array
//!   (repeated header lines mean the comma-joined list, RFC 9110 §5.3). A query array without
//!   `explode` is one comma- (`spaceDelimited`: space-, `pipeDelimited`: pipe-) separated value.
//! - `requestBody` (`$ref` into `#/components/requestBodies` followed): `required`, and `content`,
//!   whose keys are the accepted media types (ranges such as `application/*` allowed); the schema
//!   of a JSON media type is checked against the body.
//!
//! Schemas are compiled by the JSON Schema engine from the document itself, so `$ref`s into
//! `#/components/schemas` resolve. OpenAPI 3.1 documents use draft 2020-12; 3.0 documents use
//! draft 4 (their schema dialect's base), with `nullable: true` read as "or null".

use std::borrow::Cow;

use regex::{Regex, RegexSet};
use serde_json::{Map, Value};

use super::json::{parse_body, JsonDraft, SchemaRef, SchemaSet};
use super::media::{essence, is_json, MediaRange};
use super::query::{self, decode, parse_integer};
use super::{quote, RequestHead, Rule, Violation};
use resilience_core::problem::bounded;

/// Most operations one document may define: matching is one pattern set, but a generator gone
/// wrong should fail loudly at load.
pub const MAX_OPERATIONS: usize = 2_000;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A compile error: a JSON pointer into the OpenAPI document and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub pointer: String,
    pub message: String,
}

impl ApiError {
    fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// Where a parameter is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
    Header,
    Cookie,
}

impl In {
    fn parse(s: &str) -> Option<In> {
        match s {
            "path" => Some(In::Path),
            "query" => Some(In::Query),
            "header" => Some(In::Header),
            "cookie" => Some(In::Cookie),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            In::Path => "Path parameter",
            In::Query => "Query parameter",
            In::Header => "Header",
            In::Cookie => "Cookie",
        }
    }

    fn name(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
            In::Cookie => "cookie",
        }
    }
}

/// How a raw parameter value becomes a JSON value before schema validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scalar {
    String,
    Integer,
    Number,
    Boolean,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One value: each occurrence is checked, and more than one is refused.
    Scalar(Scalar),
    /// A list: each occurrence's items (the whole occurrence when `split` is `None`, else the
    /// pieces between `split` bytes) form one array.
    Array {
        item: Scalar,
        split: Option<u8>,
        /// Whether the serialisation the document declares writes the list by repeating the
        /// parameter; when it does not, a repeat is refused like a scalar's.
        repeatable: bool,
    },
    /// Objects (`deepObject` and friends) are checked for presence only.
    Unchecked,
}

impl Shape {
    fn repeatable(self) -> bool {
        match self {
            Shape::Scalar(_) => false,
            Shape::Array { repeatable, .. } => repeatable,
            Shape::Unchecked => true,
        }
    }
}

#[derive(Clone, Debug)]
struct Param {
    name: String,
    location: In,
    required: bool,
    schema: Option<(SchemaRef, Shape)>,
}

#[derive(Clone, Debug)]
struct Body {
    required: bool,
    /// Accepted media ranges and the schema to check JSON bodies against.
    content: Vec<(MediaRange, Option<SchemaRef>)>,
}

/// One operation: a method on a path.
#[derive(Clone, Debug)]
pub struct Operation {
    method: String,
    params: Vec<Param>,
    body: Option<Body>,
}

#[derive(Debug)]
struct PathItem {
    template: String,
    pattern: Regex,
    /// Names of the template expressions, in capture order.
    names: Vec<String>,
    operations: Vec<Operation>,
    /// The `allow` header for a 405.
    allow: String,
    rank: (usize, std::cmp::Reverse<usize>, usize),
}

/// A compiled OpenAPI document.
#[derive(Debug)]
pub struct Api {
    base_path: String,
    items: Vec<PathItem>,
    set: RegexSet,
    schemas: SchemaSet,
}

/// The operation a request is for, with its path parameters.
#[derive(Debug)]
pub struct Found<'a> {
    pub operation: &'a Operation,
    /// `(name, raw value)` of each path template expression.
    pub path_params: Vec<(&'a str, Vec<u8>)>,
}

/// The result of looking a request up in the document.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found(Found<'a>),
    /// No path template matches (404).
    NoPath,
    /// The path exists, the method does not (405).
    NoMethod {
        allow: &'a str,
    },
}

impl Api {
    /// Compiles an OpenAPI 3.0 or 3.1 document.
    pub fn compile(doc: &Value, assert_formats: bool) -> Result<Api, ApiError> {
        let Value::Object(root) = doc else {
            return Err(ApiError::new(
                "",
                "must be an OpenAPI 3 document (a JSON object)",
            ));
        };
        let version = root.get("openapi").and_then(Value::as_str).unwrap_or("");
        let (draft, document) = if version.starts_with("3.1") {
            let draft = match root.get("jsonSchemaDialect").and_then(Value::as_str) {
                None => JsonDraft::V2020_12,
                Some(d) if d.contains("2020-12") || d.contains("oas/3.1") => JsonDraft::V2020_12,
                Some(d) if d.contains("2019-09") => JsonDraft::V2019_09,
                Some(d) if d.contains("draft-07") => JsonDraft::V7,
                Some(d) => {
                    return Err(ApiError::new(
                        "/jsonSchemaDialect",
                        format!(
                            "names a dialect this validator does not know: {:?}",
                            bounded(d, 64)
                        ),
                    ))
                }
            };
            (draft, doc.clone())
        } else if version.starts_with("3.0") {
            let mut d = doc.clone();
            nullable_to_null_type(&mut d, 0);
            (JsonDraft::V4, d)
        } else {
            return Err(ApiError::new(
                "/openapi",
                format!(
                    "must be an OpenAPI version \"3.0.x\" or \"3.1.x\", got {:?}",
                    bounded(version, 32)
                ),
            ));
        };
        let base_path = base_path(root)?;
        let paths = match root.get("paths") {
            Some(Value::Object(p)) => p.clone(),
            None => Map::new(),
            Some(_) => return Err(ApiError::new("/paths", "must be an object")),
        };
        let mut schemas = SchemaSet::new("openapi.json", document.clone(), draft, assert_formats)
            .map_err(|e| ApiError::new(e.pointer, e.message))?;

        let mut items = Vec::new();
        let mut operations_total = 0usize;
        for (template, item) in &paths {
            if template.starts_with("x-") {
                continue;
            }
            let item_ptr = format!("/paths/{}", escape_token(template));
            if !template.starts_with('/') {
                return Err(ApiError::new(
                    item_ptr,
                    "must be a path starting with \"/\"",
                ));
            }
            let Value::Object(item_obj) = item else {
                return Err(ApiError::new(item_ptr, "must be a Path Item object"));
            };
            if item_obj.contains_key("$ref") {
                return Err(ApiError::new(
                    format!("{item_ptr}/$ref"),
                    "path item references are not supported; inline the path item",
                ));
            }
            let (pattern, names, literal_len) =
                template_pattern(template).map_err(|m| ApiError::new(item_ptr.clone(), m))?;
            let shared_params = collect_params(
                &document,
                item_obj.get("parameters"),
                &format!("{item_ptr}/parameters"),
            )?;
            let mut operations = Vec::new();
            for method in METHODS {
                let Some(op) = item_obj.get(method) else {
                    continue;
                };
                let op_ptr = format!("{item_ptr}/{method}");
                let Value::Object(op_obj) = op else {
                    return Err(ApiError::new(op_ptr, "must be an Operation object"));
                };
                let mut params = shared_params.clone();
                for p in collect_params(
                    &document,
                    op_obj.get("parameters"),
                    &format!("{op_ptr}/parameters"),
                )? {
                    params.retain(|q: &RawParam| !(q.name == p.name && q.location == p.location));
                    params.push(p);
                }
                for p in &params {
                    if p.location == In::Path && !names.contains(&p.name) {
                        return Err(ApiError::new(
                            p.pointer.clone(),
                            format!(
                                "path parameter {:?} does not appear in the path template",
                                bounded(&p.name, 64)
                            ),
                        ));
                    }
                }
                let mut compiled = Vec::with_capacity(params.len());
                for p in params {
                    compiled.push(compile_param(&mut schemas, &document, p)?);
                }
                let body = match op_obj.get("requestBody") {
                    None => None,
                    Some(b) => Some(compile_body(
                        &mut schemas,
                        &document,
                        b,
                        &format!("{op_ptr}/requestBody"),
                    )?),
                };
                operations.push(Operation {
                    method: method.to_ascii_uppercase(),
                    params: compiled,
                    body,
                });
            }
            operations_total = operations_total.saturating_add(operations.len());
            if operations_total > MAX_OPERATIONS {
                return Err(ApiError::new(
                    "/paths",
                    format!("defines more than {MAX_OPERATIONS} operations"),
                ));
            }
            let mut allow: Vec<&str> = operations.iter().map(|o| o.method.as_str()).collect();
            if allow.contains(&"GET") && !allow.contains(&"HEAD") {
                allow.push("HEAD");
            }
            let allow = allow.join(", ");
            let rank = (names.len(), std::cmp::Reverse(literal_len), items.len());
            items.push(PathItem {
                template: template.clone(),
                pattern,
                names,
                operations,
                allow,
                rank,
            });
        }
        items.sort_by_key(|i| i.rank);
        let set = RegexSet::new(items.iter().map(|i| i.pattern.as_str()))
            .map_err(|e| ApiError::new("/paths", format!("cannot be compiled: {e}")))?;
        Ok(Api {
            base_path,
            items,
            set,
            schemas,
        })
    }

    /// Finds the operation for `method` and `path` (without the query string).
    pub fn lookup(&self, method: &[u8], path: &[u8]) -> Lookup<'_> {
        let Ok(path) = std::str::from_utf8(path) else {
            return Lookup::NoPath;
        };
        let Some(rest) = path.strip_prefix(self.base_path.as_str()) else {
            return Lookup::NoPath;
        };
        let rest = if rest.is_empty() { "/" } else { rest };
        if !self.base_path.is_empty() && !rest.starts_with('/') {
            return Lookup::NoPath;
        }
        // The set answers in one pass; items are sorted by precedence, so the lowest index wins.
        let Some(index) = self.set.matches(rest).iter().next() else {
            return Lookup::NoPath;
        };
        let Some(item) = self.items.get(index) else {
            return Lookup::NoPath;
        };
        let wanted = if method == b"HEAD" && !item.operations.iter().any(|o| o.method == "HEAD") {
            &b"GET"[..]
        } else {
            method
        };
        let Some(operation) = item
            .operations
            .iter()
            .find(|o| o.method.as_bytes() == wanted)
        else {
            return Lookup::NoMethod { allow: &item.allow };
        };
        let mut path_params = Vec::with_capacity(item.names.len());
        if let Some(caps) = item.pattern.captures(rest) {
            for (name, cap) in item.names.iter().zip(caps.iter().skip(1)) {
                if let Some(m) = cap {
                    path_params.push((name.as_str(), decode(m.as_str().as_bytes()).into_owned()));
                }
            }
        }
        Lookup::Found(Found {
            operation,
            path_params,
        })
    }

    /// The header-phase checks of one operation: 404/405 are the caller's (from [`Api::lookup`]);
    /// here, parameters (400) and the media type (415). Returns the schema the body must match,
    /// when the body is JSON and the operation gives one.
    pub fn check_head(
        &self,
        found: &Found<'_>,
        head: &RequestHead,
    ) -> Result<Option<SchemaRef>, Violation> {
        let op = found.operation;
        for p in &op.params {
            let values: Vec<Vec<u8>> = match p.location {
                In::Path => found
                    .path_params
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| v.clone())
                    .collect(),
                In::Query => query::values(head.query().unwrap_or_default(), p.name.as_bytes())
                    .map(Cow::into_owned)
                    .collect(),
                In::Header => {
                    let lower = p.name.to_ascii_lowercase();
                    head.all(&lower).map(<[u8]>::to_vec).collect()
                }
                In::Cookie => cookies(head, &p.name),
            };
            if values.is_empty() {
                if p.required {
                    return Err(param_violation(p, "is required".to_owned()));
                }
                continue;
            }
            let Some((schema, shape)) = p.schema else {
                continue;
            };
            // A single value sent more than once is refused before any occurrence is read: the
            // application may take any one of them (first, last, joined), so none of them is
            // the value the document describes. Refusing first also bounds what a hostile
            // `a=1&a=1&…` costs to one schema check.
            if values.len() > 1 && !shape.repeatable() {
                return Err(repeat_violation(p, values.len()));
            }
            let instances: Vec<Value> = match shape {
                Shape::Unchecked => continue,
                Shape::Scalar(s) => values.iter().map(|v| coerce(v, s)).collect(),
                Shape::Array { item, split, .. } => {
                    let mut items = Vec::new();
                    for v in &values {
                        match split {
                            None => items.push(coerce(v, item)),
                            // A header list allows spaces around its commas (RFC 9110 §5.6.1).
                            Some(sep) if p.location == In::Header => items
                                .extend(v.split(|b| *b == sep).map(|x| coerce(trim_ows(x), item))),
                            Some(sep) => {
                                items.extend(v.split(|b| *b == sep).map(|x| coerce(x, item)));
                            }
                        }
                    }
                    vec![Value::Array(items)]
                }
            };
            for instance in instances {
                self.check_param_value(p, schema, instance)?;
            }
        }
        let Some(body) = &op.body else {
            return Ok(None);
        };
        if !head.has_body() {
            if body.required {
                return Err(Violation::new(
                    Rule::OpenapiBodyRequired,
                    format!("{} on this path requires a request body.", op.method),
                ));
            }
            return Ok(None);
        }
        let media = head.get("content-type").and_then(essence);
        let matched = media.as_deref().and_then(|m| {
            body.content
                .iter()
                .find(|(r, _)| r.contains(m))
                .map(|(_, s)| (m, *s))
        });
        match matched {
            None => {
                let accepted: Vec<&str> = body.content.iter().map(|(r, _)| r.source()).collect();
                Err(Violation::new(
                    Rule::OpenapiContentType,
                    format!(
                        "This operation accepts {}, not {}.",
                        accepted.join(", "),
                        media.as_deref().map_or_else(
                            || "a body without a content type".to_owned(),
                            |m| bounded(m, 64)
                        )
                    ),
                )
                .with("accepted", accepted))
            }
            Some((m, schema)) if is_json(m) => Ok(schema),
            Some(_) => Ok(None),
        }
    }

    /// One parameter value (already read as its schema's type) against the schema.
    fn check_param_value(
        &self,
        p: &Param,
        schema: SchemaRef,
        instance: Value,
    ) -> Result<(), Violation> {
        let Some(instance) = instance_or_utf8_error(instance) else {
            return Err(param_violation(p, "is not valid UTF-8".to_owned()));
        };
        if let Err(v) = self
            .schemas
            .validate(schema, &instance, Rule::OpenapiParameters)
        {
            let keyword = v
                .extensions
                .iter()
                .find(|(k, _)| *k == "keyword")
                .and_then(|(_, v)| v.as_str())
                .unwrap_or("schema");
            return Err(
                param_violation(p, format!("does not match its schema ({keyword})"))
                    .with("keyword", keyword.to_owned()),
            );
        }
        Ok(())
    }

    /// Checks a complete JSON body against the operation's schema.
    pub fn check_body(&self, schema: SchemaRef, body: &[u8]) -> Result<(), Violation> {
        let value = parse_body(body, Rule::JsonBody)?;
        self.schemas
            .validate(schema, &value, Rule::OpenapiRequestBody)
    }

    /// The path every request path must start with (the first `servers` entry's), `""` for none.
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The path templates, in match order (for logs and tests).
    pub fn templates(&self) -> Vec<&str> {
        self.items.iter().map(|i| i.template.as_str()).collect()
    }
}

/// The 404 for a path the document does not define.
pub fn no_path_violation(path: &[u8]) -> Violation {
    Violation::new(
        Rule::OpenapiPath,
        format!("No operation of this API matches the path {}.", quote(path)),
    )
}

/// The 405 for a method the path does not define.
pub fn no_method_violation(method: &[u8], allow: &str) -> Violation {
    Violation::new(
        Rule::OpenapiMethod,
        format!(
            "This path accepts {allow}, not {}.",
            bounded(&String::from_utf8_lossy(method), 16)
        ),
    )
    .with_allow(allow.to_owned())
}

fn param_violation(p: &Param, what: String) -> Violation {
    let name = bounded(&p.name, super::MAX_QUOTED);
    Violation::new(
        Rule::OpenapiParameters,
        format!("{} \"{name}\" {what}.", p.location.label()),
    )
    .with("parameter", name)
    .with("in", p.location.name())
}

/// A parameter the document declares as one value, sent `count` times. The count is of
/// occurrences, not items: what a client sent, bounded by the head's size.
fn repeat_violation(p: &Param, count: usize) -> Violation {
    param_violation(
        p,
        format!("is sent {count} times; the API declares a single value"),
    )
}

/// `v` without the spaces and tabs around it.
fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i.saturating_add(1));
    v.get(start..end).unwrap_or_default()
}

/// A raw value as the JSON type the schema expects; what does not parse stays a string so the
/// schema reports the type mismatch. Non-UTF-8 becomes `Null` (reported by the caller).
fn coerce(raw: &[u8], scalar: Scalar) -> Value {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Value::Null;
    };
    match scalar {
        Scalar::String => Value::String(text.to_owned()),
        Scalar::Integer => {
            parse_integer(raw).map_or_else(|| Value::String(text.to_owned()), Value::from)
        }
        Scalar::Number => match text.parse::<f64>() {
            Ok(n) if n.is_finite() && !text.contains(['i', 'I', 'n', 'N']) => {
                serde_json::Number::from_f64(n)
                    .map_or_else(|| Value::String(text.to_owned()), Value::Number)
            }
            _ => Value::String(text.to_owned()),
        },
        Scalar::Boolean => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text.to_owned()),
        },
    }
}

fn instance_or_utf8_error(v: Value) -> Option<Value> {
    match &v {
        Value::Null => None,
        Value::Array(items) if items.iter().any(Value::is_null) => None,
        _ => Some(v),
    }
}

/// Values of cookie `name` in every `cookie` header (`a=1; b=2`).
fn cookies(head: &RequestHead, name: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for header in head.all("cookie") {
        for pair in header.split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if let Some(i) = pair.iter().position(|b| *b == b'=') {
                if pair.get(..i) == Some(name.as_bytes()) {
                    out.push(pair.get(i.saturating_add(1)..).unwrap_or_default().to_vec());
                }
            }
        }
    }
    out
}

/// A parameter object as read from the document, before its schema is compiled.
#[derive(Clone, Debug)]
struct RawParam {
    name: String,
    location: In,
    required: bool,
    style: Option<String>,
    explode: Option<bool>,
    /// Pointer to the parameter object (after following `$ref`).
    pointer: String,
    has_schema: bool,
}

/// Follows a local `$ref` (`#/components/...`) once; returns the target and its pointer.
fn resolve<'a>(
    doc: &'a Value,
    value: &'a Value,
    pointer: &str,
) -> Result<(&'a Value, String), ApiError> {
    match value.get("$ref").and_then(Value::as_str) {
        None => Ok((value, pointer.to_owned())),
        Some(r) => {
            let Some(target_ptr) = r.strip_prefix('#') else {
                return Err(ApiError::new(
                    format!("{pointer}/$ref"),
                    format!(
                        "references {:?}, which is outside the document; only local references are supported",
                        bounded(r, 64)
                    ),
                ));
            };
            let target = doc.pointer(target_ptr).ok_or_else(|| {
                ApiError::new(
                    format!("{pointer}/$ref"),
                    format!("references {:?}, which does not exist", bounded(r, 64)),
                )
            })?;
            if target.get("$ref").is_some() {
                return Err(ApiError::new(
                    format!("{pointer}/$ref"),
                    "references another reference; point at the object itself",
                ));
            }
            Ok((target, target_ptr.to_owned()))
        }
    }
}

fn collect_params(
    doc: &Value,
    list: Option<&Value>,
    pointer: &str,
) -> Result<Vec<RawParam>, ApiError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = list else {
        return Err(ApiError::new(
            pointer,
            "must be an array of Parameter objects",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (p, p_ptr) = resolve(doc, item, &format!("{pointer}/{i}"))?;
        let name = p.get("name").and_then(Value::as_str).ok_or_else(|| {
            ApiError::new(format!("{p_ptr}/name"), "is required and must be a string")
        })?;
        let location = p
            .get("in")
            .and_then(Value::as_str)
            .and_then(In::parse)
            .ok_or_else(|| {
                ApiError::new(
                    format!("{p_ptr}/in"),
                    "must be one of \"path\", \"query\", \"header\", \"cookie\"",
                )
            })?;
        let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
        if location == In::Path && !required {
            return Err(ApiError::new(
                format!("{p_ptr}/required"),
                "must be true for a path parameter",
            ));
        }
        out.push(RawParam {
            name: name.to_owned(),
            location,
            required,
            style: p.get("style").and_then(Value::as_str).map(str::to_owned),
            explode: p.get("explode").and_then(Value::as_bool),
            pointer: p_ptr,
            has_schema: p.get("schema").is_some(),
        });
    }
    Ok(out)
}

fn compile_param(schemas: &mut SchemaSet, doc: &Value, p: RawParam) -> Result<Param, ApiError> {
    let schema = if p.has_schema {
        let schema_ptr = format!("{}/schema", p.pointer);
        let shape = shape_of(doc, &schema_ptr, list_form(&p));
        let r = schemas
            .compile(&schema_ptr)
            .map_err(|e| ApiError::new(e.pointer, e.message))?;
        Some((r, shape))
    } else {
        None
    };
    Ok(Param {
        name: p.name,
        location: p.location,
        required: p.required,
        schema,
    })
}

/// How an array parameter is written: `(split, repeatable)` of [`Shape::Array`].
///
/// Query (`style` `form` unless given): `explode`, the default for `form` only, writes one
/// occurrence per item; otherwise one occurrence holds the items separated by `,` (`form`),
/// a space (`spaceDelimited`) or `|` (`pipeDelimited`), and a second occurrence is a repeat.
/// Header (`simple`): comma-separated, and repeated header lines mean their comma-joined list.
/// Path: one segment, comma-separated (a template cannot name a parameter twice). Cookie: each
/// occurrence comma-separated, and repeats allowed: OpenAPI 3.0 and 3.1 do not settle how an
/// exploded cookie array is written, so no reading is refused.
fn list_form(p: &RawParam) -> (Option<u8>, bool) {
    match p.location {
        In::Query => {
            let style = p.style.as_deref().unwrap_or("form");
            if p.explode.unwrap_or(style == "form") {
                return (None, true);
            }
            let sep = match style {
                "spaceDelimited" => b' ',
                "pipeDelimited" => b'|',
                _ => b',',
            };
            (Some(sep), false)
        }
        In::Header | In::Cookie => (Some(b','), true),
        In::Path => (Some(b','), false),
    }
}

/// The JSON type a parameter's schema declares (one `$ref` followed), to read raw values as;
/// `list` is how an array is written ([`list_form`]).
fn shape_of(doc: &Value, schema_ptr: &str, list: (Option<u8>, bool)) -> Shape {
    let scalar_of = |v: &Value| -> Option<Scalar> {
        let v = match v
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        {
            Some(ptr) => doc.pointer(ptr)?,
            None => v,
        };
        let t = match v.get("type")? {
            Value::String(t) => t.as_str(),
            // 3.1 style `["integer", "null"]`: the first non-null type.
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null")?,
            _ => return None,
        };
        match t {
            "integer" => Some(Scalar::Integer),
            "number" => Some(Scalar::Number),
            "boolean" => Some(Scalar::Boolean),
            "string" => Some(Scalar::String),
            _ => None,
        }
    };
    let Some(schema) = doc.pointer(schema_ptr) else {
        return Shape::Unchecked;
    };
    let schema = match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
    {
        Some(ptr) => doc.pointer(ptr).unwrap_or(schema),
        None => schema,
    };
    let declared = match schema.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    };
    match declared {
        Some("array") => {
            let item = schema
                .get("items")
                .and_then(scalar_of)
                .unwrap_or(Scalar::String);
            Shape::Array {
                item,
                split: list.0,
                repeatable: list.1,
            }
        }
        Some("object") => Shape::Unchecked,
        _ => Shape::Scalar(scalar_of(schema).unwrap_or(Scalar::String)),
    }
}

fn compile_body(
    schemas: &mut SchemaSet,
    doc: &Value,
    value: &Value,
    pointer: &str,
) -> Result<Body, ApiError> {
    let (b, b_ptr) = resolve(doc, value, pointer)?;
    let required = b.get("required").and_then(Value::as_bool).unwrap_or(false);
    let Some(Value::Object(content)) = b.get("content") else {
        return Err(ApiError::new(
            format!("{b_ptr}/content"),
            "is required and must be an object",
        ));
    };
    let mut out = Vec::with_capacity(content.len());
    for (media, entry) in content {
        let media_ptr = format!("{b_ptr}/content/{}", escape_token(media));
        let range = MediaRange::parse(media).map_err(|m| ApiError::new(media_ptr.clone(), m))?;
        let schema = if entry.get("schema").is_some() && (media.contains("json") || media == "*/*")
        {
            Some(
                schemas
                    .compile(&format!("{media_ptr}/schema"))
                    .map_err(|e| ApiError::new(e.pointer, e.message))?,
            )
        } else {
            None
        };
        out.push((range, schema));
    }
    Ok(Body {
        required,
        content: out,
    })
}

/// The path of the first `servers` entry's URL (`https://api.example.com/v1` → `/v1`), no
/// trailing `/`; empty when there is none or it is `/`.
fn base_path(root: &Map<String, Value>) -> Result<String, ApiError> {
    let Some(url) = root
        .get("servers")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
        .and_then(|s| s.get("url"))
        .and_then(Value::as_str)
    else {
        return Ok(String::new());
    };
    if url.contains('{') {
        return Err(ApiError::new(
            "/servers/0/url",
            "server variables are not supported; give the base path literally",
        ));
    }
    let after_scheme = match url.find("://") {
        Some(i) => {
            let rest = url.get(i.saturating_add(3)..).unwrap_or("");
            rest.find('/').map_or("", |j| rest.get(j..).unwrap_or(""))
        }
        None => url,
    };
    Ok(after_scheme.trim_end_matches('/').to_owned())
}

/// JSON-pointer escaping of one token (`~` → `~0`, `/` → `~1`).
pub fn escape_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// A path template as an anchored pattern: literals escaped, each `{name}` one non-empty
/// segment-free capture. Returns the pattern, the names and the literal length.
fn template_pattern(template: &str) -> Result<(Regex, Vec<String>, usize), String> {
    let mut pattern = String::from("^");
    let mut names = Vec::new();
    let mut literal_len = 0usize;
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let (lit, after) = rest.split_at(open);
        pattern.push_str(&regex::escape(lit));
        literal_len = literal_len.saturating_add(lit.len());
        let close = after
            .find('}')
            .ok_or_else(|| "has a \"{\" without its \"}\"".to_owned())?;
        let name = after.get(1..close).unwrap_or("");
        if name.is_empty() || name.contains(['{', '/']) {
            return Err(format!(
                "has a malformed template expression {:?}",
                bounded(name, 32)
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(format!(
                "names the template expression {:?} twice",
                bounded(name, 32)
            ));
        }
        names.push(name.to_owned());
        pattern.push_str("([^/]+)");
        rest = after.get(close.saturating_add(1)..).unwrap_or("");
    }
    if rest.contains('}') {
        return Err("has a \"}\" without its \"{\"".to_owned());
    }
    pattern.push_str(&regex::escape(rest));
    literal_len = literal_len.saturating_add(rest.len());
    pattern.push('$');
    let re = Regex::new(&pattern).map_err(|e| format!("cannot be compiled: {e}"))?;
    Ok((re, names, literal_len))
}

/// OpenAPI 3.0's `nullable: true` as JSON Schema: `type: T` becomes `type: [T, "null"]` (and
/// `null` joins an `enum`). Depth-limited like the JSON parser.
fn nullable_to_null_type(v: &mut Value, depth: usize) {
    if depth > 128 {
        return;
    }
    match v {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert(
                        "type".to_owned(),
                        Value::Array(vec![Value::String(t), Value::from("null")]),
                    );
                }
                if let Some(Value::Array(e)) = map.get_mut("enum") {
                    if !e.contains(&Value::Null) {
                        e.push(Value::Null);
                    }
                }
            }
            for child in map.values_mut() {
                nullable_to_null_type(child, depth.saturating_add(1));
            }
        }
        Value::Array(items) => {
            for child in items {
                nullable_to_null_type(child, depth.saturating_add(1));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The two-operation example used in the docs and the end-to-end test.
    pub fn pets() -> Value {
        json!({
            "openapi": "3.1.0",
            "info": {"title": "Pets", "version": "1"},
            "servers": [{"url": "https://pets.example.com/v1"}],
            "paths": {
                "/pets": {
                    "post": {
                        "parameters": [{"name": "x-request-id", "in": "header", "required": true,
                                        "schema": {"type": "string", "pattern": "^[0-9a-f-]{8,64}$"}}],
                        "requestBody": {"$ref": "#/components/requestBodies/NewPet"}
                    }
                },
                "/pets/{petId}": {
                    "parameters": [{"name": "petId", "in": "path", "required": true,
                                    "schema": {"type": "integer", "minimum": 1}}],
                    "get": {
                        "parameters": [{"$ref": "#/components/parameters/fields"}]
                    }
                },
                "/pets/mine": {"get": {}}
            },
            "components": {
                "parameters": {
                    "fields": {"name": "fields", "in": "query",
                               "schema": {"type": "array", "items": {"type": "string", "enum": ["name", "tag"]}}}
                },
                "requestBodies": {
                    "NewPet": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}}
                },
                "schemas": {
                    "Pet": {"type": "object", "required": ["name"],
                            "properties": {"name": {"type": "string", "minLength": 1},
                                           "tag": {"type": ["string", "null"]},
                                           "age": {"type": "integer", "minimum": 0}}}
                }
            }
        })
    }

    fn head(method: &str, path: &str, extra: &[(&str, &str)], body: bool) -> RequestHead {
        let mut pairs = vec![(":method", method), (":path", path)];
        pairs.extend_from_slice(extra);
        RequestHead::from_pairs(&pairs, !body)
    }

    fn found<'a>(api: &'a Api, h: &RequestHead) -> Found<'a> {
        match api.lookup(h.method(), h.path_only()) {
            Lookup::Found(f) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_paths_are_404_and_unknown_methods_405_with_allow() {
        let api = Api::compile(&pets(), false).unwrap();
        assert!(matches!(api.lookup(b"GET", b"/v1/owners"), Lookup::NoPath));
        assert!(
            matches!(api.lookup(b"GET", b"/pets/1"), Lookup::NoPath),
            "the base path is required"
        );
        match api.lookup(b"DELETE", b"/v1/pets/3") {
            Lookup::NoMethod { allow } => assert_eq!(allow, "GET, HEAD"),
            other => panic!("{other:?}"),
        }
        match api.lookup(b"GET", b"/v1/pets") {
            Lookup::NoMethod { allow } => assert_eq!(allow, "POST"),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(api.lookup(b"HEAD", b"/v1/pets/3"), Lookup::Found(_)),
            "HEAD rides on GET"
        );
    }

    #[test]
    fn concrete_paths_win_over_templates() {
        let api = Api::compile(&pets(), false).unwrap();
        assert_eq!(
            api.templates(),
            vec!["/pets/mine", "/pets", "/pets/{petId}"]
        );
        let h = head("GET", "/v1/pets/mine", &[], false);
        assert!(found(&api, &h).path_params.is_empty());
    }

    #[test]
    fn path_parameters_are_read_as_their_schema_type() {
        let api = Api::compile(&pets(), false).unwrap();
        let h = head("GET", "/v1/pets/42", &[], false);
        assert_eq!(api.check_head(&found(&api, &h), &h), Ok(None));
        for bad in ["/v1/pets/0", "/v1/pets/abc"] {
            let h = head("GET", bad, &[], false);
            let v = api.check_head(&found(&api, &h), &h).unwrap_err();
            assert_eq!(v.rule, Rule::OpenapiParameters);
            assert!(
                v.detail
                    .starts_with("Path parameter \"petId\" does not match its schema"),
                "{}",
                v.detail
            );
        }
    }

    #[test]
    fn query_arrays_collect_every_occurrence() {
        let api = Api::compile(&pets(), false).unwrap();
        let h = head("GET", "/v1/pets/1?fields=name&fields=tag", &[], false);
        assert!(api.check_head(&found(&api, &h), &h).is_ok());
        let h = head("GET", "/v1/pets/1?fields=name&fields=owner", &[], false);
        let v = api.check_head(&found(&api, &h), &h).unwrap_err();
        assert!(
            v.detail.starts_with("Query parameter \"fields\""),
            "{}",
            v.detail
        );
    }

    /// One operation with a parameter of each repeat behaviour.
    fn listing() -> Api {
        let doc = json!({"openapi": "3.1.0", "servers": [{"url": "/v1"}], "paths": {"/pets": {"get": {"parameters": [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
            {"name": "tag", "in": "query", "schema": {"type": "array", "items": {"type": "string", "maxLength": 8}}},
            {"name": "ids", "in": "query", "explode": false,
             "schema": {"type": "array", "items": {"type": "integer"}}},
            {"name": "words", "in": "query", "style": "spaceDelimited",
             "schema": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}}},
            {"name": "x-tenant", "in": "header", "schema": {"type": "string"}},
            {"name": "x-flags", "in": "header", "schema": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}},
            {"name": "session", "in": "cookie", "schema": {"type": "string"}}
        ]}}}});
        Api::compile(&doc, false).unwrap()
    }

    fn check_listing(query: &str, extra: &[(&str, &str)]) -> Result<(), Violation> {
        let api = listing();
        let h = head("GET", &format!("/v1/pets?{query}"), extra, false);
        api.check_head(&found(&api, &h), &h).map(|_| ())
    }

    #[test]
    fn a_single_valued_query_parameter_is_checked_once_and_refused_when_repeated() {
        assert!(check_listing("limit=5", &[]).is_ok());
        let v = check_listing("limit=500", &[]).unwrap_err();
        assert_eq!(
            v.detail,
            "Query parameter \"limit\" does not match its schema (maximum)."
        );
        for polluted in [
            "limit=500&limit=5",
            "limit=5&limit=500",
            "limit=5&limit=5",
            "limit=5&x=1&li%6Dit=500",
        ] {
            let v = check_listing(polluted, &[]).unwrap_err();
            assert_eq!(v.rule, Rule::OpenapiParameters, "{polluted}");
            assert_eq!(
                v.detail,
                "Query parameter \"limit\" is sent 2 times; the API declares a single value.",
                "{polluted}"
            );
            assert_eq!(
                v.problem().body(),
                r#"{"type":"urn:resilience-pack:problem:invalid-parameter","title":"Missing or invalid parameter","status":400,"detail":"Query parameter \"limit\" is sent 2 times; the API declares a single value.","rule":"openapi_parameters","parameter":"limit","in":"query"}"#
            );
        }
    }

    #[test]
    fn an_exploded_query_array_may_repeat_and_every_item_is_checked() {
        assert!(check_listing("tag=a&tag=b&tag=c", &[]).is_ok());
        for bad in ["tag=much-too-long&tag=a", "tag=a&tag=much-too-long"] {
            let v = check_listing(bad, &[]).unwrap_err();
            assert_eq!(
                v.detail, "Query parameter \"tag\" does not match its schema (maxLength).",
                "{bad}"
            );
        }
    }

    #[test]
    fn a_query_array_without_explode_is_one_delimited_value_and_refused_when_repeated() {
        assert!(check_listing("ids=1,2,3", &[]).is_ok());
        assert!(check_listing("ids=1,x", &[]).is_err());
        let v = check_listing("ids=1&ids=2", &[]).unwrap_err();
        assert_eq!(
            v.detail,
            "Query parameter \"ids\" is sent 2 times; the API declares a single value."
        );
        assert!(check_listing("words=red+shoes", &[]).is_ok());
        assert!(check_listing("words=red%20shoes", &[]).is_ok());
        assert!(
            check_listing("words=red&words=shoes", &[]).is_err(),
            "spaceDelimited does not explode unless told"
        );
    }

    #[test]
    fn a_single_valued_header_sent_twice_is_refused_and_a_header_list_may_repeat() {
        assert!(check_listing("", &[("x-tenant", "acme")]).is_ok());
        let v = check_listing("", &[("x-tenant", "acme"), ("x-tenant", "evil")]).unwrap_err();
        assert_eq!(
            v.detail,
            "Header \"x-tenant\" is sent 2 times; the API declares a single value."
        );
        assert!(v.extensions.contains(&("in", json!("header"))));
        assert!(check_listing("", &[("x-flags", "a, b"), ("x-flags", "b")]).is_ok());
        assert!(check_listing("", &[("x-flags", "a,b\t")]).is_ok());
        let v = check_listing("", &[("x-flags", "a"), ("x-flags", "c")]).unwrap_err();
        assert_eq!(
            v.detail,
            "Header \"x-flags\" does not match its schema (enum)."
        );
    }

    #[test]
    fn a_single_valued_cookie_sent_twice_is_refused() {
        assert!(check_listing("", &[("cookie", "session=a; theme=dark")]).is_ok());
        for twice in [
            &[("cookie", "session=a; session=b")][..],
            &[("cookie", "session=a"), ("cookie", "session=b")],
        ] {
            let v = check_listing("", twice).unwrap_err();
            assert_eq!(
                v.detail,
                "Cookie \"session\" is sent 2 times; the API declares a single value."
            );
        }
    }

    #[test]
    fn a_path_parameter_is_one_segment_and_a_list_in_it_is_not_an_integer() {
        let api = Api::compile(&pets(), false).unwrap();
        let h = head("GET", "/v1/pets/1,2", &[], false);
        let f = found(&api, &h);
        assert_eq!(f.path_params, vec![("petId", b"1,2".to_vec())]);
        let v = api.check_head(&f, &h).unwrap_err();
        assert!(
            v.detail
                .starts_with("Path parameter \"petId\" does not match its schema"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn required_headers_media_types_and_bodies_follow_the_operation() {
        let api = Api::compile(&pets(), false).unwrap();
        let h = head(
            "POST",
            "/v1/pets",
            &[("content-type", "application/json")],
            true,
        );
        let v = api.check_head(&found(&api, &h), &h).unwrap_err();
        assert_eq!(v.detail, "Header \"x-request-id\" is required.");

        let h = head(
            "POST",
            "/v1/pets",
            &[("x-request-id", "abcdef12"), ("content-type", "text/plain")],
            true,
        );
        let v = api.check_head(&found(&api, &h), &h).unwrap_err();
        assert_eq!(v.rule, Rule::OpenapiContentType);
        assert_eq!(v.rule.status(), 415);

        let h = head("POST", "/v1/pets", &[("x-request-id", "abcdef12")], false);
        let v = api.check_head(&found(&api, &h), &h).unwrap_err();
        assert_eq!(v.rule, Rule::OpenapiBodyRequired);

        let h = head(
            "POST",
            "/v1/pets",
            &[
                ("x-request-id", "abcdef12"),
                ("content-type", "application/json; charset=utf-8"),
            ],
            true,
        );
        let schema = api
            .check_head(&found(&api, &h), &h)
            .unwrap()
            .expect("a JSON body schema");
        assert!(api
            .check_body(schema, br#"{"name": "rex", "tag": null}"#)
            .is_ok());
        let v = api
            .check_body(schema, br#"{"name": "", "age": 3}"#)
            .unwrap_err();
        assert_eq!(v.rule, Rule::OpenapiRequestBody);
        assert!(
            v.extensions.contains(&("instance_path", json!("/name"))),
            "{v:?}"
        );
        let v = api.check_body(schema, b"{").unwrap_err();
        assert_eq!(v.rule, Rule::JsonBody);
    }

    #[test]
    fn openapi_3_0_nullable_means_or_null_under_draft_4() {
        let doc = json!({
            "openapi": "3.0.3",
            "paths": {"/x": {"post": {"requestBody": {"content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"n": {"type": "integer", "nullable": true, "minimum": 0, "exclusiveMinimum": true}}
            }}}}}}}
        });
        let api = Api::compile(&doc, false).unwrap();
        let h = head("POST", "/x", &[("content-type", "application/json")], true);
        let schema = api.check_head(&found(&api, &h), &h).unwrap().unwrap();
        assert!(api.check_body(schema, br#"{"n": null}"#).is_ok());
        assert!(api.check_body(schema, br#"{"n": 1}"#).is_ok());
        assert!(
            api.check_body(schema, br#"{"n": 0}"#).is_err(),
            "draft-4 boolean exclusiveMinimum"
        );
    }

    #[test]
    fn documents_the_validator_cannot_honour_are_refused_with_a_pointer() {
        let e = Api::compile(&json!({"openapi": "2.0"}), false).unwrap_err();
        assert_eq!(e.pointer, "/openapi");
        let e = Api::compile(
            &json!({"openapi": "3.1.0", "paths": {"/a/{id}": {"get": {"parameters": [{"name": "other", "in": "path", "required": true}]}}}}),
            false,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/paths/~1a~1{id}/get/parameters/0");
        let e = Api::compile(
            &json!({"openapi": "3.1.0", "paths": {"/a": {"get": {"parameters": [{"$ref": "#/components/parameters/nope"}]}}}}),
            false,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/paths/~1a/get/parameters/0/$ref");
        let e = Api::compile(
            &json!({"openapi": "3.1.0", "paths": {"/a": {"get": {"parameters": [{"name": "n", "in": "query", "schema": {"type": "integer", "minimum": "x"}}]}}}}),
            false,
        )
        .unwrap_err();
        assert_eq!(
            e.pointer, "/paths/~1a/get/parameters/0/schema/minimum",
            "{e:?}"
        );
        let e =
            Api::compile(&json!({"openapi": "3.1.0", "paths": {"/a/{x": {}}}), false).unwrap_err();
        assert!(e.message.contains("without its"), "{e:?}");
    }

    #[test]
    fn partial_segment_templates_and_encoded_values_work() {
        let doc = json!({"openapi": "3.1.0", "paths": {"/files/{name}.json": {"get": {"parameters": [
            {"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z ]+$"}}]}}}});
        let api = Api::compile(&doc, false).unwrap();
        let h = head("GET", "/files/my%20file.json", &[], false);
        let f = found(&api, &h);
        assert_eq!(f.path_params, vec![("name", b"my file".to_vec())]);
        assert!(api.check_head(&f, &h).is_ok());
        assert!(matches!(
            api.lookup(b"GET", b"/files/.json"),
            Lookup::NoPath
        ));
    }

    #[test]
    fn cookies_are_parameters_too() {
        let doc = json!({"openapi": "3.1.0", "paths": {"/a": {"get": {"parameters": [
            {"name": "session", "in": "cookie", "required": true, "schema": {"type": "string", "minLength": 4}}]}}}});
        let api = Api::compile(&doc, false).unwrap();
        let h = head("GET", "/a", &[("cookie", "x=1; session=abcd")], false);
        assert!(api.check_head(&found(&api, &h), &h).is_ok());
        let h = head("GET", "/a", &[("cookie", "session=ab")], false);
        assert!(api.check_head(&found(&api, &h), &h).is_err());
        let h = head("GET", "/a", &[], false);
        assert!(api.check_head(&found(&api, &h), &h).is_err());
    }
}
