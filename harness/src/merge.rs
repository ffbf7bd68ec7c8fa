//! `mxconform merge`: JSON reports of parts of one run (`run --partition K/N` on several
//! machines, or any runs of one server and profile) read back and made into the report one run
//! of all their tests gives: totals and areas summed, operations exercised united (so the
//! uncovered ones are those no part exercised), scenario results side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::partition::Partition;
use crate::report::{AreaResult, Coverage, GroupCoverage, Report, ScenarioResult, Totals};

/// One report to merge, with the file it came from (for errors).
#[derive(Debug)]
pub struct Part {
    pub file: String,
    pub report: Report,
}

/// Reads a JSON report. A file that is not JSON says where (line and column); one that is
/// JSON but not a report says where too, as a JSON pointer.
pub fn read(path: &Path) -> Result<Part> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
        return Err(Error::Other(format!("{file}: not JSON: {e}")));
    }
    let report = serde_json::from_str::<Report>(&text).map_err(|e| {
        let at = pointer_at(&text, offset_of(&text, e.line(), e.column()));
        Error::Other(format!(
            "{file}: not an mxconform JSON report: at `{}`: {e}",
            if at.is_empty() { "/" } else { &at }
        ))
    })?;
    Ok(Part { file, report })
}

/// The report of all the parts' tests. Refuses parts of different servers, profiles or route
/// tables, parts whose tests overlap, and a set of partitions with one missing.
pub fn merge(parts: &[Part]) -> Result<Report> {
    let Some(first) = parts.first() else {
        return Err(Error::Other("no reports to merge".into()));
    };
    for part in parts {
        adds_up(part)?;
        same_run(first, part)?;
    }
    partitions_complete(parts)?;
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for part in parts {
        for sc in &part.report.scenarios {
            if let Some(other) = seen.insert(&sc.name, &part.file) {
                return Err(Error::Other(format!(
                    "the test `{}` is in both {other} and {}: the reports overlap (the same partition or run twice?)",
                    sc.name, part.file
                )));
            }
        }
    }
    let mut totals = Totals::default();
    let mut areas: BTreeMap<String, AreaResult> = BTreeMap::new();
    let mut scenarios: Vec<ScenarioResult> = Vec::new();
    let mut exercised: BTreeSet<String> = BTreeSet::new();
    let mut reasons = BTreeMap::new();
    for part in parts {
        let r = &part.report;
        add(&mut totals, &r.totals);
        for (area, t) in &r.areas {
            add(areas.entry(area.clone()).or_default(), t);
        }
        scenarios.extend(r.scenarios.iter().cloned());
        exercised.extend(r.coverage.exercised.iter().cloned());
        reasons.extend(r.coverage.reasons.clone());
    }
    scenarios.sort_by(|a, b| a.name.cmp(&b.name));
    // Uncovered in the whole run: uncovered in every part.
    let uncovered_in_all = |lists: Vec<&Vec<String>>| -> Vec<String> {
        let (head, rest) = lists.split_first().expect("one part at least");
        head.iter()
            .filter(|op| rest.iter().all(|l| l.contains(op)))
            .cloned()
            .collect()
    };
    let uncovered = uncovered_in_all(parts.iter().map(|p| &p.report.coverage.uncovered).collect());
    let mut groups = BTreeMap::new();
    for (name, g) in &first.report.coverage.groups {
        let missing = uncovered_in_all(
            parts
                .iter()
                .filter_map(|p| p.report.coverage.groups.get(name))
                .map(|g| &g.uncovered)
                .collect(),
        );
        groups.insert(
            name.clone(),
            GroupCoverage {
                exercised: g.total - missing.len(),
                total: g.total,
                uncovered: missing,
            },
        );
    }
    let still_uncovered = |op: &String| match op.split_once('/') {
        Some((group, id)) => groups
            .get(group)
            .is_some_and(|g: &GroupCoverage| g.uncovered.iter().any(|u| u == id)),
        None => uncovered.contains(op),
    };
    reasons.retain(|op, _| still_uncovered(op));
    let total = first.report.coverage.operations_total;
    Ok(Report {
        server: first.report.server.clone(),
        spec_version: first.report.spec_version.clone(),
        totals,
        coverage: Coverage {
            operations_total: total,
            operations_exercised: total - uncovered.len(),
            exercised: exercised.into_iter().collect(),
            uncovered,
            reasons,
            groups,
        },
        areas,
        scenarios,
        partition: None,
    })
}

fn add(sum: &mut Totals, t: &Totals) {
    sum.scenarios += t.scenarios;
    sum.passed += t.passed;
    sum.failed += t.failed;
    sum.expected_failures += t.expected_failures;
    sum.unexpected_passes += t.unexpected_passes;
    sum.skipped += t.skipped;
}

/// A part's totals and areas are those of its scenario results (else summing them would not
/// give the whole run's).
fn adds_up(part: &Part) -> Result<()> {
    let r = &part.report;
    let mut totals = Totals::default();
    let mut areas: BTreeMap<String, AreaResult> = BTreeMap::new();
    for sc in &r.scenarios {
        totals.count(sc.outcome);
        areas.entry(sc.area.clone()).or_default().count(sc.outcome);
    }
    if totals != r.totals || areas != r.areas {
        return Err(Error::Other(format!(
            "{}: its totals or areas are not those of its scenario results (edited by hand?)",
            part.file
        )));
    }
    Ok(())
}

/// `part` is of the same server, profile and route table as `first`.
fn same_run(first: &Part, part: &Part) -> Result<()> {
    let (a, b) = (&first.report, &part.report);
    let refuse = |what: &str, theirs: &dyn std::fmt::Debug, ours: &dyn std::fmt::Debug| {
        Err(Error::Other(format!(
            "{} is a report of {what} {theirs:?}, but {} of {ours:?}: merge only reports of one server, profile and mxconform",
            part.file, first.file
        )))
    };
    if a.server.profile != b.server.profile {
        return refuse("the profile", &b.server.profile, &a.server.profile);
    }
    if a.server.embedded != b.server.embedded {
        let kind = |e: bool| {
            if e {
                "the embedded server"
            } else {
                "a server by URL"
            }
        };
        return refuse("", &kind(b.server.embedded), &kind(a.server.embedded));
    }
    // The embedded server is started anew on other ports by each run.
    if !a.server.embedded {
        if a.server.url != b.server.url {
            return refuse("the server", &b.server.url, &a.server.url);
        }
        if a.server.server_name != b.server.server_name {
            return refuse(
                "the server name",
                &b.server.server_name,
                &a.server.server_name,
            );
        }
    }
    if a.server.software != b.server.software {
        return refuse("the software", &b.server.software, &a.server.software);
    }
    if a.spec_version != b.spec_version {
        return refuse("the spec", &b.spec_version, &a.spec_version);
    }
    let table = |c: &Coverage| -> Vec<(String, usize)> {
        std::iter::once(("client-server".to_string(), c.operations_total))
            .chain(c.groups.iter().map(|(g, gc)| (g.clone(), gc.total)))
            .collect()
    };
    if table(&a.coverage) != table(&b.coverage) {
        return refuse(
            "a route table of (group, operations)",
            &table(&b.coverage),
            &table(&a.coverage),
        );
    }
    Ok(())
}

/// Partitions given are of one N, each at most once, and all N of them are there.
fn partitions_complete(parts: &[Part]) -> Result<()> {
    let mut given: BTreeMap<Partition, &str> = BTreeMap::new();
    let mut count: Option<(u64, &str)> = None;
    for part in parts {
        let Some(p) = part.report.partition else {
            continue;
        };
        match count {
            Some((n, file)) if n != p.count() => {
                return Err(Error::Other(format!(
                    "{} is partition {p}, but {file} is of {n} partitions: merge the partitions of one split",
                    part.file
                )));
            }
            Some(_) => {}
            None => count = Some((p.count(), &part.file)),
        }
        if let Some(other) = given.insert(p, &part.file) {
            return Err(Error::Other(format!(
                "partition {p} is given twice: {other} and {}",
                part.file
            )));
        }
    }
    let Some((n, _)) = count else {
        return Ok(());
    };
    let missing: Vec<String> = (1..=n)
        .filter_map(|k| Partition::new(k, n).ok())
        .filter(|p| !given.contains_key(p))
        .map(|p| p.to_string())
        .collect();
    if !missing.is_empty() {
        let have: Vec<String> = given.iter().map(|(p, f)| format!("{p} ({f})")).collect();
        return Err(Error::Other(format!(
            "{} {} {} missing (given: {})",
            if missing.len() == 1 {
                "partition"
            } else {
                "partitions"
            },
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" },
            have.join(", ")
        )));
    }
    Ok(())
}

/// The byte offset of serde_json's line and column (both from 1; column 0 is the line's end).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    (start + column.saturating_sub(1)).min(text.len())
}

/// The JSON pointer of the innermost value of `text` (valid JSON) that spans byte `at` or ends
/// just before it (unless `at` is a closing bracket: that bracket's value).
fn pointer_at(text: &str, at: usize) -> String {
    let mut scan = Scan {
        text,
        i: 0,
        at,
        found: None,
    };
    scan.value(&mut Vec::new());
    scan.found
        .unwrap_or_default()
        .iter()
        .map(|seg| format!("/{}", seg.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// A walk over valid JSON that keeps the path to where it is.
struct Scan<'a> {
    text: &'a str,
    i: usize,
    at: usize,
    found: Option<Vec<String>>,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.i).copied()
    }

    fn blank(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn value(&mut self, path: &mut Vec<String>) {
        self.blank();
        let start = self.i;
        match self.peek() {
            None => return,
            Some(b'{') => {
                self.i += 1;
                loop {
                    self.blank();
                    match self.peek() {
                        Some(b'"') => {
                            let key = self.string();
                            self.blank();
                            self.i += 1; // the colon
                            path.push(key);
                            self.value(path);
                            path.pop();
                        }
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            break;
                        }
                        _ => break,
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut n = 0usize;
                loop {
                    self.blank();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            break;
                        }
                        None => break,
                        Some(_) => {
                            path.push(n.to_string());
                            self.value(path);
                            path.pop();
                            n += 1;
                        }
                    }
                }
            }
            Some(b'"') => {
                self.string();
            }
            Some(_) => {
                while self
                    .peek()
                    .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
                {
                    self.i += 1;
                }
            }
        }
        // Inner values are done first, so the innermost one that spans `at` is kept. serde_json
        // places an error about a value just after it, and one about an object's fields (a
        // missing field) at its closing brace, which is then not the last value's.
        let closing = matches!(self.text.as_bytes().get(self.at), Some(b'}' | b']'));
        let spans = self.at < self.i || (self.at == self.i && !closing);
        if self.found.is_none() && start <= self.at && spans {
            self.found = Some(path.clone());
        }
    }

    /// A string token, decoded.
    fn string(&mut self) -> String {
        let start = self.i;
        self.i += 1;
        while let Some(b) = self.peek() {
            self.i += if b == b'\\' { 2 } else { 1 };
            if b == b'"' {
                break;
            }
        }
        let end = self.i.min(self.text.len());
        serde_json::from_str(&self.text[start..end]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Outcome, ServerInfo};

    fn server() -> ServerInfo {
        ServerInfo {
            url: "http://127.0.0.1:1".into(),
            profile: "reference".into(),
            server_name: "localhost".into(),
            versions: vec!["v1.19".into()],
            software: Some("mxconform 0.1.0".into()),
            serves: BTreeMap::new(),
            embedded: true,
        }
    }

    fn result(name: &str, outcome: Outcome, operations: &[&str]) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            area: name.split('/').next().unwrap_or(name).into(),
            outcome,
            duration_ms: 1,
            operations: operations.iter().map(|o| o.to_string()).collect(),
            reason: None,
            spec: "https://spec.matrix.org/v1.19/".into(),
        }
    }

    /// A run's results: passes, a failure, a listed deviation and a skip, calling operations
    /// of several groups (some only in failing scenarios, so they stay uncovered).
    fn whole_run() -> Vec<ScenarioResult> {
        use Outcome::*;
        vec![
            result("account/whoami", Passed, &["getTokenOwner"]),
            result(
                "account/password",
                Passed,
                &["changePassword", "getTokenOwner"],
            ),
            result("rooms/create", Passed, &["createRoom"]),
            result("rooms/broken", Failed, &["setRoomStateWithKey"]),
            result("rooms/listed", ExpectedFailure, &["getRoomState"]),
            result("rooms/newer", Skipped, &[]),
            result(
                "federation/join",
                Passed,
                &["joinRoom", "server-server/makeJoin"],
            ),
            result(
                "federation/send",
                Passed,
                &["server-server/sendTransaction"],
            ),
            result("sweeps/no_token/sync", Passed, &["sync"]),
            result("sweeps/no_token/createRoom", Passed, &["createRoom"]),
        ]
    }

    fn parts(count: u64, results: &[ScenarioResult]) -> Vec<Part> {
        (1..=count)
            .map(|k| {
                let p = Partition::new(k, count).expect("valid");
                let mine = results
                    .iter()
                    .filter(|r| p.contains(&r.name))
                    .cloned()
                    .collect();
                let mut report = Report::build(server(), mine);
                report.partition = Some(p);
                Part {
                    file: format!("part{k}.json"),
                    report,
                }
            })
            .collect()
    }

    fn json(r: &Report) -> serde_json::Value {
        serde_json::to_value(r).expect("serialises")
    }

    #[test]
    fn merged_partitions_are_the_whole_run() {
        let whole = Report::build(server(), whole_run());
        assert_eq!(whole.totals.scenarios, 10);
        for count in 1..=5 {
            let parts = parts(count, &whole_run());
            let merged = merge(&parts).expect("merges");
            assert_eq!(json(&merged), json(&whole), "{count} partitions");
            let summed: usize = parts.iter().map(|p| p.report.totals.passed).sum();
            assert_eq!(merged.totals.passed, summed);
        }
        let merged = merge(&parts(3, &whole_run())).expect("merges");
        assert_eq!(merged.totals.passed, 7);
        assert_eq!(merged.totals.failed, 1);
        assert_eq!(merged.totals.expected_failures, 1);
        assert_eq!(merged.totals.skipped, 1);
        assert_eq!(merged.areas["rooms"].scenarios, 4);
        assert_eq!(merged.coverage.operations_exercised, 4);
        assert!(merged
            .coverage
            .uncovered
            .iter()
            .any(|o| o == "getRoomState"));
        assert_eq!(merged.coverage.groups["server-server"].exercised, 2);
        assert!(!merged.success());
    }

    /// Reads each case's report mutation, and what merging must say.
    #[test]
    fn merge_refuses_what_is_not_one_run() {
        type Change = fn(&mut Vec<Part>);
        let cases: &[(&str, Change, &str)] = &[
            (
                "the same partition twice",
                |p| {
                    let again = Part {
                        file: "again.json".into(),
                        report: p[0].report.clone(),
                    };
                    p.push(again)
                },
                "partition 1/3 is given twice: part1.json and again.json",
            ),
            (
                "a missing partition",
                |p| {
                    p.remove(1);
                },
                "partition 2/3 is missing (given: 1/3 (part1.json), 3/3 (part3.json))",
            ),
            (
                "a test in two reports",
                |p| {
                    let stray = p[0].report.scenarios[0].clone();
                    p[1].report.scenarios.push(stray);
                    p[1].report = Report {
                        partition: p[1].report.partition,
                        ..Report::build(server(), p[1].report.scenarios.clone())
                    };
                },
                "is in both part1.json and part2.json",
            ),
            (
                "a different profile",
                |p| p[2].report.server.profile = "synapse".into(),
                "part3.json is a report of the profile \"synapse\", but part1.json of \"reference\"",
            ),
            (
                "another server by URL",
                |p| {
                    for part in p.iter_mut() {
                        part.report.server.embedded = false;
                    }
                    p[1].report.server.url = "https://other.example".into();
                },
                "part2.json is a report of the server \"https://other.example\"",
            ),
            (
                "partitions of different splits",
                |p| p[2].report.partition = Partition::new(2, 4).ok(),
                "part3.json is partition 2/4, but part1.json is of 3 partitions",
            ),
            (
                "totals that are not its results'",
                |p| p[0].report.totals.passed += 1,
                "part1.json: its totals or areas are not those of its scenario results",
            ),
        ];
        for (what, change, expected) in cases {
            let mut p = parts(3, &whole_run());
            change(&mut p);
            let err = merge(&p).expect_err(what).to_string();
            assert!(err.contains(expected), "{what}: {err}");
        }
        // Two runs of the embedded server on other ports are one server.
        let mut p = parts(2, &whole_run());
        p[1].report.server.url = "http://127.0.0.1:2".into();
        p[1].report.server.server_name = "localhost:2".into();
        assert!(merge(&p).is_ok());
    }

    #[test]
    fn a_malformed_report_is_named_with_a_pointer() {
        let good = serde_json::to_string_pretty(&parts(2, &whole_run())[0].report).expect("JSON");
        let dir = std::env::temp_dir().join(format!("mxconform-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cases: &[(&str, String, &str)] = &[
            (
                "not JSON",
                good.replacen('}', "", 1),
                "bad.json: not JSON: ",
            ),
            (
                "an unknown outcome",
                good.replacen("\"outcome\": \"", "\"outcome\": \"x", 1),
                "at `/scenarios/0/outcome`: unknown variant `x",
            ),
            (
                "an unknown outcome, in compact JSON",
                serde_json::to_string(&parts(2, &whole_run())[0].report)
                    .expect("JSON")
                    .replacen("\"outcome\":\"", "\"outcome\":\"x", 1),
                "at `/scenarios/0/outcome`: unknown variant `x",
            ),
            (
                "a count that is not a number",
                good.replacen("\"totals\": {", "\"totals\": {\"passed\": \"many\",", 1),
                "at `/totals/passed`: invalid type",
            ),
            (
                "a scenario without its area",
                good.replacen("\"area\": ", "\"areas\": ", 1),
                "at `/scenarios/0`: missing field `area`",
            ),
            (
                "a partition out of range",
                good.replacen("\"partition\": \"1/2\"", "\"partition\": \"3/2\"", 1),
                "at `/partition`: K must be between 1 and N (2); got 3",
            ),
            (
                "not a report",
                "{\"hello\": 1}".to_string(),
                "bad.json: not an mxconform JSON report: at `/`: missing field `server`",
            ),
        ];
        for (what, text, expected) in cases {
            assert_ne!(text, &good, "{what}: the case changes the report");
            let path = dir.join("bad.json");
            std::fs::write(&path, text).expect("written");
            let err = read(&path).expect_err(what).to_string();
            assert!(err.contains(expected), "{what}: {err}");
        }
        std::fs::write(dir.join("good.json"), &good).expect("written");
        assert!(read(&dir.join("good.json")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
