//! The steps that use the identity peer (`identity_call`, `identity_receives`), and what a
//! scenario answers for at its end: every exchange of the peer that concerns one of its actors
//! counts towards coverage, and each one that broke the spec fails it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{text_of, Run};
use crate::peers::identity::{self, Call, Caller, Identity};
use crate::scenario::{IdentityReceives, Scenario, Step, StepKind};

/// What is wrong with an identity step, found when the file loads.
pub(crate) fn lint(scenario: &Scenario, step: &Step) -> Option<String> {
    let kind = step.kind.key();
    let needed = || {
        (!scenario.needs.iter().any(|n| n == "identity"))
            .then(|| format!("an `{kind}` step needs `needs: [identity]`"))
    };
    match &step.kind {
        StepKind::IdentityCall(op) => {
            if let Some(why) = needed() {
                return Some(why);
            }
            let Some(route) = identity::route(op) else {
                return Some(format!(
                    "no operation `{op}` in the identity-service route table"
                ));
            };
            if let Some(p) = route.path_params().find(|p| !step.path.contains_key(*p)) {
                return Some(format!("`{op}` needs path parameter `{p}`"));
            }
            step.path
                .keys()
                .find(|k| !route.path_params().any(|p| p == k.as_str()))
                .map(|k| format!("`{op}` has no path parameter `{k}`"))
        }
        StepKind::IdentityReceives(w) => {
            if let Some(why) = needed() {
                return Some(why);
            }
            let e = &step.expect;
            if e.status.is_some()
                || e.errcode.is_some()
                || e.body.is_some()
                || !e.headers.is_empty()
            {
                return Some("`identity_receives` matches with `match`; `expect` takes only `checks` (on the exchange's record)".into());
            }
            let known = match w.operation.strip_prefix("server-server/") {
                Some(op) => crate::federation::client::route(op).is_some(),
                None => identity::route(&w.operation).is_some(),
            };
            (!known).then(|| {
                format!(
                    "`{}` is neither an identity-service operation nor `server-server/<operationId>`",
                    w.operation
                )
            })
        }
        _ => None,
    }
}

impl Run<'_> {
    fn identity(&self) -> Result<std::sync::Arc<Identity>, String> {
        self.env
            .peers
            .as_ref()
            .and_then(|p| p.identity.clone())
            .ok_or_else(|| "no identity server is running".to_string())
    }

    /// The user ids of the scenario's actors (on the server under test).
    fn actor_ids(&self) -> Vec<String> {
        self.scenario
            .actors
            .iter()
            .filter_map(|a| self.vars.values.get(&format!("{a}.user_id")))
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    }

    /// Calls an identity-service operation on the identity peer, as the user's client.
    pub(super) async fn identity_call(&mut self, step: &Step) -> Result<(), String> {
        let StepKind::IdentityCall(op) = &step.kind else {
            return Err("not an identity_call step".into());
        };
        let route = identity::route(op).ok_or_else(|| format!("no operation {op}"))?;
        let id = self.identity()?;
        let mut path = route.path.to_string();
        for (k, v) in self.render_params(&step.path)? {
            let encoded = percent_encoding::utf8_percent_encode(
                &text_of(&v),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string();
            path = path.replace(&format!("{{{k}}}"), &encoded);
        }
        let params = self.render_params(&step.query)?;
        let query = (!params.is_empty()).then(|| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &params {
                q.append_pair(k, &text_of(v));
            }
            q.finish()
        });
        let body = match &step.body {
            Some(b) => self.vars.render(b)?.to_string(),
            None if route.request_body == mxconform_generated::BodyKind::Json => "{}".into(),
            None => String::new(),
        };
        let authorization = match &step.token {
            Some(t) => vec![format!("Bearer {}", self.vars.render_text(t)?)],
            None => Vec::new(),
        };
        let call = Call {
            caller: Caller::Scenario,
            method: route.method.as_str().to_string(),
            path,
            query,
            authorization,
            body: body.into(),
        };
        let (status, answer, violations) = id.answer(call).await;
        self.record(&format!("identity/{op}"));
        if !violations.is_empty() && !step.invalid {
            return Err(format!(
                "the request breaks the identity-service schema: {}",
                violations.join("; ")
            ));
        }
        crate::expect::response(&step.expect, status, &answer, &self.vars)?;
        self.capture(step, &answer, &[])
    }

    /// Waits until the identity peer has an exchange of the operation that matches, among those
    /// of the scenario's actors and those of nobody in particular; one of them that broke the
    /// spec fails the step.
    pub(super) async fn identity_receives(
        &mut self,
        step: &Step,
        w: &IdentityReceives,
    ) -> Result<(), String> {
        let id = self.identity()?;
        let operation = if w.operation.contains('/') {
            w.operation.clone()
        } else {
            format!("identity/{}", w.operation)
        };
        let want = match &w.matches {
            Some(m) => self.vars.render(m)?,
            None => json!({}),
        };
        let within = Duration::from_millis(w.within_ms.unwrap_or(10_000).min(60_000));
        let users = self.actor_ids();
        // One that broke the spec ends the wait at once.
        let found = id
            .exchanges
            .find(
                |e| {
                    e.operation == operation
                        && (e.users.is_empty() || e.users.iter().any(|u| users.contains(u)))
                        && (crate::expect::subset(&want, &e.record) || !e.violations.is_empty())
                },
                within,
            )
            .await
            .map_err(|seen| {
                format!(
                    "the identity server had no {operation} matching {want} within {:.1} s ({seen} exchanges in all)",
                    within.as_secs_f64()
                )
            })?;
        if !found.violations.is_empty() {
            return Err(format!(
                "{operation} broke the spec: {}; it was {}",
                found.violations.join("; "),
                found.record
            ));
        }
        for c in &step.expect.checks {
            crate::expect::check(c, &found.record, &self.vars)?;
        }
        self.record(&operation);
        self.capture(step, &found.record, &[])
    }

    /// At the scenario's end: the identity operations its actors went through count as
    /// exercised, and any of those exchanges that broke the spec fails it.
    pub(super) fn identity_outcome(
        &mut self,
        since: Instant,
        result: Result<(), String>,
    ) -> Result<(), String> {
        if !self.scenario.needs.iter().any(|n| n == "identity") {
            return result;
        }
        let Ok(id) = self.identity() else {
            return result;
        };
        let exchanges = id.exchanges.concerning(&self.actor_ids(), since);
        let mut broken = Vec::new();
        for e in &exchanges {
            if e.record.get("status").and_then(Value::as_u64) != Some(0)
                && e.operation != "identity/?"
            {
                self.record(&e.operation);
            }
            broken.extend(e.violations.iter().map(|v| format!("{}: {v}", e.operation)));
        }
        if broken.is_empty() {
            return result;
        }
        let listed = broken.join("\n  ");
        match result {
            Ok(()) => Err(format!(
                "the server under test misbehaved towards the identity server:\n  {listed}"
            )),
            Err(e) => Err(format!(
                "{e}\nand the server under test misbehaved towards the identity server:\n  {listed}"
            )),
        }
    }
}
