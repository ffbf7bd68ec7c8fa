//! What other servers say of rooms this server is not in: the federation hierarchy API, for
//! the client-server space hierarchy and room summaries.

use std::sync::Arc;

use serde_json::Value;

use crate::Server;

/// The federation hierarchy of `room_id` (the room's summary, its children's summaries and
/// those the asking server may not see) from the first of `servers` (then the room id's
/// server) that answers with one; `None` when none does.
pub async fn remote_hierarchy(
    server: &Arc<Server>,
    room_id: &str,
    servers: &[String],
    suggested_only: bool,
) -> Option<Value> {
    server.federation.as_ref()?;
    let path = format!(
        "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
        crate::router::percent_encode(room_id)
    );
    let ours = server.config.server_name.clone();
    for dest in super::joins::candidates(room_id, servers, &ours) {
        if let Ok(answer) = super::joins::ask(server, &dest, "GET", &path, None).await {
            let names_it = answer
                .get("room")
                .and_then(|r| r.get("room_id"))
                .and_then(Value::as_str)
                == Some(room_id);
            if names_it {
                return Some(answer);
            }
        }
    }
    None
}
