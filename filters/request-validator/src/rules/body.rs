//! The body rules: a size cap enforced while the body streams, and JSON checks once it is whole.
//!
//! # Why the body is counted, and buffered only when needed
//!
//! `content-length` is checked against `max_body_bytes` with the head; a chunked body (or an
//! HTTP/2 body without a declared length) can only be counted as it arrives, so every body chunk
//! adds to a running total and the request is answered 413 the moment the total crosses the cap.
//! Counting costs nothing and holds nothing back. Only a route whose rules need to *see* the body
//! (`json_body`, `json_schema`, an OpenAPI request body schema), and only for a JSON media type,
//! holds the body until it is complete, never more than `max_body_bytes` of it, and checks it once.

use std::rc::Rc;

use super::head::JsonSchemaRule;
use super::json::{parse_body, SchemaRef};
use super::openapi::Api;
use super::{Rule, Violation};

/// A check that needs the whole body.
#[derive(Clone, Debug)]
pub enum BodyCheck {
    /// Well-formed JSON only.
    WellFormed,
    /// Well-formed JSON matching the route's `json_schema`.
    JsonSchema(Rc<JsonSchemaRule>),
    /// Well-formed JSON matching an OpenAPI operation's request body schema.
    Openapi(Rc<Api>, SchemaRef),
}

/// How one request's body is handled, decided with the head.
#[derive(Clone, Debug, Default)]
pub struct BodyPlan {
    /// Most bytes accepted; `None` is no cap.
    pub max_bytes: Option<u64>,
    /// A check on the complete body (the body is then buffered).
    pub check: Option<BodyCheck>,
}

impl BodyPlan {
    /// Whether the body must be held until it is complete.
    pub fn buffers(&self) -> bool {
        self.check.is_some()
    }

    /// Whether the body needs any attention at all.
    pub fn is_passive(&self) -> bool {
        self.max_bytes.is_none() && self.check.is_none()
    }

    /// Checks the running total of body bytes seen so far.
    pub fn check_size(&self, seen: u64) -> Result<(), Violation> {
        match self.max_bytes {
            Some(max) if seen > max => Err(Violation::new(
                Rule::MaxBodyBytes,
                format!("The request body exceeds {max} bytes, the most this route accepts."),
            )
            .with("limit", max)),
            _ => Ok(()),
        }
    }

    /// Checks the complete body.
    pub fn check_complete(&self, body: &[u8]) -> Result<(), Violation> {
        match &self.check {
            None => Ok(()),
            Some(BodyCheck::WellFormed) => parse_body(body, Rule::JsonBody).map(|_| ()),
            Some(BodyCheck::JsonSchema(rule)) => {
                let value = parse_body(body, Rule::JsonBody)?;
                rule.set.validate(rule.root, &value, Rule::JsonSchema)
            }
            Some(BodyCheck::Openapi(api, schema)) => api.check_body(*schema, body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::json::{JsonDraft, SchemaSet};
    use serde_json::json;

    #[test]
    fn the_running_total_may_reach_the_cap_but_not_cross_it() {
        let plan = BodyPlan {
            max_bytes: Some(10),
            check: None,
        };
        assert!(plan.check_size(10).is_ok());
        let v = plan.check_size(11).unwrap_err();
        assert_eq!(v.rule, Rule::MaxBodyBytes);
        assert_eq!(
            v.detail,
            "The request body exceeds 10 bytes, the most this route accepts."
        );
        assert!(!plan.buffers());
        assert!(BodyPlan::default().is_passive());
    }

    #[test]
    fn complete_bodies_are_parsed_then_validated() {
        let mut set = SchemaSet::new(
            "s.json",
            json!({"required": ["a"]}),
            JsonDraft::V2020_12,
            false,
        )
        .unwrap();
        let root = set.compile("").unwrap();
        let plan = BodyPlan {
            max_bytes: Some(100),
            check: Some(BodyCheck::JsonSchema(Rc::new(JsonSchemaRule { set, root }))),
        };
        assert!(plan.buffers());
        assert!(plan.check_complete(br#"{"a": 1}"#).is_ok());
        assert_eq!(
            plan.check_complete(b"{}").unwrap_err().rule,
            Rule::JsonSchema
        );
        assert_eq!(plan.check_complete(b"{").unwrap_err().rule, Rule::JsonBody);
        let wf = BodyPlan {
            max_bytes: None,
            check: Some(BodyCheck::WellFormed),
        };
        assert!(wf.check_complete(b"[1, 2]").is_ok());
        assert_eq!(wf.check_complete(b"\xff").unwrap_err().rule, Rule::JsonBody);
    }
}
