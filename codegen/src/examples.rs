//! Every example the spec gives (request and response examples of each operation, with
//! `$ref`s inside them resolved, and the event examples), each tied to the generated type it
//! must fit; and the generated dispatch that the round-trip test calls.

use std::collections::BTreeMap;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use serde_json::Value;

use crate::error::Result;
use crate::model::{Body, Model, Ty};
use crate::spec::{Loc, Spec};

/// One example from the spec.
#[derive(Clone, Debug)]
pub struct Example {
    /// Which generated type it must fit: `client-server/getRoomIdByAlias/request`,
    /// `client-server/getRoomIdByAlias/response/200`, `event/m.room.member`; `None` when no
    /// generated type stands for it.
    pub target: Option<String>,
    /// Where it is in the spec.
    pub loc: Loc,
    /// The example with its `$ref`s resolved.
    pub value: Value,
}

impl Example {
    /// A name that identifies the example in the exclusion list and in failures.
    pub fn id(&self) -> String {
        format!("{}#{}", self.loc.file, self.loc.pointer)
    }
}

/// Where the JSON body types of operations are, by target key.
pub fn targets(model: &Model) -> BTreeMap<String, TokenStream> {
    let mut out = BTreeMap::new();
    for op in &model.operations {
        let segs: Vec<_> = op.module.iter().map(|s| format_ident!("{}", s)).collect();
        let base = format!("{}/{}", op.group.dir(), op.operation_id);
        if let Some(Body::Json { .. }) = &op.request {
            out.insert(
                format!("{base}/request"),
                quote!(mxconform_generated:: #(#segs::)* RequestBody),
            );
        }
        for r in &op.responses {
            if let Some(Body::Json { .. }) = &r.body {
                let name = format_ident!("{}", op.response_type_name(&r.status));
                out.insert(
                    format!("{base}/response/{}", r.status),
                    quote!(mxconform_generated:: #(#segs::)* #name),
                );
            }
        }
    }
    for ev in &model.events {
        if let Ty::Named(i) = ev.ty {
            let t = &model.types[i];
            let segs: Vec<_> = t.module.iter().map(|s| format_ident!("{}", s)).collect();
            let name = format_ident!("{}", t.name);
            out.insert(
                format!("event/{}", ev.name),
                quote!(mxconform_generated:: #(#segs::)* #name),
            );
        }
    }
    out
}

/// The generated test support file: a function from target key to a round trip through
/// the generated type.
pub fn dispatch_file(model: &Model) -> Result<String> {
    let arms = targets(model)
        .into_iter()
        .map(|(key, path)| quote!(#key => roundtrip_as::<#path>(value),));
    let tokens = quote! {
        /// Deserialises `value` as the generated type for `target` and serialises it back;
        /// `None` when no type has that target key.
        pub fn roundtrip(target: &str, value: &serde_json::Value) -> Option<Result<serde_json::Value, String>> {
            Some(match target {
                #(#arms)*
                _ => return None,
            })
        }

        fn roundtrip_as<T: serde::de::DeserializeOwned + serde::Serialize>(value: &serde_json::Value) -> Result<serde_json::Value, String> {
            let typed: T = serde_json::from_value(value.clone()).map_err(|e| format!("deserialise: {e}"))?;
            serde_json::to_value(&typed).map_err(|e| format!("serialise: {e}"))
        }
    };
    let file: syn::File = syn::parse2(tokens).map_err(|e| crate::Error::Schema {
        at: Loc::new("(generated)", "tests/support/dispatch.rs"),
        what: format!("codegen produced invalid Rust: {e}"),
    })?;
    Ok(format!(
        "{}//! Round trips of spec examples through the generated types, by target key.\n\n{}",
        crate::emit::header(model),
        prettyplease::unparse(&file)
    ))
}

/// Every example of the spec.
pub fn collect(spec: &Spec, model: &Model) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for op in &model.operations {
        let base = format!("{}/{}", op.group.dir(), op.operation_id);
        let op_loc = Loc::new(&op.file, "/paths")
            .join(&op.path_key)
            .join(&op.method);
        if op.request.is_some() {
            let target =
                matches!(op.request, Some(Body::Json { .. })).then(|| format!("{base}/request"));
            body_examples(spec, &op_loc.join("requestBody"), target, &mut out)?;
        }
        for r in &op.responses {
            let target = matches!(r.body, Some(Body::Json { .. }))
                .then(|| format!("{base}/response/{}", r.status));
            body_examples(
                spec,
                &op_loc.join("responses").join(&r.status),
                target,
                &mut out,
            )?;
        }
    }
    // data/event-schemas/examples/<type>[$<variant>].yaml: the schema of the longest matching name.
    for (file, value) in spec.files() {
        let Some(name) = file.strip_prefix("event-schemas/examples/") else {
            continue;
        };
        let stem = name.rsplit_once('.').map_or(name, |(a, _)| a);
        let target = if name.contains('/') {
            None
        } else if model.events.iter().any(|e| e.name == stem) {
            Some(format!("event/{stem}"))
        } else {
            let base = stem.split('$').next().unwrap_or(stem);
            model
                .events
                .iter()
                .any(|e| e.name == base)
                .then(|| format!("event/{base}"))
        };
        let loc = Loc::new(file, "");
        out.push(Example {
            target,
            value: spec.resolve_example(value, &loc)?,
            loc,
        });
    }
    Ok(out)
}

/// Examples of a request body or a response: on the media type (`example`, `examples`), and
/// on the schema itself.
fn body_examples(
    spec: &Spec,
    at: &Loc,
    target: Option<String>,
    out: &mut Vec<Example>,
) -> Result<()> {
    let (node, loc) = spec.deref(spec.get(at, at)?, at.clone())?;
    let Some(content) = node.get("content").and_then(Value::as_object) else {
        return Ok(());
    };
    for (media_type, media) in content {
        let mloc = loc.join("content").join(media_type);
        let mut push = |value: &Value, vloc: Loc| -> Result<()> {
            out.push(Example {
                target: target.clone(),
                value: spec.resolve_example(value, &vloc)?,
                loc: vloc,
            });
            Ok(())
        };
        if let Some(v) = media.get("example") {
            push(v, mloc.join("example"))?;
        }
        if let Some(examples) = media.get("examples").and_then(Value::as_object) {
            for (name, ex) in examples {
                let eloc = mloc.join("examples").join(name);
                let (ex, eloc) = spec.deref(ex, eloc)?;
                if let Some(v) = ex.get("value") {
                    push(v, eloc.join("value"))?;
                }
            }
        }
        if let Some(schema) = media.get("schema") {
            let sloc = mloc.join("schema");
            if let Some(v) = schema.get("example") {
                push(v, sloc.join("example"))?;
            }
        }
    }
    Ok(())
}
