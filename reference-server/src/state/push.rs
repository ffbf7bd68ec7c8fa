//! Push rule evaluation: which of a user's rules an event matches first, and so whether it
//! notifies them and whether it highlights. The notification counts of /sync and the list of
//! /notifications come from what this decides when an event arrives.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use regex::Regex;
use serde_json::Value;

use super::{Event, Room, State};

/// One notification: the event's position, and how many of the user's notifications in the
/// room highlight, up to and including this one (the actions of the rule that matched are in
/// the database).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Notification {
    pub pos: u64,
    pub highlights: u32,
}

impl Notification {
    /// Whether the `i`-th notification of a user's list in a room highlights.
    pub fn highlights_at(list: &[Notification], i: usize) -> bool {
        let before = if i == 0 { 0 } else { list[i - 1].highlights };
        list[i].highlights > before
    }

    pub fn highlight(actions: &Value) -> bool {
        actions.as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x.get("set_tweak").and_then(Value::as_str) == Some("highlight")
                    && x.get("value").is_none_or(|v| v.as_bool() != Some(false))
            })
        })
    }

    pub fn notifies(actions: &Value) -> bool {
        actions
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("notify")))
    }
}

fn em(key: &str, pattern: &str) -> Value {
    serde_json::json!({"kind": "event_match", "key": key, "pattern": pattern})
}

fn rule(id: &str, conditions: Vec<Value>, actions: Value) -> Value {
    serde_json::json!({"rule_id": id, "default": true, "enabled": true, "conditions": conditions, "actions": actions})
}

/// The predefined rules, in the order the spec lists them.
pub fn default_ruleset(user_id: &str) -> Value {
    let localpart = user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or("");
    let sound = serde_json::json!({"set_tweak": "sound", "value": "default"});
    let highlight = serde_json::json!({"set_tweak": "highlight"});
    let mut master = rule(".m.rule.master", vec![], serde_json::json!([]));
    master["enabled"] = serde_json::json!(false);
    serde_json::json!({
        "override": [
            master,
            rule(".m.rule.suppress_notices", vec![em("content.msgtype", "m.notice")], serde_json::json!([])),
            rule(
                ".m.rule.invite_for_me",
                vec![em("type", "m.room.member"), em("content.membership", "invite"), em("state_key", user_id)],
                serde_json::json!(["notify", sound]),
            ),
            rule(".m.rule.member_event", vec![em("type", "m.room.member")], serde_json::json!([])),
            rule(
                ".m.rule.is_user_mention",
                vec![serde_json::json!({"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id})],
                serde_json::json!(["notify", sound, highlight]),
            ),
            rule(".m.rule.contains_display_name", vec![serde_json::json!({"kind": "contains_display_name"})], serde_json::json!(["notify", sound, highlight])),
            rule(
                ".m.rule.is_room_mention",
                vec![
                    serde_json::json!({"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": true}),
                    serde_json::json!({"kind": "sender_notification_permission", "key": "room"}),
                ],
                serde_json::json!(["notify", highlight]),
            ),
            rule(
                ".m.rule.roomnotif",
                vec![serde_json::json!({"kind": "sender_notification_permission", "key": "room"}), em("content.body", "@room")],
                serde_json::json!(["notify", highlight]),
            ),
            rule(".m.rule.tombstone", vec![em("type", "m.room.tombstone"), em("state_key", "")], serde_json::json!(["notify", highlight])),
            rule(".m.rule.reaction", vec![em("type", "m.reaction")], serde_json::json!([])),
            rule(".m.rule.room.server_acl", vec![em("type", "m.room.server_acl"), em("state_key", "")], serde_json::json!([])),
            rule(
                ".m.rule.suppress_edits",
                vec![serde_json::json!({"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"})],
                serde_json::json!([]),
            ),
        ],
        "content": [
            {"rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true, "pattern": localpart, "actions": ["notify", sound, highlight]},
        ],
        "room": [],
        "sender": [],
        "underride": [
            rule(".m.rule.call", vec![em("type", "m.call.invite")], serde_json::json!(["notify", {"set_tweak": "sound", "value": "ring"}])),
            rule(
                ".m.rule.encrypted_room_one_to_one",
                vec![serde_json::json!({"kind": "room_member_count", "is": "2"}), em("type", "m.room.encrypted")],
                serde_json::json!(["notify", sound]),
            ),
            rule(
                ".m.rule.room_one_to_one",
                vec![serde_json::json!({"kind": "room_member_count", "is": "2"}), em("type", "m.room.message")],
                serde_json::json!(["notify", sound]),
            ),
            rule(".m.rule.message", vec![em("type", "m.room.message")], serde_json::json!(["notify"])),
            rule(".m.rule.encrypted", vec![em("type", "m.room.encrypted")], serde_json::json!(["notify"])),
        ],
    })
}

/// A user's push rules: their `m.push_rules` account data, else the predefined ones.
pub fn ruleset(state: &State, user: &str) -> Value {
    state
        .account_data
        .get(&(user.to_string(), String::new(), "m.push_rules".to_string()))
        .and_then(|(c, _)| c.get("global").cloned())
        .unwrap_or_else(|| default_ruleset(user))
}

/// A ruleset made ready for evaluation: the JSON read once and every glob compiled, so that
/// evaluating it (for every local member on every event, inside the state lock) looks nothing
/// up by name.
#[derive(Debug)]
pub struct Ruleset {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    test: Test,
    actions: Value,
}

#[derive(Debug)]
enum Test {
    /// `override` and `underride` rules (and unknown kinds' conditions): all must hold.
    Conditions(Vec<Condition>),
    /// A `content` rule: its pattern against whole words of the body (`None`: no pattern, or
    /// one that cannot be compiled: never matches).
    Body(Option<Glob>),
    /// A `room` rule: the event is in the room named by its id.
    Room(String),
    /// A `sender` rule: the event is from the user named by its id.
    Sender(String),
}

#[derive(Debug)]
enum Condition {
    EventMatch {
        key: String,
        glob: Option<Glob>,
    },
    PropertyIs {
        key: String,
        value: Value,
    },
    PropertyContains {
        key: String,
        value: Value,
    },
    ContainsDisplayName,
    /// `None`: an `is` that does not parse, which never holds.
    MemberCount(Option<(Cmp, u64)>),
    SenderPermission {
        key: String,
    },
    /// An unknown kind or a malformed condition: never holds.
    Never,
}

#[derive(Clone, Copy, Debug)]
enum Cmp {
    Eq,
    Lt,
    Gt,
    Le,
    Ge,
}

impl Ruleset {
    /// Reads a ruleset (`{override: [...], content: [...], ...}`), in the order evaluation
    /// takes: kinds in priority order, rules in their order, disabled rules left out.
    pub fn compile(rules: &Value) -> Ruleset {
        let mut out = Vec::new();
        for kind in KINDS {
            for rule in rules
                .get(kind)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if rule.get("enabled").and_then(Value::as_bool) == Some(false) {
                    continue;
                }
                let id = rule.get("rule_id").and_then(Value::as_str).unwrap_or("");
                let test = match kind {
                    "content" => Test::Body(
                        rule.get("pattern")
                            .and_then(Value::as_str)
                            .and_then(|p| compile_glob(p, true)),
                    ),
                    "room" => Test::Room(id.to_string()),
                    "sender" => Test::Sender(id.to_string()),
                    _ => Test::Conditions(
                        rule.get("conditions")
                            .and_then(Value::as_array)
                            .map_or_else(Vec::new, |cs| cs.iter().map(Condition::read).collect()),
                    ),
                };
                out.push(Rule {
                    test,
                    actions: rule
                        .get("actions")
                        .cloned()
                        .unwrap_or(Value::Array(Vec::new())),
                });
            }
        }
        Ruleset { rules: out }
    }
}

impl Condition {
    fn read(c: &Value) -> Condition {
        let key = c
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match c.get("kind").and_then(Value::as_str).unwrap_or("") {
            "event_match" => match c.get("pattern").and_then(Value::as_str) {
                Some(pattern) => Condition::EventMatch {
                    glob: compile_glob(pattern, key == "content.body"),
                    key,
                },
                None => Condition::Never,
            },
            "event_property_is" => Condition::PropertyIs {
                key,
                value: c.get("value").cloned().unwrap_or(Value::Null),
            },
            "event_property_contains" => Condition::PropertyContains {
                key,
                value: c.get("value").cloned().unwrap_or(Value::Null),
            },
            "contains_display_name" => Condition::ContainsDisplayName,
            "room_member_count" => {
                let is = c.get("is").and_then(Value::as_str).unwrap_or("");
                let (op, n) = match is.find(|ch: char| ch.is_ascii_digit()) {
                    Some(i) => (&is[..i], is[i..].parse::<u64>().ok()),
                    None => ("", None),
                };
                let op = match op {
                    "" | "==" => Some(Cmp::Eq),
                    "<" => Some(Cmp::Lt),
                    ">" => Some(Cmp::Gt),
                    "<=" => Some(Cmp::Le),
                    ">=" => Some(Cmp::Ge),
                    _ => None,
                };
                Condition::MemberCount(op.zip(n))
            }
            "sender_notification_permission" => Condition::SenderPermission { key },
            _ => Condition::Never,
        }
    }

    fn holds(&self, state: &State, room: &Room, ev: &Event, user: &str) -> bool {
        match self {
            Condition::EventMatch { key, glob } => glob.as_ref().is_some_and(|g| {
                property(ev, key)
                    .and_then(|p| p.as_str().map(|s| g.is_match(s)))
                    .unwrap_or(false)
            }),
            Condition::PropertyIs { key, value } => property(ev, key).is_some_and(|v| v.is(value)),
            Condition::PropertyContains { key, value } => {
                matches!(property(ev, key), Some(Prop::Json(Value::Array(a))) if a.iter().any(|v| scalar_eq(v, value)))
            }
            Condition::ContainsDisplayName => {
                let name = state
                    .state_content(&room.room_id, "m.room.member", user)
                    .and_then(|m| m.get("displayname"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| state.users.get(user).and_then(|u| u.displayname.clone()))
                    .unwrap_or_default();
                !name.is_empty()
                    && ev
                        .content
                        .get("body")
                        .and_then(Value::as_str)
                        .is_some_and(|b| glob_matches(&glob_escape(&name), b, true))
            }
            Condition::MemberCount(None) => false,
            Condition::MemberCount(Some((op, n))) => {
                let count = room.joined().count() as u64;
                match op {
                    Cmp::Eq => count == *n,
                    Cmp::Lt => count < *n,
                    Cmp::Gt => count > *n,
                    Cmp::Le => count <= *n,
                    Cmp::Ge => count >= *n,
                }
            }
            Condition::SenderPermission { key } => {
                let needed = room
                    .state_content("m.room.power_levels", "")
                    .and_then(|c| c.get("notifications"))
                    .and_then(|n| n.get(key.as_str()))
                    .and_then(Value::as_i64)
                    .unwrap_or(50);
                state
                    .power_level(room, &ev.sender)
                    .is_none_or(|level| level >= needed)
            }
            Condition::Never => false,
        }
    }
}

/// Which state compiled rulesets belong to: a process may run several servers, side by side
/// or one after another, whose user ids and positions coincide.
#[derive(Debug)]
pub struct Instance(u64);

impl Default for Instance {
    fn default() -> Instance {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Instance(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// How many users' compiled rulesets a thread keeps before it starts again.
const COMPILED_CACHE: usize = 4096;

thread_local! {
    /// Compiled rulesets by state and user, with the position at which the user's own rules
    /// were set (`None`: the predefined rules). A user whose rules changed since has theirs
    /// compiled again.
    static COMPILED: RefCell<HashMap<(u64, String), (Option<u64>, Rc<Ruleset>)>> = RefCell::new(HashMap::new());
}

/// Runs `f` on a user's push rules, compiled (their `m.push_rules` account data, else the
/// predefined rules).
pub fn with_ruleset<T>(state: &State, user: &str, f: impl FnOnce(&Ruleset) -> T) -> T {
    let own = state
        .account_data
        .get(&(user.to_string(), String::new(), "m.push_rules".to_string()))
        .and_then(|(c, at)| c.get("global").map(|g| (g, *at)));
    let set_at = own.map(|(_, at)| at);
    let key = (state.push_instance.0, user.to_string());
    let cached = COMPILED.with(|c| {
        c.borrow()
            .get(&key)
            .filter(|(at, _)| *at == set_at)
            .map(|(_, r)| r.clone())
    });
    let rules = cached.unwrap_or_else(|| {
        let compiled = Rc::new(match own {
            Some((rules, _)) => Ruleset::compile(rules),
            None => Ruleset::compile(&default_ruleset(user)),
        });
        COMPILED.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= COMPILED_CACHE {
                c.clear();
            }
            c.insert(key, (set_at, compiled.clone()));
        });
        compiled
    });
    f(&rules)
}

const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// The actions of the first rule of `rules` that `ev` matches for `user`, or `None` when none
/// does.
pub fn evaluate(
    state: &State,
    room: &Room,
    rules: &Ruleset,
    ev: &Event,
    user: &str,
) -> Option<Value> {
    rules
        .rules
        .iter()
        .find(|rule| match &rule.test {
            Test::Body(glob) => glob.as_ref().is_some_and(|g| {
                ev.content
                    .get("body")
                    .and_then(Value::as_str)
                    .is_some_and(|b| g.is_match(b))
            }),
            Test::Room(id) => *id == ev.room_id,
            Test::Sender(id) => *id == ev.sender,
            Test::Conditions(cs) => cs.iter().all(|c| c.holds(state, room, ev, user)),
        })
        .map(|rule| rule.actions.clone())
}

/// A property of an event: a top-level string, or a value inside `content`.
#[derive(Debug, PartialEq)]
enum Prop<'a> {
    Str(&'a str),
    Json(&'a Value),
}

impl Prop<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Prop::Str(s) => Some(s),
            Prop::Json(v) => v.as_str(),
        }
    }

    fn is(&self, want: &Value) -> bool {
        match self {
            Prop::Str(s) => want.as_str() == Some(*s),
            Prop::Json(v) => scalar_eq(v, want),
        }
    }
}

/// The value at a dotted key (`content.m\.relates_to.rel_type`; `\.` is a literal dot),
/// without copying: this runs for every rule, member and event.
fn property<'a>(ev: &'a Event, key: &str) -> Option<Prop<'a>> {
    let (head, rest) = split_key(key);
    match (head.as_ref(), rest) {
        ("type", None) => Some(Prop::Str(&ev.kind)),
        ("sender", None) => Some(Prop::Str(&ev.sender)),
        ("room_id", None) => Some(Prop::Str(&ev.room_id)),
        ("state_key", None) => ev.state_key.as_deref().map(Prop::Str),
        ("content", mut rest) => {
            let mut v = &ev.content;
            while let Some(r) = rest {
                let (part, next) = split_key(r);
                v = v.get(part.as_ref())?;
                rest = next;
            }
            Some(Prop::Json(v))
        }
        _ => None,
    }
}

/// The first part of a dotted key (unescaped) and the rest after its dot.
fn split_key(key: &str) -> (std::borrow::Cow<'_, str>, Option<&str>) {
    let bytes = key.as_bytes();
    let mut i = 0;
    let mut escaped = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                escaped = true;
                i += 2;
            }
            b'.' => break,
            _ => i += 1,
        }
    }
    let i = i.min(bytes.len());
    let head = &key[..i];
    let rest = (i < bytes.len()).then(|| &key[i + 1..]);
    if !escaped {
        return (std::borrow::Cow::Borrowed(head), rest);
    }
    let mut out = String::with_capacity(head.len());
    let mut chars = head.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    (std::borrow::Cow::Owned(out), rest)
}

thread_local! {
    /// Compiled globs: [whole value, words of a body], by pattern (for display names, which
    /// are not part of a ruleset).
    static GLOBS: RefCell<[HashMap<String, Option<Glob>>; 2]> = RefCell::new([HashMap::new(), HashMap::new()]);
}

/// A glob (`*`, `?`) matched case-insensitively against the whole value, or (for a message
/// body) against whole words anywhere in it.
#[derive(Debug)]
struct Glob {
    /// The pattern, when it has no wildcards and is ASCII: matched without the regex in ASCII
    /// values (most bodies), where ASCII case folding and word characters are the whole story.
    literal: Option<String>,
    words: bool,
    re: Regex,
}

impl Glob {
    fn is_match(&self, value: &str) -> bool {
        match &self.literal {
            Some(lit) if value.is_ascii() => {
                literal_match(lit.as_bytes(), value.as_bytes(), self.words)
            }
            _ => self.re.is_match(value),
        }
    }
}

/// What the regex of [`compile_glob`] answers for a non-empty ASCII pattern without wildcards
/// and an ASCII value: equal ignoring ASCII case, or (`words`) found with no word character
/// (`[A-Za-z0-9_]`, all of `\w` in ASCII) right before or after it.
fn literal_match(pattern: &[u8], value: &[u8], words: bool) -> bool {
    if !words {
        return value.eq_ignore_ascii_case(pattern);
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    // A literal glob is never empty, so the windows are not either.
    value.windows(pattern.len()).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(pattern)
            && (i == 0 || !word(value[i - 1]))
            && value.get(i + pattern.len()).is_none_or(|&b| !word(b))
    })
}

/// A glob (`*`, `?`) as a case-insensitive matcher ([`Glob`]). `None` for one that cannot be
/// compiled (it matches nothing).
fn compile_glob(pattern: &str, words: bool) -> Option<Glob> {
    let mut body = String::new();
    for c in pattern.chars() {
        match c {
            '*' => body.push_str(".*?"),
            '?' => body.push('.'),
            c => body.push_str(&regex::escape(&c.to_string())),
        }
    }
    let re = if words {
        format!(r"(?is)(?:^|\W){body}(?:\W|$)")
    } else {
        format!(r"(?is)^{body}$")
    };
    let literal = (!pattern.is_empty() && pattern.is_ascii() && !pattern.contains(['*', '?']))
        .then(|| pattern.to_string());
    Some(Glob {
        literal,
        words,
        re: Regex::new(&re).ok()?,
    })
}

/// Whether `value` matches the glob `pattern` ([`compile_glob`]), compiled once per thread.
fn glob_matches(pattern: &str, value: &str, words: bool) -> bool {
    GLOBS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let map = &mut cache[usize::from(words)];
        if let Some(g) = map.get(pattern) {
            return g.as_ref().is_some_and(|g| g.is_match(value));
        }
        if map.len() > 4096 {
            map.clear();
        }
        let g = compile_glob(pattern, words);
        let hit = g.as_ref().is_some_and(|g| g.is_match(value));
        map.insert(pattern.to_string(), g);
        hit
    })
}

/// Only strings, integers, booleans and null compare (the spec's `event_property_*` values).
fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Null, Value::Null) => true,
        (Value::Number(x), Value::Number(y)) => x.as_i64().is_some() && x.as_i64() == y.as_i64(),
        _ => false,
    }
}

/// A display name as a glob that matches only itself.
fn glob_escape(s: &str) -> String {
    // `*` and `?` in a name are taken literally: replace them by `?`, which matches them.
    s.replace(['*', '?'], "?")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(kind: &str, content: Value) -> Event {
        Event {
            pos: 1,
            event_id: "$e".into(),
            room_id: "!r:hs".into(),
            sender: "@bob:hs".into(),
            kind: kind.into(),
            state_key: None,
            content,
            ts: 0,
            txn: None,
            replaces: None,
            redacts: None,
            redacted_by: None,
            purged: false,
            rest: Box::default(),
        }
    }

    #[test]
    fn globs_match_whole_values_or_whole_words_of_a_body() {
        assert!(glob_matches("m.room.*", "m.room.message", false));
        assert!(!glob_matches("m.room", "m.room.message", false));
        assert!(glob_matches("ALICE", "hi alice!", true));
        assert!(!glob_matches("alice", "hi malice", true));
        assert!(glob_matches("a?ice", "alice", false));
    }

    proptest::proptest! {
        /// The literal path answers what the regex answers, on ASCII text built from letters
        /// of both cases, digits, `_` and separators (where word boundaries matter).
        #[test]
        fn literal_globs_agree_with_their_regex(
            pattern in "[aAbB0_@.]{1,4}",
            value in "[aAbB0_@. -]{0,16}",
            words: bool,
        ) {
            let g = compile_glob(&pattern, words).expect("compiles");
            proptest::prop_assert!(g.literal.is_some());
            proptest::prop_assert_eq!(g.is_match(&value), g.re.is_match(&value));
        }
    }

    #[test]
    fn properties_follow_escaped_dots() {
        let e = ev(
            "m.room.message",
            json!({"m.mentions": {"user_ids": ["@a:hs"]}, "body": "x"}),
        );
        assert_eq!(
            property(&e, "content.m\\.mentions.user_ids"),
            Some(Prop::Json(&json!(["@a:hs"])))
        );
        assert_eq!(property(&e, "type"), Some(Prop::Str("m.room.message")));
        assert!(property(&e, "content.m.mentions").is_none());
    }

    #[test]
    fn the_first_enabled_matching_rule_decides() {
        let state = State::new("hs", mxconform_pdu::SigningKey::generate(None).unwrap());
        let room = Room::default();
        let rules = json!({
            "override": [
                {"rule_id": "off", "enabled": false, "conditions": [], "actions": ["notify", {"set_tweak": "highlight"}]},
                {"rule_id": "notice", "enabled": true, "conditions": [{"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}], "actions": []}
            ],
            "content": [{"rule_id": "name", "enabled": true, "pattern": "alice", "actions": ["notify", {"set_tweak": "highlight"}]}],
            "sender": [{"rule_id": "@bob:hs", "enabled": true, "actions": ["notify", {"set_tweak": "sound", "value": "x"}]}],
            "underride": []
        });
        let compiled = Ruleset::compile(&rules);
        let notice = ev(
            "m.room.message",
            json!({"msgtype": "m.notice", "body": "alice"}),
        );
        assert_eq!(
            evaluate(&state, &room, &compiled, &notice, "@alice:hs"),
            Some(json!([]))
        );
        let named = ev(
            "m.room.message",
            json!({"msgtype": "m.text", "body": "hey Alice"}),
        );
        let a = evaluate(&state, &room, &compiled, &named, "@alice:hs").expect("matches");
        assert!(Notification::highlight(&a) && Notification::notifies(&a));
        let other = ev(
            "m.room.message",
            json!({"msgtype": "m.text", "body": "hello"}),
        );
        let a = evaluate(&state, &room, &compiled, &other, "@alice:hs").expect("sender rule");
        assert!(!Notification::highlight(&a));
    }

    #[test]
    fn compiled_rules_are_the_users_own_per_state_and_follow_changes() {
        let key = || mxconform_pdu::SigningKey::generate(None).unwrap();
        let (mut a, mut b) = (State::new("hs", key()), State::new("hs", key()));
        let room = Room::default();
        let alice = "@alice:hs";
        let rules = |actions: Value| json!({"global": {"underride": [{"rule_id": "all", "enabled": true, "conditions": [], "actions": actions}]}});
        let slot = (alice.to_string(), String::new(), "m.push_rules".to_string());
        // Two servers in one process, the same user, rules set at the same position.
        a.account_data
            .insert(slot.clone(), (rules(json!(["notify"])), 7));
        b.account_data.insert(slot.clone(), (rules(json!([])), 7));
        let e = ev("m.room.message", json!({"body": "x"}));
        let on = |s: &State| with_ruleset(s, alice, |r| evaluate(s, &room, r, &e, alice));
        assert_eq!(on(&a), Some(json!(["notify"])));
        assert_eq!(on(&b), Some(json!([])));
        // Rules changed later are compiled again.
        a.account_data
            .insert(slot, (rules(json!(["dont_notify"])), 8));
        assert_eq!(on(&a), Some(json!(["dont_notify"])));
    }
}
