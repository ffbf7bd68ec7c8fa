//! The `mxconform` binary end to end: generate --check, routes, diff, and the compliance run
//! against the embedded reference server (every scenario must pass there, or be listed).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mxconform"));
    c.current_dir(repo());
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxconform-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn generate_check_passes_on_a_fresh_tree() {
    let out = bin().args(["generate", "--check"]).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
}

#[test]
fn routes_as_json() {
    let out = bin().args(["routes", "--format", "json"]).output().expect("runs");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let list = v.as_array().expect("a list");
    assert_eq!(list.len(), 166 + 36 + 9 + 23 + 1);
    let sync = list.iter().find(|r| r["operation_id"] == "sync").expect("sync");
    for key in ["group", "operation_id", "method", "path", "auth", "rate_limited", "added_in"] {
        assert!(sync.get(key).is_some(), "route lacks {key}");
    }
    assert_eq!(sync["path"], "/_matrix/client/v3/sync");
    assert_eq!(sync["auth"], "required");
    let implemented = bin().args(["routes", "--format", "json", "--implemented"]).output().expect("runs");
    let implemented: Value = serde_json::from_slice(&implemented.stdout).expect("JSON");
    let n = implemented.as_array().expect("a list").len();
    assert!(n > 40 && n <= 166, "{n} implemented operations");
}

#[test]
fn diff_between_two_releases() {
    let shared = repo().join("../shared/matrix-spec");
    let out = bin()
        .args(["diff", "--format", "json", "--from"])
        .arg(shared.join("v1.18"))
        .arg("--to")
        .arg(shared.join("v1.19"))
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let added: Vec<&str> = v["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .filter(|o| o["change"] == "added")
        .map(|o| o["route"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(added, ["GET /_matrix/client/v1/mutual_rooms"]);
}

#[test]
fn compliance_run_against_the_embedded_reference_server() {
    let dir = temp("run");
    let (json, md, junit) = (dir.join("r.json"), dir.join("r.md"), dir.join("r.xml"));
    let out = bin()
        .args(["run", "--quiet", "--report-json"])
        .arg(&json)
        .arg("--report-md")
        .arg(&md)
        .arg("--junit")
        .arg(&junit)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON report")).expect("JSON");
    let files = count_scenarios(&repo().join("harness/scenarios"));
    let sweeps = report["areas"]["sweeps"]["scenarios"].as_u64().unwrap_or(0) as usize;
    assert!(sweeps > 300, "the route-table sweeps run as their own area ({sweeps})");
    assert_eq!(report["totals"]["scenarios"], files + sweeps, "every scenario file is a trial");
    assert_eq!(report["totals"]["failed"], 0);
    assert_eq!(report["totals"]["unexpected_passes"], 0);
    assert_eq!(report["server"]["profile"], "reference");
    assert!(report["coverage"]["operations_exercised"].as_u64().unwrap_or(0) >= 20);
    let md = std::fs::read_to_string(&md).expect("markdown report");
    assert!(md.contains("## Areas") && md.contains("| Membership |"), "{md}");
    let junit = std::fs::read_to_string(&junit).expect("junit");
    assert!(junit.starts_with("<?xml"));
    // A name filter narrows the run like cargo test's.
    let out = bin().args(["run", "--quiet", "membership/kick"]).output().expect("runs");
    assert!(out.status.success());
    let list = bin().args(["run", "--list"]).output().expect("runs");
    assert!(String::from_utf8_lossy(&list.stdout).contains("membership/kick_and_ban: test"));
}

#[test]
fn unreachable_server_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let out = bin().args(["run", "--server", &format!("http://127.0.0.1:{port}")]).output().expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot reach homeserver at http://127.0.0.1:{port}")), "{err}");
}

fn count_scenarios(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("scenarios")
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_scenarios(&p)
            } else {
                usize::from(p.extension().is_some_and(|x| x == "yaml"))
            }
        })
        .sum()
}
