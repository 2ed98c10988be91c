//! A real gRPC server and client for the end-to-end tests: grpcio (Python), over HTTP/2.
//!
//! Why a real implementation: what a gRPC client makes of an answer (which status, which message,
//! whether and when its retry policy tries again) is decided by its library, not by the bytes a
//! test could check by hand. So the tests drive grpcio's own client, with a standard service-config
//! retry policy, and grpcio's own server behind Envoy, and assert on what the library reports.
//!
//! How: grpcio and the `google.rpc` protos (to decode `grpc-status-details-bin` as a real client
//! would) are installed once, pinned, from PyPI wheels into `<root>/.tools/grpcio-<version>` with
//! `pip install --target`, as the pinned Envoy is (see [`crate::envoy`]); the scripts in
//! `tests/grpc/` run with that directory on `PYTHONPATH`. They use generic handlers and raw-bytes
//! (de)serializers, so no protoc and no generated code are needed. The server is a child process
//! that prints one JSON line per call it receives and exits when its standard input closes, so it
//! never outlives the test process; the client runs once per batch of calls and prints one JSON
//! line per call.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::paths;

/// The pinned grpcio release.
pub const GRPCIO_VERSION: &str = "1.76.0";

/// Everything the scripts import, pinned exactly and installed without dependency resolution, so
/// every machine runs the same client and server.
const PACKAGES: &[&str] = &[
    "grpcio==1.76.0",
    "grpcio-status==1.76.0",
    "protobuf==6.33.6",
    "googleapis-common-protos==1.76.0",
    "typing-extensions==4.16.0",
];

/// Why the tests need Python, for the message when it is missing.
const WHY_PYTHON: &str = "the gRPC end-to-end tests run grpcio (installed from PyPI with pip)";

static INSTALLED: Mutex<Option<PathBuf>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `<root>/.tools/grpcio-<version>`: the packages' install directory (a `PYTHONPATH` entry).
pub fn install_dir() -> PathBuf {
    paths::tools_dir().join(format!("grpcio-{GRPCIO_VERSION}"))
}

/// `<root>/tests/grpc`: the server and client scripts.
pub fn scripts_dir() -> PathBuf {
    paths::workspace_root().join("tests").join("grpc")
}

/// The install directory, installing the pinned packages first if needed (once per machine; a
/// concurrent install by another test process is harmless: each installs into its own staging
/// directory and the first rename wins).
pub fn ensure_installed() -> Result<PathBuf, String> {
    let mut installed = lock(&INSTALLED);
    if let Some(dir) = installed.as_ref() {
        return Ok(dir.clone());
    }
    crate::prereq::ensure_python_pip_for(WHY_PYTHON)?;
    let dest = install_dir();
    install(&dest)?;
    *installed = Some(dest.clone());
    Ok(dest)
}

/// Whether `dir` holds the packages (grpcio's native module and the status protos).
fn is_complete(dir: &Path) -> bool {
    dir.join("grpc").join("_cython").is_dir()
        && dir.join("grpc_status").is_dir()
        && dir.join("google").join("rpc").is_dir()
}

fn install(dest: &Path) -> Result<(), String> {
    paths::install_tool(
        &format!("grpcio-{GRPCIO_VERSION}"),
        dest,
        is_complete,
        |staging| crate::prereq::pip_install_target(staging, PACKAGES),
    )
    .map_err(|e| format!("{e} (pip install {})", PACKAGES.join(" ")))
}

/// `python3 tests/grpc/<script>` with the packages on `PYTHONPATH`.
fn python(script: &str) -> Result<Command, String> {
    let dir = ensure_installed()?;
    let mut cmd = Command::new("python3");
    cmd.arg(scripts_dir().join(script))
        .env("PYTHONPATH", dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    Ok(cmd)
}

// ---------------------------------------------------------------------------------------------
// Server

/// A running grpcio server on `127.0.0.1:port` (`tests/grpc/server.py`). Every method echoes;
/// request metadata `x-respond-code: N` ends a call with status N, `x-delay-ms: N` delays it.
/// Dropping it stops the process.
pub struct GrpcServer {
    port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    calls: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("port", &self.port)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl GrpcServer {
    /// Starts the server on a free port and waits (up to 20 s) until it serves.
    pub fn start() -> Result<GrpcServer, String> {
        Self::start_with(&[])
    }

    /// A server that serves at most `capacity` calls at once, each taking `service_ms`, and
    /// refuses the rest at once with `UNAVAILABLE` (an overloaded server, for the lab's storm).
    pub fn start_with_capacity(capacity: usize, service_ms: u64) -> Result<GrpcServer, String> {
        Self::start_with(&[capacity.to_string(), service_ms.to_string()])
    }

    fn start_with(extra: &[String]) -> Result<GrpcServer, String> {
        let port = crate::free_port();
        let mut child = python("server.py")?
            .arg(port.to_string())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the gRPC server: {e}"))?;
        let stdin = child.stdin.take();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let calls = Arc::clone(&calls);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    match serde_json::from_str::<Value>(&line) {
                        Ok(v) if v.get("ready").is_some() => {
                            let _ = ready_tx.send(());
                        }
                        Ok(v) => lock(&calls).push(v),
                        Err(_) => {}
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut s = lock(&stderr);
                    if s.len() < 64 * 1024 {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let mut server = GrpcServer {
            port,
            child,
            stdin,
            calls,
            stderr,
        };
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(()) => Ok(server),
            Err(_) => {
                server.stop();
                Err(format!(
                    "the gRPC server did not start on {port}:\n{}",
                    server.stderr()
                ))
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every call the server received so far: `{"method", "metadata", "bytes", "messages"}`.
    pub fn calls(&self) -> Vec<Value> {
        lock(&self.calls).clone()
    }

    /// How many calls reached the server.
    pub fn call_count(&self) -> usize {
        lock(&self.calls).len()
    }

    /// Forgets the calls received so far.
    pub fn clear_calls(&self) {
        lock(&self.calls).clear();
    }

    /// Waits until at least `n` calls arrived; Err on timeout.
    pub fn wait_calls(&self, n: usize, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.call_count();
            if got >= n {
                return Ok(got);
            }
            if Instant::now() >= deadline {
                return Err(format!("the gRPC server saw {got} calls, wanted {n}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the server wrote to stderr (a traceback when it failed).
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Stops the server (closing its stdin, then killing it) and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// A standard gRPC retry policy (service config `retryPolicy`), applied to every method.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Status names, e.g. `UNAVAILABLE`.
    pub retryable: Vec<String>,
}

impl RetryPolicy {
    /// `maxAttempts` 4, retrying `UNAVAILABLE` after 10 ms: the policy the clients use.
    pub fn standard() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            retryable: vec!["UNAVAILABLE".to_owned()],
        }
    }
}

/// One call for [`call`].
#[derive(Debug, Clone)]
pub struct Call {
    /// `/package.Service/Method`.
    pub method: String,
    /// The call's deadline (grpcio sends it as `grpc-timeout`).
    pub timeout: Option<Duration>,
    pub metadata: Vec<(String, String)>,
    pub payload_bytes: usize,
    /// `Some(n)`: a client-streaming call of `n` messages of `payload_bytes` each.
    pub messages: Option<usize>,
    /// Goes through a channel with retries off, whatever the batch's retry policy.
    pub no_retry: bool,
    /// Waited before the call starts (in a sequential batch).
    pub pause: Duration,
}

impl Call {
    pub fn unary(method: &str) -> Self {
        Call {
            method: method.to_owned(),
            timeout: None,
            metadata: Vec::new(),
            payload_bytes: 0,
            messages: None,
            no_retry: false,
            pause: Duration::ZERO,
        }
    }

    /// Waits `pause` before the call (a sequential batch runs its calls one after another).
    pub fn after(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// This call is not retried, even in a batch with a retry policy.
    pub fn without_retry(mut self) -> Self {
        self.no_retry = true;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn with_metadata(mut self, name: &str, value: &str) -> Self {
        self.metadata.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn with_payload(mut self, bytes: usize) -> Self {
        self.payload_bytes = bytes;
        self
    }

    pub fn streaming(mut self, messages: usize) -> Self {
        self.messages = Some(messages);
        self
    }

    fn spec(&self) -> Value {
        json!({
            "method": self.method,
            "timeout_s": self.timeout.map(|t| t.as_secs_f64()),
            "metadata": self.metadata.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "payload_bytes": self.payload_bytes,
            "messages": self.messages,
            "retry": !self.no_retry,
            "pause_s": self.pause.as_secs_f64(),
        })
    }
}

/// What grpcio reported for one call.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The status name, e.g. `DEADLINE_EXCEEDED`.
    pub code: String,
    pub code_value: u64,
    /// The message (`grpc-message`, decoded by grpcio).
    pub details: String,
    /// From the call's start to its end, retries and their waits included.
    pub elapsed: Duration,
    pub initial_metadata: Value,
    pub trailing_metadata: Value,
    /// The `google.rpc.Status` in `grpc-status-details-bin` as the real protos decode it:
    /// `{"code", "message", "retry_delay_ms", "error_info": {"reason", "domain", "metadata"}}`,
    /// or `{"error": …}` when grpcio-status finds it disagrees with the status; `Null` when absent.
    pub status: Value,
}

impl Outcome {
    /// A trailing metadata value.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailing_metadata.get(name).and_then(Value::as_str)
    }
}

/// Runs `calls` through one grpcio channel to `127.0.0.1:port` (in order, or `parallel` at a
/// time), with `retry` as the channel's retry policy (`None`: retries off), and returns what the
/// library reported for each.
pub fn call(
    port: u16,
    retry: Option<&RetryPolicy>,
    parallel: usize,
    calls: &[Call],
) -> Result<Vec<Outcome>, String> {
    let spec = json!({
        "target": format!("127.0.0.1:{port}"),
        "retry": retry.map(|r| json!({
            "max_attempts": r.max_attempts,
            "initial_backoff_s": r.initial_backoff.as_secs_f64(),
            "max_backoff_s": r.max_backoff.as_secs_f64(),
            "codes": r.retryable,
        })),
        "parallel": parallel.max(1),
        "calls": calls.iter().map(Call::spec).collect::<Vec<_>>(),
    });
    let output = python("client.py")?
        .arg(spec.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running the gRPC client: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the gRPC client failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let outcomes: Vec<Outcome> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_outcome)
        .collect::<Result<_, _>>()?;
    if outcomes.len() != calls.len() {
        return Err(format!(
            "the gRPC client reported {} calls of {}:\n{text}",
            outcomes.len(),
            calls.len()
        ));
    }
    Ok(outcomes)
}

/// Runs one call with no retry policy.
pub fn call_once(port: u16, call_spec: &Call) -> Result<Outcome, String> {
    call(port, None, 1, std::slice::from_ref(call_spec))?
        .pop()
        .ok_or_else(|| "the gRPC client reported no call".to_owned())
}

fn parse_outcome(line: &str) -> Result<Outcome, String> {
    let v: Value =
        serde_json::from_str(line).map_err(|e| format!("gRPC client output {line:?}: {e}"))?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Ok(Outcome {
        code: text("code"),
        code_value: v.get("code_value").and_then(Value::as_u64).unwrap_or(99),
        details: text("details"),
        elapsed: Duration::from_secs_f64(
            v.get("elapsed_ms").and_then(Value::as_f64).unwrap_or(0.0) / 1000.0,
        ),
        initial_metadata: v.get("initial_metadata").cloned().unwrap_or(Value::Null),
        trailing_metadata: v.get("trailing_metadata").cloned().unwrap_or(Value::Null),
        status: v.get("status").cloned().unwrap_or(Value::Null),
    })
}

/// One call of [`storm`]: when it started (s since the load began) and how it ended.
#[derive(Debug, Clone)]
pub struct StormCall {
    pub at_s: f64,
    pub code: String,
}

/// Open-loop callers through one grpcio channel with `retry` (grpcio's own retries): `phases`
/// of `(from_s, to_s, calls per second)`. Returns the load's start on the monotonic clock (the
/// server's `t` of each call is on the same clock) and every call.
pub fn storm(
    port: u16,
    retry: &RetryPolicy,
    phases: &[(f64, f64, f64)],
    timeout: Duration,
) -> Result<(f64, Vec<StormCall>), String> {
    let spec = json!({
        "target": format!("127.0.0.1:{port}"),
        "method": "/test.Echo/Unary",
        "timeout_s": timeout.as_secs_f64(),
        "retry": {
            "max_attempts": retry.max_attempts,
            "initial_backoff_s": retry.initial_backoff.as_secs_f64(),
            "max_backoff_s": retry.max_backoff.as_secs_f64(),
            "codes": retry.retryable,
        },
        "phases": phases.iter().map(|(from, to, rate)| json!({"from_s": from, "to_s": to, "rate": rate})).collect::<Vec<_>>(),
        "threads": 128,
    });
    let output = python("storm.py")?
        .arg(spec.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running the gRPC callers: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the gRPC callers failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut t0 = None;
    let mut calls = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(t) = v.get("t0").and_then(Value::as_f64) {
            t0 = Some(t);
        } else if let Some(at_s) = v.get("at_s").and_then(Value::as_f64) {
            calls.push(StormCall {
                at_s,
                code: v
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            });
        }
    }
    let t0 = t0.ok_or("the gRPC callers printed no start time")?;
    Ok((t0, calls))
}
