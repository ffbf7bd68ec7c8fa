//! codegen's integration tests: generated/ is fresh and deterministic, every spec version
//! loads with the operation counts the spec has, fixture specs (one schema construct each)
//! give their snapshotted output, malformed specs fail with file and JSON pointer, and the
//! API digests and diffs between versions are pinned.

use std::path::{Path, PathBuf};

use mxconform_codegen::{diff, digest, generate, pin, Group, Model, Spec};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("codegen/ lies in the repo")
        .to_path_buf()
}

fn pinned_spec() -> Spec {
    let dir = pin::find_spec_dir(&repo()).unwrap_or_else(|e| panic!("{e}"));
    Spec::load(&dir).expect("the pinned spec loads")
}

/// The shared copy of a spec version beside the repo (CI and these machines have it).
fn shared_spec(version: &str) -> Spec {
    let dir = repo()
        .join("..")
        .join("shared")
        .join("matrix-spec")
        .join(version);
    Spec::load(&dir).unwrap_or_else(|e| panic!("spec {version}: {e}"))
}

#[test]
fn generated_is_fresh() {
    let spec = pinned_spec();
    let files = generate(&spec).expect("the pinned spec generates");
    let out = repo().join("generated");
    let stale = mxconform_codegen::stale_files(&out, &files);
    if stale.is_empty() {
        return;
    }
    // Like rust-analyzer's `ensure_file_contents`: outside CI, bring the files up to date (so
    // this test regenerates even when a broken generated/ keeps the `mxconform` binary from
    // building), then fail so that the change is reviewed and committed.
    let updated = if std::env::var_os("CI").is_none() {
        mxconform_codegen::write_files(&out, &files).is_ok()
    } else {
        false
    };
    panic!(
        "generated/ is stale ({} files differ: {}){}; run `cargo run -p mxconform -- generate`, review the diff and commit it",
        stale.len(),
        stale.join(", "),
        if updated { "; they have now been rewritten" } else { "" }
    );
}

#[test]
fn generation_is_deterministic() {
    let spec = pinned_spec();
    let a = generate(&spec).expect("generates");
    let b = generate(&Spec::load(&spec.root).expect("loads again")).expect("generates again");
    assert_eq!(a.len(), b.len());
    for (path, text) in &a {
        assert!(b.get(path) == Some(text), "{path} differs between two runs");
    }
}

#[test]
fn operation_and_event_counts_match_the_spec() {
    // Counted independently of this project (see the shared copy's README).
    let table: &[(&str, [usize; 5], usize)] = &[
        ("v1.16", [160, 37, 9, 23, 1], 72),
        ("v1.17", [160, 37, 9, 23, 1], 72),
        ("v1.18", [165, 36, 9, 23, 1], 75),
        ("v1.19", [166, 36, 9, 23, 1], 79),
    ];
    for (version, ops, events) in table {
        let spec = shared_spec(version);
        assert_eq!(&spec.version.version, version);
        let model = Model::build(&spec).unwrap_or_else(|e| panic!("{version}: {e}"));
        for (g, expected) in Group::ALL.iter().zip(ops) {
            let n = model.operations.iter().filter(|o| o.group == *g).count();
            assert_eq!(n, *expected, "{version} {} operations", g.dir());
        }
        assert_eq!(model.events.len(), *events, "{version} event schemas");
        // Every version also generates.
        generate(&spec).unwrap_or_else(|e| panic!("{version}: {e}"));
    }
}

#[test]
fn path_keys_with_a_trailing_space_share_a_route() {
    let model = Model::build(&pinned_spec()).expect("models");
    let sharing: Vec<(&str, &str, &str)> = model
        .operations
        .iter()
        .filter(|o| o.shares_route())
        .map(|o| (o.operation_id.as_str(), o.method.as_str(), o.path.as_str()))
        .collect();
    assert_eq!(
        sharing,
        [
            (
                "inviteUser",
                "post",
                "/_matrix/client/v3/rooms/{roomId}/invite"
            ),
            ("peekEvents", "get", "/_matrix/client/v3/events"),
        ]
    );
    // Each shares its route with exactly one other operation, whose key has no space.
    for (id, method, path) in sharing {
        let twins: Vec<&str> = model
            .operations
            .iter()
            .filter(|o| o.method == method && o.path == path && o.operation_id != id)
            .map(|o| o.operation_id.as_str())
            .collect();
        assert_eq!(twins.len(), 1, "{id} twins: {twins:?}");
    }
}

#[test]
fn route_facts_of_known_operations() {
    let model = Model::build(&pinned_spec()).expect("models");
    let find = |id: &str| {
        model
            .operations
            .iter()
            .find(|o| o.operation_id == id)
            .unwrap_or_else(|| panic!("{id}"))
    };
    let check = |id: &str,
                 method: &str,
                 path: &str,
                 auth: &str,
                 rate_limited: bool,
                 added_in: Option<&str>| {
        let o = find(id);
        assert_eq!(
            (
                o.method.as_str(),
                o.path.as_str(),
                o.auth.as_str(),
                o.rate_limited,
                o.added_in.as_deref()
            ),
            (method, path, auth, rate_limited, added_in),
            "{id}"
        );
    };
    check(
        "getRoomIdByAlias",
        "get",
        "/_matrix/client/v3/directory/room/{roomAlias}",
        "none",
        false,
        None,
    );
    check(
        "sendMessage",
        "put",
        "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}",
        "required",
        false,
        None,
    );
    check(
        "login",
        "post",
        "/_matrix/client/v3/login",
        "none",
        true,
        None,
    );
    check(
        "getVersions",
        "get",
        "/_matrix/client/versions",
        "optional",
        false,
        None,
    );
    check(
        "getMutualRooms",
        "get",
        "/_matrix/client/v1/mutual_rooms",
        "required",
        true,
        Some("1.19"),
    );
    check(
        "getRoomSummary",
        "get",
        "/_matrix/client/v1/room_summary/{roomIdOrAlias}",
        "optional",
        false,
        Some("1.15"),
    );
    let spec_url = find("sync").spec_url("v1.19");
    assert_eq!(
        spec_url,
        "https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3sync"
    );
}

/// Generated output of a fixture spec, all files in one text.
fn fixture_output(dir: &Path) -> String {
    let spec = Spec::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let files = generate(&spec).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut out = String::new();
    for (path, text) in &files {
        let interesting = path.starts_with("src/client_server/")
            || (path.starts_with("src/events/") && !path.ends_with("mod.rs"))
            || path == "json-schema/client-server.json";
        if interesting {
            out.push_str(&format!("==> {path} <==\n{text}\n"));
        }
    }
    out
}

#[test]
fn fixture_specs_give_their_snapshotted_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("fixtures exist")
        .flatten()
        .filter(|e| e.path().join("data").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 7, "fixtures: {names:?}");
    for name in names {
        let dir = root.join(&name);
        let output = fixture_output(&dir);
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(&dir);
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.bind(|| insta::assert_snapshot!("expected", output));
    }
}

#[test]
fn fixture_examples_resolve_their_refs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/request_and_events");
    let spec = Spec::load(&dir).expect("loads");
    let model = Model::build(&spec).expect("models");
    let examples = mxconform_codegen::examples::collect(&spec, &model).expect("collects");
    let request = examples
        .iter()
        .find(|e| e.target.as_deref() == Some("client-server/sendThing/request"))
        .expect("the request example");
    // `$ref` inside an example: the referenced keys, then the example's own over them.
    assert_eq!(
        request.value,
        serde_json::json!({"type": "m.thing", "content": {"body": "hi"}})
    );
}

/// Writes a throw-away spec with the given files under `data/` and loads and models it.
fn build_temp(name: &str, files: &[(&str, &str)]) -> Result<Model, String> {
    let dir = std::env::temp_dir().join(format!("mxconform-codegen-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (rel, text) in files {
        let p = dir.join("data").join(rel);
        std::fs::create_dir_all(p.parent().expect("has a parent")).expect("temp dir");
        std::fs::write(&p, text).expect("temp file");
    }
    let result = Spec::load(&dir)
        .and_then(|s| Model::build(&s))
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

const MINI_HEAD: &str = "openapi: 3.1.0\ninfo: {title: t, version: '1'}\nservers:\n  - url: x\n    variables:\n      basePath:\n        default: /_matrix/client/v3\npaths:\n  /thing:\n    get:\n      operationId: getThing\n      responses:\n        \"200\":\n          description: ok\n          content:\n            application/json:\n              schema:\n";

#[test]
fn malformed_specs_name_the_file_and_pointer() {
    let check = |name: &str, files: &[(&str, &str)], expected: &[&str]| {
        let err = build_temp(name, files).expect_err(name);
        for e in expected {
            assert!(err.contains(e), "{name}: error `{err}` lacks `{e}`");
        }
    };
    let schema_ptr = "#/paths/~1thing/get/responses/200/content/application~1json/schema";
    check(
        "bad-yaml",
        &[(
            "api/client-server/bad.yaml",
            "openapi: 3.1.0\npaths: [unclosed\n",
        )],
        &["data/api/client-server/bad.yaml:", "invalid YAML"],
    );
    check(
        "dangling-ref",
        &[(
            "api/client-server/a.yaml",
            &format!("{MINI_HEAD}                $ref: definitions/missing.yaml\n"),
        )],
        &[
            "data/api/client-server/a.yaml",
            schema_ptr,
            "dangling $ref",
            "api/client-server/definitions/missing.yaml",
            "no such file",
        ],
    );
    check(
        "dangling-fragment",
        &[
            (
                "api/client-server/a.yaml",
                &format!("{MINI_HEAD}                $ref: b.yaml#/nowhere\n"),
            ),
            ("api/client-server/b.yaml", "type: object\n"),
        ],
        &[
            schema_ptr,
            "api/client-server/b.yaml#/nowhere",
            "no such node",
        ],
    );
    check(
        "unknown-type",
        &[(
            "api/client-server/a.yaml",
            &format!("{MINI_HEAD}                type: object\n                properties:\n                  x:\n                    type: strnig\n"),
        )],
        &[&format!("{schema_ptr}/properties/x/type"), "unknown type `strnig`"],
    );
    check(
        "no-operation-id",
        &[(
            "api/client-server/a.yaml",
            &MINI_HEAD.replace("      operationId: getThing\n", ""),
        )],
        &[
            "data/api/client-server/a.yaml#/paths/~1thing/get",
            "no `operationId`",
        ],
    );
    check(
        "path-param-not-in-path",
        &[(
            "api/client-server/a.yaml",
            &MINI_HEAD.replace(
                "      responses:",
                "      parameters:\n        - {in: path, name: roomId, required: true, schema: {type: string}}\n      responses:",
            ),
        )],
        &["path parameter `roomId` is not in the path"],
    );
    let missing = Spec::load(Path::new("/nonexistent/spec"))
        .expect_err("no spec there")
        .to_string();
    assert!(
        missing.contains("/nonexistent/spec") && missing.contains("data/api/"),
        "{missing}"
    );
}

#[test]
fn api_surface_digest_per_version() {
    for version in ["v1.16", "v1.17", "v1.18", "v1.19"] {
        let model = Model::build(&shared_spec(version)).expect("models");
        let text = digest::digest(&model);
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(repo().join("snapshots").join("api-surface"));
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.bind(|| insta::assert_snapshot!(version, text));
    }
}

fn version_diff(from: &str, to: &str) -> diff::ApiDiff {
    let a = digest::digest(&Model::build(&shared_spec(from)).expect("models"));
    let b = digest::digest(&Model::build(&shared_spec(to)).expect("models"));
    diff::diff(from, &a, to, &b)
}

fn ops_with(d: &diff::ApiDiff, change: diff::Change) -> Vec<(String, String)> {
    d.operations
        .iter()
        .filter(|o| o.change == change)
        .map(|o| (o.operation.clone(), o.route.clone()))
        .collect()
}

#[test]
fn diff_v1_18_to_v1_19_adds_exactly_mutual_rooms() {
    let d = version_diff("v1.18", "v1.19");
    assert_eq!(
        ops_with(&d, diff::Change::Added),
        [(
            "client-server getMutualRooms".to_string(),
            "GET /_matrix/client/v1/mutual_rooms".to_string()
        )]
    );
    assert!(ops_with(&d, diff::Change::Removed).is_empty());
    let events: Vec<&str> = d.events.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(
        events,
        [
            "event m.image_pack.rooms",
            "event m.key_backup",
            "event m.room.image_pack",
            "event m.room_key_bundle"
        ]
    );
    // Formats added to strings are documentation, not a break.
    assert!(d
        .fields
        .iter()
        .any(|f| f.from.as_deref() == Some("string") && f.impact == diff::Impact::Additive));
}

#[test]
fn diff_v1_17_to_v1_18_adds_five_client_server_operations() {
    let d = version_diff("v1.17", "v1.18");
    let added: Vec<String> = ops_with(&d, diff::Change::Added)
        .into_iter()
        .filter(|(op, _)| op.starts_with("client-server "))
        .map(|(_, route)| route)
        .collect();
    assert_eq!(
        added,
        [
            "GET /_matrix/client/v1/admin/lock/{userId}",
            "GET /_matrix/client/v1/admin/suspend/{userId}",
            "GET /.well-known/matrix/policy_server",
            "PUT /_matrix/client/v1/admin/lock/{userId}",
            "PUT /_matrix/client/v1/admin/suspend/{userId}",
        ]
    );
    // Federation: the v1 send_join and send_leave went, the policy server's sign came.
    let removed: Vec<String> = ops_with(&d, diff::Change::Removed)
        .into_iter()
        .map(|(op, _)| op)
        .collect();
    assert_eq!(
        removed,
        ["server-server sendJoinV1", "server-server sendLeaveV1"]
    );
    assert!(d
        .operations
        .iter()
        .all(|o| o.change != diff::Change::Removed || o.impact == diff::Impact::Breaking));
}

#[test]
fn no_diff_between_a_version_and_itself() {
    let d = version_diff("v1.19", "v1.19");
    assert!(d.operations.is_empty() && d.events.is_empty() && d.fields.is_empty());
}
