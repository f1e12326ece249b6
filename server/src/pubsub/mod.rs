//! Cluster transport: how rollcall nodes send each other tracker deltas and room relays.
//!
//! This module owns *delivery between nodes* only: the [`PubSub`] contract, what it carries
//! ([`Envelope`]), and how an adapter is chosen ([`ClusterConfig`], [`connect`]). It does not
//! know what a tracker delta or a room relay means; callers pick a `channel` name ("tracker",
//! "relay", ...) and hand over opaque bytes. Delivery is best effort and at most once: every
//! adapter queues into bounded buffers and drops (and counts, see [`Stats`]) rather than block
//! the caller or grow without limit. The presence CRDT tolerates loss by design (heartbeats
//! carry clocks, a gap triggers a transfer), so a dropped message costs latency, never
//! correctness.
//!
//! Adapters: [`Local`] (single node), [`mesh`] (direct TCP between nodes), [`nats`] and
//! [`redis`] (a broker relays messages, through the shared [`broker`] core). Wrappers:
//! [`Signed`] (every message signed with the cluster secret, replays refused), [`Chunked`]
//! (messages of any size; every cluster transport runs inside both, `Chunked` over `Signed`)
//! and [`Partitioned`] (a fault switch for tests). Only [`connect`] names the adapters; each of
//! them depends on this module's contract and the shared parts (`inbox`: fan-out to
//! subscribers and the counters; `backoff`; `sync`: lock and stop helpers), never on another
//! adapter.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rollcall_server::pubsub::Error> {
//! use rollcall_server::pubsub::{connect, ClusterConfig, MeshConfig};
//!
//! let seeds = vec!["rollcall-cluster.default.svc:7000".to_string()];
//! let config = ClusterConfig::Mesh(MeshConfig::new("0.0.0.0:7000", seeds, "s3cret"));
//! let cluster = connect("node-a", config).await?;
//! let mut deltas = cluster.subscribe("tracker");
//! cluster.broadcast("tracker", bytes::Bytes::from_static(b"delta"));
//! cluster.send_to("node-b", "tracker", bytes::Bytes::from_static(b"transfer request"));
//! while let Some(envelope) = deltas.recv().await {
//!     println!("{} sent {} bytes", envelope.from, envelope.payload.len());
//! }
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod backoff;
pub mod broker;
pub mod chunked;
mod inbox;
mod local;
pub mod mesh;
pub mod nats;
pub mod partition;
pub mod redis;
pub mod signed;
mod sync;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

pub use broker::Broker;
pub use chunked::Chunked;
use chunked::{DEFAULT_CHUNK, NATS_CHUNK};
pub use local::Local;
pub use mesh::{Mesh, MeshConfig};
pub use partition::Partitioned;
pub use signed::Signed;

/// Default capacity of each subscriber's inbound queue (messages).
pub const DEFAULT_INBOX_CAPACITY: usize = 4096;

/// One message received from another node.
///
/// Ordering: the mesh and Redis deliver one sender's messages in the order it sent them (while
/// its connection lasts); NATS keeps order among broadcasts and among directed messages, but a
/// broadcast and a directed message may swap. Nothing is ordered across senders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Name of the node that sent it.
    pub from: String,
    /// The logical channel it was sent on, e.g. `"tracker"` or `"relay"`.
    pub channel: String,
    /// The opaque body, exactly as the sender passed it.
    pub payload: Bytes,
}

/// What this node knows about another node, for `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node name; empty for a configured mesh address that has never completed a
    /// handshake (so its name is not known yet).
    pub name: String,
    /// Where the peer is reached: its cluster address for the mesh, the broker URL for brokers.
    pub addr: String,
    /// Mesh: an authenticated connection is open. Brokers: heard from within the liveness window.
    pub up: bool,
}

/// Counters since start, for metrics and `/healthz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages handed to the transport for delivery (one per destination node for the mesh,
    /// one per publish for brokers).
    pub sent: u64,
    /// Messages received from other nodes and handed to subscribers.
    pub received: u64,
    /// Outbound messages dropped: queue full, destination not connected, or broker down.
    pub dropped_outbound: u64,
    /// Inbound messages dropped because a subscriber's queue was full (or, through
    /// [`Partitioned`], because the sender is cut off); through [`Chunked`], also malformed
    /// parts and messages whose parts never all came.
    pub dropped_inbound: u64,
    /// Mesh only: handshakes that failed for a reason worth an operator's attention (wrong
    /// secret, duplicate node name, not speaking our protocol, too slow), either side.
    pub refused: u64,
    /// Messages refused by [`Signed`], by reason; never delivered.
    pub rejected: Rejected,
}

/// Received messages [`Signed`] refused, by reason (see [`signed::Refusal`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejected {
    /// Not in the signed format.
    pub unsigned: u64,
    /// A tag that does not match (another secret, altered or forged bytes).
    pub bad_signature: u64,
    /// Received before, addressed to another node, older than the replay window, or a proof
    /// answering no challenge.
    pub replayed: u64,
    /// From a sender not (yet) proven live to this node, or numbered before its proof.
    pub unproven: u64,
}

/// The cluster transport every adapter implements. Object safe: the server holds an
/// `Arc<dyn PubSub>` chosen at start-up by [`connect`].
///
/// No method blocks: sends enqueue and return; when a queue is full the message is dropped and
/// counted in [`Stats::dropped_outbound`].
pub trait PubSub: Send + Sync {
    /// This node's name, as other nodes see it in [`Envelope::from`].
    fn node(&self) -> &str;

    /// Sends `payload` on `channel` to every other node (best effort, at most once each).
    fn broadcast(&self, channel: &str, payload: Bytes);

    /// Sends `payload` on `channel` to the node named `node` only (best effort, at most once).
    /// Sending to an unknown or unreachable node drops the message.
    fn send_to(&self, node: &str, channel: &str, payload: Bytes);

    /// Returns a receiver of every message other nodes send on `channel` (never our own).
    /// May be called several times; each receiver gets its own copy. A receiver that falls more
    /// than its capacity behind loses messages (counted in [`Stats::dropped_inbound`]). Messages
    /// on a channel nobody subscribed to are discarded, so subscribe before traffic starts.
    fn subscribe(&self, channel: &str) -> mpsc::Receiver<Envelope>;

    /// The other nodes this node knows of, for `/healthz`.
    fn peers(&self) -> Vec<PeerInfo>;

    /// Counters since start.
    fn stats(&self) -> Stats;

    /// Flushes what is queued (bounded by a short deadline), then closes every connection.
    /// Sends after shutdown are dropped.
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// The address other nodes dial to reach this one, when the transport listens (mesh only;
    /// useful when it was bound to port 0).
    fn cluster_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

impl fmt::Debug for dyn PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PubSub({})", self.node())
    }
}

/// Which transport a node uses, from the command line (`--cluster none|mesh|nats|redis`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterConfig {
    /// A single node: nothing leaves the process.
    None,
    /// Direct TCP connections between nodes; see [`mesh`].
    Mesh(MeshConfig),
    /// A NATS server relays messages; see [`nats`].
    Nats {
        /// e.g. `nats://127.0.0.1:4222`.
        url: String,
        /// Namespace of the cluster's channels on the broker; covered by every signature.
        cluster_name: String,
        /// Shared secret every message is signed with (`--cluster-secret`).
        secret: String,
    },
    /// A Redis server relays messages with PUBLISH/SUBSCRIBE; see [`redis`].
    Redis {
        /// e.g. `redis://127.0.0.1:6379`.
        url: String,
        /// Namespace of the cluster's channels on the broker; covered by every signature.
        cluster_name: String,
        /// Shared secret every message is signed with (`--cluster-secret`).
        secret: String,
    },
}

/// Why a transport could not start. Each variant says what to fix.
#[derive(Debug)]
pub enum Error {
    /// A node or cluster name is empty, too long, or has characters brokers cannot carry.
    BadName {
        /// What the name is for ("node name", "cluster name").
        what: &'static str,
        /// The offending value.
        name: String,
    },
    /// An address is not `HOST:PORT`.
    BadAddress {
        /// The offending value.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The cluster listen address could not be bound.
    Bind {
        /// The address we tried.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A cluster transport was configured without a shared secret.
    MissingSecret,
    /// A broker (NATS or Redis) could not be reached or refused us.
    BrokerUnreachable {
        /// The URL we tried.
        url: String,
        /// The client library's explanation.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadName { what, name } => write!(
                f,
                "bad {what} {name:?}: use 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ -"
            ),
            Error::BadAddress { addr, reason } => {
                write!(f, "bad address {addr:?}: {reason} (expected HOST:PORT)")
            }
            Error::Bind { addr, source } => {
                write!(f, "cannot listen for cluster peers on {addr}: {source}")
            }
            Error::MissingSecret => write!(
                f,
                "the cluster needs a shared secret (--cluster-secret or ROLLCALL_CLUSTER_SECRET): \
                 every message between nodes is signed with it, so that nobody else can inject \
                 or replay presence"
            ),
            Error::BrokerUnreachable { url, reason } => {
                write!(f, "cannot reach the broker at {url}: {reason}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Longest accepted node or cluster name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a node or cluster name: 1..=128 characters from `A-Z a-z 0-9 . _ -`, so that it is a
/// valid NATS subject token sequence and Redis channel part, and safe in logs.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName {
            what,
            name: name.to_owned(),
        })
    }
}

/// Starts the transport `config` names for the node `node_name`. Every transport but `None` is
/// wrapped in [`Signed`] (with the cluster secret, which is then required) and that in
/// [`Chunked`], so messages of any size get through and no message without the secret does;
/// all nodes of a cluster must therefore be started this way.
///
/// Mesh: binds the listen address (fails if it cannot) and starts dialing peers in the background
/// (unreachable peers are retried, not an error). Brokers: connects once and fails if the broker
/// cannot be reached, so a typo in the URL is reported at start-up.
pub async fn connect(node_name: &str, config: ClusterConfig) -> Result<Arc<dyn PubSub>, Error> {
    validate_name("node name", node_name)?;
    let secret = match &config {
        ClusterConfig::None => return Ok(Arc::new(Local::new(node_name))),
        ClusterConfig::Mesh(mesh) => &mesh.secret,
        ClusterConfig::Nats { secret, .. } | ClusterConfig::Redis { secret, .. } => secret,
    };
    if secret.is_empty() {
        return Err(Error::MissingSecret);
    }
    if secret.len() < 16 {
        tracing::warn!(
            "the cluster secret is only {} bytes long: anyone who can capture a message can try \
             to guess it offline; use 32 or more random bytes",
            secret.len()
        );
    }
    let secret = secret.clone().into_bytes();
    // Every cluster transport signs its messages, and carries messages of any size: see
    // [`signed`] and [`chunked`]. Parts are signed one by one, below the reassembler.
    // The mesh lists only peers that passed its handshake, so they are challenged at once; a
    // broker's peers are names heard (anyone can send a name), so a sender is challenged when
    // its first signed message comes. The broker's cluster name is covered by every tag.
    let (signed, chunk) = match config {
        ClusterConfig::None => return Ok(Arc::new(Local::new(node_name))),
        ClusterConfig::Mesh(mesh) => {
            let inner = Arc::new(Mesh::start(node_name, mesh).await?);
            let signed = Signed::over_authenticated_peers(inner, &secret, "");
            (signed, DEFAULT_CHUNK)
        }
        ClusterConfig::Nats {
            url, cluster_name, ..
        } => {
            let inner = Arc::new(nats::connect(node_name, &url, &cluster_name).await?);
            (Signed::new(inner, &secret, &cluster_name), NATS_CHUNK)
        }
        ClusterConfig::Redis {
            url, cluster_name, ..
        } => {
            let inner = Arc::new(redis::connect(node_name, &url, &cluster_name).await?);
            (Signed::new(inner, &secret, &cluster_name), DEFAULT_CHUNK)
        }
    };
    Ok(Arc::new(Chunked::new(Arc::new(signed), chunk)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_brokers_cannot_carry_are_refused() {
        assert!(validate_name("node name", "node-1.eu_west").is_ok());
        for bad in ["", "a b", "a*", "a>", ".a", "a.", "a..b", "ä"] {
            assert!(validate_name("node name", bad).is_err(), "{bad:?}");
        }
    }
}
