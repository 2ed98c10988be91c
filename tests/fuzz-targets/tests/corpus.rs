//! Replays the committed seed corpus (`fuzz/corpus/<target>/`) through every fuzz target's body,
//! natively: the regression check `cargo pack test` runs, in well under a second. The
//! coverage-guided runs are `cargo pack fuzz` (see the README's "Fuzzing" section).
//!
//! Every input a fuzz run ever found (a crash, or a property that broke) is added to its
//! target's corpus when it is fixed, so this test keeps it fixed.

// Test helpers outside `#[test]` functions: the no-panic rules are for code in the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use fuzz_targets::{seeds, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let body = fuzz_targets::target(target).unwrap();
    let files = corpus_files(target);
    assert!(!files.is_empty(), "{target} has no seeds");
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failures.push(file.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: seeds that break a property (the panic messages are above):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_circuit_breaker_config_seed_holds_its_properties() {
    replay("config_breaker");
}

#[test]
fn every_retry_budget_config_seed_holds_its_properties() {
    replay("config_budget");
}

#[test]
fn every_failure_padding_config_seed_holds_its_properties() {
    replay("config_padding");
}

#[test]
fn every_request_validator_config_seed_holds_its_properties() {
    replay("config_validator");
}

#[test]
fn every_slow_start_config_seed_holds_its_properties() {
    replay("config_slow_start");
}

#[test]
fn every_request_seed_holds_the_validators_properties() {
    replay("validator_request");
}

#[test]
fn every_openapi_seed_holds_its_properties() {
    replay("openapi");
}

#[test]
fn every_discovery_document_seed_holds_its_properties() {
    replay("discovery");
}

#[test]
fn every_shared_state_seed_holds_its_properties() {
    replay("shared_decode");
}

#[test]
fn every_header_value_seed_holds_its_properties() {
    replay("headers");
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_corpus_and_nothing_else_does() {
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    let listed = |dir: &str, ext: Option<&str>| -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(fuzz_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| ext.is_none_or(|x| p.extension().and_then(|e| e.to_str()) == Some(x)))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    };
    let mut expected: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    expected.sort();
    assert_eq!(listed("fuzz_targets", Some("rs")), expected);
    assert_eq!(listed("corpus", None), expected);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in names {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}

#[test]
fn the_committed_shared_state_seeds_are_what_the_encoders_write_now() {
    let dir = fuzz_dir().join("corpus/shared_decode");
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for (name, bytes) in seeds::shared_decode() {
        let path = dir.join(&name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "stale seeds (a layout changed?): {stale:?}; rewrite them with \
         FUZZ_WRITE_SEEDS=1 cargo test -p fuzz-targets --test corpus"
    );
}

#[test]
fn the_seed_corpus_stays_small() {
    let mut total = 0u64;
    for (name, _) in TARGETS {
        for file in corpus_files(name) {
            total += std::fs::metadata(file).unwrap().len();
        }
    }
    assert!(total < 200 * 1024, "the seed corpus is {total} bytes");
}
