//! Paced load with every request recorded.
//!
//! Why paced: an outage shows in how long callers wait, not only in error counts. Each client
//! thread aims at a fixed rate; a slow response makes it fall behind, exactly as a caller's
//! thread pool would, so "requests wasted on a dead dependency" and "goodput" mean what they mean
//! in production. Every request is recorded with its start time, latency, status and which
//! upstream instance answered (`x-upstream-name`), so scenarios can cut any time series.
//!
//! A spec sends `GET path` with fixed headers, or, with a mix (`LoadSpec::with_mix`), a fixed
//! sequence of requests each with its own method, path, headers and body: the mix is built by
//! the scenario (seeded), so every variant of a scenario sends exactly the same requests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::request_with_timeout;

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub port: u16,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Client threads.
    pub threads: usize,
    /// Target requests per second per thread (0 = as fast as responses come back).
    pub rps_per_thread: f64,
    pub duration: Duration,
    /// Client-side timeout of one request.
    pub timeout: Duration,
    /// When not empty, the requests sent instead of `GET path` with `headers`: taken in order,
    /// cycling, starting at `mix_offset`, one sequence shared by the spec's threads (so with one
    /// thread the order is exact). Each sample records which one it was (`Sample::mix_index`).
    pub mix: Arc<[MixRequest]>,
    pub mix_offset: usize,
    /// Paced threads start spread evenly over one interval instead of all at once, so that their
    /// requests arrive evenly rather than in bursts of `threads` (see [`LoadSpec::staggered`]).
    pub staggered: bool,
}

/// One request of a mix (see `LoadSpec::mix`).
#[derive(Clone, Debug)]
pub struct MixRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Sent with `content-length` unless `headers` sets it (or `transfer-encoding`).
    pub body: Option<Vec<u8>>,
}

impl LoadSpec {
    pub fn new(
        port: u16,
        path: &str,
        threads: usize,
        rps_per_thread: f64,
        duration: Duration,
    ) -> Self {
        LoadSpec {
            port,
            path: path.to_owned(),
            headers: Vec::new(),
            threads,
            rps_per_thread,
            duration,
            timeout: Duration::from_secs(10),
            mix: Arc::from(Vec::new()),
            mix_offset: 0,
            staggered: false,
        }
    }

    /// Spreads the paced threads' starts evenly over one interval. Why: threads that start
    /// together stay in step, and a burst of `threads` requests at once turns every microsecond
    /// a proxy spends per request into queueing for the requests behind it, which callers that
    /// are not in step (most real ones) never see.
    pub fn staggered(mut self) -> Self {
        self.staggered = true;
        self
    }

    /// Sends the requests of `mix` (in order, cycling, from `offset`) instead of `GET path`.
    pub fn with_mix(mut self, mix: Arc<[MixRequest]>, offset: usize) -> Self {
        self.mix = mix;
        self.mix_offset = offset;
        self
    }
}

/// One request as the client saw it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Start, in ms since the load began.
    pub at_ms: u64,
    pub latency_ms: f64,
    /// 0 when the request failed without a response (connection error, client timeout).
    pub status: u16,
    /// `x-upstream-name` of the answer, when an upstream answered.
    pub upstream: Option<String>,
    /// The filter decision header of the pack, when present (`x-resilience-*`).
    pub decided_by: Option<String>,
    /// Which request of the spec's mix this was (`None` without a mix).
    pub mix_index: Option<usize>,
}

/// Runs `spec`, calling `tick(elapsed)` about every 100 ms (for progress and for scripting the
/// scenario's timeline), and returns every sample sorted by start time.
pub fn run(spec: &LoadSpec, mut tick: impl FnMut(Duration)) -> Vec<Sample> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let next_in_mix = Arc::new(AtomicUsize::new(spec.mix_offset));
    let started = Instant::now();
    let mut handles = Vec::new();
    let threads = spec.threads.max(1);
    for thread in 0..threads {
        let spec = spec.clone();
        let samples = Arc::clone(&samples);
        let stop = Arc::clone(&stop);
        let next_in_mix = Arc::clone(&next_in_mix);
        handles.push(std::thread::spawn(move || {
            let interval = if spec.rps_per_thread > 0.0 {
                Duration::from_secs_f64(1.0 / spec.rps_per_thread)
            } else {
                Duration::ZERO
            };
            let mut next = Instant::now();
            if spec.staggered {
                next += interval.mul_f64(thread as f64 / threads as f64);
            }
            let mut local = Vec::new();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < spec.duration {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                if started.elapsed() >= spec.duration {
                    break; // the wait crossed the end: send nothing past `duration`
                }
                next += interval;
                if next < Instant::now() {
                    // Fell behind (slow responses): do not burst to catch up.
                    next = Instant::now();
                }
                let at_ms = started.elapsed().as_millis() as u64;
                let mix_index = (!spec.mix.is_empty())
                    .then(|| next_in_mix.fetch_add(1, Ordering::Relaxed) % spec.mix.len());
                let chosen = mix_index.and_then(|i| spec.mix.get(i));
                let (method, path, fixed, body) = match chosen {
                    Some(m) => (m.method.as_str(), &m.path, &m.headers, m.body.as_deref()),
                    None => ("GET", &spec.path, &spec.headers, None),
                };
                let headers: Vec<(&str, &str)> = fixed
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let t0 = Instant::now();
                let result =
                    request_with_timeout(spec.port, method, path, &headers, body, spec.timeout);
                let latency_ms = t0.elapsed().as_secs_f64() * 1000.0;
                local.push(match result {
                    Ok(r) => Sample {
                        at_ms,
                        latency_ms,
                        status: r.status,
                        upstream: r.header("x-upstream-name").map(str::to_owned),
                        decided_by: r
                            .headers
                            .iter()
                            .find(|(k, _)| k.starts_with("x-resilience-"))
                            .map(|(k, v)| format!("{k}: {v}")),
                        mix_index,
                    },
                    Err(_) => Sample {
                        at_ms,
                        latency_ms,
                        status: 0,
                        upstream: None,
                        decided_by: None,
                        mix_index,
                    },
                });
            }
            if let Ok(mut all) = samples.lock() {
                all.extend(local);
            }
        }));
    }
    while started.elapsed() < spec.duration {
        std::thread::sleep(Duration::from_millis(100));
        tick(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let mut all = match Arc::try_unwrap(samples) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(shared) => shared.lock().map(|v| v.clone()).unwrap_or_default(),
    };
    all.sort_by_key(|s| s.at_ms);
    all
}
