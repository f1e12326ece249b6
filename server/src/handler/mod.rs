//! Channel handlers: the application's code for the topics it serves, as Phoenix's
//! `Phoenix.Channel` is. A [`Channel`] decides who may join a topic and what the join tracks
//! ([`Channel::join`]), answers the events clients push ([`Channel::handle_in`]) and hears how
//! the channel ended ([`Channel::terminate`]). [`Routes`] maps topic patterns to handlers, first
//! match wins; the built-in presence room ([`PresenceRoom`]) is one handler among them, written
//! against this same API.
//!
//! This module owns the API and the per-channel state ([`ChannelSocket`]); the socket machine
//! ([`crate::socket`]) runs handlers, in the order a connection's messages arrive, and turns what
//! they return into frames.
//!
//! ```no_run
//! use rollcall_server::handler::{Channel, ChannelSocket, Joined, Refusal, Reply};
//! use rollcall_server::{Config, Payload, Server};
//! use serde_json::{json, Value};
//!
//! struct RoomChannel;
//!
//! impl Channel for RoomChannel {
//!     async fn join(&self, _topic: &str, _params: &Value, socket: &mut ChannelSocket)
//!         -> Result<Joined, Refusal>
//!     {
//!         if socket.key().starts_with("anon-") {
//!             return Err(Refusal::new("sign in first"));
//!         }
//!         Ok(Joined::new().presence_state().track(json!({"status": "here"})))
//!     }
//!
//!     async fn handle_in(&self, event: &str, payload: Payload, socket: &mut ChannelSocket) -> Reply {
//!         match event {
//!             "shout" => {
//!                 let _ = socket.broadcast("shout", payload);
//!                 Reply::ok(json!({}))
//!             }
//!             _ => Reply::error(json!({"reason": "unknown event"})),
//!         }
//!     }
//! }
//!
//! # async fn run() {
//! let server = Server::builder(Config::default()).channel("room:*", RoomChannel).build();
//! # }
//! ```

mod room;
mod routes;
mod socket;

use std::future::Future;
use std::pin::Pin;

use rollcall_core::protocol::Payload;
use serde_json::{json, Map, Value};

use crate::metrics::JoinRefusal;

pub use crate::presence::NotAnObject;
pub use room::PresenceRoom;
pub use routes::Routes;
pub use socket::{BroadcastError, ChannelSocket, DeferredReply, Pusher, SocketParts};

/// The application's handler for the topics of a route.
///
/// One value serves every channel of its route on the node (it is shared: keep per-channel
/// state in the socket's assigns, [`ChannelSocket::assign`]). Calls for one channel never
/// overlap and come in the order the client sent its messages. A call runs on its connection's
/// task: a slow call delays that connection's later messages (never other connections); spawn
/// long work and answer with a [`Pusher`] or [`DeferredReply`].
///
/// A panic inside any call ends that channel alone, as a crashed Phoenix channel does: a panic
/// in `join` answers `{"reason": "join crashed"}`, one in `handle_in` sends `phx_error` (the
/// client rejoins); the connection and its other channels go on.
///
/// Write the methods as `async fn`; the futures must be `Send`.
pub trait Channel: Send + Sync + 'static {
    /// A client asks to join `topic` with `params` (the join payload; `{}` when the client gave
    /// none). Decide whether it may, and what the join does: [`Joined`] says whether to push
    /// `presence_state` and what to track under which key; per-channel state goes into the
    /// socket's assigns. A [`Refusal`] answers the join with an error and keeps nothing.
    fn join(
        &self,
        topic: &str,
        params: &Value,
        socket: &mut ChannelSocket,
    ) -> impl Future<Output = Result<Joined, Refusal>> + Send;

    /// The client pushed `event` with `payload` on the joined channel. Broadcast, push or track
    /// through `socket`; the [`Reply`] answers the push. The default answers
    /// `{"reason": "unhandled event"}` with status `error`.
    fn handle_in(
        &self,
        event: &str,
        payload: Payload,
        socket: &mut ChannelSocket,
    ) -> impl Future<Output = Reply> + Send {
        let _ = (event, payload, socket);
        async { Reply::error(json!({"reason": "unhandled event"})) }
    }

    /// The channel ended (see [`Exit`]). Its presences are untracked by the server whatever
    /// this does. The default does nothing.
    fn terminate(
        &self,
        reason: Exit,
        socket: &mut ChannelSocket,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reason, socket);
        async {}
    }
}

/// How a channel ended, for [`Channel::terminate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The client left the channel (`phx_leave`).
    Left,
    /// The connection ended (the client went away, an idle or token timeout, a server shutdown).
    Closed,
    /// The client joined the same topic again: this channel makes way for the new one.
    Replaced,
    /// The handler asked to stop ([`Reply::stop`]).
    Stopped,
}

/// An accepted join: what the server does once the join is answered `ok`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Joined {
    pub(crate) response: Option<Value>,
    pub(crate) presence_state: bool,
    pub(crate) track: Option<Value>,
    pub(crate) key: Option<String>,
}

impl Joined {
    /// A join that only subscribes: the client receives the topic's broadcasts and presence
    /// diffs, is not listed, and gets no `presence_state`.
    pub fn new() -> Self {
        Joined::default()
    }

    /// The join reply's `response` (default `{}`).
    pub fn reply(mut self, response: Value) -> Self {
        self.response = Some(response);
        self
    }

    /// Push `presence_state` (the topic's presences before this join is tracked) right after
    /// the reply, as Phoenix apps do after join. Diffs that follow it are never missed nor
    /// counted twice.
    pub fn presence_state(mut self) -> Self {
        self.presence_state = true;
        self
    }

    /// Track the channel in the topic under its key with `meta` (a JSON object) once joined.
    /// The server adds `node` and the connection's trusted fields (the token's `meta`, the join
    /// hook's `meta`); a meta that is not an object refuses the join.
    pub fn track(mut self, meta: Value) -> Self {
        self.track = Some(meta);
        self
    }

    /// The channel's presence key, for this join's track and later ones (default: the
    /// connection's key, i.e. the token's `sub` or the `user_id` param).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// A refused join: the client gets `phx_reply` with status `error` and this response.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub(crate) response: Value,
    /// The `reason` label it is counted under.
    pub(crate) why: JoinRefusal,
}

impl Refusal {
    /// A refusal with response `{"reason": reason}`, what phoenix.js hands to the join's
    /// `receive("error", ...)`.
    pub fn new(reason: impl Into<String>) -> Self {
        Refusal {
            response: json!({"reason": reason.into()}),
            why: JoinRefusal::Handler,
        }
    }

    /// A refusal with any response.
    pub fn with_response(response: Value) -> Self {
        Refusal {
            response,
            why: JoinRefusal::Handler,
        }
    }

    /// The response the client gets.
    pub fn response(&self) -> &Value {
        &self.response
    }
}

/// What answers a client's push.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub(crate) status: Option<(&'static str, Payload)>,
    pub(crate) stop: bool,
}

impl Reply {
    /// Answers with status `ok` and `response`.
    pub fn ok(response: impl Into<Payload>) -> Self {
        Reply {
            status: Some(("ok", response.into())),
            stop: false,
        }
    }

    /// Answers with status `error` and `response`.
    pub fn error(response: impl Into<Payload>) -> Self {
        Reply {
            status: Some(("error", response.into())),
            stop: false,
        }
    }

    /// Does not answer (the client's push times out unless the handler answers later through a
    /// [`DeferredReply`]).
    pub fn none() -> Self {
        Reply {
            status: None,
            stop: false,
        }
    }

    /// After this reply (if any), close the channel: the handler's `terminate` runs with
    /// [`Exit::Stopped`], its presences leave, and the client gets `phx_close`.
    pub fn stop(mut self) -> Self {
        self.stop = true;
        self
    }
}

/// The boxed future of an object-safe handler call.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Channel`] in object-safe form, so routes can hold handlers of different types.
pub(crate) trait DynChannel: Send + Sync {
    fn join<'a>(
        &'a self,
        topic: &'a str,
        params: &'a Value,
        socket: &'a mut ChannelSocket,
    ) -> BoxFuture<'a, Result<Joined, Refusal>>;

    fn handle_in<'a>(
        &'a self,
        event: &'a str,
        payload: Payload,
        socket: &'a mut ChannelSocket,
    ) -> BoxFuture<'a, Reply>;

    fn terminate<'a>(&'a self, reason: Exit, socket: &'a mut ChannelSocket) -> BoxFuture<'a, ()>;
}

impl<C: Channel> DynChannel for C {
    fn join<'a>(
        &'a self,
        topic: &'a str,
        params: &'a Value,
        socket: &'a mut ChannelSocket,
    ) -> BoxFuture<'a, Result<Joined, Refusal>> {
        Box::pin(Channel::join(self, topic, params, socket))
    }

    fn handle_in<'a>(
        &'a self,
        event: &'a str,
        payload: Payload,
        socket: &'a mut ChannelSocket,
    ) -> BoxFuture<'a, Reply> {
        Box::pin(Channel::handle_in(self, event, payload, socket))
    }

    fn terminate<'a>(&'a self, reason: Exit, socket: &'a mut ChannelSocket) -> BoxFuture<'a, ()> {
        Box::pin(Channel::terminate(self, reason, socket))
    }
}

/// A handler's meta as a map: `None` for anything but a JSON object.
pub(crate) fn meta_object(meta: Value) -> Option<Map<String, Value>> {
    match meta {
        Value::Object(map) => Some(map),
        _ => None,
    }
}
