//! ed25519 keys (appendices "Signing Details", "Cryptographic key representation"): signing
//! keys with their ids, verify keys, the key file format homeservers share (one line
//! `ed25519 <version> <unpadded base64 seed>`), and server key documents
//! (server-server-api "Publishing Keys": `/_matrix/key/v2/server`).

use ed25519_dalek::Verifier as _;
use serde_json::{json, Map, Value};

use crate::base64;
use crate::sign::{self, SignatureError};

/// A key that signs: its id (`ed25519:<version>`) and the key itself, with its expanded
/// secret kept so that each signature skips re-deriving it.
pub struct SigningKey {
    key_id: String,
    key: ed25519_dalek::SigningKey,
    expanded: ed25519_dalek::hazmat::ExpandedSecretKey,
}

impl Clone for SigningKey {
    fn clone(&self) -> SigningKey {
        SigningKey::new(self.key_id.clone(), self.key.clone())
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningKey({}, public {})",
            self.key_id,
            self.public_base64()
        )
    }
}

/// What is wrong with a key or a key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key line must be `ed25519 <version> <base64 seed>`, found {0:?}")]
    Line(String),
    #[error("unsupported key algorithm {0:?} (only ed25519)")]
    Algorithm(String),
    #[error("a key version may hold only a-z, A-Z, 0-9 and _, found {0:?}")]
    Version(String),
    #[error("a seed or public key must be 32 bytes of unpadded base64")]
    Bytes,
    #[error("no key in the key file")]
    Empty,
    #[error("could not get random bytes: {0}")]
    Random(String),
}

impl SigningKey {
    fn new(key_id: String, key: ed25519_dalek::SigningKey) -> SigningKey {
        let expanded = ed25519_dalek::hazmat::ExpandedSecretKey::from(key.as_bytes());
        SigningKey {
            key_id,
            key,
            expanded,
        }
    }

    /// A key from its 32-byte seed.
    pub fn from_seed(seed: &[u8], version: &str) -> Result<SigningKey, KeyError> {
        check_version(version)?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| KeyError::Bytes)?;
        Ok(SigningKey::new(
            format!("ed25519:{version}"),
            ed25519_dalek::SigningKey::from_bytes(&seed),
        ))
    }

    /// A new random key; its version is `a_` and four random characters unless given.
    pub fn generate(version: Option<&str>) -> Result<SigningKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let version = match version {
            Some(v) => v.to_string(),
            None => {
                let tail = base64::encode_url_safe(&seed[..3]).replace(['-', '_'], "x");
                format!("a_{tail}")
            }
        };
        SigningKey::from_seed(&seed, &version)
    }

    /// The first key of a key file (`ed25519 <version> <seed>` per line).
    pub fn parse_file(text: &str) -> Result<SigningKey, KeyError> {
        let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Err(KeyError::Empty);
        };
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [alg, version, seed] = parts[..] else {
            return Err(KeyError::Line(line.to_string()));
        };
        if alg != "ed25519" {
            return Err(KeyError::Algorithm(alg.to_string()));
        }
        let seed = base64::decode(seed).ok_or(KeyError::Bytes)?;
        SigningKey::from_seed(&seed, version)
    }

    /// The key as one line of a key file.
    pub fn to_file_line(&self) -> String {
        format!(
            "ed25519 {} {}\n",
            self.version(),
            base64::encode(&self.key.to_bytes())
        )
    }

    /// The same key under another version, unchecked: cross-signing and device keys are
    /// named by a public key or a device id, which need not fit a server key's version.
    pub fn with_version(&self, version: &str) -> SigningKey {
        SigningKey::new(format!("ed25519:{version}"), self.key.clone())
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The part after `ed25519:`.
    pub fn version(&self) -> &str {
        &self.key_id["ed25519:".len()..]
    }

    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey {
            key_id: self.key_id.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The public key in unpadded base64.
    pub fn public_base64(&self) -> String {
        base64::encode(self.key.verifying_key().as_bytes())
    }

    /// The signature of `message`, in unpadded base64.
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        let sig = ed25519_dalek::hazmat::raw_sign::<sha2::Sha512>(
            &self.expanded,
            message,
            &self.key.verifying_key(),
        );
        base64::encode(&sig.to_bytes())
    }
}

fn check_version(version: &str) -> Result<(), KeyError> {
    let ok = !version.is_empty()
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KeyError::Version(version.to_string()))
    }
}

/// A public key with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyKey {
    pub key_id: String,
    key: ed25519_dalek::VerifyingKey,
}

impl VerifyKey {
    /// A key from its id and unpadded base64 public key.
    pub fn from_base64(key_id: &str, public: &str) -> Result<VerifyKey, KeyError> {
        let (alg, _) = key_id.split_once(':').unwrap_or((key_id, ""));
        if alg != "ed25519" {
            return Err(KeyError::Algorithm(alg.to_string()));
        }
        let bytes = base64::decode(public).ok_or(KeyError::Bytes)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Bytes)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Bytes)?;
        Ok(VerifyKey {
            key_id: key_id.to_string(),
            key,
        })
    }

    pub fn public_base64(&self) -> String {
        base64::encode(self.key.as_bytes())
    }

    /// Whether `signature` (unpadded base64) signs `message` with this key.
    pub fn verify_bytes(&self, message: &[u8], signature: &str) -> Result<(), SignatureError> {
        let sig = base64::decode(signature).ok_or(SignatureError::Encoding)?;
        let sig =
            ed25519_dalek::Signature::from_slice(&sig).map_err(|_| SignatureError::Encoding)?;
        self.key
            .verify(message, &sig)
            .map_err(|_| SignatureError::Invalid(self.key_id.clone()))
    }
}

/// A server's published keys, as read from its key document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKeys {
    pub server_name: String,
    /// Keys valid for requests and events, until `valid_until_ts`.
    pub verify_keys: Vec<VerifyKey>,
    pub valid_until_ts: i64,
    /// Old keys, valid for events sent before their `expired_ts`.
    pub old_verify_keys: Vec<(VerifyKey, i64)>,
}

impl ServerKeys {
    /// The key with this id and the time until which it may be used: `valid_until_ts` for
    /// a current key, `expired_ts` for an old one.
    pub fn key(&self, key_id: &str) -> Option<(&VerifyKey, i64)> {
        self.verify_keys
            .iter()
            .find(|k| k.key_id == key_id)
            .map(|k| (k, self.valid_until_ts))
            .or_else(|| {
                self.old_verify_keys
                    .iter()
                    .find(|(k, _)| k.key_id == key_id)
                    .map(|(k, ts)| (k, *ts))
            })
    }
}

/// A key a server no longer uses, for `old_verify_keys`.
#[derive(Clone, Debug)]
pub struct OldKey {
    pub key: VerifyKey,
    pub expired_ts: i64,
}

/// The `/_matrix/key/v2/server` document of `server_name`, signed by each current key.
pub fn server_key_document(
    server_name: &str,
    keys: &[&SigningKey],
    old: &[OldKey],
    valid_until_ts: i64,
) -> Value {
    let verify: Map<String, Value> = keys
        .iter()
        .map(|k| (k.key_id().to_string(), json!({"key": k.public_base64()})))
        .collect();
    let old: Map<String, Value> = old
        .iter()
        .map(|o| {
            (
                o.key.key_id.clone(),
                json!({"key": o.key.public_base64(), "expired_ts": o.expired_ts}),
            )
        })
        .collect();
    let mut doc = json!({
        "server_name": server_name,
        "verify_keys": verify,
        "old_verify_keys": old,
        "valid_until_ts": valid_until_ts,
    });
    for k in keys {
        sign::sign_json(&mut doc, server_name, k);
    }
    doc
}

/// What is wrong with a server key document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyDocumentError {
    #[error("the key document is not an object with `server_name`, `verify_keys` and `valid_until_ts`: {0}")]
    Shape(String),
    #[error("the key document is for {found:?}, not {expected:?}")]
    ServerName { expected: String, found: String },
    #[error("key {0}: {1}")]
    Key(String, KeyError),
    #[error("the document is not signed by its own key {key_id}: {error}")]
    Signature {
        key_id: String,
        error: SignatureError,
    },
}

/// Reads and checks a server key document: it names `expected_server`, every current key is
/// well formed, and the document carries a valid signature by every one of its current keys
/// (server-server-api "Publishing Keys").
pub fn verify_server_key_document(
    doc: &Value,
    expected_server: &str,
) -> Result<ServerKeys, KeyDocumentError> {
    let shape = |m: &str| KeyDocumentError::Shape(m.to_string());
    let server_name = doc
        .get("server_name")
        .and_then(Value::as_str)
        .ok_or_else(|| shape("no server_name"))?;
    if server_name != expected_server {
        return Err(KeyDocumentError::ServerName {
            expected: expected_server.to_string(),
            found: server_name.to_string(),
        });
    }
    let valid_until_ts = doc
        .get("valid_until_ts")
        .and_then(Value::as_i64)
        .ok_or_else(|| shape("no integer valid_until_ts"))?;
    let read = |name: &str| -> Result<Vec<(VerifyKey, Option<i64>)>, KeyDocumentError> {
        let Some(map) = doc.get(name) else {
            return Ok(Vec::new());
        };
        let map = map
            .as_object()
            .ok_or_else(|| shape(&format!("{name} is not an object")))?;
        map.iter()
            .map(|(id, v)| {
                let key = v
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or_else(|| shape(&format!("{name}/{id} has no key")))?;
                let k = VerifyKey::from_base64(id, key)
                    .map_err(|e| KeyDocumentError::Key(id.clone(), e))?;
                Ok((k, v.get("expired_ts").and_then(Value::as_i64)))
            })
            .collect()
    };
    let verify_keys: Vec<VerifyKey> = read("verify_keys")?.into_iter().map(|(k, _)| k).collect();
    if verify_keys.is_empty() {
        return Err(shape("verify_keys is empty"));
    }
    let old_verify_keys = read("old_verify_keys")?
        .into_iter()
        .map(|(k, ts)| (k, ts.unwrap_or(0)))
        .collect();
    for key in &verify_keys {
        sign::verify_signature(doc, expected_server, key).map_err(|error| {
            KeyDocumentError::Signature {
                key_id: key.key_id.clone(),
                error,
            }
        })?;
    }
    Ok(ServerKeys {
        server_name: server_name.to_string(),
        verify_keys,
        valid_until_ts,
        old_verify_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip() {
        let k = SigningKey::generate(None).unwrap();
        assert!(k.version().starts_with("a_"));
        let again = SigningKey::parse_file(&k.to_file_line()).unwrap();
        assert_eq!(again.public_base64(), k.public_base64());
        assert_eq!(again.key_id(), k.key_id());
        assert!(matches!(
            SigningKey::parse_file("ed25519 a b c"),
            Err(KeyError::Line(_))
        ));
        assert!(matches!(
            SigningKey::parse_file("rsa a AAAA"),
            Err(KeyError::Algorithm(_))
        ));
        assert!(matches!(
            SigningKey::parse_file("ed25519 a:b AAAA"),
            Err(KeyError::Version(_))
        ));
        assert!(matches!(
            SigningKey::parse_file("ed25519 a AAAA"),
            Err(KeyError::Bytes)
        ));
        assert!(matches!(SigningKey::parse_file("\n"), Err(KeyError::Empty)));
    }

    #[test]
    fn key_documents_verify_and_refuse_tampering() {
        let k = SigningKey::generate(Some("1")).unwrap();
        let old = SigningKey::generate(Some("0")).unwrap();
        let doc = server_key_document(
            "example.org:8448",
            &[&k],
            &[OldKey {
                key: old.verify_key(),
                expired_ts: 5,
            }],
            1_000,
        );
        let keys = verify_server_key_document(&doc, "example.org:8448").unwrap();
        assert_eq!(keys.valid_until_ts, 1_000);
        assert_eq!(keys.key("ed25519:1").unwrap().1, 1_000);
        assert_eq!(keys.key("ed25519:0").unwrap().1, 5);
        assert!(keys.key("ed25519:2").is_none());
        assert!(matches!(
            verify_server_key_document(&doc, "other.org"),
            Err(KeyDocumentError::ServerName { .. })
        ));
        let mut tampered = doc.clone();
        tampered["valid_until_ts"] = json!(2_000);
        assert!(matches!(
            verify_server_key_document(&tampered, "example.org:8448"),
            Err(KeyDocumentError::Signature { .. })
        ));
        let mut unsigned = doc.clone();
        unsigned["signatures"] = json!({});
        assert!(verify_server_key_document(&unsigned, "example.org:8448").is_err());
    }
}
