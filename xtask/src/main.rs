//! `cargo pack` — the pack's one tool, so the README's two commands work on any machine with Rust
//! and Python, with or without `just`.
//!
//! - `cargo pack run`  builds the filters and starts a local Envoy (the pinned one, installed into
//!   `.tools/`) with the pack in front of an example upstream, and prints where to send traffic.
//! - `cargo pack test` runs every check CI runs: formatting, clippy (native and wasm32-wasip1),
//!   the wasm build, every test (unit, property and real-Envoy end-to-end), and the core's tests
//!   inside wasm under node.
//! - `cargo pack lab` runs the failure lab (see `harness::lab`); `cargo pack bench` measures the
//!   pack's cost (see `harness::bench`).
//! - `cargo pack schema` writes each filter configuration's JSON Schema to `schemas/` (see
//!   `schemas/README.md`).
//! - `cargo pack fuzz` runs every fuzz target for a while (see `fuzz`).

// On the host only: a wasm build of the whole workspace (`cargo build --target wasm32-wasip1`
// at the root) compiles this program to an empty module rather than failing.
#![cfg_attr(target_family = "wasm", no_main)]
#![cfg(not(target_family = "wasm"))]

mod bench;
mod fuzz;
mod lab;
mod run;
mod schema;
mod test;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo pack <command>\n\n\
         commands:\n  \
         run [--for SECONDS]   build the pack and run it in a local Envoy in front of an example upstream\n  \
         test [--quick]        every check and test (--quick: skip lint and the in-wasm core tests)\n  \
         lab [--quick] [--scenario NAME] [--update-readme]\n                        \
         the failure lab: outages with and without the pack, HTML report in lab-results/\n  \
         bench [--quick] [--update-readme] [--only NAME,...] [--exports] [--host-calls] [--baseline DIR] [--profile NAME]\n                        \
         Envoy CPU per request: bare, no-op wasm, each filter, chained, the pack, Envoy native\n                        \
         (--exports: what unused callbacks cost; --host-calls: what one host call of each kind costs;\n                        \
         --baseline DIR: each module row also with DIR's copy of it, before and after in one run)\n  \
         build                 build every filter for wasm32-wasip1 (release)\n  \
         schema [--check]      write each filter's configuration JSON Schema to schemas/ (--check: only compare)\n  \
         fuzz [--seconds N] [--target NAME]\n                        \
         coverage-guided fuzzing, N seconds per target (default 60), stable Rust, no cargo-fuzz"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let result = match args.first().map(String::as_str) {
        Some("run") => run::run(rest),
        Some("test") => test::test(rest),
        Some("lab") => lab::lab(rest),
        Some("bench") => bench::bench(rest),
        Some("schema") => schema::schema(rest),
        Some("fuzz") => fuzz::fuzz(rest),
        Some("build") => test::build_wasm().map(|p| {
            println!("built {}", p.display());
        }),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cargo pack: {e}");
            ExitCode::FAILURE
        }
    }
}
