//! A worker's entries, one per key, reached by a handle the stream keeps.
//!
//! Why: a keyed filter (one breaker, budget or latency target per route or cluster) finds its
//! entry once, when a request starts. Its later hooks (the response, the log) used to look the
//! entry up again by the key string, hashing it each time, in every stage of the pack. Entries are
//! never removed: the key space is bounded by `max_keys`, and shared data has no delete, so a key
//! once admitted stays for the worker's life. The position an entry got when it was admitted is
//! therefore a stable name for it: the [`Handle`].
//!
//! A handle is only meaningful for the table that gave it out; another table's handle finds
//! nothing or some other entry, so each worker keeps its handles to itself.

use hashbrown::HashMap;

/// Names one entry of one [`Keyed`] table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle(u32);

/// Entries by key, in the order they were admitted.
#[derive(Debug)]
pub struct Keyed<E> {
    index: HashMap<String, Handle>,
    entries: Vec<(String, E)>,
}

impl<E> Default for Keyed<E> {
    fn default() -> Self {
        Keyed {
            index: HashMap::new(),
            entries: Vec::new(),
        }
    }
}

impl<E> Keyed<E> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The handle of `key`'s entry, if it was admitted.
    pub fn find(&self, key: &str) -> Option<Handle> {
        self.index.get(key).copied()
    }

    /// Admits `entry` under `key` and returns its handle; a key already present keeps its entry
    /// and handle (the new one is dropped). `None` once `u32::MAX` entries exist, which a
    /// `max_keys` bound never reaches.
    pub fn insert(&mut self, key: &str, entry: E) -> Option<Handle> {
        if let Some(h) = self.find(key) {
            return Some(h);
        }
        let handle = Handle(u32::try_from(self.entries.len()).ok()?);
        self.index.insert(key.to_owned(), handle);
        self.entries.push((key.to_owned(), entry));
        Some(handle)
    }

    pub fn get(&self, handle: Handle) -> Option<&E> {
        self.entries.get(handle.0 as usize).map(|(_, e)| e)
    }

    pub fn get_mut(&mut self, handle: Handle) -> Option<&mut E> {
        self.entries.get_mut(handle.0 as usize).map(|(_, e)| e)
    }

    /// The key an entry was admitted under.
    pub fn key(&self, handle: Handle) -> Option<&str> {
        self.entries.get(handle.0 as usize).map(|(k, _)| k.as_str())
    }

    /// `key`'s entry, for code that has no handle (tests, a tick that names a key).
    pub fn by_key(&self, key: &str) -> Option<&E> {
        self.find(key).and_then(|h| self.get(h))
    }

    /// `key`'s entry, mutable.
    pub fn by_key_mut(&mut self, key: &str) -> Option<&mut E> {
        let h = self.find(key)?;
        self.get_mut(h)
    }

    /// Every entry with its handle, in admission order.
    pub fn iter(&self) -> impl Iterator<Item = (Handle, &E)> {
        (0u32..)
            .zip(self.entries.iter())
            .map(|(i, (_, e))| (Handle(i), e))
    }

    /// Every entry with its handle, mutable, in admission order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Handle, &mut E)> {
        (0u32..)
            .zip(self.entries.iter_mut())
            .map(|(i, (_, e))| (Handle(i), e))
    }

    pub fn values(&self) -> impl Iterator<Item = &E> {
        self.entries.iter().map(|(_, e)| e)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut E> {
        self.entries.iter_mut().map(|(_, e)| e)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admitted_key_keeps_its_handle_and_its_first_entry() {
        let mut t = Keyed::new();
        let a = t.insert("a", 1).unwrap();
        let b = t.insert("b", 2).unwrap();
        assert_eq!(t.insert("a", 9), Some(a));
        assert_eq!((t.get(a), t.get(b)), (Some(&1), Some(&2)));
        assert_eq!((t.find("b"), t.key(b)), (Some(b), Some("b")));
        *t.get_mut(b).unwrap() += 10;
        assert_eq!(t.by_key("b"), Some(&12));
        assert_eq!(t.len(), 2);
        assert_eq!(t.iter().map(|(h, _)| h).collect::<Vec<_>>(), [a, b]);
    }

    #[test]
    fn a_handle_from_another_table_finds_nothing_beyond_this_ones_entries() {
        let mut big = Keyed::new();
        big.insert("x", ());
        let h = big.insert("y", ()).unwrap();
        let mut small = Keyed::new();
        small.insert("x", ());
        assert_eq!(small.get(h), None);
        assert_eq!(small.find("y"), None);
    }
}
