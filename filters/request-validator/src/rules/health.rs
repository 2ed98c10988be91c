//! Health checks: requests that are always admitted, never validated and never counted.
//!
//! # Why
//!
//! A health check answers one question, "can this instance serve?", and the answer decides
//! whether it stays in rotation. If the validator shed or rejected health checks under load, a
//! busy but healthy instance would be taken out of rotation, its traffic would move to its
//! neighbours, and the overload would cascade (the failure `adaptive_concurrency` users report).
//! So a request that looks like a health check passes untouched, even at saturation, and does not
//! take one of the route's concurrency permits.
//!
//! A request is a health check when its path (query string removed) is one of `paths`, or when
//! one of `headers` matches: a header present, with an exact `value`, or with a value starting
//! with `prefix` (`user-agent: kube-probe/1.31` matches the prefix `kube-probe/`; Envoy's own
//! health checker sends `user-agent: Envoy/HC`).

use super::RequestHead;

/// One header condition of a health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderProbe {
    /// Lowercase header name.
    pub name: String,
    pub value: Option<String>,
    pub prefix: Option<String>,
}

impl HeaderProbe {
    fn matches(&self, head: &RequestHead) -> bool {
        head.all(&self.name)
            .any(|v| match (&self.value, &self.prefix) {
                (Some(exact), _) => v == exact.as_bytes(),
                (None, Some(prefix)) => v.starts_with(prefix.as_bytes()),
                (None, None) => true,
            })
    }
}

/// What makes a request a health check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthChecks {
    pub paths: Vec<String>,
    pub headers: Vec<HeaderProbe>,
}

impl HealthChecks {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.headers.is_empty()
    }

    /// Whether `head` is a health check.
    pub fn matches(&self, head: &RequestHead) -> bool {
        if self.is_empty() {
            return false;
        }
        let path = head.path_only();
        self.paths.iter().any(|p| p.as_bytes() == path)
            || self.headers.iter().any(|h| h.matches(head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks() -> HealthChecks {
        HealthChecks {
            paths: vec!["/healthz".to_owned(), "/ready".to_owned()],
            headers: vec![
                HeaderProbe {
                    name: "user-agent".to_owned(),
                    value: None,
                    prefix: Some("kube-probe/".to_owned()),
                },
                HeaderProbe {
                    name: "x-envoy-hc".to_owned(),
                    value: Some("1".to_owned()),
                    prefix: None,
                },
            ],
        }
    }

    fn get(path: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut pairs = vec![(":method", "GET"), (":path", path)];
        pairs.extend_from_slice(headers);
        RequestHead::from_pairs(&pairs, true)
    }

    #[test]
    fn listed_paths_are_health_checks_whatever_the_query() {
        assert!(checks().matches(&get("/healthz", &[])));
        assert!(checks().matches(&get("/ready?verbose=1", &[])));
        assert!(!checks().matches(&get("/healthz/deep", &[])));
        assert!(!checks().matches(&get("/api", &[])));
    }

    #[test]
    fn header_probes_match_by_prefix_or_exact_value() {
        assert!(checks().matches(&get("/api", &[("user-agent", "kube-probe/1.31")])));
        assert!(!checks().matches(&get("/api", &[("user-agent", "curl/8")])));
        assert!(checks().matches(&get("/api", &[("x-envoy-hc", "1")])));
        assert!(!checks().matches(&get("/api", &[("x-envoy-hc", "2")])));
    }

    #[test]
    fn no_configuration_means_no_health_checks() {
        assert!(!HealthChecks::default().matches(&get("/healthz", &[])));
    }
}
