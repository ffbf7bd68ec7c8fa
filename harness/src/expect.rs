//! Matching responses against expectations: subset, equals, exists, absent, contains,
//! length, regex and type checks at JSON pointers. Each failure is a readable sentence.

use serde_json::Value;

use crate::scenario::{Check, Expect};
use crate::template::Vars;

/// Does `actual` contain `expected`? Objects: every expected key, recursively. Arrays: every
/// expected element contained by some actual element, each used at most once, in any order.
pub fn subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| subset(ev, av))),
        (Value::Array(e), Value::Array(a)) => {
            let mut used = vec![false; a.len()];
            e.iter().all(|ev| {
                let found = a
                    .iter()
                    .enumerate()
                    .find(|(i, av)| !used[*i] && subset(ev, av));
                match found {
                    Some((i, _)) => {
                        used[i] = true;
                        true
                    }
                    None => false,
                }
            })
        }
        (Value::Number(e), Value::Number(a)) => e == a || e.as_f64() == a.as_f64(),
        _ => expected == actual,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}… ({} bytes)", &s[..s.floor_char_boundary(300)], s.len())
    } else {
        s
    }
}

/// Runs one check against a body; `Err` says what was wrong.
pub fn check(c: &Check, body: &Value, vars: &Vars) -> Result<(), String> {
    let at = vars.render_text(&c.at)?;
    let pointer = if at == "/" { String::new() } else { at.clone() };
    let found = body.pointer(&pointer);
    let want_absent = c.absent == Some(true) || c.exists == Some(false);
    if want_absent {
        return match found {
            None => Ok(()),
            Some(v) => Err(format!("expected nothing at {at}, found {}", short(v))),
        };
    }
    let Some(v) = found else {
        return Err(format!("nothing at {at}"));
    };
    if let Some(e) = &c.equals {
        let e = vars.render(e)?;
        if !(subset(&e, v) && subset(v, &e)) {
            return Err(format!(
                "at {at}: expected {}, found {}",
                short(&e),
                short(v)
            ));
        }
    }
    if let Some(e) = &c.subset {
        let e = vars.render(e)?;
        if !subset(&e, v) {
            return Err(format!(
                "at {at}: {} does not contain {}",
                short(v),
                short(&e)
            ));
        }
    }
    for (wanted, which) in [(&c.contains, true), (&c.lacks, false)] {
        if let Some(e) = wanted {
            let e = vars.render(e)?;
            let Value::Array(items) = v else {
                return Err(format!("at {at}: expected an array, found {}", short(v)));
            };
            let any = items.iter().any(|item| subset(&e, item));
            if any != which {
                return Err(if which {
                    format!(
                        "at {at}: no element contains {} (elements: {})",
                        short(&e),
                        short(v)
                    )
                } else {
                    format!(
                        "at {at}: an element contains {} (elements: {})",
                        short(&e),
                        short(v)
                    )
                });
            }
        }
    }
    let len = match v {
        Value::Array(a) => Some(a.len()),
        Value::Object(o) => Some(o.len()),
        Value::String(s) => Some(s.chars().count()),
        _ => None,
    };
    if let Some(n) = c.length {
        if len != Some(n) {
            return Err(format!(
                "at {at}: expected length {n}, found {} ({})",
                len.map_or("none".into(), |l| l.to_string()),
                short(v)
            ));
        }
    }
    if let Some(n) = c.min_length {
        if len.is_none_or(|l| l < n) {
            return Err(format!(
                "at {at}: expected length at least {n}, found {}",
                short(v)
            ));
        }
    }
    if let Some(r) = &c.regex {
        let re = regex::Regex::new(&vars.render_text(r)?).map_err(|e| format!("bad regex: {e}"))?;
        match v {
            Value::String(s) if re.is_match(s) => {}
            _ => return Err(format!("at {at}: {} does not match /{r}/", short(v))),
        }
    }
    if let Some(e) = &c.not_equals {
        let e = vars.render(e)?;
        if subset(&e, v) && subset(v, &e) {
            return Err(format!("at {at}: expected anything but {}", short(&e)));
        }
    }
    for (bound, least) in [(&c.at_least, true), (&c.at_most, false)] {
        if let Some(b) = bound {
            let b = vars.render(b)?;
            let (Some(want), Some(have)) = (b.as_f64(), v.as_f64()) else {
                return Err(format!(
                    "at {at}: expected a number to compare with {}, found {}",
                    short(&b),
                    short(v)
                ));
            };
            if (least && have < want) || (!least && have > want) {
                return Err(format!(
                    "at {at}: expected {} {}, found {}",
                    if least { "at least" } else { "at most" },
                    short(&b),
                    short(v)
                ));
            }
        }
    }
    if let Some(t) = &c.type_ {
        let actual = json_type(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            return Err(format!(
                "at {at}: expected a {t}, found a {actual} ({})",
                short(v)
            ));
        }
    }
    Ok(())
}

/// Checks a response (status and body) against a step's expectation.
pub fn response(e: &Expect, status: u16, body: &Value, vars: &Vars) -> Result<(), String> {
    let status_ok = match &e.status {
        Some(s) => s.allows(status),
        None => (200..300).contains(&status),
    };
    if !status_ok {
        let want = match &e.status {
            Some(s) => format!("{s:?}"),
            None => "2xx".into(),
        };
        return Err(format!(
            "expected status {want}, got {status}: {}",
            short(body)
        ));
    }
    if let Some(code) = &e.errcode {
        let got = body.get("errcode").and_then(Value::as_str);
        if got != Some(code.as_str()) {
            return Err(format!(
                "expected errcode {code}, got {}",
                got.unwrap_or("none")
            ));
        }
    }
    if let Some(b) = &e.body {
        let b = vars.render(b)?;
        if !subset(&b, body) {
            return Err(format!(
                "body {} does not contain {}",
                short(body),
                short(&b)
            ));
        }
    }
    for c in &e.checks {
        check(c, body, vars)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(c: Check, body: Value) -> Result<(), String> {
        check(&c, &body, &Vars::default())
    }

    #[test]
    fn subsets() {
        let t =
            |e: Value, a: Value, expected: bool| assert_eq!(subset(&e, &a), expected, "{e} in {a}");
        t(json!({"a": 1}), json!({"a": 1, "b": 2}), true);
        t(json!({"a": 1, "c": 3}), json!({"a": 1}), false);
        t(
            json!([{"t": "x"}]),
            json!([{"t": "y"}, {"t": "x", "z": 1}]),
            true,
        );
        t(json!([1, 1]), json!([1, 2]), false);
        t(json!(1.0), json!(1), true);
        t(json!({"a": [2]}), json!({"a": [1, 2, 3]}), true);
        t(json!("x"), json!({"x": 1}), false);
    }

    #[test]
    fn comparisons() {
        let body = json!({"n": 5, "s": "abc"});
        let c = |f: fn(&mut Check)| {
            let mut c = Check {
                at: "/n".into(),
                ..Check::default()
            };
            f(&mut c);
            run(c, body.clone())
        };
        assert!(c(|c| c.at_least = Some(json!(5))).is_ok());
        assert!(c(|c| c.at_least = Some(json!(6)))
            .unwrap_err()
            .contains("expected at least 6"));
        assert!(c(|c| c.at_most = Some(json!(5))).is_ok());
        assert!(c(|c| c.at_most = Some(json!(4.5))).is_err());
        assert!(c(|c| c.not_equals = Some(json!(4))).is_ok());
        assert!(c(|c| c.not_equals = Some(json!(5)))
            .unwrap_err()
            .contains("anything but 5"));
        let mut s = Check {
            at: "/s".into(),
            at_least: Some(json!(1)),
            ..Check::default()
        };
        assert!(run(s.clone(), body.clone())
            .unwrap_err()
            .contains("expected a number"));
        s.at_least = None;
        s.at_most = Some(json!("{{now_ms}}"));
        assert!(run(s, body.clone()).is_err());
    }

    #[test]
    fn checks() {
        let body = json!({"chunk": [{"type": "m.room.message"}], "s": "abc", "n": 5});
        assert!(run(
            Check {
                at: "/chunk".into(),
                length: Some(1),
                ..Check::default()
            },
            body.clone()
        )
        .is_ok());
        assert!(run(
            Check {
                at: "/chunk".into(),
                length: Some(2),
                ..Check::default()
            },
            body.clone()
        )
        .unwrap_err()
        .contains("expected length 2"));
        assert!(run(
            Check {
                at: "/missing".into(),
                absent: Some(true),
                ..Check::default()
            },
            body.clone()
        )
        .is_ok());
        assert!(run(
            Check {
                at: "/s".into(),
                exists: Some(false),
                ..Check::default()
            },
            body.clone()
        )
        .is_err());
        assert!(run(
            Check {
                at: "/s".into(),
                regex: Some("^a".into()),
                ..Check::default()
            },
            body.clone()
        )
        .is_ok());
        assert!(run(
            Check {
                at: "/s".into(),
                regex: Some("^b".into()),
                ..Check::default()
            },
            body.clone()
        )
        .is_err());
        assert!(run(
            Check {
                at: "/chunk".into(),
                contains: Some(json!({"type": "m.room.message"})),
                ..Check::default()
            },
            body.clone()
        )
        .is_ok());
        assert!(run(
            Check {
                at: "/chunk".into(),
                lacks: Some(json!({"type": "m.room.message"})),
                ..Check::default()
            },
            body.clone()
        )
        .is_err());
        assert!(run(
            Check {
                at: "/n".into(),
                type_: Some("integer".into()),
                ..Check::default()
            },
            body.clone()
        )
        .is_ok());
        assert!(run(
            Check {
                at: "/n".into(),
                type_: Some("string".into()),
                ..Check::default()
            },
            body.clone()
        )
        .is_err());
        assert!(run(
            Check {
                at: "/n".into(),
                equals: Some(json!(5)),
                ..Check::default()
            },
            body.clone()
        )
        .is_ok());
        assert!(run(
            Check {
                at: "/nope".into(),
                ..Check::default()
            },
            body
        )
        .unwrap_err()
        .contains("nothing at /nope"));
    }

    #[test]
    fn responses() {
        let v = Vars::default();
        let e = Expect {
            errcode: Some("M_FORBIDDEN".into()),
            status: Some(crate::scenario::StatusSpec::One(403)),
            ..Expect::default()
        };
        assert!(response(
            &e,
            403,
            &json!({"errcode": "M_FORBIDDEN", "error": "no"}),
            &v
        )
        .is_ok());
        assert!(response(&e, 200, &json!({}), &v)
            .unwrap_err()
            .contains("expected status"));
        assert!(response(&e, 403, &json!({"errcode": "M_UNKNOWN"}), &v)
            .unwrap_err()
            .contains("expected errcode"));
        assert!(response(&Expect::default(), 204, &json!({}), &v).is_ok());
        assert!(response(&Expect::default(), 400, &json!({}), &v).is_err());
    }
}
