//! Smoke tests of the harness against the real, pinned Envoy (no wasm: a plain router config).

use std::time::{Duration, Instant};

use harness::config::{ClusterSpec, ProxyConfig, RouteSpec};
use harness::envoy::{self, Envoy, EnvoyOptions};
use harness::{basic_proxy_config, client, free_port, Behavior, Upstream};

/// An Envoy at the default options (concurrency 2) proxying everything to `upstream`.
fn proxy_to(upstream: &Upstream) -> Result<(Envoy, u16), String> {
    let listener = free_port();
    let config = basic_proxy_config(listener, free_port(), upstream.port(), "");
    let envoy = Envoy::start(&config, &EnvoyOptions::default())?;
    envoy.wait_listener(listener)?;
    Ok((envoy, listener))
}

/// Like `proxy_to`, with a 0.5 s route timeout.
fn proxy_with_short_timeout(upstream: &Upstream) -> Result<(Envoy, u16), String> {
    let listener = free_port();
    let config = ProxyConfig::new(listener, free_port())
        .route(RouteSpec::new("default", "/", "upstream").with_timeout(Duration::from_millis(500)))
        .cluster(ClusterSpec::new("upstream", &[upstream.port()]))
        .render();
    let envoy = Envoy::start(&config, &EnvoyOptions::default())?;
    Ok((envoy, listener))
}

#[test]
fn envoy_installs_and_starts_at_concurrency_2_and_proxies_a_request() {
    let bin = envoy::ensure_installed().unwrap();
    if std::env::var_os(envoy::ENVOY_BIN_ENV).is_none() {
        assert!(
            bin.starts_with(harness::paths::tools_dir()),
            "{}",
            bin.display()
        );
    }
    let upstream = Upstream::start_named("only").unwrap();
    let (envoy, port) = proxy_to(&upstream).unwrap();
    eprintln!("envoy LIVE after {:?}", envoy.startup_time());

    let response = client::get(port, "/hello?x=1").unwrap();
    assert_eq!(response.status, 200, "{}", response.body_str());
    assert_eq!(response.body_str(), "ok");
    assert_eq!(response.header("x-upstream-name"), Some("only"));
    assert_eq!(upstream.requests(), 1);
    assert_eq!(upstream.requests_for("/hello"), 1);
    let seen = upstream.log();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/hello?x=1");
    assert!(
        seen[0].header("x-request-id").is_some(),
        "{:?}",
        seen[0].headers
    );

    assert_eq!(envoy.stat("server.concurrency"), 2);
    assert_eq!(envoy.stat("cluster.upstream.upstream_rq_200"), 1);
    assert!(envoy.prometheus().contains("envoy_cluster_upstream_rq"));
    assert!(envoy.log().contains("starting main dispatch loop"));
    let (status, body) = envoy.admin_get("/ready").unwrap();
    assert_eq!((status, body.trim()), (200, "LIVE"));
}

#[test]
fn the_upstreams_scripted_status_latency_headers_and_body_come_through_envoy() {
    let upstream = Upstream::start().unwrap();
    let (_envoy, port) = proxy_to(&upstream).unwrap();
    upstream.set_default(
        Behavior::status(429)
            .with_latency(Duration::from_millis(100))
            .with_header("retry-after", "3")
            .with_body("slow down"),
    );
    upstream.set_behavior(
        "/grpc",
        Behavior::status(200)
            .with_header("content-type", "application/grpc")
            .with_header("grpc-status", "14"),
    );
    upstream.set_behavior("/flaky", Behavior::default().failing_every_nth(2));

    let limited = client::get(port, "/anything").unwrap();
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("3"));
    assert_eq!(limited.body_str(), "slow down");
    assert!(
        limited.elapsed >= Duration::from_millis(100),
        "{:?}",
        limited.elapsed
    );

    let grpc = client::request(port, "POST", "/grpc/Svc/Call", &[], Some(b"\0\0\0\0\0")).unwrap();
    assert_eq!(grpc.status, 200);
    assert_eq!(grpc.header("content-type"), Some("application/grpc"));
    assert_eq!(grpc.header("grpc-status"), Some("14"));

    let statuses: Vec<u16> = (0..4)
        .map(|_| client::get(port, "/flaky").unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 503, 200, 503]);

    let posted = client::request(
        port,
        "POST",
        "/upload",
        &[("transfer-encoding", "chunked")],
        Some(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(posted.status, 429);
    let log = upstream.log();
    let upload = log.iter().find(|r| r.path == "/upload").unwrap();
    assert_eq!(upload.body, b"hello world");
    assert_eq!(upstream.requests_for("/flaky"), 4);
    assert_eq!(upstream.requests(), 7);
}

#[test]
fn a_hung_upstream_makes_envoy_time_out_with_504() {
    let upstream = Upstream::start().unwrap();
    upstream.set_default(Behavior::hang());
    let (envoy, port) = proxy_with_short_timeout(&upstream).unwrap();

    let response = client::get(port, "/slow").unwrap();
    assert_eq!(response.status, 504, "{}", response.body_str());
    assert!(
        response.elapsed >= Duration::from_millis(450) && response.elapsed < Duration::from_secs(3),
        "{:?}",
        response.elapsed
    );
    assert_eq!(upstream.requests(), 1);
    assert_eq!(envoy.stat("cluster.upstream.upstream_rq_timeout"), 1);
}

#[test]
fn a_reset_or_silently_closed_upstream_gives_503() {
    let upstream = Upstream::start().unwrap();
    upstream.set_behavior("/reset", Behavior::reset());
    upstream.set_behavior("/close", Behavior::close_without_response());
    let (envoy, port) = proxy_to(&upstream).unwrap();

    let reset = client::get(port, "/reset").unwrap();
    assert_eq!(reset.status, 503, "{}", reset.body_str());
    assert!(reset.body_str().contains("reset"), "{}", reset.body_str());
    let closed = client::get(port, "/close").unwrap();
    assert_eq!(closed.status, 503, "{}", closed.body_str());
    assert_eq!(upstream.requests(), 2);
    assert_eq!(
        envoy.stat("cluster.upstream.upstream_cx_destroy_remote_with_active_rq"),
        2,
        "both connections died under an active request"
    );
    assert_eq!(client::get(port, "/fine").unwrap().status, 200);
}

#[test]
fn two_envoys_run_at_the_same_time_on_different_ports() {
    let a = Upstream::start_named("a").unwrap();
    let b = Upstream::start_named("b").unwrap();
    let (envoy_a, port_a) = proxy_to(&a).unwrap();
    let (envoy_b, port_b) = proxy_to(&b).unwrap();
    assert_ne!(envoy_a.admin_port, envoy_b.admin_port);
    assert_ne!(envoy_a.pid(), envoy_b.pid());

    for _ in 0..3 {
        assert_eq!(
            client::get(port_a, "/").unwrap().header("x-upstream-name"),
            Some("a")
        );
        assert_eq!(
            client::get(port_b, "/").unwrap().header("x-upstream-name"),
            Some("b")
        );
    }
    assert!(envoy_a.is_running() && envoy_b.is_running());
    assert_eq!((a.requests(), b.requests()), (3, 3));
}

#[test]
fn validate_accepts_a_good_config_and_rejects_a_bad_one() {
    let good = basic_proxy_config(free_port(), free_port(), free_port(), "");
    envoy::validate(&good).unwrap();

    let bad = good.replace("codec_type: AUTO", "codec_type: NOT_A_CODEC");
    let err = envoy::validate(&bad).unwrap_err();
    assert!(err.contains("NOT_A_CODEC"), "{err}");

    // A config path works too.
    let dir = harness::paths::fresh_temp_dir("validate-test").unwrap();
    let path = dir.join("good.yaml");
    std::fs::write(&path, &good).unwrap();
    envoy::validate(path.to_str().unwrap()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_envoy_that_refuses_its_config_is_reported_with_its_log() {
    let listener = free_port();
    let config = ProxyConfig::new(listener, free_port())
        .route(RouteSpec::new("default", "/", "no_such_cluster"))
        .cluster(ClusterSpec::new("upstream", &[free_port()]))
        .render();
    let log = envoy::start_expect_failure(&config, &EnvoyOptions::default()).unwrap();
    assert!(log.contains("no_such_cluster"), "{log}");

    let err = Envoy::start(&config, &EnvoyOptions::default()).unwrap_err();
    assert!(err.contains("exited during startup"), "{err}");
}

#[test]
fn a_dropped_envoy_leaves_no_process_behind() {
    let upstream = Upstream::start().unwrap();
    let (envoy, port) = proxy_to(&upstream).unwrap();
    let pid = envoy.pid();
    let marker = envoy.dir().display().to_string();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        processes_mentioning(&marker).len(),
        2,
        "envoy and its watchdog"
    );

    drop(envoy);

    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let deadline = Instant::now() + Duration::from_secs(3);
    while !processes_mentioning(&marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(processes_mentioning(&marker), Vec::<u32>::new());
    assert!(client::get(port, "/").is_err(), "the listener is gone");
    assert!(
        !std::path::Path::new(&marker).exists(),
        "scratch dir removed"
    );
}

/// Pids whose command line mentions `marker`.
fn processes_mentioning(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(marker) {
                pids.push(pid);
            }
        }
    }
    pids
}

#[test]
fn latency_through_envoy_for_a_50ms_upstream_is_below_60ms() {
    let upstream = Upstream::start().unwrap();
    upstream.set_default(Behavior::default().with_latency(Duration::from_millis(50)));
    let (_envoy, port) = proxy_to(&upstream).unwrap();
    for _ in 0..3 {
        client::get(port, "/warmup").unwrap();
    }
    let mut samples: Vec<Duration> = (0..10)
        .map(|_| {
            let response = client::get(port, "/timed").unwrap();
            assert_eq!(response.status, 200);
            response.elapsed
        })
        .collect();
    samples.sort();
    eprintln!("50 ms upstream through envoy: {samples:?}");
    assert!(samples[0] >= Duration::from_millis(50));
    // The median: robust against a scheduling hiccup on a busy 2-core machine.
    assert!(samples[5] < Duration::from_millis(60), "{samples:?}");
}

const WATCHDOG_CHILD_ENV: &str = "HARNESS_WATCHDOG_CHILD";

/// Run as a separate process by `an_envoy_dies_with_a_test_process_killed_without_cleanup`.
#[test]
#[ignore = "helper process for the watchdog test"]
fn watchdog_child_helper() {
    if std::env::var_os(WATCHDOG_CHILD_ENV).is_none() {
        return;
    }
    let upstream = Upstream::start().unwrap();
    let (envoy, _port) = proxy_to(&upstream).unwrap();
    println!("ENVOY_DIR={}", envoy.dir().display());
    println!("ENVOY_PID={}", envoy.pid());
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn an_envoy_dies_with_a_test_process_killed_without_cleanup() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "watchdog_child_helper",
            "--nocapture",
        ])
        .env(WATCHDOG_CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut dir = None;
    let pid: u32 = stdout
        .lines()
        .map_while(Result::ok)
        .inspect(|l| {
            if let Some(d) = l.strip_prefix("ENVOY_DIR=") {
                dir = Some(d.to_string());
            }
        })
        .find_map(|l| l.strip_prefix("ENVOY_PID=").map(|p| p.parse().unwrap()))
        .expect("the helper reports its envoy");
    assert!(alive(pid));

    child.kill().unwrap(); // SIGKILL: no destructors run
    child.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "envoy {pid} outlived its test process");
    // Its scratch directory is left behind (no destructor ran): clean it up here.
    std::fs::remove_dir_all(dir.unwrap()).unwrap();
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    })
}
