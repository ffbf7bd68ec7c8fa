//! The no-op mutant, for measuring the suites (tests only): with [`crate::Config::noop_mutant`]
//! naming a client-server operation, requests for it are answered with a success that fits the
//! operation's response schema while the server does nothing (no state change, no write, no
//! outbound request). `mxconform mutants` counts how many such mutants the scenarios catch.
//!
//! The answer is built from the structural schema bundle in `mxconform-generated`: required
//! properties only, the first value of an enum, well-formed identifiers where a format, a
//! pattern or the property's name asks for one (`@mutant0:<server>`, `!mutant0:<server>`,
//! `$mutant0:<server>`, `mxc://<server>/mutant0`).

use std::sync::OnceLock;

use mxconform_generated::{BodyKind, Group, Route};
use serde_json::{json, Map, Value};

/// The client-server schema bundle, parsed on first use (only a server with a mutant asks).
fn bundle() -> &'static Value {
    static BUNDLE: OnceLock<Value> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        mxconform_generated::schema_bundle(Group::ClientServer)
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null)
    })
}

/// The status of `route`'s successful answer: its first 2xx (200 if the spec gives none).
pub fn success_status(route: &Route) -> u16 {
    route
        .responses
        .iter()
        .map(|r| r.status)
        .find(|s| (200..300).contains(s))
        .unwrap_or(200)
}

/// The status and body a successful answer to `route` has, made up from its schema. A
/// top-level scalar the request body gives under the same name (`{"locked": true}`) is
/// echoed, as a server that answered right while doing nothing would.
pub fn answer(route: &Route, server_name: &str, request: Option<&Value>) -> (u16, Value) {
    let status = success_status(route);
    let success = route.responses.iter().find(|r| r.status == status);
    if success.is_some_and(|r| r.body != BodyKind::Json) {
        return (status, json!({}));
    }
    let schema = bundle()
        .get("operations")
        .and_then(|ops| ops.get(route.operation_id))
        .and_then(|op| op.get("responses"))
        .and_then(|r| r.get(status.to_string()));
    let maker = Maker::new(server_name);
    let mut body = match schema {
        Some(s) => maker.value(s, None, 0),
        None => json!({}),
    };
    if let (Some(s), Some(Value::Object(made)), Some(Value::Object(asked))) =
        (schema, Some(&mut body), request)
    {
        let s = maker.flatten(s, 0);
        let props = s.get("properties").and_then(Value::as_object);
        for (name, v) in made.iter_mut() {
            let Some(given) = asked.get(name) else {
                continue;
            };
            let p = props
                .and_then(|p| p.get(name))
                .map(|p| maker.flatten(p, 1))
                .unwrap_or_default();
            let free = !["enum", "const", "pattern", "format"]
                .iter()
                .any(|k| p.contains_key(*k));
            let same_type = matches!(
                (&*v, given),
                (Value::Bool(_), Value::Bool(_))
                    | (Value::String(_), Value::String(_))
                    | (Value::Number(_), Value::Number(_))
            );
            if free && same_type {
                *v = given.clone();
            }
        }
    }
    // A success body is an object; a schema that allows anything gets the empty one.
    let body = if body.is_object() { body } else { json!({}) };
    (status, body)
}

/// Makes the smallest value a schema accepts.
struct Maker<'a> {
    defs: &'a Value,
    server_name: &'a str,
}

/// Deep enough for every response schema of the spec; a recursive one stops here.
const MAX_DEPTH: usize = 24;

impl<'a> Maker<'a> {
    fn new(server_name: &'a str) -> Maker<'a> {
        Maker {
            defs: bundle().get("$defs").unwrap_or(&Value::Null),
            server_name,
        }
    }

    /// The schema with its `$ref` and `allOf` folded in: properties of every part (a property
    /// two parts describe gets both, as an `allOf`), required names united, the first part's
    /// word for anything else.
    fn flatten(&self, schema: &Value, depth: usize) -> Map<String, Value> {
        let Some(map) = schema.as_object() else {
            return Map::new();
        };
        let mut out: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| *k != "$ref" && *k != "allOf")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if depth > MAX_DEPTH {
            return out;
        }
        let target = map
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|name| self.defs.get(name));
        let parts = map
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(target);
        for part in parts {
            merge(&mut out, self.flatten(part, depth + 1));
        }
        out
    }

    fn value(&self, schema: &Value, key: Option<&str>, depth: usize) -> Value {
        let s = self.flatten(schema, depth);
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        if let Some(first) = s
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|e| e.iter().find(|v| !v.is_null()).or_else(|| e.first()))
        {
            return first.clone();
        }
        // One alternative of a oneOf / anyOf, with the schema's own words beside it.
        if let Some(alt) = ["oneOf", "anyOf"]
            .iter()
            .find_map(|k| s.get(*k).and_then(Value::as_array))
            .and_then(|alts| {
                alts.iter()
                    .find(|a| a.get("type") != Some(&json!("null")))
                    .or_else(|| alts.first())
            })
        {
            let mut combined = s.clone();
            combined.remove("oneOf");
            combined.remove("anyOf");
            merge(&mut combined, self.flatten(alt, depth + 1));
            return self.value(&Value::Object(combined), key, depth + 1);
        }
        match type_of(&s) {
            "object" => self.object(&s, depth),
            "array" => {
                let n = s.get("minItems").and_then(Value::as_u64).unwrap_or(0);
                let items = s.get("items").cloned().unwrap_or(json!({}));
                Value::Array(
                    (0..n)
                        .map(|_| self.value(&items, None, depth + 1))
                        .collect(),
                )
            }
            "string" => Value::String(self.string(&s, key)),
            "integer" | "number" => {
                let min = s
                    .get("minimum")
                    .and_then(Value::as_i64)
                    .or_else(|| {
                        s.get("exclusiveMinimum")
                            .and_then(Value::as_i64)
                            .map(|m| m + 1)
                    })
                    .unwrap_or(0);
                json!(min)
            }
            "boolean" => json!(false),
            "null" => Value::Null,
            _ => json!({}),
        }
    }

    fn object(&self, s: &Map<String, Value>, depth: usize) -> Value {
        let props = s.get("properties").and_then(Value::as_object);
        let schema_of = |name: &str| -> Value {
            if let Some(p) = props.and_then(|p| p.get(name)) {
                return p.clone();
            }
            match s.get("additionalProperties") {
                Some(a @ Value::Object(_)) => a.clone(),
                _ => json!({}),
            }
        };
        let mut out = Map::new();
        let required = s.get("required").and_then(Value::as_array);
        for name in required.into_iter().flatten().filter_map(Value::as_str) {
            let v = self.value(&schema_of(name), Some(name), depth + 1);
            out.insert(name.to_string(), v);
        }
        // Optional containers too, as a real answer has them (`"failures": {}`, `"chunk": []`),
        // and enough described properties for a lower bound on their number.
        let min = s.get("minProperties").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = s.get("maxProperties").and_then(Value::as_u64);
        for (name, p) in props.into_iter().flatten() {
            if out.contains_key(name) || max.is_some_and(|m| out.len() as u64 >= m) {
                continue;
            }
            let container = matches!(type_of(&self.flatten(p, depth + 1)), "object" | "array");
            if container || out.len() < min {
                let v = self.value(p, Some(name), depth + 1);
                out.insert(name.clone(), v);
            }
        }
        Value::Object(out)
    }

    fn string(&self, s: &Map<String, Value>, key: Option<&str>) -> String {
        let format = s.get("format").and_then(Value::as_str).unwrap_or("");
        let pattern = s.get("pattern").and_then(Value::as_str).unwrap_or("");
        let key = key.unwrap_or("");
        let server = self.server_name;
        let sigil = |c: &str| pattern.starts_with(&format!("^{c}"));
        let text = if format == "mx-user-id" || sigil("@") || key.ends_with("user_id") {
            format!("@mutant0:{server}")
        } else if format == "mx-room-id"
            || sigil("!")
            || key.ends_with("room_id")
            || key == "replacement_room"
        {
            format!("!mutant0:{server}")
        } else if format == "mx-event-id" || sigil("\\$") || key.ends_with("event_id") {
            format!("$mutant0:{server}")
        } else if format == "mx-room-alias" || sigil("#") {
            format!("#mutant0:{server}")
        } else if format == "mx-mxc-uri" || sigil("mxc") {
            format!("mxc://{server}/mutant0")
        } else if format == "mx-server-name" {
            server.to_string()
        } else if format.starts_with("uri") {
            "https://mutant.invalid/".to_string()
        } else if format == "date-time" {
            "1970-01-01T00:00:00Z".to_string()
        } else {
            "mutant0".to_string()
        };
        let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
        let n = text.chars().count();
        if n < min {
            return format!("{text}{}", "0".repeat(min - n));
        }
        text
    }
}

/// What JSON type a (flattened) schema describes; an array of types gives its first non-null.
fn type_of(s: &Map<String, Value>) -> &str {
    match s.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if [
            "properties",
            "required",
            "additionalProperties",
            "patternProperties",
        ]
        .iter()
        .any(|k| s.contains_key(*k)) =>
        {
            "object"
        }
        _ if s.contains_key("items") => "array",
        _ => "",
    }
}

/// Folds one flattened schema into another (see [`Maker::flatten`]).
fn merge(out: &mut Map<String, Value>, part: Map<String, Value>) {
    for (k, v) in part {
        match (k.as_str(), out.get_mut(&k)) {
            ("properties", Some(Value::Object(mine))) => {
                for (name, p) in v.as_object().into_iter().flatten() {
                    let both = match mine.remove(name) {
                        Some(existing) => json!({"allOf": [existing, p]}),
                        None => p.clone(),
                    };
                    mine.insert(name.clone(), both);
                }
            }
            ("required", Some(Value::Array(mine))) => {
                for name in v.as_array().into_iter().flatten() {
                    if !mine.contains(name) {
                        mine.push(name.clone());
                    }
                }
            }
            (_, Some(_)) => {}
            (_, None) => {
                out.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str) -> &'static Route {
        mxconform_generated::client_server::ROUTES
            .iter()
            .find(|r| r.operation_id == id)
            .expect("the operation exists")
    }

    #[test]
    fn answers_are_made_from_the_schemas() {
        let check = |id: &str, expected: Value| {
            assert_eq!(answer(route(id), "hs", None), (200, expected), "{id}");
        };
        check("sendMessage", json!({"event_id": "$mutant0:hs"}));
        check("createRoom", json!({"room_id": "!mutant0:hs"}));
        check("uploadContent", json!({"content_uri": "mxc://hs/mutant0"}));
        check("setRoomTag", json!({}));
        check("upgradeRoom", json!({"replacement_room": "!mutant0:hs"}));
        check(
            "deactivateAccount",
            json!({"id_server_unbind_result": "success"}),
        );
        check("putRoomKeys", json!({"etag": "mutant0", "count": 0}));
        check("postReceipt", json!({}));
        check("uploadCrossSigningSignatures", json!({"failures": {}}));
        check("queryPublicRooms", json!({"chunk": []}));
        // Scalars the request gives are echoed; others keep the made-up value.
        let asked = json!({"locked": true, "other": 1});
        assert_eq!(
            answer(route("setAdminLockUser"), "hs", Some(&asked)),
            (200, json!({"locked": true}))
        );
    }
}
