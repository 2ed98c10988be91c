//! Stats: counters and gauges that add up correctly across Envoy's workers.
//!
//! Every worker's VM defines the same metric names; Envoy adds counter increments from all of
//! them. A gauge `set` from one worker would overwrite another's, so gauges here only move by
//! signed increments, and the caller adjusts them exactly once per real change (for the breaker,
//! the worker whose CAS made the transition). Metrics appear in Envoy as `wasmcustom.<name>`; in
//! Prometheus output the namespace is dropped and dots become underscores.
//!
//! Names are defined lazily and cached per worker; the cache is bounded by the caller's key space.
//! A host error defining or incrementing a metric is ignored: stats must never break traffic. The
//! calls go through a [`Host`] ([`crate::abi`] on the real one): the SDK's versions panic on
//! statuses they do not expect.

use hashbrown::HashMap;
use proxy_wasm::types::MetricType;

use crate::counters::Counters;
use crate::host::Host;
use crate::wasm::WasmHost;

/// A cache of metric ids by kind and name, for one worker on host `H`. (By kind too: a counter
/// and a gauge of the same name are different metrics, and must not silently share one id.)
#[derive(Default)]
pub struct Metrics<H: Host = WasmHost> {
    host: H,
    counters: HashMap<String, u32>,
    gauges: HashMap<String, u32>,
    /// Scratch space for the names [`Metrics::count_all`] builds, kept between flushes.
    name_buf: String,
}

impl Metrics {
    /// The metrics of a worker on the real host.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<H: Host> Metrics<H> {
    /// The metrics of a worker on `host`.
    pub fn on(host: H) -> Self {
        Metrics {
            host,
            counters: HashMap::new(),
            gauges: HashMap::new(),
            name_buf: String::new(),
        }
    }

    fn id(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        let ids = match kind {
            MetricType::Gauge => &mut self.gauges,
            _ => &mut self.counters,
        };
        if let Some(id) = ids.get(name) {
            return Some(*id);
        }
        let id = self.host.define_metric(kind, name).ok()?;
        ids.insert(name.to_owned(), id);
        Some(id)
    }

    /// Define a counter now (so it shows as 0 before its first event).
    pub fn define_counter(&mut self, name: &str) {
        let _ = self.id(MetricType::Counter, name);
    }

    /// Define a gauge now.
    pub fn define_gauge(&mut self, name: &str) {
        let _ = self.id(MetricType::Gauge, name);
    }

    /// Add `n` (> 0) to a counter.
    pub fn count(&mut self, name: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(id) = self.id(MetricType::Counter, name) {
            let _ = self
                .host
                .increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Add each `(name, n)` of `pairs` to the counter `<base>.<name>`, skipping the zeros.
    ///
    /// Why: every filter adds its per-request events up per worker and flushes them on the tick
    /// as such a list (an increment is a host call, so the request path makes none). On a quiet
    /// tick most counts are zero and cost nothing here, not even a name. The names are built in
    /// one buffer the cache keeps, so a flush allocates nothing once the buffer has grown to the
    /// longest name (a name seen for the first time is still copied into the id cache).
    pub fn count_all(&mut self, base: &str, pairs: &[(&str, u64)]) {
        for &(suffix, n) in pairs {
            if n == 0 {
                continue;
            }
            let name = self.suffixed(base, &[suffix]);
            self.count(&name, n);
            self.name_buf = name;
        }
    }

    /// Define the counter `<base>.<name>` of every stat `C` names (so each shows as 0 before
    /// its first event).
    pub fn define_counters<C: Counters>(&mut self, base: &str) {
        C::each_name(&mut |suffix| {
            let name = self.suffixed(base, suffix);
            self.define_counter(&name);
            self.name_buf = name;
        });
    }

    /// Add every count of `counts` to its counter `<base>.<name>` and zero it, skipping the
    /// zeros (see [`Metrics::count_all`] for why and what it allocates).
    pub fn flush<C: Counters>(&mut self, base: &str, counts: &mut C) {
        counts.drain(&mut |suffix, n| {
            if n == 0 {
                return;
            }
            let name = self.suffixed(base, suffix);
            self.count(&name, n);
            self.name_buf = name;
        });
    }

    /// `<base>.<suffix parts joined>`, built in the kept buffer (the caller puts it back).
    fn suffixed(&mut self, base: &str, suffix: &[&str]) -> String {
        let mut name = std::mem::take(&mut self.name_buf);
        name.clear();
        name.push_str(base);
        name.push('.');
        for part in suffix {
            name.push_str(part);
        }
        name
    }

    /// Move a gauge by `delta` (either sign).
    pub fn gauge_add(&mut self, name: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = self.host.increment_metric(id, delta);
        }
    }
}

/// Make an arbitrary string safe as one segment of a metric name: `[A-Za-z0-9_-]`, at most
/// `max_len` bytes, never empty. Dots would split the name into tag segments, and unbounded
/// names would let traffic create unbounded stats.
pub fn sanitize_segment(raw: &str, max_len: usize) -> String {
    let mut out = String::new();
    push_sanitized(&mut out, raw, max_len);
    out
}

/// [`sanitize_segment`] appended to `out`: for the per-request path, which reuses one buffer.
pub fn push_sanitized(out: &mut String, raw: &str, max_len: usize) {
    let start = out.len();
    out.extend(
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(max_len.max(1)),
    );
    if out.len() == start {
        out.push('_');
    }
}
