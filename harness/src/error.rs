//! The harness's error type: problems with its own inputs (scenarios, profiles, reports).
//! A misbehaving homeserver is not an error here: it fails a scenario with a reason.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("scenario {name}: {reason}")]
    Scenario { name: String, reason: String },

    #[error("profile {}: {reason}", path.display())]
    Profile { path: PathBuf, reason: String },

    #[error("cannot reach homeserver at {url}: {reason}")]
    Unreachable { url: String, reason: String },

    #[error("{0}")]
    Other(String),
}
