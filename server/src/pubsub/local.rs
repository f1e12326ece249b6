//! The single-node adapter: there are no other nodes, so nothing is sent and nothing arrives.

use tokio::sync::mpsc;

use super::{ClusterMessage, PubSub};

/// A node alone: publishing is a no-op and the incoming stream stays silent.
#[derive(Debug, Default)]
pub struct LocalPubSub {
    /// Kept so the incoming stream stays open (silent) instead of ending.
    keep_open: Option<mpsc::UnboundedSender<ClusterMessage>>,
}

impl LocalPubSub {
    /// A new single-node adapter.
    pub fn new() -> Self {
        Self::default()
    }
}

impl PubSub for LocalPubSub {
    fn publish(&mut self, _message: ClusterMessage) {}

    fn subscribe(&mut self) -> mpsc::UnboundedReceiver<ClusterMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.keep_open = Some(tx);
        rx
    }
}
