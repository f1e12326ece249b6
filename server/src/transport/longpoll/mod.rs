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
//!
//! Parts: `session` (a session's machine, its queue, polls and expiry), `http` (the endpoint's
//! handlers), `relay` (requests for sessions of other nodes, both ways).

mod http;
mod relay;
mod session;

use std::sync::Arc;

pub use http::{get, options, post};
pub use relay::spawn_relay;
pub use session::{parse_body, MAX_NDJSON_LINES};

use crate::socket::NodeContext;

/// The status of a session open refused *for now* (over `--max-conns-per-ip`, or a key in the
/// abuse penalty), where a WebSocket gets HTTP 429. Not 429: phoenix.js 1.8 throws on a poll
/// status it does not know, and is then stuck, neither reconnecting nor reporting. On 403 it
/// closes with 1008 and the socket reconnects with its backoff, as after a refused upgrade.
pub const REFUSED_FOR_NOW: u16 = 403;

/// The pubsub channel that carries long-poll requests to the node owning the session, and the
/// answers back.
pub const CHANNEL_LONGPOLL: &str = "longpoll";

/// This node's long-poll state: its sessions, and the requests it relayed to other nodes that
/// are waiting for their answer.
#[derive(Debug, Default)]
pub struct LongPoll {
    sessions: Arc<session::Sessions>,
    relayed: relay::Relayed,
}

impl LongPoll {
    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the long-poll endpoint needs: the node, and its long-poll state.
#[derive(Debug, Clone)]
pub struct LongPollState {
    /// What every connection of the node shares.
    pub node: NodeContext,
    /// The node's sessions and relayed requests.
    pub longpoll: Arc<LongPoll>,
}
