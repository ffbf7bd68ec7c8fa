//! mxconform-harness: replays the scenario suites under `scenarios/` against a homeserver
//! given by URL and profile, one libtest-mimic trial per scenario file, and reports per area,
//! per operation and per scenario. To the harness a homeserver is a URL: it knows nothing of
//! the reference server.

pub mod client;
pub mod error;
pub mod expect;
pub mod federation;
pub mod mail_sink;
pub mod merge;
pub mod partition;
pub mod peers;
pub mod profile;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod snapshot;
pub mod sweeps;
pub mod template;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libtest_mimic::{Completion, Failed, Trial};
use mxconform_generated::Route;
use serde_json::Value;

pub use error::{Error, Result};
pub use profile::Profile;
pub use report::Report;

/// The client-server operations of the route table.
pub fn routes() -> impl Iterator<Item = &'static Route> {
    mxconform_generated::client_server::ROUTES.iter()
}

/// Which of `routes` a request is for, and its path parameters (decoded): the most literal
/// template wins (`/query/directory` before `/query/{queryType}`).
pub fn match_route_among(
    routes: impl Iterator<Item = &'static mxconform_generated::Route>,
    method: &str,
    path: &str,
) -> Option<(&'static mxconform_generated::Route, Vec<(String, String)>)> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut candidates: Vec<&'static mxconform_generated::Route> = routes.collect();
    candidates.sort_by_key(|r| r.path.matches('{').count());
    'routes: for r in candidates {
        if r.method.as_str() != method {
            continue;
        }
        let template: Vec<&str> = r.path.split('/').collect();
        if template.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        for (t, s) in template.iter().zip(&segments) {
            match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                Some(name) => params.push((name.to_string(), crate::peers::percent_decode(s))),
                None if t == s => {}
                None => continue 'routes,
            }
        }
        return Some((r, params));
    }
    None
}

/// A client-server operation by its operation id.
pub fn route(operation_id: &str) -> Option<&'static Route> {
    static BY_ID: OnceLock<HashMap<&'static str, &'static Route>> = OnceLock::new();
    BY_ID
        .get_or_init(|| routes().map(|r| (r.operation_id, r)).collect())
        .get(operation_id)
        .copied()
}

/// Everything a run needs.
#[derive(Debug)]
pub struct RunConfig {
    pub server_url: String,
    pub profile: Profile,
    /// `harness/scenarios`.
    pub scenarios_dir: PathBuf,
    /// `snapshots/`; this profile's snapshots go under `snapshots/<profile>/`.
    pub snapshots_dir: PathBuf,
    pub limits: client::Limits,
    pub scenario_timeout: Duration,
    /// Add the negative sweeps derived from the route table (the `sweeps` area).
    pub sweeps: bool,
    /// What to report as the server's software when it does not say (the embedded server).
    pub software_hint: Option<String>,
    /// Federation with fake homeservers, when the profile has `[federation]`.
    pub federation: Option<Arc<federation::Federation>>,
    /// The peers the profile configures, already running (see [`peers::Peers::start`]).
    pub peers: Option<Arc<peers::Peers>>,
    /// libtest's arguments; `None` runs every scenario without libtest's console output
    /// (for embedding, and for the harness's own tests).
    pub args: Option<libtest_mimic::Arguments>,
}

/// Parses `v1.11` / `1.11` / `r0.6.1` into (major, minor); `r0.*` counts as (0, *).
pub(crate) fn version_key(v: &str) -> Option<(u32, u32)> {
    let v = v.trim_start_matches(['v', 'r']);
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Why a scenario cannot run on a server advertising `versions`, if it cannot. Operations in
/// `serves` (the profile's list of operations the server is known to serve ahead of the
/// versions it advertises) never gate.
pub fn version_gate(
    s: &scenario::Scenario,
    versions: &[String],
    serves: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    let newest = versions.iter().filter_map(|v| version_key(v)).max()?;
    for op in s.operations() {
        if serves.contains_key(op) {
            continue;
        }
        let added = route(op).and_then(|r| r.added_in);
        if let Some(added) = added {
            if version_key(added).is_some_and(|k| k > newest) {
                return Some(format!(
                    "`{op}` was added in v{added}; the server advertises up to v{}.{}",
                    newest.0, newest.1
                ));
            }
        }
    }
    None
}

/// What the server says about itself before the run.
pub async fn probe(client: &client::Client) -> Result<(Vec<String>, Option<String>)> {
    let resp = client
        .send(
            "GET",
            "/_matrix/client/versions",
            &[],
            client::Body::None,
            None,
            Some(Duration::from_secs(10)),
            Default::default(),
        )
        .await
        .map_err(|reason| Error::Unreachable {
            url: client.base().to_string(),
            reason,
        })?;
    if resp.status != 200 {
        return Err(Error::Unreachable {
            url: client.base().to_string(),
            reason: format!(
                "/_matrix/client/versions answered {}: {}",
                resp.status, resp.body
            ),
        });
    }
    let versions: Vec<String> = resp
        .body
        .get("versions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let software = client
        .send(
            "GET",
            "/_matrix/federation/v1/version",
            &[],
            client::Body::None,
            None,
            Some(Duration::from_secs(5)),
            Default::default(),
        )
        .await
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|r| {
            let s = r.body.get("server")?;
            Some(format!(
                "{} {}",
                s.get("name").and_then(Value::as_str).unwrap_or("?"),
                s.get("version").and_then(Value::as_str).unwrap_or("?")
            ))
        });
    Ok((versions, software))
}

/// The result of a run: libtest's conclusion (when libtest ran it) and the report.
pub struct RunOutput {
    pub conclusion: Option<libtest_mimic::Conclusion>,
    pub report: Report,
}

/// Runs the suites: one trial per scenario file, kind = its area.
pub fn run(config: RunConfig) -> Result<RunOutput> {
    run_partition(config, None)
}

/// Runs the tests of one partition of the suites (all of them with `None`); the report says
/// which partition it covers.
pub fn run_partition(
    config: RunConfig,
    partition: Option<partition::Partition>,
) -> Result<RunOutput> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("cannot start the async runtime: {e}")))?;
    let client = client::Client::new(&config.server_url, config.limits).map_err(Error::Other)?;
    let (versions, software) = rt.block_on(probe(&client))?;
    let mut scenarios = scenario::load_dir(&config.scenarios_dir)?;
    if config.sweeps {
        for s in sweeps::client_server() {
            s.check()?;
            scenarios.push(s);
        }
    }
    let names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
    let mut unknown = config.profile.unknown_deviations(&names);
    if !config.sweeps {
        unknown.retain(|d| !d.starts_with("sweeps/"));
    }
    if !unknown.is_empty() {
        return Err(Error::Profile {
            path: config.profile.path.clone(),
            reason: format!("deviations name no scenario: {}", unknown.join(", ")),
        });
    }
    // After the deviations are checked against every name: a partition lists only its own.
    if let Some(p) = partition {
        scenarios.retain(|s| p.contains(&s.name));
    }
    let server = report::ServerInfo {
        url: config.server_url.clone(),
        profile: config.profile.name.clone(),
        server_name: config.profile.server_name.clone(),
        versions: versions.clone(),
        software: software.or_else(|| config.software_hint.clone()),
        serves: config.profile.serves.clone(),
        // The binary says when it started the server itself.
        embedded: false,
    };
    let mut partners = BTreeMap::new();
    for (name, p) in config
        .profile
        .federation
        .iter()
        .flat_map(|f| f.partners.iter())
    {
        if p.base_url.is_empty() || p.server_name.is_empty() {
            return Err(Error::Other(format!(
                "the partner `{name}` needs base_url and server_name (or `embedded = true`, which `mxconform run` starts)"
            )));
        }
        let client = client::Client::new(&p.base_url, config.limits).map_err(Error::Other)?;
        partners.insert(
            name.clone(),
            runner::Partner {
                client,
                config: p.clone(),
            },
        );
    }
    // The identity server checks tokens and signatures with the server under test.
    if let (Some(p), Some(f)) = (&config.peers, &config.federation) {
        p.connect_homeserver(&f.client);
    }
    let env = Arc::new(runner::Env {
        client,
        snapshot_dir: config.snapshots_dir.join(&config.profile.name),
        profile: config.profile,
        scenario_timeout: config.scenario_timeout,
        peers: config.peers.clone(),
        admin: tokio::sync::OnceCell::new(),
        federation: config.federation.clone(),
        partners,
    });
    let rt = Arc::new(rt);
    let results: Arc<Mutex<Vec<report::ScenarioResult>>> = Arc::default();
    type Job = Box<dyn FnOnce() -> std::result::Result<Completion, Failed> + Send>;
    let mut jobs: Vec<(String, String, Job)> = Vec::new();
    for s in scenarios {
        let gate = version_gate(&s, &versions, &env.profile.serves);
        let (env, rt, results) = (env.clone(), rt.clone(), results.clone());
        let name = s.name.clone();
        let area = s.area.clone();
        jobs.push((
            name,
            area,
            Box::new(move || {
                let record = |outcome, reason: Option<String>, ops: Vec<String>, ms: u64| {
                    if let Ok(mut r) = results.lock() {
                        r.push(report::ScenarioResult {
                            name: s.name.clone(),
                            area: s.area.clone(),
                            outcome,
                            duration_ms: ms,
                            operations: ops,
                            reason,
                            spec: s.spec.clone(),
                        });
                    }
                };
                if let Some(why) = gate {
                    record(report::Outcome::Skipped, Some(why.clone()), Vec::new(), 0);
                    return Ok(Completion::ignored_with(why));
                }
                let outcome = rt.block_on(runner::run(&env, &s));
                let ms = outcome.duration.as_millis() as u64;
                if let Some(why) = outcome.skipped {
                    record(report::Outcome::Skipped, Some(why.clone()), Vec::new(), ms);
                    return Ok(Completion::ignored_with(why));
                }
                let deviation = env.profile.deviations.get(&s.name);
                match (outcome.result, deviation) {
                    (Ok(()), None) => {
                        record(report::Outcome::Passed, None, outcome.operations, ms);
                        Ok(Completion::Completed)
                    }
                    (Err(e), None) => {
                        record(
                            report::Outcome::Failed,
                            Some(e.clone()),
                            outcome.operations,
                            ms,
                        );
                        Err(Failed::from(e))
                    }
                    (Err(e), Some(d)) => {
                        record(
                            report::Outcome::ExpectedFailure,
                            Some(format!("{} ({}); failed with: {e}", d.reason, d.spec)),
                            outcome.operations,
                            ms,
                        );
                        Ok(Completion::Completed)
                    }
                    (Ok(()), Some(d)) => {
                        let why = format!(
                            "passes, but {} lists it as a deviation ({}): remove it from the list",
                            env.profile.path.display(),
                            d.reason
                        );
                        record(
                            report::Outcome::UnexpectedPass,
                            Some(why.clone()),
                            outcome.operations,
                            ms,
                        );
                        Err(Failed::from(why))
                    }
                }
            }),
        ));
    }
    let total = jobs.len();
    let conclusion = match &config.args {
        Some(args) => {
            let progress = Progress::start(args, total, results.clone());
            let trials = jobs
                .into_iter()
                .map(|(name, area, job)| Trial::ignorable_test(name, job).with_kind(area))
                .collect();
            let c = libtest_mimic::run(args, trials);
            progress.finish();
            Some(c)
        }
        None => {
            for (_, _, job) in jobs {
                let _ = job();
            }
            None
        }
    };
    let results = std::mem::take(
        &mut *results
            .lock()
            .map_err(|_| Error::Other("results lock poisoned".into()))?,
    );
    let mut report = Report::build(server, results);
    report.partition = partition;
    let reasons_file = config
        .scenarios_dir
        .parent()
        .map(|h| h.join("coverage.toml"));
    if let Some(path) = reasons_file {
        let reasons = report::coverage_reasons(&path)?;
        let groups = &report.coverage.groups;
        let uncovered = |op: &str| match op.split_once('/') {
            Some((group, id)) => groups
                .get(group)
                .is_some_and(|g| g.uncovered.iter().any(|u| u == id)),
            None => report.coverage.uncovered.iter().any(|u| u == op),
        };
        let kept = reasons
            .into_iter()
            .filter(|(op, _)| uncovered(op))
            .collect();
        report.coverage.reasons = kept;
    }
    Ok(RunOutput { conclusion, report })
}

/// A one-line progress bar on stderr for long runs, when libtest's own lines do not go to the
/// same terminal (stdout redirected, or `--quiet`).
struct Progress {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(
        args: &libtest_mimic::Arguments,
        total: usize,
        done: Arc<Mutex<Vec<report::ScenarioResult>>>,
    ) -> Progress {
        use std::io::IsTerminal;
        let wanted = total >= 30
            && !args.list
            && std::io::stderr().is_terminal()
            && (args.quiet || !std::io::stdout().is_terminal());
        if !wanted {
            return Progress {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let width = 40;
            loop {
                let n = done.lock().map(|d| d.len()).unwrap_or(0);
                let filled = n * width / total.max(1);
                eprint!(
                    "\r[{}{}] {n}/{total} scenarios",
                    "=".repeat(filled),
                    " ".repeat(width - filled)
                );
                if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                    eprintln!();
                    return;
                }
            }
        });
        Progress {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn scenario(yaml: &str) -> scenario::Scenario {
        serde_yaml::from_str(yaml).expect("scenario parses")
    }

    #[test]
    fn version_gate_skips_newer_operations_unless_the_profile_says_they_are_served() {
        let s = scenario(
            "description: d\nspec: https://spec.matrix.org/v1.19/\nactors: [alice]\nsteps:\n  - call: getMutualRooms\n    query: {user_id: x}\n",
        );
        let versions = vec!["r0.6.1".to_string(), "v1.15".to_string()];
        let why = version_gate(&s, &versions, &BTreeMap::new()).expect("gated");
        assert!(
            why.contains("getMutualRooms") && why.contains("v1.15"),
            "{why}"
        );
        let serves = BTreeMap::from([("getMutualRooms".to_string(), "known".to_string())]);
        assert_eq!(version_gate(&s, &versions, &serves), None);
        let newer = vec!["v1.19".to_string()];
        assert_eq!(version_gate(&s, &newer, &BTreeMap::new()), None);
    }
}

/// A reqwest client builder. When another crate of the build (the reference server) turns on
/// reqwest's rustls without a crypto provider, reqwest needs a process-wide default one: the
/// ring provider the harness already uses is installed first (a no-op when one is).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
