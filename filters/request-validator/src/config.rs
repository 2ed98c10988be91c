//! The filter's configuration: parsed from the Wasm filter's JSON, then checked and compiled.
//!
//! Why two steps: serde catches the shape (types, unknown fields) with the JSON path; the checks
//! that need more (a pattern compiles, a schema is valid JSON Schema, an OpenAPI document compiles,
//! `priority` needs `max_concurrent_requests`) run after and name the field too, down to the
//! keyword inside a schema: `routes[0].json_schema.properties.age.minimum: is not a valid JSON
//! Schema: ...`. Envoy then refuses the filter at load; nothing is silently ignored.
//!
//! Top-level fields that are not global (see [`GLOBAL_FIELDS`]) are the defaults; each `routes`
//! entry overrides them field by field for the requests its `match` selects. Identical schemas and
//! OpenAPI documents (a default inherited by several routes) are compiled once and shared.

use std::collections::BTreeMap;
use std::rc::Rc;

use resilience_core::config::{
    check_header_name, check_stat_prefix, check_sync_interval, field_path as field, ConfigError,
    DurationMs, Percent,
};
use resilience_core::routes::{parse_filter_config, Route, RouteTable};
use resilience_host::metrics::sanitize_segment;
use serde::Deserialize;
use serde_json::Value;

use crate::rules::grpc::{GrpcRules, MethodPattern};
use crate::rules::head::{HeadRules, HeaderRule, JsonSchemaRule, Unknown};
use crate::rules::health::{HeaderProbe, HealthChecks};
use crate::rules::json::{JsonDraft, SchemaSet};
use crate::rules::media::{is_token_byte, MediaRange};
use crate::rules::openapi::Api;
use crate::rules::pattern::Pattern;
use crate::rules::query::{IntRange, QueryRule};

/// Fields that apply to the whole filter instance and cannot be overridden per route.
pub const GLOBAL_FIELDS: &[&str] = &[
    "stat_prefix",
    "sync_interval",
    "health_checks",
    "in_flight_lease",
    "hold_headers_for_body_checks",
    "latency_half_life",
];

/// The response header that explains a rejection (and, in dry-run, a would-be rejection).
pub const DECISION_HEADER: &str = "x-resilience-request-validator";

/// Envoy's default per-connection buffer limit: a route that buffers bodies and names no
/// `max_body_bytes` buffers at most this much (Envoy itself answers 413 past its own limit).
pub const DEFAULT_BUFFERED_BODY_BYTES: u64 = 1 << 20;
/// Most body bytes a route may buffer: memory held per request, per worker.
pub const MAX_BUFFERED_BODY_BYTES: u64 = 16 << 20;
/// The draft of a `json_schema` that names none.
const DEFAULT_JSON_DRAFT: JsonDraft = JsonDraft::V2020_12;
/// Key used for requests that match no `routes` entry.
pub const DEFAULT_KEY: &str = "default";
/// Longest route key (stats and shared-data keys).
pub const MAX_KEY_LEN: usize = 64;
/// Most `grpc_methods` entries on one route (each is compared per gRPC call).
pub const MAX_GRPC_METHODS: usize = 256;

#[derive(Deserialize, Debug)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    /// First segment of every stat name: 1-64 characters of [A-Za-z0-9_].
    #[serde(default = "d_stat_prefix")]
    stat_prefix: String,
    /// The tick (10ms-10s) that flushes stats, publishes latencies and refreshes in-flight
    /// leases.
    #[serde(default = "d_sync")]
    sync_interval: DurationMs,
    /// Requests that are health checks: never rejected or shed, whatever the rules.
    #[serde(default)]
    health_checks: RawHealthChecks,
    /// A worker VM that has not refreshed its in-flight count for this long (it died) stops
    /// counting; at least 1s and 4 sync intervals, at most 1h.
    #[serde(default = "d_lease")]
    in_flight_lease: DurationMs,
    /// Hold a request's headers too until its body is checked, so the upstream sees nothing of a
    /// rejected request. Needs allow_on_headers_stop_iteration: true in the Wasm filter's config.
    #[serde(default)]
    hold_headers_for_body_checks: bool,
    /// Samples after which an observed latency weighs half (1-1000000); the estimator decays by
    /// samples, never by the clock.
    #[serde(default = "d_half_life")]
    latency_half_life: u32,
}

fn d_stat_prefix() -> String {
    "request_validator".to_owned()
}
fn d_sync() -> DurationMs {
    DurationMs(100)
}
fn d_lease() -> DurationMs {
    DurationMs(10_000)
}
fn d_half_life() -> u32 {
    500
}

/// Requests that are health checks: a listed path, or a matching header.
#[derive(Deserialize, Debug, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "HealthChecks"))]
#[serde(deny_unknown_fields)]
struct RawHealthChecks {
    /// Exact paths (the query ignored) that are health checks; each starts with "/" and has no
    /// query.
    #[serde(default)]
    paths: Vec<String>,
    /// A request carrying a matching header is a health check.
    #[serde(default)]
    headers: Vec<RawHeaderProbe>,
}

/// A header that marks a health check: present, with exactly `value`, or starting with
/// `prefix` (not both).
#[derive(Deserialize, Debug)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "HeaderProbe"))]
#[serde(deny_unknown_fields)]
struct RawHeaderProbe {
    /// The header's name (1-128 token characters, any case).
    name: String,
    /// The header's value equals this.
    value: Option<String>,
    /// The header's value starts with this.
    prefix: Option<String>,
}

/// `enforce` rejects, `dry_run` only counts, marks and logs what it would reject, `disabled` does
/// nothing.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Reject requests that break a rule, and shed past the concurrency limit.
    #[default]
    Enforce,
    /// Never reject; count, log and mark what would have been rejected.
    DryRun,
    /// Pass requests untouched and uncounted.
    Disabled,
}

/// A rule on one request header. Every occurrence of the header is checked.
#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "HeaderRule"))]
#[serde(deny_unknown_fields)]
struct RawHeaderRule {
    /// The header's name (1-128 token characters, any case).
    name: String,
    /// Whether the header must be present; false constrains it only when present, and then
    /// needs one of `value`, `one_of`, `pattern`.
    #[serde(default = "d_true")]
    required: bool,
    /// The value must equal this. At most one of `value`, `one_of`, `pattern`.
    value: Option<String>,
    /// The value must equal one of these (not empty).
    one_of: Option<Vec<String>>,
    /// A regular expression searched in the value (anchor it with ^...$).
    pattern: Option<String>,
}

fn d_true() -> bool {
    true
}

/// A rule on one query parameter; names and values are percent-decoded (`+` is a space), and
/// every occurrence is checked. It must check something: `required`, `pattern` or `integer`.
#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "QueryRule"))]
#[serde(deny_unknown_fields)]
struct RawQueryRule {
    /// The parameter's name (not empty).
    name: String,
    /// Whether the parameter must be present.
    #[serde(default)]
    required: bool,
    /// A regular expression searched in the value (anchor it with ^...$).
    pattern: Option<String>,
    /// The value must be a decimal integer within these bounds.
    integer: Option<RawIntRange>,
}

/// Inclusive integer bounds; either may be left out.
#[derive(Deserialize, Debug, Clone, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "IntRange"))]
#[serde(deny_unknown_fields)]
struct RawIntRange {
    /// The smallest value allowed.
    min: Option<i64>,
    /// The largest value allowed, at least `min`.
    max: Option<i64>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", schemars(rename = "UnknownOperations"))]
#[serde(rename_all = "snake_case")]
enum RawUnknown {
    /// 404 or 405 for operations the document lacks.
    #[default]
    Reject,
    /// Let them through unchecked.
    Pass,
}

/// Priority classes by request header: a class may fill only its share of
/// `max_concurrent_requests`.
#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Priority"))]
#[serde(deny_unknown_fields)]
struct RawPriority {
    /// The request header naming the class (1-128 token characters, any case).
    header: String,
    /// Header value to the share of the limit, in percent, that requests of that class may fill.
    #[serde(default)]
    shares: BTreeMap<String, Percent>,
    /// The share of requests whose value is not in `shares`, or that lack the header.
    #[serde(default = "d_hundred")]
    default_share: Percent,
}

fn d_hundred() -> Percent {
    Percent::HUNDRED
}

#[derive(Deserialize, Debug, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSettings {
    /// Whether the validator rejects, only counts, or does nothing.
    #[serde(default)]
    mode: Mode,
    /// The methods allowed, matched exactly after uppercasing (not empty); unset allows any.
    allowed_methods: Option<Vec<String>>,
    /// Longest path, query included, in bytes (at least 1); unset: no limit.
    max_path_bytes: Option<u32>,
    /// Most request headers, pseudo-headers not counted (at least 1); unset: no limit.
    max_header_count: Option<u32>,
    /// Most bytes of all request headers' names and values, pseudo-headers not counted (at
    /// least 1); unset: no limit.
    max_header_bytes: Option<u32>,
    /// Rules on request headers.
    #[serde(default)]
    required_headers: Vec<RawHeaderRule>,
    /// Rules on query parameters.
    #[serde(default)]
    query_params: Vec<RawQueryRule>,
    /// Media types accepted for requests with a body (application/json, text/*, */*,
    /// application/*+json; parameters and case ignored). Unset accepts any, or the JSON types
    /// with `json_schema`.
    content_types: Option<Vec<String>>,
    /// 411 for a body without content-length.
    #[serde(default)]
    require_content_length: bool,
    /// Most body bytes. Unset: no limit, or 1 MiB on a route that checks JSON, where at most
    /// 16 MiB is allowed since those bodies are buffered.
    max_body_bytes: Option<u64>,
    /// Check that JSON bodies are well-formed.
    #[serde(default)]
    json_body: bool,
    /// A JSON Schema (an object or a boolean) request bodies must satisfy, compiled at load.
    /// Implies `json_body`.
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "schema_default::json_schema")
    )]
    json_schema: Option<Value>,
    /// The draft of a `json_schema` without `$schema` (a `$schema` in the schema wins).
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "schema_default::json_schema_draft")
    )]
    json_schema_draft: Option<String>,
    /// Make `format` (email, date-time, ...) an assertion, not an annotation.
    #[serde(default)]
    assert_formats: bool,
    /// An OpenAPI 3.0 or 3.1 document, inline as JSON, compiled at load: requests are checked
    /// against the operation they call.
    #[cfg_attr(feature = "schema", schemars(schema_with = "schema_default::openapi"))]
    openapi: Option<Value>,
    /// What happens to requests for operations the `openapi` document lacks.
    #[serde(default)]
    openapi_unknown_operations: RawUnknown,
    /// 504 when the request's announced deadline is below this.
    min_remaining_deadline: Option<DurationMs>,
    /// An extra header carrying the remaining milliseconds (e.g. x-request-deadline-ms).
    deadline_header: Option<String>,
    /// 504 when the announced deadline is below the route's observed `deadline_percentile`.
    #[serde(default)]
    deadline_from_observed_latency: bool,
    /// Which percentile of the route's response latency (above 0).
    #[serde(default = "d_fifty")]
    deadline_percentile: Percent,
    /// Responses to see before the observed latency is trusted (at least 1).
    #[serde(default = "d_min_samples")]
    deadline_min_samples: u32,
    /// Requests in flight on the route across all workers (1-1000000); past it, requests are
    /// shed with a 503. Unset: no limit.
    max_concurrent_requests: Option<u32>,
    /// Priority classes sharing `max_concurrent_requests` (needs it).
    priority: Option<RawPriority>,
    /// retry-after of a shed request: 1s-1h, whole seconds, rounded up.
    #[serde(default = "d_retry_after")]
    shed_retry_after: DurationMs,
    /// gRPC methods the route serves, each "/package.Service/Method" or "/package.Service/*"
    /// (not empty, at most 256); a gRPC call for any other is UNIMPLEMENTED. Unset allows any.
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "schema_default::grpc_methods")
    )]
    grpc_methods: Option<Vec<String>>,
    /// gRPC calls must carry a valid grpc-timeout; one without is INVALID_ARGUMENT.
    #[serde(default)]
    require_grpc_timeout: bool,
    /// Read each gRPC message's 5-byte prefix as the body streams: a bad prefix is
    /// INVALID_ARGUMENT, a message announcing more than `max_body_bytes` RESOURCE_EXHAUSTED.
    #[serde(default)]
    grpc_framing: bool,
}

fn d_fifty() -> Percent {
    Percent::clamped(50.0)
}
fn d_min_samples() -> u32 {
    20
}
fn d_retry_after() -> DurationMs {
    DurationMs(1_000)
}

/// Deadline settings of one route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deadline {
    pub min_remaining_ms: Option<u64>,
    /// Lowercase name of an extra header carrying the remaining milliseconds.
    pub header: Option<String>,
    pub observed: Option<Observed>,
}

/// `deadline_from_observed_latency` settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    pub percentile: f64,
    pub min_samples: u32,
}

/// Priority classes by request header.
#[derive(Debug, Clone, PartialEq)]
pub struct Priority {
    /// Lowercase header name.
    pub header: String,
    /// Header value → share of the limit, in percent.
    pub shares: Vec<(Vec<u8>, f64)>,
    pub default_share: f64,
}

impl Priority {
    /// The share of the limit a request with this header value may fill.
    pub fn share_of(&self, value: Option<&[u8]>) -> f64 {
        value
            .and_then(|v| self.shares.iter().find(|(k, _)| k.as_slice() == v))
            .map_or(self.default_share, |(_, s)| *s)
    }
}

/// Concurrency shedding of one route.
#[derive(Debug, Clone, PartialEq)]
pub struct Shedding {
    pub limit: u32,
    pub priority: Option<Priority>,
    pub retry_after_s: u64,
}

/// One route's checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub head: HeadRules,
    pub deadline: Deadline,
    pub shedding: Option<Shedding>,
}

/// Settings of the whole filter instance.
#[derive(Debug, Clone)]
pub struct Global {
    pub stat_prefix: String,
    pub sync_interval_ms: u64,
    pub health_checks: HealthChecks,
    pub in_flight_lease_ms: u64,
    pub hold_headers_for_body_checks: bool,
    pub latency_half_life: u32,
}

/// The checked configuration, with each route's stats/shared-data key.
#[derive(Debug)]
pub struct FilterConfig {
    pub global: Global,
    pub routes: RouteTable<Settings>,
    /// `keys[0]` is the defaults' key ([`DEFAULT_KEY`]), `keys[i + 1]` route `i`'s.
    pub keys: Vec<String>,
}

impl FilterConfig {
    /// The settings for an entry index (0: defaults, i + 1: route i).
    pub fn settings(&self, entry: usize) -> &Settings {
        entry
            .checked_sub(1)
            .and_then(|i| self.routes.routes.get(i))
            .map_or(&self.routes.defaults, |r| &r.settings)
    }
}

/// Compiled schemas and documents, shared between routes that configure identical ones.
#[derive(Default)]
struct Cache {
    schemas: Vec<((Value, JsonDraft, bool), Rc<JsonSchemaRule>)>,
    apis: Vec<((Value, bool), Rc<Api>)>,
}

/// Parse, check and compile the filter's JSON configuration.
pub fn parse(json: &[u8]) -> Result<FilterConfig, ConfigError> {
    let (raw_global, raw_table): (RawGlobal, RouteTable<RawSettings>) =
        parse_filter_config(json, GLOBAL_FIELDS)?;
    let global = check_global(raw_global)?;
    let mut cache = Cache::default();
    let defaults = check_settings(raw_table.defaults, "", &mut cache)?;
    let mut routes: Vec<Route<Settings>> = Vec::with_capacity(raw_table.routes.len());
    let mut keys = vec![DEFAULT_KEY.to_owned()];
    for (i, r) in raw_table.routes.into_iter().enumerate() {
        let key = if r.name.starts_with("routes[") {
            format!("routes_{i}_")
        } else {
            sanitize_segment(&r.name, MAX_KEY_LEN)
        };
        if keys.contains(&key) {
            return Err(ConfigError::new(
                format!("routes[{i}].name"),
                format!(
                    "{:?} gives the key {key:?}, already used by an earlier route or the defaults; names key the stats and counters and must be distinct",
                    r.name
                ),
            ));
        }
        keys.push(key);
        let settings = check_settings(r.settings, &format!("routes[{i}]"), &mut cache)?;
        routes.push(Route {
            name: r.name,
            matcher: r.matcher,
            settings,
        });
    }
    Ok(FilterConfig {
        global,
        routes: RouteTable { defaults, routes },
        keys,
    })
}

fn header_value(raw: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    if raw.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(ConfigError::new(path, "must not contain CR, LF or NUL"));
    }
    Ok(raw.as_bytes().to_vec())
}

fn check_global(raw: RawGlobal) -> Result<Global, ConfigError> {
    check_stat_prefix(&raw.stat_prefix)?;
    let sync = check_sync_interval(raw.sync_interval)?;
    let lease = raw.in_flight_lease.as_ms();
    let min_lease = sync.saturating_mul(4).max(1_000);
    if !(min_lease..=3_600_000).contains(&lease) {
        return Err(ConfigError::new(
            "in_flight_lease",
            format!(
                "must be between {} (1s, and at least 4 sync intervals) and 1h, got {}",
                DurationMs(min_lease),
                raw.in_flight_lease
            ),
        ));
    }
    if raw.latency_half_life == 0 || raw.latency_half_life > 1_000_000 {
        return Err(ConfigError::new(
            "latency_half_life",
            format!(
                "must be between 1 and 1000000 samples, got {}",
                raw.latency_half_life
            ),
        ));
    }
    let mut health = HealthChecks::default();
    for (i, p) in raw.health_checks.paths.into_iter().enumerate() {
        if !p.starts_with('/') || p.contains('?') {
            return Err(ConfigError::new(
                format!("health_checks.paths[{i}]"),
                format!("must be a path starting with \"/\" and without a query, got {p:?}"),
            ));
        }
        health.paths.push(p);
    }
    for (i, h) in raw.health_checks.headers.into_iter().enumerate() {
        let at = format!("health_checks.headers[{i}]");
        let name = check_header_name(&format!("{at}.name"), &h.name)?;
        if h.value.is_some() && h.prefix.is_some() {
            return Err(ConfigError::new(
                at,
                r#"cannot have both "value" and "prefix""#,
            ));
        }
        health.headers.push(HeaderProbe {
            name,
            value: h.value,
            prefix: h.prefix,
        });
    }
    Ok(Global {
        stat_prefix: raw.stat_prefix,
        sync_interval_ms: sync,
        health_checks: health,
        in_flight_lease_ms: lease,
        hold_headers_for_body_checks: raw.hold_headers_for_body_checks,
        latency_half_life: raw.latency_half_life,
    })
}

fn positive(v: Option<u32>, path: &str) -> Result<Option<u32>, ConfigError> {
    match v {
        Some(0) => Err(ConfigError::new(path, "must be at least 1, got 0")),
        other => Ok(other),
    }
}

fn check_settings(
    raw: RawSettings,
    prefix: &str,
    cache: &mut Cache,
) -> Result<Settings, ConfigError> {
    let at = |name: &str| field(prefix, name);
    let err = |name: &str, rule: String| ConfigError::new(field(prefix, name), rule);

    let (allowed_methods, allow) = match raw.allowed_methods {
        None => (None, String::new()),
        Some(list) => {
            if list.is_empty() {
                return Err(err(
                    "allowed_methods",
                    "must list at least one method (leave it out to allow every method)".to_owned(),
                ));
            }
            let mut out: Vec<String> = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                if m.is_empty() || m.len() > 32 || !m.bytes().all(is_token_byte) {
                    return Err(err(
                        &format!("allowed_methods[{i}]"),
                        format!("must be an HTTP method, got {m:?}"),
                    ));
                }
                let up = m.to_ascii_uppercase();
                if !out.contains(&up) {
                    out.push(up);
                }
            }
            let allow = out.join(", ");
            (Some(out), allow)
        }
    };

    let mut required_headers = Vec::with_capacity(raw.required_headers.len());
    for (i, h) in raw.required_headers.iter().enumerate() {
        let hp = at(&format!("required_headers[{i}]"));
        let name = check_header_name(&format!("{hp}.name"), &h.name)?;
        let constraints = usize::from(h.value.is_some())
            + usize::from(h.one_of.is_some())
            + usize::from(h.pattern.is_some());
        if constraints > 1 {
            return Err(ConfigError::new(
                hp,
                r#"give at most one of "value", "one_of" and "pattern""#,
            ));
        }
        if !h.required && constraints == 0 {
            return Err(ConfigError::new(
                format!("{hp}.required"),
                "false with no value constraint would check nothing",
            ));
        }
        let value = match &h.value {
            Some(v) => Some(header_value(v, &format!("{hp}.value"))?),
            None => None,
        };
        let mut one_of = Vec::new();
        if let Some(list) = &h.one_of {
            if list.is_empty() {
                return Err(ConfigError::new(
                    format!("{hp}.one_of"),
                    "must not be empty",
                ));
            }
            for (j, v) in list.iter().enumerate() {
                one_of.push(header_value(v, &format!("{hp}.one_of[{j}]"))?);
            }
        }
        let pattern = match &h.pattern {
            Some(p) => {
                Some(Pattern::new(p).map_err(|e| ConfigError::new(format!("{hp}.pattern"), e))?)
            }
            None => None,
        };
        required_headers.push(HeaderRule {
            name,
            required: h.required,
            value,
            one_of,
            pattern,
        });
    }

    let mut query_params = Vec::with_capacity(raw.query_params.len());
    for (i, q) in raw.query_params.iter().enumerate() {
        let qp = at(&format!("query_params[{i}]"));
        if q.name.is_empty() {
            return Err(ConfigError::new(format!("{qp}.name"), "must not be empty"));
        }
        let pattern = match &q.pattern {
            Some(p) => {
                Some(Pattern::new(p).map_err(|e| ConfigError::new(format!("{qp}.pattern"), e))?)
            }
            None => None,
        };
        let integer = q.integer.as_ref().map(|r| IntRange {
            min: r.min,
            max: r.max,
        });
        if let Some(IntRange {
            min: Some(lo),
            max: Some(hi),
        }) = integer
        {
            if lo > hi {
                return Err(ConfigError::new(
                    format!("{qp}.integer.max"),
                    format!("must be at least integer.min ({lo}), got {hi}"),
                ));
            }
        }
        if !q.required && pattern.is_none() && integer.is_none() {
            return Err(ConfigError::new(
                qp,
                r#"checks nothing: give "required": true, a "pattern" or an "integer" range"#,
            ));
        }
        query_params.push(QueryRule {
            name: q.name.clone(),
            required: q.required,
            pattern,
            integer,
        });
    }

    let draft = match &raw.json_schema_draft {
        None => DEFAULT_JSON_DRAFT,
        Some(d) => JsonDraft::parse(d).ok_or_else(|| {
            err(
                "json_schema_draft",
                format!(r#"must be one of "2020-12", "2019-09", "7", "6", "4", got {d:?}"#),
            )
        })?,
    };
    let json_schema = match raw.json_schema {
        None => None,
        Some(schema) => {
            if !matches!(schema, Value::Object(_) | Value::Bool(_)) {
                return Err(err(
                    "json_schema",
                    "must be a JSON Schema (an object or a boolean)".to_owned(),
                ));
            }
            Some(compile_schema(
                schema,
                draft,
                raw.assert_formats,
                &at("json_schema"),
                cache,
            )?)
        }
    };
    let openapi = match raw.openapi {
        None => None,
        Some(doc) => Some(compile_api(doc, raw.assert_formats, &at("openapi"), cache)?),
    };

    let content_types = match (&raw.content_types, &json_schema) {
        (Some(list), _) => {
            if list.is_empty() {
                return Err(err(
                    "content_types",
                    "must list at least one media type (leave it out to accept any)".to_owned(),
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                out.push(
                    MediaRange::parse(m)
                        .map_err(|e| ConfigError::new(at(&format!("content_types[{i}]")), e))?,
                );
            }
            Some(out)
        }
        // A JSON Schema route takes JSON unless told otherwise.
        (None, Some(_)) => Some(vec![
            MediaRange::parse("application/json").map_err(|e| err("content_types", e))?,
            MediaRange::parse("application/*+json").map_err(|e| err("content_types", e))?,
        ]),
        (None, None) => None,
    };

    let may_buffer = raw.json_body || json_schema.is_some() || openapi.is_some();
    let max_body_bytes = match raw.max_body_bytes {
        Some(n) if may_buffer && n > MAX_BUFFERED_BODY_BYTES => {
            return Err(err(
                "max_body_bytes",
                format!(
                    "must be at most {MAX_BUFFERED_BODY_BYTES} on a route that checks JSON bodies (they are buffered), got {n}"
                ),
            ))
        }
        Some(n) => Some(n),
        None if may_buffer => Some(DEFAULT_BUFFERED_BODY_BYTES),
        None => None,
    };

    let grpc_methods = match &raw.grpc_methods {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(err(
                "grpc_methods",
                "must list at least one method (leave it out to allow every method)".to_owned(),
            ))
        }
        Some(list) if list.len() > MAX_GRPC_METHODS => {
            return Err(err(
                "grpc_methods",
                format!(
                    "must list at most {MAX_GRPC_METHODS} methods or services, got {}",
                    list.len()
                ),
            ))
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                let pattern = MethodPattern::parse(m).ok_or_else(|| {
                    err(
                        &format!("grpc_methods[{i}]"),
                        format!(
                            "must be \"/package.Service/Method\" or \"/package.Service/*\", got {:?}",
                            resilience_core::problem::bounded(m, 80)
                        ),
                    )
                })?;
                out.push(pattern);
            }
            Some(out)
        }
    };

    let head = HeadRules {
        allowed_methods,
        allow,
        max_path_bytes: positive(raw.max_path_bytes, &at("max_path_bytes"))?,
        max_header_count: positive(raw.max_header_count, &at("max_header_count"))?,
        max_header_bytes: positive(raw.max_header_bytes, &at("max_header_bytes"))?,
        required_headers,
        query_params,
        content_types,
        require_content_length: raw.require_content_length,
        max_body_bytes,
        json_body: raw.json_body,
        json_schema,
        openapi,
        openapi_unknown: match raw.openapi_unknown_operations {
            RawUnknown::Reject => Unknown::Reject,
            RawUnknown::Pass => Unknown::Pass,
        },
        grpc: GrpcRules {
            methods: grpc_methods,
            require_timeout: raw.require_grpc_timeout,
            framing: raw.grpc_framing,
        },
    };

    let deadline_header = match &raw.deadline_header {
        Some(h) => Some(check_header_name(&at("deadline_header"), h)?),
        None => None,
    };
    if raw.deadline_percentile.value() <= 0.0 {
        return Err(err(
            "deadline_percentile",
            "must be greater than 0".to_owned(),
        ));
    }
    if raw.deadline_min_samples == 0 {
        return Err(err(
            "deadline_min_samples",
            "must be at least 1, got 0".to_owned(),
        ));
    }
    let deadline = Deadline {
        min_remaining_ms: raw.min_remaining_deadline.map(DurationMs::as_ms),
        header: deadline_header,
        observed: raw.deadline_from_observed_latency.then_some(Observed {
            percentile: raw.deadline_percentile.value(),
            min_samples: raw.deadline_min_samples,
        }),
    };

    let shedding = match (raw.max_concurrent_requests, raw.priority) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(err(
                "priority",
                "needs max_concurrent_requests: priority classes share a route's limit".to_owned(),
            ))
        }
        (Some(limit), priority) => {
            if !(1..=1_000_000).contains(&limit) {
                return Err(err(
                    "max_concurrent_requests",
                    format!("must be between 1 and 1000000, got {limit}"),
                ));
            }
            let retry = raw.shed_retry_after.as_ms();
            if !(1_000..=3_600_000).contains(&retry) {
                return Err(err(
                    "shed_retry_after",
                    format!("must be between 1s and 1h, got {}", raw.shed_retry_after),
                ));
            }
            let priority = match priority {
                None => None,
                Some(p) => {
                    let header = check_header_name(&at("priority.header"), &p.header)?;
                    let mut shares = Vec::with_capacity(p.shares.len());
                    for (k, v) in p.shares {
                        let value = header_value(&k, &at(&format!("priority.shares.{k}")))?;
                        shares.push((value, v.value()));
                    }
                    Some(Priority {
                        header,
                        shares,
                        default_share: p.default_share.value(),
                    })
                }
            };
            Some(Shedding {
                limit,
                priority,
                retry_after_s: retry.div_ceil(1_000),
            })
        }
    };

    Ok(Settings {
        mode: raw.mode,
        head,
        deadline,
        shedding,
    })
}

/// A JSON pointer into `doc` as a configuration path below `prefix`: object keys after dots (or
/// quoted, `["/pets"]`, when not plain names), array indices in brackets
/// (`/properties/tags/items/0` → `prefix.properties.tags.items[0]`).
pub fn config_path(prefix: &str, doc: &Value, pointer: &str) -> String {
    let mut out = prefix.to_owned();
    let mut cur = Some(doc);
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        match (cur, token.parse::<usize>()) {
            (Some(Value::Array(items)), Ok(i)) => {
                out.push_str(&format!("[{i}]"));
                cur = items.get(i);
            }
            (Some(Value::Object(map)), _) => {
                resilience_core::config::push_key(&mut out, &token);
                cur = map.get(&token);
            }
            _ => {
                resilience_core::config::push_key(&mut out, &token);
                cur = None;
            }
        }
    }
    out
}

fn compile_schema(
    schema: Value,
    draft: JsonDraft,
    formats: bool,
    path: &str,
    cache: &mut Cache,
) -> Result<Rc<JsonSchemaRule>, ConfigError> {
    if let Some((_, rule)) = cache
        .schemas
        .iter()
        .find(|((v, d, f), _)| *v == schema && *d == draft && *f == formats)
    {
        return Ok(Rc::clone(rule));
    }
    let fail = |e: crate::rules::json::SchemaError| {
        ConfigError::new(config_path(path, &schema, &e.pointer), e.message)
    };
    let mut set = SchemaSet::new("schema.json", schema.clone(), draft, formats).map_err(fail)?;
    let root = set.compile("").map_err(fail)?;
    let rule = Rc::new(JsonSchemaRule { set, root });
    cache
        .schemas
        .push(((schema, draft, formats), Rc::clone(&rule)));
    Ok(rule)
}

fn compile_api(
    doc: Value,
    formats: bool,
    path: &str,
    cache: &mut Cache,
) -> Result<Rc<Api>, ConfigError> {
    if let Some((_, api)) = cache
        .apis
        .iter()
        .find(|((v, f), _)| *v == doc && *f == formats)
    {
        return Ok(Rc::clone(api));
    }
    let api = Api::compile(&doc, formats)
        .map_err(|e| ConfigError::new(config_path(path, &doc, &e.pointer), e.message))?;
    let api = Rc::new(api);
    cache.apis.push(((doc, formats), Rc::clone(&api)));
    Ok(api)
}

/// Schemas of the fields whose Rust type says too little, and defaults the checks apply to
/// fields left unset, for the configuration's JSON Schema: from the same sources.
#[cfg(feature = "schema")]
mod schema_default {
    use schemars::{json_schema, Schema, SchemaGenerator};

    pub(super) fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["object", "boolean", "null"] })
    }
    pub(super) fn openapi(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["object", "null"] })
    }
    pub(super) fn json_schema_draft(_: &mut SchemaGenerator) -> Schema {
        let mut spellings: Vec<serde_json::Value> = super::JsonDraft::SPELLINGS
            .iter()
            .map(|s| serde_json::Value::from(*s))
            .collect();
        spellings.push(serde_json::Value::Null);
        json_schema!({
            "type": ["string", "null"],
            "enum": spellings,
            "default": super::DEFAULT_JSON_DRAFT.name(),
        })
    }
    /// The form `MethodPattern::parse` accepts: `/` + dot-separated identifiers + `/` + an
    /// identifier or `*`.
    pub(super) fn grpc_methods(_: &mut SchemaGenerator) -> Schema {
        let ident = "[A-Za-z_][A-Za-z0-9_]*";
        json_schema!({
            "type": ["array", "null"],
            "minItems": 1,
            "maxItems": super::MAX_GRPC_METHODS,
            "items": {
                "type": "string",
                "pattern": format!("^/{ident}(\\.{ident})*/({ident}|\\*)$"),
            },
        })
    }
}

/// The configuration's JSON Schema (committed as `schemas/request-validator.schema.json` by
/// `cargo pack schema`), derived from the types this module parses with.
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    resilience_core::schema::filter_schema::<RawGlobal, RawSettings>(
        &resilience_core::schema::FilterSchema {
            name: "request-validator",
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
    fn an_empty_configuration_checks_nothing_and_sheds_nothing() {
        let c = parse(b"").unwrap();
        let s = &c.routes.defaults;
        assert_eq!(s.mode, Mode::Enforce);
        assert!(s.head.allowed_methods.is_none());
        assert!(s.shedding.is_none());
        assert_eq!(s.deadline, Deadline::default());
        assert_eq!(c.global.stat_prefix, "request_validator");
        assert_eq!(c.keys, vec!["default"]);
    }

    #[test]
    fn a_route_overrides_only_what_it_names_and_identical_schemas_compile_once() {
        let c = parse(
            br#"{"json_schema": {"type": "object"}, "max_body_bytes": 100,
                 "routes": [{"name": "a", "match": {"prefix": "/a"}, "max_body_bytes": 50},
                            {"name": "b", "match": {"prefix": "/b"}}]}"#,
        )
        .unwrap();
        let a = &c.routes.routes[0].settings.head;
        assert_eq!(a.max_body_bytes, Some(50));
        let d = c.routes.defaults.head.json_schema.as_ref().unwrap();
        assert!(Rc::ptr_eq(d, a.json_schema.as_ref().unwrap()));
        assert_eq!(c.keys, vec!["default", "a", "b"]);
        assert_eq!(
            a.content_types.as_ref().map(Vec::len),
            Some(2),
            "a schema route accepts JSON media types by default"
        );
    }

    #[test]
    fn an_openapi_path_template_in_an_error_path_is_quoted_so_its_slashes_and_dots_read_as_one_key()
    {
        // Found by the config_validator fuzz target: `paths./pets.get` read as three fields.
        let doc = serde_json::json!({"paths": {"/pets.json": {"get": {"parameters": [{}]}}}});
        assert_eq!(
            config_path(
                "routes[0].openapi",
                &doc,
                "/paths/~1pets.json/get/parameters/0"
            ),
            r#"routes[0].openapi.paths["/pets.json"].get.parameters[0]"#
        );
    }

    #[test]
    fn a_bad_schema_is_refused_with_the_path_down_to_the_keyword() {
        assert_eq!(
            err(r#"{"routes": [{"match": {"prefix": "/"}, "json_schema": {"properties": {"tags": {"items": [{"minLength": -1}]}}}, "json_schema_draft": "7"}]}"#)
                .split(": is not").next().unwrap(),
            "routes[0].json_schema.properties.tags.items[0].minLength"
        );
        assert!(err(r#"{"json_schema": 3}"#).starts_with("json_schema: must be a JSON Schema"));
        assert!(err(r#"{"json_schema": {"$ref": "http://x/y.json"}}"#)
            .starts_with("json_schema: references"));
        assert!(
            err(r#"{"json_schema_draft": "8"}"#).starts_with("json_schema_draft: must be one of")
        );
    }

    #[test]
    fn a_bad_pattern_is_refused_with_its_path() {
        assert_eq!(
            err(r#"{"required_headers": [{"name": "x-id", "pattern": "(["}]}"#),
            r#"required_headers[0].pattern: is not a valid regular expression ("(["): unclosed character class"#
        );
        assert!(
            err(r#"{"query_params": [{"name": "q", "pattern": "a{2,1}"}]}"#)
                .starts_with("query_params[0].pattern: is not a valid regular expression")
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        assert!(err(r#"{"max_body_size": 10}"#)
            .starts_with(r#"max_body_size: unknown field "max_body_size""#));
        assert!(
            err(r#"{"routes": [{"match": {"prefix": "/"}, "bogus": 1}]}"#)
                .starts_with("routes[0].bogus: unknown field")
        );
        assert!(err(r#"{"health_checks": {"path": ["/h"]}}"#).contains(r#"unknown field "path""#));
    }

    #[test]
    fn rules_that_cannot_work_are_refused() {
        assert!(err(r#"{"priority": {"header": "x-p"}}"#)
            .starts_with("priority: needs max_concurrent_requests"));
        assert!(err(r#"{"max_concurrent_requests": 0}"#)
            .starts_with("max_concurrent_requests: must be between 1"));
        assert!(err(r#"{"allowed_methods": []}"#).starts_with("allowed_methods: must list"));
        assert!(err(r#"{"allowed_methods": ["GET", "P OST"]}"#)
            .starts_with("allowed_methods[1]: must be an HTTP method"));
        assert!(err(r#"{"content_types": ["json"]}"#)
            .starts_with("content_types[0]: must be a media type"));
        assert!(err(r#"{"query_params": [{"name": "x"}]}"#)
            .starts_with("query_params[0]: checks nothing"));
        assert!(
            err(r#"{"query_params": [{"name": "x", "integer": {"min": 5, "max": 1}}]}"#)
                .starts_with("query_params[0].integer.max")
        );
        assert!(
            err(r#"{"required_headers": [{"name": "x", "value": "a", "one_of": ["b"]}]}"#)
                .starts_with("required_headers[0]: give at most one")
        );
        assert!(err(r#"{"json_body": true, "max_body_bytes": 100000000}"#)
            .starts_with("max_body_bytes: must be at most"));
        assert!(err(r#"{"max_path_bytes": 0}"#).starts_with("max_path_bytes: must be at least 1"));
        assert!(err(r#"{"min_remaining_deadline": 50}"#)
            .starts_with("min_remaining_deadline: must be a duration"));
        assert!(err(r#"{"sync_interval": "1s", "in_flight_lease": "2s"}"#)
            .starts_with("in_flight_lease: must be between 4s"));
        assert!(err(r#"{"health_checks": {"paths": ["healthz"]}}"#)
            .starts_with("health_checks.paths[0]"));
        assert!(
            err(r#"{"routes": [{"name": "default", "match": {"prefix": "/"}}]}"#)
                .starts_with("routes[0].name")
        );
        assert!(
            err(r#"{"routes": [{"match": {"prefix": "/"}, "stat_prefix": "x"}]}"#)
                .contains("filter-wide")
        );
    }

    #[test]
    fn a_bad_openapi_document_names_the_path_into_it() {
        let e = err(
            r#"{"openapi": {"openapi": "3.1.0", "paths": {"/a": {"get": {"parameters": [{"name": "n", "in": "query", "schema": {"minimum": "x"}}]}}}}}"#,
        );
        assert!(
            e.starts_with(
                r#"openapi.paths["/a"].get.parameters[0].schema.minimum: is not a valid JSON Schema"#
            ),
            "{e}"
        );
        assert!(err(r#"{"openapi": {"openapi": "2.0"}}"#)
            .starts_with("openapi.openapi: must be an OpenAPI version"));
    }

    #[test]
    fn priorities_and_deadlines_are_read_as_written() {
        let c = parse(
            br#"{"max_concurrent_requests": 10, "shed_retry_after": "1500ms",
                 "priority": {"header": "X-Priority", "shares": {"batch": 50}, "default_share": 80},
                 "min_remaining_deadline": "50ms", "deadline_header": "X-Deadline-Ms",
                 "deadline_from_observed_latency": true, "deadline_percentile": 90}"#,
        )
        .unwrap();
        let s = c.routes.defaults.shedding.as_ref().unwrap();
        assert_eq!(s.retry_after_s, 2);
        let p = s.priority.as_ref().unwrap();
        assert_eq!(p.header, "x-priority");
        assert_eq!(p.share_of(Some(b"batch")), 50.0);
        assert_eq!(p.share_of(Some(b"other")), 80.0);
        assert_eq!(p.share_of(None), 80.0);
        let d = &c.routes.defaults.deadline;
        assert_eq!(d.min_remaining_ms, Some(50));
        assert_eq!(d.header.as_deref(), Some("x-deadline-ms"));
        assert_eq!(d.observed.map(|o| o.percentile), Some(90.0));
    }

    #[test]
    fn grpc_rules_are_read_and_bad_method_names_are_refused_by_index() {
        let c = parse(
            br#"{"grpc_methods": ["/shop.Orders/Get", "/grpc.health.v1.Health/*"],
                 "require_grpc_timeout": true, "grpc_framing": true, "max_body_bytes": 4096}"#,
        )
        .unwrap();
        let g = &c.routes.defaults.head.grpc;
        assert_eq!(
            g.methods,
            Some(vec![
                MethodPattern::Exact("/shop.Orders/Get".to_owned()),
                MethodPattern::Service("/grpc.health.v1.Health/".to_owned())
            ])
        );
        assert!(g.require_timeout && g.framing);
        assert_eq!(
            parse(b"").unwrap().routes.defaults.head.grpc,
            GrpcRules::default()
        );
        assert!(err(r#"{"grpc_methods": []}"#).starts_with("grpc_methods: must list"));
        assert_eq!(
            err(r#"{"routes": [{"match": {"prefix": "/"}, "grpc_methods": ["/a.B/C", "a.B/C"]}]}"#),
            r#"routes[0].grpc_methods[1]: must be "/package.Service/Method" or "/package.Service/*", got "a.B/C""#
        );
        assert!(err(r#"{"grpc_methods": ["/a.B/*/x"]}"#).starts_with("grpc_methods[0]: must be"));
        let many: Vec<String> = (0..=MAX_GRPC_METHODS)
            .map(|i| format!("\"/a.B/M{i}\""))
            .collect();
        assert!(err(&format!(r#"{{"grpc_methods": [{}]}}"#, many.join(",")))
            .starts_with("grpc_methods: must list at most"));
        assert!(err(r#"{"grpc_framing": "yes"}"#).starts_with("grpc_framing: invalid type"));
        assert!(
            err(r#"{"require_grpc_timeout": 1}"#).starts_with("require_grpc_timeout: invalid type")
        );
    }
}
