//! The join hook (like Centrifugo's subscribe proxy): before a join is accepted, the node asks
//! the application's backend. It `POST`s `{"topic","key","params","claims","node"}`, signed
//! with [`signature`](crate::security::signature), and the answer decides:
//! `{"allow": true, "meta": {...}}` lets the join through with `meta` merged as trusted (as a
//! token's `meta`: the client cannot override it), `{"allow": false, "reason": "..."}` refuses
//! it with that reason.
//!
//! The wait is bounded by the hook's timeout and paid by the joiner alone. A hook that cannot
//! answer (down, a non-2xx status, a timeout, an answer that does not parse) lets the join
//! through or refuses it as configured ([`HookFailure`]).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::config::{HookFailure, JoinHookSettings};
use crate::metrics::Metrics;
use crate::outbound::{post_json, Endpoint};
use crate::security::auth::{unix_now, Identity};
use crate::security::signature::{sign, SIGNATURE_HEADER};

/// The reason a client gets when the hook refuses without one.
pub const REFUSED: &str = "join refused";
/// The reason a client gets when the hook cannot answer (with `on_error` deny).
pub const UNAVAILABLE: &str = "join hook unavailable";

/// What the hook decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Join, with these trusted meta fields.
    Allow(Map<String, Value>),
    /// Refuse, with this reason for the client.
    Deny(String),
}

/// The node's join hook.
#[derive(Debug)]
pub struct JoinHook {
    /// The URL, or why it is unusable (then every call fails and `on_error` decides).
    endpoint: Result<Endpoint, String>,
    settings: JoinHookSettings,
    node: String,
    metrics: Arc<Metrics>,
}

/// Why the hook gave no usable answer (logged, never shown to clients).
#[derive(Debug)]
enum Failure {
    Timeout,
    Request(String),
    Status(u16),
    Answer(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Request(e) => f.write_str(e),
            Failure::Status(s) => write!(f, "answered HTTP {s}"),
            Failure::Answer(e) => write!(f, "answer not understood: {e}"),
        }
    }
}

impl JoinHook {
    /// The hook of node `node`. A URL that does not parse makes every call fail (check it
    /// first with [`Endpoint::parse`] to refuse it at start).
    pub fn new(settings: JoinHookSettings, node: &str, metrics: Arc<Metrics>) -> Self {
        let endpoint = Endpoint::parse(&settings.url);
        if let Err(e) = &endpoint {
            tracing::error!("join hook URL unusable, every join hook call fails: {e}");
        }
        JoinHook {
            endpoint,
            settings,
            node: node.to_string(),
            metrics,
        }
    }

    /// Asks whether `key` may join `topic` with `params`, as `claims` (the verified token, if
    /// any). Takes at most the hook's timeout.
    pub async fn ask(
        &self,
        topic: &str,
        key: &str,
        params: &Value,
        claims: Option<&Identity>,
    ) -> Decision {
        let claims = claims.map(
            |id| json!({"sub": id.key, "rooms": id.rooms, "meta": id.meta, "exp": id.expires_at}),
        );
        let body = json!({
            "topic": topic,
            "key": key,
            "params": params,
            "claims": claims,
            "node": self.node,
        })
        .to_string();
        let answer = tokio::time::timeout(self.settings.timeout, self.call(body.as_bytes())).await;
        let decision = match answer {
            Ok(Ok(decision)) => decision,
            Ok(Err(failure)) => return self.failed(topic, failure),
            Err(_) => return self.failed(topic, Failure::Timeout),
        };
        match &decision {
            Decision::Allow(_) => self.metrics.join_hook_allowed.inc(),
            Decision::Deny(_) => self.metrics.join_hook_refused.inc(),
        }
        decision
    }

    fn failed(&self, topic: &str, failure: Failure) -> Decision {
        self.metrics.join_hook_failed.inc();
        tracing::warn!(
            url = self.settings.url,
            topic,
            on_error = ?self.settings.on_error,
            "join hook failed: {failure}"
        );
        match self.settings.on_error {
            HookFailure::Allow => Decision::Allow(Map::new()),
            HookFailure::Deny => Decision::Deny(UNAVAILABLE.into()),
        }
    }

    async fn call(&self, body: &[u8]) -> Result<Decision, Failure> {
        let signature = sign(self.settings.secret.as_bytes(), unix_now(), body);
        let headers = [(SIGNATURE_HEADER, signature.as_str())];
        let endpoint = self
            .endpoint
            .as_ref()
            .map_err(|e| Failure::Request(e.clone()))?;
        let response = post_json(endpoint, &headers, body)
            .await
            .map_err(|e| Failure::Request(e.to_string()))?;
        if !response.is_success() {
            return Err(Failure::Status(response.status));
        }
        parse_answer(&response.body).map_err(Failure::Answer)
    }
}

/// Reads the hook's answer: `{"allow": bool, "meta": {...}, "reason": "..."}`.
pub fn parse_answer(body: &[u8]) -> Result<Decision, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match answer.get("allow") {
        Some(Value::Bool(true)) => match answer.get("meta") {
            None | Some(Value::Null) => Ok(Decision::Allow(Map::new())),
            Some(Value::Object(meta)) => Ok(Decision::Allow(meta.clone())),
            Some(_) => Err("\"meta\" must be an object".into()),
        },
        Some(Value::Bool(false)) => {
            let reason = match answer.get("reason") {
                Some(Value::String(reason)) if !reason.is_empty() => reason.clone(),
                _ => REFUSED.to_string(),
            };
            Ok(Decision::Deny(reason))
        }
        _ => Err("\"allow\" must be true or false".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_allow_with_meta_or_deny_with_a_reason() {
        assert_eq!(
            parse_answer(br#"{"allow":true,"meta":{"role":"admin"}}"#),
            Ok(Decision::Allow(
                serde_json::from_value(json!({"role": "admin"})).unwrap()
            ))
        );
        assert_eq!(
            parse_answer(br#"{"allow":true}"#),
            Ok(Decision::Allow(Map::new()))
        );
        assert_eq!(
            parse_answer(br#"{"allow":false,"reason":"banned"}"#),
            Ok(Decision::Deny("banned".into()))
        );
        assert_eq!(
            parse_answer(br#"{"allow":false}"#),
            Ok(Decision::Deny(REFUSED.into()))
        );
        for bad in [
            &br#"{}"#[..],
            br#"{"allow":"yes"}"#,
            br#"{"allow":true,"meta":[1]}"#,
            b"nope",
        ] {
            assert!(
                parse_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
