//! State resolution (server-server-api "Room State Resolution"): the original algorithm of
//! room version 1 (rooms/v1 "State resolution"), version 2 (fragments/v2-state-res, room
//! versions 2-11) and version 2.1 (rooms/v12 "State resolution": from the empty state, with
//! the conflicted state subgraph).
//!
//! Events are interned into dense indices once per resolution; auth chains are bitsets, so the
//! auth difference, the conflicted subgraph and the orderings cost a walk over the auth graph,
//! not a walk per event.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::auth::{self, Power, UNLIMITED};
use crate::hash;
use crate::pdu::Pdu;
use crate::version::{RoomVersion, StateResolution};

/// A room state: `(type, state_key)` -> event id.
pub type StateMap = BTreeMap<(String, String), String>;

/// Where resolution finds events, and which of them were rejected.
pub trait EventSource {
    fn event(&self, id: &str) -> Option<&Pdu>;
    /// Whether the event was rejected (rejected auth events are not used in the iterative
    /// auth checks).
    fn rejected(&self, _id: &str) -> bool {
        false
    }
}

impl EventSource for HashMap<String, Pdu> {
    fn event(&self, id: &str) -> Option<&Pdu> {
        self.get(id)
    }
}

/// Why states could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("event {0} is needed to resolve the state but is not known")]
    Missing(String),
}

/// Resolves `state_sets` as `v`'s algorithm says.
pub fn resolve(
    v: &RoomVersion,
    state_sets: &[StateMap],
    events: &dyn EventSource,
) -> Result<StateMap, ResolveError> {
    // v1 calls two states conflicting only where both hold the key, with different events;
    // v2 also where some state lacks the key.
    let (unconflicted, conflicted) = split(state_sets, v.state_res == StateResolution::V1);
    if conflicted.is_empty() {
        return Ok(unconflicted);
    }
    match v.state_res {
        StateResolution::V1 => resolve_v1(v, unconflicted, conflicted, events),
        StateResolution::V2 | StateResolution::V2_1 => {
            resolve_v2(v, state_sets, unconflicted, conflicted, events)
        }
    }
}

/// The unconflicted state map, and the conflicted keys with their distinct events.
fn split(
    state_sets: &[StateMap],
    missing_is_no_conflict: bool,
) -> (StateMap, BTreeMap<(String, String), Vec<String>>) {
    let mut unconflicted = StateMap::new();
    let mut conflicted: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut keys: Vec<&(String, String)> = state_sets.iter().flat_map(|s| s.keys()).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let mut ids: Vec<&String> = Vec::with_capacity(state_sets.len());
        let mut everywhere = true;
        for s in state_sets {
            match s.get(key) {
                Some(id) => {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                None => everywhere = false,
            }
        }
        if ids.len() == 1 && (everywhere || missing_is_no_conflict) {
            unconflicted.insert(key.clone(), ids[0].clone());
        } else {
            conflicted.insert(key.clone(), ids.into_iter().cloned().collect());
        }
    }
    (unconflicted, conflicted)
}

fn state_key_of(e: &Pdu) -> (String, String) {
    (e.kind.clone(), e.state_key.clone().unwrap_or_default())
}

/// Authorizes `e` against `state` (a map of ids), taking what the state lacks from the
/// event's own auth events (unless rejected), as the iterative auth checks say; room version
/// 12's create event comes from the room id.
fn authorized_in(
    v: &RoomVersion,
    e: &Pdu,
    state: &StateMap,
    events: &dyn EventSource,
) -> Result<bool, ResolveError> {
    let mut found: Vec<&Pdu> = Vec::with_capacity(6);
    let wanted = auth::auth_types(v, &e.kind, e.state_key.as_deref(), &e.sender, &e.content);
    let auth_events: Vec<&Pdu> = e
        .auth_events
        .iter()
        .filter(|id| !events.rejected(id))
        .filter_map(|id| events.event(id))
        .collect();
    for (kind, key) in &wanted {
        let from_state = state
            .get(&(kind.clone(), key.clone()))
            .map(|id| {
                events
                    .event(id)
                    .ok_or_else(|| ResolveError::Missing(id.clone()))
            })
            .transpose()?;
        let chosen = from_state.or_else(|| auth_events.iter().copied().find(|a| a.is(kind, key)));
        found.extend(chosen);
    }
    if v.room_id_is_create {
        let create_id = hash::create_id_of_room(&e.room_id);
        if let Some(c) = events.event(&create_id) {
            found.push(c);
        }
    }
    if e.is("m.room.create", "") {
        found.clear();
    }
    // Signatures were checked when the events arrived.
    Ok(auth::authorize(v, e, &auth::EventList(found), &|_| true).is_ok())
}

// ---------------------------------------------------------------------------------------
// Room version 1.

/// Authorizes `e` against the state resolved so far and nothing else (rooms/v1: "allowed by
/// the authorisation rules for a room in state R"; no auth events stand in for what R lacks).
fn authorized_in_r(
    v: &RoomVersion,
    e: &Pdu,
    state: &StateMap,
    events: &dyn EventSource,
) -> Result<bool, ResolveError> {
    let mut found: Vec<&Pdu> = Vec::with_capacity(6);
    for (kind, key) in auth::auth_types(v, &e.kind, e.state_key.as_deref(), &e.sender, &e.content) {
        if let Some(id) = state.get(&(kind, key)) {
            found.push(
                events
                    .event(id)
                    .ok_or_else(|| ResolveError::Missing(id.clone()))?,
            );
        }
    }
    Ok(auth::authorize(v, e, &auth::EventList(found), &|_| true).is_ok())
}

fn sha1_hex(id: &str) -> [u8; 20] {
    Sha1::digest(id.as_bytes()).into()
}

fn resolve_v1(
    v: &RoomVersion,
    mut resolved: StateMap,
    conflicted: BTreeMap<(String, String), Vec<String>>,
    events: &dyn EventSource,
) -> Result<StateMap, ResolveError> {
    let load = |ids: &[String]| -> Result<Vec<&Pdu>, ResolveError> {
        ids.iter()
            .map(|id| {
                events
                    .event(id)
                    .ok_or_else(|| ResolveError::Missing(id.clone()))
            })
            .collect()
    };
    // Power levels, then join rules, then each member key: ascending depth, then descending
    // sha1 of the id; the first goes in, each next one while the rules allow it.
    let passes = [
        |k: &(String, String)| k.0 == "m.room.power_levels" && k.1.is_empty(),
        |k: &(String, String)| k.0 == "m.room.join_rules" && k.1.is_empty(),
        |k: &(String, String)| k.0 == "m.room.member",
    ];
    let mut done: Vec<&(String, String)> = Vec::new();
    for pass in passes {
        for (key, ids) in conflicted.iter().filter(|(k, _)| pass(k)) {
            done.push(key);
            let mut list = load(ids)?;
            list.sort_by(|a, b| {
                a.depth
                    .cmp(&b.depth)
                    .then_with(|| sha1_hex(&b.event_id).cmp(&sha1_hex(&a.event_id)))
            });
            resolved.insert(key.clone(), list[0].event_id.clone());
            for e in &list[1..] {
                if authorized_in_r(v, e, &resolved, events)? {
                    resolved.insert(key.clone(), e.event_id.clone());
                } else {
                    break;
                }
            }
        }
    }
    // Everything else: the highest depth and lowest sha1 that the rules allow (the last in
    // that order when none is allowed, as existing servers do).
    for (key, ids) in conflicted.iter().filter(|(k, _)| !done.contains(k)) {
        let mut list = load(ids)?;
        list.sort_by(|a, b| {
            b.depth
                .cmp(&a.depth)
                .then_with(|| sha1_hex(&a.event_id).cmp(&sha1_hex(&b.event_id)))
        });
        let mut pick = list[list.len() - 1];
        for e in &list {
            if authorized_in_r(v, e, &resolved, events)? {
                pick = e;
                break;
            }
        }
        resolved.insert(key.clone(), pick.event_id.clone());
    }
    Ok(resolved)
}

// ---------------------------------------------------------------------------------------
// Versions 2 and 2.1.

/// The auth graph below the state sets, with events as dense indices.
struct Graph<'a> {
    events: Vec<&'a Pdu>,
    index: HashMap<&'a str, usize>,
    /// Auth events of each event, as indices (unknown ones left out).
    auth: Vec<Vec<usize>>,
}

impl<'a> Graph<'a> {
    /// Interns `roots` and everything reachable from them by `auth_events`.
    fn build(roots: &[&'a str], src: &'a dyn EventSource) -> Result<Graph<'a>, ResolveError> {
        let mut g = Graph {
            events: Vec::new(),
            index: HashMap::new(),
            auth: Vec::new(),
        };
        let mut stack: Vec<&'a str> = roots.to_vec();
        while let Some(id) = stack.pop() {
            if g.index.contains_key(id) {
                continue;
            }
            let e = src
                .event(id)
                .ok_or_else(|| ResolveError::Missing(id.to_string()))?;
            g.index.insert(&e.event_id, g.events.len());
            g.events.push(e);
            g.auth.push(Vec::new());
            for a in &e.auth_events {
                // An auth event nobody knows only weakens the chain; the events in the
                // state sets themselves must be known.
                if !g.index.contains_key(a.as_str()) && src.event(a).is_some() {
                    stack.push(a);
                }
            }
        }
        for i in 0..g.events.len() {
            let list = g.events[i]
                .auth_events
                .iter()
                .filter_map(|a| g.index.get(a.as_str()).copied())
                .collect();
            g.auth[i] = list;
        }
        Ok(g)
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    /// The auth chain (not including the starts) of `starts`, as a bitset.
    fn chain(&self, starts: impl IntoIterator<Item = usize>) -> Bits {
        let mut seen = Bits::new(self.len());
        let mut stack: Vec<usize> = Vec::new();
        for s in starts {
            for &a in &self.auth[s] {
                if seen.insert(a) {
                    stack.push(a);
                }
            }
        }
        while let Some(i) = stack.pop() {
            for &a in &self.auth[i] {
                if seen.insert(a) {
                    stack.push(a);
                }
            }
        }
        seen
    }
}

/// A set of event indices.
#[derive(Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn insert(&mut self, i: usize) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let fresh = self.0[w] & b == 0;
        self.0[w] |= b;
        fresh
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1u64 << (i % 64)) != 0
    }
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut word = word;
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let t = word.trailing_zeros() as usize;
                word &= word - 1;
                Some(w * 64 + t)
            })
        })
    }
}

/// A power event: power levels, join rules, or a kick or ban (fragments/v2-state-res
/// "Power events").
fn is_power_event(e: &Pdu) -> bool {
    if e.is("m.room.power_levels", "") || e.is("m.room.join_rules", "") {
        return true;
    }
    e.kind == "m.room.member"
        && matches!(e.membership(), Some("leave" | "ban"))
        && e.state_key.as_deref() != Some(e.sender.as_str())
}

/// The sender's power level as the event's own auth events give it.
fn sender_power(v: &RoomVersion, e: &Pdu, src: &dyn EventSource) -> Power {
    let auth: Vec<&Pdu> = e.auth_events.iter().filter_map(|a| src.event(a)).collect();
    let create = if v.room_id_is_create {
        src.event(&hash::create_id_of_room(&e.room_id))
    } else {
        auth.iter().copied().find(|a| a.is("m.room.create", ""))
    };
    if let Some(c) = create {
        let creators = v.room_id_is_create
            && (c.sender == e.sender
                || c.content
                    .get("additional_creators")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(e.sender.as_str()))));
        if creators {
            return UNLIMITED;
        }
    }
    match auth.iter().find(|a| a.is("m.room.power_levels", "")) {
        Some(pl) => pl
            .content
            .get("users")
            .and_then(|u| u.get(&e.sender))
            .and_then(|x| auth::parse_power(v, x))
            .or_else(|| {
                pl.content
                    .get("users_default")
                    .and_then(|x| auth::parse_power(v, x))
            })
            .unwrap_or(0),
        None => {
            let creator = create.and_then(|c| {
                if v.create_has_creator {
                    c.content_str("creator")
                } else {
                    Some(c.sender.as_str())
                }
            });
            if creator == Some(e.sender.as_str()) {
                100
            } else {
                0
            }
        }
    }
}

fn resolve_v2(
    v: &RoomVersion,
    state_sets: &[StateMap],
    unconflicted: StateMap,
    conflicted: BTreeMap<(String, String), Vec<String>>,
    src: &dyn EventSource,
) -> Result<StateMap, ResolveError> {
    let mut roots: Vec<&str> = state_sets
        .iter()
        .flat_map(|s| s.values().map(String::as_str))
        .collect();
    roots.sort_unstable();
    roots.dedup();
    let g = Graph::build(&roots, src)?;
    let n = g.len();
    // Auth difference: in some but not all of the state sets' full auth chains.
    let chains: Vec<Bits> = state_sets
        .iter()
        .map(|s| g.chain(s.values().map(|id| g.index[id.as_str()])))
        .collect();
    let mut full = Bits::new(n);
    for w in 0..full.0.len() {
        let union = chains.iter().fold(0u64, |acc, c| acc | c.0[w]);
        let inter = chains.iter().fold(u64::MAX, |acc, c| acc & c.0[w]);
        full.0[w] = union & !inter;
    }
    let mut conflicted_set = Bits::new(n);
    for ids in conflicted.values() {
        for id in ids {
            let i = g.index[id.as_str()];
            conflicted_set.insert(i);
            full.insert(i);
        }
    }
    if v.state_res == StateResolution::V2_1 {
        for i in conflicted_subgraph(&g, &conflicted_set).iter() {
            full.insert(i);
        }
    }
    // Step 1: power events of the full conflicted set, with the full conflicted events of
    // their auth chains, in reverse topological power order.
    let power: Vec<usize> = full
        .iter()
        .filter(|&i| is_power_event(g.events[i]))
        .collect();
    let mut picked = Bits::new(n);
    for &i in &power {
        picked.insert(i);
    }
    for i in g.chain(power.iter().copied()).iter() {
        if full.has(i) {
            picked.insert(i);
        }
    }
    let levels: HashMap<usize, Power> = picked
        .iter()
        .map(|i| (i, sender_power(v, g.events[i], src)))
        .collect();
    let ordered = power_order(&g, &picked, &levels);
    // Step 2: iterative auth checks from the unconflicted state (v2.1: the empty state).
    let mut state = if v.state_res == StateResolution::V2_1 {
        StateMap::new()
    } else {
        unconflicted.clone()
    };
    for &i in &ordered {
        let e = g.events[i];
        if authorized_in(v, e, &state, src)? {
            state.insert(state_key_of(e), e.event_id.clone());
        }
    }
    // Step 3: the rest by mainline order of the resolved power levels.
    let rest: Vec<usize> = full.iter().filter(|&i| !picked.has(i)).collect();
    let rest = mainline_order(&g, &state, rest, src);
    // Step 4.
    for &i in &rest {
        let e = g.events[i];
        if authorized_in(v, e, &state, src)? {
            state.insert(state_key_of(e), e.event_id.clone());
        }
    }
    // Step 5: the unconflicted state wins.
    for (k, id) in unconflicted {
        state.insert(k, id);
    }
    Ok(state)
}

/// rooms/v12 "Conflicted state subgraph": the events on auth paths between conflicted events,
/// endpoints included.
fn conflicted_subgraph(g: &Graph<'_>, conflicted: &Bits) -> Bits {
    let n = g.len();
    let starts: Vec<usize> = conflicted.iter().collect();
    let below = g.chain(starts.iter().copied());
    // Which events reach a conflicted event by auth edges: memoised over the DAG.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unknown,
        Yes,
        No,
    }
    let mut mark = vec![Mark::Unknown; n];
    let mut out = Bits::new(n);
    for s in &starts {
        out.insert(*s);
    }
    for start in below.iter() {
        if mark[start] != Mark::Unknown {
            continue;
        }
        // Iterative post-order walk.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if *next < g.auth[node].len() {
                let child = g.auth[node][*next];
                *next += 1;
                if mark[child] == Mark::Unknown {
                    stack.push((child, 0));
                }
                continue;
            }
            let reaches = g.auth[node]
                .iter()
                .any(|&c| conflicted.has(c) || mark[c] == Mark::Yes);
            mark[node] = if reaches { Mark::Yes } else { Mark::No };
            stack.pop();
        }
    }
    for i in below.iter() {
        if mark[i] == Mark::Yes {
            out.insert(i);
        }
    }
    out
}

/// Kahn's algorithm over the auth DAG below `picked`, yielding `picked` earliest first; among
/// ready events the greatest sender power, then the smallest `origin_server_ts`, then the
/// smallest id ("Reverse topological power ordering"). Events outside `picked` pass through
/// without a place in the output, so an event waits for all its picked ancestors.
fn power_order(g: &Graph<'_>, picked: &Bits, levels: &HashMap<usize, Power>) -> Vec<usize> {
    let mut nodes = g.chain(picked.iter());
    for i in picked.iter() {
        nodes.insert(i);
    }
    let members: Vec<usize> = nodes.iter().collect();
    let mut pending = vec![0usize; g.len()];
    let mut parents: HashMap<usize, Vec<usize>> = HashMap::new();
    for &i in &members {
        for &a in &g.auth[i] {
            if nodes.has(a) {
                pending[i] += 1;
                parents.entry(a).or_default().push(i);
            }
        }
    }
    #[derive(PartialEq, Eq)]
    struct Key<'a>(Power, i64, &'a str, usize);
    impl Ord for Key<'_> {
        fn cmp(&self, o: &Self) -> Ordering {
            o.0.cmp(&self.0)
                .then(self.1.cmp(&o.1))
                .then(self.2.cmp(o.2))
        }
    }
    impl PartialOrd for Key<'_> {
        fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
            Some(self.cmp(o))
        }
    }
    let key = |i: usize| {
        let e = g.events[i];
        Reverse(Key(
            levels.get(&i).copied().unwrap_or(0),
            e.origin_server_ts,
            &e.event_id,
            i,
        ))
    };
    let mut free: Vec<usize> = Vec::new();
    let mut heap = BinaryHeap::new();
    for &i in &members {
        if pending[i] == 0 {
            if picked.has(i) {
                heap.push(key(i));
            } else {
                free.push(i);
            }
        }
    }
    let mut out = Vec::with_capacity(levels.len());
    loop {
        let next = if let Some(i) = free.pop() {
            i
        } else if let Some(Reverse(k)) = heap.pop() {
            out.push(k.3);
            k.3
        } else {
            break;
        };
        for &p in parents.get(&next).map(Vec::as_slice).unwrap_or(&[]) {
            pending[p] -= 1;
            if pending[p] == 0 {
                if picked.has(p) {
                    heap.push(key(p));
                } else {
                    free.push(p);
                }
            }
        }
    }
    out
}

/// The power-levels event among an event's auth events.
fn auth_power_levels<'a>(e: &Pdu, src: &'a dyn EventSource) -> Option<&'a Pdu> {
    e.auth_events
        .iter()
        .filter_map(|a| src.event(a))
        .find(|a| a.is("m.room.power_levels", ""))
}

/// `events` in mainline order of the power levels in `state` ("Mainline ordering"): a greater
/// mainline position first, then the smaller `origin_server_ts`, then the smaller id.
fn mainline_order(
    g: &Graph<'_>,
    state: &StateMap,
    mut events: Vec<usize>,
    src: &dyn EventSource,
) -> Vec<usize> {
    let mut mainline: HashMap<String, usize> = HashMap::new();
    let key = ("m.room.power_levels".to_string(), String::new());
    let mut p = state.get(&key).and_then(|id| src.event(id));
    let mut depth = 0;
    while let Some(pl) = p {
        mainline.insert(pl.event_id.clone(), depth);
        depth += 1;
        p = auth_power_levels(pl, src);
    }
    let mut memo: HashMap<String, usize> = HashMap::new();
    let position = |e: &Pdu, memo: &mut HashMap<String, usize>| -> usize {
        let mut walked: Vec<String> = Vec::new();
        let mut cur = auth_power_levels(e, src);
        let found = loop {
            let Some(pl) = cur else { break usize::MAX };
            if let Some(&i) = mainline.get(&pl.event_id) {
                break i;
            }
            if let Some(&i) = memo.get(&pl.event_id) {
                break i;
            }
            walked.push(pl.event_id.clone());
            cur = auth_power_levels(pl, src);
        };
        for w in walked {
            memo.insert(w, found);
        }
        found
    };
    let positions: HashMap<usize, usize> = events
        .iter()
        .map(|&i| (i, position(g.events[i], &mut memo)))
        .collect();
    events.sort_by(|&a, &b| {
        let (ea, eb) = (g.events[a], g.events[b]);
        positions[&b]
            .cmp(&positions[&a])
            .then(ea.origin_server_ts.cmp(&eb.origin_server_ts))
            .then(ea.event_id.cmp(&eb.event_id))
    });
    events
}
