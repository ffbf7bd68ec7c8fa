//! `mxconform bench federation`: the reference server against Synapse as other homeservers see
//! them, in the same run, played by the harness's fake servers (which check every request and
//! PDU they are sent, for both servers alike):
//! - inbound `/send`: transactions of 50 PDUs (a chain of messages in a room the fake server
//!   joined), sent one after another; PDUs per second, every check on receipt included;
//! - a remote join of a room with 1,000 members that a fake server hosts: time from the
//!   client's `/join` to its answer (send_join's state and auth chain checked by the server);
//! - a message's delivery to 10 remote servers: time from the client's send until all 10 fake
//!   servers have received the PDU.
//!
//! Every loop is bounded in count and time; all traffic is on 127.0.0.1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mxconform_harness::federation::client::{FedClient, Target as FedTarget};
use mxconform_harness::federation::fake::{Fake, Received, Shared};
use mxconform_harness::federation::room::RoomView;
use mxconform_harness::federation::tls::Authority;
use mxconform_harness::federation::{self as fed, Overrides};
use mxconform_pdu::build::{NewEvent, Origin};
use serde_json::{json, Value};

use crate::bench::Row;
use crate::bench_server::{ms, Target};

/// A server under test as other servers reach it.
pub struct Server {
    pub cs: Target,
    /// Its federation API's URL and server name.
    pub federation_url: String,
    pub server_name: String,
    /// The authority its certificate trust extends to (it issues the fake servers').
    pub authority: Authority,
    /// Its known schema deviations in federation answers (the profile's).
    pub tolerated: Vec<mxconform_harness::federation::SchemaDeviation>,
}

/// Measurements of one server.
#[derive(Clone, Default)]
pub struct Figures {
    pub inbound_pdus: usize,
    pub inbound_elapsed: Duration,
    pub join_members: usize,
    pub joins: Vec<Duration>,
    pub deliveries: Vec<Duration>,
    pub servers: usize,
    /// What the fake servers found wrong in what the server sent them (reported, not fatal).
    pub violations: Vec<String>,
}

impl Figures {
    fn pdus_per_s(&self) -> f64 {
        self.inbound_pdus as f64 / self.inbound_elapsed.as_secs_f64().max(1e-9)
    }
}

const PDUS_PER_TXN: usize = 50;
const MAX_TXNS: usize = 40;
const JOIN_MEMBERS: usize = 1000;
const MAX_JOINS: usize = 3;
const REMOTE_SERVERS: usize = 10;
const MAX_DELIVERIES: usize = 30;

/// The `p` quantile of some timings (sorted here).
fn quantile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    crate::bench_server::pct(&v, p)
}

async fn fake(server: &Server, client: &Arc<FedClient>) -> Result<Fake> {
    Fake::start(&server.authority, client.clone(), None)
        .await
        .map_err(|e| anyhow!("starting a fake server: {e}"))
}

/// A public room on the server under test, created by a new user; returns (token, room id).
async fn public_room(server: &Server, user: &str) -> Result<(String, String)> {
    let (token, _) = server.cs.user(user).await?;
    let room = server
        .cs
        .create_room(&token, json!({"preset": "public_chat"}))
        .await?;
    Ok((token, room))
}

pub async fn measure(server: &Server, tag: &str, budget: Duration) -> Result<Figures> {
    let client = Arc::new(
        FedClient::new(
            FedTarget {
                base_url: server.federation_url.trim_end_matches('/').to_string(),
                server_name: server.server_name.clone(),
            },
            server.tolerated.clone(),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let mut f = Figures {
        join_members: JOIN_MEMBERS,
        servers: REMOTE_SERVERS,
        ..Figures::default()
    };
    let mut fakes = Vec::new();

    // Inbound /send: a fake server joins a public room and sends chains of messages.
    {
        let sender = fake(server, &client).await?;
        let (_, room) = public_room(server, &format!("fedbench-{tag}-a")).await?;
        let user = format!("@sender:{}", sender.shared.name);
        fed::join(&sender.shared, &user, &room)
            .await
            .map_err(|e| anyhow!("the fake server's join: {e}"))?;
        // The transactions are made first, so that only the server's work is timed.
        let mut txns = Vec::new();
        for t in 0..MAX_TXNS {
            let mut ids = Vec::new();
            for n in 0..PDUS_PER_TXN {
                let new = NewEvent::new(
                    "m.room.message",
                    None,
                    &user,
                    json!({"msgtype": "m.text", "body": format!("message {t}.{n}")}),
                    fed::fake::now_ms(),
                );
                let hold = Overrides {
                    hold: true,
                    ..Overrides::default()
                };
                let (id, _) = fed::send_event(&sender.shared, &room, new, &hold, 0)
                    .await
                    .map_err(|e| anyhow!("building a message: {e}"))?;
                ids.push(id);
            }
            txns.push(ids);
        }
        let started = Instant::now();
        for ids in &txns {
            let (status, body) = fed::send_transaction(&sender.shared, ids, Vec::new())
                .await
                .map_err(|e| anyhow!("/send: {e}"))?;
            if status != 200 {
                bail!("{}: /send answered {status}: {body}", server.cs.name);
            }
            if let Some((id, r)) = body
                .get("pdus")
                .and_then(Value::as_object)
                .and_then(|p| p.iter().find(|(_, r)| r.get("error").is_some()))
            {
                bail!("{}: /send refused {id}: {r}", server.cs.name);
            }
            f.inbound_pdus += ids.len();
            if started.elapsed() > budget {
                break;
            }
        }
        f.inbound_elapsed = started.elapsed();
        // Every message arrived: the last is readable by a member of the room.
        fakes.push(sender);
    }

    // A remote join of a room with 1,000 members hosted by a fake server.
    {
        let host = fake(server, &client).await?;
        let (token, _) = server.cs.user(&format!("fedbench-{tag}-j")).await?;
        let started = Instant::now();
        for _ in 0..MAX_JOINS {
            let room_id = big_room(&host.shared)?;
            let t = Instant::now();
            server
                .cs
                .req(
                    "POST",
                    &format!(
                        "/_matrix/client/v3/join/{}",
                        mxconform_harness::client::encode_segment(&room_id)
                    ),
                    Some(json!({})),
                    Some(&token),
                    &[("server_name".into(), host.shared.name.clone())],
                )
                .await
                .context("joining the room of 1,000 members")?;
            f.joins.push(t.elapsed());
            // Joined means the server holds the room's members.
            let members = server
                .cs
                .req(
                    "GET",
                    &format!(
                        "/_matrix/client/v3/rooms/{}/joined_members",
                        mxconform_harness::client::encode_segment(&room_id)
                    ),
                    None,
                    Some(&token),
                    &[],
                )
                .await?;
            let n = members["joined"].as_object().map_or(0, |m| m.len());
            if n < JOIN_MEMBERS {
                bail!(
                    "{}: after joining, the room shows {n} members, not {}",
                    server.cs.name,
                    JOIN_MEMBERS + 1
                );
            }
            if started.elapsed() > budget * 3 {
                break;
            }
        }
        fakes.push(host);
    }

    // A message's delivery to 10 remote servers.
    {
        let (token, room) = public_room(server, &format!("fedbench-{tag}-d")).await?;
        let mut remotes = Vec::new();
        for _ in 0..REMOTE_SERVERS {
            remotes.push(fake(server, &client).await?);
        }
        // Each knows the others' keys (their joins are in the state the next one is sent).
        let keys: Vec<_> = remotes
            .iter()
            .map(|r| (r.shared.name.clone(), r.shared.key.verify_key()))
            .collect();
        for r in &remotes {
            r.shared
                .peers
                .lock()
                .map_err(|_| anyhow!("peers lock"))?
                .extend(keys.iter().cloned());
        }
        for (n, r) in remotes.iter().enumerate() {
            fed::join(&r.shared, &format!("@member{n}:{}", r.shared.name), &room)
                .await
                .map_err(|e| anyhow!("remote server {n}'s join: {e}"))?;
        }
        // Let the joins' own traffic settle before timing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        for n in 0..MAX_DELIVERIES {
            let marks: Vec<usize> = remotes.iter().map(|r| r.shared.inbox.len()).collect();
            let t = Instant::now();
            let path = format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/fedbench{n}",
                mxconform_harness::client::encode_segment(&room)
            );
            let sent = server
                .cs
                .req(
                    "PUT",
                    &path,
                    Some(json!({"msgtype": "m.text", "body": format!("delivery {n}")})),
                    Some(&token),
                    &[],
                )
                .await?;
            let id = sent["event_id"].as_str().context("event id")?.to_string();
            for (r, from) in remotes.iter().zip(marks) {
                arrival(&r.shared, from, &id).await.with_context(|| {
                    format!("{}: delivery to {}", server.cs.name, r.shared.name)
                })?;
            }
            f.deliveries.push(t.elapsed());
            if started.elapsed() > budget {
                break;
            }
        }
        fakes.extend(remotes);
    }
    for fk in &fakes {
        f.violations.extend(fk.shared.inbox.violations());
    }
    Ok(f)
}

/// Waits (at most 30 s) until the fake server has received the PDU `id`.
async fn arrival(shared: &Shared, from: usize, id: &str) -> Result<()> {
    shared
        .inbox
        .wait_for(from, Duration::from_secs(30), |r| {
            matches!(r, Received::Pdu { pdu, .. } if pdu.get("event_id").and_then(Value::as_str) == Some(id))
        })
        .await
        .map(|_| ())
        .ok_or_else(|| anyhow!("{id} did not arrive within 30 s"))
}

/// A public room of version 12 that `host` creates, with 1,000 of its users joined.
fn big_room(host: &Shared) -> Result<String> {
    let origin = Origin {
        server_name: &host.name,
        key: &host.key,
    };
    let ts = fed::fake::now_ms();
    let creator = format!("@creator:{}", host.name);
    let mut state = vec![NewEvent::new(
        "m.room.join_rules",
        Some(""),
        &creator,
        json!({"join_rule": "public"}),
        ts,
    )];
    for n in 1..JOIN_MEMBERS {
        let user = format!("@m{n}:{}", host.name);
        state.push(NewEvent::new(
            "m.room.member",
            Some(&user),
            &user,
            json!({"membership": "join"}),
            ts,
        ));
    }
    let version = mxconform_pdu::RoomVersion::get("12").context("room version 12")?;
    let room = RoomView::create(version, origin, &creator, None, state, ts)
        .map_err(|e| anyhow!("making a room of 1,000 members: {e}"))?;
    let id = room.room_id.clone();
    host.rooms
        .lock()
        .map_err(|_| anyhow!("room lock"))?
        .insert(id.clone(), room);
    Ok(id)
}

/// The table rows: ours against the peer's, with ratios (higher is better for ours).
pub fn rows(ours: &Figures, peer: Option<&Figures>) -> Vec<Row> {
    let ratio = |o: f64, p: Option<f64>| p.map_or("-".into(), |p| format!("{:.1}x", o / p));
    // How many times faster ours is, by median time.
    let faster = |field: fn(&Figures) -> &[Duration]| {
        ratio(
            1.0 / quantile(field(ours), 0.5).as_secs_f64().max(1e-9),
            peer.map(|p| 1.0 / quantile(field(p), 0.5).as_secs_f64().max(1e-9)),
        )
    };
    let peer_s = |text: &dyn Fn(&Figures) -> String| {
        peer.map_or("-".to_string(), |p| format!("Synapse: {}", text(p)))
    };
    let inbound = |f: &Figures| {
        format!(
            "{:.0} PDUs/s ({} PDUs in {:.2} s)",
            f.pdus_per_s(),
            f.inbound_pdus,
            f.inbound_elapsed.as_secs_f64()
        )
    };
    let join = |f: &Figures| {
        format!(
            "{} (median of {})",
            ms(quantile(&f.joins, 0.5)),
            f.joins.len()
        )
    };
    let delivery = |f: &Figures| {
        format!(
            "{} / {} (p50 / p99 of {})",
            ms(quantile(&f.deliveries, 0.5)),
            ms(quantile(&f.deliveries, 0.99)),
            f.deliveries.len()
        )
    };
    vec![
        Row {
            name: format!("federation: inbound /send of {PDUS_PER_TXN}-PDU transactions, every check on receipt"),
            ours: inbound(ours),
            peer: peer_s(&inbound),
            ratio: ratio(ours.pdus_per_s(), peer.map(Figures::pdus_per_s)),
            target: ">= 10x".into(),
        },
        Row {
            name: format!(
                "federation: remote join of a room with {} members, time to joined",
                ours.join_members
            ),
            ours: join(ours),
            peer: peer_s(&join),
            ratio: faster(|f| &f.joins),
            target: ">= 10x".into(),
        },
        Row {
            name: format!(
                "federation: a message's delivery to {} remote servers, until all have it",
                ours.servers
            ),
            ours: delivery(ours),
            peer: peer_s(&delivery),
            ratio: faster(|f| &f.deliveries),
            target: ">= 10x".into(),
        },
    ]
}
