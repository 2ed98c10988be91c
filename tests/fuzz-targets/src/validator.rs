//! The request validator's rules on whole requests ([`request_validator::verdict::verdict`]):
//! methods, URL and header limits, required headers and their patterns, query parameters, media
//! types, deadlines, gRPC methods and framing, body size, JSON well-formedness, JSON Schema and
//! OpenAPI operations, under the shipped configurations and one that turns on every rule.
//!
//! The input is a request in the text form of [`crate::request`]. Properties, for any request:
//! - no panic;
//! - a rejection names a rule: its name is one of the validator's rules, the problem body is
//!   JSON whose `rule` is that name and whose `status` is the rule's, the detail is bounded;
//! - the body's chunking does not change whether a request is admitted: the proxy may hand the
//!   same body over in any chunks, and the gRPC message reader and the size count must read the
//!   same stream the same way;
//! - the validator agrees with the schema: on the `schema` route of [`EVERY_RULE`], a JSON body
//!   that JSON Schema (boon, called directly with the route's draft and format assertion) finds
//!   valid is never refused for `json_schema`, and one it finds invalid, sent as JSON, is never
//!   admitted.

use request_validator::config::FilterConfig;
use request_validator::rules::media::{essence, is_json};
use request_validator::rules::{Rule, Violation, MAX_DETAIL};
use request_validator::verdict::{verdict, Verdict};
use serde_json::Value;

use crate::request::{self, Request};

/// A configuration that turns every per-request rule on: the route a request takes is chosen by
/// its path, so the fuzzer reaches each group by mutating one.
pub const EVERY_RULE: &str = r##"{
  "health_checks": {"paths": ["/healthz"], "headers": [{"name": "user-agent", "prefix": "kube-probe/"}]},
  "allowed_methods": ["GET", "HEAD", "POST", "PUT"],
  "max_path_bytes": 256,
  "max_header_count": 24,
  "max_header_bytes": 2048,
  "required_headers": [
    {"name": "x-tenant", "required": false, "pattern": "^[a-z][a-z0-9-]{0,15}$"},
    {"name": "x-mode", "required": false, "one_of": ["a", "b"]}
  ],
  "query_params": [
    {"name": "limit", "integer": {"min": 1, "max": 100}},
    {"name": "q", "pattern": "^[a-z0-9 ]{0,32}$"}
  ],
  "content_types": ["application/json", "application/*+json", "application/grpc", "text/plain"],
  "max_body_bytes": 512,
  "min_remaining_deadline": "20ms",
  "deadline_header": "x-deadline-ms",
  "routes": [
    {"name": "off", "match": {"route_name": "off"}, "mode": "disabled"},
    {"name": "dry", "match": {"prefix": "/dry/"}, "mode": "dry_run", "json_body": true},
    {"name": "length", "match": {"prefix": "/upload"}, "require_content_length": true, "json_body": true},
    {"name": "schema", "match": {"prefix": "/schema"}, "json_schema": {
      "type": "object",
      "required": ["name"],
      "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 16, "pattern": "^[a-z]+$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4, "uniqueItems": true},
        "kind": {"enum": ["cat", "dog"]},
        "when": {"type": "string", "format": "date-time"}
      },
      "additionalProperties": false
    }, "assert_formats": true},
    {"name": "draft7", "match": {"prefix": "/draft7"}, "json_schema_draft": "draft-07", "json_schema": {
      "definitions": {"n": {"type": "number", "multipleOf": 0.5}},
      "type": "array", "items": {"$ref": "#/definitions/n"}
    }},
    {"name": "grpc", "match": {"prefix": "/pkg."}, "grpc_methods": ["/pkg.Svc/*", "/pkg.Other/Get"],
     "require_grpc_timeout": true, "grpc_framing": true, "max_body_bytes": 64},
    {"name": "api", "match": {"prefix": "/v1/"}, "openapi": {
      "openapi": "3.1.0",
      "info": {"title": "t", "version": "1"},
      "servers": [{"url": "https://x.example/v1"}],
      "paths": {
        "/pets": {
          "get": {"parameters": [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            {"name": "tag", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
            {"name": "ids", "in": "query", "style": "pipeDelimited", "explode": false,
             "schema": {"type": "array", "items": {"type": "integer"}}}
          ]},
          "post": {
            "parameters": [{"name": "idempotency-key", "in": "header", "required": true,
                            "schema": {"type": "string", "minLength": 8}}],
            "requestBody": {"required": true, "content": {
              "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}},
              "text/plain": {}
            }}
          }
        },
        "/pets/{id}": {
          "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
          "get": {"parameters": [{"name": "session", "in": "cookie", "schema": {"type": "string", "maxLength": 8}}]},
          "delete": {}
        },
        "/pets/{id}/photo.{ext}": {
          "put": {"parameters": [
            {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
            {"name": "ext", "in": "path", "required": true, "schema": {"enum": ["png", "jpg"]}},
            {"name": "x-scale", "in": "header", "schema": {"type": "array", "items": {"type": "number"}}}
          ]}
        }
      },
      "components": {"schemas": {"Pet": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"}, "age": {"type": ["integer", "null"]}}
      }}}
    }}
  ]
}"##;

thread_local! {
    static CONFIGS: Vec<FilterConfig> = [
        EVERY_RULE.as_bytes(),
        include_bytes!("../../../fuzz/corpus/config_validator/request-validator-request-validator.json"),
        include_bytes!("../../../fuzz/corpus/config_validator/request-validator-openapi-request-validator.json"),
        include_bytes!("../../../fuzz/corpus/config_validator/examples-istio-request-validator-request-validator.json"),
    ]
    .iter()
    .map(|json| request_validator::config::parse(json).unwrap())
    .collect();
}

/// The `schema` route's schema, compiled by boon on its own: the oracle.
struct Oracle {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

fn oracle() -> Oracle {
    let config: Value = serde_json::from_str(EVERY_RULE).unwrap();
    let routes = config["routes"].as_array().unwrap();
    let route = routes.iter().find(|r| r["name"] == "schema").unwrap();
    let url = "urn:fuzz:every-rule:schema";
    let mut compiler = boon::Compiler::new();
    compiler.set_default_draft(boon::Draft::V2020_12);
    compiler.enable_format_assertions();
    compiler
        .add_resource(url, route["json_schema"].clone())
        .unwrap();
    let mut schemas = boon::Schemas::new();
    let index = compiler.compile(url, &mut schemas).unwrap();
    Oracle { schemas, index }
}

thread_local! {
    static ORACLE: Oracle = oracle();
}

/// Whether `req` takes the `schema` route of [`EVERY_RULE`] with a complete JSON body; if so,
/// what boon says of that body.
fn schema_says(req: &Request) -> Option<bool> {
    let path = std::str::from_utf8(req.head.path()).ok()?;
    if req.head.end_of_stream
        || !path.starts_with("/schema")
        || req.route_name.as_deref() == Some("off")
    {
        return None;
    }
    let body: Value = serde_json::from_slice(&req.body).ok()?;
    Some(ORACLE.with(|o| o.schemas.validate(&body, o.index).is_ok()))
}

fn check_schema_agreement(req: &Request, verdict: &Verdict) {
    let Some(valid) = schema_says(req) else {
        return;
    };
    if valid {
        if let Verdict::Rejected(v) = verdict {
            assert_ne!(
                v.rule,
                Rule::JsonSchema,
                "a body the schema finds valid is refused: {v:?}"
            );
        }
    } else {
        let sent_as_json = req
            .head
            .get("content-type")
            .and_then(essence)
            .is_some_and(|e| is_json(&e));
        assert!(
            !(sent_as_json && *verdict == Verdict::Admitted),
            "a JSON body the schema finds invalid is admitted"
        );
    }
}

/// A rejection names one of the rules, and its problem says so.
pub fn check_violation(v: &Violation) {
    assert!(Rule::ALL.contains(&v.rule));
    assert!(!v.rule.name().is_empty());
    assert!(v.detail.len() <= MAX_DETAIL, "unbounded detail: {v:?}");
    let problem = v.problem();
    assert_eq!(problem.status, v.rule.status());
    let body: Value = serde_json::from_str(&problem.body()).unwrap();
    assert_eq!(body["rule"], v.rule.name(), "{body}");
    assert_eq!(body["status"], v.rule.status(), "{body}");
}

fn decide(config: &FilterConfig, req: &Request, chunks: &[&[u8]]) -> Verdict {
    let v = verdict(config, req.route_name.as_deref(), &req.head, chunks);
    if let Verdict::Rejected(violation) = &v {
        check_violation(violation);
    }
    v
}

/// See the module docs.
pub fn validator_request(data: &[u8]) {
    let req = request::parse(data);
    CONFIGS.with(|configs| {
        for (i, config) in configs.iter().enumerate() {
            let as_sent = decide(config, &req, &req.chunks());
            if i == 0 {
                check_schema_agreement(&req, &as_sent);
            }
            if !req.head.end_of_stream {
                // The same body whole, and byte by byte (bounded: the fuzzer's inputs are small).
                let whole = decide(config, &req, &[&req.body]);
                assert_eq!(
                    as_sent.admits(),
                    whole.admits(),
                    "chunking changed the verdict: {as_sent:?} / {whole:?}"
                );
                if req.body.len() <= 256 {
                    let bytes: Vec<&[u8]> = req.body.chunks(1).collect();
                    let split = decide(config, &req, &bytes);
                    assert_eq!(
                        whole.admits(),
                        split.admits(),
                        "chunking changed the verdict: {whole:?} / {split:?}"
                    );
                }
            }
        }
    });
}
