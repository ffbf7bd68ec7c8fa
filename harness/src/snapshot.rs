//! Normalised responses for insta snapshots: identifiers become numbered placeholders in order
//! of appearance, tokens and timestamps are redacted, keys are sorted, so that two runs (and
//! two servers) give comparable text.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// Keys whose values differ on every run.
const REDACT_KEYS: &[&str] = &[
    "access_token",
    "refresh_token",
    "device_id",
    "next_batch",
    "prev_batch",
    "start",
    "end",
    "session",
    "txn_id",
    "transaction_id",
    "since",
    "next_token",
    "org.matrix.msc2409.next_batch",
    "content_uri",
    "home_server",
    "well_known",
];
/// Keys that hold times.
const TIME_KEYS: &[&str] = &[
    "origin_server_ts",
    "ts",
    "age",
    "last_active_ago",
    "expires_in_ms",
    "expires_in",
    "last_seen_ts",
    "retry_after_ms",
    "timeout",
];

#[derive(Default)]
struct Normaliser {
    /// Original -> placeholder.
    seen: BTreeMap<String, String>,
    counts: BTreeMap<&'static str, usize>,
    server_name: String,
}

impl Normaliser {
    fn placeholder(&mut self, s: &str) -> Option<String> {
        let kind = match s.chars().next()? {
            '@' if s.contains(':') => "user",
            '!' => "room",
            '$' => "event",
            '#' if s.contains(':') => "alias",
            _ if s.starts_with("mxc://") => "mxc",
            _ => return None,
        };
        if let Some(p) = self.seen.get(s) {
            return Some(p.clone());
        }
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        let p = format!("<{kind}-{n}>");
        self.seen.insert(s.to_string(), p.clone());
        Some(p)
    }

    fn string(&mut self, s: &str) -> String {
        if let Some(p) = self.placeholder(s) {
            return p;
        }
        if !self.server_name.is_empty() && s.contains(&self.server_name) {
            return s.replace(&self.server_name, "<server>");
        }
        s.to_string()
    }

    fn value(&mut self, key: Option<&str>, v: &Value) -> Value {
        if let Some(k) = key {
            if REDACT_KEYS.contains(&k) && !v.is_null() {
                return Value::String("<redacted>".into());
            }
            if TIME_KEYS.contains(&k) && v.is_number() {
                return Value::String("<time>".into());
            }
        }
        match v {
            Value::String(s) => Value::String(self.string(s)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|i| self.value(None, i)).collect())
            }
            Value::Object(map) => {
                let mut sorted: BTreeMap<String, Value> = BTreeMap::new();
                for (k, v) in map {
                    let nk = self.string(k);
                    let nv = self.value(Some(k), v);
                    sorted.insert(nk, nv);
                }
                Value::Object(sorted.into_iter().collect())
            }
            other => other.clone(),
        }
    }
}

/// The normalised text of a response body.
pub fn normalise(v: &Value, server_name: &str) -> String {
    let mut n = Normaliser {
        server_name: server_name.to_string(),
        ..Normaliser::default()
    };
    let out = n.value(None, v);
    serde_json::to_string_pretty(&out).unwrap_or_default()
}

/// Compares with (or records) the snapshot `<dir>/<name>.snap`. `Err` when it differs; outside
/// CI insta writes `<name>.snap.new` for `cargo insta review`.
pub fn assert(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_input_file(dir.join(format!("{name}.snap")));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(name, text));
    }));
    result.map_err(|_| {
        format!(
            "snapshot {} differs from the response; review it with `cargo insta review`",
            dir.join(format!("{name}.snap")).display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalising() {
        let v = json!({
            "room_id": "!abc:hs.example",
            "rooms": {"join": {"!abc:hs.example": {"x": "@al-123:hs.example"}}},
            "event_id": "$e1",
            "origin_server_ts": 1234,
            "next_batch": "s72",
            "other": "!abc:hs.example",
            "url": "https://hs.example/x"
        });
        let text = normalise(&v, "hs.example");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back,
            json!({
                "event_id": "<event-1>",
                "next_batch": "<redacted>",
                "origin_server_ts": "<time>",
                "other": "<room-1>",
                "room_id": "<room-1>",
                "rooms": {"join": {"<room-1>": {"x": "<user-1>"}}},
                "url": "https://<server>/x"
            })
        );
    }
}
