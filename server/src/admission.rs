//! The checks a connect request passes before a socket machine starts, in one order for both
//! transports: the protocol version (`vsn`), the browser origin, a slot under the connection
//! limits, the token, and the abuse penalty box. A WebSocket's TCP connection was already
//! counted at accept (in total and per address), before its request was read; a long-poll
//! session is counted here, as a connection of its own, after the address's session-opening
//! rate allowed it. A refused request never reaches a machine; the
//! transport answers it in its own way (an HTTP status for a WebSocket upgrade, a JSON
//! `status` for long-poll), and the refusal is counted under its reason.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use rollcall_core::protocol::Serializer;
use tokio::time::Instant;

use crate::channel;
use crate::metrics::{Refusal, Transport};
use crate::security::auth::{self, Identity};
use crate::security::limits::{client_ip, AcceptedConn, ConnHold, ConnSlot, SlotRefused};
use crate::security::origin::check_origin;
use crate::socket::{ConnectInfo, NodeContext, SocketContext};

/// A connect request as a transport read it.
#[derive(Debug)]
pub struct Request<'a> {
    /// Which endpoint it came to.
    pub transport: Transport,
    /// Its query parameters (`vsn`, `user_id`, `token`, ...).
    pub params: HashMap<String, String>,
    /// The phoenix.js `authToken`, from wherever this transport carries it.
    pub auth_token: Option<Vec<u8>>,
    /// Its headers (`Origin`, `X-Forwarded-For`).
    pub headers: &'a HeaderMap,
    /// The TCP peer, when the server knows it.
    pub peer: Option<SocketAddr>,
    /// The TCP connection's slot taken at accept ([`Server::serve`](crate::Server::serve)
    /// gives every request one; a router an app serves itself has none).
    pub accepted: Option<AcceptedConn>,
}

/// An admitted connection: the context its machine runs with, and what keeps it counted under
/// the connection limits (held for as long as the connection lives).
#[derive(Debug)]
pub struct Admitted {
    /// The machine's context, bound to the verified identity.
    pub context: SocketContext,
    /// Given back when dropped.
    pub slot: ConnHold,
}

/// A refused connect: which check refused it and the reason for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The check that refused it (the metric's reason).
    pub why: Refusal,
    /// What the client (and the log) is told.
    pub reason: String,
}

impl Refused {
    /// True when the same request may pass later (the address is at its limit, the key is in
    /// the penalty box): a WebSocket gets 429 instead of 403.
    pub fn for_now(&self) -> bool {
        matches!(
            self.why,
            Refusal::PerAddress | Refusal::Penalty | Refusal::NodeFull | Refusal::OpenRate
        )
    }
}

/// Runs the connect checks for `request` on `node`; counts and logs a refusal.
pub fn admit(node: &NodeContext, request: Request<'_>) -> Result<Admitted, Refused> {
    let transport = request.transport;
    checks(node, request).inspect_err(|refused| {
        tracing::info!(
            transport = transport.label(),
            "refused connect: {}",
            refused.reason
        );
        node.metrics.refused(refused.why);
    })
}

fn checks(node: &NodeContext, request: Request<'_>) -> Result<Admitted, Refused> {
    let refuse = |why: Refusal, reason: String| Refused { why, reason };
    let security = &node.config.security;
    let vsn = request.params.get("vsn").map(String::as_str);
    let serializer =
        Serializer::negotiate(vsn).map_err(|e| refuse(Refusal::Version, e.to_string()))?;
    check_origin(&security.allowed_origins, request.headers)
        .map_err(|why| refuse(Refusal::Origin, why))?;
    let ip = client_ip(request.peer, request.headers, security.trust_forwarded_for);
    let slot = take_slot(node, &request, ip).map_err(|why| {
        let refusal = match why {
            SlotRefused::NodeFull(_) => Refusal::NodeFull,
            SlotRefused::PerAddress(_) => Refusal::PerAddress,
        };
        refuse(refusal, why.to_string())
    })?;
    if request.transport == Transport::LongPoll && !node.longpoll_opens.take(ip, Instant::now()) {
        return Err(refuse(
            Refusal::OpenRate,
            "too many long-poll sessions opened from this address; try again later".into(),
        ));
    }
    let slot = ConnHold::new(request.accepted.clone(), slot);
    let info = ConnectInfo {
        params: request.params,
        auth_token: request.auth_token,
    };
    // The reason is logged and answered; the token itself never is.
    let identity = auth::authenticate(security.verifier.as_ref(), info.token(), auth::unix_now())
        .map_err(|why| refuse(Refusal::Token, why.to_string()))?;
    check_penalty(node, &info, identity.as_ref()).map_err(|why| refuse(Refusal::Penalty, why))?;
    let context = SocketContext::new(serializer, info, node.clone()).with_identity(identity);
    channel::check_key(&context.key).map_err(|why| refuse(Refusal::Key, why.to_string()))?;
    Ok(Admitted { context, slot })
}

/// The connection's own slot: a long-poll session is a connection of its own (in total and
/// per address); a WebSocket was counted at accept, unless its address is only known from
/// `X-Forwarded-For` (counted per address here) or no accept counted it (counted here in full).
fn take_slot(
    node: &NodeContext,
    request: &Request<'_>,
    ip: Option<IpAddr>,
) -> Result<ConnSlot, SlotRefused> {
    let max = node.config.security.max_conns_per_ip;
    match (&request.accepted, request.transport) {
        (_, Transport::LongPoll) | (None, _) => node.conn_counts.acquire(ip, max, true),
        (Some(accepted), _) if accepted.per_address_counted => Ok(ConnSlot::uncounted()),
        (Some(_), _) => node.conn_counts.acquire(ip, max, false),
    }
}

/// Refuses a connect whose presence key (the token's `sub`, else `user_id`) is in the penalty
/// box, closed for abuse a moment ago; the reason says when to come back.
fn check_penalty(
    node: &NodeContext,
    info: &ConnectInfo,
    identity: Option<&Identity>,
) -> Result<(), String> {
    let key = match identity {
        Some(id) => Some(id.key.as_str()),
        None => info.params.get("user_id").map(String::as_str),
    };
    let left = key.and_then(|k| node.penalty_box.remaining(k, Instant::now()));
    match left {
        Some(left) => Err(format!(
            "rate limited: try again in {} s",
            left.as_secs_f64().ceil().max(1.0)
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::pubsub::Local;
    use crate::tracker::Tracker;

    fn node(config: Config) -> NodeContext {
        let (_, shutdown) = tokio::sync::watch::channel(false);
        let tracker = Tracker::spawn(Arc::new(Local::new("test")));
        NodeContext::new(
            Arc::new(config),
            tracker,
            Arc::new(Metrics::default()),
            shutdown,
        )
    }

    fn request<'a>(query: &[(&str, &str)], headers: &'a HeaderMap) -> Request<'a> {
        Request {
            transport: Transport::WebSocket,
            params: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            auth_token: None,
            headers,
            peer: None,
            accepted: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_penalty_refuses_the_key_until_it_ends() {
        let node = node(Config::default());
        let info = ConnectInfo {
            params: [("user_id".to_string(), "flooder".to_string())].into(),
            auth_token: None,
        };
        node.penalty_box
            .punish("flooder", Instant::now() + Duration::from_secs(10));
        assert_eq!(
            check_penalty(&node, &info, None),
            Err("rate limited: try again in 10 s".into())
        );
        assert!(check_penalty(&node, &ConnectInfo::default(), None).is_ok());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(check_penalty(&node, &info, None).is_ok());
    }

    #[tokio::test]
    async fn the_version_is_checked_before_the_origin() {
        let mut config = Config::default();
        config.security.allowed_origins = crate::config::parse_origins("https://app.example.com");
        let node = node(config);
        let mut headers = HeaderMap::new();
        headers.insert("origin", "https://evil.example".parse().unwrap());
        let refused = admit(&node, request(&[("vsn", "9.0.0")], &headers)).unwrap_err();
        assert_eq!(refused.why, Refusal::Version);
        let refused = admit(&node, request(&[("vsn", "2.0.0")], &headers)).unwrap_err();
        assert_eq!(refused.why, Refusal::Origin);
        assert!(!refused.for_now());
        let admitted = admit(&node, request(&[("user_id", "ann")], &HeaderMap::new()))
            .expect("no origin header: not a browser, admitted");
        assert_eq!(admitted.context.key, "ann");
        assert_eq!(admitted.context.serializer, Serializer::V1Json);
    }
}
