//! The steps that play remote homeservers: the scenario's fake servers (`fed_join`,
//! `fed_invite`, `fed_send`, `fed_edu`, `fed_call`, `fed_await`, `fed_create_room`,
//! `fed_answer`, `fed_transaction`), each request and PDU they receive checked.

use super::*;

impl<'a> Run<'a> {
    /// Starts the scenario's fake servers, each with a fresh port, key and certificate.
    pub(super) async fn start_fakes(
        &mut self,
        federation: &crate::federation::Federation,
    ) -> Result<(), String> {
        for name in &self.scenario.servers {
            let fake = crate::federation::fake::Fake::start(
                &federation.authority,
                federation.client.clone(),
                self.scenario.certificates.get(name).copied(),
            )
            .await?;
            if let Ok(mut allowed) = fake.shared.allowed.lock() {
                allowed.extend(self.scenario.allow_requests.iter().cloned());
            }
            self.vars
                .set(&format!("{name}.server_name"), json!(fake.shared.name));
            self.vars
                .set(&format!("{name}.key_id"), json!(fake.shared.key.key_id()));
            self.vars.set(
                &format!("{name}.policy_key"),
                json!(fake.shared.policy_key.public_base64()),
            );
            self.fakes.insert(name.clone(), fake);
        }
        // Each fake server knows the others' keys, for the events they make.
        let keys: Vec<(String, mxconform_pdu::VerifyKey)> = self
            .fakes
            .values()
            .map(|f| (f.shared.name.clone(), f.shared.key.verify_key()))
            .collect();
        for f in self.fakes.values() {
            if let Ok(mut peers) = f.shared.peers.lock() {
                peers.extend(keys.iter().cloned());
            }
        }
        Ok(())
    }

    pub(super) fn fake(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<crate::federation::fake::Shared>, String> {
        self.fakes
            .get(name)
            .map(|f| f.shared.clone())
            .ok_or_else(|| format!("no fake server {name}"))
    }

    /// The result of a federation step: expectations and captures read `body`.
    pub(super) fn fed_result(
        &mut self,
        step: &Step,
        status: u16,
        body: &Value,
    ) -> Result<(), String> {
        crate::expect::response(&step.expect, status, body, &self.vars)?;
        self.capture(step, body, &[])
    }

    pub(super) async fn fed_join(
        &mut self,
        step: &Step,
        j: &crate::scenario::FedJoin,
    ) -> Result<(), String> {
        let shared = self.fake(&j.server)?;
        let room = self.vars.render_text(&j.room)?;
        let user = format!("@{}:{}", self.vars.render_text(&j.user)?, shared.name);
        use crate::federation::Handshake;
        let kind = match j.membership.as_deref() {
            Some("leave") => Handshake::Leave,
            Some("knock") => Handshake::Knock,
            _ => Handshake::Join,
        };
        let (make, send) = match kind {
            Handshake::Join => ("makeJoin", "sendJoinV2"),
            Handshake::Leave => ("makeLeave", "sendLeaveV2"),
            Handshake::Knock => ("makeKnock", "sendKnock"),
        };
        self.record(&format!("server-server/{make}"));
        self.record(&format!("server-server/{send}"));
        let (event_id, version, answer) =
            crate::federation::handshake(&shared, kind, &user, &room).await?;
        self.fed_result(
            step,
            200,
            &json!({"event_id": event_id, "room_version": version, "user_id": user, "answer": answer}),
        )
    }

    pub(super) async fn fed_create_room(
        &mut self,
        step: &Step,
        c: &crate::scenario::FedCreateRoom,
    ) -> Result<(), String> {
        use mxconform_pdu::build::{NewEvent, Origin};
        let shared = self.fake(&c.server)?;
        let user = |localpart: &str| format!("@{localpart}:{}", shared.name);
        let creator = user(&self.vars.render_text(&c.creator)?);
        let version_id = self.vars.render_text(&c.version)?;
        let version = mxconform_pdu::RoomVersion::get(&version_id)
            .ok_or_else(|| format!("room version {version_id:?} is not one of 1-12"))?;
        let ts = crate::federation::fake::now_ms();
        let mut rules = json!({"join_rule": c.join_rule.as_deref().unwrap_or("public")});
        if !c.allow.is_empty() {
            let allow: Vec<Value> = c
                .allow
                .iter()
                .map(|r| {
                    self.vars
                        .render_text(r)
                        .map(|id| json!({"type": "m.room_membership", "room_id": id}))
                })
                .collect::<Result<_, _>>()?;
            rules["allow"] = Value::Array(allow);
        }
        let mut state = vec![NewEvent::new(
            "m.room.join_rules",
            Some(""),
            &creator,
            rules,
            ts,
        )];
        for e in &c.state {
            let sender = match &e.sender {
                Some(s) => user(&self.vars.render_text(s)?),
                None => creator.clone(),
            };
            let key = self.vars.render_text(&e.state_key)?;
            state.push(NewEvent::new(
                &e.kind,
                Some(&key),
                &sender,
                self.vars.render(&e.content)?,
                ts,
            ));
        }
        let origin = Origin {
            server_name: &shared.name,
            key: &shared.key,
        };
        let room = crate::federation::room::RoomView::create(
            version,
            origin,
            &creator,
            c.room_type.as_deref(),
            state,
            ts,
        )?;
        let room_id = room.room_id.clone();
        shared
            .rooms
            .lock()
            .map_err(|_| "room lock")?
            .insert(room_id.clone(), room);
        self.fed_result(
            step,
            200,
            &json!({"room_id": room_id, "room_version": version.id, "creator": creator}),
        )
    }

    pub(super) async fn fed_answer(
        &mut self,
        step: &Step,
        a: &crate::scenario::FedAnswer,
    ) -> Result<(), String> {
        let shared = self.fake(&a.server)?;
        let status = a.status.unwrap_or(200);
        let body = a.body.as_ref().map(|b| self.vars.render(b)).transpose()?;
        let raw = match &a.media {
            Some(m) => {
                let bytes = crate::template::base64_decode(&m.base64)
                    .ok_or("media.base64 is not valid base64")?;
                Some(crate::federation::fake::multipart_media(
                    &m.content_type,
                    &bytes,
                ))
            }
            None => None,
        };
        let body = body.unwrap_or(Value::Null);
        // What the scenario makes the fake server say must itself follow the spec, unless
        // the step says it is wrong on purpose.
        if raw.is_none() && (200..300).contains(&status) && !step.invalid {
            let part = crate::validate::Part::Response(status);
            if let Ok(Some(v)) = crate::validate::validate_in(
                mxconform_generated::Group::ServerServer,
                &a.operation,
                &part,
                &body,
            ) {
                if !v.is_empty() {
                    return Err(format!(
                        "the answer given for {} breaks its schema (say `invalid: true` if meant): {}",
                        a.operation,
                        v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                    ));
                }
            }
        }
        shared.canned.lock().map_err(|_| "lock")?.insert(
            a.operation.clone(),
            crate::federation::fake::Canned {
                status,
                body,
                raw,
                times: a.times,
            },
        );
        Ok(())
    }

    pub(super) async fn fed_invite(
        &mut self,
        step: &Step,
        f: &crate::scenario::FedInvite,
    ) -> Result<(), String> {
        let shared = self.fake(&f.server)?;
        let room = self.vars.render_text(&f.room)?;
        let sender = format!("@{}:{}", self.vars.render_text(&f.sender)?, shared.name);
        let target = self.vars.render_text(&f.target)?;
        self.record(if f.v1 {
            "server-server/sendInviteV1"
        } else {
            "server-server/sendInviteV2"
        });
        self.record("server-server/sendTransaction");
        let event_id = crate::federation::invite(&shared, &sender, &room, &target, f.v1).await?;
        self.fed_result(step, 200, &json!({"event_id": event_id}))
    }

    pub(super) async fn fed_send(
        &mut self,
        step: &Step,
        f: &crate::scenario::FedSend,
    ) -> Result<(), String> {
        let shared = self.fake(&f.server)?;
        let room = self.vars.render_text(&f.room)?;
        let sender = format!("@{}:{}", self.vars.render_text(&f.sender)?, shared.name);
        let state_key = f
            .state_key
            .as_deref()
            .map(|k| self.vars.render_text(k))
            .transpose()?;
        let content = self.vars.render(&f.content)?;
        let tamper = f.tamper.as_ref().map(|t| self.vars.render(t)).transpose()?;
        let ids = |list: &Option<Vec<String>>| -> Result<Option<Vec<String>>, String> {
            list.as_ref()
                .map(|l| l.iter().map(|i| self.vars.render_text(i)).collect())
                .transpose()
        };
        let overrides = crate::federation::Overrides {
            tamper,
            resign: f.resign,
            prev: ids(&f.prev)?,
            auth: ids(&f.auth)?,
            hold: f.hold,
        };
        let new = mxconform_pdu::build::NewEvent::new(
            &f.kind,
            state_key.as_deref(),
            &sender,
            content,
            crate::federation::fake::now_ms(),
        );
        if !f.hold {
            self.record("server-server/sendTransaction");
        }
        let (event_id, result) =
            crate::federation::send_event(&shared, &room, new, &overrides, f.retries).await?;
        // The event itself too (a held one can be handed to the server under test otherwise).
        let pdu = crate::federation::held_event(&shared, &event_id).unwrap_or(Value::Null);
        self.fed_result(
            step,
            200,
            &json!({"event_id": event_id, "result": result, "pdu": pdu}),
        )
    }

    pub(super) async fn fed_edu(
        &mut self,
        step: &Step,
        e: &crate::scenario::FedEdu,
    ) -> Result<(), String> {
        let shared = self.fake(&e.server)?;
        let content = self.vars.render(&e.content)?;
        self.record("server-server/sendTransaction");
        let answer = crate::federation::send_edus(
            &shared,
            vec![json!({"edu_type": e.edu_type, "content": content})],
        )
        .await?;
        self.fed_result(step, 200, &answer)
    }

    pub(super) async fn fed_transaction(
        &mut self,
        step: &Step,
        t: &crate::scenario::FedTransaction,
    ) -> Result<(), String> {
        let shared = self.fake(&t.server)?;
        let ids: Vec<String> = t
            .pdus
            .iter()
            .map(|i| self.vars.render_text(i))
            .collect::<Result<_, _>>()?;
        let edus: Vec<Value> = t
            .edus
            .iter()
            .map(|e| self.vars.render(e))
            .collect::<Result<_, _>>()?;
        self.record("server-server/sendTransaction");
        let (status, body) = crate::federation::send_transaction(&shared, &ids, edus).await?;
        self.fed_result(step, status, &body)
    }

    pub(super) async fn fed_call(
        &mut self,
        step: &Step,
        c: &crate::scenario::FedCall,
    ) -> Result<(), String> {
        let shared = self.fake(&c.server)?;
        let route = crate::federation::client::route(&c.call)
            .ok_or_else(|| format!("no server-server operation {}", c.call))?;
        let path: BTreeMap<String, String> = self
            .render_params(&c.path)?
            .into_iter()
            .map(|(k, v)| (k, text_of(&v)))
            .collect();
        let mut url = crate::client::fill_path(route, &path)?;
        let mut query = Vec::new();
        for (k, v) in self.render_params(&c.query)? {
            match v {
                Value::Array(items) => query.extend(items.iter().map(|i| (k.clone(), text_of(i)))),
                Value::Null => {}
                other => query.push((k, text_of(&other))),
            }
        }
        if !query.is_empty() {
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        crate::client::encode_segment(k),
                        crate::client::encode_segment(v)
                    )
                })
                .collect();
            url = format!("{url}?{}", q.join("&"));
        }
        let body = c.body.as_ref().map(|b| self.vars.render(b)).transpose()?;
        let body = body.map(|b| self.signed(step, b)).transpose()?;
        if let Some(b) = &body {
            if let Ok(Some(v)) = crate::validate::validate_in(
                mxconform_generated::Group::ServerServer,
                route.operation_id,
                &crate::validate::Part::Request,
                b,
            ) {
                if !v.is_empty() && !step.invalid {
                    return Err(format!(
                        "the request breaks {}'s schema: {}",
                        route.operation_id,
                        v.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
            }
        }
        self.record(&format!("server-server/{}", route.operation_id));
        // `eventually_ms`: for what a server applies in the background (its room directory's
        // search index), the call repeats every 100 ms until the expectation holds.
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(step.eventually_ms.unwrap_or(0));
        loop {
            let answer = shared
                .client
                .request(
                    &shared.name,
                    &shared.key,
                    Some(route),
                    route.method.as_str(),
                    &url,
                    body.as_ref(),
                )
                .await?;
            if answer.status == 200 {
                let room = path.get("roomId").map(String::as_str);
                crate::federation::check_answer(&shared, route.operation_id, room, &answer.body)
                    .await;
            }
            // A Policy Server's signature must verify with the key the room names for it.
            if answer.status == 200 && route.operation_id == "askPolicyServerToSign" {
                let mut signed = body.clone().unwrap_or_default();
                if let Some(sigs) = answer.body.as_object() {
                    for (server, by) in sigs {
                        for (key_id, sig) in by.as_object().into_iter().flatten() {
                            signed["signatures"][server][key_id] = sig.clone();
                        }
                    }
                }
                match crate::federation::fake::policy_signature_problem(&shared, &signed) {
                    Some(why) => return Err(format!("the Policy Server's answer: {why}")),
                    None if shared
                        .rooms
                        .lock()
                        .ok()
                        .and_then(|r| {
                            let id = signed.get("room_id")?.as_str()?;
                            r.get(id)?.policy_server()
                        })
                        .is_none() =>
                    {
                        return Err(
                            "the Policy Server signed an event of a room that names none".into(),
                        )
                    }
                    None => {}
                }
            }
            match self.fed_result(step, answer.status, &answer.body) {
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    pub(super) async fn fed_await(
        &mut self,
        step: &Step,
        a: &crate::scenario::FedAwait,
    ) -> Result<(), String> {
        use crate::federation::fake::Received;
        let shared = self.fake(&a.server)?;
        let within = Duration::from_millis(a.within_ms.unwrap_or(10_000).min(60_000));
        let pdu = a.pdu.as_ref().map(|p| self.vars.render(p)).transpose()?;
        let edu = a.edu.as_ref().map(|p| self.vars.render(p)).transpose()?;
        let request = a.request.clone();
        let handshake = a.handshake.is_some();
        let found = shared
            .inbox
            .wait_for(0, within, |r| match (r, &pdu, &edu, &request) {
                (Received::Pdu { pdu: got, .. }, Some(want), _, _) => {
                    crate::expect::subset(want, got)
                }
                (Received::Edu { edu: got }, _, Some(want), _) => crate::expect::subset(want, got),
                (Received::Request { operation, .. }, _, _, Some(op)) => operation == op,
                (Received::Handshake { .. }, _, _, _) => handshake,
                _ => false,
            })
            .await;
        if let (Some(without), Some((at, _))) = (&a.without, &found) {
            let without = self.vars.render(without)?;
            let seen = shared.inbox.items();
            let early = seen.iter().take(at + 1).find(|r| match r {
                Received::Pdu { pdu, .. } => crate::expect::subset(&without, pdu),
                Received::Edu { edu } => crate::expect::subset(&without, edu),
                Received::Request { .. } | Received::Handshake { .. } => false,
            });
            if let Some(early) = early {
                return Err(format!(
                    "{} was sent what it must not have been before the sentinel: {early:?}",
                    shared.name
                ));
            }
        }
        let Some((_, item)) = found else {
            let what = pdu
                .map(|p| format!("a PDU containing {p}"))
                .or(edu.map(|e| format!("an EDU containing {e}")))
                .or(request.map(|r| format!("a {r} request")))
                .unwrap_or_else(|| "a refused TLS handshake".to_string());
            let seen: Vec<String> = shared
                .inbox
                .items()
                .iter()
                .map(|r| match r {
                    Received::Pdu { pdu, .. } => format!(
                        "PDU {} {}",
                        pdu.get("type").and_then(Value::as_str).unwrap_or("?"),
                        pdu.get("event_id").and_then(Value::as_str).unwrap_or("")
                    ),
                    Received::Edu { edu } => format!(
                        "EDU {}",
                        edu.get("edu_type").and_then(Value::as_str).unwrap_or("?")
                    ),
                    Received::Request { operation, .. } => format!("request {operation}"),
                    Received::Handshake { error } => format!("a failed handshake ({error})"),
                })
                .collect();
            return Err(format!(
                "{} was not sent {what} within {} ms (it was sent: {})",
                shared.name,
                within.as_millis(),
                if seen.is_empty() {
                    "nothing".to_string()
                } else {
                    seen.join(", ")
                }
            ));
        };
        if let (Some(true), Received::Pdu { pdu: got, .. }) = (a.policy_signed, &item) {
            let problem =
                crate::federation::fake::policy_signature_problem(&shared, got).or_else(|| {
                    let room = got.get("room_id")?.as_str()?;
                    let uses = shared.rooms.lock().ok()?.get(room)?.policy_server();
                    uses.is_none()
                        .then(|| format!("room {room} names no Policy Server"))
                });
            if let Some(why) = problem {
                return Err(format!("the awaited PDU: {why}"));
            }
        }
        let body = match item {
            Received::Pdu { pdu, .. } => pdu,
            Received::Edu { edu } => edu,
            Received::Request { body, .. } => json!({"body": body}),
            Received::Handshake { error } => json!({"error": error}),
        };
        // What was sent is the "response": checks and captures read it.
        self.fed_result(step, 200, &body)
    }
}
