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
//! A gRPC call on a route with `grpc_framing` has its 5-byte message prefixes read as the body
//! streams ([`super::grpc`]): a few bytes per message, nothing held.

use std::rc::Rc;

use resilience_core::grpc::FrameReader;

use super::grpc;
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
    /// A gRPC call's message prefixes, read as the body streams (`grpc_framing`).
    pub frames: Option<FrameReader>,
}

impl BodyPlan {
    /// Whether the body must be held until it is complete.
    pub fn buffers(&self) -> bool {
        self.check.is_some()
    }

    /// Whether the body needs any attention at all.
    pub fn is_passive(&self) -> bool {
        self.max_bytes.is_none() && self.check.is_none() && self.frames.is_none()
    }

    /// Reads the message prefixes in the next `len` body bytes (`read(offset, n)` hands over `n`
    /// bytes of them from `offset`). Without `grpc_framing`, nothing is read.
    pub fn check_frames(
        &mut self,
        len: usize,
        read: impl FnMut(usize, usize) -> Option<Vec<u8>>,
    ) -> Result<(), Violation> {
        match self.frames.as_mut() {
            Some(frames) => frames.feed_with(len, read).map_err(grpc::violation),
            None => Ok(()),
        }
    }

    /// The body ended: the last gRPC message must be complete.
    pub fn check_frames_complete(&self) -> Result<(), Violation> {
        match &self.frames {
            Some(frames) => frames.finish().map(|_| ()).map_err(grpc::violation),
            None => Ok(()),
        }
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
            frames: None,
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
            frames: None,
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
            frames: None,
        };
        assert!(wf.check_complete(b"[1, 2]").is_ok());
        assert_eq!(wf.check_complete(b"\xff").unwrap_err().rule, Rule::JsonBody);
    }
}
