//! What a wasm module exports, and a copy of it that exports less.
//!
//! Why: Envoy calls a proxy-wasm callback only when the module exports it, and the Rust SDK
//! exports all of them. The bench takes exports away from a built module to measure what each
//! unused callback costs Envoy per request, without a second build. Only the export section
//! changes; the functions stay in the code (unreachable from the host, so harmless).
//!
//! The format (WebAssembly core spec, "Binary format"): the 8-byte preamble, then sections of
//! `id: u8, size: u32 (LEB128), content`; the export section (id 7) is a vector of
//! `name (LEB128 length + UTF-8), kind: u8, index: u32 (LEB128)`.

const PREAMBLE: &[u8] = b"\0asm\x01\0\0\0";
const EXPORT_SECTION: u8 = 7;

/// Reads an unsigned LEB128 value at `*at`, moving `*at` past it.
fn read_leb(bytes: &[u8], at: &mut usize) -> Result<u32, String> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(*at).ok_or("truncated LEB128 number")?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return u32::try_from(value).map_err(|_| "LEB128 number beyond u32".to_owned());
        }
    }
    Err("LEB128 number longer than 5 bytes".to_owned())
}

fn write_leb(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// One export: its name, and the rest of its entry (kind byte and index) as written.
struct Export<'a> {
    name: &'a str,
    rest: &'a [u8],
}

fn parse_exports(content: &[u8]) -> Result<Vec<Export<'_>>, String> {
    let mut at = 0;
    let count = read_leb(content, &mut at)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let len = read_leb(content, &mut at)? as usize;
        let name = content
            .get(at..at.saturating_add(len))
            .ok_or("truncated export name")?;
        let name = std::str::from_utf8(name).map_err(|_| "export name is not UTF-8")?;
        at += len;
        let start = at;
        at += 1; // kind
        read_leb(content, &mut at)?;
        let rest = content.get(start..at).ok_or("truncated export entry")?;
        out.push(Export { name, rest });
    }
    if at != content.len() {
        return Err("bytes after the last export".to_owned());
    }
    Ok(out)
}

/// A section: its id, its content, and the whole section as written.
type Section<'a> = (u8, &'a [u8], &'a [u8]);

/// The module's sections, in order.
fn sections(module: &[u8]) -> Result<Vec<Section<'_>>, String> {
    if !module.starts_with(PREAMBLE) {
        return Err("not a wasm module (version 1)".to_owned());
    }
    let mut at = PREAMBLE.len();
    let mut out = Vec::new();
    while at < module.len() {
        let start = at;
        let id = *module.get(at).ok_or("truncated section")?;
        at += 1;
        let size = read_leb(module, &mut at)? as usize;
        let content = module
            .get(at..at.saturating_add(size))
            .ok_or("truncated section content")?;
        at += size;
        out.push((
            id,
            content,
            module.get(start..at).ok_or("truncated section")?,
        ));
    }
    Ok(out)
}

/// The names the module exports, in order.
pub fn names(module: &[u8]) -> Result<Vec<String>, String> {
    for (id, content, _) in sections(module)? {
        if id == EXPORT_SECTION {
            return Ok(parse_exports(content)?
                .iter()
                .map(|e| e.name.to_owned())
                .collect());
        }
    }
    Ok(Vec::new())
}

/// A copy of `module` without the exports for which `drop` is true.
pub fn without(module: &[u8], drop: impl Fn(&str) -> bool) -> Result<Vec<u8>, String> {
    let mut out = PREAMBLE.to_vec();
    for (id, content, whole) in sections(module)? {
        if id != EXPORT_SECTION {
            out.extend_from_slice(whole);
            continue;
        }
        let kept: Vec<Export<'_>> = parse_exports(content)?
            .into_iter()
            .filter(|e| !drop(e.name))
            .collect();
        let mut body = Vec::new();
        write_leb(
            &mut body,
            u32::try_from(kept.len()).map_err(|e| e.to_string())?,
        );
        for e in kept {
            write_leb(
                &mut body,
                u32::try_from(e.name.len()).map_err(|e| e.to_string())?,
            );
            body.extend_from_slice(e.name.as_bytes());
            body.extend_from_slice(e.rest);
        }
        out.push(EXPORT_SECTION);
        write_leb(
            &mut out,
            u32::try_from(body.len()).map_err(|e| e.to_string())?,
        );
        out.extend_from_slice(&body);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with one type, two functions and three exports (two functions, the memory).
    fn module() -> Vec<u8> {
        let mut m = PREAMBLE.to_vec();
        // type section: one type () -> ()
        m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]);
        // function section: two functions of type 0
        m.extend_from_slice(&[3, 3, 2, 0, 0]);
        // memory section: one memory, min 1
        m.extend_from_slice(&[5, 3, 1, 0, 1]);
        let mut exports = Vec::new();
        write_leb(&mut exports, 3);
        for (name, kind, index) in [
            ("proxy_on_log", 0u8, 0u32),
            ("proxy_on_done", 0, 1),
            ("memory", 2, 0),
        ] {
            write_leb(&mut exports, name.len() as u32);
            exports.extend_from_slice(name.as_bytes());
            exports.push(kind);
            write_leb(&mut exports, index);
        }
        m.push(EXPORT_SECTION);
        write_leb(&mut m, exports.len() as u32);
        m.extend_from_slice(&exports);
        // code section: two empty bodies
        m.extend_from_slice(&[10, 7, 2, 2, 0, 0x0b, 2, 0, 0x0b]);
        m
    }

    #[test]
    fn names_lists_every_export_in_order() {
        assert_eq!(
            names(&module()).unwrap(),
            ["proxy_on_log", "proxy_on_done", "memory"]
        );
    }

    #[test]
    fn without_drops_only_the_named_exports_and_keeps_every_other_section_byte_for_byte() {
        let m = module();
        let slim = without(&m, |n| n == "proxy_on_log").unwrap();
        assert_eq!(names(&slim).unwrap(), ["proxy_on_done", "memory"]);
        let other = |m: &[u8]| -> Vec<Vec<u8>> {
            sections(m)
                .unwrap()
                .into_iter()
                .filter(|(id, _, _)| *id != EXPORT_SECTION)
                .map(|(_, _, whole)| whole.to_vec())
                .collect()
        };
        assert_eq!(other(&m), other(&slim));
        assert_eq!(without(&m, |_| false).unwrap(), m);
    }

    #[test]
    fn truncated_or_foreign_bytes_are_an_error_not_a_panic() {
        let m = module();
        for cut in 0..m.len() {
            let _ = names(&m[..cut]);
            let _ = without(&m[..cut], |_| true);
        }
        assert!(names(b"not wasm").is_err());
    }
}
