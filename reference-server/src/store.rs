//! The embedded database: SQLite in WAL mode, versioned migrations, and a batch of writes
//! committed in one transaction per request. Events live here, not in memory: the state reads
//! them by position, id or relation through a bounded cache ([`crate::events`]). Everything
//! else (accounts, devices, keys, rooms' settings) is read once, at start-up.

use std::path::Path;

use rusqlite::{params, Connection};
use serde_json::Value;

use crate::error::ApiError;

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: a commit survives the process being killed at any
    /// moment (the default).
    Process,
    /// `synchronous=FULL`: a commit survives the machine losing power, at an fsync per commit.
    Power,
}

/// Migrations, in order; `PRAGMA user_version` records how many have run. A migration may
/// have a step in Rust after its SQL ([`Store::fill_event_columns`] for the second).
const MIGRATIONS: &[&str] = &[
    // 1: events in stream order, everything else as JSON records, media bytes.
    "CREATE TABLE events (pos INTEGER PRIMARY KEY, room_id TEXT NOT NULL, json TEXT NOT NULL);
     CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID;
     CREATE TABLE media (media_id TEXT PRIMARY KEY, content_type TEXT, filename TEXT, data BLOB NOT NULL, created_ms INTEGER NOT NULL);",
    // 2: events are read from here, by id and relation, instead of all kept in memory; what
    // the server used to derive by replaying them at start (which event a state event
    // replaced, which redaction redacted it) is kept in columns; notifications are rows.
    "ALTER TABLE events ADD COLUMN event_id TEXT;
     ALTER TABLE events ADD COLUMN sender TEXT;
     ALTER TABLE events ADD COLUMN state_key TEXT;
     ALTER TABLE events ADD COLUMN relates_to TEXT;
     ALTER TABLE events ADD COLUMN replaces INTEGER;
     ALTER TABLE events ADD COLUMN redacted_by INTEGER;
     CREATE TABLE notifications (user_id TEXT NOT NULL, room_id TEXT NOT NULL, pos INTEGER NOT NULL, highlight INTEGER NOT NULL, actions TEXT NOT NULL, PRIMARY KEY (user_id, room_id, pos)) WITHOUT ROWID;",
];

/// Indexes over the columns of migration 2, made once its Rust step has filled them.
const EVENT_INDEXES: &str = "CREATE UNIQUE INDEX IF NOT EXISTS events_by_id ON events (event_id);
     CREATE INDEX IF NOT EXISTS events_by_relation ON events (relates_to) WHERE relates_to IS NOT NULL;
     CREATE INDEX IF NOT EXISTS events_state ON events (pos) WHERE state_key IS NOT NULL;
     CREATE INDEX IF NOT EXISTS events_redacted ON events (redacted_by) WHERE redacted_by IS NOT NULL;
     CREATE INDEX IF NOT EXISTS events_timeline ON events (room_id, pos, sender);";

/// A new event's row: its record (the signed PDU and the sending device's transaction) and the
/// columns the server looks events up by.
#[derive(Debug)]
pub struct EventRow {
    pub pos: u64,
    pub room_id: String,
    pub event_id: String,
    pub sender: String,
    pub state_key: Option<String>,
    /// The event an `m.relates_to` names.
    pub relates_to: Option<String>,
    /// The state event this one replaced.
    pub replaces: Option<u64>,
    pub json: String,
}

/// A notification: `user` is notified of the event at `pos` with the actions of the push
/// rule that matched.
#[derive(Debug)]
pub struct NotificationRow {
    pub user_id: String,
    pub room_id: String,
    pub pos: u64,
    pub highlight: bool,
    pub actions: String,
}

/// An event read back: its record, and which events redacted and were replaced by it.
#[derive(Debug)]
pub struct StoredEvent {
    pub pos: u64,
    pub record: Value,
    pub redacted_by: Option<u64>,
    pub replaces: Option<u64>,
}

/// A structured record kind: one type writes and reads it (`crate::state::records`).
pub trait Record: serde::Serialize + serde::de::DeserializeOwned {
    const KIND: &'static str;
}

/// Writes gathered while a request is handled, committed together.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<EventRow>,
    /// Event records rewritten in place (a redacted event's original content purged).
    pub event_updates: Vec<(u64, String)>,
    /// Events redacted: (event position, redaction position).
    pub redactions: Vec<(u64, u64)>,
    pub notifications: Vec<NotificationRow>,
    pub puts: Vec<(&'static str, String, String)>,
    pub deletes: Vec<(&'static str, String)>,
    pub media: Vec<(String, Option<String>, Option<String>, Vec<u8>, u64)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.event_updates.is_empty()
            && self.redactions.is_empty()
            && self.notifications.is_empty()
            && self.puts.is_empty()
            && self.deletes.is_empty()
            && self.media.is_empty()
    }

    pub fn put(&mut self, kind: &'static str, key: impl Into<String>, value: &Value) {
        self.puts.push((kind, key.into(), value.to_string()));
    }

    /// Writes a structured record under its kind.
    pub fn put_record<R: Record>(&mut self, key: impl Into<String>, record: &R) {
        let text = serde_json::to_string(record).unwrap_or_else(|_| "null".into());
        self.puts.push((R::KIND, key.into(), text));
    }

    pub fn delete(&mut self, kind: &'static str, key: impl Into<String>) {
        self.deletes.push((kind, key.into()));
    }
}

#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

/// The records read back at start-up (all but transaction ids, which are looked up).
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<(String, String, Value)>,
}

impl Default for Store {
    /// An in-memory database (for a throw-away state).
    fn default() -> Store {
        Store::open(None, Durability::Process)
            .unwrap_or_else(|e| panic!("an in-memory SQLite database could not be opened: {e}"))
    }
}

impl Store {
    /// Opens (creating if needed) the database file, or an in-memory one with `None`.
    pub fn open(path: Option<&Path>, durability: Durability) -> Result<Store, String> {
        let conn = match path {
            Some(p) => Connection::open(p).map_err(|e| format!("opening {}: {e}", p.display()))?,
            None => Connection::open_in_memory()
                .map_err(|e| format!("opening an in-memory database: {e}"))?,
        };
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Power => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 8192; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA secure_delete = ON;"
        ))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                "the database is in use by another process (is a server already running on it?)"
                    .to_string()
            }
            _ => format!("configuring the database: {e}"),
        })?;
        // Every statement of the request path is cached (more than rusqlite's default 16).
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), String> {
        let version: usize =
            self.conn
                .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
                .map_err(|e| format!("reading the schema version: {e}"))? as usize;
        if version > MIGRATIONS.len() {
            return Err(format!(
                "the database has schema version {version}, newer than this server knows ({})",
                MIGRATIONS.len()
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction().map_err(|e| e.to_string())?;
            tx.execute_batch(sql)
                .map_err(|e| format!("migration {}: {e}", i + 1))?;
            if i + 1 == 2 {
                Self::fill_event_columns(&tx).map_err(|e| format!("migration 2: {e}"))?;
            }
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(|e| e.to_string())?;
            tx.commit()
                .map_err(|e| format!("migration {}: {e}", i + 1))?;
        }
        self.conn
            .execute_batch(EVENT_INDEXES)
            .map_err(|e| format!("making the event indexes: {e}"))?;
        Ok(())
    }

    /// Migration 2's step: the columns of events stored before it, from their records (ids,
    /// senders, state keys and relations from the PDUs; the state event each replaced and the
    /// redaction of each redacted event by following them in stream order).
    fn fill_event_columns(tx: &rusqlite::Transaction<'_>) -> Result<(), String> {
        let rows: Vec<(i64, String)> = {
            let mut stmt = tx
                .prepare("SELECT pos, json FROM events ORDER BY pos")
                .map_err(|e| e.to_string())?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| e.to_string())?;
            rows.collect::<Result<_, _>>().map_err(|e| e.to_string())?
        };
        let mut versions: std::collections::HashMap<String, String> = Default::default();
        let mut state: std::collections::HashMap<(String, String, String), i64> =
            Default::default();
        let mut ids: std::collections::HashMap<String, i64> = Default::default();
        let mut update = tx
            .prepare("UPDATE events SET event_id = ?2, sender = ?3, state_key = ?4, relates_to = ?5, replaces = ?6 WHERE pos = ?1")
            .map_err(|e| e.to_string())?;
        let mut redact = tx
            .prepare("UPDATE events SET redacted_by = ?2 WHERE pos = ?1")
            .map_err(|e| e.to_string())?;
        for (pos, json) in rows {
            let v: Value = serde_json::from_str(&json)
                .map_err(|e| format!("event {pos} in the database is not JSON: {e}"))?;
            let (ev, _) = crate::state::Event::from_record(pos as u64, v, |room| {
                versions.get(room).cloned()
            })?;
            if ev.kind == "m.room.create" && ev.state_key.as_deref() == Some("") {
                let version = ev
                    .content
                    .get("room_version")
                    .and_then(Value::as_str)
                    .unwrap_or("1");
                versions.insert(ev.room_id.clone(), version.to_string());
            }
            let replaces = ev
                .state_key
                .as_ref()
                .and_then(|k| state.insert((ev.room_id.clone(), ev.kind.clone(), k.clone()), pos));
            update
                .execute(params![
                    pos,
                    ev.event_id,
                    ev.sender,
                    ev.state_key,
                    crate::state::relation_target(&ev.content),
                    replaces
                ])
                .map_err(|e| e.to_string())?;
            if let Some(target) = ev.redacts.as_ref().and_then(|t| ids.get(t)) {
                redact
                    .execute(params![target, pos])
                    .map_err(|e| e.to_string())?;
            }
            ids.insert(ev.event_id, pos);
        }
        Ok(())
    }

    /// The records (transaction ids excepted: [`Store::record`] looks them up).
    pub fn load(&self) -> Result<Loaded, String> {
        let mut out = Loaded::default();
        let mut stmt = self
            .conn
            .prepare("SELECT kind, key, value FROM records WHERE kind != 'txn'")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| e.to_string())?;
        for row in rows {
            let (kind, key, value) = row.map_err(|e| e.to_string())?;
            let v = serde_json::from_str(&value)
                .map_err(|e| format!("record {kind}/{key} in the database is not JSON: {e}"))?;
            out.records.push((kind, key, v));
        }
        Ok(out)
    }

    /// One record, by kind and key.
    pub fn record(&self, kind: &str, key: &str) -> Result<Option<Value>, ApiError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT value FROM records WHERE kind = ?1 AND key = ?2")?;
        let mut rows = stmt.query(params![kind, key])?;
        match rows.next()? {
            Some(r) => {
                let text: String = r.get(0)?;
                Ok(serde_json::from_str(&text).ok())
            }
            None => Ok(None),
        }
    }

    fn stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, Option<i64>, Option<i64>)> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    }

    fn to_stored(
        (pos, json, redacted_by, replaces): (i64, String, Option<i64>, Option<i64>),
    ) -> Result<StoredEvent, String> {
        Ok(StoredEvent {
            pos: pos as u64,
            record: serde_json::from_str(&json)
                .map_err(|e| format!("event {pos} in the database is not JSON: {e}"))?,
            redacted_by: redacted_by.map(|p| p as u64),
            replaces: replaces.map(|p| p as u64),
        })
    }

    /// The event at a stream position.
    pub fn event(&self, pos: u64) -> Result<Option<StoredEvent>, String> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT pos, json, redacted_by, replaces FROM events WHERE pos = ?1")
            .map_err(|e| e.to_string())?;
        let mut rows = stmt.query(params![pos as i64]).map_err(|e| e.to_string())?;
        match rows.next().map_err(|e| e.to_string())? {
            Some(r) => Self::to_stored(Self::stored(r).map_err(|e| e.to_string())?).map(Some),
            None => Ok(None),
        }
    }

    /// The stream position of an event, by id.
    pub fn position_of(&self, event_id: &str) -> Result<Option<u64>, ApiError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT pos FROM events WHERE event_id = ?1")?;
        let mut rows = stmt.query(params![event_id])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get::<_, i64>(0)? as u64),
            None => None,
        })
    }

    /// The positions of the events relating to an event (`m.relates_to`), oldest first.
    pub fn relations(&self, event_id: &str) -> Result<Vec<u64>, ApiError> {
        self.positions(
            "SELECT pos FROM events WHERE relates_to = ?1 ORDER BY pos",
            event_id,
        )
    }

    /// The positions a one-parameter query selects, in its order.
    fn positions(&self, sql: &str, param: &str) -> Result<Vec<u64>, ApiError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![param], |r| r.get::<_, i64>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r? as u64);
        }
        Ok(out)
    }

    /// The positions of a room's events that relate to another, oldest first.
    pub fn related_in_room(&self, room_id: &str) -> Result<Vec<u64>, ApiError> {
        self.positions(
            "SELECT pos FROM events WHERE relates_to IS NOT NULL AND room_id = ?1 ORDER BY pos",
            room_id,
        )
    }

    /// The actions of a notification.
    pub fn notification_actions(
        &self,
        user: &str,
        room: &str,
        pos: u64,
    ) -> Result<Option<Value>, ApiError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT actions FROM notifications WHERE user_id = ?1 AND room_id = ?2 AND pos = ?3",
        )?;
        let mut rows = stmt.query(params![user, room, pos as i64])?;
        match rows.next()? {
            Some(r) => {
                let text: String = r.get(0)?;
                Ok(serde_json::from_str(&text).ok())
            }
            None => Ok(None),
        }
    }

    /// Every state event, in stream order (what rebuilds the rooms at start-up).
    pub fn state_events(
        &self,
        mut f: impl FnMut(StoredEvent) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut stmt = self
            .conn
            .prepare("SELECT pos, json, redacted_by, replaces FROM events WHERE state_key IS NOT NULL ORDER BY pos")
            .map_err(|e| e.to_string())?;
        let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
        while let Some(r) = rows.next().map_err(|e| e.to_string())? {
            f(Self::to_stored(
                Self::stored(r).map_err(|e| e.to_string())?,
            )?)?;
        }
        Ok(())
    }

    /// Every event's room, sender and position, room by room in stream order (the rooms'
    /// timelines; read from the covering index, not the events' records).
    pub fn timeline(&self, mut f: impl FnMut(&str, &str, u64)) -> Result<(), String> {
        let mut stmt = self
            .conn
            .prepare("SELECT room_id, sender, pos FROM events INDEXED BY events_timeline ORDER BY room_id, pos")
            .map_err(|e| e.to_string())?;
        let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
        while let Some(r) = rows.next().map_err(|e| e.to_string())? {
            let room = r
                .get_ref(0)
                .map_err(|e| e.to_string())?
                .as_str()
                .unwrap_or("");
            let sender = r
                .get_ref(1)
                .map_err(|e| e.to_string())?
                .as_str()
                .unwrap_or("");
            let pos: i64 = r.get(2).map_err(|e| e.to_string())?;
            f(room, sender, pos as u64);
        }
        Ok(())
    }

    /// A user's notifications in a room: (position, highlight), oldest first.
    pub fn notification_list(&self, user: &str, room: &str) -> Result<Vec<(u64, bool)>, ApiError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT pos, highlight FROM notifications WHERE user_id = ?1 AND room_id = ?2 ORDER BY pos",
        )?;
        let rows = stmt.query_map(params![user, room], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? != 0))
        })?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }

    /// The positions of the events other events relate to.
    pub fn related(&self) -> Result<Vec<u64>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT t.pos FROM events e JOIN events t ON t.event_id = e.relates_to WHERE e.relates_to IS NOT NULL")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| Ok(r.get::<_, i64>(0)? as u64))
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    /// Redacted events: (position, redaction position).
    pub fn redacted(&self) -> Result<Vec<(u64, u64)>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT pos, redacted_by FROM events WHERE redacted_by IS NOT NULL")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }

    /// Commits a batch in one transaction.
    pub fn commit(&mut self, batch: Batch) -> Result<(), ApiError> {
        if batch.is_empty() {
            return Ok(());
        }
        // BEGIN and COMMIT are cached statements like the writes between them: a transaction
        // per request would otherwise parse both again every time.
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        let written = self.write_batch(&batch).and_then(|()| {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        });
        if written.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        written
    }

    /// The statements of one commit, inside its transaction.
    fn write_batch(&self, batch: &Batch) -> Result<(), ApiError> {
        // Only the statements a batch needs are looked up in the cache (a send needs three).
        let tx = &self.conn;
        if !batch.events.is_empty() {
            let mut ev = tx.prepare_cached(
                "INSERT INTO events (pos, room_id, json, event_id, sender, state_key, relates_to, replaces) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for e in &batch.events {
                ev.execute(params![
                    e.pos as i64,
                    e.room_id,
                    e.json,
                    e.event_id,
                    e.sender,
                    e.state_key,
                    e.relates_to,
                    e.replaces.map(|p| p as i64)
                ])?;
            }
        }
        if !batch.event_updates.is_empty() {
            let mut upd = tx.prepare_cached("UPDATE events SET json = ?2 WHERE pos = ?1")?;
            for (pos, json) in &batch.event_updates {
                upd.execute(params![*pos as i64, json])?;
            }
        }
        if !batch.redactions.is_empty() {
            let mut red = tx.prepare_cached("UPDATE events SET redacted_by = ?2 WHERE pos = ?1")?;
            for (pos, by) in &batch.redactions {
                red.execute(params![*pos as i64, *by as i64])?;
            }
        }
        if !batch.notifications.is_empty() {
            let mut note = tx.prepare_cached(
                "INSERT OR REPLACE INTO notifications (user_id, room_id, pos, highlight, actions) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for n in &batch.notifications {
                note.execute(params![
                    n.user_id,
                    n.room_id,
                    n.pos as i64,
                    n.highlight,
                    n.actions
                ])?;
            }
        }
        if !batch.puts.is_empty() {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO records (kind, key, value) VALUES (?1, ?2, ?3)",
            )?;
            for (kind, key, value) in &batch.puts {
                put.execute(params![kind, key, value])?;
            }
        }
        if !batch.deletes.is_empty() {
            let mut del = tx.prepare_cached("DELETE FROM records WHERE kind = ?1 AND key = ?2")?;
            for (kind, key) in &batch.deletes {
                del.execute(params![kind, key])?;
            }
        }
        if !batch.media.is_empty() {
            let mut media = tx.prepare_cached(
                "INSERT OR REPLACE INTO media (media_id, content_type, filename, data, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (id, ct, name, data, ms) in &batch.media {
                media.execute(params![id, ct, name, data, *ms as i64])?;
            }
        }
        Ok(())
    }

    /// Media bytes by id: (content type, file name, bytes).
    pub fn media(
        &self,
        id: &str,
    ) -> Result<Option<(Option<String>, Option<String>, Vec<u8>)>, ApiError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT content_type, filename, data FROM media WHERE media_id = ?1")?;
        let mut rows = stmt.query(params![id])?;
        match rows.next()? {
            Some(r) => Ok(Some((r.get(0)?, r.get(1)?, r.get(2)?))),
            None => Ok(None),
        }
    }
}
