//! The room-version core of Matrix federation, written from the spec's prose: canonical JSON,
//! content and reference hashes, redaction, event ids, ed25519 signing, server key documents,
//! X-Matrix request authorization, building PDUs, the authorization rules and state
//! resolution, for room versions 1-12. It knows nothing of HTTP, storage or async runtimes:
//! every function is pure over JSON values and keys, so that the harness and the reference
//! server share one implementation.

pub mod auth;
pub mod base64;
pub mod build;
pub mod canonical;
pub mod hash;
pub mod ids;
pub mod keys;
pub mod pdu;
pub mod redact;
pub mod sign;
pub mod state_res;
pub mod version;
pub mod xmatrix;

pub use auth::{authorize, Rejection, Rule};
pub use keys::{SigningKey, VerifyKey};
pub use pdu::Pdu;
pub use version::RoomVersion;
