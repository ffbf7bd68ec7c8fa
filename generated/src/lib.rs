//! mxconform-generated: every request, response and event of the Matrix specification as
//! Rust types, the route table, and the structural schemas a validator needs.
//!
//! The modules below `client_server`, `server_server`, `application_service`, `identity`,
//! `push_gateway`, `events` and `schemas` are written by `mxconform generate`; this file and
//! `ids.rs` and `route.rs` are written by hand. Enable only the API groups you need with the
//! features of the same names; the modules a group needs from elsewhere come with it.

#![allow(clippy::large_enum_variant, clippy::too_many_lines)]

pub mod ids;
#[doc(hidden)]
pub mod macros;
mod route;

pub use route::{Auth, AuthScheme, BodyKind, Group, Method, Param, ParamKind, ParamLocation, ResponseSpec, Route};

/// Any JSON value.
pub type JsonValue = serde_json::Value;
/// Any JSON object.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

pub mod application_service;
pub mod client_server;
pub mod events;
pub mod identity;
pub mod push_gateway;
pub mod schemas;
pub mod server_server;

/// The spec version and commit the generated modules came from.
pub const SPEC_VERSION: &str = include_str!("../SPEC_VERSION");

/// Every operation of the enabled API groups, group by group in spec order.
pub fn routes() -> impl Iterator<Item = &'static Route> {
    let mut all: Vec<&'static [Route]> = Vec::new();
    #[cfg(feature = "client-server")]
    all.push(client_server::ROUTES);
    #[cfg(feature = "server-server")]
    all.push(server_server::ROUTES);
    #[cfg(feature = "application-service")]
    all.push(application_service::ROUTES);
    #[cfg(feature = "identity")]
    all.push(identity::ROUTES);
    #[cfg(feature = "push-gateway")]
    all.push(push_gateway::ROUTES);
    all.into_iter().flatten()
}

/// The structural schema bundle of an enabled API group (see `json-schema/` in this crate).
pub fn schema_bundle(group: Group) -> Option<&'static str> {
    match group {
        #[cfg(feature = "client-server")]
        Group::ClientServer => Some(client_server::SCHEMA_BUNDLE),
        #[cfg(feature = "server-server")]
        Group::ServerServer => Some(server_server::SCHEMA_BUNDLE),
        #[cfg(feature = "application-service")]
        Group::ApplicationService => Some(application_service::SCHEMA_BUNDLE),
        #[cfg(feature = "identity")]
        Group::Identity => Some(identity::SCHEMA_BUNDLE),
        #[cfg(feature = "push-gateway")]
        Group::PushGateway => Some(push_gateway::SCHEMA_BUNDLE),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The structural schemas of every event type, when the `events` feature is on.
#[cfg(feature = "events")]
pub const EVENT_SCHEMA_BUNDLE: &str = include_str!("../json-schema/events.json");

/// Serde helpers for an optional field that may also be `null`: absent is `None`,
/// `null` is `Some(None)`.
pub mod nullable {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A string enum whose unknown values are kept in `Other`, so that a value added by a newer
/// spec never breaks an older reader.
#[macro_export]
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $wire:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $(#[doc = concat!(" `", $wire, "`")] $variant,)*
            /// A value this version of the spec does not name.
            Other(String),
        }

        impl $name {
            /// The value as it appears on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $wire,)*
                    Self::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($wire => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok(Self::from(&*s))
            }
        }
    };
}
