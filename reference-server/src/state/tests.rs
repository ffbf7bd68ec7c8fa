use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mxconform_pdu::{Pdu, RoomVersion, SigningKey};
use serde_json::{json, Value};

use super::*;
use crate::events::EventCache;
use crate::store::{Batch, Store};

/// A v12 room made by `creator`, who has joined it.
fn joined_room(state: &mut State, batch: &mut Batch, creator: &str) -> String {
    let room_id = state
        .create_room(batch, "12", creator, json!({"room_version": "12"}), false)
        .unwrap();
    state
        .append(
            batch,
            Append::new(
                &room_id,
                creator,
                "m.room.member",
                Some(creator),
                json!({"membership": "join"}),
            ),
        )
        .unwrap();
    room_id
}

/// A database file in a fresh folder (removed by the caller), and how to open it.
fn temp_db(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "mxconform-{tag}-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("db.sqlite");
    (dir, db)
}

fn open_db(db: &std::path::Path) -> Store {
    Store::open(Some(db), crate::store::Durability::Process).unwrap()
}

/// Closes a state's database, as a stopping server does: the server holds its database
/// exclusively, so the next start can open it only then. What the state holds in memory
/// stays, to compare with what the next start reads back.
fn close_db(state: &mut State) {
    drop(std::mem::take(&mut state.store));
}

/// Every event the server makes, in every room version, is a PDU a remote server
/// accepts: signed by the server's key, its content hash and id right, its auth events
/// authorizing it; a v12 room's id is its create event's; a redacted event still
/// verifies; an event the rules refuse is not made.
#[test]
fn events_are_signed_authorized_pdus_in_every_room_version() {
    let key = SigningKey::generate(Some("t1")).unwrap();
    let verify = key.verify_key();
    let (dir, db) = temp_db("state");
    let open = || open_db(&db);
    let mut state = State::with_store("hs.test", key, open());
    let mut batch = Batch::default();
    let alice = "@alice:hs.test";
    for n in 1..=12 {
        let version = n.to_string();
        let v = RoomVersion::get(&version).unwrap();
        let mut create = json!({"room_version": version});
        if n < 11 {
            create["creator"] = json!(alice);
        }
        let room_id = state
            .create_room(&mut batch, &version, alice, create, false)
            .unwrap();
        let mut add = |kind: &str, key: Option<&str>, content: Value| {
            state
                .append(&mut batch, Append::new(&room_id, alice, kind, key, content))
                .map(|(_, id)| id)
        };
        add("m.room.member", Some(alice), json!({"membership": "join"})).unwrap();
        let mut pl = json!({"users": {}, "state_default": 50, "events_default": 0});
        if n < 12 {
            pl["users"][alice] = json!(100);
        }
        add("m.room.power_levels", Some(""), pl).unwrap();
        add(
            "m.room.join_rules",
            Some(""),
            json!({"join_rule": "invite"}),
        )
        .unwrap();
        let message = add(
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .unwrap();
        // Someone who is not in the room cannot send to it: the core's rules say so.
        let refused = state
            .append(
                &mut batch,
                Append::new(
                    &room_id,
                    "@mallory:hs.test",
                    "m.room.message",
                    None,
                    json!({"body": "x"}),
                ),
            )
            .unwrap_err();
        assert!(
            refused.message.contains("rejected by rule"),
            "v{n}: {}",
            refused.message
        );
        let mut redaction = Append::new(
            &room_id,
            alice,
            "m.room.redaction",
            None,
            json!({"redacts": message}),
        );
        redaction.redacts = Some(message.clone());
        state.append(&mut batch, redaction).unwrap();

        let room = state.rooms.get(&room_id).unwrap();
        assert_eq!(room.extremities.len(), 1);
        let events: Vec<Arc<Event>> = room
            .timeline
            .iter()
            .map(|p| state.event(*p).unwrap())
            .collect();
        let create = events[0].to_pdu(v).unwrap();
        if n >= 12 {
            assert_eq!(
                room_id,
                mxconform_pdu::hash::room_id_of_create(&create.event_id),
                "v{n}"
            );
        } else {
            assert!(room_id.ends_with(":hs.test"), "v{n}: {room_id}");
        }
        let mut known: HashMap<String, Pdu> = HashMap::new();
        let mut depth = 0;
        for ev in &events {
            let pdu = ev.to_pdu(v).unwrap();
            let keys = |server: &str, key_id: &str| {
                (server == "hs.test" && key_id == "ed25519:t1").then(|| (verify.clone(), i64::MAX))
            };
            let checked = mxconform_pdu::pdu::verify(v, &pdu, &keys);
            if ev.event_id == message {
                // Redacted: the signature holds, the content (and so its hash) is gone.
                assert_eq!(ev.content, json!({}), "v{n}");
                assert_eq!(
                    checked,
                    Err(mxconform_pdu::pdu::VerifyError::ContentHash),
                    "v{n}"
                );
            } else {
                checked.unwrap_or_else(|e| panic!("v{n} {}: {e}", ev.kind));
            }
            if let Some(id) = mxconform_pdu::hash::event_id(v, &pdu.json) {
                assert_eq!(id, ev.event_id, "v{n}: the id is the reference hash");
            }
            assert!(pdu.depth > depth, "v{n}: depth grows");
            depth = pdu.depth;
            let auth: Vec<Option<&Pdu>> = pdu.auth_events.iter().map(|a| known.get(a)).collect();
            assert!(
                auth.iter().all(Option::is_some),
                "v{n}: auth events are earlier events"
            );
            mxconform_pdu::auth::authorize_by_auth_events(
                v,
                &pdu,
                &auth,
                &|_| false,
                Some(&create),
                &|_| true,
            )
            .unwrap_or_else(|e| panic!("v{n} {}: {e}", ev.kind));
            known.insert(ev.event_id.clone(), pdu);
        }
    }
    // Committed, then read back by a new state on the same database: the same rooms,
    // extremities, state and events (redactions applied), without replaying history.
    state.store.commit(batch).unwrap();
    state.committed();
    close_db(&mut state);
    let store = open();
    let loaded = store.load().unwrap();
    let mut again = State::with_store("hs.test", SigningKey::generate(Some("t1")).unwrap(), store);
    again.restore(loaded).unwrap();
    assert_eq!(again.rooms.len(), 12);
    for (id, room) in &state.rooms {
        let r = &again.rooms[id];
        assert_eq!(r.extremities[0].event_id, room.extremities[0].event_id);
        assert!(r.state == room.state);
        assert_eq!(r.timeline, room.timeline);
        assert_eq!(r.state_log, room.state_log);
        for p in &room.timeline {
            let (a, b) = (state.event(*p).unwrap(), again.event(*p).unwrap());
            assert_eq!(a.event_id, b.event_id);
            assert_eq!(a.content, b.content);
            assert_eq!(a.redacted_by, b.redacted_by);
            assert_eq!(a.replaces, b.replaces);
            assert_eq!(again.event_pos(&a.event_id), Some(*p));
        }
    }
    assert_eq!(again.pos, state.pos);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cache stays within its bound: events evicted from it are read back from the
/// database, the same as written; uncommitted events are never evicted.
#[test]
fn events_are_read_back_through_a_bounded_cache() {
    let mut state = State::new("hs.test", SigningKey::generate(None).unwrap());
    state.cache = EventCache::new(16);
    let alice = "@alice:hs.test";
    let mut batch = Batch::default();
    let room_id = joined_room(&mut state, &mut batch, alice);
    let mut ids = Vec::new();
    for i in 0..100 {
        let (pos, id) = state
            .append(
                &mut batch,
                Append::new(
                    &room_id,
                    alice,
                    "m.room.message",
                    None,
                    json!({"body": i.to_string()}),
                ),
            )
            .unwrap();
        ids.push((pos, id));
    }
    // Nothing is committed yet: every event is still there.
    assert!(state.cache.len() >= 102, "{}", state.cache.len());
    assert_eq!(state.event_pos(&ids[0].1), Some(ids[0].0));
    state.store.commit(std::mem::take(&mut batch)).unwrap();
    state.committed();
    for (i, (pos, id)) in ids.iter().enumerate() {
        let e = state.event(*pos).unwrap();
        assert_eq!(&e.event_id, id);
        assert_eq!(e.content["body"], json!(i.to_string()));
        assert_eq!(state.event_pos(id), Some(*pos));
        assert!(state.cache.len() <= 32, "{}", state.cache.len());
    }
}

/// Identical create events in the same millisecond would be one room in version 12
/// (its id is the event's hash): each room is its own all the same.
#[test]
fn identical_rooms_made_at_once_are_distinct() {
    let mut state = State::new("hs.test", SigningKey::generate(None).unwrap());
    let mut batch = Batch::default();
    let mut ids = BTreeSet::new();
    for _ in 0..50 {
        let id = state
            .create_room(
                &mut batch,
                "12",
                "@a:hs.test",
                json!({"room_version": "12"}),
                false,
            )
            .unwrap();
        assert!(ids.insert(id));
    }
    state.store.commit(batch).unwrap();
}

#[test]
fn a_database_from_before_pdus_is_refused_with_the_reason() {
    let old = json!({"event_id": "$x", "room_id": "!r:hs.test", "sender": "@a:hs.test", "type": "m.room.create", "state_key": "", "content": {}});
    let err = Event::from_record(1, old, |_| None).unwrap_err();
    assert!(err.contains("before events were PDUs"), "{err}");
}

#[test]
fn base64() {
    assert_eq!(base64url(b""), "");
    assert_eq!(base64url(b"f"), "Zg");
    assert_eq!(base64url(b"fo"), "Zm8");
    assert_eq!(base64url(b"foo"), "Zm9v");
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    assert_eq!(random_token(32).len(), 43);
}

/// A database written before events were read from disk (schema version 1: events as bare
/// records) is migrated: the columns the server now looks events up by are filled from the
/// records (ids, the state event each replaced, the redaction of each redacted event), and the
/// rooms come back the same.
#[test]
fn a_version_1_database_is_migrated() {
    let key = SigningKey::generate(Some("m1")).unwrap();
    let mut state = State::new("hs.test", key.clone());
    let mut batch = Batch::default();
    let alice = "@alice:hs.test";
    let room_id = state
        .create_room(
            &mut batch,
            "10",
            alice,
            json!({"room_version": "10", "creator": alice}),
            false,
        )
        .unwrap();
    let mut add = |state: &mut State, kind: &str, key: Option<&str>, content: Value| {
        state
            .append(&mut batch, Append::new(&room_id, alice, kind, key, content))
            .unwrap()
    };
    add(
        &mut state,
        "m.room.member",
        Some(alice),
        json!({"membership": "join"}),
    );
    add(
        &mut state,
        "m.room.topic",
        Some(""),
        json!({"topic": "one"}),
    );
    let (topic2, _) = add(
        &mut state,
        "m.room.topic",
        Some(""),
        json!({"topic": "two"}),
    );
    let (_, message) = add(&mut state, "m.room.message", None, json!({"body": "hi"}));
    let mut redaction = Append::new(&room_id, alice, "m.room.redaction", None, json!({}));
    redaction.redacts = Some(message.clone());
    state.append(&mut batch, redaction).unwrap();

    let dir = std::env::temp_dir().join(format!(
        "mxconform-migrate-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("v1.sqlite");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE events (pos INTEGER PRIMARY KEY, room_id TEXT NOT NULL, json TEXT NOT NULL);
             CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID;
             CREATE TABLE media (media_id TEXT PRIMARY KEY, content_type TEXT, filename TEXT, data BLOB NOT NULL, created_ms INTEGER NOT NULL);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        for e in &batch.events {
            conn.execute(
                "INSERT INTO events (pos, room_id, json) VALUES (?1, ?2, ?3)",
                rusqlite::params![e.pos as i64, e.room_id, e.json],
            )
            .unwrap();
        }
    }
    let store = Store::open(Some(&db), crate::store::Durability::Process).unwrap();
    let loaded = store.load().unwrap();
    let mut again = State::with_store("hs.test", key, store);
    again.restore(loaded).unwrap();
    let (a, b) = (&state.rooms[&room_id], &again.rooms[&room_id]);
    assert_eq!(a.state, b.state);
    assert_eq!(a.timeline, b.timeline);
    assert_eq!(a.extremities[0].event_id, b.extremities[0].event_id);
    let topic = again.event(topic2).unwrap();
    assert!(
        topic.replaces.is_some(),
        "the second topic replaced the first"
    );
    let m = again.event_by_id(&message).unwrap();
    assert!(m.redacted_by.is_some());
    assert_eq!(m.content, json!({}));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A prepared event is recorded as prepared (same id: built and signed once); one prepared
/// before the room moved on is refused instead of forking the history.
#[test]
fn prepared_events_are_recorded_once_and_never_fork() {
    let mut state = State::new("hs.test", SigningKey::generate(None).unwrap());
    let mut batch = Batch::default();
    let alice = "@alice:hs.test";
    let room_id = joined_room(&mut state, &mut batch, alice);
    let msg = |body: &str| {
        Append::new(
            &room_id,
            alice,
            "m.room.message",
            None,
            json!({"body": body}),
        )
    };
    let p = state.prepare(msg("one")).unwrap();
    let (pos, id) = state.append_prepared(&mut batch, p).unwrap();
    assert_eq!(state.event(pos).unwrap().event_id, id);
    let stale = state.prepare(msg("two")).unwrap();
    state.append(&mut batch, msg("three")).unwrap();
    let err = state.append_prepared(&mut batch, stale).unwrap_err();
    assert_eq!(err.status, 500, "{err:?}");
    assert_eq!(state.rooms[&room_id].extremities.len(), 1);
}

/// Notifications are rows: after a restart a user's list is read from the database on first
/// use, the same as before.
#[test]
fn notifications_are_read_back_after_a_restart() {
    let (dir, db) = temp_db("notes");
    let open = || open_db(&db);
    let key = SigningKey::generate(None).unwrap();
    let mut state = State::with_store("hs.test", key.clone(), open());
    let mut batch = Batch::default();
    let (alice, bob) = ("@alice:hs.test", "@bob:hs.test");
    let room_id = state
        .create_room(
            &mut batch,
            "12",
            alice,
            json!({"room_version": "12"}),
            false,
        )
        .unwrap();
    let mut add =
        |state: &mut State, sender: &str, kind: &str, key: Option<&str>, content: Value| {
            state
                .append(
                    &mut batch,
                    Append::new(&room_id, sender, kind, key, content),
                )
                .unwrap()
        };
    add(
        &mut state,
        alice,
        "m.room.member",
        Some(alice),
        json!({"membership": "join"}),
    );
    add(
        &mut state,
        alice,
        "m.room.join_rules",
        Some(""),
        json!({"join_rule": "public"}),
    );
    add(
        &mut state,
        bob,
        "m.room.member",
        Some(bob),
        json!({"membership": "join"}),
    );
    for i in 0..5 {
        add(
            &mut state,
            alice,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": format!("m{i}")}),
        );
    }
    let before: Vec<_> = state.notifications(&state.rooms[&room_id], bob).to_vec();
    assert_eq!(before.len(), 5, "each message notifies bob");
    state.store.commit(batch).unwrap();
    close_db(&mut state);
    let store = open();
    let loaded = store.load().unwrap();
    let mut again = State::with_store("hs.test", key, store);
    again.restore(loaded).unwrap();
    let room = &again.rooms[&room_id];
    assert!(
        room.notifications.borrow().is_empty(),
        "nothing read at start"
    );
    assert_eq!(again.notifications(room, bob).to_vec(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Events of another server: a room joined with the state its resident server gave, events
/// it sends later checked against the auth rules (a forged one rejected with the rule it
/// breaks, one forked from before a ban soft-failed: kept out of the timeline and the state),
/// and all of it read back the same after a restart (the given state is state, not timeline).
#[test]
fn events_from_another_server_are_checked_and_kept_across_a_restart() {
    use mxconform_pdu::build::{build, NewEvent, Origin};
    let (dir, db) = temp_db("remote");
    let key = SigningKey::generate(None).unwrap();
    let remote_key = SigningKey::generate(None).unwrap();
    let remote = Origin {
        server_name: "remote.test",
        key: &remote_key,
    };
    let v = RoomVersion::get("10").unwrap();
    let room_id = "!far:remote.test";
    let (rita, bob, alice) = ("@rita:remote.test", "@bob:remote.test", "@alice:hs.test");
    // The resident server's history, as it would build it.
    let mut made: Vec<Pdu> = Vec::new();
    let mut current: HashMap<(String, String), Pdu> = HashMap::new();
    let mut make = |kind: &str,
                    sk: Option<&str>,
                    sender: &str,
                    content: Value,
                    prev: Option<&Pdu>,
                    origin: Origin<'_>,
                    current: &mut HashMap<(String, String), Pdu>| {
        let auth: HashMap<(String, String), &Pdu> =
            current.iter().map(|(k, p)| (k.clone(), p)).collect();
        let prev: Vec<&Pdu> = prev.into_iter().collect();
        let ts = 1_700_000_000_000 + made.len() as i64;
        let p = build(
            v,
            room_id,
            NewEvent::new(kind, sk, sender, content, ts),
            &prev,
            &auth,
            origin,
        )
        .unwrap();
        if let Some(k) = &p.state_key {
            current.insert((p.kind.clone(), k.clone()), p.clone());
        }
        made.push(p.clone());
        p
    };
    let create = make(
        "m.room.create",
        Some(""),
        rita,
        json!({"room_version": "10", "creator": rita}),
        None,
        remote,
        &mut current,
    );
    let rjoin = make(
        "m.room.member",
        Some(rita),
        rita,
        json!({"membership": "join"}),
        Some(&create),
        remote,
        &mut current,
    );
    let power = make(
        "m.room.power_levels",
        Some(""),
        rita,
        json!({"users": {rita: 100}}),
        Some(&rjoin),
        remote,
        &mut current,
    );
    let rules = make(
        "m.room.join_rules",
        Some(""),
        rita,
        json!({"join_rule": "public"}),
        Some(&power),
        remote,
        &mut current,
    );
    let topic = make(
        "m.room.topic",
        Some(""),
        rita,
        json!({"topic": "far away"}),
        Some(&rules),
        remote,
        &mut current,
    );
    let local = Origin {
        server_name: "hs.test",
        key: &key,
    };
    let join = make(
        "m.room.member",
        Some(alice),
        alice,
        json!({"membership": "join"}),
        Some(&topic),
        local,
        &mut current,
    );
    let given: Vec<Pdu> = vec![
        create.clone(),
        rjoin.clone(),
        power.clone(),
        rules.clone(),
        topic.clone(),
    ];

    let mut state = State::with_store("hs.test", key.clone(), open_db(&db));
    let mut batch = Batch::default();
    let join_pos = state
        .join_remote_room(&mut batch, v, room_id, given, Vec::new(), join.clone())
        .unwrap();
    {
        let room = &state.rooms[room_id];
        assert_eq!(
            room.timeline,
            vec![join_pos],
            "the given state is not timeline"
        );
        assert_eq!(room.membership(alice), Some("join"));
        assert_eq!(
            room.state_content("m.room.topic", "").unwrap()["topic"],
            "far away"
        );
    }
    // Later events of the resident server.
    let hello = make(
        "m.room.message",
        None,
        rita,
        json!({"msgtype": "m.text", "body": "hello"}),
        Some(&join),
        remote,
        &mut current,
    );
    assert!(matches!(
        state.receive_pdu(&mut batch, hello.clone(), true),
        Received::Accepted(_)
    ));
    assert_eq!(
        state.receive_pdu(&mut batch, hello.clone(), true),
        Received::Duplicate
    );
    // A message from someone who never joined: the rules refuse it, and say which.
    let forged = {
        let auth: HashMap<(String, String), &Pdu> =
            current.iter().map(|(k, p)| (k.clone(), p)).collect();
        build(
            v,
            room_id,
            NewEvent::new(
                "m.room.message",
                None,
                "@mallory:remote.test",
                json!({"body": "x"}),
                1_800_000_000_000,
            ),
            &[&hello],
            &auth,
            remote,
        )
        .unwrap()
    };
    match state.receive_pdu(&mut batch, forged.clone(), true) {
        Received::Rejected(why) => assert!(why.contains("rule"), "{why}"),
        other => panic!("a forged event was {other:?}"),
    }
    assert!(state.event_pos(&forged.event_id).is_none());
    // Bob joins, is banned; then a message of his forked from before the ban arrives.
    let bjoin = make(
        "m.room.member",
        Some(bob),
        bob,
        json!({"membership": "join"}),
        Some(&hello),
        remote,
        &mut current,
    );
    let before_ban = current.clone();
    let ban = make(
        "m.room.member",
        Some(bob),
        rita,
        json!({"membership": "ban"}),
        Some(&bjoin),
        remote,
        &mut current,
    );
    for p in [&bjoin, &ban] {
        assert!(matches!(
            state.receive_pdu(&mut batch, p.clone(), true),
            Received::Accepted(_)
        ));
    }
    let mut forked_state = before_ban;
    let late = make(
        "m.room.message",
        None,
        bob,
        json!({"msgtype": "m.text", "body": "still here"}),
        Some(&bjoin),
        remote,
        &mut forked_state,
    );
    assert!(matches!(
        state.receive_pdu(&mut batch, late.clone(), true),
        Received::SoftFailed(_)
    ));
    let late_pos = state
        .event_pos(&late.event_id)
        .expect("a soft-failed event is kept");
    assert!(
        !state.rooms[room_id].timeline.contains(&late_pos),
        "but not shown"
    );
    assert_eq!(state.rooms[room_id].membership(bob), Some("ban"));
    assert_eq!(
        state.rooms[room_id].extremities.len(),
        1,
        "nor an extremity"
    );

    // Two topics on two branches from the ban: the later clock's arrives first, the earlier
    // one on a fork after it. The stream would keep the last to arrive; resolution (same
    // mainline place, then the later timestamp applied last) keeps the later clock's.
    let mut branch_a = current.clone();
    let early = make(
        "m.room.topic",
        Some(""),
        rita,
        json!({"topic": "early clock"}),
        Some(&ban),
        remote,
        &mut branch_a,
    );
    let later = make(
        "m.room.topic",
        Some(""),
        rita,
        json!({"topic": "later clock"}),
        Some(&ban),
        remote,
        &mut current,
    );
    for p in [&later, &early] {
        assert!(matches!(
            state.receive_pdu(&mut batch, p.clone(), true),
            Received::Accepted(_)
        ));
    }
    {
        let room = &state.rooms[room_id];
        assert_eq!(room.extremities.len(), 2, "a fork");
        assert_eq!(
            room.state_content("m.room.topic", "").unwrap()["topic"],
            "later clock",
            "the resolved state, not the stream's last writer"
        );
        let early_pos = state.event_pos(&early.event_id).unwrap();
        let now = room.state_at(early_pos);
        assert_eq!(
            now.get(&("m.room.topic", "")),
            Some(&state.event_pos(&later.event_id).unwrap()),
            "the state log says so from the merge on"
        );
        assert_eq!(
            room.state_after(early_pos)
                .get(&("m.room.topic".to_string(), String::new())),
            Some(&early_pos),
            "the forking event's own state is its branch's"
        );
    }

    state.store.commit(batch).unwrap();
    state.committed();
    close_db(&mut state);
    let store = open_db(&db);
    let loaded = store.load().unwrap();
    let mut again = State::with_store("hs.test", key, store);
    again.restore(loaded).unwrap();
    let (a, b) = (&state.rooms[room_id], &again.rooms[room_id]);
    assert_eq!(a.timeline, b.timeline);
    assert!(a.state == b.state);
    assert_eq!(a.state_log, b.state_log);
    assert_eq!(a.branch_state, b.branch_state);
    assert_eq!(a.members, b.members);
    let ids = |r: &crate::state::Room| -> Vec<String> {
        r.extremities.iter().map(|e| e.event_id.clone()).collect()
    };
    assert_eq!(ids(a), ids(b));
    assert!(!b.timeline.contains(&late_pos));
    assert_eq!(
        again.event_by_id(&late.event_id).unwrap().content["body"],
        "still here"
    );
    assert_eq!(
        b.state_content("m.room.topic", "").unwrap()["topic"],
        "later clock"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn history_before_a_remote_join_is_backfilled_in_order_and_kept_across_a_restart() {
    use mxconform_pdu::build::{build, NewEvent, Origin};
    let (dir, db) = temp_db("backfill");
    let key = SigningKey::generate(None).unwrap();
    let remote_key = SigningKey::generate(None).unwrap();
    let remote = Origin {
        server_name: "remote.test",
        key: &remote_key,
    };
    let local = Origin {
        server_name: "hs.test",
        key: &key,
    };
    let v = RoomVersion::get("10").unwrap();
    let room_id = "!old:remote.test";
    let (rita, alice) = ("@rita:remote.test", "@alice:hs.test");
    // The resident server's room: its state, then two messages, then alice's join.
    let mut current: HashMap<(String, String), Pdu> = HashMap::new();
    let mut made: Vec<Pdu> = Vec::new();
    let mut make = |kind: &str, sk: Option<&str>, sender: &str, content: Value, origin| {
        let auth: HashMap<(String, String), &Pdu> =
            current.iter().map(|(k, p)| (k.clone(), p)).collect();
        let prev: Vec<&Pdu> = made.last().into_iter().collect();
        let ts = 1_700_000_000_000 + made.len() as i64;
        let p = build(
            v,
            room_id,
            NewEvent::new(kind, sk, sender, content, ts),
            &prev,
            &auth,
            origin,
        )
        .unwrap();
        if let Some(k) = &p.state_key {
            current.insert((p.kind.clone(), k.clone()), p.clone());
        }
        made.push(p.clone());
        p
    };
    let create = make(
        "m.room.create",
        Some(""),
        rita,
        json!({"room_version": "10", "creator": rita}),
        remote,
    );
    let rjoin = make(
        "m.room.member",
        Some(rita),
        rita,
        json!({"membership": "join"}),
        remote,
    );
    let power = make(
        "m.room.power_levels",
        Some(""),
        rita,
        json!({"users": {rita: 100}}),
        remote,
    );
    let rules = make(
        "m.room.join_rules",
        Some(""),
        rita,
        json!({"join_rule": "public"}),
        remote,
    );
    let one = make(
        "m.room.message",
        None,
        rita,
        json!({"msgtype": "m.text", "body": "one"}),
        remote,
    );
    let two = make(
        "m.room.message",
        None,
        rita,
        json!({"msgtype": "m.text", "body": "two"}),
        remote,
    );
    let join = make(
        "m.room.member",
        Some(alice),
        alice,
        json!({"membership": "join"}),
        local,
    );
    let given = vec![create.clone(), rjoin.clone(), power.clone(), rules.clone()];

    let mut state = State::with_store("hs.test", key.clone(), open_db(&db));
    let mut batch = Batch::default();
    let anchor = state
        .join_remote_room(&mut batch, v, room_id, given, Vec::new(), join.clone())
        .unwrap();
    assert_eq!(
        state.rooms[room_id].backward.get(&anchor),
        Some(&vec![two.event_id.clone()]),
        "the join's prev event is the hole to fill"
    );
    // The resident server's answer to /backfill: newest first, with an event nobody could
    // have authorized (a message of someone never joined), which is dropped.
    let forged = build(
        v,
        room_id,
        NewEvent::new(
            "m.room.message",
            None,
            "@mallory:remote.test",
            json!({"body": "x"}),
            1,
        ),
        &[&one],
        &HashMap::from([(("m.room.create".to_string(), String::new()), &create)]),
        remote,
    )
    .unwrap();
    let answer = vec![
        two.clone(),
        one.clone(),
        forged.clone(),
        rules,
        power,
        rjoin,
        create.clone(),
    ];
    let gained = state.keep_backfilled(&mut batch, room_id, anchor, answer);
    assert_eq!(
        gained, 6,
        "two messages and the four state events from the join"
    );
    let pos = |id: &str| state.event_pos(id).unwrap();
    {
        let room = &state.rooms[room_id];
        let order: Vec<u64> = made[..6].iter().map(|p| pos(&p.event_id)).collect();
        assert_eq!(
            room.backfilled[&anchor], order,
            "in the room's order, before the join"
        );
        assert!(
            room.backward.is_empty(),
            "the history reaches the create event: no hole"
        );
        assert_eq!(
            room.timeline,
            vec![anchor],
            "history is not the timeline (/sync)"
        );
        assert!(state.event_pos(&forged.event_id).is_none());
        assert_eq!(
            room.state_content("m.room.join_rules", "").unwrap()["join_rule"],
            "public",
            "the current state is unchanged"
        );
    }
    state.store.commit(batch).unwrap();
    state.committed();
    close_db(&mut state);
    let store = open_db(&db);
    let loaded = store.load().unwrap();
    let mut again = State::with_store("hs.test", key, store);
    again.restore(loaded).unwrap();
    let (a, b) = (&state.rooms[room_id], &again.rooms[room_id]);
    assert_eq!(a.timeline, b.timeline);
    assert_eq!(a.backfilled, b.backfilled);
    assert_eq!(a.backfilled_anchor, b.backfilled_anchor);
    assert_eq!(a.backward, b.backward);
    assert!(a.state == b.state);
    assert_eq!(
        again.event_by_id(&one.event_id).unwrap().content["body"],
        "one"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server holds its database exclusively: a second server started on the same file is
/// refused with the reason, instead of running beside the first with memory that no longer
/// matches the database; once the first has closed it, it opens.
#[test]
fn a_second_server_on_the_same_database_is_refused() {
    let (dir, db) = temp_db("exclusive");
    let first = open_db(&db);
    let second = Store::open(Some(&db), crate::store::Durability::Process);
    assert!(
        second
            .as_ref()
            .is_err_and(|e| e.contains("in use by another process")),
        "{:?}",
        second.err()
    );
    drop(first);
    assert!(Store::open(Some(&db), crate::store::Durability::Process).is_ok());
    let _ = std::fs::remove_dir_all(dir);
}
