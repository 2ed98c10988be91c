//! A request written as text, the input of the request targets: easy to write as a seed, and
//! every mutation of it is still a request.
//!
//! ```text
//! POST /v1/pets?limit=5          ← the method, one space, the `:path` (query included)
//! content-type: application/json ← headers, `name: value` (or `name:value`); names lowercased
//! ~route: pets                   ← Envoy's route name (not a header)
//! ~chunk: 3                      ← deliver the body in chunks of this many bytes
//!                                ← an empty line: a body follows (else `end_of_stream`)
//! {"name": "rex"}                ← the body, bytes as they are, to the end
//! ```
//!
//! Lines end with `\n` (a `\r` before it is dropped). Bytes need not be UTF-8 anywhere.

use request_validator::rules::RequestHead;

/// A parsed request.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub head: RequestHead,
    pub route_name: Option<String>,
    pub body: Vec<u8>,
    /// Body chunk size; 0 delivers the body whole.
    pub chunk: usize,
}

impl Request {
    /// The body in the chunks the proxy would hand over.
    pub fn chunks(&self) -> Vec<&[u8]> {
        if self.head.end_of_stream {
            Vec::new()
        } else if self.chunk == 0 || self.body.is_empty() {
            vec![self.body.as_slice()]
        } else {
            self.body.chunks(self.chunk).collect()
        }
    }
}

fn split_line(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let line = &data[..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (line, Some(&data[i + 1..]))
        }
        None => (data, None),
    }
}

/// `name: value` (the first `:` after the name's first byte, so `:authority: x` works).
fn split_header(line: &[u8]) -> (&[u8], &[u8]) {
    let at = line.iter().skip(1).position(|b| *b == b':').map(|i| i + 1);
    match at {
        Some(i) => {
            let value = &line[i + 1..];
            (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[]),
    }
}

/// Reads a request in the text form above; never fails.
pub fn parse(data: &[u8]) -> Request {
    let mut req = Request::default();
    let (first, mut rest) = split_line(data);
    let (method, path) = match first.iter().position(|b| *b == b' ') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (first, &[][..]),
    };
    let mut headers = vec![
        (b":method".to_vec(), method.to_vec()),
        (b":path".to_vec(), path.to_vec()),
    ];
    let mut end_of_stream = true;
    while let Some(data) = rest {
        let (line, next) = split_line(data);
        rest = next;
        if line.is_empty() {
            if let Some(body) = rest {
                req.body = body.to_vec();
            }
            end_of_stream = false;
            break;
        }
        let (name, value) = split_header(line);
        match name {
            b"~route" => req.route_name = Some(String::from_utf8_lossy(value).into_owned()),
            b"~chunk" => {
                req.chunk = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            }
            _ => headers.push((name.to_ascii_lowercase(), value.to_vec())),
        }
    }
    req.head = RequestHead {
        headers: headers.into(),
        end_of_stream,
    };
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_reads_as_a_head_a_route_name_and_a_chunked_body() {
        let r = parse(
            b"POST /a?b=1\r\nContent-Type: application/json\n:authority:x\n~route: r\n~chunk: 2\n\n{\"a\":1}\n",
        );
        assert_eq!(r.head.method(), b"POST");
        assert_eq!(r.head.path(), b"/a?b=1");
        assert_eq!(r.head.get("content-type"), Some(&b"application/json"[..]));
        assert_eq!(r.head.get(":authority"), Some(&b"x"[..]));
        assert_eq!(r.route_name.as_deref(), Some("r"));
        assert!(!r.head.end_of_stream);
        assert_eq!(r.body, b"{\"a\":1}\n");
        assert_eq!(r.chunks().len(), 4);
        let bare = parse(b"GET /");
        assert!(bare.head.end_of_stream);
        assert!(bare.chunks().is_empty());
    }
}
