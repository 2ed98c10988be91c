//! The core as a filter uses it, through the public API only: parse a configuration with
//! per-route overrides, pick a route for a request, classify the response with that route's
//! classifier, record it in a window, and keep the window in shared data.
//!
//! The unit tests pin each piece; this pins that the pieces fit (types, paths in errors, codec
//! framing) the way the filters and the host layer expect.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use resilience_core::codec::{Decoder, Encoder};
use resilience_core::config::{DurationMs, Percent};
use resilience_core::outcome::{
    envoy_flags, local_failure_from_details, local_failure_from_flags, Classifier, FailureKind,
    GrpcCodeSet, LocalFailure, LocalFailureSet, Outcome, ResponseFacts, StatusSet,
};
use resilience_core::problem::{bounded, Problem, CONTENT_TYPE};
use resilience_core::routes::{parse_filter_config, RequestView};
use resilience_core::window::{Counts, TimeWindow};
use serde::Deserialize;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Global {
    #[serde(default)]
    shared_data_key: Option<String>,
}

/// Per-route settings, the way a filter declares them: defaults named, unknown fields denied.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_statuses")]
    failure_statuses: StatusSet,
    #[serde(default = "GrpcCodeSet::server_errors")]
    failure_grpc_codes: GrpcCodeSet,
    #[serde(default = "LocalFailureSet::all")]
    local_failures: LocalFailureSet,
    #[serde(default)]
    slow_call: Option<DurationMs>,
    #[serde(default = "default_threshold")]
    failure_rate_threshold: Percent,
    #[serde(default = "default_window")]
    window: DurationMs,
}

fn default_statuses() -> StatusSet {
    StatusSet::from_strs(&["5xx"]).unwrap_or_default()
}

fn default_threshold() -> Percent {
    Percent::clamped(50.0)
}

fn default_window() -> DurationMs {
    DurationMs::from_secs(10)
}

impl Settings {
    fn classifier(&self) -> Classifier {
        Classifier {
            statuses: self.failure_statuses,
            grpc_codes: self.failure_grpc_codes,
            local: self.local_failures,
            slow_call_ms: self.slow_call.map(DurationMs::as_ms),
        }
    }
}

struct Request {
    path: &'static str,
    method: &'static str,
}

impl RequestView for Request {
    fn route_name(&mut self) -> Option<&str> {
        None
    }
    fn path(&mut self) -> Option<&str> {
        Some(self.path)
    }
    fn method(&mut self) -> Option<&str> {
        Some(self.method)
    }
    fn header(&mut self, _name: &str) -> Option<&str> {
        None
    }
}

const CONFIG: &str = r#"{
    "shared_data_key": "breaker.v1",
    "failure_statuses": ["5xx", 429],
    "slow_call": "2s",
    "routes": [
        {
            "name": "payments",
            "match": { "prefix": "/pay" },
            "failure_statuses": ["500-504"],
            "local_failures": ["connect_failure", "timeout"],
            "failure_rate_threshold": 20
        }
    ]
}"#;

#[test]
fn a_route_override_changes_only_the_fields_it_names() {
    let (global, table) =
        parse_filter_config::<Global, Settings>(CONFIG.as_bytes(), &["shared_data_key"]).unwrap();
    assert_eq!(global.shared_data_key.as_deref(), Some("breaker.v1"));

    let pay = table.select(&mut Request {
        path: "/pay/card?amount=3",
        method: "POST",
    });
    assert_eq!(pay.name, "payments");
    assert_eq!(pay.settings.failure_rate_threshold.value(), 20.0);
    assert_eq!(pay.settings.slow_call, Some(DurationMs(2_000)), "inherited");
    assert!(!pay.settings.failure_statuses.contains(429), "overridden");

    let other = table.select(&mut Request {
        path: "/",
        method: "GET",
    });
    assert_eq!(other.name, "default");
    assert!(other.settings.failure_statuses.contains(429));
    assert_eq!(other.settings.window, DurationMs(10_000));
}

#[test]
fn responses_classified_per_route_feed_a_window_that_survives_shared_data() {
    let (_, table) =
        parse_filter_config::<Global, Settings>(CONFIG.as_bytes(), &["shared_data_key"]).unwrap();
    let settings = table
        .select(&mut Request {
            path: "/pay",
            method: "POST",
        })
        .settings;
    let classifier = settings.classifier();

    // Recorded from Envoy access logs: a refused connection after retries ("URX,UF"), an
    // upstream 503, a gRPC UNAVAILABLE on HTTP 200, a slow success, and a pool overflow (not a
    // failure on this route, whose local_failures leave overflow out).
    let connect = ResponseFacts {
        status: 503,
        local: local_failure_from_flags(
            envoy_flags::UPSTREAM_RETRY_LIMIT_EXCEEDED | envoy_flags::UPSTREAM_CONNECTION_FAILURE,
        ),
        duration_ms: 3,
        ..ResponseFacts::default()
    };
    let upstream_503 = ResponseFacts {
        status: 503,
        duration_ms: 40,
        ..ResponseFacts::default()
    };
    let grpc_unavailable = ResponseFacts {
        status: 200,
        grpc_status: Some(14),
        duration_ms: 12,
        ..ResponseFacts::default()
    };
    let slow_ok = ResponseFacts {
        status: 200,
        duration_ms: 2_500,
        ..ResponseFacts::default()
    };
    let overflow = ResponseFacts {
        status: 200,
        local: local_failure_from_details("upstream_reset_before_response_started{overflow}"),
        ..ResponseFacts::default()
    };

    let verdicts: Vec<_> = [connect, upstream_503, grpc_unavailable, slow_ok, overflow]
        .iter()
        .map(|f| classifier.classify(f))
        .collect();
    assert_eq!(
        verdicts[0].outcome,
        Outcome::Failure(FailureKind::Local(LocalFailure::ConnectFailure))
    );
    assert_eq!(
        verdicts[1].outcome,
        Outcome::Failure(FailureKind::Status(503))
    );
    assert_eq!(verdicts[2].outcome, Outcome::Failure(FailureKind::Grpc(14)));
    assert!(!verdicts[3].is_failure() && verdicts[3].slow);
    assert_eq!(verdicts[4].outcome, Outcome::Success);

    let mut window = TimeWindow::new(settings.window.as_ms(), 10);
    for (i, v) in verdicts.iter().enumerate() {
        window.record(1_000 * i as u64, Counts::one(v.is_failure(), v.slow));
    }
    let totals = window.totals(4_000);
    assert_eq!(
        totals,
        Counts {
            total: 5,
            failures: 3,
            slow: 1
        }
    );
    assert!(totals.failure_rate_percent() >= settings.failure_rate_threshold.value());

    let mut enc = Encoder::new(0x42, 1);
    window.encode_into(&mut enc);
    let bytes = enc.finish();
    let mut dec = Decoder::new(&bytes, 0x42, 1).unwrap();
    let restored = TimeWindow::decode_from(&mut dec, settings.window.as_ms(), 10).unwrap();
    dec.finish().unwrap();
    assert_eq!(restored.totals(4_000), totals);
}

#[test]
fn a_configuration_error_reads_as_one_sentence() {
    let bad = r#"{"routes": [{"match": {"prefix": "/"}}, {"match": {"exact": "/x"}, "failure_rate_threshold": 150}]}"#;
    let err =
        parse_filter_config::<Global, Settings>(bad.as_bytes(), &["shared_data_key"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "routes[1].failure_rate_threshold: must be between 0 and 100, got 150"
    );

    let bad = r#"{"failure_statuses": [500, "6xx"]}"#;
    let err = parse_filter_config::<Global, Settings>(bad.as_bytes(), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"failure_statuses[1]: item "6xx" is not a status, class ("5xx") or range ("500-599")"#
    );
}

#[test]
fn a_local_reply_quotes_request_input_only_bounded() {
    let hostile_route = format!("{}\r\nx-injected: 1", "a".repeat(500));
    let body = Problem::new(503, "circuit-open", "Circuit open")
        .with_detail(format!("route {} is open", bounded(&hostile_route, 64)))
        .with_extension("retry_after_ms", 1_500)
        .body();
    assert_eq!(CONTENT_TYPE, "application/problem+json");
    assert!(body.len() < 300, "{}", body.len());
    assert!(!body.contains('\r') && !body.contains('\n'));
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed["type"], "urn:resilience-pack:problem:circuit-open");
    assert_eq!(parsed["retry_after_ms"], 1_500);
}
