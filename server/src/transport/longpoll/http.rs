//! The handlers of `/socket/longpoll`: `GET` opens or polls a session, `POST` delivers frames,
//! `OPTIONS` answers the CORS preflight. Every answer is HTTP 200 with a JSON `status`.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::relay::{relay, Request};
use super::session::{deliver, owner_of, parse_body, poll, start};
use super::{LongPollState, REFUSED_FOR_NOW};
use crate::admission::{self, admit, Admitted};
use crate::metrics::{Refusal, Transport};
use crate::security::origin::check_origin;

fn respond(body: Value) -> Response {
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

fn session_token(headers: &HeaderMap, params: &HashMap<String, String>) -> Option<String> {
    headers
        .get("x-phoenix-longpoll-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.get("token").cloned())
        .filter(|t| !t.is_empty())
}

/// The `{"status": 403}` answer to a request from an origin not allowed, checked before any
/// session is looked at; `None` when the origin may ask.
fn refuse_origin(state: &LongPollState, headers: &HeaderMap) -> Option<Response> {
    let why = check_origin(&state.node.config.security.allowed_origins, headers).err()?;
    tracing::info!("refused long-poll request: {why}");
    state.node.metrics.refused(Refusal::Origin);
    Some(respond(json!({"status": 403})))
}

/// `OPTIONS /socket/longpoll`: the CORS preflight.
pub async fn options(headers: HeaderMap) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("get, post, options"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3600"),
    );
    if let Some(req) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req.clone());
    }
    resp
}

/// `GET /socket/longpoll`: open a session or poll one.
pub async fn get(
    State(state): State<LongPollState>,
    Query(params): Query<HashMap<String, String>>,
    peer: Option<Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_origin(&state, &headers) {
        return refused;
    }
    if let Some(token) = session_token(&headers, &params) {
        if let Some(session) = state.longpoll.sessions.get(&token) {
            let window = state.node.config.longpoll_window;
            return respond(poll(window, &state.longpoll.sessions, token, session).await);
        }
        if let Some(owner) = remote_owner(&state, &token) {
            let request = Request::Poll { token };
            // An answer of "no such session" falls through: the client gets a new one here.
            if let Some(answer) = relay(&state, &owner, request).await {
                return respond(answer);
            }
        }
    }
    open(&state, params, peer.map(|Extension(info)| info.0), &headers)
}

/// The owner of `token` when it is another node of the cluster.
fn remote_owner(state: &LongPollState, token: &str) -> Option<String> {
    owner_of(token).filter(|owner| owner != state.node.tracker.node())
}

/// Opens a session if the connect checks pass: `410` with its token.
fn open(
    state: &LongPollState,
    params: HashMap<String, String>,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Response {
    let request = admission::Request {
        transport: Transport::LongPoll,
        auth_token: headers
            .get("x-phoenix-authtoken")
            .map(|v| v.as_bytes().to_vec()),
        params,
        headers,
        peer,
        // A session counts as a connection of its own, whatever TCP connection opened it.
        accepted: None,
    };
    let Admitted { context, slot } = match admit(&state.node, request) {
        Ok(admitted) => admitted,
        Err(refused) if refused.for_now() => return respond(json!({"status": REFUSED_FOR_NOW})),
        Err(_) => return respond(json!({"status": 403})),
    };
    // A live session counts as a connection until its machine ends.
    let counted = state.node.metrics.connection(Transport::LongPoll);
    let token = start(&state.longpoll.sessions, context, slot, counted);
    respond(json!({"status": 410, "token": token, "messages": []}))
}

/// `POST /socket/longpoll`: deliver frames to a session.
pub async fn post(
    State(state): State<LongPollState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = refuse_origin(&state, &headers) {
        return refused;
    }
    let Some(token) = session_token(&headers, &params) else {
        return respond(json!({"status": 410}));
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-ndjson"));
    if let Some(session) = state.longpoll.sessions.get(&token) {
        let frames = parse_body(ndjson, &body);
        let status = deliver(&session.inbound, frames, state.node.config.longpoll_window).await;
        return respond(json!({"status": status}));
    }
    if let Some(owner) = remote_owner(&state, &token) {
        let request = Request::Post {
            token,
            ndjson,
            body: STANDARD.encode(&body),
        };
        if let Some(answer) = relay(&state, &owner, request).await {
            return respond(answer);
        }
    }
    respond(json!({"status": 410}))
}
