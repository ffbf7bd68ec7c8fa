//! The events the server reads often, kept in memory within a bound: the database holds every
//! event ([`crate::store`]); this cache holds the recently read and written ones, and the
//! ones written by the request under way until its batch is committed (they are not in the
//! database yet, so they are never evicted before).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use crate::state::Event;

/// How many events the cache holds after an eviction (it grows to twice this before one).
pub const CACHE_EVENTS: usize = 4096;

#[derive(Debug)]
pub struct EventCache {
    /// Position -> (event, last use).
    map: RefCell<HashMap<u64, (Arc<Event>, u64)>>,
    tick: Cell<u64>,
    /// Events at positions above this are not committed yet.
    committed: Cell<u64>,
    /// Ids of the uncommitted events (the database cannot find them yet).
    pending_ids: RefCell<HashMap<String, u64>>,
    capacity: usize,
}

impl Default for EventCache {
    fn default() -> EventCache {
        EventCache::new(CACHE_EVENTS)
    }
}

impl EventCache {
    pub fn new(capacity: usize) -> EventCache {
        EventCache {
            map: RefCell::new(HashMap::new()),
            tick: Cell::new(0),
            committed: Cell::new(0),
            pending_ids: RefCell::new(HashMap::new()),
            capacity: capacity.max(16),
        }
    }

    fn next_tick(&self) -> u64 {
        let t = self.tick.get() + 1;
        self.tick.set(t);
        t
    }

    pub fn get(&self, pos: u64) -> Option<Arc<Event>> {
        let tick = self.next_tick();
        let mut map = self.map.borrow_mut();
        let entry = map.get_mut(&pos)?;
        entry.1 = tick;
        Some(entry.0.clone())
    }

    /// Keeps an event read from the database, or written (uncommitted until [`Self::committed`]).
    pub fn put(&self, ev: Arc<Event>) {
        let tick = self.next_tick();
        if ev.pos > self.committed.get() {
            self.pending_ids
                .borrow_mut()
                .insert(ev.event_id.clone(), ev.pos);
        }
        let mut map = self.map.borrow_mut();
        map.insert(ev.pos, (ev, tick));
        if map.len() > 2 * self.capacity {
            self.evict(&mut map);
        }
    }

    /// The position of an uncommitted event, by id.
    pub fn pending_position(&self, event_id: &str) -> Option<u64> {
        self.pending_ids.borrow().get(event_id).copied()
    }

    /// The uncommitted events (the database does not know them yet), oldest first.
    pub fn pending(&self) -> Vec<Arc<Event>> {
        let ids = self.pending_ids.borrow();
        if ids.is_empty() {
            return Vec::new();
        }
        let map = self.map.borrow();
        let mut out: Vec<Arc<Event>> = ids
            .values()
            .filter_map(|p| map.get(p).map(|(e, _)| e.clone()))
            .collect();
        out.sort_by_key(|e| e.pos);
        out
    }

    /// Everything up to `pos` is in the database now.
    pub fn committed(&self, pos: u64) {
        self.committed.set(pos);
        self.pending_ids.borrow_mut().clear();
        let mut map = self.map.borrow_mut();
        if map.len() > 2 * self.capacity {
            self.evict(&mut map);
        }
    }

    /// Drops the least recently used committed events down to the capacity.
    fn evict(&self, map: &mut HashMap<u64, (Arc<Event>, u64)>) {
        let committed = self.committed.get();
        let mut ticks: Vec<u64> = map
            .iter()
            .filter(|(p, _)| **p <= committed)
            .map(|(_, (_, t))| *t)
            .collect();
        let excess = map.len().saturating_sub(self.capacity);
        if excess == 0 || ticks.is_empty() {
            return;
        }
        let n = excess.min(ticks.len()) - 1;
        let (_, cut, _) = ticks.select_nth_unstable(n);
        let cut = *cut;
        map.retain(|p, (_, t)| *p > committed || *t > cut);
    }

    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
