//! Deadline-aware fast fail: refuse work that cannot finish before the caller gives up.
//!
//! # Why
//!
//! A request whose caller will stop waiting in 20 ms, on a route whose answers take 120 ms, is
//! doomed: the upstream spends the capacity, the caller times out anyway, and often retries. Under
//! overload that doomed work is exactly what pushes the good requests over their deadlines too.
//! Answering it `504` at once costs nothing and tells the caller the truth.
//!
//! # Where the deadline comes from
//!
//! The smallest of the values present: `grpc-timeout` (gRPC's `250m`, `2S` …),
//! `x-envoy-expected-rq-timeout-ms` (set by an Envoy in front of this one) and the configured
//! `deadline_header` (milliseconds). A malformed value is ignored, not trusted. A request is
//! refused when that remaining time is below `min_remaining_deadline`, or, with
//! `deadline_from_observed_latency`, below the route's observed latency percentile (the median by
//! default) once enough responses were seen.

use resilience_core::deadline::{parse_grpc_timeout, parse_millis};

use super::{RequestHead, Rule, Violation};

/// The header Envoy's router sets with the route timeout it applies.
pub const ENVOY_EXPECTED_TIMEOUT: &str = "x-envoy-expected-rq-timeout-ms";

/// The remaining deadline announced by the request, in ms: the smallest valid value present.
pub fn remaining_ms(head: &RequestHead, custom_header: Option<&str>) -> Option<u64> {
    let grpc = head.get("grpc-timeout").and_then(parse_grpc_timeout);
    let envoy = head.get(ENVOY_EXPECTED_TIMEOUT).and_then(parse_millis);
    let custom = custom_header
        .and_then(|h| head.get(h))
        .and_then(parse_millis);
    [grpc, envoy, custom].into_iter().flatten().min()
}

/// The observed-latency threshold in force for a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observed {
    /// The route's latency at the configured percentile, in ms.
    pub latency_ms: u64,
    /// Which percentile (50 for the median).
    pub percentile: f64,
}

/// Refuses a request whose remaining deadline is below the configured minimum, or below the
/// observed latency. No announced deadline means nothing to refuse.
pub fn check(
    remaining: Option<u64>,
    min_remaining_ms: Option<u64>,
    observed: Option<Observed>,
) -> Result<(), Violation> {
    let Some(remaining) = remaining else {
        return Ok(());
    };
    if let Some(min) = min_remaining_ms {
        if remaining < min {
            return Err(Violation::new(
                Rule::MinRemainingDeadline,
                format!(
                    "The request's remaining deadline ({remaining} ms) is below this route's minimum ({min} ms)."
                ),
            )
            .with("remaining_ms", remaining)
            .with("required_ms", min));
        }
    }
    if let Some(o) = observed {
        if remaining < o.latency_ms {
            let which = if (o.percentile - 50.0).abs() < f64::EPSILON {
                "median".to_owned()
            } else {
                format!("p{}", o.percentile)
            };
            return Err(Violation::new(
                Rule::ObservedLatency,
                format!(
                    "The request's remaining deadline ({remaining} ms) is below this route's observed {which} latency ({} ms): it would time out before an answer.",
                    o.latency_ms
                ),
            )
            .with("remaining_ms", remaining)
            .with("observed_ms", o.latency_ms));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&str, &str)]) -> RequestHead {
        RequestHead::from_pairs(pairs, true)
    }

    #[test]
    fn the_smallest_valid_deadline_wins() {
        let h = head(&[
            ("grpc-timeout", "2S"),
            (ENVOY_EXPECTED_TIMEOUT, "1500"),
            ("x-deadline-ms", "900"),
        ]);
        assert_eq!(remaining_ms(&h, None), Some(1500));
        assert_eq!(remaining_ms(&h, Some("x-deadline-ms")), Some(900));
        let h = head(&[("grpc-timeout", "garbage"), (ENVOY_EXPECTED_TIMEOUT, "-5")]);
        assert_eq!(remaining_ms(&h, None), None, "malformed values are ignored");
        assert_eq!(
            remaining_ms(&head(&[("grpc-timeout", "250m")]), None),
            Some(250)
        );
    }

    #[test]
    fn below_the_minimum_is_a_504_naming_both_numbers() {
        let v = check(Some(20), Some(50), None).unwrap_err();
        assert_eq!(v.rule, Rule::MinRemainingDeadline);
        assert_eq!(v.rule.status(), 504);
        assert_eq!(
            v.detail,
            "The request's remaining deadline (20 ms) is below this route's minimum (50 ms)."
        );
        assert!(check(Some(50), Some(50), None).is_ok());
        assert!(
            check(None, Some(50), None).is_ok(),
            "no deadline, nothing to refuse"
        );
    }

    #[test]
    fn below_the_observed_median_is_refused_too() {
        let o = Observed {
            latency_ms: 120,
            percentile: 50.0,
        };
        let v = check(Some(100), Some(10), Some(o)).unwrap_err();
        assert_eq!(v.rule, Rule::ObservedLatency);
        assert!(
            v.detail.contains("observed median latency (120 ms)"),
            "{}",
            v.detail
        );
        assert!(check(Some(120), Some(10), Some(o)).is_ok());
        let p90 = Observed {
            latency_ms: 300,
            percentile: 90.0,
        };
        assert!(check(Some(200), None, Some(p90))
            .unwrap_err()
            .detail
            .contains("observed p90"));
    }
}
