//! Scenario: a flood of garbage requests takes the capacity that good requests need.
//!
//! An API service has a fixed number of workers, and it cannot tell a bad request from a good one
//! until it has done the work: it parses the body, authenticates, looks things up, and only then
//! finds the JSON truncated, the quantity zero, the parameter out of range, or the caller's
//! deadline long gone. A broken client release, a misconfigured integration or a scraper starts
//! sending as many such requests as the service gets good ones. Every one of them holds a worker
//! as long as a good request would, so the service is pushed past its capacity by requests that
//! could never succeed: good requests queue behind garbage, their latency climbs to the callers'
//! timeout, health checks queue too (an orchestrator would restart a healthy instance), and the
//! backlog outlives the flood. The fast-fail validator checks each request at the edge with cheap,
//! strict rules and answers garbage at once with the status its rule prescribes, so the service
//! only ever sees requests it can serve. Its dry run lets everything through and counts what it
//! would reject, which is how it is rolled out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::load::{self, LoadSpec, MixRequest, Sample};
use super::report::{Criterion, Figure, ScenarioReport, Variant};
use super::series::{self, between, Series, Summary};
use super::svg::Chart;
use super::{Progress, Scale};
use crate::envoy::{free_port, Envoy, EnvoyOptions};
use crate::upstream::{Behavior, Upstream, LOG_CAPACITY};
use crate::{ClusterSpec, ProxyConfig, RouteSpec};

/// Requests the application serves at once.
const CAPACITY: usize = 4;
/// The work of one request, good or bad: the application finds a bad one out only after it.
const SERVICE_MS: u64 = 20;
/// What the application can serve per second: `CAPACITY` × 1000 / `SERVICE_MS`.
const CAPACITY_RPS: f64 = CAPACITY as f64 * 1000.0 / SERVICE_MS as f64;
/// Good traffic, in percent of capacity, all the time.
const GOOD_PERCENT: f64 = 60.0;
/// During the flood, garbage requests per good request: 1 makes half of all requests garbage,
/// and the application's load 2 × `GOOD_PERCENT` = 120% of its capacity.
const GARBAGE_PER_GOOD: f64 = 1.0;
/// Health checks per second (kubelet-style probes on `/healthz`).
const HEALTH_RPS: f64 = 10.0;
/// Each client sends one request per second, so a request that takes up to the route timeout
/// does not make its client fall behind: offered load stays what the timeline says.
const RPS_PER_CLIENT: f64 = 1.0;
/// The callers' patience: Envoy answers 504 after this, and the application, which cannot tell,
/// still serves the abandoned request when its turn comes.
const ROUTE_TIMEOUT_MS: u64 = 1_000;
const BUCKET_MS: u64 = 500;
/// Seeds the order of the request mixes: every variant sends exactly the same requests.
const SEED: u64 = 0x0067_6172_6261_6765;
/// Every request carries its kind, so that what reached the application can be told apart.
const KIND_HEADER: &str = "x-lab-kind";
const DECISION_HEADER: &str = "x-resilience-request-validator";
/// Copies of each kind in a mix (the mix is shuffled, then cycled through by the clients).
const COPIES: usize = 4;

struct Timeline {
    flood_ms: u64,
    calm_ms: u64,
    total_ms: u64,
}

fn timeline(scale: Scale) -> Timeline {
    match scale {
        Scale::Quick => Timeline {
            flood_ms: 1_000,
            calm_ms: 3_500,
            total_ms: 4_500,
        },
        Scale::Full => Timeline {
            flood_ms: 4_000,
            calm_ms: 14_000,
            total_ms: 24_000,
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protection {
    None,
    DryRun,
    Validator,
}

impl Protection {
    fn name(self) -> &'static str {
        match self {
            Protection::None => "no protection",
            Protection::DryRun => "validator dry run",
            Protection::Validator => "validator (pack)",
        }
    }
}

const VARIANTS: [Protection; 3] = [Protection::None, Protection::DryRun, Protection::Validator];

/// What a request is: three kinds of good request, and nine kinds of garbage, each breaking
/// exactly one of the validator's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    PlaceOrder,
    GetOrder,
    Search,
    MalformedJson,
    SchemaViolation,
    OversizedBody,
    WrongMediaType,
    MissingClientId,
    BadQuery,
    UriTooLong,
    WrongMethod,
    DoomedDeadline,
}

const GOOD: [Kind; 3] = [Kind::PlaceOrder, Kind::GetOrder, Kind::Search];
const GARBAGE: [Kind; 9] = [
    Kind::MalformedJson,
    Kind::SchemaViolation,
    Kind::OversizedBody,
    Kind::WrongMediaType,
    Kind::MissingClientId,
    Kind::BadQuery,
    Kind::UriTooLong,
    Kind::WrongMethod,
    Kind::DoomedDeadline,
];

const ORDER: &str = r#"{"customer": {"id": "c-1042"}, "items": [{"sku": "A-100", "qty": 2}, {"sku": "B-7", "qty": 1}]}"#;
/// The body limit of the orders route (`max_body_bytes`).
const MAX_BODY_BYTES: usize = 65_536;
/// The path limit (`max_path_bytes`).
const MAX_PATH_BYTES: usize = 2_048;
/// Below this announced deadline no answer can arrive in time (`min_remaining_deadline`).
const MIN_DEADLINE_MS: u64 = 50;

impl Kind {
    /// The tag in `KIND_HEADER`.
    fn tag(self) -> &'static str {
        match self {
            Kind::PlaceOrder => "place_order",
            Kind::GetOrder => "get_order",
            Kind::Search => "search",
            Kind::MalformedJson => "malformed_json",
            Kind::SchemaViolation => "schema_violation",
            Kind::OversizedBody => "oversized_body",
            Kind::WrongMediaType => "wrong_media_type",
            Kind::MissingClientId => "missing_client_id",
            Kind::BadQuery => "bad_query",
            Kind::UriTooLong => "uri_too_long",
            Kind::WrongMethod => "wrong_method",
            Kind::DoomedDeadline => "doomed_deadline",
        }
    }

    fn from_tag(tag: &str) -> Option<Kind> {
        GOOD.iter()
            .chain(GARBAGE.iter())
            .copied()
            .find(|k| k.tag() == tag)
    }

    fn label(self) -> &'static str {
        match self {
            Kind::PlaceOrder => "place an order",
            Kind::GetOrder => "read an order",
            Kind::Search => "search",
            Kind::MalformedJson => "truncated JSON",
            Kind::SchemaViolation => "quantity 0",
            Kind::OversizedBody => "100 KB order",
            Kind::WrongMediaType => "text/plain order",
            Kind::MissingClientId => "no client id",
            Kind::BadQuery => "limit=500",
            Kind::UriTooLong => "3 KB query",
            Kind::WrongMethod => "DELETE",
            Kind::DoomedDeadline => "5 ms deadline",
        }
    }

    /// The validator's answer to this kind of garbage: status and rule.
    fn expected(self) -> Option<(u16, &'static str)> {
        match self {
            Kind::PlaceOrder | Kind::GetOrder | Kind::Search => None,
            Kind::MalformedJson => Some((400, "json_body")),
            Kind::SchemaViolation => Some((422, "json_schema")),
            Kind::OversizedBody => Some((413, "max_body_bytes")),
            Kind::WrongMediaType => Some((415, "content_types")),
            Kind::MissingClientId => Some((400, "required_headers")),
            Kind::BadQuery => Some((400, "query_params")),
            Kind::UriTooLong => Some((414, "max_path_bytes")),
            Kind::WrongMethod => Some((405, "allowed_methods")),
            Kind::DoomedDeadline => Some((504, "min_remaining_deadline")),
        }
    }

    fn request(self) -> MixRequest {
        const ORDERS: &str = "/api/orders";
        let json = ("content-type", "application/json");
        let client = ("x-client-id", "shop-web");
        let mut r = match self {
            Kind::PlaceOrder => mix_request("POST", ORDERS, &[client, json], Some(ORDER.into())),
            Kind::GetOrder => mix_request("GET", "/api/orders/1042", &[client], None),
            Kind::Search => mix_request(
                "GET",
                "/api/search?q=running+shoes&limit=20",
                &[client, ("x-request-deadline-ms", "800")],
                None,
            ),
            Kind::MalformedJson => mix_request(
                "POST",
                ORDERS,
                &[client, json],
                Some(ORDER.get(..ORDER.len() / 2).unwrap_or(ORDER).into()),
            ),
            Kind::SchemaViolation => mix_request(
                "POST",
                ORDERS,
                &[client, json],
                Some(ORDER.replace(r#""qty": 2"#, r#""qty": 0"#).into_bytes()),
            ),
            Kind::OversizedBody => {
                // A well-formed order whose note makes it 100 KB: refused from its
                // content-length before a body byte is read.
                let note = "x".repeat(100_000 - ORDER.len());
                let body = ORDER.replacen('{', &format!(r#"{{"note": "{note}", "#), 1);
                mix_request("POST", ORDERS, &[client, json], Some(body.into_bytes()))
            }
            Kind::WrongMediaType => mix_request(
                "POST",
                ORDERS,
                &[client, ("content-type", "text/plain")],
                Some(b"A-100 x2, B-7 x1".to_vec()),
            ),
            Kind::MissingClientId => mix_request("GET", "/api/orders/1042", &[], None),
            Kind::BadQuery => mix_request("GET", "/api/search?q=shoes&limit=500", &[client], None),
            Kind::UriTooLong => mix_request(
                "GET",
                &format!("/api/search?q={}&limit=20", "a".repeat(3_000)),
                &[client],
                None,
            ),
            Kind::WrongMethod => mix_request("DELETE", "/api/orders/1042", &[client], None),
            Kind::DoomedDeadline => mix_request(
                "GET",
                "/api/search?q=shoes&limit=20",
                &[client, ("x-request-deadline-ms", "5")],
                None,
            ),
        };
        r.headers
            .push((KIND_HEADER.to_owned(), self.tag().to_owned()));
        r
    }
}

fn mix_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> MixRequest {
    MixRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body,
    }
}

/// The validator at the edge: every API request must name its client; orders are JSON with a
/// schema and at most 64 KiB; searches have a bounded `limit`; a deadline below 50 ms is refused;
/// health checks pass untouched. Bodies are checked with the headers held, so the application
/// sees nothing at all of a rejected request.
fn validator_json(dry_run: bool) -> String {
    let mode = if dry_run { "dry_run" } else { "enforce" };
    format!(
        r#"{{
  "sync_interval": "100ms", "mode": "{mode}", "hold_headers_for_body_checks": true,
  "health_checks": {{ "paths": ["/healthz"], "headers": [{{ "name": "user-agent", "prefix": "kube-probe/" }}] }},
  "max_path_bytes": {MAX_PATH_BYTES}, "max_header_count": 64, "max_header_bytes": 16384,
  "deadline_header": "x-request-deadline-ms", "min_remaining_deadline": "{MIN_DEADLINE_MS}ms",
  "required_headers": [{{ "name": "x-client-id", "pattern": "^[a-z0-9-]{{3,64}}$" }}],
  "routes": [
    {{ "name": "orders", "match": {{ "prefix": "/api/orders" }}, "allowed_methods": ["GET", "POST"],
       "max_body_bytes": {MAX_BODY_BYTES},
       "json_schema": {{ "type": "object", "required": ["customer", "items"],
         "properties": {{
           "customer": {{ "type": "object", "required": ["id"], "properties": {{ "id": {{ "type": "string", "minLength": 1 }} }} }},
           "items": {{ "type": "array", "minItems": 1, "items": {{ "type": "object", "required": ["sku", "qty"],
             "properties": {{ "sku": {{ "type": "string" }}, "qty": {{ "type": "integer", "minimum": 1 }} }} }} }} }} }} }},
    {{ "name": "search", "match": {{ "prefix": "/api/search" }}, "allowed_methods": ["GET"],
       "query_params": [{{ "name": "q", "required": true, "pattern": "^[\\p{{L}}\\p{{N}} ]+$" }},
                        {{ "name": "limit", "integer": {{ "min": 1, "max": 100 }} }}] }}
  ]
}}"#
    )
}

fn config(p: Protection, listener: u16, upstream: u16) -> Result<String, String> {
    let filters = match p {
        Protection::None => String::new(),
        Protection::DryRun | Protection::Validator => {
            let filter = super::pack_stage_yaml(
                "request_validator",
                "lab_rv",
                "request_validator",
                &validator_json(p == Protection::DryRun),
            )?;
            // Lets the filter hold a request's headers until its body is checked.
            let policy = "      failure_policy: FAIL_CLOSED\n";
            if !filter.contains(policy) {
                return Err("the wasm filter YAML has no failure_policy line".into());
            }
            filter.replace(
                policy,
                &format!("{policy}      allow_on_headers_stop_iteration: true\n"),
            )
        }
    };
    Ok(ProxyConfig::new(listener, free_port())
        .with_http_filters(&filters)
        .route(
            RouteSpec::new("app", "/", "app").with_timeout(Duration::from_millis(ROUTE_TIMEOUT_MS)),
        )
        .cluster(ClusterSpec::new("app", &[upstream]))
        .render())
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `COPIES` of each kind, shuffled with `seed`: the requests, and the kind of each.
fn mix(kinds: &[Kind], seed: u64) -> (Arc<[MixRequest]>, Vec<Kind>) {
    let mut order: Vec<Kind> = kinds
        .iter()
        .flat_map(|k| std::iter::repeat_n(*k, COPIES))
        .collect();
    let mut state = seed;
    for i in (1..order.len()).rev() {
        state = splitmix64(state);
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let requests: Vec<MixRequest> = order.iter().map(|k| k.request()).collect();
    (Arc::from(requests), order)
}

/// Paced clients from `from_ms` to `to_ms` (since the load began), each at `RPS_PER_CLIENT`,
/// their starts spread evenly over one interval, each starting at its own place in `mix`.
fn clients(
    port: u16,
    path: &str,
    mix: Option<&Arc<[MixRequest]>>,
    clients: usize,
    from_ms: u64,
    to_ms: u64,
) -> Vec<(u64, LoadSpec)> {
    let interval_ms = 1000.0 / RPS_PER_CLIENT;
    (0..clients)
        .map(|i| {
            let offset = from_ms + (interval_ms * i as f64 / clients.max(1) as f64) as u64;
            // `load::run` checks its duration before and after waiting for the next request: end
            // it half an interval after the last request that starts before `to_ms`, so that a
            // thread woken late on a busy machine still sends that request.
            let requests = (to_ms.saturating_sub(offset) as f64 / interval_ms).ceil();
            let duration_ms = (requests - 1.0).max(0.0) * interval_ms + interval_ms / 2.0;
            let mut spec = LoadSpec::new(
                port,
                path,
                1,
                RPS_PER_CLIENT,
                Duration::from_secs_f64(duration_ms / 1000.0),
            );
            if let Some(mix) = mix {
                spec = spec.with_mix(Arc::clone(mix), i * mix.len() / clients.max(1));
            }
            (offset, spec)
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Good,
    Garbage,
    Health,
}

struct Run {
    good: Vec<Sample>,
    garbage: Vec<(Kind, Sample)>,
    health: Vec<Sample>,
    /// Every request the application received: ms since the load began, and its kind (`None`
    /// for health checks).
    app: Vec<(u64, Option<Kind>)>,
    /// The filter's `dry_run_would_reject`, summed over its routes.
    would_reject: u64,
}

fn run_variant(p: Protection, scale: Scale, progress: &mut Progress) -> Result<Run, String> {
    let t = timeline(scale);
    let upstream = Upstream::start_named("app")?;
    upstream.set_default(Behavior::status(200).with_latency(Duration::from_millis(SERVICE_MS)));
    // Cheap, but served by the same workers: it waits its turn like everything else.
    upstream.set_behavior("/healthz", Behavior::status(200));
    upstream.set_capacity(Some(CAPACITY));
    let listener = free_port();
    let envoy = Envoy::start(
        &config(p, listener, upstream.port())?,
        &EnvoyOptions::default(),
    )?;
    envoy.wait_listener(listener)?;

    let (good_mix, good_kinds) = mix(&GOOD, SEED);
    let (garbage_mix, garbage_kinds) = mix(&GARBAGE, SEED ^ 1);
    let good_clients = (CAPACITY_RPS * GOOD_PERCENT / 100.0 / RPS_PER_CLIENT).round() as usize;
    let garbage_clients = (good_clients as f64 * GARBAGE_PER_GOOD).round() as usize;
    let health_clients = (HEALTH_RPS / RPS_PER_CLIENT).round() as usize;
    let mut plan: Vec<(Who, u64, LoadSpec)> = Vec::new();
    let mut add = |who: Who, specs: Vec<(u64, LoadSpec)>| {
        plan.extend(specs.into_iter().map(|(offset, spec)| (who, offset, spec)));
    };
    add(
        Who::Good,
        clients(listener, "/", Some(&good_mix), good_clients, 0, t.total_ms),
    );
    add(
        Who::Garbage,
        clients(
            listener,
            "/",
            Some(&garbage_mix),
            garbage_clients,
            t.flood_ms,
            t.calm_ms,
        ),
    );
    let mut health = clients(listener, "/healthz", None, health_clients, 0, t.total_ms);
    for (_, spec) in &mut health {
        spec.headers = vec![("user-agent".into(), "kube-probe/1.31".into())];
    }
    add(Who::Health, health);

    let started = Instant::now();
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .into_iter()
            .map(|(who, offset, spec)| {
                scope.spawn(move || {
                    let at = started + Duration::from_millis(offset);
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    let mut samples = load::run(&spec, |_| {});
                    for s in &mut samples {
                        s.at_ms += offset;
                    }
                    (who, samples)
                })
            })
            .collect();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let elapsed = started.elapsed();
            progress.update(
                p.name(),
                elapsed.as_secs_f64().min(t.total_ms as f64 / 1000.0),
                t.total_ms as f64 / 1000.0,
            );
            if elapsed >= Duration::from_millis(t.total_ms) {
                break;
            }
        }
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .collect::<Vec<_>>()
    });
    let mut run = Run {
        good: Vec::new(),
        garbage: Vec::new(),
        health: Vec::new(),
        app: Vec::new(),
        would_reject: 0,
    };
    let kind_of = |kinds: &[Kind], s: &Sample| s.mix_index.and_then(|i| kinds.get(i)).copied();
    for (who, samples) in results {
        for s in samples {
            match who {
                Who::Good => {
                    kind_of(&good_kinds, &s).ok_or("a good sample without its kind")?;
                    run.good.push(s);
                }
                Who::Garbage => {
                    let kind =
                        kind_of(&garbage_kinds, &s).ok_or("a garbage sample without its kind")?;
                    run.garbage.push((kind, s));
                }
                Who::Health => run.health.push(s),
            }
        }
    }
    run.good.sort_by_key(|s| s.at_ms);
    run.garbage.sort_by_key(|(_, s)| s.at_ms);
    run.health.sort_by_key(|s| s.at_ms);
    // The application may still be serving the backlog: what it received is what counts.
    if upstream.requests() > LOG_CAPACITY as u64 {
        return Err(format!(
            "the application received {} requests, more than its log keeps ({LOG_CAPACITY})",
            upstream.requests()
        ));
    }
    for r in upstream.log() {
        let at = r.at.saturating_duration_since(started).as_millis() as u64;
        let kind = r.header(KIND_HEADER).and_then(Kind::from_tag);
        if kind.is_none() && !r.path.starts_with("/healthz") {
            return Err(format!(
                "the application got an untagged request: {}",
                r.path
            ));
        }
        run.app.push((at, kind));
    }
    if p == Protection::DryRun {
        // Counters are flushed on the filter's tick (100 ms).
        std::thread::sleep(Duration::from_millis(300));
        run.would_reject = envoy
            .stats()?
            .iter()
            .filter(|(name, _)| {
                name.starts_with("wasmcustom.request_validator.")
                    && name.ends_with(".dry_run_would_reject")
            })
            .map(|(_, n)| *n)
            .sum();
    }
    envoy.vm_failure().map_or(Ok(()), Err)?;
    Ok(run)
}

fn rejected(s: &Sample) -> bool {
    s.decided_by
        .as_deref()
        .is_some_and(|d| d.starts_with(&format!("{DECISION_HEADER}: rejected;")))
}

fn marked(s: &Sample) -> bool {
    s.decided_by
        .as_deref()
        .is_some_and(|d| d.starts_with(&format!("{DECISION_HEADER}: dry_run; would_reject=")))
}

/// Rejections (or, in a dry run, would-be rejections) per second in each bucket.
fn edge_series(name: &str, all: &[Sample], total_ms: u64, dry_run: bool) -> Series {
    let mut s = series::bucketed(name, all, total_ms, BUCKET_MS, |b| {
        let n = b
            .iter()
            .filter(|s| if dry_run { marked(s) } else { rejected(s) })
            .count();
        n as f64 * 1000.0 / BUCKET_MS as f64
    });
    if dry_run {
        s.name = format!("{name} (would reject)");
    }
    s
}

/// The headline numbers of one variant.
struct Measured {
    /// Requests the application received during the flood (health checks aside) per good
    /// request sent then.
    work: f64,
    garbage_sent: usize,
    garbage_reached: usize,
    good_p99: f64,
    /// Good requests the validator rejected (enforce) or marked (dry run).
    good_refused: usize,
    /// Responses the validator sent itself.
    edge_rejections: usize,
    health_ok: usize,
    health_sent: usize,
    would_reject: u64,
}

/// Runs the scenario with every variant.
pub fn run(scale: Scale, progress: &mut Progress) -> Result<ScenarioReport, String> {
    let t = timeline(scale);
    let mut rows = Vec::new();
    let mut measured = Vec::new();
    let mut app_series = Vec::new();
    let mut p99_series = Vec::new();
    let mut ok_series = Vec::new();
    let mut edge = Vec::new();
    let mut per_kind = Vec::new();
    for p in VARIANTS {
        progress.start("garbage flood", p.name());
        let run = run_variant(p, scale, progress)?;
        progress.finish();
        let good = &run.good;
        let flood_good: Vec<&Sample> = between(good, t.flood_ms, t.calm_ms).collect();
        let flood_health: Vec<&Sample> = between(&run.health, t.flood_ms, t.calm_ms).collect();
        let in_flood = |at: u64| at >= t.flood_ms && at < t.calm_ms;
        let flood_work = run
            .app
            .iter()
            .filter(|(at, kind)| kind.is_some() && in_flood(*at))
            .count();
        let work = flood_work as f64 / flood_good.len().max(1) as f64;
        let garbage_reached = run
            .app
            .iter()
            .filter(|(_, kind)| kind.is_some_and(|k| k.expected().is_some()))
            .count();
        let garbage_sent = run.garbage.len();
        let good_summary = Summary::of(flood_good.iter().copied());
        let health_summary = Summary::of(flood_health.iter().copied());
        let good_refused = good.iter().filter(|s| rejected(s) || marked(s)).count();
        let edge_rejections = run
            .garbage
            .iter()
            .map(|(_, s)| s)
            .chain(good.iter())
            .chain(run.health.iter())
            .filter(|s| rejected(s))
            .count();
        if p == Protection::Validator {
            per_kind = GARBAGE
                .iter()
                .map(|k| {
                    let (status, rule) = k.expected().unwrap_or((0, ""));
                    let decision = format!("{DECISION_HEADER}: rejected; reason={rule}");
                    let of_kind: Vec<&Sample> = run
                        .garbage
                        .iter()
                        .filter(|(kind, _)| kind == k)
                        .map(|(_, s)| s)
                        .collect();
                    let answered = of_kind
                        .iter()
                        .filter(|s| {
                            s.status == status && s.decided_by.as_deref() == Some(&decision)
                        })
                        .count();
                    (*k, answered, of_kind.len())
                })
                .collect();
        }
        let m = Measured {
            work,
            garbage_sent,
            garbage_reached,
            good_p99: good_summary.p99_ms,
            good_refused,
            edge_rejections,
            health_ok: health_summary.ok,
            health_sent: health_summary.requests,
            would_reject: run.would_reject,
        };
        rows.push(Variant {
            name: p.name().to_owned(),
            figures: vec![
                Figure {
                    name: "app work / good req".into(),
                    value: format!("{work:.2}×"),
                },
                Figure {
                    name: "garbage reaching app".into(),
                    value: format!(
                        "{:.1}% of {garbage_sent}",
                        100.0 * garbage_reached as f64 / garbage_sent.max(1) as f64
                    ),
                },
                Figure {
                    name: "rejected at edge".into(),
                    value: if p == Protection::DryRun {
                        format!("{edge_rejections} (would: {})", run.would_reject)
                    } else {
                        edge_rejections.to_string()
                    },
                },
                Figure {
                    name: "good ok".into(),
                    value: format!("{:.1}%", 100.0 * (1.0 - good_summary.error_rate())),
                },
                Figure {
                    name: "good p50 / p99".into(),
                    value: format!("{:.0} / {:.0} ms", good_summary.p50_ms, good_summary.p99_ms),
                },
                Figure {
                    name: "good refused".into(),
                    value: good_refused.to_string(),
                },
                Figure {
                    name: "health ok / p99".into(),
                    value: format!(
                        "{}/{} / {:.0} ms",
                        health_summary.ok, health_summary.requests, health_summary.p99_ms
                    ),
                },
            ],
        });
        measured.push(m);
        let mut up = Vec::new();
        for i in 0..t.total_ms.div_ceil(BUCKET_MS) {
            let from = i * BUCKET_MS;
            let to = (from + BUCKET_MS).min(t.total_ms);
            let n = run
                .app
                .iter()
                .filter(|(at, _)| *at >= from && *at < to)
                .count();
            up.push((
                from as f64 / 1000.0,
                n as f64 * 1000.0 / (to - from).max(1) as f64,
            ));
        }
        app_series.push(Series {
            name: p.name().to_owned(),
            points: up,
        });
        p99_series.push(series::bucketed(
            p.name(),
            good,
            t.total_ms,
            BUCKET_MS,
            |b| series::latency_p(b, 99.0),
        ));
        ok_series.push(series::bucketed(
            p.name(),
            good,
            t.total_ms,
            BUCKET_MS,
            series::success_percent,
        ));
        let all: Vec<Sample> = good
            .iter()
            .cloned()
            .chain(run.garbage.iter().map(|(_, s)| s.clone()))
            .collect();
        edge.push(edge_series(
            p.name(),
            &all,
            t.total_ms,
            p == Protection::DryRun,
        ));
    }
    // Points sit at the start of their bucket: the charts end at the last bucket's start.
    let end_s = (t.total_ms.div_ceil(BUCKET_MS).saturating_sub(1) * BUCKET_MS) as f64 / 1000.0;
    app_series.push(Series {
        name: format!("capacity ({CAPACITY_RPS:.0} req/s)"),
        points: vec![(0.0, CAPACITY_RPS), (end_s, CAPACITY_RPS)],
    });
    let flood_span = [(
        t.flood_ms as f64 / 1000.0,
        t.calm_ms as f64 / 1000.0,
        "garbage flood",
    )];
    let ok_title =
        format!("Good requests answered 2xx within the {ROUTE_TIMEOUT_MS} ms route timeout (%)");
    let charts = vec![
        Chart {
            title: "Requests reaching the application (req/s)",
            y_label: "req/s",
            series: &app_series,
            spans: &flood_span,
            y_max: None,
        }
        .render(),
        Chart {
            title: "Good requests: p99 latency (ms)",
            y_label: "ms",
            series: &p99_series,
            spans: &flood_span,
            y_max: None,
        }
        .render(),
        Chart {
            title: &ok_title,
            y_label: "% ok",
            series: &ok_series,
            spans: &flood_span,
            y_max: Some(100.0),
        }
        .render(),
        Chart {
            title: "Answered at the edge by the validator (req/s)",
            y_label: "req/s",
            series: &edge,
            spans: &flood_span,
            y_max: None,
        }
        .render(),
    ];
    let of = |p: Protection| {
        VARIANTS
            .iter()
            .position(|v| *v == p)
            .and_then(|i| measured.get(i))
    };
    let (Some(none), Some(dry), Some(val)) = (
        of(Protection::None),
        of(Protection::DryRun),
        of(Protection::Validator),
    ) else {
        return Err("a variant is missing".into());
    };
    let stopped =
        |m: &Measured| 100.0 * (1.0 - m.garbage_reached as f64 / m.garbage_sent.max(1) as f64);
    let kinds_ok = !per_kind.is_empty() && per_kind.iter().all(|(_, ok, n)| *n > 0 && ok == n);
    let kinds_text: Vec<String> = per_kind
        .iter()
        .map(|(k, ok, n)| {
            let (status, _) = k.expected().unwrap_or((0, ""));
            if ok == n {
                format!("{} {status}", k.label())
            } else {
                format!("{} {status} ({ok} of {n})", k.label())
            }
        })
        .collect();
    let criteria = vec![
        Criterion {
            description: format!(
                "with the validator ≥ 99% of the garbage never reaches the application: {:.1}% ({} of {} reached it; without protection {} of {})",
                stopped(val),
                val.garbage_reached,
                val.garbage_sent,
                none.garbage_reached,
                none.garbage_sent
            ),
            passed: val.garbage_sent > 0 && stopped(val) >= 99.0,
        },
        Criterion {
            description: format!(
                "every kind of garbage is answered at the edge with its rule's status: {}",
                kinds_text.join(", ")
            ),
            passed: kinds_ok,
        },
        Criterion {
            description: format!(
                "no good request is refused: the validator rejects {} and the dry run marks {}",
                val.good_refused, dry.good_refused
            ),
            passed: val.good_refused == 0 && dry.good_refused == 0,
        },
        Criterion {
            description: format!(
                "without protection the flood is real: during it the application does ≥ 1.8 requests of work per good request ({:.2}×); with the validator ≤ 1.05 ({:.2}×)",
                none.work, val.work
            ),
            passed: none.work >= 1.8 && val.work <= 1.05,
        },
        Criterion {
            description: format!(
                "during the flood the good requests' p99 with the validator is at most half of no protection's ({:.0} vs {:.0} ms)",
                val.good_p99, none.good_p99
            ),
            passed: val.good_p99 <= 0.5 * none.good_p99,
        },
        Criterion {
            description: format!(
                "the dry run changes nothing and sees the garbage: it rejects {} requests and counts {} of {} garbage requests as would-be rejections (≥ 99%)",
                dry.edge_rejections, dry.would_reject, dry.garbage_sent
            ),
            passed: dry.edge_rejections == 0
                && dry.garbage_sent > 0
                && dry.would_reject as f64 >= 0.99 * dry.garbage_sent as f64
                && dry.would_reject <= dry.garbage_sent as u64,
        },
        Criterion {
            description: format!(
                "with the validator every health check during the flood is admitted and answered ({} of {})",
                val.health_ok, val.health_sent
            ),
            passed: val.health_sent > 0 && val.health_ok == val.health_sent,
        },
    ];
    let good_rps = CAPACITY_RPS * GOOD_PERCENT / 100.0;
    Ok(ScenarioReport {
        name: "Garbage flood".into(),
        story: format!(
            "The application serves {CAPACITY} requests at once, {SERVICE_MS} ms each ({CAPACITY_RPS:.0} req/s); further requests wait in arrival order, and a request whose caller has gone (Envoy's route timeout is {ROUTE_TIMEOUT_MS} ms) is still served. It spends the same work on every request it gets, because it finds a bad one out only after parsing, authenticating and looking things up. Paced clients (each 1 req/s, starts spread evenly) send good requests at {GOOD_PERCENT:.0}% of capacity ({good_rps:.0} req/s: place an order with a JSON body, read an order, search), and health checks at {HEALTH_RPS:.0} req/s (/healthz, kube-probe), through an Envoy with 2 workers. From {:.1} s to {:.1} s a broken client adds {:.0} garbage requests per second ({:.0}% of all requests), in a fixed seeded mix of nine kinds, each breaking one rule: {}. The application then gets {:.0}% of its capacity: without protection good requests and health checks queue behind garbage, their latency climbs towards the timeout, and the backlog outlives the flood. The validator (enforce) refuses each kind at the edge with the status its rule prescribes and a problem+json body; bodies are checked with the headers held (hold_headers_for_body_checks with allow_on_headers_stop_iteration), so the application sees nothing of a rejected request, and health checks pass untouched. Its dry run lets every request through and counts what it would reject (dry_run_would_reject), the way it is rolled out. Application work counts the requests the application received during the flood (health checks aside) per good request sent then; the good-request and health-check figures are those of the requests sent during the flood, timed-out ones included.",
            t.flood_ms as f64 / 1000.0,
            t.calm_ms as f64 / 1000.0,
            good_rps * GARBAGE_PER_GOOD,
            100.0 * GARBAGE_PER_GOOD / (1.0 + GARBAGE_PER_GOOD),
            GARBAGE
                .iter()
                .map(|k| {
                    let (status, rule) = k.expected().unwrap_or((0, ""));
                    format!("{} ({rule}, {status})", k.label())
                })
                .collect::<Vec<_>>()
                .join(", "),
            GOOD_PERCENT * (1.0 + GARBAGE_PER_GOOD)
        ),
        variants: rows,
        criteria,
        charts,
    })
}
