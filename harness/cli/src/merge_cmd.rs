//! `mxconform merge`: the JSON reports of a run's partitions (from several CI machines) made
//! into the report of the whole run, written as `run` writes its reports.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct MergeArgs {
    /// JSON reports (`run --report-json`) of the partitions of one run (`run --partition K/N`,
    /// all N of them), or of any runs of one server and profile whose tests do not overlap.
    #[arg(required = true, value_name = "REPORT.json")]
    reports: Vec<PathBuf>,
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    report_md: Option<PathBuf>,
}

pub fn run(args: MergeArgs) -> Result<ExitCode> {
    let parts = args
        .reports
        .iter()
        .map(|p| mxconform_harness::merge::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let report = mxconform_harness::merge::merge(&parts)?;
    for (path, text) in [
        (&args.report_json, report.to_json()),
        (&args.junit, report.to_junit()),
        (&args.report_md, report.to_markdown()),
    ] {
        let Some(path) = path else { continue };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let labels: Vec<String> = parts
        .iter()
        .map(|p| match p.report.partition {
            Some(k) => format!("{} ({k})", p.file),
            None => p.file.clone(),
        })
        .collect();
    eprintln!(
        "mxconform: {} against {}, merged from {}: {}",
        report.server.profile,
        report.server.url,
        labels.join(", "),
        report.summary()
    );
    Ok(if report.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    })
}
