//! A simulated upstream fleet: N real HTTP instances whose behaviour is scripted on a timeline or
//! changed live over a small control API.
//!
//! Why: the pack is only convincing when you can watch it handle the outages it exists for, on
//! your own machine, with your own `curl` and load generator. `cargo pack run` puts the pack in
//! front of a fleet, and the `fleet` program (`cargo run -p harness --bin fleet -- --help`) runs
//! one on its own, e.g. behind your own Envoy config. Every instance is a
//! [`crate::upstream::Upstream`]: one write per response, Nagle off, `x-upstream-name` on every
//! answer.
//!
//! What an instance can be told to do (the same words on the command line, in a script and over
//! the control API):
//!
//! | action | effect |
//! |---|---|
//! | `healthy` | 200 after the base latency, no errors, no hang (capacity and cache kept) |
//! | `latency=50ms` | base latency of every answer |
//! | `errors=0.3` | this fraction of requests fails with 503 after the base latency |
//! | `instant-fail` | every request fails with 503 at once (the black hole) |
//! | `hang` | requests are read and never answered |
//! | `capacity=8` / `capacity=none` | at most 8 requests served at once; the rest queue in order |
//! | `cold=200ms` / `cold=none` | empty cache: the first request per distinct target takes 200 ms more, misses one at a time |
//! | `stop` / `start` | refuse connections (a dead host) / listen again |
//! | `restart` / `restart=6s` | stop, stay down for the given time (default none), start with an empty cache and no failure mode (a restarted process) |
//!
//! `/healthz` answers 200 at once unless the instance hangs or is stopped, like a liveness probe
//! that does not exercise the broken dependency.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::upstream::{Behavior, Upstream};
use crate::wire;

/// One change to one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Healthy,
    Latency(Duration),
    Errors(f64),
    InstantFail,
    Hang,
    Capacity(Option<usize>),
    Cold(Option<Duration>),
    Stop,
    Start,
    /// Down for this long, then back with an empty cache.
    Restart(Duration),
}

/// Parses a duration such as `250ms`, `2s`, `1.5s` or `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1_000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return Err(format!(
            "duration {text:?} needs a unit: ms, s or m (e.g. 250ms)"
        ));
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} is not a number with a unit"))?;
    if !value.is_finite() || value < 0.0 || value * scale_ms > 86_400_000.0 {
        return Err(format!("duration {text:?} must be between 0 and 24h"));
    }
    Ok(Duration::from_micros(
        (value * scale_ms * 1_000.0).round() as u64
    ))
}

impl Action {
    /// Parses one action word (see the module docs).
    pub fn parse(text: &str) -> Result<Action, String> {
        let (word, arg) = match text.split_once('=') {
            Some((w, a)) => (w.trim(), Some(a.trim())),
            None => (text.trim(), None),
        };
        let need = |what: &str| {
            arg.ok_or_else(|| format!("action {word:?} needs a value, e.g. {word}={what}"))
        };
        let action = match word {
            "healthy" => Action::Healthy,
            "instant-fail" => Action::InstantFail,
            "hang" => Action::Hang,
            "stop" => Action::Stop,
            "start" => Action::Start,
            "restart" => Action::Restart(match arg {
                Some(d) => parse_duration(d)?,
                None => Duration::ZERO,
            }),
            "latency" => Action::Latency(parse_duration(need("50ms")?)?),
            "errors" => {
                let v = need("0.3")?;
                let f: f64 = v
                    .parse()
                    .map_err(|_| format!("errors={v}: must be a fraction between 0 and 1"))?;
                if !(0.0..=1.0).contains(&f) {
                    return Err(format!("errors={v}: must be a fraction between 0 and 1"));
                }
                Action::Errors(f)
            }
            "capacity" => match need("8")? {
                "none" => Action::Capacity(None),
                v => Action::Capacity(Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=100_000).contains(n))
                        .ok_or_else(|| {
                            format!("capacity={v}: must be a whole number 1–100000 or none")
                        })?,
                )),
            },
            "cold" => match need("200ms")? {
                "none" => Action::Cold(None),
                v => Action::Cold(Some(parse_duration(v)?)),
            },
            other => {
                return Err(format!(
                    "unknown action {other:?}; known: healthy, latency=D, errors=F, instant-fail, \
                     hang, capacity=N|none, cold=D|none, stop, start, restart[=D]"
                ))
            }
        };
        if arg.is_some()
            && matches!(
                action,
                Action::Healthy | Action::InstantFail | Action::Hang | Action::Stop | Action::Start
            )
        {
            return Err(format!("action {word:?} takes no value"));
        }
        Ok(action)
    }
}

/// A scripted change: at `at` after the fleet started, instance `instance` (0-based) does
/// `action`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: Duration,
    pub instance: usize,
    pub action: Action,
}

impl Event {
    /// Parses `AT:INSTANCE:ACTION`, e.g. `10s:2:hang` or `30s:0:cold=300ms`.
    pub fn parse(text: &str) -> Result<Event, String> {
        let mut parts = text.splitn(3, ':');
        let (Some(at), Some(instance), Some(action)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "event {text:?} must be AT:INSTANCE:ACTION, e.g. 10s:2:hang"
            ));
        };
        Ok(Event {
            at: parse_duration(at)?,
            instance: instance
                .trim()
                .parse()
                .map_err(|_| format!("event {text:?}: instance must be a number from 0"))?,
            action: Action::parse(action)?,
        })
    }
}

/// What every instance starts as.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub instances: usize,
    /// Instance i listens on `base_port + i`; `None` picks free ports.
    pub base_port: Option<u16>,
    pub latency: Duration,
    pub errors: f64,
    pub capacity: Option<usize>,
    pub cold: Option<Duration>,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            instances: 4,
            base_port: None,
            latency: Duration::from_millis(20),
            errors: 0.0,
            capacity: None,
            cold: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    None,
    InstantFail,
    Hang,
}

impl Failure {
    fn word(self) -> &'static str {
        match self {
            Failure::None => "serving",
            Failure::InstantFail => "instant-fail",
            Failure::Hang => "hang",
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    latency: Duration,
    errors: f64,
    failure: Failure,
    capacity: Option<usize>,
    cold: Option<Duration>,
    /// Bumped on every change so each error pattern gets a fresh seeded sequence.
    generation: u64,
}

struct Instance {
    upstream: Upstream,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Instance {
    fn apply_behaviour(&self, s: &State) {
        let default = match s.failure {
            Failure::Hang => Behavior::hang(),
            Failure::InstantFail => Behavior::status(503),
            Failure::None if s.errors > 0.0 => Behavior::status(200)
                .with_latency(s.latency)
                .failing_fraction(s.errors, s.generation.wrapping_add(1))
                .on_failure(Behavior::status(503).with_latency(s.latency)),
            Failure::None => Behavior::status(200).with_latency(s.latency),
        };
        self.upstream.set_default(default);
        let health = if s.failure == Failure::Hang {
            Behavior::hang()
        } else {
            Behavior::status(200)
        };
        self.upstream.set_behavior("/healthz", health);
    }
}

/// A running fleet. Stops every instance (and the control API) on drop.
pub struct Fleet {
    instances: Arc<Vec<Instance>>,
    started: Instant,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    control_port: Mutex<Option<u16>>,
}

impl Fleet {
    /// Starts `spec.instances` instances.
    pub fn start(spec: &FleetSpec) -> Result<Fleet, String> {
        if spec.instances == 0 || spec.instances > 64 {
            return Err(format!(
                "a fleet has 1–64 instances, got {}",
                spec.instances
            ));
        }
        let mut instances = Vec::with_capacity(spec.instances);
        for i in 0..spec.instances {
            let name = format!("instance-{i}");
            let upstream = match spec.base_port {
                Some(base) => {
                    let port = u16::try_from(usize::from(base) + i)
                        .map_err(|_| format!("base port {base} + {i} is past 65535"))?;
                    Upstream::start_at(&name, port)?
                }
                None => Upstream::start_named(&name)?,
            };
            let state = State {
                latency: spec.latency,
                errors: spec.errors,
                failure: Failure::None,
                capacity: spec.capacity,
                cold: spec.cold,
                generation: i as u64,
            };
            let instance = Instance {
                upstream,
                state: Mutex::new(state.clone()),
            };
            instance.apply_behaviour(&state);
            instance.upstream.set_capacity(state.capacity);
            instance.upstream.set_cold_cache(state.cold);
            instances.push(instance);
        }
        Ok(Fleet {
            instances: Arc::new(instances),
            started: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
            control_port: Mutex::new(None),
        })
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The port of instance `i`.
    pub fn port(&self, i: usize) -> Option<u16> {
        self.instances.get(i).map(|x| x.upstream.port())
    }

    /// The instances' underlying upstreams (for request counts and logs).
    pub fn upstream(&self, i: usize) -> Option<&Upstream> {
        self.instances.get(i).map(|x| &x.upstream)
    }

    /// Applies `action` to instance `i` now.
    pub fn apply(&self, i: usize, action: &Action) -> Result<(), String> {
        apply(&self.instances, i, action)
    }

    /// One line per instance: port, state, requests served.
    pub fn status(&self) -> String {
        status(&self.instances, self.started)
    }

    /// Runs `events` on their timeline (measured from the fleet's start) in the background,
    /// printing each as it happens when `verbose`.
    pub fn run_script(&self, mut events: Vec<Event>, verbose: bool) -> Result<(), String> {
        for e in &events {
            if e.instance >= self.instances.len() {
                return Err(format!(
                    "event at {:?} names instance {}, but the fleet has instances 0–{}",
                    e.at,
                    e.instance,
                    self.instances.len().saturating_sub(1)
                ));
            }
        }
        events.sort_by_key(|e| e.at);
        let instances = Arc::clone(&self.instances);
        let stop = Arc::clone(&self.stop);
        let started = self.started;
        let thread = std::thread::Builder::new()
            .name("fleet-script".into())
            .spawn(move || {
                for e in events {
                    while started.elapsed() < e.at {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let left = e.at.saturating_sub(started.elapsed());
                        std::thread::sleep(left.min(Duration::from_millis(50)));
                    }
                    let result = apply(&instances, e.instance, &e.action);
                    if verbose {
                        match result {
                            Ok(()) => println!(
                                "[fleet {:6.1} s] instance {}: {:?}",
                                started.elapsed().as_secs_f64(),
                                e.instance,
                                e.action
                            ),
                            Err(err) => println!("[fleet] instance {}: {err}", e.instance),
                        }
                    }
                }
            })
            .map_err(|e| format!("spawning the script thread: {e}"))?;
        lock(&self.threads).push(thread);
        Ok(())
    }

    /// Serves the control API on `127.0.0.1:port` (0 picks a free port) and returns the port.
    ///
    /// - `GET /` — the fleet's status as JSON.
    /// - `POST /instances/<i>/<action>` — applies an action, e.g.
    ///   `curl -X POST localhost:18090/instances/2/hang` or `.../instances/0/latency=80ms`.
    pub fn serve_control(&self, port: u16) -> Result<u16, String> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|e| format!("control API: binding 127.0.0.1:{port}: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("control API: {e}"))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("control API: {e}"))?;
        let instances = Arc::clone(&self.instances);
        let stop = Arc::clone(&self.stop);
        let started = self.started;
        let thread = std::thread::Builder::new()
            .name("fleet-control".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                            let _ = stream.set_nodelay(true);
                            control_exchange(stream, &instances, started);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .map_err(|e| format!("spawning the control thread: {e}"))?;
        lock(&self.threads).push(thread);
        *lock(&self.control_port) = Some(port);
        Ok(port)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        for x in self.instances.iter() {
            x.upstream.stop();
        }
    }
}

fn apply(instances: &Arc<Vec<Instance>>, i: usize, action: &Action) -> Result<(), String> {
    let x = instances.get(i).ok_or_else(|| {
        format!(
            "no instance {i}; the fleet has instances 0–{}",
            instances.len().saturating_sub(1)
        )
    })?;
    let mut s = lock(&x.state);
    s.generation = s.generation.wrapping_add(1_000);
    match action {
        Action::Healthy => {
            s.failure = Failure::None;
            s.errors = 0.0;
        }
        Action::Latency(d) => s.latency = *d,
        Action::Errors(f) => s.errors = *f,
        Action::InstantFail => s.failure = Failure::InstantFail,
        Action::Hang => s.failure = Failure::Hang,
        Action::Capacity(c) => {
            s.capacity = *c;
            x.upstream.set_capacity(*c);
        }
        Action::Cold(c) => {
            s.cold = *c;
            x.upstream.set_cold_cache(*c);
        }
        Action::Stop => x.upstream.stop(),
        Action::Start => x.upstream.restart()?,
        Action::Restart(downtime) => {
            x.upstream.stop();
            // A restarted process forgets its failure mode and starts with an empty cache.
            s.failure = Failure::None;
            x.upstream.set_cold_cache(s.cold);
            if downtime.is_zero() {
                x.upstream.restart()?;
            } else {
                let instances = Arc::clone(instances);
                let downtime = *downtime;
                std::thread::Builder::new()
                    .name(format!("fleet-restart-{i}"))
                    .spawn(move || {
                        std::thread::sleep(downtime);
                        if let Some(x) = instances.get(i) {
                            let s = lock(&x.state).clone();
                            x.upstream.set_cold_cache(s.cold);
                            if let Err(e) = x.upstream.restart() {
                                eprintln!("[fleet] instance {i}: {e}");
                            }
                        }
                    })
                    .map_err(|e| format!("spawning a restart: {e}"))?;
            }
        }
    }
    x.apply_behaviour(&s);
    Ok(())
}

fn status(instances: &Arc<Vec<Instance>>, started: Instant) -> String {
    let mut list = Vec::new();
    for (i, x) in instances.iter().enumerate() {
        let s = lock(&x.state);
        let mut o = BTreeMap::new();
        o.insert("instance", serde_json::json!(i));
        o.insert("port", serde_json::json!(x.upstream.port()));
        o.insert(
            "state",
            serde_json::json!(if x.upstream.is_running() {
                s.failure.word()
            } else {
                "stopped"
            }),
        );
        o.insert(
            "latency_ms",
            serde_json::json!(s.latency.as_secs_f64() * 1_000.0),
        );
        o.insert("errors", serde_json::json!(s.errors));
        o.insert("capacity", serde_json::json!(s.capacity));
        o.insert(
            "cold_miss_ms",
            serde_json::json!(s.cold.map(|d| d.as_secs_f64() * 1_000.0)),
        );
        o.insert("requests", serde_json::json!(x.upstream.requests()));
        list.push(o);
    }
    serde_json::json!({
        "uptime_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "instances": list,
    })
    .to_string()
}

fn control_exchange(stream: TcpStream, instances: &Arc<Vec<Instance>>, started: Instant) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    let (status_code, body) = match wire::read_head(&mut reader) {
        Ok(Some(head)) => {
            if let Ok(framing) = head.framing() {
                let _ = wire::read_body(&mut reader, framing, false);
            }
            route(&head.start, instances, started)
        }
        Ok(None) => return,
        Err(e) => (400, serde_json::json!({ "error": e }).to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status_code} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        wire::reason(status_code),
        body.len() + 1
    ) + "\n";
    let _ = out.write_all(response.as_bytes());
}

fn route(start: &str, instances: &Arc<Vec<Instance>>, started: Instant) -> (u16, String) {
    let mut parts = start.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let error = |code: u16, msg: String| (code, serde_json::json!({ "error": msg }).to_string());
    if path == "/" || path.is_empty() {
        return (200, status(instances, started));
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["instances", i, action] => {
            if method != "POST" {
                return error(
                    405,
                    format!("use POST to change an instance, e.g. curl -X POST …{path}"),
                );
            }
            let Ok(i) = i.parse::<usize>() else {
                return error(404, format!("instance {i:?} is not a number"));
            };
            match Action::parse(action).and_then(|a| apply(instances, i, &a)) {
                Ok(()) => (200, status(instances, started)),
                Err(e) => error(400, e),
            }
        }
        _ => error(
            404,
            "known: GET /, POST /instances/<i>/<action> (healthy, latency=D, errors=F, \
             instant-fail, hang, capacity=N|none, cold=D|none, stop, start, restart[=D])"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn actions_parse_with_and_without_values() {
        assert_eq!(Action::parse("hang"), Ok(Action::Hang));
        assert_eq!(
            Action::parse("latency=80ms"),
            Ok(Action::Latency(Duration::from_millis(80)))
        );
        assert_eq!(Action::parse("errors=0.25"), Ok(Action::Errors(0.25)));
        assert_eq!(Action::parse("capacity=none"), Ok(Action::Capacity(None)));
        assert_eq!(
            Action::parse("cold=1.5s"),
            Ok(Action::Cold(Some(Duration::from_millis(1_500))))
        );
    }

    #[test]
    fn bad_actions_are_refused_with_the_rule() {
        assert!(Action::parse("errors=2")
            .unwrap_err()
            .contains("between 0 and 1"));
        assert!(Action::parse("latency=5").unwrap_err().contains("unit"));
        assert!(Action::parse("hang=1").unwrap_err().contains("no value"));
        assert_eq!(
            Action::parse("restart=6s"),
            Ok(Action::Restart(Duration::from_secs(6)))
        );
        assert!(Action::parse("explode").unwrap_err().contains("known"));
        assert!(Action::parse("capacity=0")
            .unwrap_err()
            .contains("1–100000"));
    }

    #[test]
    fn events_parse_as_time_instance_action() {
        assert_eq!(
            Event::parse("10s:2:cold=300ms"),
            Ok(Event {
                at: Duration::from_secs(10),
                instance: 2,
                action: Action::Cold(Some(Duration::from_millis(300))),
            })
        );
        assert!(Event::parse("10s:hang").is_err());
    }
}
