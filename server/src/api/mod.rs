//! The HTTP API for backends: who is in a room ([`presence`]: `GET /api/presence/{topic}` and
//! `/count`) and server-to-room messages ([`broadcast`]: `POST /api/broadcast/{topic}`).
//!
//! Access follows the socket rules, so the API never reaches further than a client could by
//! joining: with a token secret configured, the request needs `Authorization: Bearer <token>`
//! (a token the server would accept on a socket) whose `rooms` claim allows the topic; in open
//! mode anyone may ask, as anyone may join. Either way only topics some channel route serves
//! exist, and a topic over 255 bytes or with control characters gets 400. Each client address
//! may make `--api-rate` presence requests per second (429 beyond). The topic is one path
//! segment: percent-encode it (`room%3Alobby` or `room:lobby` both work, a `/` in a topic must
//! be `%2F`).

pub mod broadcast;
pub mod presence;

pub use broadcast::broadcast;
pub use presence::{presence, presence_count};

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
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
    pub(crate) fn new(status: StatusCode, reason: impl Into<String>) -> Self {
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

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
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

/// The error of a request over the per-address API rate (HTTP 429): presence reads and
/// broadcasts share it.
pub const RATE_LIMITED: &str = "rate limited: too many API requests from this address";

/// Takes one request from the client address's `--api-rate` budget, or answers 429. Checked
/// before anything else: a listing of a big room is the most expensive read the node serves,
/// and an answer is work whoever asks.
pub(crate) fn take_rate(
    node: &NodeContext,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let peer = info.map(|Extension(ConnectInfo(addr))| addr);
    let ip = client_ip(peer, headers, node.config.security.trust_forwarded_for);
    if node.api_requests.take(ip, Instant::now()) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED))
    }
}

/// Decides whether the request may use `topic`: its name, then origin, then token (when the server has a
/// secret), then some channel route must serve the topic, then the token's `rooms` claim must
/// allow it.
pub fn authorize(node: &NodeContext, headers: &HeaderMap, topic: &str) -> Result<(), ApiError> {
    channel::check_topic(topic)
        .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, why.reason()))?;
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
    if !node.routes.serves(topic) {
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
