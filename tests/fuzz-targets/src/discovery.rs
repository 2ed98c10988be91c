//! Slow start's discovery document ([`parse_document`]): the body a discovery service answers,
//! and the endpoint directory built from it ([`Directory::next`]) that all workers share.
//!
//! The input's first byte is the endpoint cap (`max_endpoints`, 1–256); the rest is the document.
//! Properties, for any input:
//! - no panic;
//! - an accepted list has 1 to `max` endpoints, each address normalised (normalising it again
//!   changes nothing) and each weight 1–1000;
//! - the directory built from it, starting from the one the list itself makes and from an empty
//!   one, gives every endpoint a distinct slot below the cap, keeps the slot of an endpoint that
//!   stays, moves the version exactly when something changed, and round-trips through its
//!   shared-data encoding.

use resilience_core::directory::{normalise_address, parse_document, Directory, Listed};

fn check_directory(previous: &Directory, list: &[Listed], max_slots: u16) {
    let (next, overflow) = previous.next(list, max_slots);
    let mut slots: Vec<u16> = next.entries.iter().map(|e| e.slot).collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(
        slots.len(),
        next.entries.len(),
        "two endpoints share a slot"
    );
    assert!(next.entries.iter().all(|e| e.slot < max_slots));
    let mut distinct: Vec<&str> = list.iter().map(|l| l.address.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(next.entries.len() + overflow, distinct.len());
    for e in &next.entries {
        if let Some(old) = previous.entries.iter().find(|o| o.address == e.address) {
            assert_eq!(old.slot, e.slot, "an endpoint that stayed moved slots");
        }
    }
    let mut before = previous.entries.clone();
    before.sort_by_key(|e| e.slot);
    let changed = before != next.entries;
    assert_eq!(next.version != previous.version, changed);
    assert_eq!(Directory::decode(&next.encode()), Ok(next.clone()));
    // A second identical discovery is no change.
    let (again, _) = next.next(list, max_slots);
    assert_eq!(again.version, next.version);
}

/// See the module docs.
pub fn discovery(data: &[u8]) {
    let Some((&cap, body)) = data.split_first() else {
        return;
    };
    let max = u16::from(cap) + 1;
    let Ok(document) = parse_document(body, usize::from(max)) else {
        return;
    };
    let list = document.endpoints;
    assert!(!list.is_empty() && list.len() <= usize::from(max));
    for l in &list {
        assert_eq!(
            normalise_address(&l.address).as_deref(),
            Some(l.address.as_str())
        );
        assert!((1..=1000).contains(&l.weight));
    }
    check_directory(&Directory::default(), &list, max);
    check_directory(&Directory::from_list(&list), &list, max);
}
