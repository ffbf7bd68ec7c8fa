//! The model codegen emits from: named Rust types, operations and events, built from the
//! spec's schemas with `$ref`s followed, `allOf` merged and every inline object named.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::names::{self, pascal, snake, title_as_name};
use crate::spec::{Loc, Spec, SpecVersion};

/// The five API groups of the spec, in the order they are always processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    ClientServer,
    ServerServer,
    ApplicationService,
    Identity,
    PushGateway,
}

impl Group {
    pub const ALL: [Group; 5] = [
        Group::ClientServer,
        Group::ServerServer,
        Group::ApplicationService,
        Group::Identity,
        Group::PushGateway,
    ];

    /// The folder under `data/api/`, also the Cargo feature name.
    pub fn dir(self) -> &'static str {
        match self {
            Group::ClientServer => "client-server",
            Group::ServerServer => "server-server",
            Group::ApplicationService => "application-service",
            Group::Identity => "identity",
            Group::PushGateway => "push-gateway",
        }
    }

    pub fn module(self) -> &'static str {
        match self {
            Group::ClientServer => "client_server",
            Group::ServerServer => "server_server",
            Group::ApplicationService => "application_service",
            Group::Identity => "identity",
            Group::PushGateway => "push_gateway",
        }
    }

    /// The variant name of `mxconform_generated::Group`.
    pub fn variant(self) -> &'static str {
        match self {
            Group::ClientServer => "ClientServer",
            Group::ServerServer => "ServerServer",
            Group::ApplicationService => "ApplicationService",
            Group::Identity => "Identity",
            Group::PushGateway => "PushGateway",
        }
    }

    /// The page of the rendered spec that documents this group.
    pub fn spec_page(self) -> &'static str {
        match self {
            Group::ClientServer => "client-server-api",
            Group::ServerServer => "server-server-api",
            Group::ApplicationService => "application-service-api",
            Group::Identity => "identity-service-api",
            Group::PushGateway => "push-gateway-api",
        }
    }

    pub fn from_dir(dir: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.dir() == dir)
    }
}

/// A module path such as `["client_server", "directory", "get_room_id_by_alias"]`.
pub type ModPath = Vec<String>;

/// The formats the spec defines for identifiers, each with one shared Rust type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdKind {
    UserId,
    RoomId,
    EventId,
    RoomAlias,
    ServerName,
    MxcUri,
    Base64,
    UrlSafeBase64,
}

impl IdKind {
    pub fn from_format(format: &str) -> Option<IdKind> {
        Some(match format {
            "mx-user-id" => IdKind::UserId,
            "mx-room-id" => IdKind::RoomId,
            "mx-event-id" => IdKind::EventId,
            "mx-room-alias" => IdKind::RoomAlias,
            "mx-server-name" => IdKind::ServerName,
            "mx-mxc-uri" => IdKind::MxcUri,
            "mx-unpadded-base64" => IdKind::Base64,
            "mx-urlsafe-unpadded-base64" => IdKind::UrlSafeBase64,
            _ => return None,
        })
    }

    /// The spec's name for the format.
    pub fn format(self) -> &'static str {
        match self {
            IdKind::UserId => "mx-user-id",
            IdKind::RoomId => "mx-room-id",
            IdKind::EventId => "mx-event-id",
            IdKind::RoomAlias => "mx-room-alias",
            IdKind::ServerName => "mx-server-name",
            IdKind::MxcUri => "mx-mxc-uri",
            IdKind::Base64 => "mx-unpadded-base64",
            IdKind::UrlSafeBase64 => "mx-urlsafe-unpadded-base64",
        }
    }

    pub fn rust_name(self) -> &'static str {
        match self {
            IdKind::UserId => "UserId",
            IdKind::RoomId => "RoomId",
            IdKind::EventId => "EventId",
            IdKind::RoomAlias => "RoomAliasId",
            IdKind::ServerName => "ServerName",
            IdKind::MxcUri => "MxcUri",
            IdKind::Base64 => "Base64",
            IdKind::UrlSafeBase64 => "UrlSafeBase64",
        }
    }
}

/// The shape of a value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ty {
    Bool,
    Int,
    Float,
    String,
    Id(IdKind),
    /// Any JSON value.
    Json,
    /// Any JSON object.
    JsonObject,
    Vec(Box<Ty>),
    /// A JSON object used as a map, with the type of its keys (a string or an identifier).
    Map(Box<Ty>, Box<Ty>),
    /// The value may be `null`.
    Nullable(Box<Ty>),
    /// A type of [`Model::types`], by index.
    Named(usize),
}

#[derive(Clone, Debug)]
pub struct TypeDef {
    pub module: ModPath,
    pub name: String,
    /// Where the schema came from.
    pub origin: Loc,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// Filled in once the schema has been read (lets recursive refs point at it early).
    Pending,
    Struct {
        fields: Vec<Field>,
        rest: Rest,
    },
    /// A string enum; unknown values are kept by a catch-all variant.
    StringEnum {
        variants: Vec<(String, String)>,
    },
    /// `oneOf`, `anyOf` or a `type` list: the first variant that fits.
    Untagged {
        variants: Vec<(String, Ty)>,
    },
}

/// What a struct does with keys it does not name.
#[derive(Clone, Debug, PartialEq)]
pub enum Rest {
    /// `additionalProperties: false`: there are none.
    Closed,
    /// Kept as JSON, so that a round trip loses nothing.
    Keep,
    /// `additionalProperties` or `patternProperties` beside `properties`: a typed map.
    Typed(Ty),
}

#[derive(Clone, Debug)]
pub struct Field {
    pub wire: String,
    pub rust: String,
    pub ty: Ty,
    pub required: bool,
    pub nullable: bool,
    pub added_in: Option<String>,
    pub deprecated: bool,
    pub default: Option<Value>,
    pub format: Option<String>,
    /// A one-value `enum`: the only value the spec allows.
    pub fixed: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthRequirement {
    None,
    Optional,
    Required,
}

impl AuthRequirement {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthRequirement::None => "none",
            AuthRequirement::Optional => "optional",
            AuthRequirement::Required => "required",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthScheme {
    /// A user's access token (or an application service's `as_token`).
    AccessToken,
    /// Only an application service's `as_token`.
    AppServiceToken,
    /// The homeserver's `hs_token`, on the application-service API.
    HomeserverToken,
    /// A federation request signed by the origin server.
    ServerSignature,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub rust: String,
    pub location: ParamLocation,
    pub required: bool,
    pub ty: Ty,
    pub deprecated: bool,
    pub added_in: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ParamLocation {
    Path,
    Query,
    Header,
}

#[derive(Clone, Debug)]
pub enum Body {
    Json {
        ty: Ty,
        schema: Loc,
        required: bool,
    },
    /// A body that is not JSON (media uploads and downloads), with its content types.
    Binary {
        content_types: Vec<String>,
    },
}

#[derive(Clone, Debug)]
pub struct ResponseDef {
    /// `200`, `404`, ... (`default` is not used by the spec).
    pub status: String,
    pub body: Option<Body>,
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub group: Group,
    pub operation_id: String,
    /// The module the operation's items live in.
    pub module: ModPath,
    /// The spec file it is defined in, under `data/`.
    pub file: String,
    pub method: String,
    /// Full path template, prefix included: `/_matrix/client/v3/directory/room/{roomAlias}`.
    pub path: String,
    /// The path key as the spec writes it (two v1.19 keys end in a space).
    pub path_key: String,
    pub auth: AuthRequirement,
    pub auth_schemes: Vec<AuthScheme>,
    pub rate_limited: bool,
    pub added_in: Option<String>,
    pub changed_in: Vec<String>,
    pub deprecated: bool,
    pub params: Vec<Param>,
    pub request: Option<Body>,
    pub responses: Vec<ResponseDef>,
}

impl Operation {
    /// The anchor of this operation in the rendered spec.
    pub fn spec_url(&self, version: &str) -> String {
        let anchor: String = format!("{}{}", self.method, self.path)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect::<String>()
            .to_ascii_lowercase();
        format!(
            "{}{}/#{}",
            spec_base(version),
            self.group.spec_page(),
            anchor
        )
    }

    /// The name of the operation's response type for a status.
    pub fn response_type_name(&self, status: &str) -> String {
        let first_success = self
            .responses
            .iter()
            .find(|r| r.status.starts_with('2'))
            .map(|r| r.status.as_str());
        if Some(status) == first_success {
            "Response".into()
        } else {
            format!(
                "Response{}",
                status
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect::<String>()
            )
        }
    }

    /// Another operation of the spec answers the same method and path (see `path_key`).
    pub fn shares_route(&self) -> bool {
        self.path_key != self.path_key.trim()
    }
}

/// The base URL of the rendered spec of a version (`unstable` when the version is not known).
pub fn spec_base(version: &str) -> String {
    if version.starts_with('v') {
        format!("https://spec.matrix.org/{version}/")
    } else {
        "https://spec.matrix.org/unstable/".into()
    }
}

#[derive(Clone, Debug)]
pub struct EventDef {
    /// The schema file's stem: `m.room.member`, `m.room.message$m.text`.
    pub name: String,
    pub file: String,
    pub ty: Ty,
}

#[derive(Debug)]
pub struct Model {
    pub version: SpecVersion,
    pub types: Vec<TypeDef>,
    pub operations: Vec<Operation>,
    pub events: Vec<EventDef>,
    /// The spec file each file module stands for.
    pub file_modules: BTreeMap<ModPath, String>,
    /// Things in the spec that look wrong but were read anyway, and how.
    pub warnings: Vec<String>,
}

impl Model {
    pub fn build(spec: &Spec) -> Result<Model> {
        let mut b = Builder {
            spec,
            types: Vec::new(),
            by_loc: HashMap::new(),
            taken: HashMap::new(),
            file_modules: BTreeMap::new(),
            warnings: Vec::new(),
        };
        let mut events = Vec::new();
        for (file, _) in spec.files() {
            if let Some(stem) = event_schema_stem(file) {
                let loc = Loc::new(file, "");
                let ty = b.ref_ty(&loc, &loc)?;
                events.push(EventDef {
                    name: stem.to_string(),
                    file: file.to_string(),
                    ty,
                });
            }
        }
        let mut operations = Vec::new();
        for group in Group::ALL {
            let prefix = format!("api/{}/", group.dir());
            let files: Vec<&str> = spec
                .files()
                .map(|(f, _)| f)
                .filter(|f| {
                    f.starts_with(&prefix)
                        && !f[prefix.len()..].contains('/')
                        && f.ends_with(".yaml")
                })
                .collect();
            for file in files {
                crate::ops::read_file(&mut b, group, file, &mut operations)?;
            }
        }
        for t in &b.types {
            if matches!(t.kind, Kind::Pending) {
                return Err(Error::schema(
                    &t.origin,
                    "schema never resolved (internal error)",
                ));
            }
        }
        Ok(Model {
            version: spec.version.clone(),
            types: b.types,
            operations,
            events,
            file_modules: b.file_modules,
            warnings: b.warnings,
        })
    }

    pub fn type_path(&self, idx: usize) -> String {
        let t = &self.types[idx];
        format!("{}::{}", t.module.join("::"), t.name)
    }
}

/// `event-schemas/schema/m.room.member.yaml` -> `m.room.member`; other files -> None.
pub fn event_schema_stem(file: &str) -> Option<&str> {
    let rest = file.strip_prefix("event-schemas/schema/")?;
    if rest.contains('/') {
        return None;
    }
    rest.strip_suffix(".yaml")
}

/// The module a spec file's types live in.
pub fn file_module(file: &str) -> ModPath {
    let without_ext = file.rsplit_once('.').map_or(file, |(a, _)| a);
    let mut parts: Vec<&str> = without_ext.split('/').collect();
    let mut out: ModPath = Vec::new();
    match parts.first().copied() {
        Some("api") => {
            parts.remove(0);
            if let Some(g) = parts.first().and_then(|d| Group::from_dir(d)) {
                parts.remove(0);
                out.push(g.module().to_string());
            }
        }
        Some("event-schemas") => {
            parts.remove(0);
            if parts.first() == Some(&"schema") {
                parts.remove(0);
            }
            out.push("events".into());
        }
        _ => {}
    }
    for p in parts {
        // Event file stems such as `m.room.message$m.text` keep every part.
        out.push(snake(p));
    }
    out
}

/// How the builder names a type it has to create.
#[derive(Clone, Debug)]
pub(crate) struct Hint {
    pub module: ModPath,
    pub name: String,
    /// The enclosing type's name, used to tell apart two inline types of the same name.
    pub parent: Option<String>,
    /// Use exactly this name (operation-level items such as `RequestBody`).
    pub exact: bool,
}

pub(crate) struct Builder<'s> {
    pub spec: &'s Spec,
    pub types: Vec<TypeDef>,
    by_loc: HashMap<Loc, Ty>,
    taken: HashMap<ModPath, BTreeSet<String>>,
    pub file_modules: BTreeMap<ModPath, String>,
    pub warnings: Vec<String>,
}

fn as_obj<'a>(node: &'a Value, loc: &Loc) -> Result<&'a Map<String, Value>> {
    node.as_object().ok_or_else(|| {
        Error::schema(
            loc,
            format!("expected a schema object, found {}", kind_of(node)),
        )
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Keys that may stand beside `$ref` without changing the referenced schema.
fn is_annotation(key: &str) -> bool {
    matches!(
        key,
        "$ref" | "description" | "title" | "example" | "examples" | "$schema" | "deprecated"
    ) || key.starts_with("x-")
}

fn version_of(node: &Map<String, Value>, key: &str) -> Option<String> {
    match node.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl<'s> Builder<'s> {
    /// Reserves a unique name in a module.
    fn alloc_name(&mut self, hint: &Hint) -> String {
        let taken = self.taken.entry(hint.module.clone()).or_default();
        if hint.exact {
            taken.insert(hint.name.clone());
            return hint.name.clone();
        }
        let mut candidates = vec![hint.name.clone()];
        if let Some(p) = &hint.parent {
            if !hint.name.starts_with(p.as_str()) {
                candidates.push(format!("{p}{}", hint.name));
            }
        }
        for c in &candidates {
            if !taken.contains(c) {
                taken.insert(c.clone());
                return c.clone();
            }
        }
        let base = candidates.last().expect("one candidate at least").clone();
        let mut n = 2;
        loop {
            let c = format!("{base}{n}");
            if !taken.contains(&c) {
                taken.insert(c.clone());
                return c;
            }
            n += 1;
        }
    }

    /// Marks names as taken in a module, so inline types pick others.
    pub fn reserve_names(&mut self, module: &ModPath, names: &[String]) {
        self.taken
            .entry(module.clone())
            .or_default()
            .extend(names.iter().cloned());
    }

    fn new_type(&mut self, hint: &Hint, origin: &Loc) -> usize {
        let name = self.alloc_name(hint);
        self.types.push(TypeDef {
            module: hint.module.clone(),
            name,
            origin: origin.clone(),
            kind: Kind::Pending,
        });
        self.types.len() - 1
    }

    /// The type of a schema node.
    pub fn ty(&mut self, node: &Value, loc: &Loc, hint: Hint) -> Result<Ty> {
        if node == &Value::Bool(true) {
            return Ok(Ty::Json);
        }
        let obj = as_obj(node, loc)?;
        if let Some(r) = obj.get("$ref") {
            let r = r
                .as_str()
                .ok_or_else(|| Error::schema(&loc.join("$ref"), "`$ref` must be a string"))?;
            if obj.keys().all(|k| is_annotation(k)) {
                return self.ref_ty(&Loc::parse_ref(r), loc);
            }
        }
        if obj.contains_key("allOf") || obj.contains_key("$ref") {
            let merged = self.flatten(node, loc, 0)?;
            return self.inline(&merged, loc, hint, None);
        }
        self.inline(node, loc, hint, None)
    }

    /// The type of a `$ref` target: one type per target, however often it is referenced.
    pub fn ref_ty(&mut self, target: &Loc, from: &Loc) -> Result<Ty> {
        if let Some(t) = self.by_loc.get(target) {
            return Ok(t.clone());
        }
        let node = self.spec.get(target, from)?;
        let module = file_module(&target.file);
        self.file_modules
            .entry(module.clone())
            .or_insert_with(|| target.file.to_string());
        let obj = as_obj(node, target)?;
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            if obj.keys().all(|k| is_annotation(k)) {
                let t = self.ref_ty(&Loc::parse_ref(r), target)?;
                self.by_loc.insert(target.clone(), t.clone());
                return Ok(t);
            }
        }
        let flat = self.flatten(node, target, 0)?;
        let name = if let Some(stem) =
            event_schema_stem(&target.file).filter(|_| target.pointer.is_empty())
        {
            names::event_type_name(stem)
        } else if target.pointer.is_empty() {
            let stem = target
                .file
                .rsplit('/')
                .next()
                .unwrap_or("")
                .split('.')
                .next()
                .unwrap_or("");
            pascal(stem)
        } else {
            let last = target.pointer.rsplit('/').next().unwrap_or("");
            flat.get("title")
                .and_then(Value::as_str)
                .and_then(title_as_name)
                .unwrap_or_else(|| pascal(last))
        };
        let hint = Hint {
            module,
            name,
            parent: None,
            exact: false,
        };
        if nameable(&flat) {
            let idx = self.new_type(&hint, target);
            self.by_loc.insert(target.clone(), Ty::Named(idx));
            self.inline(&flat, target, hint, Some(idx))?;
            Ok(Ty::Named(idx))
        } else {
            let t = self.inline(&flat, target, hint, None)?;
            self.by_loc.insert(target.clone(), t.clone());
            Ok(t)
        }
    }

    /// Merges `allOf` branches (and a `$ref` with sibling keys) into one schema object.
    fn flatten(&self, node: &Value, loc: &Loc, depth: usize) -> Result<Value> {
        if depth > 16 {
            return Err(Error::schema(
                loc,
                "`allOf` or `$ref` nests more than 16 deep",
            ));
        }
        let obj = as_obj(node, loc)?;
        if !obj.contains_key("allOf") && !obj.contains_key("$ref") {
            return Ok(node.clone());
        }
        let mut acc = Map::new();
        if let Some(r) = obj.get("$ref") {
            let r = r
                .as_str()
                .ok_or_else(|| Error::schema(&loc.join("$ref"), "`$ref` must be a string"))?;
            let target = Loc::parse_ref(r);
            let t = self.flatten(self.spec.get(&target, loc)?, &target, depth + 1)?;
            self.merge(&mut acc, &t, loc, depth)?;
        }
        if let Some(all) = obj.get("allOf") {
            let items = all
                .as_array()
                .ok_or_else(|| Error::schema(&loc.join("allOf"), "`allOf` must be a list"))?;
            for (i, item) in items.iter().enumerate() {
                let iloc = loc.join("allOf").join(&i.to_string());
                let flat = self.flatten(item, &iloc, depth + 1)?;
                self.merge(&mut acc, &flat, &iloc, depth)?;
            }
        }
        let mut own = obj.clone();
        own.remove("allOf");
        own.remove("$ref");
        self.merge(&mut acc, &Value::Object(own), loc, depth)?;
        Ok(Value::Object(acc))
    }

    /// Deep-merges schema `b` into `a`: properties given on both sides merge (after their own
    /// refs are followed), `required` lists join, and every other key of `b` wins.
    fn merge(&self, a: &mut Map<String, Value>, b: &Value, loc: &Loc, depth: usize) -> Result<()> {
        let Some(b) = b.as_object() else {
            return Ok(());
        };
        for (k, v) in b {
            match (k.as_str(), a.get_mut(k), v) {
                ("properties", Some(Value::Object(ap)), Value::Object(bp)) => {
                    for (pk, pv) in bp {
                        let ploc = loc.join("properties").join(pk);
                        match ap.get_mut(pk) {
                            Some(existing) => {
                                let mut e = match self.flatten(existing, &ploc, depth + 1)? {
                                    Value::Object(m) => m,
                                    _ => Map::new(),
                                };
                                let pvf = self.flatten(pv, &ploc, depth + 1)?;
                                self.merge(&mut e, &pvf, &ploc, depth + 1)?;
                                *existing = Value::Object(e);
                            }
                            None => {
                                ap.insert(pk.clone(), pv.clone());
                            }
                        }
                    }
                }
                ("required", Some(Value::Array(ar)), Value::Array(br)) => {
                    for r in br {
                        if !ar.contains(r) {
                            ar.push(r.clone());
                        }
                    }
                }
                _ => {
                    a.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(())
    }

    /// Builds the type of a schema that has no `$ref` or `allOf` left at its top.
    fn inline(
        &mut self,
        node: &Value,
        loc: &Loc,
        hint: Hint,
        reserved: Option<usize>,
    ) -> Result<Ty> {
        let obj = as_obj(node, loc)?;
        let named =
            |b: &mut Builder, hint: &Hint| reserved.unwrap_or_else(|| b.new_type(hint, loc));

        // `type` may be one name or a list of names, `null` among them.
        let mut types: Vec<String> = match obj.get("type") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| {
                    t.as_str().map(str::to_string).ok_or_else(|| {
                        Error::schema(&loc.join("type"), "`type` list holds a non-string")
                    })
                })
                .collect::<Result<_>>()?,
            Some(other) => {
                return Err(Error::schema(
                    &loc.join("type"),
                    format!(
                        "`type` must be a string or a list, found {}",
                        kind_of(other)
                    ),
                ))
            }
        };
        for t in &types {
            if !matches!(
                t.as_str(),
                "string" | "integer" | "number" | "boolean" | "object" | "array" | "null"
            ) {
                return Err(Error::schema(
                    &loc.join("type"),
                    format!("unknown type `{t}`"),
                ));
            }
        }
        let nullable =
            types.iter().any(|t| t == "null") || obj.get("nullable") == Some(&Value::Bool(true));
        types.retain(|t| t != "null");
        let wrap = |t: Ty| {
            if nullable {
                Ty::Nullable(Box::new(t))
            } else {
                t
            }
        };

        if let Some(alts) = obj.get("oneOf").or_else(|| obj.get("anyOf")) {
            let key = if obj.contains_key("oneOf") {
                "oneOf"
            } else {
                "anyOf"
            };
            let items = alts
                .as_array()
                .ok_or_else(|| Error::schema(&loc.join(key), format!("`{key}` must be a list")))?;
            // Alternatives that are all strings (a room id or an alias) are a string.
            let all_strings = items.iter().all(|i| {
                i.get("type").and_then(Value::as_str) == Some("string") && i.get("enum").is_none()
            });
            if all_strings {
                return Ok(wrap(Ty::String));
            }
            let idx = named(self, &hint);
            let name = self.types[idx].name.clone();
            let mut variants = Vec::new();
            let mut used = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let iloc = loc.join(key).join(&i.to_string());
                let vhint = Hint {
                    module: hint.module.clone(),
                    name: item
                        .get("title")
                        .and_then(Value::as_str)
                        .and_then(title_as_name)
                        .unwrap_or_else(|| format!("{name}Variant{}", i + 1)),
                    parent: Some(name.clone()),
                    exact: false,
                };
                let t = self.ty(item, &iloc, vhint)?;
                let vname = unique(&mut used, self.variant_name(&t));
                variants.push((vname, t));
            }
            self.types[idx].kind = Kind::Untagged { variants };
            return Ok(wrap(Ty::Named(idx)));
        }

        if let Some(values) = obj.get("enum") {
            let values = values
                .as_array()
                .ok_or_else(|| Error::schema(&loc.join("enum"), "`enum` must be a list"))?;
            let strings: Option<Vec<&str>> = values.iter().map(Value::as_str).collect();
            if let Some(strings) = strings.filter(|s| s.len() >= 2) {
                let idx = named(self, &hint);
                let mut used = BTreeSet::new();
                used.insert("Other".to_string());
                let variants = strings
                    .iter()
                    .map(|s| (unique(&mut used, pascal(s)), s.to_string()))
                    .collect();
                self.types[idx].kind = Kind::StringEnum { variants };
                return Ok(wrap(Ty::Named(idx)));
            }
        }

        if types.len() > 1 {
            let idx = named(self, &hint);
            let mut variants = Vec::new();
            for t in &types {
                let mut single = obj.clone();
                single.insert("type".into(), Value::String(t.clone()));
                let vhint = Hint {
                    module: hint.module.clone(),
                    name: format!("{}{}", self.types[idx].name, pascal(t)),
                    parent: None,
                    exact: false,
                };
                let vt = self.inline(&Value::Object(single), loc, vhint, None)?;
                variants.push((pascal(t), vt));
            }
            self.types[idx].kind = Kind::Untagged { variants };
            return Ok(wrap(Ty::Named(idx)));
        }

        let ty = types.first().map(String::as_str);
        let is_object = ty == Some("object")
            || (ty.is_none()
                && (obj.contains_key("properties")
                    || obj.contains_key("additionalProperties")
                    || obj.contains_key("patternProperties")));
        if is_object {
            let props = match obj.get("properties") {
                None => None,
                Some(Value::Object(p)) if p.is_empty() => None,
                Some(Value::Object(p)) => Some(p),
                Some(other) => {
                    return Err(Error::schema(
                        &loc.join("properties"),
                        format!("`properties` must be an object, found {}", kind_of(other)),
                    ))
                }
            };
            let rest_schema = self.rest_schema(obj, loc)?;
            let Some(props) = props else {
                return Ok(wrap(match rest_schema {
                    RestSchema::None => Ty::JsonObject,
                    RestSchema::Closed => Ty::JsonObject,
                    RestSchema::Map { key, value, vloc } => {
                        let vhint = Hint {
                            module: hint.module.clone(),
                            name: value_name(&hint.name, value),
                            parent: hint.parent.clone(),
                            exact: false,
                        };
                        Ty::Map(Box::new(key), Box::new(self.ty(value, &vloc, vhint)?))
                    }
                }));
            };
            let idx = named(self, &hint);
            let name = self.types[idx].name.clone();
            let required: BTreeSet<&str> = obj
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut fields = Vec::new();
            let mut used = BTreeSet::new();
            for (wire, prop) in props {
                let ploc = loc.join("properties").join(wire);
                let pobj = as_obj(prop, &ploc)?;
                let field_name = pascal(wire);
                let phint = Hint {
                    module: hint.module.clone(),
                    name: if name.ends_with("Event")
                        && matches!(wire.as_str(), "content" | "prev_content" | "unsigned")
                    {
                        format!("{name}{field_name}")
                    } else {
                        pobj.get("title")
                            .and_then(Value::as_str)
                            .and_then(title_as_name)
                            .unwrap_or(field_name)
                    },
                    parent: Some(name.clone()),
                    exact: false,
                };
                let t = self.ty(prop, &ploc, phint)?;
                let (t, field_nullable) = match t {
                    Ty::Nullable(inner) => (*inner, true),
                    t => (t, false),
                };
                let fixed = pobj
                    .get("enum")
                    .and_then(Value::as_array)
                    .filter(|a| a.len() == 1)
                    .and_then(|a| a[0].as_str())
                    .map(str::to_string);
                let rust = unique(&mut used, snake(wire));
                fields.push(Field {
                    wire: wire.clone(),
                    rust,
                    ty: t,
                    required: required.contains(wire.as_str()),
                    nullable: field_nullable,
                    added_in: version_of(pobj, "x-addedInMatrixVersion"),
                    deprecated: pobj.get("deprecated") == Some(&Value::Bool(true)),
                    default: pobj.get("default").cloned(),
                    format: pobj
                        .get("format")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    fixed,
                });
            }
            let rest = match rest_schema {
                RestSchema::None => Rest::Keep,
                RestSchema::Closed => Rest::Closed,
                RestSchema::Map { value, vloc, .. } => {
                    let vhint = Hint {
                        module: hint.module.clone(),
                        name: format!("{name}Value"),
                        parent: None,
                        exact: false,
                    };
                    Rest::Typed(self.ty(value, &vloc, vhint)?)
                }
            };
            self.types[idx].kind = Kind::Struct { fields, rest };
            return Ok(wrap(Ty::Named(idx)));
        }

        Ok(wrap(match ty {
            Some("array") => match obj.get("items") {
                Some(items) => {
                    let ihint = Hint {
                        module: hint.module.clone(),
                        name: items
                            .get("title")
                            .and_then(Value::as_str)
                            .and_then(title_as_name)
                            .unwrap_or_else(|| singular(&hint.name)),
                        parent: hint.parent.clone(),
                        exact: false,
                    };
                    Ty::Vec(Box::new(self.ty(items, &loc.join("items"), ihint)?))
                }
                None => Ty::Vec(Box::new(Ty::Json)),
            },
            Some("string") => match obj
                .get("format")
                .and_then(Value::as_str)
                .and_then(IdKind::from_format)
            {
                Some(k) => Ty::Id(k),
                None => Ty::String,
            },
            Some("integer") => Ty::Int,
            Some("number") => Ty::Float,
            Some("boolean") => Ty::Bool,
            _ => Ty::Json,
        }))
    }

    fn rest_schema<'a>(&self, obj: &'a Map<String, Value>, loc: &Loc) -> Result<RestSchema<'a>> {
        if let Some(pp) = obj.get("patternProperties") {
            let pp = pp.as_object().ok_or_else(|| {
                Error::schema(
                    &loc.join("patternProperties"),
                    "`patternProperties` must be an object",
                )
            })?;
            let key = match obj
                .get("x-pattern-format")
                .and_then(Value::as_str)
                .and_then(IdKind::from_format)
            {
                Some(k) if pp.len() == 1 => Ty::Id(k),
                _ => Ty::String,
            };
            return Ok(match pp.len() {
                0 => RestSchema::None,
                1 => {
                    let (pattern, value) = pp.iter().next().expect("one pattern");
                    RestSchema::Map {
                        key,
                        value,
                        vloc: loc.join("patternProperties").join(pattern),
                    }
                }
                _ => RestSchema::Map {
                    key,
                    value: &Value::Bool(true),
                    vloc: loc.join("patternProperties"),
                },
            });
        }
        Ok(match obj.get("additionalProperties") {
            None | Some(Value::Bool(true)) => RestSchema::None,
            Some(Value::Bool(false)) => RestSchema::Closed,
            Some(v @ Value::Object(m)) if !m.is_empty() => RestSchema::Map {
                key: Ty::String,
                value: v,
                vloc: loc.join("additionalProperties"),
            },
            Some(Value::Object(_)) => RestSchema::Map {
                key: Ty::String,
                value: &Value::Bool(true),
                vloc: loc.join("additionalProperties"),
            },
            Some(other) => {
                return Err(Error::schema(
                    &loc.join("additionalProperties"),
                    format!(
                        "`additionalProperties` must be a boolean or a schema, found {}",
                        kind_of(other)
                    ),
                ))
            }
        })
    }

    fn variant_name(&self, t: &Ty) -> String {
        match t {
            Ty::Bool => "Bool".into(),
            Ty::Int => "Integer".into(),
            Ty::Float => "Number".into(),
            Ty::String => "String".into(),
            Ty::Id(k) => k.rust_name().into(),
            Ty::Json => "Value".into(),
            Ty::JsonObject => "Object".into(),
            Ty::Vec(_) => "Array".into(),
            Ty::Map(..) => "Map".into(),
            Ty::Nullable(inner) => self.variant_name(inner),
            Ty::Named(i) => self.types[*i].name.clone(),
        }
    }
}

enum RestSchema<'a> {
    /// Nothing said: unknown keys are kept.
    None,
    Closed,
    Map {
        key: Ty,
        value: &'a Value,
        vloc: Loc,
    },
}

/// Whether a (flattened) schema becomes a named Rust type.
fn nameable(node: &Value) -> bool {
    let Some(obj) = node.as_object() else {
        return false;
    };
    if let Some(alts) = obj
        .get("oneOf")
        .or_else(|| obj.get("anyOf"))
        .and_then(Value::as_array)
    {
        let all_strings = alts.iter().all(|i| {
            i.get("type").and_then(Value::as_str) == Some("string") && i.get("enum").is_none()
        });
        return !all_strings;
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array) {
        if values.len() >= 2 && values.iter().all(Value::is_string) {
            return true;
        }
    }
    if let Some(Value::Array(types)) = obj.get("type") {
        if types.iter().filter(|t| t.as_str() != Some("null")).count() > 1 {
            return true;
        }
    }
    let is_object = match obj.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t.as_str() == Some("object")),
        _ => true,
    };
    is_object
        && obj
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|p| !p.is_empty())
}

fn unique(used: &mut BTreeSet<String>, name: String) -> String {
    if used.insert(name.clone()) {
        return name;
    }
    let mut n = 2;
    loop {
        let c = format!("{name}{n}");
        if used.insert(c.clone()) {
            return c;
        }
        n += 1;
    }
}

fn singular(name: &str) -> String {
    if let Some(s) = name.strip_suffix("ies") {
        return format!("{s}y");
    }
    match name.strip_suffix('s') {
        Some(s) if s.len() > 2 && !s.ends_with('s') => s.to_string(),
        _ => format!("{name}Item"),
    }
}

fn value_name(map_name: &str, value: &Value) -> String {
    value
        .get("title")
        .and_then(Value::as_str)
        .and_then(title_as_name)
        .unwrap_or_else(|| format!("{}Value", singular(map_name)))
}
