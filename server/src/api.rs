//! The presence HTTP API for backends: `GET /api/presence/{topic}` answers who is in a room,
//! cluster-wide as this node's tracker sees it, in the shape a `presence_state` push carries;
//! `GET /api/presence/{topic}/count` answers only how many keys are listed.
//!
//! Access follows the socket rules, so the API never shows more than a client could see by
//! joining: with a token secret configured, the request needs `Authorization: Bearer <token>`
//! (a token the server would accept on a socket) whose `rooms` claim allows the topic; in open
//! mode anyone may ask, as anyone may join. Either way only topics matching `--rooms` exist.
//! Each client address may make `--api-rate` requests per second (429 beyond). The topic is one
//! path segment: percent-encode it (`room%3Alobby` or `room:lobby` both work,
//! a `/` in a topic must be `%2F`).

use std::net::SocketAddr;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::channel;
use crate::security::auth::{self, AuthError};
use crate::security::limits::client_ip;
use crate::security::origin::check_origin;
use crate::socket::NodeContext;

/// A refused API request: its status and the reason in the JSON body (`{"error": reason}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What is wrong, for the caller.
    pub reason: String,
}

impl ApiError {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.status, json!({"error": self.reason}));
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rollcall\""),
            );
        }
        resp
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let unauthorized = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, why);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("bearer token required"))?;
    let text = value
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    match text.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(unauthorized("Authorization must be \"Bearer <token>\"")),
    }
}

/// Decides whether the request may read `topic`: origin, then token (when the server has a
/// secret), then the topic must be a room, then the token's `rooms` claim must allow it.
pub fn authorize(node: &NodeContext, headers: &HeaderMap, topic: &str) -> Result<(), ApiError> {
    let security = &node.config.security;
    check_origin(&security.allowed_origins, headers)
        .map_err(|why| ApiError::new(StatusCode::FORBIDDEN, why))?;
    let identity = match &security.verifier {
        None => None,
        Some(verifier) => {
            let token = bearer(headers)?;
            // The reason is answered; the token itself is never logged.
            let identity = verifier
                .verify(token, auth::unix_now())
                .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
            Some(identity)
        }
    };
    if !node.config.rooms.iter().any(|p| p.matches(topic)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("not a room topic: {topic}"),
        ));
    }
    if let Some(id) = identity {
        if !id.may_join(topic) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                AuthError::TopicNotAllowed(topic.to_string()).to_string(),
            ));
        }
    }
    Ok(())
}

/// The topic from the path (or a JSON 400 saying why it could not be read, e.g. its
/// percent-encoding is not UTF-8) once the request may read it, and who is in it.
async fn listing(
    node: &NodeContext,
    path: Result<Path<String>, PathRejection>,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<(String, Value), ApiError> {
    let security = &node.config.security;
    let ip = client_ip(peer, headers, security.trust_forwarded_for);
    // Before anything else: a listing of a big room is the most expensive read the node
    // serves, and an answer is work whoever asks.
    if !node.api_requests.take(ip, Instant::now()) {
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED));
    }
    let Path(topic) = path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    channel::check_topic(&topic)
        .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, why.reason()))?;
    authorize(node, headers, &topic)?;
    let presences = node.tracker.list(&topic).await;
    Ok((topic, presences))
}

/// The error of a request over the per-address presence API rate (HTTP 429).
pub const RATE_LIMITED: &str = "rate limited: too many presence API requests from this address";

fn peer(info: Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<SocketAddr> {
    info.map(|Extension(ConnectInfo(addr))| addr)
}

/// Number of keys in a presence map.
fn key_count(presences: &Value) -> usize {
    presences.as_object().map_or(0, |m| m.len())
}

/// `GET /api/presence/{topic}`: `{"topic", "presences": {key: {"metas": [...]}}, "count"}`.
pub async fn presence(
    State(node): State<NodeContext>,
    path: Result<Path<String>, PathRejection>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (topic, presences) = listing(&node, path, peer(info), &headers).await?;
    let count = key_count(&presences);
    Ok(json_response(
        StatusCode::OK,
        json!({"topic": topic, "presences": presences, "count": count}),
    ))
}

/// `GET /api/presence/{topic}/count`: `{"topic", "count"}`, the number of keys listed.
pub async fn presence_count(
    State(node): State<NodeContext>,
    path: Result<Path<String>, PathRejection>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (topic, presences) = listing(&node, path, peer(info), &headers).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"topic": topic, "count": key_count(&presences)}),
    ))
}
