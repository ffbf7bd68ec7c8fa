//! Structural JSON Schema bundles: each operation's request and response schemas with `$ref`s
//! pointing into one `$defs` table, descriptions and examples dropped, so that a validator
//! needs no spec directory at run time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::{json, Map, Value};

use crate::emit::Files;
use crate::error::{Error, Result};
use crate::model::{Body, Group, Model};
use crate::spec::{Loc, Spec};

pub fn bundles(spec: &Spec, model: &Model) -> Result<Files> {
    let mut files = Files::new();
    for group in Group::ALL {
        let mut b = Bundler::new(spec);
        let mut operations = Map::new();
        for op in model.operations.iter().filter(|o| o.group == group) {
            let request = match &op.request {
                Some(Body::Json { schema, .. }) => b.schema_at(schema)?,
                _ => Value::Null,
            };
            let mut responses = Map::new();
            for r in &op.responses {
                if let Some(Body::Json { schema, .. }) = &r.body {
                    responses.insert(r.status.clone(), b.schema_at(schema)?);
                }
            }
            operations.insert(
                op.operation_id.clone(),
                json!({"request": request, "responses": responses}),
            );
        }
        let defs = b.finish()?;
        let doc = json!({
            "spec": {"version": model.version.version, "commit": model.version.commit},
            "operations": operations,
            "$defs": defs,
        });
        files.insert(format!("json-schema/{}.json", group.dir()), to_text(&doc));
    }
    let mut b = Bundler::new(spec);
    let mut events = Map::new();
    for ev in &model.events {
        events.insert(ev.name.clone(), b.schema_at(&Loc::new(&ev.file, ""))?);
    }
    let defs = b.finish()?;
    let doc = json!({
        "spec": {"version": model.version.version, "commit": model.version.commit},
        "events": events,
        "$defs": defs,
    });
    files.insert("json-schema/events.json".into(), to_text(&doc));
    Ok(files)
}

fn to_text(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values always serialise");
    s.push('\n');
    s
}

/// The `$defs` key of a location: `client-server.definitions.client_event` and, for a
/// fragment, `client-server.rooms:components.schemas.X`.
pub fn def_key(loc: &Loc) -> String {
    let file = loc.file.strip_prefix("api/").unwrap_or(&loc.file);
    let file = file
        .rsplit_once('.')
        .map_or(file, |(a, _)| a)
        .replace('/', ".");
    if loc.pointer.is_empty() {
        file
    } else {
        format!(
            "{file}:{}",
            loc.pointer
                .trim_start_matches('/')
                .replace('/', ".")
                .replace("~1", "/")
                .replace("~0", "~")
        )
    }
}

struct Bundler<'s> {
    spec: &'s Spec,
    defs: BTreeMap<String, Value>,
    seen: BTreeSet<Loc>,
    queue: VecDeque<Loc>,
    keys: BTreeMap<String, Loc>,
}

impl<'s> Bundler<'s> {
    fn new(spec: &'s Spec) -> Self {
        Bundler {
            spec,
            defs: BTreeMap::new(),
            seen: BTreeSet::new(),
            queue: VecDeque::new(),
            keys: BTreeMap::new(),
        }
    }

    fn schema_at(&mut self, loc: &Loc) -> Result<Value> {
        let node = self.spec.get(loc, loc)?;
        self.structural(node, loc)
    }

    fn finish(mut self) -> Result<Map<String, Value>> {
        while let Some(loc) = self.queue.pop_front() {
            let node = self.spec.get(&loc, &loc)?;
            let s = self.structural(node, &loc)?;
            self.defs.insert(def_key(&loc), s);
        }
        Ok(self.defs.into_iter().collect())
    }

    fn reference(&mut self, target: Loc, from: &Loc) -> Result<Value> {
        let key = def_key(&target);
        if let Some(existing) = self.keys.get(&key) {
            if existing != &target {
                return Err(Error::schema(
                    from,
                    format!("two schemas share the bundle key `{key}`"),
                ));
            }
        }
        self.spec.get(&target, from)?;
        self.keys.insert(key.clone(), target.clone());
        if self.seen.insert(target.clone()) {
            self.queue.push_back(target);
        }
        Ok(json!({"$ref": format!("#/$defs/{key}")}))
    }

    /// A schema with annotations dropped and `$ref`s pointing into `$defs`.
    fn structural(&mut self, node: &Value, loc: &Loc) -> Result<Value> {
        let Some(obj) = node.as_object() else {
            return Ok(node.clone());
        };
        let mut out = Map::new();
        for (k, v) in obj {
            let kl = loc.join(k);
            match k.as_str() {
                "description" | "example" | "examples" | "title" | "$schema" | "deprecated"
                | "nullable" => {}
                k if k.starts_with("x-") => {}
                "$ref" => {
                    let r = v
                        .as_str()
                        .ok_or_else(|| Error::schema(&kl, "`$ref` must be a string"))?;
                    if let Value::Object(m) = self.reference(Loc::parse_ref(r), loc)? {
                        out.extend(m);
                    }
                }
                "properties" | "patternProperties" | "$defs" | "definitions" => {
                    let m = v
                        .as_object()
                        .ok_or_else(|| Error::schema(&kl, format!("`{k}` must be an object")))?;
                    let mut props = Map::new();
                    for (pk, pv) in m {
                        props.insert(pk.clone(), self.structural(pv, &kl.join(pk))?);
                    }
                    out.insert(k.to_string(), Value::Object(props));
                }
                "items"
                | "additionalProperties"
                | "not"
                | "contains"
                | "propertyNames"
                | "if"
                | "then"
                | "else" => {
                    out.insert(k.to_string(), self.structural(v, &kl)?);
                }
                "allOf" | "oneOf" | "anyOf" | "prefixItems" => {
                    let list = v
                        .as_array()
                        .ok_or_else(|| Error::schema(&kl, format!("`{k}` must be a list")))?;
                    let items = list
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.structural(item, &kl.join(&i.to_string())))
                        .collect::<Result<Vec<_>>>()?;
                    out.insert(k.to_string(), Value::Array(items));
                }
                _ => {
                    out.insert(k.to_string(), v.clone());
                }
            }
        }
        Ok(Value::Object(out))
    }
}
