//! `{{name}}` substitution in scenario values: captures, actor fields (`alice.user_id`,
//! `alice.token`, `alice.device_id`, `alice.localpart`, `alice.password`), `server_name`,
//! `unique` (one value per scenario run), `unique_digits` (the same as nine digits, for phone
//! numbers) and `fresh` (a new value at each use).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

static FRESH: AtomicU64 = AtomicU64::new(0);

/// Names and their values for one scenario run.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    pub values: BTreeMap<String, Value>,
    pub unique: String,
}

impl Vars {
    pub fn set(&mut self, name: &str, value: Value) {
        self.values.insert(name.to_string(), value);
    }

    fn lookup(&self, name: &str) -> Result<Value, String> {
        match name {
            "unique" => Ok(Value::String(self.unique.clone())),
            "unique_digits" => {
                // FNV-1a of `unique`: collisions within one run are vanishingly rare.
                let h = self.unique.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                Ok(Value::String(format!("{:09}", h % 1_000_000_000)))
            }
            "now_ms" => Ok(Value::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            )),
            "fresh" => Ok(Value::String(format!(
                "{}-{}",
                self.unique,
                FRESH.fetch_add(1, Ordering::Relaxed)
            ))),
            _ => self.values.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = self.values.keys().map(String::as_str).collect();
                format!(
                    "unknown template name `{{{{{name}}}}}` (known: {})",
                    known.join(", ")
                )
            }),
        }
    }

    /// Substitutes in a string. A string that is exactly one `{{name}}` becomes that value
    /// with its JSON type; otherwise values are spliced in as text.
    pub fn render_str(&self, s: &str) -> Result<Value, String> {
        let trimmed = s.trim();
        if let Some(inner) = trimmed
            .strip_prefix("{{")
            .and_then(|r| r.strip_suffix("}}"))
        {
            if !inner.contains("{{") && !inner.contains("}}") {
                return self.lookup(inner.trim());
            }
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in {s:?}"))?;
            match self.lookup(after[..end].trim())? {
                Value::String(v) => out.push_str(&v),
                other => out.push_str(&other.to_string()),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(Value::String(out))
    }

    pub fn render_text(&self, s: &str) -> Result<String, String> {
        Ok(match self.render_str(s)? {
            Value::String(v) => v,
            other => other.to_string(),
        })
    }

    /// Substitutes in every string of a JSON value, keys included.
    pub fn render(&self, v: &Value) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => self.render_str(s)?,
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.render(i))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    out.insert(self.render_text(k)?, self.render(v)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }
}

/// Decodes standard base64 (padding optional, whitespace ignored); `None` when the text is
/// not base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    mxconform_pdu::base64::decode(&compact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rendering() {
        let mut v = Vars {
            unique: "u1".into(),
            ..Vars::default()
        };
        v.set("room", json!("!r:x"));
        v.set("n", json!(3));
        let check = |input: Value, expected: Value| {
            assert_eq!(v.render(&input).unwrap(), expected, "{input}")
        };
        check(json!("{{room}}"), json!("!r:x"));
        check(json!("{{ n }}"), json!(3));
        check(json!("a {{n}} b {{room}}"), json!("a 3 b !r:x"));
        check(json!({"{{room}}": ["{{unique}}"]}), json!({"!r:x": ["u1"]}));
        assert!(v
            .render(&json!("{{nope}}"))
            .unwrap_err()
            .contains("unknown template name"));
        assert!(v.render(&json!("{{room")).unwrap_err().contains("unclosed"));
        assert_ne!(
            v.render(&json!("{{fresh}}")).unwrap(),
            v.render(&json!("{{fresh}}")).unwrap()
        );
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk").unwrap(), b"hi");
        assert!(base64_decode("a*b").is_none());
    }
}
