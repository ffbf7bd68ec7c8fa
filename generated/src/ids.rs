//! The identifier types the spec's `mx-*` formats map to, declared once and shared by every
//! module. Each checks only what every room version agrees on (the sigil, a server part where
//! one is always present), so that room version 12 room ids, which have no server part, fit.

use std::fmt;

/// Why a string is not a valid identifier of some kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdError {
    pub kind: &'static str,
    pub reason: &'static str,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.kind, self.reason)
    }
}

impl std::error::Error for IdError {}

/// Identifiers may be at most 255 bytes long (the spec's limit for user, room and event ids
/// and aliases).
const MAX_LEN: usize = 255;

fn check_sigil(
    s: &str,
    sigil: char,
    kind: &'static str,
    needs_server: bool,
) -> Result<(), IdError> {
    let err = |reason| Err(IdError { kind, reason });
    if s.len() > MAX_LEN {
        return err("longer than 255 bytes");
    }
    let Some(rest) = s.strip_prefix(sigil) else {
        return err("does not start with its sigil");
    };
    if rest.is_empty() {
        return err("nothing after the sigil");
    }
    if needs_server {
        match rest.split_once(':') {
            Some((local, server)) if !server.is_empty() && (!local.is_empty() || sigil == '@') => {}
            _ => return err("no `:server` part"),
        }
    }
    Ok(())
}

fn check_base64(s: &str, kind: &'static str, url_safe: bool) -> Result<(), IdError> {
    let ok = s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || if url_safe {
                b == b'-' || b == b'_'
            } else {
                b == b'+' || b == b'/'
            }
    });
    if ok {
        Ok(())
    } else {
        Err(IdError {
            kind,
            reason: "a character outside its base64 alphabet (or padding)",
        })
    }
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal, |$s:ident| $check:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Checks and wraps a string.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let $s: String = s.into();
                let checked: Result<(), IdError> = $check;
                checked.map(|()| $name($s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// `@localpart:server` (format `mx-user-id`).
    UserId, "user id", |s| check_sigil(&s, '@', "user id", true)
);
id_type!(
    /// `!opaque:server`, or `!opaque` from room version 12 on (format `mx-room-id`).
    RoomId, "room id", |s| check_sigil(&s, '!', "room id", false)
);
id_type!(
    /// `$opaque`, with a `:server` part in room versions 1 and 2 (format `mx-event-id`).
    EventId, "event id", |s| check_sigil(&s, '$', "event id", false)
);
id_type!(
    /// `#alias:server` (format `mx-room-alias`).
    RoomAliasId, "room alias", |s| check_sigil(&s, '#', "room alias", true)
);
id_type!(
    /// A hostname or IP literal with an optional port (format `mx-server-name`).
    ServerName, "server name", |s| {
        if s.is_empty() || s.len() > MAX_LEN {
            Err(IdError { kind: "server name", reason: "empty or longer than 255 bytes" })
        } else if s.chars().any(|c| c.is_whitespace() || c == '/') {
            Err(IdError { kind: "server name", reason: "contains whitespace or `/`" })
        } else {
            Ok(())
        }
    }
);
id_type!(
    /// `mxc://server/media-id` (format `mx-mxc-uri`).
    MxcUri, "mxc uri", |s| {
        if s.starts_with("mxc://") {
            Ok(())
        } else {
            Err(IdError { kind: "mxc uri", reason: "does not start with mxc://" })
        }
    }
);
id_type!(
    /// Unpadded standard base64 (format `mx-unpadded-base64`).
    Base64, "unpadded base64", |s| check_base64(&s, "unpadded base64", false)
);
id_type!(
    /// Unpadded URL-safe base64 (format `mx-urlsafe-unpadded-base64`).
    UrlSafeBase64, "url-safe unpadded base64", |s| check_base64(&s, "url-safe unpadded base64", true)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        let ok = |r: Result<(), IdError>| r.is_ok();
        assert!(ok(UserId::parse("@alice:example.org").map(drop)));
        assert!(!ok(UserId::parse("alice:example.org").map(drop)));
        assert!(!ok(UserId::parse("@alice").map(drop)));
        assert!(ok(RoomId::parse("!abc:example.org").map(drop)));
        // Room version 12: no server part.
        assert!(ok(RoomId::parse(
            "!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM"
        )
        .map(drop)));
        assert!(!ok(RoomId::parse("#abc:example.org").map(drop)));
        assert!(ok(EventId::parse("$abc").map(drop)));
        assert!(!ok(RoomAliasId::parse("#:example.org").map(drop)));
        assert!(ok(MxcUri::parse("mxc://example.org/abc").map(drop)));
        assert!(!ok(Base64::parse("abc=").map(drop)));
        assert!(ok(UrlSafeBase64::parse("ab-_").map(drop)));
        assert!(!ok(
            UserId::parse(format!("@{}:x", "a".repeat(300))).map(drop)
        ));
        let id: UserId = serde_json::from_str("\"@a:b\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"@a:b\"");
        assert!(serde_json::from_str::<RoomId>("\"nope\"").is_err());
    }
}
