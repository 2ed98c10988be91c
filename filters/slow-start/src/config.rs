//! The filter's configuration: parsed from the Wasm filter's JSON, then checked.
//!
//! Why two steps: serde catches the shape (types, unknown fields) with the JSON path; the checks
//! that relate fields (`mode: "balance"` needs `endpoints`, priming needs a `dispatch_cluster`)
//! run after and name the field too. Envoy then refuses the filter at load with one log line such
//! as `endpoints[1].address: must be an IP address and port like "10.0.0.7:8080", got "db"`.
//!
//! What kind of filter an instance is follows from its configuration: with `endpoints` it
//! **balances** (it picks the endpoint of an `ORIGINAL_DST` cluster for every request); without,
//! it **admits** (it sits in the warming replica's own proxy and sheds the excess). Per route,
//! `mode` may stay that kind, become `dry_run` (decide and count, never act) or `disabled`.

use std::net::SocketAddr;

use resilience_core::cells::{
    is_cell_name, parse_cells, CELL_NAME_RULE, DEFAULT_COLD_AFTER_MS, DEFAULT_DRAIN_RATE,
    MAX_CELLS, MAX_DRAIN_RATE, MIN_DRAIN_RATE,
};
use resilience_core::config::{
    check_header_name, check_stat_prefix, check_sync_interval, field_path as field, is_token_byte,
    ConfigError, DurationMs, Percent,
};
use resilience_core::outcome::{Classifier, GrpcCodeSet, LocalFailureSet, StatusSet};
use resilience_core::ramp::{ClosedLoop, Curve, Policy, Priming};
use resilience_core::routes::{parse_filter_config, HeaderMatch, Route, RouteTable};
use serde::Deserialize;

/// Fields that apply to the whole filter instance and cannot be overridden per route.
pub const GLOBAL_FIELDS: &[&str] = &[
    "stat_prefix",
    "sync_interval",
    "endpoints",
    "discovery",
    "max_endpoints",
    "destination_header",
    "alternates",
    "balancer",
    "dispatch_cluster",
    "unhealthy_after",
    "silence_timeout",
    "closed_loop",
    "failure_statuses",
    "active_health_check",
    "recheck_interval",
    "warmup_requests",
    "warmup_rate",
    "warmup_deadline",
    "warmup_timeout",
    "warmup_authority",
    "prime_before_traffic",
    "gate_timeout",
    "health_checks",
    "max_warmup_rps",
    "cells",
    "drain_rate",
    "max_drained_cells",
    "cold_after",
];

/// The response header that explains a decision (`shed; reason=warming; ...`).
pub const DECISION_HEADER: &str = "x-resilience-slow-start";

/// What counts as a failure unless `failure_statuses` says otherwise.
const DEFAULT_FAILURE_STATUSES: &[&str] = &["500", "502-599"];

/// Most warm-up requests one configuration may list.
pub const MAX_WARMUP_REQUESTS: usize = 1_000;

/// Envoy's header for picking an `ORIGINAL_DST` endpoint.
pub const DEFAULT_DESTINATION_HEADER: &str = "x-envoy-original-dst-host";

/// Most endpoints a request may name after its pick, for retries (`alternates`).
pub const MAX_ALTERNATES: usize = 4;

/// One endpoint of the `ORIGINAL_DST` cluster the filter balances over.
#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Endpoint"))]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    /// An IP address and port, "10.0.0.7:8080" or "[::1]:8080".
    address: String,
    /// The endpoint's weight when warm (1-1000).
    #[serde(default = "d_weight")]
    weight: u32,
    /// The cell (availability zone, rack) the endpoint is in: 1-64 characters of
    /// [A-Za-z0-9_.-]. Endpoints without one form an implicit cell that cannot be drained.
    cell: Option<String>,
}

/// One cell's command. Only the schema uses this type: `cells` is read by the same code as the
/// discovery document's `cells` ([`resilience_core::cells::parse_cells`]).
#[cfg(feature = "schema")]
#[derive(Deserialize, Debug, Clone, schemars::JsonSchema)]
#[schemars(rename = "Cell")]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawCell {
    /// How much of the cell's normal share of traffic to move to the other cells: 0 normal,
    /// 100 fully drained, fractions allowed. The discovery document's `cells` overrides it.
    #[serde(default)]
    drain_percent: Percent,
}

fn d_weight() -> u32 {
    1
}

/// A priming request the filter sends a warming endpoint itself.
#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "WarmupRequest"))]
#[serde(deny_unknown_fields)]
struct RawRequest {
    /// The HTTP method.
    #[serde(default = "d_get")]
    method: String,
    /// The path, starting with "/", without spaces or control characters.
    path: String,
    /// Extra headers, name to value (not host, the destination header or the decision header,
    /// which the filter sets).
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// The request body.
    body: Option<String>,
}

fn d_get() -> String {
    "GET".to_owned()
}

/// A request the filter sends every endpoint to probe it; it also gates new and unhealthy
/// endpoints.
#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "ActiveHealthCheck"))]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    /// The HTTP method.
    #[serde(default = "d_get")]
    method: String,
    /// The path, starting with "/", without spaces or control characters.
    path: String,
    /// Extra headers, name to value (not host, the destination header or the decision header).
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// How often each endpoint is probed (at least 10ms).
    #[serde(default = "d_one_second")]
    interval: DurationMs,
    /// Timeout of each probe (1ms-1h).
    #[serde(default = "d_one_second")]
    timeout: DurationMs,
}

/// Where the endpoint list is refreshed from: a JSON document fetched through a cluster.
#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Discovery"))]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    /// The cluster the document is fetched through.
    cluster: String,
    /// The document's path.
    path: String,
    /// The request's :authority; defaults to `cluster`.
    authority: Option<String>,
    /// How often the document is fetched (100ms-1h).
    #[serde(default = "d_discovery_interval")]
    interval: DurationMs,
    /// Timeout of each fetch (1ms-1h).
    #[serde(default = "d_discovery_timeout")]
    timeout: DurationMs,
}

fn d_discovery_interval() -> DurationMs {
    DurationMs(10_000)
}
fn d_discovery_timeout() -> DurationMs {
    DurationMs(2_000)
}

/// Pause the ramp while a warming endpoint does worse than its warm peers. `{}` turns it on
/// with the defaults.
#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "ClosedLoop"))]
#[serde(deny_unknown_fields)]
struct RawClosedLoop {
    /// Pause while the endpoint's latency exceeds its peers' times this (1-1000); null turns the
    /// latency signal off.
    #[serde(default = "d_factor")]
    latency_factor: Option<f64>,
    /// Pause while the endpoint's error rate exceeds its peers' times this (1-1000); null turns
    /// the error signal off. Not both off.
    #[serde(default = "d_factor")]
    error_rate_factor: Option<f64>,
    /// Requests the endpoint must have in the window before it is compared (at least 1).
    #[serde(default = "d_min_requests")]
    min_requests: u32,
    /// The comparison window (100ms-10m).
    #[serde(default = "d_cl_window")]
    window: DurationMs,
    /// Latencies below this never pause the ramp, however they compare.
    #[serde(default = "d_latency_floor")]
    latency_floor: DurationMs,
    /// Error rates below this percentage never pause the ramp.
    #[serde(default = "d_error_floor")]
    error_floor_percent: Percent,
}

fn d_factor() -> Option<f64> {
    Some(2.0)
}
fn d_min_requests() -> u32 {
    20
}
fn d_cl_window() -> DurationMs {
    DurationMs(5_000)
}
fn d_latency_floor() -> DurationMs {
    DurationMs(5)
}
fn d_error_floor() -> Percent {
    Percent::clamped(1.0)
}

/// Requests an admitting instance always lets through: an exact path (query ignored) or any
/// header match.
#[derive(Deserialize, Debug, Clone, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "HealthChecks"))]
#[serde(deny_unknown_fields)]
struct RawHealthChecks {
    /// Exact paths, without the query string.
    #[serde(default)]
    paths: Vec<String>,
    /// Header conditions, as in a route's `match`; any one matching is enough.
    #[serde(default)]
    headers: Vec<HeaderMatch>,
}

/// How endpoints are chosen among their effective weights.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", schemars(rename = "Balancer"))]
#[serde(rename_all = "snake_case")]
enum RawBalancer {
    /// Pick at random in proportion to the effective weights.
    #[default]
    WeightedRandom,
    /// Of two endpoints drawn by effective weight, pick the one with fewer requests in flight
    /// per unit of weight.
    LeastRequest,
}

#[derive(Deserialize, Debug)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    /// First segment of every stat name: 1-64 characters of [A-Za-z0-9_].
    #[serde(default = "d_stat_prefix")]
    stat_prefix: String,
    /// The tick (10ms-10s) that publishes outcomes, moves phases, sends due priming and
    /// health-check requests and flushes stats.
    #[serde(default = "d_sync_interval")]
    sync_interval: DurationMs,
    /// The endpoints to balance over (not empty, at most `max_endpoints`). Their presence, or
    /// `discovery`'s, makes the instance balance; without either it admits.
    endpoints: Option<Vec<RawEndpoint>>,
    /// Refresh the endpoints from a JSON document; makes the instance balance.
    discovery: Option<RawDiscovery>,
    /// Slots of shared state for endpoints, configured plus discovered (1-1024).
    #[serde(default = "d_max_endpoints")]
    max_endpoints: u32,
    /// The request header naming the picked endpoint: the cluster's
    /// original_dst_lb_config.http_header_name, or the override_host policy's header.
    #[serde(default = "d_destination_header")]
    destination_header: String,
    /// Balance mode: endpoints named after the pick, for retries through an override_host
    /// cluster (0-4). Needs a `destination_header` other than the ORIGINAL_DST default.
    #[serde(default)]
    alternates: u32,
    /// How endpoints are chosen among their effective weights.
    #[serde(default)]
    balancer: RawBalancer,
    /// The cluster priming and health-check requests go through: the ORIGINAL_DST cluster in
    /// balance mode, the local service's cluster in admit mode. Required with
    /// `warmup_requests` or `active_health_check`.
    dispatch_cluster: Option<String>,
    /// Failures in a row that make an endpoint unhealthy; 0 turns it off.
    #[serde(default = "d_unhealthy_after")]
    unhealthy_after: u32,
    /// A success this long after the previous one restarts the ramp (at least 1ms); unset or
    /// null: never.
    silence_timeout: Option<DurationMs>,
    /// Pause the ramp while worse than warm peers; unset: off.
    closed_loop: Option<RawClosedLoop>,
    /// HTTP statuses that count as failures, besides Envoy's connect failures, resets and
    /// timeouts.
    #[cfg_attr(
        feature = "schema",
        schemars(default = "schema_default::failure_statuses")
    )]
    failure_statuses: Option<StatusSet>,
    /// Probe every endpoint; also gates new and unhealthy endpoints.
    active_health_check: Option<RawHealthCheck>,
    /// How often a gated new or unhealthy endpoint is probed with the first warm-up request,
    /// when there is no active health check.
    #[serde(default = "d_one_second")]
    recheck_interval: DurationMs,
    /// Priming requests sent to a warming endpoint (at most 1000).
    #[serde(default)]
    warmup_requests: Vec<RawRequest>,
    /// Priming pace in requests per second across all workers (above 0, at most 10000).
    #[serde(default = "d_warmup_rate")]
    warmup_rate: f64,
    /// Priming ends after this even if answers are missing.
    #[serde(default = "d_warmup_deadline")]
    warmup_deadline: DurationMs,
    /// Timeout of each priming request (1ms-1h).
    #[serde(default = "d_warmup_timeout")]
    warmup_timeout: DurationMs,
    /// :authority of priming and health-check requests; defaults to the endpoint's address in
    /// balance mode, localhost in admit mode.
    warmup_authority: Option<String>,
    /// While priming, take no traffic; false takes the floor.
    #[serde(default = "d_true")]
    prime_before_traffic: bool,
    /// A gated new or unhealthy endpoint takes the floor after this long without its gate
    /// opening, so a gate that can never open does not shed its traffic forever (at least 1ms).
    /// Unset: 30s in admit mode, never in balance mode; null: wait for the gate forever.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<DurationMs>", transform = schema_default::no_default)
    )]
    gate_timeout: Option<Option<DurationMs>>,
    /// Admit mode: requests that are always admitted.
    health_checks: Option<RawHealthChecks>,
    /// Per-endpoint cap in requests per second while warming (above 0, at most 1000000); unset:
    /// no cap.
    max_warmup_rps: Option<f64>,
    /// Balance mode: the drain commanded for each cell, by name (at most `max_endpoints`
    /// cells). The discovery document's top-level `cells` overrides it at run time.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(
            with = "std::collections::BTreeMap<String, RawCell>",
            default = "schema_default::cells"
        )
    )]
    cells: Option<serde_json::Value>,
    /// How fast a cell's drain follows its command, in percentage points per second (1-100000;
    /// 100000 is effectively instant).
    #[cfg_attr(feature = "schema", schemars(default = "schema_default::drain_rate"))]
    drain_rate: Option<f64>,
    /// Most cells drained at once; a drain beyond it is refused and counted. Unset: all cells
    /// but one.
    max_drained_cells: Option<u32>,
    /// A cell fully drained at least this long (at least 1s) restarts its endpoints' ramp and
    /// priming when it is undrained; null: never.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "Option<DurationMs>", default = "schema_default::cold_after")
    )]
    cold_after: Option<Option<DurationMs>>,
}

/// Tells a field given as `null` (`Some(None)`) from a missing one (`None`, via `default`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Admit mode's default `gate_timeout`: a replica's own proxy takes traffic only when callers
/// send it, so after this long an unopened gate should let the floor through.
pub const DEFAULT_ADMIT_GATE_TIMEOUT_MS: u64 = 30_000;

fn d_stat_prefix() -> String {
    "slow_start".to_owned()
}
fn d_sync_interval() -> DurationMs {
    DurationMs(100)
}
fn d_max_endpoints() -> u32 {
    64
}
fn d_destination_header() -> String {
    DEFAULT_DESTINATION_HEADER.to_owned()
}
fn d_unhealthy_after() -> u32 {
    5
}
fn d_one_second() -> DurationMs {
    DurationMs(1_000)
}
fn d_warmup_rate() -> f64 {
    10.0
}
fn d_warmup_deadline() -> DurationMs {
    DurationMs(30_000)
}
fn d_warmup_timeout() -> DurationMs {
    DurationMs(5_000)
}
fn d_true() -> bool {
    true
}

/// What a route does with its requests.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Pick the endpoint by ramped weight (instances with `endpoints`).
    Balance,
    /// Admit the ramped fraction, shed the rest (instances without `endpoints`).
    Admit,
    /// Decide and count as the instance's kind would, never act.
    DryRun,
    /// Do nothing (a balancing instance still removes a client-supplied destination header).
    Disabled,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Balance => "balance",
            Mode::Admit => "admit",
            Mode::DryRun => "dry_run",
            Mode::Disabled => "disabled",
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSettings {
    /// What the route does; unset: the instance's kind, `balance` with `endpoints` or
    /// `discovery`, else `admit`.
    mode: Option<Mode>,
    /// Ramp time to full weight (100ms-1h).
    #[serde(default = "d_window")]
    slow_start_window: DurationMs,
    /// The curve's exponent is 1/aggression (above 0, at most 100): above 1 it rises fast, then
    /// flattens.
    #[serde(default = "d_aggression")]
    aggression: f64,
    /// The floor of the curve.
    #[serde(default = "d_min_weight")]
    min_weight_percent: Percent,
    /// retry-after on a shed request: 1s-1h, whole seconds rounded up.
    #[serde(default = "d_one_second")]
    retry_after: DurationMs,
}

fn d_window() -> DurationMs {
    DurationMs(30_000)
}
fn d_aggression() -> f64 {
    1.0
}
fn d_min_weight() -> Percent {
    Percent::clamped(10.0)
}

/// One route's checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub curve: Curve,
    /// Whole seconds for `retry-after` on a shed request (at least 1).
    pub retry_after_s: u64,
}

/// Which job the instance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Balance,
    Admit,
}

/// One endpoint of a balancing instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// `ip:port`, normalised (`[::1]:80` for IPv6).
    pub address: String,
    pub weight: u32,
    pub cell: Option<String>,
}

/// How cells are drained (balance mode).
#[derive(Debug, Clone, PartialEq)]
pub struct CellsSpec {
    /// The configured drain of each named cell, thousandths of a point, sorted by name.
    pub configured: Vec<(String, u32)>,
    /// Points per second.
    pub drain_rate: f64,
    /// `None`: all known cells but one.
    pub max_drained: Option<usize>,
    pub cold_after_ms: Option<u64>,
}

impl CellsSpec {
    /// Whether any cell is configured, so the filter has cells even before an endpoint names one.
    pub fn any(&self) -> bool {
        !self.configured.is_empty()
    }
}

/// A request the filter sends itself (priming, health check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutSpec {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// Where the endpoint list is refreshed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverySpec {
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

/// Requests an admitting instance always lets through.
#[derive(Debug, Clone, Default)]
pub struct HealthChecks {
    pub paths: Vec<String>,
    pub headers: Vec<HeaderMatch>,
}

/// Settings of the whole filter instance.
#[derive(Debug, Clone)]
pub struct Global {
    pub kind: Kind,
    pub stat_prefix: String,
    pub sync_interval_ms: u64,
    pub endpoints: Vec<EndpointSpec>,
    pub discovery: Option<DiscoverySpec>,
    /// Slots of shared state for endpoints (configured plus discovered).
    pub max_endpoints: u16,
    pub destination_header: String,
    /// How many endpoints each request names after its pick, for the router's retries.
    pub alternates: usize,
    pub balancer: resilience_core::balance::Strategy,
    pub dispatch_cluster: Option<String>,
    pub classifier: Classifier,
    pub policy: Policy,
    pub health_check: Option<CalloutSpec>,
    pub health_check_timeout_ms: u64,
    pub warmup_requests: Vec<CalloutSpec>,
    pub warmup_timeout_ms: u64,
    pub warmup_authority: Option<String>,
    pub health_checks: HealthChecks,
    pub max_warmup_rps: Option<resilience_core::rate_cap::RateCap>,
    pub cells: CellsSpec,
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
    let kind = if raw_global.endpoints.is_some() || raw_global.discovery.is_some() {
        Kind::Balance
    } else {
        Kind::Admit
    };
    let defaults = check_settings(raw_table.defaults, "", kind)?;
    let mut window_ms = defaults.curve.window_ms;
    let mut routes: Vec<Route<Settings>> = Vec::with_capacity(raw_table.routes.len());
    for (i, r) in raw_table.routes.into_iter().enumerate() {
        let settings = check_settings(r.settings, &format!("routes[{i}]"), kind)?;
        window_ms = window_ms.max(settings.curve.window_ms);
        routes.push(Route {
            name: r.name,
            matcher: r.matcher,
            settings,
        });
    }
    let global = check_global(raw_global, kind, window_ms)?;
    Ok(FilterConfig {
        global,
        routes: RouteTable { defaults, routes },
    })
}

fn check_settings(raw: RawSettings, prefix: &str, kind: Kind) -> Result<Settings, ConfigError> {
    let err = |name: &str, rule: String| ConfigError::new(field(prefix, name), rule);
    let mode = match (raw.mode, kind) {
        (None, Kind::Balance) => Mode::Balance,
        (None, Kind::Admit) => Mode::Admit,
        (Some(Mode::Balance), Kind::Admit) => {
            return Err(err(
                "mode",
                "\"balance\" needs \"endpoints\": the filter picks among the endpoints it lists"
                    .to_owned(),
            ))
        }
        (Some(Mode::Admit), Kind::Balance) => {
            return Err(err(
                "mode",
                "\"admit\" cannot be used with \"endpoints\": admit mode runs in the warming replica's own proxy, balance mode in its callers'".to_owned(),
            ))
        }
        (Some(m), _) => m,
    };
    let window = raw.slow_start_window.as_ms();
    if !(100..=3_600_000).contains(&window) {
        return Err(err(
            "slow_start_window",
            format!(
                "must be between 100ms and 1h, got {}",
                raw.slow_start_window
            ),
        ));
    }
    if !(raw.aggression.is_finite() && raw.aggression > 0.0 && raw.aggression <= 100.0) {
        return Err(err(
            "aggression",
            format!(
                "must be greater than 0 and at most 100, got {}",
                raw.aggression
            ),
        ));
    }
    let retry = raw.retry_after.as_ms();
    if !(1_000..=3_600_000).contains(&retry) {
        return Err(err(
            "retry_after",
            format!("must be between 1s and 1h, got {}", raw.retry_after),
        ));
    }
    Ok(Settings {
        mode,
        curve: Curve {
            window_ms: window,
            aggression: raw.aggression,
            min_fraction: raw.min_weight_percent.fraction(),
        },
        retry_after_s: retry.div_ceil(1_000),
    })
}

fn check_callout(
    raw_method: &str,
    raw_path: &str,
    raw_headers: &std::collections::BTreeMap<String, String>,
    body: Option<String>,
    prefix: &str,
    destination_header: &str,
) -> Result<CalloutSpec, ConfigError> {
    if raw_method.is_empty() || raw_method.len() > 32 || !raw_method.bytes().all(is_token_byte) {
        return Err(ConfigError::new(
            field(prefix, "method"),
            format!("must be an HTTP method, got {raw_method:?}"),
        ));
    }
    if !raw_path.starts_with('/')
        || raw_path.len() > 4_096
        || raw_path.bytes().any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err(ConfigError::new(
            field(prefix, "path"),
            format!(
                "must start with \"/\" and hold no spaces or control characters, got {:?}",
                resilience_core::problem::bounded(raw_path, 64)
            ),
        ));
    }
    let mut headers = Vec::with_capacity(raw_headers.len());
    for (k, v) in raw_headers {
        let name = check_header_name(&field(prefix, "headers"), k)?;
        if name == destination_header || name == "host" || name == DECISION_HEADER {
            return Err(ConfigError::new(
                field(prefix, "headers"),
                format!("{k:?} is set by the filter itself and cannot be configured"),
            ));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ConfigError::new(
                field(prefix, &format!("headers.{k}")),
                "must not contain CR, LF or NUL",
            ));
        }
        headers.push((name, v.clone()));
    }
    Ok(CalloutSpec {
        method: raw_method.to_ascii_uppercase(),
        path: raw_path.to_owned(),
        headers,
        body,
    })
}

fn check_global(raw: RawGlobal, kind: Kind, window_ms: u64) -> Result<Global, ConfigError> {
    check_stat_prefix(&raw.stat_prefix)?;
    let sync = check_sync_interval(raw.sync_interval)?;
    if !(1..=1_024).contains(&raw.max_endpoints) {
        return Err(ConfigError::new(
            "max_endpoints",
            format!("must be between 1 and 1024, got {}", raw.max_endpoints),
        ));
    }
    let destination_header = check_header_name("destination_header", &raw.destination_header)?;
    let cells = check_cells(&raw, kind)?;
    let alternates = check_alternates(raw.alternates, kind, &destination_header)?;
    let mut endpoints: Vec<EndpointSpec> = Vec::new();
    if let Some(list) = &raw.endpoints {
        if list.is_empty() {
            return Err(ConfigError::new(
                "endpoints",
                "must list at least one endpoint (leave it out for admit mode)",
            ));
        }
        if list.len() > raw.max_endpoints as usize {
            return Err(ConfigError::new(
                "endpoints",
                format!(
                    "lists {} endpoints, more than max_endpoints ({})",
                    list.len(),
                    raw.max_endpoints
                ),
            ));
        }
        for (i, e) in list.iter().enumerate() {
            let addr: SocketAddr = e.address.parse().map_err(|_| {
                ConfigError::new(
                    format!("endpoints[{i}].address"),
                    format!(
                        "must be an IP address and port like \"10.0.0.7:8080\", got {:?}",
                        resilience_core::problem::bounded(&e.address, 64)
                    ),
                )
            })?;
            let address = addr.to_string();
            if endpoints.iter().any(|x| x.address == address) {
                return Err(ConfigError::new(
                    format!("endpoints[{i}].address"),
                    format!("{address} is listed twice"),
                ));
            }
            if !(1..=1_000).contains(&e.weight) {
                return Err(ConfigError::new(
                    format!("endpoints[{i}].weight"),
                    format!("must be between 1 and 1000, got {}", e.weight),
                ));
            }
            let cell = match &e.cell {
                None => None,
                Some(c) if is_cell_name(c) => Some(c.clone()),
                Some(c) => {
                    return Err(ConfigError::new(
                        format!("endpoints[{i}].cell"),
                        format!(
                            "must be {CELL_NAME_RULE}, got {:?}",
                            resilience_core::problem::bounded(c, 64)
                        ),
                    ))
                }
            };
            endpoints.push(EndpointSpec {
                address,
                weight: e.weight,
                cell,
            });
        }
    }
    let discovery = match &raw.discovery {
        None => None,
        Some(d) => {
            if d.cluster.is_empty() || d.cluster.len() > 256 {
                return Err(ConfigError::new(
                    "discovery.cluster",
                    "must be a cluster name of 1 to 256 characters",
                ));
            }
            if !d.path.starts_with('/') || d.path.bytes().any(|b| b.is_ascii_control() || b == b' ')
            {
                return Err(ConfigError::new(
                    "discovery.path",
                    format!(
                        "must start with \"/\" and hold no spaces or control characters, got {:?}",
                        resilience_core::problem::bounded(&d.path, 64)
                    ),
                ));
            }
            if !(100..=3_600_000).contains(&d.interval.as_ms()) {
                return Err(ConfigError::new(
                    "discovery.interval",
                    format!("must be between 100ms and 1h, got {}", d.interval),
                ));
            }
            check_callout_timeout("discovery.timeout", d.timeout)?;
            let authority = d.authority.clone().unwrap_or_else(|| d.cluster.clone());
            if authority.is_empty() || authority.bytes().any(|b| b.is_ascii_control() || b == b' ')
            {
                return Err(ConfigError::new(
                    "discovery.authority",
                    format!("must be a host name, got {authority:?}"),
                ));
            }
            Some(DiscoverySpec {
                cluster: d.cluster.clone(),
                path: d.path.clone(),
                authority,
                interval_ms: d.interval.as_ms(),
                timeout_ms: d.timeout.as_ms(),
            })
        }
    };
    if kind == Kind::Balance && raw.health_checks.is_some() {
        return Err(ConfigError::new(
            "health_checks",
            "applies to admit mode only (a balancing filter routes every request to an endpoint)",
        ));
    }
    let health_checks = match raw.health_checks {
        None => HealthChecks::default(),
        Some(h) => {
            for (i, p) in h.paths.iter().enumerate() {
                if !p.starts_with('/') {
                    return Err(ConfigError::new(
                        format!("health_checks.paths[{i}]"),
                        format!("must start with \"/\", got {p:?}"),
                    ));
                }
            }
            if h.headers.iter().any(|m| m.name.is_empty()) {
                return Err(ConfigError::new(
                    "health_checks.headers",
                    "every header match needs a name",
                ));
            }
            HealthChecks {
                paths: h.paths,
                headers: h.headers,
            }
        }
    };
    if raw.warmup_requests.len() > MAX_WARMUP_REQUESTS {
        return Err(ConfigError::new(
            "warmup_requests",
            format!(
                "at most {MAX_WARMUP_REQUESTS} requests, got {}",
                raw.warmup_requests.len()
            ),
        ));
    }
    let mut warmup_requests = Vec::with_capacity(raw.warmup_requests.len());
    for (i, r) in raw.warmup_requests.into_iter().enumerate() {
        warmup_requests.push(check_callout(
            &r.method,
            &r.path,
            &r.headers,
            r.body,
            &format!("warmup_requests[{i}]"),
            &destination_header,
        )?);
    }
    if !(raw.warmup_rate.is_finite() && raw.warmup_rate > 0.0 && raw.warmup_rate <= 10_000.0) {
        return Err(ConfigError::new(
            "warmup_rate",
            format!(
                "must be a number of requests per second above 0 and at most 10000, got {}",
                raw.warmup_rate
            ),
        ));
    }
    check_callout_timeout("warmup_timeout", raw.warmup_timeout)?;
    for (name, d) in [
        ("warmup_deadline", raw.warmup_deadline),
        ("recheck_interval", raw.recheck_interval),
    ] {
        if d.as_ms() == 0 {
            return Err(ConfigError::new(name, "must be at least 1ms, got 0ms"));
        }
    }
    let (health_check, health_check_interval, health_check_timeout_ms) =
        match raw.active_health_check {
            None => (None, None, 0),
            Some(h) => {
                if h.interval.as_ms() < 10 {
                    return Err(ConfigError::new(
                        "active_health_check.interval",
                        format!("must be at least 10ms, got {}", h.interval),
                    ));
                }
                check_callout_timeout("active_health_check.timeout", h.timeout)?;
                let spec = check_callout(
                    &h.method,
                    &h.path,
                    &h.headers,
                    None,
                    "active_health_check",
                    &destination_header,
                )?;
                (Some(spec), Some(h.interval.as_ms()), h.timeout.as_ms())
            }
        };
    if (health_check.is_some() || !warmup_requests.is_empty()) && raw.dispatch_cluster.is_none() {
        return Err(ConfigError::new(
            "dispatch_cluster",
            "is required with warmup_requests or active_health_check: it names the cluster they are sent through (the ORIGINAL_DST cluster in balance mode, the local service's cluster in admit mode)",
        ));
    }
    if let Some(c) = &raw.dispatch_cluster {
        if c.is_empty() || c.len() > 256 {
            return Err(ConfigError::new(
                "dispatch_cluster",
                "must be a cluster name of 1 to 256 characters",
            ));
        }
    }
    if let Some(a) = &raw.warmup_authority {
        if a.is_empty() || a.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(ConfigError::new(
                "warmup_authority",
                format!("must be a host name, got {a:?}"),
            ));
        }
    }
    let closed_loop = match raw.closed_loop {
        None => None,
        Some(c) => {
            for (name, f) in [
                ("closed_loop.latency_factor", c.latency_factor),
                ("closed_loop.error_rate_factor", c.error_rate_factor),
            ] {
                if let Some(f) = f {
                    if !(f.is_finite() && (1.0..=1_000.0).contains(&f)) {
                        return Err(ConfigError::new(
                            name,
                            format!("must be between 1 and 1000 (or null to turn the signal off), got {f}"),
                        ));
                    }
                }
            }
            if c.latency_factor.is_none() && c.error_rate_factor.is_none() {
                return Err(ConfigError::new(
                    "closed_loop",
                    "turns both signals off; leave closed_loop out instead",
                ));
            }
            if c.min_requests == 0 {
                return Err(ConfigError::new(
                    "closed_loop.min_requests",
                    "must be at least 1, got 0",
                ));
            }
            if !(100..=600_000).contains(&c.window.as_ms()) {
                return Err(ConfigError::new(
                    "closed_loop.window",
                    format!("must be between 100ms and 10m, got {}", c.window),
                ));
            }
            Some((
                ClosedLoop {
                    latency_factor: c.latency_factor,
                    error_rate_factor: c.error_rate_factor,
                    min_requests: c.min_requests,
                    latency_floor_ms: c.latency_floor.as_ms() as f64,
                    error_floor_percent: c.error_floor_percent.value(),
                },
                c.window.as_ms(),
            ))
        }
    };
    let max_warmup_rps = match raw.max_warmup_rps {
        None => None,
        Some(r) => Some(
            resilience_core::rate_cap::RateCap::per_second(r)
                .filter(|_| r <= 1_000_000.0)
                .ok_or_else(|| {
                    ConfigError::new(
                        "max_warmup_rps",
                        format!("must be above 0 and at most 1000000, got {r}"),
                    )
                })?,
        ),
    };
    let statuses = match raw.failure_statuses {
        Some(s) => s,
        None => StatusSet::from_strs(DEFAULT_FAILURE_STATUSES)
            .map_err(|e| ConfigError::new("failure_statuses", e))?,
    };
    let local: LocalFailureSet =
        serde_json::from_str(r#"["connect_failure","reset","timeout"]"#)
            .map_err(|e| ConfigError::new("failure_statuses", e.to_string()))?;
    let priming = if warmup_requests.is_empty() {
        None
    } else {
        Some(Priming {
            requests: u32::try_from(warmup_requests.len()).unwrap_or(u32::MAX),
            interval_ms: ((1_000.0 / raw.warmup_rate).round() as u64).max(1),
            deadline_ms: raw.warmup_deadline.as_ms(),
        })
    };
    let gate_timeout_ms = match raw.gate_timeout {
        None if kind == Kind::Admit => Some(DEFAULT_ADMIT_GATE_TIMEOUT_MS),
        None | Some(None) => None,
        Some(Some(d)) if d.as_ms() == 0 => {
            return Err(ConfigError::new(
                "gate_timeout",
                "must be at least 1ms (or null to wait for the gate forever), got 0ms",
            ))
        }
        Some(Some(d)) => Some(d.as_ms()),
    };
    let silence_ms = raw.silence_timeout.map(|d| d.as_ms());
    if silence_ms == Some(0) {
        return Err(ConfigError::new(
            "silence_timeout",
            "must be at least 1ms (or null to turn it off), got 0ms",
        ));
    }
    Ok(Global {
        kind,
        stat_prefix: raw.stat_prefix,
        sync_interval_ms: sync,
        endpoints,
        discovery,
        max_endpoints: u16::try_from(raw.max_endpoints).unwrap_or(1_024),
        destination_header,
        alternates,
        balancer: match raw.balancer {
            RawBalancer::WeightedRandom => resilience_core::balance::Strategy::WeightedRandom,
            RawBalancer::LeastRequest => resilience_core::balance::Strategy::LeastRequest,
        },
        dispatch_cluster: raw.dispatch_cluster,
        classifier: Classifier {
            statuses,
            grpc_codes: GrpcCodeSet::empty(),
            local,
            slow_call_ms: None,
        },
        policy: Policy {
            window_ms,
            unhealthy_after: raw.unhealthy_after,
            silence_ms,
            closed_loop: closed_loop.map(|(c, _)| c),
            recent_window_ms: closed_loop.map_or(5_000, |(_, w)| w),
            priming,
            health_check_interval_ms: health_check_interval,
            recheck_interval_ms: raw.recheck_interval.as_ms(),
            prime_before_traffic: raw.prime_before_traffic,
            gate_timeout_ms,
        },
        health_check,
        health_check_timeout_ms,
        warmup_requests,
        warmup_timeout_ms: raw.warmup_timeout.as_ms(),
        warmup_authority: raw.warmup_authority,
        health_checks,
        max_warmup_rps,
        cells,
    })
}

/// `cells`, `drain_rate`, `max_drained_cells` and `cold_after`: balance mode only, named cells,
/// at most `max_endpoints` of them.
fn check_cells(raw: &RawGlobal, kind: Kind) -> Result<CellsSpec, ConfigError> {
    // `{}` (the schema's default) and null mean no cells.
    let cells = raw
        .cells
        .as_ref()
        .filter(|c| !c.is_null() && c.as_object().is_none_or(|o| !o.is_empty()));
    // `drain_rate` and `cold_after` have defaults, which an admitting filter may spell out.
    if kind == Kind::Admit && (cells.is_some() || raw.max_drained_cells.is_some()) {
        let name = if cells.is_some() {
            "cells"
        } else {
            "max_drained_cells"
        };
        return Err(ConfigError::new(
            name,
            "applies to balance mode only (a filter with endpoints or discovery)",
        ));
    }
    let configured = match cells {
        None => Vec::new(),
        Some(c) => parse_cells(c, raw.max_endpoints as usize)
            .map_err(|(path, rule)| ConfigError::new(path, rule))?,
    };
    let drain_rate = raw.drain_rate.unwrap_or(DEFAULT_DRAIN_RATE);
    if !(drain_rate.is_finite() && (MIN_DRAIN_RATE..=MAX_DRAIN_RATE).contains(&drain_rate)) {
        return Err(ConfigError::new(
            "drain_rate",
            format!(
                "must be between {MIN_DRAIN_RATE} and {MAX_DRAIN_RATE} percentage points per second, got {drain_rate}"
            ),
        ));
    }
    let max_drained = match raw.max_drained_cells {
        None => None,
        Some(n) if n as usize <= MAX_CELLS => Some(n as usize),
        Some(n) => {
            return Err(ConfigError::new(
                "max_drained_cells",
                format!("must be between 0 and {MAX_CELLS}, got {n}"),
            ))
        }
    };
    let cold_after_ms = match raw.cold_after {
        None => Some(DEFAULT_COLD_AFTER_MS),
        Some(None) => None,
        Some(Some(d)) if d.as_ms() >= 1_000 => Some(d.as_ms()),
        Some(Some(d)) => {
            return Err(ConfigError::new(
                "cold_after",
                format!("must be at least 1s (or null: never), got {d}"),
            ))
        }
    };
    Ok(CellsSpec {
        configured,
        drain_rate,
        max_drained,
        cold_after_ms,
    })
}

/// A callout's timeout: Envoy refuses one past `i32::MAX` ms at send time, and the SDK narrows
/// it to `u32` on the way; an hour is far more than any priming or health-check request needs.
fn check_callout_timeout(field: &str, d: DurationMs) -> Result<(), ConfigError> {
    if (1..=3_600_000).contains(&d.as_ms()) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be between 1ms and 1h, got {d}"),
        ))
    }
}

/// `alternates` names further endpoints in the destination header, comma-separated, so that
/// Envoy's `override_host` load-balancing policy sends each retry to the next one. An
/// `ORIGINAL_DST` cluster reads a single address, so the default header cannot carry them.
fn check_alternates(n: u32, kind: Kind, header: &str) -> Result<usize, ConfigError> {
    if n == 0 {
        return Ok(0);
    }
    if kind == Kind::Admit {
        return Err(ConfigError::new(
            "alternates",
            "applies to balance mode only (a filter with endpoints or discovery)",
        ));
    }
    if n as usize > MAX_ALTERNATES {
        return Err(ConfigError::new(
            "alternates",
            format!("must be between 0 and {MAX_ALTERNATES}, got {n}"),
        ));
    }
    if header == DEFAULT_DESTINATION_HEADER {
        return Err(ConfigError::new(
            "alternates",
            format!(
                "needs a destination_header read by a cluster with Envoy's override_host \
                 load-balancing policy; an ORIGINAL_DST cluster reads one address from \
                 {DEFAULT_DESTINATION_HEADER}"
            ),
        ));
    }
    Ok(n as usize)
}

/// Defaults the checks apply to fields left unset, for the schema: from the same sources.
#[cfg(feature = "schema")]
mod schema_default {
    /// For a field whose serde default (`None`) is not the value it ends up with.
    pub(super) fn no_default(schema: &mut schemars::Schema) {
        schema.remove("default");
    }
    pub(super) fn failure_statuses() -> Option<super::StatusSet> {
        super::StatusSet::from_strs(super::DEFAULT_FAILURE_STATUSES).ok()
    }
    pub(super) fn cells() -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::new())
    }
    pub(super) fn drain_rate() -> Option<f64> {
        Some(super::DEFAULT_DRAIN_RATE)
    }
    pub(super) fn cold_after() -> Option<super::DurationMs> {
        Some(super::DurationMs(super::DEFAULT_COLD_AFTER_MS))
    }
}

/// The configuration's JSON Schema (committed as `schemas/slow-start.schema.json` by
/// `cargo pack schema`), derived from the types this module parses with.
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    resilience_core::schema::filter_schema::<RawGlobal, RawSettings>(
        &resilience_core::schema::FilterSchema {
            name: "slow-start",
            description: env!("CARGO_PKG_DESCRIPTION"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_timeout_defaults_to_30s_in_admit_mode_and_off_in_balance_mode() {
        let admit =
            parse(br#"{"active_health_check": {"path": "/healthz"}, "dispatch_cluster": "app"}"#)
                .unwrap();
        assert_eq!(admit.global.policy.gate_timeout_ms, Some(30_000));
        let off = parse(br#"{"gate_timeout": null}"#).unwrap();
        assert_eq!(off.global.policy.gate_timeout_ms, None);
        let set = parse(br#"{"gate_timeout": "5s"}"#).unwrap();
        assert_eq!(set.global.policy.gate_timeout_ms, Some(5_000));
        let balance = parse(br#"{"endpoints": [{"address": "10.0.0.1:80"}]}"#).unwrap();
        assert_eq!(balance.global.policy.gate_timeout_ms, None);
        let err = parse(br#"{"gate_timeout": "0ms"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("gate_timeout: must be at least 1ms"),
            "{err}"
        );
        let err = parse(
            br#"{"routes": [{"name": "r", "match": {"prefix": "/"}, "gate_timeout": "1s"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gate_timeout"), "{err}");
    }

    fn err(json: &str) -> String {
        match parse(json.as_bytes()) {
            Ok(_) => panic!("expected {json} to be rejected"),
            Err(e) => e.to_string(),
        }
    }

    const TWO: &str =
        r#""endpoints": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80", "weight": 3}]"#;

    #[test]
    fn an_empty_configuration_is_an_admitting_filter_with_envoys_curve_defaults() {
        let c = parse(b"").unwrap();
        assert_eq!(c.global.kind, Kind::Admit);
        let s = &c.routes.defaults;
        assert_eq!(s.mode, Mode::Admit);
        assert_eq!(
            s.curve,
            Curve {
                window_ms: 30_000,
                aggression: 1.0,
                min_fraction: 0.1
            }
        );
        assert_eq!(s.retry_after_s, 1);
        assert_eq!(c.global.policy.unhealthy_after, 5);
        assert!(c.global.policy.closed_loop.is_none());
        assert!(!c.global.policy.gated());
    }

    #[test]
    fn endpoints_make_a_balancing_filter() {
        let c = parse(format!("{{ {TWO} }}").as_bytes()).unwrap();
        assert_eq!(c.global.kind, Kind::Balance);
        assert_eq!(c.routes.defaults.mode, Mode::Balance);
        assert_eq!(c.global.endpoints[1].weight, 3);
        assert_eq!(c.global.destination_header, "x-envoy-original-dst-host");
    }

    #[test]
    fn callout_timeouts_are_between_1ms_and_an_hour() {
        assert_eq!(
            err(r#"{"warmup_timeout": "2h"}"#),
            "warmup_timeout: must be between 1ms and 1h, got 2h"
        );
        assert!(err(r#"{"warmup_timeout": "0ms"}"#).starts_with("warmup_timeout: must be"));
        assert!(err(&format!(
            r#"{{ {TWO}, "dispatch_cluster": "c", "active_health_check": {{"path": "/h", "timeout": "90m"}} }}"#
        ))
        .starts_with("active_health_check.timeout: must be between 1ms and 1h"));
    }

    #[test]
    fn alternates_need_balance_mode_a_small_count_and_an_override_host_header() {
        let c = parse(
            format!(r#"{{ {TWO}, "alternates": 1, "destination_header": "x-pick" }}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(c.global.alternates, 1);
        assert_eq!(parse(b"{}").unwrap().global.alternates, 0);
        assert!(err(r#"{"alternates": 1}"#).starts_with("alternates: applies to balance mode"));
        assert!(err(&format!(
            r#"{{ {TWO}, "alternates": 5, "destination_header": "x-pick" }}"#
        ))
        .starts_with("alternates: must be between 0 and 4, got 5"));
        assert!(err(&format!(r#"{{ {TWO}, "alternates": 2 }}"#))
            .contains("an ORIGINAL_DST cluster reads one address"));
        assert!(
            err(r#"{"routes": [{"match": {"prefix": "/"}, "alternates": 1}]}"#)
                .starts_with("routes[0].alternates: is a filter-wide setting")
        );
    }

    #[test]
    fn discovery_alone_makes_a_balancing_filter_and_is_checked() {
        let c = parse(
            br#"{"discovery": {"cluster": "registry", "path": "/endpoints", "interval": "5s"}}"#,
        )
        .unwrap();
        assert_eq!(c.global.kind, Kind::Balance);
        assert!(c.global.endpoints.is_empty());
        let d = c.global.discovery.unwrap();
        assert_eq!(
            (d.authority.as_str(), d.interval_ms, d.timeout_ms),
            ("registry", 5_000, 2_000)
        );
        assert!(
            err(r#"{"discovery": {"cluster": "r", "path": "endpoints"}}"#)
                .starts_with("discovery.path: must start with")
        );
        assert!(
            err(r#"{"discovery": {"cluster": "r", "path": "/e", "interval": "10ms"}}"#)
                .starts_with("discovery.interval: must be between 100ms and 1h")
        );
    }

    #[test]
    fn a_route_tunes_its_own_curve_and_the_longest_window_decides_when_an_endpoint_is_warm() {
        let c = parse(
            format!(
                r#"{{ {TWO}, "slow_start_window": "10s",
                     "routes": [{{"name": "heavy", "match": {{"prefix": "/report"}}, "slow_start_window": "60s", "aggression": 0.5}}] }}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.routes.routes[0].settings.curve.window_ms, 60_000);
        assert_eq!(c.routes.defaults.curve.window_ms, 10_000);
        assert_eq!(c.global.policy.window_ms, 60_000);
    }

    #[test]
    fn modes_must_fit_the_kind_of_filter() {
        assert!(err(r#"{"mode": "balance"}"#).starts_with("mode: \"balance\" needs \"endpoints\""));
        assert!(err(&format!(r#"{{ {TWO}, "mode": "admit" }}"#))
            .starts_with("mode: \"admit\" cannot be used with \"endpoints\""));
        assert!(parse(format!(r#"{{ {TWO}, "mode": "dry_run" }}"#).as_bytes()).is_ok());
        assert!(err(r#"{"mode": "sometimes"}"#).starts_with("mode: unknown variant"));
    }

    #[test]
    fn a_bad_endpoint_is_named_with_its_index() {
        assert_eq!(
            err(r#"{"endpoints": [{"address": "10.0.0.1:80"}, {"address": "db"}]}"#),
            "endpoints[1].address: must be an IP address and port like \"10.0.0.7:8080\", got \"db\""
        );
        assert_eq!(
            err(r#"{"endpoints": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.1:80"}]}"#),
            "endpoints[1].address: 10.0.0.1:80 is listed twice"
        );
        assert_eq!(
            err(r#"{"endpoints": [{"address": "10.0.0.1:80", "weight": 0}]}"#),
            "endpoints[0].weight: must be between 1 and 1000, got 0"
        );
        assert!(err(r#"{"endpoints": []}"#).starts_with("endpoints: must list at least one"));
    }

    #[test]
    fn priming_and_health_checks_need_a_cluster_to_be_sent_through() {
        assert!(err(r#"{"warmup_requests": [{"path": "/warm"}]}"#)
            .starts_with("dispatch_cluster: is required"));
        let c = parse(
            br#"{"dispatch_cluster": "app", "warmup_requests": [{"path": "/a"}, {"method": "post", "path": "/b", "body": "x"}], "warmup_rate": 20}"#,
        )
        .unwrap();
        let p = c.global.policy.priming.unwrap();
        assert_eq!((p.requests, p.interval_ms), (2, 50));
        assert_eq!(c.global.warmup_requests[1].method, "POST");
        assert!(c.global.policy.gated());
    }

    #[test]
    fn warm_up_requests_are_checked_like_requests() {
        assert_eq!(
            err(r#"{"dispatch_cluster": "app", "warmup_requests": [{"path": "warm"}]}"#),
            "warmup_requests[0].path: must start with \"/\" and hold no spaces or control characters, got \"warm\""
        );
        assert!(err(
            r#"{"dispatch_cluster": "app", "warmup_requests": [{"path": "/a", "headers": {"x-envoy-original-dst-host": "1.2.3.4:5"}}]}"#
        )
        .starts_with("warmup_requests[0].headers: \"x-envoy-original-dst-host\" is set by the filter"));
        assert!(err(r#"{"warmup_rate": 0}"#).starts_with("warmup_rate: must be"));
    }

    #[test]
    fn out_of_range_curve_settings_name_the_route_and_field() {
        assert_eq!(
            err(r#"{"routes": [{"match": {"prefix": "/a"}, "min_weight_percent": 150}]}"#),
            "routes[0].min_weight_percent: must be between 0 and 100, got 150"
        );
        assert_eq!(
            err(r#"{"aggression": 0}"#),
            "aggression: must be greater than 0 and at most 100, got 0"
        );
        assert_eq!(
            err(r#"{"slow_start_window": "10ms"}"#),
            "slow_start_window: must be between 100ms and 1h, got 10ms"
        );
        assert!(
            err(r#"{"routes": [{"match": {"prefix": "/a"}, "max_warmup_rps": 5}]}"#)
                .starts_with("routes[0].max_warmup_rps: is a filter-wide setting")
        );
    }

    #[test]
    fn the_closed_loop_is_off_unless_configured_and_checked_when_it_is() {
        let c = parse(br#"{"closed_loop": {}}"#).unwrap();
        let cl = c.global.policy.closed_loop.unwrap();
        assert_eq!(cl.latency_factor, Some(2.0));
        assert_eq!(cl.min_requests, 20);
        assert_eq!(c.global.policy.recent_window_ms, 5_000);
        assert!(err(r#"{"closed_loop": {"latency_factor": 0.5}}"#)
            .starts_with("closed_loop.latency_factor: must be between 1 and 1000"));
        assert!(
            err(r#"{"closed_loop": {"latency_factor": null, "error_rate_factor": null}}"#)
                .starts_with("closed_loop: turns both signals off")
        );
    }

    #[test]
    fn health_checks_belong_to_admit_mode() {
        let c = parse(br#"{"health_checks": {"paths": ["/healthz"], "headers": [{"name": "User-Agent", "value": "kube-probe/1.30"}]}}"#).unwrap();
        assert_eq!(c.global.health_checks.paths, vec!["/healthz".to_owned()]);
        assert_eq!(c.global.health_checks.headers[0].name, "user-agent");
        assert!(err(&format!(
            r#"{{ {TWO}, "health_checks": {{"paths": ["/h"]}} }}"#
        ))
        .starts_with("health_checks: applies to admit mode only"));
    }

    #[test]
    fn cells_are_named_bounded_and_belong_to_balance_mode() {
        let c = parse(
            br#"{"endpoints": [{"address": "10.0.0.1:80", "cell": "use1-az1"}, {"address": "10.0.0.2:80"}],
                 "cells": {"use1-az1": {"drain_percent": 12.5}}, "drain_rate": 50, "max_drained_cells": 1}"#,
        )
        .unwrap();
        let g = &c.global;
        assert_eq!(g.endpoints[0].cell.as_deref(), Some("use1-az1"));
        assert_eq!(g.endpoints[1].cell, None);
        assert_eq!(g.cells.configured, vec![("use1-az1".to_owned(), 12_500)]);
        assert_eq!((g.cells.drain_rate, g.cells.max_drained), (50.0, Some(1)));
        assert_eq!(g.cells.cold_after_ms, Some(300_000));
        let d = parse(format!("{{ {TWO}, \"cold_after\": null }}").as_bytes()).unwrap();
        assert_eq!(d.global.cells.drain_rate, 10.0);
        assert_eq!(d.global.cells.max_drained, None);
        assert_eq!(d.global.cells.cold_after_ms, None);
        assert_eq!(
            err(r#"{"endpoints": [{"address": "10.0.0.1:80", "cell": "az 1"}]}"#),
            "endpoints[0].cell: must be 1 to 64 characters of [A-Za-z0-9_.-], got \"az 1\""
        );
        assert_eq!(
            err(&format!(
                r#"{{ {TWO}, "cells": {{"a": {{"drain_percent": 101}}}} }}"#
            )),
            "cells.a.drain_percent: must be between 0 and 100, got 101"
        );
        assert!(err(&format!(r#"{{ {TWO}, "drain_rate": 0.5 }}"#))
            .starts_with("drain_rate: must be between 1 and 100000"));
        assert!(err(&format!(r#"{{ {TWO}, "cold_after": "10ms" }}"#))
            .starts_with("cold_after: must be at least 1s"));
        assert!(err(r#"{"cells": {"a": {}}}"#).starts_with("cells: applies to balance mode"));
        assert!(err(&format!(
            r#"{{ {TWO}, "max_endpoints": 2, "cells": {{"a": {{}}, "b": {{}}, "c": {{}}}} }}"#
        ))
        .starts_with("cells: names 3 cells, more than max_endpoints (2)"));
        assert!(
            err(r#"{"routes": [{"match": {"prefix": "/"}, "drain_rate": 5}]}"#)
                .starts_with("routes[0].drain_rate: is a filter-wide setting")
        );
    }

    #[test]
    fn a_rate_cap_and_a_retry_after_are_validated() {
        let c = parse(br#"{"max_warmup_rps": 20, "retry_after": "2.5s"}"#).unwrap();
        assert_eq!(c.global.max_warmup_rps.unwrap().interval_us, 50_000);
        assert_eq!(c.routes.defaults.retry_after_s, 3);
        assert!(err(r#"{"max_warmup_rps": -1}"#).starts_with("max_warmup_rps: must be above 0"));
        assert!(err(r#"{"retry_after": "10ms"}"#).starts_with("retry_after: must be between 1s"));
    }
}
