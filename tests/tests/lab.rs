//! The quick version of every failure-lab scenario: each must meet its pass criterion.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;

use harness::lab::{self, report, Progress, Scale};

/// Scenarios measure timing: one at a time, or they would measure each other's CPU contention.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(name: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut progress = Progress::new(false);
    let r = lab::run_scenario(name, Scale::Quick, &mut progress).expect("the scenario runs");
    println!("{}", report::terminal_table(std::slice::from_ref(&r)));
    assert!(
        r.passed(),
        "{}",
        report::terminal_table(std::slice::from_ref(&r))
    );
}

#[test]
fn cascading_dependency_outage_is_contained_by_the_circuit_breaker() {
    run("cascade");
}

#[test]
fn black_hole_under_least_request_is_fixed_by_failure_padding() {
    run("blackhole");
}

#[test]
fn a_retry_storm_is_contained_by_the_retry_budget() {
    run("retrystorm");
}

#[test]
fn a_garbage_flood_is_stopped_at_the_edge_by_the_validator() {
    run("garbage");
}

#[test]
fn a_cold_replica_is_warmed_up_by_slow_start() {
    run("coldreplica");
}

#[test]
fn a_bad_cell_is_drained_without_errors_and_undrained_to_one_percent_by_slow_start() {
    run("badcell");
}
