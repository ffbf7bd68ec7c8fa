//! Reports of a run: JSON (the full record), markdown ("are we synapse yet" style: per area,
//! then per-operation coverage), JUnit XML, and the comparison of two JSON reports.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    /// Failed, as the profile's deviation list says it does.
    ExpectedFailure,
    /// Passed although the deviation list says it fails: an error, so the list stays true.
    UnexpectedPass,
    /// Not run: the server does not advertise the spec version its operations need.
    Skipped,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    pub area: String,
    pub outcome: Outcome,
    pub duration_ms: u64,
    pub operations: Vec<String>,
    pub reason: Option<String>,
    pub spec: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub scenarios: usize,
    pub passed: usize,
    pub failed: usize,
    pub expected_failures: usize,
    pub unexpected_passes: usize,
    pub skipped: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Coverage {
    pub operations_total: usize,
    /// Operations called by a scenario that passed (the sweeps area aside).
    pub operations_exercised: usize,
    /// The operations of the route table a passing scenario called (the sweeps area aside),
    /// sorted: client-server ones by id, others as `<group>/<operationId>`. What `merge`
    /// unites.
    #[serde(default)]
    pub exercised: Vec<String>,
    pub uncovered: Vec<String>,
    /// Why an uncovered operation has no passing scenario, where `coverage.toml` says.
    #[serde(default)]
    pub reasons: std::collections::BTreeMap<String, String>,
    /// Per API group: operations exercised by a passing scenario, of all. Operations of groups
    /// other than client-server are recorded as `<group>/<operationId>` (the server-server
    /// operations a fake server called on the server under test).
    #[serde(default)]
    pub groups: BTreeMap<String, GroupCoverage>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupCoverage {
    pub exercised: usize,
    pub total: usize,
    /// The group's operations no passing scenario exercised.
    #[serde(default)]
    pub uncovered: Vec<String>,
}

/// Counts for one area: the same as the run's totals.
pub type AreaResult = Totals;

impl Totals {
    pub(crate) fn count(&mut self, outcome: Outcome) {
        self.scenarios += 1;
        match outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::ExpectedFailure => self.expected_failures += 1,
            Outcome::UnexpectedPass => self.unexpected_passes += 1,
            Outcome::Skipped => self.skipped += 1,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerInfo {
    pub url: String,
    pub profile: String,
    pub server_name: String,
    /// `/_matrix/client/versions`.
    pub versions: Vec<String>,
    /// `/_matrix/federation/v1/version` when the server answers it: "Synapse 1.163.0".
    pub software: Option<String>,
    /// The profile's operations the server serves ahead of the versions it advertises, with why.
    #[serde(default)]
    pub serves: std::collections::BTreeMap<String, String>,
    /// Started by `mxconform run` itself, so `url` and `server_name` change from run to run.
    #[serde(default)]
    pub embedded: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub server: ServerInfo,
    pub spec_version: String,
    pub totals: Totals,
    pub coverage: Coverage,
    pub areas: BTreeMap<String, AreaResult>,
    pub scenarios: Vec<ScenarioResult>,
    /// `run --partition K/N`: the report covers only the tests of that partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<crate::partition::Partition>,
}

/// Reads the reasons file (`coverage.toml`: `[uncoverable] operationId = "reason"`).
pub fn coverage_reasons(
    path: &std::path::Path,
) -> crate::Result<std::collections::BTreeMap<String, String>> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        uncoverable: std::collections::BTreeMap<String, String>,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => {
            return Err(crate::Error::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    let f: File = toml::from_str(&text)
        .map_err(|e| crate::Error::Other(format!("{}: {e}", path.display())))?;
    for op in f.uncoverable.keys() {
        let known = match op.split_once('/') {
            Some((group, id)) => mxconform_generated::routes()
                .any(|r| r.group.as_str() == group && r.operation_id == id),
            None => crate::route(op).is_some(),
        };
        if !known {
            return Err(crate::Error::Other(format!(
                "{}: `{op}` is neither a client-server operation nor `<group>/<operationId>`",
                path.display()
            )));
        }
    }
    Ok(f.uncoverable)
}

impl Report {
    pub fn build(server: ServerInfo, mut scenarios: Vec<ScenarioResult>) -> Report {
        scenarios.sort_by(|a, b| a.name.cmp(&b.name));
        let mut totals = Totals::default();
        let mut areas: BTreeMap<String, AreaResult> = BTreeMap::new();
        let mut exercised: BTreeSet<&str> = BTreeSet::new();
        for s in &scenarios {
            totals.count(s.outcome);
            areas.entry(s.area.clone()).or_default().count(s.outcome);
            // The sweeps touch operations only through their error paths.
            if s.outcome == Outcome::Passed && s.area != "sweeps" {
                exercised.extend(s.operations.iter().map(String::as_str));
            }
        }
        let all: Vec<&str> = crate::routes().map(|r| r.operation_id).collect();
        let mut exercised_ops: BTreeSet<String> = all
            .iter()
            .filter(|o| exercised.contains(*o))
            .map(|o| o.to_string())
            .collect();
        let uncovered: Vec<String> = all
            .iter()
            .filter(|o| !exercised.contains(*o))
            .map(|o| o.to_string())
            .collect();
        let mut groups = BTreeMap::new();
        groups.insert(
            "client-server".to_string(),
            GroupCoverage {
                exercised: all.len() - uncovered.len(),
                total: all.len(),
                uncovered: uncovered.clone(),
            },
        );
        for group in [
            mxconform_generated::Group::ServerServer,
            mxconform_generated::Group::ApplicationService,
            mxconform_generated::Group::Identity,
            mxconform_generated::Group::PushGateway,
        ] {
            let ops: Vec<&str> = mxconform_generated::routes()
                .filter(|r| r.group == group)
                .map(|r| r.operation_id)
                .collect();
            let name = group.as_str();
            let missing: Vec<String> = ops
                .iter()
                .filter(|o| !exercised.contains(format!("{name}/{o}").as_str()))
                .map(|o| o.to_string())
                .collect();
            exercised_ops.extend(
                ops.iter()
                    .map(|o| format!("{name}/{o}"))
                    .filter(|o| exercised.contains(o.as_str())),
            );
            groups.insert(
                name.to_string(),
                GroupCoverage {
                    exercised: ops.len() - missing.len(),
                    total: ops.len(),
                    uncovered: missing,
                },
            );
        }
        let coverage = Coverage {
            operations_total: all.len(),
            operations_exercised: all.len() - uncovered.len(),
            exercised: exercised_ops.into_iter().collect(),
            uncovered,
            reasons: std::collections::BTreeMap::new(),
            groups,
        };
        Report {
            server,
            spec_version: spec_version_tag().to_string(),
            totals,
            coverage,
            areas,
            scenarios,
            partition: None,
        }
    }

    /// The figures of the run's summary line: `1453 passed, 0 failed, ..., 163 of 166
    /// client-server operations exercised`.
    pub fn summary(&self) -> String {
        let t = &self.totals;
        format!(
            "{} passed, {} failed, {} known deviations, {} unexpected passes, {} skipped; {} of {} client-server operations exercised",
            t.passed,
            t.failed,
            t.expected_failures,
            t.unexpected_passes,
            t.skipped,
            self.coverage.operations_exercised,
            self.coverage.operations_total
        )
    }

    /// Whether the run counts as a success: nothing failed that was not listed, nothing
    /// listed passed.
    pub fn success(&self) -> bool {
        self.totals.failed == 0 && self.totals.unexpected_passes == 0
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let t = &self.totals;
        let _ = writeln!(
            s,
            "# Matrix compliance: {} ({})\n",
            self.server.profile,
            self.server
                .software
                .as_deref()
                .unwrap_or("unknown software")
        );
        let _ = writeln!(
            s,
            "Spec {}; server `{}` at {}, advertising {}.\n",
            self.spec_version,
            self.server.server_name,
            self.server.url,
            self.server.versions.join(", ")
        );
        if let Some(p) = self.partition {
            let _ = writeln!(
                s,
                "Partition {p} of the run: only the tests whose names hash to it (`mxconform run --partition`); `mxconform merge` makes the whole run's report from all {}.\n",
                p.count()
            );
        }
        if !self.server.serves.is_empty() {
            let _ = writeln!(
                s,
                "Run although added after the newest version advertised (the profile's `[serves]`):\n"
            );
            for (op, why) in &self.server.serves {
                let _ = writeln!(s, "- `{op}`: {why}");
            }
            let _ = writeln!(s);
        }
        let run = t.scenarios - t.skipped;
        let _ = writeln!(
            s,
            "**{}** of {run} scenarios pass ({}); {} failed, {} known deviations, {} unexpected passes, {} skipped for version.\n",
            t.passed,
            percent(t.passed, run),
            t.failed,
            t.expected_failures,
            t.unexpected_passes,
            t.skipped
        );
        let _ = writeln!(s, "## Areas\n\n| Area | Passing | Failed | Known deviations | Skipped |\n|---|---|---|---|---|");
        for (name, a) in &self.areas {
            let ran = a.scenarios - a.skipped;
            let _ = writeln!(
                s,
                "| {} | {} ({}/{ran}) | {} | {} | {} |",
                title_case(name),
                percent(a.passed, ran),
                a.passed,
                a.failed + a.unexpected_passes,
                a.expected_failures,
                a.skipped
            );
        }
        let c = &self.coverage;
        let _ = writeln!(
            s,
            "\n## Operation coverage\n\n{} of {} client-server operations exercised by a passing scenario ({}).\n",
            c.operations_exercised,
            c.operations_total,
            // One decimal: a coverage target like 90% must not round its way to passing.
            format!(
                "{:.1}%",
                (c.operations_exercised as f64 * 1000.0 / c.operations_total.max(1) as f64).floor()
                    / 10.0
            )
        );
        if !c.groups.is_empty() {
            let _ = writeln!(
                s,
                "Per API group (operations of the server under test exercised by a passing scenario):\n\n| Group | Exercised | Of |\n|---|---|---|"
            );
            for (g, cov) in &c.groups {
                let _ = writeln!(s, "| {g} | {} | {} |", cov.exercised, cov.total);
            }
            if let Some(ss) = c.groups.get("server-server").filter(|g| g.exercised > 0) {
                let _ = writeln!(
                    s,
                    "\nServer-server operations not exercised: {}.\n",
                    if ss.uncovered.is_empty() {
                        "none".to_string()
                    } else {
                        ss.uncovered
                            .iter()
                            .map(|o| match c.reasons.get(&format!("server-server/{o}")) {
                                Some(r) => format!("`{o}` ({r})"),
                                None => format!("`{o}`"),
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
            }
            let _ = writeln!(s);
        }
        let mut by_op: BTreeMap<&str, Vec<&ScenarioResult>> = BTreeMap::new();
        for sc in &self.scenarios {
            for op in &sc.operations {
                by_op.entry(op.as_str()).or_default().push(sc);
            }
        }
        let _ = writeln!(
            s,
            "| Operation | Route | Scenarios | Passing |\n|---|---|---|---|"
        );
        for r in crate::routes() {
            let list = by_op.get(r.operation_id).map(Vec::as_slice).unwrap_or(&[]);
            let passing = list
                .iter()
                .filter(|sc| sc.outcome == Outcome::Passed)
                .count();
            let _ = writeln!(
                s,
                "| [`{}`]({}) | `{} {}` | {} | {} |",
                r.operation_id,
                r.spec_url,
                r.method.as_str(),
                r.path,
                list.len(),
                if list.is_empty() {
                    "uncovered".to_string()
                } else {
                    format!("{passing}/{}", list.len())
                }
            );
        }
        if !c.uncovered.is_empty() {
            let _ = writeln!(
                s,
                "\n## Uncovered operations\n\n| Operation | Why |\n|---|---|"
            );
            for op in &c.uncovered {
                // A listed reason; else the known deviations that call it; else none yet.
                let deviations: Vec<String> = self
                    .scenarios
                    .iter()
                    .filter(|sc| {
                        sc.outcome == Outcome::ExpectedFailure
                            && sc.area != "sweeps"
                            && sc.operations.iter().any(|o| o == op)
                    })
                    .map(|sc| format!("`{}`", sc.name))
                    .collect();
                let newest = self
                    .server
                    .versions
                    .iter()
                    .filter_map(|v| crate::version_key(v))
                    .max();
                let added = crate::route(op).and_then(|r| r.added_in);
                let newer = match (added.and_then(crate::version_key), newest) {
                    (Some(a), Some(n)) if a > n && !self.server.serves.contains_key(op) => {
                        Some(format!(
                            "added in v{}; the server advertises up to v{}.{}, so its scenarios are skipped",
                            added.unwrap_or_default(),
                            n.0,
                            n.1
                        ))
                    }
                    _ => None,
                };
                let why = match c.reasons.get(op) {
                    Some(r) => r.clone(),
                    None if newer.is_some() => newer.unwrap_or_default(),
                    None if !deviations.is_empty() => format!(
                        "only in scenarios this server fails (known deviations: {})",
                        deviations.join(", ")
                    ),
                    None => "no passing scenario yet".to_string(),
                };
                let _ = writeln!(s, "| `{op}` | {why} |");
            }
        }
        let failing: Vec<&ScenarioResult> = self
            .scenarios
            .iter()
            .filter(|sc| {
                matches!(
                    sc.outcome,
                    Outcome::Failed | Outcome::UnexpectedPass | Outcome::ExpectedFailure
                )
            })
            .collect();
        if !failing.is_empty() {
            let _ = writeln!(
                s,
                "\n## Failures and deviations\n\n| Scenario | Outcome | Reason |\n|---|---|---|"
            );
            for sc in failing {
                let reason = sc
                    .reason
                    .as_deref()
                    .unwrap_or("")
                    .replace('|', "\\|")
                    .replace('\n', " ");
                let _ = writeln!(
                    s,
                    "| [`{}`]({}) | {:?} | {} |",
                    sc.name, sc.spec, sc.outcome, reason
                );
            }
        }
        s
    }

    pub fn to_junit(&self) -> String {
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            s,
            "<testsuites name=\"mxconform {}{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
            xml(&self.server.profile),
            self.partition
                .map(|p| format!(" (partition {p})"))
                .unwrap_or_default(),
            self.totals.scenarios,
            self.totals.failed + self.totals.unexpected_passes,
            self.totals.skipped
        );
        for (area, a) in &self.areas {
            let _ = writeln!(
                s,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
                xml(area),
                a.scenarios,
                a.failed + a.unexpected_passes,
                a.skipped
            );
            for sc in self.scenarios.iter().filter(|sc| &sc.area == area) {
                let _ = write!(
                    s,
                    "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                    xml(area),
                    xml(&sc.name),
                    sc.duration_ms as f64 / 1000.0
                );
                let reason = xml(sc.reason.as_deref().unwrap_or(""));
                match sc.outcome {
                    Outcome::Passed => s.push_str("/>\n"),
                    Outcome::Failed | Outcome::UnexpectedPass => {
                        let _ = writeln!(
                            s,
                            ">\n      <failure message=\"{reason}\"/>\n    </testcase>"
                        );
                    }
                    Outcome::Skipped | Outcome::ExpectedFailure => {
                        let _ = writeln!(
                            s,
                            ">\n      <skipped message=\"{:?}: {reason}\"/>\n    </testcase>",
                            sc.outcome
                        );
                    }
                }
            }
            s.push_str("  </testsuite>\n");
        }
        s.push_str("</testsuites>\n");
        s
    }
}

/// The pinned spec version as the spec's URLs spell it: `v1.19`.
pub fn spec_version_tag() -> &'static str {
    mxconform_generated::SPEC_VERSION
        .split_whitespace()
        .next()
        .unwrap_or("latest")
}

fn percent(n: usize, d: usize) -> String {
    if d == 0 {
        "-".into()
    } else {
        format!("{}%", (n * 100) / d)
    }
}

fn title_case(s: &str) -> String {
    s.split(['-', '_'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Scenario by scenario, where two servers' results differ.
pub fn compare(a: &Report, b: &Report) -> String {
    let mut s = String::new();
    let name_a = format!(
        "{} ({})",
        a.server.profile,
        a.server.software.as_deref().unwrap_or("?")
    );
    let name_b = format!(
        "{} ({})",
        b.server.profile,
        b.server.software.as_deref().unwrap_or("?")
    );
    let _ = writeln!(s, "# {name_a} vs {name_b}\n");
    let _ = writeln!(
        s,
        "| | {} | {} |\n|---|---|---|\n| passed | {} | {} |\n| failed | {} | {} |\n| known deviations | {} | {} |\n| operations exercised | {} | {} |\n",
        a.server.profile,
        b.server.profile,
        a.totals.passed,
        b.totals.passed,
        a.totals.failed,
        b.totals.failed,
        a.totals.expected_failures,
        b.totals.expected_failures,
        a.coverage.operations_exercised,
        b.coverage.operations_exercised
    );
    let ma: BTreeMap<&str, &ScenarioResult> =
        a.scenarios.iter().map(|x| (x.name.as_str(), x)).collect();
    let mb: BTreeMap<&str, &ScenarioResult> =
        b.scenarios.iter().map(|x| (x.name.as_str(), x)).collect();
    let names: BTreeSet<&str> = ma.keys().chain(mb.keys()).copied().collect();
    let mut rows = Vec::new();
    for n in names {
        let oa = ma.get(n).map(|x| x.outcome);
        let ob = mb.get(n).map(|x| x.outcome);
        if oa != ob {
            let show = |o: Option<Outcome>| o.map_or("not run".to_string(), |o| format!("{o:?}"));
            let reason = mb
                .get(n)
                .and_then(|x| x.reason.as_deref())
                .or_else(|| ma.get(n).and_then(|x| x.reason.as_deref()))
                .unwrap_or("")
                .replace('|', "\\|")
                .replace('\n', " ");
            rows.push(format!(
                "| `{n}` | {} | {} | {reason} |",
                show(oa),
                show(ob)
            ));
        }
    }
    if rows.is_empty() {
        s.push_str("Every scenario has the same outcome on both.\n");
    } else {
        let _ = writeln!(
            s,
            "{} scenarios differ:\n\n| Scenario | {} | {} | Reason |\n|---|---|---|---|",
            rows.len(),
            a.server.profile,
            b.server.profile
        );
        for r in rows {
            s.push_str(&r);
            s.push('\n');
        }
    }
    s
}
