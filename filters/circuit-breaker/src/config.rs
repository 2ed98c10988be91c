//! The filter's configuration: parsed from the Wasm filter's JSON, then checked into settings.
//!
//! Why two steps: serde catches the shape (types, unknown fields) with the JSON path; the checks
//! that relate fields (`max_open_duration` ≥ `open_duration`, `force_open` and `force_closed` not
//! both) run after and name the field too. Either way Envoy refuses the filter at load with a log
//! line such as `routes[1].failure_rate_threshold: must be between 0 and 100, got 150`; nothing is
//! silently ignored.
//!
//! Top-level fields that are not global (see [`GLOBAL_FIELDS`]) are the defaults; each `routes`
//! entry overrides them field by field for the requests its `match` selects.

use resilience_core::breaker::{Policy, WindowSpec};
use resilience_core::config::{
    check_generic_route_names, check_header_name, check_max_keys, check_stat_prefix,
    check_sync_interval, default_generic_route_names, field_path as field, is_token_byte,
    ConfigError, DurationMs, Percent,
};
use resilience_core::outcome::{Classifier, GrpcCodeSet, LocalFailure, LocalFailureSet, StatusSet};
use resilience_core::routes::{parse_filter_config, RouteTable};
use serde::Deserialize;

/// Fields that apply to the whole filter instance and cannot be overridden per route.
pub const GLOBAL_FIELDS: &[&str] = &[
    "key_header",
    "max_keys",
    "sync_interval",
    "stat_prefix",
    "generic_route_names",
    "max_open_percent",
];

/// Headers every rejection carries (an HTTP one, or the gRPC answer to a gRPC call) and
/// configuration must not duplicate.
const RESERVED_HEADERS: &[&str] = &[
    "retry-after",
    "content-type",
    DECISION_HEADER,
    "grpc-status",
    "grpc-message",
    "grpc-retry-pushback-ms",
    "grpc-status-details-bin",
];

/// The response header that explains a rejection (and, in dry-run, a would-be rejection).
pub const DECISION_HEADER: &str = "x-resilience-circuit-breaker";

#[derive(Deserialize, Debug)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    /// Also key breakers by this request header's value (a header name, 1-128 token
    /// characters), so one tenant's failures open only that tenant's breaker. Bounded by
    /// `max_keys`.
    key_header: Option<String>,
    /// Most breaker keys per filter instance (1-10000): shared data cannot delete, so the key
    /// space is bounded. Past it, requests pass unguarded.
    #[serde(default = "default_max_keys")]
    max_keys: u32,
    /// The tick (10ms-10s) that publishes outcomes, refreshes views and flushes stats.
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
    /// The open-breaker governor: at most this share (1-100) of the keys may be open at once,
    /// so a wide outage cannot open every breaker. Unset or 100 turns it off.
    max_open_percent: Option<Percent>,
}

fn default_max_keys() -> u32 {
    100
}
fn default_sync_interval() -> DurationMs {
    DurationMs(100)
}
fn default_stat_prefix() -> String {
    "circuit_breaker".to_owned()
}

/// `enforce` rejects, `dry_run` only counts and logs what it would reject, `disabled` does nothing.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Reject requests while the breaker is open.
    #[default]
    Enforce,
    /// Never reject; count and mark what would have been rejected.
    DryRun,
    /// Pass requests unguarded and uncounted.
    Disabled,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", schemars(rename = "WindowType"))]
#[serde(rename_all = "snake_case")]
enum RawWindowType {
    /// Rates over the last `window` of time.
    #[default]
    Time,
    /// Rates over the last `window_size` outcomes.
    Count,
}

/// How a rejection looks on the wire; by default a 503 with an application/problem+json body.
#[derive(Deserialize, Debug, Clone, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Rejection"))]
#[serde(deny_unknown_fields)]
struct RawRejection {
    /// The status of a rejection, 200-599.
    #[cfg_attr(
        feature = "schema",
        schemars(default = "schema_default::rejection_status")
    )]
    status: Option<u16>,
    /// Extra headers, name to value. Names are token characters and not retry-after,
    /// content-type or x-resilience-circuit-breaker (the filter sets those); values contain no
    /// CR, LF or NUL.
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// A fixed body instead of the problem+json one.
    body: Option<String>,
    /// The content type of `body` (text/plain when unset); only together with `body`.
    content_type: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSettings {
    /// Whether the breaker acts, only counts, or does nothing.
    #[serde(default)]
    mode: Mode,
    /// Rates over a span of time or over a number of outcomes.
    #[serde(default)]
    window_type: RawWindowType,
    /// The time window (100ms-1h), in 10 buckets: an outcome is forgotten 90-100% of it later.
    /// Checked only for the time window.
    #[serde(default = "d_window")]
    window: DurationMs,
    /// The count window's size (1-10000 outcomes). Checked only for the count window, where
    /// `minimum_requests` must not exceed it.
    #[serde(default = "d_window_size")]
    window_size: u32,
    /// The rate signals wait until the window holds this many outcomes (at least 1).
    #[serde(default = "d_minimum_requests")]
    minimum_requests: u32,
    /// Trip when failures / outcomes reach this percentage (above 0). null turns the signal off.
    #[serde(default = "d_failure_rate")]
    failure_rate_threshold: Option<Percent>,
    /// A call is slow when its response headers take at least this long (at least 1ms). Unset
    /// turns the slow-call signal off.
    slow_call_duration: Option<DurationMs>,
    /// Trip when slow calls / outcomes reach this percentage (above 0); applies only with
    /// `slow_call_duration`. null turns the signal off.
    #[serde(default = "d_slow_rate")]
    slow_call_rate_threshold: Option<Percent>,
    /// Trip after this many failures in a row; 0 turns the signal off.
    #[serde(default)]
    consecutive_failures: u32,
    /// HTTP statuses that count as failures.
    #[cfg_attr(
        feature = "schema",
        schemars(default = "schema_default::failure_statuses")
    )]
    failure_statuses: Option<StatusSet>,
    /// gRPC statuses that count as failures.
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
    /// How long the first trip stays open (at least 1ms).
    #[serde(default = "d_open_duration")]
    open_duration: DurationMs,
    /// Each further trip without a close multiplies the open time by this (1-100).
    #[serde(default = "d_multiplier")]
    open_duration_multiplier: f64,
    /// Cap on the open time, upstream retry-after hints included; at least `open_duration`.
    #[serde(default = "d_max_open")]
    max_open_duration: DurationMs,
    /// Shortens each open time by a random 0 to this percentage, so breakers opened together do
    /// not probe together.
    #[serde(default = "d_jitter")]
    open_jitter_percent: Percent,
    /// Probes admitted while half-open, across all workers (1-1000); all must succeed to close.
    #[serde(default = "d_probes")]
    half_open_probes: u32,
    /// A probe permit that never reports back is returned after this long (at least 1ms).
    #[serde(default = "d_probe_timeout")]
    probe_timeout: DurationMs,
    /// Stay open at least as long as the upstream's retry-after asked, up to
    /// `max_open_duration`.
    #[serde(default)]
    honor_retry_after: bool,
    /// Reject every request, whatever the breaker's state.
    #[serde(default)]
    force_open: bool,
    /// Pass every request, unguarded and uncounted; not together with `force_open`.
    #[serde(default)]
    force_closed: bool,
    /// How a rejection looks.
    #[serde(default)]
    rejection: RawRejection,
    /// While the breaker is open, learn that the dependency is back without sending it a user's
    /// request: this request is sent through `cluster` every `interval`, and its success moves
    /// the breaker to half-open at once. Unset: the breaker waits out its open time.
    active_probe: Option<RawActiveProbe>,
}

/// A request the breaker sends on its own while open (see `active_probe`).
#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "ActiveProbe"))]
#[serde(deny_unknown_fields)]
struct RawActiveProbe {
    /// The Envoy cluster the probe goes through (1-256 characters).
    cluster: String,
    /// The path, starting with "/", without spaces or control characters.
    path: String,
    /// The HTTP method.
    #[serde(default = "d_probe_method")]
    method: String,
    /// Extra headers, name to value (not host: see `authority`).
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// The probe's :authority; defaults to `cluster`.
    authority: Option<String>,
    /// How often a probe is sent while open, across all workers together (10ms-1h); a worker
    /// sends on its tick, so the effective interval is rounded up to `sync_interval`.
    #[serde(default = "d_probe_interval")]
    interval: DurationMs,
    /// The probe's timeout (1ms-1min); a probe that times out is a failure.
    #[serde(default = "d_probe_timeout_active")]
    timeout: DurationMs,
}

fn d_probe_method() -> String {
    "GET".to_owned()
}
fn d_probe_interval() -> DurationMs {
    DurationMs(250)
}
fn d_probe_timeout_active() -> DurationMs {
    DurationMs(500)
}

/// A checked `active_probe`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveProbe {
    pub cluster: String,
    /// `:method`, `:path`, `:authority` and the extra headers.
    pub headers: Vec<(String, String)>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

fn check_active_probe(raw: &RawActiveProbe, prefix: &str) -> Result<ActiveProbe, ConfigError> {
    let at = field(prefix, "active_probe");
    let err = |name: &str, rule: String| ConfigError::new(field(&at, name), rule);
    if raw.cluster.is_empty()
        || raw.cluster.len() > 256
        || raw.cluster.bytes().any(|b| b.is_ascii_control())
    {
        return Err(err(
            "cluster",
            "must be a cluster name of 1 to 256 characters".to_owned(),
        ));
    }
    let interval_ms = raw.interval.as_ms();
    if !(10..=3_600_000).contains(&interval_ms) {
        return Err(err(
            "interval",
            format!("must be between 10ms and 1h, got {}", raw.interval),
        ));
    }
    let timeout_ms = raw.timeout.as_ms();
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(err(
            "timeout",
            format!("must be between 1ms and 1min, got {}", raw.timeout),
        ));
    }
    let authority = raw.authority.as_deref().unwrap_or(&raw.cluster);
    let headers = resilience_core::config::check_callout_headers(
        &at,
        &raw.method,
        &raw.path,
        authority,
        &raw.headers,
    )?;
    Ok(ActiveProbe {
        cluster: raw.cluster.clone(),
        headers,
        interval_ms,
        timeout_ms,
    })
}

fn d_window() -> DurationMs {
    DurationMs(10_000)
}
fn d_window_size() -> u32 {
    100
}
fn d_minimum_requests() -> u32 {
    20
}
fn d_failure_rate() -> Option<Percent> {
    serde_json::from_str("50").ok()
}
fn d_slow_rate() -> Option<Percent> {
    serde_json::from_str("100").ok()
}
fn d_open_duration() -> DurationMs {
    DurationMs(5_000)
}
fn d_multiplier() -> f64 {
    2.0
}
fn d_max_open() -> DurationMs {
    DurationMs(60_000)
}
fn d_jitter() -> Percent {
    serde_json::from_str("10").unwrap_or_default()
}
fn d_probes() -> u32 {
    3
}
fn d_probe_timeout() -> DurationMs {
    DurationMs(10_000)
}

/// The status of a rejection unless `rejection.status` says otherwise.
const DEFAULT_REJECTION_STATUS: u16 = 503;

/// How a rejection looks on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// A fixed body and its content type instead of the problem+json default.
    pub body: Option<(String, String)>,
}

/// One breaker's checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub policy: Policy,
    pub classifier: Classifier,
    pub force_open: bool,
    pub force_closed: bool,
    pub rejection: Rejection,
    pub active_probe: Option<ActiveProbe>,
}

/// Settings of the whole filter instance.
#[derive(Debug, Clone)]
pub struct Global {
    pub key_header: Option<String>,
    pub max_keys: u32,
    pub sync_interval_ms: u64,
    pub stat_prefix: String,
    /// Envoy route names that do not identify a destination: a request no `routes` entry
    /// matched is keyed by its cluster instead (Istio's `default`).
    pub generic_route_names: Vec<String>,
    /// `max_open_percent` when below 100 (the governor is off otherwise).
    pub max_open_percent: Option<f64>,
}

/// The checked configuration.
#[derive(Debug)]
pub struct FilterConfig {
    pub global: Global,
    pub routes: RouteTable<Settings>,
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
    let max_open_percent = match raw.max_open_percent.map(|p| p.value()) {
        None => None,
        Some(p) if p >= 100.0 => None,
        Some(p) if p < 1.0 => {
            return Err(ConfigError::new(
                "max_open_percent",
                format!("must be between 1 and 100 (100 turns the governor off), got {p}"),
            ))
        }
        Some(p) => Some(p),
    };
    Ok(Global {
        max_open_percent,
        generic_route_names: check_generic_route_names(raw.generic_route_names)?,
        max_keys: check_max_keys(raw.max_keys)?,
        sync_interval_ms: check_sync_interval(raw.sync_interval)?,
        key_header: match &raw.key_header {
            Some(h) => Some(check_header_name("key_header", h)?),
            None => None,
        },
        stat_prefix: {
            check_stat_prefix(&raw.stat_prefix)?;
            raw.stat_prefix
        },
    })
}

fn default_classifier_sets() -> Result<(StatusSet, GrpcCodeSet, LocalFailureSet), ConfigError> {
    let statuses = StatusSet::from_strs(&["500", "502-599"])
        .map_err(|e| ConfigError::new("failure_statuses", e))?;
    let grpc: GrpcCodeSet =
        serde_json::from_str(r#"["UNAVAILABLE","DEADLINE_EXCEEDED","INTERNAL","UNKNOWN"]"#)
            .map_err(|e| ConfigError::new("grpc_failure_codes", e.to_string()))?;
    let local: LocalFailureSet = serde_json::from_str(r#"["connect_failure","reset","timeout"]"#)
        .map_err(|e| ConfigError::new("local_failures", e.to_string()))?;
    Ok((statuses, grpc, local))
}

fn check_settings(raw: RawSettings, prefix: &str) -> Result<Settings, ConfigError> {
    let err = |name: &str, rule: String| ConfigError::new(field(prefix, name), rule);
    let window = match raw.window_type {
        RawWindowType::Time => {
            let ms = raw.window.as_ms();
            if !(100..=3_600_000).contains(&ms) {
                return Err(err(
                    "window",
                    format!("must be between 100ms and 1h, got {}", raw.window),
                ));
            }
            WindowSpec::Time {
                window_ms: ms,
                buckets: 10,
            }
        }
        RawWindowType::Count => {
            if !(1..=10_000).contains(&raw.window_size) {
                return Err(err(
                    "window_size",
                    format!("must be between 1 and 10000, got {}", raw.window_size),
                ));
            }
            WindowSpec::Count {
                size: raw.window_size,
            }
        }
    };
    if raw.minimum_requests == 0 {
        return Err(err(
            "minimum_requests",
            "must be at least 1, got 0".to_owned(),
        ));
    }
    if let WindowSpec::Count { size } = window {
        if raw.minimum_requests > size {
            return Err(err(
                "minimum_requests",
                format!(
                    "must not exceed window_size ({size}) with a count window, got {}: the rate signals could never fire",
                    raw.minimum_requests
                ),
            ));
        }
    }
    for (name, threshold) in [
        ("failure_rate_threshold", raw.failure_rate_threshold),
        ("slow_call_rate_threshold", raw.slow_call_rate_threshold),
    ] {
        if threshold.is_some_and(|p| p.value() <= 0.0) {
            return Err(err(
                name,
                "must be greater than 0 (a 0% threshold trips without any failure; use null to disable the signal)".to_owned(),
            ));
        }
    }
    if raw.open_duration.as_ms() == 0 {
        return Err(err(
            "open_duration",
            "must be at least 1ms, got 0s".to_owned(),
        ));
    }
    if raw.max_open_duration < raw.open_duration {
        return Err(err(
            "max_open_duration",
            format!(
                "must be at least open_duration ({}), got {}",
                raw.open_duration, raw.max_open_duration
            ),
        ));
    }
    if !(raw.open_duration_multiplier.is_finite()
        && (1.0..=100.0).contains(&raw.open_duration_multiplier))
    {
        return Err(err(
            "open_duration_multiplier",
            format!(
                "must be between 1 and 100, got {}",
                raw.open_duration_multiplier
            ),
        ));
    }
    if !(1..=1_000).contains(&raw.half_open_probes) {
        return Err(err(
            "half_open_probes",
            format!("must be between 1 and 1000, got {}", raw.half_open_probes),
        ));
    }
    if raw.probe_timeout.as_ms() == 0 {
        return Err(err(
            "probe_timeout",
            "must be at least 1ms, got 0s".to_owned(),
        ));
    }
    if raw.force_open && raw.force_closed {
        return Err(err(
            "force_closed",
            "cannot be true together with force_open".to_owned(),
        ));
    }
    let status = raw.rejection.status.unwrap_or(DEFAULT_REJECTION_STATUS);
    if !(200..=599).contains(&status) {
        return Err(err(
            "rejection.status",
            format!("must be between 200 and 599, got {status}"),
        ));
    }
    let mut headers = Vec::with_capacity(raw.rejection.headers.len());
    for (k, v) in raw.rejection.headers {
        if k.is_empty() || !k.bytes().all(is_token_byte) || k.starts_with(':') {
            return Err(err(
                "rejection.headers",
                format!("{k:?} is not a valid header name"),
            ));
        }
        if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
            return Err(err(
                "rejection.headers",
                format!("{k:?} is set by the filter itself and cannot be configured"),
            ));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(err(
                &format!("rejection.headers.{k}"),
                "must not contain CR, LF or NUL".to_owned(),
            ));
        }
        headers.push((k.to_ascii_lowercase(), v));
    }
    let body = match (raw.rejection.body, raw.rejection.content_type) {
        (Some(b), ct) => Some((b, ct.unwrap_or_else(|| "text/plain".to_owned()))),
        (None, Some(_)) => {
            return Err(err(
                "rejection.content_type",
                "needs rejection.body (the default body is application/problem+json)".to_owned(),
            ))
        }
        (None, None) => None,
    };
    let (d_statuses, d_grpc, d_local) = default_classifier_sets()?;
    let active_probe = match &raw.active_probe {
        Some(p) => Some(check_active_probe(p, prefix)?),
        None => None,
    };
    let slow_call_ms = raw.slow_call_duration.map(|d| d.as_ms());
    if slow_call_ms == Some(0) {
        return Err(err(
            "slow_call_duration",
            "must be at least 1ms, got 0s".to_owned(),
        ));
    }
    Ok(Settings {
        mode: raw.mode,
        policy: Policy {
            window,
            minimum_requests: raw.minimum_requests,
            failure_rate_threshold: raw.failure_rate_threshold.map(|p| p.value()),
            slow_call_rate_threshold: match slow_call_ms {
                Some(_) => raw.slow_call_rate_threshold.map(|p| p.value()),
                None => None,
            },
            consecutive_failures: raw.consecutive_failures,
            open_duration_ms: raw.open_duration.as_ms(),
            open_duration_multiplier: raw.open_duration_multiplier,
            max_open_duration_ms: raw.max_open_duration.as_ms(),
            open_jitter: raw.open_jitter_percent.fraction(),
            half_open_probes: raw.half_open_probes,
            probe_timeout_ms: raw.probe_timeout.as_ms(),
            honor_retry_after: raw.honor_retry_after,
        },
        classifier: Classifier {
            statuses: raw.failure_statuses.unwrap_or(d_statuses),
            grpc_codes: raw.grpc_failure_codes.unwrap_or(d_grpc),
            local: raw.local_failures.unwrap_or(d_local),
            slow_call_ms,
        },
        force_open: raw.force_open,
        force_closed: raw.force_closed,
        rejection: Rejection {
            status,
            headers,
            body,
        },
        active_probe,
    })
}

/// Defaults the checks apply to fields left unset, for the schema: from the same sources.
#[cfg(feature = "schema")]
mod schema_default {
    use super::*;

    pub(super) fn rejection_status() -> Option<u16> {
        Some(DEFAULT_REJECTION_STATUS)
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

/// The configuration's JSON Schema (committed as `schemas/circuit-breaker.schema.json` by
/// `cargo pack schema`), derived from the types this module parses with.
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    resilience_core::schema::filter_schema::<RawGlobal, RawSettings>(
        &resilience_core::schema::FilterSchema {
            name: "circuit-breaker",
            description: env!("CARGO_PKG_DESCRIPTION"),
        },
    )
}

/// Whether a local failure is one the breaker counts under these settings.
pub fn counts_local(settings: &Settings, f: LocalFailure) -> bool {
    settings.classifier.local.contains(f)
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
        assert_eq!(
            s.policy,
            Policy {
                open_jitter: 0.1,
                ..Policy::default()
            }
        );
        assert!(s.classifier.statuses.contains(500));
        assert!(!s.classifier.statuses.contains(501));
        assert!(s.classifier.statuses.contains(503));
        assert!(!s.classifier.statuses.contains(429));
        assert!(s.classifier.grpc_codes.contains(14));
        assert!(!s.classifier.grpc_codes.contains(5));
        assert_eq!(s.rejection.status, 503);
        assert_eq!(c.global.max_keys, 100);
        assert_eq!(c.global.sync_interval_ms, 100);
        assert_eq!(c.global.generic_route_names, vec!["default".to_owned()]);
        assert_eq!(c.global.max_open_percent, None);
    }

    #[test]
    fn max_open_percent_is_filter_wide_and_100_turns_the_governor_off() {
        assert_eq!(
            parse(br#"{"max_open_percent": 50}"#)
                .unwrap()
                .global
                .max_open_percent,
            Some(50.0)
        );
        assert_eq!(
            parse(br#"{"max_open_percent": 100}"#)
                .unwrap()
                .global
                .max_open_percent,
            None
        );
        assert!(err(r#"{"max_open_percent": 0.5}"#)
            .starts_with("max_open_percent: must be between 1 and 100"));
        assert!(err(r#"{"max_open_percent": 150}"#).starts_with("max_open_percent: "));
        assert!(
            err(r#"{"routes": [{"match": {"prefix": "/"}, "max_open_percent": 50}]}"#)
                .starts_with("routes[0].max_open_percent: is a filter-wide setting")
        );
    }

    #[test]
    fn generic_route_names_are_filter_wide_and_checked() {
        let c = parse(br#"{"generic_route_names": []}"#).unwrap();
        assert!(c.global.generic_route_names.is_empty());
        assert_eq!(
            err(r#"{"generic_route_names": ["default", ""]}"#),
            "generic_route_names[1]: must be 1 to 256 bytes long, got 0"
        );
        assert!(
            err(r#"{"routes": [{"match": {"prefix": "/"}, "generic_route_names": []}]}"#)
                .starts_with("routes[0].generic_route_names: is a filter-wide setting")
        );
        // A typo at the top level is told the filter-wide fields too.
        assert!(err(r#"{"generic_route_name": []}"#).contains("or a filter-wide field: "));
    }

    #[test]
    fn a_route_overrides_only_the_fields_it_names() {
        let c = parse(
            br#"{"failure_rate_threshold": 30, "minimum_requests": 5,
                 "routes": [{"name": "slow", "match": {"prefix": "/slow"}, "minimum_requests": 50}]}"#,
        )
        .unwrap();
        let r = &c.routes.routes[0].settings.policy;
        assert_eq!(r.minimum_requests, 50);
        assert_eq!(r.failure_rate_threshold, Some(30.0));
        assert_eq!(c.routes.defaults.policy.minimum_requests, 5);
    }

    #[test]
    fn an_out_of_range_threshold_in_a_route_names_the_route_and_field() {
        assert_eq!(
            err(
                r#"{"routes": [{"match": {"prefix": "/a"}}, {"match": {"prefix": "/b"}, "failure_rate_threshold": 150}]}"#
            ),
            "routes[1].failure_rate_threshold: must be between 0 and 100, got 150"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        assert!(err(r#"{"failure_rate": 10}"#).contains("failure_rate"));
    }

    #[test]
    fn a_maximum_open_time_below_the_open_time_is_rejected() {
        assert_eq!(
            err(r#"{"open_duration": "10s", "max_open_duration": "1s"}"#),
            "max_open_duration: must be at least open_duration (10s), got 1s"
        );
    }

    #[test]
    fn forcing_open_and_closed_at_once_is_rejected() {
        assert_eq!(
            err(r#"{"force_open": true, "force_closed": true}"#),
            "force_closed: cannot be true together with force_open"
        );
    }

    #[test]
    fn bad_durations_statuses_and_modes_name_their_field() {
        assert!(err(r#"{"window": 10}"#).starts_with("window: "));
        assert!(err(r#"{"failure_statuses": ["6xx"]}"#).starts_with("failure_statuses"));
        assert!(err(r#"{"mode": "sometimes"}"#).starts_with("mode"));
        assert!(err(r#"{"max_keys": 0}"#).starts_with("max_keys: "));
        assert!(err(r#"{"half_open_probes": 0}"#).starts_with("half_open_probes: "));
        assert!(err(r#"{"rejection": {"status": 99}}"#).starts_with("rejection.status: "));
        assert!(err(r#"{"key_header": "bad header"}"#).starts_with("key_header: "));
    }

    #[test]
    fn a_zero_threshold_is_rejected_because_it_would_trip_without_failures() {
        assert!(err(r#"{"failure_rate_threshold": 0}"#)
            .starts_with("failure_rate_threshold: must be greater than 0"));
    }

    #[test]
    fn a_count_window_smaller_than_minimum_requests_is_rejected() {
        assert_eq!(
            err(r#"{"window_type": "count", "window_size": 10}"#),
            "minimum_requests: must not exceed window_size (10) with a count window, got 20: the rate signals could never fire"
        );
    }

    #[test]
    fn rejection_headers_may_not_replace_the_ones_the_filter_sets() {
        assert!(err(r#"{"rejection": {"headers": {"Retry-After": "1"}}}"#)
            .starts_with("rejection.headers: \"Retry-After\" is set by the filter itself"));
        for grpc in [
            "grpc-status",
            "Grpc-Message",
            "grpc-retry-pushback-ms",
            "grpc-status-details-bin",
        ] {
            assert!(
                err(&format!(
                    r#"{{"rejection": {{"headers": {{"{grpc}": "1"}}}}}}"#
                ))
                .contains("is set by the filter itself"),
                "{grpc}"
            );
        }
    }

    #[test]
    fn two_routes_with_the_same_name_are_rejected() {
        assert!(err(r#"{"routes": [{"name": "a", "match": {"prefix": "/a"}}, {"name": "a", "match": {"prefix": "/b"}}]}"#)
            .starts_with("routes[1].name: \"a\" is already the name"));
    }

    #[test]
    fn a_null_threshold_disables_that_signal() {
        let c = parse(br#"{"failure_rate_threshold": null, "consecutive_failures": 3}"#).unwrap();
        assert_eq!(c.routes.defaults.policy.failure_rate_threshold, None);
    }

    #[test]
    fn the_slow_call_signal_is_off_until_a_slow_call_duration_is_set() {
        let c = parse(br#"{"slow_call_rate_threshold": 50}"#).unwrap();
        assert_eq!(c.routes.defaults.policy.slow_call_rate_threshold, None);
        let c =
            parse(br#"{"slow_call_rate_threshold": 50, "slow_call_duration": "200ms"}"#).unwrap();
        assert_eq!(
            c.routes.defaults.policy.slow_call_rate_threshold,
            Some(50.0)
        );
        assert_eq!(c.routes.defaults.classifier.slow_call_ms, Some(200));
    }
}
