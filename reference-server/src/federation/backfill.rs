//! History from other servers: `/backfill` when /messages reaches a hole in a room's history
//! (before a remote join, or before the earliest event of a gap get_missing_events did not
//! close).

use std::sync::Arc;

use serde_json::Value;

use crate::error::ApiResult;
use crate::Server;

/// Asks the servers in the room, the anchor's own first, for the history before the timeline
/// event at `anchor` (about `want` events), and keeps the first answer that gains any. A
/// server that fails or gives nothing new is passed over; when none does, the hole stays and
/// the history simply ends there for now.
pub async fn backfill(
    server: Arc<Server>,
    room_id: String,
    anchor: u64,
    want: usize,
) -> ApiResult<()> {
    let Some(fed) = server.federation.as_ref() else {
        return Ok(());
    };
    let found = server.read(|s| {
        let room = s.rooms.get(&room_id)?;
        let missing = room.backward.get(&anchor)?.clone();
        let first = s
            .event(anchor)
            .and_then(|e| e.sender.split_once(':').map(|(_, h)| h.to_string()));
        let mut dests: Vec<String> = first.into_iter().collect();
        for d in s.servers_in_room(&room_id) {
            if !dests.contains(&d) {
                dests.push(d);
            }
        }
        dests.retain(|d| *d != s.server_name);
        Some((room.room_version(), missing, dests))
    });
    let Some((v, missing, dests)) = found else {
        return Ok(());
    };
    let mut path = format!(
        "/_matrix/federation/v1/backfill/{}?limit={}",
        crate::router::percent_encode(&room_id),
        want.clamp(20, 100)
    );
    for id in &missing {
        path.push_str("&v=");
        path.push_str(&crate::router::percent_encode(id));
    }
    for dest in dests {
        let Ok(mut answer) = super::joins::ask(&server, &dest, "GET", &path, None).await else {
            continue;
        };
        let Some(Value::Array(raw)) = answer.get_mut("pdus").map(Value::take) else {
            continue;
        };
        // Signatures checked (a forged event is dropped; one whose hash fails kept redacted).
        let pdus = fed
            .verify_many(&server, v, raw)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        let gained =
            server.write(|s, batch| Ok(s.keep_backfilled(batch, &room_id, anchor, pdus)))?;
        if gained > 0 {
            break;
        }
    }
    Ok(())
}
