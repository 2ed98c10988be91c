//! The quick version of every failure-lab scenario: each must meet its pass criterion.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use harness::lab::{self, report, Progress, Scale};

fn run(name: &str) {
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
