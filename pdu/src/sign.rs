//! Signing JSON and checking signatures (appendices "Signing Details", "Checking for a
//! Signature"): the canonical JSON of an object without `signatures` and `unsigned`, signed
//! with ed25519, the signature kept under `signatures.<entity>.<key id>`.

use serde_json::{Map, Value};

use crate::canonical;
use crate::keys::{SigningKey, VerifyKey};

/// Why a signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("no signatures from {0}")]
    NoSignatures(String),
    #[error("no ed25519 signature from {0}")]
    NoKnownAlgorithm(String),
    #[error("no signature from {entity} by a key we know (signed with {key_ids:?})")]
    UnknownKeys {
        entity: String,
        key_ids: Vec<String>,
    },
    #[error("no signature by {0}")]
    Missing(String),
    #[error("a signature is not 64 bytes of base64")]
    Encoding,
    #[error("the signature by {0} does not verify")]
    Invalid(String),
    #[error("key {key_id} was valid until {valid_until}, before the event's time {ts}")]
    Expired {
        key_id: String,
        valid_until: i64,
        ts: i64,
    },
}

/// The bytes a signature covers: the canonical JSON of `object` without `signatures` and
/// `unsigned`.
pub fn signing_bytes(object: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(256);
    let mut entries: Vec<(&String, &Value)> = object
        .iter()
        .filter(|(k, _)| *k != "signatures" && *k != "unsigned")
        .collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        canonical::write_string(&mut out, k);
        out.push(':');
        canonical::write_value(&mut out, v);
    }
    out.push('}');
    out
}

/// Signs `value` (an object) as `entity` with `key`, keeping its other signatures. A value
/// that is not an object is left alone.
pub fn sign_json(value: &mut Value, entity: &str, key: &SigningKey) {
    let Value::Object(map) = value else {
        return;
    };
    let signature = key.sign_bytes(signing_bytes(map).as_bytes());
    let sigs = map
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()));
    if !sigs.is_object() {
        *sigs = Value::Object(Map::new());
    }
    let per_entity = sigs
        .as_object_mut()
        .expect("an object")
        .entry(entity.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !per_entity.is_object() {
        *per_entity = Value::Object(Map::new());
    }
    per_entity
        .as_object_mut()
        .expect("an object")
        .insert(key.key_id().to_string(), Value::String(signature));
}

/// The signatures `entity` put on `value`: key id -> signature.
pub fn signatures_of<'a>(value: &'a Value, entity: &str) -> Option<&'a Map<String, Value>> {
    value.get("signatures")?.get(entity)?.as_object()
}

/// Checks that `value` carries a valid signature by `entity` with `key`.
pub fn verify_signature(
    value: &Value,
    entity: &str,
    key: &VerifyKey,
) -> Result<(), SignatureError> {
    let map = value.as_object().ok_or(SignatureError::NotAnObject)?;
    let sigs =
        signatures_of(value, entity).ok_or_else(|| SignatureError::NoSignatures(entity.into()))?;
    let sig = sigs
        .get(&key.key_id)
        .and_then(Value::as_str)
        .ok_or_else(|| SignatureError::Missing(format!("{entity} with {}", key.key_id)))?;
    key.verify_bytes(signing_bytes(map).as_bytes(), sig)
}

/// The appendix's check that `entity` signed `value`: its ed25519 signatures by keys that
/// `lookup` knows must all verify, and there must be at least one. Signatures by keys nobody
/// knows are skipped (server-server-api "Validating hashes and signatures").
pub fn verify_signed_by(
    value: &Value,
    entity: &str,
    lookup: &dyn Fn(&str) -> Option<VerifyKey>,
) -> Result<(), SignatureError> {
    let map = value.as_object().ok_or(SignatureError::NotAnObject)?;
    let sigs =
        signatures_of(value, entity).ok_or_else(|| SignatureError::NoSignatures(entity.into()))?;
    let ed: Vec<(&String, &Value)> = sigs
        .iter()
        .filter(|(id, _)| id.starts_with("ed25519:"))
        .collect();
    if ed.is_empty() {
        return Err(SignatureError::NoKnownAlgorithm(entity.into()));
    }
    let mut bytes: Option<String> = None;
    let mut checked = 0;
    for (id, sig) in &ed {
        let Some(key) = lookup(id) else { continue };
        let sig = sig.as_str().ok_or(SignatureError::Encoding)?;
        let bytes = bytes.get_or_insert_with(|| signing_bytes(map));
        key.verify_bytes(bytes.as_bytes(), sig)?;
        checked += 1;
    }
    if checked == 0 {
        return Err(SignatureError::UnknownKeys {
            entity: entity.into(),
            key_ids: ed.iter().map(|(id, _)| id.to_string()).collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base64;
    use serde_json::json;

    fn test_key() -> SigningKey {
        // appendices "Cryptographic Test Vectors": the seed, server `domain`, key `ed25519:1`.
        let seed = base64::decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
        SigningKey::from_seed(&seed, "1").unwrap()
    }

    #[test]
    fn appendix_json_signing_vectors() {
        let key = test_key();
        let mut empty = json!({});
        sign_json(&mut empty, "domain", &key);
        assert_eq!(
            empty,
            json!({"signatures": {"domain": {"ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}})
        );
        let mut data = json!({"one": 1, "two": "Two"});
        sign_json(&mut data, "domain", &key);
        assert_eq!(
            data,
            json!({"one": 1, "two": "Two", "signatures": {"domain": {"ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}}})
        );
        let vk = key.verify_key();
        verify_signature(&data, "domain", &vk).unwrap();
        let lookup = |id: &str| (id == "ed25519:1").then(|| vk.clone());
        verify_signed_by(&data, "domain", &lookup).unwrap();
    }

    #[test]
    fn checks_fail_as_the_appendix_says() {
        let key = test_key();
        let vk = key.verify_key();
        let lookup = |id: &str| (id == "ed25519:1").then(|| vk.clone());
        let mut v = json!({"a": 1, "unsigned": {"age": 5}});
        sign_json(&mut v, "domain", &key);
        // `unsigned` is not covered.
        v["unsigned"]["age"] = json!(6);
        verify_signed_by(&v, "domain", &lookup).unwrap();
        let mut changed = v.clone();
        changed["a"] = json!(2);
        assert_eq!(
            verify_signed_by(&changed, "domain", &lookup),
            Err(SignatureError::Invalid("ed25519:1".into()))
        );
        assert!(matches!(
            verify_signed_by(&v, "other", &lookup),
            Err(SignatureError::NoSignatures(_))
        ));
        let mut other_alg = v.clone();
        other_alg["signatures"]["domain"] = json!({"curve25519:1": "AAAA"});
        assert!(matches!(
            verify_signed_by(&other_alg, "domain", &lookup),
            Err(SignatureError::NoKnownAlgorithm(_))
        ));
        let mut unknown = v.clone();
        unknown["signatures"]["domain"] = json!({"ed25519:2": "AAAA"});
        assert!(matches!(
            verify_signed_by(&unknown, "domain", &lookup),
            Err(SignatureError::UnknownKeys { .. })
        ));
        let mut garbage = v.clone();
        garbage["signatures"]["domain"]["ed25519:1"] = json!("not base64!");
        assert_eq!(
            verify_signed_by(&garbage, "domain", &lookup),
            Err(SignatureError::Encoding)
        );
    }
}
