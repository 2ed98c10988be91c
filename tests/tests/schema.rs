//! The filters' configuration JSON Schemas (`schemas/*.schema.json`), held to what the filters
//! really accept.
//!
//! Why: a schema that drifts from the parser is worse than none, because it passes configs
//! Envoy then refuses, or refuses configs that work. So:
//! - the committed files are exactly what the config types generate now (`cargo pack schema`);
//! - the top level holds the filter-wide fields and the per-route ones, a route only the latter;
//! - a config that spells out every schema default means what an empty one means;
//! - every filter configuration the project ships (Envoy bootstraps under `envoy-configs/` and
//!   `examples/`, Istio `WasmPlugin`s under `examples/istio/`) validates against its filter's
//!   schema, its filter named by the module it loads;
//! - configs with typos or wrong types are refused by both the schema and the filter's parser,
//!   and a few unusual but valid spellings are accepted by both.
//!
//! Everything here is native: no Envoy, no wasm build.

// Test code: a failed expectation should panic with its message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use resilience_core::config::ConfigError;
use resilience_core::schema::{schema_id, to_canonical_string};
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// One filter: its crate name, its schema, its parser (as a `Debug` string of the result, so
/// different filters' configs compare alike) and its filter-wide fields.
struct Filter {
    name: &'static str,
    schema: fn() -> Value,
    parse: fn(&[u8]) -> Result<String, ConfigError>,
    global_fields: &'static [&'static str],
}

macro_rules! filter {
    ($name:literal, $krate:ident) => {
        Filter {
            name: $name,
            schema: $krate::config::json_schema,
            parse: |json| $krate::config::parse(json).map(|c| format!("{c:?}")),
            global_fields: $krate::config::GLOBAL_FIELDS,
        }
    };
}

const FILTERS: &[Filter] = &[
    filter!("circuit-breaker", circuit_breaker),
    filter!("retry-budget", retry_budget),
    filter!("failure-padding", failure_padding),
    filter!("request-validator", request_validator),
    filter!("slow-start", slow_start),
];

fn filter(name: &str) -> &'static Filter {
    FILTERS
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no filter crate named {name:?}"))
}

fn root() -> PathBuf {
    harness::paths::workspace_root()
}

fn schema_path(name: &str) -> PathBuf {
    root().join("schemas").join(format!("{name}.schema.json"))
}

/// A filter's schema compiled with boon, which also checks it against the 2020-12 meta-schema.
struct Compiled {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Compiled {
    fn of(filter: &Filter) -> Self {
        let id = schema_id(filter.name);
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler
            .add_resource(&id, (filter.schema)())
            .unwrap_or_else(|e| panic!("{}: {e}", filter.name));
        let index = compiler
            .compile(&id, &mut schemas)
            .unwrap_or_else(|e| panic!("{}'s schema does not compile: {e:#}", filter.name));
        Self { schemas, index }
    }

    fn check(&self, config: &Value) -> Result<(), String> {
        self.schemas
            .validate(config, self.index)
            .map_err(|e| format!("{e:#}"))
    }
}

// ---------------------------------------------------------------------------------------------
// The schemas themselves

#[test]
fn every_committed_schema_is_what_the_config_types_generate_now() {
    let mut stale = Vec::new();
    for f in FILTERS {
        let path = schema_path(f.name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != to_canonical_string(&(f.schema)()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date, run `cargo pack schema` and commit the result: {stale:?}"
    );
}

#[test]
fn every_filter_crate_has_a_schema_and_every_schema_file_a_filter() {
    let crates: BTreeSet<String> = std::fs::read_dir(root().join("filters"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = FILTERS.iter().map(|f| f.name.to_owned()).collect();
    assert_eq!(
        crates, listed,
        "list every filter crate in FILTERS here and in xtask/src/schema.rs"
    );
    let files: BTreeSet<String> = std::fs::read_dir(root().join("schemas"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".schema.json").map(str::to_owned)
        })
        .collect();
    assert_eq!(files, listed, "schemas/ holds one file per filter");
}

#[test]
fn every_schema_names_its_dialect_and_its_filter_and_compiles() {
    for f in FILTERS {
        let schema = (f.schema)();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["$id"], Value::from(schema_id(f.name)));
        assert!(
            schema["title"].as_str().unwrap().starts_with(f.name),
            "{}",
            f.name
        );
        Compiled::of(f);
    }
}

fn property_names(schema: &Value) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_top_level_takes_filter_wide_and_per_route_fields_and_a_route_only_per_route_ones() {
    for f in FILTERS {
        let schema = (f.schema)();
        assert_eq!(schema["additionalProperties"], false, "{}", f.name);
        let route = &schema["$defs"]["Route"];
        assert_eq!(route["additionalProperties"], false, "{}", f.name);
        assert_eq!(route["required"], json!(["match"]), "{}", f.name);

        let top = property_names(&schema);
        let mut per_route = property_names(route);
        assert!(per_route.remove("match") && per_route.remove("name"));
        let global: BTreeSet<String> = f.global_fields.iter().map(|s| (*s).to_owned()).collect();
        assert!(
            global.is_disjoint(&per_route),
            "{}: {:?} are both filter-wide and per route",
            f.name,
            global.intersection(&per_route).collect::<Vec<_>>()
        );
        let mut expected: BTreeSet<String> = global.union(&per_route).cloned().collect();
        expected.insert("routes".to_owned());
        assert_eq!(
            top, expected,
            "{}: the top level must hold exactly GLOBAL_FIELDS, the per-route fields and routes",
            f.name
        );
    }
}

#[test]
fn a_configuration_spelling_out_every_schema_default_means_what_an_empty_one_means() {
    for f in FILTERS {
        // The outbound retry budget has no default for `max_retries`, on purpose.
        let minimal = if f.name == "retry-budget" {
            json!({"max_retries": 1})
        } else {
            json!({})
        };
        let schema = (f.schema)();
        let mut config = minimal.as_object().unwrap().clone();
        for (name, property) in schema["properties"].as_object().unwrap() {
            if let Some(default) = property.get("default") {
                config.insert(name.clone(), default.clone());
            }
        }
        let config = Value::Object(config);
        Compiled::of(f)
            .check(&config)
            .unwrap_or_else(|e| panic!("{}: the defaults break the schema: {e}", f.name));
        let defaults = (f.parse)(minimal.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{}: {minimal} is refused: {e}", f.name));
        let spelt_out = (f.parse)(config.to_string().as_bytes()).unwrap_or_else(|e| {
            panic!("{}: the schema defaults {config} are refused: {e}", f.name)
        });
        assert_eq!(
            spelt_out, defaults,
            "{}: a schema default differs from the parser's in {config}",
            f.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Shipped configurations

/// YAML as the JSON it denotes (mapping keys as strings).
fn yaml_to_json(yaml: &Yaml, file: &str) -> Value {
    match yaml {
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) | Yaml::Real(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => panic!("{file}: unsupported key {other:?}"),
                    };
                    (key, yaml_to_json(v, file))
                })
                .collect(),
        ),
        Yaml::Array(a) => Value::Array(a.iter().map(|v| yaml_to_json(v, file)).collect()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => Value::from(
            yaml.as_f64()
                .unwrap_or_else(|| panic!("{file}: {r} is not a number")),
        ),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("{file}: unsupported YAML node {yaml:?}"),
    }
}

/// One filter configuration found in a shipped file.
struct Found {
    /// File and position, for messages.
    at: String,
    filter: String,
    config: Value,
}

/// The filter crate whose module a `.wasm` file name or root id names: `circuit_breaker.wasm`,
/// `circuit_breaker`.
fn filter_of_module(module: &str) -> Option<String> {
    let stem = Path::new(module).file_stem()?.to_str()?;
    let name = stem.replace('_', "-");
    FILTERS.iter().any(|f| f.name == name).then_some(name)
}

/// Whether a module file name or URL is the pack module (`resilience_pack.wasm`, `…/pack:0.1.0`).
fn is_pack_module(module: &str) -> bool {
    let last = module.rsplit('/').next().unwrap_or("");
    let name = last.split(':').next().unwrap_or("");
    matches!(name, "resilience_pack.wasm" | "resilience_pack" | "pack")
}

/// A pack module's configuration: one `Found` per member, each checked against its filter's
/// schema (a member is exactly that filter's configuration).
fn pack_members(at: &str, config: &Value, out: &mut Vec<Found>) {
    let members = config
        .as_object()
        .unwrap_or_else(|| panic!("{at}: the pack's configuration is not an object"));
    for (member, value) in members {
        let filter = filter_of_module(member)
            .unwrap_or_else(|| panic!("{at}: pack member {member:?} names no filter"));
        out.push(Found {
            at: format!("{at}, member {member}"),
            filter,
            config: value.clone(),
        });
    }
}

/// Every Wasm plugin config (an object with `vm_config`) in an Envoy bootstrap, wherever it
/// sits (HTTP filters, typed per-filter configs, ...).
fn envoy_plugin_configs(node: &Yaml, file: &str, out: &mut Vec<Found>) {
    match node {
        Yaml::Hash(h) => {
            if !node["vm_config"].is_badvalue() {
                let at = format!(
                    "{file}: plugin {:?}",
                    node["name"].as_str().unwrap_or("(unnamed)")
                );
                let module = node["vm_config"]["code"]["local"]["filename"].as_str();
                let root_id = node["root_id"].as_str();
                let pack = module.is_some_and(is_pack_module);
                let filter = if pack {
                    String::new()
                } else {
                    module
                    .and_then(filter_of_module)
                    .or_else(|| root_id.and_then(filter_of_module))
                    .unwrap_or_else(|| {
                        panic!("{at}: neither its module {module:?} nor its root_id {root_id:?} names a filter")
                    })
                };
                let configuration = &node["configuration"];
                let config = if configuration.is_badvalue() {
                    json!({})
                } else {
                    assert_eq!(
                        configuration["@type"].as_str(),
                        Some("type.googleapis.com/google.protobuf.StringValue"),
                        "{at}: the configuration is a StringValue holding the filter's JSON"
                    );
                    let text = configuration["value"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{at}: configuration.value is not a string"));
                    serde_json::from_str(text)
                        .unwrap_or_else(|e| panic!("{at}: configuration.value is not JSON: {e}"))
                };
                if pack {
                    pack_members(&at, &config, out);
                } else {
                    out.push(Found { at, filter, config });
                }
            }
            for (_, v) in h {
                envoy_plugin_configs(v, file, out);
            }
        }
        Yaml::Array(a) => a.iter().for_each(|v| envoy_plugin_configs(v, file, out)),
        _ => {}
    }
}

/// The filter an Istio `WasmPlugin` loads, from its `spec.url`: the last path segment without
/// a tag or `.wasm` (`oci://.../circuit-breaker:0.1.0`, `https://.../circuit_breaker.wasm`).
fn filter_of_url(url: &str) -> Option<String> {
    let last = url.rsplit('/').next()?;
    let name = last.split(':').next()?;
    filter_of_module(name)
}

fn yaml_files(folder: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// Every filter configuration in `envoy-configs/` and `examples/`.
fn shipped_configs() -> Vec<Found> {
    let mut files = Vec::new();
    yaml_files(&root().join("envoy-configs"), &mut files);
    yaml_files(&root().join("examples"), &mut files);
    files.sort();
    let mut found = Vec::new();
    for path in files {
        let file = path.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
        for doc in &docs {
            if doc["kind"].as_str() == Some("WasmPlugin") {
                let at = format!(
                    "{file}: WasmPlugin {:?}",
                    doc["metadata"]["name"].as_str().unwrap_or("(unnamed)")
                );
                let url = doc["spec"]["url"].as_str().unwrap_or("");
                let config = match &doc["spec"]["pluginConfig"] {
                    Yaml::BadValue => json!({}),
                    c => yaml_to_json(c, &file),
                };
                if is_pack_module(url) {
                    pack_members(&at, &config, &mut found);
                    continue;
                }
                let filter = filter_of_url(url)
                    .unwrap_or_else(|| panic!("{at}: its url {url:?} names no filter"));
                found.push(Found { at, filter, config });
            } else {
                envoy_plugin_configs(doc, &file, &mut found);
            }
        }
    }
    found
}

#[test]
fn every_shipped_filter_configuration_validates_against_its_filters_schema() {
    let compiled: Vec<(&str, Compiled)> =
        FILTERS.iter().map(|f| (f.name, Compiled::of(f))).collect();
    let found = shipped_configs();
    let mut failures = Vec::new();
    for Found { at, filter, config } in &found {
        let schema = &compiled.iter().find(|(n, _)| n == filter).unwrap().1;
        if let Err(e) = schema.check(config) {
            failures.push(format!("{at} ({filter}): {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    let covered: BTreeSet<&str> = found.iter().map(|f| f.filter.as_str()).collect();
    let every: BTreeSet<&str> = FILTERS.iter().map(|f| f.name).collect();
    assert_eq!(
        covered, every,
        "every filter ships at least one configuration"
    );
    for expected in [
        "envoy-configs/pack.yaml",
        "examples/istio/",
        "examples/docker-compose/",
    ] {
        assert!(
            found.iter().any(|f| f.at.starts_with(expected)),
            "no configuration found under {expected}: is the search still finding them?"
        );
    }
    println!(
        "validated {} filter configurations:\n{}",
        found.len(),
        found
            .iter()
            .map(|f| format!("  {} ({})", f.at, f.filter))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Schema and parser agree

/// Configurations that both the schema and the filter must refuse, with what is wrong.
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "circuit-breaker",
        r#"{"failure_rate": 10}"#,
        "an unknown top-level field",
    ),
    (
        "circuit-breaker",
        r#"{"routes": [{"match": {"prefix": "/"}, "open_duraton": "5s"}]}"#,
        "a typo in a route's field",
    ),
    (
        "circuit-breaker",
        r#"{"routes": [{"match": {"prefx": "/"}}]}"#,
        "a typo in a route's match",
    ),
    (
        "circuit-breaker",
        r#"{"routes": [{"match": {"headers": [{"name": "x-a", "valu": "1"}]}}]}"#,
        "a typo in a header match",
    ),
    (
        "circuit-breaker",
        r#"{"routes": [{"match": {}}]}"#,
        "a match with no criterion",
    ),
    (
        "circuit-breaker",
        r#"{"routes": [{"name": "a"}]}"#,
        "a route without a match",
    ),
    (
        "circuit-breaker",
        r#"{"routes": [{"match": {"prefix": "/"}, "max_keys": 5}]}"#,
        "a filter-wide field in a route",
    ),
    (
        "circuit-breaker",
        r#"{"routes": [{"match": {"prefix": "/"}, "name": ""}]}"#,
        "an empty route name",
    ),
    (
        "circuit-breaker",
        r#"{"routes": {}}"#,
        "routes that are not a list",
    ),
    (
        "circuit-breaker",
        r#"{"window": 10}"#,
        "a bare number for a duration",
    ),
    (
        "circuit-breaker",
        r#"{"window": "10 s"}"#,
        "a duration with a space",
    ),
    (
        "circuit-breaker",
        r#"{"open_duration": "1us"}"#,
        "an unknown unit",
    ),
    (
        "circuit-breaker",
        r#"{"failure_rate_threshold": "50%"}"#,
        "a string for a percentage",
    ),
    (
        "circuit-breaker",
        r#"{"open_jitter_percent": 150}"#,
        "a percentage above 100",
    ),
    (
        "circuit-breaker",
        r#"{"mode": "sometimes"}"#,
        "an unknown mode",
    ),
    (
        "circuit-breaker",
        r#"{"failure_statuses": ["6xx"]}"#,
        "a status class above 5xx",
    ),
    (
        "circuit-breaker",
        r#"{"failure_statuses": [99]}"#,
        "a status below 100",
    ),
    (
        "circuit-breaker",
        r#"{"failure_statuses": "5xx"}"#,
        "statuses that are not a list",
    ),
    (
        "circuit-breaker",
        r#"{"grpc_failure_codes": ["UNAVAILABL"]}"#,
        "a misspelt gRPC status",
    ),
    (
        "circuit-breaker",
        r#"{"grpc_failure_codes": [17]}"#,
        "a gRPC code above 16",
    ),
    (
        "circuit-breaker",
        r#"{"local_failures": ["refused"]}"#,
        "an unknown local failure",
    ),
    (
        "circuit-breaker",
        r#"{"rejection": {"statu": 500}}"#,
        "a typo in the rejection",
    ),
    ("circuit-breaker", r#"{"max_keys": -1}"#, "a negative count"),
    (
        "circuit-breaker",
        r#"{"force_open": "yes"}"#,
        "a string for a boolean",
    ),
    (
        "retry-budget",
        r#"{"max_retries": 2, "mode": "outbound_dryrun"}"#,
        "a misspelt mode",
    ),
    (
        "retry-budget",
        r#"{"max_retries": 2, "retry_on": "5xx,gateway_error"}"#,
        "an unknown retry condition",
    ),
    (
        "retry-budget",
        r#"{"max_retries": 2, "routes": [{"match": {"route_name": "a"}, "budget_percnt": 5}]}"#,
        "a typo in a route's field",
    ),
    (
        "retry-budget",
        r#"{"max_retries": 2, "attempt_count_headers": "x-envoy-attempt-count"}"#,
        "a header list that is not a list",
    ),
    (
        "failure-padding",
        r#"{"health_checks": [{"exactt": "/healthz"}]}"#,
        "a typo in a health-check match",
    ),
    (
        "failure-padding",
        r#"{"factor": "2"}"#,
        "a string for a number",
    ),
    (
        "failure-padding",
        r#"{"max_padded_in_flight": 10.5}"#,
        "a fraction for a count",
    ),
    (
        "request-validator",
        r#"{"required_headers": [{"name": "x-a", "requird": true}]}"#,
        "a typo in a header rule",
    ),
    (
        "request-validator",
        r#"{"json_schema": "an object"}"#,
        "a string for a JSON Schema",
    ),
    (
        "request-validator",
        r#"{"json_schema_draft": "8"}"#,
        "an unknown draft",
    ),
    (
        "request-validator",
        r#"{"health_checks": {"path": ["/healthz"]}}"#,
        "a typo in the health checks",
    ),
    (
        "request-validator",
        r#"{"max_concurrent_requests": 10, "priority": {"header": "x-p", "shares": {"batch": 150}}}"#,
        "a share above 100",
    ),
    (
        "request-validator",
        r#"{"openapi_unknown_operations": "allow"}"#,
        "an unknown choice",
    ),
    (
        "slow-start",
        r#"{"endpoints": [{"address": "10.0.0.1:80", "wieght": 2}]}"#,
        "a typo in an endpoint",
    ),
    (
        "slow-start",
        r#"{"closed_loop": {"window": 5}}"#,
        "a bare number for a nested duration",
    ),
    (
        "slow-start",
        r#"{"balancer": "round_robin"}"#,
        "an unknown balancer",
    ),
    (
        "slow-start",
        r#"{"routes": [{"match": {"prefix": "/"}, "endpoints": []}]}"#,
        "a filter-wide field in a route",
    ),
    (
        "slow-start",
        r#"{"warmup_requests": [{"path": "/", "metod": "POST"}]}"#,
        "a typo in a warm-up request",
    ),
    (
        "slow-start",
        r#"{"gate_timeout": 30}"#,
        "a bare number for a nullable duration",
    ),
];

#[test]
fn typos_and_wrong_types_are_refused_by_both_the_schema_and_the_filter() {
    let mut disagreements = Vec::new();
    for (name, config, what) in REFUSED {
        let f = filter(name);
        let value: Value = serde_json::from_str(config).unwrap();
        let by_schema = Compiled::of(f).check(&value).is_err();
        let by_parser = (f.parse)(config.as_bytes()).is_err();
        if !(by_schema && by_parser) {
            disagreements.push(format!(
                "{name} {config} ({what}): refused by the schema: {by_schema}, by the filter: {by_parser}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn more_routes_than_a_filter_takes_are_refused_by_both() {
    let routes: Vec<Value> = (0..=resilience_core::routes::MAX_ROUTES)
        .map(|i| json!({"name": format!("r{i}"), "match": {"prefix": format!("/{i}")}}))
        .collect();
    let config = json!({ "routes": routes });
    let f = filter("circuit-breaker");
    assert!(Compiled::of(f).check(&config).is_err());
    assert!((f.parse)(config.to_string().as_bytes()).is_err());
}

/// Unusual spellings the parser takes, which the schema must not refuse.
const ACCEPTED: &[(&str, &str)] = &[
    ("circuit-breaker", ""),
    ("circuit-breaker", r#"{"routes": null}"#),
    (
        "circuit-breaker",
        r#"{"routes": [{"name": null, "match": {"method": "get", "exact": "/a"}, "open_duration": "0.25m"}]}"#,
    ),
    (
        "circuit-breaker",
        r#"{"failure_statuses": [503, "504", "5XX", "500-502"], "grpc_failure_codes": ["unavailable", 4], "local_failures": []}"#,
    ),
    (
        "circuit-breaker",
        r#"{"failure_rate_threshold": null, "consecutive_failures": 5, "window": "1.5s", "open_jitter_percent": 12.5}"#,
    ),
    (
        "circuit-breaker",
        r#"{"rejection": {"status": 429, "headers": {"x-why": "busy"}, "body": "busy", "content_type": "text/plain"}}"#,
    ),
    (
        "retry-budget",
        r#"{"max_retries": 2, "retry_on": "5xx, reset ,connect-failure"}"#,
    ),
    ("retry-budget", r#"{"mode": "inbound", "retry_on": null}"#),
    (
        "failure-padding",
        r#"{"health_checks": [{"headers": [{"name": "User-Agent", "present": true}]}]}"#,
    ),
    (
        "request-validator",
        r#"{"json_schema": true, "json_schema_draft": "draft-07", "openapi": null}"#,
    ),
    (
        "request-validator",
        r#"{"query_params": [{"name": "limit", "integer": {"min": -5}}]}"#,
    ),
    (
        "slow-start",
        r#"{"gate_timeout": null, "silence_timeout": "2m"}"#,
    ),
    (
        "slow-start",
        r#"{"endpoints": [{"address": "[::1]:8080"}], "closed_loop": {"latency_factor": null}}"#,
    ),
];

#[test]
fn unusual_but_valid_spellings_are_accepted_by_both_the_schema_and_the_filter() {
    let mut disagreements = Vec::new();
    for (name, config) in ACCEPTED {
        let f = filter(name);
        let value: Value = if config.is_empty() {
            json!({})
        } else {
            serde_json::from_str(config).unwrap()
        };
        let by_schema = Compiled::of(f).check(&value);
        let by_parser = (f.parse)(config.as_bytes());
        if by_schema.is_err() || by_parser.is_err() {
            disagreements.push(format!(
                "{name} {config}: schema: {:?}, filter: {:?}",
                by_schema.err(),
                by_parser.err().map(|e| e.to_string())
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
