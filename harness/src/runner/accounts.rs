//! The scenario's accounts: its actors registered (open registration with the dummy stage,
//! or Synapse's shared-secret registration), and the administrator account made once and
//! logged in to afterwards.

use super::*;

impl<'a> Run<'a> {
    pub(super) async fn register(&mut self, actor: &str) -> Result<(), String> {
        let localpart = format!("{actor}-{}", self.vars.unique);
        let password = format!("pw-{}-{}", self.vars.unique, actor);
        let partner = self
            .on_partner
            .as_ref()
            .and_then(|p| self.env.partners.get(p));
        let registration = partner.map_or(self.env.profile.registration, |p| p.config.registration);
        let body = match registration {
            Registration::Open => self.register_open(&localpart, &password).await?,
            Registration::SharedSecret => {
                self.register_shared_secret(&localpart, &password, false)
                    .await?
            }
        };
        let get = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("the registration response has no `{k}`: {body}"))
        };
        let user_id = get("user_id")?;
        let token = get("access_token")?;
        let device_id = get("device_id")?;
        self.vars.set(&format!("{actor}.user_id"), json!(user_id));
        self.vars.set(&format!("{actor}.token"), json!(token));
        self.vars
            .set(&format!("{actor}.device_id"), json!(device_id));
        self.vars
            .set(&format!("{actor}.localpart"), json!(localpart));
        self.vars.set(&format!("{actor}.password"), json!(password));
        self.tokens.insert(actor.to_string(), token);
        Ok(())
    }

    /// `POST /register`, then the `m.login.dummy` stage when the server asks for one.
    async fn register_open(
        &mut self,
        localpart: &str,
        password: &str,
    ) -> Result<Value, RegisterError> {
        let route = crate::route("register").ok_or("no register operation")?;
        let mut body = json!({"username": localpart, "password": password, "initial_device_display_name": "mxconform"});
        let first = self
            .call(
                route,
                &BTreeMap::new(),
                &[],
                Body::Json(body.clone()),
                None,
                false,
                None,
            )
            .await?;
        if first.status == 200 {
            return Ok(first.body);
        }
        if first.status != 401 {
            return Err(RegisterError::of(
                &first.body,
                format!("status {} from register: {}", first.status, first.body),
            ));
        }
        let session = first
            .body
            .get("session")
            .and_then(Value::as_str)
            .map(str::to_string);
        let offers_dummy = first
            .body
            .get("flows")
            .and_then(Value::as_array)
            .is_some_and(|flows| {
                flows.iter().any(|f| {
                    f.get("stages")
                        .and_then(Value::as_array)
                        .is_some_and(|s| s == &[json!("m.login.dummy")])
                })
            });
        if !offers_dummy {
            return Err(RegisterError::Other(format!(
                "the server offers no registration flow of just m.login.dummy: {}",
                first.body
            )));
        }
        let mut auth = json!({"type": "m.login.dummy"});
        if let Some(s) = session {
            auth["session"] = json!(s);
        }
        body["auth"] = auth;
        let second = self
            .call(
                route,
                &BTreeMap::new(),
                &[],
                Body::Json(body),
                None,
                false,
                None,
            )
            .await?;
        if second.status != 200 {
            return Err(RegisterError::of(
                &second.body,
                format!(
                    "status {} from register with m.login.dummy: {}",
                    second.status, second.body
                ),
            ));
        }
        Ok(second.body)
    }

    /// The first of the scenario's room versions the server's capabilities do not list as
    /// available, asked as the first actor.
    pub(super) async fn missing_room_version(&mut self) -> Result<Option<String>, String> {
        let route = crate::route("getCapabilities").ok_or("no getCapabilities operation")?;
        let actor = self
            .scenario
            .actors
            .first()
            .ok_or("room_versions needs an actor to ask /capabilities")?;
        let token = self.tokens.get(actor).cloned();
        let resp = self
            .call(
                route,
                &BTreeMap::new(),
                &[],
                Body::None,
                token.as_deref(),
                false,
                None,
            )
            .await?;
        if resp.status != 200 {
            return Err(format!(
                "/capabilities answered {}: {}",
                resp.status, resp.body
            ));
        }
        let available = resp.body.pointer("/capabilities/m.room_versions/available");
        Ok(self
            .scenario
            .room_versions
            .iter()
            .find(|v| available.and_then(|a| a.get(v.as_str())).is_none())
            .cloned())
    }

    /// Sets `admin.user_id`, `admin.token` and `admin.localpart`, making the account (or
    /// logging in to it) once per run.
    pub(super) async fn admin(&mut self) -> Result<(), String> {
        let env = self.env;
        let localpart = env
            .profile
            .admin
            .clone()
            .ok_or("the profile names no admin")?;
        let (user_id, token) = env
            .admin
            .get_or_init(|| self.make_admin(&localpart))
            .await
            .clone()?;
        self.vars.set("admin.user_id", json!(user_id));
        self.vars.set("admin.token", json!(token));
        self.vars.set("admin.localpart", json!(localpart));
        Ok(())
    }

    pub(super) async fn make_admin(&mut self, localpart: &str) -> Result<(String, String), String> {
        // The password is the same on every run (derived from the shared secret, if any), so
        // a later run against the same server logs in to the account an earlier one made.
        let secret = self.env.profile.shared_secret.clone().unwrap_or_default();
        let password = hmac_sha1_hex(
            &secret,
            &[b"mxconform admin password\0", localpart.as_bytes()],
        )?;
        let made = match self.env.profile.registration {
            Registration::Open => self.register_open(localpart, &password).await,
            Registration::SharedSecret => {
                self.register_shared_secret(localpart, &password, true)
                    .await
            }
        };
        let body = match made {
            Ok(b) => b,
            Err(RegisterError::InUse(_)) => {
                let route = crate::route("login").ok_or("no login operation")?;
                let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": password});
                let resp = self
                    .call(
                        route,
                        &BTreeMap::new(),
                        &[],
                        Body::Json(body),
                        None,
                        false,
                        None,
                    )
                    .await?;
                if resp.status != 200 {
                    return Err(format!(
                        "{localpart} exists but the login answered {}: {}",
                        resp.status, resp.body
                    ));
                }
                resp.body
            }
            Err(e) => return Err(e.into()),
        };
        let get = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("no `{k}` in {body}"))
        };
        Ok((get("user_id")?, get("access_token")?))
    }

    /// Synapse's admin registration: a nonce, then an HMAC-SHA1 over it and the credentials.
    async fn register_shared_secret(
        &mut self,
        localpart: &str,
        password: &str,
        admin: bool,
    ) -> Result<Value, RegisterError> {
        let secret = match self
            .on_partner
            .as_ref()
            .and_then(|p| self.env.partners.get(p))
        {
            Some(p) => p.config.shared_secret.clone(),
            None => self.env.profile.shared_secret.clone(),
        }
        .unwrap_or_default();
        let path = "/_synapse/admin/v1/register";
        let nonce_resp = self
            .client()
            .send("GET", path, &[], Body::None, None, None, Default::default())
            .await?;
        let nonce = nonce_resp
            .body
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no nonce from {path}: {}", nonce_resp.body))?
            .to_string();
        let digest = hmac_sha1_hex(
            &secret,
            &[
                nonce.as_bytes(),
                b"\0",
                localpart.as_bytes(),
                b"\0",
                password.as_bytes(),
                if admin { b"\0admin" } else { b"\0notadmin" },
            ],
        )?;
        let body = json!({"nonce": nonce, "username": localpart, "password": password, "mac": digest, "admin": admin});
        let resp = self
            .client()
            .send(
                "POST",
                path,
                &[],
                Body::Json(body),
                None,
                None,
                Default::default(),
            )
            .await?;
        if resp.status != 200 {
            return Err(RegisterError::of(
                &resp.body,
                format!("status {} from {path}: {}", resp.status, resp.body),
            ));
        }
        Ok(resp.body)
    }
}

/// Why registering an account failed: the name is taken (the harness then logs in to it, for
/// the administrator made on an earlier run), or anything else.
#[derive(Debug)]
enum RegisterError {
    InUse(String),
    Other(String),
}

impl RegisterError {
    /// `M_USER_IN_USE` in the answer's `errcode` is [`RegisterError::InUse`].
    fn of(body: &Value, text: String) -> RegisterError {
        if body.get("errcode").and_then(Value::as_str) == Some("M_USER_IN_USE") {
            RegisterError::InUse(text)
        } else {
            RegisterError::Other(text)
        }
    }
}

impl From<String> for RegisterError {
    fn from(e: String) -> RegisterError {
        RegisterError::Other(e)
    }
}

impl From<&str> for RegisterError {
    fn from(e: &str) -> RegisterError {
        RegisterError::Other(e.to_string())
    }
}

impl From<RegisterError> for String {
    fn from(e: RegisterError) -> String {
        match e {
            RegisterError::InUse(t) | RegisterError::Other(t) => t,
        }
    }
}
