//! The redaction algorithm of each room version (fragments/v1-redactions, v6-redactions,
//! rooms/v8 "Redactions", v9-redactions, v11-redactions): the keys an event keeps.

use serde_json::{Map, Value};

use crate::version::{Redaction, RoomVersion};

/// Top-level keys every version keeps.
const KEPT: &[&str] = &[
    "event_id",
    "type",
    "room_id",
    "sender",
    "state_key",
    "content",
    "hashes",
    "signatures",
    "depth",
    "prev_events",
    "auth_events",
    "origin_server_ts",
];

/// Top-level keys kept before room version 11.
const KEPT_BEFORE_V11: &[&str] = &["prev_state", "origin", "membership"];

/// `event` redacted as `version` says. A value that is not an object is returned as is.
pub fn redact(version: &RoomVersion, event: &Value) -> Value {
    let Value::Object(map) = event else {
        return event.clone();
    };
    let rules = version.redaction;
    let mut out = Map::new();
    for (k, v) in map {
        let keep = KEPT.contains(&k.as_str())
            || (rules < Redaction::V11 && KEPT_BEFORE_V11.contains(&k.as_str()));
        if keep && k != "content" {
            out.insert(k.clone(), v.clone());
        }
    }
    if let Some(content) = map.get("content") {
        let kind = map.get("type").and_then(Value::as_str).unwrap_or("");
        out.insert("content".into(), redact_content(rules, kind, content));
    }
    Value::Object(out)
}

/// Appends the canonical JSON of `event` redacted as `version` says, without `signatures`
/// and `unsigned`, to `out`: the bytes a server signs, and whose sha256 is the reference hash.
/// Written straight from the event, with no redacted copy.
pub fn write_signed_part(version: &RoomVersion, event: &Map<String, Value>, out: &mut String) {
    write_signed_part_with(version, event, None, out)
}

/// [`write_signed_part`], with `hashes` standing for the event's own `hashes` when given.
pub fn write_signed_part_with(
    version: &RoomVersion,
    event: &Map<String, Value>,
    hashes: Option<&Value>,
    out: &mut String,
) {
    let rules = version.redaction;
    let hashes_key = "hashes".to_string();
    let mut top: Vec<(&String, &Value)> = event
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k != "signatures"
                && !(hashes.is_some() && k == "hashes")
                && (KEPT.contains(&k) || (rules < Redaction::V11 && KEPT_BEFORE_V11.contains(&k)))
        })
        .collect();
    if let Some(h) = hashes {
        top.push((&hashes_key, h));
    }
    top.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    out.push('{');
    for (i, (k, v)) in top.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        crate::canonical::write_string(out, k);
        out.push(':');
        if k == "content" {
            write_content(rules, kind, v, out);
        } else {
            crate::canonical::write_value(out, v);
        }
    }
    out.push('}');
}

fn write_content(rules: Redaction, kind: &str, content: &Value, out: &mut String) {
    let Value::Object(content) = content else {
        out.push_str("{}");
        return;
    };
    if kind == "m.room.create" && rules >= Redaction::V11 {
        crate::canonical::write_object(out, content);
        return;
    }
    let keep = kept_content_keys(rules, kind);
    let tpi_signed = (kind == "m.room.member" && rules >= Redaction::V11)
        .then(|| content.get("third_party_invite")?.get("signed"))
        .flatten();
    let mut entries: Vec<(&String, &Value)> = content
        .iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let tpi_key = "third_party_invite".to_string();
    if tpi_signed.is_some() {
        let at = entries
            .binary_search_by(|e| e.0.as_bytes().cmp(tpi_key.as_bytes()))
            .unwrap_or_else(|i| i);
        entries.insert(at, (&tpi_key, &Value::Null));
    }
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        crate::canonical::write_string(out, k);
        out.push(':');
        match (k.as_str(), tpi_signed) {
            ("third_party_invite", Some(signed)) => {
                out.push_str("{\"signed\":");
                crate::canonical::write_value(out, signed);
                out.push('}');
            }
            _ => crate::canonical::write_value(out, v),
        }
    }
    out.push('}');
}

/// The content keys an event of type `kind` keeps (v11 create events keep all).
fn kept_content_keys(rules: Redaction, kind: &str) -> &'static [&'static str] {
    match kind {
        "m.room.member" if rules >= Redaction::V9 => {
            &["membership", "join_authorised_via_users_server"]
        }
        "m.room.member" => &["membership"],
        "m.room.create" => &["creator"],
        "m.room.join_rules" if rules >= Redaction::V8 => &["join_rule", "allow"],
        "m.room.join_rules" => &["join_rule"],
        "m.room.power_levels" if rules >= Redaction::V11 => &[
            "ban",
            "events",
            "events_default",
            "invite",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        ],
        "m.room.power_levels" => &[
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        ],
        "m.room.aliases" if rules == Redaction::V1 => &["aliases"],
        "m.room.history_visibility" => &["history_visibility"],
        "m.room.redaction" if rules >= Redaction::V11 => &["redacts"],
        _ => &[],
    }
}

/// The content an event of type `kind` keeps.
pub fn redact_content(rules: Redaction, kind: &str, content: &Value) -> Value {
    let Value::Object(content) = content else {
        return Value::Object(Map::new());
    };
    if kind == "m.room.create" && rules >= Redaction::V11 {
        return Value::Object(content.clone());
    }
    let keep = kept_content_keys(rules, kind);
    let mut out: Map<String, Value> = content
        .iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // v11: a member event keeps the `signed` part of `third_party_invite`.
    if kind == "m.room.member" && rules >= Redaction::V11 {
        if let Some(signed) = content
            .get("third_party_invite")
            .and_then(|t| t.get("signed"))
        {
            let mut tpi = Map::new();
            tpi.insert("signed".into(), signed.clone());
            out.insert("third_party_invite".into(), Value::Object(tpi));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::ALL;
    use serde_json::json;

    fn v(n: usize) -> &'static RoomVersion {
        &ALL[n - 1]
    }

    #[test]
    fn top_level_keys() {
        let ev = json!({
            "event_id": "$e:x", "type": "m.room.message", "room_id": "!r:x", "sender": "@s:x",
            "content": {"body": "hi"}, "hashes": {"sha256": "h"}, "signatures": {}, "depth": 3,
            "prev_events": [], "auth_events": [], "origin": "x", "origin_server_ts": 1,
            "membership": "join", "prev_state": [], "unsigned": {"age": 1}, "other": true,
        });
        let old = redact(v(10), &ev);
        assert_eq!(old["content"], json!({}));
        assert!(old.get("unsigned").is_none() && old.get("other").is_none());
        assert_eq!(old["origin"], "x");
        assert_eq!(old["membership"], "join");
        let new = redact(v(11), &ev);
        assert!(new.get("origin").is_none() && new.get("membership").is_none());
        assert!(new.get("prev_state").is_none());
        assert_eq!(new["depth"], 3);
    }

    #[test]
    fn content_per_version() {
        let check = |n: usize, kind: &str, content: Value, expected: Value| {
            let ev = json!({"type": kind, "content": content});
            assert_eq!(redact(v(n), &ev)["content"], expected, "v{n} {kind}");
        };
        let member = json!({"membership": "join", "displayname": "A",
            "join_authorised_via_users_server": "@u:x",
            "third_party_invite": {"display_name": "d", "signed": {"token": "t"}}});
        check(
            1,
            "m.room.member",
            member.clone(),
            json!({"membership": "join"}),
        );
        check(
            8,
            "m.room.member",
            member.clone(),
            json!({"membership": "join"}),
        );
        check(
            9,
            "m.room.member",
            member.clone(),
            json!({"membership": "join", "join_authorised_via_users_server": "@u:x"}),
        );
        check(
            11,
            "m.room.member",
            member,
            json!({"membership": "join",
            "join_authorised_via_users_server": "@u:x", "third_party_invite": {"signed": {"token": "t"}}}),
        );
        check(
            11,
            "m.room.member",
            json!({"membership": "invite", "third_party_invite": {"display_name": "d"}}),
            json!({"membership": "invite"}),
        );
        let create = json!({"creator": "@a:x", "room_version": "1", "m.federate": false});
        check(
            10,
            "m.room.create",
            create.clone(),
            json!({"creator": "@a:x"}),
        );
        check(11, "m.room.create", create.clone(), create);
        let jr = json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]});
        check(
            7,
            "m.room.join_rules",
            jr.clone(),
            json!({"join_rule": "restricted"}),
        );
        check(8, "m.room.join_rules", jr.clone(), jr);
        let pl = json!({"ban": 50, "invite": 0, "notifications": {"room": 50}, "users": {}});
        check(
            10,
            "m.room.power_levels",
            pl.clone(),
            json!({"ban": 50, "users": {}}),
        );
        check(
            11,
            "m.room.power_levels",
            pl,
            json!({"ban": 50, "invite": 0, "users": {}}),
        );
        let aliases = json!({"aliases": ["#a:x"]});
        check(5, "m.room.aliases", aliases.clone(), aliases.clone());
        check(6, "m.room.aliases", aliases, json!({}));
        check(
            3,
            "m.room.history_visibility",
            json!({"history_visibility": "shared", "x": 1}),
            json!({"history_visibility": "shared"}),
        );
        check(
            10,
            "m.room.redaction",
            json!({"redacts": "$e", "reason": "r"}),
            json!({}),
        );
        check(
            11,
            "m.room.redaction",
            json!({"redacts": "$e", "reason": "r"}),
            json!({"redacts": "$e"}),
        );
        check(11, "m.room.message", json!({"body": "hi"}), json!({}));
    }

    #[test]
    fn redaction_is_idempotent() {
        let ev = json!({"type": "m.room.member", "content": {"membership": "leave", "reason": "r",
            "third_party_invite": {"signed": {"mxid": "@a:x"}}}, "origin": "x", "unsigned": {}});
        for version in &ALL {
            let once = redact(version, &ev);
            assert_eq!(redact(version, &once), once, "v{}", version.id);
        }
    }
}
