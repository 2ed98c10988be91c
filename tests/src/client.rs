//! A tiny blocking HTTP/1.1 client for driving Envoy from tests.
//!
//! Why not an HTTP crate: tests need exact control and exact timing (one connection per request
//! so Envoy spreads them over its workers, Nagle off, a hard timeout so a misbehaving proxy fails
//! a test instead of hanging it) and the harness stays std-only. Each request opens a connection,
//! sends `Connection: close` and reads the response framed by `Content-Length`, chunked encoding
//! or connection close.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::wire::{self, Framing};

/// The timeout `request` and `get` apply to the whole exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// From starting to connect until the last body byte arrived.
    pub elapsed: Duration,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::find_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (lossy UTF-8).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to `127.0.0.1:port` and reads the full response, within `DEFAULT_TIMEOUT`.
/// A `Host` header is added unless given; `Content-Length` is added when there is a body.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, String> {
    request_with_timeout(port, method, path, headers, body, DEFAULT_TIMEOUT)
}

/// `GET path` with no extra headers.
pub fn get(port: u16, path: &str) -> Result<Response, String> {
    request(port, "GET", path, &[], None)
}

/// `request` with an explicit timeout for the whole exchange.
pub fn request_with_timeout(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, String> {
    let started = Instant::now();
    let deadline = started + timeout;
    let what = format!("{method} 127.0.0.1:{port}{path}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{what}: connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("{what}: nodelay: {e}"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| format!("{what}: {e}"))?;

    let mut out = Vec::with_capacity(256 + body.map_or(0, <[u8]>::len));
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("host") {
        out.extend_from_slice(format!("host: 127.0.0.1:{port}\r\n").as_bytes());
    }
    if !has("connection") {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if let Some(body) = body {
        if !has("content-length") && !has("transfer-encoding") {
            out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
    }
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    (&stream)
        .write_all(&out)
        .map_err(|e| format!("{what}: sending: {e}"))?;

    let set_remaining = |s: &TcpStream| -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{what}: timed out after {timeout:?}"));
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| format!("{what}: {e}"))
    };
    let mut reader = BufReader::new(&stream);
    let head = loop {
        set_remaining(&stream)?;
        let head = wire::read_head(&mut reader)
            .map_err(|e| format!("{what}: {}", timeout_text(e, timeout)))?
            .ok_or_else(|| format!("{what}: connection closed before a response"))?;
        let status = parse_status(&head.start).map_err(|e| format!("{what}: {e}"))?;
        // Interim responses (100 Continue and friends) precede the real one.
        if !(100..200).contains(&status) || status == 101 {
            break head;
        }
    };
    let status = parse_status(&head.start).map_err(|e| format!("{what}: {e}"))?;
    let framing = if method.eq_ignore_ascii_case("HEAD") || wire::status_has_no_body(status) {
        Framing::Length(0)
    } else {
        head.framing().map_err(|e| format!("{what}: {e}"))?
    };
    set_remaining(&stream)?;
    let body = wire::read_body(&mut reader, framing, true)
        .map_err(|e| format!("{what}: {}", timeout_text(e, timeout)))?;
    Ok(Response {
        status,
        headers: head.headers,
        body,
        elapsed: started.elapsed(),
    })
}

fn timeout_text(e: String, timeout: Duration) -> String {
    if e.contains("timed out") || e.contains("Resource temporarily unavailable") {
        format!("timed out after {timeout:?} ({e})")
    } else {
        e
    }
}

fn parse_status(start: &str) -> Result<u16, String> {
    let mut parts = start.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        return Err(format!("not an HTTP status line: {start:?}"));
    }
    parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {start:?}"))
}

/// Runs `f(0..n_requests)` on `n_threads` threads at once and returns the results in index order.
///
/// Why: each Envoy worker runs its own wasm VM, so cross-worker behaviour only shows under
/// concurrent connections. Threads pull the next index from a shared counter, so slow calls do
/// not stall the others. A panic in `f` propagates to the caller.
pub fn parallel<T, F>(n_threads: usize, n_requests: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync,
{
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<T>> = (0..n_requests).map(|_| None).collect();
    let finished: Vec<Vec<(usize, T)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n_threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n_requests {
                            return done;
                        }
                        done.push((i, f(i)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for (i, value) in finished.into_iter().flatten() {
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(value);
        }
    }
    slots.into_iter().flatten().collect()
}

/// Sends raw request bytes (for header values no well-behaved client sends, such as non-UTF-8)
/// and returns whatever comes back until the server closes or 5 s pass.
pub fn raw_request(port: u16, head: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(head).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(out)
}
