//! `mxconform bench`: bounded benchmarks that print figures and, where a peer exists, the
//! ratio measured in the same run. Timings are printed, never asserted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One row of the results table.
pub struct Row {
    pub name: String,
    pub ours: String,
    pub peer: String,
    pub ratio: String,
    pub target: String,
}

pub fn print_table(rows: &[Row]) {
    println!("| benchmark | mxconform | peer | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name, r.ours, r.peer, r.ratio, r.target
        );
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Full generation of a spec version (load, model, emit, bundles), `runs` times.
pub fn codegen(spec_dir: &Path, runs: usize) -> Result<Row> {
    let mut times = Vec::new();
    let mut files = 0;
    for _ in 0..runs.clamp(1, 100) {
        let t = Instant::now();
        let spec = mxconform_codegen::Spec::load(spec_dir)
            .with_context(|| format!("loading {}", spec_dir.display()))?;
        files = mxconform_codegen::generate(&spec)?.len();
        times.push(t.elapsed());
    }
    let build = if cfg!(debug_assertions) {
        " (debug build: use --release)"
    } else {
        ""
    };
    Ok(Row {
        name: format!(
            "codegen: full generation of the spec in `{}` ({files} files), median of {}{build}",
            // The folder's name (`v1.19`), not the machine's path to it.
            spec_dir.file_name().map_or_else(
                || spec_dir.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            ),
            times.len()
        ),
        ours: secs(median(times)),
        peer: "-".into(),
        ratio: "-".into(),
        target: "< 0.5 s".into(),
    })
}

/// Writes a throw-away crate that depends on `dep` (a Cargo.toml dependency line).
fn consumer(dir: &Path, name: &str, dep: &str) -> Result<PathBuf> {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join("src"))
        .with_context(|| format!("creating {}", root.display()))?;
    std::fs::write(
        root.join("Cargo.toml"),
        format!("[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\n{dep}\n\n[workspace]\n"),
    )?;
    std::fs::write(
        root.join("src/lib.rs"),
        "//! A crate that only depends, to time the dependency's build.\n",
    )?;
    Ok(root)
}

fn cargo(root: &Path, args: &[&str], target: &Path) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .with_context(|| format!("running cargo {} in {}", args.join(" "), root.display()))?;
    if !out.status.success() {
        bail!(
            "cargo {} in {} failed:\n{}",
            args.join(" "),
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(t.elapsed())
}

/// Clean debug builds (dependencies included) of a crate depending on generated/ with all
/// features, and of one depending on ruma 0.17 with `client-api-c` and `events`; both with
/// Cargo's default dev profile, one after the other on this machine.
pub fn compile(repo: &Path, work: &Path) -> Result<Row> {
    let generated = repo.join("generated");
    let ours = consumer(
        work,
        "uses_mxconform",
        &format!(
            "mxconform-generated = {{ path = {:?} }}",
            generated.display().to_string()
        ),
    )?;
    let peer = consumer(
        work,
        "uses_ruma",
        "ruma = { version = \"0.17\", features = [\"client-api-c\", \"events\"] }",
    )?;
    let mut times = Vec::new();
    for root in [&ours, &peer] {
        let target = root.join("target");
        let _ = std::fs::remove_dir_all(&target);
        cargo(root, &["fetch", "--quiet"], &target)?;
        times.push(cargo(root, &["build", "--quiet", "--offline"], &target)?);
    }
    Ok(Row {
        name: "compile: clean debug build with dependencies, all API groups and events".into(),
        ours: secs(times[0]),
        peer: format!("ruma 0.17 (client-api-c, events): {}", secs(times[1])),
        ratio: format!("{:.2}", times[0].as_secs_f64() / times[1].as_secs_f64()),
        target: "<= 0.50".into(),
    })
}
