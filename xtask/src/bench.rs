//! `cargo pack bench`: what the pack costs, beside what it saves (the lab).
//!
//! Envoy CPU time per request (process CPU delta ÷ completed requests, interleaved rounds, median)
//! for bare Envoy, a no-op wasm filter, each filter on its healthy path, all of them chained, and
//! Envoy's native equivalents — in one run, as ratios to bare Envoy. Also each module's size and
//! Envoy's resident memory. Writes `lab-results/bench.md`.

use std::fmt::Write as _;

use harness::bench::{self, Subject};
use harness::paths::workspace_root;

/// Each filter on its healthy path: (crate, root id, configuration). A filter is benchmarked once
/// its crate builds a module that accepts this configuration.
const FILTERS: &[(&str, &str, &str)] = &[
    (
        "request-validator",
        "request_validator",
        r#"{"allowed_methods": ["GET", "POST"], "max_path_bytes": 2048, "max_header_count": 64}"#,
    ),
    ("circuit-breaker", "circuit_breaker", "{}"),
    ("retry-budget", "retry_budget", r#"{"max_retries": 1}"#),
    // Admit mode with the ramp at 100%: the whole decision path, nothing shed.
    ("slow-start", "slow_start", r#"{"min_weight_percent": 100}"#),
    ("failure-padding", "failure_padding", "{}"),
];

/// The filters the pack module runs as stages: all five.
const PACK_STAGES: &[&str] = &[
    "request_validator",
    "circuit_breaker",
    "retry_budget",
    "slow_start",
    "failure_padding",
];

const NATIVE_FILTER: &str = r#"- name: envoy.filters.http.admission_control
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl
    enabled: { default_value: true, runtime_key: ac.enabled }
    sampling_window: 30s
    sr_threshold: { default_value: { value: 95.0 }, runtime_key: ac.sr }
    aggression: { default_value: 1.0, runtime_key: ac.aggression }
    success_criteria:
      http_criteria:
        http_success_status: [{ start: 100, end: 500 }]
"#;

const NATIVE_CLUSTER: &str = "outlier_detection:\n  consecutive_5xx: 5\n  interval: 10s\ncircuit_breakers:\n  thresholds:\n    - retry_budget:\n        budget_percent: { value: 20.0 }\n        min_retry_concurrency: 3\n";

/// The body of the POST subjects: enough for Envoy to call body callbacks on every request.
const POST_BODY_BYTES: usize = 4096;

fn subject(name: &str, filters_yaml: String) -> Subject {
    Subject {
        name: name.into(),
        filters_yaml,
        cluster_yaml: String::new(),
        body_bytes: 0,
        concurrency: 2,
        bootstrap_yaml: String::new(),
    }
}

fn subjects() -> Result<Vec<Subject>, String> {
    let noop = bench::wasm_filter("noop-filter", "noop", "{}")?;
    let headers_only = bench::wasm_filter("noop-headers-only", "noop_headers_only", "{}")?;
    let post = |s: Subject| Subject {
        name: format!("{}, POST {} KiB", s.name, POST_BODY_BYTES / 1024),
        body_bytes: POST_BODY_BYTES,
        ..s
    };
    let mut out = vec![
        subject("bare Envoy", String::new()),
        subject("no-op wasm filter", noop.clone()),
        // The SDK exports every callback; this one only the header callbacks (see
        // tests/noop-headers-only): the difference is what unused callbacks cost.
        subject(
            "no-op wasm filter, header callbacks only",
            headers_only.clone(),
        ),
        post(subject("bare Envoy", String::new())),
        post(subject("no-op wasm filter", noop)),
        post(subject(
            "no-op wasm filter, header callbacks only",
            headers_only,
        )),
    ];
    let mut chain = String::new();
    for (krate, root, config) in FILTERS {
        let f = bench::wasm_filter(krate, root, config)?;
        chain.push_str(&f);
        out.push(subject(krate, f));
    }
    if FILTERS.len() > 1 {
        out.push(subject(
            &format!("all {} filters chained", FILTERS.len()),
            chain,
        ));
    }
    // The same filters with the same configurations as stages of one module.
    let members: Vec<String> = FILTERS
        .iter()
        .filter(|(_, root, _)| PACK_STAGES.contains(root))
        .map(|(_, root, config)| format!("\"{root}\": {config}"))
        .collect();
    let pack = bench::wasm_filter(
        "resilience-pack",
        "resilience_pack",
        &format!("{{{}}}", members.join(", ")),
    )?;
    out.push(subject(
        &format!("the pack module, {} stages", members.len()),
        pack.clone(),
    ));
    // The shipped configuration's own settings (per-route entries, schemas), not `{}`, and its
    // bootstrap's memory release (which gives back what V8 freed after compiling the module).
    out.push(Subject {
        bootstrap_yaml: bench::shipped_memory_release()?,
        ..subject(
            "the pack module, envoy-configs/pack.yaml's settings (all but slow start; its memory release)",
            bench::wasm_filter(
                "resilience-pack",
                "resilience_pack",
                &bench::shipped_pack_config()?,
            )?,
        )
    });
    // Memory has a fixed part per module and a part per worker (one VM each): the same two
    // configurations at 1 and 4 workers, each against bare Envoy at that many.
    for concurrency in [1, 4] {
        for (name, filters) in [
            ("bare Envoy", String::new()),
            (
                &*format!("the pack module, {} stages", members.len()),
                pack.clone(),
            ),
        ] {
            out.push(Subject {
                name: format!("{name}, --concurrency {concurrency}"),
                concurrency,
                ..subject(name, filters)
            });
        }
    }
    out.push(Subject {
        name: "Envoy native (outlier + retry budget + admission control)".into(),
        filters_yaml: NATIVE_FILTER.into(),
        cluster_yaml: NATIVE_CLUSTER.into(),
        ..subject("", String::new())
    });
    Ok(out)
}

/// `--profile NAME`: the first configuration whose name contains NAME, under the bench's load,
/// profiled with perf; the report goes to `lab-results/profile-<slug>.txt`.
fn profile(subjects: &[Subject], wanted: &str) -> Result<(), String> {
    let s = subjects
        .iter()
        .find(|s| s.name.contains(wanted))
        .ok_or(format!("no configuration's name contains {wanted:?}"))?;
    let slug: String = s
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let dir = workspace_root().join("lab-results");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    println!(
        "profiling {:?} for 15 s (perf record -e cpu-clock -g)",
        s.name
    );
    let report = bench::profile(s, 15, 8, &dir.join(format!("profile-{slug}.data")))?;
    let out = dir.join(format!("profile-{slug}.txt"));
    std::fs::write(&out, &report).map_err(|e| e.to_string())?;
    for line in report
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(40)
    {
        println!("{line}");
    }
    println!("written to {}", out.display());
    Ok(())
}

/// How many calls of one kind a host-call probe makes per request: enough that the difference
/// from the no-op stands out of the noise, so one call's price is (row − no-op) / this.
const PROBE_CALLS: u32 = 10;

/// The no-op filter making [`PROBE_CALLS`] host calls of one kind per request, a row per kind
/// (see `tests/noop-filter`): what each kind of call costs in Envoy, to price a filter's calls.
fn host_call_subjects() -> Result<Vec<Subject>, String> {
    const KINDS: &[&str] = &[
        "clock",
        "property",
        "request_header",
        "request_pairs",
        "response_header",
        "missing_header",
        "add_response_header",
        "shared_get",
        "metric",
    ];
    KINDS
        .iter()
        .map(|kind| {
            let config = format!(r#"{{"calls": "{kind}={PROBE_CALLS}"}}"#);
            let yaml = bench::wasm_filter("noop-filter", "noop", &config)?;
            Ok(subject(
                &format!("no-op wasm filter + {PROBE_CALLS} × {kind}"),
                yaml,
            ))
        })
        .collect()
}

/// `--exports`: the SDK's no-op with callbacks taken away from its exports, one group at a time,
/// under GET and POST load: what each callback Envoy calls costs it per request.
fn export_subjects() -> Result<Vec<Subject>, String> {
    const GROUPS: &[(&str, &[&str])] = &[
        ("proxy_on_log", &["proxy_on_log"]),
        (
            "body and trailer callbacks",
            &[
                "proxy_on_request_body",
                "proxy_on_response_body",
                "proxy_on_request_trailers",
                "proxy_on_response_trailers",
            ],
        ),
        (
            "log, body and trailer callbacks",
            &[
                "proxy_on_log",
                "proxy_on_request_body",
                "proxy_on_response_body",
                "proxy_on_request_trailers",
                "proxy_on_response_trailers",
            ],
        ),
    ];
    let mut out = Vec::new();
    for (i, (label, drop)) in GROUPS.iter().enumerate() {
        let yaml = bench::wasm_filter_without(
            "noop-filter",
            "noop",
            "{}",
            &format!("noop-without-{i}"),
            drop,
        )?;
        let name = format!("no-op wasm filter without {label}");
        out.push(subject(&name, yaml.clone()));
        out.push(Subject {
            name: format!("{name}, POST {} KiB", POST_BODY_BYTES / 1024),
            body_bytes: POST_BODY_BYTES,
            ..subject(&name, yaml)
        });
    }
    Ok(out)
}

/// Each subject that loads a module of this build, followed by its twin loading `dir`'s module of
/// the same file name (a copy of `target/wasm32-wasip1/release` from before a change): on a
/// machine whose speed drifts between runs, before and after are only comparable in one run.
fn with_baseline(subjects: Vec<Subject>, dir: &std::path::Path) -> Result<Vec<Subject>, String> {
    // The harness hands out the finished copies (`release/finished/`); a baseline directory
    // holds its modules directly.
    let built = workspace_root().join("target/wasm32-wasip1/release/finished");
    let (built, dir) = (built.display().to_string(), dir.display().to_string());
    let mut out = Vec::new();
    for s in subjects {
        let twin = s.filters_yaml.contains(&built).then(|| Subject {
            name: format!("{} (baseline)", s.name),
            filters_yaml: s.filters_yaml.replace(&built, &dir),
            ..s.clone()
        });
        out.push(s);
        out.extend(twin);
    }
    if !out.iter().any(|s| s.name.ends_with("(baseline)")) {
        return Err(format!(
            "--baseline {dir}: no configuration loads a module to compare"
        ));
    }
    Ok(out)
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let (rounds, requests) = if quick { (3, 3_000) } else { (7, 20_000) };
    println!("building the filters (wasm32-wasip1, release)...");
    crate::test::build_wasm()?;
    harness::wasm::build(&["noop-filter", "noop-headers-only"])?;
    harness::envoy::ensure_installed()?;
    let mut subjects = subjects()?;
    if args.iter().any(|a| a == "--exports") {
        subjects.extend(export_subjects()?);
    }
    if args.iter().any(|a| a == "--host-calls") {
        subjects.extend(host_call_subjects()?);
    }
    if let Some(pos) = args.iter().position(|a| a == "--only") {
        let wanted: Vec<&str> = args
            .get(pos + 1)
            .ok_or("usage: cargo pack bench --only NAME[,NAME...]")?
            .split(',')
            .collect();
        subjects.retain(|s| {
            (s.filters_yaml.is_empty() && s.cluster_yaml.is_empty())
                || wanted.iter().any(|w| s.name.contains(w))
        });
    }
    if let Some(pos) = args.iter().position(|a| a == "--baseline") {
        let dir = args
            .get(pos + 1)
            .ok_or("usage: cargo pack bench --baseline DIR (modules built before a change)")?;
        subjects = with_baseline(subjects, std::path::Path::new(dir))?;
    }
    if let Some(pos) = args.iter().position(|a| a == "--profile") {
        let wanted = args
            .get(pos + 1)
            .ok_or("usage: cargo pack bench --profile NAME")?;
        return profile(&subjects, wanted);
    }
    println!("{} configurations × {rounds} interleaved rounds × {requests} requests (8 keep-alive connections)", subjects.len());
    let results = bench::measure(&subjects, rounds, requests, 8, |name, round| {
        eprint!("\r  round {}/{rounds}: {name:<60}", round + 1);
    })?;
    eprintln!();
    // Each subject is compared with bare Envoy under the same load (GET, or POST with a body).
    let bare_for = |body: (usize, u32)| {
        subjects
            .iter()
            .zip(&results)
            .find(|(s, _)| {
                s.filters_yaml.is_empty()
                    && s.cluster_yaml.is_empty()
                    && s.body_bytes == body.0
                    && s.concurrency == body.1
            })
            .map_or(1.0, |(_, r)| r.cpu_us_per_request.max(1e-9))
    };
    let mut md = String::new();
    let _ = writeln!(md, "Envoy {} at --concurrency 2 (unless a row says otherwise; its × bare is then against bare Envoy at that concurrency), {rounds} interleaved rounds of {requests} requests, median CPU per request.\n", harness::ENVOY_VERSION);
    let _ = writeln!(
        md,
        "| configuration | Envoy CPU µs/request | × bare | errors | Envoy RSS | Envoy allocated (admin /memory) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for (s, r) in subjects.iter().zip(&results) {
        let bare = bare_for((s.body_bytes, s.concurrency));
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.2} | {} | {} | {} |",
            r.name,
            r.cpu_us_per_request,
            r.cpu_us_per_request / bare,
            r.errors,
            r.rss_bytes
                .map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            r.allocated_bytes
                .map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
        );
    }
    let _ = writeln!(
        md,
        "\nRSS is the process's resident memory (`/proc`), which includes the V8 heaps of the wasm VMs \
         (one per worker per filter); `allocated` is what Envoy's own allocator reports on its admin \
         `/memory` endpoint, which V8's wasm memory bypasses."
    );
    let _ = writeln!(md, "\n| module | size |\n|---|---:|");
    let dir = workspace_root().join("target/wasm32-wasip1/release");
    let mut modules: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        // The modules measured here, not the host-only crates a root-level wasm build leaves.
        .filter(|e| {
            let stem = e
                .path()
                .file_stem()
                .map(|s| s.to_string_lossy().replace('_', "-"));
            stem.is_some_and(|stem| {
                FILTERS.iter().any(|(k, _, _)| *k == stem)
                    || ["noop-filter", "noop-headers-only", "resilience-pack"]
                        .contains(&stem.as_str())
            })
        })
        .collect();
    modules.sort_by_key(|e| e.file_name());
    for m in modules {
        let size = m.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(
            md,
            "| {} | {:.0} KiB |",
            m.file_name().to_string_lossy(),
            size as f64 / 1024.0
        );
    }
    println!("\n{md}");
    let out = workspace_root().join("lab-results/bench.md");
    harness::lab::report::write(&out, &md)?;
    println!("written to {}", out.display());
    if args.iter().any(|a| a == "--update-readme") {
        crate::lab::replace_block(
            "<!-- bench:begin -->",
            "<!-- bench:end -->",
            &format!(
                "Generated by `cargo pack bench{}` on this machine ({} cores).\n\n{md}",
                if quick { " --quick" } else { "" },
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
        )?;
        println!("README.md updated from this run");
    }
    Ok(())
}
