//! HTTP/1.1 message framing shared by the scripted upstream and the test client.
//!
//! Why a hand-written parser: the harness must observe exactly what goes over the wire (one write
//! per response, connection resets, hung connections) and stay free of async runtimes and HTTP
//! crates. Only what the tests need is supported: a request or status line, headers, and bodies
//! framed by `Content-Length`, `Transfer-Encoding: chunked` or connection close.

use std::io::{BufRead, Read};

/// Most bytes a message head (start line plus headers) may take.
const MAX_HEAD: usize = 64 * 1024;
/// Most bytes a body may take.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A parsed message head: the start line split on spaces and the headers with lowercased names.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) start: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body framing the headers announce.
    pub(crate) fn framing(&self) -> Result<Framing, String> {
        if let Some(te) = self.header("transfer-encoding") {
            if te.to_ascii_lowercase().contains("chunked") {
                return Ok(Framing::Chunked);
            }
        }
        match self.header("content-length") {
            Some(len) => len
                .trim()
                .parse::<usize>()
                .map(Framing::Length)
                .map_err(|_| format!("bad content-length {len:?}")),
            None => Ok(Framing::None),
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No length given: for requests an empty body, for responses read until close.
    None,
    Length(usize),
    Chunked,
}

/// The first header named `name` (case-insensitive) in a lowercased header list.
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads one message head. `Ok(None)` when the peer closed cleanly before sending any byte (the
/// normal end of a keep-alive connection).
pub(crate) fn read_head<R: BufRead>(reader: &mut R) -> Result<Option<Head>, String> {
    let mut start: Option<String> = None;
    let mut headers = Vec::new();
    let mut total = 0usize;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading head: {e}"))?;
        if n == 0 {
            if start.is_none() && total == 0 {
                return Ok(None);
            }
            return Err("connection closed in the middle of a message head".to_string());
        }
        total += n;
        if total > MAX_HEAD {
            return Err("message head too large".to_string());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        match &start {
            None => {
                // Tolerate stray empty lines before a start line (RFC 9112 section 2.2).
                if !text.is_empty() {
                    start = Some(text.to_string());
                }
            }
            Some(_) if text.is_empty() => break,
            Some(_) => {
                let (name, value) = text
                    .split_once(':')
                    .ok_or_else(|| format!("malformed header line {text:?}"))?;
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    Ok(start.map(|start| Head { start, headers }))
}

/// Reads a body with the given framing. `Framing::None` reads nothing unless `until_close`, then
/// it reads to end of stream (a close-delimited response).
pub(crate) fn read_body<R: BufRead>(
    reader: &mut R,
    framing: Framing,
    until_close: bool,
) -> Result<Vec<u8>, String> {
    match framing {
        Framing::None if until_close => {
            let mut body = Vec::new();
            reader
                .take(MAX_BODY as u64)
                .read_to_end(&mut body)
                .map_err(|e| format!("reading close-delimited body: {e}"))?;
            Ok(body)
        }
        Framing::None => Ok(Vec::new()),
        Framing::Length(len) => {
            if len > MAX_BODY {
                return Err(format!("body of {len} bytes too large"));
            }
            let mut body = vec![0; len];
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("reading {len}-byte body: {e}"))?;
            Ok(body)
        }
        Framing::Chunked => read_chunked(reader),
    }
}

fn read_chunked<R: BufRead>(reader: &mut R) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("reading chunk size: {e}"))?;
        if line.is_empty() {
            return Err("connection closed inside a chunked body".to_string());
        }
        let size_text = line.trim().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                let n = reader
                    .read_line(&mut line)
                    .map_err(|e| format!("reading trailers: {e}"))?;
                if n == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err("chunked body too large".to_string());
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader
            .read_exact(body.get_mut(start..).unwrap_or_default())
            .map_err(|e| format!("reading chunk: {e}"))?;
        let mut crlf = [0u8; 2];
        reader
            .read_exact(&mut crlf)
            .map_err(|e| format!("reading chunk end: {e}"))?;
    }
}

/// The standard reason phrase for a status code (cosmetic: nothing depends on it).
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Whether a response with this status carries no body (RFC 9110 section 6.4.1).
pub(crate) fn status_has_no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}
