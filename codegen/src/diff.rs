//! The API change between two spec versions, computed from their digests: operations and
//! fields added, removed and changed, each judged additive or breaking.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Serialize;

use crate::digest::Entry;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Impact {
    Additive,
    Breaking,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct OperationChange {
    /// `client-server createRoom`, or `event m.room.member`.
    pub operation: String,
    pub change: Change,
    pub impact: Impact,
    /// `GET /_matrix/client/v1/mutual_rooms`, as in the newer version where it exists.
    pub route: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FieldChange {
    pub operation: String,
    pub field: String,
    pub change: Change,
    pub impact: Impact,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ApiDiff {
    pub from: String,
    pub to: String,
    pub operations: Vec<OperationChange>,
    /// Event schemas added or removed (`operation` is `event <type>`).
    pub events: Vec<OperationChange>,
    pub fields: Vec<FieldChange>,
}

struct Side {
    ops: BTreeMap<String, (String, String, String, String)>,
    fields: BTreeMap<(String, String), (String, bool)>,
}

fn side(entries: Vec<Entry>) -> Side {
    let mut s = Side {
        ops: BTreeMap::new(),
        fields: BTreeMap::new(),
    };
    for e in entries {
        match e {
            Entry::Operation {
                key,
                method,
                path,
                auth,
                flags,
            } => {
                s.ops.insert(key, (method, path, auth, flags));
            }
            Entry::Field {
                op_key,
                path,
                ty,
                required,
            } => {
                s.fields.insert((op_key, path), (ty, required));
            }
        }
    }
    s
}

/// Compares two digests (see [`crate::digest::digest`]).
pub fn diff(from_label: &str, from: &str, to_label: &str, to: &str) -> ApiDiff {
    let a = side(crate::digest::parse(from));
    let b = side(crate::digest::parse(to));
    let mut out = ApiDiff {
        from: from_label.into(),
        to: to_label.into(),
        ..ApiDiff::default()
    };
    let keys: BTreeSet<&String> = a.ops.keys().chain(b.ops.keys()).collect();
    for key in keys {
        match (a.ops.get(key), b.ops.get(key)) {
            (None, Some((m, p, _, _))) => out.operations.push(OperationChange {
                operation: key.clone(),
                change: Change::Added,
                impact: Impact::Additive,
                route: format!("{m} {p}"),
                detail: String::new(),
            }),
            (Some((m, p, _, _)), None) => out.operations.push(OperationChange {
                operation: key.clone(),
                change: Change::Removed,
                impact: Impact::Breaking,
                route: format!("{m} {p}"),
                detail: String::new(),
            }),
            (Some(old), Some(new)) if old != new => {
                let mut details = Vec::new();
                let mut breaking = false;
                if (&old.0, &old.1) != (&new.0, &new.1) {
                    details.push(format!("route {} {} -> {} {}", old.0, old.1, new.0, new.1));
                    breaking = true;
                }
                if old.2 != new.2 {
                    details.push(format!("auth {} -> {}", old.2, new.2));
                    breaking |= auth_rank(&new.2) > auth_rank(&old.2);
                }
                if old.3 != new.3 {
                    details.push(format!("{} -> {}", old.3, new.3));
                }
                out.operations.push(OperationChange {
                    operation: key.clone(),
                    change: Change::Changed,
                    impact: if breaking {
                        Impact::Breaking
                    } else {
                        Impact::Additive
                    },
                    route: format!("{} {}", new.0, new.1),
                    detail: details.join("; "),
                });
            }
            _ => {}
        }
    }
    let (events, operations) = std::mem::take(&mut out.operations)
        .into_iter()
        .partition(|o| o.operation.starts_with("event "));
    out.operations = operations;
    out.events = events;
    // Fields of operations that exist on both sides (an added or removed operation says it all).
    let fkeys: BTreeSet<&(String, String)> = a.fields.keys().chain(b.fields.keys()).collect();
    for fk in fkeys {
        if !(a.ops.contains_key(&fk.0) && b.ops.contains_key(&fk.0)) {
            continue;
        }
        let is_request = !fk.1.starts_with("response.") && !fk.0.starts_with("event ");
        let (change, impact) = match (a.fields.get(fk), b.fields.get(fk)) {
            (None, Some((_, required))) => (
                Change::Added,
                if is_request && *required && parent_exists(&a, fk) {
                    Impact::Breaking
                } else {
                    Impact::Additive
                },
            ),
            (Some(_), None) => (Change::Removed, Impact::Breaking),
            (Some((t1, r1)), Some((t2, r2))) if (t1, r1) != (t2, r2) => {
                let compatible = enum_widened(t1, t2) || without_formats(t1) == without_formats(t2);
                let breaking = if t1 != t2 && !compatible {
                    true
                } else if is_request {
                    // A request field that became required breaks senders.
                    !*r1 && *r2
                } else {
                    // A response field that became optional breaks readers.
                    *r1 && !*r2
                };
                (
                    Change::Changed,
                    if breaking {
                        Impact::Breaking
                    } else {
                        Impact::Additive
                    },
                )
            }
            _ => continue,
        };
        let render = |v: Option<&(String, bool)>| {
            v.map(|(t, r)| format!("{t}{}", if *r { "" } else { " (optional)" }))
        };
        out.fields.push(FieldChange {
            operation: fk.0.clone(),
            field: fk.1.clone(),
            change,
            impact,
            from: render(a.fields.get(fk)),
            to: render(b.fields.get(fk)),
        });
    }
    out
}

/// A new required field inside a new optional object does not break anyone.
fn parent_exists(side: &Side, key: &(String, String)) -> bool {
    match key.1.rsplit_once('.') {
        Some((parent, _)) if parent.contains('.') => {
            let parent = parent.trim_end_matches("[]").trim_end_matches("{}");
            side.fields
                .contains_key(&(key.0.clone(), parent.to_string()))
        }
        _ => true,
    }
}

fn auth_rank(auth: &str) -> u8 {
    match auth {
        "required" => 2,
        "optional" => 1,
        _ => 0,
    }
}

/// A type with its string formats dropped: `string(mx-user-id)` -> `string`. A format added
/// or changed documents a string better; the wire type stays a string.
fn without_formats(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(i) = rest.find("string(") {
        out.push_str(&rest[..i + "string".len()]);
        rest = &rest[i + "string(".len()..];
        rest = rest.split_once(')').map_or("", |(_, after)| after);
    }
    out.push_str(rest);
    out
}

/// `enum(a|b)` -> `enum(a|b|c)`: a new value, which readers keep as an unknown one.
fn enum_widened(old: &str, new: &str) -> bool {
    let values = |t: &str| -> Option<BTreeSet<String>> {
        let inner = t.strip_prefix("enum(")?.strip_suffix(')')?;
        Some(inner.split('|').map(str::to_string).collect())
    };
    match (values(old), values(new)) {
        (Some(o), Some(n)) => o.is_subset(&n),
        _ => false,
    }
}

impl ApiDiff {
    pub fn breaking(&self) -> usize {
        self.operations
            .iter()
            .chain(&self.events)
            .filter(|o| o.impact == Impact::Breaking)
            .count()
            + self
                .fields
                .iter()
                .filter(|f| f.impact == Impact::Breaking)
                .count()
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# API changes from {} to {}\n", self.from, self.to);
        let count = |c: Change| self.operations.iter().filter(|o| o.change == c).count();
        let _ = writeln!(
            s,
            "{} operations added, {} removed, {} changed; {} event schemas added or removed; {} field changes; {} breaking.\n",
            count(Change::Added),
            count(Change::Removed),
            count(Change::Changed),
            self.events.len(),
            self.fields.len(),
            self.breaking()
        );
        if !self.operations.is_empty() {
            let _ = writeln!(s, "## Operations\n\n| change | impact | operation | route | detail |\n|---|---|---|---|---|");
            for o in &self.operations {
                let _ = writeln!(
                    s,
                    "| {:?} | {:?} | `{}` | `{}` | {} |",
                    o.change, o.impact, o.operation, o.route, o.detail
                );
            }
            s.push('\n');
        }
        if !self.events.is_empty() {
            let _ = writeln!(
                s,
                "## Event schemas\n\n| change | impact | event |\n|---|---|---|"
            );
            for o in &self.events {
                let _ = writeln!(
                    s,
                    "| {:?} | {:?} | `{}` |",
                    o.change,
                    o.impact,
                    o.operation.trim_start_matches("event ")
                );
            }
            s.push('\n');
        }
        if !self.fields.is_empty() {
            let _ = writeln!(s, "## Fields\n\n| change | impact | operation | field | from | to |\n|---|---|---|---|---|---|");
            for f in &self.fields {
                let cell = |v: &Option<String>| {
                    v.as_deref()
                        .map_or("-".to_string(), |t| format!("`{}`", t.replace('|', "\\|")))
                };
                let _ = writeln!(
                    s,
                    "| {:?} | {:?} | `{}` | `{}` | {} | {} |",
                    f.change,
                    f.impact,
                    f.operation,
                    f.field,
                    cell(&f.from),
                    cell(&f.to)
                );
            }
        }
        s
    }
}
