//! `cargo pack schema`: writes each filter's configuration JSON Schema to
//! `schemas/<filter>.schema.json`.
//!
//! Why generated and committed: editors and CI steps need a file to point at, and the schema must
//! say what the filter really accepts. Each one comes from its filter's config types
//! (`<filter>::config::json_schema()`), and the harness test `tests/tests/schema.rs` fails when a
//! committed file differs from what the code generates now. `--check` reports that difference
//! without writing, for a CI step.

use harness::paths::workspace_root;
use resilience_core::schema::to_canonical_string;

/// A filter's `config::json_schema`.
type Generate = fn() -> serde_json::Value;

/// Every filter crate and its schema; `test::FILTERS` names the same crates.
const SCHEMAS: &[(&str, Generate)] = &[
    ("circuit-breaker", circuit_breaker::config::json_schema),
    ("retry-budget", retry_budget::config::json_schema),
    ("failure-padding", failure_padding::config::json_schema),
    ("request-validator", request_validator::config::json_schema),
    ("slow-start", slow_start::config::json_schema),
];

pub fn schema(args: &[String]) -> Result<(), String> {
    let check = match args {
        [] => false,
        [flag] if flag == "--check" => true,
        _ => return Err("usage: cargo pack schema [--check]".to_owned()),
    };
    let dir = workspace_root().join("schemas");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut stale = Vec::new();
    for (name, generate) in SCHEMAS {
        let path = dir.join(format!("{name}.schema.json"));
        let text = to_canonical_string(&generate());
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == text {
            println!("unchanged {}", path.display());
        } else if check {
            stale.push(path.display().to_string());
        } else {
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "out of date (run `cargo pack schema`): {}",
            stale.join(", ")
        ))
    }
}
