//! The embedded database: SQLite in WAL mode, versioned migrations, and a batch of writes
//! committed in one transaction per request. Reads happen once, at start-up, to rebuild the
//! in-memory state; after that the database is written, never read.

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

/// Migrations, in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: events in stream order, everything else as JSON records, media bytes.
    "CREATE TABLE events (pos INTEGER PRIMARY KEY, room_id TEXT NOT NULL, json TEXT NOT NULL);
     CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID;
     CREATE TABLE media (media_id TEXT PRIMARY KEY, content_type TEXT, filename TEXT, data BLOB NOT NULL, created_ms INTEGER NOT NULL);",
];

/// Writes gathered while a request is handled, committed together.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<(u64, String, String)>,
    /// Event records rewritten in place (a redacted event's original content purged).
    pub event_updates: Vec<(u64, String)>,
    pub puts: Vec<(&'static str, String, String)>,
    pub deletes: Vec<(&'static str, String)>,
    pub media: Vec<(String, Option<String>, Option<String>, Vec<u8>, u64)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.event_updates.is_empty()
            && self.puts.is_empty()
            && self.deletes.is_empty()
            && self.media.is_empty()
    }

    pub fn put(&mut self, kind: &'static str, key: impl Into<String>, value: &Value) {
        self.puts.push((kind, key.into(), value.to_string()));
    }

    pub fn delete(&mut self, kind: &'static str, key: impl Into<String>) {
        self.deletes.push((kind, key.into()));
    }
}

#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

/// Everything read back at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub events: Vec<(u64, Value)>,
    pub records: Vec<(String, String, Value)>,
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
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA secure_delete = ON;"
        ))
        .map_err(|e| format!("configuring the database: {e}"))?;
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
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(|e| e.to_string())?;
            tx.commit()
                .map_err(|e| format!("migration {}: {e}", i + 1))?;
        }
        Ok(())
    }

    pub fn load(&self) -> Result<Loaded, String> {
        let mut out = Loaded::default();
        let mut stmt = self
            .conn
            .prepare("SELECT pos, json FROM events ORDER BY pos")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| e.to_string())?;
        for row in rows {
            let (pos, json) = row.map_err(|e| e.to_string())?;
            let v = serde_json::from_str(&json)
                .map_err(|e| format!("event {pos} in the database is not JSON: {e}"))?;
            out.events.push((pos as u64, v));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT kind, key, value FROM records")
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

    /// Commits a batch in one transaction.
    pub fn commit(&mut self, batch: Batch) -> Result<(), ApiError> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut ev =
                tx.prepare_cached("INSERT INTO events (pos, room_id, json) VALUES (?1, ?2, ?3)")?;
            for (pos, room, json) in &batch.events {
                ev.execute(params![*pos as i64, room, json])?;
            }
            let mut upd = tx.prepare_cached("UPDATE events SET json = ?2 WHERE pos = ?1")?;
            for (pos, json) in &batch.event_updates {
                upd.execute(params![*pos as i64, json])?;
            }
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO records (kind, key, value) VALUES (?1, ?2, ?3)",
            )?;
            for (kind, key, value) in &batch.puts {
                put.execute(params![kind, key, value])?;
            }
            let mut del = tx.prepare_cached("DELETE FROM records WHERE kind = ?1 AND key = ?2")?;
            for (kind, key) in &batch.deletes {
                del.execute(params![kind, key])?;
            }
            let mut media = tx.prepare_cached(
                "INSERT OR REPLACE INTO media (media_id, content_type, filename, data, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (id, ct, name, data, ms) in &batch.media {
                media.execute(params![id, ct, name, data, *ms as i64])?;
            }
        }
        tx.commit()?;
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
