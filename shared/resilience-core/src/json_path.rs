//! Where in a JSON text an error is: the path (`routes[1].failure_rate_threshold`) of the value,
//! key or delimiter at a byte offset.
//!
//! # Why not `serde_path_to_error`
//!
//! It tracks the path by wrapping every serde visitor of every configuration type, which doubles
//! the deserialization code of each module (~290 KB of the pack). serde_json already says where a
//! data error happened (line and column); this module walks the text to that position instead, on
//! the error path only, with code that is not generic over the configuration types.
//!
//! # What serde_json's position points at
//!
//! The position is the last byte serde_json consumed when the error was raised:
//!
//! - the end of a primitive value whose type or value was refused (`150`, `"5x"`, `true`);
//! - the closing quote of a key refused as an unknown field (the path then ends with the key);
//! - the closing bracket of a container its visitor refused as a whole (`missing field`,
//!   `invalid length`), or the opening one when the visitor refused it on sight;
//! - the delimiter before a container that was refused without being entered (`invalid type:
//!   map, expected u32`): `:` in an object, `[` or `,` in an array.
//!
//! An error a `Deserialize` impl raises after its deserializer returned (a `try_from` check, a
//! `deserialize_with` function that validates) carries no position of its own; serde_json then
//! places it at the enclosing container, which names the right value only when another member
//! follows it. The pack's types raise their errors inside their visitors, so this does not arise.

/// What a located position refers to, for the caller's choice of path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spot {
    /// The path of the value, key or container at the position (`""` for the whole document).
    pub path: String,
    /// When the position is a `:`, `[` or `,` (a value is about to start): the path of that next
    /// value, and whether it is an object or an array.
    pub next: Option<(String, bool)>,
    /// The innermost array holding the position, if any: its path and element count.
    pub array: Option<(String, usize)>,
    /// When the position is an object's key: that object's path.
    pub key_of: Option<String>,
    /// When the position is a string value (not a key): the string.
    pub string: Option<String>,
}

#[derive(Debug)]
enum Frame {
    /// `key` is the member being read (set once its key string ends).
    Object { key: Option<String> },
    /// `index` is the element being read.
    Array { index: usize },
}

/// Renders a stack of frames as `a.b[1].c`; `with_last` includes the innermost frame's member.
fn render(stack: &[Frame], with_last: bool) -> String {
    let mut out = String::new();
    let count = if with_last {
        stack.len()
    } else {
        stack.len().saturating_sub(1)
    };
    for frame in stack.iter().take(count) {
        match frame {
            Frame::Object { key: Some(key) } => crate::config::push_key(&mut out, key),
            Frame::Object { key: None } => {}
            Frame::Array { index, .. } => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// The byte offset of a 1-based `line` and a `column` counted in bytes from the line's start, as
/// serde_json reports them; the offset is that of the `column`-th byte of the line (the last one
/// consumed). `None` when the position is before the first byte (line 0: no position).
pub(crate) fn offset_of(text: &[u8], line: usize, column: usize) -> Option<usize> {
    if line == 0 || text.is_empty() {
        return None;
    }
    let mut start = 0usize;
    let mut remaining = line.saturating_sub(1);
    for (i, b) in text.iter().enumerate() {
        if remaining == 0 {
            break;
        }
        if *b == b'\n' {
            remaining = remaining.saturating_sub(1);
            start = i.saturating_add(1);
        }
    }
    if remaining > 0 {
        // Fewer lines than that: the end of the text.
        return Some(text.len().saturating_sub(1));
    }
    let end = start.saturating_add(column);
    if end == 0 {
        return None;
    }
    Some(end.saturating_sub(1).min(text.len().saturating_sub(1)))
}

/// Reads a JSON string starting at the opening quote `at`; returns the index of the closing
/// quote (or the last byte, unterminated) and, when `decode`, the string's value. Invalid escapes
/// and lone surrogates become U+FFFD; nothing here panics on any input.
fn read_string(text: &[u8], at: usize, decode: bool) -> (usize, String) {
    let mut bytes: Vec<u8> = Vec::new();
    let mut i = at.saturating_add(1);
    let mut pending_high: Option<u32> = None;
    let push_char = |bytes: &mut Vec<u8>, c: char| {
        let mut buf = [0u8; 4];
        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => {
                if pending_high.take().is_some() {
                    push_char(&mut bytes, char::REPLACEMENT_CHARACTER);
                }
                let value = if decode {
                    String::from_utf8_lossy(&bytes).into_owned()
                } else {
                    String::new()
                };
                return (i, value);
            }
            b'\\' => {
                let escape = text.get(i.saturating_add(1)).copied();
                i = i.saturating_add(2);
                if !decode {
                    continue;
                }
                if escape != Some(b'u') && pending_high.take().is_some() {
                    push_char(&mut bytes, char::REPLACEMENT_CHARACTER);
                }
                match escape {
                    Some(b'n') => bytes.push(b'\n'),
                    Some(b't') => bytes.push(b'\t'),
                    Some(b'r') => bytes.push(b'\r'),
                    Some(b'b') => bytes.push(0x08),
                    Some(b'f') => bytes.push(0x0c),
                    Some(b'u') => {
                        let hex = text
                            .get(i..i.saturating_add(4))
                            .and_then(|h| core::str::from_utf8(h).ok())
                            .and_then(|h| u32::from_str_radix(h, 16).ok());
                        let Some(unit) = hex else {
                            push_char(&mut bytes, char::REPLACEMENT_CHARACTER);
                            continue;
                        };
                        i = i.saturating_add(4);
                        match (pending_high.take(), unit) {
                            (Some(high), 0xDC00..=0xDFFF) => {
                                let c = 0x10000u32
                                    .saturating_add(high.saturating_sub(0xD800) << 10)
                                    .saturating_add(unit.saturating_sub(0xDC00));
                                push_char(
                                    &mut bytes,
                                    char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER),
                                );
                            }
                            (high, 0xD800..=0xDBFF) => {
                                if high.is_some() {
                                    push_char(&mut bytes, char::REPLACEMENT_CHARACTER);
                                }
                                pending_high = Some(unit);
                            }
                            (high, _) => {
                                if high.is_some() {
                                    push_char(&mut bytes, char::REPLACEMENT_CHARACTER);
                                }
                                push_char(
                                    &mut bytes,
                                    char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER),
                                );
                            }
                        }
                    }
                    Some(other) => bytes.push(other),
                    None => {}
                }
            }
            _ => {
                if decode {
                    if pending_high.take().is_some() {
                        push_char(&mut bytes, char::REPLACEMENT_CHARACTER);
                    }
                    bytes.push(b);
                }
                i = i.saturating_add(1);
            }
        }
    }
    let value = if decode {
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        String::new()
    };
    (text.len().saturating_sub(1), value)
}

fn is_delimiter(b: u8) -> bool {
    matches!(b, b'{' | b'}' | b'[' | b']' | b':' | b',' | b'"') || b.is_ascii_whitespace()
}

/// The innermost array's element count, from the `[` at `open` (a shallow scan).
fn array_len(text: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    let mut count = 0usize;
    let mut any = false;
    let mut i = open;
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => {
                if depth == 1 && !any {
                    any = true;
                }
                i = read_string(text, i, false).0;
            }
            b'[' | b'{' => {
                if depth == 1 && !any {
                    any = true;
                }
                depth = depth.saturating_add(1);
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => count = count.saturating_add(1),
            b if depth == 1 && !b.is_ascii_whitespace() => any = true,
            _ => {}
        }
        i = i.saturating_add(1);
    }
    if any {
        count.saturating_add(1)
    } else {
        0
    }
}

/// Locates byte `target` of `text` (see the module documentation for what serde_json's positions
/// point at). Whitespace belongs to the token before it; a target past the end is the last byte.
/// One pass, no recursion; the path is rendered once, at the token found.
pub(crate) fn locate(text: &[u8], target: usize) -> Spot {
    let target = target.min(text.len().saturating_sub(1));
    let mut stack: Vec<Frame> = Vec::new();
    let mut array_open: Vec<usize> = Vec::new();
    let skip_ws = |mut at: usize| {
        while text.get(at).is_some_and(u8::is_ascii_whitespace) {
            at = at.saturating_add(1);
        }
        at
    };
    let mut i = skip_ws(0);
    while let Some(&b) = text.get(i) {
        if i > target {
            break;
        }
        // The token's last byte.
        let end = match b {
            b'"' => read_string(text, i, false).0,
            b'{' | b'}' | b'[' | b']' | b':' | b',' => i,
            _ => {
                let mut end = i;
                while text
                    .get(end.saturating_add(1))
                    .is_some_and(|&c| !is_delimiter(c))
                {
                    end = end.saturating_add(1);
                }
                end
            }
        };
        let next = skip_ws(end.saturating_add(1));
        let here = next > target;
        let mut is_key = false;
        // Keep the stack in step with the token.
        match b {
            b'{' => stack.push(Frame::Object { key: None }),
            b'[' => {
                stack.push(Frame::Array { index: 0 });
                array_open.push(i);
            }
            b'}' | b']' if !here => {
                stack.pop();
                if b == b']' {
                    array_open.pop();
                }
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index = index.saturating_add(1),
                Some(Frame::Object { key }) => *key = None,
                None => {}
            },
            b'"' => {
                if let Some(Frame::Object { key: key @ None }) = stack.last_mut() {
                    *key = Some(read_string(text, i, true).1);
                    is_key = true;
                }
            }
            _ => {}
        }
        if here {
            let in_array = matches!(stack.last(), Some(Frame::Array { .. }));
            let (path, announces) = match b {
                b'{' | b'[' | b'}' | b']' => (render(&stack, false), b == b'['),
                b',' => (render(&stack, false), in_array),
                b':' => (render(&stack, true), true),
                _ => (render(&stack, true), false),
            };
            let next = match text.get(next) {
                Some(&c) if announces && !matches!(c, b'}' | b']' | b',' | b':') => {
                    Some((render(&stack, true), matches!(c, b'{' | b'[')))
                }
                _ => None,
            };
            let array = match (stack.last(), array_open.last()) {
                (Some(Frame::Array { .. }), Some(&open)) => {
                    Some((render(&stack, false), array_len(text, open)))
                }
                _ => None,
            };
            let key_of = is_key.then(|| render(&stack, false));
            let string = (b == b'"' && !is_key).then(|| read_string(text, i, true).1);
            return Spot {
                path,
                next,
                array,
                key_of,
                string,
            };
        }
        i = next;
    }
    Spot {
        path: String::new(),
        next: None,
        array: None,
        key_of: None,
        string: None,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// The path at the first occurrence of `needle`'s last byte.
    fn at(text: &str, needle: &str) -> Spot {
        let start = text.find(needle).unwrap();
        locate(text.as_bytes(), start + needle.len() - 1)
    }

    #[test]
    fn a_primitive_value_is_named_by_its_keys_and_indices() {
        let text = r#"{"routes":[{"a":1},{"failure_rate_threshold":150}]}"#;
        assert_eq!(at(text, "150").path, "routes[1].failure_rate_threshold");
        assert_eq!(at(text, r#""a":1"#).path, "routes[0].a");
    }

    #[test]
    fn a_key_is_named_with_its_object() {
        let text = r#"{"nested":{"a":1,"bogus":2}}"#;
        let key = at(text, r#""bogus""#);
        assert_eq!(key.path, "nested.bogus");
        assert_eq!(key.key_of.as_deref(), Some("nested"));
        assert_eq!(key.string, None);
        let value = at(r#"{"a":"x\ty"}"#, r#""x\ty""#);
        assert_eq!(value.string.as_deref(), Some("x\ty"));
        assert_eq!(at(text, "2").key_of, None);
    }

    #[test]
    fn a_closing_bracket_names_the_container_it_closes() {
        let text = r#"{"nested":{"list":[1,2]},"x":{}}"#;
        assert_eq!(at(text, "2]").path, "nested.list");
        assert_eq!(at(text, "]}").path, "nested");
        assert_eq!(at(text, "{}}").path, "");
        assert_eq!(at(text, "{}").path, "x");
        assert_eq!(locate(text.as_bytes(), text.len() - 1).path, "");
    }

    #[test]
    fn a_delimiter_announces_the_value_after_it() {
        let text = r#"{"a":{"b":1},"list":[{},[]]}"#;
        let colon = at(text, r#""a":"#);
        assert_eq!(colon.path, "a");
        assert_eq!(colon.next, Some(("a".to_owned(), true)));
        let open = at(text, "[");
        assert_eq!(open.path, "list");
        assert_eq!(open.next, Some(("list[0]".to_owned(), true)));
        let comma = locate(text.as_bytes(), text.find("},[").unwrap() + 1);
        assert_eq!(comma.path, "list");
        assert_eq!(comma.next, Some(("list[1]".to_owned(), true)));
        assert_eq!(comma.array, Some(("list".to_owned(), 2)));
        assert_eq!(
            at(r#"{"p":[1,"a",3]}"#, "3").array,
            Some(("p".to_owned(), 3))
        );
        assert_eq!(at(r#"{"p":[ ]}"#, "[").array, Some(("p".to_owned(), 0)));
    }

    #[test]
    fn whitespace_belongs_to_the_token_before_it() {
        let text = "{\n  \"a\" :  7 ,\n  \"b\": [ 1 ,  2 ]\n}";
        assert_eq!(at(text, "7 ").path, "a");
        assert_eq!(at(text, "2 ").path, "b[1]");
        let offset = offset_of(text.as_bytes(), 3, 15).unwrap();
        assert_eq!(text.as_bytes()[offset], b'2');
        assert_eq!(locate(text.as_bytes(), offset).path, "b[1]");
    }

    #[test]
    fn escaped_and_non_ascii_keys_are_decoded() {
        let text = r#"{"k.e\"y":{"\u00e9\ud83d\ude00\n":1,"ключ":2}}"#;
        // Keys that are not plain names are quoted (`config::push_key`), so none reads as two.
        assert_eq!(at(text, ":1").path, r#"["k.e\"y"]["é😀\n"]"#);
        assert_eq!(at(text, ":2").path, r#"["k.e\"y"]["ключ"]"#);
        let lone = r#"{"\ud800x":1,"\udc00":2,"\u12":3}"#;
        assert_eq!(at(lone, "1").path, "[\"\u{fffd}x\"]");
        assert_eq!(at(lone, "2").path, "[\"\u{fffd}\"]");
        assert_eq!(at(lone, "3").path, "[\"\u{fffd}12\"]");
    }

    #[test]
    fn an_empty_key_is_named_as_an_empty_quoted_key() {
        assert_eq!(at(r#"{"map":{"":{}}}"#, "{}").path, r#"map[""]"#);
    }

    #[test]
    fn positions_at_and_past_the_end_of_the_input_name_the_document() {
        let text = br#"{"a":[1]}"#;
        assert_eq!(locate(text, 9).path, "");
        assert_eq!(locate(text, usize::MAX).path, "");
        assert_eq!(locate(b"", 0).path, "");
        assert_eq!(offset_of(text, 0, 5), None);
        assert_eq!(offset_of(text, 1, 0), None);
        assert_eq!(offset_of(text, 1, 9), Some(8));
        assert_eq!(offset_of(text, 1, 999), Some(8));
        assert_eq!(offset_of(text, 99, 1), Some(8));
        assert_eq!(offset_of(b"", 1, 1), None);
    }

    #[test]
    fn deep_nesting_is_walked_without_recursion() {
        let depth = 100_000;
        let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let spot = locate(text.as_bytes(), depth);
        assert_eq!(spot.path, "[0]".repeat(depth));
        let objects = format!("{}1{}", r#"{"k":"#.repeat(depth), "}".repeat(depth));
        let spot = locate(objects.as_bytes(), depth * 5);
        assert_eq!(spot.path.len(), depth * 2 - 1);
    }

    #[test]
    fn malformed_and_truncated_text_never_panics() {
        for text in [
            "",
            "{",
            "}",
            "]]]",
            "{\"a",
            "{\"a\\",
            "{\"a\\u",
            "{\"a\":",
            "[,,,]",
            "{\"a\"}",
            "\"",
            "[1,",
            "{\"\\u",
            "nul",
            "{{{{",
            ":::",
            "{\"a\":1,}",
            "\u{0}\u{ff}",
        ] {
            for target in 0..text.len() + 2 {
                let _ = locate(text.as_bytes(), target);
            }
        }
    }
}
