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

pub use route::{
    Auth, AuthScheme, BodyKind, Group, Method, Param, ParamKind, ParamLocation, ResponseSpec, Route,
};

/// Any JSON value.
pub type JsonValue = serde_json::Value;
/// Any JSON object.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

// Written by codegen and formatted by prettyplease; rustfmt would only make them stale.
#[rustfmt::skip]
pub mod application_service;
#[rustfmt::skip]
pub mod client_server;
#[rustfmt::skip]
pub mod events;
#[rustfmt::skip]
pub mod identity;
#[rustfmt::skip]
pub mod push_gateway;
#[rustfmt::skip]
pub mod schemas;
#[rustfmt::skip]
pub mod server_server;

/// The spec version and commit the generated modules came from.
pub const SPEC_VERSION: &str = include_str!("../SPEC_VERSION");

/// Every operation of the enabled API groups, group by group in spec order.
pub fn routes() -> impl Iterator<Item = &'static Route> {
    #[allow(unused_mut)] // with no API group enabled there is nothing to add
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
