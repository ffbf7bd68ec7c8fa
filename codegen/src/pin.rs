//! The spec pin (`spec/pin.toml`): which matrix-spec release the project builds from, and
//! where to find its files without the user having to say.

use std::path::{Path, PathBuf};

use crate::spec::SpecVersion;

/// The environment variable that points at a spec directory (the folder holding `data/`).
pub const SPEC_DIR_ENV: &str = "MXCONFORM_SPEC_DIR";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub version: String,
    pub commit: String,
}

impl Pin {
    pub fn path(repo: &Path) -> PathBuf {
        repo.join("spec").join("pin.toml")
    }

    /// Reads `spec/pin.toml` (two `key = "value"` lines).
    pub fn read(repo: &Path) -> Result<Pin, String> {
        let path = Pin::path(repo);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
                .ok_or_else(|| format!("{}: no `{key} = \"...\"` line", path.display()))
        };
        Ok(Pin {
            version: get("version")?,
            commit: get("commit")?,
        })
    }

    pub fn write(&self, repo: &Path) -> std::io::Result<()> {
        let text = format!(
            "# The Matrix spec release this project's generated/ code is made from.\n\
             # `mxconform generate --spec DIR` rewrites this file when DIR carries a known version.\n\
             version = \"{}\"\ncommit = \"{}\"\n",
            self.version, self.commit
        );
        std::fs::write(Pin::path(repo), text)
    }

    pub fn from_version(v: &SpecVersion) -> Option<Pin> {
        (v.version != "unknown").then(|| Pin {
            version: v.version.clone(),
            commit: v.commit.clone(),
        })
    }
}

/// The places looked at, in order, for the pinned spec when none is named.
pub fn candidates(repo: &Path, pin: &Pin) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::var_os(SPEC_DIR_ENV) {
        out.push(PathBuf::from(dir));
    }
    if let Some(parent) = repo.parent() {
        out.push(parent.join("shared").join("matrix-spec").join(&pin.version));
        out.push(parent.join("matrix-spec"));
    }
    out
}

/// Finds the pinned spec directory, or explains how to point at one.
pub fn find_spec_dir(repo: &Path) -> Result<PathBuf, String> {
    let pin = Pin::read(repo)?;
    let tried = candidates(repo, &pin);
    for dir in &tried {
        if dir.join("data").join("api").is_dir() {
            return Ok(dir.clone());
        }
    }
    let list: Vec<String> = tried.iter().map(|p| format!("  {}", p.display())).collect();
    Err(format!(
        "cannot find the pinned Matrix spec {} (commit {}); looked in:\n{}\n\
         Point at one with `--spec DIR` or the {SPEC_DIR_ENV} environment variable, where DIR holds \
         data/api/: a checkout of https://github.com/matrix-org/matrix-spec at tag {}, \
         or the shared copy's folder ../shared/matrix-spec/{}.",
        pin.version,
        pin.commit,
        list.join("\n"),
        pin.version,
        pin.version
    ))
}

/// The repository root: the nearest ancestor of `start` that holds `spec/pin.toml`.
pub fn find_repo(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|p| Pin::path(p).is_file())
        .map(Path::to_path_buf)
}
