//! Identifier grammar (appendices "Identifier Grammar"): server names, user ids (with the
//! historical leniency servers must keep for events), room ids of each format, and the
//! server part of an id.

/// Whether `name` fits the server-name grammar: a hostname (IPv4 literal, `[IPv6]` literal or
/// DNS name) and an optional port of 1-5 digits.
pub fn is_server_name(name: &str) -> bool {
    let (host, port) = if let Some(rest) = name.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return false;
        };
        let (v6, after) = (&rest[..end], &rest[end + 1..]);
        if v6.len() < 2
            || v6.len() > 45
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("v6", Some(port)),
                None => return false,
            },
        }
    } else {
        match name.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (name, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if host == "v6" && name.starts_with('[') {
        return true;
    }
    // A dotted quad matches the IPv4 grammar; anything else must be a DNS name, which the
    // grammar's characters already cover (digits and dots included).
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The server name of an id of the form `<sigil>localpart:server`.
pub fn server_of(id: &str) -> Option<&str> {
    id.split_once(':').map(|(_, s)| s)
}

/// Whether `id` is a user id servers must accept in events: `@`, a localpart of any
/// characters but `:` and NUL (historical user ids included, even empty), `:`, a valid
/// server name, and at most 255 bytes.
pub fn is_user_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix('@') else {
        return false;
    };
    let Some((local, server)) = rest.split_once(':') else {
        return false;
    };
    id.len() <= 255 && !local.contains('\0') && is_server_name(server)
}

/// Whether `id` is a user id of the current grammar (what servers make today): a localpart of
/// `a-z 0-9 . _ = - / +`.
pub fn is_strict_user_id(id: &str) -> bool {
    is_user_id(id)
        && id[1..].split_once(':').is_some_and(|(local, _)| {
            !local.is_empty()
                && local.bytes().all(|b| {
                    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+')
                })
        })
}

/// Whether `id` is a room id of the form `!opaque:server` (room versions 1-11).
pub fn is_room_id_with_server(id: &str) -> bool {
    id.len() <= 255
        && id
            .strip_prefix('!')
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(local, server)| !local.contains('\0') && is_server_name(server))
}

/// Whether `id` is a room id of room version 12: `!` and a URL-safe unpadded base64 sha256
/// (43 characters).
pub fn is_hash_room_id(id: &str) -> bool {
    id.strip_prefix('!').is_some_and(is_url_safe_hash)
}

/// Whether `text` is 43 characters of URL-safe unpadded base64 (a sha256).
pub fn is_url_safe_hash(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_the_appendix() {
        for ok in [
            "matrix.org",
            "matrix.org:8888",
            "1.2.3.4",
            "1.2.3.4:1234",
            "[1234:5678::abcd]",
            "[1234:5678::abcd]:5678",
            "localhost:18448",
        ] {
            assert!(is_server_name(ok), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "matrix.org:",
            "matrix.org:123456",
            "matrix.org:8a",
            "ex ample.org",
            "[1234:5678::abcd",
            "[1234:5678::abcd]x",
            "[zz::1]",
            "a_b.org",
        ] {
            assert!(!is_server_name(bad), "{bad}");
        }
    }

    #[test]
    fn user_ids_current_and_historical() {
        assert!(is_strict_user_id("@alice:example.org"));
        assert!(is_strict_user_id("@a.b_c=d-e/f+g:localhost:8448"));
        assert!(!is_strict_user_id("@Alice:example.org"));
        // Historical ids are still user ids in events.
        assert!(is_user_id("@Alice:example.org"));
        assert!(is_user_id("@:example.org"));
        assert!(!is_user_id("alice:example.org"));
        assert!(!is_user_id("@alice"));
        assert!(!is_user_id("@alice:bad host"));
        assert!(!is_user_id(&format!("@{}:x.org", "a".repeat(250))));
        assert_eq!(server_of("@a:b.org:8448"), Some("b.org:8448"));
    }

    #[test]
    fn room_ids_of_both_formats() {
        assert!(is_room_id_with_server("!abc:example.org"));
        assert!(!is_room_id_with_server("!abc"));
        assert!(is_hash_room_id(
            "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ"
        ));
        assert!(!is_hash_room_id(
            "!Nhcu5BS+UMnFX7hBVfVSoXiD7OgH6iRT/xyIuqDnpYQ"
        ));
        assert!(!is_hash_room_id("!short"));
    }
}
