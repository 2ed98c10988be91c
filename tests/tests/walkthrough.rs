//! The README's walkthrough, run as written against `cargo pack run`.
//!
//! Why: the walkthrough is the first thing a newcomer runs, in order, right after `cargo pack
//! run`, and reads the stats it prints as the truth about the pack. Every `$` command of its shell
//! blocks is taken from README.md itself and run in order with `sh`, as a person would paste it;
//! what each step says it shows is checked on what the command printed. A command this test does
//! not know fails the test, so the README and the test change together.
//!
//! `cargo pack run` uses fixed ports (listener 10000, admin 9901, fleet 18081–18084, control
//! 18090); `harness::free_port` never hands those out, so other tests do not meet it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::paths::{target_dir, workspace_root};

/// One `$` command of the walkthrough and the output the README shows under it.
struct Step {
    command: String,
    shown: Vec<String>,
}

/// The `$` commands of the README's `### Walkthrough` section, in order.
fn walkthrough_steps() -> Vec<Step> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section: Vec<&str> = readme
        .lines()
        .skip_while(|l| l.trim() != "### Walkthrough")
        .skip(1)
        .take_while(|l| !l.starts_with("## ") && !l.starts_with("### "))
        .collect();
    assert!(
        !section.is_empty(),
        "README.md has a ### Walkthrough section"
    );
    let mut steps: Vec<Step> = Vec::new();
    let mut in_sh = false;
    for line in section {
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: cmd.to_owned(),
                shown: Vec::new(),
            });
        } else if let Some(step) = steps.last_mut() {
            step.shown.push(line.to_owned());
        }
    }
    steps
}

/// `cargo pack run`, killed (with its Envoy and fleet) when dropped.
struct PackRun(Child);

impl Drop for PackRun {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_pack_run() -> PackRun {
    start_run(&[])
}

/// `cargo pack run` with `args` (for example `--config FILE`).
fn start_run(args: &[&str]) -> PackRun {
    // The other walkthrough's run may still be stopping (its Envoy ends through its watchdog).
    for port in [10_000u16, 9901, 18_090] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "port {port} is in use: is a `cargo pack run` still running?"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "xtask"])
        .status()
        .unwrap();
    assert!(built.success(), "cargo build -p xtask");
    // The xtask binary itself (not `cargo run`), so that killing it ends the fleet it runs and,
    // through Envoy's watchdog, the Envoy it started.
    let mut child = Command::new(target_dir().join("debug/xtask"))
        .current_dir(workspace_root())
        .args(["run", "--for", "300"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let run = PackRun(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = String::new();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                printed.push_str(&line);
                printed.push('\n');
                if line.contains("Press Ctrl-C to stop") {
                    break;
                }
            }
            _ => panic!("cargo pack run stopped before the pack was up:\n{printed}"),
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    // A person opens another terminal: a moment passes before the first command.
    std::thread::sleep(Duration::from_secs(2));
    run
}

fn sh(command: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", command])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{command}` failed ({}):\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The number after the last `:` or space of the first line of `text` that contains `name`.
fn stat_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.rsplit([' ', ':']).next())
        .and_then(|v| v.trim().parse().ok())
}

/// The HTTP status codes a `-w '%{http_code} '` loop printed.
fn codes(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// What the README says a step shows, checked on what it printed.
fn check(step: &Step, out: &str) {
    let c = step.command.as_str();
    // Generic: a status line the README shows is the status line the command printed, and so is
    // every decision header it shows (by name and first word).
    for shown in &step.shown {
        if shown.starts_with("HTTP/1.1 ") {
            assert!(
                out.contains(shown.as_str()),
                "`{c}` shows {shown:?}:\n{out}"
            );
        }
        if let Some(header) = shown.strip_prefix("x-resilience-") {
            let decision = header.split(';').next().unwrap_or(header);
            assert!(
                out.contains(&format!("x-resilience-{decision}")),
                "`{c}` shows x-resilience-{decision}:\n{out}"
            );
        }
    }
    if c.starts_with("curl -i localhost:10000/api/hello") {
        assert!(out.contains("x-upstream-name: instance-"), "{out}");
    } else if c.starts_with("curl -s localhost:18090/") {
        assert!(out.contains("instance"), "the fleet's status: {out}");
    } else if c.contains("-d '{\"items\":[]}'") {
        assert!(out.contains("\"rule\":\"json_schema\""), "{out}");
    } else if c.contains("seq 30") && c.contains("api/orders") {
        let codes = codes(out);
        assert_eq!(codes.len(), 30, "{out}");
        assert_eq!(
            codes.last(),
            Some(&"503"),
            "the breaker is open by the end: {out}"
        );
    } else if c.starts_with("curl -i localhost:10000/api/orders") {
        assert!(out.contains("retry-after: "), "{out}");
    } else if c.contains("seq 40") && c.contains("api/hello") {
        let codes = codes(out);
        assert_eq!(codes.len(), 40, "{out}");
        assert!(
            codes.iter().all(|c| *c == "200"),
            "clients keep getting 200: {out}"
        );
    } else if c.contains("failure_padding.instance_3") {
        let padded = stat_value(out, "instance_3.padded");
        assert!(
            padded.is_some_and(|n| n > 0),
            "the black hole's failures are padded: {out}"
        );
    } else if c.contains("stats/prometheus") {
        assert!(
            stat_value(out, "circuit_breaker_rejected{breaker_key=\"orders\"}")
                .is_some_and(|n| n > 0),
            "{out}"
        );
        assert_eq!(
            stat_value(out, "request_validator_rejected{route_key=\"orders\"}"),
            Some(1),
            "{out}"
        );
    } else if c.contains("stats?filter=wasmcustom") {
        assert!(out.contains("wasmcustom."), "{out}");
    } else if c.contains("localhost:18090/instances/") || c.contains("seq 200") {
        // Changes the fleet, or sends traffic whose effect a later step shows.
    } else {
        panic!("the walkthrough has a command this test does not check: `{c}`");
    }
}

#[test]
fn the_readme_walkthrough_shows_what_it_says_when_run_in_order_after_cargo_pack_run() {
    let steps = walkthrough_steps();
    assert!(steps.len() >= 8, "the walkthrough's commands were found");
    let started = Instant::now();
    let _pack = start_pack_run();
    for step in &steps {
        // `watch` is for a person's terminal; the step after it shows the same stats once.
        if step.command.starts_with("watch ") {
            continue;
        }
        let out = sh(&step.command);
        println!("$ {}\n{out}", step.command);
        check(step, &out);
    }
    println!("figure: the walkthrough ran in {:?}", started.elapsed());
}

/// The cells walkthrough `cargo pack run --config envoy-configs/slow-start-cells.yaml` prints:
/// every cell serves, then one `sed` on the document drains use1-az1 and it serves nothing.
#[test]
fn the_cells_walkthrough_drains_a_cell_by_editing_the_document_cargo_pack_run_serves() {
    let _run = start_run(&["--config", "envoy-configs/slow-start-cells.yaml"]);
    let cells = |n: usize| -> String {
        sh(&format!(
            "for i in $(seq {n}); do curl -s localhost:10000/api/hello -D - -o /dev/null | grep -o 'cell=[a-z0-9-]*'; done | sort | uniq -c"
        ))
    };
    let before = cells(60);
    for cell in ["use1-az1", "use1-az2", "use1-az3"] {
        assert!(before.contains(cell), "every cell serves:\n{before}");
    }
    let doc = workspace_root().join("target/pack-run/cells.json");
    sh(&format!(
        "sed -i 's/\"drain_percent\": [0-9.]*/\"drain_percent\": 100/' {}",
        doc.display()
    ));
    // One discovery interval (2 s) and the ramp at drain_rate 20 (5 s), with a margin.
    std::thread::sleep(Duration::from_secs(9));
    let after = cells(60);
    assert!(!after.contains("use1-az1"), "use1-az1 is drained:\n{after}");
    println!("before:\n{before}after the drain:\n{after}");
    let stats = sh("curl -s 'localhost:9901/stats?filter=slow_start.cell.use1-az1'");
    assert_eq!(
        stat_value(
            &stats,
            "wasmcustom.slow_start.cell.use1-az1.effective_drain"
        ),
        Some(100_000),
        "{stats}"
    );
}
