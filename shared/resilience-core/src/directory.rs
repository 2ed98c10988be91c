//! The endpoint directory: which endpoints a balancing filter chooses among, each bound to a
//! stable slot of shared state.
//!
//! # Why slots
//!
//! Per-endpoint state lives in shared data, which cannot delete keys. Keyed by address, a fleet
//! whose replicas come and go with new IPs would grow the key space without bound. Keyed by
//! *slot* (`0..max_endpoints`), it stays bounded: an endpoint that leaves frees its slot, the next
//! new endpoint takes it, and the state stored there (which names its endpoint by an address
//! hash) is recognised as someone else's and started afresh.
//!
//! # Why one directory for all workers
//!
//! Workers must agree on which slot holds which endpoint, or two of them would keep resetting a
//! slot for two different addresses. So the directory is one versioned value in shared data: the
//! worker that fetched a new endpoint list computes the next directory ([`Directory::next`]:
//! staying endpoints keep their slots, new ones take the lowest free slots) and writes it under
//! compare-and-swap; every worker adopts the new version on its next tick.
//!
//! The discovery document is JSON, `{"endpoints": [{"address": "10.0.0.7:8080", "weight": 2,
//! "cell": "use1-az1"}], "cells": {"use1-az1": {"drain_percent": 100}}}` or the bare array of
//! endpoints. A document with any invalid entry, or no entry at all, is refused as a whole: a
//! broken discovery service must not empty the balancer (nor drain a cell by accident).

use std::net::SocketAddr;

use crate::codec::{DecodeError, Decoder, Encoder};

const KIND: u8 = 0x57;
const VERSION: u8 = 2;
/// The lease's layout, unchanged since version 1.
const LEASE_VERSION: u8 = 1;

/// Longest address kept (an IPv6 address with scope and port fits easily).
const MAX_ADDRESS_BYTES: usize = 128;

/// One endpoint and its slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub slot: u16,
    /// `ip:port`, normalised.
    pub address: String,
    pub weight: u32,
    /// The endpoint's cell (see [`crate::cells`]); `None`: the implicit cell.
    pub cell: Option<String>,
}

/// One endpoint of a configured or discovered list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// `ip:port`, normalised.
    pub address: String,
    pub weight: u32,
    pub cell: Option<String>,
}

/// A checked discovery document.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Document {
    pub endpoints: Vec<Listed>,
    /// The top-level `cells`: each named cell's drain in thousandths of a point; `None` when the
    /// document has no `cells`.
    pub cells: Option<Vec<(String, u32)>>,
}

/// A versioned list of endpoints with their slots.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Directory {
    pub version: u32,
    pub entries: Vec<Entry>,
}

impl Directory {
    /// The configured list: slot `i` for the i-th endpoint, version 0.
    pub fn from_list(list: &[Listed]) -> Self {
        Directory {
            version: 0,
            entries: list
                .iter()
                .enumerate()
                .map(|(i, l)| Entry {
                    slot: u16::try_from(i).unwrap_or(u16::MAX),
                    address: l.address.clone(),
                    weight: l.weight,
                    cell: l.cell.clone(),
                })
                .collect(),
        }
    }

    /// The directory for a newly discovered `list`: endpoints that stay keep their slot (and get
    /// the new weight and cell), new ones take the lowest free slot below `max_slots`; those that find no
    /// slot are left out and counted. The version moves only when something changed.
    pub fn next(&self, list: &[Listed], max_slots: u16) -> (Directory, usize) {
        let mut entries: Vec<Entry> = Vec::with_capacity(list.len());
        let mut pending: Vec<&Listed> = Vec::new();
        for item in list {
            if entries.iter().any(|e| e.address == item.address) {
                continue; // listed twice: once is enough
            }
            match self.entries.iter().find(|e| e.address == item.address) {
                Some(old) => entries.push(Entry {
                    slot: old.slot,
                    address: item.address.clone(),
                    weight: item.weight,
                    cell: item.cell.clone(),
                }),
                None => {
                    if !pending.iter().any(|p| p.address == item.address) {
                        pending.push(item);
                    }
                }
            }
        }
        let mut overflow = 0;
        for item in pending {
            let free = (0..max_slots).find(|s| entries.iter().all(|e| e.slot != *s));
            match free {
                Some(slot) => entries.push(Entry {
                    slot,
                    address: item.address.clone(),
                    weight: item.weight,
                    cell: item.cell.clone(),
                }),
                None => overflow += 1,
            }
        }
        entries.sort_by_key(|e| e.slot);
        let mut old = self.entries.clone();
        old.sort_by_key(|e| e.slot);
        let version = if old == entries {
            self.version
        } else {
            self.version.wrapping_add(1)
        };
        (Directory { version, entries }, overflow)
    }

    /// The compact encoding kept in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(KIND, VERSION);
        e.u32(self.version)
            .u16(u16::try_from(self.entries.len()).unwrap_or(u16::MAX));
        for entry in self.entries.iter().take(usize::from(u16::MAX)) {
            let bytes = entry.address.as_bytes();
            let len = bytes.len().min(MAX_ADDRESS_BYTES);
            e.u16(entry.slot).u32(entry.weight).u8(len as u8);
            for b in bytes.iter().take(len) {
                e.u8(*b);
            }
            let cell = entry.cell.as_deref().unwrap_or_default().as_bytes();
            let len = cell.len().min(crate::cells::MAX_CELL_NAME_BYTES);
            e.u8(len as u8);
            for b in cell.iter().take(len) {
                e.u8(*b);
            }
        }
        e.finish()
    }

    /// Reads [`Directory::encode`]'s bytes; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, KIND, VERSION)?;
        let version = d.u32()?;
        let n = d.u16()?;
        let mut entries = Vec::with_capacity(usize::from(n).min(d.remaining() / 8));
        for _ in 0..n {
            let slot = d.u16()?;
            let weight = d.u32()?;
            let len = d.u8()?;
            // The encoder writes at most this many; a longer one is not this layout, and keeping
            // it would make the next write-back differ from what was read.
            if usize::from(len) > MAX_ADDRESS_BYTES {
                return Err(DecodeError::Invalid);
            }
            let mut raw = Vec::with_capacity(usize::from(len));
            for _ in 0..len {
                raw.push(d.u8()?);
            }
            let address = String::from_utf8(raw).map_err(|_| DecodeError::Invalid)?;
            let len = d.u8()?;
            let mut raw = Vec::with_capacity(usize::from(len));
            for _ in 0..len {
                raw.push(d.u8()?);
            }
            let cell = match String::from_utf8(raw) {
                Ok(c) if c.is_empty() => None,
                Ok(c) if crate::cells::is_cell_name(&c) => Some(c),
                _ => return Err(DecodeError::Invalid),
            };
            entries.push(Entry {
                slot,
                address,
                weight,
                cell,
            });
        }
        d.finish()?;
        Ok(Directory { version, entries })
    }
}

/// Checks one address: `ip:port`, normalised (`[::1]:80` for IPv6).
pub fn normalise_address(raw: &str) -> Option<String> {
    raw.parse::<SocketAddr>().ok().map(|a| a.to_string())
}

/// Reads a discovery document. At most `max` endpoints and `max` cells; weights 1..=1000
/// (default 1); cells are names as [`crate::cells::is_cell_name`] says, drains 0-100.
pub fn parse_document(body: &[u8], max: usize) -> Result<Document, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let items = match &value {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => match o.get("endpoints") {
            Some(serde_json::Value::Array(a)) => a,
            _ => return Err("expected {\"endpoints\": [...]} or an array".to_owned()),
        },
        _ => return Err("expected {\"endpoints\": [...]} or an array".to_owned()),
    };
    if items.is_empty() {
        return Err("no endpoints listed".to_owned());
    }
    if items.len() > max {
        return Err(format!("{} endpoints, more than {max}", items.len()));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let address = item
            .get("address")
            .and_then(serde_json::Value::as_str)
            .and_then(normalise_address)
            .ok_or_else(|| format!("endpoints[{i}].address: not an ip:port"))?;
        let weight = match item.get("weight") {
            None => 1,
            Some(w) => w
                .as_u64()
                .filter(|w| (1..=1_000).contains(w))
                .and_then(|w| u32::try_from(w).ok())
                .ok_or_else(|| format!("endpoints[{i}].weight: not an integer 1-1000"))?,
        };
        let cell = match item.get("cell") {
            None | Some(serde_json::Value::Null) => None,
            Some(c) => Some(
                c.as_str()
                    .filter(|c| crate::cells::is_cell_name(c))
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        format!("endpoints[{i}].cell: not {}", crate::cells::CELL_NAME_RULE)
                    })?,
            ),
        };
        out.push(Listed {
            address,
            weight,
            cell,
        });
    }
    let cells = match value.get("cells") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            crate::cells::parse_cells(v, max).map_err(|(path, rule)| format!("{path}: {rule}"))?,
        ),
    };
    Ok(Document {
        endpoints: out,
        cells,
    })
}

/// Who fetches the discovery document, and when next: one worker at a time, so a fleet of
/// workers does not multiply the polling. A worker whose VM dies stops renewing; its lease runs
/// out after [`LEASE_INTERVALS`] intervals and another worker takes over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchLease {
    /// A random token of the worker holding the lease.
    pub owner: u64,
    pub until_ms: u64,
    pub next_fetch_ms: u64,
}

/// A lease lasts this many fetch intervals without renewal.
pub const LEASE_INTERVALS: u64 = 3;

const LEASE_KIND: u8 = 0x58;

impl FetchLease {
    /// The lease to write if worker `me` should fetch now: the lease is free, run out, or its
    /// own, and the next fetch is due. `None`: not this worker, or not yet.
    pub fn claim(
        current: Option<FetchLease>,
        me: u64,
        now_ms: u64,
        interval_ms: u64,
    ) -> Option<FetchLease> {
        let cur = current.unwrap_or_default();
        let mine_to_take = cur.owner == me || cur.until_ms <= now_ms;
        if !mine_to_take || cur.next_fetch_ms > now_ms {
            return None;
        }
        let interval = interval_ms.max(1);
        Some(FetchLease {
            owner: me,
            until_ms: now_ms.saturating_add(interval.saturating_mul(LEASE_INTERVALS)),
            next_fetch_ms: now_ms.saturating_add(interval),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(LEASE_KIND, LEASE_VERSION);
        e.u64(self.owner).u64(self.until_ms).u64(self.next_fetch_ms);
        e.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, LEASE_KIND, LEASE_VERSION)?;
        let lease = FetchLease {
            owner: d.u64()?,
            until_ms: d.u64()?,
            next_fetch_ms: d.u64()?,
        };
        d.finish()?;
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn list(items: &[(&str, u32)]) -> Vec<Listed> {
        items
            .iter()
            .map(|(a, w)| Listed {
                address: (*a).to_owned(),
                weight: *w,
                cell: None,
            })
            .collect()
    }

    fn doc(items: &[(&str, u32)]) -> Result<Document, String> {
        Ok(Document {
            endpoints: list(items),
            cells: None,
        })
    }

    #[test]
    fn an_address_longer_than_the_encoder_writes_is_refused_rather_than_shortened_on_write_back() {
        // Found by the shared_decode fuzz target: a 200-byte address decoded, and re-encoding
        // cut it to 128, so decode(encode(x)) != x.
        let long = "k".repeat(MAX_ADDRESS_BYTES + 1);
        let mut e = Encoder::new(KIND, VERSION);
        e.u32(1).u16(1).u16(0).u32(1).u8(long.len() as u8);
        for b in long.bytes() {
            e.u8(b);
        }
        assert_eq!(Directory::decode(&e.finish()), Err(DecodeError::Invalid));
        let fits = Directory {
            version: 1,
            entries: vec![Entry {
                slot: 0,
                address: "k".repeat(MAX_ADDRESS_BYTES),
                weight: 1,
                cell: None,
            }],
        };
        assert_eq!(Directory::decode(&fits.encode()), Ok(fits));
    }

    #[test]
    fn staying_endpoints_keep_their_slots_and_newcomers_take_the_lowest_free_one() {
        let d = Directory::from_list(&list(&[
            ("10.0.0.1:80", 1),
            ("10.0.0.2:80", 1),
            ("10.0.0.3:80", 1),
        ]));
        let (next, overflow) = d.next(
            &list(&[("10.0.0.3:80", 2), ("10.0.0.9:80", 1), ("10.0.0.1:80", 1)]),
            8,
        );
        assert_eq!(overflow, 0);
        assert_eq!(next.version, 1);
        let slot = |a: &str| next.entries.iter().find(|e| e.address == a).map(|e| e.slot);
        assert_eq!(slot("10.0.0.1:80"), Some(0));
        assert_eq!(slot("10.0.0.3:80"), Some(2));
        assert_eq!(slot("10.0.0.9:80"), Some(1), "the slot 10.0.0.2 freed");
        assert_eq!(next.entries.iter().find(|e| e.slot == 2).unwrap().weight, 2);
    }

    #[test]
    fn an_unchanged_list_keeps_the_version_and_a_full_directory_counts_the_overflow() {
        let d = Directory::from_list(&list(&[("10.0.0.1:80", 1)]));
        let (same, _) = d.next(&list(&[("10.0.0.1:80", 1)]), 4);
        assert_eq!(same.version, 0);
        let (full, overflow) = d.next(
            &list(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)]),
            2,
        );
        assert_eq!(overflow, 1);
        assert_eq!(full.entries.len(), 2);
    }

    #[test]
    fn documents_are_checked_as_a_whole() {
        assert_eq!(
            parse_document(br#"{"endpoints": [{"address": "10.0.0.1:80", "weight": 3}, {"address": "[::1]:81"}]}"#, 10),
            doc(&[("10.0.0.1:80", 3), ("[::1]:81", 1)])
        );
        assert_eq!(
            parse_document(br#"[{"address": "10.0.0.1:80"}]"#, 10),
            doc(&[("10.0.0.1:80", 1)])
        );
        assert!(parse_document(br#"{"endpoints": []}"#, 10).is_err());
        assert!(parse_document(br#"[{"address": "db:80"}]"#, 10).is_err());
        assert!(parse_document(br#"[{"address": "10.0.0.1:80", "weight": 0}]"#, 10).is_err());
        assert!(parse_document(b"\xff", 10).is_err());
        assert!(parse_document(
            br#"[{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80"}]"#,
            1
        )
        .is_err());
    }

    #[test]
    fn a_document_names_each_endpoints_cell_and_the_cells_drains() {
        let d = parse_document(
            br#"{"endpoints": [{"address": "10.0.0.1:80", "cell": "use1-az1"}, {"address": "10.0.0.2:80"}],
                 "cells": {"use1-az1": {"drain_percent": 100}, "use1-az2": {"drain_percent": 0.5}}}"#,
            10,
        )
        .unwrap();
        assert_eq!(d.endpoints[0].cell.as_deref(), Some("use1-az1"));
        assert_eq!(d.endpoints[1].cell, None);
        assert_eq!(
            d.cells,
            Some(vec![
                ("use1-az1".to_owned(), 100_000),
                ("use1-az2".to_owned(), 500)
            ])
        );
        let bad = |body: &str| parse_document(body.as_bytes(), 2).unwrap_err();
        let one = r#""endpoints": [{"address": "10.0.0.1:80"}]"#;
        assert!(
            bad(r#"[{"address": "10.0.0.1:80", "cell": "a b"}]"#).starts_with("endpoints[0].cell")
        );
        assert!(bad(&format!(
            r#"{{ {one}, "cells": {{"a": {{"drain_percent": 101}}}} }}"#
        ))
        .starts_with("cells.a"));
        assert!(
            bad(&format!(r#"{{ {one}, "cells": {{"a": {{"drain": 1}}}} }}"#))
                .starts_with("cells.a")
        );
        assert!(bad(&format!(
            r#"{{ {one}, "cells": {{"a": {{}}, "b": {{}}, "c": {{}}}} }}"#
        ))
        .starts_with("cells: names 3 cells"));
        assert!(bad(&format!(r#"{{ {one}, "cells": [] }}"#)).starts_with("cells: expected"));
    }

    #[test]
    fn one_worker_holds_the_fetch_lease_until_it_stops_renewing() {
        let l = FetchLease::claim(None, 1, 1_000, 500).unwrap();
        assert_eq!(
            l,
            FetchLease {
                owner: 1,
                until_ms: 2_500,
                next_fetch_ms: 1_500
            }
        );
        assert_eq!(
            FetchLease::claim(Some(l), 2, 1_600, 500),
            None,
            "held by worker 1"
        );
        assert_eq!(
            FetchLease::claim(Some(l), 1, 1_400, 500),
            None,
            "not due yet"
        );
        assert!(FetchLease::claim(Some(l), 1, 1_500, 500).is_some());
        let taken = FetchLease::claim(Some(l), 2, 2_500, 500).unwrap();
        assert_eq!(taken.owner, 2, "run out: taken over");
        assert_eq!(FetchLease::decode(&taken.encode()), Ok(taken));
    }

    #[test]
    fn the_directory_round_trips_and_garbage_is_an_error() {
        let mut l = list(&[("10.0.0.1:80", 7), ("[2001:db8::1]:443", 1)]);
        l[1].cell = Some("use1-az1".to_owned());
        let d = Directory::from_list(&l);
        assert_eq!(Directory::decode(&d.encode()), Ok(d));
        assert!(Directory::decode(&[KIND, VERSION, 1]).is_err());
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = Directory::decode(&bytes);
            }

            #[test]
            fn slots_stay_unique_and_below_the_cap(
                first in proptest::collection::vec(0u8..40, 0..30),
                second in proptest::collection::vec(0u8..40, 0..30),
                cap in 1u16..32
            ) {
                let l = |v: &[u8]| v.iter().map(|i| Listed { address: format!("10.0.0.{i}:80"), weight: 1, cell: None }).collect::<Vec<_>>();
                let (d1, _) = Directory::default().next(&l(&first), cap);
                let (d2, _) = d1.next(&l(&second), cap);
                for d in [&d1, &d2] {
                    let mut slots: Vec<u16> = d.entries.iter().map(|e| e.slot).collect();
                    let n = slots.len();
                    slots.sort_unstable();
                    slots.dedup();
                    prop_assert_eq!(slots.len(), n);
                    prop_assert!(slots.iter().all(|s| *s < cap));
                }
                // Endpoints in both lists kept their slot.
                for e in &d2.entries {
                    if let Some(old) = d1.entries.iter().find(|o| o.address == e.address) {
                        prop_assert_eq!(old.slot, e.slot);
                    }
                }
            }
        }
    }
}
