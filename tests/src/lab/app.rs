//! A caller application with a bounded worker pool, like a real service: what a cascade kills.
//!
//! Why: a dependency that hangs does not hurt the proxy in front of it; it hurts the service
//! that calls it, whose workers all end up waiting on the hang until none is left for its other,
//! healthy work. This application has a fixed number of worker threads; each serves one request
//! at a time, start to finish. `/dep…` calls the dependency through the caller's sidecar (an
//! Envoy listener) and answers with the status it got (502 for none); every other path does
//! `local_ms` of local work and answers 200. Connections wait in the accept queue while every
//! worker is busy, as they would in a thread-per-request server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::client::request_with_timeout;

/// How long the application waits for its dependency call (longer than the sidecar's route
/// timeout, so the sidecar decides).
const DEPENDENCY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct CallerApp {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl CallerApp {
    /// Starts the application on a free loopback port with `workers` threads, calling its
    /// dependency through `sidecar_port`.
    pub fn start(workers: usize, sidecar_port: u16, local_ms: u64) -> Result<CallerApp, String> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel::<TcpStream>(4096);
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for _ in 0..workers.max(1) {
            let rx = Arc::clone(&rx);
            handles.push(std::thread::spawn(move || {
                worker(&rx, sidecar_port, local_ms)
            }));
        }
        let accept_stop = Arc::clone(&stop);
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if accept_stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(c) = conn {
                    if tx.send(c).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(CallerApp {
            port,
            stop,
            accept: Some(accept),
            workers: handles,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for CallerApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop, which then drops the queue's sender: the workers end.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(rx: &Mutex<Receiver<TcpStream>>, sidecar_port: u16, local_ms: u64) {
    loop {
        let conn = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(mut conn) = conn else {
            return;
        };
        let _ = conn.set_nodelay(true);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let Some(path) = read_request_path(&mut conn) else {
            continue;
        };
        let status = if path.starts_with("/dep") {
            request_with_timeout(sidecar_port, "GET", &path, &[], None, DEPENDENCY_TIMEOUT)
                .map_or(502, |r| r.status)
        } else {
            std::thread::sleep(Duration::from_millis(local_ms));
            200
        };
        // One write: a split response and delayed ACK would add ~40 ms.
        let response =
            format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        let _ = conn.write_all(response.as_bytes());
    }
}

/// The request line's path, after reading the whole head (requests here have no body).
fn read_request_path(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.extend_from_slice(buf.get(..n)?);
    }
    let text = String::from_utf8_lossy(&head);
    text.lines().next()?.split(' ').nth(1).map(str::to_owned)
}
