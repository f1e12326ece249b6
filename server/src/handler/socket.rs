//! [`ChannelSocket`]: one joined channel as its handler sees it — who is on the other end
//! (key, token claims, connect params), per-channel assigns, and what the handler can do
//! (push to this client, broadcast to the topic, track and untrack its presence).

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::Extensions;
use rollcall_core::protocol::{check_event_name, EventNameError, Outbound, Payload, Serializer};
use serde_json::{Map, Value};

use super::meta_object;
use crate::frame::WireFrame;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::presence::{NotAnObject, Presence};
use crate::security::auth::Identity;
use crate::tracker::{ConnId, Tracker};

/// What a connection hands each of its channels (built by the socket machine).
#[derive(Debug, Clone)]
pub struct SocketParts {
    /// The connection.
    pub conn: ConnId,
    /// How it encodes frames.
    pub serializer: Serializer,
    /// Its queue of frames from other tasks.
    pub outbox: Outbox,
    /// Its presence key (the token's `sub`, the `user_id` param, or `anon-…`).
    pub key: String,
    /// The verified token, when the server requires one.
    pub identity: Option<Identity>,
    /// The connect request's query parameters.
    pub params: Arc<HashMap<String, String>>,
    /// The node's tracker.
    pub tracker: Tracker,
    /// The node's presence (with the app's fetch hook).
    pub presence: Presence,
    /// The node's counters.
    pub metrics: Arc<Metrics>,
}

/// A tracker change a handler asked for before its join was done; applied right after it.
#[derive(Debug)]
enum Pending {
    Track(Map<String, Value>),
    Untrack,
}

/// One joined channel of one connection, as its handler sees and drives it.
#[derive(Debug)]
pub struct ChannelSocket {
    parts: SocketParts,
    topic: String,
    join_ref: Option<String>,
    trusted_meta: Map<String, Value>,
    assigns: Extensions,
    /// Pushes made during the current call; written after its reply.
    pushes: Vec<Outbound>,
    /// Tracker changes asked for during `join`.
    pending: Vec<Pending>,
    joined: bool,
    /// The ref of the message being handled, for [`ChannelSocket::defer_reply`].
    msg_ref: Option<String>,
}

/// Why a broadcast was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BroadcastError {
    /// The event name is reserved (`phx_*`, `presence*`) or not 1–64 characters of
    /// `[A-Za-z0-9_:.-]`.
    EventName(EventNameError),
}

impl std::fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BroadcastError::EventName(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BroadcastError {}

impl ChannelSocket {
    /// The socket of a channel being joined on `topic` with `join_ref`; `trusted_meta` is merged
    /// over every meta it tracks.
    pub(crate) fn new(
        parts: SocketParts,
        topic: &str,
        join_ref: Option<String>,
        trusted_meta: Map<String, Value>,
    ) -> Self {
        ChannelSocket {
            parts,
            topic: topic.to_string(),
            join_ref,
            trusted_meta,
            assigns: Extensions::new(),
            pushes: Vec::new(),
            pending: Vec::new(),
            joined: false,
            msg_ref: None,
        }
    }

    /// The channel's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The channel's presence key: the connection's key (the token's `sub`, else the `user_id`
    /// param, else `anon-<random>`), or the one [`Joined::key`](super::Joined::key) chose.
    pub fn key(&self) -> &str {
        &self.parts.key
    }

    /// The verified token's claims (`sub` as `key`, `rooms`, `meta`, `exp`); `None` in open mode.
    pub fn claims(&self) -> Option<&Identity> {
        self.parts.identity.as_ref()
    }

    /// The connect request's query parameters (`user_id`, `vsn`, the app's own).
    pub fn connect_params(&self) -> &HashMap<String, String> {
        &self.parts.params
    }

    /// The join_ref of this channel (what the client stamps on its messages).
    pub fn join_ref(&self) -> Option<&str> {
        self.join_ref.as_deref()
    }

    /// The fields merged over every meta this channel tracks: the token's `meta` claim and the
    /// join hook's `meta`. A client cannot override them.
    pub fn trusted_meta(&self) -> &Map<String, Value> {
        &self.trusted_meta
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        self.parts.tracker.node()
    }

    /// The node's presence: list a topic, get a key, track something that is not a socket.
    pub fn presence(&self) -> &Presence {
        &self.parts.presence
    }

    /// Stores a per-channel value (one per type), kept for the channel's life.
    pub fn assign<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.assigns.insert(value);
    }

    /// The per-channel value of type `T`, if assigned.
    pub fn assigns<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.assigns.get::<T>()
    }

    /// The per-channel value of type `T`, mutably.
    pub fn assigns_mut<T: Send + Sync + 'static>(&mut self) -> Option<&mut T> {
        self.assigns.get_mut::<T>()
    }

    /// Removes the per-channel value of type `T`; returns it.
    pub fn unassign<T: Send + Sync + 'static>(&mut self) -> Option<T> {
        self.assigns.remove::<T>()
    }

    /// Pushes `event` to this client only (after the reply of the current call). Any event name
    /// may be pushed, `presence_state` included.
    pub fn push(&mut self, event: &str, payload: impl Into<Payload>) {
        self.pushes.push(Outbound::Push {
            join_ref: self.join_ref.clone(),
            topic: self.topic.clone(),
            event: event.to_string(),
            payload: payload.into(),
        });
    }

    /// Broadcasts `event` to every member of the topic on every node, this client included.
    /// Reserved names (`phx_*`, `presence*`) are refused: clients would take them for the
    /// server's own frames.
    pub fn broadcast(
        &self,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<(), BroadcastError> {
        self.broadcast_except(event, payload.into(), None)
    }

    /// Broadcasts `event` to every member of the topic on every node but this client.
    pub fn broadcast_from(
        &self,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<(), BroadcastError> {
        self.broadcast_except(event, payload.into(), Some(self.parts.conn))
    }

    fn broadcast_except(
        &self,
        event: &str,
        payload: Payload,
        except: Option<ConnId>,
    ) -> Result<(), BroadcastError> {
        check_event_name(event).map_err(BroadcastError::EventName)?;
        self.parts.metrics.client_events.inc();
        self.parts
            .tracker
            .broadcast(&self.topic, event, payload, except);
        Ok(())
    }

    /// Tracks this channel in its topic under its key with `meta` (a JSON object), or replaces
    /// the meta if it is tracked (one `presence_diff` with the old meta leaving and the new one,
    /// with `phx_ref_prev`, joining). The server adds `node` and the trusted fields.
    pub fn track(&mut self, meta: Value) -> Result<(), NotAnObject> {
        let meta = self.trusted(meta_object(meta).ok_or(NotAnObject)?);
        if self.joined {
            self.parts.tracker.track(self.parts.conn, &self.topic, meta);
        } else {
            self.pending.push(Pending::Track(meta));
        }
        Ok(())
    }

    /// Stops listing this channel; it stays joined and keeps receiving the topic's frames.
    pub fn untrack(&mut self) {
        if self.joined {
            self.parts.tracker.untrack(self.parts.conn, &self.topic);
        } else {
            self.pending.push(Pending::Untrack);
        }
    }

    /// A handle that pushes to this channel from anywhere (a spawned task, a timer), for as
    /// long as the connection lives. Its frames carry this channel's join_ref, so a client that
    /// left or rejoined since ignores them.
    pub fn pusher(&self) -> Pusher {
        Pusher {
            outbox: self.parts.outbox.clone(),
            serializer: self.parts.serializer,
            join_ref: self.join_ref.clone(),
            topic: self.topic.clone(),
        }
    }

    /// A handle that answers the push being handled later, from anywhere; return
    /// [`Reply::none`](super::Reply::none) from `handle_in` then.
    pub fn defer_reply(&self) -> DeferredReply {
        DeferredReply {
            pusher: self.pusher(),
            msg_ref: self.msg_ref.clone(),
        }
    }

    /// The trusted fields merged over `meta` (for the join's own track).
    pub(crate) fn trusted(&self, mut meta: Map<String, Value>) -> Map<String, Value> {
        for (k, v) in &self.trusted_meta {
            meta.insert(k.clone(), v.clone());
        }
        meta
    }

    pub(crate) fn set_key(&mut self, key: String) {
        self.parts.key = key;
    }

    pub(crate) fn set_msg_ref(&mut self, msg_ref: Option<String>) {
        self.msg_ref = msg_ref;
    }

    /// The pushes made since the last call, in order.
    pub(crate) fn take_pushes(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.pushes)
    }

    /// The join went through: applies the tracker changes asked for during `join`, and later
    /// ones go to the tracker at once.
    pub(crate) fn joined(&mut self) {
        self.joined = true;
        for pending in std::mem::take(&mut self.pending) {
            match pending {
                Pending::Track(meta) => {
                    self.parts.tracker.track(self.parts.conn, &self.topic, meta)
                }
                Pending::Untrack => self.parts.tracker.untrack(self.parts.conn, &self.topic),
            }
        }
    }
}

/// Pushes to one channel's client from outside its handler calls (see
/// [`ChannelSocket::pusher`]).
#[derive(Debug, Clone)]
pub struct Pusher {
    outbox: Outbox,
    serializer: Serializer,
    join_ref: Option<String>,
    topic: String,
}

impl Pusher {
    /// Queues `event` to the client. A binary payload to a V1 (JSON-only) client is dropped,
    /// as are pushes after the connection ended.
    pub fn push(&self, event: &str, payload: impl Into<Payload>) {
        self.send(Outbound::Push {
            join_ref: self.join_ref.clone(),
            topic: self.topic.clone(),
            event: event.to_string(),
            payload: payload.into(),
        });
    }

    /// True once the connection has ended: pushes go nowhere.
    pub fn is_closed(&self) -> bool {
        self.outbox.is_closed()
    }

    fn send(&self, out: Outbound) {
        match WireFrame::encode(self.serializer, &out) {
            Ok(frame) => {
                self.outbox.deliver(frame);
            }
            Err(e) => tracing::debug!(topic = ?self.topic, "push not delivered: {e}"),
        }
    }
}

/// Answers one client push later (see [`ChannelSocket::defer_reply`]).
#[derive(Debug)]
pub struct DeferredReply {
    pusher: Pusher,
    msg_ref: Option<String>,
}

impl DeferredReply {
    /// Answers with status `ok`.
    pub fn ok(self, response: impl Into<Payload>) {
        self.reply("ok", response.into());
    }

    /// Answers with status `error`.
    pub fn error(self, response: impl Into<Payload>) {
        self.reply("error", response.into());
    }

    fn reply(self, status: &str, response: Payload) {
        let out = Outbound::Reply {
            join_ref: self.pusher.join_ref.clone(),
            msg_ref: self.msg_ref.clone(),
            topic: self.pusher.topic.clone(),
            status: status.to_string(),
            response,
        };
        self.pusher.send(out);
    }
}
