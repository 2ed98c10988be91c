//! The rules that need only the request head, checked cheapest first.
//!
//! Order: method (405), URL length (414), header count and size (431), required headers (400),
//! query parameters (400), the gRPC method and deadline (for gRPC calls), the OpenAPI operation (404, 405, 400, 415), the media type (415), a
//! declared length when one is required (411) and the declared length against `max_body_bytes`
//! (413, before any body byte arrives). The first broken rule decides. What passes comes back as
//! a [`BodyPlan`]: how many body bytes to allow, and whether the body must be buffered and checked.

use std::rc::Rc;

use super::body::{BodyCheck, BodyPlan};
use super::grpc::{self, GrpcRules};
use super::json::{SchemaRef, SchemaSet};
use super::media::{essence, is_json, MediaRange};
use super::openapi::{no_method_violation, no_path_violation, Api, Lookup};
use super::pattern::Pattern;
use super::query::{self, QueryRule};
use super::{quote, RequestHead, Rule, Violation};
use resilience_core::problem::bounded;

/// One required header and what its value must be.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderRule {
    /// Lowercase name.
    pub name: String,
    /// `false`: the header may be absent, but when present its value must satisfy the rule.
    pub required: bool,
    pub value: Option<Vec<u8>>,
    pub one_of: Vec<Vec<u8>>,
    pub pattern: Option<Pattern>,
}

impl HeaderRule {
    fn check(&self, head: &RequestHead) -> Result<(), Violation> {
        let mut seen = false;
        for v in head.all(&self.name) {
            seen = true;
            let ok = self.value.as_deref().is_none_or(|want| v == want)
                && (self.one_of.is_empty() || self.one_of.iter().any(|w| v == w.as_slice()))
                && self.pattern.as_ref().is_none_or(|p| p.is_match(v));
            if !ok {
                return Err(self.violation("has a value that is not allowed"));
            }
        }
        if self.required && !seen {
            return Err(self.violation("is required"));
        }
        Ok(())
    }

    fn violation(&self, what: &str) -> Violation {
        let name = bounded(&self.name, super::MAX_QUOTED);
        Violation::new(Rule::RequiredHeaders, format!("Header \"{name}\" {what}."))
            .with("header", name)
    }
}

/// A compiled `json_schema`: its set and root.
#[derive(Debug)]
pub struct JsonSchemaRule {
    pub set: SchemaSet,
    pub root: SchemaRef,
}

/// What OpenAPI does with requests for operations the document does not define.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Unknown {
    /// 404 for an unknown path, 405 for an unknown method.
    #[default]
    Reject,
    /// Let them through unchecked.
    Pass,
}

/// Every head rule of one route.
#[derive(Clone, Debug, Default)]
pub struct HeadRules {
    /// Uppercase methods; `None` allows every method.
    pub allowed_methods: Option<Vec<String>>,
    /// `allowed_methods` joined for the `allow` header.
    pub allow: String,
    pub max_path_bytes: Option<u32>,
    pub max_header_count: Option<u32>,
    pub max_header_bytes: Option<u32>,
    pub required_headers: Vec<HeaderRule>,
    pub query_params: Vec<QueryRule>,
    pub content_types: Option<Vec<MediaRange>>,
    pub require_content_length: bool,
    /// Most body bytes accepted (declared or streamed); also the most ever buffered.
    pub max_body_bytes: Option<u64>,
    /// Check that JSON bodies are well-formed.
    pub json_body: bool,
    pub json_schema: Option<Rc<JsonSchemaRule>>,
    pub openapi: Option<Rc<Api>>,
    pub openapi_unknown: Unknown,
    pub grpc: GrpcRules,
}

impl HeadRules {
    /// Whether any rule here may need the body buffered (for the docs and stats).
    pub fn may_buffer(&self) -> bool {
        self.json_body || self.json_schema.is_some() || self.openapi.is_some()
    }
}

/// Checks the head against `rules`; on success, how the body is to be handled.
pub fn check(rules: &HeadRules, head: &RequestHead) -> Result<BodyPlan, Violation> {
    if let Some(methods) = &rules.allowed_methods {
        let m = head.method();
        if !methods.iter().any(|a| a.as_bytes() == m) {
            return Err(Violation::new(
                Rule::AllowedMethods,
                format!(
                    "This route accepts {}, not {}.",
                    rules.allow,
                    bounded(&String::from_utf8_lossy(m), 16)
                ),
            )
            .with_allow(rules.allow.clone()));
        }
    }
    if let Some(max) = rules.max_path_bytes {
        let len = head.path().len();
        if len > max as usize {
            return Err(Violation::new(
                Rule::MaxPathBytes,
                format!("The URL is {len} bytes long; this route accepts at most {max}."),
            )
            .with("limit", max));
        }
    }
    if rules.max_header_count.is_some() || rules.max_header_bytes.is_some() {
        let (count, bytes) = head
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(b":"))
            .fold((0u64, 0u64), |(c, b), (k, v)| {
                (
                    c.saturating_add(1),
                    b.saturating_add(k.len() as u64)
                        .saturating_add(v.len() as u64),
                )
            });
        if let Some(max) = rules.max_header_count {
            if count > u64::from(max) {
                return Err(Violation::new(
                    Rule::MaxHeaderCount,
                    format!("The request has {count} headers; this route accepts at most {max}."),
                )
                .with("limit", max));
            }
        }
        if let Some(max) = rules.max_header_bytes {
            if bytes > u64::from(max) {
                return Err(Violation::new(
                    Rule::MaxHeaderBytes,
                    format!(
                        "The request headers take {bytes} bytes; this route accepts at most {max}."
                    ),
                )
                .with("limit", max));
            }
        }
    }
    for rule in &rules.required_headers {
        rule.check(head)?;
    }
    if !rules.query_params.is_empty() {
        query::check(&rules.query_params, head.query())?;
    }
    let mut frames = None;
    if rules.grpc.any() {
        let wire = head
            .get("content-type")
            .and_then(resilience_core::grpc::wire);
        grpc::check_head(&rules.grpc, head, wire)?;
        if head.has_body() {
            frames = grpc::frame_reader(&rules.grpc, head, wire, rules.max_body_bytes);
        }
    }

    let mut plan = BodyPlan {
        max_bytes: rules.max_body_bytes,
        check: None,
        frames,
    };
    let media = if head.has_body() {
        head.get("content-type").and_then(essence)
    } else {
        None
    };

    if let Some(api) = &rules.openapi {
        match api.lookup(head.method(), head.path_only()) {
            Lookup::Found(found) => {
                if let Some(schema) = api.check_head(&found, head)? {
                    plan.check = Some(BodyCheck::Openapi(Rc::clone(api), schema));
                }
            }
            Lookup::NoPath if rules.openapi_unknown == Unknown::Reject => {
                return Err(no_path_violation(head.path_only()));
            }
            Lookup::NoMethod { allow } if rules.openapi_unknown == Unknown::Reject => {
                return Err(no_method_violation(head.method(), allow));
            }
            Lookup::NoPath | Lookup::NoMethod { .. } => {}
        }
    }

    if head.has_body() {
        if let Some(ranges) = &rules.content_types {
            let accepted = media
                .as_deref()
                .is_some_and(|m| ranges.iter().any(|r| r.contains(m)));
            if !accepted {
                let list: Vec<&str> = ranges.iter().map(MediaRange::source).collect();
                let got = head
                    .get("content-type")
                    .map_or_else(|| "a body without a content type".to_owned(), quote);
                return Err(Violation::new(
                    Rule::ContentTypes,
                    format!("This route accepts {}, not {got}.", list.join(", ")),
                )
                .with("accepted", list));
            }
        }
        let declared = head.content_length();
        if rules.require_content_length && declared.is_none() {
            return Err(Violation::new(
                Rule::RequireContentLength,
                "This route needs a content-length for requests with a body.",
            ));
        }
        if let (Some(len), Some(max)) = (declared, rules.max_body_bytes) {
            if len > max {
                return Err(too_large_declared(len, max));
            }
        }
        if plan.check.is_none() && media.as_deref().is_some_and(is_json) {
            if let Some(schema) = &rules.json_schema {
                plan.check = Some(BodyCheck::JsonSchema(Rc::clone(schema)));
            } else if rules.json_body || rules.openapi.is_some() {
                plan.check = Some(BodyCheck::WellFormed);
            }
        }
    }
    Ok(plan)
}

fn too_large_declared(len: u64, max: u64) -> Violation {
    Violation::new(
        Rule::MaxBodyBytes,
        format!("The declared body is {len} bytes; this route accepts at most {max}."),
    )
    .with("limit", max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::json::JsonDraft;
    use serde_json::json;

    fn post(path: &str, extra: &[(&str, &str)]) -> RequestHead {
        let mut pairs = vec![(":method", "POST"), (":path", path)];
        pairs.extend_from_slice(extra);
        RequestHead::from_pairs(&pairs, false)
    }

    fn get(path: &str, extra: &[(&str, &str)]) -> RequestHead {
        let mut pairs = vec![(":method", "GET"), (":path", path)];
        pairs.extend_from_slice(extra);
        RequestHead::from_pairs(&pairs, true)
    }

    fn methods(list: &[&str]) -> HeadRules {
        HeadRules {
            allowed_methods: Some(list.iter().map(|s| (*s).to_owned()).collect()),
            allow: list.join(", "),
            ..HeadRules::default()
        }
    }

    #[test]
    fn no_rules_pass_everything_without_buffering() {
        let plan = check(&HeadRules::default(), &post("/x", &[])).unwrap();
        assert!(!plan.buffers());
        assert_eq!(plan.max_bytes, None);
    }

    #[test]
    fn a_method_outside_the_list_is_405_with_allow() {
        let v = check(&methods(&["GET", "HEAD"]), &post("/x", &[])).unwrap_err();
        assert_eq!(v.rule, Rule::AllowedMethods);
        assert_eq!(v.allow.as_deref(), Some("GET, HEAD"));
        assert_eq!(v.detail, "This route accepts GET, HEAD, not POST.");
        assert!(check(&methods(&["GET", "HEAD"]), &get("/x", &[])).is_ok());
    }

    #[test]
    fn the_whole_url_counts_towards_max_path_bytes() {
        let rules = HeadRules {
            max_path_bytes: Some(10),
            ..HeadRules::default()
        };
        assert!(check(&rules, &get("/abcdefghi", &[])).is_ok());
        let v = check(&rules, &get("/abc?x=12345", &[])).unwrap_err();
        assert_eq!(v.rule, Rule::MaxPathBytes);
        assert_eq!(v.rule.status(), 414);
    }

    #[test]
    fn header_count_and_size_exclude_pseudo_headers() {
        let rules = HeadRules {
            max_header_count: Some(2),
            max_header_bytes: Some(20),
            ..HeadRules::default()
        };
        assert!(check(&rules, &get("/x", &[("a", "1"), ("b", "2")])).is_ok());
        let v = check(&rules, &get("/x", &[("a", "1"), ("b", "2"), ("c", "3")])).unwrap_err();
        assert_eq!(v.rule, Rule::MaxHeaderCount);
        let v = check(&rules, &get("/x", &[("a", &"x".repeat(20))])).unwrap_err();
        assert_eq!(v.rule, Rule::MaxHeaderBytes);
        assert_eq!(v.rule.status(), 431);
    }

    #[test]
    fn required_headers_check_presence_exact_values_lists_and_patterns() {
        let rules = HeadRules {
            required_headers: vec![
                HeaderRule {
                    name: "x-api-key".to_owned(),
                    required: true,
                    value: None,
                    one_of: vec![],
                    pattern: Some(Pattern::new("^[A-Za-z0-9]{8}$").unwrap()),
                },
                HeaderRule {
                    name: "x-tenant".to_owned(),
                    required: false,
                    value: None,
                    one_of: vec![b"a".to_vec(), b"b".to_vec()],
                    pattern: None,
                },
            ],
            ..HeadRules::default()
        };
        assert!(check(&rules, &get("/", &[("x-api-key", "abcd1234")])).is_ok());
        let v = check(&rules, &get("/", &[])).unwrap_err();
        assert_eq!(v.detail, "Header \"x-api-key\" is required.");
        let v = check(&rules, &get("/", &[("x-api-key", "short")])).unwrap_err();
        assert_eq!(
            v.detail,
            "Header \"x-api-key\" has a value that is not allowed."
        );
        let v = check(
            &rules,
            &get("/", &[("x-api-key", "abcd1234"), ("x-tenant", "c")]),
        )
        .unwrap_err();
        assert_eq!(v.rule, Rule::RequiredHeaders);
        let v = check(
            &rules,
            &get("/", &[("x-api-key", "abcd1234"), ("x-api-key", "\u{1}bad")]),
        )
        .unwrap_err();
        assert!(!v.detail.contains("bad"), "values are never echoed");
    }

    #[test]
    fn bodies_need_an_accepted_media_type() {
        let rules = HeadRules {
            content_types: Some(vec![MediaRange::parse("application/json").unwrap()]),
            ..HeadRules::default()
        };
        assert!(check(
            &rules,
            &post("/", &[("content-type", "application/json; charset=utf-8")])
        )
        .is_ok());
        let v = check(&rules, &post("/", &[("content-type", "text/plain")])).unwrap_err();
        assert_eq!(v.rule, Rule::ContentTypes);
        assert_eq!(
            v.detail,
            "This route accepts application/json, not text/plain."
        );
        let v = check(&rules, &post("/", &[])).unwrap_err();
        assert!(v.detail.ends_with("not a body without a content type."));
        assert!(
            check(&rules, &get("/", &[])).is_ok(),
            "no body, no media type needed"
        );
    }

    #[test]
    fn a_declared_length_over_the_limit_is_413_before_the_body_arrives() {
        let rules = HeadRules {
            max_body_bytes: Some(100),
            require_content_length: true,
            ..HeadRules::default()
        };
        let v = check(&rules, &post("/", &[("content-length", "101")])).unwrap_err();
        assert_eq!(v.rule, Rule::MaxBodyBytes);
        assert_eq!(v.rule.status(), 413);
        let v = check(&rules, &post("/", &[("transfer-encoding", "chunked")])).unwrap_err();
        assert_eq!(v.rule, Rule::RequireContentLength);
        let plan = check(&rules, &post("/", &[("content-length", "100")])).unwrap();
        assert_eq!(plan.max_bytes, Some(100));
        assert!(!plan.buffers(), "counting needs no buffer");
    }

    #[test]
    fn json_bodies_are_buffered_only_when_a_json_rule_needs_them() {
        let mut set = SchemaSet::new(
            "s.json",
            json!({"type": "object"}),
            JsonDraft::V2020_12,
            false,
        )
        .unwrap();
        let root = set.compile("").unwrap();
        let rules = HeadRules {
            json_schema: Some(Rc::new(JsonSchemaRule { set, root })),
            max_body_bytes: Some(1024),
            ..HeadRules::default()
        };
        let plan = check(&rules, &post("/", &[("content-type", "application/json")])).unwrap();
        assert!(matches!(plan.check, Some(BodyCheck::JsonSchema(_))));
        let plan = check(&rules, &post("/", &[("content-type", "text/csv")])).unwrap();
        assert!(
            !plan.buffers(),
            "no JSON rule for CSV (content_types decides whether CSV is allowed)"
        );
        let plan = check(&rules, &get("/", &[("content-type", "application/json")])).unwrap();
        assert!(!plan.buffers(), "no body, nothing to buffer");
    }
}
