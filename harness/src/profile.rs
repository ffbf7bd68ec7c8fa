//! Server profiles (`profiles/<name>.toml`): where a homeserver is, how users are made on it,
//! and which scenarios it is known to fail, each with a reason and a spec link.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// Used when the command line names no server.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The homeserver's server name (the part after `:` in its user ids).
    pub server_name: String,
    #[serde(default)]
    pub registration: Registration,
    /// Synapse's `registration_shared_secret`, for `registration = "shared-secret"`.
    #[serde(default)]
    pub shared_secret: Option<String>,
    /// Scenario name -> why this server fails it.
    #[serde(default)]
    pub deviations: BTreeMap<String, Deviation>,
    /// Operation id -> why the server is known to serve it although it does not advertise the
    /// spec version that added it (scenarios using it are then not skipped for version).
    #[serde(default)]
    pub serves: BTreeMap<String, String>,
    /// The localpart of an account the server treats as an administrator (the reference
    /// server's `--admin`; made with the admin flag through Synapse's shared-secret
    /// registration). Scenarios with `needs: [admin]` use it; without it they are skipped.
    #[serde(default)]
    pub admin: Option<String>,
    /// The peers the server is configured to talk to (see [`crate::peers`]).
    #[serde(default)]
    pub peers: crate::peers::PeersConfig,
    /// Where the harness reaches the server's federation API, and the authority it trusts.
    #[serde(default)]
    pub federation: Option<crate::federation::FederationConfig>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Registration {
    /// `POST /register` through the user-interactive `m.login.dummy` stage.
    #[default]
    Open,
    /// Synapse's admin registration API with the shared secret (HMAC-SHA1).
    SharedSecret,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    pub reason: String,
    /// The spec text the server contradicts.
    pub spec: String,
    /// Listed only when the partner homeservers are of this kind: `reference` (embedded
    /// reference servers) or the name of the profile whose partners they are (`synapse`), for
    /// a failure that is the partners' and not the server under test's.
    #[serde(default)]
    pub partners: Option<String>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut p: Profile = toml::from_str(&text).map_err(|e| Error::Profile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        p.path = path.to_path_buf();
        if p.registration == Registration::SharedSecret && p.shared_secret.is_none() {
            return Err(Error::Profile {
                path: path.to_path_buf(),
                reason: "registration = \"shared-secret\" needs `shared_secret`".into(),
            });
        }
        for (name, d) in &p.deviations {
            if d.reason.trim().is_empty() || !d.spec.starts_with("https://spec.matrix.org/") {
                return Err(Error::Profile {
                    path: path.to_path_buf(),
                    reason: format!("deviation `{name}` needs a reason and a spec link (https://spec.matrix.org/...)"),
                });
            }
        }
        for (op, why) in &p.serves {
            if crate::route(op).is_none() || why.trim().is_empty() {
                return Err(Error::Profile {
                    path: path.to_path_buf(),
                    reason: format!(
                        "[serves] `{op}` must be a client-server operation id, with a reason"
                    ),
                });
            }
        }
        Ok(p)
    }

    /// Keeps the deviations that hold with partners of `kind` (those without a `partners`
    /// qualifier, and those naming it).
    pub fn keep_deviations_for_partners(&mut self, kind: &str) {
        self.deviations
            .retain(|_, d| d.partners.as_deref().is_none_or(|k| k == kind));
    }

    /// Deviations that name no scenario (a renamed or deleted file): an error, so the list
    /// stays true.
    pub fn unknown_deviations<'a>(&'a self, names: &[&str]) -> Vec<&'a str> {
        self.deviations
            .keys()
            .map(String::as_str)
            .filter(|d| !names.contains(d))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_qualified_deviations_hold_only_with_those_partners() {
        let text = r#"
            name = "x"
            server_name = "x"
            [deviations]
            "a/own" = { reason = "r", spec = "s" }
            "a/theirs" = { partners = "reference", reason = "r", spec = "s" }
        "#;
        let profile: Profile = toml::from_str(text).unwrap();
        let mut with_synapse = profile.clone();
        with_synapse.keep_deviations_for_partners("synapse");
        assert_eq!(
            with_synapse.deviations.keys().collect::<Vec<_>>(),
            ["a/own"]
        );
        let mut with_reference = profile;
        with_reference.keep_deviations_for_partners("reference");
        assert_eq!(
            with_reference.deviations.keys().collect::<Vec<_>>(),
            ["a/own", "a/theirs"]
        );
    }
}
