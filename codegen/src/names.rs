//! Turning spec names (file names, titles, property names, operation ids) into Rust names.

/// Splits a name into lowercase words at separators and at lower-to-upper case changes:
/// `getRoomIdByAlias` -> get room id by alias, `m.room.member` -> m room member.
pub fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if c.is_ascii_uppercase() && !cur.is_empty() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            // "roomId" splits before I; "URLPath" splits before P (an acronym ends).
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower)
            {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub fn snake(name: &str) -> String {
    let s = words(name).join("_");
    escape_ident(if s.is_empty() { "field".to_string() } else { s })
}

pub fn pascal(name: &str) -> String {
    let s: String = words(name)
        .iter()
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect();
    if s.is_empty() {
        "Value".into()
    } else if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("V{s}")
    } else {
        match s.as_str() {
            "Self" | "Option" | "Result" | "Vec" | "String" | "Box" | "Value" | "Map" => {
                format!("{s}_")
            }
            _ => s,
        }
    }
}

const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "abstract", "become", "box", "do", "final", "macro", "override",
    "priv", "try", "typeof", "unsized", "virtual", "yield",
];

/// Keywords get a trailing underscore; names starting with a digit get a leading `n`.
pub fn escape_ident(s: String) -> String {
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("n{s}")
    } else if KEYWORDS.contains(&s.as_str()) {
        format!("{s}_")
    } else {
        s
    }
}

/// A title that reads as a name ("KeyObject", "Room Event"), not as prose.
pub fn title_as_name(title: &str) -> Option<String> {
    let t = title.trim();
    let ok = !t.is_empty()
        && t.split_whitespace().count() <= 4
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-'))
        && t.starts_with(|c: char| c.is_ascii_alphabetic());
    ok.then(|| pascal(t))
}

/// The Rust name of an event schema file stem: `m.room.member` -> `RoomMemberEvent`,
/// `m.room.message$m.text` -> `RoomMessageTextEvent`.
pub fn event_type_name(stem: &str) -> String {
    let cleaned: Vec<&str> = stem
        .split('$')
        .map(|part| part.strip_prefix("m.").unwrap_or(part))
        .collect();
    format!("{}Event", pascal(&cleaned.join(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let check = |input: &str, snake_expected: &str, pascal_expected: &str| {
            assert_eq!(snake(input), snake_expected, "snake({input})");
            assert_eq!(pascal(input), pascal_expected, "pascal({input})");
        };
        check(
            "getRoomIdByAlias",
            "get_room_id_by_alias",
            "GetRoomIdByAlias",
        );
        check("inviteBy3PID", "invite_by3_pid", "InviteBy3Pid");
        check("m.room.member", "m_room_member", "MRoomMember");
        check("type", "type_", "Type");
        check("account-data", "account_data", "AccountData");
        check("1.2", "n1_2", "V12");
        check("getURLPreview", "get_url_preview", "GetUrlPreview");
        check("self", "self_", "Self_");
        assert_eq!(
            event_type_name("m.room.message$m.text"),
            "RoomMessageTextEvent"
        );
        assert_eq!(
            event_type_name("m.key.verification.start$m.sas.v1"),
            "KeyVerificationStartSasV1Event"
        );
        assert_eq!(
            title_as_name("Event Container").as_deref(),
            Some("EventContainer")
        );
        assert_eq!(
            title_as_name("The current membership state of a user in the room."),
            None
        );
    }
}
