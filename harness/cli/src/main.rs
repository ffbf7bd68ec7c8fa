//! `mxconform`: the one binary that wires the crates together (codegen, the harness and the
//! reference server), with one subcommand per daily use.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use mxconform_codegen::pin::{self, Pin};

#[derive(Parser)]
#[command(name = "mxconform", version, about = "Stay true to the Matrix specification")]
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
    match run(Cli::parse()) {
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
        Command::Routes { format } => {
            routes(format);
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff { from, to, format } => diff(&from, &to, format),
    }
}

fn load(dir: &Path) -> Result<mxconform_codegen::Spec> {
    mxconform_codegen::Spec::load(dir).with_context(|| format!("loading the spec at {}", dir.display()))
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
            println!("generated/ is up to date with {} ({} files)", spec.version.version, files.len());
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
            println!("spec/pin.toml now pins {} ({})", new_pin.version, new_pin.commit);
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

fn routes(format: RoutesFormat) {
    let routes: Vec<_> = mxconform_generated::routes().collect();
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
            println!("{}", serde_json::to_string_pretty(&list).expect("JSON values serialise"));
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
        DiffFormat::Json => println!("{}", serde_json::to_string_pretty(&d).context("serialising the diff")?),
    }
    if from == to {
        bail!("--from and --to name the same directory");
    }
    Ok(ExitCode::SUCCESS)
}
