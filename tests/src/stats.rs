//! Reading Envoy's statistics.
//!
//! Why: counters and gauges are how the tests see what a filter decided without trusting its own
//! responses (a trip, a shed request, a probe). Envoy serves them as JSON (`/stats?format=json`),
//! as plain `name: value` lines (`/stats`) and as Prometheus text (`/stats/prometheus`). Metrics a
//! wasm filter defines appear as `wasmcustom.<name>` (`wasm_metric`), and in Prometheus text
//! without the `envoy_` prefix.

use std::collections::BTreeMap;

/// The full Envoy stat name of a metric a wasm filter defined as `name`.
pub fn wasm_metric(name: &str) -> String {
    format!("wasmcustom.{name}")
}

/// Counters and gauges from `/stats?format=json` (histograms are skipped).
pub fn parse_json(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("stats JSON: {e}"))?;
    let entries = value
        .get("stats")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| "stats JSON has no \"stats\" array".to_string())?;
    let mut out = BTreeMap::new();
    for entry in entries {
        let name = entry.get("name").and_then(serde_json::Value::as_str);
        let value = entry.get("value").and_then(serde_json::Value::as_u64);
        if let (Some(name), Some(value)) = (name, value) {
            out.insert(name.to_string(), value);
        }
    }
    Ok(out)
}

/// Counters and gauges from plain `/stats` (`name: value` lines; histogram lines are skipped).
pub fn parse_plain(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            Some((name.trim().to_string(), value.trim().parse::<u64>().ok()?))
        })
        .collect()
}

/// One Prometheus sample: metric name, labels in order, value.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses Prometheus text exposition (comments skipped; label values unescaped).
pub fn parse_prometheus(text: &str) -> Vec<PromSample> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(parse_prom_line)
        .collect()
}

fn parse_prom_line(line: &str) -> Option<PromSample> {
    let (series, rest) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (line.get(..close + 1)?, line.get(close + 1..)?)
        }
        None => line.split_once(' ')?,
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, labels)) => (name, parse_labels(labels.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(PromSample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_string(), value));
    }
}

/// The value of the first sample named `name` whose labels include every `(key, value)` in
/// `labels`.
pub fn prometheus_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parse_prometheus(text)
        .into_iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_stats_keep_counters_and_skip_histograms() {
        let text = "cluster.upstream.upstream_rq_200: 3\nwasmcustom.cb_trips: 1\n\
                    http.ingress.downstream_rq_time: P0(nan,1) P25(nan,2)\n";
        let stats = parse_plain(text);
        assert_eq!(stats.get("cluster.upstream.upstream_rq_200"), Some(&3));
        assert_eq!(stats.get(&wasm_metric("cb_trips")), Some(&1));
        assert_eq!(stats.len(), 2);
    }

    #[test]
    fn json_stats_keep_named_integer_values() {
        let text = r#"{"stats":[{"name":"a.b","value":7},{"histograms":{}}]}"#;
        let stats = parse_json(text).unwrap();
        assert_eq!(stats.get("a.b"), Some(&7));
        assert_eq!(stats.len(), 1);
    }

    #[test]
    fn prometheus_samples_are_found_by_name_and_labels() {
        let text = "# TYPE x counter\nenvoy_cluster_upstream_rq{envoy_response_code=\"503\",\
                    envoy_cluster_name=\"up\"} 4\nwasmcustom_cb_trips 2\n";
        assert_eq!(
            prometheus_value(
                text,
                "envoy_cluster_upstream_rq",
                &[("envoy_response_code", "503")]
            ),
            Some(4.0)
        );
        assert_eq!(
            prometheus_value(text, "wasmcustom_cb_trips", &[]),
            Some(2.0)
        );
        assert_eq!(prometheus_value(text, "missing", &[]), None);
    }
}
