//! The pack's configuration: one optional member per filter, each exactly that filter's own
//! configuration.
//!
//! Why this shape: a user moving from five modules to one pastes each filter's configuration
//! under its name and changes nothing else; the errors are the filter's own, with the member in
//! front of the path (`circuit_breaker.routes[1].failure_rate_threshold: …`). A missing member is
//! a stage that is off; an unknown one is refused, since a misspelt member would otherwise turn a
//! filter off without a word.

use resilience_core::config::ConfigError;

/// The members, in the order the stages run.
pub const MEMBERS: [&str; 5] = [
    "request_validator",
    "circuit_breaker",
    "retry_budget",
    "slow_start",
    "failure_padding",
];

/// Each stage's configuration bytes, by its place in [`MEMBERS`]; `None` for a stage that is off.
pub type Members = [Option<Vec<u8>>; 5];

/// Splits the pack configuration into the stages' own. An empty configuration is an empty object
/// (every stage off: the module passes every request through).
pub fn split(bytes: &[u8]) -> Result<Members, ConfigError> {
    let mut members: Members = Default::default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(members);
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ConfigError::new("", format!("must be JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ConfigError::new(
            "",
            format!(
                "must be a JSON object with one member per filter, any of: {}",
                MEMBERS.join(", ")
            ),
        ));
    };
    for (name, member) in map {
        let Some(at) = MEMBERS.iter().position(|m| *m == name) else {
            return Err(ConfigError::new(
                name,
                format!("unknown member; expected one of: {}", MEMBERS.join(", ")),
            ));
        };
        if !member.is_object() {
            return Err(ConfigError::new(
                name,
                "must be an object: that filter's own configuration",
            ));
        }
        let bytes = serde_json::to_vec(&member)
            .map_err(|e| ConfigError::new(name.as_str(), format!("cannot be re-encoded: {e}")))?;
        if let Some(slot) = members.get_mut(at) {
            *slot = Some(bytes);
        }
    }
    Ok(members)
}
