//! Long-poll across nodes: a request for a session another node owns is sent to that node on
//! the pubsub channel [`CHANNEL_LONGPOLL`] (JSON: a request id, the token, poll or post with the
//! body in base64); the owner serves it against its own sessions and sends back the HTTP body,
//! which the relaying node answers as is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use super::session::{deliver, parse_body, poll, Sessions};
use super::{LongPoll, LongPollState, CHANNEL_LONGPOLL};
use crate::pubsub::{Envelope, PubSub};

/// How much longer than the window a relayed request may take (the hop there and back).
const RELAY_MARGIN: Duration = Duration::from_secs(5);

/// A relayed request: the node it went to and its id.
type RequestKey = (String, u64);

/// The requests this node relayed to other nodes that are waiting for their answer, by the
/// node asked and the request id: an answer counts only from the node the request went to.
pub(super) struct Relayed {
    pending: Mutex<HashMap<RequestKey, oneshot::Sender<Option<Value>>>>,
    next_request: AtomicU64,
}

impl Default for Relayed {
    fn default() -> Self {
        Relayed {
            pending: Mutex::default(),
            // A random start, so that a node restarted under the same name never takes an
            // answer meant for its previous run (which may carry another client's session).
            next_request: AtomicU64::new(rand::random()),
        }
    }
}

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relayed").finish_non_exhaustive()
    }
}

/// A relayed request waiting for its answer; dropping it (the answer came, the wait timed out,
/// or the client went away) forgets the request.
struct PendingAnswer<'a> {
    relayed: &'a Relayed,
    key: RequestKey,
    answer: oneshot::Receiver<Option<Value>>,
}

impl Drop for PendingAnswer<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.relayed.pending.lock() {
            pending.remove(&self.key);
        }
    }
}

impl Relayed {
    /// Registers a request to `owner` whose answer this node will wait for.
    fn expect_answer(&self, owner: &str) -> PendingAnswer<'_> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let key = (owner.to_owned(), id);
        let (tx, answer) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(key.clone(), tx);
        }
        PendingAnswer {
            relayed: self,
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

/// What travels on [`CHANNEL_LONGPOLL`] (JSON).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub(super) enum Request {
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
pub(super) async fn relay(state: &LongPollState, owner: &str, request: Request) -> Option<Value> {
    let pubsub = state.node.tracker.pubsub();
    if !pubsub.peers().iter().any(|p| p.name == owner && p.up) {
        return None;
    }
    let mut pending = state.longpoll.relayed.expect_answer(owner);
    let message = RelayMessage::Request {
        id: pending.key.1,
        request,
    };
    match serde_json::to_vec(&message) {
        Ok(bytes) => pubsub.send_to(owner, CHANNEL_LONGPOLL, bytes.into()),
        Err(e) => tracing::warn!("long-poll relay request not encoded: {e}"),
    }
    let within = state.node.config.longpoll_window + RELAY_MARGIN;
    let mut shutdown = state.node.shutdown.clone();
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

/// Serves the long-poll requests other nodes relay to this one (polls wait up to `window`),
/// and completes this node's relayed requests with their answers. Runs until the server shuts
/// down.
pub fn spawn_relay(
    longpoll: Arc<LongPoll>,
    window: Duration,
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
            on_relay_message(&longpoll, window, &pubsub, envelope);
        }
    });
}

fn on_relay_message(
    longpoll: &Arc<LongPoll>,
    window: Duration,
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
        RelayMessage::Answer { id, body } => longpoll.relayed.answer(&envelope.from, id, body),
        RelayMessage::Request { id, request } => {
            let (longpoll, pubsub) = (longpoll.clone(), pubsub.clone());
            // A poll waits up to the window: never hold up the next request behind it.
            tokio::spawn(async move {
                let body = serve_relayed(&longpoll.sessions, window, request).await;
                let answer = RelayMessage::Answer { id, body };
                match serde_json::to_vec(&answer) {
                    Ok(bytes) => pubsub.send_to(&envelope.from, CHANNEL_LONGPOLL, bytes.into()),
                    Err(e) => tracing::warn!("long-poll relay answer not encoded: {e}"),
                }
            });
        }
    }
}

async fn serve_relayed(sessions: &Sessions, window: Duration, request: Request) -> Option<Value> {
    match request {
        Request::Poll { token } => {
            let session = sessions.get(&token)?;
            Some(poll(window, sessions, token, session).await)
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
            let status = deliver(&session.inbound, frames, window).await;
            Some(json!({"status": status}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_counts_only_from_the_node_the_request_went_to() {
        let relayed = Relayed::default();
        let mut pending = relayed.expect_answer("b");
        let id = pending.key.1;
        relayed.answer(
            "c",
            id,
            Some(json!({"status": 200, "token": "someone else's"})),
        );
        assert!(
            pending.answer.try_recv().is_err(),
            "taken from the wrong node"
        );
        relayed.answer("b", id, Some(json!({"status": 204})));
        assert_eq!(pending.answer.try_recv(), Ok(Some(json!({"status": 204}))));
    }

    #[test]
    fn a_restarted_node_does_not_reuse_request_ids() {
        // Two runs of one node: an answer meant for the first must not match the second's
        // requests (2^-64 odds of a false failure).
        let (first, second) = (Relayed::default(), Relayed::default());
        assert_ne!(first.expect_answer("b").key, second.expect_answer("b").key);
    }

    #[test]
    fn a_relayed_request_given_up_leaves_nothing_pending() {
        let relayed = Relayed::default();
        let pending = relayed.expect_answer("b");
        assert_eq!(relayed.pending_len(), 1);
        // Timed out, answered, or its client went away: the wait is dropped.
        drop(pending);
        assert_eq!(relayed.pending_len(), 0);
    }
}
