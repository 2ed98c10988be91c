//! The filter's configuration: parsed from the Wasm filter's JSON, then checked into settings.
//!
//! Why two steps: serde catches the shape (types, unknown fields) with the JSON path; the checks
//! that relate fields (`retry_after_max` ≥ `retry_after_min`, whole seconds, known retry
//! conditions) run after and name the field too. Either way Envoy refuses the filter at load with
//! a log line such as `routes[0].budget_percent: must be between 0 and 100, got 150`; nothing is
//! silently ignored.
//!
//! Top-level fields that are not filter-wide (see [`GLOBAL_FIELDS`]) are the defaults; each
//! `routes` entry overrides them field by field for the requests its `match` selects.

use resilience_core::budget::BudgetPolicy;
use resilience_core::config::{
    check_generic_route_names, check_header_name, check_max_keys, check_stat_prefix,
    check_sync_interval, default_generic_route_names, field_path as field, ConfigError, DurationMs,
    Percent,
};
use resilience_core::routes::{parse_filter_config, RouteTable};
use serde::Deserialize;

/// Fields that apply to the whole filter instance and cannot be overridden per route.
pub const GLOBAL_FIELDS: &[&str] = &[
    "max_keys",
    "sync_interval",
    "stat_prefix",
    "generic_route_names",
];

/// The response header that explains a decision.
pub const DECISION_HEADER: &str = "x-resilience-retry-budget";

/// The header the hop guard adds to a request that arrived as a retry, so later hops know it is
/// one even after this hop's router renumbered `x-envoy-attempt-count`. Always recognised.
pub const HOP_GUARD_HEADER: &str = "x-resilience-retried";

/// Buckets of the budget window: a request or retry is forgotten 90–100% of `window` later.
pub const WINDOW_BUCKETS: u32 = 10;

/// Most header names in one list (each is a host call per request).
const MAX_HEADER_NAMES: usize = 8;

/// Envoy's router numbers attempts here (1 is the first).
const DEFAULT_ATTEMPT_COUNT_HEADERS: &[&str] = &["x-envoy-attempt-count"];
/// gRPC clients count earlier attempts here (0 is the first).
const DEFAULT_PREVIOUS_ATTEMPTS_HEADERS: &[&str] = &["grpc-previous-rpc-attempts"];

/// Retry conditions the router accepts in `x-envoy-retry-on`.
const RETRY_ON_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
];

/// gRPC retry conditions: the router accepts them in `x-envoy-retry-grpc-on`, and retries a
/// gRPC answer whose status is one of them.
const RETRY_GRPC_ON_CONDITIONS: &[&str] = &[
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

#[derive(Deserialize, Debug)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    /// Most budget keys per filter instance (1-10000): shared data cannot delete, so the key
    /// space is bounded. Past it, requests pass unguarded.
    #[serde(default = "default_max_keys")]
    max_keys: u32,
    /// The tick (10ms-10s) that publishes counts and refunds, renews leases, shares latencies
    /// and flushes stats; also how long a worker waits after finding the budget empty.
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
}

fn default_max_keys() -> u32 {
    100
}
fn default_sync_interval() -> DurationMs {
    DurationMs(100)
}
fn default_stat_prefix() -> String {
    "retry_budget".to_owned()
}

/// Which side of a hop the filter guards, and whether it acts or only counts.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Caller side, before the router: bounds the retries this Envoy makes.
    #[default]
    Outbound,
    /// Server side, in front of the app: sheds incoming retries beyond the budget.
    Inbound,
    /// `outbound`, but only counts, logs and marks what it would deny.
    OutboundDryRun,
    /// `inbound`, but only counts, logs and marks what it would shed.
    InboundDryRun,
    /// Does nothing; requests are not counted.
    Disabled,
}

/// The side a mode works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Outbound,
    Inbound,
}

impl Mode {
    /// The side, `None` when disabled.
    pub fn side(self) -> Option<Side> {
        match self {
            Mode::Outbound | Mode::OutboundDryRun => Some(Side::Outbound),
            Mode::Inbound | Mode::InboundDryRun => Some(Side::Inbound),
            Mode::Disabled => None,
        }
    }

    /// Whether decisions are only counted.
    pub fn dry_run(self) -> bool {
        matches!(self, Mode::OutboundDryRun | Mode::InboundDryRun)
    }
}

#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSettings {
    /// Which side of a hop the filter guards, and whether it acts or only counts.
    #[serde(default)]
    mode: Mode,
    /// Retries may be this share of the requests in the window; 0 leaves only the floor.
    #[serde(default = "d_budget_percent")]
    budget_percent: Percent,
    /// The sliding window (1s-1h), in 10 buckets: a request or retry is forgotten 90-100% of it
    /// later.
    #[serde(default = "d_window")]
    window: DurationMs,
    /// The floor (0-100000): this many retries per second of `window` are allowed whatever the
    /// traffic.
    #[serde(default = "d_min_rps")]
    min_retries_per_second: f64,
    /// Pacing (100-1000, null: off): a tenth of the window may charge at most this percent of an
    /// even spread of the budget, so saved-up budget cannot go out in one burst (at a spike's
    /// start, or when a busy bucket leaves the window).
    #[serde(default)]
    burst_cap_percent: Option<f64>,
    /// Outbound: retries reserved for and granted to one request (0-100), sent as
    /// x-envoy-max-retries, which replaces the route's num_retries: set it to that. Required in
    /// the outbound modes, since any default would silently rewrite the route's retry count.
    max_retries: Option<u32>,
    /// Outbound: for requests that may retry, a comma list of Envoy's router retry conditions:
    /// HTTP ones (5xx, gateway-error, reset, connect-failure, ...) are sent as x-envoy-retry-on,
    /// gRPC ones (cancelled, deadline-exceeded, internal, resource-exhausted, unavailable) as
    /// x-envoy-retry-grpc-on.
    #[cfg_attr(feature = "schema", schemars(schema_with = "schema_default::retry_on"))]
    retry_on: Option<String>,
    /// Outbound: x-envoy-upstream-rq-per-try-timeout-ms for requests that may retry (at least
    /// 1ms).
    per_try_timeout: Option<DurationMs>,
    /// Outbound: no retries for a request that arrived as a retry, which is marked
    /// x-resilience-retried for the hops after.
    #[serde(default = "d_true")]
    hop_guard: bool,
    /// Headers whose value is the attempt number (above 1 is a retry); at most 8.
    #[cfg_attr(
        feature = "schema",
        schemars(default = "schema_default::attempt_count_headers")
    )]
    attempt_count_headers: Option<Vec<String>>,
    /// Headers whose value counts earlier attempts (above 0 is a retry); at most 8.
    #[cfg_attr(
        feature = "schema",
        schemars(default = "schema_default::previous_attempts_headers")
    )]
    previous_attempts_headers: Option<Vec<String>>,
    /// Outbound: no retries when the remaining deadline is below the median latency.
    #[serde(default = "d_true")]
    deadline_aware: bool,
    /// An extra request header holding the remaining deadline in milliseconds.
    deadline_header: Option<String>,
    /// The median latency is trusted after this many samples across workers (1-1000000).
    #[serde(default = "d_min_latency_samples")]
    min_latency_samples: u32,
    /// Inbound: the status of a shed request (400-599).
    #[serde(default = "d_shed_status")]
    shed_status: u16,
    /// Lower bound of the jittered retry-after on sheds and hints: whole seconds, 1s-1h.
    #[serde(default = "d_retry_after_min")]
    retry_after_min: DurationMs,
    /// Upper bound of the jittered retry-after: whole seconds, 1s-1h, at least
    /// `retry_after_min`.
    #[serde(default = "d_retry_after_max")]
    retry_after_max: DurationMs,
    /// Add a jittered retry-after to upstream 503 and 429 responses that have none.
    #[serde(default)]
    add_retry_after: bool,
    /// Inbound: sheds carry x-envoy-ratelimited: true, so a calling Envoy does not retry them.
    #[serde(default = "d_true")]
    mark_ratelimited: bool,
}

fn d_budget_percent() -> Percent {
    Percent::clamped(20.0)
}
fn d_window() -> DurationMs {
    DurationMs(10_000)
}
fn d_min_rps() -> f64 {
    10.0
}
fn d_true() -> bool {
    true
}
fn d_min_latency_samples() -> u32 {
    20
}
fn d_shed_status() -> u16 {
    503
}
fn d_retry_after_min() -> DurationMs {
    DurationMs(1_000)
}
fn d_retry_after_max() -> DurationMs {
    DurationMs(5_000)
}

/// One key's checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub policy: BudgetPolicy,
    /// Outbound: retries reserved for, and allowed to, one request (`x-envoy-max-retries`).
    pub max_retries: u32,
    /// Outbound: `x-envoy-retry-on` set on requests that may retry (the HTTP conditions of
    /// `retry_on`).
    pub retry_on: Option<String>,
    /// Outbound: `x-envoy-retry-grpc-on` set on requests that may retry (the gRPC conditions of
    /// `retry_on`).
    pub retry_grpc_on: Option<String>,
    /// Outbound: `x-envoy-upstream-rq-per-try-timeout-ms` set on requests that may retry.
    pub per_try_timeout_ms: Option<u64>,
    pub hop_guard: bool,
    /// Lowercase names; the value is the attempt number (1 = first attempt).
    pub attempt_count_headers: Vec<String>,
    /// Lowercase names; the value counts earlier attempts (0 = first attempt).
    pub previous_attempts_headers: Vec<String>,
    pub deadline_aware: bool,
    /// Lowercase name of an extra header holding the remaining deadline in ms.
    pub deadline_header: Option<String>,
    pub min_latency_samples: u32,
    pub shed_status: u16,
    pub retry_after_min_s: u64,
    pub retry_after_max_s: u64,
    pub add_retry_after: bool,
    /// Inbound: sheds carry `x-envoy-ratelimited: true`, which a calling Envoy's router does not
    /// retry (unless its `retry_on` has `envoy-ratelimited`).
    pub mark_ratelimited: bool,
}

/// Settings of the whole filter instance.
#[derive(Debug, Clone)]
pub struct Global {
    pub max_keys: u32,
    pub sync_interval_ms: u64,
    pub stat_prefix: String,
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
    Ok(Global {
        generic_route_names: check_generic_route_names(raw.generic_route_names)?,
        max_keys,
        sync_interval_ms: sync,
        stat_prefix: raw.stat_prefix,
    })
}

fn header_list(
    prefix: &str,
    name: &str,
    given: Option<Vec<String>>,
    default: &[&str],
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = given else {
        return Ok(default.iter().map(|s| (*s).to_owned()).collect());
    };
    if list.len() > MAX_HEADER_NAMES {
        return Err(ConfigError::new(
            field(prefix, name),
            format!(
                "at most {MAX_HEADER_NAMES} header names, got {}",
                list.len()
            ),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, h)| check_header_name(&format!("{}[{i}]", field(prefix, name)), h))
        .collect()
}

fn whole_seconds(prefix: &str, name: &str, d: DurationMs) -> Result<u64, ConfigError> {
    let ms = d.as_ms();
    if ms == 0 || ms > 3_600_000 || !ms.is_multiple_of(1000) {
        return Err(ConfigError::new(
            field(prefix, name),
            format!("must be whole seconds between 1s and 1h (retry-after is in seconds), got {d}"),
        ));
    }
    Ok(ms / 1000)
}

fn check_settings(raw: RawSettings, prefix: &str) -> Result<Settings, ConfigError> {
    let err = |name: &str, rule: String| ConfigError::new(field(prefix, name), rule);
    let window_ms = raw.window.as_ms();
    if !(1_000..=3_600_000).contains(&window_ms) {
        return Err(err(
            "window",
            format!("must be between 1s and 1h, got {}", raw.window),
        ));
    }
    let rps = raw.min_retries_per_second;
    if !(rps.is_finite() && (0.0..=100_000.0).contains(&rps)) {
        return Err(err(
            "min_retries_per_second",
            format!("must be a number between 0 and 100000, got {rps}"),
        ));
    }
    if let Some(b) = raw
        .burst_cap_percent
        .filter(|b| !(b.is_finite() && (100.0..=1000.0).contains(b)))
    {
        return Err(err(
            "burst_cap_percent",
            format!("must be a number between 100 and 1000, or null, got {b}"),
        ));
    }
    if let Some(m) = raw.max_retries.filter(|m| *m > 100) {
        return Err(err(
            "max_retries",
            format!("must be between 0 and 100, got {m}"),
        ));
    }
    let (retry_on, retry_grpc_on) = match raw.retry_on {
        None => (None, None),
        Some(s) => {
            let mut http = Vec::new();
            let mut grpc = Vec::new();
            for item in s.split(',') {
                let item = item.trim();
                if RETRY_ON_CONDITIONS.contains(&item) {
                    http.push(item);
                } else if RETRY_GRPC_ON_CONDITIONS.contains(&item) {
                    grpc.push(item);
                } else {
                    return Err(err(
                        "retry_on",
                        format!(
                            "{:?} is not a retry condition Envoy's router knows (one of {}, or for gRPC {})",
                            resilience_core::problem::bounded(item, 40),
                            RETRY_ON_CONDITIONS.join(", "),
                            RETRY_GRPC_ON_CONDITIONS.join(", ")
                        ),
                    ));
                }
            }
            let joined = |v: Vec<&str>| (!v.is_empty()).then(|| v.join(","));
            (joined(http), joined(grpc))
        }
    };
    let per_try_timeout_ms = match raw.per_try_timeout {
        Some(d) if d.as_ms() == 0 => {
            return Err(err(
                "per_try_timeout",
                "must be at least 1ms, got 0s".to_owned(),
            ))
        }
        other => other.map(DurationMs::as_ms),
    };
    let attempt_count_headers = header_list(
        prefix,
        "attempt_count_headers",
        raw.attempt_count_headers,
        DEFAULT_ATTEMPT_COUNT_HEADERS,
    )?;
    let previous_attempts_headers = header_list(
        prefix,
        "previous_attempts_headers",
        raw.previous_attempts_headers,
        DEFAULT_PREVIOUS_ATTEMPTS_HEADERS,
    )?;
    let deadline_header = raw
        .deadline_header
        .map(|h| check_header_name(&field(prefix, "deadline_header"), &h))
        .transpose()?;
    if !(1..=1_000_000).contains(&raw.min_latency_samples) {
        return Err(err(
            "min_latency_samples",
            format!(
                "must be between 1 and 1000000, got {}",
                raw.min_latency_samples
            ),
        ));
    }
    if !(400..=599).contains(&raw.shed_status) {
        return Err(err(
            "shed_status",
            format!("must be between 400 and 599, got {}", raw.shed_status),
        ));
    }
    let retry_after_min_s = whole_seconds(prefix, "retry_after_min", raw.retry_after_min)?;
    let retry_after_max_s = whole_seconds(prefix, "retry_after_max", raw.retry_after_max)?;
    if retry_after_max_s < retry_after_min_s {
        return Err(err(
            "retry_after_max",
            format!(
                "must be at least retry_after_min ({}), got {}",
                raw.retry_after_min, raw.retry_after_max
            ),
        ));
    }
    // The filter sends x-envoy-max-retries on every outbound request, and that header *replaces*
    // the route's retry_policy.num_retries. Any default would silently rewrite the route's retry
    // count, so outbound routes must say it (checked last: a typo elsewhere is reported first).
    let max_retries = match (raw.mode.side(), raw.max_retries) {
        (Some(Side::Outbound), None) => {
            return Err(err(
                "max_retries",
                "is required in outbound mode: set it to the route's retry_policy.num_retries (the filter sends x-envoy-max-retries, which replaces num_retries)".to_owned(),
            ))
        }
        (_, m) => m.unwrap_or(0),
    };
    Ok(Settings {
        mode: raw.mode,
        policy: BudgetPolicy {
            budget_percent: raw.budget_percent.value(),
            min_retries_per_second: rps,
            window_ms,
            buckets: WINDOW_BUCKETS,
            burst_cap_percent: raw.burst_cap_percent,
        },
        max_retries,
        retry_on,
        retry_grpc_on,
        per_try_timeout_ms,
        hop_guard: raw.hop_guard,
        attempt_count_headers,
        previous_attempts_headers,
        deadline_aware: raw.deadline_aware,
        deadline_header,
        min_latency_samples: raw.min_latency_samples,
        shed_status: raw.shed_status,
        retry_after_min_s,
        retry_after_max_s,
        add_retry_after: raw.add_retry_after,
        mark_ratelimited: raw.mark_ratelimited,
    })
}

/// Defaults the checks apply to fields left unset, for the schema: from the same sources.
#[cfg(feature = "schema")]
mod schema_default {
    fn owned(names: &[&str]) -> Option<Vec<String>> {
        Some(names.iter().map(|n| (*n).to_owned()).collect())
    }
    pub(super) fn attempt_count_headers() -> Option<Vec<String>> {
        owned(super::DEFAULT_ATTEMPT_COUNT_HEADERS)
    }
    pub(super) fn previous_attempts_headers() -> Option<Vec<String>> {
        owned(super::DEFAULT_PREVIOUS_ATTEMPTS_HEADERS)
    }
    /// A comma list of [`super::RETRY_ON_CONDITIONS`] and [`super::RETRY_GRPC_ON_CONDITIONS`],
    /// spaces around items allowed, as the check splits and trims it.
    pub(super) fn retry_on(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let all: Vec<&str> = super::RETRY_ON_CONDITIONS
            .iter()
            .chain(super::RETRY_GRPC_ON_CONDITIONS)
            .copied()
            .collect();
        let item = format!(r"\s*({})\s*", all.join("|"));
        schemars::json_schema!({
            "type": ["string", "null"],
            "pattern": format!("^{item}(,{item})*$"),
        })
    }
}

/// The configuration's JSON Schema (committed as `schemas/retry-budget.schema.json` by
/// `cargo pack schema`), derived from the types this module parses with.
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    resilience_core::schema::filter_schema::<RawGlobal, RawSettings>(
        &resilience_core::schema::FilterSchema {
            name: "retry-budget",
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
        let c = parse(br#"{"max_retries": 1}"#).unwrap();
        let s = &c.routes.defaults;
        assert_eq!(s.mode, Mode::Outbound);
        assert_eq!(s.policy, BudgetPolicy::default());
        assert_eq!(s.max_retries, 1);
        assert!(s.hop_guard && s.deadline_aware && s.mark_ratelimited && !s.add_retry_after);
        assert_eq!(s.attempt_count_headers, ["x-envoy-attempt-count"]);
        assert_eq!(s.previous_attempts_headers, ["grpc-previous-rpc-attempts"]);
        assert_eq!((s.retry_after_min_s, s.retry_after_max_s), (1, 5));
        assert_eq!(s.shed_status, 503);
        assert_eq!(c.global.max_keys, 100);
        assert_eq!(c.global.sync_interval_ms, 100);
        assert_eq!(c.global.stat_prefix, "retry_budget");
    }

    #[test]
    fn a_route_overrides_only_the_fields_it_names() {
        let c = parse(
            br#"{"budget_percent": 10, "max_retries": 3,
                 "routes": [{"name": "api", "match": {"prefix": "/api"}, "mode": "inbound", "budget_percent": 50}]}"#,
        )
        .unwrap();
        let r = &c.routes.routes[0].settings;
        assert_eq!(r.mode, Mode::Inbound);
        assert_eq!(r.policy.budget_percent, 50.0);
        assert_eq!(r.max_retries, 3);
        assert_eq!(c.routes.defaults.policy.budget_percent, 10.0);
    }

    #[test]
    fn dry_run_modes_keep_their_side() {
        assert_eq!(Mode::OutboundDryRun.side(), Some(Side::Outbound));
        assert!(Mode::InboundDryRun.dry_run());
        assert_eq!(Mode::InboundDryRun.side(), Some(Side::Inbound));
        assert_eq!(Mode::Disabled.side(), None);
        assert!(!Mode::Inbound.dry_run());
    }

    #[test]
    fn every_rule_names_its_field() {
        for (json, expected) in [
            (
                r#"{"routes": [{"match": {"prefix": "/a"}, "budget_percent": 150}]}"#,
                "routes[0].budget_percent: must be between 0 and 100, got 150",
            ),
            (
                r#"{"window": "500ms"}"#,
                "window: must be between 1s and 1h, got 500ms",
            ),
            (
                r#"{"min_retries_per_second": -1}"#,
                "min_retries_per_second: must be a number between 0 and 100000, got -1",
            ),
            (
                r#"{"max_retries": 101}"#,
                "max_retries: must be between 0 and 100, got 101",
            ),
            (
                r#"{"retry_on": "5xx,sometimes"}"#,
                "retry_on: \"sometimes\" is not a retry condition",
            ),
            (
                r#"{"per_try_timeout": "0s"}"#,
                "per_try_timeout: must be at least 1ms, got 0s",
            ),
            (
                r#"{"attempt_count_headers": ["ok", "bad header"]}"#,
                "attempt_count_headers[1]: must be an HTTP header name",
            ),
            (
                r#"{"deadline_header": ""}"#,
                "deadline_header: must be an HTTP header name",
            ),
            (
                r#"{"shed_status": 200}"#,
                "shed_status: must be between 400 and 599, got 200",
            ),
            (
                r#"{"retry_after_min": "1500ms"}"#,
                "retry_after_min: must be whole seconds",
            ),
            (
                r#"{"retry_after_min": "10s", "retry_after_max": "2s"}"#,
                "retry_after_max: must be at least retry_after_min (10s), got 2s",
            ),
            (
                r#"{"min_latency_samples": 0}"#,
                "min_latency_samples: must be between 1 and 1000000, got 0",
            ),
            (
                r#"{"mode": "sometimes"}"#,
                "mode: unknown variant \"sometimes\"",
            ),
            (
                r#"{"max_keys": 0}"#,
                "max_keys: must be between 1 and 10000, got 0",
            ),
            (
                r#"{"sync_interval": "1ms"}"#,
                "sync_interval: must be between 10ms and 10s, got 1ms",
            ),
            (
                r#"{"stat_prefix": "a.b"}"#,
                "stat_prefix: must be 1 to 64 characters",
            ),
            (r#"{"budget": 20}"#, "budget: unknown field \"budget\""),
            (
                r#"{"budget_percent": 20}"#,
                "max_retries: is required in outbound mode",
            ),
            (
                r#"{"routes": [{"match": {"prefix": "/a"}, "max_keys": 5}]}"#,
                "routes[0].max_keys: is a filter-wide setting",
            ),
            (
                r#"{"max_retries": 1, "routes": [{"name": "a", "match": {"prefix": "/a"}}, {"name": "a", "match": {"prefix": "/b"}}]}"#,
                "routes[1].name: \"a\" is already the name",
            ),
        ] {
            let e = err(json);
            assert!(e.starts_with(expected), "{json}: {e}");
        }
    }

    #[test]
    fn retry_conditions_are_normalised_and_headers_lowercased() {
        let c = parse(
            br#"{"retry_on": "5xx, reset", "deadline_header": "X-Deadline-Ms", "max_retries": 2,
                 "previous_attempts_headers": ["X-Retry"]}"#,
        )
        .unwrap();
        let s = &c.routes.defaults;
        assert_eq!(s.retry_on.as_deref(), Some("5xx,reset"));
        assert_eq!(s.deadline_header.as_deref(), Some("x-deadline-ms"));
        assert_eq!(s.previous_attempts_headers, ["x-retry"]);
    }

    #[test]
    fn grpc_retry_conditions_go_to_their_own_header_and_typos_are_refused() {
        let c = parse(br#"{"retry_on": "unavailable, 5xx,resource-exhausted", "max_retries": 3}"#)
            .unwrap();
        let s = &c.routes.defaults;
        assert_eq!(s.retry_on.as_deref(), Some("5xx"));
        assert_eq!(
            s.retry_grpc_on.as_deref(),
            Some("unavailable,resource-exhausted")
        );
        let c = parse(
            br#"{"retry_on": "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable", "max_retries": 1}"#,
        )
        .unwrap();
        assert_eq!(c.routes.defaults.retry_on, None);
        assert_eq!(
            c.routes.defaults.retry_grpc_on.as_deref(),
            Some("cancelled,deadline-exceeded,internal,resource-exhausted,unavailable")
        );
        let e = err(
            r#"{"max_retries": 1, "routes": [{"match": {"prefix": "/"}, "retry_on": "unavailble"}]}"#,
        );
        assert!(
            e.starts_with(r#"routes[0].retry_on: "unavailble" is not a retry condition"#)
                && e.contains("or for gRPC cancelled, deadline-exceeded"),
            "{e}"
        );
    }
}
