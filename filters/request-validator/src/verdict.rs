//! The validator's decision for one request from its parts alone: no host, no shared state.
//!
//! Why: [`crate::http`] decides in callbacks (headers, then body chunks, then the end of the
//! body) and through a [`resilience_host::host::Host`]. The fuzz targets (`fuzz/`) and anything
//! else that wants to ask "what would the validator say to this request?" need the same rules in
//! one pure call. [`verdict`] runs them in the order `http` does: health checks, route selection,
//! the mode, the head rules, the announced deadline, then the body as it streams (gRPC message
//! prefixes, the running size) and once complete (JSON, schemas).
//!
//! What it leaves out needs state no single request carries: concurrency shedding
//! (`max_concurrent_requests`, counted across workers) and `deadline_from_observed_latency` (a
//! route's learned latency). A dry-run route answers as an enforcing one would, since the
//! question is which rule the request breaks.

use resilience_core::routes::RequestView;

use crate::config::{FilterConfig, Mode};
use crate::rules::{deadline, head, RequestHead, Violation};

/// What the validator does with a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Not looked at: a health check, or a route whose `mode` is `disabled`.
    Unguarded,
    /// Every rule holds.
    Admitted,
    /// The first rule the request breaks (in `dry_run`, the rule it would be rejected for).
    Rejected(Violation),
}

impl Verdict {
    /// Whether the request reaches the upstream with no rule broken.
    pub fn admits(&self) -> bool {
        !matches!(self, Verdict::Rejected(_))
    }
}

/// The request as the route matcher reads it, with the route name given rather than read from
/// the host.
struct PartsView<'a> {
    route_name: Option<&'a str>,
    head: &'a RequestHead,
}

impl RequestView for PartsView<'_> {
    fn route_name(&mut self) -> Option<&str> {
        self.route_name
    }

    fn path(&mut self) -> Option<&str> {
        std::str::from_utf8(self.head.path()).ok()
    }

    fn method(&mut self) -> Option<&str> {
        std::str::from_utf8(self.head.method()).ok()
    }

    fn header(&mut self, name: &str) -> Option<&str> {
        // The core's matchers lowercase names at load; the head's names are lowercase.
        let lower = name.to_ascii_lowercase();
        self.head
            .get(&lower)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Decides `head` (with `route_name`, Envoy's route name if any) and its body, delivered in
/// `chunks` as the proxy would hand them over, under `config`. A head with `end_of_stream` has no
/// body: `chunks` are then ignored.
pub fn verdict(
    config: &FilterConfig,
    route_name: Option<&str>,
    head: &RequestHead,
    chunks: &[&[u8]],
) -> Verdict {
    if config.global.health_checks.matches(head) {
        return Verdict::Unguarded;
    }
    let mut view = PartsView { route_name, head };
    let settings = config.routes.select(&mut view).settings;
    if settings.mode == Mode::Disabled {
        return Verdict::Unguarded;
    }
    match decide(settings, head, chunks) {
        Ok(()) => Verdict::Admitted,
        Err(v) => Verdict::Rejected(v),
    }
}

fn decide(
    settings: &crate::config::Settings,
    head: &RequestHead,
    chunks: &[&[u8]],
) -> Result<(), Violation> {
    let mut plan = head::check(&settings.head, head)?;
    let remaining = deadline::remaining_ms(head, settings.deadline.header.as_deref());
    deadline::check(remaining, settings.deadline.min_remaining_ms, None)?;
    if !head.has_body() || plan.is_passive() {
        return Ok(());
    }
    let mut seen: u64 = 0;
    let mut body = Vec::new();
    for chunk in chunks {
        plan.check_frames(chunk.len(), |at, n| {
            chunk.get(at..at.checked_add(n)?).map(<[u8]>::to_vec)
        })?;
        seen = seen.saturating_add(chunk.len() as u64);
        plan.check_size(seen)?;
        if plan.buffers() {
            body.extend_from_slice(chunk);
        }
    }
    plan.check_frames_complete()?;
    if plan.buffers() {
        plan.check_complete(&body)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Rule;

    fn config(json: &str) -> FilterConfig {
        crate::config::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_request_that_breaks_no_rule_is_admitted_and_one_that_does_names_the_rule() {
        let c = config(r#"{"allowed_methods": ["GET"], "max_body_bytes": 4}"#);
        let get = RequestHead::from_pairs(&[(":method", "GET"), (":path", "/")], true);
        assert_eq!(verdict(&c, None, &get, &[]), Verdict::Admitted);
        let post = RequestHead::from_pairs(&[(":method", "POST"), (":path", "/")], true);
        match verdict(&c, None, &post, &[]) {
            Verdict::Rejected(v) => assert_eq!(v.rule, Rule::AllowedMethods),
            other => panic!("{other:?}"),
        }
        let big = RequestHead::from_pairs(&[(":method", "GET"), (":path", "/")], false);
        match verdict(&c, None, &big, &[b"abc", b"de"]) {
            Verdict::Rejected(v) => assert_eq!(v.rule, Rule::MaxBodyBytes),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn health_checks_and_disabled_routes_are_unguarded() {
        let c = config(
            r#"{"health_checks": {"paths": ["/healthz"]}, "allowed_methods": ["GET"],
                "routes": [{"match": {"route_name": "off"}, "mode": "disabled"}]}"#,
        );
        let hc = RequestHead::from_pairs(&[(":method", "POST"), (":path", "/healthz?x")], true);
        assert_eq!(verdict(&c, None, &hc, &[]), Verdict::Unguarded);
        let post = RequestHead::from_pairs(&[(":method", "POST"), (":path", "/a")], true);
        assert_eq!(verdict(&c, Some("off"), &post, &[]), Verdict::Unguarded);
        assert!(!verdict(&c, Some("on"), &post, &[]).admits());
    }

    #[test]
    fn a_json_body_is_checked_once_complete_whatever_its_chunks() {
        let c = config(r#"{"json_body": true}"#);
        let head = RequestHead::from_pairs(
            &[
                (":method", "POST"),
                (":path", "/"),
                ("content-type", "application/json"),
            ],
            false,
        );
        assert_eq!(
            verdict(&c, None, &head, &[b"{\"a\"", b": 1}"]),
            Verdict::Admitted
        );
        match verdict(&c, None, &head, &[b"{\"a\"", b": }"]) {
            Verdict::Rejected(v) => assert_eq!(v.rule, Rule::JsonBody),
            other => panic!("{other:?}"),
        }
    }
}
