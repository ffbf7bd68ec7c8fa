//! The room-version core of Matrix federation, written from the spec's prose: canonical JSON,
//! content and reference hashes, redaction, event ids, ed25519 signing, server key documents,
//! X-Matrix request authorization, building PDUs, the authorization rules and state
//! resolution, for room versions 1-12. It knows nothing of HTTP, storage or async runtimes:
//! every function is pure over JSON values and keys, so that the harness and the reference
//! server share one implementation.

pub mod base64;
pub mod canonical;
pub mod keys;
pub mod sign;
pub mod version;

pub use keys::{SigningKey, VerifyKey};
pub use version::RoomVersion;
