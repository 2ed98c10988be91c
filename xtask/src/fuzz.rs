//! `cargo pack fuzz [--seconds N] [--target NAME]`: runs every fuzz target (`fuzz/fuzz_targets/`)
//! for N seconds each, one after another, and fails when one finds a crash or a broken property.
//!
//! Why not `cargo fuzz run`: cargo-fuzz wants a nightly toolchain (for `-Zsanitizer`) and is one
//! more tool to install, while a machine with this repository has the pinned stable Rust only.
//! The pack's targets need no sanitizer (safe Rust; a panic or a failed assertion is the
//! finding), and coverage instrumentation is a stable `rustc` pass. So this builds `fuzz/` with
//! plain `cargo build --release` and the flags cargo-fuzz uses for `--sanitizer none`, then runs
//! each target binary (libFuzzer, linked in by `libfuzzer-sys`, built with the system C++
//! compiler) on its corpus.
//!
//! - The build goes to `fuzz/target/` with an explicit `--target`, so the instrumentation
//!   reaches the fuzzed code but not build scripts or proc macros, and the workspace's own
//!   `target/` is not invalidated.
//! - Each run reads the committed seeds (`fuzz/corpus/<target>/`, never written) and the inputs
//!   earlier runs found (`fuzz/runs/<target>/`, where new ones go; not committed), so coverage
//!   accumulates from run to run.
//! - A crash is written to `fuzz/artifacts/<target>/`; the command names the file and ends with
//!   a failure after running the remaining targets. Replay one with
//!   `fuzz/target/<host>/release/<target> <file>`; once fixed, add it to the seeds, where the
//!   native replay test (`tests/fuzz-targets/tests/corpus.rs`) keeps it fixed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use harness::paths::workspace_root;

/// The flags cargo-fuzz passes for `--sanitizer none` (inline 8-bit counters, the PC table,
/// comparison tracing, stack depth), with debug assertions and overflow checks on as it does.
const RUSTFLAGS: &[&str] = &[
    "--cfg",
    "fuzzing",
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// One input running longer than this is a finding (a hang), as libFuzzer reports it.
const TIMEOUT_SECONDS: u32 = 25;

struct Options {
    seconds: u32,
    target: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let usage = "usage: cargo pack fuzz [--seconds N] [--target NAME]";
    let mut options = Options {
        seconds: 60,
        target: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                options.seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s| *s > 0)
                    .ok_or(format!("--seconds wants a positive number; {usage}"))?;
            }
            "--target" => {
                options.target = Some(it.next().ok_or(usage)?.clone());
            }
            _ => return Err(usage.to_owned()),
        }
    }
    Ok(options)
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// The targets: the files of `fuzz/fuzz_targets/` (the corpus test checks that each has a
/// `[[bin]]`, a corpus and a body).
fn targets() -> Result<Vec<String>, String> {
    let dir = fuzz_dir().join("fuzz_targets");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// The host's target triple (`rustc -vV`), for the explicit `--target`.
fn host_triple() -> Result<String, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc)
        .arg("-vV")
        .current_dir(fuzz_dir())
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| "rustc -vV names no host".to_owned())
}

/// Builds the instrumented target binaries; returns their directory.
fn build(host: &str, only: Option<&str>) -> Result<PathBuf, String> {
    let target_dir = fuzz_dir().join("target");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(fuzz_dir())
        .args(["build", "--release", "--target", host, "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        // Would take precedence over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    match only {
        Some(name) => cmd.args(["--bin", name]),
        None => cmd.arg("--bins"),
    };
    println!("==> building the fuzz targets (instrumented, release; minutes the first time)");
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building the fuzz targets failed".to_owned());
    }
    Ok(target_dir.join(host).join("release"))
}

/// What one run did, read from libFuzzer's output.
#[derive(Default)]
struct Run {
    ok: bool,
    seconds: f64,
    executions: Option<u64>,
    /// `cov:` (edges covered) and `ft:` (features) of the last status line.
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<String>,
    artifact: Option<String>,
}

/// The number after `key` in `line` (`cov: 123` → 123).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let (_, rest) = line.split_once(key)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn read_output(text: &str, run: &mut Run) {
    for line in text.lines() {
        if line.contains(" cov: ") {
            run.cov = number_after(line, " cov: ").or(run.cov);
            run.ft = number_after(line, " ft: ").or(run.ft);
            run.corpus = line
                .split(" corp: ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
                .or(run.corpus.take());
        }
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            run.executions = n.trim().parse().ok();
        }
        if let Some((_, file)) = line.split_once("Test unit written to ") {
            run.artifact = Some(file.trim().to_owned());
        }
    }
}

fn run_target(bin: &Path, name: &str, seconds: u32) -> Result<Run, String> {
    let dir = fuzz_dir();
    let found = dir.join("runs").join(name);
    let artifacts = dir.join("artifacts").join(name);
    for d in [&found, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let log_path = dir.join("runs").join(format!("{name}.log"));
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    println!(
        "==> fuzz {name} for {seconds} s (output: {})",
        log_path.display()
    );
    let started = Instant::now();
    let status = Command::new(bin.join(name))
        .current_dir(&dir)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&found)
        .arg(dir.join("corpus").join(name))
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", bin.join(name).display()))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut run = Run {
        ok: status.success(),
        seconds: started.elapsed().as_secs_f64(),
        ..Run::default()
    };
    read_output(&text, &mut run);
    if !run.ok {
        // The panic message and the stack are the end of the output.
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines
            .get(lines.len().saturating_sub(40)..)
            .unwrap_or_default();
        eprintln!("{}", tail.join("\n"));
        eprintln!(
            "{name}: FAILED; the input: {}",
            run.artifact
                .as_deref()
                .unwrap_or("(none written; see the log)")
        );
    }
    Ok(run)
}

pub fn fuzz(args: &[String]) -> Result<(), String> {
    let options = parse_args(args)?;
    let all = targets()?;
    let chosen: Vec<String> = match &options.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => {
            return Err(format!(
                "no fuzz target {t}; the targets: {}",
                all.join(", ")
            ))
        }
        None => all,
    };
    let host = host_triple()?;
    let bin = build(&host, options.target.as_deref())?;

    let mut runs = Vec::new();
    for name in &chosen {
        runs.push((name, run_target(&bin, name, options.seconds)?));
    }

    let show = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    println!(
        "\n{:<20} {:>6} {:>8} {:>12} {:>7} {:>7} {:>12}",
        "target", "result", "seconds", "executions", "cov", "ft", "corpus"
    );
    for (name, run) in &runs {
        println!(
            "{:<20} {:>6} {:>8.1} {:>12} {:>7} {:>7} {:>12}",
            name,
            if run.ok { "ok" } else { "FAILED" },
            run.seconds,
            show(run.executions),
            show(run.cov),
            show(run.ft),
            run.corpus.as_deref().unwrap_or("?"),
        );
    }
    let failed: Vec<String> = runs
        .iter()
        .filter(|(_, r)| !r.ok)
        .map(|(name, r)| {
            format!(
                "{name} ({})",
                r.artifact.as_deref().unwrap_or("no artifact")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzz targets failed: {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzers_final_status_and_artifact_lines_are_read_into_the_figures() {
        let text = "#2\tINITED cov: 10 ft: 12 corp: 3/90b exec/s: 0 rss: 30Mb\n\
                    #5000\tDONE   cov: 321 ft: 1234 corp: 45/2Kb lim: 100 exec/s: 2500 rss: 40Mb\n\
                    Done 5000 runs in 2 second(s)\n\
                    stat::number_of_executed_units: 5000\n\
                    artifact_prefix='a/'; Test unit written to a/crash-0123\n";
        let mut run = Run::default();
        read_output(text, &mut run);
        assert_eq!(run.cov, Some(321));
        assert_eq!(run.ft, Some(1234));
        assert_eq!(run.corpus.as_deref(), Some("45/2Kb"));
        assert_eq!(run.executions, Some(5000));
        assert_eq!(run.artifact.as_deref(), Some("a/crash-0123"));
    }

    #[test]
    fn the_arguments_are_seconds_and_one_target_and_nothing_else() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let o = parse_args(&args(&["--seconds", "3", "--target", "headers"])).unwrap();
        assert_eq!(o.seconds, 3);
        assert_eq!(o.target.as_deref(), Some("headers"));
        assert_eq!(parse_args(&[]).unwrap().seconds, 60);
        assert!(parse_args(&args(&["--seconds", "0"])).is_err());
        assert!(parse_args(&args(&["--fast"])).is_err());
    }
}
