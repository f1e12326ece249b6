//! The single-node adapter.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::inbox::Inbox;
use super::{Envelope, PeerInfo, PubSub, Stats, DEFAULT_INBOX_CAPACITY};

/// The single-node adapter (`--cluster none`): there is nobody to send to, so sends go nowhere
/// and subscribers never receive anything.
#[derive(Debug)]
pub struct Local {
    node: String,
    // Kept so receivers stay open (a closed receiver would look like a transport failure).
    inbox: Inbox,
}

impl Local {
    /// A single-node transport for `node`.
    pub fn new(node: &str) -> Self {
        Local {
            node: node.to_owned(),
            inbox: Inbox::new(DEFAULT_INBOX_CAPACITY),
        }
    }
}

impl PubSub for Local {
    fn node(&self) -> &str {
        &self.node
    }
    fn broadcast(&self, _channel: &str, _payload: Bytes) {}
    fn send_to(&self, _node: &str, _channel: &str, _payload: Bytes) {}
    fn subscribe(&self, channel: &str) -> mpsc::Receiver<Envelope> {
        self.inbox.subscribe(channel)
    }
    fn peers(&self) -> Vec<PeerInfo> {
        Vec::new()
    }
    fn stats(&self) -> Stats {
        self.inbox.counters.snapshot()
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
