//! The filter's configuration: parsed from the Wasm filter's JSON, then checked into settings.
//!
//! Why two steps: serde catches the shape (types, unknown fields) with the JSON path; the checks
//! that relate fields or ranges run after and name the field too. Either way Envoy refuses the
//! filter at load with a log line such as `routes[0].factor: must be between 0.1 and 10, got 20`;
//! nothing is silently ignored.
//!
//! Top-level fields that are not filter-wide (see [`GLOBAL_FIELDS`]) are the defaults; each
//! `routes` entry overrides them field by field for the requests its `match` selects.

use resilience_core::config::{
    check_generic_route_names, check_header_name, check_max_keys, check_stat_prefix,
    check_sync_interval, default_generic_route_names, field_path as field, ConfigError, DurationMs,
    Percent,
};
use resilience_core::outcome::{Classifier, GrpcCodeSet, LocalFailureSet, StatusSet};
use resilience_core::padding::Policy;
use resilience_core::routes::{parse_filter_config, RouteMatch, RouteTable};
use serde::Deserialize;

/// Fields that apply to the whole filter instance and cannot be overridden per route.
pub const GLOBAL_FIELDS: &[&str] = &[
    "max_keys",
    "sync_interval",
    "stat_prefix",
    "max_padded_in_flight",
    "generic_route_names",
];

/// The response header that explains each decision on a failed response.
pub const DECISION_HEADER: &str = "x-resilience-failure-padding";

/// Most health-check matchers per route: each is tried on every request.
const MAX_HEALTH_CHECKS: usize = 32;

#[derive(Deserialize, Debug)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    /// Most route keys, each with its learned latency (1-10000): shared data cannot delete, so
    /// the key space is bounded. Past it, requests are neither padded nor learned from.
    #[serde(default = "default_max_keys")]
    max_keys: u32,
    /// The tick (10ms-10s) that publishes learned latencies, refreshes targets and flushes
    /// stats. Release timing does not depend on it.
    #[serde(default = "default_sync_interval")]
    sync_interval: DurationMs,
    /// First segment of every stat name: 1-64 characters of [A-Za-z0-9_].
    #[serde(default = "default_stat_prefix")]
    stat_prefix: String,
    /// Envoy route names that do not identify a destination (Istio names many routes
    /// `default`): a request no route matched on one of them is keyed by its cluster instead.
    /// At most 16 names.
    #[serde(default = "default_generic_route_names")]
    generic_route_names: Vec<String>,
    /// Most responses held at once, across all workers of this filter instance (1-100000).
    #[serde(default = "default_max_in_flight")]
    max_padded_in_flight: u32,
}

fn default_max_keys() -> u32 {
    100
}
fn default_sync_interval() -> DurationMs {
    DurationMs(100)
}
fn default_stat_prefix() -> String {
    "failure_padding".to_owned()
}
fn default_max_in_flight() -> u32 {
    100
}

/// `enforce` holds failures, `dry_run` only counts and logs the padding it would add,
/// `disabled` does nothing (and learns nothing).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Hold failed responses to the learned success latency.
    #[default]
    Enforce,
    /// Never hold; count and mark the padding that would have been added.
    DryRun,
    /// Do nothing and learn nothing.
    Disabled,
}

#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSettings {
    /// Whether the filter holds failures, only counts, or does nothing.
    #[serde(default)]
    mode: Mode,
    /// The success latency to imitate (above 0): 50 is the median, 90 the 90th percentile.
    #[serde(default = "d_percentile")]
    percentile: Percent,
    /// The hold target is the learned percentile times this (0.1-10).
    #[serde(default = "d_factor")]
    factor: f64,
    /// Spreads each target uniformly over plus or minus this percentage.
    #[serde(default)]
    jitter_percent: Percent,
    /// The longest hold, whatever the target (1ms-5m).
    #[serde(default = "d_max_padding")]
    max_padding: DurationMs,
    /// Successes needed before the learned latency is trusted (1-1000000), counted across
    /// workers.
    #[serde(default = "d_min_samples")]
    min_samples: u32,
    /// The target before `min_samples` successes (at least 1ms); unset: no padding until then.
    fallback_target: Option<DurationMs>,
    /// A success's weight halves after this many newer successes (10-1000000); time alone never
    /// decays it.
    #[serde(default = "d_half_life")]
    half_life_samples: u32,
    /// An extra request header holding the caller's deadline in milliseconds; grpc-timeout and
    /// x-envoy-expected-rq-timeout-ms are always read.
    deadline_header: Option<String>,
    /// Release this long before the caller's deadline (at most 1m), so the response reaches it
    /// in time.
    #[serde(default = "d_margin")]
    deadline_margin: DurationMs,
    /// Requests matching any of these (up to 32, in a route's `match` syntax) are health checks:
    /// never padded, never learned from.
    #[cfg_attr(
        feature = "schema",
        schemars(default = "schema_default::health_checks")
    )]
    health_checks: Option<Vec<RouteMatch>>,
    /// HTTP statuses that are failures.
    #[cfg_attr(
        feature = "schema",
        schemars(default = "schema_default::failure_statuses")
    )]
    failure_statuses: Option<StatusSet>,
    /// gRPC statuses (in response headers) that are failures.
    #[cfg_attr(
        feature = "schema",
        schemars(default = "schema_default::grpc_failure_codes")
    )]
    grpc_failure_codes: Option<GrpcCodeSet>,
    /// Envoy-observed failures that count.
    #[cfg_attr(
        feature = "schema",
        schemars(default = "schema_default::local_failures")
    )]
    local_failures: Option<LocalFailureSet>,
}

fn d_percentile() -> Percent {
    Percent::clamped(50.0)
}
fn d_factor() -> f64 {
    1.0
}
fn d_max_padding() -> DurationMs {
    DurationMs(1_000)
}
fn d_min_samples() -> u32 {
    20
}
fn d_half_life() -> u32 {
    1_000
}
fn d_margin() -> DurationMs {
    DurationMs(5)
}

/// One route's checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub policy: Policy,
    /// The success-latency percentile to imitate, 0 < p ≤ 100.
    pub percentile: f64,
    pub half_life_samples: u32,
    /// An extra request header carrying the caller's deadline in milliseconds (lowercase).
    pub deadline_header: Option<String>,
    /// A request matching any of these is a health check: never padded, never learned from.
    pub health_checks: Vec<RouteMatch>,
    pub classifier: Classifier,
}

/// Settings of the whole filter instance.
#[derive(Debug, Clone)]
pub struct Global {
    pub max_keys: u32,
    pub sync_interval_ms: u64,
    pub stat_prefix: String,
    pub max_padded_in_flight: u32,
    /// Envoy route names that do not identify a destination: a request no `routes` entry
    /// matched is keyed by its cluster instead (Istio's `default`).
    pub generic_route_names: Vec<String>,
}

/// The checked configuration.
#[derive(Debug)]
pub struct FilterConfig {
    pub global: Global,
    pub routes: RouteTable<Settings>,
}

impl FilterConfig {
    /// The settings of `routes[index]`, or the defaults.
    pub fn settings(&self, index: Option<usize>) -> &Settings {
        index
            .and_then(|i| self.routes.routes.get(i))
            .map_or(&self.routes.defaults, |r| &r.settings)
    }
}

/// Parse and check the filter's JSON configuration.
pub fn parse(json: &[u8]) -> Result<FilterConfig, ConfigError> {
    let (raw_global, raw_table): (RawGlobal, RouteTable<RawSettings>) =
        parse_filter_config(json, GLOBAL_FIELDS)?;
    Ok(FilterConfig {
        global: check_global(raw_global)?,
        routes: raw_table.try_map(check_settings)?,
    })
}

fn check_global(raw: RawGlobal) -> Result<Global, ConfigError> {
    let max_keys = check_max_keys(raw.max_keys)?;
    let sync = check_sync_interval(raw.sync_interval)?;
    check_stat_prefix(&raw.stat_prefix)?;
    if !(1..=100_000).contains(&raw.max_padded_in_flight) {
        return Err(ConfigError::new(
            "max_padded_in_flight",
            format!(
                "must be between 1 and 100000, got {} (use \"mode\": \"disabled\" to turn padding off)",
                raw.max_padded_in_flight
            ),
        ));
    }
    Ok(Global {
        generic_route_names: check_generic_route_names(raw.generic_route_names)?,
        max_keys,
        sync_interval_ms: sync,
        stat_prefix: raw.stat_prefix,
        max_padded_in_flight: raw.max_padded_in_flight,
    })
}

/// Envoy's active health checker says `user-agent: Envoy/HC`.
fn default_health_checks() -> Vec<RouteMatch> {
    serde_json::from_str(r#"[{"headers": [{"name": "user-agent", "value": "Envoy/HC"}]}]"#)
        .unwrap_or_default()
}

fn check_health_checks(list: &[RouteMatch], prefix: &str) -> Result<(), ConfigError> {
    let path = field(prefix, "health_checks");
    if list.len() > MAX_HEALTH_CHECKS {
        return Err(ConfigError::new(
            path,
            format!("at most {MAX_HEALTH_CHECKS} matchers, got {}", list.len()),
        ));
    }
    for (i, m) in list.iter().enumerate() {
        if !m.has_criterion() {
            return Err(ConfigError::new(
                format!("{path}[{i}]"),
                "must name at least one of route_name, prefix, exact, method, headers",
            ));
        }
        for (j, h) in m.headers.iter().enumerate() {
            if h.name.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}[{i}].headers[{j}].name"),
                    "must not be empty",
                ));
            }
            if h.value.is_some() && h.present == Some(false) {
                return Err(ConfigError::new(
                    format!("{path}[{i}].headers[{j}]"),
                    r#"cannot require a "value" and "present": false at once"#,
                ));
            }
        }
    }
    Ok(())
}

fn default_classifier_sets() -> Result<(StatusSet, GrpcCodeSet, LocalFailureSet), ConfigError> {
    let statuses = StatusSet::from_strs(&["500", "502-599"])
        .map_err(|e| ConfigError::new("failure_statuses", e))?;
    let grpc: GrpcCodeSet =
        serde_json::from_str(r#"["UNAVAILABLE","DEADLINE_EXCEEDED","INTERNAL","UNKNOWN"]"#)
            .map_err(|e| ConfigError::new("grpc_failure_codes", e.to_string()))?;
    let local: LocalFailureSet = serde_json::from_str(
        r#"["connect_failure","reset","timeout","overflow","no_healthy_upstream"]"#,
    )
    .map_err(|e| ConfigError::new("local_failures", e.to_string()))?;
    Ok((statuses, grpc, local))
}

fn check_settings(raw: RawSettings, prefix: &str) -> Result<Settings, ConfigError> {
    let err = |name: &str, rule: String| ConfigError::new(field(prefix, name), rule);
    if raw.percentile.value() <= 0.0 {
        return Err(err(
            "percentile",
            "must be greater than 0 (50 is the median, 90 the 90th percentile)".to_owned(),
        ));
    }
    if !(raw.factor.is_finite() && (0.1..=10.0).contains(&raw.factor)) {
        return Err(err(
            "factor",
            format!("must be between 0.1 and 10, got {}", raw.factor),
        ));
    }
    let max_padding = raw.max_padding.as_ms();
    if !(1..=300_000).contains(&max_padding) {
        return Err(err(
            "max_padding",
            format!("must be between 1ms and 5m, got {}", raw.max_padding),
        ));
    }
    if !(1..=1_000_000).contains(&raw.min_samples) {
        return Err(err(
            "min_samples",
            format!("must be between 1 and 1000000, got {}", raw.min_samples),
        ));
    }
    if let Some(f) = raw.fallback_target {
        if f.as_ms() == 0 {
            return Err(err(
                "fallback_target",
                "must be at least 1ms, got 0s (leave it out to not pad before min_samples)"
                    .to_owned(),
            ));
        }
    }
    if !(10..=1_000_000).contains(&raw.half_life_samples) {
        return Err(err(
            "half_life_samples",
            format!(
                "must be between 10 and 1000000, got {}",
                raw.half_life_samples
            ),
        ));
    }
    if let Some(h) = &raw.deadline_header {
        check_header_name(&field(prefix, "deadline_header"), h)?;
    }
    if raw.deadline_margin.as_ms() > 60_000 {
        return Err(err(
            "deadline_margin",
            format!("must be at most 1m, got {}", raw.deadline_margin),
        ));
    }
    let health_checks = raw.health_checks.unwrap_or_else(default_health_checks);
    check_health_checks(&health_checks, prefix)?;
    let (d_statuses, d_grpc, d_local) = default_classifier_sets()?;
    Ok(Settings {
        mode: raw.mode,
        policy: Policy {
            factor: raw.factor,
            jitter: raw.jitter_percent.fraction(),
            max_padding_ms: max_padding,
            min_samples: u64::from(raw.min_samples),
            fallback_target_ms: raw.fallback_target.map(|d| d.as_ms()),
            deadline_margin_ms: raw.deadline_margin.as_ms(),
        },
        percentile: raw.percentile.value(),
        half_life_samples: raw.half_life_samples,
        deadline_header: raw.deadline_header.map(|h| h.to_ascii_lowercase()),
        health_checks,
        classifier: Classifier {
            statuses: raw.failure_statuses.unwrap_or(d_statuses),
            grpc_codes: raw.grpc_failure_codes.unwrap_or(d_grpc),
            local: raw.local_failures.unwrap_or(d_local),
            slow_call_ms: None,
        },
    })
}

/// Defaults the checks apply to fields left unset, for the schema: from the same sources.
#[cfg(feature = "schema")]
mod schema_default {
    use super::*;

    pub(super) fn health_checks() -> Option<Vec<RouteMatch>> {
        Some(default_health_checks())
    }
    pub(super) fn failure_statuses() -> Option<StatusSet> {
        default_classifier_sets().ok().map(|(s, _, _)| s)
    }
    pub(super) fn grpc_failure_codes() -> Option<GrpcCodeSet> {
        default_classifier_sets().ok().map(|(_, g, _)| g)
    }
    pub(super) fn local_failures() -> Option<LocalFailureSet> {
        default_classifier_sets().ok().map(|(_, _, l)| l)
    }
}

/// The configuration's JSON Schema (committed as `schemas/failure-padding.schema.json` by
/// `cargo pack schema`), derived from the types this module parses with.
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    resilience_core::schema::filter_schema::<RawGlobal, RawSettings>(
        &resilience_core::schema::FilterSchema {
            name: "failure-padding",
            description: env!("CARGO_PKG_DESCRIPTION"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        match parse(json.as_bytes()) {
            Ok(_) => panic!("expected {json} to be rejected"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_empty_configuration_means_every_default() {
        let c = parse(b"").unwrap();
        let s = &c.routes.defaults;
        assert_eq!(s.mode, Mode::Enforce);
        assert_eq!(s.policy, Policy::default());
        assert_eq!(s.percentile, 50.0);
        assert_eq!(s.half_life_samples, 1_000);
        assert_eq!(s.health_checks.len(), 1);
        assert!(s.classifier.statuses.contains(500));
        assert!(!s.classifier.statuses.contains(501));
        assert!(!s.classifier.statuses.contains(404));
        assert!(!s.classifier.statuses.contains(429));
        assert!(s.classifier.grpc_codes.contains(14));
        assert_eq!(c.global.max_keys, 100);
        assert_eq!(c.global.sync_interval_ms, 100);
        assert_eq!(c.global.max_padded_in_flight, 100);
        assert_eq!(c.global.stat_prefix, "failure_padding");
    }

    #[test]
    fn a_route_overrides_only_the_fields_it_names() {
        let c = parse(
            br#"{"factor": 1.2, "max_padding": "2s",
                 "routes": [{"name": "search", "match": {"prefix": "/search"}, "percentile": 90}]}"#,
        )
        .unwrap();
        let r = &c.routes.routes[0].settings;
        assert_eq!(r.percentile, 90.0);
        assert_eq!(r.policy.factor, 1.2);
        assert_eq!(r.policy.max_padding_ms, 2_000);
        assert_eq!(c.routes.defaults.percentile, 50.0);
    }

    #[test]
    fn out_of_range_values_name_their_field_and_rule() {
        assert_eq!(
            err(r#"{"routes": [{"match": {"prefix": "/a"}, "factor": 20}]}"#),
            "routes[0].factor: must be between 0.1 and 10, got 20"
        );
        assert_eq!(
            err(r#"{"max_padded_in_flight": 0}"#),
            "max_padded_in_flight: must be between 1 and 100000, got 0 (use \"mode\": \"disabled\" to turn padding off)"
        );
        assert_eq!(
            err(r#"{"max_padding": "10m"}"#),
            "max_padding: must be between 1ms and 5m, got 10m"
        );
        assert!(err(r#"{"percentile": 0}"#).starts_with("percentile: must be greater than 0"));
        assert!(err(r#"{"percentile": 150}"#).starts_with("percentile: must be"));
        assert!(err(r#"{"min_samples": 0}"#).starts_with("min_samples: "));
        assert!(err(r#"{"half_life_samples": 1}"#).starts_with("half_life_samples: "));
        assert!(err(r#"{"fallback_target": "0s"}"#).starts_with("fallback_target: "));
        assert!(err(r#"{"deadline_header": "bad header"}"#).starts_with("deadline_header: "));
        assert!(err(r#"{"sync_interval": "5ms"}"#).starts_with("sync_interval: "));
        assert!(err(r#"{"mode": "sometimes"}"#).starts_with("mode"));
        assert!(err(r#"{"max_padding": 100}"#).starts_with("max_padding: "));
    }

    #[test]
    fn unknown_fields_and_filter_wide_fields_in_routes_are_rejected() {
        assert!(err(r#"{"padding_factor": 1}"#).contains("padding_factor"));
        assert!(
            err(r#"{"routes": [{"match": {"prefix": "/a"}, "max_padded_in_flight": 3}]}"#)
                .starts_with("routes[0].max_padded_in_flight: is a filter-wide setting")
        );
    }

    #[test]
    fn health_check_matchers_need_a_criterion() {
        assert_eq!(
            err(r#"{"health_checks": [{"exact": "/healthz"}, {}]}"#),
            "health_checks[1]: must name at least one of route_name, prefix, exact, method, headers"
        );
        let c = parse(br#"{"health_checks": [{"exact": "/healthz"}]}"#).unwrap();
        assert_eq!(
            c.routes.defaults.health_checks[0].exact.as_deref(),
            Some("/healthz")
        );
    }

    #[test]
    fn two_routes_with_the_same_name_are_rejected() {
        assert!(err(r#"{"routes": [{"name": "a", "match": {"prefix": "/a"}}, {"name": "a", "match": {"prefix": "/b"}}]}"#)
            .starts_with("routes[1].name: \"a\" is already the name"));
    }

    #[test]
    fn four_hundreds_can_be_made_failures_explicitly() {
        let c = parse(br#"{"failure_statuses": ["5xx", 429]}"#).unwrap();
        assert!(c.routes.defaults.classifier.statuses.contains(429));
        assert!(!c.routes.defaults.classifier.statuses.contains(404));
    }
}
