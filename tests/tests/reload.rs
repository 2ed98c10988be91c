//! Configuration reloads under load (issue 16): Envoy reads its listener from a watched file
//! (file-based LDS, as a control plane's push would change it), and the pack module's
//! configuration changes six times while clients keep sending. No client sees an error, an
//! invalid configuration is refused while the old one keeps serving, breaker state survives an
//! unrelated change, and what is held across a reload is finished by the configuration that
//! held it: a response padding holds is delivered, and a request the validator holds at its
//! headers until its body is checked is passed whole (or refused whole) once the body comes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use harness::config::wasm_filter_yaml;
use harness::{
    filter_wasm, free_port, request, Behavior, ClusterSpec, Envoy, EnvoyOptions, ProxyConfig,
    RouteSpec, Upstream,
};

const BREAKER: &str = "x-resilience-circuit-breaker";
const PADDING: &str = "x-resilience-failure-padding";

/// One version of the pack's configuration: `threshold` for the breaker's `dead` route,
/// `max_keys`, and `extra_route` an added entry on the padding stage.
fn pack_json(consecutive: u32, max_keys: u32, extra_route: bool) -> String {
    let extra = if extra_route {
        r#", { "name": "extra", "match": { "prefix": "/extra" }, "consecutive_failures": 7 }"#
    } else {
        ""
    };
    format!(
        r#"{{
    "circuit_breaker": {{
        "max_keys": {max_keys}, "sync_interval": "50ms", "failure_rate_threshold": null,
        "consecutive_failures": {consecutive}, "open_duration": "60s", "open_jitter_percent": 0,
        "routes": [ {{ "name": "dead", "match": {{ "prefix": "/dead" }} }}{extra} ]
    }},
    "request_validator": {{
        "hold_headers_for_body_checks": true, "sync_interval": "50ms",
        "routes": [ {{ "name": "orders", "match": {{ "prefix": "/orders" }},
                       "json_schema": {{ "type": "object", "required": ["id"] }} }} ]
    }},
    "failure_padding": {{
        "sync_interval": "50ms", "min_samples": 1000000, "fallback_target": "400ms",
        "max_padded_in_flight": 64,
        "routes": [ {{ "name": "held", "match": {{ "prefix": "/held" }} }} ]
    }}
}}"#
    )
}

/// The bootstrap (admin, clusters, LDS from `lds`) and the listener file's contents.
fn configs(listener: u16, admin: u16, upstream: u16, pack: &str, lds: &Path) -> (String, String) {
    let wasm = filter_wasm("resilience-pack").unwrap();
    // The validator's body hold needs Envoy to call the body callback of held headers.
    let policy = "      failure_policy:";
    let filter = wasm_filter_yaml("pack", "resilience_pack", "reload", &wasm, pack).replacen(
        policy,
        &format!("      allow_on_headers_stop_iteration: true\n{policy}"),
        1,
    );
    assert!(filter.contains("allow_on_headers_stop_iteration"));
    let whole = ProxyConfig::new(listener, admin)
        .with_http_filters(&filter)
        .cluster(ClusterSpec::new("upstream", &[upstream]))
        .route(RouteSpec::new("api", "/", "upstream").with_timeout(Duration::from_secs(5)))
        .render();
    // ProxyConfig writes one static listener; move it into an LDS resource file.
    let (head, rest) = whole
        .split_once("static_resources:\n  listeners:\n")
        .unwrap();
    let (listener_yaml, clusters) = rest.split_once("  clusters:").unwrap();
    let resource = listener_yaml
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replacen(
            "- name: ingress",
            "- \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n  name: ingress",
            1,
        );
    let lds_text = format!("resources:\n{resource}\n");
    let bootstrap = format!(
        "{head}node: {{ id: reload-test, cluster: reload-test }}\ndynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    path_config_source:\n      path: {}\nstatic_resources:\n  clusters:{clusters}",
        lds.display()
    );
    (bootstrap, lds_text)
}

/// A POST whose headers and first body bytes go out now and the rest after `pause`: the
/// validator holds it at its headers meanwhile. Returns the status.
fn post_in_two_parts(listener: u16, path: &str, body: &str, pause: Duration) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", listener)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: reload\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{first}",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(pause);
    s.write_all(rest.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"))
}

/// Replaces the watched file in one move, as Envoy's file watcher expects.
fn write_lds(lds: &Path, text: &str) {
    let tmp = lds.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, lds).unwrap();
}

fn wait_counter(envoy: &Envoy, name: &str, at_least: u64) -> u64 {
    envoy
        .wait_stat(name, at_least, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", envoy.log_tail(40)))
}

#[test]
fn six_reloads_under_load_cost_no_client_an_error_and_keep_an_open_breaker_open() {
    let upstream = Upstream::start().unwrap();
    upstream.set_behavior("/dead", Behavior::status(503));
    upstream.set_behavior("/held", Behavior::status(503));
    let (listener, admin) = (free_port(), free_port());
    let dir = tempdir();
    let lds = dir.join("lds.yaml");
    let version = |c: u32, k: u32, extra: bool| {
        configs(
            listener,
            admin,
            upstream.port(),
            &pack_json(c, k, extra),
            &lds,
        )
    };
    let (bootstrap, first) = version(3, 100, false);
    write_lds(&lds, &first);
    let envoy = Envoy::start(
        &bootstrap,
        &EnvoyOptions {
            concurrency: 2,
            ..EnvoyOptions::default()
        },
    )
    .unwrap();
    envoy.wait_listener(listener).unwrap();

    // Open the `dead` breaker: three failures in a row on either worker.
    for _ in 0..6 {
        let _ = request(listener, "GET", "/dead", &[], None);
    }
    let open = request(listener, "GET", "/dead", &[], None).unwrap();
    assert!(
        open.header(BREAKER).is_some_and(|h| h.starts_with("open")),
        "the dead route's breaker is open: {:?}",
        open.header(BREAKER)
    );

    // Eight clients on the healthy route for the whole test.
    let stop = AtomicBool::new(false);
    let (sent, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut held_ok = 0;
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let ok =
                        request(listener, "GET", "/ok", &[], None).is_ok_and(|r| r.status == 200);
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // Whatever happens below, a panic included, the clients stop.
        let _stop_clients = StopOnDrop(&stop);
        // A padded failure held (400 ms) while the next reload lands.
        let held = scope.spawn(|| request(listener, "GET", "/held", &[], None));
        // Two requests held at their headers while the next two reloads land; their bodies
        // come after them.
        let pause = Duration::from_millis(1_000);
        let good = scope
            .spawn(move || post_in_two_parts(listener, "/orders/good", r#"{"id": "o-1"}"#, pause));
        let bad = scope
            .spawn(move || post_in_two_parts(listener, "/orders/bad", r#"{"no": "id!"}"#, pause));
        std::thread::sleep(Duration::from_millis(100));

        let steps: [(&str, u32, u32, bool, bool); 6] = [
            ("a changed threshold", 4, 100, false, true),
            ("a route added", 4, 100, true, true),
            ("the route removed", 4, 100, false, true),
            ("a new max_keys", 4, 200, false, true),
            ("an invalid configuration (max_keys 0)", 4, 0, false, false),
            ("back to the first", 3, 100, false, true),
        ];
        let (mut accepted, mut rejected) = (0, 0);
        for (what, c, k, extra, valid) in steps {
            let (_, text) = version(c, k, extra);
            write_lds(&lds, &text);
            if valid {
                accepted += 1;
                wait_counter(&envoy, "listener_manager.lds.update_success", accepted + 1);
            } else {
                rejected += 1;
                wait_counter(&envoy, "listener_manager.lds.update_rejected", rejected);
            }
            std::thread::sleep(Duration::from_millis(400));
            // An unrelated change leaves the open breaker open (its state is in shared data).
            let r = request(listener, "GET", "/dead", &[], None).unwrap();
            assert!(
                r.header(BREAKER).is_some_and(|h| h.starts_with("open")),
                "after {what}: the dead route's breaker is still open: {:?}",
                r.header(BREAKER)
            );
            println!(
                "reload: {what}: {}",
                if valid { "accepted" } else { "refused" }
            );
        }
        stop.store(true, Ordering::Relaxed);
        let held = held.join().unwrap().unwrap();
        assert_eq!(held.status, 503, "the held failure is delivered");
        assert!(held
            .header(PADDING)
            .is_some_and(|h| h.starts_with("padded")));
        held_ok += 1;
        assert_eq!(
            good.join().unwrap(),
            200,
            "the held valid request was passed"
        );
        assert_eq!(
            bad.join().unwrap(),
            422,
            "the held request against the schema was refused"
        );
        assert_eq!(upstream.requests_for("/orders/good"), 1);
        assert_eq!(
            upstream.requests_for("/orders/bad"),
            0,
            "nothing of it reached the upstream"
        );
        held_ok += 2;
    });
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("figure: six reloads (one refused) while 8 clients sent {sent} requests: {failed} failed; held across a reload and finished (a padded failure, a valid and an invalid body): {held_ok}");
    assert!(sent > 500, "the clients ran throughout: {sent}");
    assert_eq!(failed, 0, "no client saw an error");
    assert!(
        envoy.log().contains("max_keys"),
        "the refusal names the field"
    );
    if let Some(failure) = envoy.vm_failure() {
        panic!("{failure}");
    }
}

/// Sets its flag when dropped (also while a panic unwinds).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "resilience-reload-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
