//! The examples users copy, proven against the real filters in the real Envoy.
//!
//! Every Envoy bootstrap under `envoy-configs/` and `examples/` must pass `envoy --mode validate`,
//! which loads the modules and runs each filter's configuration check. Each of their Wasm filters
//! must also say what a failed VM does (`failure_policy`), and a validator that checks bodies
//! must hold the headers too, or the service sees the headers of requests it never gets whole.
//!
//! Every Istio `WasmPlugin` under `examples/istio/` must load. Its `pluginConfig` is handed to its
//! filter the way Istio hands it over:
//! - as JSON, converted as istiod converts it (through a protobuf `Struct`, so every number is a
//!   double, and an integral one prints without a fraction);
//! - under the plugin name Istio gives it (`<namespace>.<name>`);
//! - behind routes named as the manifest's `route_name` matches expect;
//! - with clusters named as its cluster fields name them (`inbound|8080||` and the like).
//!
//! The Envoy must then be ready and log no refused configuration and no VM failure. A request for
//! each `routes` entry must get a normal answer: the upstream's 200, or the filter's own decision,
//! marked with its decision header. Each entry must be counted under its own key. Another test
//! shows that the check has teeth: a field the filter does not know keeps Envoy from starting.
//!
//! A manifest is mapped to its filter by its file name (`retry-budget.yaml` holds the plugins of
//! `filters/retry-budget`). Every filter needs one, and every manifest must name a filter.

// Test code: a failed expectation should panic with its message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use harness::config::{wasm_filter_yaml, ClusterSpec, ProxyConfig, RouteSpec};
use harness::{filter_wasm, free_port, request, Envoy, EnvoyOptions, Upstream};
use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

const WASM_PLUGIN_API: &str = "extensions.istio.io/v1alpha1";

// ---------------------------------------------------------------------------------------------
// Envoy bootstraps

/// Every Envoy bootstrap under `envoy-configs/` and `examples/`, sorted: its path relative to the
/// repository and its text. Kubernetes manifests and compose files are left out.
fn shipped_envoy_bootstraps() -> Vec<(String, String)> {
    let root = harness::paths::workspace_root();
    let mut files = Vec::new();
    let mut folders = vec![root.join("envoy-configs"), root.join("examples")];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for path in files {
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains("static_resources") {
            continue; // not an Envoy bootstrap (a Kubernetes manifest, a compose file)
        }
        out.push((
            path.strip_prefix(&root).unwrap().display().to_string(),
            text,
        ));
    }
    out
}

#[test]
fn every_shipped_envoy_config_validates() {
    let dir = harness::wasm::modules_dir().unwrap().display().to_string();
    let mut checked = Vec::new();
    for (path, text) in shipped_envoy_bootstraps() {
        // Module paths as the configs write them: relative to the repository root, or where the
        // compose file mounts the build. Validation resolves no DNS names, so the compose
        // service names need not exist here.
        let text = text
            .replace("target/wasm32-wasip1/release", &dir)
            .replace("/etc/envoy/wasm", &dir);
        harness::envoy::validate(&text)
            .unwrap_or_else(|e| panic!("{path} does not validate:\n{e}"));
        checked.push(path);
    }
    println!("validated: {}", checked.join(", "));
    for expected in [
        "envoy-configs/pack.yaml",
        "examples/docker-compose/envoy.yaml",
        "examples/docker-compose/envoy-pack.yaml",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} was not validated: {checked:?}"
        );
    }
}

const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Every `typed_config` of an HTTP Wasm filter under `node`, in document order.
fn wasm_filters<'a>(node: &'a Yaml, out: &mut Vec<&'a Yaml>) {
    match node {
        Yaml::Hash(h) => {
            if node["@type"].as_str() == Some(WASM_FILTER_TYPE) {
                out.push(node);
            }
            for v in h.values() {
                wasm_filters(v, out);
            }
        }
        Yaml::Array(a) => {
            for v in a {
                wasm_filters(v, out);
            }
        }
        _ => {}
    }
}

/// Whether a validator configuration (its top level or any `routes` entry) may read bodies.
fn validator_checks_bodies(config: &Value) -> bool {
    let reads_bodies = |c: &Value| {
        c.get("json_body") == Some(&Value::Bool(true))
            || c.get("json_schema").is_some()
            || c.get("openapi").is_some()
    };
    reads_bodies(config)
        || config
            .get("routes")
            .and_then(Value::as_array)
            .is_some_and(|routes| routes.iter().any(reads_bodies))
}

/// What is unsafe about the Wasm filters of one Envoy bootstrap: each must say what a failed VM
/// does (`failure_policy`, not the older `fail_open`), and a validator that checks bodies must
/// hold the headers too (`hold_headers_for_body_checks` and Envoy's
/// `allow_on_headers_stop_iteration`), or the service sees the headers of a request whose body
/// is refused. Returns one line per problem and the number of Wasm filters seen.
fn wasm_filter_problems(file: &str, text: &str) -> (Vec<String>, usize) {
    let docs =
        YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
    let mut filters = Vec::new();
    for doc in &docs {
        wasm_filters(doc, &mut filters);
    }
    let mut problems = Vec::new();
    for filter in &filters {
        let config = &filter["config"];
        let what = format!(
            "{file}: wasm filter {}",
            config["name"].as_str().unwrap_or("?")
        );
        if !matches!(
            config["failure_policy"].as_str(),
            Some("FAIL_OPEN" | "FAIL_CLOSED" | "FAIL_RELOAD")
        ) {
            problems.push(format!(
                "{what}: set failure_policy (FAIL_OPEN, FAIL_CLOSED or FAIL_RELOAD) explicitly"
            ));
        }
        if !config["fail_open"].is_badvalue() {
            problems.push(format!(
                "{what}: fail_open is the older bool; use failure_policy only"
            ));
        }
        let module = yaml_str(config, &["vm_config", "code", "local", "filename"]).unwrap_or("");
        let json = yaml_str(config, &["configuration", "value"]).unwrap_or("{}");
        let settings: Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("{what}: configuration is not JSON: {e}"));
        // The validator alone, or the pack module's `request_validator` member.
        let settings = if module.ends_with("request_validator.wasm") {
            settings
        } else if module.ends_with("resilience_pack.wasm") {
            match settings.get("request_validator") {
                Some(member) => member.clone(),
                None => continue,
            }
        } else {
            continue;
        };
        let checks_bodies = validator_checks_bodies(&settings);
        let holds = settings.get("hold_headers_for_body_checks") == Some(&Value::Bool(true));
        if checks_bodies && !holds {
            problems.push(format!(
                "{what}: checks bodies, so set \"hold_headers_for_body_checks\": true"
            ));
        }
        if (checks_bodies || holds)
            && config["allow_on_headers_stop_iteration"].as_bool() != Some(true)
        {
            problems.push(format!(
                "{what}: holding headers needs allow_on_headers_stop_iteration: true in config"
            ));
        }
    }
    (problems, filters.len())
}

#[test]
fn every_shipped_wasm_filter_says_what_a_failed_vm_does_and_validators_hold_checked_bodies_whole() {
    let mut problems = Vec::new();
    let mut filters = 0;
    let mut validators_checking_bodies = 0;
    for (path, text) in shipped_envoy_bootstraps() {
        let (p, seen) = wasm_filter_problems(&path, &text);
        problems.extend(p);
        filters += seen;
        assert_eq!(
            seen > 0,
            text.contains(WASM_FILTER_TYPE),
            "{path}: every Wasm filter was found"
        );
        validators_checking_bodies += text
            .matches("\"hold_headers_for_body_checks\": true")
            .count();
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(filters >= 15, "only {filters} wasm filters found");
    assert!(
        validators_checking_bodies >= 4,
        "request-validator(-openapi).yaml, pack.yaml and docker-compose/envoy-pack.yaml hold"
    );
    println!("{filters} wasm filters, {validators_checking_bodies} validators holding bodies");

    // A WasmPlugin cannot set Envoy's allow_on_headers_stop_iteration: holding there would only
    // make each checked request wait for the filter's fallback.
    for plugin in istio_plugins()
        .iter()
        .filter(|p| p.filter == "request-validator")
    {
        assert_ne!(
            plugin.config.get("hold_headers_for_body_checks"),
            Some(&Value::Bool(true)),
            "{}: {} cannot hold headers under Istio",
            plugin.file,
            plugin.name
        );
    }
}

#[test]
fn the_failure_policy_check_refuses_a_missing_policy_and_a_validator_that_forwards_checked_headers()
{
    let config = r#"
static_resources:
  listeners:
    - filter_chains:
        - filters:
            - typed_config:
                http_filters:
                  - typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: breaker
                        fail_open: true
                  - typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: validator
                        failure_policy: FAIL_OPEN
                        vm_config: { code: { local: { filename: x/request_validator.wasm } } }
                        configuration:
                          value: '{"routes": [{"name": "a", "json_schema": true}]}'
"#;
    let (problems, seen) = wasm_filter_problems("inline", config);
    assert_eq!(seen, 2);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems[0].contains("breaker: set failure_policy"),
        "{problems:#?}"
    );
    assert!(problems[1].contains("breaker: fail_open"), "{problems:#?}");
    assert!(
        problems[2].contains("hold_headers_for_body_checks"),
        "{problems:#?}"
    );
    assert!(
        problems[3].contains("allow_on_headers_stop_iteration"),
        "{problems:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Istio manifests

/// One `WasmPlugin` document of a manifest.
struct Plugin {
    /// The manifest's file, for messages.
    file: String,
    /// The filter crate under `filters/`, from the manifest's file name.
    filter: String,
    /// `metadata.name`.
    name: String,
    /// The plugin name Istio gives Envoy: `<namespace>.<name>`.
    envoy_name: String,
    /// `spec.match[].mode`.
    modes: Vec<String>,
    /// `spec.pluginConfig` as istiod hands it to Envoy; for a pack plugin, this member's part.
    config: Value,
    /// For `pack.yaml` (the pack module): the member of `pluginConfig` this is, one `Plugin` per
    /// member, each proven through the pack module with only that member on.
    member: Option<String>,
}

impl Plugin {
    fn stat_prefix(&self) -> String {
        self.config
            .get("stat_prefix")
            .and_then(Value::as_str)
            .map_or_else(|| self.filter.replace('-', "_"), str::to_owned)
    }

    fn decision_header(&self) -> String {
        format!("x-resilience-{}", self.filter)
    }

    fn routes(&self) -> Vec<&Value> {
        self.config
            .get("routes")
            .and_then(Value::as_array)
            .map(|r| r.iter().collect())
            .unwrap_or_default()
    }

    /// Envoy route names the `routes` entries match on.
    fn route_names(&self) -> BTreeSet<String> {
        self.routes()
            .iter()
            .filter_map(|r| r.pointer("/match/route_name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// Envoy cluster names the configuration sends requests through.
    fn cluster_names(&self) -> BTreeSet<String> {
        ["/dispatch_cluster", "/discovery/cluster"]
            .iter()
            .filter_map(|p| self.config.pointer(p).and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// Exact paths the configuration treats as health checks (the validator's and slow start's
    /// `health_checks.paths`, the padding filter's `health_checks[].exact`).
    fn health_check_paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        match self.config.get("health_checks") {
            Some(Value::Object(h)) => {
                for p in h
                    .get("paths")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    paths.extend(p.as_str().map(str::to_owned));
                }
            }
            Some(Value::Array(list)) => {
                for m in list {
                    paths.extend(m.get("exact").and_then(Value::as_str).map(str::to_owned));
                }
            }
            _ => {}
        }
        paths
    }
}

fn root() -> PathBuf {
    harness::paths::workspace_root()
}

/// The filter crates: every folder under `filters/` with a `Cargo.toml`.
fn filter_crates() -> BTreeSet<String> {
    std::fs::read_dir(root().join("filters"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The manifest of the pack module (`examples/istio/pack.yaml`): its `pluginConfig` has one
/// member per filter, as the pack module's configuration does.
const PACK_MANIFEST: &str = "pack";

/// `examples/istio/*.yaml`, sorted.
fn istio_manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples/istio"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

fn yaml_str<'a>(doc: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    path.iter().fold(doc, |d, k| &d[*k]).as_str()
}

/// A number as istiod writes it: a protobuf `Struct` holds every number as a double, and the
/// JSON encoder prints an integral double without a fraction (`20`, not `20.0`).
fn istio_number(x: f64, file: &str) -> Value {
    assert!(x.is_finite(), "{file}: {x} has no JSON form");
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// `pluginConfig` as the JSON istiod hands to Envoy. Kubernetes stores the manifest as JSON (keys
/// become strings); istiod reads `pluginConfig` into a protobuf `Struct` and writes it out as the
/// filter's configuration string.
fn istio_json(yaml: &Yaml, file: &str) -> Value {
    match yaml {
        Yaml::Hash(h) => {
            let mut map = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("{file}: unsupported key {other:?}"),
                };
                map.insert(key, istio_json(v, file));
            }
            Value::Object(map)
        }
        Yaml::Array(a) => Value::Array(a.iter().map(|v| istio_json(v, file)).collect()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => istio_number(*i as f64, file),
        Yaml::Real(r) => istio_number(
            yaml.as_f64()
                .unwrap_or_else(|| panic!("{file}: {r} is not a number")),
            file,
        ),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("{file}: unsupported YAML node {yaml:?}"),
    }
}

/// Every `WasmPlugin` of every manifest, after checking what the README promises of each: the
/// API, a module URL, a workload, an explicit `failStrategy`, a `phase`, a traffic `mode`, and a
/// `pluginConfig` with per-route entries.
fn istio_plugins() -> Vec<Plugin> {
    let mut plugins = Vec::new();
    for path in istio_manifests() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let filter = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
        let mut found = 0;
        for doc in &docs {
            if yaml_str(doc, &["kind"]) != Some("WasmPlugin") {
                continue;
            }
            found += 1;
            let name = yaml_str(doc, &["metadata", "name"])
                .unwrap_or_else(|| panic!("{file}: a WasmPlugin without metadata.name"))
                .to_owned();
            let what = format!("{file}: WasmPlugin {name}");
            assert_eq!(
                yaml_str(doc, &["apiVersion"]),
                Some(WASM_PLUGIN_API),
                "{what}"
            );
            let namespace = yaml_str(doc, &["metadata", "namespace"])
                .unwrap_or_else(|| panic!("{what}: no metadata.namespace"));
            let spec = &doc["spec"];
            assert!(
                spec["url"].as_str().is_some_and(|u| !u.is_empty()),
                "{what}: no spec.url"
            );
            assert!(
                !spec["selector"].is_badvalue() || !spec["targetRefs"].is_badvalue(),
                "{what}: no spec.selector or spec.targetRefs: it would apply to every workload"
            );
            assert!(
                matches!(
                    spec["failStrategy"].as_str(),
                    Some("FAIL_OPEN" | "FAIL_CLOSE" | "FAIL_RELOAD")
                ),
                "{what}: set spec.failStrategy explicitly"
            );
            assert!(
                matches!(spec["phase"].as_str(), Some("AUTHN" | "AUTHZ" | "STATS")),
                "{what}: set spec.phase"
            );
            let modes: Vec<String> = spec["match"]
                .as_vec()
                .into_iter()
                .flatten()
                .filter_map(|m| m["mode"].as_str().map(str::to_owned))
                .collect();
            assert!(
                !modes.is_empty()
                    && modes
                        .iter()
                        .all(|m| matches!(m.as_str(), "CLIENT" | "SERVER" | "CLIENT_AND_SERVER")),
                "{what}: say where it runs with spec.match[].mode, got {modes:?}"
            );
            assert!(
                spec["pluginConfig"].as_hash().is_some(),
                "{what}: no spec.pluginConfig"
            );
            let config = istio_json(&spec["pluginConfig"], &file);
            // The pack module's manifest: one Plugin per member, named by its filter.
            let parts: Vec<(String, Option<String>, Value)> = if filter == PACK_MANIFEST {
                config
                    .as_object()
                    .unwrap_or_else(|| panic!("{what}: pluginConfig is not an object"))
                    .iter()
                    .map(|(m, c)| (m.replace('_', "-"), Some(m.clone()), c.clone()))
                    .collect()
            } else {
                vec![(filter.clone(), None, config)]
            };
            assert!(!parts.is_empty(), "{what}: no pack member");
            for (filter, member, config) in parts {
                let plugin = Plugin {
                    file: file.clone(),
                    filter,
                    envoy_name: format!("{namespace}.{name}"),
                    name: name.clone(),
                    modes: modes.clone(),
                    config,
                    member,
                };
                assert!(
                    !plugin.routes().is_empty(),
                    "{what}: show per-route tuning with pluginConfig.routes"
                );
                plugins.push(plugin);
            }
        }
        assert!(found > 0, "{file} holds no WasmPlugin");
        check_inbound_clusters_exist(&file, &docs, &plugins);
    }
    plugins
}

/// Istio's inbound cluster for a port is ORIGINAL_DST unless a `Sidecar` gives the port a
/// `defaultEndpoint`; a request the sidecar sends itself (slow start's priming) has no original
/// destination and fails. A manifest that sends through `inbound|<port>||` must carry that
/// `Sidecar`.
fn check_inbound_clusters_exist(file: &str, docs: &[Yaml], plugins: &[Plugin]) {
    let sidecar_ports: BTreeSet<i64> = docs
        .iter()
        .filter(|d| yaml_str(d, &["kind"]) == Some("Sidecar"))
        .flat_map(|d| d["spec"]["ingress"].as_vec().cloned().unwrap_or_default())
        .filter(|i| i["defaultEndpoint"].as_str().is_some())
        .filter_map(|i| i["port"]["number"].as_i64())
        .collect();
    for plugin in plugins.iter().filter(|p| p.file == file) {
        for cluster in plugin.cluster_names() {
            let Some(port) = cluster
                .strip_prefix("inbound|")
                .and_then(|rest| rest.split('|').next())
            else {
                continue;
            };
            let port: i64 = port
                .parse()
                .unwrap_or_else(|_| panic!("{file}: {cluster} is not an inbound cluster name"));
            assert!(
                sidecar_ports.contains(&port),
                "{file}: {} sends through {cluster}, but no Sidecar in the file gives port {port} \
                 a defaultEndpoint (without one that cluster cannot carry the filter's own requests)",
                plugin.name
            );
        }
    }
}

#[test]
fn every_filter_has_an_istio_manifest_and_every_manifest_names_a_filter() {
    let filters = filter_crates();
    assert!(filters.len() >= 5, "filters: {filters:?}");
    let manifests: BTreeSet<String> = istio_manifests()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let missing: Vec<&String> = filters.difference(&manifests).collect();
    assert!(
        missing.is_empty(),
        "no examples/istio/<filter>.yaml for {missing:?}"
    );
    let mut filters_and_pack = filters.clone();
    filters_and_pack.insert(PACK_MANIFEST.to_owned());
    let unknown: Vec<&String> = manifests.difference(&filters_and_pack).collect();
    assert!(
        unknown.is_empty(),
        "examples/istio/ manifests {unknown:?} name no filter under filters/ (the file name is the \
         filter's folder name)"
    );

    let plugins = istio_plugins();
    // Filters namespace their shared data and keys by plugin name: one name per instance.
    let mut names = BTreeSet::new();
    for p in &plugins {
        // The members of one pack plugin share its name, as they share its root.
        let first_member = p.member.as_ref().is_none_or(|m| {
            plugins
                .iter()
                .find(|q| q.envoy_name == p.envoy_name)
                .and_then(|q| q.member.as_ref())
                == Some(m)
        });
        assert!(
            !first_member || names.insert(p.envoy_name.clone()),
            "{}: plugin name {} is used twice",
            p.file,
            p.envoy_name
        );
        // Istio names every inbound (SERVER) route "default": a route_name match there selects
        // nothing (or, for "default", everything).
        if p.modes.iter().all(|m| m == "SERVER") {
            let names = p.route_names();
            assert!(
                names.iter().all(|n| n == "default"),
                "{}: {} runs inbound, where Istio names every route \"default\"; match {names:?} \
                 on the path instead",
                p.file,
                p.name
            );
        }
    }
    println!(
        "plugins: {}",
        plugins
            .iter()
            .map(|p| format!("{} ({})", p.envoy_name, p.filter))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A bootstrap with `plugin` (configured with `config_json`) in front of `upstream`: a route for
/// each `route_name` the plugin matches, then `default` for everything else (Istio's name for
/// the inbound route and for outbound routes without a VirtualService), and a cluster to the
/// upstream for each cluster the configuration names.
fn istio_like_bootstrap(plugin: &Plugin, config_json: &str, upstream: &Upstream) -> String {
    let (wasm, config_json) = match &plugin.member {
        None => (filter_wasm(&plugin.filter).unwrap(), config_json.to_owned()),
        Some(member) => (
            filter_wasm("resilience-pack").unwrap(),
            format!("{{\"{member}\": {config_json}}}"),
        ),
    };
    let config_json = config_json.as_str();
    // Istio sets neither a root_id (unless `pluginName` is given) nor a vm_id: YAML's ''.
    let filter = wasm_filter_yaml(&plugin.envoy_name, "''", "''", &wasm, config_json);
    let mut config = ProxyConfig::new(free_port(), free_port()).with_http_filters(&filter);
    for name in plugin.route_names() {
        if name != "default" {
            config = config.route(
                RouteSpec::new(&name, &format!("/{name}"), "upstream")
                    .with_timeout(Duration::from_secs(5)),
            );
        }
    }
    config = config
        .route(RouteSpec::new("default", "/", "upstream").with_timeout(Duration::from_secs(5)))
        .cluster(ClusterSpec::new("upstream", &[upstream.port()]));
    for cluster in plugin.cluster_names() {
        config = config.cluster(ClusterSpec::new(&cluster, &[upstream.port()]));
    }
    config.render()
}

/// A request a probe sends: method, path and headers.
struct Probe {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

/// A request that a `routes` entry's `match` selects.
fn request_for(entry: &Value) -> Probe {
    let m = &entry["match"];
    let path = m["exact"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| m["prefix"].as_str().map(str::to_owned))
        .or_else(|| m["route_name"].as_str().map(|n| format!("/{n}")))
        .unwrap_or_else(|| "/".to_owned());
    let method = m["method"].as_str().unwrap_or("GET").to_ascii_uppercase();
    let headers = m["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["present"].as_bool() != Some(false))
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_owned(),
                h["value"].as_str().unwrap_or("1").to_owned(),
            )
        })
        .collect();
    Probe {
        method,
        path,
        headers,
    }
}

/// Starts `plugin` as Istio would load it and proves its configuration is live.
fn prove_plugin_loads_and_answers(plugin: &Plugin) {
    let what = format!("{} ({})", plugin.envoy_name, plugin.file);
    let json = serde_json::to_string(&plugin.config).unwrap();
    let upstream = Upstream::start().unwrap();
    let bootstrap = istio_like_bootstrap(plugin, &json, &upstream);
    let envoy = Envoy::start(&bootstrap, &EnvoyOptions::default()).unwrap_or_else(|e| {
        panic!("{what}: Envoy did not start with its pluginConfig\n{json}\n{e}")
    });
    let listener = bootstrap_listener_port(&bootstrap);
    let prefix = plugin.stat_prefix();

    // Requests the filter sends itself (slow start's priming) go through the clusters named in
    // the configuration: wait until every one of them was answered by the upstream.
    let warmups = plugin
        .config
        .get("warmup_requests")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if warmups > 0 {
        let succeeded = envoy
            .wait_stat(
                &format!("wasmcustom.{prefix}.self.priming_succeeded"),
                warmups as u64,
                Duration::from_secs(15),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "{what}: priming through {:?}: {e}\n{}",
                    plugin.cluster_names(),
                    envoy.log_tail(40)
                )
            });
        let primed = upstream
            .log()
            .iter()
            .filter(|r| r.header("x-resilience-slow-start") == Some("priming"))
            .count();
        assert!(
            primed >= warmups,
            "{what}: the upstream saw {primed} priming requests"
        );
        println!(
            "{what}: {succeeded} priming requests answered through {:?}",
            plugin.cluster_names()
        );
    }

    // Health checks always pass, whatever the filter decides for other requests.
    for path in plugin.health_check_paths() {
        let r = request(listener, "GET", &path, &[], None).unwrap();
        assert_eq!(r.status, 200, "{what}: health check {path}: {r:?}");
    }

    // One request per routes entry, and one for the defaults.
    let mut probes: Vec<(Option<&str>, Probe)> = plugin
        .routes()
        .iter()
        .map(|e| (e["name"].as_str(), request_for(e)))
        .collect();
    probes.push((
        None,
        Probe {
            method: "GET".to_owned(),
            path: "/".to_owned(),
            headers: Vec::new(),
        },
    ));
    let header = plugin.decision_header();
    let mut reached = 0;
    for (entry, probe) in &probes {
        let Probe {
            method,
            path,
            headers,
        } = probe;
        let before = upstream.requests();
        let hdrs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let body = (method == "POST" || method == "PUT").then_some(&b""[..]);
        let r = request(listener, method, path, &hdrs, body).unwrap();
        let forwarded = upstream.requests() > before;
        let normal = (r.status == 200 && forwarded)
            || (!forwarded && r.status >= 400 && r.header(&header).is_some());
        assert!(
            normal,
            "{what}: {method} {path} (routes entry {entry:?}) got {} {:?}, forwarded: {forwarded}",
            r.status, r.headers
        );
        reached += usize::from(forwarded);
        println!(
            "{what}: {method} {path} -> {}{}",
            r.status,
            r.header(&header)
                .map(|h| format!(" ({header}: {h})"))
                .unwrap_or_default()
        );
    }
    assert!(reached > 0, "{what}: no probe reached the upstream");

    // Each entry decided under its own key (slow start keys its stats by endpoint, not route).
    let counted = match plugin.filter.as_str() {
        "failure-padding" => Some("samples"),
        "slow-start" => None,
        _ => Some("requests"),
    };
    if let Some(stat) = counted {
        let top_mode = plugin.config.get("mode").and_then(Value::as_str);
        for entry in plugin.routes() {
            let mode = entry["mode"].as_str().or(top_mode);
            if mode == Some("disabled") {
                continue;
            }
            let key = entry["name"].as_str().unwrap();
            envoy
                .wait_stat(
                    &format!("wasmcustom.{prefix}.{key}.{stat}"),
                    1,
                    Duration::from_secs(5),
                )
                .unwrap_or_else(|e| panic!("{what}: routes entry {key} was not counted: {e}"));
        }
    }

    let log = envoy.log();
    assert!(
        !log.contains("invalid configuration"),
        "{what}: {}",
        envoy.log_tail(40)
    );
    if let Some(failure) = envoy.vm_failure() {
        panic!("{what}: {failure}");
    }
}

/// The listener port of a bootstrap rendered by `ProxyConfig` (its first listener).
fn bootstrap_listener_port(bootstrap: &str) -> u16 {
    let listeners = bootstrap.find("listeners:").unwrap();
    let rest = &bootstrap[listeners..];
    let at = rest.find("port_value: ").unwrap() + "port_value: ".len();
    rest[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn every_istio_plugin_config_is_accepted_by_its_filter_and_answers_through_a_real_envoy() {
    let plugins = istio_plugins();
    // One Envoy at a time: each compiles its module on every worker.
    for plugin in &plugins {
        prove_plugin_loads_and_answers(plugin);
    }
    let filters: BTreeSet<&str> = plugins.iter().map(|p| p.filter.as_str()).collect();
    assert_eq!(
        filters,
        filter_crates().iter().map(String::as_str).collect(),
        "every filter's manifest was run"
    );
}

#[test]
fn a_plugin_config_with_a_field_its_filter_does_not_know_keeps_envoy_from_starting() {
    // The check above has teeth: an unknown field (a typo, a field of another filter) refuses
    // the plugin, and Envoy with it, naming the field.
    let mut seen = BTreeSet::new();
    for plugin in istio_plugins() {
        if !seen.insert(plugin.filter.clone()) {
            continue;
        }
        let mut config = plugin.config.clone();
        config
            .as_object_mut()
            .unwrap()
            .insert("not_a_field_of_any_filter".to_owned(), Value::from(1));
        let json = serde_json::to_string(&config).unwrap();
        let upstream = Upstream::start().unwrap();
        let bootstrap = istio_like_bootstrap(&plugin, &json, &upstream);
        let log = harness::envoy::start_expect_failure(&bootstrap, &EnvoyOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", plugin.file));
        let line = log
            .lines()
            .find(|l| l.contains("invalid configuration"))
            .unwrap_or_else(|| panic!("{}: no config error line:\n{log}", plugin.file));
        assert!(line.contains("not_a_field_of_any_filter"), "{line}");
        println!("{}: refused with: {}", plugin.file, line.trim());
    }
    assert_eq!(seen, filter_crates());
}
