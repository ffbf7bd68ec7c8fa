//! Loading a matrix-spec `data/` folder: every YAML and JSON file parsed once, `$ref`s made
//! canonical (relative to `data/`), and look-ups of a reference's target with its location.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result};

/// A place in the spec: a file under `data/` and a JSON pointer inside it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    pub file: Arc<str>,
    pub pointer: String,
}

impl Loc {
    pub fn new(file: &str, pointer: impl Into<String>) -> Self {
        Loc {
            file: Arc::from(file),
            pointer: pointer.into(),
        }
    }

    /// This location with one more step of JSON pointer appended.
    pub fn join(&self, step: &str) -> Loc {
        let escaped = step.replace('~', "~0").replace('/', "~1");
        Loc {
            file: self.file.clone(),
            pointer: format!("{}/{}", self.pointer, escaped),
        }
    }

    /// The canonical `$ref` text for this location.
    pub fn as_ref_text(&self) -> String {
        if self.pointer.is_empty() {
            self.file.to_string()
        } else {
            format!("{}#{}", self.file, self.pointer)
        }
    }

    /// Parses a canonical `$ref` text (as written by [`Spec::load`]).
    pub fn parse_ref(text: &str) -> Loc {
        match text.split_once('#') {
            Some((file, pointer)) => Loc::new(file, pointer),
            None => Loc::new(text, ""),
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data/{}#{}", self.file, self.pointer)
    }
}

/// Which release a spec directory holds, as far as it can be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecVersion {
    /// `v1.19`, or `unknown` when neither a `SOURCE` file nor git metadata tells.
    pub version: String,
    /// The matrix-spec commit, or `unknown`.
    pub commit: String,
}

/// A loaded spec: all files of its `data/` folder, parsed, with canonical `$ref`s.
#[derive(Debug)]
pub struct Spec {
    pub root: PathBuf,
    pub version: SpecVersion,
    files: BTreeMap<String, Value>,
}

/// Subfolders of `data/` that codegen reads.
const READ_DIRS: &[&str] = &["api", "event-schemas", "schemas"];

impl Spec {
    /// Loads the spec folder that holds `data/` (a matrix-spec checkout, or one version folder
    /// of the shared copy).
    pub fn load(root: &Path) -> Result<Spec> {
        let data = root.join("data");
        if !data.join("api").is_dir() {
            return Err(Error::NoSpec {
                path: root.to_path_buf(),
            });
        }
        let mut paths = Vec::new();
        for dir in READ_DIRS {
            collect_files(&data, &data.join(dir), &mut paths)?;
        }
        paths.sort();
        // Parsing is most of the load time; two threads halve it on these 2-core machines.
        let (left, right) = paths.split_at(paths.len() / 2);
        let parse_all = |part: &[(String, PathBuf)]| -> Result<Vec<(String, Value)>> {
            part.iter()
                .map(|(rel, full)| Ok((rel.clone(), parse_file(rel, full)?)))
                .collect()
        };
        let (a, b) = std::thread::scope(|s| {
            let handle = s.spawn(|| parse_all(left));
            let b = parse_all(right);
            (handle.join().expect("spec parser thread panicked"), b)
        });
        let mut files = BTreeMap::new();
        for (rel, mut value) in a?.into_iter().chain(b?) {
            canonicalise_refs(&rel, &mut value, &mut String::new())?;
            files.insert(rel, value);
        }
        Ok(Spec {
            root: root.to_path_buf(),
            version: read_version(root),
            files,
        })
    }

    /// Every loaded file, by its path under `data/`.
    pub fn files(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.files.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn file(&self, rel: &str) -> Option<&Value> {
        self.files.get(rel)
    }

    /// The node at a location, or a dangling-reference error naming `from`.
    pub fn get(&self, at: &Loc, from: &Loc) -> Result<&Value> {
        let file = self
            .files
            .get(&*at.file)
            .ok_or_else(|| Error::DanglingRef {
                at: from.clone(),
                target: at.as_ref_text(),
                why: "no such file".into(),
            })?;
        if at.pointer.is_empty() {
            return Ok(file);
        }
        file.pointer(&at.pointer).ok_or_else(|| Error::DanglingRef {
            at: from.clone(),
            target: at.as_ref_text(),
            why: "no such node in that file".into(),
        })
    }

    /// Follows `$ref` chains from a node until a node without `$ref` is found.
    /// Returns that node and its location.
    pub fn deref<'a>(&'a self, mut node: &'a Value, mut loc: Loc) -> Result<(&'a Value, Loc)> {
        for _ in 0..32 {
            match node.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let target = Loc::parse_ref(r);
                    node = self.get(&target, &loc)?;
                    loc = target;
                }
                None => return Ok((node, loc)),
            }
        }
        Err(Error::Schema {
            at: loc,
            what: "a chain of more than 32 `$ref`s (a reference cycle?)".into(),
        })
    }

    /// Resolves `$ref`s inside an example value: the referenced value's keys, then the
    /// example's own keys over them (a shallow merge), recursively.
    pub fn resolve_example(&self, value: &Value, loc: &Loc) -> Result<Value> {
        self.resolve_example_depth(value, loc, 0)
    }

    fn resolve_example_depth(&self, value: &Value, loc: &Loc, depth: usize) -> Result<Value> {
        if depth > 32 {
            return Err(Error::Schema {
                at: loc.clone(),
                what: "example `$ref`s nest more than 32 deep".into(),
            });
        }
        Ok(match value {
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                    let target = Loc::parse_ref(r);
                    let base = self.get(&target, loc)?;
                    match self.resolve_example_depth(base, &target, depth + 1)? {
                        Value::Object(base) => out.extend(base),
                        other if map.len() == 1 => return Ok(other),
                        _ => {
                            return Err(Error::Schema {
                                at: loc.clone(),
                                what: "example `$ref` to a non-object beside other keys".into(),
                            })
                        }
                    }
                }
                for (k, v) in map {
                    if k != "$ref" {
                        out.insert(
                            k.clone(),
                            self.resolve_example_depth(v, &loc.join(k), depth + 1)?,
                        );
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        self.resolve_example_depth(v, &loc.join(&i.to_string()), depth + 1)
                    })
                    .collect::<Result<_>>()?,
            ),
            other => other.clone(),
        })
    }
}

fn collect_files(data: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(data, &path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            let rel = path
                .strip_prefix(data)
                .expect("walked path lies under data/")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, path));
        }
    }
    Ok(())
}

fn parse_file(rel: &str, full: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(full).map_err(|source| Error::Io {
        path: full.to_path_buf(),
        source,
    })?;
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| Error::Yaml {
        file: rel.to_string(),
        line: e.location().map_or(0, |l| l.line()),
        column: e.location().map_or(0, |l| l.column()),
        message: e.to_string(),
    })?;
    yaml_to_json(yaml, &Loc::new(rel, ""))
}

/// YAML to JSON, keeping key order; map keys that YAML reads as numbers or booleans
/// (`200:`) become their text.
fn yaml_to_json(value: serde_yaml::Value, loc: &Loc) -> Result<Value> {
    use serde_yaml::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| Error::Schema {
                        at: loc.clone(),
                        what: format!("number {n} has no JSON form"),
                    })?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| yaml_to_json(v, &loc.join(&i.to_string())))
                .collect::<Result<_>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err(Error::Schema {
                            at: loc.clone(),
                            what: format!("a mapping key that is not a scalar: {other:?}"),
                        })
                    }
                };
                let child = yaml_to_json(v, &loc.join(&key))?;
                out.insert(key, child);
            }
            Value::Object(out)
        }
        Y::Tagged(tagged) => yaml_to_json(tagged.value, loc)?,
    })
}

/// Rewrites every `$ref` string to the canonical form `path/under/data.yaml#/pointer`.
fn canonicalise_refs(file: &str, value: &mut Value, pointer: &mut String) -> Result<()> {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                if k == "$ref" {
                    if let Value::String(r) = v {
                        *r = canonical_ref(file, r).ok_or_else(|| Error::DanglingRef {
                            at: Loc::new(file, pointer.clone()),
                            target: r.clone(),
                            why: "the path climbs above data/".into(),
                        })?;
                    }
                } else {
                    canonicalise_refs(file, v, pointer)?;
                }
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                canonicalise_refs(file, v, pointer)?;
                pointer.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Joins a relative `$ref` onto the directory of `file`, normalising `.` and `..`.
pub(crate) fn canonical_ref(file: &str, reference: &str) -> Option<String> {
    let (path, fragment) = match reference.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (reference, None),
    };
    let target = if path.is_empty() {
        file.to_string()
    } else {
        let mut parts: Vec<&str> = file.split('/').collect();
        parts.pop();
        for seg in path.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    parts.pop()?;
                }
                s => parts.push(s),
            }
        }
        parts.join("/")
    };
    Some(match fragment {
        Some(f) if !f.is_empty() => format!("{target}#{f}"),
        _ => target,
    })
}

/// Reads the version and commit from a `SOURCE` file (the shared copy) or from git metadata
/// (a user's checkout).
fn read_version(root: &Path) -> SpecVersion {
    if let Ok(text) = std::fs::read_to_string(root.join("SOURCE")) {
        let words: Vec<&str> = text.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .map(|s| s.to_string())
        };
        if let (Some(version), Some(commit)) = (after("tag"), after("commit")) {
            return SpecVersion { version, commit };
        }
    }
    let git = root.join(".git");
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        let head = head.trim();
        let commit = match head.strip_prefix("ref: ") {
            Some(r) => std::fs::read_to_string(git.join(r))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| packed_ref(&git, r).unwrap_or_else(|| "unknown".into())),
            None => head.to_string(),
        };
        return SpecVersion {
            version: "unknown".into(),
            commit,
        };
    }
    SpecVersion {
        version: "unknown".into(),
        commit: "unknown".into(),
    }
}

fn packed_ref(git: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    text.lines()
        .find(|l| l.ends_with(name))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_refs() {
        let check = |file: &str, r: &str, expected: Option<&str>| {
            assert_eq!(canonical_ref(file, r).as_deref(), expected, "{file} + {r}");
        };
        check(
            "api/cs/a.yaml",
            "definitions/b.yaml",
            Some("api/cs/definitions/b.yaml"),
        );
        check("api/cs/a.yaml", "../../ev/x.yaml", Some("ev/x.yaml"));
        check(
            "api/cs/a.yaml",
            "#/components/x",
            Some("api/cs/a.yaml#/components/x"),
        );
        check("api/cs/a.yaml", "./b.yaml#/y", Some("api/cs/b.yaml#/y"));
        check("a.yaml", "../../x.yaml", None);
    }
}
