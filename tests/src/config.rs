//! Static Envoy bootstraps for tests.
//!
//! Why: every end-to-end test needs the same skeleton (an admin interface, one HTTP listener, a
//! route table, clusters pointing at scripted upstreams) and differs only in the HTTP filters,
//! routes and clusters. Generating it keeps each test's config to the part under test, with
//! ports filled in by the caller (`envoy::free_port`) so tests run in parallel.
//!
//! Caller-supplied YAML snippets (filters, extra route or cluster fields) may be written at any
//! indentation: they are dedented and re-indented to where they belong.

use std::fmt::Write as _;
use std::time::Duration;

/// A route: requests whose path starts with `prefix` go to `cluster`.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The route's `name` (what `xds.route_name` returns in a filter).
    pub name: String,
    pub prefix: String,
    pub cluster: String,
    /// The route timeout; `None` keeps Envoy's default (15 s).
    pub timeout: Option<Duration>,
    /// Extra fields of the route action (under `route:`), e.g. `retry_policy: {...}`.
    pub action_yaml: String,
    /// Extra fields of the route entry (beside `match:`), e.g. `typed_per_filter_config: ...`.
    pub entry_yaml: String,
}

impl RouteSpec {
    pub fn new(name: &str, prefix: &str, cluster: &str) -> Self {
        RouteSpec {
            name: name.to_string(),
            prefix: prefix.to_string(),
            cluster: cluster.to_string(),
            timeout: None,
            action_yaml: String::new(),
            entry_yaml: String::new(),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn with_action_yaml(mut self, yaml: &str) -> Self {
        self.action_yaml = yaml.to_string();
        self
    }

    pub fn with_entry_yaml(mut self, yaml: &str) -> Self {
        self.entry_yaml = yaml.to_string();
        self
    }
}

/// A STATIC cluster over loopback endpoints.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    /// Ports on 127.0.0.1, one endpoint each.
    pub ports: Vec<u16>,
    pub connect_timeout: Duration,
    /// Extra cluster fields, e.g. `circuit_breakers: ...` or `typed_extension_protocol_options`
    /// (not together with `http2`, which writes that field).
    pub extra_yaml: String,
    /// Speak HTTP/2 to the endpoints (`http2_protocol_options`), as a gRPC upstream needs.
    pub http2: bool,
}

impl ClusterSpec {
    pub fn new(name: &str, ports: &[u16]) -> Self {
        ClusterSpec {
            name: name.to_string(),
            ports: ports.to_vec(),
            connect_timeout: Duration::from_secs(1),
            extra_yaml: String::new(),
            http2: false,
        }
    }

    /// HTTP/2 to the endpoints (prior knowledge, no TLS): what a gRPC server speaks.
    pub fn with_http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    pub fn with_extra_yaml(mut self, yaml: &str) -> Self {
        self.extra_yaml = yaml.to_string();
        self
    }
}

/// A whole bootstrap: admin, one HTTP listener, routes, clusters.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listener_port: u16,
    pub admin_port: u16,
    /// HTTP filters (a YAML list), placed before the router filter.
    pub http_filters_yaml: String,
    pub routes: Vec<RouteSpec>,
    pub clusters: Vec<ClusterSpec>,
    /// Extra fields of the virtual host, e.g. `typed_per_filter_config: ...`.
    pub virtual_host_yaml: String,
    /// Extra fields of the HTTP connection manager, e.g. `stream_idle_timeout: 5s`.
    pub hcm_yaml: String,
    /// Log every request to stdout (which goes to the Envoy log).
    pub access_log: bool,
    /// Extra top-level fields of the bootstrap, e.g. `memory_allocator_manager: ...`.
    pub bootstrap_yaml: String,
}

impl ProxyConfig {
    /// No filters, routes or clusters yet.
    pub fn new(listener_port: u16, admin_port: u16) -> Self {
        ProxyConfig {
            listener_port,
            admin_port,
            http_filters_yaml: String::new(),
            routes: Vec::new(),
            clusters: Vec::new(),
            virtual_host_yaml: String::new(),
            hcm_yaml: String::new(),
            access_log: false,
            bootstrap_yaml: String::new(),
        }
    }

    pub fn with_bootstrap_yaml(mut self, yaml: &str) -> Self {
        self.bootstrap_yaml = yaml.to_string();
        self
    }

    pub fn with_http_filters(mut self, yaml: &str) -> Self {
        self.http_filters_yaml = yaml.to_string();
        self
    }

    pub fn route(mut self, route: RouteSpec) -> Self {
        self.routes.push(route);
        self
    }

    pub fn cluster(mut self, cluster: ClusterSpec) -> Self {
        self.clusters.push(cluster);
        self
    }

    /// The bootstrap YAML.
    pub fn render(&self) -> String {
        let mut y = indent_yaml(&self.bootstrap_yaml, 0);
        let _ = write!(
            y,
            "admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listener} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
",
            admin = self.admin_port,
            listener = self.listener_port,
        );
        if self.access_log {
            y.push_str(
                "          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
",
            );
        }
        y.push_str(&indent_yaml(&self.hcm_yaml, 10));
        y.push_str(
            "          route_config:
            name: local_routes
            virtual_hosts:
            - name: local
              domains: [\"*\"]
",
        );
        y.push_str(&indent_yaml(&self.virtual_host_yaml, 14));
        if self.routes.is_empty() {
            y.push_str("              routes: []\n");
        } else {
            y.push_str("              routes:\n");
        }
        for r in &self.routes {
            let _ = write!(
                y,
                "              - name: {name}
                match: {{ prefix: {prefix:?} }}
                route:
                  cluster: {cluster}
",
                name = r.name,
                prefix = r.prefix,
                cluster = r.cluster,
            );
            if let Some(timeout) = r.timeout {
                let _ = writeln!(y, "                  timeout: {}", duration_yaml(timeout));
            }
            y.push_str(&indent_yaml(&r.action_yaml, 18));
            y.push_str(&indent_yaml(&r.entry_yaml, 16));
        }
        y.push_str("          http_filters:\n");
        y.push_str(&indent_yaml(&self.http_filters_yaml, 10));
        y.push_str(
            "          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
",
        );
        if self.clusters.is_empty() {
            y.push_str("  clusters: []\n");
        } else {
            y.push_str("  clusters:\n");
        }
        for c in &self.clusters {
            let _ = write!(
                y,
                "  - name: {name}
    type: STATIC
    connect_timeout: {timeout}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
",
                name = c.name,
                timeout = duration_yaml(c.connect_timeout),
            );
            for port in &c.ports {
                let _ = write!(
                    y,
                    "        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
"
                );
            }
            if c.http2 {
                y.push_str(
                    "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
",
                );
            }
            y.push_str(&indent_yaml(&c.extra_yaml, 4));
        }
        y
    }
}

/// The bootstrap most tests need: `http_filters_yaml` before the router, one route named
/// `default` for `/` to the STATIC cluster `upstream` at `127.0.0.1:upstream_port`.
pub fn basic_proxy_config(
    listener_port: u16,
    admin_port: u16,
    upstream_port: u16,
    http_filters_yaml: &str,
) -> String {
    ProxyConfig::new(listener_port, admin_port)
        .with_http_filters(http_filters_yaml)
        .route(RouteSpec::new("default", "/", "upstream"))
        .cluster(ClusterSpec::new("upstream", &[upstream_port]))
        .render()
}

/// A protobuf Duration in YAML form, e.g. `0.5s`.
pub fn duration_yaml(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Re-indents a YAML snippet: strips blank lines around it and the common leading indentation,
/// then prefixes every line with `spaces` spaces. Empty in, empty out; always ends with `\n`.
pub fn indent_yaml(yaml: &str, spaces: usize) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let first = lines.iter().position(|l| !l.trim().is_empty());
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let (Some(first), Some(last)) = (first, last) else {
        return String::new();
    };
    let body = lines.get(first..=last).unwrap_or_default();
    let common = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches(' ').len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(spaces);
    let mut out = String::new();
    for line in body {
        if line.trim().is_empty() {
            out.push('\n');
        } else {
            out.push_str(&pad);
            out.push_str(line.get(common..).unwrap_or(line));
            out.push('\n');
        }
    }
    out
}

/// The HTTP filter entry for a wasm filter, to put into `http_filters_yaml`.
///
/// `configuration_json` becomes the plugin configuration (a `google.protobuf.StringValue`), the
/// VM runs on V8 with `vm_id` (filters sharing a `vm_id` and code share a VM per worker), and
/// `FAIL_CLOSED` makes a broken VM refuse requests instead of passing them unfiltered.
pub fn wasm_filter_yaml(
    name: &str,
    root_id: &str,
    vm_id: &str,
    wasm_path: &std::path::Path,
    configuration_json: &str,
) -> String {
    format!(
        "- name: envoy.filters.http.wasm
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: {name}
      root_id: {root_id}
      configuration:
        \"@type\": type.googleapis.com/google.protobuf.StringValue
        value: {config}
      vm_config:
        vm_id: {vm_id}
        runtime: envoy.wasm.runtime.v8
        code: {{ local: {{ filename: {path} }} }}
      failure_policy: FAIL_CLOSED
",
        config = yaml_single_quoted(configuration_json),
        path = yaml_single_quoted(&wasm_path.display().to_string()),
    )
}

/// `text` as a single-quoted YAML scalar (quotes doubled).
pub fn yaml_single_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indent_yaml_dedents_then_indents() {
        let snippet = "\n    - name: a\n      typed_config:\n        x: 1\n\n";
        assert_eq!(
            indent_yaml(snippet, 2),
            "  - name: a\n    typed_config:\n      x: 1\n"
        );
        assert_eq!(indent_yaml("  \n", 4), "");
    }

    #[test]
    fn basic_config_puts_filters_before_the_router() {
        let y = basic_proxy_config(1, 2, 3, "- name: my.filter\n  typed_config: {}\n");
        let filter = y.find("- name: my.filter").unwrap();
        let router = y.find("- name: envoy.filters.http.router").unwrap();
        assert!(filter < router);
        assert!(y.contains("          - name: my.filter\n            typed_config: {}\n"));
        assert!(y.contains("port_value: 3 }"));
        assert!(y.contains("- name: default\n"));
        assert!(!y.contains("http2_protocol_options"));
    }

    #[test]
    fn an_http2_cluster_speaks_http2_to_its_endpoints() {
        let y = ProxyConfig::new(1, 2)
            .cluster(ClusterSpec::new("grpc", &[3]).with_http2())
            .render();
        assert!(y.contains("explicit_http_config:\n          http2_protocol_options: {}\n"));
    }
}
