//! How nodes talk to each other. The tracker task publishes through a [`PubSub`] adapter and
//! reads what other nodes published from it; it does not know which adapter carries it.
//! Today there is [`local::LocalPubSub`] (one node, nothing leaves the process); cluster
//! adapters (mesh, NATS, Redis) plug in behind the same trait.

pub mod local;

use rollcall_core::protocol::Payload;
use tokio::sync::mpsc;

/// What travels between nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterMessage {
    /// A client event relayed to a topic: every node delivers it to its local subscribers.
    Broadcast {
        /// The topic.
        topic: String,
        /// The event name.
        event: String,
        /// The payload.
        payload: Payload,
    },
    /// Replication traffic of the presence tracker (opaque to the adapter).
    Tracker {
        /// The sending node.
        from: String,
        /// The encoded tracker message.
        bytes: Vec<u8>,
    },
}

/// A way to reach the other nodes of the cluster.
pub trait PubSub: Send + 'static {
    /// Sends `message` to every other node (never back to this one).
    fn publish(&mut self, message: ClusterMessage);

    /// The stream of messages other nodes published. Called once, by the tracker task.
    fn subscribe(&mut self) -> mpsc::UnboundedReceiver<ClusterMessage>;
}
