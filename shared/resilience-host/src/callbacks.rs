//! Which proxy-wasm callbacks a module leaves out of its exports.
//!
//! Why: Envoy calls every callback a module exports and skips one it does not (the host then
//! acts as if the module had answered "continue"), and the Rust SDK exports all of them. So a
//! breaker, which has no use for bodies, is still entered for every body chunk of every request,
//! and every module carries the SDK's dispatch code for network filters, gRPC callouts and
//! queues, which no HTTP filter here uses.
//!
//! How: a module names what it does not need with [`unused_callbacks!`]; the names go into a
//! custom section of the module ([`SECTION`]), and `cargo pack build` (and the harness's build)
//! takes those exports out, drops the section and the code only they reached
//! (`harness::wasm::finish`). A name the module does not export fails the build.
//!
//! What may be named: a callback whose default the host's "not exported" equals. Body and
//! trailer callbacks whose filter answers "continue" there; never one a filter implements, or
//! one that must keep a paused stream paused (failure padding's response body and trailers,
//! the validator's request body and trailers).

/// The custom section holding a module's unused callback names, comma-separated.
pub const SECTION: &str = "resilience.unused_callbacks";

/// The callbacks no filter of the pack uses, left out of every module: network-filter
/// connections and data, gRPC callouts (the pack's callouts are HTTP), queues, foreign calls.
pub const NEVER_USED: &str = "proxy_on_new_connection,proxy_on_downstream_data,\
proxy_on_downstream_connection_close,proxy_on_upstream_data,proxy_on_upstream_connection_close,\
proxy_on_grpc_receive_initial_metadata,proxy_on_grpc_receive_trailing_metadata,\
proxy_on_grpc_receive,proxy_on_grpc_close,proxy_on_queue_ready,proxy_on_foreign_function";

/// `text`'s bytes as an array, for a static in a custom section (a `&str` static would hold a
/// pointer there, not the text). Evaluated at compile time; `N` must be `text.len()`.
#[allow(clippy::indexing_slicing)] // const evaluation: an index out of range fails the build
pub const fn bytes<const N: usize>(text: &str) -> [u8; N] {
    let b = text.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N && i < b.len() {
        out[i] = b[i];
        i += 1;
    }
    out
}

/// Declares the callbacks this module does not need, beyond [`NEVER_USED`]: string literals of
/// export names, e.g. `unused_callbacks!("proxy_on_request_body")`. Once per module crate.
#[macro_export]
macro_rules! unused_callbacks {
    ($($name:literal),* $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            const NAMES: &str = concat!(
                "proxy_on_new_connection,proxy_on_downstream_data,",
                "proxy_on_downstream_connection_close,proxy_on_upstream_data,",
                "proxy_on_upstream_connection_close,proxy_on_grpc_receive_initial_metadata,",
                "proxy_on_grpc_receive_trailing_metadata,proxy_on_grpc_receive,",
                "proxy_on_grpc_close,proxy_on_queue_ready,proxy_on_foreign_function"
                $(, ",", $name)*
            );
            #[used]
            #[link_section = "resilience.unused_callbacks"]
            static UNUSED: [u8; NAMES.len()] = $crate::callbacks::bytes(NAMES);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_macros_list_starts_with_the_callbacks_no_filter_uses() {
        // The macro spells NEVER_USED out (concat! takes literals only); this keeps them equal.
        const NAMES: &str = concat!(
            "proxy_on_new_connection,proxy_on_downstream_data,",
            "proxy_on_downstream_connection_close,proxy_on_upstream_data,",
            "proxy_on_upstream_connection_close,proxy_on_grpc_receive_initial_metadata,",
            "proxy_on_grpc_receive_trailing_metadata,proxy_on_grpc_receive,",
            "proxy_on_grpc_close,proxy_on_queue_ready,proxy_on_foreign_function"
        );
        assert_eq!(NAMES, NEVER_USED);
        let macro_src = include_str!("callbacks.rs");
        assert!(macro_src.contains(&format!("link_section = \"{SECTION}\"")));
    }

    #[test]
    fn bytes_copies_the_text_into_an_array_of_its_length() {
        const A: [u8; 3] = bytes("abc");
        assert_eq!(&A, b"abc");
    }
}
