//! The API surface of a spec version as text: one line per operation and one per field of
//! its parameters, request body and responses, with types. Kept as an insta snapshot per
//! version, so a spec update shows up in `cargo insta review` line by line, and read back by
//! [`crate::diff`].

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::model::{Body, Kind, Model, Operation, ParamLocation, Rest, Ty};

/// How deep nested objects are spelled out; deeper ones are named, not expanded.
const MAX_DEPTH: usize = 8;

/// One line of the digest, parsed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entry {
    Operation {
        key: String,
        method: String,
        path: String,
        auth: String,
        flags: String,
    },
    Field {
        /// `client-server createRoom`
        op_key: String,
        /// `request.body.name`, `response.200.room_id`, `query.limit`.
        path: String,
        ty: String,
        required: bool,
    },
}

pub fn digest(model: &Model) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# API surface of matrix-spec {} ({} operations, {} event schemas)",
        model.version.version,
        model.operations.len(),
        model.events.len()
    );
    let mut ops: Vec<&Operation> = model.operations.iter().collect();
    ops.sort_by(|a, b| (a.group, &a.operation_id).cmp(&(b.group, &b.operation_id)));
    for op in ops {
        let key = format!("{} {}", op.group.dir(), op.operation_id);
        let mut flags = Vec::new();
        if op.rate_limited {
            flags.push("rate-limited".to_string());
        }
        if op.deprecated {
            flags.push("deprecated".to_string());
        }
        flags.push(format!(
            "added-in={}",
            op.added_in.as_deref().unwrap_or("-")
        ));
        let _ = writeln!(
            out,
            "op {key} | {} {} | auth={} | {}",
            op.method.to_ascii_uppercase(),
            op.path,
            op.auth.as_str(),
            flags.join(" ")
        );
        let mut w = Walker {
            model,
            out: &mut out,
            key: &key,
        };
        for p in &op.params {
            let place = match p.location {
                ParamLocation::Path => "path",
                ParamLocation::Query => "query",
                ParamLocation::Header => "header",
            };
            w.field(
                &format!("{place}.{}", p.name),
                &p.ty,
                p.required,
                &mut Vec::new(),
                0,
            );
        }
        if let Some(body) = &op.request {
            w.body("request", body);
        }
        for r in &op.responses {
            if let Some(body) = &r.body {
                w.body(&format!("response.{}", r.status), body);
            }
        }
    }
    let mut events: Vec<_> = model.events.iter().collect();
    events.sort_by(|a, b| a.name.cmp(&b.name));
    for ev in events {
        let key = format!("event {}", ev.name);
        let _ = writeln!(out, "op {key} | - - | auth=- | -");
        let mut w = Walker {
            model,
            out: &mut out,
            key: &key,
        };
        w.expand("", &ev.ty, &mut Vec::new(), 0);
    }
    out
}

struct Walker<'a> {
    model: &'a Model,
    out: &'a mut String,
    key: &'a str,
}

impl Walker<'_> {
    fn body(&mut self, prefix: &str, body: &Body) {
        match body {
            Body::Json { ty, required, .. } => {
                self.field(&format!("{prefix}.body"), ty, *required, &mut Vec::new(), 0);
            }
            Body::Binary { content_types } => {
                let _ = writeln!(
                    self.out,
                    "  {} {prefix}.body: bytes({})",
                    self.key,
                    content_types.join(",")
                );
            }
        }
    }

    fn field(&mut self, path: &str, ty: &Ty, required: bool, stack: &mut Vec<usize>, depth: usize) {
        let _ = writeln!(
            self.out,
            "  {} {path}{}: {}",
            self.key,
            if required { "" } else { "?" },
            type_text(self.model, ty)
        );
        self.expand(path, ty, stack, depth);
    }

    /// Lines for the fields inside a type.
    fn expand(&mut self, path: &str, ty: &Ty, stack: &mut Vec<usize>, depth: usize) {
        let join = |a: &str, b: &str| {
            if a.is_empty() {
                b.to_string()
            } else {
                format!("{a}.{b}")
            }
        };
        match ty {
            Ty::Nullable(inner) => self.expand(path, inner, stack, depth),
            Ty::Vec(inner) => self.expand(&format!("{path}[]"), inner, stack, depth),
            Ty::Map(_, v) => self.expand(&format!("{path}{{}}"), v, stack, depth),
            Ty::Named(i) => {
                if stack.contains(i) || depth >= MAX_DEPTH {
                    return;
                }
                stack.push(*i);
                match &self.model.types[*i].kind {
                    Kind::Struct { fields, rest } => {
                        for f in fields {
                            let t = if f.nullable {
                                Ty::Nullable(Box::new(f.ty.clone()))
                            } else {
                                f.ty.clone()
                            };
                            self.field(&join(path, &f.wire), &t, f.required, stack, depth + 1);
                        }
                        match rest {
                            Rest::Typed(t) => {
                                self.field(&join(path, "*"), t, false, stack, depth + 1)
                            }
                            Rest::Closed => {
                                let _ = writeln!(
                                    self.out,
                                    "  {} {}: closed",
                                    self.key,
                                    join(path, "*")
                                );
                            }
                            Rest::Keep => {}
                        }
                    }
                    Kind::Untagged { variants } => {
                        for (name, t) in variants {
                            self.expand(&format!("{path}<{name}>"), t, stack, depth + 1);
                        }
                    }
                    Kind::StringEnum { .. } | Kind::Pending => {}
                }
                stack.pop();
            }
            _ => {}
        }
    }
}

/// A type as the digest spells it: structure, not Rust names (which may change when the
/// spec is reorganised without an API change).
pub fn type_text(model: &Model, ty: &Ty) -> String {
    match ty {
        Ty::Bool => "boolean".into(),
        Ty::Int => "integer".into(),
        Ty::Float => "number".into(),
        Ty::String => "string".into(),
        Ty::Id(k) => format!("string({})", k.format()),
        Ty::Json => "json".into(),
        Ty::JsonObject => "object".into(),
        Ty::Vec(inner) => format!("[{}]", type_text(model, inner)),
        Ty::Map(k, v) => format!("{{{}: {}}}", type_text(model, k), type_text(model, v)),
        Ty::Nullable(inner) => format!("{}|null", type_text(model, inner)),
        Ty::Named(i) => match &model.types[*i].kind {
            Kind::Struct { .. } => "object".into(),
            Kind::StringEnum { variants } => {
                let values: BTreeSet<&str> = variants.iter().map(|(_, w)| w.as_str()).collect();
                format!("enum({})", values.into_iter().collect::<Vec<_>>().join("|"))
            }
            Kind::Untagged { variants } => format!(
                "oneOf({})",
                variants
                    .iter()
                    .map(|(_, t)| type_text(model, t))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Kind::Pending => "?".into(),
        },
    }
}

/// Reads a digest back into entries (lines it does not recognise are skipped).
pub fn parse(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("op ") {
            let parts: Vec<&str> = rest.split(" | ").collect();
            if parts.len() == 4 {
                let (method, path) = parts[1].split_once(' ').unwrap_or((parts[1], ""));
                out.push(Entry::Operation {
                    key: parts[0].to_string(),
                    method: method.to_string(),
                    path: path.to_string(),
                    auth: parts[2].trim_start_matches("auth=").to_string(),
                    flags: parts[3].to_string(),
                });
            }
        } else if let Some(rest) = line.strip_prefix("  ") {
            // `<group> <opId> <path>: <type>` or `event <name> <path>: <type>`
            let mut it = rest.splitn(3, ' ');
            let (Some(a), Some(b), Some(tail)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let Some((path, ty)) = tail.split_once(": ") else {
                continue;
            };
            let (path, required) = match path.strip_suffix('?') {
                Some(p) => (p, false),
                None => (path, true),
            };
            out.push(Entry::Field {
                op_key: format!("{a} {b}"),
                path: path.to_string(),
                ty: ty.to_string(),
                required,
            });
        }
    }
    out
}
