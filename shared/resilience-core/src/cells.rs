//! Cells: draining a group of endpoints (an availability zone, a rack, a deployment) gradually,
//! by moving its share of traffic to the other cells.
//!
//! # Why at the callers' edge, and why gradual
//!
//! When a whole cell goes bad, the mitigation that works before anyone knows the cause is to
//! drain it and watch whether the errors stop. The drain is decided where traffic is split, so it
//! needs nothing from the drained cell; it moves new requests only, so requests already sent
//! finish; and it moves in steps (at most `drain_rate` percentage points per second), so a typo
//! in a command does not move all traffic at once, and an undrain can stop at 1% to test whether
//! the cell really recovered.
//!
//! # The shares
//!
//! A cell's *normal share* is its endpoints' (ramped) weights over all endpoints' weights. With
//! an effective drain `d`, a drained cell gets exactly `normal share × (1 − d/100)`; what it gives
//! up goes to the cells that are not drained at all, in proportion to their weights
//! ([`cell_multipliers`]). When no undrained cell can take it (every cell partly drained, or the
//! undrained ones have no weight), shares follow `weight × (1 − d/100)` normalised; when that too
//! is nothing (every cell fully drained), traffic is spread as if no cell were drained: failing
//! open, reported as [`Spread::FailOpen`] so it can be counted. Refusing all traffic would be an
//! outage of its own.
//!
//! Endpoints without a `cell` form one implicit cell of their own. It has no name, so it cannot be
//! drained; it takes its part of what drained cells give up like any other undrained cell.
//!
//! # Commands, the governor and the ramp
//!
//! Each cell has a *requested* drain (the discovery document's value for it, else the
//! configuration's), a *commanded* drain (the requested one once the governor accepted it) and an
//! *effective* drain (what picks use; it moves toward the commanded one at most `drain_rate`
//! points per second, [`step_drain`]). The governor allows at most `max_drained_cells` cells a
//! commanded drain above 0 at once: a cell that would be one too many keeps its previous command
//! (0) and is marked refused, counted once per refusal; cells already drained keep theirs.
//!
//! # Cold cells
//!
//! A cell that was fully drained for at least `cold_after` served nothing for that long; its
//! caches went cold. When its undrain begins, [`CellTable::step`] reports it so that the filter
//! restarts its endpoints' slow-start ramp (and priming) before the traffic returns at full
//! weight.
//!
//! All drains are kept in thousandths of a percentage point ([`FULL`] is 100%), so fractions
//! such as 0.5% are exact and the shared encoding is integers only.

use crate::codec::{DecodeError, Decoder, Encoder};

/// 100% drained, in thousandths of a percentage point.
pub const FULL: u32 = 100_000;

/// The default `drain_rate`, in percentage points per second: a full drain takes 10 s.
pub const DEFAULT_DRAIN_RATE: f64 = 10.0;

/// The slowest `drain_rate` (points per second).
pub const MIN_DRAIN_RATE: f64 = 1.0;

/// The fastest `drain_rate` (points per second): a full drain within one millisecond, i.e.
/// effectively instant.
pub const MAX_DRAIN_RATE: f64 = 100_000.0;

/// The default `cold_after`: fully drained this long, a cell's endpoints ramp again when it is
/// undrained.
pub const DEFAULT_COLD_AFTER_MS: u64 = 300_000;

/// Longest cell name.
pub const MAX_CELL_NAME_BYTES: usize = 64;

/// What [`is_cell_name`] accepts, for error messages.
pub const CELL_NAME_RULE: &str = "1 to 64 characters of [A-Za-z0-9_.-]";

/// Most cells one table holds (the filter bounds it further by `max_endpoints`).
pub const MAX_CELLS: usize = 1_024;

const KIND: u8 = 0x59;
const VERSION: u8 = 1;
/// `document` absent, in the encoding.
const NO_DOCUMENT: u32 = u32::MAX;

/// A cell name: 1 to 64 characters of `[A-Za-z0-9_.-]` (it becomes part of stat names).
pub fn is_cell_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CELL_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// A drain percentage (0-100, fractions allowed) in thousandths of a point; `None` outside the
/// range or not a number.
pub fn drain_from_percent(percent: f64) -> Option<u32> {
    if percent.is_finite() && (0.0..=100.0).contains(&percent) {
        Some(((percent * 1_000.0).round() as u32).min(FULL))
    } else {
        None
    }
}

/// A drain in thousandths of a point as a percentage.
pub fn drain_percent(drain: u32) -> f64 {
    f64::from(drain.min(FULL)) / 1_000.0
}

/// Reads a `cells` object, `{"use1-az1": {"drain_percent": 100}}`, as the filter configuration
/// and the discovery document both write it: at most `max` cells, each a name as
/// [`is_cell_name`] says with a drain of 0-100 (missing: 0). Returns the drains (thousandths of a
/// point, sorted by name), or the path of what is wrong and the rule it breaks.
pub fn parse_cells(
    value: &serde_json::Value,
    max: usize,
) -> Result<Vec<(String, u32)>, (String, String)> {
    let serde_json::Value::Object(o) = value else {
        return Err((
            "cells".to_owned(),
            "expected an object of cell names".to_owned(),
        ));
    };
    if o.len() > max {
        return Err((
            "cells".to_owned(),
            format!("names {} cells, more than max_endpoints ({max})", o.len()),
        ));
    }
    let mut cells: Vec<(String, u32)> = Vec::with_capacity(o.len());
    for (name, v) in o {
        if !is_cell_name(name) {
            return Err((
                "cells".to_owned(),
                format!(
                    "{:?} is not a cell name: {CELL_NAME_RULE}",
                    crate::problem::bounded(name, MAX_CELL_NAME_BYTES)
                ),
            ));
        }
        let serde_json::Value::Object(c) = v else {
            return Err((
                format!("cells.{name}"),
                "expected {\"drain_percent\": 0-100}".to_owned(),
            ));
        };
        if let Some(k) = c.keys().find(|k| *k != "drain_percent") {
            return Err((
                format!("cells.{name}"),
                format!(
                    "unknown field {:?}, expected drain_percent",
                    crate::problem::bounded(k, 64)
                ),
            ));
        }
        let drain = match c.get("drain_percent") {
            None => 0,
            Some(p) => p.as_f64().and_then(drain_from_percent).ok_or_else(|| {
                (
                    format!("cells.{name}.drain_percent"),
                    format!("must be between 0 and 100, got {p}"),
                )
            })?,
        };
        let at = cells
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .unwrap_or_else(|i| i);
        cells.insert(at, (name.clone(), drain));
    }
    Ok(cells)
}

/// The effective drain after `elapsed_ms` of moving from `effective` toward `commanded` at
/// `rate` percentage points per second (points per second × milliseconds = thousandths of a
/// point). Never overshoots; a rate that is not a positive number counts as the slowest.
pub fn step_drain(effective: u32, commanded: u32, rate: f64, elapsed_ms: u64) -> u32 {
    let effective = effective.min(FULL);
    let commanded = commanded.min(FULL);
    let rate = if rate.is_finite() && rate >= MIN_DRAIN_RATE {
        rate.min(MAX_DRAIN_RATE)
    } else {
        MIN_DRAIN_RATE
    };
    let step = (rate * elapsed_ms as f64).floor();
    let step = if step >= f64::from(FULL) {
        FULL
    } else {
        step as u32
    };
    if commanded >= effective {
        effective.saturating_add(step).min(commanded)
    } else {
        effective.saturating_sub(step).max(commanded)
    }
}

/// How the traffic was spread over the cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// Drained cells got exactly their reduced share, undrained ones the rest.
    Exact,
    /// No undrained cell could take what the drained ones gave up: shares follow
    /// `weight × (1 − drain)`.
    Proportional,
    /// Every cell with weight is fully drained: spread as if none were.
    FailOpen,
}

/// The factor each cell's endpoint weights are multiplied by, given each cell's total weight
/// (`weights[c]`) and effective drain (`drains[c]`, thousandths of a point). Fills `out` (same
/// length as `weights`; missing drains count as 0) and says how the traffic was spread.
pub fn cell_multipliers(weights: &[f64], drains: &[u32], out: &mut [f64]) -> Spread {
    let w = |c: usize| {
        weights
            .get(c)
            .copied()
            .filter(|w| w.is_finite() && *w > 0.0)
            .unwrap_or(0.0)
    };
    let d = |c: usize| drain_percent(drains.get(c).copied().unwrap_or(0)) / 100.0;
    let mut undrained = 0.0;
    let mut given_up = 0.0;
    let mut kept = 0.0;
    for c in 0..weights.len() {
        if d(c) > 0.0 {
            given_up += w(c) * d(c);
        } else {
            undrained += w(c);
        }
        kept += w(c) * (1.0 - d(c));
    }
    let spread = if given_up <= 0.0 || undrained > 0.0 {
        Spread::Exact
    } else if kept > 0.0 {
        Spread::Proportional
    } else if weights.iter().any(|x| x.is_finite() && *x > 0.0) {
        Spread::FailOpen
    } else {
        // Nothing has weight at all: nothing to spread, nothing failed open.
        Spread::Exact
    };
    for (c, m) in out.iter_mut().enumerate() {
        *m = match spread {
            Spread::FailOpen => 1.0,
            Spread::Proportional => 1.0 - d(c),
            Spread::Exact if d(c) > 0.0 => 1.0 - d(c),
            Spread::Exact if undrained > 0.0 => (undrained + given_up) / undrained,
            Spread::Exact => 1.0,
        };
    }
    spread
}

/// One cell's drain state, shared by all workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellState {
    pub name: String,
    /// The discovery document's drain for this cell, if the last document named it.
    pub document: Option<u32>,
    /// The drain the governor accepted.
    pub commanded: u32,
    /// The drain picks use now.
    pub effective: u32,
    /// Since when the effective drain has been 100% (0: it is not).
    pub full_since_ms: u64,
    /// The requested drain was refused by the governor (and still is).
    pub refused: bool,
    /// Some endpoint was in the cell at the last step. A cell without endpoints (a name the
    /// document drains by mistake, or whose endpoints all left) is commanded 0 and takes no
    /// place under the governor.
    pub has_endpoints: bool,
}

impl CellState {
    fn new(name: &str) -> Self {
        CellState {
            name: name.to_owned(),
            document: None,
            commanded: 0,
            effective: 0,
            full_since_ms: 0,
            refused: false,
            has_endpoints: false,
        }
    }
}

/// What one step of the table did, to be counted and logged by the worker whose
/// compare-and-swap made it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Cells whose requested drain the governor refused in this step.
    pub refused: Vec<String>,
    /// Cells whose undrain began after being fully drained at least `cold_after`.
    pub cold: Vec<String>,
    /// Cells whose commanded drain changed in this step.
    pub commanded: Vec<String>,
}

/// What a step of the table needs from the configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DrainPolicy {
    /// Points per second.
    pub rate: f64,
    /// Most cells with a commanded drain above 0; `None`: all cells but one (the implicit cell
    /// of endpoints without a cell counts as one).
    pub max_drained: Option<usize>,
    /// Fully drained this long makes a cell cold; `None`: never.
    pub cold_after_ms: Option<u64>,
}

/// Every cell's drain state: one value in shared data, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CellTable {
    /// When the effective drains were last moved.
    pub last_step_ms: u64,
    pub cells: Vec<CellState>,
}

impl CellTable {
    /// The state of cell `name`.
    pub fn get(&self, name: &str) -> Option<&CellState> {
        self.cells
            .binary_search_by(|c| c.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.cells.get(i))
    }

    /// Whether every effective drain is where its command says.
    pub fn is_steady(&self) -> bool {
        self.cells.iter().all(|c| c.effective == c.commanded)
    }

    /// Records the discovery document's drains: named cells take its value, the others go back
    /// to the configured one. Returns whether anything changed.
    pub fn set_document(&mut self, drains: &[(String, u32)]) -> bool {
        let mut changed = false;
        for (name, _) in drains {
            if self.get(name).is_none() && self.cells.len() < MAX_CELLS {
                self.insert(name);
            }
        }
        for c in &mut self.cells {
            let doc = drains
                .iter()
                .find(|(n, _)| *n == c.name)
                .map(|(_, d)| (*d).min(FULL));
            if c.document != doc {
                c.document = doc;
                changed = true;
            }
        }
        changed
    }

    fn insert(&mut self, name: &str) {
        let at = self
            .cells
            .binary_search_by(|c| c.name.as_str().cmp(name))
            .unwrap_or_else(|i| i);
        self.cells.insert(at, CellState::new(name));
    }

    /// One step at `now_ms`: the table holds the `known` cells (the endpoints' cells, in any
    /// order; at most [`MAX_CELLS`]) and those still drained or named by the document;
    /// `implicit_cell` says some endpoint has no cell; the governor turns requests
    /// (document, else `configured`) into commands, and effective drains move toward them.
    /// A cell seen for the first time starts at its command: a restart neither drains nor
    /// undrains anything gradually.
    pub fn step(
        &mut self,
        known: &[&str],
        implicit_cell: bool,
        configured: &[(String, u32)],
        policy: &DrainPolicy,
        now_ms: u64,
    ) -> StepReport {
        let mut report = StepReport::default();
        // Membership: keep known cells and any cell still draining or named by the document.
        self.cells.retain(|c| {
            known.contains(&c.name.as_str())
                || c.document.is_some()
                || c.effective > 0
                || c.commanded > 0
        });
        for name in known {
            if self.get(name).is_none() && self.cells.len() < MAX_CELLS && is_cell_name(name) {
                self.insert(name);
            }
        }
        // A cell whose endpoints appear now (a restart, a new cell) starts at its command.
        let mut fresh: Vec<bool> = Vec::with_capacity(self.cells.len());
        let mut with_endpoints = 0usize;
        for c in &mut self.cells {
            let has = known.contains(&c.name.as_str());
            fresh.push(has && !c.has_endpoints);
            c.has_endpoints = has;
            with_endpoints = with_endpoints.saturating_add(usize::from(has));
        }
        let was_steady = self.is_steady();
        let max_drained = policy.max_drained.unwrap_or_else(|| {
            with_endpoints
                .saturating_add(usize::from(implicit_cell))
                .saturating_sub(1)
        });
        let requested = |c: &CellState| {
            if !c.has_endpoints {
                return 0;
            }
            c.document.unwrap_or_else(|| {
                configured
                    .iter()
                    .find(|(n, _)| *n == c.name)
                    .map_or(0, |(_, d)| (*d).min(FULL))
            })
        };
        // The governor: cells already drained keep their place; newcomers in name order.
        let mut drained = self
            .cells
            .iter()
            .filter(|c| c.commanded > 0 && requested(c) > 0)
            .count();
        for c in &mut self.cells {
            let want = requested(c);
            let before = c.commanded;
            if want == 0 {
                c.commanded = 0;
                c.refused = false;
            } else if c.commanded > 0 {
                c.commanded = want;
                c.refused = false;
            } else if drained < max_drained {
                c.commanded = want;
                c.refused = false;
                drained = drained.saturating_add(1);
            } else {
                if !c.refused {
                    report.refused.push(c.name.clone());
                }
                c.refused = true;
            }
            if c.commanded != before {
                report.commanded.push(c.name.clone());
            }
        }
        for (c, fresh) in self.cells.iter_mut().zip(fresh) {
            if fresh {
                c.effective = c.commanded;
            }
        }
        // The ramp. From a steady table, the clock starts now: a command after a long quiet
        // spell still moves at the rate.
        let elapsed = if was_steady {
            0
        } else {
            now_ms.saturating_sub(self.last_step_ms)
        };
        for c in &mut self.cells {
            let before = c.effective;
            c.effective = step_drain(c.effective, c.commanded, policy.rate, elapsed);
            if before == FULL && c.effective < FULL {
                let cold = policy
                    .cold_after_ms
                    .is_some_and(|after| now_ms.saturating_sub(c.full_since_ms) >= after);
                if cold {
                    report.cold.push(c.name.clone());
                }
            }
            if c.effective == FULL {
                if before < FULL || c.full_since_ms == 0 {
                    c.full_since_ms = now_ms.max(1);
                }
            } else {
                c.full_since_ms = 0;
            }
        }
        self.last_step_ms = now_ms;
        report
    }

    /// The compact encoding kept in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(KIND, VERSION);
        let cells = self.cells.iter().take(MAX_CELLS);
        e.u64(self.last_step_ms)
            .u16(u16::try_from(self.cells.len().min(MAX_CELLS)).unwrap_or(u16::MAX));
        for c in cells {
            let name = c.name.as_bytes();
            let len = name.len().min(MAX_CELL_NAME_BYTES);
            e.u8(len as u8);
            for b in name.iter().take(len) {
                e.u8(*b);
            }
            e.u32(c.document.unwrap_or(NO_DOCUMENT))
                .u32(c.commanded)
                .u32(c.effective)
                .u64(c.full_since_ms)
                .bool(c.refused)
                .bool(c.has_endpoints);
        }
        e.finish()
    }

    /// Reads [`CellTable::encode`]'s bytes. Anything else (bad names, drains above 100%, cells
    /// out of order, too many) is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, KIND, VERSION)?;
        let last_step_ms = d.u64()?;
        let n = usize::from(d.u16()?);
        if n > MAX_CELLS {
            return Err(DecodeError::Invalid);
        }
        let mut cells: Vec<CellState> = Vec::with_capacity(n.min(d.remaining() / 23));
        for _ in 0..n {
            let len = d.u8()?;
            let mut raw = Vec::with_capacity(usize::from(len));
            for _ in 0..len {
                raw.push(d.u8()?);
            }
            let name = String::from_utf8(raw).map_err(|_| DecodeError::Invalid)?;
            let document = match d.u32()? {
                NO_DOCUMENT => None,
                v if v <= FULL => Some(v),
                _ => return Err(DecodeError::Invalid),
            };
            let commanded = d.u32()?;
            let effective = d.u32()?;
            let full_since_ms = d.u64()?;
            let refused = d.bool()?;
            let has_endpoints = d.bool()?;
            let in_order = cells.last().is_none_or(|p| p.name < name);
            if !is_cell_name(&name) || !in_order || commanded > FULL || effective > FULL {
                return Err(DecodeError::Invalid);
            }
            cells.push(CellState {
                name,
                document,
                commanded,
                effective,
                full_since_ms,
                refused,
                has_endpoints,
            });
        }
        d.finish()?;
        Ok(CellTable {
            last_step_ms,
            cells,
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn shares(weights: &[f64], drains: &[u32]) -> (Vec<f64>, Spread) {
        let mut m = vec![0.0; weights.len()];
        let spread = cell_multipliers(weights, drains, &mut m);
        let eff: Vec<f64> = weights.iter().zip(&m).map(|(w, m)| w * m).collect();
        let total: f64 = eff.iter().sum();
        (eff.iter().map(|e| e / total).collect(), spread)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn policy(rate: f64, max_drained: usize) -> DrainPolicy {
        DrainPolicy {
            rate,
            max_drained: Some(max_drained),
            cold_after_ms: Some(DEFAULT_COLD_AFTER_MS),
        }
    }

    fn cfg(items: &[(&str, u32)]) -> Vec<(String, u32)> {
        items.iter().map(|(n, d)| ((*n).to_owned(), *d)).collect()
    }

    #[test]
    fn a_cell_drained_to_half_gets_half_its_normal_share() {
        let (s, spread) = shares(&[2.0, 2.0, 2.0], &[0, FULL / 2, 0]);
        assert_eq!(spread, Spread::Exact);
        assert!(close(s[1], 1.0 / 6.0), "{s:?}");
        assert!(close(s[0], s[2]));
        assert!(close(s.iter().sum::<f64>(), 1.0));
    }

    #[test]
    fn what_a_drained_cell_gives_up_goes_to_the_others_in_proportion_to_their_weights() {
        // Normal shares 1/6, 2/6, 3/6; draining the last fully gives 1/3 and 2/3 to the others.
        let (s, _) = shares(&[1.0, 2.0, 3.0], &[0, 0, FULL]);
        assert!(close(s[2], 0.0));
        assert!(close(s[0], 1.0 / 3.0) && close(s[1], 2.0 / 3.0), "{s:?}");
    }

    #[test]
    fn two_partly_drained_cells_each_keep_their_exact_reduced_share() {
        let (s, spread) = shares(&[1.0, 1.0, 1.0, 1.0], &[FULL / 4, FULL / 2, 0, 0]);
        assert_eq!(spread, Spread::Exact);
        assert!(close(s[0], 0.25 * 0.75) && close(s[1], 0.25 * 0.5), "{s:?}");
    }

    #[test]
    fn an_undrain_to_one_percent_of_traffic_is_possible() {
        // Three equal cells: 1% of all traffic is 3% of the cell's normal share, a 97% drain.
        let (s, _) = shares(&[1.0, 1.0, 1.0], &[97_000, 0, 0]);
        assert!(close(s[0], 0.01), "{s:?}");
    }

    #[test]
    fn when_every_cell_is_fully_drained_traffic_spreads_as_if_none_were() {
        let (s, spread) = shares(&[1.0, 3.0], &[FULL, FULL]);
        assert_eq!(spread, Spread::FailOpen);
        assert!(close(s[0], 0.25));
    }

    #[test]
    fn with_no_undrained_cell_left_shares_follow_the_reduced_weights() {
        let (s, spread) = shares(&[1.0, 1.0], &[FULL, FULL / 2]);
        assert_eq!(spread, Spread::Proportional);
        assert!(close(s[1], 1.0));
        // An undrained cell without weight (all its endpoints unhealthy) cannot take anything.
        let (_, spread) = shares(&[0.0, 1.0], &[0, FULL / 2]);
        assert_eq!(spread, Spread::Proportional);
    }

    #[test]
    fn the_drain_moves_at_most_the_rate_and_never_overshoots() {
        assert_eq!(step_drain(0, FULL, 10.0, 1_000), 10_000);
        assert_eq!(step_drain(0, FULL, 10.0, 100), 1_000);
        assert_eq!(step_drain(95_000, FULL, 10.0, 1_000), FULL);
        assert_eq!(step_drain(FULL, 1_000, 10.0, 20_000), 1_000);
        assert_eq!(step_drain(0, FULL, MAX_DRAIN_RATE, 1), FULL);
        assert_eq!(step_drain(0, FULL, f64::NAN, 1_000), 1_000, "slowest");
        assert_eq!(step_drain(0, FULL, 10.0, u64::MAX), FULL);
    }

    #[test]
    fn a_command_ramps_from_the_step_after_it_not_from_the_last_quiet_step() {
        let mut t = CellTable::default();
        let p = policy(50.0, 2);
        t.step(&["a", "b"], false, &[], &p, 1_000);
        t.set_document(&cfg(&[("a", FULL)]));
        // Long after the last step: the first step only starts the clock.
        t.step(&["a", "b"], false, &[], &p, 100_000);
        assert_eq!(t.get("a").unwrap().effective, 0);
        t.step(&["a", "b"], false, &[], &p, 101_000);
        assert_eq!(t.get("a").unwrap().effective, 50_000);
        t.step(&["a", "b"], false, &[], &p, 102_000);
        assert_eq!(t.get("a").unwrap().effective, FULL);
        assert!(t.is_steady());
    }

    #[test]
    fn a_cell_first_seen_starts_at_its_command() {
        let mut t = CellTable::default();
        let r = t.step(
            &["a", "b"],
            false,
            &cfg(&[("a", FULL)]),
            &policy(10.0, 1),
            5,
        );
        assert_eq!(t.get("a").unwrap().effective, FULL);
        assert_eq!(r.commanded, vec!["a".to_owned()]);
    }

    #[test]
    fn the_governor_refuses_a_drain_beyond_the_cap_and_keeps_the_first() {
        let mut t = CellTable::default();
        let p = policy(MAX_DRAIN_RATE, 1);
        t.step(&["a", "b", "c"], false, &[], &p, 10);
        t.set_document(&cfg(&[("b", FULL)]));
        let r = t.step(&["a", "b", "c"], false, &[], &p, 20);
        assert!(r.refused.is_empty());
        t.set_document(&cfg(&[("b", FULL), ("a", FULL / 2)]));
        let r = t.step(&["a", "b", "c"], false, &[], &p, 30);
        assert_eq!(r.refused, vec!["a".to_owned()]);
        let a = t.get("a").unwrap();
        assert_eq!((a.commanded, a.refused), (0, true));
        assert_eq!(t.get("b").unwrap().commanded, FULL);
        // Refused once, counted once: the next step does not report it again.
        let r = t.step(&["a", "b", "c"], false, &[], &p, 40);
        assert!(r.refused.is_empty());
        // Once b is undrained, a's request is accepted.
        t.set_document(&cfg(&[("a", FULL / 2)]));
        t.step(&["a", "b", "c"], false, &[], &p, 50);
        assert_eq!(t.get("a").unwrap().commanded, FULL / 2);
        assert!(!t.get("a").unwrap().refused);
    }

    #[test]
    fn by_default_all_cells_but_one_may_be_drained() {
        let p = DrainPolicy {
            rate: MAX_DRAIN_RATE,
            max_drained: None,
            cold_after_ms: None,
        };
        let all = cfg(&[("a", FULL), ("b", FULL), ("c", FULL)]);
        let mut t = CellTable::default();
        t.step(&["a", "b", "c"], false, &[], &p, 1);
        let r = t.step(&["a", "b", "c"], false, &all, &p, 2);
        assert_eq!(r.refused, vec!["c".to_owned()]);
        // With endpoints outside any cell, that implicit cell is the one left: all three drain.
        let mut t = CellTable::default();
        t.step(&["a", "b", "c"], true, &[], &p, 1);
        let r = t.step(&["a", "b", "c"], true, &all, &p, 2);
        assert!(r.refused.is_empty());
    }

    #[test]
    fn a_drain_for_a_cell_without_endpoints_takes_no_place_under_the_governor() {
        let p = policy(MAX_DRAIN_RATE, 1);
        let mut t = CellTable::default();
        t.step(&["a", "b"], false, &[], &p, 1);
        // A typo drains "az9", which has no endpoints; the real drain of "a" is accepted.
        t.set_document(&cfg(&[("az9", FULL), ("a", FULL)]));
        let r = t.step(&["a", "b"], false, &[], &p, 2);
        assert!(r.refused.is_empty(), "{r:?}");
        assert_eq!(t.get("az9").unwrap().commanded, 0);
        assert_eq!(t.get("a").unwrap().commanded, FULL);
        // Endpoints discovered together with their cell's drain start drained.
        t.set_document(&cfg(&[("c", FULL)]));
        t.step(&["a", "b"], false, &[], &p, 3);
        t.step(&["a", "b", "c"], false, &[], &p, 4);
        let c = t.get("c").unwrap();
        assert_eq!((c.commanded, c.effective), (FULL, FULL));
    }

    #[test]
    fn the_document_overrides_the_configuration_and_leaving_it_out_restores_it() {
        let mut t = CellTable::default();
        let p = policy(MAX_DRAIN_RATE, 2);
        let conf = cfg(&[("a", 30_000)]);
        t.step(&["a", "b"], false, &conf, &p, 1);
        assert_eq!(t.get("a").unwrap().commanded, 30_000);
        assert!(t.set_document(&cfg(&[("a", 0)])));
        t.step(&["a", "b"], false, &conf, &p, 2);
        assert_eq!(t.get("a").unwrap().commanded, 0);
        assert!(t.set_document(&[]));
        assert!(!t.set_document(&[]));
        t.step(&["a", "b"], false, &conf, &p, 3);
        assert_eq!(t.get("a").unwrap().commanded, 30_000);
    }

    #[test]
    fn a_cell_undrained_after_a_long_full_drain_is_reported_cold() {
        let mut t = CellTable::default();
        let p = DrainPolicy {
            rate: 100.0,
            max_drained: Some(1),
            cold_after_ms: Some(60_000),
        };
        t.step(&["a", "b"], false, &cfg(&[("a", FULL)]), &p, 1_000);
        assert_eq!(t.get("a").unwrap().full_since_ms, 1_000);
        // Undrained after 10 s: still warm.
        t.step(&["a", "b"], false, &[], &p, 11_000);
        let r = t.step(&["a", "b"], false, &[], &p, 11_100);
        assert!(r.cold.is_empty());
        // Drained again, and undrained after more than a minute: cold.
        let conf = cfg(&[("a", FULL)]);
        for ms in (11_200..=13_000).step_by(100) {
            t.step(&["a", "b"], false, &conf, &p, ms);
        }
        assert_eq!(t.get("a").unwrap().effective, FULL);
        t.step(&["a", "b"], false, &conf, &p, 80_000);
        t.step(&["a", "b"], false, &[], &p, 80_100);
        let r = t.step(&["a", "b"], false, &[], &p, 80_200);
        assert_eq!(r.cold, vec!["a".to_owned()]);
    }

    #[test]
    fn the_table_round_trips_and_hostile_bytes_are_errors() {
        let mut t = CellTable::default();
        t.step(
            &["use1-az1", "use1-az2"],
            false,
            &cfg(&[("use1-az1", 12_345)]),
            &policy(10.0, 1),
            9,
        );
        t.set_document(&cfg(&[("use1-az2", 0)]));
        assert_eq!(CellTable::decode(&t.encode()), Ok(t.clone()));
        let mut bad = t.encode();
        // Corrupt the first cell's commanded drain to above 100%.
        let at = 2 + 8 + 2 + 1 + "use1-az1".len() + 4;
        bad[at..at + 4].copy_from_slice(&200_000u32.to_le_bytes());
        assert!(CellTable::decode(&bad).is_err());
        assert!(CellTable::decode(&[KIND, VERSION, 0]).is_err());
    }

    #[test]
    fn cell_names_are_short_tokens() {
        assert!(CELL_NAME_RULE.contains(&MAX_CELL_NAME_BYTES.to_string()));
        assert!(is_cell_name("use1-az1"));
        assert!(is_cell_name("rack_7.b"));
        assert!(!is_cell_name(""));
        assert!(!is_cell_name("a b"));
        assert!(!is_cell_name(&"x".repeat(65)));
        assert_eq!(drain_from_percent(0.5), Some(500));
        assert_eq!(drain_from_percent(100.5), None);
        assert_eq!(drain_from_percent(f64::NAN), None);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = CellTable::decode(&bytes);
            }

            #[test]
            fn a_drained_cell_gets_its_reduced_share_while_some_cell_is_undrained(
                weights in proptest::collection::vec(0.1f64..100.0, 2..8),
                drains in proptest::collection::vec(0u32..=FULL, 8),
            ) {
                let n = weights.len();
                let mut drains: Vec<u32> = drains.into_iter().take(n).collect();
                drains[0] = 0; // one undrained cell
                let mut m = vec![0.0; n];
                prop_assert_eq!(cell_multipliers(&weights, &drains, &mut m), Spread::Exact);
                let total: f64 = weights.iter().sum();
                let eff: f64 = weights.iter().zip(&m).map(|(w, m)| w * m).sum();
                prop_assert!((eff - total).abs() < 1e-6 * total, "total weight is kept");
                for c in (1..n).filter(|c| drains[*c] > 0) {
                    let want = weights[c] / total * (1.0 - drain_percent(drains[c]) / 100.0);
                    let got = weights[c] * m[c] / eff;
                    prop_assert!((got - want).abs() < 1e-9, "cell {}: {} vs {}", c, got, want);
                }
            }

            #[test]
            fn multipliers_are_never_negative_or_nan(
                weights in proptest::collection::vec(-5.0f64..100.0, 0..8),
                drains in proptest::collection::vec(any::<u32>(), 0..8),
            ) {
                let mut m = vec![0.0; weights.len()];
                cell_multipliers(&weights, &drains, &mut m);
                prop_assert!(m.iter().all(|x| x.is_finite() && *x >= 0.0));
            }

            #[test]
            fn the_governor_never_lets_more_cells_drain_than_the_cap(
                requests in proptest::collection::vec(proptest::collection::vec(0u32..=FULL, 4), 1..6),
                max in 0usize..4,
            ) {
                let names = ["a", "b", "c", "d"];
                let mut t = CellTable::default();
                let p = DrainPolicy { rate: 10.0, max_drained: Some(max), cold_after_ms: None };
                for (k, req) in requests.iter().enumerate() {
                    let doc: Vec<(String, u32)> = names.iter().zip(req).map(|(n, d)| ((*n).to_owned(), *d)).collect();
                    t.set_document(&doc);
                    t.step(&names, false, &[], &p, k as u64 * 100);
                    prop_assert!(t.cells.iter().filter(|c| c.commanded > 0).count() <= max);
                }
            }
        }
    }
}
