//! The gRPC rules: cheap checks of a gRPC call at the edge.
//!
//! # Why
//!
//! A gRPC server that is handed a call for a method it does not have, a message whose length
//! prefix lies, or a call with no deadline pays for it: it parses, allocates, and for a call with
//! no deadline may hold a worker for as long as the client cares to wait. Each of these is visible
//! in the request head or in five bytes per message, so the edge can refuse them for almost
//! nothing:
//!
//! - `grpc_methods`: the methods a route serves, as `/package.Service/Method` (or
//!   `/package.Service/*` for a whole service). Any other method is `UNIMPLEMENTED`, what the
//!   server itself would answer, but without reaching it.
//! - `require_grpc_timeout`: a call must announce its deadline in a valid `grpc-timeout`;
//!   without one it is `INVALID_ARGUMENT`.
//! - `grpc_framing`: every message's 5-byte prefix (a compressed flag of 0 or 1, and 1 only when
//!   the call names a `grpc-encoding`; a 4-byte big-endian length) must agree with the body, and
//!   no message may announce more than `max_body_bytes`. The prefixes are read as the body
//!   streams (the payloads are skipped, never copied or held), so a message that announces 1 GB is
//!   refused at its prefix, before its bytes arrive, with `RESOURCE_EXHAUSTED`; a body that ends
//!   inside a message, or a bad flag, is `INVALID_ARGUMENT`.
//!
//! The rules apply only to requests that are gRPC by their `content-type` (`application/grpc…`,
//! and binary gRPC-Web); other requests on the same route are not checked by them. Base64
//! gRPC-Web (`application/grpc-web-text`) is not framed in the clear, so `grpc_framing` skips it
//! (put Envoy's `grpc_web` filter first and the validator sees plain gRPC).

use resilience_core::deadline::parse_grpc_timeout;
use resilience_core::grpc::{is_method_path, FrameError, FrameReader, Wire};

use super::{quote, RequestHead, Rule, Violation};

/// One entry of `grpc_methods`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MethodPattern {
    /// `/package.Service/Method`.
    Exact(String),
    /// `/package.Service/*`: stored as `/package.Service/`.
    Service(String),
}

impl MethodPattern {
    /// Parses an entry; `None` when it is neither form.
    pub fn parse(s: &str) -> Option<MethodPattern> {
        if let Some(service) = s.strip_suffix("/*") {
            let probe = format!("{service}/m");
            return is_method_path(probe.as_bytes())
                .then(|| MethodPattern::Service(format!("{service}/")));
        }
        is_method_path(s.as_bytes()).then(|| MethodPattern::Exact(s.to_owned()))
    }

    fn matches(&self, path: &[u8]) -> bool {
        match self {
            MethodPattern::Exact(m) => m.as_bytes() == path,
            MethodPattern::Service(prefix) => path
                .strip_prefix(prefix.as_bytes())
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(&b'/')),
        }
    }
}

/// The gRPC rules of one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcRules {
    /// `None`: every method.
    pub methods: Option<Vec<MethodPattern>>,
    pub require_timeout: bool,
    pub framing: bool,
}

impl GrpcRules {
    /// Whether any rule is configured.
    pub fn any(&self) -> bool {
        self.methods.is_some() || self.require_timeout || self.framing
    }
}

/// Checks a gRPC call's head (method, then deadline). Requests that are not gRPC pass.
pub fn check_head(
    rules: &GrpcRules,
    head: &RequestHead,
    wire: Option<Wire>,
) -> Result<(), Violation> {
    if wire.is_none() {
        return Ok(());
    }
    if let Some(methods) = &rules.methods {
        let path = head.path();
        if !methods.iter().any(|m| m.matches(path)) {
            return Err(Violation::new(
                Rule::GrpcMethods,
                format!(
                    "This route does not serve the gRPC method {}.",
                    quote(head.path_only())
                ),
            ));
        }
    }
    if rules.require_timeout
        && head
            .get("grpc-timeout")
            .and_then(parse_grpc_timeout)
            .is_none()
    {
        return Err(Violation::new(
            Rule::RequireGrpcTimeout,
            "This route needs every call to set a deadline (a valid grpc-timeout).",
        ));
    }
    Ok(())
}

/// The frame reader for a gRPC call's body when `grpc_framing` applies to it.
pub fn frame_reader(
    rules: &GrpcRules,
    head: &RequestHead,
    wire: Option<Wire>,
    max_body_bytes: Option<u64>,
) -> Option<FrameReader> {
    if !rules.framing || !matches!(wire, Some(Wire::Grpc | Wire::GrpcWeb)) {
        return None;
    }
    let compression = head
        .get("grpc-encoding")
        .is_some_and(|e| !e.is_empty() && !e.eq_ignore_ascii_case(b"identity"));
    Some(FrameReader::new(max_body_bytes, compression))
}

/// The violation a framing error is.
pub fn violation(e: FrameError) -> Violation {
    match e {
        FrameError::TooLarge { index, len, max } => Violation::new(
            Rule::MaxBodyBytes,
            format!(
                "gRPC message {index} announces {len} bytes; this route accepts at most {max}."
            ),
        )
        .with("limit", max),
        FrameError::BadFlag { index, flag } => Violation::new(
            Rule::GrpcFraming,
            format!("gRPC message {index} has the compressed flag {flag}; only 0 and 1 exist."),
        ),
        FrameError::CompressedWithoutEncoding { index } => Violation::new(
            Rule::GrpcFraming,
            format!(
                "gRPC message {index} is marked compressed, but the call names no grpc-encoding."
            ),
        ),
        FrameError::Truncated { index } => Violation::new(
            Rule::GrpcFraming,
            format!("The request body ends inside gRPC message {index}."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resilience_core::grpc::Code;

    fn call(path: &str, extra: &[(&str, &str)]) -> RequestHead {
        let mut pairs = vec![
            (":method", "POST"),
            (":path", path),
            ("content-type", "application/grpc"),
        ];
        pairs.extend_from_slice(extra);
        RequestHead::from_pairs(&pairs, false)
    }

    fn methods(list: &[&str]) -> GrpcRules {
        GrpcRules {
            methods: Some(
                list.iter()
                    .map(|m| MethodPattern::parse(m).unwrap())
                    .collect(),
            ),
            ..GrpcRules::default()
        }
    }

    #[test]
    fn method_patterns_are_exact_methods_or_whole_services() {
        assert_eq!(
            MethodPattern::parse("/a.B/C"),
            Some(MethodPattern::Exact("/a.B/C".to_owned()))
        );
        assert_eq!(
            MethodPattern::parse("/a.B/*"),
            Some(MethodPattern::Service("/a.B/".to_owned()))
        );
        for bad in ["", "/*", "a.B/C", "/a.B/", "/a.B/C/*", "/a B/C", "/a.B/C*"] {
            assert_eq!(MethodPattern::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_method_outside_the_list_is_unimplemented() {
        let rules = methods(&["/shop.Orders/Get", "/grpc.health.v1.Health/*"]);
        let w = Some(Wire::Grpc);
        assert!(check_head(&rules, &call("/shop.Orders/Get", &[]), w).is_ok());
        assert!(check_head(&rules, &call("/grpc.health.v1.Health/Check", &[]), w).is_ok());
        let v = check_head(&rules, &call("/shop.Orders/Delete", &[]), w).unwrap_err();
        assert_eq!(v.rule, Rule::GrpcMethods);
        assert_eq!(v.rule.grpc_code(), Code::Unimplemented);
        assert_eq!(
            v.detail,
            "This route does not serve the gRPC method /shop.Orders/Delete."
        );
        for other in [
            "/shop.Orders/Get/x",
            "/grpc.health.v1.Health/",
            "/shop.Orders/Get?x",
        ] {
            assert!(check_head(&rules, &call(other, &[]), w).is_err(), "{other}");
        }
    }

    #[test]
    fn requests_that_are_not_grpc_are_not_checked() {
        let rules = GrpcRules {
            require_timeout: true,
            ..methods(&["/a.B/C"])
        };
        assert!(check_head(&rules, &call("/other", &[]), None).is_ok());
        assert!(frame_reader(
            &GrpcRules {
                framing: true,
                ..rules
            },
            &call("/x", &[]),
            None,
            None
        )
        .is_none());
    }

    #[test]
    fn a_required_deadline_must_be_a_valid_grpc_timeout() {
        let rules = GrpcRules {
            require_timeout: true,
            ..GrpcRules::default()
        };
        let w = Some(Wire::Grpc);
        assert!(check_head(&rules, &call("/a.B/C", &[("grpc-timeout", "2S")]), w).is_ok());
        for bad in [
            &[][..],
            &[("grpc-timeout", "soon")],
            &[("grpc-timeout", "123456789S")],
        ] {
            let v = check_head(&rules, &call("/a.B/C", bad), w).unwrap_err();
            assert_eq!(v.rule, Rule::RequireGrpcTimeout);
            assert_eq!(v.rule.grpc_code(), Code::InvalidArgument);
        }
    }

    #[test]
    fn framing_reads_binary_grpc_and_names_the_encoding() {
        let rules = GrpcRules {
            framing: true,
            ..GrpcRules::default()
        };
        let head = call("/a.B/C", &[]);
        assert!(frame_reader(&rules, &head, Some(Wire::Grpc), None).is_some());
        assert!(frame_reader(&rules, &head, Some(Wire::GrpcWeb), None).is_some());
        assert!(frame_reader(&rules, &head, Some(Wire::GrpcWebText), None).is_none());
        let mut r = frame_reader(&rules, &head, Some(Wire::Grpc), None).unwrap();
        assert!(r.feed(&[1, 0, 0, 0, 0]).is_err());
        let gzip = call("/a.B/C", &[("grpc-encoding", "gzip")]);
        let mut r = frame_reader(&rules, &gzip, Some(Wire::Grpc), None).unwrap();
        assert!(r.feed(&[1, 0, 0, 0, 0]).is_ok());
        let identity = call("/a.B/C", &[("grpc-encoding", "identity")]);
        let mut r = frame_reader(&rules, &identity, Some(Wire::Grpc), None).unwrap();
        assert!(r.feed(&[1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn framing_errors_become_violations_with_their_grpc_codes() {
        let big = violation(FrameError::TooLarge {
            index: 0,
            len: 2000,
            max: 1000,
        });
        assert_eq!(big.rule, Rule::MaxBodyBytes);
        assert_eq!(big.rule.grpc_code(), Code::ResourceExhausted);
        assert_eq!(
            big.detail,
            "gRPC message 0 announces 2000 bytes; this route accepts at most 1000."
        );
        let cut = violation(FrameError::Truncated { index: 2 });
        assert_eq!(cut.rule, Rule::GrpcFraming);
        assert_eq!(cut.rule.grpc_code(), Code::InvalidArgument);
    }
}
