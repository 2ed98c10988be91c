//! Cutting samples into time series and summary figures.

use super::load::Sample;

/// Percentile (0–100) of `values` by nearest rank; 0 for an empty slice.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.saturating_sub(1).min(v.len() - 1))
        .copied()
        .unwrap_or(0.0)
}

/// Summary of a set of samples.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Summary {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Summary {
        let mut latencies = Vec::new();
        let mut s = Summary::default();
        for x in samples {
            s.requests += 1;
            if (200..400).contains(&x.status) {
                s.ok += 1;
            } else {
                s.errors += 1;
            }
            latencies.push(x.latency_ms);
        }
        s.p50_ms = percentile(&latencies, 50.0);
        s.p99_ms = percentile(&latencies, 99.0);
        s
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Samples started within `[from_ms, to_ms)`.
pub fn between(samples: &[Sample], from_ms: u64, to_ms: u64) -> impl Iterator<Item = &Sample> {
    samples
        .iter()
        .filter(move |s| s.at_ms >= from_ms && s.at_ms < to_ms)
}

/// A named series of (time in s, value) points.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Cuts samples into buckets of `bucket_ms` over `[0, total_ms)` and maps each bucket to a value.
pub fn bucketed(
    name: &str,
    samples: &[Sample],
    total_ms: u64,
    bucket_ms: u64,
    value: impl Fn(&[&Sample]) -> f64,
) -> Series {
    let bucket_ms = bucket_ms.max(1);
    let n = total_ms.div_ceil(bucket_ms) as usize;
    let mut buckets: Vec<Vec<&Sample>> = vec![Vec::new(); n];
    for s in samples {
        if let Some(b) = buckets.get_mut((s.at_ms / bucket_ms) as usize) {
            b.push(s);
        }
    }
    Series {
        name: name.to_owned(),
        points: buckets
            .iter()
            .enumerate()
            .map(|(i, b)| ((i as u64 * bucket_ms) as f64 / 1000.0, value(b)))
            .collect(),
    }
}

/// p-th percentile latency of a bucket; NaN (a gap in the chart, not a zero) when no request
/// started in it, as happens while callers are stuck on a hang.
pub fn latency_p(bucket: &[&Sample], p: f64) -> f64 {
    if bucket.is_empty() {
        return f64::NAN;
    }
    let v: Vec<f64> = bucket.iter().map(|s| s.latency_ms).collect();
    percentile(&v, p)
}

/// Share (0–100) of a bucket's requests that succeeded; NaN when no request started in it.
pub fn success_percent(bucket: &[&Sample]) -> f64 {
    if bucket.is_empty() {
        return f64::NAN;
    }
    100.0
        * bucket
            .iter()
            .filter(|s| (200..400).contains(&s.status))
            .count() as f64
        / bucket.len() as f64
}
