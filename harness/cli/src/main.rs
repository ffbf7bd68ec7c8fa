//! `mxconform`: the one binary that wires the crates together (codegen, the harness and the
//! reference server), with one subcommand per daily use.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// mimalloc, not glibc's malloc: the server's requests allocate many small JSON values, and
/// it makes them sooner (figures in harness/cli/Cargo.toml and harness/reports/bench.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use mxconform_codegen::pin::{self, Pin};

mod bench;
mod bench_federation;
mod bench_pdu;
mod bench_server;
mod embedded;
mod merge_cmd;
mod mutants;
mod pdu_cmd;
mod serve;

use serve::{serve, with_config_file, ServeArgs};

#[derive(Parser)]
#[command(
    name = "mxconform",
    version,
    about = "Stay true to the Matrix specification"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate generated/ from a spec directory (default: the pinned version).
    Generate {
        /// The folder that holds `data/` (a matrix-spec checkout, or ../shared/matrix-spec/v1.19).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Write nothing; exit non-zero naming the stale files when generated/ is out of date.
        #[arg(long)]
        check: bool,
    },
    /// Print the route table of the generated code.
    Routes {
        #[arg(long, value_enum, default_value = "table")]
        format: RoutesFormat,
        /// Only the client-server operations the reference server implements.
        #[arg(long)]
        implemented: bool,
    },
    /// Run the compliance suites against a homeserver (default: the embedded reference server).
    Run(RunArgs),
    /// Serve the reference homeserver.
    Serve(ServeArgs),
    /// Where two servers' JSON reports differ, scenario by scenario.
    Compare { a: PathBuf, b: PathBuf },
    /// One report from the JSON reports of a run's partitions (`run --partition K/N` on
    /// several machines): the totals and coverage of the whole run.
    Merge(merge_cmd::MergeArgs),
    /// How much misbehaviour the suites catch: each state-changing client-server operation of
    /// the embedded reference server in turn made a no-op answering a schema-valid success,
    /// killed when a scenario exercising it fails.
    Mutants(mutants::MutantsArgs),
    /// Benchmarks with figures and ratios against peers (bounded, loopback only).
    Bench {
        /// Which: codegen, compile, server, pdu, or all.
        #[arg(value_enum, default_value = "all")]
        what: BenchWhat,
        /// How many generation runs to time.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Also measure the test Synapse of harness/synapse/synapse.sh (started if needed).
        #[arg(long)]
        synapse: bool,
        /// Time budget per server workload, in seconds.
        #[arg(long, default_value_t = 5)]
        budget: u64,
        /// The room version of the PDU benchmarks (2-12).
        #[arg(long, default_value = "12")]
        room_version: String,
        /// The history sizes of the storage benchmark (events, in total over 100 rooms).
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        events: Vec<usize>,
    },
    /// The room-version core: canonical JSON, event ids, redaction, signatures, authorization
    /// and state resolution of PDUs (JSON Lines on standard input).
    Pdu {
        #[command(subcommand)]
        command: pdu_cmd::PduCommand,
    },
    /// Makes (once) the certificate authority the fake homeservers' certificates chain to:
    /// `ca.pem` (for the server under test to trust) and `ca.key` in DIR.
    FederationCa {
        #[arg(long)]
        out: PathBuf,
        /// Also issue a leaf certificate for this host and 127.0.0.1 (`<out>/<host>.crt` and
        /// `<out>/<host>.key`), for a real homeserver's TLS federation listener.
        #[arg(long)]
        leaf: Option<String>,
    },
    /// For `bench pdu`: resolves one workload case RUNS times (run under callgrind to count
    /// instructions).
    #[command(hide = true)]
    BenchResolveOnce {
        file: PathBuf,
        index: usize,
        runs: usize,
    },
    /// The API change between two spec versions.
    Diff {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
        #[arg(long, value_enum, default_value = "md")]
        format: DiffFormat,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The homeserver's base URL; without it, the embedded reference server is started.
    #[arg(long)]
    server: Option<String>,
    /// The server profile (harness/profiles/NAME.toml): server name, registration, deviations.
    #[arg(long)]
    profile: Option<String>,
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    report_md: Option<PathBuf>,
    /// Leave out the negative sweeps derived from the route table (the `sweeps` area).
    #[arg(long)]
    no_sweeps: bool,
    /// Bound on one request, in seconds.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
    /// Bound on a scenario that sets none, in seconds.
    #[arg(long, default_value_t = 60)]
    scenario_timeout: u64,
    /// The partner homeservers of the scenarios that need real ones: `reference` (reference
    /// servers started in memory, federating over TLS by name), or a profile whose
    /// [federation.partners] and authority to use (`synapse`: the partner Synapses of
    /// `harness/synapse/synapse.sh start-partners`). Default: the profile's own.
    #[arg(long, value_name = "reference|PROFILE")]
    partners: Option<String>,
    /// Run only partition K of N (1 <= K <= N) of the tests, for splitting a run over N
    /// machines; `mxconform merge` makes one report of the N JSON reports. A test's partition
    /// is FNV-1a 64 of its name, then MurmurHash3's fmix64, modulo N, plus 1: fixed, so every
    /// machine makes the same split.
    #[arg(long, value_name = "K/N")]
    partition: Option<mxconform_harness::partition::Partition>,
    #[command(flatten)]
    libtest: libtest_mimic::Arguments,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchWhat {
    All,
    Codegen,
    Compile,
    /// The reference server (and Synapse with --synapse), and the suite's wall time.
    Server,
    /// The room-version core (hashing, signing, authorization, state resolution) against
    /// ruma's crates, built in target/bench.
    Pdu,
    /// The reference server's storage: memory, restart time and request costs as history grows
    /// to `--events` (in 100 rooms, through the client-server API). Not part of `all`.
    Storage,
    /// The reference server (and Synapse with --synapse) as other homeservers see it: inbound
    /// /send, a remote join of a room of 1,000 members, delivery to 10 servers.
    Federation,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoutesFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum DiffFormat {
    Md,
    Json,
}

fn main() -> ExitCode {
    let argv = match with_config_file(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(Cli::parse_from(argv)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The repository this binary works on: found from the current directory, else the one it
/// was built from.
fn repo_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    pin::find_repo(&cwd)
        .or_else(|| pin::find_repo(Path::new(env!("CARGO_MANIFEST_DIR"))))
        .context("cannot find the mxconform repository (a folder holding spec/pin.toml) above the current directory")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Generate { spec, check } => generate(spec, check),
        Command::Routes {
            format,
            implemented,
        } => {
            routes(format, implemented);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            // The embedded server stays quiet unless RUST_LOG asks.
            init_logs(None, None, LogFormat::Text)?;
            run_suites(args)
        }
        Command::Bench {
            what,
            runs,
            synapse,
            budget,
            room_version,
            events,
        } => {
            let repo = repo_root()?;
            let mut rows = Vec::new();
            if matches!(what, BenchWhat::All | BenchWhat::Codegen) {
                let dir = pin::find_spec_dir(&repo).map_err(anyhow::Error::msg)?;
                rows.push(bench::codegen(&dir, runs)?);
            }
            if matches!(what, BenchWhat::All | BenchWhat::Compile) {
                let work = repo.join("target").join("bench");
                rows.push(bench::compile(&repo, &work)?);
            }
            if matches!(what, BenchWhat::All | BenchWhat::Pdu) {
                let work = repo.join("target").join("bench");
                rows.extend(bench_pdu::pdu(&work, &room_version)?);
            }
            if matches!(what, BenchWhat::All | BenchWhat::Server) {
                rows.extend(bench_servers(
                    &repo,
                    synapse,
                    std::time::Duration::from_secs(budget.clamp(1, 60)),
                )?);
            }
            if matches!(what, BenchWhat::All | BenchWhat::Federation) {
                rows.extend(bench_federation_servers(
                    &repo,
                    synapse,
                    std::time::Duration::from_secs(budget.clamp(1, 60)),
                )?);
            }
            if what == BenchWhat::Storage {
                rows.extend(bench_storage(&repo, &events)?);
            }
            bench::print_table(&rows);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve(args),
        Command::Compare { a, b } => {
            let read = |p: &Path| -> Result<mxconform_harness::Report> {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not an mxconform JSON report", p.display()))
            };
            print!(
                "{}",
                mxconform_harness::report::compare(&read(&a)?, &read(&b)?)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Merge(args) => merge_cmd::run(args),
        Command::Mutants(args) => mutants::run(args),
        Command::Diff { from, to, format } => diff(&from, &to, format),
        Command::Pdu { command } => pdu_cmd::run(command),
        Command::FederationCa { out, leaf } => {
            let ca = mxconform_harness::federation::tls::Authority::load_or_create(&out)
                .map_err(anyhow::Error::msg)?;
            println!("{}", out.join("ca.pem").display());
            if let Some(host) = leaf {
                let (cert, key) = ca
                    .issue_pem(&[&host, "127.0.0.1"])
                    .map_err(anyhow::Error::msg)?;
                let (c, k) = (
                    out.join(format!("{host}.crt")),
                    out.join(format!("{host}.key")),
                );
                std::fs::write(&c, cert).with_context(|| format!("writing {}", c.display()))?;
                std::fs::write(&k, key).with_context(|| format!("writing {}", k.display()))?;
                println!("{}", c.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchResolveOnce { file, index, runs } => {
            bench_pdu::resolve_once(&file, index, runs)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(dir: &Path) -> Result<mxconform_codegen::Spec> {
    mxconform_codegen::Spec::load(dir)
        .with_context(|| format!("loading the spec at {}", dir.display()))
}

fn generate(spec_dir: Option<PathBuf>, check: bool) -> Result<ExitCode> {
    let repo = repo_root()?;
    let dir = match spec_dir {
        Some(d) => d,
        None => pin::find_spec_dir(&repo).map_err(anyhow::Error::msg)?,
    };
    let started = std::time::Instant::now();
    let spec = load(&dir)?;
    let model = mxconform_codegen::Model::build(&spec)?;
    for w in &model.warnings {
        eprintln!("spec warning: {w}");
    }
    let files = mxconform_codegen::generate_from_model(&spec, &model)?;
    let out = repo.join("generated");
    if check {
        let stale = mxconform_codegen::stale_files(&out, &files);
        if stale.is_empty() {
            println!(
                "generated/ is up to date with {} ({} files)",
                spec.version.version,
                files.len()
            );
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("generated/ is stale; these files differ from what the spec gives:");
        for f in &stale {
            eprintln!("  generated/{f}");
        }
        eprintln!("run `cargo run -p mxconform -- generate` and review the diff");
        return Ok(ExitCode::FAILURE);
    }
    let changed = mxconform_codegen::write_files(&out, &files).context("writing generated/")?;
    if let Some(new_pin) = Pin::from_version(&spec.version) {
        if Pin::read(&repo).ok().as_ref() != Some(&new_pin) {
            new_pin.write(&repo).context("writing spec/pin.toml")?;
            println!(
                "spec/pin.toml now pins {} ({})",
                new_pin.version, new_pin.commit
            );
        }
    }
    println!(
        "generated {} files from {} ({} operations, {} event schemas, {} types) in {:.0?}; {} changed",
        files.len(),
        spec.version.version,
        model.operations.len(),
        model.events.len(),
        model.types.len(),
        started.elapsed(),
        changed.len()
    );
    for f in &changed {
        println!("  generated/{f}");
    }
    Ok(ExitCode::SUCCESS)
}

fn routes(format: RoutesFormat, implemented: bool) {
    let routes: Vec<_> = mxconform_generated::routes()
        .filter(|r| {
            !implemented
                || (r.group == mxconform_generated::Group::ClientServer
                    && mxconform_server::handlers::IMPLEMENTED.contains(&r.operation_id))
        })
        .collect();
    match format {
        RoutesFormat::Json => {
            let list: Vec<serde_json::Value> = routes
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "group": r.group.as_str(),
                        "operation_id": r.operation_id,
                        "method": r.method.as_str(),
                        "path": r.path,
                        "auth": r.auth.as_str(),
                        "rate_limited": r.rate_limited,
                        "added_in": r.added_in,
                        "deprecated": r.deprecated,
                        "spec_url": r.spec_url,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&list).expect("JSON values serialise")
            );
        }
        RoutesFormat::Table => {
            for r in routes {
                println!(
                    "{:<20} {:<7} {:<70} {:<36} auth={:<8} {}{}",
                    r.group.as_str(),
                    r.method.as_str(),
                    r.path,
                    r.operation_id,
                    r.auth.as_str(),
                    r.added_in.map(|v| format!("v{v}")).unwrap_or_default(),
                    if r.rate_limited { " rate-limited" } else { "" }
                );
            }
        }
    }
}

fn diff(from: &Path, to: &Path, format: DiffFormat) -> Result<ExitCode> {
    let digest_of = |dir: &Path| -> Result<(String, String)> {
        let spec = load(dir)?;
        let model = mxconform_codegen::Model::build(&spec)?;
        let label = if spec.version.version == "unknown" {
            dir.display().to_string()
        } else {
            spec.version.version.clone()
        };
        Ok((label, mxconform_codegen::digest::digest(&model)))
    };
    let (from_label, a) = digest_of(from)?;
    let (to_label, b) = digest_of(to)?;
    let d = mxconform_codegen::diff::diff(&from_label, &a, &to_label, &b);
    match format {
        DiffFormat::Md => print!("{}", d.to_markdown()),
        DiffFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&d).context("serialising the diff")?
        ),
    }
    if from == to {
        bail!("--from and --to name the same directory");
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads application-service registration files for the server.
fn load_appservices(
    files: &[(PathBuf, Option<String>)],
    server_name: &str,
) -> Result<Vec<mxconform_server::appservice::AppService>> {
    files
        .iter()
        .map(|(path, url)| {
            let text = match url {
                // The registration, pointed at where the harness's peer really listens.
                Some(u) => mxconform_harness::peers::Registration::yaml_with_url(path, u)?,
                None => std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            };
            mxconform_server::appservice::AppService::from_yaml(
                &text,
                &path.display().to_string(),
                server_name,
            )
            .map_err(anyhow::Error::msg)
        })
        .collect()
}

/// `--partners`: embedded reference servers in place of the profile's partners (the same
/// names; `second` and `third` when it names none), or another profile's partners with the
/// authority their certificates come from.
fn use_partners(
    profile: &mut mxconform_harness::Profile,
    which: &str,
    profiles_dir: &Path,
) -> Result<()> {
    let Some(f) = profile.federation.as_mut() else {
        bail!(
            "--partners: the profile `{}` has no [federation]",
            profile.name
        );
    };
    if which == "reference" {
        let mut names: Vec<String> = f.partners.keys().cloned().collect();
        if names.is_empty() {
            names = vec!["second".into(), "third".into()];
        }
        f.partners = names
            .into_iter()
            .map(|n| (n, mxconform_harness::federation::PartnerConfig::embedded()))
            .collect();
        return Ok(());
    }
    let path = profiles_dir.join(format!("{which}.toml"));
    let other = mxconform_harness::Profile::load(&path)
        .with_context(|| format!("--partners {which}: loading {}", path.display()))?;
    let Some(theirs) = other.federation else {
        bail!("--partners {which}: that profile has no [federation]");
    };
    if theirs.partners.is_empty() {
        bail!("--partners {which}: that profile names no [federation.partners]");
    }
    f.authority = theirs.authority_dir(other.path.parent().unwrap_or(Path::new(".")));
    f.partners = theirs.partners;
    Ok(())
}

fn run_suites(args: RunArgs) -> Result<ExitCode> {
    let repo = repo_root()?;
    let harness_dir = repo.join("harness");
    let profile_name = args.profile.clone().unwrap_or_else(|| {
        if args.server.is_some() {
            "generic".into()
        } else {
            "reference".into()
        }
    });
    let profile_path = harness_dir
        .join("profiles")
        .join(format!("{profile_name}.toml"));
    let mut profile = mxconform_harness::Profile::load(&profile_path).with_context(|| {
        format!(
            "loading the profile (profiles live in {})",
            harness_dir.join("profiles").display()
        )
    })?;
    if let Some(which) = &args.partners {
        use_partners(&mut profile, which, &harness_dir.join("profiles"))?;
    }
    // Deviations that are the partners' hold only with those partners.
    let partner_kind = match &args.partners {
        Some(p) => p.clone(),
        None if profile
            .federation
            .as_ref()
            .is_some_and(|f| !f.partners.is_empty() && f.partners.values().all(|p| p.embedded)) =>
        {
            "reference".to_string()
        }
        None => profile.name.clone(),
    };
    profile.keep_deviations_for_partners(&partner_kind);
    // The server: --server, else the profile's base_url, else the embedded reference server.
    let external = args.server.clone().or_else(|| profile.base_url.clone());
    // The federation authority: it issues the fake servers' certificates and the embedded
    // servers', and the embedded servers trust it.
    let authority = match &profile.federation {
        Some(f) => Some(
            f.load_authority(profile.path.parent().unwrap_or(Path::new(".")))
                .map_err(anyhow::Error::msg)
                .context("the federation authority")?,
        ),
        None => None,
    };
    // Embedded partners: reference servers named `localhost:<port>`, federating over TLS there.
    let mut embedded_servers = Vec::new();
    let mut has_partners = false;
    if let Some(f) = profile.federation.as_mut() {
        has_partners = !f.partners.is_empty();
        for (name, p) in f.partners.iter_mut().filter(|(_, p)| p.embedded) {
            let server_name = format!("localhost:{}", embedded::free_port()?);
            let server = embedded::start(embedded::Spec {
                server_name: server_name.clone(),
                authority: authority.as_ref(),
                peers: None,
                admin: None,
            })
            .with_context(|| format!("starting the embedded partner `{name}`"))?;
            p.base_url = server.url.clone();
            p.server_name = server_name;
            p.registration = mxconform_harness::profile::Registration::Open;
            embedded_servers.push(server);
        }
    }
    // An embedded server under test with partners is reached by name too, so it gets a port.
    if external.is_none() && has_partners {
        let name = format!("localhost:{}", embedded::free_port()?);
        profile.server_name = name.clone();
        if let Some(f) = profile.federation.as_mut() {
            f.server_name = name;
        }
    }
    // The peers first: the embedded server is configured with where they listen (free ports);
    // an external server was configured with the profile's fixed addresses.
    let peers = if profile.peers.is_empty() {
        None
    } else {
        let base = profile_path.parent().unwrap_or(&harness_dir).to_path_buf();
        Some(std::sync::Arc::new(
            mxconform_harness::peers::Peers::start_with_authority(
                &profile.peers,
                &base,
                &profile.server_name,
                external.is_none(),
                authority.as_ref(),
            )
            .context("starting the peers the profile configures")?,
        ))
    };
    let (url, embedded) = match external {
        Some(u) => (u, None),
        None => {
            let server = embedded::start(embedded::Spec {
                server_name: profile.server_name.clone(),
                authority: authority.as_ref(),
                peers: peers.as_deref(),
                admin: profile.admin.as_deref(),
            })?;
            (server.url.clone(), Some(server))
        }
    };
    // Federation: fake homeservers, when the profile says where the server's federation API is.
    let federation = match &profile.federation {
        Some(f) => {
            let dir = profile.path.parent().unwrap_or(Path::new("."));
            Some(std::sync::Arc::new(
                mxconform_harness::federation::Federation::new(f, dir, &url)
                    .map_err(anyhow::Error::msg)
                    .context("setting up federation")?,
            ))
        }
        None => None,
    };
    let config = mxconform_harness::RunConfig {
        server_url: url,
        federation,
        profile,
        scenarios_dir: harness_dir.join("scenarios"),
        snapshots_dir: repo.join("snapshots"),
        limits: mxconform_harness::client::Limits {
            request_timeout: std::time::Duration::from_secs(args.request_timeout),
            ..Default::default()
        },
        scenario_timeout: std::time::Duration::from_secs(args.scenario_timeout),
        sweeps: !args.no_sweeps,
        software_hint: embedded.as_ref().map(|_| {
            format!(
                "mxconform-server {} (embedded, in memory)",
                env!("CARGO_PKG_VERSION")
            )
        }),
        peers,
        args: Some(args.libtest.clone()),
    };
    let started = std::time::Instant::now();
    let out = mxconform_harness::run_partition(config, args.partition)?;
    let mut report = out.report;
    report.server.embedded = embedded.is_some();
    let write = |path: &Option<PathBuf>, text: String| -> Result<()> {
        if let Some(p) = path {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    };
    if !args.libtest.list {
        write(&args.report_json, report.to_json())?;
        write(&args.junit, report.to_junit())?;
        write(&args.report_md, report.to_markdown())?;
        eprintln!(
            "mxconform: {} against {}{} in {:.1} s: {}",
            report.server.profile,
            report.server.url,
            args.partition
                .map(|p| format!(" (partition {p})"))
                .unwrap_or_default(),
            started.elapsed().as_secs_f64(),
            report.summary()
        );
    }
    for server in embedded.into_iter().chain(embedded_servers) {
        server.stop();
    }
    let failed = out.conclusion.as_ref().is_some_and(|c| c.has_failed()) || !report.success();
    Ok(if failed {
        ExitCode::from(101)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to standard error: `filter` (else RUST_LOG, else `default`); `None` when neither a
/// filter nor RUST_LOG is given and `default` is `None` (quiet).
fn init_logs(filter: Option<&str>, default: Option<&str>, format: LogFormat) -> Result<()> {
    let chosen = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .or(default.map(str::to_string));
    let Some(chosen) = chosen else {
        return Ok(());
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&chosen)
        .map_err(|e| anyhow::anyhow!("the log filter {chosen:?}: {e}"))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let done = match format {
        LogFormat::Text => logs.try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
    done.map_err(|e| anyhow::anyhow!("starting the logs: {e}"))
}

/// The storage benchmark: the reference server on disk, filled to each size in turn, measured,
/// then restarted (time to ready, memory after).
fn bench_storage(repo: &Path, sizes: &[usize]) -> Result<Vec<bench::Row>> {
    let dir = repo.join("target").join("bench").join("storage");
    let (mut child, url) = spawn_reference(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut figs = Vec::new();
    let result = rt.block_on(async {
        let mut target = bench_server::target("reference", &url, None, Some(child.id()))?;
        let mut world = bench_server::storage_world(&target, 100).await?;
        for &n in sizes {
            let f = bench_server::storage_fill(&target, &mut world, n).await?;
            eprintln!(
                "storage: {} events, {:.0} sends/s, {} KiB",
                f.events,
                f.fill_rate,
                f.rss_kib.unwrap_or(0)
            );
            let _ = child.kill();
            let _ = child.wait();
            let t0 = std::time::Instant::now();
            let (c, url) = start_reference(&dir)?;
            child = c;
            target = bench_server::target("reference", &url, None, Some(child.id()))?;
            target_ready(&target).await?;
            let restart = t0.elapsed();
            // The history is all there after the restart.
            bench_server::storage_probe(&target, &world).await?;
            let rss = bench_server::rss_kib(child.id());
            eprintln!("storage: restart {:.2} s", restart.as_secs_f64());
            figs.push((f, restart, rss));
        }
        Ok::<_, anyhow::Error>(())
    });
    let _ = child.kill();
    let _ = child.wait();
    result?;
    Ok(bench_server::storage_rows(&figs))
}

/// Waits (at most 60 s) until the server answers /versions.
async fn target_ready(t: &bench_server::Target) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = t
            .client
            .send(
                "GET",
                "/_matrix/client/versions",
                &[],
                mxconform_harness::client::Body::None,
                None,
                Some(std::time::Duration::from_secs(5)),
                Default::default(),
            )
            .await;
        if r.is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the reference server did not answer within 60 s of its restart");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Starts `mxconform serve` (this binary) on a free port with a fresh on-disk database.
fn spawn_reference(dir: &Path) -> Result<(std::process::Child, String)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    start_reference(dir)
}

/// Starts `mxconform serve` (this binary) on a free port with the database in `dir`.
fn start_reference(dir: &Path) -> Result<(std::process::Child, String)> {
    start_reference_with(dir, &["--server-name", "localhost"])
}

/// Starts `mxconform serve` with `args` (which name the server) on a free port with the
/// database in `dir`; answers the process and its client-server URL. The server logs to
/// `dir/serve.log`, as a deployment logs to a file: a pipe drained by a thread of this
/// process would wake that thread for every request line, inside the latencies measured.
fn start_reference_with(dir: &Path, args: &[&str]) -> Result<(std::process::Child, String)> {
    let log_path = dir.join("serve.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let from = log.metadata().map_or(0, |m| m.len());
    let mut child =
        std::process::Command::new(std::env::current_exe().context("finding this binary")?)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .arg("--db")
            .arg(dir.join("hs.db"))
            .stderr(log)
            .spawn()
            .context("starting the reference server")?;
    // The start-up line names the URL (log lines may come before it); only whole lines count.
    // The log is read from where this start began, and only what was added since the last look.
    let mut reader = std::fs::File::open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(from))?;
    let mut text = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        std::io::Read::read_to_end(&mut reader, &mut text)
            .with_context(|| format!("reading {}", log_path.display()))?;
        let new = String::from_utf8_lossy(&text);
        let whole = new.rfind('\n').map_or("", |end| &new[..end]);
        if let Some(line) = whole
            .lines()
            .find(|l| l.starts_with("mxconform reference server"))
        {
            let url = line
                .split_whitespace()
                .find(|w| w.starts_with("http://"))
                .context("no URL in the server's start-up line")?
                .to_string();
            return Ok((child, url));
        }
        let tail = || {
            let lines: Vec<&str> = new.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n")
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "the server ended ({status}) without saying where it listens; its log ends:\n{}",
                tail()
            );
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the server did not say where it listens within 60 s; its log ends:\n{}",
                tail()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// `bench federation`: the reference server (federating over TLS, named `localhost:<port>`)
/// and, with `with_synapse`, the test Synapse, each against the harness's fake servers.
fn bench_federation_servers(
    repo: &Path,
    with_synapse: bool,
    budget: std::time::Duration,
) -> Result<Vec<bench::Row>> {
    use mxconform_harness::federation::tls::Authority;
    let dir = repo.join("target").join("bench").join("federation");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_dir = dir.join("ca");
    let authority = Authority::load_or_create(&ca_dir).map_err(anyhow::Error::msg)?;
    let port = embedded::free_port()?;
    let name = format!("localhost:{port}");
    let addr = format!("127.0.0.1:{port}");
    let ca_arg = ca_dir.display().to_string();
    let (mut child, url) = start_reference_with(
        &dir,
        &[
            "--server-name",
            &name,
            "--federation-addr",
            &addr,
            "--tls-authority",
            &ca_arg,
        ],
    )?;
    let synapse = if with_synapse {
        synapse_sh(repo, "start", "Synapse")?;
        let profile =
            mxconform_harness::Profile::load(&repo.join("harness/profiles/synapse.toml"))?;
        let f = profile
            .federation
            .as_ref()
            .context("the synapse profile has no [federation]")?;
        let url = profile
            .base_url
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:18008".into());
        let ca = repo.join("harness/profiles").join(&f.authority);
        Some(bench_federation::Server {
            cs: bench_server::target("synapse", &url, profile.shared_secret.clone(), None)?,
            federation_url: f.base_url.clone().unwrap_or(url),
            server_name: f.server_name.clone(),
            authority: Authority::load_or_create(&ca).map_err(anyhow::Error::msg)?,
            tolerated: f.schema_deviations.clone(),
        })
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let ours = bench_federation::Server {
            cs: bench_server::target("reference", &url, None, Some(child.id()))?,
            federation_url: url.clone(),
            server_name: name.clone(),
            authority,
            tolerated: Vec::new(),
        };
        let f_ours = bench_federation::measure(&ours, "r", budget).await?;
        let f_peer = match &synapse {
            Some(s) => Some(
                bench_federation::measure(s, &format!("s{}", std::process::id()), budget).await?,
            ),
            None => None,
        };
        for (who, f) in [("reference", Some(&f_ours)), ("Synapse", f_peer.as_ref())] {
            for v in f.map(|f| f.violations.as_slice()).unwrap_or_default() {
                eprintln!("note: {who} did wrong towards a fake server: {v}");
            }
        }
        Ok::<_, anyhow::Error>(bench_federation::rows(&f_ours, f_peer.as_ref()))
    });
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Starts the test Synapse (`start`) or its partners (`start-partners`) with synapse.sh.
fn synapse_sh(repo: &Path, command: &str, what: &str) -> Result<()> {
    let status = std::process::Command::new(repo.join("harness/synapse/synapse.sh"))
        .arg(command)
        .output()?;
    if !status.status.success() {
        bail!(
            "could not start {what}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    Ok(())
}

fn time_suite(args: &[&str]) -> Result<std::time::Duration> {
    let t = std::time::Instant::now();
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .output()
        .context("running the suites")?;
    if !out.status.success() {
        bail!(
            "`mxconform {}` failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(t.elapsed())
}

fn bench_servers(
    repo: &Path,
    with_synapse: bool,
    budget: std::time::Duration,
) -> Result<Vec<bench::Row>> {
    let mut rows = Vec::new();
    let ours_suite = time_suite(&["run", "--quiet"])?;
    let peer_suite = if with_synapse {
        synapse_sh(repo, "start", "Synapse")?;
        // The federation suites need the partner Synapses too.
        synapse_sh(repo, "start-partners", "the partner Synapses")?;
        Some(time_suite(&["run", "--quiet", "--profile", "synapse"])?)
    } else {
        None
    };
    rows.push(bench::Row {
        name: "harness: full suite wall time (scenarios and sweeps)".into(),
        ours: format!("{:.1} s (reference server)", ours_suite.as_secs_f64()),
        peer: peer_suite.map_or("-".into(), |p| format!("Synapse: {:.1} s", p.as_secs_f64())),
        ratio: "-".into(),
        target: "< 30 s (reference)".into(),
    });
    let (mut child, url) = spawn_reference(&repo.join("target").join("bench").join("server"))?;
    // The measuring client runs on one thread: on two worker threads, an answer read by one
    // thread's reactor wakes the waiting request on the other, and that cross-core wake-up
    // (0.1 ms on these VMs) was the client's, counted in every latency of both servers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let ours = bench_server::target("reference", &url, None, Some(child.id()))?;
        let f_ours = bench_server::measure(&ours, "r", budget).await?;
        let f_peer = if with_synapse {
            let profile =
                mxconform_harness::Profile::load(&repo.join("harness/profiles/synapse.toml"))?;
            let pid = std::fs::read_to_string(repo.join("target/synapse/data/synapse.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok());
            let url = profile
                .base_url
                .clone()
                .unwrap_or_else(|| "http://127.0.0.1:18008".into());
            let peer = bench_server::target("synapse", &url, profile.shared_secret.clone(), pid)?;
            let tag = format!("s{}", std::process::id());
            Some(bench_server::measure(&peer, &tag, budget).await?)
        } else {
            None
        };
        let growth = bench_server::growth(&ours, &[1_000, 10_000, 100_000]).await?;
        let rooms = bench_server::room_growth(&ours, &[10, 100, 500]).await?;
        let mut rows = bench_server::rows(&f_ours, f_peer.as_ref(), &growth);
        rows.extend(bench_server::room_growth_rows(&rooms));
        Ok::<_, anyhow::Error>(rows)
    });
    let _ = child.kill();
    let _ = child.wait();
    rows.extend(result?);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's example `homeserver.toml` holds only options `serve` has, with values
    /// they take.
    #[test]
    fn the_readme_config_example_parses() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
                .expect("the README");
        let example: String = readme
            .lines()
            .skip_while(|l| l.trim() != "# homeserver.toml")
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        assert!(
            example.contains("server_name"),
            "no example found: {example:?}"
        );
        let file =
            std::env::temp_dir().join(format!("mxconform-readme-{}.toml", std::process::id()));
        std::fs::write(&file, &example).expect("writes");
        let argv = with_config_file(vec![
            "mxconform".into(),
            "serve".into(),
            "--config".into(),
            file.clone().into(),
        ]);
        let _ = std::fs::remove_file(&file);
        let argv = argv.expect("the example is read");
        assert!(argv.len() > 20, "{argv:?}");
        if let Err(e) = Cli::try_parse_from(argv) {
            panic!("the README's example does not parse: {e}");
        }
    }
}
