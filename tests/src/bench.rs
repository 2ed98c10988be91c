//! The cost side: Envoy CPU time per request with and without the pack, in one run.
//!
//! Why CPU per request and not throughput or latency: on a shared 2-core machine wall-clock
//! numbers move with whatever else runs, but the CPU time the Envoy process spends per completed
//! request is what a filter adds, and what an operator pays for. Each configuration runs in its
//! own Envoy; rounds are interleaved (A B C A B C …) so drift hits every configuration alike, and
//! the median of the rounds is reported, also as a ratio to bare Envoy.
//!
//! Load is a keep-alive HTTP/1.1 generator written here (persistent connections, like a real
//! client pool), so connection set-up does not drown the per-request cost.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::wasm_filter_yaml;
use crate::envoy::{free_port, Envoy, EnvoyOptions};
use crate::upstream::Upstream;
use crate::{ClusterSpec, ProxyConfig, RouteSpec};

/// One configuration to measure.
#[derive(Clone, Debug)]
pub struct Subject {
    pub name: String,
    /// HTTP filters placed before the router (YAML list items), built by [`wasm_filter`].
    pub filters_yaml: String,
    /// Extra cluster YAML (for Envoy-native mechanisms such as outlier detection).
    pub cluster_yaml: String,
    /// 0: each request is a GET; otherwise a POST with a body of this many bytes (so that body
    /// callbacks run).
    pub body_bytes: usize,
    /// Envoy's worker threads (one wasm VM per worker per module).
    pub concurrency: u32,
    /// Extra top-level bootstrap fields (see [`shipped_memory_release`]).
    pub bootstrap_yaml: String,
}

/// `envoy-configs/pack.yaml`, parsed, and its path (for errors).
fn shipped_pack_yaml() -> Result<(std::path::PathBuf, Vec<yaml_rust2::Yaml>), String> {
    let path = crate::paths::workspace_root().join("envoy-configs/pack.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).map_err(|e| e.to_string())?;
    Ok((path, docs))
}

/// `envoy-configs/pack.yaml`'s `memory_allocator_manager`, as bootstrap YAML: how the shipped
/// configuration has Envoy give back the memory V8 frees after compiling the module.
pub fn shipped_memory_release() -> Result<String, String> {
    let (path, docs) = shipped_pack_yaml()?;
    let key = yaml_rust2::Yaml::String("memory_allocator_manager".into());
    let value = docs
        .first()
        .and_then(|d| d.as_hash())
        .and_then(|h| h.get(&key))
        .ok_or(format!("{}: no memory_allocator_manager", path.display()))?;
    let mut one = yaml_rust2::yaml::Hash::new();
    one.insert(key, value.clone());
    let mut out = String::new();
    yaml_rust2::YamlEmitter::new(&mut out)
        .dump(&yaml_rust2::Yaml::Hash(one))
        .map_err(|e| e.to_string())?;
    Ok(out.trim_start_matches("---").to_string())
}

/// The pack module's configuration in `envoy-configs/pack.yaml` on a healthy route: the edge
/// filter's members and the sidecars' `failure_padding`, as one configuration. Slow start is
/// left out: its shipped configuration balances over the fleet's sidecars (health checks and
/// priming through a `fleet` cluster), which a single-upstream bench does not have.
pub fn shipped_pack_config() -> Result<String, String> {
    let (path, docs) = shipped_pack_yaml()?;
    let mut members = serde_json::Map::new();
    let mut stack: Vec<&yaml_rust2::Yaml> = docs.iter().collect();
    while let Some(node) = stack.pop() {
        match node {
            yaml_rust2::Yaml::Hash(h) => {
                let config = &node["config"];
                let module = config["vm_config"]["code"]["local"]["filename"].as_str();
                if module.is_some_and(|m| m.ends_with("resilience_pack.wasm")) {
                    let json = config["configuration"]["value"].as_str().unwrap_or("{}");
                    let value: serde_json::Value =
                        serde_json::from_str(json).map_err(|e| e.to_string())?;
                    if let serde_json::Value::Object(m) = value {
                        members.extend(m.into_iter().filter(|(k, _)| k != "slow_start"));
                    }
                }
                stack.extend(h.values());
            }
            yaml_rust2::Yaml::Array(a) => stack.extend(a.iter()),
            _ => {}
        }
    }
    if members.is_empty() {
        return Err(format!(
            "{}: no resilience_pack.wasm filter",
            path.display()
        ));
    }
    Ok(serde_json::Value::Object(members).to_string())
}

/// A wasm filter entry for a subject. `vm_id` should be unique per filter in a chain.
pub fn wasm_filter(crate_name: &str, root_id: &str, config_json: &str) -> Result<String, String> {
    let wasm = crate::wasm::filter_wasm(crate_name)?;
    Ok(wasm_filter_yaml(
        root_id,
        root_id,
        &format!("bench_{root_id}"),
        &wasm,
        config_json,
    ))
}

/// A wasm filter entry for a copy of `crate_name`'s module without the exports `drop` names
/// (see [`crate::exports`]), written to `target/bench-modules/<label>.wasm`.
pub fn wasm_filter_without(
    crate_name: &str,
    root_id: &str,
    config_json: &str,
    label: &str,
    drop: &[&str],
) -> Result<String, String> {
    let wasm = crate::wasm::filter_wasm(crate_name)?;
    let bytes = std::fs::read(&wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
    let slim = crate::exports::without(&bytes, |name| drop.contains(&name))?;
    let dir = crate::paths::workspace_root().join("target/bench-modules");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(format!("{label}.wasm"));
    std::fs::write(&path, slim).map_err(|e| e.to_string())?;
    Ok(wasm_filter_yaml(
        root_id,
        root_id,
        &format!("bench_{label}"),
        &path,
        config_json,
    ))
}

/// Total CPU time (user + system) of a process so far, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 12 and 13 after ") state".
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("unexpected /proc stat field")
    };
    let total = ticks(11)? + ticks(12)?;
    let hz = clock_ticks_per_second();
    Ok(Duration::from_secs_f64(total as f64 / hz))
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident memory of a process in bytes, from `/proc/<pid>/status` (VmRSS).
pub fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sends `requests` requests over `connections` persistent connections: GETs, or POSTs with a
/// body of `body_bytes` when it is not 0. Returns (completed, errors).
pub fn keep_alive_load(
    port: u16,
    path: &str,
    body_bytes: usize,
    connections: usize,
    requests: u64,
) -> (u64, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let (next, done, errors) = (Arc::clone(&next), Arc::clone(&done), Arc::clone(&errors));
            let path = path.to_owned();
            std::thread::spawn(move || {
                let request = if body_bytes == 0 {
                    format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n")
                } else {
                    format!(
                        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {body_bytes}\r\n\r\n{}",
                        "x".repeat(body_bytes)
                    )
                };
                let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    if conn.is_none() {
                        conn = connect(port);
                    }
                    let Some((w, r)) = conn.as_mut() else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    match exchange(w, r, request.as_bytes()) {
                        Ok((status, keep)) => {
                            if (200..300).contains(&status) {
                                done.fetch_add(1, Ordering::Relaxed);
                            } else {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            if !keep {
                                conn = None;
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
}

fn connect(port: u16) -> Option<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let r = BufReader::new(s.try_clone().ok()?);
    Some((s, r))
}

/// One request/response on a persistent connection: (status, connection still usable).
fn exchange(
    w: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    request: &[u8],
) -> Result<(u16, bool), String> {
    w.write_all(request).map_err(|e| e.to_string())?;
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let mut length = 0usize;
    let mut keep = true;
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| "bad content-length")?;
            } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
            {
                keep = false;
            }
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, keep))
}

/// One subject's measurement.
#[derive(Clone, Debug)]
pub struct Measured {
    pub name: String,
    /// Median Envoy CPU µs per completed request over the rounds.
    pub cpu_us_per_request: f64,
    pub rounds_us: Vec<f64>,
    pub errors: u64,
    /// Envoy's resident memory after the rounds (includes the wasm VMs' V8 heaps).
    pub rss_bytes: Option<u64>,
    /// `allocated` from Envoy's admin `/memory` after the rounds: what Envoy's own allocator
    /// (tcmalloc) has handed out. V8 reserves wasm memory outside it, so RSS is the fuller view.
    pub allocated_bytes: Option<u64>,
}

/// `allocated` from Envoy's admin `/memory` (a JSON object whose numbers are strings).
pub fn admin_allocated(envoy: &Envoy) -> Option<u64> {
    let (status, body) = envoy.admin_get("/memory").ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    match v.get("allocated")? {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Starts one subject's Envoy in front of `upstream` and warms it up (connections, VMs, JIT)
/// with `warmup` requests; returns it and its listener port.
fn start_warm(
    s: &Subject,
    upstream: &Upstream,
    warmup: u64,
    connections: usize,
) -> Result<(Envoy, u16), String> {
    let listener = free_port();
    let mut cluster = ClusterSpec::new("upstream", &[upstream.port()]);
    if !s.cluster_yaml.is_empty() {
        cluster = cluster.with_extra_yaml(&s.cluster_yaml);
    }
    let yaml = ProxyConfig::new(listener, free_port())
        .with_bootstrap_yaml(&s.bootstrap_yaml)
        .with_http_filters(&s.filters_yaml)
        .route(RouteSpec::new("bench", "/", "upstream"))
        .cluster(cluster)
        .render();
    let options = EnvoyOptions {
        concurrency: s.concurrency,
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::start(&yaml, &options).map_err(|e| format!("{}: {e}", s.name))?;
    envoy.wait_listener(listener)?;
    keep_alive_load(listener, "/bench", s.body_bytes, connections, warmup);
    Ok((envoy, listener))
}

/// Where one subject's Envoy spends its CPU: `perf record -e cpu-clock -g` on the Envoy process
/// for `seconds` under the bench's load, then `perf report` by shared object and symbol (the
/// wasm code V8 compiled shows as JIT addresses, Envoy's glue by name). Writes the raw profile
/// to `data` and returns the report's text.
pub fn profile(
    s: &Subject,
    seconds: u32,
    connections: usize,
    data: &std::path::Path,
) -> Result<String, String> {
    let upstream = Upstream::start_named("bench")?;
    let (envoy, listener) = start_warm(s, &upstream, 5_000, connections)?;
    let mut perf = std::process::Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "2000", "-g", "-o"])
        .arg(data)
        .args([
            "-p",
            &envoy.pid().to_string(),
            "--",
            "sleep",
            &seconds.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("perf record (is perf installed?): {e}"))?;
    // Load until perf has its samples; each batch is a few seconds at most.
    loop {
        keep_alive_load(listener, "/bench", s.body_bytes, connections, 20_000);
        if perf.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
    }
    let report = std::process::Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-g",
            "none",
            "--percent-limit",
            "0.4",
        ])
        .args(["--sort", "dso,symbol", "-i"])
        .arg(data)
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    drop(envoy);
    Ok(String::from_utf8_lossy(&report.stdout).into_owned())
}

/// Runs every subject for `rounds` interleaved rounds of `requests` requests each.
pub fn measure(
    subjects: &[Subject],
    rounds: usize,
    requests: u64,
    connections: usize,
    mut progress: impl FnMut(&str, usize),
) -> Result<Vec<Measured>, String> {
    let upstream = Upstream::start_named("bench")?;
    let mut envoys = Vec::new();
    for s in subjects {
        envoys.push(start_warm(s, &upstream, requests / 10 + 100, connections)?);
    }
    let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
    let mut errors = vec![0u64; subjects.len()];
    for round in 0..rounds {
        for (i, (envoy, listener)) in envoys.iter().enumerate() {
            let name = subjects.get(i).map_or("", |s| s.name.as_str());
            progress(name, round);
            let before = process_cpu(envoy.pid())?;
            let started = Instant::now();
            let body = subjects.get(i).map_or(0, |s| s.body_bytes);
            let (done, errs) = keep_alive_load(*listener, "/bench", body, connections, requests);
            let _ = started.elapsed();
            let after = process_cpu(envoy.pid())?;
            if let Some(e) = errors.get_mut(i) {
                *e += errs;
            }
            if done > 0 {
                let us = (after.saturating_sub(before)).as_secs_f64() * 1e6 / done as f64;
                if let Some(v) = per_round.get_mut(i) {
                    v.push(us);
                }
            }
        }
    }
    Ok(subjects
        .iter()
        .zip(per_round)
        .zip(errors)
        .zip(envoys.iter())
        .map(|(((s, rounds_us), errors), (envoy, _))| Measured {
            name: s.name.clone(),
            cpu_us_per_request: crate::lab::series::percentile(&rounds_us, 50.0),
            rounds_us,
            errors,
            rss_bytes: process_rss(envoy.pid()),
            allocated_bytes: admin_allocated(envoy),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_pack_config_is_the_edges_members_and_the_sidecars_padding_without_slow_start() {
        let json = super::shipped_pack_config().unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let mut members: Vec<&str> = v
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        members.sort_unstable();
        assert_eq!(
            members,
            [
                "circuit_breaker",
                "failure_padding",
                "request_validator",
                "retry_budget"
            ]
        );
    }
}
