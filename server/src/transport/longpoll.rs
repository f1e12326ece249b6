//! The long-poll transport at `/socket/longpoll` (Phoenix semantics): a GET without a live
//! session creates one and answers `410` with its token; a GET with one waits up to the window
//! for frames (`200` with messages as strings, or `204`); a POST delivers frames (ndjson: at
//! most 100 lines, `[`-lines are JSON, others base64 binary). Every answer is HTTP 200 with a
//! JSON `status`, CORS-open. A session nobody polled for 1.5 × window is closed.
//!
//! Each session runs the same socket machine as a WebSocket, over channels, on the node that
//! opened it; its token names that node. A poll or a POST that a load balancer sends to another
//! node of the cluster is relayed to the owner over the pubsub (channel [`CHANNEL_LONGPOLL`]) and
//! its answer relayed back, so long-poll needs no sticky sessions. If the owner is down or does
//! not answer in time, the request answers `410` and the client opens a new session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use futures_util::StreamExt;
use rollcall_core::protocol::{Frame, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::websocket::decode_lenient_base64;
use super::{Inbound, Outgoing, WireFrame};
use crate::auth;
use crate::config::Config;
use crate::http::{check_origin, AppState};
use crate::metrics::{Refusal, Transport};
use crate::pubsub::{Envelope, PubSub};
use crate::socket::{self, ConnectInfo, SocketContext};

/// Most ndjson lines one POST may carry; the rest are ignored (Phoenix's CVE hardening).
pub const MAX_NDJSON_LINES: usize = 100;

/// The status of a session open refused *for now* (over `--max-conns-per-ip`, or a key in the
/// abuse penalty), where a WebSocket gets HTTP 429. Not 429: phoenix.js 1.8 throws on a poll
/// status it does not know, and is then stuck, neither reconnecting nor reporting. On 403 it
/// closes with 1008 and the socket reconnects with its backoff, as after a refused upgrade.
pub const REFUSED_FOR_NOW: u16 = 403;

struct Session {
    inbound: mpsc::Sender<Inbound>,
    outgoing: tokio::sync::Mutex<mpsc::Receiver<Outgoing>>,
    last_poll: Mutex<Instant>,
    polling: AtomicUsize,
}

/// The pubsub channel that carries long-poll requests to the node owning the session, and the
/// answers back.
pub const CHANNEL_LONGPOLL: &str = "longpoll";

/// How much longer than the window a relayed request may take (the hop there and back).
const RELAY_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A relayed request: the node it went to and its id.
type RequestKey = (String, u64);

/// The long-poll sessions of this node, by token, and the requests it relayed to other nodes
/// that are waiting for their answer.
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    /// Relayed requests waiting for an answer, by the node asked and the request id: an answer
    /// counts only from the node the request went to.
    pending: Mutex<HashMap<RequestKey, oneshot::Sender<Option<Value>>>>,
    next_request: AtomicU64,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            map: Mutex::default(),
            pending: Mutex::default(),
            // A random start, so that a node restarted under the same name never takes an
            // answer meant for its previous run (which may carry another client's session).
            next_request: AtomicU64::new(rand::random()),
        }
    }
}

/// A relayed request waiting for its answer; dropping it (the answer came, the wait timed out,
/// or the client went away) forgets the request.
struct PendingAnswer<'a> {
    sessions: &'a Sessions,
    key: RequestKey,
    answer: oneshot::Receiver<Option<Value>>,
}

impl Drop for PendingAnswer<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.sessions.pending.lock() {
            pending.remove(&self.key);
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    fn get(&self, token: &str) -> Option<Arc<Session>> {
        self.map.lock().ok()?.get(token).cloned()
    }

    fn insert(&self, token: String, session: Arc<Session>) {
        if let Ok(mut map) = self.map.lock() {
            map.insert(token, session);
        }
    }

    fn remove(&self, token: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(token);
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a request to `owner` whose answer this node will wait for.
    fn expect_answer(&self, owner: &str) -> PendingAnswer<'_> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let key = (owner.to_owned(), id);
        let (tx, answer) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(key.clone(), tx);
        }
        PendingAnswer {
            sessions: self,
            key,
            answer,
        }
    }

    /// Completes the request `id` that this node sent to `from`; an answer from any other node
    /// is ignored.
    fn answer(&self, from: &str, id: u64, body: Option<Value>) {
        let waiter = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&(from.to_owned(), id)));
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(body);
            }
            None => tracing::debug!("long-poll relay answer {id} from {from} matches no request"),
        }
    }

    /// Relayed requests still waiting for an answer.
    #[cfg(test)]
    fn pending_len(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }
}

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

/// A new session token: 128 random bits, then the owning node's name (base64url), so any node
/// can tell where a request must go.
fn new_token(node: &str) -> String {
    format!(
        "{:032x}.{}",
        rand::random::<u128>(),
        URL_SAFE_NO_PAD.encode(node)
    )
}

/// The node that owns the session of `token`, if the token names one.
fn owner_of(token: &str) -> Option<String> {
    let (_, node) = token.split_once('.')?;
    let node = URL_SAFE_NO_PAD.decode(node).ok()?;
    String::from_utf8(node).ok().filter(|n| !n.is_empty())
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
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    peer: Option<Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    if let Err(why) = check_origin(&state.config.security.allowed_origins, &headers) {
        tracing::info!("refused long-poll request: {why}");
        state.tracker.metrics().refused(Refusal::Origin);
        return respond(json!({"status": 403}));
    }
    if let Some(token) = session_token(&headers, &params) {
        if let Some(session) = state.longpoll.get(&token) {
            return respond(poll(&state.config, &state.longpoll, token, session).await);
        }
        if let Some(owner) = remote_owner(&state, &token) {
            let request = Request::Poll { token };
            // An answer of "no such session" falls through: the client gets a new one here.
            if let Some(answer) = relay(&state, &owner, request).await {
                return respond(answer);
            }
        }
    }
    open(state, params, peer.map(|Extension(info)| info.0), &headers)
}

/// The owner of `token` when it is another node of the cluster.
fn remote_owner(state: &AppState, token: &str) -> Option<String> {
    owner_of(token).filter(|owner| owner != state.tracker.node())
}

fn open(
    state: AppState,
    params: HashMap<String, String>,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Response {
    let serializer = match Serializer::negotiate(params.get("vsn").map(String::as_str)) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!("refused long-poll connect: {e}");
            state.tracker.metrics().refused(Refusal::Version);
            return respond(json!({"status": 403}));
        }
    };
    let security = &state.config.security;
    let ip = super::client_ip(peer, headers, security.trust_forwarded_for);
    // A live session counts as a connection until its machine ends.
    let slot = match security.conn_counts.acquire(ip, security.max_conns_per_ip) {
        Ok(slot) => slot,
        Err(why) => {
            tracing::info!(?ip, "refused long-poll connect: {why}");
            state.tracker.metrics().refused(Refusal::PerAddress);
            return respond(json!({"status": REFUSED_FOR_NOW}));
        }
    };
    let auth_token = headers
        .get("x-phoenix-authtoken")
        .map(|v| v.as_bytes().to_vec());
    let info = ConnectInfo { params, auth_token };
    // The reason is logged; the token itself never is.
    let identity = match auth::authenticate(
        state.config.security.verifier.as_ref(),
        info.token(),
        auth::unix_now(),
    ) {
        Ok(identity) => identity,
        Err(why) => {
            tracing::info!("refused long-poll connect: {why}");
            state.tracker.metrics().refused(Refusal::Token);
            return respond(json!({"status": 403}));
        }
    };
    if let Err(why) = socket::check_penalty(&state.config, &info, identity.as_ref()) {
        tracing::info!("refused long-poll connect: {why}");
        state.tracker.metrics().refused(Refusal::Penalty);
        return respond(json!({"status": REFUSED_FOR_NOW}));
    }
    let mut ctx = SocketContext::new(
        serializer,
        info,
        state.config.clone(),
        state.tracker.clone(),
        state.shutdown.clone(),
    )
    .with_identity(identity);
    // Long-poll clients send no heartbeats; the session expiry below replaces the idle timeout.
    ctx.idle_timeout = None;
    let token = new_token(state.tracker.node());
    let (in_tx, in_rx) = mpsc::channel(MAX_NDJSON_LINES);
    // Bounded like a WebSocket's queue: frames the client has not polled count against
    // `max_queued_frames`, and past it the session ends (its polls then answer 410 and the
    // client reconnects for a fresh presence_state) instead of the node holding them all.
    let (out_tx, out_rx) = mpsc::channel(state.config.max_queued_frames.max(1));
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let session = Arc::new(Session {
        inbound: in_tx,
        outgoing: tokio::sync::Mutex::new(out_rx),
        last_poll: Mutex::new(Instant::now()),
        polling: AtomicUsize::new(0),
    });
    state.longpoll.insert(token.clone(), session.clone());

    let stream = futures_util::stream::unfold(in_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .take_until(kill_rx);
    // Never waits: a full queue fails the write, which ends the machine (the session expiry
    // could not reach a machine blocked in a write).
    let sink = futures_util::sink::unfold(out_tx, |tx, item: Outgoing| async move {
        tx.try_send(item).map_err(|_| ())?;
        Ok::<_, ()>(tx)
    });
    let open = state.tracker.metrics().connection(Transport::LongPoll);
    tokio::spawn(async move {
        socket::run(ctx, Box::pin(sink), Box::pin(stream)).await;
        drop(slot);
        drop(open);
        // The session stays listed: its next poll reads the close and answers 410, which
        // phoenix.js (holding a session token) takes as "session gone" and reconnects with
        // fresh params. An unpolled one is dropped by the expiry below.
    });

    // Expiry: closed and forgotten when no poll was seen for 1.5 × window.
    let expiry = state.config.longpoll_window.mul_f64(1.5);
    spawn_expiry(
        &session,
        state.longpoll.clone(),
        token.clone(),
        expiry,
        kill_tx,
    );
    respond(json!({"status": 410, "token": token, "messages": []}))
}

/// Closes (`kill`) and forgets the session of `token` once it has not been polled for
/// `expiry`: checked when that much time has passed since its last poll ended, not on a fixed
/// period, so that it goes at 1.5 × window and not up to twice that.
fn spawn_expiry(
    session: &Arc<Session>,
    sessions: Arc<Sessions>,
    token: String,
    expiry: std::time::Duration,
    kill: oneshot::Sender<()>,
) {
    let weak = Arc::downgrade(session);
    tokio::spawn(async move {
        loop {
            let next = {
                let Some(session) = weak.upgrade() else {
                    return;
                };
                let idle_since = session
                    .last_poll
                    .lock()
                    .map(|t| *t)
                    .unwrap_or_else(|_| Instant::now());
                if session.polling.load(Ordering::SeqCst) > 0 {
                    // A poll's end stamps `last_poll`; look again one expiry from now.
                    Instant::now() + expiry
                } else if idle_since.elapsed() >= expiry {
                    tracing::debug!("closing inactive long-poll session");
                    let _ = kill.send(());
                    sessions.remove(&token);
                    return;
                } else {
                    idle_since + expiry
                }
            };
            tokio::time::sleep_until(next).await;
        }
    });
}

fn frame_text(frame: &WireFrame) -> String {
    match frame {
        WireFrame::Text(t) => t.as_str().to_string(),
        WireFrame::Binary(b) => STANDARD.encode(b),
    }
}

/// Counts a poll of `session` while it runs, and stamps the session as polled when it ends:
/// dropped even when the poll's request is abandoned (the client went away and its handler was
/// cancelled), so the expiry never waits for a poll that will not finish.
struct PollGuard<'a>(&'a Session);

impl<'a> PollGuard<'a> {
    fn new(session: &'a Session) -> Self {
        session.polling.fetch_add(1, Ordering::SeqCst);
        PollGuard(session)
    }
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last_poll.lock() {
            *t = Instant::now();
        }
        self.0.polling.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits for the session's frames (up to the window) and returns the answer's body.
async fn poll(config: &Config, sessions: &Sessions, token: String, session: Arc<Session>) -> Value {
    let guard = PollGuard::new(&session);
    // One deadline for the whole poll, the wait for a concurrent poll of the same session
    // included: a relayed poll is answered before the relaying node gives up on it, and polls
    // piling up on one session end with the window instead of one window after another.
    let deadline = Instant::now() + config.longpoll_window;
    let mut messages = Vec::new();
    let mut gone = false;
    if let Ok(mut rx) = tokio::time::timeout_at(deadline, session.outgoing.lock()).await {
        let take = |item: Option<Outgoing>, messages: &mut Vec<String>| match item {
            Some(Outgoing::Frame(f)) => {
                messages.push(frame_text(&f));
                true
            }
            Some(Outgoing::Close { .. }) | None => false,
        };
        loop {
            match rx.try_recv() {
                Ok(item) => {
                    if !take(Some(item), &mut messages) {
                        gone = true;
                        break;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        if messages.is_empty() && !gone {
            // Nothing queued: wait for the first frame, up to the deadline (then 204).
            if let Ok(item) = tokio::time::timeout_at(deadline, rx.recv()).await {
                if !take(item, &mut messages) {
                    gone = true;
                }
                while let Ok(item) = rx.try_recv() {
                    if !take(Some(item), &mut messages) {
                        gone = true;
                        break;
                    }
                }
            }
        }
    }
    drop(guard);
    if gone && messages.is_empty() {
        sessions.remove(&token);
        return json!({"status": 410});
    }
    // A session that ended with frames still to deliver stays listed: this poll carries the
    // frames, the next one gets 410 (and not a new session, which its expired token or the
    // penalty would refuse with 403).
    let status = if messages.is_empty() { 204 } else { 200 };
    json!({"status": status, "token": token, "messages": messages})
}

/// Splits a POST body into frames for the socket machine. ndjson: at most
/// [`MAX_NDJSON_LINES`] non-empty lines, a line starting with `[` is a JSON text frame, any other
/// is base64 of a binary frame (an undecodable one becomes an empty binary frame, which the
/// machine refuses with a reason). Otherwise the whole body is one text frame. Invalid UTF-8 is
/// replaced, so the decoder sees it and refuses the frame.
pub fn parse_body(ndjson: bool, body: &[u8]) -> Vec<Inbound> {
    let text = String::from_utf8_lossy(body);
    if !ndjson {
        return vec![Inbound::Frame(Frame::Text(text.into_owned()))];
    }
    text.lines()
        .filter(|l| !l.is_empty())
        .take(MAX_NDJSON_LINES)
        .map(|line| {
            if line.starts_with('[') {
                Inbound::Frame(Frame::Text(line.to_string()))
            } else {
                match decode_lenient_base64(line.trim()) {
                    Some(bytes) => Inbound::Frame(Frame::Binary(bytes)),
                    None => Inbound::Frame(Frame::Binary(Vec::new())),
                }
            }
        })
        .collect()
}

/// `POST /socket/longpoll`: deliver frames to a session.
pub async fn post(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(why) = check_origin(&state.config.security.allowed_origins, &headers) {
        tracing::info!("refused long-poll request: {why}");
        state.tracker.metrics().refused(Refusal::Origin);
        return respond(json!({"status": 403}));
    }
    let Some(token) = session_token(&headers, &params) else {
        return respond(json!({"status": 410}));
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-ndjson"));
    if let Some(session) = state.longpoll.get(&token) {
        let frames = parse_body(ndjson, &body);
        let status = deliver(&session.inbound, frames, state.config.longpoll_window).await;
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

/// What travels on [`CHANNEL_LONGPOLL`] (JSON).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
enum Request {
    /// A GET for a session of the receiving node.
    Poll { token: String },
    /// A POST for a session of the receiving node; `body` is base64.
    Post {
        token: String,
        ndjson: bool,
        body: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RelayMessage {
    /// A request, answered with a [`RelayMessage::Answer`] carrying the same id.
    Request { id: u64, request: Request },
    /// The answer's body, or `None` when the session does not exist (any more).
    Answer { id: u64, body: Option<Value> },
}

/// Sends `request` to `owner` and waits for its answer. `None` when the owner has no such
/// session, is not an up member of the cluster, or does not answer in time: the session is
/// gone for this client, which opens a new one.
async fn relay(state: &AppState, owner: &str, request: Request) -> Option<Value> {
    let pubsub = state.tracker.pubsub();
    if !pubsub.peers().iter().any(|p| p.name == owner && p.up) {
        return None;
    }
    let mut pending = state.longpoll.expect_answer(owner);
    let message = RelayMessage::Request {
        id: pending.key.1,
        request,
    };
    match serde_json::to_vec(&message) {
        Ok(bytes) => pubsub.send_to(owner, CHANNEL_LONGPOLL, bytes.into()),
        Err(e) => tracing::warn!("long-poll relay request not encoded: {e}"),
    }
    let within = state.config.longpoll_window + RELAY_MARGIN;
    let mut shutdown = state.shutdown.clone();
    let answer = tokio::select! {
        answer = tokio::time::timeout(within, &mut pending.answer) => answer,
        // Shutting down, this node's transport is already closed: no answer can come, and
        // waiting out the window would hold up the graceful shutdown.
        _ = shutdown.wait_for(|s| *s) => return None,
    };
    match answer {
        Ok(Ok(body)) => body,
        _ => {
            tracing::info!("long-poll relay to {owner} got no answer in {within:?}");
            None
        }
    }
}

/// Serves the long-poll requests other nodes relay to this one, and completes this node's
/// relayed requests with their answers. Runs until the server shuts down.
pub fn spawn_relay(
    sessions: Arc<Sessions>,
    config: Arc<Config>,
    pubsub: Arc<dyn PubSub>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut inbox = pubsub.subscribe(CHANNEL_LONGPOLL);
    tokio::spawn(async move {
        loop {
            let envelope = tokio::select! {
                envelope = inbox.recv() => envelope,
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let Some(envelope) = envelope else { return };
            on_relay_message(&sessions, &config, &pubsub, envelope);
        }
    });
}

fn on_relay_message(
    sessions: &Arc<Sessions>,
    config: &Arc<Config>,
    pubsub: &Arc<dyn PubSub>,
    envelope: Envelope,
) {
    let message = match serde_json::from_slice::<RelayMessage>(&envelope.payload) {
        Ok(message) => message,
        Err(e) => {
            tracing::warn!(
                "undecodable long-poll relay message from {}: {e}",
                envelope.from
            );
            return;
        }
    };
    match message {
        RelayMessage::Answer { id, body } => sessions.answer(&envelope.from, id, body),
        RelayMessage::Request { id, request } => {
            let (sessions, config, pubsub) = (sessions.clone(), config.clone(), pubsub.clone());
            // A poll waits up to the window: never hold up the next request behind it.
            tokio::spawn(async move {
                let body = serve_relayed(&sessions, &config, request).await;
                let answer = RelayMessage::Answer { id, body };
                match serde_json::to_vec(&answer) {
                    Ok(bytes) => pubsub.send_to(&envelope.from, CHANNEL_LONGPOLL, bytes.into()),
                    Err(e) => tracing::warn!("long-poll relay answer not encoded: {e}"),
                }
            });
        }
    }
}

async fn serve_relayed(sessions: &Sessions, config: &Config, request: Request) -> Option<Value> {
    match request {
        Request::Poll { token } => {
            let session = sessions.get(&token)?;
            Some(poll(config, sessions, token, session).await)
        }
        Request::Post {
            token,
            ndjson,
            body,
        } => {
            let session = sessions.get(&token)?;
            let Ok(body) = STANDARD.decode(&body) else {
                return Some(json!({"status": 400}));
            };
            let frames = parse_body(ndjson, &body);
            let status = deliver(&session.inbound, frames, config.longpoll_window).await;
            Some(json!({"status": status}))
        }
    }
}

/// Hands `frames` to a session's machine in order; the POST's status: `200` when all were
/// taken, `410` when the machine is gone, `408` when one was not taken within `window` (the
/// rest are dropped; phoenix.js reconnects on any status but 200).
async fn deliver(
    inbound: &mpsc::Sender<Inbound>,
    frames: Vec<Inbound>,
    window: std::time::Duration,
) -> u16 {
    for frame in frames {
        match tokio::time::timeout(window, inbound.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return 410,
            Err(_) => return 408,
        }
    }
    200
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn heartbeat() -> Inbound {
        Inbound::Frame(Frame::Text(r#"[null,"1","phoenix","heartbeat",{}]"#.into()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_the_machine_does_not_take_within_the_window_gets_408() {
        // A machine busy elsewhere: its inbound queue has room for one frame and nobody reads.
        let (tx, _busy) = mpsc::channel(1);
        let window = Duration::from_secs(10);
        let started = Instant::now();
        assert_eq!(
            deliver(&tx, vec![heartbeat(), heartbeat()], window).await,
            408
        );
        assert_eq!(started.elapsed(), window);
    }

    /// A session as `open` makes it, with the machine's ends handed to the test.
    fn session() -> (
        Arc<Session>,
        mpsc::Sender<Outgoing>,
        mpsc::Receiver<Inbound>,
    ) {
        let (in_tx, in_rx) = mpsc::channel(MAX_NDJSON_LINES);
        let (out_tx, out_rx) = mpsc::channel(16);
        let session = Arc::new(Session {
            inbound: in_tx,
            outgoing: tokio::sync::Mutex::new(out_rx),
            last_poll: Mutex::new(Instant::now()),
            polling: AtomicUsize::new(0),
        });
        (session, out_tx, in_rx)
    }

    fn config(window: Duration) -> Arc<Config> {
        Arc::new(Config {
            longpoll_window: window,
            ..Config::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_poll_does_not_keep_its_session_from_expiring() {
        let (session, _out, _in) = session();
        let (sessions, config) = (
            Arc::new(Sessions::default()),
            config(Duration::from_secs(10)),
        );
        let polled = session.clone();
        let task = tokio::spawn(async move {
            poll(&config, &sessions, "t".into(), polled).await;
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(session.polling.load(Ordering::SeqCst), 1);
        // The client went away: axum drops the handler's future mid-poll.
        task.abort();
        let _ = task.await;
        assert_eq!(session.polling.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_queued_behind_another_answers_within_one_window() {
        let (session, _out, _in) = session();
        let (sessions, window) = (Arc::new(Sessions::default()), Duration::from_secs(10));
        let config = config(window);
        let started = Instant::now();
        let polls: Vec<_> = (0..3)
            .map(|_| {
                let (sessions, config, session) =
                    (sessions.clone(), config.clone(), session.clone());
                tokio::spawn(async move { poll(&config, &sessions, "t".into(), session).await })
            })
            .collect();
        for p in polls {
            assert_eq!(p.await.unwrap()["status"], 204);
        }
        assert_eq!(started.elapsed(), window);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_expires_one_and_a_half_windows_after_its_last_poll() {
        let window = Duration::from_secs(10);
        let expiry = window.mul_f64(1.5);
        let (session, _out, _in) = session();
        let sessions = Arc::new(Sessions::default());
        sessions.insert("t".into(), session.clone());
        let (kill, mut killed) = oneshot::channel();
        spawn_expiry(&session, sessions.clone(), "t".into(), expiry, kill);
        // Polled 5 s after opening: it may stay until 5 s + 15 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        *session.last_poll.lock().unwrap() = Instant::now();
        tokio::time::sleep(expiry - Duration::from_millis(1)).await;
        assert_eq!(sessions.len(), 1, "still within its expiry");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(sessions.len(), 0, "gone 1.5 windows after its last poll");
        assert_eq!(killed.try_recv(), Ok(()));
    }

    #[test]
    fn an_answer_counts_only_from_the_node_the_request_went_to() {
        let sessions = Sessions::default();
        let mut pending = sessions.expect_answer("b");
        let id = pending.key.1;
        sessions.answer(
            "c",
            id,
            Some(json!({"status": 200, "token": "someone else's"})),
        );
        assert!(
            pending.answer.try_recv().is_err(),
            "taken from the wrong node"
        );
        sessions.answer("b", id, Some(json!({"status": 204})));
        assert_eq!(pending.answer.try_recv(), Ok(Some(json!({"status": 204}))));
    }

    #[test]
    fn a_restarted_node_does_not_reuse_request_ids() {
        // Two runs of one node: an answer meant for the first must not match the second's
        // requests (2^-64 odds of a false failure).
        let (first, second) = (Sessions::default(), Sessions::default());
        assert_ne!(first.expect_answer("b").key, second.expect_answer("b").key);
    }

    #[test]
    fn a_relayed_request_given_up_leaves_nothing_pending() {
        let sessions = Sessions::default();
        let pending = sessions.expect_answer("b");
        assert_eq!(sessions.pending_len(), 1);
        // Timed out, answered, or its client went away: the wait is dropped.
        drop(pending);
        assert_eq!(sessions.pending_len(), 0);
    }

    #[tokio::test]
    async fn a_post_to_a_session_whose_machine_ended_gets_410_and_one_taken_gets_200() {
        let (tx, rx) = mpsc::channel(4);
        let window = Duration::from_secs(10);
        assert_eq!(
            deliver(&tx, vec![heartbeat(), heartbeat()], window).await,
            200
        );
        drop(rx);
        assert_eq!(deliver(&tx, vec![heartbeat()], window).await, 410);
    }
}
