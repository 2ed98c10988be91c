//! The Envoy configs the project ships (`envoy-configs/`), made runnable inside a test.
//!
//! Why: a shipped config is documentation users copy, so every one is validated and run against
//! real Envoy. They name fixed ports (listener 10000, admin 9901, upstream 18080, …) and a wasm
//! path relative to the repository; tests run in parallel on free ports with the modules wherever
//! the build put them. This module does that rewriting once, for every filter's tests.

use std::collections::HashMap;

use crate::envoy::{free_port, Envoy, EnvoyOptions};

/// `envoy-configs/<name>` with the wasm module path pointing at the built modules.
pub fn read(name: &str) -> Result<String, String> {
    let path = crate::paths::workspace_root()
        .join("envoy-configs")
        .join(name);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let dir = crate::wasm::modules_dir()?.display().to_string();
    Ok(text.replace("target/wasm32-wasip1/release", &dir))
}

/// Replaces every whole number in `text` that `ports` maps. A number is a maximal run of ASCII
/// digits, so mapping 10001 never touches 110001, and a port written as `port_value: 18080`,
/// `127.0.0.1:18080` or `destination_port: 18080` is found alike.
pub fn remap_ports(text: &str, ports: &HashMap<u16, u16>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        let mapped = digits
            .parse::<u16>()
            .ok()
            .and_then(|p| ports.get(&p))
            .map(u16::to_string);
        out.push_str(mapped.as_deref().unwrap_or(digits));
        digits.clear();
    };
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
        } else {
            flush(&mut digits, &mut out);
            out.push(ch);
        }
    }
    flush(&mut digits, &mut out);
    out
}

/// A shipped config, validated with `envoy --mode validate`, on free ports.
pub struct Shipped {
    pub yaml: String,
    /// The port that replaced the listener's 10000.
    pub listener: u16,
}

/// Reads and validates `envoy-configs/<name>`, moves its listener (10000) and admin (9901) to
/// free ports and applies `more` (e.g. 18080 → the test upstream's port).
pub fn prepare(name: &str, more: &[(u16, u16)]) -> Result<Shipped, String> {
    let text = read(name)?;
    crate::envoy::validate(&text).map_err(|e| format!("{name} does not validate: {e}"))?;
    let listener = free_port();
    let mut ports: HashMap<u16, u16> = more.iter().copied().collect();
    ports.insert(10000, listener);
    ports.insert(9901, free_port());
    Ok(Shipped {
        yaml: remap_ports(&text, &ports),
        listener,
    })
}

/// [`prepare`] with the upstream port 18080 mapped to `upstream_port`, then starts Envoy and
/// waits for the listener.
pub fn start(name: &str, upstream_port: u16) -> Result<(Envoy, u16), String> {
    let shipped = prepare(name, &[(18080, upstream_port)])?;
    let envoy = Envoy::start(&shipped.yaml, &EnvoyOptions::default())?;
    envoy.wait_listener(shipped.listener)?;
    Ok((envoy, shipped.listener))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn remapping_replaces_whole_numbers_only() {
        let ports: HashMap<u16, u16> = [(10001, 4242), (18080, 5555)].into_iter().collect();
        assert_eq!(
            remap_ports(
                "port_value: 10001, 110001, \"127.0.0.1:18080\", 18080s, 1000",
                &ports
            ),
            "port_value: 4242, 110001, \"127.0.0.1:5555\", 5555s, 1000"
        );
    }
}
