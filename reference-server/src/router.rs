//! Matching request paths against the generated route table: templates split into segments,
//! parameters percent-decoded, an empty trailing segment allowed for an empty parameter (the
//! empty state key), and "known path, wrong method" told apart from "unknown path".

use std::collections::BTreeMap;

use mxconform_generated::Route;

use crate::error::ApiError;

#[derive(Debug)]
enum Seg {
    Lit(&'static str),
    Param(&'static str),
}

#[derive(Debug)]
struct Entry {
    route: &'static Route,
    segs: Vec<Seg>,
}

/// Every route of the table, matched segment by segment.
#[derive(Debug)]
pub struct Router {
    entries: Vec<Entry>,
    /// Indexes into `entries` by number of segments, in table order: a path is compared only
    /// with the templates of its length and of one more (the empty-trailing-parameter form).
    by_len: Vec<Vec<usize>>,
}

/// A matched route and its decoded path parameters.
#[derive(Debug)]
pub struct Matched {
    /// The routes for this method and path: one, or two when the spec has two operations on
    /// one route (the body decides between them).
    pub routes: Vec<&'static Route>,
    pub params: BTreeMap<String, String>,
}

/// Everything but the unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`).
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but unreserved characters (for a path segment or query part).
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// Decodes `%XX` escapes; `None` when the result is not UTF-8 or an escape is broken (a
/// request whose path or query does not decode is refused, not guessed at).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let broken = b.iter().enumerate().any(|(i, c)| {
        *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if broken {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

impl Router {
    pub fn new(routes: impl Iterator<Item = &'static Route>) -> Router {
        let entries = routes
            .map(|route| Entry {
                route,
                segs: route
                    .path
                    .split('/')
                    .skip(1)
                    .map(
                        |s| match s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                            Some(p) => Seg::Param(p),
                            None => Seg::Lit(s),
                        },
                    )
                    .collect(),
            })
            .collect::<Vec<Entry>>();
        let mut by_len: Vec<Vec<usize>> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if by_len.len() <= e.segs.len() {
                by_len.resize_with(e.segs.len() + 1, Vec::new);
            }
            by_len[e.segs.len()].push(i);
        }
        Router { entries, by_len }
    }

    fn match_path(
        entry: &Entry,
        parts: &[&str],
    ) -> Option<Result<BTreeMap<String, String>, ApiError>> {
        // A path one segment short matches a template ending in a parameter, as that
        // parameter empty (`/state/m.room.name` for the empty state key), or ending in `/`
        // (`/pushrules` for `/pushrules/`).
        let short = parts.len() + 1 == entry.segs.len()
            && matches!(
                entry.segs.last(),
                Some(Seg::Param("stateKey") | Seg::Lit(""))
            );
        if parts.len() != entry.segs.len() && !short {
            return None;
        }
        // Literal segments first: parameters are decoded only for a template that matches.
        let literals_match = entry.segs.iter().enumerate().all(|(i, seg)| match seg {
            Seg::Lit(l) => *l == parts.get(i).copied().unwrap_or(""),
            Seg::Param(_) => true,
        });
        if !literals_match {
            return None;
        }
        let mut params = BTreeMap::new();
        for (i, seg) in entry.segs.iter().enumerate() {
            let Seg::Param(name) = seg else { continue };
            match percent_decode(parts.get(i).copied().unwrap_or("")) {
                Some(v) => {
                    params.insert(name.to_string(), v);
                }
                None => {
                    return Some(Err(ApiError::invalid_param(format!(
                        "path parameter `{name}` is not valid percent-encoded UTF-8"
                    ))))
                }
            }
        }
        Some(Ok(params))
    }

    /// Finds the route(s) for a method and path. Unknown path: 404 `M_UNRECOGNIZED`; known
    /// path with another method: 405 `M_UNRECOGNIZED`.
    pub fn find(&self, method: &str, path: &str) -> Result<Matched, ApiError> {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let mut any_path = false;
        let mut found: Option<Matched> = None;
        // Exact-length matches first, then the empty-trailing-parameter form, and literal
        // segments before parameters (the table order already lists specific routes).
        for len in [parts.len(), parts.len() + 1] {
            for e in self
                .by_len
                .get(len)
                .into_iter()
                .flatten()
                .map(|&i| &self.entries[i])
            {
                let Some(m) = Router::match_path(e, &parts) else {
                    continue;
                };
                let params = m?;
                any_path = true;
                if e.route.method.as_str() != method {
                    continue;
                }
                match &mut found {
                    None => {
                        found = Some(Matched {
                            routes: vec![e.route],
                            params,
                        })
                    }
                    Some(f) if f.params == params => f.routes.push(e.route),
                    Some(_) => {}
                }
            }
            if found.is_some() {
                break;
            }
        }
        match found {
            Some(m) => Ok(m),
            None if any_path => Err(ApiError::method_not_allowed(format!(
                "{method} is not allowed on {path}"
            ))),
            None => Err(ApiError::unrecognized(format!(
                "unrecognized request: {method} {path}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(mxconform_generated::client_server::ROUTES.iter())
    }

    #[test]
    fn matching() {
        let r = router();
        let check = |method: &str, path: &str, op: &str, params: &[(&str, &str)]| {
            let m = r
                .find(method, path)
                .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
            assert_eq!(m.routes[0].operation_id, op, "{method} {path}");
            let expected: BTreeMap<String, String> = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(m.params, expected, "{method} {path}");
        };
        check("GET", "/_matrix/client/versions", "getVersions", &[]);
        check(
            "PUT",
            "/_matrix/client/v3/rooms/%21a%3Ab/send/m.room.message/t1",
            "sendMessage",
            &[
                ("roomId", "!a:b"),
                ("eventType", "m.room.message"),
                ("txnId", "t1"),
            ],
        );
        check(
            "PUT",
            "/_matrix/client/v3/rooms/!a:b/state/m.room.name/",
            "setRoomStateWithKey",
            &[
                ("roomId", "!a:b"),
                ("eventType", "m.room.name"),
                ("stateKey", ""),
            ],
        );
        check(
            "GET",
            "/_matrix/client/v3/rooms/!a:b/state/m.room.name",
            "getRoomStateWithKey",
            &[
                ("roomId", "!a:b"),
                ("eventType", "m.room.name"),
                ("stateKey", ""),
            ],
        );
        check(
            "GET",
            "/_matrix/client/v3/rooms/!a:b/state",
            "getRoomState",
            &[("roomId", "!a:b")],
        );
        // Two operations on one route: both come back, the body decides.
        let m = r
            .find("POST", "/_matrix/client/v3/rooms/!a:b/invite")
            .unwrap();
        let ids: Vec<&str> = m.routes.iter().map(|r| r.operation_id).collect();
        assert_eq!(ids, ["inviteUser", "inviteBy3PID"]);
        assert_eq!(
            r.find("GET", "/_matrix/client/v3/nope").unwrap_err().status,
            404
        );
        let wrong = r.find("DELETE", "/_matrix/client/versions").unwrap_err();
        assert_eq!((wrong.status, wrong.errcode), (405, "M_UNRECOGNIZED"));
        assert_eq!(
            r.find("GET", "/_matrix/client/v3/rooms/%FF/state")
                .unwrap_err()
                .errcode,
            "M_INVALID_PARAM"
        );
        // Only the state key may be left off; other parameters may not be empty.
        assert_eq!(
            r.find("DELETE", "/_matrix/client/v3/devices")
                .unwrap_err()
                .status,
            405
        );
        check("GET", "/_matrix/client/v3/pushrules", "getPushRules", &[]);
    }
}
