//! Per-route overrides: one filter configuration, different settings per route.
//!
//! # Why
//!
//! One filter instance usually sits in front of a whole virtual host: `/api/search` can afford a
//! 5 s timeout and a lenient breaker, `/api/checkout` cannot. Rather than one filter per route
//! (and one copy of shared state per filter), a configuration carries defaults at the top level
//! and a `routes` list of overrides:
//!
//! ```json
//! {
//!   "failure_rate_threshold": 50,
//!   "routes": [
//!     { "name": "checkout", "match": { "prefix": "/api/checkout" }, "failure_rate_threshold": 20 },
//!     { "match": { "route_name": "search", "method": "GET" }, "open_for": "5s" }
//!   ]
//! }
//! ```
//!
//! # Rules
//!
//! - **First match wins**, in list order; no match means the top-level defaults.
//! - **Field by field**: a route's settings are the defaults with the route's keys laid over
//!   them (a shallow merge of the JSON objects, then one parse), so a route names only what it
//!   changes and every route is validated as a whole with paths like
//!   `routes[1].failure_rate_threshold`.
//! - **All criteria must hold** within one `match`; a `match` with no criterion is rejected
//!   rather than silently matching everything.
//! - Path criteria see the path without its query string; header names are case-insensitive.
//!
//! Matching reads the request through [`RequestView`], which takes `&mut self` so the host can
//! fetch each header or property lazily, once, and cache it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::config::{parse_json_value, parse_value, ConfigError};

/// Most routes one configuration may list: matching is linear, and a config generator gone
/// wrong should fail loudly rather than slow every request down.
pub const MAX_ROUTES: usize = 256;

/// The parts of a request that routes match on. Implementations may fetch lazily and cache.
pub trait RequestView {
    /// Envoy's route name (`route_name` property), if the route has one.
    fn route_name(&mut self) -> Option<&str>;
    /// The `:path` pseudo-header, query string included.
    fn path(&mut self) -> Option<&str>;
    /// The `:method` pseudo-header.
    fn method(&mut self) -> Option<&str>;
    /// A request header by lowercase name.
    fn header(&mut self, name: &str) -> Option<&str>;
}

/// A condition on one request header.
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// The header's name, in any case (header names are compared ignoring case).
    #[serde(deserialize_with = "lowercase")]
    #[cfg_attr(feature = "schema", schemars(with = "String", length(min = 1)))]
    pub name: String,
    /// When set, the header must be present with exactly this value.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub value: Option<String>,
    /// `true` (the default): the header must be present; `false`: it must be absent.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub present: Option<bool>,
}

fn lowercase<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    String::deserialize(deserializer).map(|s| s.to_ascii_lowercase())
}

impl HeaderMatch {
    fn matches(&self, req: &mut dyn RequestView) -> bool {
        let found = req.header(&self.name);
        match (&self.value, self.present.unwrap_or(true)) {
            (Some(expected), _) => found == Some(expected.as_str()),
            (None, true) => found.is_some(),
            (None, false) => found.is_none(),
        }
    }

    /// The checks serde cannot express; error paths are relative to this header match.
    fn check(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.value.is_some() && self.present == Some(false) {
            return Err(ConfigError::new(
                "",
                r#"cannot require a "value" and "present": false at once"#,
            ));
        }
        Ok(())
    }
}

/// Which requests a route applies to. Every given criterion must hold, and at least one must be
/// given: an empty match is refused rather than silently matching everything.
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", schemars(extend("minProperties" = 1)))]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Envoy's route name equals this.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub route_name: Option<String>,
    /// The path (query string removed) starts with this.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub prefix: Option<String>,
    /// The path (query string removed) equals this.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub exact: Option<String>,
    /// The method equals this, ignoring ASCII case.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub method: Option<String>,
    /// Every header condition holds.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Vec::is_empty"))]
    pub headers: Vec<HeaderMatch>,
}

const NO_CRITERION: &str = "must name at least one of route_name, prefix, exact, method, headers";

impl RouteMatch {
    /// Whether `req` satisfies every criterion. Cheap header reads go first and the route name
    /// (a property read) last, so a mismatch is found with the fewest host calls.
    pub fn matches(&self, req: &mut dyn RequestView) -> bool {
        if let Some(method) = &self.method {
            if !req.method().is_some_and(|m| m.eq_ignore_ascii_case(method)) {
                return false;
            }
        }
        if self.prefix.is_some() || self.exact.is_some() {
            let Some(full) = req.path() else {
                return false;
            };
            let path = full.split_once('?').map_or(full, |(p, _)| p);
            if let Some(prefix) = &self.prefix {
                if !path.starts_with(prefix.as_str()) {
                    return false;
                }
            }
            if let Some(exact) = &self.exact {
                if path != exact {
                    return false;
                }
            }
        }
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        if let Some(name) = &self.route_name {
            if req.route_name() != Some(name.as_str()) {
                return false;
            }
        }
        true
    }

    /// Whether any criterion is given.
    pub fn has_criterion(&self) -> bool {
        self.route_name.is_some()
            || self.prefix.is_some()
            || self.exact.is_some()
            || self.method.is_some()
            || !self.headers.is_empty()
    }

    /// The checks serde cannot express; errors are relative to the match object.
    fn check(&self) -> Result<(), ConfigError> {
        if !self.has_criterion() {
            return Err(ConfigError::new("", NO_CRITERION));
        }
        for (i, header) in self.headers.iter().enumerate() {
            header
                .check()
                .map_err(|e| e.within(&format!("headers[{i}]")))?;
        }
        Ok(())
    }
}

/// One route: its name, what it matches, and its settings (defaults merged with its overrides).
#[derive(Debug, Clone)]
pub struct Route<S> {
    /// The route object's `"name"`, else its position, `routes[i]`. Used in stats and logs.
    pub name: String,
    pub matcher: RouteMatch,
    pub settings: S,
}

/// The defaults and the routes, in order.
#[derive(Debug, Clone)]
pub struct RouteTable<S> {
    pub defaults: S,
    pub routes: Vec<Route<S>>,
}

/// The settings chosen for one request.
#[derive(Debug)]
pub struct Selected<'a, S> {
    /// Position in [`RouteTable::routes`], `None` for the defaults.
    pub index: Option<usize>,
    /// The route's name, `"default"` for the defaults.
    pub name: &'a str,
    pub settings: &'a S,
}

impl<S> Clone for Selected<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Selected<'_, S> {}

impl<S> Selected<'_, S> {
    /// The key a keyed filter (breaker, retry budget, padding) keeps state under for this
    /// request: the matched `routes` entry's name. For a request no entry matched, Envoy's route
    /// name, unless it is one of `generic`: a name a generator gives many routes (Istio calls
    /// every inbound route, and every destination without a VirtualService, `default`), which
    /// would put unrelated destinations under one key. Then the cluster's name, which names the
    /// destination (`outbound|8080||reviews.prod.svc.cluster.local`); `default` when there is
    /// neither. `cluster` is called only when needed (a host call).
    pub fn key(
        &self,
        req: &mut dyn RequestView,
        generic: &[String],
        cluster: impl FnOnce() -> Option<String>,
    ) -> String {
        if self.index.is_some() {
            return self.name.to_owned();
        }
        match req.route_name() {
            Some(name) if !generic.iter().any(|g| g == name) => name.to_owned(),
            _ => cluster().unwrap_or_else(|| "default".to_owned()),
        }
    }
}

impl<S> RouteTable<S> {
    /// Convert every entry's settings (the raw, parsed form into the checked one), with the JSON
    /// path prefix of each: `""` for the defaults, `routes[i]` for the routes. The first error
    /// stops the conversion.
    pub fn try_map<T>(
        self,
        mut f: impl FnMut(S, &str) -> Result<T, ConfigError>,
    ) -> Result<RouteTable<T>, ConfigError> {
        let defaults = f(self.defaults, "")?;
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.into_iter().enumerate() {
            routes.push(Route {
                name: r.name,
                matcher: r.matcher,
                settings: f(r.settings, &format!("routes[{i}]"))?,
            });
        }
        Ok(RouteTable { defaults, routes })
    }

    /// A table with no routes: every request gets the defaults.
    pub fn new(defaults: S) -> Self {
        Self {
            defaults,
            routes: Vec::new(),
        }
    }

    /// The first route whose match holds, else the defaults.
    pub fn select(&self, req: &mut dyn RequestView) -> Selected<'_, S> {
        for (index, route) in self.routes.iter().enumerate() {
            if route.matcher.matches(req) {
                return Selected {
                    index: Some(index),
                    name: &route.name,
                    settings: &route.settings,
                };
            }
        }
        Selected {
            index: None,
            name: "default",
            settings: &self.defaults,
        }
    }

    /// Whether any route matches on the route name, so the host can skip reading that property
    /// when none does.
    pub fn needs_route_name(&self) -> bool {
        self.routes.iter().any(|r| r.matcher.route_name.is_some())
    }
}

/// Parses a whole filter configuration into global settings `G` and a [`RouteTable`] of `S`.
///
/// The top level must be an object. Its keys listed in `global_fields` form `G` (settings that
/// cannot vary per route, such as a shared-data key); `routes` is the optional list of route
/// objects; every other key is a default for `S`. Each route object holds a required `match`, an
/// optional `name`, and any `S` fields it overrides. `S` and `G` should use
/// `#[serde(deny_unknown_fields)]` so typos are reported, with the route's path.
pub fn parse_filter_config<G: DeserializeOwned, S: DeserializeOwned>(
    json: &[u8],
    global_fields: &[&str],
) -> Result<(G, RouteTable<S>), ConfigError> {
    let Value::Object(top) = parse_json_value(json)? else {
        return Err(ConfigError::new(
            "",
            "the filter configuration must be a JSON object",
        ));
    };

    let mut global = Map::new();
    let mut defaults = Map::new();
    let mut routes_value = None;
    for (key, value) in top {
        if key == "routes" {
            routes_value = Some(value);
        } else if global_fields.contains(&key.as_str()) {
            global.insert(key, value);
        } else {
            defaults.insert(key, value);
        }
    }

    let routes_json = match routes_value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ConfigError::new(
                "routes",
                "must be an array of route objects",
            ))
        }
    };
    if routes_json.len() > MAX_ROUTES {
        return Err(ConfigError::new(
            "routes",
            format!("at most {MAX_ROUTES} routes, got {}", routes_json.len()),
        ));
    }

    let g: G = parse_value(Value::Object(global), "")?;
    // The top level holds both kinds of field, but serde only knows the per-route ones it was
    // parsing: name the filter-wide ones too, or a typo's hint lists half the choices.
    let s: S = parse_value(Value::Object(defaults.clone()), "").map_err(|mut e| {
        if e.rule.starts_with("unknown field") {
            let mut also: Vec<&str> = global_fields.to_vec();
            also.push("routes");
            e.rule = format!("{}; or a filter-wide field: {}", e.rule, also.join(", "));
        }
        e
    })?;

    let mut routes = Vec::with_capacity(routes_json.len());
    for (i, item) in routes_json.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        let Value::Object(mut object) = item else {
            return Err(ConfigError::new(path, "must be an object with a \"match\""));
        };
        let matcher = match object.remove("match") {
            Some(m @ Value::Object(_)) => {
                let matcher: RouteMatch = parse_value(m, &format!("{path}.match"))?;
                matcher
                    .check()
                    .map_err(|e| e.within(&format!("{path}.match")))?;
                matcher
            }
            Some(_) => {
                return Err(ConfigError::new(
                    format!("{path}.match"),
                    "must be an object",
                ))
            }
            None => {
                return Err(ConfigError::new(
                    path,
                    "missing field \"match\": every route needs one",
                ))
            }
        };
        let name = match object.remove("name") {
            None | Some(Value::Null) => path.clone(),
            Some(Value::String(name)) if !name.is_empty() => name,
            Some(_) => {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    "must be a non-empty string",
                ))
            }
        };
        if routes.iter().any(|earlier: &Route<S>| earlier.name == name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!(
                    "{name:?} is already the name of an earlier route; route names key per-route state and stats and must be unique"
                ),
            ));
        }
        let mut merged = defaults.clone();
        for (key, value) in object {
            if global_fields.contains(&key.as_str()) {
                return Err(ConfigError::new(
                    format!("{path}.{key}"),
                    "is a filter-wide setting and cannot be overridden per route",
                ));
            }
            merged.insert(key, value);
        }
        let settings: S = parse_value(Value::Object(merged), &path)?;
        routes.push(Route {
            name,
            matcher,
            settings,
        });
    }

    Ok((
        g,
        RouteTable {
            defaults: s,
            routes,
        },
    ))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::{DurationMs, Percent};

    /// A request held in memory, counting how often each part was read.
    #[derive(Default)]
    struct FakeRequest {
        route_name: Option<String>,
        path: Option<String>,
        method: Option<String>,
        headers: Vec<(String, String)>,
        route_name_reads: usize,
    }

    impl FakeRequest {
        fn get(path: &str) -> Self {
            Self {
                path: Some(path.to_owned()),
                method: Some("GET".to_owned()),
                ..Self::default()
            }
        }

        fn with_header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.to_owned(), value.to_owned()));
            self
        }

        fn with_route_name(mut self, name: &str) -> Self {
            self.route_name = Some(name.to_owned());
            self
        }
    }

    impl RequestView for FakeRequest {
        fn route_name(&mut self) -> Option<&str> {
            self.route_name_reads += 1;
            self.route_name.as_deref()
        }
        fn path(&mut self) -> Option<&str> {
            self.path.as_deref()
        }
        fn method(&mut self) -> Option<&str> {
            self.method.as_deref()
        }
        fn header(&mut self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    #[test]
    fn a_key_is_the_entry_name_then_a_specific_route_name_then_the_cluster_name() {
        let table: RouteTable<u8> = RouteTable {
            defaults: 0,
            routes: vec![Route {
                name: "orders".to_owned(),
                matcher: RouteMatch {
                    prefix: Some("/orders".to_owned()),
                    ..RouteMatch::default()
                },
                settings: 1,
            }],
        };
        let generic = vec!["default".to_owned()];
        let cluster = || Some("outbound|80||reviews".to_owned());
        let key = |req: &mut FakeRequest| table.select(req).key(req, &generic, cluster);
        let mut r = FakeRequest::get("/orders/7").with_route_name("default");
        assert_eq!(key(&mut r), "orders");
        let mut r = FakeRequest::get("/x").with_route_name("catalog");
        assert_eq!(key(&mut r), "catalog");
        // Istio's generic name says nothing about the destination: the cluster does.
        let mut r = FakeRequest::get("/x").with_route_name("default");
        assert_eq!(key(&mut r), "outbound|80||reviews");
        let mut r = FakeRequest::get("/x");
        assert_eq!(key(&mut r), "outbound|80||reviews");
        let mut r = FakeRequest::get("/x");
        assert_eq!(
            table.select(&mut r).key(&mut r, &generic, || None),
            "default"
        );
        // With no generic names, `default` is a route name like any other.
        let mut r = FakeRequest::get("/x").with_route_name("default");
        assert_eq!(table.select(&mut r).key(&mut r, &[], cluster), "default");
    }

    #[derive(Deserialize, Debug, Clone, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[serde(default = "fifty")]
        failure_rate_threshold: Percent,
        #[serde(default)]
        open_for: DurationMs,
    }

    fn fifty() -> Percent {
        Percent::clamped(50.0)
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Global {
        #[serde(default)]
        shared_key: String,
    }

    fn parse(json: &str) -> Result<(Global, RouteTable<Settings>), ConfigError> {
        parse_filter_config(json.as_bytes(), &["shared_key"])
    }

    fn rule_of(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    const EXAMPLE: &str = r#"{
        "shared_key": "cb",
        "failure_rate_threshold": 40,
        "open_for": "30s",
        "routes": [
            { "name": "checkout", "match": { "prefix": "/api/checkout" }, "failure_rate_threshold": 20 },
            { "match": { "method": "get", "exact": "/api/search" }, "open_for": "5s" },
            { "match": { "headers": [{ "name": "X-Canary", "value": "1" }] }, "open_for": "1s" },
            { "match": { "route_name": "legacy" }, "failure_rate_threshold": 90 }
        ]
    }"#;

    #[test]
    fn globals_defaults_and_routes_are_split_and_merged_field_by_field() {
        let (global, table) = parse(EXAMPLE).unwrap();
        assert_eq!(global.shared_key, "cb");
        assert_eq!(table.defaults.failure_rate_threshold.value(), 40.0);
        assert_eq!(table.defaults.open_for, DurationMs(30_000));
        assert_eq!(table.routes.len(), 4);

        let checkout = &table.routes[0];
        assert_eq!(checkout.name, "checkout");
        assert_eq!(checkout.settings.failure_rate_threshold.value(), 20.0);
        assert_eq!(checkout.settings.open_for, DurationMs(30_000), "inherited");

        let search = &table.routes[1];
        assert_eq!(search.name, "routes[1]");
        assert_eq!(
            search.settings.failure_rate_threshold.value(),
            40.0,
            "inherited"
        );
        assert_eq!(search.settings.open_for, DurationMs(5_000));
    }

    #[test]
    fn the_first_matching_route_wins_and_no_match_means_defaults() {
        let (_, table) = parse(EXAMPLE).unwrap();
        let chosen = table.select(&mut FakeRequest::get("/api/checkout/pay?x=1"));
        assert_eq!((chosen.index, chosen.name), (Some(0), "checkout"));

        // Matches both the canary header route and nothing earlier.
        let chosen = table.select(&mut FakeRequest::get("/other").with_header("x-canary", "1"));
        assert_eq!((chosen.index, chosen.name), (Some(2), "routes[2]"));

        // Checkout is listed first, so it wins over the canary route.
        let mut both = FakeRequest::get("/api/checkout").with_header("x-canary", "1");
        assert_eq!(table.select(&mut both).index, Some(0));

        let chosen = table.select(&mut FakeRequest::get("/nothing"));
        assert_eq!((chosen.index, chosen.name), (None, "default"));
        assert_eq!(chosen.settings, &table.defaults);
    }

    #[test]
    fn path_criteria_ignore_the_query_string() {
        let (_, table) = parse(EXAMPLE).unwrap();
        assert_eq!(
            table
                .select(&mut FakeRequest::get("/api/search?q=shoes"))
                .index,
            Some(1)
        );
        assert_eq!(
            table.select(&mut FakeRequest::get("/api/search/x")).index,
            None
        );
    }

    #[test]
    fn all_criteria_of_a_match_must_hold() {
        let (_, table) = parse(EXAMPLE).unwrap();
        let mut post = FakeRequest::get("/api/search");
        post.method = Some("POST".to_owned());
        assert_eq!(table.select(&mut post).index, None);
    }

    #[test]
    fn methods_compare_ignoring_case() {
        let (_, table) = parse(EXAMPLE).unwrap();
        assert_eq!(
            table.select(&mut FakeRequest::get("/api/search")).index,
            Some(1)
        );
    }

    #[test]
    fn header_names_are_stored_lowercase_and_values_compare_exactly() {
        let (_, table) = parse(EXAMPLE).unwrap();
        assert_eq!(table.routes[2].matcher.headers[0].name, "x-canary");
        let mut wrong_value = FakeRequest::get("/").with_header("x-canary", "2");
        assert_eq!(table.select(&mut wrong_value).index, None);
    }

    #[test]
    fn header_presence_and_absence_can_be_required() {
        let present = RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-debug".to_owned(),
                ..HeaderMatch::default()
            }],
            ..RouteMatch::default()
        };
        let absent = RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-debug".to_owned(),
                present: Some(false),
                ..HeaderMatch::default()
            }],
            ..RouteMatch::default()
        };
        let mut with = FakeRequest::get("/").with_header("x-debug", "");
        let mut without = FakeRequest::get("/");
        assert!(present.matches(&mut with) && !present.matches(&mut without));
        assert!(!absent.matches(&mut with) && absent.matches(&mut without));
    }

    #[test]
    fn a_missing_request_part_never_matches_a_criterion_on_it() {
        let m = RouteMatch {
            prefix: Some("/".to_owned()),
            ..RouteMatch::default()
        };
        assert!(!m.matches(&mut FakeRequest::default()));
        let m = RouteMatch {
            route_name: Some("r".to_owned()),
            ..RouteMatch::default()
        };
        assert!(!m.matches(&mut FakeRequest::get("/")));
        assert!(m.matches(&mut FakeRequest::get("/").with_route_name("r")));
    }

    #[test]
    fn the_route_name_is_read_only_when_cheaper_criteria_pass() {
        let m = RouteMatch {
            route_name: Some("r".to_owned()),
            method: Some("POST".to_owned()),
            ..RouteMatch::default()
        };
        let mut req = FakeRequest::get("/").with_route_name("r");
        assert!(!m.matches(&mut req));
        assert_eq!(req.route_name_reads, 0);
    }

    #[test]
    fn needs_route_name_is_true_only_when_a_route_uses_it() {
        let (_, table) = parse(EXAMPLE).unwrap();
        assert!(table.needs_route_name());
        let (_, table) = parse(r#"{"routes": [{"match": {"prefix": "/"}}]}"#).unwrap();
        assert!(!table.needs_route_name());
        assert!(!RouteTable::new(0u8).needs_route_name());
    }

    #[test]
    fn an_empty_configuration_is_all_defaults() {
        let (global, table) = parse("").unwrap();
        assert_eq!(global.shared_key, "");
        assert!(table.routes.is_empty());
        assert_eq!(table.defaults.failure_rate_threshold.value(), 50.0);
    }

    #[test]
    fn a_route_value_out_of_range_names_the_route_and_field() {
        let err = rule_of(
            r#"{"routes": [{"match": {"prefix": "/a"}}, {"match": {"prefix": "/b"}, "failure_rate_threshold": 150}]}"#,
        );
        assert_eq!(
            err,
            "routes[1].failure_rate_threshold: must be between 0 and 100, got 150"
        );
    }

    #[test]
    fn a_bad_default_is_reported_at_the_top_level_not_per_route() {
        let err =
            rule_of(r#"{"failure_rate_threshold": 150, "routes": [{"match": {"prefix": "/"}}]}"#);
        assert_eq!(
            err,
            "failure_rate_threshold: must be between 0 and 100, got 150"
        );
    }

    #[test]
    fn an_unknown_field_in_a_route_names_the_route() {
        let err = parse(r#"{"routes": [{"match": {"prefix": "/"}, "bogus": 1}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"routes[0].bogus: unknown field "bogus", expected "failure_rate_threshold" or "open_for""#
        );
    }

    #[test]
    fn an_unknown_top_level_field_is_reported() {
        let err = parse(r#"{"bogus": 1}"#).unwrap_err();
        assert!(err.rule.starts_with(r#"unknown field "bogus""#), "{err}");
        // The hint lists the filter-wide fields too, not only the per-route ones.
        assert!(
            err.rule
                .ends_with("; or a filter-wide field: shared_key, routes"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_match_criterion_is_reported_with_its_path() {
        let err = parse(r#"{"routes": [{"match": {"suffix": ".png"}}]}"#).unwrap_err();
        assert!(err.path.starts_with("routes[0].match"), "{err}");
        assert!(err.rule.starts_with(r#"unknown field "suffix""#), "{err}");
    }

    #[test]
    fn a_match_without_criteria_is_rejected() {
        assert_eq!(
            rule_of(r#"{"routes": [{"match": {}}]}"#),
            "routes[0].match: must name at least one of route_name, prefix, exact, method, headers"
        );
        assert_eq!(
            rule_of(r#"{"routes": [{"match": {"headers": []}}]}"#),
            "routes[0].match: must name at least one of route_name, prefix, exact, method, headers"
        );
    }

    #[test]
    fn contradictory_or_nameless_header_matches_are_rejected() {
        assert_eq!(
            rule_of(r#"{"routes": [{"match": {"headers": [{"name": "a"}, {"name": ""}]}}]}"#),
            "routes[0].match.headers[1].name: must not be empty"
        );
        assert_eq!(
            rule_of(
                r#"{"routes": [{"match": {"headers": [{"name": "a", "value": "1", "present": false}]}}]}"#
            ),
            r#"routes[0].match.headers[0]: cannot require a "value" and "present": false at once"#
        );
    }

    #[test]
    fn a_route_without_a_match_is_rejected() {
        assert_eq!(
            rule_of(r#"{"routes": [{"name": "x"}]}"#),
            r#"routes[0]: missing field "match": every route needs one"#
        );
        assert_eq!(
            rule_of(r#"{"routes": [{"match": "/api"}]}"#),
            "routes[0].match: must be an object"
        );
    }

    #[test]
    fn route_names_must_be_non_empty_strings() {
        assert_eq!(
            rule_of(r#"{"routes": [{"name": 3, "match": {"prefix": "/"}}]}"#),
            "routes[0].name: must be a non-empty string"
        );
    }

    #[test]
    fn routes_must_be_an_array_of_objects() {
        assert_eq!(
            rule_of(r#"{"routes": {"match": {}}}"#),
            "routes: must be an array of route objects"
        );
        assert_eq!(
            rule_of(r#"{"routes": ["/api"]}"#),
            r#"routes[0]: must be an object with a "match""#
        );
    }

    #[test]
    fn global_settings_cannot_be_overridden_per_route() {
        assert_eq!(
            rule_of(r#"{"routes": [{"match": {"prefix": "/"}, "shared_key": "x"}]}"#),
            "routes[0].shared_key: is a filter-wide setting and cannot be overridden per route"
        );
    }

    #[test]
    fn the_top_level_must_be_an_object() {
        assert_eq!(
            rule_of("[1, 2]"),
            "the filter configuration must be a JSON object"
        );
        assert!(rule_of("{").starts_with("invalid JSON at line 1 column 1"));
    }

    #[test]
    fn more_than_256_routes_are_rejected() {
        let route = r#"{"match": {"prefix": "/"}}"#;
        let many = vec![route; 257].join(",");
        assert_eq!(
            rule_of(&format!(r#"{{"routes": [{many}]}}"#)),
            "routes: at most 256 routes, got 257"
        );
        let enough = vec![route; 256].join(",");
        assert_eq!(
            parse(&format!(r#"{{"routes": [{enough}]}}"#))
                .unwrap()
                .1
                .routes
                .len(),
            256
        );
    }

    #[test]
    fn two_routes_with_the_same_name_are_refused_because_names_key_state() {
        let e = parse_filter_config::<Global, Settings>(
            br#"{"routes": [{"name": "a", "match": {"prefix": "/a"}}, {"name": "a", "match": {"prefix": "/b"}}]}"#,
            &[],
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("routes[1].name: \"a\" is already the name of an earlier route"),
            "{e}"
        );
    }

    #[test]
    fn try_map_converts_every_entry_with_its_path_prefix() {
        let (_, table) = parse_filter_config::<Global, Settings>(
            br#"{"routes": [{"match": {"prefix": "/a"}}, {"match": {"prefix": "/b"}}]}"#,
            &[],
        )
        .unwrap();
        let mut seen = Vec::new();
        let mapped = table
            .try_map(|_, prefix| {
                seen.push(prefix.to_owned());
                Ok::<_, ConfigError>(prefix.len())
            })
            .unwrap();
        assert_eq!(seen, ["", "routes[0]", "routes[1]"]);
        assert_eq!(mapped.routes.len(), 2);
        let refused = parse_filter_config::<Global, Settings>(
            br#"{"routes": [{"match": {"prefix": "/a"}}]}"#,
            &[],
        )
        .unwrap()
        .1
        .try_map(|_, prefix| {
            if prefix.is_empty() {
                Ok(())
            } else {
                Err(ConfigError::new(format!("{prefix}.x"), "no"))
            }
        });
        assert_eq!(
            refused.map(|_| ()).unwrap_err().to_string(),
            "routes[0].x: no"
        );
    }
}
