//! `mxconform mutants`: how much misbehaviour the suites catch. Each state-changing
//! client-server operation the reference server implements (PUT, POST, DELETE) becomes in turn
//! a no-op that answers a schema-valid success (`mxconform_server::Config::noop_mutant`); the
//! scenarios that exercise it run against that server, in process, and the mutant is killed
//! when one of them fails (and still passes against the normal server), survived otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mxconform_generated::{Method, Route};
use mxconform_harness::federation::tls::Authority;
use mxconform_harness::{runner, scenario::Scenario, Profile};

use crate::embedded;

#[derive(clap::Args)]
pub struct MutantsArgs {
    /// Only this operation's mutant (an operation id; repeatable); the baseline then runs
    /// only the scenarios whose steps call one of them.
    #[arg(long = "only", value_name = "OPERATION")]
    only: Vec<String>,
    /// Write a markdown report: survivors with the scenarios that ran and why they survive
    /// (`harness/mutants.toml`), untested operations, and what killed the others.
    #[arg(long, value_name = "FILE")]
    report_md: Option<PathBuf>,
    /// Bound on one mutant (its server and all its scenarios), in seconds; a mutant still
    /// undecided then counts as survived, marked as timed out.
    #[arg(long, default_value_t = 300)]
    mutant_timeout: u64,
    /// Bound on a scenario that sets none, in seconds.
    #[arg(long, default_value_t = 30)]
    scenario_timeout: u64,
}

/// Scenarios run at once against one server (they wait on the server most of the time).
const CONCURRENCY: usize = 8;

/// The operations that get a mutant: client-server PUT, POST and DELETE operations the
/// reference server implements.
pub fn operations() -> Vec<&'static Route> {
    mxconform_generated::client_server::ROUTES
        .iter()
        .filter(|r| matches!(r.method, Method::PUT | Method::POST | Method::DELETE))
        .filter(|r| mxconform_server::handlers::IMPLEMENTED.contains(&r.operation_id))
        .collect()
}

/// What a mutant's scenarios showed.
enum Verdict {
    Killed {
        by: String,
        reason: String,
        /// Scenarios finished when the killing one failed (it included); all of them when
        /// only refusals failed.
        ran: usize,
        /// Every failure was a call of the operation that the scenario expects refused (an
        /// error status) and the mutant answered with success: no scenario that got as far
        /// as the operation succeeding saw that it did nothing.
        refusal_only: bool,
    },
    Survived {
        ran: Vec<String>,
        timed_out: bool,
    },
    /// No scenario that passes against the normal server exercises the operation.
    Untested,
}

struct Mutant {
    route: &'static Route,
    selected: usize,
    verdict: Verdict,
    /// Scenarios that failed against the mutant and against the normal server too (not
    /// counted as kills).
    flaky: Vec<String>,
    took: Duration,
}

/// What every server of the command starts from.
struct Setup {
    profile: Profile,
    authority: Option<Authority>,
    peers_base: PathBuf,
    snapshots: PathBuf,
    scenario_timeout: Duration,
}

impl Setup {
    /// The reference profile (with its partners' deviations), its federation authority, and
    /// a copy of its snapshots: snapshot steps compare against the copy, so a mutant's
    /// mismatches leave the tree alone (removed when dropped).
    fn load(repo: &Path, scenario_timeout: Duration) -> Result<Setup> {
        let harness_dir = repo.join("harness");
        let profile_path = harness_dir.join("profiles").join("reference.toml");
        let mut profile = Profile::load(&profile_path)
            .with_context(|| format!("loading {}", profile_path.display()))?;
        profile.keep_deviations_for_partners("reference");
        let authority = match &profile.federation {
            Some(f) => Some(
                f.load_authority(profile.path.parent().unwrap_or(Path::new(".")))
                    .map_err(anyhow::Error::msg)
                    .context("the federation authority")?,
            ),
            None => None,
        };
        let snapshots = repo
            .join("target")
            .join("mutants")
            .join(format!("snapshots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&snapshots);
        let setup = Setup {
            peers_base: profile_path.parent().unwrap_or(&harness_dir).to_path_buf(),
            snapshots,
            authority,
            scenario_timeout,
            profile,
        };
        copy_dir(
            &repo.join("snapshots").join(&setup.profile.name),
            &setup.snapshots.join(&setup.profile.name),
        )?;
        Ok(setup)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.snapshots);
    }
}

/// Embedded servers, stopped when dropped (also on the error path of a half-made world).
struct Servers(Vec<embedded::Embedded>);

impl Drop for Servers {
    fn drop(&mut self) {
        for s in self.0.drain(..) {
            s.stop();
        }
    }
}

/// A server under test (normal, or with a mutant), its partners and peers, and the harness's
/// environment for running scenarios against it: what `mxconform run` sets up for the
/// embedded reference server.
struct World {
    env: Arc<runner::Env>,
    versions: Vec<String>,
    // Dropped after `env`, which holds the peers too.
    _servers: Servers,
}

impl World {
    fn start(setup: &Setup, rt: &tokio::runtime::Runtime, mutant: Option<&str>) -> Result<World> {
        let mut profile = setup.profile.clone();
        let mut servers = Servers(Vec::new());
        let mut has_partners = false;
        if let Some(f) = profile.federation.as_mut() {
            has_partners = !f.partners.is_empty();
            for (name, p) in f.partners.iter_mut().filter(|(_, p)| p.embedded) {
                let server_name = format!("localhost:{}", embedded::free_port()?);
                let server = embedded::start(embedded::Spec {
                    server_name: server_name.clone(),
                    authority: setup.authority.as_ref(),
                    peers: None,
                    admin: None,
                })
                .with_context(|| format!("starting the embedded partner `{name}`"))?;
                p.base_url = server.url.clone();
                p.server_name = server_name;
                p.registration = mxconform_harness::profile::Registration::Open;
                servers.0.push(server);
            }
        }
        if has_partners {
            let name = format!("localhost:{}", embedded::free_port()?);
            profile.server_name = name.clone();
            if let Some(f) = profile.federation.as_mut() {
                f.server_name = name;
            }
        }
        let peers = if profile.peers.is_empty() {
            None
        } else {
            Some(Arc::new(
                mxconform_harness::peers::Peers::start_with_authority(
                    &profile.peers,
                    &setup.peers_base,
                    &profile.server_name,
                    true,
                    setup.authority.as_ref(),
                )
                .context("starting the peers the profile configures")?,
            ))
        };
        let server = embedded::start_mutant(
            embedded::Spec {
                server_name: profile.server_name.clone(),
                authority: setup.authority.as_ref(),
                peers: peers.as_deref(),
                admin: profile.admin.as_deref(),
            },
            mutant,
        )?;
        let url = server.url.clone();
        servers.0.push(server);
        let federation = match &profile.federation {
            Some(f) => {
                let dir = profile.path.parent().unwrap_or(Path::new("."));
                Some(Arc::new(
                    mxconform_harness::federation::Federation::new(f, dir, &url)
                        .map_err(anyhow::Error::msg)
                        .context("setting up federation")?,
                ))
            }
            None => None,
        };
        // The identity server checks tokens and signatures with the server under test.
        if let (Some(p), Some(f)) = (&peers, &federation) {
            p.connect_homeserver(&f.client);
        }
        let limits = mxconform_harness::client::Limits::default();
        let client =
            mxconform_harness::client::Client::new(&url, limits).map_err(anyhow::Error::msg)?;
        let (versions, _) = rt
            .block_on(mxconform_harness::probe(&client))
            .context("asking the embedded server its versions")?;
        let mut partners = BTreeMap::new();
        for (name, p) in profile.federation.iter().flat_map(|f| f.partners.iter()) {
            let client = mxconform_harness::client::Client::new(&p.base_url, limits)
                .map_err(anyhow::Error::msg)?;
            partners.insert(
                name.clone(),
                runner::Partner {
                    client,
                    config: p.clone(),
                },
            );
        }
        let env = runner::Env {
            client,
            snapshot_dir: setup.snapshots.join(&profile.name),
            profile,
            scenario_timeout: setup.scenario_timeout,
            peers,
            admin: tokio::sync::OnceCell::new(),
            federation,
            partners,
        };
        Ok(World {
            env: Arc::new(env),
            versions,
            _servers: servers,
        })
    }
}

/// A scenario's result against one server.
struct Ran {
    name: String,
    outcome: runner::Outcome,
}

/// Runs scenarios against `env`, at most [`CONCURRENCY`] at once, handing each result to
/// `done` as it comes; stops (dropping those under way) when `done` says so.
async fn run_scenarios(
    env: &Arc<runner::Env>,
    scenarios: &[Arc<Scenario>],
    mut done: impl AsyncFnMut(Ran) -> bool,
) {
    let mut queue = scenarios.iter();
    let mut set = tokio::task::JoinSet::new();
    loop {
        while set.len() < CONCURRENCY {
            let Some(s) = queue.next() else { break };
            let (env, s) = (env.clone(), s.clone());
            set.spawn(async move {
                let outcome = runner::run(&env, &s).await;
                Ran {
                    name: s.name.clone(),
                    outcome,
                }
            });
        }
        let Some(joined) = set.join_next().await else {
            return;
        };
        let ran = match joined {
            Ok(r) => r,
            // A scenario task that panicked: the harness never should; not a kill.
            Err(e) => {
                eprintln!("mxconform mutants: a scenario task ended abnormally: {e}");
                continue;
            }
        };
        if done(ran).await {
            set.abort_all();
            return;
        }
    }
}

pub fn run(args: MutantsArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let repo = crate::repo_root()?;
    let harness_dir = repo.join("harness");
    let all = operations();
    let chosen: Vec<&'static Route> = if args.only.is_empty() {
        all.clone()
    } else {
        let mut chosen = Vec::new();
        for op in &args.only {
            match all.iter().find(|r| r.operation_id == op) {
                Some(r) => chosen.push(*r),
                None => anyhow::bail!(
                    "--only {op}: not a state-changing client-server operation the reference server implements (`mxconform routes --implemented` lists them)"
                ),
            }
        }
        chosen
    };
    let reasons = read_reasons(&harness_dir.join("mutants.toml"))?;

    let setup = Setup::load(&repo, Duration::from_secs(args.scenario_timeout))?;

    let scenarios = mxconform_harness::scenario::load_dir(&harness_dir.join("scenarios"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let chosen_ids: BTreeSet<&str> = chosen.iter().map(|r| r.operation_id).collect();
    // The baseline: the whole suite (only the scenarios whose steps call a chosen operation
    // with --only), against the normal server, recording which operations each exercised.
    let candidates: Vec<Arc<Scenario>> = scenarios
        .into_iter()
        .filter(|s| args.only.is_empty() || s.operations().iter().any(|o| chosen_ids.contains(o)))
        .map(Arc::new)
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let normal = World::start(&setup, &rt, None).context("starting the normal server")?;
    let gated: Vec<Arc<Scenario>> = candidates
        .into_iter()
        .filter(|s| {
            mxconform_harness::version_gate(s, &normal.versions, &normal.env.profile.serves)
                .is_none()
        })
        .collect();
    let (exercised, broken) = baseline(&rt, &normal, &gated);
    for (name, why) in &broken {
        eprintln!(
            "mxconform mutants: {name} fails against the normal server, so it cannot kill a mutant: {}",
            first_line(why)
        );
    }
    eprintln!(
        "mxconform mutants: baseline of {} scenarios in {:.1} s; {} mutants",
        gated.len(),
        started.elapsed().as_secs_f64(),
        chosen.len()
    );

    let bound = Duration::from_secs(args.mutant_timeout);
    let mut results = Vec::new();
    let mut out = std::io::stdout();
    for route in &chosen {
        let op = route.operation_id;
        let began = Instant::now();
        let selected = select(&gated, &exercised, op);
        let (verdict, flaky) = if selected.is_empty() {
            (Verdict::Untested, Vec::new())
        } else {
            judge(&setup, &rt, &normal, route, &selected, bound)?
        };
        let m = Mutant {
            route,
            selected: selected.len(),
            verdict,
            flaky,
            took: began.elapsed(),
        };
        let _ = writeln!(out, "{}", line(&m));
        let _ = out.flush();
        results.push(m);
    }

    let took = started.elapsed();
    eprintln!(
        "mxconform mutants: {} mutants in {:.1} s",
        results.len(),
        took.as_secs_f64()
    );
    for op in reasons.keys() {
        if !all.iter().any(|r| r.operation_id == op) {
            eprintln!("mxconform mutants: harness/mutants.toml gives a reason for {op}, which is not an operation that gets a mutant: remove it");
        }
        let checked = results
            .iter()
            .any(|m| m.route.operation_id == op && m.killed_by_check());
        if checked {
            eprintln!("mxconform mutants: harness/mutants.toml gives a reason for {op}, whose mutant is killed by a check of what it did: remove it");
        }
    }
    if let Some(path) = &args.report_md {
        let text = markdown(&results, &reasons, &broken, took);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    drop(normal);
    let t = Tally::of(&results);
    println!(
        "killed by a check of what the operation did: {} of {}; only by a refusal the mutant ignored: {}",
        t.by_check,
        t.killed,
        t.killed - t.by_check
    );
    println!("mutants: {} killed, {} survived", t.killed, t.survived);
    let untested: Vec<&str> = results
        .iter()
        .filter(|m| matches!(m.verdict, Verdict::Untested))
        .map(|m| m.route.operation_id)
        .collect();
    println!(
        "untested: {} (no scenario exercises the operation){}",
        untested.len(),
        if untested.is_empty() {
            String::new()
        } else {
            format!(": {}", untested.join(", "))
        }
    );
    Ok(ExitCode::SUCCESS)
}

impl Mutant {
    fn killed_by_check(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Killed {
                refusal_only: false,
                ..
            }
        )
    }
}

/// The figures of a run.
struct Tally {
    killed: usize,
    by_check: usize,
    survived: usize,
    untested: usize,
}

impl Tally {
    fn of(results: &[Mutant]) -> Tally {
        let count = |f: &dyn Fn(&Mutant) -> bool| results.iter().filter(|m| f(m)).count();
        Tally {
            killed: count(&|m| matches!(m.verdict, Verdict::Killed { .. })),
            by_check: count(&|m| m.killed_by_check()),
            survived: count(&|m| matches!(m.verdict, Verdict::Survived { .. })),
            untested: count(&|m| matches!(m.verdict, Verdict::Untested)),
        }
    }
}

/// What each scenario that passes against the normal server exercised, and how long it took;
/// and the scenarios that fail there (which cannot kill a mutant), with why.
type Exercised = BTreeMap<String, (BTreeSet<String>, Duration)>;

fn baseline(
    rt: &tokio::runtime::Runtime,
    normal: &World,
    scenarios: &[Arc<Scenario>],
) -> (Exercised, Vec<(String, String)>) {
    let mut exercised = Exercised::new();
    let mut broken = Vec::new();
    rt.block_on(run_scenarios(&normal.env, scenarios, async |ran: Ran| {
        match (&ran.outcome.result, &ran.outcome.skipped) {
            (_, Some(_)) => {}
            (Ok(()), None) => {
                let ops = ran.outcome.operations.iter().cloned().collect();
                exercised.insert(ran.name, (ops, ran.outcome.duration));
            }
            (Err(e), None) => broken.push((ran.name, e.clone())),
        }
        false
    }));
    (exercised, broken)
}

/// The scenarios that exercise `op` (a step calls it, or the baseline saw it called: actors
/// are registered through `register`) and pass against the normal server: those whose steps
/// call it first, then quickest first, so that a kill comes early.
fn select(scenarios: &[Arc<Scenario>], exercised: &Exercised, op: &str) -> Vec<Arc<Scenario>> {
    let mut selected: Vec<(bool, Duration, Arc<Scenario>)> = scenarios
        .iter()
        .filter_map(|s| {
            let (ops, took) = exercised.get(&s.name)?;
            let calls = s.operations().contains(&op);
            (calls || ops.contains(op)).then(|| (!calls, *took, s.clone()))
        })
        .collect();
    selected.sort_by_key(|a| (a.0, a.1));
    selected.into_iter().map(|(_, _, s)| s).collect()
}

/// Runs a mutant's scenarios against a server with that mutant, quickest first, until one
/// fails other than by a refusal the mutant ignored, or all have run. A failing scenario
/// counts only if it passes again against the normal server; otherwise it is returned among
/// the flaky ones.
fn judge(
    setup: &Setup,
    rt: &tokio::runtime::Runtime,
    normal: &World,
    route: &'static Route,
    selected: &[Arc<Scenario>],
    bound: Duration,
) -> Result<(Verdict, Vec<String>)> {
    let op = route.operation_id;
    let success = mxconform_server::mutant::success_status(route);
    let world = World::start(setup, rt, Some(op))
        .with_context(|| format!("starting the server with the {op} mutant"))?;
    let mut ran = Vec::new();
    let mut flaky = Vec::new();
    let mut checked = None;
    let mut refused = None;
    let judged = rt.block_on(async {
        let work = run_scenarios(&world.env, selected, async |r: Ran| {
            ran.push(r.name.clone());
            let (Err(e), None) = (&r.outcome.result, &r.outcome.skipped) else {
                return false;
            };
            let Some(s) = selected.iter().find(|s| s.name == r.name) else {
                return false;
            };
            let refusal = refused_at_call_of(s, e, op, success);
            if refusal && refused.is_some() {
                return false;
            }
            if runner::run(&normal.env, s).await.result.is_err() {
                flaky.push(r.name);
                return false;
            }
            let kill = (r.name, e.clone(), ran.len());
            if refusal {
                refused = Some(kill);
                return false;
            }
            checked = Some(kill);
            true
        });
        tokio::time::timeout(bound, work).await
    });
    drop(world);
    let verdict = match (checked, refused) {
        (Some((by, reason, n)), _) => Verdict::Killed {
            by,
            reason,
            ran: n,
            refusal_only: false,
        },
        // Every scenario ran, in search of a check.
        (None, Some((by, reason, _))) => Verdict::Killed {
            by,
            reason,
            ran: ran.len(),
            refusal_only: true,
        },
        (None, None) => Verdict::Survived {
            ran,
            timed_out: judged.is_err(),
        },
    };
    Ok((verdict, flaky))
}

/// Whether a scenario failed at a step calling `op` that expects it refused (a 4xx status, or
/// an errcode), where the mutant answered `success`: the mutant accepted a request that should
/// be refused, which says nothing of whether the scenarios would see it do nothing. (An
/// expected 5xx, such as 502 when the server's own request to another service fails, shows
/// that request was made: a check of what the operation did.) Failures read
/// `step N (label): ...`.
fn refused_at_call_of(s: &Scenario, error: &str, op: &str, success: u16) -> bool {
    use mxconform_harness::scenario::StatusSpec;
    let n = error
        .strip_prefix("step ")
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(n, _)| n.parse::<usize>().ok());
    let Some(step) = n.and_then(|n| s.steps.get(n.checked_sub(1)?)) else {
        return false;
    };
    let statuses = match &step.expect.status {
        Some(StatusSpec::One(x)) => vec![*x],
        Some(StatusSpec::Any(list)) => list.clone(),
        None => Vec::new(),
    };
    let refusal = if statuses.is_empty() {
        step.expect.errcode.is_some()
    } else {
        !statuses.contains(&success) && statuses.iter().all(|x| (400..500).contains(x))
    };
    step.call() == Some(op) && refusal
}

/// The line printed for one mutant.
fn line(m: &Mutant) -> String {
    let op = m.route.operation_id;
    let secs = m.took.as_secs_f64();
    let flaky = if m.flaky.is_empty() {
        String::new()
    } else {
        format!(
            "; failing against the normal server too, not counted: {}",
            m.flaky.join(", ")
        )
    };
    match &m.verdict {
        Verdict::Killed {
            by,
            ran,
            refusal_only,
            ..
        } => format!(
            "killed    {op}: by {by}{} ({ran} of {} scenarios run, {secs:.1} s){flaky}",
            if *refusal_only {
                ", only by a refusal"
            } else {
                ""
            },
            m.selected
        ),
        Verdict::Survived { ran, timed_out } => format!(
            "survived  {op}: {} scenarios passed{}{flaky}",
            ran.len(),
            if *timed_out {
                format!(" before the {secs:.0} s bound")
            } else {
                format!(" ({secs:.1} s)")
            }
        ),
        Verdict::Untested => format!("untested  {op}: no scenario exercises it"),
    }
}

/// Why each survivor survives (`harness/mutants.toml`: `operationId = "reason"`).
fn read_reasons(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not TOML", path.display()))?;
    table
        .into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, s)),
            _ => anyhow::bail!("{}: `{k}` must be a string (the reason)", path.display()),
        })
        .collect()
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > 200 {
        let cut: String = line.chars().take(200).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

fn markdown(
    results: &[Mutant],
    reasons: &BTreeMap<String, String>,
    broken: &[(String, String)],
    took: Duration,
) -> String {
    use std::fmt::Write as _;
    let t = Tally::of(results);
    let tested = t.killed + t.survived;
    let pct = |n: usize| {
        if tested == 0 {
            0.0
        } else {
            n as f64 * 100.0 / tested as f64
        }
    };
    let reason = |op: &str| {
        reasons.get(op).map_or(
            "no reason given yet (add a scenario that catches it, or a reason to `harness/mutants.toml`)",
            String::as_str,
        )
    };
    let heading = |r: &Route| {
        format!(
            "### `{}` ({} `{}`)\n",
            r.operation_id,
            r.method.as_str(),
            r.path
        )
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Mutants: how much misbehaviour the suites catch\n");
    let _ = writeln!(
        md,
        "Made by `mxconform mutants --report-md harness/reports/mutants.md`. Each state-changing \
client-server operation the reference server implements (PUT, POST, DELETE) becomes in turn a \
no-op that answers a schema-valid success (`Config::noop_mutant`), and the scenarios that exercise \
it run against that server. A mutant is killed when one of them fails (and passes again against \
the normal server), survived when all pass. The made-up answer has the schema's required \
properties, its containers empty, and the scalars the request gave echoed, so a scenario catches \
it by checking what the operation did or answered. A mutant killed only by a refusal failed only \
scenarios that expect the operation to refuse a request (and the mutant accepted it): none of \
them checked what a successful call does. Reasons for those and for survivors are kept in \
`harness/mutants.toml`.\n"
    );
    let _ = writeln!(
        md,
        "**{} of {tested} mutants killed ({:.1}%)**, {} of them by a check of what the operation did ({:.1}%); \
{} survived; {} untested (no scenario exercises the operation). {} operations in {:.0} s ({} build, \
{CONCURRENCY} scenarios at once; most of it is scenarios waiting out their bounds for what the mutant \
never did).\n",
        t.killed,
        pct(t.killed),
        t.by_check,
        pct(t.by_check),
        t.survived,
        t.untested,
        results.len(),
        took.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let _ = writeln!(md, "## Survivors\n");
    if t.survived == 0 {
        let _ = writeln!(md, "None.\n");
    }
    for m in results {
        let Verdict::Survived { ran, timed_out } = &m.verdict else {
            continue;
        };
        let _ = writeln!(md, "{}", heading(m.route));
        let _ = writeln!(md, "Why: {}\n", reason(m.route.operation_id));
        if *timed_out {
            let _ = writeln!(
                md,
                "Timed out after {:.0} s with no scenario failed.\n",
                m.took.as_secs_f64()
            );
        }
        let names: Vec<String> = ran.iter().map(|n| format!("`{n}`")).collect();
        let _ = writeln!(
            md,
            "Scenarios that ran and passed ({}): {}\n",
            ran.len(),
            names.join(", ")
        );
    }
    let _ = writeln!(md, "## Killed only by a refusal\n");
    let _ = writeln!(
        md,
        "Every scenario that fails expects the operation to refuse a request the mutant accepted; none checks what a successful call does.\n"
    );
    let _ = writeln!(
        md,
        "| operation | killed by | why no check of what it does |\n|---|---|---|"
    );
    for m in results {
        let Verdict::Killed {
            by,
            refusal_only: true,
            ..
        } = &m.verdict
        else {
            continue;
        };
        let op = m.route.operation_id;
        let _ = writeln!(md, "| `{op}` | `{by}` | {} |", reason(op));
    }
    let _ = writeln!(md, "\n## Untested\n");
    if t.untested == 0 {
        let _ = writeln!(md, "None.\n");
    } else {
        let _ = writeln!(md, "| operation | reason |\n|---|---|");
        for m in results
            .iter()
            .filter(|m| matches!(m.verdict, Verdict::Untested))
        {
            let op = m.route.operation_id;
            let _ = writeln!(md, "| `{op}` | {} |", reason(op));
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "## All kills\n");
    let _ = writeln!(
        md,
        "| operation | killed by | only a refusal | scenarios run / selected | how it failed |\n|---|---|---|---|---|"
    );
    for m in results {
        let Verdict::Killed {
            by,
            reason,
            ran,
            refusal_only,
        } = &m.verdict
        else {
            continue;
        };
        let how = first_line(reason).replace('|', "\\|");
        let _ = writeln!(
            md,
            "| `{}` | `{by}` | {} | {ran} / {} | {how} |",
            m.route.operation_id,
            if *refusal_only { "yes" } else { "no" },
            m.selected
        );
    }
    if !broken.is_empty() {
        let _ = writeln!(
            md,
            "\n## Scenarios left out\n\nThey fail against the normal server, so they cannot kill a mutant.\n"
        );
        for (name, why) in broken {
            let _ = writeln!(md, "- `{name}`: {}", first_line(why));
        }
    }
    md
}

/// Copies a folder of files (the snapshots), creating the target.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", from.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}
