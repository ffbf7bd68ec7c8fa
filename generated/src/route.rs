//! The route table's entry type: plain data about one operation, no framework types.

/// The five API groups of the specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    ClientServer,
    ServerServer,
    ApplicationService,
    Identity,
    PushGateway,
}

impl Group {
    /// The group's folder name in the spec, also its Cargo feature name.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::ClientServer => "client-server",
            Group::ServerServer => "server-server",
            Group::ApplicationService => "application-service",
            Group::Identity => "identity",
            Group::PushGateway => "push-gateway",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    GET,
    PUT,
    POST,
    DELETE,
    PATCH,
    HEAD,
    OPTIONS,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::GET => "GET",
            Method::PUT => "PUT",
            Method::POST => "POST",
            Method::DELETE => "DELETE",
            Method::PATCH => "PATCH",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
        }
    }
}

/// Whether an operation needs credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Auth {
    None,
    Optional,
    Required,
}

impl Auth {
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Optional => "optional",
            Auth::Required => "required",
        }
    }
}

/// Which credential an operation takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthScheme {
    /// A user's access token (an application service's `as_token` also fits).
    AccessToken,
    /// Only an application service's `as_token`.
    AppServiceToken,
    /// The homeserver's `hs_token`, on the application-service API.
    HomeserverToken,
    /// A federation request signed by the origin server.
    ServerSignature,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamLocation {
    Path,
    Query,
    Header,
}

/// How a parameter's text is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    String,
    Integer,
    Number,
    Boolean,
    /// A query parameter that may repeat.
    List,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Param {
    /// The wire name.
    pub name: &'static str,
    pub location: ParamLocation,
    pub required: bool,
    pub kind: ParamKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyKind {
    None,
    Json,
    /// Bytes of some other content type (media).
    Binary,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResponseSpec {
    pub status: u16,
    pub body: BodyKind,
}

/// One operation of the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    pub group: Group,
    pub operation_id: &'static str,
    pub method: Method,
    /// The full path template, prefix included: `/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`.
    pub path: &'static str,
    pub auth: Auth,
    pub auth_schemes: &'static [AuthScheme],
    /// The spec documents a `429` answer.
    pub rate_limited: bool,
    /// The spec version that added it; `None` for operations older than v1.1.
    pub added_in: Option<&'static str>,
    pub changed_in: &'static [&'static str],
    pub deprecated: bool,
    /// Another operation shares this method and path (the spec tells them apart by a
    /// trailing space in its path key); the body or query decides which one a request is.
    pub shares_route: bool,
    pub params: &'static [Param],
    pub request_body: BodyKind,
    pub responses: &'static [ResponseSpec],
    pub spec_url: &'static str,
    /// The spec file, under `data/`.
    pub spec_file: &'static str,
}

impl Route {
    /// Names of the path parameters, in the order they appear in the path.
    pub fn path_params(&self) -> impl Iterator<Item = &'static str> {
        self.path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    }
}
