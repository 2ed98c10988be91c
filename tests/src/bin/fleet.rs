//! `fleet`: a simulated upstream fleet on loopback, for trying the pack by hand or behind your own
//! Envoy config. See `harness::fleet` for what instances can do.
//!
//! ```sh
//! cargo run -p harness --bin fleet -- --instances 4 --base-port 18081 --latency 20ms \
//!     --control-port 18090 --at 10s:3:instant-fail --at 40s:3:healthy
//! curl -s localhost:18090/                         # status
//! curl -s -X POST localhost:18090/instances/1/hang # change an instance live
//! ```
// On the host only: a wasm build of the whole workspace (`cargo build --target wasm32-wasip1`
// at the root) compiles this program to an empty module rather than failing.
#![cfg_attr(target_family = "wasm", no_main)]
#![cfg(not(target_family = "wasm"))]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use harness::fleet::{parse_duration, Action, Event, Fleet, FleetSpec};

const USAGE: &str = "usage: fleet [--instances N] [--base-port PORT] [--latency D] [--errors F]
             [--capacity N] [--cold D] [--control-port PORT] [--at AT:INSTANCE:ACTION]...
             [--for D]

Starts N HTTP instances on 127.0.0.1 (instance i on BASE-PORT + i, or free ports) and a control
API (default port 18090; 0 picks a free one). Durations take a unit: 250ms, 2s, 1m.

actions (for --at and POST /instances/<i>/<action>):
  healthy  latency=D  errors=F  instant-fail  hang  capacity=N|none  cold=D|none
  stop  start  restart

examples:
  fleet --instances 4 --base-port 18081 --capacity 8 --at 10s:3:instant-fail --at 40s:3:healthy
  curl -s localhost:18090/
  curl -s -X POST localhost:18090/instances/1/hang";

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a str, String> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(text: &str, flag: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag} {text:?}: not a valid number"))
}

fn run(args: &[String]) -> Result<(), String> {
    let mut spec = FleetSpec::default();
    let mut control_port: u16 = 18090;
    let mut events = Vec::new();
    let mut run_for: Option<Duration> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--instances" => spec.instances = number(value(&mut it, flag)?, flag)?,
            "--base-port" => spec.base_port = Some(number(value(&mut it, flag)?, flag)?),
            "--latency" => spec.latency = parse_duration(value(&mut it, flag)?)?,
            "--errors" => match Action::parse(&format!("errors={}", value(&mut it, flag)?))? {
                Action::Errors(f) => spec.errors = f,
                _ => return Err("--errors takes a fraction".into()),
            },
            "--capacity" => match Action::parse(&format!("capacity={}", value(&mut it, flag)?))? {
                Action::Capacity(c) => spec.capacity = c,
                _ => return Err("--capacity takes a number".into()),
            },
            "--cold" => match Action::parse(&format!("cold={}", value(&mut it, flag)?))? {
                Action::Cold(c) => spec.cold = c,
                _ => return Err("--cold takes a duration".into()),
            },
            "--control-port" => control_port = number(value(&mut it, flag)?, flag)?,
            "--at" => events.push(Event::parse(value(&mut it, flag)?)?),
            "--for" => run_for = Some(parse_duration(value(&mut it, flag)?)?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unexpected argument {other:?}\n\n{USAGE}")),
        }
    }
    let fleet = Fleet::start(&spec)?;
    let control = fleet.serve_control(control_port)?;
    for i in 0..fleet.len() {
        println!(
            "instance {i}: http://127.0.0.1:{}",
            fleet.port(i).unwrap_or_default()
        );
    }
    println!("control:    http://127.0.0.1:{control}/  (POST /instances/<i>/<action>)");
    fleet.run_script(events, true)?;
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if run_for.is_some_and(|d| started.elapsed() >= d) {
            println!("{}", fleet.status());
            return Ok(());
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {e}");
            ExitCode::from(2)
        }
    }
}
