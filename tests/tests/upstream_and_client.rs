//! Tests of the scripted upstream and the client on their own (no Envoy).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::{client, free_port, parallel, Behavior, Upstream};

#[test]
fn free_port_never_hands_out_the_same_port_twice() {
    let mut ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 200);
}

#[test]
fn the_upstream_keeps_connections_alive_and_reads_chunked_and_sized_bodies() {
    let upstream = Upstream::start_named("u1").unwrap();
    let mut conn = TcpStream::connect(("127.0.0.1", upstream.port())).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc\
          POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n\
          GET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let mut all = String::new();
    conn.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 3, "{all}");
    assert_eq!(all.matches("x-upstream-name: u1").count(), 3, "{all}");
    let log = upstream.log();
    let bodies: Vec<(&str, &[u8])> = log.iter().map(|r| (r.path.as_str(), &r.body[..])).collect();
    assert_eq!(bodies, [("/a", &b"abc"[..]), ("/b", b"def"), ("/c", b"")]);
    assert_eq!(upstream.requests(), 3);
    upstream.reset_counts();
    assert_eq!(upstream.requests(), 0);
    assert!(upstream.log().is_empty());
}

#[test]
fn scripted_failures_are_deterministic_and_restart_with_reset_counts() {
    let upstream = Upstream::start().unwrap();
    upstream.set_behavior(
        "/nth",
        Behavior::default()
            .failing_every_nth(3)
            .on_failure(Behavior::status(500).with_header("x-failed", "yes")),
    );
    upstream.set_behavior("/frac", Behavior::default().failing_fraction(0.3, 42));
    let nth: Vec<u16> = (0..6)
        .map(|_| client::get(upstream.port(), "/nth").unwrap().status)
        .collect();
    assert_eq!(nth, [200, 200, 500, 200, 200, 500]);
    assert_eq!(
        client::get(upstream.port(), "/nth")
            .unwrap()
            .header("x-failed"),
        None
    );

    let run = |u: &Upstream| -> Vec<u16> {
        (0..200)
            .map(|_| client::get(u.port(), "/frac/x").unwrap().status)
            .collect()
    };
    let first = run(&upstream);
    let failures = first.iter().filter(|s| **s == 503).count();
    assert!((40..=80).contains(&failures), "{failures} of 200 failed");
    upstream.reset_counts();
    assert_eq!(run(&upstream), first, "same seed, same sequence");
    assert_eq!(upstream.requests_for("/frac"), 200);

    let fresh = Behavior::default().failing_fraction(0.3, 42);
    let expected: Vec<bool> = (1..=200).map(|n| fresh.fails(n)).collect();
    assert_eq!(
        first.iter().map(|s| *s == 503).collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn the_longest_matching_prefix_wins_and_can_be_removed() {
    let upstream = Upstream::start().unwrap();
    upstream.set_default(Behavior::status(201));
    upstream.set_behavior("/api", Behavior::status(202));
    upstream.set_behavior("/api/slow", Behavior::status(203));
    let status = |path: &str| client::get(upstream.port(), path).unwrap().status;
    assert_eq!(status("/"), 201);
    assert_eq!(status("/api/x"), 202);
    assert_eq!(status("/api/slow/1"), 203);
    upstream.remove_behavior("/api/slow");
    assert_eq!(status("/api/slow/1"), 202);
    upstream.clear_behaviors();
    assert_eq!(status("/api/slow/1"), 200);
}

#[test]
fn reset_close_and_hang_modes_fail_the_client_as_scripted() {
    let upstream = Upstream::start().unwrap();
    upstream.set_behavior("/reset", Behavior::reset());
    upstream.set_behavior("/close", Behavior::close_without_response());
    upstream.set_behavior("/hang", Behavior::hang());

    let reset = client::get(upstream.port(), "/reset").unwrap_err();
    assert!(reset.contains("reset"), "{reset}");
    let closed = client::get(upstream.port(), "/close").unwrap_err();
    assert!(closed.contains("closed before a response"), "{closed}");
    let started = Instant::now();
    let hung = client::request_with_timeout(
        upstream.port(),
        "GET",
        "/hang",
        &[],
        None,
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(hung.contains("timed out"), "{hung}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(upstream.requests(), 3);
}

#[test]
fn stopping_releases_hung_connections_and_restart_keeps_the_port() {
    let upstream = Upstream::start().unwrap();
    let port = upstream.port();
    upstream.set_default(Behavior::hang());
    let waiter = std::thread::spawn(move || client::get(port, "/held"));
    upstream
        .wait_for_requests(1, Duration::from_secs(5))
        .unwrap();

    upstream.stop();
    let released = waiter.join().unwrap();
    assert!(released.is_err(), "{released:?}");
    assert!(!upstream.is_running());
    let refused = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    upstream.set_default(Behavior::default());
    upstream.set_down(false).unwrap();
    assert_eq!(upstream.port(), port);
    assert_eq!(client::get(port, "/back").unwrap().status, 200);
}

#[test]
fn a_50ms_upstream_answers_in_about_50ms_without_delayed_ack_stalls() {
    let upstream = Upstream::start().unwrap();
    upstream.set_default(
        Behavior::default()
            .with_latency(Duration::from_millis(50))
            .with_body(vec![b'x'; 20_000]),
    );
    // A delayed-ACK stall adds ~40 ms (90 ms in all); a loaded 2-core machine adds a few ms.
    let mut elapsed: Vec<Duration> = (0..5)
        .map(|_| {
            let response = client::get(upstream.port(), "/").unwrap();
            assert_eq!(response.body.len(), 20_000);
            assert!(response.elapsed >= Duration::from_millis(50));
            response.elapsed
        })
        .collect();
    elapsed.sort();
    assert!(
        elapsed[2] < Duration::from_millis(62),
        "median {:?}",
        elapsed[2]
    );
    assert!(
        elapsed[4] < Duration::from_millis(85),
        "slowest {:?}",
        elapsed[4]
    );
}

#[test]
fn parallel_runs_every_index_once_and_returns_results_in_order() {
    let upstream = Upstream::start().unwrap();
    upstream.set_default(Behavior::default().with_latency(Duration::from_millis(20)));
    let started = Instant::now();
    let results = parallel(8, 40, |i| {
        let response = client::get(upstream.port(), &format!("/n/{i}")).unwrap();
        (i, response.status)
    });
    assert_eq!(results.len(), 40);
    assert!(results.iter().enumerate().all(|(i, r)| *r == (i, 200)));
    assert_eq!(upstream.requests_for("/n/"), 40);
    // 40 requests of 20 ms over 8 threads: about 100 ms, far below 800 ms sequentially.
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_client_reads_chunked_and_close_delimited_responses() {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for reply in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: t\r\n\r\n"[..],
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\nuntil close",
        ] {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).unwrap();
            conn.write_all(reply).unwrap();
        }
    });
    let chunked = client::get(port, "/").unwrap();
    assert_eq!(
        (chunked.status, chunked.body_str().as_str()),
        (200, "abcde")
    );
    assert_eq!(chunked.header("X-A"), Some("1"));
    let closed = client::get(port, "/").unwrap();
    assert_eq!(
        (closed.status, closed.body_str().as_str()),
        (404, "until close")
    );
    server.join().unwrap();
}

#[test]
fn a_capacity_limited_upstream_queues_requests_beyond_its_capacity() {
    let upstream = Upstream::start().unwrap();
    upstream.set_default(Behavior::default().with_latency(Duration::from_millis(100)));
    upstream.set_capacity(Some(2));
    let started = Instant::now();
    let mut finished: Vec<Duration> = parallel(6, 6, |i| {
        let response = client::get(upstream.port(), &format!("/q/{i}")).unwrap();
        assert_eq!(response.status, 200);
        started.elapsed()
    });
    finished.sort_unstable();
    // Two at a time, 100 ms each: pairs finish at about 100, 200 and 300 ms.
    assert!(
        finished[1] < Duration::from_millis(190),
        "the first two are served at once: {finished:?}"
    );
    assert!(
        finished[2] >= Duration::from_millis(200),
        "the third waits for a slot: {finished:?}"
    );
    assert!(
        finished[5] >= Duration::from_millis(300),
        "the last waits for two rounds: {finished:?}"
    );
    assert_eq!(upstream.requests_for("/q/"), 6);

    // Without a limit every request is served at once again.
    upstream.set_capacity(None);
    let started = Instant::now();
    parallel(6, 6, |i| {
        client::get(upstream.port(), &format!("/u/{i}")).unwrap()
    });
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn stopping_turns_away_requests_waiting_for_capacity() {
    let upstream = Upstream::start().unwrap();
    let port = upstream.port();
    upstream.set_default(Behavior::hang());
    upstream.set_capacity(Some(1));
    // The first request holds the only slot forever; the second waits for it.
    let waiters: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || client::get(port, "/held")))
        .collect();
    upstream
        .wait_for_requests(2, Duration::from_secs(5))
        .unwrap();
    let started = Instant::now();
    upstream.stop();
    for waiter in waiters {
        let released = waiter.join().unwrap();
        assert!(released.is_err(), "{released:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(2));

    // After a restart the slots are free again.
    upstream.set_default(Behavior::default());
    upstream.restart().unwrap();
    assert_eq!(client::get(port, "/back").unwrap().status, 200);
}
