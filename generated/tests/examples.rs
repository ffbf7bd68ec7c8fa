//! Every example in the spec deserialises into its generated type and serialises back to
//! equal JSON. Exclusions live in `tests/example-exclusions.txt`, one per line with its
//! reason; an exclusion that no longer fails is an error, so the list cannot rot.

#[path = "support/dispatch.rs"]
#[rustfmt::skip]
mod dispatch;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// JSON equality that treats `5` and `5.0` as the same number.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn every_spec_example_round_trips() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("generated/ lies in the repo");
    let dir = mxconform_codegen::pin::find_spec_dir(repo).unwrap_or_else(|e| panic!("{e}"));
    let spec = mxconform_codegen::Spec::load(&dir).expect("the pinned spec loads");
    let model = mxconform_codegen::Model::build(&spec).expect("the pinned spec models");
    let examples = mxconform_codegen::examples::collect(&spec, &model).expect("examples resolve");

    let list_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/example-exclusions.txt");
    let list = std::fs::read_to_string(&list_path).expect("the exclusion list exists");
    let mut excluded: BTreeMap<&str, &str> = BTreeMap::new();
    for line in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (id, reason) = line
            .split_once(" | ")
            .unwrap_or_else(|| panic!("exclusion without ` | reason`: {line}"));
        assert!(
            !reason.trim().is_empty(),
            "exclusion without a reason: {line}"
        );
        excluded.insert(id.trim(), reason.trim());
    }

    let mut failures = Vec::new();
    let mut passed = 0;
    let mut seen_excluded = 0;
    for ex in &examples {
        let id = ex.id();
        let outcome: Result<(), String> = match &ex.target {
            None => Err("no generated type stands for this example".into()),
            Some(target) => match dispatch::roundtrip(target, &ex.value) {
                None => Err(format!("no generated type for target {target}")),
                Some(Err(e)) => Err(format!("{target}: {e}")),
                Some(Ok(back)) if same(&back, &ex.value) => Ok(()),
                Some(Ok(back)) => Err(format!(
                    "{target}: the round trip changed the value\n    spec: {}\n    back: {}",
                    ex.value, back
                )),
            },
        };
        match (outcome, excluded.contains_key(id.as_str())) {
            (Ok(()), false) => passed += 1,
            (Err(e), false) => failures.push(format!("{id}\n    {e}")),
            (Err(_), true) => seen_excluded += 1,
            (Ok(()), true) => failures.push(format!(
                "{id}\n    passes now: remove it from tests/example-exclusions.txt"
            )),
        }
    }
    let known: std::collections::BTreeSet<String> = examples.iter().map(|e| e.id()).collect();
    for id in excluded.keys() {
        if !known.contains(*id) {
            failures.push(format!(
                "{id}\n    listed in tests/example-exclusions.txt but the spec has no such example"
            ));
        }
    }
    // Written past the test harness's capture, so the count shows on every run.
    let summary = format!(
        "checked {} spec examples: {passed} round-trip, {seen_excluded} excluded with reasons, {} failing\n",
        examples.len(),
        failures.len()
    );
    std::io::Write::write_all(&mut std::io::stderr(), summary.as_bytes())
        .expect("stderr is writable");
    assert!(
        examples.len() > 400,
        "suspiciously few examples: {}",
        examples.len()
    );
    assert!(
        failures.is_empty(),
        "{} examples fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// An optional field that is `null` reads as absent, as ruma-based clients send it
/// (`auth.session`); a nullable one keeps `null` apart from absent; a required one still
/// refuses `null`.
#[cfg(feature = "client-server")]
#[test]
fn null_in_an_optional_field_is_absent() {
    use mxconform_generated::client_server::registration::register::RequestBody;
    let body: RequestBody = serde_json::from_value(serde_json::json!({
        "username": "a", "password": "b",
        "auth": {"type": "m.login.dummy", "session": null},
        "device_id": null,
    }))
    .expect("null optional fields are accepted");
    let auth = body.auth.expect("auth is present");
    assert_eq!(auth.type_.as_deref(), Some("m.login.dummy"));
    assert_eq!(auth.session, None);
    assert_eq!(body.device_id, None);
    // Written back, the absent field stays absent.
    let again = serde_json::to_value(&auth).unwrap();
    assert_eq!(again, serde_json::json!({"type": "m.login.dummy"}));
    use mxconform_generated::client_server::admin::set_admin_suspend_user::RequestBody as Suspend;
    assert!(serde_json::from_value::<Suspend>(serde_json::json!({"suspended": null})).is_err());
}
