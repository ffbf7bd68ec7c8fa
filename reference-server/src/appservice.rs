//! Application services registered with this server: the registration files homeservers read
//! (`id`, `url`, `as_token`, `hs_token`, `sender_localpart`, `namespaces`, `protocols`).

use regex::Regex;
use serde::Deserialize;

/// One registered application service.
#[derive(Clone, Debug)]
pub struct AppService {
    pub id: String,
    /// Where the service listens; `None` when it only uses the client-server API.
    pub url: Option<String>,
    pub as_token: String,
    pub hs_token: String,
    /// The service's own user, `@<sender_localpart>:<server_name>`.
    pub sender: String,
    pub users: Vec<Namespace>,
    pub aliases: Vec<Namespace>,
    pub rooms: Vec<Namespace>,
    pub protocols: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Namespace {
    pub exclusive: bool,
    pub regex: Regex,
}

#[derive(Deserialize)]
struct RawRegistration {
    id: String,
    url: Option<String>,
    as_token: String,
    hs_token: String,
    sender_localpart: String,
    #[serde(default)]
    namespaces: RawNamespaces,
    #[serde(default)]
    protocols: Vec<String>,
}

#[derive(Default, Deserialize)]
struct RawNamespaces {
    #[serde(default)]
    users: Vec<RawNamespace>,
    #[serde(default)]
    aliases: Vec<RawNamespace>,
    #[serde(default)]
    rooms: Vec<RawNamespace>,
}

#[derive(Deserialize)]
struct RawNamespace {
    #[serde(default)]
    exclusive: bool,
    regex: String,
}

impl AppService {
    /// Reads a registration (YAML); `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str, server_name: &str) -> Result<AppService, String> {
        let raw: RawRegistration = serde_yaml::from_str(text)
            .map_err(|e| format!("{origin}: not an application-service registration: {e}"))?;
        let compile = |list: Vec<RawNamespace>, what: &str| {
            list.into_iter()
                .map(|n| {
                    // The whole value must match, as the spec's examples intend.
                    Regex::new(&format!("^(?:{})$", n.regex))
                        .map(|regex| Namespace {
                            exclusive: n.exclusive,
                            regex,
                        })
                        .map_err(|e| {
                            format!("{origin}: bad {what} namespace regex {:?}: {e}", n.regex)
                        })
                })
                .collect::<Result<Vec<_>, String>>()
        };
        if raw.as_token.is_empty() || raw.hs_token.is_empty() || raw.as_token == raw.hs_token {
            return Err(format!(
                "{origin}: as_token and hs_token must be given and differ"
            ));
        }
        let url = raw.url.filter(|u| !u.is_empty());
        if let Some(u) = &url {
            crate::outbound::check_configured_url(u).map_err(|e| format!("{origin}: url: {e}"))?;
        }
        Ok(AppService {
            sender: format!("@{}:{server_name}", raw.sender_localpart),
            id: raw.id,
            url,
            as_token: raw.as_token,
            hs_token: raw.hs_token,
            users: compile(raw.namespaces.users, "users")?,
            aliases: compile(raw.namespaces.aliases, "aliases")?,
            rooms: compile(raw.namespaces.rooms, "rooms")?,
            protocols: raw.protocols,
        })
    }

    /// The service may act as this user (its sender, or a user in its namespaces).
    pub fn may_act_as(&self, user_id: &str) -> bool {
        user_id == self.sender || self.users.iter().any(|n| n.regex.is_match(user_id))
    }

    /// Another client may not claim this user id (an exclusive namespace of this service).
    pub fn claims_user(&self, user_id: &str) -> bool {
        user_id == self.sender
            || self
                .users
                .iter()
                .any(|n| n.exclusive && n.regex.is_match(user_id))
    }

    /// Another client may not create this alias.
    pub fn claims_alias(&self, alias: &str) -> bool {
        self.aliases
            .iter()
            .any(|n| n.exclusive && n.regex.is_match(alias))
    }

    /// The alias is in one of the service's alias namespaces (exclusive or not): the service
    /// is asked about it when nobody has it.
    pub fn alias_in_namespace(&self, alias: &str) -> bool {
        self.aliases.iter().any(|n| n.regex.is_match(alias))
    }

    /// The service wants events of this room: a room id or alias of its namespaces, or a
    /// joined member (or the sender or subject of the event) it may act as.
    pub fn interested_in(&self, state: &crate::state::State, ev: &crate::state::Event) -> bool {
        if self.may_act_as(&ev.sender)
            || ev.state_key.as_deref().is_some_and(|k| self.may_act_as(k))
            || self.rooms.iter().any(|n| n.regex.is_match(&ev.room_id))
        {
            return true;
        }
        let aliased = state.aliases.iter().any(|(alias, (room, _))| {
            *room == ev.room_id && self.aliases.iter().any(|n| n.regex.is_match(alias))
        });
        aliased
            || state
                .rooms
                .get(&ev.room_id)
                .is_some_and(|r| r.joined().any(|m| self.may_act_as(m)))
    }

    /// The `Authorization` header the service expects from this server.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.hs_token)
    }
}

/// Most events in one transaction.
const TXN_MAX_EVENTS: usize = 100;
/// Most stream positions looked at in one pass (the rest wait for the next).
const SCAN_WINDOW: u64 = 10_000;

/// Sends `asv` the events it is interested in, in order, as transactions
/// (`PUT <url>/_matrix/app/v1/transactions/<txnId>`), from where it last acknowledged; retries
/// with growing pauses while the service is down. Runs until the server is dropped.
pub async fn push_transactions(server: std::sync::Weak<crate::Server>, asv: AppService) {
    let Some(url) = asv.url.clone() else { return };
    let mut changes = match server.upgrade() {
        Some(s) => {
            // A service sees what happens from its registration on, not the history before.
            let id = asv.id.clone();
            let started = s.write(|state, batch| {
                if !state.appservice_pos.contains_key(&id) {
                    let head = state.pos;
                    state.put_appservice_pos(batch, &id, head, true);
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
    let mut backoff = std::time::Duration::from_millis(250);
    loop {
        let Some(srv) = server.upgrade() else { return };
        changes.borrow_and_update();
        let (from, head, events) = srv.read(|s| {
            let from = s.appservice_pos.get(&asv.id).copied().unwrap_or(0);
            let head = s.pos.min(from + SCAN_WINDOW);
            let mut events = Vec::new();
            let mut last = from;
            for p in from + 1..=head {
                last = p;
                if let Some(ev) = s.event(p) {
                    if asv.interested_in(s, &ev) {
                        events.push(s.client_event(&ev, None, true));
                        if events.len() >= TXN_MAX_EVENTS {
                            break;
                        }
                    }
                }
            }
            (from, last, events)
        });
        if head == from {
            drop(srv);
            // Nothing new: wait for the next change (or look again now and then).
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(30), changes.changed()).await;
            continue;
        }
        let delivered = events.is_empty() || {
            let target = format!(
                "{}/_matrix/app/v1/transactions/{}",
                url.trim_end_matches('/'),
                head
            );
            let body = serde_json::json!({"events": events});
            matches!(
                srv.outbound.configured.request(
                    "PUT",
                    &target,
                    &[("authorization", asv.authorization())],
                    Some(&body),
                    std::time::Duration::from_secs(30),
                    1 << 16,
                )
                .await,
                Ok(a) if (200..300).contains(&a.status)
            )
        };
        if delivered {
            backoff = std::time::Duration::from_millis(250);
            let id = asv.id.clone();
            let persisted = srv.write(|state, batch| {
                // Empty stretches move the position in memory only; sent ones are recorded.
                state.put_appservice_pos(batch, &id, head, !events.is_empty());
                Ok(())
            });
            if persisted.is_err() {
                return;
            }
        } else {
            drop(srv);
            tracing::warn!(
                appservice = %asv.id,
                events = events.len(),
                retry_in_ms = backoff.as_millis() as u64,
                "an application service transaction was not accepted; retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(60));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "id: bridge\nurl: http://127.0.0.1:9/\nas_token: a\nhs_token: h\nsender_localpart: bot\nnamespaces:\n  users: [{exclusive: true, regex: '@irc_.*'}]\n  aliases: [{exclusive: false, regex: '#irc_.*'}]\nprotocols: [irc]\n";

    #[test]
    fn registrations_are_read_and_namespaces_match_whole_ids() {
        let a = AppService::from_yaml(REG, "reg.yaml", "hs.test").expect("valid");
        assert_eq!(a.sender, "@bot:hs.test");
        assert!(a.may_act_as("@irc_alice:hs.test"));
        assert!(a.may_act_as("@bot:hs.test"));
        assert!(!a.may_act_as("@alice:hs.test"));
        assert!(!a.may_act_as("x@irc_alice:hs.test"));
        assert!(a.claims_user("@irc_bob:hs.test"));
        assert!(
            !a.claims_alias("#irc_room:hs.test"),
            "the alias namespace is not exclusive"
        );
        assert_eq!(a.protocols, ["irc"]);
    }

    #[test]
    fn broken_registrations_say_what_is_wrong() {
        let e = AppService::from_yaml("id: x\n", "reg.yaml", "hs").unwrap_err();
        assert!(
            e.starts_with("reg.yaml: not an application-service registration"),
            "{e}"
        );
        let same = REG.replace("hs_token: h", "hs_token: a");
        assert!(AppService::from_yaml(&same, "r", "hs")
            .unwrap_err()
            .contains("differ"));
        let bad = REG.replace("'@irc_.*'", "'@irc_('");
        assert!(AppService::from_yaml(&bad, "r", "hs")
            .unwrap_err()
            .contains("bad users namespace regex"));
    }
}
