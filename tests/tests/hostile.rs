//! Regression guards for what an outsider found true by hand (issue 16): the whole pack in one
//! Envoy (`--concurrency 2`, the pack module with every stage that needs no fleet) survives
//! hostile requests and hostile upstream answers without one VM failure, a request the validator
//! refuses never reaches the upstream whole, and a flood of distinct keys keeps every key space at
//! its configured bound with the overflow counted and memory flat; and configuration reloads
//! under load cost no client an error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::bench::process_rss;
use harness::client::raw_request;
use harness::config::wasm_filter_yaml;
use harness::{
    filter_wasm, free_port, parallel, request, Behavior, ClusterSpec, Envoy, EnvoyOptions,
    ProxyConfig, RouteSpec, Upstream,
};

const MAX_KEYS: u64 = 50;

/// Every stage the pack can run against one upstream, with strict edges: the shapes of
/// `envoy-configs/pack.yaml` (body holds, schemas, per-route entries) and key spaces an attacker
/// controls (`key_header`). The breaker never trips here (its rate signal is off): the hostile
/// answers are mostly failures, and the check afterwards needs the route open.
fn pack_json() -> String {
    format!(
        r#"{{
    "request_validator": {{
        "hold_headers_for_body_checks": true,
        "health_checks": {{ "paths": ["/healthz"] }},
        "max_path_bytes": 2048, "max_header_count": 64, "max_body_bytes": 65536,
        "sync_interval": "50ms",
        "routes": [{{
            "name": "json", "match": {{ "prefix": "/json" }},
            "allowed_methods": ["POST"],
            "json_schema": {{ "type": "object", "required": ["id"],
                             "properties": {{ "id": {{ "type": "string" }} }} }}
        }}, {{
            "name": "search", "match": {{ "prefix": "/search" }},
            "query_params": [{{ "name": "limit", "integer": {{ "min": 1, "max": 100 }} }}]
        }}]
    }},
    "circuit_breaker": {{
        "key_header": "x-tenant", "max_keys": {MAX_KEYS}, "sync_interval": "50ms",
        "consecutive_failures": 1000, "failure_rate_threshold": null
    }},
    "retry_budget": {{ "max_retries": 2, "sync_interval": "50ms" }},
    "failure_padding": {{
        "sync_interval": "50ms", "min_samples": 1000000, "fallback_target": "5ms",
        "max_padded_in_flight": 16
    }}
}}"#
    )
}

struct Rig {
    envoy: Envoy,
    upstream: Upstream,
    port: u16,
}

fn start() -> Rig {
    let upstream = Upstream::start().unwrap();
    // Hostile answers, on their own paths.
    upstream.set_behavior(
        "/hostile/retry-after",
        Behavior::status(503).with_header("retry-after", "99999999999999999999999"),
    );
    upstream.set_behavior(
        "/hostile/grpc",
        Behavior::status(200)
            .with_header("grpc-status", "-7abc")
            .with_header("grpc-retry-pushback-ms", "-99999999999999999"),
    );
    upstream.set_behavior("/hostile/599", Behavior::status(599));
    upstream.set_behavior("/hostile/reset", Behavior::reset());
    upstream.set_behavior("/hostile/close", Behavior::close_without_response());
    upstream.set_behavior(
        "/hostile/big-header",
        Behavior::status(500).with_header("x-big", &"b".repeat(30_000)),
    );
    let wasm = filter_wasm("resilience-pack").unwrap();
    let port = free_port();
    let policy = "      failure_policy: FAIL_CLOSED\n";
    let filter = wasm_filter_yaml("pack", "resilience_pack", "hostile", &wasm, &pack_json())
        .replace(
            policy,
            &format!("{policy}      allow_on_headers_stop_iteration: true\n"),
        );
    let config = ProxyConfig::new(port, free_port())
        .with_http_filters(&filter)
        .cluster(ClusterSpec::new("upstream", &[upstream.port()]))
        .route(RouteSpec::new("api", "/", "upstream").with_timeout(Duration::from_secs(5)))
        .render();
    let envoy = Envoy::start(
        &config,
        &EnvoyOptions {
            concurrency: 2,
            ..EnvoyOptions::default()
        },
    )
    .unwrap();
    envoy.wait_listener(port).unwrap();
    Rig {
        envoy,
        upstream,
        port,
    }
}

/// The status line's code of a raw HTTP/1.1 answer, 0 for none (the connection was closed).
fn status_of(raw: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(raw);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn raw(port: u16, head: &[u8]) -> u16 {
    status_of(&raw_request(port, head).unwrap())
}

/// Sends `head`, then `body` in `chunk`-byte writes, then (unless `close_early`) waits for the
/// answer.
fn slow_body(port: u16, head: &str, body: &[u8], chunk: usize, close_early: bool) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    for part in body.chunks(chunk.max(1)) {
        if s.write_all(part).is_err() {
            break;
        }
    }
    if close_early {
        return 0;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    status_of(&out)
}

#[test]
fn hostile_requests_and_answers_never_fail_a_vm_and_refused_bodies_never_reach_the_upstream() {
    let rig = start();
    let p = rig.port;
    let mut answered = Vec::new();

    // Odd methods and paths.
    for method in ["PROPFIND", "M-SEARCH", "BREW", &"X".repeat(200)] {
        answered.push(raw(
            p,
            format!("{method} / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        ));
    }
    let long_path = format!("/{}", "a".repeat(8_000));
    let many_params = format!("/search?{}", "limit=5&".repeat(500));
    for path in [
        "/%00",
        "/../../etc/passwd",
        "//////",
        "/%ff%fe%fd",
        "/search?limit=5&limit=500",
        "/search?limit=99999999999999999999999",
        "/search?limit=-1&limit=&limit",
        long_path.as_str(),
        many_params.as_str(),
    ] {
        answered.push(raw(
            p,
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        ));
    }
    // Non-UTF-8, 50 KB and absurd header values; 60 headers; duplicates of the key header.
    let mut head = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-tenant: \xff\xfe\x80\r\n\
x-envoy-attempt-count: 99999999999999999999\r\ngrpc-timeout: 99999999999H\r\n\
x-envoy-expected-rq-timeout-ms: -1\r\n"
        .to_vec();
    head.extend_from_slice(format!("x-big: {}\r\n\r\n", "v".repeat(50_000)).as_bytes());
    answered.push(raw(p, &head));
    let mut many = String::from("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for i in 0..60 {
        many.push_str(&format!("x-h{i}: {i}\r\nx-tenant: t{i}\r\n"));
    }
    many.push_str("\r\n");
    answered.push(raw(p, many.as_bytes()));

    // JSON bodies the validator must refuse, none of which may reach the upstream whole.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let big = format!(r#"{{"id": "{}"}}"#, "x".repeat(1_100_000));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", br#"{"id": "a"#.to_vec()),
        ("deep", deep.into_bytes()),
        ("not-an-object", b"[1, 2, 3]".to_vec()),
        ("wrong-type", br#"{"id": 7}"#.to_vec()),
        ("non-utf8", b"{\"id\": \"\xff\xfe\"}".to_vec()),
        ("too-big", big.into_bytes()),
    ];
    for (name, body) in &bodies {
        let r = request(
            p,
            "POST",
            &format!("/json/{name}"),
            &[("content-type", "application/json")],
            Some(body),
        );
        let status = r.map_or(0, |r| r.status);
        assert!(
            (400..500).contains(&status) || status == 0,
            "{name}: refused, got {status}"
        );
        answered.push(status);
    }
    // Tiny chunks of a valid body pass; a lying content-length and an abandoned body do not.
    let good = br#"{"id": "a-valid-order"}"#;
    let head = format!(
        "POST /json/chunks HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        good.len()
    );
    assert_eq!(slow_body(p, &head, good, 1, false), 200);
    let liar = "POST /json/liar HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n";
    slow_body(p, liar, br#"{"id": "#, 3, true);
    let shorter = "POST /json/short HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n";
    answered.push(slow_body(p, shorter, br#"{"id": "a"}"#, 4, false));

    // Hostile upstream answers, several times each so every worker sees them.
    for path in [
        "/hostile/retry-after",
        "/hostile/grpc",
        "/hostile/599",
        "/hostile/reset",
        "/hostile/close",
        "/hostile/big-header",
    ] {
        for _ in 0..4 {
            answered.push(request(p, "GET", path, &[], None).map_or(0, |r| r.status));
        }
    }

    // Still healthy: ordinary requests pass and are served.
    for _ in 0..20 {
        assert_eq!(request(p, "GET", "/ok", &[], None).unwrap().status, 200);
    }
    let refused_reached = bodies
        .iter()
        .map(|(name, _)| rig.upstream.requests_for(&format!("/json/{name}")))
        .sum::<u64>();
    assert_eq!(
        refused_reached, 0,
        "a refused body never reaches the upstream"
    );
    assert_eq!(rig.upstream.requests_for("/json/liar"), 0);
    println!(
        "figure: {} hostile requests and answers, statuses {:?}",
        answered.len(),
        {
            let mut s = answered.clone();
            s.sort_unstable();
            s.dedup();
            s
        }
    );
    if let Some(failure) = rig.envoy.vm_failure() {
        panic!("{failure}");
    }
    assert!(
        !rig.envoy.log().contains("wasm_fail_stream"),
        "no stream was failed by a VM"
    );
}

#[test]
fn a_flood_of_distinct_keys_stays_at_max_keys_with_the_overflow_counted_and_memory_flat() {
    let rig = start();
    let p = rig.port;
    let flood = |from: usize, n: usize| {
        let statuses = parallel(8, n, |i| {
            let tenant = format!("tenant-{}", from + i);
            request(p, "GET", "/flood", &[("x-tenant", tenant.as_str())], None)
                .map_or(0, |r| r.status)
        });
        assert!(
            statuses.iter().all(|s| *s == 200),
            "every flood request is served"
        );
    };
    flood(0, 2_000);
    std::thread::sleep(Duration::from_millis(300));
    let rss_at_2k = process_rss(rig.envoy.pid()).unwrap_or(0);
    let started = Instant::now();
    flood(2_000, 18_000);
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let rss_at_20k = process_rss(rig.envoy.pid()).unwrap_or(0);
    let stats = rig.envoy.stats().unwrap();
    let keys: Vec<&String> = stats
        .keys()
        .filter(|k| k.starts_with("wasmcustom.circuit_breaker.") && k.ends_with(".requests"))
        .collect();
    let overflow: u64 = stats
        .iter()
        .filter(|(k, _)| {
            k.starts_with("wasmcustom.circuit_breaker") && k.ends_with("keys_overflow")
        })
        .map(|(_, v)| *v)
        .sum();
    let mib = |b: u64| b as f64 / 1_048_576.0;
    println!(
        "figure: 20000 distinct x-tenant keys ({:.1} s for the last 18000): {} breaker keys, \
         keys_overflow {overflow}, RSS {:.1} MiB at 2000 keys, {:.1} MiB at 20000",
        elapsed.as_secs_f64(),
        keys.len(),
        mib(rss_at_2k),
        mib(rss_at_20k)
    );
    assert!(
        keys.len() as u64 <= MAX_KEYS,
        "{} breaker keys for max_keys {MAX_KEYS}",
        keys.len()
    );
    assert!(
        overflow >= 20_000 - MAX_KEYS,
        "the overflow is counted: {overflow}"
    );
    // Flat: the key registry is bounded, so 18,000 more keys may not grow the process by more
    // than allocator noise.
    assert!(
        rss_at_20k <= rss_at_2k + 24 * 1_048_576,
        "RSS grew from {:.1} to {:.1} MiB",
        mib(rss_at_2k),
        mib(rss_at_20k)
    );
    if let Some(failure) = rig.envoy.vm_failure() {
        panic!("{failure}");
    }
}
