//! Room events: sending (with transaction ids, idempotent per device), state by type and key,
//! single events, redaction, history (`/messages` both ways, `/context`) and member lists, all
//! under history visibility.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};
use std::sync::Arc;

use super::rooms::{check_send, send_state};
use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::state::{Append, Event, Prepared, Room, State};

/// A room event filter (the parts that apply to a list of events).
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub limit: Option<usize>,
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
    pub lazy_load_members: bool,
    pub contains_url: Option<bool>,
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => s.starts_with(prefix),
        None => pattern == s,
    }
}

pub(super) fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    })
}

impl EventFilter {
    pub fn from_json(v: &Value) -> EventFilter {
        EventFilter {
            limit: v.get("limit").and_then(Value::as_u64).map(|l| l as usize),
            types: strings(v.get("types")),
            not_types: strings(v.get("not_types")).unwrap_or_default(),
            senders: strings(v.get("senders")),
            not_senders: strings(v.get("not_senders")).unwrap_or_default(),
            lazy_load_members: v
                .get("lazy_load_members")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            contains_url: v.get("contains_url").and_then(Value::as_bool),
        }
    }

    /// Parses the `filter` query parameter: inline JSON.
    pub fn from_param(text: Option<&str>) -> ApiResult<EventFilter> {
        match text {
            None => Ok(EventFilter::default()),
            Some(t) => {
                let v: Value = serde_json::from_str(t).map_err(|_| {
                    ApiError::invalid_param("`filter` must be a JSON room event filter")
                })?;
                if !v.is_object() {
                    return Err(ApiError::invalid_param("`filter` must be a JSON object"));
                }
                Ok(EventFilter::from_json(&v))
            }
        }
    }

    /// Type and sender rules alone (for ephemeral events, account data and presence).
    pub fn matches_parts(&self, kind: &str, sender: Option<&str>) -> bool {
        if self.not_types.iter().any(|p| glob(p, kind)) {
            return false;
        }
        if let Some(t) = &self.types {
            if !t.iter().any(|p| glob(p, kind)) {
                return false;
            }
        }
        if let Some(sender) = sender {
            if self.not_senders.iter().any(|s| s == sender) {
                return false;
            }
            if let Some(s) = &self.senders {
                if !s.iter().any(|x| x == sender) {
                    return false;
                }
            }
        }
        true
    }

    pub fn matches(&self, e: &Event) -> bool {
        if !self.matches_parts(&e.kind, Some(&e.sender)) {
            return false;
        }
        if let Some(want) = self.contains_url {
            if e.content.get("url").is_some() != want {
                return false;
            }
        }
        true
    }
}

/// Reads a pagination or sync token (`t17`, `s17`) as a stream position.
pub fn parse_token(t: &str) -> ApiResult<u64> {
    t.get(1..)
        .and_then(|n| n.parse().ok())
        .filter(|_| t.starts_with(['t', 's']))
        .ok_or_else(|| ApiError::invalid_param(format!("`{t}` is not a token this server issued")))
}

/// The caller may read this room's history at all: member now or before, or world-readable.
fn check_can_read(state: &State, room: &Room, user: &str) -> ApiResult<()> {
    // A room the user forgot is no longer theirs to read (unless anyone may).
    let forgotten = !state
        .user_rooms
        .get(user)
        .is_some_and(|r| r.contains(&room.room_id));
    let member_ever = room.members.contains_key(user) && !forgotten;
    let world = room.world_readable();
    if member_ever || world {
        Ok(())
    } else if room.members.contains_key(user) {
        Err(ApiError::forbidden("you forgot this room"))
    } else {
        Err(ApiError::forbidden(
            "you are not, and were never, in this room",
        ))
    }
}

/// The room's Policy Server when it is another server (this server's own signs as events
/// are made).
fn remote_policy_server(ctx: &Ctx, room_id: &str) -> Option<String> {
    let ours = ctx.server.config.server_name.as_str();
    ctx.server
        .read(|s| s.policy_server_of(room_id))
        .map(|(via, _)| via)
        .filter(|via| via != ours)
}

/// Sends an event through the room's Policy Server (another server): `make` checks and makes
/// it (or answers at once, `Err(answer)`: a repeated transaction), the Policy Server signs it,
/// then it is recorded and `done` keeps what goes with it. Made again if the room moved on
/// meanwhile (three tries); the Policy Server's refusal is the client's answer.
fn through_policy_server<M, D>(ctx: &Ctx, via: String, make: M, done: D) -> ApiResult<Reply>
where
    M: Fn(&State) -> ApiResult<Result<Prepared, Value>> + Send + 'static,
    D: Fn(&mut State, &mut crate::store::Batch, &str) + Send + 'static,
{
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
    Ok(Reply::outbound(async move {
        let mut last = None;
        for _ in 0..3 {
            let prepared = match server.read(&make)? {
                Ok(p) => p,
                Err(answer) => return Ok(answer),
            };
            let room_id = prepared.pdu().room_id.clone();
            let v = server.read(|s| s.room(&room_id).map(Room::room_version))?;
            let signed = crate::federation::policy::ask(&server, &via, v, prepared.pdu()).await?;
            let prepared = prepared
                .countersigned(v, signed.json)
                .map_err(ApiError::internal)?;
            let recorded = server.write(|s, batch| {
                let (_, id) = s.append_prepared(batch, prepared)?;
                done(s, batch, &id);
                Ok(id)
            });
            match recorded {
                Ok(id) => return Ok(json!({"event_id": id})),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ApiError::internal("the event could not be sent")))
    }))
}

pub fn send_message(ctx: &Ctx, req: cs::room_send::send_message::Request) -> ApiResult<Reply> {
    let me = ctx.me()?.clone();
    let content = Value::Object(req.body);
    if let Some(via) = remote_policy_server(ctx, req.room_id.as_str()) {
        let key = (
            me.user_id.clone(),
            me.device_id.clone(),
            format!("send {} {} {}", req.room_id, req.event_type, req.txn_id),
        );
        let key2 = key.clone();
        let (room_id, kind, txn) = (
            req.room_id.to_string(),
            req.event_type.clone(),
            req.txn_id.clone(),
        );
        return through_policy_server(
            ctx,
            via,
            move |state| {
                if let Some(id) = state.txn(&key) {
                    return Ok(Err(json!({"event_id": id})));
                }
                if kind == "m.room.redaction" {
                    return Err(ApiError::bad_json(
                        "send redactions through the redact endpoint",
                    ));
                }
                check_send(state, &room_id, &me.user_id, &kind, None, &content)?;
                let mut new = Append::new(&room_id, &me.user_id, &kind, None, content.clone());
                new.txn = Some((me.device_id.clone(), txn.clone()));
                state.prepare(new).map(Ok)
            },
            move |state, batch, id| state.remember_txn(batch, key2.clone(), id.to_string()),
        );
    }
    let out = ctx.server.write(|state, batch| {
        // Transaction ids are scoped to the device and the request path.
        let key = (
            me.user_id.clone(),
            me.device_id.clone(),
            format!("send {} {} {}", req.room_id, req.event_type, req.txn_id),
        );
        if let Some(id) = state.txn(&key) {
            return Ok(json!({"event_id": id}));
        }
        if req.event_type == "m.room.redaction" {
            return Err(ApiError::bad_json(
                "send redactions through the redact endpoint",
            ));
        }
        check_send(
            state,
            req.room_id.as_str(),
            &me.user_id,
            &req.event_type,
            None,
            &content,
        )?;
        let mut new = Append::new(
            req.room_id.as_str(),
            &me.user_id,
            &req.event_type,
            None,
            content,
        );
        new.txn = Some((me.device_id.clone(), req.txn_id.clone()));
        let (_, id) = state.append(batch, new)?;
        state.remember_txn(batch, key, id.clone());
        Ok(json!({"event_id": id}))
    })?;
    Ok(Reply::from(out))
}

pub fn set_room_state_with_key(
    ctx: &Ctx,
    req: cs::room_state::set_room_state_with_key::Request,
) -> ApiResult<Reply> {
    let me = ctx.me()?.clone();
    let content = Value::Object(req.body);
    // Memberships go their own ways (joins, invites and leaves through other servers).
    let policed = req.event_type != "m.room.member"
        && !(req.event_type == "m.room.policy" && req.state_key.is_empty());
    if let Some(via) = remote_policy_server(ctx, req.room_id.as_str()).filter(|_| policed) {
        let (room_id, kind, key) = (
            req.room_id.to_string(),
            req.event_type.clone(),
            req.state_key.clone(),
        );
        return through_policy_server(
            ctx,
            via,
            move |state| {
                check_send(state, &room_id, &me.user_id, &kind, Some(&key), &content)?;
                state
                    .prepare(Append::new(
                        &room_id,
                        &me.user_id,
                        &kind,
                        Some(&key),
                        content.clone(),
                    ))
                    .map(Ok)
            },
            |_, _, _| {},
        );
    }
    let out = ctx.server.write(|state, batch| {
        let id = send_state(
            state,
            batch,
            req.room_id.as_str(),
            &me.user_id,
            &req.event_type,
            &req.state_key,
            content,
        )?;
        Ok(json!({"event_id": id}))
    })?;
    Ok(Reply::from(out))
}

/// The state a user may see: current state while joined; after leaving, the state as it was
/// when they left; world-readable rooms for anyone.
fn visible_state<'s>(state: &'s State, room: &'s Room, user: &str) -> ApiResult<Vec<Arc<Event>>> {
    let current = || {
        room.state_positions()
            .filter_map(|p| state.event(p))
            .collect::<Vec<_>>()
    };
    match room.membership(user) {
        Some("join") => Ok(current()),
        _ if room.world_readable() => Ok(current()),
        Some("leave" | "ban") => {
            let left_at = room
                .members
                .get(user)
                .and_then(|l| l.last())
                .map_or(0, |(p, _)| *p);
            Ok(room
                .state_at(left_at)
                .into_values()
                .filter_map(|p| state.event(p))
                .collect())
        }
        _ => Err(ApiError::forbidden("you are not in this room")),
    }
}

pub fn get_room_state_with_key(
    ctx: &Ctx,
    req: cs::rooms::get_room_state_with_key::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|state| {
        let room = state.room(req.room_id.as_str())?;
        let events = visible_state(state, room, &me.user_id)?;
        let ev = events
            .into_iter()
            .find(|e| {
                e.kind == req.event_type && e.state_key.as_deref() == Some(req.state_key.as_str())
            })
            .ok_or_else(|| ApiError::not_found("no such state event"))?;
        if matches!(req.format.as_ref().map(|f| f.as_str()), Some("event")) {
            Ok(state.client_event(&ev, Some((&me.user_id, &me.device_id)), true))
        } else {
            Ok(ev.content.clone())
        }
    })
}

/// A room the caller asks about but the server does not know: the spec's 403 for these
/// operations ("you aren't a member of the room").
fn known_room<'s>(state: &'s State, room_id: &str) -> ApiResult<&'s Room> {
    state
        .rooms
        .get(room_id)
        .ok_or_else(|| ApiError::forbidden("you are not a member of that room"))
}

pub fn get_room_state(ctx: &Ctx, req: cs::rooms::get_room_state::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|state| {
        let room = known_room(state, req.room_id.as_str())?;
        let events = visible_state(state, room, &me.user_id)?;
        Ok(Value::Array(
            events
                .into_iter()
                .map(|e| state.client_event(&e, Some((&me.user_id, &me.device_id)), true))
                .collect(),
        ))
    })
}

pub fn get_one_room_event(
    ctx: &Ctx,
    req: cs::rooms::get_one_room_event::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|state| {
        let room = state.room(req.room_id.as_str())?;
        let not_found = || ApiError::not_found("no such event, or you may not see it");
        let pos = state
            .event_pos(req.event_id.as_str())
            .ok_or_else(not_found)?;
        let ev = state
            .event(pos)
            .filter(|e| e.room_id == room.room_id)
            .ok_or_else(not_found)?;
        if !state.can_see(room, &me.user_id, pos) {
            return Err(not_found());
        }
        Ok(state.client_event(&ev, Some((&me.user_id, &me.device_id)), true))
    })
}

pub fn redact_event(ctx: &Ctx, req: cs::redaction::redact_event::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    ctx.server.write(|state, batch| {
        let key = (
            me.user_id.clone(),
            me.device_id.clone(),
            format!("redact {} {} {}", req.room_id, req.event_id, req.txn_id),
        );
        if let Some(id) = state.txn(&key) {
            return Ok(json!({"event_id": id}));
        }
        let mut content = json!({"redacts": req.event_id.as_str()});
        if let Some(r) = &req.body.reason {
            content["reason"] = json!(r);
        }
        let mut redaction = Append::new(
            req.room_id.as_str(),
            &me.user_id,
            "m.room.redaction",
            None,
            content,
        );
        redaction.redacts = Some(req.event_id.as_str().to_string());
        redaction.txn = Some((me.device_id.clone(), req.txn_id.clone()));
        // May the user send a redaction at all (member, m.room.redaction level): the rules say.
        let prepared = state.prepare(redaction)?;
        let room = state.room(req.room_id.as_str())?;
        let target = state
            .event_by_id(req.event_id.as_str())
            .filter(|e| e.room_id == room.room_id)
            .ok_or_else(|| ApiError::not_found("no such event in this room"))?;
        // Others' events need the `redact` level too: a redaction that does not meet it is
        // not applied by the servers that receive it (from room version 3 this is not an
        // authorization rule but the receiving servers' check), so it is not sent.
        let own = target.sender == me.user_id;
        if !own
            && !State::meets(
                state.power_level(room, &me.user_id),
                state.required_level(room, "redact", false),
            )
        {
            return Err(ApiError::forbidden(
                "your power level is too low to redact others' events",
            ));
        }
        let (_, id) = state.append_prepared(batch, prepared)?;
        state.remember_txn(batch, key, id.clone());
        Ok(json!({"event_id": id}))
    })
}

/// Member events for the senders of `events` (lazy-loading members).
pub fn lazy_members(
    state: &State,
    room: &Room,
    events: &[Arc<Event>],
    viewer: (&str, &str),
) -> Vec<Value> {
    let mut senders: Vec<&str> = events.iter().map(|e| e.sender.as_str()).collect();
    senders.sort_unstable();
    senders.dedup();
    senders
        .into_iter()
        .filter_map(|s| room.state_event("m.room.member", s))
        .filter_map(|p| state.event(p))
        .map(|e| state.client_event(&e, Some(viewer), true))
        .collect()
}

pub fn get_room_events(
    ctx: &Ctx,
    req: cs::message_pagination::get_room_events::Request,
) -> ApiResult<Reply> {
    let page = room_events_page(ctx, &req, true)?;
    let Page::Backfill { anchor, want } = page else {
        return page.into_reply();
    };
    // The page reached a hole in the history: fetch it from other servers, then page again
    // (past the hole, if nothing came).
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
    let again = Ctx {
        server: ctx.server,
        user: ctx.user.clone(),
        route: ctx.route,
        raw_body: ctx.raw_body.clone(),
        content_type: ctx.content_type.clone(),
        query: ctx.query.clone(),
        path_params: ctx.path_params.clone(),
        last_chance: true,
        started: ctx.started,
    };
    let user = again.me()?.clone();
    let room_id = req.room_id.to_string();
    Ok(Reply::outbound(async move {
        crate::federation::backfill::backfill(server.clone(), room_id, anchor, want).await?;
        let ctx = Ctx {
            server: &server,
            user: Some(user),
            ..again
        };
        match room_events_page(&ctx, &req, false)? {
            Page::Done(v) => Ok(v),
            Page::Backfill { .. } => Err(ApiError::internal("a page asked to backfill twice")),
        }
    }))
}

/// A page of /messages, or where it must first backfill.
enum Page {
    Done(Value),
    /// The page reached a hole before the timeline event at `anchor` with room for `want`
    /// more events.
    Backfill {
        anchor: u64,
        want: usize,
    },
}

impl Page {
    fn into_reply(self) -> ApiResult<Reply> {
        match self {
            Page::Done(v) => Ok(Reply::from(v)),
            Page::Backfill { .. } => Err(ApiError::internal("a page needs backfilling")),
        }
    }
}

/// A point in a room's history as /messages walks it (a token): between the timeline events
/// at or before a position and those after it (`t<pos>`), or among the events backfilled
/// before the timeline event at `anchor`, the newest `k` of them on the later side
/// (`b<anchor>_<k>`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Point {
    Live(u64),
    Backfilled { anchor: u64, k: usize },
}

impl Point {
    fn parse(t: &str) -> ApiResult<Point> {
        if let Some(rest) = t.strip_prefix('b') {
            let parsed = rest
                .split_once('_')
                .and_then(|(a, k)| Some((a.parse().ok()?, k.parse().ok()?)));
            return parsed
                .map(|(anchor, k)| Point::Backfilled { anchor, k })
                .ok_or_else(|| {
                    ApiError::invalid_param(format!("`{t}` is not a token this server issued"))
                });
        }
        parse_token(t).map(Point::Live)
    }

    fn token(self) -> String {
        match self {
            Point::Live(p) => format!("t{p}"),
            Point::Backfilled { anchor, k } => format!("b{anchor}_{k}"),
        }
    }
}

/// One step of a walk through a room's history from `at`: the event passed over (if any) and
/// the point after it; `None` at the end of what is here. Backwards, a hole still to fetch is
/// `Err(anchor)` (passed over when `past_holes`).
fn step(
    room: &Room,
    at: Point,
    backwards: bool,
    past_holes: bool,
) -> Option<Result<(u64, Point), u64>> {
    let batch = |anchor: u64| room.backfilled.get(&anchor).map_or(&[][..], Vec::as_slice);
    let has_history = |p: u64| room.backfilled.contains_key(&p) || room.backward.contains_key(&p);
    if backwards {
        match at {
            Point::Live(f) => {
                let idx = room.timeline.partition_point(|p| *p <= f);
                let p = *room.timeline.get(idx.checked_sub(1)?)?;
                let next = if has_history(p) {
                    Point::Backfilled { anchor: p, k: 0 }
                } else {
                    Point::Live(p - 1)
                };
                Some(Ok((p, next)))
            }
            Point::Backfilled { anchor, k } => {
                let list = batch(anchor);
                if k < list.len() {
                    let p = list[list.len() - 1 - k];
                    return Some(Ok((p, Point::Backfilled { anchor, k: k + 1 })));
                }
                if room.backward.contains_key(&anchor) && !past_holes {
                    return Some(Err(anchor));
                }
                step(
                    room,
                    Point::Live(anchor.saturating_sub(1)),
                    true,
                    past_holes,
                )
            }
        }
    } else {
        match at {
            Point::Live(f) => {
                let idx = room.timeline.partition_point(|p| *p <= f);
                let p = *room.timeline.get(idx)?;
                let n = batch(p).len();
                if n > 0 {
                    step(
                        room,
                        Point::Backfilled { anchor: p, k: n },
                        false,
                        past_holes,
                    )
                } else {
                    Some(Ok((p, Point::Live(p))))
                }
            }
            Point::Backfilled { anchor, k } => {
                let list = batch(anchor);
                if k > 0 && k <= list.len() {
                    let p = list[list.len() - k];
                    Some(Ok((p, Point::Backfilled { anchor, k: k - 1 })))
                } else {
                    Some(Ok((anchor, Point::Live(anchor))))
                }
            }
        }
    }
}

fn room_events_page(
    ctx: &Ctx,
    req: &cs::message_pagination::get_room_events::Request,
    may_backfill: bool,
) -> ApiResult<Page> {
    let me = ctx.me()?;
    let filter = EventFilter::from_param(req.filter.as_deref())?;
    let limit = req.limit.unwrap_or(10).clamp(1, 1000) as usize;
    let limit = filter.limit.map_or(limit, |l| l.clamp(1, 1000));
    let backwards = req.dir.as_str() == "b";
    let from = req.from.as_deref().map(Point::parse).transpose()?;
    let to = req.to.as_deref().map(Point::parse).transpose()?;
    let may_backfill = may_backfill && ctx.server.federation.is_some();
    ctx.server.read(|state| {
        let room = state.room(req.room_id.as_str())?;
        check_can_read(state, room, &me.user_id)?;
        let viewer = (me.user_id.as_str(), me.device_id.as_str());
        let mut chunk: Vec<Arc<Event>> = Vec::new();
        let start = match from {
            Some(f) => f,
            None if backwards => Point::Live(room.timeline.last().copied().unwrap_or(0)),
            None => Point::Live(0),
        };
        let mut at = start;
        let mut more = false;
        loop {
            if to == Some(at) {
                break;
            }
            let Some(next) = step(room, at, backwards, !may_backfill) else {
                break;
            };
            let (p, after) = match next {
                Ok(x) => x,
                Err(anchor) => {
                    return Ok(Page::Backfill {
                        anchor,
                        want: limit - chunk.len(),
                    })
                }
            };
            // A timeline event past `to` ends the page (tokens are positions).
            if let (Some(Point::Live(t)), false) = (to, room.backfilled_anchor.contains_key(&p)) {
                if if backwards { p <= t } else { p > t } {
                    break;
                }
            }
            if chunk.len() == limit {
                more = true;
                break;
            }
            at = after;
            let Some(e) = state.event(p) else { continue };
            if filter.matches(&e) && state.can_see(room, &me.user_id, p) {
                chunk.push(e);
            }
        }
        let mut out = json!({
            "chunk": chunk.iter().map(|e| state.client_event(e, Some(viewer), true)).collect::<Vec<_>>(),
            "start": start.token(),
        });
        if more {
            out["end"] = json!(at.token());
        }
        if filter.lazy_load_members {
            out["state"] = json!(lazy_members(state, room, &chunk, viewer));
        }
        Ok(Page::Done(out))
    })
}

/// The events around one at `pos` that `keep` accepts: up to `before_n` before it (newest
/// first) and `after_n` after it (oldest first), with the pagination tokens around them
/// (/context and search results).
pub(super) struct Around {
    pub before: Vec<u64>,
    pub after: Vec<u64>,
    pub start: String,
    pub end: String,
}

pub(super) fn around(
    room: &Room,
    pos: u64,
    before_n: usize,
    after_n: usize,
    keep: impl Fn(u64) -> bool,
) -> Around {
    let idx = room.timeline.iter().position(|p| *p == pos).unwrap_or(0);
    let before: Vec<u64> = room.timeline[..idx]
        .iter()
        .rev()
        .copied()
        .filter(|p| keep(*p))
        .take(before_n)
        .collect();
    let after: Vec<u64> = room
        .timeline
        .get(idx + 1..)
        .unwrap_or_default()
        .iter()
        .copied()
        .filter(|p| keep(*p))
        .take(after_n)
        .collect();
    let start = before.last().map_or(pos, |p| *p).saturating_sub(1);
    let end = after.last().copied().unwrap_or(pos);
    Around {
        before,
        after,
        start: format!("t{start}"),
        end: format!("t{end}"),
    }
}

pub fn get_event_context(
    ctx: &Ctx,
    req: cs::event_context::get_event_context::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let filter = EventFilter::from_param(req.filter.as_deref())?;
    let limit = req.limit.unwrap_or(10).clamp(0, 100) as usize;
    ctx.server.read(|state| {
        let room = state.room(&req.room_id)?;
        let not_found = || ApiError::not_found("no such event, or you may not see it");
        let pos = state.event_pos(&req.event_id).ok_or_else(not_found)?;
        let ev = state
            .event(pos)
            .filter(|e| e.room_id == room.room_id)
            .ok_or_else(not_found)?;
        if !state.can_see(room, &me.user_id, pos) {
            return Err(not_found());
        }
        let viewer = (me.user_id.as_str(), me.device_id.as_str());
        let half = limit / 2;
        let Around {
            before,
            after,
            start,
            end,
        } = around(room, pos, half, limit - half, |p| {
            state
                .event(p)
                .is_some_and(|e| filter.matches(&e) && state.can_see(room, &me.user_id, p))
        });
        let to_json = |ps: &[u64]| -> Vec<Value> {
            ps.iter()
                .filter_map(|p| state.event(*p))
                .map(|e| state.client_event(&e, Some(viewer), true))
                .collect()
        };
        let mut all: Vec<Arc<Event>> = before
            .iter()
            .chain(after.iter())
            .filter_map(|p| state.event(*p))
            .collect();
        all.push(ev.clone());
        // The state at the last event returned.
        let last = after.last().copied().unwrap_or(pos);
        let at: Vec<Arc<Event>> = room
            .state_at(last)
            .into_values()
            .filter_map(|p| state.event(p))
            .collect();
        // Lazy loading thins out only the membership events: the other state stays.
        let st: Vec<Value> = if filter.lazy_load_members {
            let mut st: Vec<Value> = at
                .iter()
                .filter(|e| e.kind != "m.room.member")
                .map(|e| state.client_event(e, Some(viewer), true))
                .collect();
            st.extend(lazy_members(state, room, &all, viewer));
            st
        } else {
            at.iter()
                .map(|e| state.client_event(e, Some(viewer), true))
                .collect()
        };
        Ok(json!({
            "event": state.client_event(&ev, Some(viewer), true),
            "events_before": to_json(&before),
            "events_after": to_json(&after),
            "start": start,
            "end": end,
            "state": st,
        }))
    })
}

pub fn get_members_by_room(
    ctx: &Ctx,
    req: cs::rooms::get_members_by_room::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let at = req.at.as_deref().map(parse_token).transpose()?;
    ctx.server.read(|state| {
        let room = known_room(state, req.room_id.as_str())?;
        let mine = room.membership(&me.user_id);
        let world = room.world_readable();
        // Former members see the list as it was when they left.
        let limit_pos = match mine {
            Some("join") => at.unwrap_or(u64::MAX),
            Some("leave" | "ban") => {
                let left = room
                    .members
                    .get(&me.user_id)
                    .and_then(|l| l.last())
                    .map_or(0, |(p, _)| *p);
                at.map_or(left, |a| a.min(left))
            }
            _ if world => at.unwrap_or(u64::MAX),
            _ => return Err(ApiError::forbidden("you are not in this room")),
        };
        let viewer = (me.user_id.as_str(), me.device_id.as_str());
        let mut chunk = Vec::new();
        for (user, log) in &room.members {
            let Some((p, m)) = log.iter().take_while(|(p, _)| *p <= limit_pos).last() else {
                continue;
            };
            // Given together, the two make an "or": the membership is `membership`, or it is
            // not `not_membership` (v1.19's wording).
            let is = req.membership.as_ref().map(|w| w.as_str() == m);
            let is_not = req.not_membership.as_ref().map(|n| n.as_str() != m);
            let keep = match (is, is_not) {
                (Some(a), Some(b)) => a || b,
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => true,
            };
            if !keep {
                continue;
            }
            if let Some(e) = state.event(*p) {
                chunk.push((user.clone(), state.client_event(&e, Some(viewer), true)));
            }
        }
        chunk.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(json!({"chunk": chunk.into_iter().map(|(_, e)| e).collect::<Vec<_>>()}))
    })
}

pub fn get_joined_members_by_room(
    ctx: &Ctx,
    req: cs::rooms::get_joined_members_by_room::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|state| {
        let room = state.room(req.room_id.as_str())?;
        let world = room.world_readable();
        if room.membership(&me.user_id) != Some("join") && !world {
            return Err(ApiError::forbidden("you are not in this room"));
        }
        let mut joined = serde_json::Map::new();
        for u in room.joined() {
            let content = state
                .state_content(&room.room_id, "m.room.member", u)
                .cloned()
                .unwrap_or(json!({}));
            let mut m = json!({});
            if let Some(d) = content.get("displayname").filter(|d| d.is_string()) {
                m["display_name"] = d.clone();
            }
            if let Some(a) = content.get("avatar_url").filter(|a| a.is_string()) {
                m["avatar_url"] = a.clone();
            }
            joined.insert(u.clone(), m);
        }
        Ok(json!({"joined": joined}))
    })
}
