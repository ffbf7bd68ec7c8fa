//! Push notifications to the push gateways of users' HTTP pushers (the push-gateway API's
//! `POST /_matrix/push/v1/notify`).
//!
//! One task follows the event stream from where it last was (kept in the database, so a
//! restart neither repeats nor skips). For each new event a user was notified of (the
//! notification rows the push rules made when the event arrived), each of the user's `http`
//! pushers gets a notification, built under the state lock and sent outside it by the
//! pusher's own worker: in order, at most [`QUEUE`] waiting (more are dropped with a warning),
//! each retried up to [`ATTEMPTS`] times with a growing pause while the gateway is down or
//! failing. A gateway that rejects a push key has that pusher removed, as the spec asks.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::state::{Room, State};
use crate::Server;

/// How many stream positions one pass reads.
const SCAN_WINDOW: u64 = 1000;
/// Notifications waiting per pusher; beyond, new ones are dropped (with a warning).
const QUEUE: usize = 100;
/// Attempts per notification before it is given up.
const ATTEMPTS: u32 = 5;
/// How long a gateway may take to answer.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(10);
/// A pusher's worker that has had nothing to send this long ends (a new one starts when
/// needed).
const WORKER_IDLE: Duration = Duration::from_secs(300);

/// A pusher: its user, app id and push key.
type PusherKey = (String, String, String);

/// One notification for one pusher: where it goes and what it says.
struct Job {
    url: String,
    body: Value,
}

/// Follows the stream and hands notifications to the pushers' workers, until the server is
/// gone.
pub async fn deliver(server: Weak<Server>) {
    let mut changes = match server.upgrade() {
        Some(s) => {
            // Pushers hear of what happens from the first start on, not of the history
            // before.
            let started = s.write(|state, batch| {
                if state.push_pos.is_none() {
                    let head = state.pos;
                    state.put_push_pos(batch, head);
                }
                Ok(())
            });
            if started.is_err() {
                return;
            }
            s.subscribe()
        }
        None => return,
    };
    let mut workers: HashMap<PusherKey, mpsc::Sender<Job>> = HashMap::new();
    loop {
        let Some(srv) = server.upgrade() else { return };
        changes.borrow_and_update();
        let (from, head, at_end, jobs) = srv.read(|s| {
            let from = s.push_pos.unwrap_or(s.pos);
            let head = s.pos.min(from + SCAN_WINDOW);
            let jobs = if has_http(s) {
                (from + 1..=head)
                    .flat_map(|p| notifications_at(s, p))
                    .collect()
            } else {
                Vec::new()
            };
            (from, head, head == s.pos, jobs)
        });
        for (key, job) in jobs {
            hand_over(&srv, &mut workers, key, job);
        }
        if head > from {
            // Without HTTP pushers the position only moves in memory (no commit per event);
            // adding a pusher writes it down first (`State::put_pusher`), so a restart never
            // sends a new pusher what happened before it.
            let moved = srv.write(|state, batch| {
                if has_http(state) {
                    state.put_push_pos(batch, head);
                } else {
                    state.push_pos = Some(head);
                }
                Ok(())
            });
            if moved.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        workers.retain(|_, w| !w.is_closed());
        drop(srv);
        if at_end {
            let _ = tokio::time::timeout(Duration::from_secs(30), changes.changed()).await;
        }
    }
}

/// Whether any user has an HTTP pusher.
fn has_http(state: &State) -> bool {
    state.pushers.values().any(|p| p.values().any(is_http))
}

fn is_http(pusher: &Value) -> bool {
    pusher.get("kind").and_then(Value::as_str) == Some("http")
}

/// Gives `job` to its pusher's worker, starting one if it has none.
fn hand_over(
    server: &Arc<Server>,
    workers: &mut HashMap<PusherKey, mpsc::Sender<Job>>,
    key: PusherKey,
    job: Job,
) {
    let job = match workers.get(&key) {
        None => job,
        Some(w) => match w.try_send(job) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(job)) => job,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    user = %key.0,
                    app_id = %key.1,
                    "push gateway behind: {QUEUE} notifications waiting, one dropped"
                );
                return;
            }
        },
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let _ = tx.try_send(job);
    tokio::spawn(work(Arc::downgrade(server), key.clone(), rx));
    workers.insert(key, tx);
}

/// A pusher's worker: sends its notifications in order, retrying each while the gateway
/// fails, and removes the pusher when the gateway rejects its push key.
async fn work(server: Weak<Server>, key: PusherKey, mut jobs: mpsc::Receiver<Job>) {
    while let Ok(Some(job)) = tokio::time::timeout(WORKER_IDLE, jobs.recv()).await {
        let mut pause = Duration::from_secs(1);
        for attempt in 1..=ATTEMPTS {
            let Some(srv) = server.upgrade() else { return };
            let answer = srv
                .outbound
                .public
                .request(
                    "POST",
                    &job.url,
                    &[],
                    Some(&job.body),
                    GATEWAY_TIMEOUT,
                    1 << 16,
                )
                .await;
            let retry = match answer {
                Ok(a) if (200..300).contains(&a.status) => {
                    let rejected: Vec<String> = serde_json::from_slice::<Value>(&a.body)
                        .ok()
                        .and_then(|v| v.get("rejected").cloned())
                        .and_then(|r| serde_json::from_value(r).ok())
                        .unwrap_or_default();
                    if rejected.contains(&key.2) {
                        let removed = srv.write(|state, batch| {
                            state.put_pusher(batch, &key.0, &(key.1.clone(), key.2.clone()), None);
                            Ok(())
                        });
                        if removed.is_ok() {
                            tracing::info!(user = %key.0, app_id = %key.1, "the push gateway rejected the push key: pusher removed");
                        }
                        return;
                    }
                    false
                }
                // The gateway refuses this notification for good (not a passing trouble).
                Ok(a) if (400..500).contains(&a.status) && a.status != 429 => {
                    tracing::warn!(user = %key.0, url = %job.url, status = a.status, "the push gateway refused a notification");
                    false
                }
                Ok(a) => {
                    tracing::warn!(user = %key.0, url = %job.url, status = a.status, attempt, "push gateway failed; retrying in {pause:?}");
                    true
                }
                Err(e) => {
                    tracing::warn!(user = %key.0, url = %job.url, attempt, "push gateway unreachable ({e}); retrying in {pause:?}");
                    true
                }
            };
            drop(srv);
            if !retry {
                break;
            }
            if attempt == ATTEMPTS {
                tracing::warn!(user = %key.0, url = %job.url, "a notification given up after {ATTEMPTS} attempts");
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(60));
        }
    }
}

/// The notifications the event at `pos` gives the `http` pushers of the users it notified.
fn notifications_at(s: &State, pos: u64) -> Vec<(PusherKey, Job)> {
    let Some(ev) = s.event(pos) else {
        return Vec::new();
    };
    let Some(room) = s.rooms.get(&ev.room_id) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (user, pushers) in &s.pushers {
        if user == &ev.sender || !pushers.values().any(is_http) {
            continue;
        }
        let Ok(Some(actions)) = s.store.notification_actions(user, &ev.room_id, pos) else {
            continue;
        };
        for ((app_id, pushkey), pusher) in pushers.iter().filter(|(_, p)| is_http(p)) {
            let Some(url) = pusher.pointer("/data/url").and_then(Value::as_str) else {
                continue;
            };
            let body = notification(s, room, &ev, user, &actions, pusher);
            out.push((
                (user.clone(), app_id.clone(), pushkey.clone()),
                Job {
                    url: url.to_string(),
                    body,
                },
            ));
        }
    }
    out
}

/// The body of a `notify` request for one pusher.
fn notification(
    s: &State,
    room: &Room,
    ev: &crate::state::Event,
    user: &str,
    actions: &Value,
    pusher: &Value,
) -> Value {
    let tweaks: Map<String, Value> = actions
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let name = a.get("set_tweak")?.as_str()?;
            // `highlight` without a value means true.
            let value = a.get("value").cloned().unwrap_or(Value::Bool(true));
            Some((name.to_string(), value))
        })
        .collect();
    let high = ev.kind == "m.room.encrypted"
        || tweaks.get("highlight").and_then(Value::as_bool) == Some(true)
        || tweaks.contains_key("sound");
    let mut data = pusher.get("data").cloned().unwrap_or_else(|| json!({}));
    if let Some(d) = data.as_object_mut() {
        d.remove("url");
    }
    let mut device = json!({
        "app_id": pusher.get("app_id").cloned().unwrap_or(Value::Null),
        "pushkey": pusher.get("pushkey").cloned().unwrap_or(Value::Null),
        "data": data,
        "tweaks": tweaks,
    });
    if let Some(ts) = pusher.get("pushkey_ts") {
        device["pushkey_ts"] = ts.clone();
    }
    // The unread count over every room the user is in.
    let unread: usize = s
        .user_rooms
        .get(user)
        .into_iter()
        .flatten()
        .filter_map(|r| s.rooms.get(r))
        .filter(|r| r.membership(user) == Some("join"))
        .map(|r| s.unread(r, user).0)
        .sum();
    let mut n = json!({
        "event_id": ev.event_id,
        "room_id": ev.room_id,
        "prio": if high { "high" } else { "low" },
        "counts": {"unread": unread},
        "devices": [device],
    });
    let event_id_only =
        pusher.pointer("/data/format").and_then(Value::as_str) == Some("event_id_only");
    if !event_id_only {
        n["type"] = json!(ev.kind);
        n["sender"] = json!(ev.sender);
        n["content"] = ev.content.clone();
        if let Some(name) = room
            .state_content("m.room.member", &ev.sender)
            .and_then(|c| c.get("displayname"))
            .and_then(Value::as_str)
        {
            n["sender_display_name"] = json!(name);
        }
        if let Some(name) = room
            .state_content("m.room.name", "")
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            n["room_name"] = json!(name);
        }
        if let Some(alias) = room
            .state_content("m.room.canonical_alias", "")
            .and_then(|c| c.get("alias"))
            .and_then(Value::as_str)
        {
            n["room_alias"] = json!(alias);
        }
        if ev.kind == "m.room.member" {
            n["user_is_target"] = json!(ev.state_key.as_deref() == Some(user));
        }
    }
    json!({ "notification": n })
}
