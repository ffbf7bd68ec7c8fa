//! `/sync`: initial and incremental, long-polled until something for the caller arrives or
//! the timeout passes, with filters (stored or inline, lazy-loading members), timelines with
//! `limited` and `prev_batch`, state, ephemeral typing and receipts, account data, invites,
//! leaves, knocks and to-device messages.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mxconform_generated::client_server as cs;
use serde_json::{json, Map, Value};

use super::events::{parse_token, EventFilter};
use super::{Authed, Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, Event, Room, State};

/// The parts of a sync filter this server applies.
#[derive(Debug, Default, Clone)]
struct SyncFilter {
    timeline: EventFilter,
    state: EventFilter,
    state_lazy: bool,
    rooms: Option<Vec<String>>,
    not_rooms: Vec<String>,
    include_leave: bool,
    /// Global account data.
    account_data: EventFilter,
    room_account_data: EventFilter,
    ephemeral: EventFilter,
    presence: EventFilter,
    /// Notification counts per thread (`unread_thread_notifications` in the timeline filter).
    thread_counts: bool,
}

impl SyncFilter {
    fn from_json(v: &Value) -> SyncFilter {
        let room = v.get("room").cloned().unwrap_or(json!({}));
        let list = |x: Option<&Value>| {
            x.and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
        };
        let part = |x: Option<&Value>| x.map(EventFilter::from_json).unwrap_or_default();
        let timeline = part(room.get("timeline"));
        let state = part(room.get("state"));
        SyncFilter {
            state_lazy: state.lazy_load_members || timeline.lazy_load_members,
            timeline,
            state,
            rooms: list(room.get("rooms")),
            not_rooms: list(room.get("not_rooms")).unwrap_or_default(),
            include_leave: room
                .get("include_leave")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            account_data: part(v.get("account_data")),
            room_account_data: part(room.get("account_data")),
            ephemeral: part(room.get("ephemeral")),
            presence: part(v.get("presence")),
            thread_counts: room
                .get("timeline")
                .and_then(|t| t.get("unread_thread_notifications"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

fn stripped(e: &Event) -> Value {
    json!({"type": e.kind, "state_key": e.state_key, "content": e.content, "sender": e.sender})
}

/// The stripped state an invitee or knocker sees.
fn stripped_state(state: &State, room: &Room, own_member: Option<&Event>) -> Vec<Value> {
    let mut out: Vec<Value> = [
        "m.room.create",
        "m.room.join_rules",
        "m.room.name",
        "m.room.canonical_alias",
        "m.room.avatar",
        "m.room.encryption",
        "m.room.topic",
    ]
    .iter()
    .filter_map(|k| room.state_event(k, ""))
    .filter_map(|p| state.event(p))
    .map(|e| stripped(&e))
    .collect();
    if let Some(m) = own_member {
        if let Some(p) = room.state_event("m.room.member", &m.sender) {
            if let Some(inviter) = state.event(p) {
                out.push(stripped(&inviter));
            }
        }
        out.push(stripped(m));
    }
    out
}

fn account_data_events(
    state: &State,
    user: &str,
    room: &str,
    since: u64,
    filter: &EventFilter,
) -> Vec<Value> {
    let mut list: Vec<(&String, &(Value, u64))> = state
        .account_data
        .iter()
        .filter(|((u, r, _), (_, p))| u == user && r == room && *p > since)
        .map(|((_, _, t), v)| (t, v))
        .filter(|(t, _)| filter.matches_parts(t, None))
        .collect();
    list.sort_by_key(|(_, (_, p))| *p);
    list.into_iter()
        .map(|(t, (c, _))| json!({"type": t, "content": c}))
        .collect()
}

/// One joined (or left) room's section, or `None` when nothing changed since `since`.
#[allow(clippy::too_many_arguments)]
fn room_section(
    state: &State,
    room: &Room,
    me: &Authed,
    since: Option<u64>,
    until: u64,
    filter: &SyncFilter,
    full_state: bool,
    joined: bool,
) -> Option<Value> {
    let viewer = (me.user_id.as_str(), me.device_id.as_str());
    let my_log = room.members.get(&me.user_id)?;
    let mpos = my_log.last().map_or(0, |(p, _)| *p);
    // A room new to the caller gets its whole state; `full_state` asks for that too, but the
    // timeline still starts at `since`.
    let fresh = since.is_none_or(|s| mpos > s && joined);
    let after = if fresh { 0 } else { since.unwrap_or(0) };
    let timeline_limit = filter.timeline.limit.unwrap_or(10).clamp(1, 500);
    // Timeline: the room's events after `after`, up to `until`, that the caller may see.
    let mut positions: Vec<u64> = Vec::new();
    let mut limited = false;
    for p in room.timeline.iter().rev() {
        if *p <= after {
            break;
        }
        if *p > until {
            continue;
        }
        let Some(e) = state.event(*p) else {
            continue;
        };
        if !filter.timeline.matches(&e) || !state.can_see(room, &me.user_id, *p) {
            continue;
        }
        if positions.len() == timeline_limit {
            limited = true;
            break;
        }
        positions.push(*p);
    }
    positions.reverse();
    let first = positions.first().copied().unwrap_or(until + 1);
    let timeline_events: Vec<Arc<Event>> =
        positions.iter().filter_map(|p| state.event(*p)).collect();

    // State: as at the start of the timeline (fresh), or what changed in the gap (limited).
    let whole = fresh || full_state;
    let state_from = if whole {
        0
    } else if limited {
        after
    } else {
        u64::MAX
    };
    let mut st: BTreeMap<(String, String), Arc<Event>> = BTreeMap::new();
    if state_from != u64::MAX {
        // The state just before the timeline; in a gap, only the keys that changed after
        // `state_from` (a change logged in the gap may set an older event, where forks met).
        let before = first.saturating_sub(1);
        let changed: HashSet<(&str, &str)> = room
            .state_changes(state_from, before)
            .map(|(_, kind, key, _)| (kind.as_str(), key.as_str()))
            .collect();
        for ((kind, key), p) in room.state_at(before) {
            if !whole && !changed.contains(&(kind, key)) {
                continue;
            }
            if let Some(e) = state.event(p) {
                st.insert((kind.to_string(), key.to_string()), e);
            }
        }
    }
    // Where forks met during the timeline, resolution may have set a key to an event the
    // timeline does not show (a soft-failed one, or one from before): clients learn of it
    // only here, as Synapse also tells them.
    let from = if whole || limited {
        first.saturating_sub(1)
    } else {
        after
    };
    // The state now is built only when some change needs it (it is a map of the whole state).
    let mut now = None;
    for (at, kind, key, p) in room.state_changes(from, until) {
        let unseen = *p != *at && *p != 0 && !positions.contains(p);
        if unseen
            && now
                .get_or_insert_with(|| room.state_at(until))
                .get(&(kind.as_str(), key.as_str()))
                == Some(p)
        {
            if let Some(e) = state.event(*p) {
                st.insert((kind.clone(), key.clone()), e);
            }
        }
    }
    st.retain(|_, e| filter.state.matches(e));
    if filter.state_lazy {
        // Lazy loading: the memberships of the timeline's senders (and the heroes) as at the
        // start of the timeline, whether or not an earlier response carried them (sending
        // them again is allowed, and is what include_redundant_members asks).
        let mut wanted: Vec<&str> = timeline_events.iter().map(|e| e.sender.as_str()).collect();
        wanted.push(&me.user_id);
        if joined {
            wanted.extend(heroes(room, &me.user_id).into_iter().map(String::as_str));
        }
        st.retain(|(kind, key), _| kind != "m.room.member" || wanted.contains(&key.as_str()));
        // Only alongside something to show: an unchanged room stays out of the response.
        let showing = whole || !timeline_events.is_empty();
        for user in wanted.into_iter().filter(|_| showing) {
            let key = ("m.room.member".to_string(), user.to_string());
            if st.contains_key(&key) {
                continue;
            }
            let before_timeline = room
                .members
                .get(user)
                .and_then(|log| log.iter().take_while(|(p, _)| *p < first).last())
                .and_then(|(p, _)| state.event(*p));
            if let Some(e) = before_timeline.filter(|e| filter.state.matches(e)) {
                st.insert(key, e);
            }
        }
    }
    let state_events: Vec<Value> = st
        .values()
        .map(|e| state.client_event(e, Some(viewer), false))
        .collect();

    let mut ephemeral = Vec::new();
    if joined {
        if let Some((typing, tpos)) = state
            .typing
            .get(&room.room_id)
            .filter(|_| filter.ephemeral.matches_parts("m.typing", None))
        {
            let now = now_ms();
            let users: Vec<&String> = typing
                .iter()
                .filter(|(_, exp)| **exp > now)
                .map(|(u, _)| u)
                .collect();
            if fresh || *tpos > after {
                ephemeral.push(json!({"type": "m.typing", "content": {"user_ids": users}}));
            }
        }
        if let Some((receipts, rpos)) = state
            .receipts
            .get(&room.room_id)
            .filter(|_| filter.ephemeral.matches_parts("m.receipt", None))
        {
            if fresh || *rpos > after {
                let mut content: Map<String, Value> = Map::new();
                for (rtype, by_user) in receipts {
                    for (who, (event_id, ts, thread)) in by_user {
                        let user = who.split('\u{0}').next().unwrap_or(who);
                        if rtype == "m.read.private" && user != me.user_id {
                            continue;
                        }
                        let mut r = json!({"ts": ts});
                        if let Some(t) = thread {
                            r["thread_id"] = json!(t);
                        }
                        let entry = content.entry(event_id.clone()).or_insert_with(|| json!({}));
                        entry[rtype][user] = r;
                    }
                }
                if !content.is_empty() {
                    ephemeral.push(json!({"type": "m.receipt", "content": content}));
                }
            }
        }
    }
    let account_data = account_data_events(
        state,
        &me.user_id,
        &room.room_id,
        after,
        &filter.room_account_data,
    );
    if !fresh
        && timeline_events.is_empty()
        && state_events.is_empty()
        && ephemeral.is_empty()
        && account_data.is_empty()
    {
        return None;
    }
    let prev = timeline_events
        .first()
        .map_or(until, |e| e.pos.saturating_sub(1));
    let timeline: Vec<Value> = timeline_events
        .iter()
        .map(|e| state.client_event(e, Some(viewer), false))
        .collect();
    let mut section = object([
        (
            "timeline",
            object([
                ("events", timeline.into()),
                ("limited", limited.into()),
                ("prev_batch", format!("t{prev}").into()),
            ]),
        ),
        ("state", events(state_events)),
        ("account_data", events(account_data)),
    ]);
    if joined {
        section["ephemeral"] = events(ephemeral);
        let joined_count = room.joined().count();
        let invited = room
            .members
            .values()
            .filter(|l| l.last().is_some_and(|(_, m)| m == "invite"))
            .count();
        let heroes = heroes(room, &me.user_id);
        section["summary"] = json!({"m.joined_member_count": joined_count, "m.invited_member_count": invited, "m.heroes": heroes});
        if filter.thread_counts {
            let (main, threads) = unread_by_thread(state, room, &me.user_id);
            section["unread_notifications"] =
                json!({"notification_count": main.0, "highlight_count": main.1});
            let per: Map<String, Value> = threads
                .into_iter()
                .map(|(root, (n, h))| {
                    (root, json!({"notification_count": n, "highlight_count": h}))
                })
                .collect();
            if !per.is_empty() {
                section["unread_thread_notifications"] = Value::Object(per);
            }
        } else {
            let (notes, highlights) = state.unread(room, &me.user_id);
            section["unread_notifications"] =
                json!({"notification_count": notes, "highlight_count": highlights});
        }
    }
    Some(section)
}

/// Records that `user` is active with `presence`: written only when it changes, or when the
/// last activity is over a minute old, so that long-polls do not write on every call.
fn mark_active(ctx: &Ctx, user: &str, presence: &str) -> ApiResult<()> {
    let now = now_ms();
    let fresh = ctx.server.read(|s| {
        s.presence.get(user).is_some_and(|(c, _)| {
            c.get("presence").and_then(Value::as_str) == Some(presence)
                && c.get("last_active_ts")
                    .and_then(Value::as_u64)
                    .is_some_and(|t| t + 60_000 > now)
        })
    });
    if fresh {
        return Ok(());
    }
    ctx.server.write(|state, batch| {
        let mut content = state
            .presence
            .get(user)
            .map(|(c, _)| c.clone())
            .unwrap_or_else(|| json!({}));
        content["presence"] = json!(presence);
        content["last_active_ts"] = json!(now);
        state.put_presence(batch, user, content);
        Ok(())
    })
}

/// Unread notifications counted apart for the main timeline and each thread: an unthreaded
/// receipt reads everything before it, a threaded one (`main` or a thread root) only its own
/// timeline. Returns (main counts, thread root -> counts).
#[allow(clippy::type_complexity)]
fn unread_by_thread(
    state: &State,
    room: &Room,
    user: &str,
) -> ((usize, u32), BTreeMap<String, (usize, u32)>) {
    let mut unthreaded = room.last_sent.get(user).copied().unwrap_or(0);
    let mut threaded: BTreeMap<&str, u64> = BTreeMap::new();
    if let Some((receipts, _)) = state.receipts.get(&room.room_id) {
        for rtype in ["m.read", "m.read.private"] {
            for (who, (event_id, _, thread)) in receipts.get(rtype).into_iter().flatten() {
                if who.split('\u{0}').next() != Some(user) {
                    continue;
                }
                let pos = state.event_pos(event_id).unwrap_or(0);
                match thread.as_deref() {
                    None => unthreaded = unthreaded.max(pos),
                    Some(t) => {
                        let e = threaded.entry(t).or_default();
                        *e = (*e).max(pos);
                    }
                }
            }
        }
    }
    let mut main = (0, 0);
    let mut threads: BTreeMap<String, (usize, u32)> = BTreeMap::new();
    let list = state.notifications(room, user);
    let list = &*list;
    let start = list.partition_point(|n| n.pos <= unthreaded);
    for (i, n) in list.iter().enumerate().skip(start) {
        let root: Option<String> = state.event(n.pos).and_then(|e| {
            e.content
                .get("m.relates_to")
                .filter(|r| r.get("rel_type").and_then(Value::as_str) == Some("m.thread"))
                .and_then(|r| r.get("event_id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let read = threaded
            .get(root.as_deref().unwrap_or("main"))
            .copied()
            .unwrap_or(0);
        if n.pos <= read {
            continue;
        }
        let highlight = u32::from(crate::state::push::Notification::highlights_at(list, i));
        let bucket = match root {
            Some(r) => threads.entry(r).or_default(),
            None => &mut main,
        };
        bucket.0 += 1;
        bucket.1 += highlight;
    }
    (main, threads)
}

/// Heroes: the first five other members, joined or invited, in stream order.
fn heroes<'a>(room: &'a Room, me: &str) -> Vec<&'a String> {
    let mut members: Vec<(u64, &String)> = room
        .members
        .iter()
        .filter(|(u, l)| *u != me && l.last().is_some_and(|(_, m)| m == "join" || m == "invite"))
        .map(|(u, l)| (l.first().map_or(0, |(p, _)| *p), u))
        .collect();
    members.sort();
    members.into_iter().take(5).map(|(_, u)| u).collect()
}

/// A JSON object of `fields`, moved in. (`json!` would copy each value it is given, events
/// and all, through the serializer: most of a woken /sync's time went there.)
fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// `{"events": [...]}`, the list moved in.
fn events(list: Vec<Value>) -> Value {
    object([("events", list.into())])
}

/// The /sync answer for `me` from `since` (everything when `None`) to now, and whether it
/// holds nothing new (a long-poll then waits).
fn build(
    state: &State,
    me: &Authed,
    since: Option<u64>,
    filter: &SyncFilter,
    full_state: bool,
) -> (Value, bool) {
    let until = state.pos;
    let s = since.unwrap_or(0);
    let mut join = Map::new();
    let mut invite = Map::new();
    let mut leave = Map::new();
    let mut knock = Map::new();
    let rooms: Vec<&String> = state
        .user_rooms
        .get(&me.user_id)
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    for room_id in rooms {
        if filter.not_rooms.contains(room_id)
            || filter.rooms.as_ref().is_some_and(|r| !r.contains(room_id))
        {
            continue;
        }
        let Some(room) = state.rooms.get(room_id) else {
            continue;
        };
        let Some((mpos, m)) = room.members.get(&me.user_id).and_then(|l| l.last()) else {
            continue;
        };
        match m.as_str() {
            "join" => {
                if let Some(sec) =
                    room_section(state, room, me, since, until, filter, full_state, true)
                {
                    join.insert(room_id.clone(), sec);
                }
            }
            "invite" if *mpos > s || since.is_none() => {
                let ev = state.event(*mpos);
                invite.insert(
                    room_id.clone(),
                    object([(
                        "invite_state",
                        events(stripped_state(state, room, ev.as_deref())),
                    )]),
                );
            }
            "knock" if *mpos > s || since.is_none() => {
                let ev = state.event(*mpos);
                knock.insert(
                    room_id.clone(),
                    object([(
                        "knock_state",
                        events(stripped_state(state, room, ev.as_deref())),
                    )]),
                );
            }
            "leave" | "ban" if (since.is_some() && *mpos > s) || filter.include_leave => {
                if let Some(sec) =
                    room_section(state, room, me, since, until, filter, full_state, false)
                {
                    leave.insert(room_id.clone(), sec);
                }
            }
            _ => {}
        }
    }
    // Memberships in rooms this server is not in (invites from other servers, knocks and
    // rejections through them).
    for (room_id, m) in state
        .remote_memberships
        .get(&me.user_id)
        .into_iter()
        .flatten()
    {
        if filter.not_rooms.contains(room_id)
            || filter.rooms.as_ref().is_some_and(|r| !r.contains(room_id))
            || state.rooms.contains_key(room_id)
        {
            continue;
        }
        let new = m.pos > s || since.is_none();
        let mut stripped = m.stripped.clone();
        stripped.push(json!({
            "type": "m.room.member",
            "state_key": me.user_id,
            "sender": m.event.get("sender").cloned().unwrap_or(Value::Null),
            "content": m.event.get("content").cloned().unwrap_or(json!({})),
        }));
        match m.membership.as_str() {
            "invite" if new => {
                invite.insert(
                    room_id.clone(),
                    object([("invite_state", events(stripped))]),
                );
            }
            "knock" if new => {
                knock.insert(room_id.clone(), object([("knock_state", events(stripped))]));
            }
            "leave" if (since.is_some() && m.pos > s) || filter.include_leave => {
                let mut ev = m.event.clone();
                if let Some(o) = ev.as_object_mut() {
                    for k in [
                        "auth_events",
                        "prev_events",
                        "hashes",
                        "signatures",
                        "depth",
                        "origin",
                    ] {
                        o.remove(k);
                    }
                    o.insert("event_id".into(), json!(m.event_id));
                }
                leave.insert(
                    room_id.clone(),
                    json!({"timeline": {"events": [ev], "limited": false}, "state": {"events": []}}),
                );
            }
            _ => {}
        }
    }
    let account_data = account_data_events(state, &me.user_id, "", s, &filter.account_data);
    let to_device: Vec<Value> = state
        .to_device
        .get(&(me.user_id.clone(), me.device_id.clone()))
        .map(|q| {
            q.iter()
                .filter(|(p, _)| *p > s)
                .map(|(_, m)| m.clone())
                .collect()
        })
        .unwrap_or_default();
    // Who shares a room with the caller: whose presence and key changes it hears of.
    let peers = state.room_peers(&me.user_id);
    let presence: Vec<Value> = super::presence::presence_events(state, &peers, s)
        .into_iter()
        .filter(|e| {
            filter
                .presence
                .matches_parts("m.presence", e["sender"].as_str())
        })
        .collect();
    // Users sharing a room whose devices or keys changed since the last sync.
    let (changed, left) = if since.is_some() {
        state.device_list_changes_among(&me.user_id, &peers, s, until)
    } else {
        (Vec::new(), Vec::new())
    };
    let key = (me.user_id.clone(), me.device_id.clone());
    let mut otk_counts = Map::new();
    for id in state
        .one_time_keys
        .get(&key)
        .into_iter()
        .flat_map(|m| m.keys())
    {
        let alg = id.split(':').next().unwrap_or("").to_string();
        let n = otk_counts.get(&alg).and_then(Value::as_u64).unwrap_or(0) + 1;
        otk_counts.insert(alg, json!(n));
    }
    let fallback_types: Vec<String> = state
        .fallback_keys
        .get(&key)
        .map(|m| {
            m.keys()
                .filter(|k| {
                    !state
                        .fallback_used
                        .contains(&(key.0.clone(), key.1.clone(), (*k).clone()))
                })
                .filter_map(|k| k.split(':').next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let empty = join.is_empty()
        && invite.is_empty()
        && leave.is_empty()
        && knock.is_empty()
        && account_data.is_empty()
        && to_device.is_empty()
        && presence.is_empty()
        && changed.is_empty()
        && left.is_empty();
    let body = object([
        ("next_batch", format!("s{until}").into()),
        (
            "rooms",
            object([
                ("join", join.into()),
                ("invite", invite.into()),
                ("leave", leave.into()),
                ("knock", knock.into()),
            ]),
        ),
        ("account_data", events(account_data)),
        ("to_device", events(to_device)),
        ("presence", events(presence)),
        (
            "device_lists",
            object([("changed", json!(changed)), ("left", json!(left))]),
        ),
        ("device_one_time_keys_count", otk_counts.into()),
        ("device_unused_fallback_key_types", json!(fallback_types)),
    ]);
    (body, empty)
}

pub fn sync(ctx: &Ctx, req: cs::sync::sync::Request) -> ApiResult<Reply> {
    let me = ctx.me()?.clone();
    let since = req.since.as_deref().map(parse_token).transpose()?;
    let filter = match req.filter.as_deref() {
        None => SyncFilter::default(),
        Some(f) if f.trim_start().starts_with('{') => {
            let v: Value = serde_json::from_str(f)
                .map_err(|_| ApiError::invalid_param("`filter` is not valid JSON"))?;
            SyncFilter::from_json(&v)
        }
        Some(id) => {
            let stored = ctx.server.read(|s| {
                s.filters
                    .get(&(me.user_id.clone(), id.to_string()))
                    .cloned()
            });
            SyncFilter::from_json(
                &stored.ok_or_else(|| ApiError::invalid_param(format!("no filter {id}")))?,
            )
        }
    };
    let full_state = req.full_state.unwrap_or(false);
    let timeout = req.timeout.unwrap_or(0).clamp(0, 300_000) as u64;
    // Syncing marks the user online (or unavailable), unless they ask to stay offline.
    let wanted = req
        .set_presence
        .as_ref()
        .map_or("online", |p| p.as_str())
        .to_string();
    if wanted != "offline" {
        mark_active(ctx, &me.user_id, &wanted)?;
    }
    // To-device messages up to `since` were received: delete them.
    if let Some(s) = since {
        let key = (me.user_id.clone(), me.device_id.clone());
        let acknowledged = ctx.server.read(|st| {
            st.to_device
                .get(&key)
                .is_some_and(|q| q.iter().any(|(p, _)| *p <= s))
        });
        if acknowledged {
            ctx.server.write(|st, batch| {
                st.ack_to_device(batch, &key.0, &key.1, s);
                Ok(())
            })?;
        }
    }
    let (body, empty) = ctx
        .server
        .read(|s| build(s, &me, since, &filter, full_state));
    if empty && since.is_some() && timeout > 0 && !ctx.last_chance {
        return Ok(Reply::Wait {
            until: ctx.started + Duration::from_millis(timeout),
        });
    }
    Ok(Reply::Json(200, body))
}
