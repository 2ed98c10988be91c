//! What a built module exports, and the same module exporting less.
//!
//! Why: Envoy calls a proxy-wasm callback only when the module exports it, and the Rust SDK
//! exports all of them (see `resilience_host::callbacks`). Two uses:
//! - [`trimmed`]: every build of the pack's modules takes out the exports the module itself names
//!   in its `resilience.unused_callbacks` section, then the code only they reached
//!   (`crate::wasm::finish`).
//! - [`without`]: the bench takes exports away from a module to measure what each callback
//!   costs Envoy per request.
//!
//! How: walrus (the module rewriter wasm-bindgen uses) parses the module, deletes the exports,
//! garbage-collects what nothing reaches any more, and writes it again (with minimal LEB128
//! encodings, which alone saves a few percent over the linker's padded ones).

/// The custom section a module names its unused callbacks in (`resilience_host::callbacks`).
pub const SECTION: &str = "resilience.unused_callbacks";

fn parse(module: &[u8]) -> Result<walrus::Module, String> {
    walrus::Module::from_buffer(module).map_err(|e| format!("not a wasm module: {e}"))
}

/// The names the module exports, in order.
pub fn names(module: &[u8]) -> Result<Vec<String>, String> {
    Ok(parse(module)?
        .exports
        .iter()
        .map(|e| e.name.clone())
        .collect())
}

/// Deletes the exports named in `drop` (each must exist) and what only they reached.
fn delete(m: &mut walrus::Module, drop: &[&str]) -> Result<(), String> {
    for name in drop {
        let id = m
            .exports
            .iter()
            .find(|e| e.name == *name)
            .map(walrus::Export::id)
            .ok_or(format!("the module does not export {name}"))?;
        m.exports.delete(id);
    }
    walrus::passes::gc::run(m);
    Ok(())
}

/// `module` without the exports for which `drop` is true, and without the code only they
/// reached.
pub fn without(module: &[u8], drop: impl Fn(&str) -> bool) -> Result<Vec<u8>, String> {
    let mut m = parse(module)?;
    let names: Vec<String> = m
        .exports
        .iter()
        .map(|e| e.name.clone())
        .filter(|n| drop(n))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    delete(&mut m, &names)?;
    Ok(m.emit_wasm())
}

/// The module as it ships: the exports its [`SECTION`] names taken out, with the section and
/// the code only they reached. Returns `None` for a module without the section (already
/// trimmed, or one that names nothing). A named callback the module does not export is an
/// error: the list is wrong.
pub fn trimmed(module: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut m = parse(module)?;
    let Some(section) = m.customs.remove_raw(SECTION) else {
        return Ok(None);
    };
    let text = String::from_utf8(section.data).map_err(|_| format!("{SECTION} is not UTF-8"))?;
    let drop: Vec<&str> = text.split(',').filter(|n| !n.is_empty()).collect();
    delete(&mut m, &drop)?;
    Ok(Some(m.emit_wasm()))
}

/// Whether the module has the [`SECTION`]: a byte search (the name is in the section's
/// header), cheap enough to run on every build.
pub fn has_section(module: &[u8]) -> bool {
    module
        .windows(SECTION.len())
        .any(|w| w == SECTION.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module of two functions, both exported, the memory, and a section naming one of them.
    fn module(unused: &str) -> Vec<u8> {
        let mut m = walrus::Module::default();
        for name in ["proxy_on_log", "proxy_on_done"] {
            let mut f = walrus::FunctionBuilder::new(&mut m.types, &[], &[]);
            f.func_body().i32_const(1).drop();
            let id = f.finish(vec![], &mut m.funcs);
            m.exports.add(name, id);
        }
        let memory = m.memories.add_local(false, false, 1, None, None);
        m.exports.add("memory", memory);
        m.customs.add(walrus::RawCustomSection {
            name: SECTION.to_owned(),
            data: unused.as_bytes().to_vec(),
        });
        m.emit_wasm()
    }

    #[test]
    fn trimming_takes_out_the_exports_the_section_names_and_the_section() {
        let slim = trimmed(&module("proxy_on_log")).unwrap().unwrap();
        assert_eq!(names(&slim).unwrap(), ["proxy_on_done", "memory"]);
        let m = parse(&slim).unwrap();
        assert_eq!(
            m.funcs.iter().count(),
            1,
            "the function only the export reached is gone"
        );
        assert!(
            trimmed(&slim).unwrap().is_none(),
            "a trimmed module is left alone"
        );
    }

    #[test]
    fn a_section_naming_a_callback_the_module_does_not_export_fails() {
        let e = trimmed(&module("proxy_on_log,proxy_on_tikc")).unwrap_err();
        assert!(e.contains("proxy_on_tikc"), "{e}");
    }

    #[test]
    fn without_drops_only_what_it_is_asked_to() {
        let slim = without(&module(""), |n| n == "proxy_on_done").unwrap();
        assert_eq!(names(&slim).unwrap(), ["proxy_on_log", "memory"]);
        assert!(names(b"not wasm").is_err());
    }
}
