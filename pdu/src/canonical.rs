//! Canonical JSON (appendices "Canonical JSON"): the shortest UTF-8 encoding with keys sorted
//! by code point, and the validation room versions 6 and later enforce
//! (fragments/v6-canonical-json): integers only, within ±(2^53 - 1).

use serde_json::{Number, Value};
use std::fmt::Write as _;

/// 2^53 - 1, the largest integer canonical JSON allows.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A value canonical JSON does not allow, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at {path}")]
pub struct CanonicalError {
    /// JSON pointer of the offending value (`""` is the whole value).
    pub path: String,
    pub reason: String,
}

/// The canonical encoding of `value`.
///
/// Numbers: integers print as they are; a float with an integral value within ±(2^53 - 1)
/// prints as that integer (the appendix's example: `-0` is `0`, `1e10` is `10000000000`).
/// Other floats cannot be canonical; they occur in events of room versions 1-5, which
/// servers must still handle, and print in the shortest round-trip form with the exponent
/// notation Python's `repr` uses (`50.57`, `1e+16`), which is what existing servers hash.
pub fn encode(value: &Value) -> String {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value);
    out
}

/// Appends the canonical encoding of `value` to `out`.
pub fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

/// Appends the canonical encoding of an object.
pub fn write_object(out: &mut String, map: &serde_json::Map<String, Value>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    // Byte order of UTF-8 is code point order.
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64 {
            let _ = write!(out, "{}", f as i64);
        } else {
            write_float_like_python(out, f);
        }
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, positional between 1e-4 and 1e16,
/// else `d.ddde±XX`.
fn write_float_like_python(out: &mut String, f: f64) {
    if !f.is_finite() {
        // JSON cannot carry these; serde_json never produces them.
        out.push_str("null");
        return;
    }
    let sci = format!("{:e}", f.abs()); // shortest digits, e.g. "5.057e1"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if f < 0.0 {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let point = exp as usize + 1;
            if digits.len() <= point {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', point - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// Appends `s` as a canonical JSON string.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            0x08 => Some("\\b"),
            0x09 => Some("\\t"),
            0x0a => Some("\\n"),
            0x0c => Some("\\f"),
            0x0d => Some("\\r"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Checks what room versions 6 and later enforce: every number an integer within
/// ±(2^53 - 1). A number written with a fraction or an exponent is refused even when its
/// value is integral, as servers enforcing it do.
pub fn validate(value: &Value) -> Result<(), CanonicalError> {
    let mut path = String::new();
    validate_at(value, &mut path)
}

fn validate_at(value: &Value, path: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Number(n) => {
            let ok = match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i),
                (None, Some(_)) => false,
                _ => {
                    return Err(CanonicalError {
                        path: path.clone(),
                        reason: format!("{n} is not an integer"),
                    })
                }
            };
            if ok {
                Ok(())
            } else {
                Err(CanonicalError {
                    path: path.clone(),
                    reason: format!("{n} is outside ±(2^53 - 1)"),
                })
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "/{i}");
                validate_at(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, v) in map {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                validate_at(v, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(input: &str, expected: &str) {
        let v: Value = serde_json::from_str(input).unwrap();
        assert_eq!(encode(&v), expected, "{input}");
    }

    #[test]
    fn appendix_examples() {
        check("{}", "{}");
        check(r#"{"one": 1, "two": "Two"}"#, r#"{"one":1,"two":"Two"}"#);
        check(r#"{"b": "2", "a": "1"}"#, r#"{"a":"1","b":"2"}"#);
        check(r#"{"b":"2","a":"1"}"#, r#"{"a":"1","b":"2"}"#);
        check(
            r#"{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {"display_name": "John Doe", "three_pids": [{"medium": "email", "address": "john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}"#,
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
        );
        check(r#"{"a": "日本語"}"#, r#"{"a":"日本語"}"#);
        check(r#"{"本": 2, "日": 1}"#, r#"{"日":1,"本":2}"#);
        check(r#"{"a": "\u65E5"}"#, r#"{"a":"日"}"#);
        check(r#"{"a": null}"#, r#"{"a":null}"#);
        check(r#"{"a": -0, "b": 1e10}"#, r#"{"a":0,"b":10000000000}"#);
    }

    #[test]
    fn escapes_follow_the_grammar() {
        check(
            r#"["\u0000\u0001\b\t\n\u000b\f\r\u001f \"\\/\u007f\u2028"]"#,
            "[\"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f \\\"\\\\/\u{7f}\u{2028}\"]",
        );
    }

    #[test]
    fn floats_of_old_room_versions_print_as_python_does() {
        for (f, s) in [
            (50.57, "50.57"),
            (1.5, "1.5"),
            (-0.25, "-0.25"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e16, "10000000000000000"),
            (1.5e16, "1.5e+16"),
            (1e300, "1e+300"),
            (123456.789, "123456.789"),
            (9007199254740993.0, "9007199254740992.0"),
        ] {
            let mut out = String::new();
            write_number(&mut out, &Number::from_f64(f).unwrap());
            if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64 {
                assert_eq!(out, format!("{}", f as i64));
            } else if f == 9007199254740993.0 || f == 1e16 {
                // Integral but beyond 2^53: Python prints "1e+16" and "9007199254740992.0".
                let mut p = String::new();
                write_float_like_python(&mut p, f);
                assert_eq!(p, if f == 1e16 { "1e+16" } else { s });
            } else {
                assert_eq!(out, s, "{f}");
            }
        }
    }

    #[test]
    fn validation_names_the_path() {
        assert!(validate(&json!({"a": [1, -9007199254740991_i64, 9007199254740991_i64]})).is_ok());
        let e = validate(&json!({"content": {"x/y": [0, 1.5]}})).unwrap_err();
        assert_eq!(e.path, "/content/x~1y/1");
        assert!(e.reason.contains("not an integer"), "{e}");
        let e = validate(&json!({"depth": 9007199254740992_i64})).unwrap_err();
        assert_eq!(e.path, "/depth");
        assert!(e.reason.contains("2^53"), "{e}");
        let e = validate(&json!({"big": u64::MAX})).unwrap_err();
        assert_eq!(e.path, "/big");
        let e = validate(&serde_json::from_str::<Value>(r#"{"b": 1e10}"#).unwrap()).unwrap_err();
        assert_eq!(e.path, "/b");
    }
}
