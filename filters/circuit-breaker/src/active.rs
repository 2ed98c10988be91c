//! Active probes: while a breaker is open, the filter asks the dependency itself whether it is
//! back, instead of waiting out the open time and then sending users' requests into it.
//!
//! Why: an open breaker learns about recovery only when its open time ends and half-open probes
//! (users' requests) go through; with exponential open times that is seconds after the
//! dependency came back. A route's `active_probe` is a request the filter sends through a cluster
//! of its choosing (a health endpoint, typically) while the breaker is open; its success, by the
//! route's own failure classification, moves the breaker to half-open at once, and the half-open
//! probes then decide as usual. While the probe has not seen the dependency answer, the breaker
//! stays open past its open time (for at most `max_open_duration` more), so no user's request is
//! sent into a dependency nobody knows is back. A probe that cannot be sent at all (an unknown
//! cluster) leaves the open timer in charge, as without a probe.
//!
//! Across workers: each worker ticks, so each would send a probe per interval. One shared-data
//! value per key (`<breaker key>#active`, the time the next probe is due) is claimed under CAS,
//! so the dependency sees one probe per `interval` from the whole proxy. A probe's answer is
//! applied only to the generation it was sent in (a breaker that moved on ignores it). A worker
//! keeps at most one probe out per key, and Envoy's timeout bounds how long one stays out.

use proxy_wasm::types::MapType;
use resilience_core::breaker::{ProbeTurn, State};
use resilience_core::outcome::{parse_grpc_status, ResponseFacts};
use resilience_host::callout;
use resilience_host::host::Host;
use resilience_host::shared::{cas_update_on, Update, DEFAULT_CAS_ATTEMPTS};

use resilience_core::keyed::Handle;

use crate::stats;
use crate::worker::{decode, log_transition, route_settings, Worker};

/// A probe out: its callout token, the breaker and the generation it was sent for.
#[derive(Debug, Clone)]
pub struct InFlight {
    token: u32,
    entry: Handle,
    generation: u32,
}

impl<H: Host + Clone> Worker<H> {
    /// On the tick: send the probe of every open breaker with an `active_probe` whose turn it is
    /// (one per interval across all workers).
    pub(crate) fn send_active_probes(&mut self, now_ms: u64) {
        let config = std::rc::Rc::clone(&self.config);
        for (handle, entry) in self.entries.iter_mut() {
            let settings = route_settings(&config, entry.route_index);
            let Some(probe) = &settings.active_probe else {
                continue;
            };
            let view = entry.view;
            // Past its open time too: the breaker then waits for the probe (see
            // `View::admit_awaiting_probe`).
            if view.state != State::Open || self.active.iter().any(|p| p.entry == handle) {
                continue;
            }
            let claim = cas_update_on(
                &self.host,
                &format!("{}#active", entry.shared_key),
                DEFAULT_CAS_ATTEMPTS,
                |cur| {
                    // Garbage is a turn that is due: at worst one extra probe.
                    let mut turn = cur
                        .and_then(|b| ProbeTurn::decode(b).ok())
                        .unwrap_or_default();
                    if turn.claim(now_ms, probe.interval_ms) {
                        Update::Write(turn.encode(), true)
                    } else {
                        Update::Keep(false)
                    }
                },
            );
            match claim {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    self.global_pending.shared.count(e);
                    continue;
                }
            }
            let headers: Vec<(&str, &str)> = probe
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            match callout::send_on(&self.host, &probe.cluster, &headers, None, probe.timeout_ms) {
                Ok(token) => {
                    entry.active_probe_unsendable = false;
                    entry.pending.active_probes_sent += 1;
                    self.active.push(InFlight {
                        token,
                        entry: handle,
                        generation: view.generation,
                    });
                }
                Err(e) => {
                    entry.active_probe_unsendable = true;
                    entry.pending.active_probes_failed += 1;
                    log::warn!(
                        "circuit breaker {}: cannot send the active probe through cluster {:?}: {}",
                        entry.stat_base,
                        probe.cluster,
                        e.as_str()
                    );
                }
            }
        }
    }

    /// The answer to callout `token`, if it is one of this worker's probes: a success moves its
    /// breaker to half-open (when still open in the generation it was sent for). Returns whether
    /// the token was a probe.
    pub fn active_probe_answered(&mut self, token: u32, now_ms: u64) -> bool {
        let Some(at) = self.active.iter().position(|p| p.token == token) else {
            return false;
        };
        let probe = self.active.swap_remove(at);
        let config = std::rc::Rc::clone(&self.config);
        let Some(entry) = self.entries.get_mut(probe.entry) else {
            return true;
        };
        let settings = route_settings(&config, entry.route_index);
        // No `:status` is a failed callout (connect failure, reset, timeout).
        let success = callout::response_status_on(&self.host).is_some_and(|status| {
            let grpc_status = self
                .host
                .get_header_map_value(MapType::HttpCallResponseHeaders, "grpc-status")
                .ok()
                .flatten()
                .and_then(|v| parse_grpc_status(&v));
            let facts = ResponseFacts {
                status,
                grpc_status,
                local: None,
                duration_ms: 0,
            };
            !settings.classifier.classify(&facts).is_failure()
        });
        if !success {
            entry.pending.active_probes_failed += 1;
            return true;
        }
        entry.pending.active_probes_succeeded += 1;
        let policy = &settings.policy;
        let resets = &mut self.global_pending.shared.state_resets;
        let result = cas_update_on(&self.host, &entry.shared_key, DEFAULT_CAS_ATTEMPTS, |cur| {
            let (mut b, reset) = decode(cur, policy);
            match b.active_probe_succeeded(probe.generation, now_ms) {
                Some(t) => {
                    let view = b.view();
                    Update::Write(b.encode(), (Some(t), view, reset))
                }
                None => Update::Keep((None, b.view(), reset)),
            }
        });
        match result {
            Ok((t, view, reset)) => {
                if reset {
                    *resets += 1;
                }
                entry.view = view;
                if let Some(t) = t {
                    stats::transition(&mut self.metrics, &entry.stat_base, &t);
                    log_transition(&entry.stat_base, &t);
                }
            }
            Err(e) => self.global_pending.shared.count(e),
        }
        true
    }
}
