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
    // Key -> (how many sets hold it, the first event, the other distinct events).
    type Seen<'s> = (usize, &'s String, Vec<&'s String>);
    let mut seen: FxMap<&(String, String), Seen<'_>> = FxMap::default();
    for s in state_sets {
        for (k, id) in s {
            let entry = seen.entry(k).or_insert_with(|| (0, id, Vec::new()));
            entry.0 += 1;
            if entry.1 != id && !entry.2.contains(&id) {
                entry.2.push(id);
            }
        }
    }
    let mut unconflicted = StateMap::new();
    let mut conflicted: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (key, (count, first, others)) in seen {
        if others.is_empty() && (count == state_sets.len() || missing_is_no_conflict) {
            unconflicted.insert(key.clone(), first.clone());
        } else {
            let mut ids = vec![first.clone()];
            ids.extend(others.into_iter().cloned());
            conflicted.insert(key.clone(), ids);
        }
    }
    (unconflicted, conflicted)
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
    for (kind, key) in auth::auth_types(v, &e.kind, e.state_key.as_deref(), &e.sender, e.content())
    {
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

/// A fast hasher for the resolution's own maps (keys are event ids and state keys, not
/// attacker-chosen inputs to a long-lived table): eight bytes at a time.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fx>>;

/// The auth graph below the state sets, with events as dense indices.
struct Graph<'a> {
    events: Vec<&'a Pdu>,
    index: FxMap<&'a str, usize>,
    /// Auth events of each event, as indices (unknown ones left out): those of event `i` are
    /// `auth_targets[auth_start[i]..auth_start[i + 1]]`.
    auth_start: Vec<u32>,
    auth_targets: Vec<u32>,
    /// Whether each event was rejected.
    rejected: Vec<bool>,
}

impl<'a> Graph<'a> {
    /// Interns `roots` and everything reachable from them by `auth_events`.
    fn build(roots: &[&'a str], src: &'a dyn EventSource) -> Result<Graph<'a>, ResolveError> {
        let mut g = Graph {
            events: Vec::with_capacity(roots.len() * 2),
            index: FxMap::default(),
            auth_start: Vec::new(),
            auth_targets: Vec::new(),
            rejected: Vec::new(),
        };
        // (id, whether it must be known): the state sets' events must be; an auth event
        // nobody knows only weakens the chain.
        let mut stack: Vec<(&'a str, bool)> = roots.iter().map(|r| (*r, true)).collect();
        while let Some((id, required)) = stack.pop() {
            if g.index.contains_key(id) {
                continue;
            }
            let Some(e) = src.event(id) else {
                if required {
                    return Err(ResolveError::Missing(id.to_string()));
                }
                continue;
            };
            g.index.insert(&e.event_id, g.events.len());
            g.events.push(e);
            g.rejected.push(src.rejected(id));
            for a in &e.auth_events {
                if !g.index.contains_key(a.as_str()) {
                    stack.push((a, false));
                }
            }
        }
        g.auth_start.reserve(g.events.len() + 1);
        g.auth_targets.reserve(g.events.len() * 4);
        for e in &g.events {
            g.auth_start.push(g.auth_targets.len() as u32);
            for a in &e.auth_events {
                if let Some(&j) = g.index.get(a.as_str()) {
                    g.auth_targets.push(j as u32);
                }
            }
        }
        g.auth_start.push(g.auth_targets.len() as u32);
        Ok(g)
    }

    /// The auth events of `i`, as indices.
    fn auth(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.auth_targets[self.auth_start[i] as usize..self.auth_start[i + 1] as usize]
            .iter()
            .map(|&j| j as usize)
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    /// The auth chain (not including the starts) of `starts`, as a bitset.
    fn chain(&self, starts: impl IntoIterator<Item = usize>) -> Bits {
        let mut seen = Bits::new(self.len());
        let mut stack: Vec<usize> = Vec::new();
        for s in starts {
            for a in self.auth(s) {
                if seen.insert(a) {
                    stack.push(a);
                }
            }
        }
        while let Some(i) = stack.pop() {
            for a in self.auth(i) {
                if seen.insert(a) {
                    stack.push(a);
                }
            }
        }
        seen
    }

    /// The power-levels event among `i`'s auth events.
    fn auth_power_levels(&self, i: usize) -> Option<usize> {
        self.auth(i)
            .find(|&a| self.events[a].is("m.room.power_levels", ""))
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

/// The sender's power level as the event's own auth events give it (v12: with the creators
/// of the create event the room id names).
fn sender_power(v: &RoomVersion, g: &Graph<'_>, i: usize, create12: Option<&Pdu>) -> Power {
    let e = g.events[i];
    let auth = || g.auth(i).map(|a| g.events[a]);
    let create = if v.room_id_is_create {
        create12
    } else {
        auth().find(|a| a.is("m.room.create", ""))
    };
    if let Some(c) = create {
        let creators = v.room_id_is_create
            && (c.sender == e.sender
                || c.content()
                    .get("additional_creators")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(e.sender.as_str()))));
        if creators {
            return UNLIMITED;
        }
    }
    match auth().find(|a| a.is("m.room.power_levels", "")) {
        Some(pl) => pl
            .content()
            .get("users")
            .and_then(|u| u.get(&e.sender))
            .and_then(|x| auth::parse_power(v, x))
            .or_else(|| {
                pl.content()
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

/// The working state of the iterative auth checks: `(type, state_key)` -> event index.
type Working<'s> = FxMap<(&'s str, &'s str), usize>;

/// Iterative auth checks for one event ("Iterative auth checks"): the state so far, and the
/// event's own (not rejected) auth events for what the state lacks.
fn passes(
    v: &RoomVersion,
    g: &Graph<'_>,
    i: usize,
    state: &Working<'_>,
    create12: Option<&Pdu>,
) -> bool {
    let e = g.events[i];
    let mut found: Vec<&Pdu> = Vec::with_capacity(8);
    for (kind, key) in auth::auth_keys_of(v, e).iter() {
        if let Some(&j) = state.get(&(kind, key)) {
            found.push(g.events[j]);
        } else if let Some(j) = g
            .auth(i)
            .find(|&j| !g.rejected[j] && g.events[j].is(kind, key))
        {
            found.push(g.events[j]);
        }
    }
    if v.room_id_is_create {
        found.extend(create12);
    }
    if e.kind == "m.room.create" {
        found.clear();
    }
    // Signatures were checked when the events arrived.
    auth::authorize(v, e, &auth::EventList(found), &|_| true).is_ok()
}

/// Applies the iterative auth checks to `list`, in order.
fn apply<'s>(
    v: &RoomVersion,
    g: &Graph<'s>,
    state: &mut Working<'s>,
    list: &[usize],
    create12: Option<&Pdu>,
) {
    for &i in list {
        if passes(v, g, i, state, create12) {
            let e = g.events[i];
            state.insert((e.kind.as_str(), e.state_key.as_deref().unwrap_or("")), i);
        }
    }
}

fn resolve_v2<'a>(
    v: &RoomVersion,
    state_sets: &'a [StateMap],
    unconflicted: StateMap,
    conflicted: BTreeMap<(String, String), Vec<String>>,
    src: &'a dyn EventSource,
) -> Result<StateMap, ResolveError> {
    let roots: Vec<&str> = state_sets
        .iter()
        .flat_map(|s| s.values().map(String::as_str))
        .collect();
    let g = Graph::build(&roots, src)?;
    let n = g.len();
    let create12 = if v.room_id_is_create {
        g.events
            .first()
            .and_then(|e| src.event(&hash::create_id_of_room(&e.room_id)))
    } else {
        None
    };
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
    let mut levels = vec![0; n];
    for i in picked.iter() {
        levels[i] = sender_power(v, &g, i, create12);
    }
    let ordered = power_order(&g, &picked, &levels);
    // Step 2: iterative auth checks from the unconflicted state (v2.1: the empty state).
    let unconflicted_keys: std::collections::HashSet<
        (&str, &str),
        std::hash::BuildHasherDefault<Fx>,
    > = unconflicted
        .keys()
        .map(|(k, s)| (k.as_str(), s.as_str()))
        .collect();
    let mut state: Working<'_> = FxMap::default();
    if v.state_res != StateResolution::V2_1 {
        state.reserve(unconflicted.len());
        for ((kind, key), id) in &unconflicted {
            state.insert((kind.as_str(), key.as_str()), g.index[id.as_str()]);
        }
    }
    apply(v, &g, &mut state, &ordered, create12);
    // Step 3: the rest by mainline order of the resolved power levels.
    let rest: Vec<usize> = full.iter().filter(|&i| !picked.has(i)).collect();
    let rest = mainline_order(&g, state.get(&("m.room.power_levels", "")).copied(), rest);
    // Step 4.
    apply(v, &g, &mut state, &rest, create12);
    // Step 5: the unconflicted state wins.
    let resolved: Vec<((String, String), String)> = state
        .into_iter()
        .filter(|((kind, key), _)| !unconflicted_keys.contains(&(*kind, *key)))
        .map(|((kind, key), i)| {
            (
                (kind.to_string(), key.to_string()),
                g.events[i].event_id.clone(),
            )
        })
        .collect();
    drop(unconflicted_keys);
    let mut out = unconflicted;
    out.extend(resolved);
    Ok(out)
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
        let mut stack: Vec<(usize, usize)> = vec![(start, g.auth_start[start] as usize)];
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if *next < g.auth_start[node + 1] as usize {
                let child = g.auth_targets[*next] as usize;
                *next += 1;
                if mark[child] == Mark::Unknown {
                    stack.push((child, g.auth_start[child] as usize));
                }
                continue;
            }
            let reaches = g
                .auth(node)
                .any(|c| conflicted.has(c) || mark[c] == Mark::Yes);
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
fn power_order(g: &Graph<'_>, picked: &Bits, levels: &[Power]) -> Vec<usize> {
    let mut nodes = g.chain(picked.iter());
    for i in picked.iter() {
        nodes.insert(i);
    }
    let n = g.len();
    let mut pending = vec![0u32; n];
    // Children (events that cite it) of each node, as a flat adjacency list.
    let mut child_count = vec![0u32; n + 1];
    for i in nodes.iter() {
        for a in g.auth(i) {
            if nodes.has(a) {
                pending[i] += 1;
                child_count[a + 1] += 1;
            }
        }
    }
    for i in 0..n {
        child_count[i + 1] += child_count[i];
    }
    let mut fill = child_count.clone();
    let mut children = vec![0usize; child_count[n] as usize];
    for i in nodes.iter() {
        for a in g.auth(i) {
            if nodes.has(a) {
                children[fill[a] as usize] = i;
                fill[a] += 1;
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
        Reverse(Key(levels[i], e.origin_server_ts, &e.event_id, i))
    };
    let mut free: Vec<usize> = Vec::new();
    let mut heap = BinaryHeap::new();
    for i in nodes.iter() {
        if pending[i] == 0 {
            if picked.has(i) {
                heap.push(key(i));
            } else {
                free.push(i);
            }
        }
    }
    let mut out = Vec::new();
    loop {
        let next = if let Some(i) = free.pop() {
            i
        } else if let Some(Reverse(k)) = heap.pop() {
            out.push(k.3);
            k.3
        } else {
            break;
        };
        for &p in &children[child_count[next] as usize..child_count[next + 1] as usize] {
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

/// `events` in mainline order of the power levels event `resolved_power` ("Mainline
/// ordering"): a greater mainline position first, then the smaller `origin_server_ts`, then
/// the smaller id.
fn mainline_order(
    g: &Graph<'_>,
    resolved_power: Option<usize>,
    mut events: Vec<usize>,
) -> Vec<usize> {
    const NONE: usize = usize::MAX;
    let n = g.len();
    // Position of each power-levels event on the mainline (NONE when it is not on it).
    let mut mainline = vec![NONE; n];
    let mut p = resolved_power;
    let mut depth = 0;
    while let Some(pl) = p {
        if mainline[pl] != NONE {
            break;
        }
        mainline[pl] = depth;
        depth += 1;
        p = g.auth_power_levels(pl);
    }
    // The mainline position reached from a power-levels event (memoised).
    let mut memo: Vec<Option<usize>> = vec![None; n];
    let mut position = |i: usize| -> usize {
        let mut walked: Vec<usize> = Vec::new();
        let mut cur = g.auth_power_levels(i);
        let found = loop {
            let Some(pl) = cur else { break NONE };
            if mainline[pl] != NONE {
                break mainline[pl];
            }
            if let Some(m) = memo[pl] {
                break m;
            }
            walked.push(pl);
            cur = g.auth_power_levels(pl);
        };
        for w in walked {
            memo[w] = Some(found);
        }
        found
    };
    let mut keyed: Vec<(Reverse<usize>, i64, &str, usize)> = events
        .drain(..)
        .map(|i| {
            let e = g.events[i];
            (
                Reverse(position(i)),
                e.origin_server_ts,
                e.event_id.as_str(),
                i,
            )
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|k| k.3).collect()
}
