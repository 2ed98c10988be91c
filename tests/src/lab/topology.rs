//! YAML for the lab's one-process topologies: an edge listener that balances over per-host
//! sidecar listeners, each in front of its own application instance.
//!
//! Why one Envoy plays every role: the scenarios need the caller's balancer and each host's own
//! proxy, and one process keeps ports, start-up and teardown simple. Each scenario decides which
//! filters go where; this module writes the listeners and clusters around them.

/// The admin block and the start of `static_resources.listeners`.
pub fn header(admin_port: u16) -> String {
    format!(
        "admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
static_resources:
  listeners:
"
    )
}

/// One HTTP listener whose only route sends everything to one cluster.
pub struct Listener<'a> {
    pub name: &'a str,
    pub port: u16,
    pub cluster: &'a str,
    /// Extra `route:` fields (e.g. a retry policy), already indented by 18.
    pub route_extra: &'a str,
    /// HTTP filters before the router, already indented by 10.
    pub filters: &'a str,
    /// Treat loopback callers as internal, so Envoy keeps the deadline headers they send.
    pub loopback_is_internal: bool,
}

impl Listener<'_> {
    pub fn yaml(&self) -> String {
        let Listener {
            name,
            port,
            cluster,
            route_extra,
            filters,
            loopback_is_internal,
        } = self;
        let internal = if *loopback_is_internal {
            "          use_remote_address: true
          internal_address_config:
            cidr_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }]
"
        } else {
            ""
        };
        format!(
            "  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
{internal}          route_config:
            name: {name}
            virtual_hosts:
            - name: {name}
              domains: [\"*\"]
              routes:
              - name: app
                match: {{ prefix: \"/\" }}
                route:
                  cluster: {cluster}
                  timeout: 5s
{route_extra}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"
        )
    }
}

/// A STATIC cluster over loopback `ports`; `extra` holds more cluster fields, indented by 4.
pub fn static_cluster(name: &str, ports: &[u16], extra: &str) -> String {
    let mut c = format!(
        "  - name: {name}
    type: STATIC
    connect_timeout: 1s
{extra}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
"
    );
    for p in ports {
        c.push_str(&format!(
            "        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {p} }}
"
        ));
    }
    c
}
