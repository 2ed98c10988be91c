//! The validator's rules as pure functions of a request: no proxy-wasm here, so every rule is
//! tested natively and deterministically.
//!
//! # Why rules of their own
//!
//! Each rule is a claim about what a well-formed request for a route looks like, and each has one
//! correct answer when a request breaks it: 405 for a method, 414 for a URL, 431 for headers, 415
//! for a media type, 413 for a body, 400 for a syntax error, 422 for a schema violation, 404 for a
//! path the API does not have. A rule is named by its configuration field ([`Rule::name`]); that
//! name appears in the decision header, in the problem body (`rule`) and in the stats
//! (`rejected_<rule>`), so one word connects what an operator configured with what a client saw.
//!
//! # Order of cost
//!
//! [`head::check`] runs the rules that need only the request head, cheapest first (method, URL,
//! header counts, required headers, query, OpenAPI operation, media type, declared length); the
//! body rules ([`body`]) run only for routes that need the body, once it has arrived.
//!
//! Nothing a client sent is echoed unbounded: details name the rule and the configured limit, and
//! anything quoted from the request (an instance path, a parameter name) goes through
//! [`resilience_core::problem::bounded`].

pub mod body;
pub mod deadline;
pub mod grpc;
pub mod head;
pub mod health;
pub mod json;
pub mod media;
pub mod openapi;
pub mod pattern;
pub mod query;

use resilience_core::grpc::Code;
use resilience_host::stream::HeaderMap;
use serde_json::Value;

/// Longest excerpt of request-derived text (paths, names) quoted in a problem body.
pub const MAX_QUOTED: usize = 128;
/// Longest `detail` in a problem body.
pub const MAX_DETAIL: usize = 256;

/// Every rule the validator enforces, named by its configuration field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    AllowedMethods,
    MaxPathBytes,
    MaxHeaderCount,
    MaxHeaderBytes,
    RequiredHeaders,
    QueryParams,
    ContentTypes,
    RequireContentLength,
    MaxBodyBytes,
    JsonBody,
    JsonSchema,
    OpenapiPath,
    OpenapiMethod,
    OpenapiParameters,
    OpenapiContentType,
    OpenapiRequestBody,
    OpenapiBodyRequired,
    MinRemainingDeadline,
    ObservedLatency,
    MaxConcurrentRequests,
    GrpcMethods,
    RequireGrpcTimeout,
    GrpcFraming,
}

impl Rule {
    /// Every rule, for defining stats up front.
    pub const ALL: [Rule; 23] = [
        Rule::AllowedMethods,
        Rule::MaxPathBytes,
        Rule::MaxHeaderCount,
        Rule::MaxHeaderBytes,
        Rule::RequiredHeaders,
        Rule::QueryParams,
        Rule::ContentTypes,
        Rule::RequireContentLength,
        Rule::MaxBodyBytes,
        Rule::JsonBody,
        Rule::JsonSchema,
        Rule::OpenapiPath,
        Rule::OpenapiMethod,
        Rule::OpenapiParameters,
        Rule::OpenapiContentType,
        Rule::OpenapiRequestBody,
        Rule::OpenapiBodyRequired,
        Rule::MinRemainingDeadline,
        Rule::ObservedLatency,
        Rule::MaxConcurrentRequests,
        Rule::GrpcMethods,
        Rule::RequireGrpcTimeout,
        Rule::GrpcFraming,
    ];

    /// The stable name: the configuration field, the decision header's `reason`, the stat suffix.
    pub fn name(self) -> &'static str {
        match self {
            Rule::AllowedMethods => "allowed_methods",
            Rule::MaxPathBytes => "max_path_bytes",
            Rule::MaxHeaderCount => "max_header_count",
            Rule::MaxHeaderBytes => "max_header_bytes",
            Rule::RequiredHeaders => "required_headers",
            Rule::QueryParams => "query_params",
            Rule::ContentTypes => "content_types",
            Rule::RequireContentLength => "require_content_length",
            Rule::MaxBodyBytes => "max_body_bytes",
            Rule::JsonBody => "json_body",
            Rule::JsonSchema => "json_schema",
            Rule::OpenapiPath => "openapi_path",
            Rule::OpenapiMethod => "openapi_method",
            Rule::OpenapiParameters => "openapi_parameters",
            Rule::OpenapiContentType => "openapi_content_type",
            Rule::OpenapiRequestBody => "openapi_request_body",
            Rule::OpenapiBodyRequired => "openapi_body_required",
            Rule::MinRemainingDeadline => "min_remaining_deadline",
            Rule::ObservedLatency => "deadline_from_observed_latency",
            Rule::MaxConcurrentRequests => "max_concurrent_requests",
            Rule::GrpcMethods => "grpc_methods",
            Rule::RequireGrpcTimeout => "require_grpc_timeout",
            Rule::GrpcFraming => "grpc_framing",
        }
    }

    /// The HTTP status a rejection carries (RFC 9110 / RFC 6585 semantics).
    pub fn status(self) -> u16 {
        match self {
            Rule::AllowedMethods | Rule::OpenapiMethod => 405,
            Rule::MaxPathBytes => 414,
            Rule::MaxHeaderCount | Rule::MaxHeaderBytes => 431,
            Rule::RequiredHeaders
            | Rule::QueryParams
            | Rule::OpenapiParameters
            | Rule::OpenapiBodyRequired
            | Rule::RequireGrpcTimeout
            | Rule::GrpcFraming => 400,
            Rule::ContentTypes | Rule::OpenapiContentType => 415,
            Rule::RequireContentLength => 411,
            Rule::MaxBodyBytes => 413,
            // RFC 9110 §15.5.21: 422 is for content whose syntax is correct; broken JSON is 400.
            Rule::JsonBody => 400,
            Rule::JsonSchema | Rule::OpenapiRequestBody => 422,
            Rule::OpenapiPath | Rule::GrpcMethods => 404,
            Rule::MinRemainingDeadline | Rule::ObservedLatency => 504,
            Rule::MaxConcurrentRequests => 503,
        }
    }

    /// The problem slug (`type` is `urn:resilience-pack:problem:<kind>`): one per kind of problem,
    /// shared by rules that mean the same thing to a client.
    pub fn kind(self) -> &'static str {
        match self {
            Rule::AllowedMethods | Rule::OpenapiMethod => "method-not-allowed",
            Rule::MaxPathBytes => "uri-too-long",
            Rule::MaxHeaderCount => "too-many-headers",
            Rule::MaxHeaderBytes => "headers-too-large",
            Rule::RequiredHeaders => "invalid-header",
            Rule::QueryParams => "invalid-query",
            Rule::OpenapiParameters => "invalid-parameter",
            Rule::ContentTypes | Rule::OpenapiContentType => "unsupported-media-type",
            Rule::RequireContentLength => "length-required",
            Rule::MaxBodyBytes => "body-too-large",
            Rule::JsonBody => "malformed-json",
            Rule::JsonSchema | Rule::OpenapiRequestBody => "schema-violation",
            Rule::OpenapiPath => "unknown-path",
            Rule::OpenapiBodyRequired => "missing-body",
            Rule::MinRemainingDeadline | Rule::ObservedLatency => "deadline-too-short",
            Rule::MaxConcurrentRequests => "overloaded",
            Rule::GrpcMethods => "unknown-grpc-method",
            Rule::RequireGrpcTimeout => "missing-deadline",
            Rule::GrpcFraming => "malformed-grpc-message",
        }
    }

    /// The gRPC status a rejection of a gRPC call carries: what the client's library should make
    /// of it. Malformed → `INVALID_ARGUMENT`, too large → `RESOURCE_EXHAUSTED`, a method or path
    /// the API does not have → `UNIMPLEMENTED`, a deadline too short → `DEADLINE_EXCEEDED` (which
    /// no standard retry policy retries), shed → `UNAVAILABLE` (retried, after the pushback).
    pub fn grpc_code(self) -> Code {
        match self {
            Rule::AllowedMethods | Rule::OpenapiMethod | Rule::OpenapiPath | Rule::GrpcMethods => {
                Code::Unimplemented
            }
            Rule::MaxHeaderCount | Rule::MaxHeaderBytes | Rule::MaxBodyBytes => {
                Code::ResourceExhausted
            }
            Rule::MaxPathBytes
            | Rule::RequiredHeaders
            | Rule::QueryParams
            | Rule::OpenapiParameters
            | Rule::OpenapiBodyRequired
            | Rule::ContentTypes
            | Rule::OpenapiContentType
            | Rule::RequireContentLength
            | Rule::JsonBody
            | Rule::JsonSchema
            | Rule::OpenapiRequestBody
            | Rule::RequireGrpcTimeout
            | Rule::GrpcFraming => Code::InvalidArgument,
            Rule::MinRemainingDeadline | Rule::ObservedLatency => Code::DeadlineExceeded,
            Rule::MaxConcurrentRequests => Code::Unavailable,
        }
    }

    /// The problem `title`: fixed per kind.
    pub fn title(self) -> &'static str {
        match self {
            Rule::AllowedMethods | Rule::OpenapiMethod => "Method not allowed",
            Rule::MaxPathBytes => "URI too long",
            Rule::MaxHeaderCount => "Too many request headers",
            Rule::MaxHeaderBytes => "Request headers too large",
            Rule::RequiredHeaders => "Missing or invalid request header",
            Rule::QueryParams => "Missing or invalid query parameter",
            Rule::OpenapiParameters => "Missing or invalid parameter",
            Rule::ContentTypes | Rule::OpenapiContentType => "Unsupported media type",
            Rule::RequireContentLength => "Length required",
            Rule::MaxBodyBytes => "Request body too large",
            Rule::JsonBody => "Malformed JSON body",
            Rule::JsonSchema | Rule::OpenapiRequestBody => "Request body does not match its schema",
            Rule::OpenapiPath => "Unknown path",
            Rule::OpenapiBodyRequired => "Request body required",
            Rule::MinRemainingDeadline | Rule::ObservedLatency => "Deadline too short",
            Rule::MaxConcurrentRequests => "Too many requests in flight",
            Rule::GrpcMethods => "Unknown gRPC method",
            Rule::RequireGrpcTimeout => "gRPC deadline required",
            Rule::GrpcFraming => "Malformed gRPC message",
        }
    }
}

/// A request that breaks a rule: the rule, a short human detail and extension members for the
/// problem body. Details are bounded; extensions hold only bounded or configured values.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub rule: Rule,
    pub detail: String,
    /// Methods for the `allow` header of a 405.
    pub allow: Option<String>,
    pub extensions: Vec<(&'static str, Value)>,
}

impl Violation {
    pub fn new(rule: Rule, detail: impl Into<String>) -> Self {
        Violation {
            rule,
            detail: resilience_core::problem::bounded(&detail.into(), MAX_DETAIL),
            allow: None,
            extensions: Vec::new(),
        }
    }

    pub fn with(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.extensions.push((name, value.into()));
        self
    }

    pub fn with_allow(mut self, allow: String) -> Self {
        self.allow = Some(allow);
        self
    }

    /// The RFC 9457 problem for this violation (status, stable type, `rule` member first).
    pub fn problem(&self) -> resilience_core::problem::Problem {
        let mut p = resilience_core::problem::Problem::new(
            self.rule.status(),
            self.rule.kind(),
            self.rule.title(),
        )
        .with_detail(self.detail.clone())
        .with_extension("rule", self.rule.name());
        for (k, v) in &self.extensions {
            p = p.with_extension(k, v.clone());
        }
        p
    }
}

/// The request head as the proxy hands it over: every header (pseudo-headers such as `:path`
/// included) as raw bytes, names lowercase, in wire order.
#[derive(Clone, Debug, Default)]
pub struct RequestHead {
    pub headers: HeaderMap,
    /// No body follows the head (`end_of_stream` on the headers).
    pub end_of_stream: bool,
}

impl RequestHead {
    /// A head from `(name, value)` text pairs (tests and tools).
    pub fn from_pairs(pairs: &[(&str, &str)], end_of_stream: bool) -> Self {
        let pairs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        RequestHead {
            headers: HeaderMap::from(pairs.as_slice()),
            end_of_stream,
        }
    }

    /// The first value of header `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// Every value of header `name` (lowercase), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| *k == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// `:method`, empty if absent.
    pub fn method(&self) -> &[u8] {
        self.get(":method").unwrap_or_default()
    }

    /// `:path` (query string included), empty if absent.
    pub fn path(&self) -> &[u8] {
        self.get(":path").unwrap_or_default()
    }

    /// `:path` without its query string.
    pub fn path_only(&self) -> &[u8] {
        let p = self.path();
        match p.iter().position(|b| *b == b'?') {
            Some(i) => p.get(..i).unwrap_or(p),
            None => p,
        }
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&[u8]> {
        let p = self.path();
        p.iter()
            .position(|b| *b == b'?')
            .and_then(|i| p.get(i.saturating_add(1)..))
    }

    /// Whether a body follows the head.
    pub fn has_body(&self) -> bool {
        !self.end_of_stream
    }

    /// The declared `content-length`, if present and a plain number.
    pub fn content_length(&self) -> Option<u64> {
        self.get("content-length")
            .and_then(resilience_core::deadline::parse_millis)
    }
}

/// `bytes` as text for a problem detail: lossy, bounded, control characters replaced.
pub fn quote(bytes: &[u8]) -> String {
    let cut = bytes.get(..MAX_QUOTED.min(bytes.len())).unwrap_or(bytes);
    resilience_core::problem::bounded(&String::from_utf8_lossy(cut), MAX_QUOTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_a_distinct_name_and_a_client_error_or_overload_status() {
        let mut names: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Rule::ALL.len());
        for r in Rule::ALL {
            assert!((400..=504).contains(&r.status()), "{r:?}");
            assert!(!r.kind().is_empty() && !r.title().is_empty());
        }
    }

    #[test]
    fn the_problem_names_the_rule_and_carries_extensions_in_order() {
        let v = Violation::new(Rule::MaxBodyBytes, "too big").with("limit", 10);
        assert_eq!(
            v.problem().body(),
            r#"{"type":"urn:resilience-pack:problem:body-too-large","title":"Request body too large","status":413,"detail":"too big","rule":"max_body_bytes","limit":10}"#
        );
    }

    #[test]
    fn details_and_quotes_are_bounded() {
        let v = Violation::new(Rule::JsonBody, "x".repeat(10_000));
        assert!(v.detail.len() <= MAX_DETAIL);
        assert!(quote(&vec![b'a'; 10_000]).len() <= MAX_QUOTED);
        assert_eq!(quote(b"a\r\nb"), "a\u{FFFD}\u{FFFD}b");
    }

    #[test]
    fn the_head_splits_path_and_query_and_reads_the_declared_length() {
        let h = RequestHead::from_pairs(
            &[
                (":path", "/a/b?x=1&y"),
                ("content-length", "12"),
                ("x", "1"),
                ("x", "2"),
            ],
            false,
        );
        assert_eq!(h.path_only(), b"/a/b");
        assert_eq!(h.query(), Some(&b"x=1&y"[..]));
        assert_eq!(h.content_length(), Some(12));
        assert_eq!(h.all("x").count(), 2);
        assert!(h.has_body());
        let h = RequestHead::from_pairs(&[(":path", "/a"), ("content-length", "-1")], true);
        assert_eq!(h.query(), None);
        assert_eq!(h.content_length(), None);
        assert_eq!(h.method(), b"");
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
#[allow(clippy::unwrap_used)]
mod properties {
    //! Every rule reads hostile bytes; none may panic (a panic traps the worker's VM).

    use std::rc::Rc;

    use proptest::prelude::*;
    use serde_json::json;

    use super::body::{BodyCheck, BodyPlan};
    use super::grpc::{GrpcRules, MethodPattern};
    use super::head::{self, HeadRules, HeaderRule, JsonSchemaRule};
    use super::json::{JsonDraft, SchemaSet};
    use super::media::{essence, MediaRange};
    use super::openapi::{Api, Lookup};
    use super::pattern::Pattern;
    use super::query::{self, IntRange, QueryRule};
    use super::{deadline, RequestHead};

    fn rules() -> HeadRules {
        HeadRules {
            allowed_methods: Some(vec!["GET".to_owned(), "POST".to_owned()]),
            allow: "GET, POST".to_owned(),
            max_path_bytes: Some(64),
            max_header_count: Some(8),
            max_header_bytes: Some(256),
            required_headers: vec![HeaderRule {
                name: "x-k".to_owned(),
                required: false,
                value: None,
                one_of: vec![],
                pattern: Some(Pattern::new("^[a-z]+$").unwrap()),
            }],
            query_params: vec![QueryRule {
                name: "n".to_owned(),
                required: false,
                pattern: None,
                integer: Some(IntRange {
                    min: Some(-5),
                    max: Some(5),
                }),
            }],
            content_types: Some(vec![MediaRange::parse("application/*+json").unwrap()]),
            require_content_length: false,
            max_body_bytes: Some(100),
            json_body: true,
            json_schema: None,
            openapi: None,
            openapi_unknown: head::Unknown::Reject,
            grpc: GrpcRules {
                methods: Some(vec![MethodPattern::parse("/a.B/*").unwrap()]),
                require_timeout: true,
                framing: true,
            },
        }
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..80)
    }

    proptest! {
        #[test]
        fn head_rules_never_panic_on_arbitrary_heads(
            method in bytes(),
            path in bytes(),
            headers in proptest::collection::vec((bytes(), bytes()), 0..12),
            eos in any::<bool>(),
        ) {
            let mut all = vec![(b":method".to_vec(), method), (b":path".to_vec(), path)];
            all.extend(headers);
            let head = RequestHead { headers: all.into(), end_of_stream: eos };
            let _ = head::check(&rules(), &head);
            let _ = deadline::remaining_ms(&head, Some("x-k"));
        }

        #[test]
        fn grpc_rules_never_panic_on_arbitrary_calls(
            path in prop_oneof![bytes(), "/a\\.B/[A-Za-z_]{0,4}".prop_map(String::into_bytes)],
            timeout in prop_oneof![bytes(), "[0-9]{1,9}[HMSmun]".prop_map(String::into_bytes)],
            encoding in bytes(),
            body in bytes(),
            chunk in 1usize..8,
        ) {
            let head = RequestHead {
                headers: vec![
                    (b":method".to_vec(), b"POST".to_vec()),
                    (b":path".to_vec(), path),
                    (b"content-type".to_vec(), b"application/grpc".to_vec()),
                    (b"grpc-timeout".to_vec(), timeout),
                    (b"grpc-encoding".to_vec(), encoding),
                ]
                .into(),
                end_of_stream: false,
            };
            let rules = HeadRules {
                max_body_bytes: Some(100),
                grpc: rules().grpc,
                ..HeadRules::default()
            };
            if let Ok(mut plan) = head::check(&rules, &head) {
                for part in body.chunks(chunk) {
                    let r = plan.check_frames(part.len(), |at, n| part.get(at..at + n).map(<[u8]>::to_vec));
                    if let Err(v) = r {
                        prop_assert!(v.detail.len() <= super::MAX_DETAIL);
                        break;
                    }
                }
                let _ = plan.check_frames_complete();
            }
        }

        #[test]
        fn query_and_media_parsing_never_panic(q in bytes(), ct in bytes()) {
            let _ = query::pairs(&q).count();
            let _ = query::check(&rules().query_params, Some(&q));
            let _ = essence(&ct);
        }

        #[test]
        fn json_bodies_never_panic_and_violations_stay_bounded(body in bytes(), text in ".{0,64}") {
            let mut set = SchemaSet::new(
                "s.json",
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}, "additionalProperties": {"type": "integer"}}),
                JsonDraft::V2020_12,
                false,
            )
            .unwrap();
            let root = set.compile("").unwrap();
            let plan = BodyPlan {
                max_bytes: Some(1_000),
                check: Some(BodyCheck::JsonSchema(Rc::new(JsonSchemaRule { set, root }))),
                frames: None,
            };
            for candidate in [body, serde_json::to_vec(&json!({ "a": text.clone(), text.clone(): text })).unwrap()] {
                if let Err(v) = plan.check_complete(&candidate) {
                    prop_assert!(v.detail.len() <= super::MAX_DETAIL);
                    prop_assert!(v.problem().body().len() < 1_200);
                }
            }
        }

        #[test]
        fn openapi_lookups_never_panic(method in bytes(), path in bytes()) {
            let api = Api::compile(
                &json!({"openapi": "3.1.0", "servers": [{"url": "/v1"}], "paths": {
                    "/a/{id}": {"get": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}]}},
                    "/b/{x}.json": {"post": {}}
                }}),
                false,
            )
            .unwrap();
            if let Lookup::Found(f) = api.lookup(&method, &path) {
                let head = RequestHead { headers: vec![(b":path".to_vec(), path.clone())].into(), end_of_stream: true };
                let _ = api.check_head(&f, &head);
            }
        }

        #[test]
        fn openapi_parameter_checks_never_panic_on_repeated_hostile_values(
            q in bytes(),
            values in proptest::collection::vec(bytes(), 0..6),
        ) {
            let api = Api::compile(
                &json!({"openapi": "3.1.0", "paths": {"/a": {"get": {"parameters": [
                    {"name": "n", "in": "query", "schema": {"type": "integer", "maximum": 5}},
                    {"name": "l", "in": "query", "style": "pipeDelimited", "schema": {"type": "array", "items": {"type": "number"}}},
                    {"name": "e", "in": "query", "schema": {"type": "array", "items": {"type": "boolean"}}},
                    {"name": "h", "in": "header", "schema": {"type": "array", "items": {"type": "integer"}}},
                    {"name": "s", "in": "header", "schema": {"type": "string"}},
                    {"name": "c", "in": "cookie", "schema": {"type": "string"}}
                ]}}}}),
                false,
            )
            .unwrap();
            let mut path = b"/a?".to_vec();
            path.extend_from_slice(&q);
            let mut headers = vec![(b":path".to_vec(), path)];
            for (i, v) in values.into_iter().enumerate() {
                let name = [&b"h"[..], b"s", b"cookie"][i % 3].to_vec();
                headers.push((name, v));
            }
            let head = RequestHead { headers: headers.into(), end_of_stream: true };
            if let Lookup::Found(f) = api.lookup(b"GET", head.path_only()) {
                if let Err(v) = api.check_head(&f, &head) {
                    prop_assert!(v.detail.len() <= super::MAX_DETAIL);
                }
            }
        }
    }
}
