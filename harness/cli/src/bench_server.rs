//! `mxconform bench server`: the reference server against Synapse on the same machine in the
//! same run: sends per second (sequential and concurrent), /sync wake-up latency, createRoom
//! latency, initial sync in 100 rooms, resident memory, and how incremental /sync and
//! /messages cost grows with a room's history. Every loop is bounded in count and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mxconform_harness::client::{Body, Client, Limits};
use serde_json::{json, Value};

use crate::bench::Row;

/// A server under test, with a way to make users on it.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub client: Client,
    pub shared_secret: Option<String>,
    pub pid: Option<u32>,
}

pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn enc(s: &str) -> String {
    mxconform_harness::client::encode_segment(s)
}

/// Resident memory of a process, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

impl Target {
    pub(crate) async fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
        query: &[(String, String)],
    ) -> Result<Value> {
        Ok(self.req_timed(method, path, body, token, query).await?.0)
    }

    /// [`Target::req`], with when the answer arrived (its last byte read, before parsing).
    pub(crate) async fn req_timed(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
        query: &[(String, String)],
    ) -> Result<(Value, Instant)> {
        let b = body.map_or(Body::None, Body::Json);
        let r = self
            .client
            .send(
                method,
                path,
                query,
                b,
                token,
                Some(Duration::from_secs(60)),
                Default::default(),
            )
            .await
            .map_err(anyhow::Error::msg)?;
        if r.status != 200 {
            bail!(
                "{} {method} {path}: status {}: {}",
                self.name,
                r.status,
                r.body
            );
        }
        Ok((r.body, r.arrived))
    }

    /// Registers a user; returns its access token.
    pub(crate) async fn user(&self, name: &str) -> Result<(String, String)> {
        let body = match &self.shared_secret {
            None => {
                let b = json!({"username": name, "password": "bench-pw", "auth": {"type": "m.login.dummy"}});
                self.req("POST", "/_matrix/client/v3/register", Some(b), None, &[])
                    .await?
            }
            Some(secret) => {
                let n = self
                    .req("GET", "/_synapse/admin/v1/register", None, None, &[])
                    .await?;
                let nonce = n["nonce"].as_str().context("nonce")?.to_string();
                let digest = mxconform_harness::client::hmac_sha1_hex(
                    secret,
                    &[
                        nonce.as_bytes(),
                        b"\0",
                        name.as_bytes(),
                        b"\0",
                        b"bench-pw",
                        b"\0notadmin",
                    ],
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                let b = json!({"nonce": nonce, "username": name, "password": "bench-pw", "mac": digest, "admin": false});
                self.req("POST", "/_synapse/admin/v1/register", Some(b), None, &[])
                    .await?
            }
        };
        Ok((
            body["access_token"].as_str().context("token")?.to_string(),
            body["user_id"].as_str().context("user id")?.to_string(),
        ))
    }

    pub(crate) async fn create_room(&self, token: &str, body: Value) -> Result<String> {
        let r = self
            .req(
                "POST",
                "/_matrix/client/v3/createRoom",
                Some(body),
                Some(token),
                &[],
            )
            .await?;
        Ok(r["room_id"].as_str().context("room id")?.to_string())
    }

    async fn join(&self, token: &str, room: &str) -> Result<()> {
        self.req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/join", enc(room)),
            Some(json!({})),
            Some(token),
            &[],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn send(&self, token: &str, room: &str, txn: &str) -> Result<()> {
        self.send_timed(token, room, txn).await.map(|_| ())
    }

    /// Sends a message; answers when the answer arrived.
    async fn send_timed(&self, token: &str, room: &str, txn: &str) -> Result<Instant> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            enc(room),
            enc(txn)
        );
        let (_, arrived) = self
            .req_timed(
                "PUT",
                &path,
                Some(json!({"msgtype": "m.text", "body": txn})),
                Some(token),
                &[],
            )
            .await?;
        Ok(arrived)
    }

    async fn sync(&self, token: &str, since: Option<&str>, timeout_ms: u64) -> Result<Value> {
        Ok(self.sync_timed(token, since, timeout_ms).await?.0)
    }

    /// A /sync; with when its answer arrived.
    async fn sync_timed(
        &self,
        token: &str,
        since: Option<&str>,
        timeout_ms: u64,
    ) -> Result<(Value, Instant)> {
        let mut q = vec![("timeout".to_string(), timeout_ms.to_string())];
        if let Some(s) = since {
            q.push(("since".into(), s.to_string()));
        }
        self.req_timed("GET", "/_matrix/client/v3/sync", None, Some(token), &q)
            .await
    }
}

/// Measurements of one server.
#[derive(Default, Clone)]
pub struct Figures {
    pub seq_sends_per_s: f64,
    pub seq_p50: Duration,
    pub conc_sends_per_s: f64,
    pub wake_p50: Duration,
    pub wake_p99: Duration,
    /// A send after the same pause as the wake-ups', with nobody polling: the part of a
    /// wake-up that is the send itself from idle (thread and CPU wake-ups on both sides).
    pub idle_send_p50: Duration,
    /// A request that does nothing (`GET /versions`) after the same pause: the floor that the
    /// connection and the wake-ups of both sides set under the two figures above.
    pub idle_noop_p50: Duration,
    pub create_room_p50: Duration,
    pub initial_sync_100_rooms: Duration,
    pub rss_kib: Option<u64>,
}

pub async fn measure(t: &Target, tag: &str, budget: Duration) -> Result<Figures> {
    let mut f = Figures::default();
    let (token, _) = t.user(&format!("bench-{tag}-a")).await?;
    let (token_b, user_b) = t.user(&format!("bench-{tag}-b")).await?;
    let room = t
        .create_room(
            &token,
            json!({"preset": "private_chat", "invite": [user_b]}),
        )
        .await?;
    t.join(&token_b, &room).await?;

    // Sequential sends: up to 2,000, within the budget.
    let mut lat = Vec::new();
    let start = Instant::now();
    for i in 0..2000 {
        if start.elapsed() > budget {
            break;
        }
        let t0 = Instant::now();
        t.send(&token, &room, &format!("seq-{tag}-{i}")).await?;
        lat.push(t0.elapsed());
    }
    f.seq_sends_per_s = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    f.seq_p50 = pct(&lat, 0.5);

    // Concurrent sends: 8 clients, up to 500 each, within the budget.
    let start = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (t, token, room, done) = (t.clone(), token.clone(), room.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                if start.elapsed() > budget {
                    break;
                }
                if t.send(&token, &room, &format!("conc-{w}-{i}"))
                    .await
                    .is_err()
                {
                    break;
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    f.conc_sends_per_s =
        done.load(std::sync::atomic::Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();

    // /sync wake-up: B long-polls, A sends; time from the send's start to B's answer (taken
    // when B's answer arrives, whether or not A's has), which must hold the message sent. The
    // three latencies of this loop end when the answer's last byte is read, before the client
    // parses it: the client's own work is not the server's.
    let mut since = t.sync(&token_b, None, 0).await?["next_batch"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (mut wakes, mut idle_sends, mut idle_noops) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    for i in 0..60 {
        if start.elapsed() > budget {
            break;
        }
        let (tb, s) = (t.clone(), since.clone());
        let tok = token_b.clone();
        let poll = tokio::spawn(async move { tb.sync_timed(&tok, Some(&s), 10_000).await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let sent_at = Instant::now();
        let message = format!("wake-{tag}-{i}");
        t.send(&token, &room, &message).await?;
        let (body, answered_at) = poll.await.context("poll task")??;
        let timeline = &body["rooms"]["join"][room.as_str()]["timeline"]["events"];
        let holds = timeline.as_array().is_some_and(|evs| {
            evs.iter()
                .any(|e| e["content"]["body"].as_str() == Some(message.as_str()))
        });
        if !holds {
            bail!(
                "{}: the long-poll woken by {message:?} answered without it: {timeline}",
                t.name
            );
        }
        wakes.push(answered_at.saturating_duration_since(sent_at));
        since = body["next_batch"].as_str().unwrap_or("").to_string();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let sent_at = Instant::now();
        let arrived = t
            .send_timed(&token, &room, &format!("idle-{tag}-{i}"))
            .await?;
        idle_sends.push(arrived.saturating_duration_since(sent_at));
        since = t.sync(&token_b, Some(&since), 0).await?["next_batch"]
            .as_str()
            .unwrap_or("")
            .to_string();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let asked_at = Instant::now();
        let (_, arrived) = t
            .req_timed("GET", "/_matrix/client/versions", None, None, &[])
            .await?;
        idle_noops.push(arrived.saturating_duration_since(asked_at));
    }
    idle_sends.sort();
    f.idle_send_p50 = pct(&idle_sends, 0.5);
    idle_noops.sort();
    f.idle_noop_p50 = pct(&idle_noops, 0.5);
    wakes.sort();
    f.wake_p50 = pct(&wakes, 0.5);
    f.wake_p99 = pct(&wakes, 0.99);

    // createRoom latency (and the 100 rooms for the initial sync).
    let mut creates = Vec::new();
    let (token_c, _) = t.user(&format!("bench-{tag}-c")).await?;
    let start = Instant::now();
    for _ in 0..100 {
        if start.elapsed() > budget * 3 {
            break;
        }
        let t0 = Instant::now();
        t.create_room(&token_c, json!({})).await?;
        creates.push(t0.elapsed());
    }
    creates.sort();
    f.create_room_p50 = pct(&creates, 0.5);
    let mut syncs = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let body = t.sync(&token_c, None, 0).await?;
        syncs.push(t0.elapsed());
        let n = body["rooms"]["join"].as_object().map_or(0, |o| o.len());
        if n < creates.len() {
            bail!(
                "{}: initial sync shows {n} of {} rooms",
                t.name,
                creates.len()
            );
        }
    }
    syncs.sort();
    f.initial_sync_100_rooms = pct(&syncs, 0.5);
    f.rss_kib = t.pid.and_then(rss_kib);
    Ok(f)
}

/// Incremental /sync and /messages cost as one room's history grows (reference server only:
/// filling a room with 100,000 events through Synapse would take most of an hour).
pub async fn growth(t: &Target, sizes: &[usize]) -> Result<Vec<(usize, Duration, Duration)>> {
    let (token, _) = t.user("bench-growth").await?;
    let room = t.create_room(&token, json!({})).await?;
    let mut out = Vec::new();
    let mut have = 0usize;
    for &n in sizes {
        // Fill with 8 concurrent senders.
        let mut tasks = Vec::new();
        let per = (n - have).div_ceil(8);
        for w in 0..8 {
            let (t, token, room) = (t.clone(), token.clone(), room.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..per {
                    t.send(&token, &room, &format!("g{n}-{w}-{i}")).await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for task in tasks {
            task.await.context("filler")??;
        }
        have = n;
        let mut inc = Vec::new();
        let mut msgs = Vec::new();
        let mut since = t.sync(&token, None, 0).await?["next_batch"]
            .as_str()
            .unwrap_or("")
            .to_string();
        for i in 0..20 {
            t.send(&token, &room, &format!("probe-{n}-{i}")).await?;
            let t0 = Instant::now();
            let body = t.sync(&token, Some(&since), 0).await?;
            inc.push(t0.elapsed());
            since = body["next_batch"].as_str().unwrap_or("").to_string();
            let t0 = Instant::now();
            let q = vec![
                ("dir".to_string(), "b".to_string()),
                ("limit".to_string(), "20".to_string()),
            ];
            t.req(
                "GET",
                &format!("/_matrix/client/v3/rooms/{}/messages", enc(&room)),
                None,
                Some(&token),
                &q,
            )
            .await?;
            msgs.push(t0.elapsed());
        }
        inc.sort();
        msgs.sort();
        out.push((n, pct(&inc, 0.5), pct(&msgs, 0.5)));
    }
    Ok(out)
}

/// Initial /sync time of one user as the number of rooms they are in grows.
pub async fn room_growth(t: &Target, sizes: &[usize]) -> Result<Vec<(usize, Duration)>> {
    let (token, _) = t.user("bench-rooms").await?;
    let mut have = 0;
    let mut out = Vec::new();
    for &n in sizes {
        while have < n {
            t.create_room(&token, json!({})).await?;
            have += 1;
        }
        let mut times = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            t.sync(&token, None, 0).await?;
            times.push(t0.elapsed());
        }
        times.sort();
        out.push((n, pct(&times, 0.5)));
    }
    Ok(out)
}

pub fn room_growth_rows(growth: &[(usize, Duration)]) -> Vec<Row> {
    growth
        .iter()
        .map(|(n, d)| Row {
            name: format!("initial /sync of a user in {n} rooms (p50)"),
            ours: ms(*d),
            peer: "-".into(),
            ratio: "-".into(),
            target: String::new(),
        })
        .collect()
}

pub fn rows(
    ours: &Figures,
    peer: Option<&Figures>,
    growth: &[(usize, Duration, Duration)],
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |name: &str, o: String, p: Option<String>, ratio: Option<f64>, target: &str| {
        rows.push(Row {
            name: name.into(),
            ours: o,
            peer: p
                .map(|p| format!("Synapse: {p}"))
                .unwrap_or_else(|| "-".into()),
            ratio: ratio
                .map(|r| format!("{r:.1}x"))
                .unwrap_or_else(|| "-".into()),
            target: target.into(),
        });
    };
    add(
        "sequential sends per second (p50 latency)",
        format!("{:.0}/s ({})", ours.seq_sends_per_s, ms(ours.seq_p50)),
        peer.map(|p| format!("{:.0}/s ({})", p.seq_sends_per_s, ms(p.seq_p50))),
        peer.map(|p| ours.seq_sends_per_s / p.seq_sends_per_s),
        ">= 20x",
    );
    add(
        "concurrent sends per second (8 clients)",
        format!("{:.0}/s", ours.conc_sends_per_s),
        peer.map(|p| format!("{:.0}/s", p.conc_sends_per_s)),
        peer.map(|p| ours.conc_sends_per_s / p.conc_sends_per_s),
        "-",
    );
    // How many times longer the peer takes.
    let slower = |f: fn(&Figures) -> Duration| {
        peer.map(|p| f(p).as_secs_f64() / f(ours).as_secs_f64().max(1e-9))
    };
    add(
        "/sync wake-up after a send starts, p50 / p99",
        format!("{} / {}", ms(ours.wake_p50), ms(ours.wake_p99)),
        peer.map(|p| format!("{} / {}", ms(p.wake_p50), ms(p.wake_p99))),
        slower(|f| f.wake_p50),
        "p50 < 1 ms",
    );
    let latencies: [(&str, fn(&Figures) -> Duration); 4] = [
        (
            "the same send after the same pause, nobody polling, p50",
            |f| f.idle_send_p50,
        ),
        (
            "a request that does nothing (GET /versions) after the same pause, p50",
            |f| f.idle_noop_p50,
        ),
        ("createRoom latency p50", |f| f.create_room_p50),
        ("initial /sync of a user in 100 rooms", |f| {
            f.initial_sync_100_rooms
        }),
    ];
    for (name, field) in latencies {
        add(
            name,
            ms(field(ours)),
            peer.map(|p| ms(field(p))),
            slower(field),
            "-",
        );
    }
    let mib =
        |k: Option<u64>| k.map_or("?".to_string(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
    add(
        "resident memory after the above",
        mib(ours.rss_kib),
        peer.map(|p| mib(p.rss_kib)),
        peer.and_then(|p| Some(p.rss_kib? as f64 / ours.rss_kib? as f64)),
        "-",
    );
    if let (Some(first), Some(last)) = (growth.first(), growth.last()) {
        for (n, inc, msg) in growth {
            add(
                &format!("room history {n} events: incremental /sync, /messages (p50)"),
                format!("{} , {}", ms(*inc), ms(*msg)),
                None,
                None,
                "",
            );
        }
        rows.push(Row {
            name: format!(
                "incremental /sync growth from {} to {} events",
                first.0, last.0
            ),
            ours: format!(
                "{:.2}x",
                last.1.as_secs_f64() / first.1.as_secs_f64().max(1e-9)
            ),
            peer: "-".into(),
            ratio: "-".into(),
            target: "<= 2x".into(),
        });
    }
    rows
}

/// Builds a target for a URL (with Synapse's shared secret when given).
pub fn target(
    name: &str,
    url: &str,
    shared_secret: Option<String>,
    pid: Option<u32>,
) -> Result<Target> {
    let client = Client::new(
        url,
        Limits {
            request_timeout: Duration::from_secs(60),
            ..Limits::default()
        },
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Target {
        name: name.into(),
        client,
        shared_secret,
        pid,
    })
}

/// What `bench storage` measured at one size.
pub struct StorageFigures {
    pub events: usize,
    /// Events sent per second while filling (8 concurrent senders over 100 rooms).
    pub fill_rate: f64,
    pub rss_kib: Option<u64>,
    pub inc_sync_p50: Duration,
    pub messages_p50: Duration,
}

/// Two users (the second notified by each of the first's messages) in `rooms` rooms.
pub struct StorageWorld {
    pub alice: String,
    pub bob: String,
    pub rooms: Vec<String>,
    pub sent: usize,
}

/// Makes the rooms of the storage benchmark.
pub async fn storage_world(t: &Target, rooms: usize) -> Result<StorageWorld> {
    let (alice, _) = t.user("bench-store-a").await?;
    let (bob, _) = t.user("bench-store-b").await?;
    let mut ids = Vec::new();
    for _ in 0..rooms {
        let room = t
            .create_room(&alice, json!({"preset": "public_chat"}))
            .await?;
        t.join(&bob, &room).await?;
        ids.push(room);
    }
    Ok(StorageWorld {
        alice,
        bob,
        rooms: ids,
        sent: 0,
    })
}

/// Fills the world up to `events` messages, then measures memory, incremental /sync and
/// /messages.
pub async fn storage_fill(
    t: &Target,
    w: &mut StorageWorld,
    events: usize,
) -> Result<StorageFigures> {
    let todo = events.saturating_sub(w.sent);
    let per = todo.div_ceil(8);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (t, token, rooms, base) = (t.clone(), w.alice.clone(), w.rooms.clone(), w.sent);
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let room = &rooms[(worker + i * 8) % rooms.len()];
                t.send(&token, room, &format!("s{base}-{worker}-{i}"))
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await.context("filler")??;
    }
    let fill_rate = (per * 8) as f64 / t0.elapsed().as_secs_f64();
    w.sent += per * 8;
    let rss_kib = t.pid.and_then(rss_kib);
    let (inc, msgs) = storage_probe(t, w).await?;
    Ok(StorageFigures {
        events: w.sent,
        fill_rate,
        rss_kib,
        inc_sync_p50: inc,
        messages_p50: msgs,
    })
}

/// Incremental /sync of the notified user after one new message, and a page of /messages,
/// p50 of 20 each.
pub async fn storage_probe(t: &Target, w: &StorageWorld) -> Result<(Duration, Duration)> {
    let room = &w.rooms[0];
    let mut since = t.sync(&w.bob, None, 0).await?["next_batch"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let mut inc = Vec::new();
    let mut msgs = Vec::new();
    for i in 0..20 {
        t.send(
            &w.alice,
            room,
            &format!("probe-{}-{i}-{}", w.sent, std::process::id()),
        )
        .await?;
        let t0 = Instant::now();
        let body = t.sync(&w.bob, Some(&since), 0).await?;
        inc.push(t0.elapsed());
        since = body["next_batch"].as_str().unwrap_or("").to_string();
        let t0 = Instant::now();
        let q = vec![
            ("dir".to_string(), "b".to_string()),
            ("limit".to_string(), "20".to_string()),
        ];
        let page = t
            .req(
                "GET",
                &format!("/_matrix/client/v3/rooms/{}/messages", enc(room)),
                None,
                Some(&w.bob),
                &q,
            )
            .await?;
        msgs.push(t0.elapsed());
        if page["chunk"].as_array().map_or(0, Vec::len) != 20 {
            bail!(
                "/messages answered {} events, not 20",
                page["chunk"].as_array().map_or(0, Vec::len)
            );
        }
    }
    inc.sort();
    msgs.sort();
    Ok((pct(&inc, 0.5), pct(&msgs, 0.5)))
}

/// The storage rows: per size, memory, restart, and the request costs; and memory growth per
/// million events between the first and the last size.
pub fn storage_rows(figs: &[(StorageFigures, Duration, Option<u64>)]) -> Vec<Row> {
    let mib =
        |k: Option<u64>| k.map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    let mut rows = Vec::new();
    for (f, restart, rss_after) in figs {
        let n = f.events;
        rows.push(Row {
            name: format!("storage, {n} events in 100 rooms: resident memory (after restart)"),
            ours: format!("{} ({})", mib(f.rss_kib), mib(*rss_after)),
            peer: "-".into(),
            ratio: "-".into(),
            target: String::new(),
        });
        rows.push(Row {
            name: format!("storage, {n} events: restart to ready"),
            ours: format!("{:.2} s", restart.as_secs_f64()),
            peer: "-".into(),
            ratio: "-".into(),
            target: "<= 2 s at 1,000,000".into(),
        });
        rows.push(Row {
            name: format!("storage, {n} events: sends/s while filling (8 senders)"),
            ours: format!("{:.0}", f.fill_rate),
            peer: "-".into(),
            ratio: "-".into(),
            target: String::new(),
        });
        rows.push(Row {
            name: format!("storage, {n} events: incremental /sync p50, /messages p50"),
            ours: format!("{}, {}", ms(f.inc_sync_p50), ms(f.messages_p50)),
            peer: "-".into(),
            ratio: "-".into(),
            target: "flat".into(),
        });
    }
    if let (Some(first), Some(last)) = (figs.first(), figs.last()) {
        if let (Some(a), Some(b)) = (first.0.rss_kib, last.0.rss_kib) {
            let millions = (last.0.events - first.0.events) as f64 / 1e6;
            if millions > 0.0 {
                rows.push(Row {
                    name: format!(
                        "storage: memory growth per million events ({} to {})",
                        first.0.events, last.0.events
                    ),
                    ours: format!("{:.1} MiB", (b as f64 - a as f64) / 1024.0 / millions),
                    peer: "-".into(),
                    ratio: "-".into(),
                    target: "<= 100 MiB".into(),
                });
            }
        }
    }
    rows
}
