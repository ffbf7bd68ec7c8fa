//! Checking requests and responses against the spec's schemas, from the structural bundles in
//! `mxconform-generated` (no spec directory needed at run time), with the `jsonschema` crate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};

use mxconform_generated::Group;

/// The parsed bundle of an API group (every group is compiled in).
fn bundle(group: Group) -> &'static Value {
    static CS: OnceLock<Value> = OnceLock::new();
    static SS: OnceLock<Value> = OnceLock::new();
    static AS: OnceLock<Value> = OnceLock::new();
    static IS: OnceLock<Value> = OnceLock::new();
    static PG: OnceLock<Value> = OnceLock::new();
    static NONE: Value = Value::Null;
    let cell = match group {
        Group::ClientServer => &CS,
        Group::ServerServer => &SS,
        Group::ApplicationService => &AS,
        Group::Identity => &IS,
        Group::PushGateway => &PG,
        #[allow(unreachable_patterns)]
        _ => return &NONE,
    };
    cell.get_or_init(|| {
        let text = mxconform_generated::schema_bundle(group)
            .expect("the harness enables every API group's feature");
        serde_json::from_str(text).expect("the generated bundle is JSON")
    })
}

/// Which schema of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Request,
    Response(u16),
}

type Compiled = Option<Arc<jsonschema::Validator>>;

type CacheKey = (Group, String, Part);

fn cache() -> &'static Mutex<HashMap<CacheKey, Compiled>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Compiled>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The schema the spec gives for this part of a client-server operation; `None` when it
/// documents none.
pub fn schema_for(operation_id: &str, part: &Part) -> Option<Value> {
    schema_in(Group::ClientServer, operation_id, part)
}

/// The schema the spec gives for this part of an operation of `group`.
pub fn schema_in(group: Group, operation_id: &str, part: &Part) -> Option<Value> {
    let op = bundle(group).get("operations")?.get(operation_id)?;
    let s = match part {
        Part::Request => op.get("request")?,
        Part::Response(status) => op.get("responses")?.get(status.to_string())?,
    };
    (!s.is_null()).then(|| s.clone())
}

fn validator(group: Group, operation_id: &str, part: &Part) -> Result<Compiled, String> {
    let key = (group, operation_id.to_string(), part.clone());
    if let Some(v) = cache()
        .lock()
        .map_err(|_| "validator cache poisoned".to_string())?
        .get(&key)
    {
        return Ok(v.clone());
    }
    let compiled = match schema_in(group, operation_id, part) {
        None => None,
        Some(schema) => {
            // The operation's schema, with the bundle's `$defs` beside it for its `$ref`s.
            let mut root = match schema {
                Value::Object(m) => m,
                other => {
                    let mut m = serde_json::Map::new();
                    m.insert("allOf".into(), json!([other]));
                    m
                }
            };
            root.insert(
                "$defs".into(),
                bundle(group).get("$defs").cloned().unwrap_or(json!({})),
            );
            root.insert(
                "$schema".into(),
                json!("https://json-schema.org/draft/2020-12/schema"),
            );
            let v = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .build(&Value::Object(root))
                .map_err(|e| {
                    format!("the spec's schema for {operation_id} {part:?} does not compile: {e}")
                })?;
            Some(Arc::new(v))
        }
    };
    cache()
        .lock()
        .map_err(|_| "validator cache poisoned".to_string())?
        .insert(key, compiled.clone());
    Ok(compiled)
}

/// One way a value breaks its schema.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// JSON pointer into the checked value.
    pub pointer: String,
    pub value: Value,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = self.value.to_string();
        if v.len() > 200 {
            v.truncate(v.floor_char_boundary(200));
            v.push('…');
        }
        let at = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "at {at}: {} (value: {v})", self.message)
    }
}

/// What validation of a client-server request or response found: `Ok(None)` when the spec has
/// no schema for this part.
pub fn validate(
    operation_id: &str,
    part: &Part,
    value: &Value,
) -> Result<Option<Vec<Violation>>, String> {
    validate_in(Group::ClientServer, operation_id, part, value)
}

/// [`validate`] for an operation of `group`.
pub fn validate_in(
    group: Group,
    operation_id: &str,
    part: &Part,
    value: &Value,
) -> Result<Option<Vec<Violation>>, String> {
    let Some(v) = validator(group, operation_id, part)? else {
        return Ok(None);
    };
    let violations = v
        .iter_errors(value)
        .take(10)
        .map(|e| {
            let pointer = e.instance_path().to_string();
            let at = if pointer.is_empty() {
                value.clone()
            } else {
                value.pointer(&pointer).cloned().unwrap_or(Value::Null)
            };
            Violation {
                pointer,
                value: at,
                message: e.to_string(),
            }
        })
        .collect();
    Ok(Some(violations))
}

/// The shape every error response has (the spec's standard error): a JSON object with a
/// string `errcode`, and `error`, when present, a string.
pub fn error_shape(value: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    match value.get("errcode") {
        Some(Value::String(_)) => {}
        other => out.push(Violation {
            pointer: "/errcode".into(),
            value: other.cloned().unwrap_or(Value::Null),
            message: "an error response must carry a string `errcode`".into(),
        }),
    }
    if let Some(e) = value.get("error") {
        if !e.is_string() {
            out.push(Violation {
                pointer: "/error".into(),
                value: e.clone(),
                message: "`error` must be a string".into(),
            });
        }
    }
    out
}
