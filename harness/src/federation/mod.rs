//! Federation: the harness plays remote homeservers against the server under test. `tls`
//! makes the certificates, `client` sends signed requests to the server under test and
//! validates its answers, `fake` is a fake homeserver that checks everything sent to it, and
//! `room` is a fake server's view of a room. The steps that drive them are here: joining a
//! room of the server under test, sending it events, calling any server-server operation, and
//! waiting for what it sends.

pub mod client;
pub mod fake;
pub mod room;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use mxconform_pdu::build::{NewEvent, Origin};
use mxconform_pdu::{Pdu, RoomVersion};
use serde::Deserialize;
use serde_json::{json, Value};

use client::FedClient;
use fake::{check_pdu, now_ms, Shared};
use room::RoomView;

/// The profile's `[federation]`: where the harness reaches the server under test's federation
/// API, its server name, and the certificate authority it trusts for the fake servers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// `http://127.0.0.1:18008`: the server's federation listener (the harness needs no
    /// discovery to reach it).
    pub base_url: String,
    pub server_name: String,
    /// The folder with the authority (`ca.pem`, `ca.key`; made there if absent), relative to
    /// the profile's folder. The server under test must trust `ca.pem` for outbound federation
    /// (Synapse: `federation_custom_ca_list`), or not verify certificates.
    pub authority: PathBuf,
    /// Schema violations of this server's federation answers that are known and listed, so
    /// that one wrong field does not stop every scenario that goes through the operation.
    /// Each still fails the scenario that checks that field itself (listed as a deviation).
    #[serde(default)]
    pub schema_deviations: Vec<SchemaDeviation>,
}

/// A known schema violation: in `operation`'s answers, at `at`, a message containing
/// `message`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaDeviation {
    pub operation: String,
    pub at: String,
    pub message: String,
    pub reason: String,
    pub spec: String,
}

/// Everything federation scenarios of a run share.
#[derive(Debug)]
pub struct Federation {
    pub client: Arc<FedClient>,
    pub authority: tls::Authority,
}

impl Federation {
    pub fn new(
        config: &FederationConfig,
        profile_dir: &std::path::Path,
    ) -> Result<Federation, String> {
        let dir = if config.authority.is_absolute() {
            config.authority.clone()
        } else {
            profile_dir.join(&config.authority)
        };
        Ok(Federation {
            client: Arc::new(FedClient::new(
                client::Target {
                    base_url: config.base_url.trim_end_matches('/').to_string(),
                    server_name: config.server_name.clone(),
                },
                config.schema_deviations.clone(),
            )?),
            authority: tls::Authority::load_or_create(&dir)?,
        })
    }
}

static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A fresh transaction id.
fn txn_id() -> String {
    format!(
        "mxc{}-{}-{}",
        now_ms(),
        std::process::id(),
        TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Joins `user` (of the fake server) to `room_id` of the server under test: make_join, the
/// template signed by the fake server, send_join v2; every event of the answer is checked.
/// Returns the join event's id and the room's version.
pub async fn join(shared: &Shared, user: &str, room_id: &str) -> Result<(String, String), String> {
    let versions: Vec<String> = mxconform_pdu::version::ALL
        .iter()
        .map(|v| format!("ver={}", v.id))
        .collect();
    let path = format!(
        "/_matrix/federation/v1/make_join/{}/{}?{}",
        crate::client::encode_segment(room_id),
        crate::client::encode_segment(user),
        versions.join("&")
    );
    let made = shared
        .client
        .request(
            &shared.name,
            &shared.key,
            client::route("makeJoin"),
            "GET",
            &path,
            None,
        )
        .await?;
    if made.status != 200 {
        return Err(format!("make_join answered {}: {}", made.status, made.body));
    }
    let version_id = made
        .body
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or("1")
        .to_string();
    let v = RoomVersion::get(&version_id)
        .ok_or_else(|| format!("make_join gave room version {version_id:?}, not one of 1-12"))?;
    let mut event = made
        .body
        .get("event")
        .cloned()
        .ok_or("make_join gave no event")?;
    if !event.is_object() {
        return Err("make_join's event is not an object".into());
    }
    event["origin_server_ts"] = json!(now_ms());
    if v.event_ids == mxconform_pdu::version::EventIdFormat::Opaque {
        event["event_id"] = json!(format!("$join{}:{}", now_ms(), shared.name));
    }
    let origin = Origin {
        server_name: &shared.name,
        key: &shared.key,
    };
    mxconform_pdu::build::hash_and_sign(v, &mut event, origin);
    let join = Pdu::from_json(v, event.clone()).map_err(|e| format!("our join event: {e}"))?;
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        crate::client::encode_segment(room_id),
        crate::client::encode_segment(&join.event_id)
    );
    let sent = shared
        .client
        .request(
            &shared.name,
            &shared.key,
            client::route("sendJoinV2"),
            "PUT",
            &path,
            Some(&event),
        )
        .await?;
    if sent.status != 200 {
        return Err(format!("send_join answered {}: {}", sent.status, sent.body));
    }
    // Every event of the answer passes the checks on receipt.
    let mut state = Vec::new();
    let mut chain = Vec::new();
    for (field, into) in [("state", &mut state), ("auth_chain", &mut chain)] {
        for e in sent
            .body
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            into.push(
                check_pdu(shared, v, e).await.map_err(|why| {
                    format!("send_join's {field} holds an event that fails: {why}")
                })?,
            );
        }
    }
    let mut room = RoomView::from_join(v, room_id, state, chain, join.clone());
    // The state and auth chain are checked by their own auth events (the state before them
    // is not known to a joining server); our join by the state the server gave.
    let problems: Vec<String> = room
        .events
        .values()
        .filter(|e| e.event_id != join.event_id)
        .filter_map(|e| room.authorize_by_auth_events(e).err())
        .collect();
    if !problems.is_empty() {
        return Err(format!(
            "send_join's answer holds events their auth events do not allow: {}",
            problems.join("; ")
        ));
    }
    room.authorize(&join)
        .map_err(|e| format!("our join, by the state the server gave: {e}"))?;
    room.rejected.clear();
    if let Ok(mut rooms) = shared.rooms.lock() {
        rooms.insert(room_id.to_string(), room);
    }
    Ok((join.event_id, version_id))
}

/// Builds an event as the fake server and sends it to the server under test in a
/// transaction. `tamper` changes the signed event before it is sent (for negative tests).
/// Returns the event id and the server's result for it (`{}` when accepted).
pub async fn send_event(
    shared: &Shared,
    room_id: &str,
    new: NewEvent,
    tamper: Option<&Value>,
) -> Result<(String, Value), String> {
    let origin = Origin {
        server_name: &shared.name,
        key: &shared.key,
    };
    let (pdu, version) = {
        let rooms = shared.rooms.lock().map_err(|_| "room lock")?;
        let room = rooms
            .get(room_id)
            .ok_or_else(|| format!("the fake server is not in {room_id}"))?;
        (room.build(new, origin)?, room.version)
    };
    let mut json = pdu.json.clone();
    if let Some(Value::Object(changes)) = tamper {
        for (k, v) in changes {
            let target = if k.starts_with('/') {
                json.pointer_mut(k)
            } else {
                json.get_mut(k)
            };
            match target {
                Some(t) => *t = v.clone(),
                None => {
                    if let Some(m) = json.as_object_mut() {
                        m.insert(k.trim_start_matches('/').to_string(), v.clone());
                    }
                }
            }
        }
    }
    let event_id = mxconform_pdu::hash::event_id(version, &json).unwrap_or(pdu.event_id.clone());
    if tamper.is_none() {
        let mut rooms = shared.rooms.lock().map_err(|_| "room lock")?;
        if let Some(room) = rooms.get_mut(room_id) {
            room.add(pdu)?;
        }
    }
    let body = json!({
        "origin": shared.name,
        "origin_server_ts": now_ms(),
        "pdus": [json],
        "edus": [],
    });
    let path = format!("/_matrix/federation/v1/send/{}", txn_id());
    let sent = shared
        .client
        .request(
            &shared.name,
            &shared.key,
            client::route("sendTransaction"),
            "PUT",
            &path,
            Some(&body),
        )
        .await?;
    if sent.status != 200 {
        return Err(format!("/send answered {}: {}", sent.status, sent.body));
    }
    let result = sent
        .body
        .get("pdus")
        .and_then(|p| p.get(&event_id))
        .cloned()
        .unwrap_or(Value::Null);
    Ok((event_id, result))
}
