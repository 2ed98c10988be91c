//! The fast-fail validator, proven against the real Envoy (several workers, one shared count).
//!
//! Each test starts its own Envoy (`--concurrency` 2 or 4) with the filter in front of a scripted
//! upstream, drives real HTTP traffic (and raw sockets where timing or framing matters), and
//! asserts on what a client sees, on what the upstream received and on Envoy's stats. Figures
//! worth reporting are printed as `figure:` lines (`--nocapture`).

// Test code: a failed expectation should panic with its message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::config::wasm_filter_yaml;
use harness::{
    filter_wasm, free_port, get, parallel, request, Behavior, ClusterSpec, Envoy, EnvoyOptions,
    ProxyConfig, Response, RouteSpec, Upstream,
};
use serde_json::Value;

const HEADER: &str = "x-resilience-request-validator";
const PREFIX: &str = "wasmcustom.request_validator";

struct Rig {
    envoy: Envoy,
    upstream: Upstream,
    port: u16,
}

impl Rig {
    fn get(&self, path: &str) -> Response {
        get(self.port, path).expect("request through Envoy")
    }

    fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        request(self.port, method, path, headers, body).expect("request through Envoy")
    }

    fn stat(&self, key: &str, name: &str) -> u64 {
        self.envoy.stat(&format!("{PREFIX}.{key}.{name}"))
    }

    /// Waits until a per-key stat reaches `n` (stats are flushed on the filter's tick).
    fn wait_stat(&self, key: &str, name: &str, n: u64) -> u64 {
        self.envoy
            .wait_stat(&format!("{PREFIX}.{key}.{name}"), n, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log_tail(40)))
    }

    fn assert_no_vm_failure(&self) {
        if let Some(failure) = self.envoy.vm_failure() {
            panic!("{failure}");
        }
    }
}

struct RigOptions {
    concurrency: u32,
    /// Extra lines for the Wasm filter's `config` (e.g. `allow_on_headers_stop_iteration`).
    plugin_yaml: &'static str,
    /// Extra fields of the HTTP connection manager.
    hcm_yaml: &'static str,
    routes: Vec<(&'static str, &'static str)>,
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            concurrency: 2,
            plugin_yaml: "",
            hcm_yaml: "",
            routes: vec![("default", "/")],
        }
    }
}

fn validator_filter(json: &str, plugin_yaml: &str) -> String {
    let wasm = filter_wasm("request-validator").expect("request_validator.wasm");
    let mut filter = wasm_filter_yaml("request_validator", "request_validator", "rv", &wasm, json);
    if !plugin_yaml.is_empty() {
        filter = filter.replace(
            "      failure_policy: FAIL_CLOSED\n",
            &format!("      failure_policy: FAIL_CLOSED\n      {plugin_yaml}\n"),
        );
    }
    filter
}

fn rig_with(json: &str, opts: RigOptions) -> Rig {
    let upstream = Upstream::start().expect("upstream");
    let port = free_port();
    let mut config = ProxyConfig::new(port, free_port())
        .with_http_filters(&validator_filter(json, opts.plugin_yaml))
        .cluster(ClusterSpec::new("upstream", &[upstream.port()]));
    config.hcm_yaml = opts.hcm_yaml.to_owned();
    for (name, prefix) in &opts.routes {
        config = config
            .route(RouteSpec::new(name, prefix, "upstream").with_timeout(Duration::from_secs(10)));
    }
    let envoy = Envoy::start(
        &config.render(),
        &EnvoyOptions {
            concurrency: opts.concurrency,
            ..EnvoyOptions::default()
        },
    )
    .expect("envoy starts with the filter");
    envoy.wait_listener(port).expect("listener");
    Rig {
        envoy,
        upstream,
        port,
    }
}

fn rig(json: &str) -> Rig {
    rig_with(json, RigOptions::default())
}

/// The problem body of a rejection, after checking the envelope every rejection shares.
fn problem(r: &Response, status: u16, rule: &str, kind: &str) -> Value {
    assert_eq!(
        r.status,
        status,
        "{} {:?}\n{}",
        r.status,
        r.headers,
        r.body_str()
    );
    assert_eq!(
        r.header(HEADER),
        Some(format!("rejected; reason={rule}").as_str()),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let body: Value = serde_json::from_slice(&r.body).expect("problem body is JSON");
    assert_eq!(body["type"], format!("urn:resilience-pack:problem:{kind}"));
    assert_eq!(body["status"], status);
    assert_eq!(body["rule"], rule);
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| !d.is_empty() && d.len() <= 256));
    body
}

/// Writes `head`, then each body chunk after its delay, and stops writing once a response has
/// begun (writing into a connection the proxy is closing makes its kernel answer with a reset,
/// which can discard the response before the client reads it). Returns the raw response and when
/// its first byte arrived (from the start).
fn raw_exchange(port: u16, head: &[u8], chunks: &[(&[u8], Duration)]) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reader = s.try_clone().unwrap();
    let responded = Arc::new(AtomicU64::new(0));
    let flag = Arc::clone(&responded);
    let reading = std::thread::spawn(move || {
        let mut reader = reader;
        let mut out = Vec::new();
        let mut first = None;
        let mut buf = [0u8; 16384];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    first.get_or_insert_with(|| started.elapsed());
                    flag.store(1, Ordering::SeqCst);
                    out.extend_from_slice(&buf[..n]);
                }
            }
        }
        (
            String::from_utf8_lossy(&out).into_owned(),
            first.unwrap_or_default(),
        )
    });
    if s.write_all(head).is_ok() {
        for (chunk, delay) in chunks {
            std::thread::sleep(*delay);
            if responded.load(Ordering::SeqCst) != 0 || s.write_all(chunk).is_err() {
                break;
            }
        }
    }
    reading.join().unwrap()
}

fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Head rules

const HEAD_RULES: &str = r#"{
    "sync_interval": "50ms",
    "allowed_methods": ["GET", "POST"],
    "max_path_bytes": 64,
    "max_header_count": 12,
    "max_header_bytes": 1024,
    "required_headers": [
        {"name": "x-api-key", "pattern": "^[A-Za-z0-9]{8,32}$"},
        {"name": "x-tenant", "required": false, "one_of": ["acme", "globex"]},
        {"name": "x-api-version", "required": false, "value": "2"}
    ],
    "query_params": [
        {"name": "limit", "integer": {"min": 1, "max": 100}},
        {"name": "q", "pattern": "^[a-z ]{1,20}$"}
    ],
    "content_types": ["application/json", "text/*"],
    "max_body_bytes": 4096,
    "routes": [
        {"name": "search", "match": {"prefix": "/search"},
         "query_params": [{"name": "q", "required": true, "pattern": "^[a-z ]{1,20}$"}]},
        {"name": "upload", "match": {"prefix": "/upload"}, "require_content_length": true}
    ]
}"#;

#[test]
fn each_head_rule_answers_its_status_headers_and_problem_and_never_reaches_the_upstream() {
    let rig = rig(HEAD_RULES);
    let key = ("x-api-key", "abcd1234");
    let ok = rig.req("GET", "/items?limit=5", &[key], None);
    assert_eq!(ok.status, 200, "{}", ok.body_str());
    assert_eq!(
        ok.header(HEADER),
        None,
        "a passing request carries no decision header"
    );
    let passed = 1;

    let r = rig.req("DELETE", "/items", &[key], None);
    let b = problem(&r, 405, "allowed_methods", "method-not-allowed");
    assert_eq!(r.header("allow"), Some("GET, POST"));
    println!("figure: 405 body: {}", r.body_str());
    assert_eq!(b["title"], "Method not allowed");

    let r = rig.req(
        "GET",
        &format!("/items?pad={}", "x".repeat(80)),
        &[key],
        None,
    );
    problem(&r, 414, "max_path_bytes", "uri-too-long");

    let many: Vec<(String, String)> = (0..12)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect();
    let mut headers: Vec<(&str, &str)> =
        many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    headers.push(key);
    let r = rig.req("GET", "/items", &headers, None);
    problem(&r, 431, "max_header_count", "too-many-headers");

    let big = "v".repeat(1100);
    let r = rig.req("GET", "/items", &[key, ("x-big", &big)], None);
    problem(&r, 431, "max_header_bytes", "headers-too-large");

    let r = rig.req("GET", "/items", &[], None);
    let b = problem(&r, 400, "required_headers", "invalid-header");
    assert_eq!(b["header"], "x-api-key");
    assert_eq!(b["detail"], "Header \"x-api-key\" is required.");
    let r = rig.req("GET", "/items", &[("x-api-key", "short!")], None);
    let b = problem(&r, 400, "required_headers", "invalid-header");
    assert!(
        !r.body_str().contains("short!"),
        "the value is never echoed: {b}"
    );
    let r = rig.req("GET", "/items", &[key, ("x-tenant", "initech")], None);
    problem(&r, 400, "required_headers", "invalid-header");
    let r = rig.req("GET", "/items", &[key, ("x-api-version", "3")], None);
    problem(&r, 400, "required_headers", "invalid-header");

    let r = rig.req("GET", "/items?limit=500", &[key], None);
    let b = problem(&r, 400, "query_params", "invalid-query");
    assert_eq!(b["parameter"], "limit");
    let r = rig.req("GET", "/items?q=DROP%20TABLE", &[key], None);
    problem(&r, 400, "query_params", "invalid-query");
    let r = rig.req("GET", "/search?limit=3", &[key], None);
    let b = problem(&r, 400, "query_params", "invalid-query");
    assert_eq!(b["detail"], "Query parameter \"q\" is required.");
    let r = rig.req("GET", "/search?q=red+shoes", &[key], None);
    assert_eq!(r.status, 200, "per-route query rules: {}", r.body_str());
    let passed = passed + 1;

    let r = rig.req(
        "POST",
        "/items",
        &[key, ("content-type", "application/xml")],
        Some(b"<a/>"),
    );
    let b = problem(&r, 415, "content_types", "unsupported-media-type");
    assert_eq!(
        b["accepted"],
        serde_json::json!(["application/json", "text/*"])
    );
    let r = rig.req(
        "POST",
        "/items",
        &[key, ("content-type", "text/csv")],
        Some(b"a,b"),
    );
    assert_eq!(r.status, 200, "text/* accepts text/csv");
    let passed = passed + 1;

    let r = rig.req(
        "POST",
        "/items",
        &[key, ("content-type", "text/plain")],
        Some(&[b'x'; 5000]),
    );
    let b = problem(&r, 413, "max_body_bytes", "body-too-large");
    assert_eq!(b["limit"], 4096);

    let raw = raw_exchange(
        rig.port,
        b"POST /upload HTTP/1.1\r\nhost: a\r\nx-api-key: abcd1234\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        &[],
    )
    .0;
    assert_eq!(status_of(&raw), 411, "{raw}");
    assert!(
        raw.contains("rejected; reason=require_content_length"),
        "{raw}"
    );

    assert_eq!(
        rig.upstream.requests(),
        passed,
        "only the passing requests reached the upstream: {:?}",
        rig.upstream
            .log()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    rig.wait_stat("default", "rejected", 12);
    assert_eq!(rig.stat("default", "violations_required_headers"), 4);
    assert_eq!(rig.stat("default", "violations_query_params"), 2);
    assert_eq!(rig.stat("search", "violations_query_params"), 1);
    assert_eq!(rig.stat("upload", "violations_require_content_length"), 1);
    rig.assert_no_vm_failure();
}

// ---------------------------------------------------------------------------------------------
// Bodies

const ORDER_SCHEMA: &str = r##"{
    "type": "object",
    "required": ["customer", "items"],
    "properties": {
        "customer": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "pattern": "^c[0-9]+$"}}},
        "items": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/item"}},
        "note": {"type": "string", "maxLength": 200}
    },
    "$defs": {
        "item": {"type": "object", "required": ["sku", "qty"],
                 "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}
    }
}"##;

fn body_rig() -> Rig {
    rig(&format!(
        r#"{{
        "sync_interval": "50ms",
        "max_body_bytes": 1000,
        "routes": [
            {{"name": "orders", "match": {{"prefix": "/orders"}}, "max_body_bytes": 524288,
              "json_schema": {ORDER_SCHEMA}}},
            {{"name": "legacy", "match": {{"prefix": "/legacy"}}, "json_schema_draft": "7",
              "json_schema": {{"type": "array", "items": [{{"type": "string"}}, {{"type": "integer"}}], "additionalItems": false}}}},
            {{"name": "events", "match": {{"prefix": "/events"}}, "json_body": true}}
        ]
    }}"#
    ))
}

fn order(items: usize, note_len: usize) -> Vec<u8> {
    let items: Vec<String> = (0..items)
        .map(|i| format!(r#"{{"sku": "sku-{i}", "qty": {}}}"#, i % 9 + 1))
        .collect();
    format!(
        r#"{{"customer": {{"id": "c42"}}, "items": [{}], "note": "{}"}}"#,
        items.join(","),
        "n".repeat(note_len)
    )
    .into_bytes()
}

#[test]
fn a_declared_length_over_the_limit_is_413_before_any_body_byte_is_sent() {
    let rig = body_rig();
    let (raw, first) = raw_exchange(
        rig.port,
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-type: text/plain\r\ncontent-length: 5000\r\n\r\n",
        &[],
    );
    assert_eq!(status_of(&raw), 413, "{raw}");
    assert!(raw.contains("rejected; reason=max_body_bytes"), "{raw}");
    println!("figure: 413 from content-length with no body byte sent, after {first:?}");
    assert!(first < Duration::from_secs(1));
    assert_eq!(rig.upstream.requests(), 0);
}

#[test]
fn a_chunked_body_is_counted_while_it_streams_and_cut_off_at_the_limit() {
    let rig = body_rig();
    let piece = vec![b'a'; 300];
    let c = chunk(&piece);
    let chunks: Vec<(&[u8], Duration)> = (0..10)
        .map(|_| (c.as_slice(), Duration::from_millis(100)))
        .collect();
    let (raw, first) = raw_exchange(
        rig.port,
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
        &chunks,
    );
    assert_eq!(status_of(&raw), 413, "{raw}");
    assert!(raw.contains("rejected; reason=max_body_bytes"), "{raw}");
    println!(
        "figure: streamed chunked body (300 B every 100 ms, limit 1000 B): 413 after {first:?}, i.e. at the 4th chunk, not at the end (10 chunks, ~1 s)"
    );
    assert!(
        first >= Duration::from_millis(350) && first < Duration::from_millis(900),
        "{first:?}"
    );
    // Not buffered (no body rule needs it): the upstream saw the start but never a whole request.
    assert_eq!(rig.upstream.requests(), 0);

    // The same on a route that buffers JSON: cut off at its own limit, nothing complete upstream.
    let big = vec![b' '; 200_000];
    let c = chunk(&big);
    let chunks: Vec<(&[u8], Duration)> = (0..5)
        .map(|_| (c.as_slice(), Duration::from_millis(30)))
        .collect();
    let (raw, _) = raw_exchange(
        rig.port,
        b"POST /orders HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        &chunks,
    );
    assert_eq!(status_of(&raw), 413, "{raw}");
    assert!(raw.contains("\"limit\":524288"), "{raw}");
    assert_eq!(rig.upstream.requests(), 0);

    // Within the limit, a chunked body passes whole.
    let mut body = Vec::new();
    let parts: Vec<Vec<u8>> = vec![
        chunk(&[b'x'; 400]),
        chunk(&[b'y'; 400]),
        b"0\r\n\r\n".to_vec(),
    ];
    let chunks: Vec<(&[u8], Duration)> = parts
        .iter()
        .map(|p| (p.as_slice(), Duration::from_millis(20)))
        .collect();
    let (raw, _) = raw_exchange(
        rig.port,
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        &chunks,
    );
    assert_eq!(status_of(&raw), 200, "{raw}");
    body.extend_from_slice(&[b'x'; 400]);
    body.extend_from_slice(&[b'y'; 400]);
    assert_eq!(rig.upstream.log().last().unwrap().body, body);
    rig.wait_stat("default", "violations_max_body_bytes", 1);
    rig.wait_stat("orders", "violations_max_body_bytes", 1);
    rig.assert_no_vm_failure();
}

#[test]
fn large_json_bodies_within_the_limit_pass_intact_after_one_check() {
    let rig = body_rig();
    let json = [("content-type", "application/json")];
    let body = order(12_000, 0);
    assert!(
        body.len() > 300_000 && body.len() < 524_288,
        "{}",
        body.len()
    );
    let started = Instant::now();
    let r = rig.req("POST", "/orders", &json, Some(&body));
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        rig.upstream.log().last().unwrap().body,
        body,
        "the upstream got the exact bytes"
    );
    println!("figure: a {} B valid JSON order (12000 items) passed the schema check in {took:?} end to end", body.len());

    // Chunked in 64 KiB pieces: held until complete, then checked once, then forwarded whole.
    let mut parts: Vec<Vec<u8>> = body.chunks(65_536).map(chunk).collect();
    parts.push(b"0\r\n\r\n".to_vec());
    let chunks: Vec<(&[u8], Duration)> = parts
        .iter()
        .map(|p| (p.as_slice(), Duration::from_millis(5)))
        .collect();
    let (raw, _) = raw_exchange(
        rig.port,
        b"POST /orders HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        &chunks,
    );
    assert_eq!(status_of(&raw), 200, "{}", &raw[..raw.len().min(400)]);
    assert_eq!(rig.upstream.log().last().unwrap().body, body);

    let too_big = order(20_000, 0);
    assert!(too_big.len() > 524_288);
    let r = rig.req("POST", "/orders", &json, Some(&too_big));
    problem(&r, 413, "max_body_bytes", "body-too-large");
    assert_eq!(rig.upstream.requests(), 2);
    rig.wait_stat("orders", "bodies_checked", 2);
}

#[test]
fn malformed_and_non_utf8_json_is_400_and_a_nested_schema_failure_is_422_with_its_path() {
    let rig = body_rig();
    let json = [("content-type", "application/json")];

    let r = rig.req(
        "POST",
        "/orders",
        &json,
        Some(b"{\"customer\": {\"id\": \"c1\"}, \"items\": [1, 2"),
    );
    let b = problem(&r, 400, "json_body", "malformed-json");
    println!("figure: malformed JSON: {}", r.body_str());
    assert!(b["line"].is_u64() && b["column"].is_u64());

    let r = rig.req(
        "POST",
        "/orders",
        &json,
        Some(b"{\"customer\": {\"id\": \"c\xff\xfe1\"}, \"items\": []}"),
    );
    let b = problem(&r, 400, "json_body", "malformed-json");
    assert!(
        b["detail"].as_str().unwrap().contains("not well-formed"),
        "{b}"
    );
    println!("figure: non-UTF-8 JSON: {}", r.body_str());

    let r = rig.req("POST", "/events", &json, Some(b"[1, 2,]"));
    problem(&r, 400, "json_body", "malformed-json");
    let r = rig.req("POST", "/events", &json, Some(b"[1, 2]"));
    assert_eq!(r.status, 200, "json_body: only well-formedness");

    let nested =
        br#"{"customer": {"id": "c1"}, "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 0}]}"#;
    let r = rig.req("POST", "/orders", &json, Some(nested));
    let b = problem(&r, 422, "json_schema", "schema-violation");
    assert_eq!(b["instance_path"], "/items/1/qty");
    assert_eq!(b["keyword"], "minimum");
    println!("figure: nested schema failure: {}", r.body_str());

    let r = rig.req(
        "POST",
        "/orders",
        &json,
        Some(br#"{"customer": {"id": "x9"}, "items": [{"sku": "a", "qty": 1}]}"#),
    );
    let b = problem(&r, 422, "json_schema", "schema-violation");
    assert_eq!(b["instance_path"], "/customer/id");

    // A 200 KB string that breaks its pattern, and a 100 KB property name: never echoed in full.
    let huge = format!(
        r#"{{"customer": {{"id": "{}"}}, "items": [{{"sku": "a", "qty": 1}}]}}"#,
        "z".repeat(200_000)
    );
    let r = rig.req("POST", "/orders", &json, Some(huge.as_bytes()));
    problem(&r, 422, "json_schema", "schema-violation");
    println!(
        "figure: a 200 KB offending value gives a {} B problem body",
        r.body.len()
    );
    assert!(r.body.len() < 1_000, "{}", r.body.len());
    let r = rig.req(
        "POST",
        "/events",
        &json,
        Some(format!(r#"{{"{}": 1}}"#, "k".repeat(900)).as_bytes()),
    );
    assert_eq!(r.status, 200);
    let long_id = format!(
        r#"{{"customer": {{"id": "{}"}}, "items": [{{"sku": "a", "qty": 1}}]}}"#,
        "z".repeat(100_000)
    );
    let r = rig.req("POST", "/orders", &json, Some(long_id.as_bytes()));
    problem(&r, 422, "json_schema", "schema-violation");
    assert!(r.body.len() < 1_000, "{}", r.body.len());

    // Draft 7 on another route: tuple `items` with `additionalItems: false`.
    let r = rig.req("POST", "/legacy", &json, Some(br#"["a", 1]"#));
    assert_eq!(r.status, 200, "{}", r.body_str());
    let r = rig.req("POST", "/legacy", &json, Some(br#"["a", 1, true]"#));
    let b = problem(&r, 422, "json_schema", "schema-violation");
    assert_eq!(b["keyword"], "additionalItems", "{b}");

    // A JSON Schema route takes JSON media types only, by default.
    let r = rig.req(
        "POST",
        "/orders",
        &[("content-type", "text/plain")],
        Some(nested),
    );
    problem(&r, 415, "content_types", "unsupported-media-type");
    let r = rig.req(
        "POST",
        "/orders",
        &[("content-type", "application/vnd.shop+json")],
        Some(nested),
    );
    problem(&r, 422, "json_schema", "schema-violation");

    let valid = br#"{"customer": {"id": "c1"}, "items": [{"sku": "a", "qty": 2}]}"#;
    let r = rig.req("POST", "/orders", &json, Some(valid));
    assert_eq!(r.status, 200);
    assert_eq!(
        rig.upstream.requests(),
        4,
        "only the 4 valid bodies reached the upstream"
    );
    rig.wait_stat("orders", "violations_json_schema", 5);
    assert_eq!(rig.stat("orders", "violations_json_body"), 2);
    rig.assert_no_vm_failure();
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

/// Two operations, as in the README: create a pet, fetch a pet.
const PETS_OPENAPI: &str = r##"{
    "openapi": "3.1.0",
    "info": {"title": "Pets", "version": "1.0.0"},
    "servers": [{"url": "https://pets.example.com/v1"}],
    "paths": {
        "/pets": {
            "post": {
                "parameters": [{"name": "idempotency-key", "in": "header", "required": true,
                                "schema": {"type": "string", "pattern": "^[0-9a-f-]{8,64}$"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewPet"}}}}
            }
        },
        "/pets/{petId}": {
            "get": {
                "parameters": [
                    {"name": "petId", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}},
                    {"name": "fields", "in": "query", "schema": {"type": "array", "items": {"type": "string", "enum": ["name", "tag"]}}}
                ]
            }
        }
    },
    "components": {
        "schemas": {
            "NewPet": {"type": "object", "required": ["name"], "additionalProperties": false,
                       "properties": {"name": {"type": "string", "minLength": 1}, "tag": {"type": ["string", "null"]},
                                      "vaccinations": {"type": "array", "items": {"type": "object", "required": ["date"],
                                                       "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}}}}}
        }
    }
}"##;

#[test]
fn an_openapi_document_with_two_operations_checks_paths_methods_parameters_media_types_and_bodies()
{
    let rig = rig_with(
        &format!(
            r#"{{"sync_interval": "50ms", "routes": [
                {{"name": "lenient", "match": {{"headers": [{{"name": "x-lenient", "value": "1"}}]}},
                  "openapi": {PETS_OPENAPI}, "openapi_unknown_operations": "pass"}},
                {{"name": "pets", "match": {{"prefix": "/v1"}}, "openapi": {PETS_OPENAPI}}}
            ]}}"#
        ),
        RigOptions::default(),
    );
    let json = ("content-type", "application/json");
    let rid = ("idempotency-key", "0a1b2c3d-4e5f");
    let mut passed = 0;

    assert_eq!(rig.get("/v1/pets/42").status, 200);
    assert_eq!(rig.get("/v1/pets/42?fields=name&fields=tag").status, 200);
    assert_eq!(
        rig.req("HEAD", "/v1/pets/42", &[], None).status,
        200,
        "HEAD rides on GET"
    );
    passed += 3;
    let r = rig.req(
        "POST",
        "/v1/pets",
        &[json, rid],
        Some(br#"{"name": "Rex", "tag": null}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    passed += 1;

    let r = rig.get("/v1/owners/7");
    let b = problem(&r, 404, "openapi_path", "unknown-path");
    println!("figure: OpenAPI 404: {}", r.body_str());
    assert!(b["detail"].as_str().unwrap().contains("/v1/owners/7"));
    let r = rig.req("DELETE", "/v1/pets/42", &[], None);
    problem(&r, 405, "openapi_method", "method-not-allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = rig.get("/v1/pets");
    problem(&r, 405, "openapi_method", "method-not-allowed");
    assert_eq!(r.header("allow"), Some("POST"));

    let r = rig.get("/v1/pets/0");
    let b = problem(&r, 400, "openapi_parameters", "invalid-parameter");
    assert_eq!(
        (b["parameter"].as_str(), b["in"].as_str()),
        (Some("petId"), Some("path"))
    );
    let r = rig.get("/v1/pets/abc");
    problem(&r, 400, "openapi_parameters", "invalid-parameter");
    let r = rig.get("/v1/pets/1?fields=owner");
    let b = problem(&r, 400, "openapi_parameters", "invalid-parameter");
    assert_eq!(b["in"], "query");
    let r = rig.req("POST", "/v1/pets", &[json], Some(br#"{"name": "Rex"}"#));
    let b = problem(&r, 400, "openapi_parameters", "invalid-parameter");
    assert_eq!(b["detail"], "Header \"idempotency-key\" is required.");

    let r = rig.req(
        "POST",
        "/v1/pets",
        &[rid, ("content-type", "text/plain")],
        Some(b"Rex"),
    );
    let b = problem(&r, 415, "openapi_content_type", "unsupported-media-type");
    assert_eq!(b["accepted"], serde_json::json!(["application/json"]));
    let r = rig.req("POST", "/v1/pets", &[rid], None);
    problem(&r, 400, "openapi_body_required", "missing-body");
    let r = rig.req(
        "POST",
        "/v1/pets",
        &[json, rid],
        Some(br#"{"name": "Rex", "vaccinations": [{"date": "2024-01-01"}, {"date": "soon"}]}"#),
    );
    let b = problem(&r, 422, "openapi_request_body", "schema-violation");
    assert_eq!(b["instance_path"], "/vaccinations/1/date");
    println!("figure: OpenAPI body failure: {}", r.body_str());
    let r = rig.req(
        "POST",
        "/v1/pets",
        &[json, rid],
        Some(br#"{"name": "Rex", "owner": "me"}"#),
    );
    let b = problem(&r, 422, "openapi_request_body", "schema-violation");
    assert_eq!(b["keyword"], "additionalProperties");
    let r = rig.req("POST", "/v1/pets", &[json, rid], Some(b"{\"name\": "));
    problem(&r, 400, "json_body", "malformed-json");

    // Configured to pass unknown operations through: only known ones are checked.
    let lenient = [("x-lenient", "1")];
    assert_eq!(rig.req("GET", "/v1/owners/7", &lenient, None).status, 200);
    assert_eq!(rig.req("DELETE", "/v1/pets/1", &lenient, None).status, 200);
    passed += 2;
    let r = rig.req("GET", "/v1/pets/0", &lenient, None);
    problem(&r, 400, "openapi_parameters", "invalid-parameter");

    assert_eq!(
        rig.upstream.requests(),
        passed,
        "rejected operations never reached the upstream"
    );
    rig.wait_stat("pets", "rejected", 12);
    assert_eq!(rig.stat("pets", "violations_openapi_path"), 1);
    assert_eq!(rig.stat("pets", "violations_openapi_method"), 2);
    assert_eq!(rig.stat("pets", "violations_openapi_parameters"), 4);
    assert_eq!(rig.stat("pets", "violations_openapi_request_body"), 2);
    rig.assert_no_vm_failure();
}

/// A listing whose `limit` is one integer and whose `tag` is a list, as an application reads them.
const LISTING_OPENAPI: &str = r##"{
    "openapi": "3.1.0",
    "info": {"title": "Pets", "version": "1.0.0"},
    "servers": [{"url": "/v1"}],
    "paths": {"/pets": {"get": {"parameters": [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
        {"name": "tag", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
        {"name": "x-tenant", "in": "header", "schema": {"type": "string"}}
    ]}}}
}"##;

#[test]
fn a_single_valued_parameter_sent_twice_is_refused_so_no_unchecked_value_reaches_the_application() {
    let rig = rig(&format!(
        r#"{{"sync_interval": "50ms", "routes": [
            {{"name": "pets", "match": {{"prefix": "/v1"}}, "openapi": {LISTING_OPENAPI}}}
        ]}}"#
    ));
    assert_eq!(rig.get("/v1/pets?limit=5").status, 200);
    assert_eq!(rig.get("/v1/pets?limit=5&tag=a&tag=b").status, 200);
    assert_eq!(
        rig.req("GET", "/v1/pets", &[("x-tenant", "acme")], None)
            .status,
        200
    );

    // A framework that reads the last `limit` would see 500; one that reads the first, 5.
    let r = rig.get("/v1/pets?limit=5&limit=500");
    problem(&r, 400, "openapi_parameters", "invalid-parameter");
    assert_eq!(
        r.body_str(),
        r#"{"type":"urn:resilience-pack:problem:invalid-parameter","title":"Missing or invalid parameter","status":400,"detail":"Query parameter \"limit\" is sent 2 times; the API declares a single value.","rule":"openapi_parameters","parameter":"limit","in":"query"}"#
    );
    println!("figure: repeated query parameter: {}", r.body_str());
    let r = rig.get("/v1/pets?limit=500&limit=5");
    problem(&r, 400, "openapi_parameters", "invalid-parameter");
    let r = rig.get("/v1/pets?limit=500");
    let b = problem(&r, 400, "openapi_parameters", "invalid-parameter");
    assert_eq!(b["keyword"], "maximum");

    // Envoy forwards both lines of a header it does not know; the application may read either.
    let r = rig.req(
        "GET",
        "/v1/pets",
        &[("x-tenant", "acme"), ("x-tenant", "other")],
        None,
    );
    let b = problem(&r, 400, "openapi_parameters", "invalid-parameter");
    assert_eq!(
        b["detail"],
        "Header \"x-tenant\" is sent 2 times; the API declares a single value."
    );

    assert_eq!(
        rig.upstream.requests(),
        3,
        "no request with a repeated single value reached the upstream"
    );
    rig.wait_stat("pets", "violations_openapi_parameters", 4);
    rig.assert_no_vm_failure();
}

// ---------------------------------------------------------------------------------------------
// Deadlines

/// Envoy strips `x-envoy-expected-rq-timeout-ms` (and other `x-envoy-*` headers) from requests
/// it does not consider internal; an Envoy behind another Envoy trusts its callers like this.
const INTERNAL_LOOPBACK: &str = "use_remote_address: true
internal_address_config:
  cidr_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }]
";

#[test]
fn a_deadline_too_short_for_the_route_is_refused_504_at_once() {
    let rig = rig_with(
        r#"{"sync_interval": "50ms", "min_remaining_deadline": "50ms", "deadline_header": "x-deadline-ms",
            "routes": [{"name": "slow", "match": {"prefix": "/slow"}, "deadline_from_observed_latency": true,
                        "deadline_min_samples": 10}]}"#,
        RigOptions {
            hcm_yaml: INTERNAL_LOOPBACK,
            ..RigOptions::default()
        },
    );
    rig.upstream.set_behavior(
        "/slow",
        Behavior::status(200).with_latency(Duration::from_millis(150)),
    );

    for (name, value) in [
        ("grpc-timeout", "20m"),
        ("x-envoy-expected-rq-timeout-ms", "30"),
        ("x-deadline-ms", "10"),
    ] {
        let started = Instant::now();
        let r = rig.req("GET", "/fast", &[(name, value)], None);
        let took = started.elapsed();
        let b = problem(&r, 504, "min_remaining_deadline", "deadline-too-short");
        assert_eq!(b["required_ms"], 50);
        assert!(took < Duration::from_millis(100), "{took:?}");
        if name == "grpc-timeout" {
            println!(
                "figure: grpc-timeout 20m refused in {took:?}: {}",
                r.body_str()
            );
        }
    }
    assert_eq!(
        rig.req("GET", "/fast", &[("grpc-timeout", "1S")], None)
            .status,
        200
    );
    assert_eq!(
        rig.req("GET", "/fast", &[("grpc-timeout", "bogus")], None)
            .status,
        200,
        "malformed is ignored"
    );
    assert_eq!(
        rig.get("/fast").status,
        200,
        "no deadline, nothing to refuse"
    );

    // Before enough samples, the observed latency does not refuse anything.
    assert_eq!(
        rig.req("GET", "/slow", &[("x-deadline-ms", "100")], None)
            .status,
        200
    );
    for _ in 0..12 {
        assert_eq!(rig.get("/slow").status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rig.upstream.requests();
    let started = Instant::now();
    let r = rig.req("GET", "/slow", &[("x-deadline-ms", "100")], None);
    let took = started.elapsed();
    let b = problem(
        &r,
        504,
        "deadline_from_observed_latency",
        "deadline-too-short",
    );
    let observed = b["observed_ms"].as_u64().unwrap();
    assert!(
        (140..=175).contains(&observed),
        "observed median {observed} ms"
    );
    println!(
        "figure: /slow (upstream 150 ms): a 100 ms deadline refused in {took:?} against an observed median of {observed} ms"
    );
    assert_eq!(
        rig.upstream.requests(),
        before,
        "the doomed request never reached the upstream"
    );
    assert_eq!(
        rig.req("GET", "/slow", &[("x-deadline-ms", "400")], None)
            .status,
        200
    );
    rig.wait_stat("slow", "violations_deadline_from_observed_latency", 1);
    // Another key's count may sit on the other worker until its tick.
    assert_eq!(
        rig.wait_stat("default", "violations_min_remaining_deadline", 3),
        3
    );
}

// ---------------------------------------------------------------------------------------------
// Load shedding

/// The most requests of `log` in flight at once at the upstream, each lasting `latency`.
fn max_overlap(arrivals: &[Instant], latency: Duration) -> usize {
    let mut events: Vec<(Instant, i32)> = Vec::new();
    for a in arrivals {
        events.push((*a, 1));
        events.push((*a + latency, -1));
    }
    events.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(&y.1)));
    let mut cur = 0i32;
    let mut max = 0i32;
    for (_, d) in events {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}

#[test]
fn at_saturation_excess_is_shed_across_workers_while_health_checks_keep_passing() {
    let rig = rig_with(
        r#"{"sync_interval": "50ms",
            "health_checks": {"paths": ["/healthz"], "headers": [{"name": "user-agent", "prefix": "kube-probe/"}]},
            "routes": [{"name": "work", "match": {"prefix": "/work"}, "max_concurrent_requests": 8}]}"#,
        RigOptions {
            concurrency: 4,
            ..RigOptions::default()
        },
    );
    let latency = Duration::from_millis(300);
    rig.upstream
        .set_behavior("/work", Behavior::status(200).with_latency(latency));
    let port = rig.port;

    let done = Arc::new(AtomicU64::new(0));
    let hc_done = Arc::clone(&done);
    let health = std::thread::spawn(move || {
        let mut results = Vec::new();
        while hc_done.load(Ordering::SeqCst) == 0 {
            let started = Instant::now();
            let a = get(port, "/healthz").map(|r| r.status).unwrap_or(0);
            let b = request(
                port,
                "GET",
                "/work/probe",
                &[("user-agent", "kube-probe/1.31")],
                None,
            )
            .map(|r| r.status)
            .unwrap_or(0);
            results.push((a, b, started.elapsed()));
            std::thread::sleep(Duration::from_millis(20));
        }
        results
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let until = started + Duration::from_secs(2);
    let results: Vec<(u16, Option<String>, Option<String>, Duration)> =
        std::thread::scope(|scope| {
            let clients: Vec<_> = (0..32)
                .map(|t| {
                    scope.spawn(move || {
                        let mut out = Vec::new();
                        let mut i = 0;
                        while Instant::now() < until {
                            let r = get(port, &format!("/work/{t}-{i}")).unwrap();
                            i += 1;
                            if r.status != 200 {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            out.push((
                                r.status,
                                r.header(HEADER).map(str::to_owned),
                                r.header("retry-after").map(str::to_owned),
                                r.elapsed,
                            ));
                        }
                        out
                    })
                })
                .collect();
            clients
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect()
        });
    let wall = started.elapsed();
    done.store(1, Ordering::SeqCst);
    let health = health.join().unwrap();

    let admitted = results.iter().filter(|r| r.0 == 200).count();
    let shed: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(admitted + shed.len(), results.len(), "only 200s and 503s");
    for s in &shed {
        assert_eq!(
            s.1.as_deref(),
            Some("rejected; reason=max_concurrent_requests")
        );
        assert_eq!(s.2.as_deref(), Some("1"));
    }
    let slowest_shed = shed.iter().map(|s| s.3).max().unwrap_or_default();
    let arrivals: Vec<Instant> = rig
        .upstream
        .log()
        .iter()
        .filter(|r| r.path.starts_with("/work/") && r.path != "/work/probe")
        .map(|r| r.at)
        .collect();
    assert_eq!(arrivals.len(), admitted);
    let overlap = max_overlap(&arrivals, latency);
    let hc_ok = health
        .iter()
        .filter(|(a, b, _)| *a == 200 && *b == 200)
        .count();
    let hc_slowest = health.iter().map(|h| h.2).max().unwrap_or_default();
    println!(
        "figure: shedding, limit 8, 4 workers, 32 clients looping for {wall:?} on a 300 ms upstream: {} requests, {admitted} admitted, {} shed (503, retry-after 1, slowest shed answer {slowest_shed:?}); at most {overlap} in flight at the upstream",
        results.len(),
        shed.len()
    );
    println!(
        "figure: health checks during saturation: {hc_ok}/{} rounds passed (/healthz and a kube-probe request to /work), slowest round {hc_slowest:?}",
        health.len()
    );
    assert!(
        overlap <= 8,
        "at most the limit in flight at the upstream, got {overlap}"
    );
    assert!(admitted >= 8 && !shed.is_empty());
    assert!(health.len() >= 5 && hc_ok == health.len(), "{health:?}");
    assert!(
        slowest_shed < Duration::from_millis(300),
        "shedding answers before the upstream could: {slowest_shed:?}"
    );

    // Every permit came back: the gauge reads 0 and a burst of 8 is admitted whole.
    rig.envoy
        .wait_stat(
            &format!("{PREFIX}.work.violations_max_concurrent_requests"),
            shed.len() as u64,
            Duration::from_secs(5),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rig.stat("work", "in_flight"), 0);
    let burst = parallel(8, 8, |i| {
        get(port, &format!("/work/again-{i}")).unwrap().status
    });
    assert!(burst.iter().all(|s| *s == 200), "{burst:?}");
    assert!(rig.envoy.stat(&format!("{PREFIX}.health_checks")) >= 2 * health.len() as u64 - 2);
    rig.assert_no_vm_failure();
}

#[test]
fn permits_come_back_when_clients_go_away_mid_request() {
    let rig = rig(
        r#"{"sync_interval": "50ms", "routes": [{"name": "work", "match": {"prefix": "/work"}, "max_concurrent_requests": 2}]}"#,
    );
    rig.upstream.set_behavior("/work", Behavior::hang());
    let mut held = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", rig.port)).unwrap();
        s.write_all(format!("GET /work/{i} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes())
            .unwrap();
        held.push(s);
    }
    rig.upstream
        .wait_for_requests(2, Duration::from_secs(5))
        .unwrap();
    let r = rig.get("/work/third");
    problem(&r, 503, "max_concurrent_requests", "overloaded");
    // The clients vanish (reset); Envoy resets the upstream streams and ends them: on_log runs.
    for s in held {
        let _ = s.shutdown(Shutdown::Both);
    }
    std::thread::sleep(Duration::from_millis(300));
    rig.upstream.set_behavior("/work", Behavior::status(200));
    let port = rig.port;
    let statuses = parallel(2, 2, |i| {
        get(port, &format!("/work/after-{i}")).unwrap().status
    });
    assert_eq!(statuses, vec![200, 200], "both permits came back");
    rig.wait_stat("work", "violations_max_concurrent_requests", 1);
}

#[test]
fn low_priority_classes_are_shed_first() {
    let rig = rig(
        r#"{"sync_interval": "50ms", "routes": [{"name": "work", "match": {"prefix": "/work"},
            "max_concurrent_requests": 10, "shed_retry_after": "2s",
            "priority": {"header": "x-priority", "shares": {"batch": 50, "critical": 100}, "default_share": 80}}]}"#,
    );
    rig.upstream.set_behavior(
        "/work",
        Behavior::status(200).with_latency(Duration::from_millis(1_500)),
    );
    let port = rig.port;
    let background = std::thread::spawn(move || {
        parallel(5, 5, |i| {
            request(
                port,
                "GET",
                &format!("/work/critical-{i}"),
                &[("x-priority", "critical")],
                None,
            )
            .unwrap()
            .status
        })
    });
    rig.upstream
        .wait_for_requests(5, Duration::from_secs(5))
        .unwrap();
    let batch = rig.req("GET", "/work/batch", &[("x-priority", "batch")], None);
    let b = problem(&batch, 503, "max_concurrent_requests", "overloaded");
    assert_eq!(b["limit"], 5, "batch may fill 50% of 10");
    assert_eq!(batch.header("retry-after"), Some("2"));
    let port2 = rig.port;
    let more = std::thread::spawn(move || {
        parallel(3, 3, |i| {
            request(port2, "GET", &format!("/work/default-{i}"), &[], None)
                .unwrap()
                .status
        })
    });
    rig.upstream
        .wait_for_requests(8, Duration::from_secs(5))
        .unwrap();
    let default_class = rig.get("/work/default-extra");
    let b = problem(&default_class, 503, "max_concurrent_requests", "overloaded");
    assert_eq!(b["limit"], 8, "the default class may fill 80%");
    let critical = rig.req(
        "GET",
        "/work/critical-late",
        &[("x-priority", "critical")],
        None,
    );
    assert_eq!(critical.status, 200, "critical still fits: 9 of 10");
    println!("figure: priority classes at limit 10: batch shed at 5 in flight, default at 8, critical admitted as the 9th");
    assert!(background.join().unwrap().iter().all(|s| *s == 200));
    assert!(more.join().unwrap().iter().all(|s| *s == 200));
}

// ---------------------------------------------------------------------------------------------
// Dry run

#[test]
fn dry_run_counts_and_marks_what_it_would_reject_but_changes_nothing() {
    let rig = rig(&format!(
        r#"{{"sync_interval": "50ms", "mode": "dry_run", "allowed_methods": ["GET"],
            "routes": [{{"name": "orders", "match": {{"prefix": "/orders"}}, "allowed_methods": ["POST"],
                         "json_schema": {ORDER_SCHEMA}, "max_concurrent_requests": 1}}]}}"#
    ));
    let r = rig.req("DELETE", "/x", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header(HEADER),
        Some("dry_run; would_reject=allowed_methods")
    );
    assert_eq!(r.header("allow"), None);

    let bad = br#"{"customer": {"id": "c1"}, "items": [{"sku": "a", "qty": 0}]}"#;
    let r = rig.req(
        "POST",
        "/orders",
        &[("content-type", "application/json")],
        Some(bad),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.header(HEADER), Some("dry_run; would_reject=json_schema"));
    assert_eq!(
        rig.upstream.log().last().unwrap().body,
        bad.to_vec(),
        "the body went through unchanged"
    );

    let malformed = b"{\"customer\": ";
    let r = rig.req(
        "POST",
        "/orders",
        &[("content-type", "application/json")],
        Some(malformed),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header(HEADER), Some("dry_run; would_reject=json_body"));

    rig.upstream.set_behavior(
        "/orders/slow",
        Behavior::status(200).with_latency(Duration::from_millis(500)),
    );
    let port = rig.port;
    let statuses = parallel(4, 4, |_| {
        let r = request(
            port,
            "POST",
            "/orders/slow",
            &[("content-type", "application/json")],
            Some(br#"{"customer": {"id": "c1"}, "items": [{"sku": "a", "qty": 1}]}"#),
        )
        .unwrap();
        (r.status, r.header(HEADER).map(str::to_owned))
    });
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
    let would_shed = statuses
        .iter()
        .filter(|(_, h)| h.as_deref() == Some("dry_run; would_reject=max_concurrent_requests"))
        .count();
    println!("figure: dry run: 4 concurrent requests over a limit of 1: all 4 passed, {would_shed} marked would_reject=max_concurrent_requests");
    assert!(would_shed >= 1);
    assert_eq!(
        rig.upstream.requests(),
        7,
        "every request reached the upstream"
    );
    rig.wait_stat("orders", "dry_run_would_reject", 2 + would_shed as u64);
    // Another key's count may sit on the other worker until its tick.
    assert_eq!(rig.wait_stat("default", "dry_run_would_reject", 1), 1);
    assert_eq!(rig.stat("orders", "rejected"), 0);
    assert_eq!(rig.stat("default", "rejected"), 0);
    assert_eq!(rig.stat("orders", "violations_json_schema"), 1);
}

// ---------------------------------------------------------------------------------------------
// Holding the headers too

/// A bare upstream that counts connections and bytes and answers each complete request 200.
struct CountingUpstream {
    port: u16,
    connections: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl CountingUpstream {
    fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, bytes, requests) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (c, b, r) = (
            Arc::clone(&connections),
            Arc::clone(&bytes),
            Arc::clone(&requests),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let (b, r) = (Arc::clone(&b), Arc::clone(&r));
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    loop {
                        let mut len = 0usize;
                        loop {
                            let mut line = String::new();
                            match reader.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => b.fetch_add(n as u64, Ordering::SeqCst),
                            };
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; len];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        b.fetch_add(len as u64, Ordering::SeqCst);
                        r.fetch_add(1, Ordering::SeqCst);
                        if writer
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        CountingUpstream {
            port,
            connections,
            bytes,
            requests,
        }
    }

    fn counts(&self) -> (u64, u64, u64) {
        (
            self.connections.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
            self.requests.load(Ordering::SeqCst),
        )
    }
}

fn envoy_in_front_of(port_upstream: u16, json: &str, plugin_yaml: &str) -> (Envoy, u16) {
    let port = free_port();
    let config = ProxyConfig::new(port, free_port())
        .with_http_filters(&validator_filter(json, plugin_yaml))
        .route(RouteSpec::new("default", "/", "upstream").with_timeout(Duration::from_secs(10)))
        .cluster(ClusterSpec::new("upstream", &[port_upstream]))
        .render();
    let envoy = Envoy::start(&config, &EnvoyOptions::default()).expect("envoy starts");
    envoy.wait_listener(port).unwrap();
    (envoy, port)
}

const HOLD_JSON: &str = r#"{"sync_interval": "50ms", "hold_headers_for_body_checks": HOLD,
    "json_schema": {"type": "object", "required": ["name"]}}"#;

/// A JSON POST sent as head, then the body in two pieces 100 ms apart.
fn slow_json_post(port: u16, body: &[u8]) -> (String, Duration) {
    let head = format!(
        "POST /things HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let (a, b) = body.split_at(body.len() / 2);
    raw_exchange(
        port,
        head.as_bytes(),
        &[
            (a, Duration::from_millis(100)),
            (b, Duration::from_millis(100)),
        ],
    )
}

#[test]
fn holding_the_headers_keeps_a_rejected_body_entirely_away_from_the_upstream() {
    // Default: the headers go ahead while the body is held; a rejected body never completes.
    let plain = CountingUpstream::start();
    let (_envoy, port) = envoy_in_front_of(plain.port, &HOLD_JSON.replace("HOLD", "false"), "");
    let (raw, _) = slow_json_post(port, br#"{"nope": 1}"#);
    assert_eq!(status_of(&raw), 422, "{raw}");
    std::thread::sleep(Duration::from_millis(200));
    let (conns, bytes, requests) = plain.counts();
    println!("figure: default mode, rejected body: the upstream saw {conns} connection(s), {bytes} header bytes, {requests} complete requests");
    assert_eq!(requests, 0);

    // Held: with Envoy's allow_on_headers_stop_iteration, nothing reaches the upstream at all.
    let held = CountingUpstream::start();
    let (envoy, port) = envoy_in_front_of(
        held.port,
        &HOLD_JSON.replace("HOLD", "true"),
        "allow_on_headers_stop_iteration: true",
    );
    let (raw, _) = slow_json_post(port, br#"{"nope": 1}"#);
    assert_eq!(status_of(&raw), 422, "{raw}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(held.counts(), (0, 0, 0), "not a connection, not a byte");
    let (raw, took) = slow_json_post(port, br#"{"name": "ok"}"#);
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(held.counts().2, 1, "a valid body goes through whole");
    println!("figure: hold mode: rejected body -> upstream saw (0 connections, 0 bytes); valid body forwarded whole, answered after {took:?}");
    assert_eq!(envoy.stat(&format!("{PREFIX}.hold_fallbacks")), 0);

    // Held without Envoy's flag: Envoy would never call the body callbacks; the tick resumes the
    // request after 1 s and the body is checked the ordinary way.
    let fallback = CountingUpstream::start();
    let (envoy, port) = envoy_in_front_of(fallback.port, &HOLD_JSON.replace("HOLD", "true"), "");
    let (raw, took) = slow_json_post(port, br#"{"name": "ok"}"#);
    assert_eq!(status_of(&raw), 200, "{raw}");
    let (raw, _) = slow_json_post(port, br#"{"nope": 1}"#);
    assert_eq!(status_of(&raw), 422, "{raw}");
    envoy
        .wait_stat(
            &format!("{PREFIX}.hold_fallbacks"),
            1,
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(envoy
        .log()
        .contains("set allow_on_headers_stop_iteration: true"));
    println!("figure: hold mode without allow_on_headers_stop_iteration: resumed by the tick, answered after {took:?}; counted in hold_fallbacks and logged once");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn invalid_config_makes_envoy_refuse_the_filter_with_the_field_named() {
    let upstream = Upstream::start().unwrap();
    for (json, expected) in [
        (
            r#"{"routes": [{"name": "orders", "match": {"prefix": "/orders"}, "json_schema": {"type": "object", "properties": {"qty": {"type": "integer", "minimum": "one"}}}}]}"#,
            "routes[0].json_schema.properties.qty.minimum: is not a valid JSON Schema",
        ),
        (
            r#"{"json_schema": {"properties": {"code": {"type": "string", "pattern": "([A-Z]"}}}}"#,
            "json_schema.properties.code.pattern: is not a valid JSON Schema: '([A-Z]' is not valid regex: regex parse error: ([A-Z] ^ error: unclosed group",
        ),
        (
            r#"{"required_headers": [{"name": "x-api-key", "pattern": "[a-z"}]}"#,
            "required_headers[0].pattern: is not a valid regular expression (\"[a-z\"): unclosed character class",
        ),
        (r#"{"max_body_size": 1024}"#, r#"max_body_size: unknown field "max_body_size""#),
        (
            r#"{"openapi": {"openapi": "3.1.0", "paths": {"/pets": {"get": {"parameters": [{"name": "limit", "in": "body"}]}}}}}"#,
            r#"openapi.paths["/pets"].get.parameters[0].in: must be one of "path", "query", "header", "cookie""#,
        ),
        (
            r#"{"priority": {"header": "x-priority"}}"#,
            "priority: needs max_concurrent_requests",
        ),
    ] {
        let filter = validator_filter(json, "");
        let config = ProxyConfig::new(free_port(), free_port())
            .with_http_filters(&filter)
            .route(RouteSpec::new("default", "/", "upstream"))
            .cluster(ClusterSpec::new("upstream", &[upstream.port()]))
            .render();
        let log = harness::envoy::start_expect_failure(&config, &EnvoyOptions::default())
            .expect("envoy refuses the config");
        let line = log
            .lines()
            .find(|l| l.contains("request_validator: invalid configuration"))
            .unwrap_or_else(|| panic!("no config error line for {json}:\n{log}"));
        assert!(line.contains(&format!("request_validator: invalid configuration: {expected}")), "{line}");
        let shown = line.split("request_validator: invalid configuration: ").nth(1).unwrap_or(line);
        println!("figure: refused: {shown}");
    }
}

#[test]
fn hostile_input_never_traps_the_vm() {
    let rig = rig(&format!(
        r#"{{"sync_interval": "50ms",
            "required_headers": [{{"name": "x-api-key", "required": false, "pattern": "^[a-z0-9]+$"}}],
            "query_params": [{{"name": "q", "pattern": "^[a-z]*$"}}, {{"name": "n", "integer": {{"min": 0, "max": 9}}}}],
            "health_checks": {{"headers": [{{"name": "x-hc", "value": "yes"}}]}},
            "routes": [{{"name": "orders", "match": {{"prefix": "/orders"}}, "json_schema": {ORDER_SCHEMA},
                         "min_remaining_deadline": "10ms", "max_concurrent_requests": 100}}]}}"#
    ));
    let send = |raw: &[u8]| status_of(&raw_exchange(rig.port, raw, &[]).0);
    assert_eq!(
        send(b"GET /x HTTP/1.1\r\nhost: a\r\nx-api-key: \xff\xfe\x80\r\nconnection: close\r\n\r\n"),
        400
    );
    assert_eq!(
        send(b"GET /x HTTP/1.1\r\nhost: a\r\nx-hc: \xff\r\nconnection: close\r\n\r\n"),
        200
    );
    assert_eq!(
        send(b"GET /x?q=%ff%00%zz&n=%2D1 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"),
        400
    );
    let many = (0..4000)
        .map(|i| format!("p{i}=%%"))
        .collect::<Vec<_>>()
        .join("&");
    let r = rig.get(&format!("/x?{many}&n=99999999999999999999999"));
    assert_eq!(r.status, 400);
    let r = rig.req("GET", "/x", &[("x-api-key", &"a".repeat(50_000))], None);
    assert_eq!(r.status, 200, "a long but valid value");
    for deadline in ["99999999H", "-5m", "1.5S", "\u{7f}"] {
        assert_ne!(
            rig.req("GET", "/orders", &[("grpc-timeout", deadline)], None)
                .status,
            0
        );
    }
    let json = [("content-type", "application/json")];
    let deep = "[".repeat(100_000);
    let r = rig.req("POST", "/orders", &json, Some(deep.as_bytes()));
    problem(&r, 400, "json_body", "malformed-json");
    let r = rig.req(
        "POST",
        "/orders",
        &json,
        Some(br#"{"customer": {"id": "\ud800"}}"#),
    );
    problem(&r, 400, "json_body", "malformed-json");
    let r = rig.req("POST", "/orders", &json, Some(b""));
    assert_eq!(
        r.status, 200,
        "no body: nothing to check (OpenAPI's requestBody.required says when one is needed)"
    );
    assert_eq!(
        send(b"POST /orders HTTP/1.1\r\nhost: a\r\ncontent-type: application/json; charset=\xff\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"),
        422
    );
    let r = rig.req("POST", "/orders", &[("content-type", ";;;/")], Some(b"{}"));
    problem(&r, 415, "content_types", "unsupported-media-type");
    // The VM is alive and still deciding.
    assert_eq!(rig.get("/x?q=abc&n=3").status, 200);
    let ok = br#"{"customer": {"id": "c1"}, "items": [{"sku": "a", "qty": 1}]}"#;
    assert_eq!(rig.req("POST", "/orders", &json, Some(ok)).status, 200);
    rig.assert_no_vm_failure();
}

fn run_shipped(name: &str) -> (Envoy, Upstream, u16) {
    let upstream = Upstream::start().unwrap();
    let (envoy, listener) = harness::shipped::start(name, upstream.port()).unwrap();
    (envoy, upstream, listener)
}

#[test]
fn the_shipped_envoy_configs_validate_run_and_read_well_in_prometheus() {
    let (envoy, upstream, port) = run_shipped("request-validator.yaml");
    let json = ("content-type", "application/json");
    assert_eq!(get(port, "/api/hello").unwrap().status, 200);
    let r = request(
        port,
        "POST",
        "/api/orders",
        &[json],
        Some(br#"{"customer": {"id": "c1"}, "items": []}"#),
    )
    .unwrap();
    assert_eq!(r.status, 422, "{}", r.body_str());
    let r = request(
        port,
        "POST",
        "/api/orders",
        &[json],
        Some(br#"{"customer": {"id": "c1"}, "items": [{"sku": "a", "qty": 1}]}"#),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        get(port, "/api/search?q=shoes&limit=500").unwrap().status,
        400
    );
    assert_eq!(
        get(port, "/api/search?q=shoes&limit=5").unwrap().status,
        200
    );
    assert_eq!(
        request(port, "DELETE", "/api/orders/1", &[], None)
            .unwrap()
            .status,
        405
    );
    upstream.set_behavior(
        "/slow",
        Behavior::status(200).with_latency(Duration::from_millis(800)),
    );
    let statuses = parallel(12, 12, |_| get(port, "/slow").unwrap().status);
    let shed = statuses.iter().filter(|s| **s == 503).count();
    assert!(shed >= 6, "/slow admits 4 at a time: {statuses:?}");
    assert_eq!(get(port, "/healthz").unwrap().status, 200);
    envoy
        .wait_stat(
            &format!("{PREFIX}.slow.violations_max_concurrent_requests"),
            1,
            Duration::from_secs(5),
        )
        .unwrap();
    let prom = envoy.prometheus();
    let lines: Vec<&str> = prom
        .lines()
        .filter(|l| l.starts_with("request_validator_"))
        .collect();
    println!(
        "figure: prometheus sample:\n{}",
        lines
            .iter()
            .filter(|l| !l.ends_with(" 0"))
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                .starts_with("request_validator_violations_json_schema{route_key=\"orders\"} 1")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l
        .starts_with("request_validator_violations_max_concurrent_requests{route_key=\"slow\"}")));
    drop(envoy);

    let (_envoy, _upstream, port) = run_shipped("request-validator-openapi.yaml");
    assert_eq!(get(port, "/v1/pets/7").unwrap().status, 200);
    assert_eq!(get(port, "/v1/pets/x").unwrap().status, 400);
    assert_eq!(get(port, "/v1/owners").unwrap().status, 404);
    assert_eq!(get(port, "/v1/pets?limit=5").unwrap().status, 200);
    let r = get(port, "/v1/pets?limit=5&limit=500").unwrap();
    assert_eq!(r.status, 400, "{}", r.body_str());
    assert!(
        r.body_str()
            .contains(r#""rule":"openapi_parameters","parameter":"limit","in":"query""#),
        "{}",
        r.body_str()
    );
    let r = request(
        port,
        "POST",
        "/v1/pets",
        &[json, ("idempotency-key", "0123456789ab")],
        Some(br#"{"name": ""}"#),
    )
    .unwrap();
    assert_eq!(r.status, 422, "{}", r.body_str());
}

// ---------------------------------------------------------------------------------------------
// Cost

/// Envoy's CPU time so far (user + system), from `/proc/<pid>/stat`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are 12th and 13th after the command name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Sends `n` requests on one keep-alive connection and checks each answer is `status`.
fn keep_alive_requests(port: u16, request: &[u8], n: usize, status: u16) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let wanted = format!(" {status} ");
    for _ in 0..n {
        writer.write_all(request).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains(&wanted), "{line}");
        let mut len = 0usize;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
    }
}

struct Measured {
    label: String,
    envoy: Envoy,
    port: u16,
    request: Vec<u8>,
    n: usize,
    samples: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A measurement, not a check: it asserts nothing and takes a minute of both cores, so the suite
/// leaves it out (`cargo pack bench` is where cost is measured). Run it with `cargo test -p harness
/// --test request_validator -- --ignored --nocapture validator_cost`.
#[test]
#[ignore = "a measurement that asserts nothing; run with --ignored"]
fn validator_cost_on_the_healthy_path_and_per_body_size_against_bare_envoy() {
    let upstream = Upstream::start().unwrap();
    let start = |filters: &str| {
        let port = free_port();
        let config = ProxyConfig::new(port, free_port())
            .with_http_filters(filters)
            .route(RouteSpec::new("default", "/", "upstream").with_timeout(Duration::from_secs(10)))
            .cluster(ClusterSpec::new("upstream", &[upstream.port()]))
            .render();
        let envoy = Envoy::start(&config, &EnvoyOptions::default()).unwrap();
        envoy.wait_listener(port).unwrap();
        (envoy, port)
    };
    let healthy = r#"{"health_checks": {"paths": ["/healthz"]},
        "allowed_methods": ["GET", "POST"], "max_path_bytes": 2048, "max_header_count": 64,
        "max_header_bytes": 16384, "max_body_bytes": 1048576, "min_remaining_deadline": "20ms",
        "required_headers": [{"name": "x-api-key", "pattern": "^[A-Za-z0-9]{8,64}$"}],
        "query_params": [{"name": "limit", "integer": {"min": 1, "max": 100}}],
        "content_types": ["application/json"]}"#;
    let shedding = healthy.replace(
        r#""health_checks""#,
        r#""max_concurrent_requests": 1000, "health_checks""#,
    );
    let schema = format!(
        r#"{{"allowed_methods": ["POST"], "required_headers": [{{"name": "x-api-key", "pattern": "^[A-Za-z0-9]{{8,64}}$"}}],
            "max_body_bytes": 1048576, "json_schema": {ORDER_SCHEMA}}}"#
    );
    let get_req = b"GET /items?limit=10 HTTP/1.1\r\nhost: a\r\nx-api-key: abcd1234efgh\r\naccept: */*\r\nuser-agent: bench\r\n\r\n".to_vec();
    let post = |body: &[u8]| {
        let mut r = format!(
            "POST /orders HTTP/1.1\r\nhost: a\r\nx-api-key: abcd1234efgh\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let mut set: Vec<Measured> = Vec::new();
    let mut add = |label: &str, filters: String, request: Vec<u8>, n: usize| {
        let (envoy, port) = start(&filters);
        set.push(Measured {
            label: label.to_owned(),
            envoy,
            port,
            request,
            n,
            samples: Vec::new(),
        });
    };
    add("bare GET", String::new(), get_req.clone(), 3000);
    add(
        "validator GET (head rules)",
        validator_filter(healthy, ""),
        get_req.clone(),
        2000,
    );
    add(
        "validator GET (empty config: no rule)",
        validator_filter("{}", ""),
        get_req.clone(),
        2000,
    );
    add(
        "validator GET + shedding (2 CAS)",
        validator_filter(&shedding, ""),
        get_req.clone(),
        2000,
    );
    let sizes = [("1 KB", 30usize), ("16 KB", 520), ("256 KB", 8_500)];
    for (name, items) in sizes {
        let body = order(items, 0);
        let n = if items > 1000 { 150 } else { 800 };
        add(
            &format!("bare POST {name} ({} B)", body.len()),
            String::new(),
            post(&body),
            n,
        );
        add(
            &format!("validator POST {name} JSON Schema"),
            validator_filter(&schema, ""),
            post(&body),
            n,
        );
    }
    let tck = clock_ticks_per_second() as f64;
    // Warm up each, then interleave rounds so drift in the shared machine hits all alike.
    for m in &set {
        keep_alive_requests(m.port, &m.request, 100, 200);
    }
    for _round in 0..7 {
        for m in set.iter_mut() {
            let pid = m.envoy.pid();
            let before = cpu_ticks(pid);
            keep_alive_requests(m.port, &m.request, m.n, 200);
            let used = cpu_ticks(pid).saturating_sub(before) as f64 / tck;
            m.samples.push(used * 1e6 / m.n as f64);
        }
    }
    for (i, m) in set.iter().enumerate() {
        let med = median(&m.samples);
        let all: Vec<String> = m.samples.iter().map(|s| format!("{s:.0}")).collect();
        if m.label.starts_with("bare") {
            println!(
                "figure: Envoy CPU per request, {}: {med:.0} µs; rounds [{}] µs",
                m.label,
                all.join(", ")
            );
            continue;
        }
        // Paired with the bare Envoy of the same round: drift on the shared machine cancels out.
        let reference = if m.label.starts_with("validator POST") {
            i - 1
        } else {
            0
        };
        let deltas: Vec<f64> = m
            .samples
            .iter()
            .zip(&set[reference].samples)
            .map(|(a, b)| a - b)
            .collect();
        println!(
            "figure: Envoy CPU per request, {}: {med:.0} µs, {:+.0} µs over bare Envoy (median of paired rounds); rounds [{}] µs",
            m.label,
            median(&deltas),
            all.join(", ")
        );
    }
    let wasm = filter_wasm("request-validator").unwrap();
    let size = std::fs::metadata(&wasm).unwrap().len();
    println!(
        "figure: request_validator.wasm is {size} B; Envoy (--concurrency 2) became ready in {:?} with it, {:?} without",
        set[1].envoy.startup_time(),
        set[0].envoy.startup_time()
    );
}
