//! A bounded registry of keys in shared data.
//!
//! Shared data has no delete and no eviction, so every key space a filter creates from traffic
//! (route names, header values, endpoints) must be capped by configuration, across all workers
//! together. A registry is one shared-data value listing the admitted keys; a worker admits a new
//! key with one CAS, once, and caches the answer. Past the cap, [`KeyRegistry::admit`] says no and
//! the filter degrades as it documents (typically: pass unguarded and count it).

use crate::host::Host;
use crate::shared::{cas_update_on, get_on, SharedError, Update, DEFAULT_CAS_ATTEMPTS};
use crate::wasm::WasmHost;

/// A capped set of keys shared by all workers, stored under one shared-data key of host `H`.
pub struct KeyRegistry<H: Host = WasmHost> {
    host: H,
    shared_key: String,
    max: usize,
}

impl KeyRegistry {
    /// A registry stored under `shared_key` on the real host, holding at most `max` keys.
    pub fn new(shared_key: String, max: usize) -> Self {
        KeyRegistry::on(WasmHost, shared_key, max)
    }
}

impl<H: Host> KeyRegistry<H> {
    /// A registry stored under `shared_key` on `host`, holding at most `max` keys.
    pub fn on(host: H, shared_key: String, max: usize) -> Self {
        KeyRegistry {
            host,
            shared_key,
            max,
        }
    }

    /// How many keys are registered (one read).
    pub fn count(&self) -> Result<usize, SharedError> {
        let v = get_on(&self.host, &self.shared_key)?;
        Ok(v.value.as_deref().map_or(0, |b| {
            b.split(|&c| c == b'\n').filter(|k| !k.is_empty()).count()
        }))
    }

    /// Admit `key` if it is known or there is room. Keys must not contain `'\n'`.
    pub fn admit(&self, key: &str) -> Result<bool, SharedError> {
        if key.contains('\n') {
            return Ok(false);
        }
        let max = self.max;
        cas_update_on(&self.host, &self.shared_key, DEFAULT_CAS_ATTEMPTS, |cur| {
            let text = cur.map(String::from_utf8_lossy).unwrap_or_default();
            let mut count = 0usize;
            for k in text.split('\n').filter(|k| !k.is_empty()) {
                if k == key {
                    return Update::Keep(true);
                }
                count += 1;
            }
            if count >= max {
                return Update::Keep(false);
            }
            let mut next = text.into_owned();
            next.push_str(key);
            next.push('\n');
            Update::Write(next.into_bytes(), true)
        })
    }
}
