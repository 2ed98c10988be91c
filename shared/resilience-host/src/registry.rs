//! A bounded registry of keys in shared data.
//!
//! Shared data has no delete and no eviction, so every key space a filter creates from traffic
//! (route names, header values, endpoints) must be capped by configuration, across all workers
//! together. A registry is one shared-data value listing the admitted keys; a worker admits a new
//! key with one CAS, once, and caches the answer. Past the cap, [`KeyRegistry::admit`] says no and
//! the filter degrades as it documents (typically: pass unguarded and count it).

use resilience_core::keyed::{Handle, Keyed};

use crate::host::Host;
use crate::shared::{
    cas_update_on, get_on, SharedDataTrouble, SharedError, Update, DEFAULT_CAS_ATTEMPTS,
};
use crate::wasm::WasmHost;

/// A capped set of keys shared by all workers, stored under one shared-data key of host `H`.
pub struct KeyRegistry<H: Host = WasmHost> {
    host: H,
    shared_key: String,
    max: usize,
    /// The key [`KeyRegistry::find_or_admit`] is building, reused by every request.
    key_buf: String,
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
            key_buf: String::new(),
        }
    }

    /// A request's entry in this worker's `entries`, by the key `build` writes into the (reused)
    /// buffer. A key not seen yet is admitted here: `make` builds its entry if this worker has
    /// fewer than `max` entries and the registry takes the key. The flag says it was admitted
    /// just now. `None`: the key space is full, or shared data failed (counted in `trouble`).
    pub fn find_or_admit<E>(
        &mut self,
        entries: &mut Keyed<E>,
        build: impl FnOnce(&mut String),
        trouble: &mut SharedDataTrouble,
        make: impl FnOnce(&str) -> E,
    ) -> Option<(Handle, bool)> {
        let mut key = std::mem::take(&mut self.key_buf);
        key.clear();
        build(&mut key);
        let found = match entries.find(&key) {
            Some(h) => Some((h, false)),
            None if entries.len() >= self.max => None,
            None => match self.admit(&key) {
                Ok(true) => entries.insert(&key, make(&key)).map(|h| (h, true)),
                Ok(false) => None,
                Err(e) => {
                    trouble.count(e);
                    None
                }
            },
        };
        self.key_buf = key;
        found
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeStore;

    #[test]
    fn keys_are_admitted_up_to_the_cap_across_workers_and_a_known_key_costs_no_shared_read() {
        let store = FakeStore::new();
        let (one, two) = (store.worker(), store.worker());
        let mut reg_one = KeyRegistry::on(one, "keys".to_owned(), 2);
        let mut reg_two = KeyRegistry::on(two, "keys".to_owned(), 2);
        let (mut mine, mut theirs) = (Keyed::new(), Keyed::new());
        let mut trouble = SharedDataTrouble::default();
        let mut entry = |reg: &mut KeyRegistry<_>, t: &mut Keyed<String>, k: &str| {
            reg.find_or_admit(t, |b| b.push_str(k), &mut trouble, str::to_owned)
        };
        let a = entry(&mut reg_one, &mut mine, "a").unwrap();
        assert!(a.1, "admitted just now");
        assert!(entry(&mut reg_two, &mut theirs, "b").unwrap().1);
        // The registry is full: a third key is refused on either worker, a known one is not.
        assert_eq!(entry(&mut reg_one, &mut mine, "c"), None);
        assert!(entry(&mut reg_one, &mut mine, "b").unwrap().1);
        let reads = store.shared_calls().0;
        assert_eq!(entry(&mut reg_one, &mut mine, "a"), Some((a.0, false)));
        assert_eq!(store.shared_calls().0, reads, "found in the table");
        assert_eq!(mine.by_key("b").map(String::as_str), Some("b"));
        store.fail_shared_data(Some(crate::abi::HostStatus(10)));
        assert_eq!(entry(&mut reg_two, &mut theirs, "a"), None);
        assert_eq!(trouble.shared_data_errors, 1);
    }
}
