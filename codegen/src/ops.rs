//! Reading the operations of one OpenAPI file: route facts, parameters, bodies and responses.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::{
    file_module, AuthRequirement, AuthScheme, Body, Builder, Group, Hint, Operation, Param,
    ParamLocation, ResponseDef, Ty,
};
use crate::names::{pascal, snake};
use crate::spec::Loc;

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

pub(crate) fn read_file(
    b: &mut Builder,
    group: Group,
    file: &str,
    out: &mut Vec<Operation>,
) -> Result<()> {
    let spec = b.spec;
    let root_loc = Loc::new(file, "");
    let root = spec.get(&root_loc, &root_loc)?;
    let Some(paths) = root.get("paths") else {
        return Ok(());
    };
    let paths = paths
        .as_object()
        .ok_or_else(|| Error::schema(&root_loc.join("paths"), "`paths` must be an object"))?;
    let prefix = base_path(root, &root_loc)?;
    let module = file_module(file);
    b.file_modules
        .entry(module.clone())
        .or_insert_with(|| file.to_string());

    for (path_key, item) in paths {
        let item_loc = root_loc.join("paths").join(path_key);
        let item = item
            .as_object()
            .ok_or_else(|| Error::schema(&item_loc, "a path item must be an object"))?;
        for (method, op) in item {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let loc = item_loc.join(method);
            let op = op
                .as_object()
                .ok_or_else(|| Error::schema(&loc, "an operation must be an object"))?;
            let operation_id = op
                .get("operationId")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::schema(&loc, "operation has no `operationId`"))?
                .to_string();
            let mut op_module = module.clone();
            op_module.push(snake(&operation_id));

            let responses_obj =
                op.get("responses")
                    .and_then(Value::as_object)
                    .ok_or_else(|| {
                        Error::schema(
                            &loc.join("responses"),
                            "operation has no `responses` object",
                        )
                    })?;
            let mut statuses: Vec<&String> = responses_obj.keys().collect();
            statuses.sort();

            let mut operation = Operation {
                group,
                operation_id: operation_id.clone(),
                module: op_module.clone(),
                file: file.to_string(),
                method: method.clone(),
                path: format!("{prefix}{}", path_key.trim()),
                path_key: path_key.clone(),
                auth: AuthRequirement::None,
                auth_schemes: Vec::new(),
                rate_limited: responses_obj.contains_key("429"),
                added_in: version_text(op.get("x-addedInMatrixVersion")),
                changed_in: op
                    .get("x-changedInMatrixVersion")
                    .and_then(Value::as_object)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default(),
                deprecated: op.get("deprecated") == Some(&Value::Bool(true)),
                params: Vec::new(),
                request: None,
                responses: statuses
                    .iter()
                    .map(|s| ResponseDef {
                        status: s.to_string(),
                        body: None,
                    })
                    .collect(),
            };
            read_security(spec, op, root, &loc, &mut operation, &mut b.warnings)?;
            crate::quirks::apply(&mut operation, &mut b.warnings);

            // Names of the operation's own items, so that inline types pick others.
            let mut reserved = vec![
                "Request".to_string(),
                "RequestBody".to_string(),
                "ROUTE".to_string(),
            ];
            for s in &statuses {
                reserved.push(operation.response_type_name(s));
            }
            b.reserve_names(&op_module, &reserved);

            // Parameters: those of the path item, then the operation's own.
            let mut raw_params: Vec<(Loc, &Value)> = Vec::new();
            for (src, src_loc) in [
                (item.get("parameters"), item_loc.join("parameters")),
                (op.get("parameters"), loc.join("parameters")),
            ] {
                if let Some(list) = src {
                    let list = list
                        .as_array()
                        .ok_or_else(|| Error::schema(&src_loc, "`parameters` must be a list"))?;
                    for (i, p) in list.iter().enumerate() {
                        raw_params.push((src_loc.join(&i.to_string()), p));
                    }
                }
            }
            let mut used = std::collections::BTreeSet::new();
            for (ploc, p) in raw_params {
                let (p, ploc) = spec.deref(p, ploc)?;
                let name = p
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::schema(&ploc, "parameter has no `name`"))?
                    .to_string();
                let location = match p.get("in").and_then(Value::as_str) {
                    Some("path") => ParamLocation::Path,
                    Some("query") => ParamLocation::Query,
                    Some("header") => ParamLocation::Header,
                    other => {
                        return Err(Error::schema(
                            &ploc.join("in"),
                            format!("unsupported parameter location {other:?}"),
                        ))
                    }
                };
                let schema = p
                    .get("schema")
                    .ok_or_else(|| Error::schema(&ploc, "parameter has no `schema`"))?;
                let hint = Hint {
                    module: op_module.clone(),
                    name: pascal(&name),
                    parent: None,
                    exact: false,
                };
                let ty = b.ty(schema, &ploc.join("schema"), hint)?;
                let mut rust = snake(&name);
                if rust == "body" || !used.insert(rust.clone()) {
                    rust = format!(
                        "{rust}_{}",
                        if location == ParamLocation::Path {
                            "path"
                        } else {
                            "param"
                        }
                    );
                    used.insert(rust.clone());
                }
                operation.params.push(Param {
                    rust,
                    location,
                    required: location == ParamLocation::Path
                        || p.get("required") == Some(&Value::Bool(true)),
                    ty,
                    deprecated: p.get("deprecated") == Some(&Value::Bool(true)),
                    added_in: version_text(p.get("x-addedInMatrixVersion")),
                    name,
                });
            }
            for p in &operation.params {
                if p.location == ParamLocation::Path
                    && !operation.path.contains(&format!("{{{}}}", p.name))
                {
                    return Err(Error::schema(
                        &loc,
                        format!("path parameter `{}` is not in the path", p.name),
                    ));
                }
            }

            if let Some(rb) = op.get("requestBody") {
                let (rb, rb_loc) = spec.deref(rb, loc.join("requestBody"))?;
                let required = rb.get("required") == Some(&Value::Bool(true));
                operation.request =
                    read_content(b, rb, &rb_loc, &op_module, "RequestBody", required)?;
            }
            for (i, status) in statuses.iter().enumerate() {
                let r = &responses_obj[status.as_str()];
                let (r, r_loc) = spec.deref(r, loc.join("responses").join(status))?;
                let name = operation.response_type_name(status);
                operation.responses[i].body = read_content(b, r, &r_loc, &op_module, &name, true)?;
            }
            out.push(operation);
        }
    }
    Ok(())
}

/// The body of a request or response: JSON with its type, or some other content type.
fn read_content(
    b: &mut Builder,
    node: &Value,
    loc: &Loc,
    module: &[String],
    name: &str,
    required: bool,
) -> Result<Option<Body>> {
    let Some(content) = node.get("content") else {
        return Ok(None);
    };
    let content: &Map<String, Value> = content
        .as_object()
        .ok_or_else(|| Error::schema(&loc.join("content"), "`content` must be an object"))?;
    if let Some(media) = content.get("application/json") {
        let mloc = loc.join("content").join("application/json");
        let schema = media
            .get("schema")
            .ok_or_else(|| Error::schema(&mloc, "JSON content has no `schema`"))?;
        let sloc = mloc.join("schema");
        let hint = Hint {
            module: module.to_vec(),
            name: name.to_string(),
            parent: None,
            exact: true,
        };
        let ty: Ty = b.ty(schema, &sloc, hint)?;
        return Ok(Some(Body::Json {
            ty,
            schema: sloc,
            required,
        }));
    }
    Ok(Some(Body::Binary {
        content_types: content.keys().cloned().collect(),
    }))
}

/// `servers[0].variables.basePath.default`, where the spec keeps the URL prefix.
fn base_path(root: &Value, loc: &Loc) -> Result<String> {
    root.pointer("/servers/0/variables/basePath/default")
        .and_then(Value::as_str)
        .map(|s| s.trim_end_matches('/').to_string())
        .ok_or_else(|| {
            Error::schema(
                &loc.join("servers"),
                "no `servers[0].variables.basePath.default` (the URL prefix)",
            )
        })
}

fn read_security(
    spec: &crate::spec::Spec,
    op: &Map<String, Value>,
    root: &Value,
    loc: &Loc,
    operation: &mut Operation,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let Some(sec) = op.get("security").or_else(|| root.get("security")) else {
        return Ok(());
    };
    let list = sec
        .as_array()
        .ok_or_else(|| Error::schema(&loc.join("security"), "`security` must be a list"))?;
    let mut any_empty = false;
    for (i, req) in list.iter().enumerate() {
        let req = req.as_object().ok_or_else(|| {
            Error::schema(
                &loc.join("security").join(&i.to_string()),
                "a security requirement must be an object",
            )
        })?;
        if req.is_empty() {
            any_empty = true;
        }
        for name in req.keys() {
            let scheme_loc = Loc::new(loc.file.as_ref(), "/components/securitySchemes").join(name);
            // The scheme should be declared in the file; its name tells which credential it is.
            if spec.get(&scheme_loc, &loc.join("security")).is_err() {
                warnings.push(format!(
                    "{}: security scheme `{name}` is not declared in components/securitySchemes",
                    loc.join("security")
                ));
            }
            let scheme = match name.as_str() {
                "accessTokenQuery" | "accessTokenBearer" | "accessToken" => AuthScheme::AccessToken,
                "appserviceAccessTokenQuery" | "appserviceAccessTokenBearer" => {
                    AuthScheme::AppServiceToken
                }
                "homeserverAccessToken" => AuthScheme::HomeserverToken,
                "signedRequest" => AuthScheme::ServerSignature,
                other => {
                    return Err(Error::schema(
                        &loc.join("security"),
                        format!("unknown security scheme `{other}`"),
                    ))
                }
            };
            if !operation.auth_schemes.contains(&scheme) {
                operation.auth_schemes.push(scheme);
            }
        }
    }
    operation.auth = if operation.auth_schemes.is_empty() {
        AuthRequirement::None
    } else if any_empty {
        AuthRequirement::Optional
    } else {
        AuthRequirement::Required
    };
    Ok(())
}

fn version_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
