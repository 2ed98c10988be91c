//! The simulated fleet behaves as scripted: live changes over the control API, timed events, and
//! the failure modes the lab and `cargo pack run` rely on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use harness::client::request_with_timeout;
use harness::fleet::{Action, Event, Fleet, FleetSpec};
use harness::{get, request};

fn fleet(instances: usize) -> Fleet {
    Fleet::start(&FleetSpec {
        instances,
        latency: Duration::from_millis(30),
        ..FleetSpec::default()
    })
    .unwrap()
}

#[test]
fn every_instance_answers_after_its_base_latency_and_names_itself() {
    let f = fleet(3);
    for i in 0..3 {
        let r = get(f.port(i).unwrap(), "/anything").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-upstream-name"),
            Some(format!("instance-{i}").as_str())
        );
        assert!(r.elapsed >= Duration::from_millis(30), "{:?}", r.elapsed);
    }
}

#[test]
fn instant_fail_answers_503_at_once_while_health_checks_still_pass() {
    let f = fleet(2);
    f.apply(1, &Action::InstantFail).unwrap();
    let r = get(f.port(1).unwrap(), "/work").unwrap();
    assert_eq!(r.status, 503);
    assert!(r.elapsed < Duration::from_millis(25), "{:?}", r.elapsed);
    assert_eq!(get(f.port(1).unwrap(), "/healthz").unwrap().status, 200);
    assert_eq!(get(f.port(0).unwrap(), "/work").unwrap().status, 200);
}

#[test]
fn a_hung_instance_never_answers_and_a_restart_brings_it_back_with_a_cold_cache() {
    let f = fleet(1);
    f.apply(0, &Action::Cold(Some(Duration::from_millis(150))))
        .unwrap();
    f.apply(0, &Action::Hang).unwrap();
    let port = f.port(0).unwrap();
    assert!(
        request_with_timeout(port, "GET", "/k", &[], None, Duration::from_millis(300)).is_err()
    );
    f.apply(0, &Action::Restart(Duration::ZERO)).unwrap();
    let cold = get(port, "/k").unwrap();
    assert_eq!(cold.status, 200);
    assert!(
        cold.elapsed >= Duration::from_millis(180),
        "first miss: {:?}",
        cold.elapsed
    );
    let warm = get(port, "/k").unwrap();
    assert!(
        warm.elapsed < Duration::from_millis(120),
        "hit: {:?}",
        warm.elapsed
    );
}

#[test]
fn an_error_rate_fails_about_that_share_of_requests() {
    let f = Fleet::start(&FleetSpec {
        instances: 1,
        latency: Duration::ZERO,
        errors: 0.3,
        ..FleetSpec::default()
    })
    .unwrap();
    let failed = (0..400)
        .filter(|_| get(f.port(0).unwrap(), "/x").unwrap().status == 503)
        .count();
    assert!((80..=160).contains(&failed), "{failed} of 400 failed");
}

#[test]
fn the_control_api_changes_an_instance_live_and_reports_status() {
    let f = fleet(2);
    let control = f.serve_control(0).unwrap();
    let r = request(control, "POST", "/instances/1/instant-fail", &[], None).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(f.port(1).unwrap(), "/x").unwrap().status, 503);
    let status: serde_json::Value =
        serde_json::from_slice(&get(control, "/").unwrap().body).unwrap();
    assert_eq!(status["instances"][1]["state"], "instant-fail");
    let bad = request(control, "POST", "/instances/1/explode", &[], None).unwrap();
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("unknown action"));
    assert_eq!(get(control, "/instances/1/hang").unwrap().status, 405);
    assert_eq!(
        request(control, "POST", "/instances/9/hang", &[], None)
            .unwrap()
            .status,
        400
    );
}

#[test]
fn scripted_events_happen_on_their_timeline() {
    let f = fleet(2);
    let started = Instant::now();
    f.run_script(vec![Event::parse("300ms:0:instant-fail").unwrap()], false)
        .unwrap();
    assert_eq!(get(f.port(0).unwrap(), "/x").unwrap().status, 200);
    while started.elapsed() < Duration::from_millis(450) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(f.port(0).unwrap(), "/x").unwrap().status, 503);
    assert!(f
        .run_script(vec![Event::parse("1s:5:hang").unwrap()], false)
        .unwrap_err()
        .contains("instances 0–1"));
}

#[test]
fn a_restart_with_downtime_refuses_connections_until_the_instance_is_back() {
    let f = fleet(1);
    let port = f.port(0).unwrap();
    f.apply(0, &Action::Restart(Duration::from_millis(400)))
        .unwrap();
    assert!(get(port, "/x").is_err(), "down during the restart");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(port, "/x").unwrap().status, 200);
}
