//! The one error type of codegen: every variant names the spec file, and where it can, the
//! JSON pointer of the offending node.

use std::path::PathBuf;

use crate::spec::Loc;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no Matrix spec at {}: expected a folder holding data/api/ (a matrix-spec checkout, \
         or one version folder such as ../shared/matrix-spec/v1.19)",
        path.display()
    )]
    NoSpec { path: PathBuf },

    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("data/{file}:{line}:{column}: invalid YAML: {message}")]
    Yaml {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{at}: dangling $ref `{target}`: {why}")]
    DanglingRef {
        at: Loc,
        target: String,
        why: String,
    },

    #[error("{at}: {what}")]
    Schema { at: Loc, what: String },
}

impl Error {
    pub(crate) fn schema(at: &Loc, what: impl Into<String>) -> Error {
        Error::Schema {
            at: at.clone(),
            what: what.into(),
        }
    }
}
