//! OpenAPI documents and the requests matched against them ([`Api::compile`], [`Api::lookup`],
//! [`Api::check_head`], [`Api::check_body`]): path templates, precedence, parameters of every
//! location and style, request bodies.
//!
//! The input is an OpenAPI document (JSON), a NUL byte, then a request in the text form of
//! [`crate::request`]. A document that does not compile (or no NUL) means the built-in one.
//! Properties, for any input:
//! - no panic, in compiling or matching;
//! - a refused document names where (its pointer is empty or starts with `/`) and why;
//! - every path the document declares is reachable: its template with each expression filled
//!   in, under the base path, finds that path (an operation, or a 405 naming the methods), never
//!   a 404;
//! - a request rejected at the head or the body names a rule (see
//!   [`crate::validator::check_violation`]).

use request_validator::rules::openapi::{Api, Lookup};
use serde_json::Value;

use crate::request;
use crate::validator::check_violation;

/// The document used when the input's does not compile: every parameter location and style.
pub const BUILT_IN: &str = r##"{
  "openapi": "3.0.3",
  "info": {"title": "t", "version": "1"},
  "servers": [{"url": "/api"}],
  "paths": {
    "/items": {
      "get": {"parameters": [
        {"name": "n", "in": "query", "schema": {"type": "integer", "maximum": 5, "nullable": true}},
        {"name": "f", "in": "query", "schema": {"type": "number"}},
        {"name": "b", "in": "query", "schema": {"type": "boolean"}},
        {"name": "s", "in": "query", "style": "spaceDelimited", "explode": false,
         "schema": {"type": "array", "items": {"type": "integer"}}},
        {"name": "o", "in": "query", "style": "deepObject", "schema": {"type": "object"}},
        {"$ref": "#/components/parameters/Trace"}
      ]},
      "post": {"requestBody": {"$ref": "#/components/requestBodies/Item"}}
    },
    "/items/{id}": {
      "get": {"parameters": [{"name": "id", "in": "path", "required": true,
                              "schema": {"type": "string", "pattern": "^[0-9a-f]{4}$"}}]},
      "patch": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "requestBody": {"content": {"application/merge-patch+json": {"schema": {"type": "object"}}}}}
    },
    "/items/special": {"get": {}},
    "/files/{name}.{ext}": {"get": {"parameters": [
      {"name": "name", "in": "path", "required": true},
      {"name": "ext", "in": "path", "required": true, "schema": {"enum": ["txt", "md"]}}
    ]}}
  },
  "components": {
    "parameters": {"Trace": {"name": "x-trace", "in": "header", "required": true,
                             "schema": {"type": "array", "items": {"type": "integer"}}}},
    "requestBodies": {"Item": {"required": true, "content": {
      "application/json": {"schema": {"type": "object", "required": ["id"],
                                      "properties": {"id": {"type": "integer"}}}},
      "application/*": {}
    }}}
  }
}"##;

thread_local! {
    static DEFAULT: Api = Api::compile(&serde_json::from_str(BUILT_IN).unwrap(), false).unwrap();
}

/// Every declared template, filled in, finds its path.
fn declared_paths_are_reachable(api: &Api) {
    for template in api.templates() {
        let mut path = String::from(api.base_path());
        let mut inside = false;
        for c in template.chars() {
            match (c, inside) {
                ('{', false) => inside = true,
                ('}', true) => {
                    inside = false;
                    path.push('7');
                }
                (_, true) => {}
                (c, false) => path.push(c),
            }
        }
        if let Lookup::NoPath = api.lookup(b"GET", path.as_bytes()) {
            panic!("the declared path {template:?} is not found as {path:?}");
        }
    }
}

fn check_request(api: &Api, data: &[u8]) {
    let req = request::parse(data);
    let head = &req.head;
    let Lookup::Found(found) = api.lookup(head.method(), head.path_only()) else {
        return;
    };
    match api.check_head(&found, head) {
        Err(v) => check_violation(&v),
        Ok(Some(schema)) => {
            if let Err(v) = api.check_body(schema, &req.body) {
                check_violation(&v);
            }
        }
        Ok(None) => {}
    }
}

/// See the module docs.
pub fn openapi(data: &[u8]) {
    let (doc, req) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let compiled = serde_json::from_slice::<Value>(doc)
        .ok()
        .map(|v| Api::compile(&v, doc.first() == Some(&b' ')));
    match compiled {
        Some(Ok(api)) => {
            declared_paths_are_reachable(&api);
            check_request(&api, req);
        }
        Some(Err(e)) => {
            assert!(!e.message.is_empty(), "{e:?}");
            assert!(e.pointer.is_empty() || e.pointer.starts_with('/'), "{e:?}");
            DEFAULT.with(|api| check_request(api, req));
        }
        None => DEFAULT.with(|api| check_request(api, req)),
    }
}
