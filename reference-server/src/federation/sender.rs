//! This server's events to the other servers of each room: one queue per destination,
//! delivered in order as transactions of at most 50 PDUs, one transaction in flight per
//! destination, retried with growing pauses (up to a minute) while a destination is down.
//! Each destination's progress is kept (`fed_acked`: the greatest position of this server's
//! events it accepted): after a restart, or a destination's outage across one, its queue is
//! rebuilt from the events since (the last `CATCH_UP` positions at most; older ones the
//! destination fetches when later events cite them). EDUs that must arrive (to-device
//! messages, device-list and signing-key updates) are kept (`fed_edu`) until a destination
//! accepts them; the others (typing, receipts, presence) live in memory only.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{json, Value};

use crate::state::now_ms;
use crate::Server;

/// The most PDUs and EDUs a transaction holds.
const TXN_PDUS: usize = 50;
const TXN_EDUS: usize = 100;
/// The most PDUs waiting for one destination; beyond, the oldest are dropped (the
/// destination fetches what it misses through the prev events of later ones).
const QUEUE_LIMIT: usize = 10_000;
/// How far back the stream is read at start-up for destinations that had not taken
/// everything.
const CATCH_UP: u64 = 10_000;

/// Whether an EDU must survive a restart until delivered.
pub fn durable(edu: &Value) -> bool {
    matches!(
        edu.get("edu_type").and_then(Value::as_str),
        Some("m.direct_to_device" | "m.device_list_update" | "m.signing_key_update")
    )
}

/// The serial part of transaction ids.
static TXN_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The queues of outgoing PDUs, by destination.
#[derive(Default)]
pub struct Sender {
    queues: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    /// The stream position up to which events were queued.
    cursor: Option<u64>,
    dests: HashMap<String, Dest>,
    /// Each destination's progress as kept (read at the first look).
    acked: HashMap<String, u64>,
    /// The stream position at the first look: destinations with no progress kept are sent
    /// only what comes after it.
    floor: u64,
}

#[derive(Default)]
struct Dest {
    /// PDUs with their positions (0: another server's PDU passed on).
    pending: VecDeque<(u64, Value)>,
    /// EDUs with their sequence numbers when kept until delivered.
    edus: VecDeque<(Option<u64>, Value)>,
    /// A delivery task is running for this destination.
    busy: bool,
}

impl Sender {
    /// Queues this server's events committed since the last look, for the servers of their
    /// rooms, and starts delivery where none runs.
    pub fn wake(&self, server: &Server) {
        let Some(shared) = server.shared() else {
            return;
        };
        let ours = server.config.server_name.clone();
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let (head, work) = server.read(|s| {
            let from = match q.cursor {
                Some(c) => c,
                None => {
                    // The first look: destinations behind catch up on the recent stream, and
                    // the EDUs kept undelivered go first.
                    let mut kept = s.undelivered_edus.clone();
                    kept.sort_by_key(|(_, seq, _)| *seq);
                    for (dest, seq, edu) in kept {
                        q.dests
                            .entry(dest)
                            .or_default()
                            .edus
                            .push_back((Some(seq), edu));
                    }
                    q.acked = s.federation_acked.clone();
                    q.floor = s.pos;
                    let behind = q.acked.values().copied().min().unwrap_or(s.pos);
                    behind.max(s.pos.saturating_sub(CATCH_UP)).min(s.pos)
                }
            };
            let mut work: Vec<(String, u64, Value)> = Vec::new();
            for pos in from + 1..=s.pos {
                let Some(ev) = s.event(pos) else { continue };
                if ev.sender.split_once(':').map(|(_, h)| h) != Some(ours.as_str()) {
                    continue;
                }
                let Some(v) = s.room_version_of(&ev.room_id) else {
                    continue;
                };
                let mut dests = s.servers_in_room(&ev.room_id);
                // The server of a user who is kicked or banned hears of it even when that user
                // was its last in the room (an invite reaches the invitee's server through
                // the invite request instead).
                let membership = ev
                    .content
                    .get("membership")
                    .and_then(serde_json::Value::as_str);
                if ev.kind == "m.room.member" && matches!(membership, Some("leave" | "ban")) {
                    if let Some(h) = ev.state_key.as_deref().and_then(|k| k.split_once(':')) {
                        dests.insert(h.1.to_string());
                    }
                }
                dests.remove(&ours);
                dests.retain(|d| pos > q.acked.get(d).copied().unwrap_or(q.floor));
                if dests.is_empty() {
                    continue;
                }
                let pdu = ev.pdu_json(v);
                for d in dests {
                    work.push((d, pos, pdu.clone()));
                }
            }
            (s.pos, work)
        });
        q.cursor = Some(head);
        // A destination sent something for the first time is kept as having taken what came
        // before it, so that a restart knows it is behind.
        let mut first_seen: Vec<(String, u64)> = Vec::new();
        for (dest, pos, _) in &work {
            if !q.acked.contains_key(dest) {
                q.acked.insert(dest.clone(), pos - 1);
                first_seen.push((dest.clone(), pos - 1));
            }
        }
        for (dest, pos, pdu) in work {
            let d = q.dests.entry(dest.clone()).or_default();
            d.pending.push_back((pos, pdu));
            while d.pending.len() > QUEUE_LIMIT {
                d.pending.pop_front();
            }
        }
        // Every destination with something waiting and no delivery running gets one.
        let mut start = Vec::new();
        for (dest, d) in q.dests.iter_mut() {
            if !d.busy && (!d.pending.is_empty() || !d.edus.is_empty()) {
                d.busy = true;
                start.push(dest.clone());
            }
        }
        drop(q);
        if !first_seen.is_empty() {
            let _ = server.write(|st, batch| {
                for (dest, pos) in &first_seen {
                    st.put_federation_acked(batch, dest, *pos);
                }
                Ok(())
            });
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            for dest in start {
                rt.spawn(deliver(Arc::downgrade(&shared), dest));
            }
        }
    }

    /// Queues another server's PDU for `dests` (a membership event this server took in
    /// through a handshake), and starts their deliveries.
    pub fn forward(&self, server: &Server, dests: Vec<String>, pdu: &Value) {
        {
            let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            for dest in dests {
                let d = q.dests.entry(dest).or_default();
                d.pending.push_back((0, pdu.clone()));
                while d.pending.len() > QUEUE_LIMIT {
                    d.pending.pop_front();
                }
            }
        }
        self.wake(server);
    }

    /// Queues EDUs, each for its destination with its sequence number when kept (delivered
    /// at the next [`Sender::wake`]).
    pub fn queue_edus(&self, edus: Vec<(String, Option<u64>, Value)>) {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for (dest, seq, edu) in edus {
            let d = q.dests.entry(dest).or_default();
            d.edus.push_back((seq, edu));
            while d.edus.len() > QUEUE_LIMIT {
                d.edus.pop_front();
            }
        }
    }

    /// No destination has anything waiting without a delivery running.
    pub fn idle(&self) -> bool {
        let q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        q.dests
            .values()
            .all(|d| d.busy || (d.pending.is_empty() && d.edus.is_empty()))
    }

    /// The next transaction's PDUs and EDUs for `dest` (taken off its queues), or `None` when
    /// it has none (the delivery task then ends).
    #[allow(clippy::type_complexity)]
    fn take(&self, dest: &str) -> Option<(Vec<(u64, Value)>, Vec<(Option<u64>, Value)>)> {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let d = q.dests.get_mut(dest)?;
        if d.pending.is_empty() && d.edus.is_empty() {
            d.busy = false;
            return None;
        }
        let n = d.pending.len().min(TXN_PDUS);
        let m = d.edus.len().min(TXN_EDUS);
        Some((d.pending.drain(..n).collect(), d.edus.drain(..m).collect()))
    }

    /// Puts back what a failed delivery held, ahead of the rest.
    fn put_back(&self, dest: &str, pdus: Vec<(u64, Value)>, edus: Vec<(Option<u64>, Value)>) {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let d = q.dests.entry(dest.to_string()).or_default();
        for p in pdus.into_iter().rev() {
            d.pending.push_front(p);
        }
        for e in edus.into_iter().rev() {
            d.edus.push_front(e);
        }
    }

    /// `dest` accepted this server's events up to `pos`.
    fn acked(&self, dest: &str, pos: u64) {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let a = q.acked.entry(dest.to_string()).or_default();
        *a = (*a).max(pos);
    }
}

/// Sends `dest` its queue, a transaction at a time, until it is empty.
async fn deliver(server: Weak<Server>, dest: String) {
    let mut pause = Duration::from_millis(500);
    loop {
        let Some(s) = server.upgrade() else { return };
        let Some(fed) = s.federation.as_ref() else {
            return;
        };
        let Some((pdus, edus)) = fed.sender.take(&dest) else {
            return;
        };
        let Some(key) = s.read(|st| st.signing_key.clone()) else {
            return;
        };
        // Unique for this server's life (a retry reuses it), and across restarts by the time.
        let serial = TXN_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let txn = format!("{}.{serial}", now_ms());
        let body = json!({
            "origin": s.config.server_name,
            "origin_server_ts": now_ms(),
            "pdus": pdus.iter().map(|(_, p)| p).collect::<Vec<_>>(),
            "edus": edus.iter().map(|(_, e)| e).collect::<Vec<_>>(),
        });
        let delivered: Vec<u64> = edus.iter().filter_map(|(seq, _)| *seq).collect();
        let last = pdus.iter().map(|(p, _)| *p).max().unwrap_or(0);
        let path = format!("/_matrix/federation/v1/send/{txn}");
        let sent = fed
            .client
            .request(
                &s.config.server_name,
                &key,
                &dest,
                "PUT",
                &path,
                Some(&body),
            )
            .await;
        match sent {
            Ok(a) if a.status == 200 => {
                pause = Duration::from_millis(500);
                if last > 0 {
                    fed.sender.acked(&dest, last);
                }
                if last > 0 || !delivered.is_empty() {
                    // Kept, so that a restart resumes after it (lost only with a crash in
                    // between: the events are then sent again, and the duplicates ignored).
                    let _ = s.write(|st, batch| {
                        if last > 0 {
                            st.put_federation_acked(batch, &dest, last);
                        }
                        for seq in &delivered {
                            batch.delete("fed_edu", format!("{dest}\u{0}{seq}"));
                        }
                        Ok(())
                    });
                }
            }
            failed => {
                let why = match &failed {
                    Ok(a) => format!("answered {}", a.status),
                    Err(e) => e.clone(),
                };
                tracing::warn!(
                    destination = %dest,
                    pdus = pdus.len(),
                    edus = edus.len(),
                    retry_in_ms = pause.as_millis() as u64,
                    "a federation transaction was not delivered ({why}); retrying"
                );
                fed.sender.put_back(&dest, pdus, edus);
                drop(s);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    }
}
