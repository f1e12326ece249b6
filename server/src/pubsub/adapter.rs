//! The cluster transport contract: [`PubSub`], what it carries ([`Envelope`]), how it is chosen
//! ([`ClusterConfig`], [`connect`]), and the single-node [`Local`] adapter.
//!
//! This module owns *delivery between nodes* only. It does not know what a tracker delta or a room
//! relay means; callers pick a `channel` name ("tracker", "relay", ...) and hand over opaque bytes.
//! Delivery is best effort and at most once: every adapter queues into bounded buffers and drops
//! (and counts, see [`Stats`]) rather than block the caller or grow without limit. The presence
//! CRDT tolerates loss by design (heartbeats carry clocks, a gap triggers a transfer), so a dropped
//! message costs latency, never correctness.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::pubsub::chunked::{Chunked, DEFAULT_CHUNK, NATS_CHUNK};

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
    /// Inbound messages dropped because a subscriber's queue was full (or, in tests, because
    /// the sender is partitioned off); through [`crate::pubsub::Chunked`], also malformed parts
    /// and messages whose parts never all came.
    pub dropped_inbound: u64,
    /// Mesh only: handshakes that failed for a reason worth an operator's attention (wrong
    /// secret, duplicate node name, not speaking our protocol, too slow), either side.
    pub refused: u64,
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

    /// Test fault switch: while `partitioned`, nothing flows between this node and `peer`, in
    /// either direction, and `peer` shows as down here. Setting it on one side is enough.
    /// Healing restores traffic (the mesh redials at once). No-op for [`Local`].
    #[doc(hidden)]
    fn set_partitioned(&self, _peer: &str, _partitioned: bool) {}
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
    /// Direct TCP connections between nodes; see [`crate::pubsub::mesh`].
    Mesh(crate::pubsub::mesh::MeshConfig),
    /// A NATS server relays messages; see [`crate::pubsub::nats`].
    Nats {
        /// e.g. `nats://127.0.0.1:4222`.
        url: String,
        /// Namespace shared by the nodes of one cluster on a shared broker.
        cluster_name: String,
    },
    /// A Redis server relays messages with PUBLISH/SUBSCRIBE; see [`crate::pubsub::redis`].
    Redis {
        /// e.g. `redis://127.0.0.1:6379`.
        url: String,
        /// Namespace shared by the nodes of one cluster on a shared broker.
        cluster_name: String,
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
    /// The mesh was configured without a shared secret.
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
                "the mesh needs a shared secret (--cluster-secret) so that only our nodes can join"
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
/// wrapped in [`Chunked`], so messages of any size get through; all nodes of a cluster must
/// therefore be started this way.
///
/// Mesh: binds the listen address (fails if it cannot) and starts dialing peers in the background
/// (unreachable peers are retried, not an error). Brokers: connects once and fails if the broker
/// cannot be reached, so a typo in the URL is reported at start-up.
pub async fn connect(node_name: &str, config: ClusterConfig) -> Result<Arc<dyn PubSub>, Error> {
    validate_name("node name", node_name)?;
    match config {
        ClusterConfig::None => Ok(Arc::new(Local::new(node_name))),
        ClusterConfig::Mesh(mesh) => Ok(chunked(
            Arc::new(crate::pubsub::mesh::Mesh::start(node_name, mesh).await?),
            DEFAULT_CHUNK,
        )),
        ClusterConfig::Nats { url, cluster_name } => Ok(chunked(
            Arc::new(crate::pubsub::nats::Nats::connect(node_name, &url, &cluster_name).await?),
            NATS_CHUNK,
        )),
        ClusterConfig::Redis { url, cluster_name } => Ok(chunked(
            Arc::new(crate::pubsub::redis::Redis::connect(node_name, &url, &cluster_name).await?),
            DEFAULT_CHUNK,
        )),
    }
}

/// Every cluster transport carries messages of any size: see [`crate::pubsub::chunked`].
fn chunked(inner: Arc<dyn PubSub>, chunk: usize) -> Arc<dyn PubSub> {
    Arc::new(Chunked::new(inner, chunk))
}

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

/// Shared counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) dropped_outbound: AtomicU64,
    pub(crate) dropped_inbound: AtomicU64,
    pub(crate) refused: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped_outbound: self.dropped_outbound.load(Ordering::Relaxed),
            dropped_inbound: self.dropped_inbound.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
    pub(crate) fn add_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_dropped_outbound(&self) {
        self.dropped_outbound.fetch_add(1, Ordering::Relaxed);
    }
}

/// Fan-out of received envelopes to the subscribers of each channel. Shared by every adapter.
#[derive(Debug)]
pub(crate) struct Inbox {
    capacity: usize,
    subscribers: Mutex<HashMap<String, Vec<mpsc::Sender<Envelope>>>>,
    pub(crate) counters: Arc<Counters>,
}

impl Inbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Inbox {
            capacity: capacity.max(1),
            subscribers: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    pub(crate) fn subscribe(&self, channel: &str) -> mpsc::Receiver<Envelope> {
        let (tx, rx) = mpsc::channel(self.capacity);
        lock(&self.subscribers)
            .entry(channel.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// Hands `envelope` to every subscriber of its channel without waiting; a full subscriber
    /// loses it (counted), a dropped receiver is forgotten.
    pub(crate) fn deliver(&self, envelope: Envelope) {
        let mut subscribers = lock(&self.subscribers);
        let Some(list) = subscribers.get_mut(&envelope.channel) else {
            return;
        };
        list.retain(|tx| match tx.try_send(envelope.clone()) {
            Ok(()) => {
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters
                    .dropped_inbound
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

/// Resolves once `stop` turns `true` (or its sender is gone). A plain `async fn` so the watch
/// guard never lives across an await in the caller's `select!`.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Locks a mutex, recovering from poisoning: our critical sections leave the data consistent
/// even if a panic unwound through them, and the transport must keep running.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Exponential backoff with jitter for reconnect loops: doubles from `min` to `max`, and each
/// wait is drawn from the upper half of the current step so that restarted nodes do not all
/// retry in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            current: min,
        }
    }
    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }
    /// The next wait; advances the step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = step / 2;
        let jitter_ms = rand::random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// What the NATS and Redis adapters share: subject names, the outbound queue, the own-message
/// filter, and "heard from recently" peer tracking. Each adapter supplies a publisher task that
/// drains the queue and a receive loop that feeds [`BrokerCore::receive`].
pub(crate) struct BrokerCore {
    pub(crate) node: String,
    pub(crate) url: String,
    /// Subject/channel every node listens on.
    pub(crate) all: String,
    /// Prefix of per-node subjects/channels; the node name follows.
    node_prefix: String,
    pub(crate) inbox: Inbox,
    heard: Mutex<HashMap<String, std::time::Instant>>,
    /// Test fault switch (see [`PubSub::set_partitioned`]).
    blocked: Mutex<std::collections::HashSet<String>>,
    outbound: Mutex<Option<mpsc::Sender<(String, Bytes)>>>,
    publisher: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
}

/// The receiving end of a broker adapter's outbound queue: `(subject, message)` pairs.
pub(crate) type OutboundQueue = mpsc::Receiver<(String, Bytes)>;

/// A peer heard from within this window is reported up.
pub(crate) const BROKER_PEER_LIVENESS: Duration = Duration::from_secs(10);
/// Outbound messages queued for the broker before new ones are dropped.
pub(crate) const BROKER_QUEUE_CAPACITY: usize = 8192;

impl BrokerCore {
    /// A core for `node` in `cluster`, and the receiving end of its outbound queue:
    /// `(subject, bytes)` pairs ready to publish.
    pub(crate) fn new(
        node: &str,
        url: &str,
        cluster: &str,
    ) -> Result<(Arc<Self>, OutboundQueue), Error> {
        validate_name("node name", node)?;
        validate_name("cluster name", cluster)?;
        let (tx, rx) = mpsc::channel(BROKER_QUEUE_CAPACITY);
        let (stop, _) = tokio::sync::watch::channel(false);
        let core = BrokerCore {
            node: node.to_owned(),
            url: url.to_owned(),
            all: format!("rollcall.{cluster}.all"),
            node_prefix: format!("rollcall.{cluster}.node."),
            inbox: Inbox::new(DEFAULT_INBOX_CAPACITY),
            heard: Mutex::new(HashMap::new()),
            blocked: Mutex::new(std::collections::HashSet::new()),
            outbound: Mutex::new(Some(tx)),
            publisher: tokio::sync::Mutex::new(None),
            stop,
        };
        Ok((Arc::new(core), rx))
    }

    /// The subject/channel only `node` listens on.
    pub(crate) fn node_subject(&self, node: &str) -> String {
        format!("{}{node}", self.node_prefix)
    }

    pub(crate) async fn set_publisher(&self, handle: tokio::task::JoinHandle<()>) {
        *self.publisher.lock().await = Some(handle);
    }

    fn enqueue(&self, subject: String, channel: &str, payload: &[u8]) {
        let message = broker_wire::encode(&self.node, channel, payload);
        let sent = match &*lock(&self.outbound) {
            Some(tx) => tx.try_send((subject, message)).is_ok(),
            None => false,
        };
        if sent {
            self.inbox.counters.add_sent();
        } else {
            self.inbox.counters.add_dropped_outbound();
        }
    }

    pub(crate) fn broadcast(&self, channel: &str, payload: Bytes) {
        let blocked = lock(&self.blocked).clone();
        if blocked.is_empty() {
            self.enqueue(self.all.clone(), channel, &payload);
            return;
        }
        // Partitioned (tests only): the broker cannot exclude a receiver, so address every
        // other node we have heard from directly instead.
        let others: Vec<String> = lock(&self.heard)
            .keys()
            .filter(|n| !blocked.contains(*n))
            .cloned()
            .collect();
        for node in others {
            self.enqueue(self.node_subject(&node), channel, &payload);
        }
    }

    pub(crate) fn set_partitioned(&self, peer: &str, partitioned: bool) {
        let mut blocked = lock(&self.blocked);
        if partitioned {
            blocked.insert(peer.to_owned());
        } else {
            blocked.remove(peer);
        }
    }

    pub(crate) fn send_to(&self, node: &str, channel: &str, payload: Bytes) {
        if node == self.node
            || validate_name("node name", node).is_err()
            || lock(&self.blocked).contains(node)
        {
            self.inbox.counters.add_dropped_outbound();
            return;
        }
        self.enqueue(self.node_subject(node), channel, &payload);
    }

    /// Handles one raw message from the broker: decode, drop our own echo, deliver.
    pub(crate) fn receive(&self, raw: Bytes) {
        match broker_wire::decode(raw) {
            Ok(envelope) if envelope.from == self.node => {}
            Ok(envelope) if lock(&self.blocked).contains(&envelope.from) => {
                self.inbox
                    .counters
                    .dropped_inbound
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(envelope) => {
                lock(&self.heard).insert(envelope.from.clone(), std::time::Instant::now());
                self.inbox.deliver(envelope);
            }
            Err(reason) => {
                tracing::warn!(url = %self.url, %reason, "ignoring a malformed cluster message")
            }
        }
    }

    pub(crate) fn peers(&self) -> Vec<PeerInfo> {
        let blocked = lock(&self.blocked).clone();
        let heard = lock(&self.heard);
        let mut out: Vec<PeerInfo> = heard
            .iter()
            .map(|(name, at)| PeerInfo {
                name: name.clone(),
                addr: self.url.clone(),
                up: at.elapsed() < BROKER_PEER_LIVENESS && !blocked.contains(name),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Closes the queue, waits (bounded) for the publisher to flush it, then stops receiving.
    pub(crate) async fn shutdown(&self) {
        lock(&self.outbound).take();
        if let Some(handle) = self.publisher.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
        self.stop.send_replace(true);
    }
}

/// The small header brokers need, since a broker message carries only bytes: who sent it and on
/// which channel. Layout: version `1`, sender length (u8), sender, channel length (u8), channel,
/// then the payload to the end.
pub(crate) mod broker_wire {
    use super::*;

    const VERSION: u8 = 1;

    /// Encodes a broker message. Names longer than 255 bytes cannot occur (validated at start,
    /// channels are ours); they are truncated rather than panicking.
    pub(crate) fn encode(from: &str, channel: &str, payload: &[u8]) -> Bytes {
        let from = &from.as_bytes()[..from.len().min(255)];
        let channel = &channel.as_bytes()[..channel.len().min(255)];
        let mut buf = BytesMut::with_capacity(3 + from.len() + channel.len() + payload.len());
        buf.put_u8(VERSION);
        buf.put_u8(from.len() as u8);
        buf.put_slice(from);
        buf.put_u8(channel.len() as u8);
        buf.put_slice(channel);
        buf.put_slice(payload);
        buf.freeze()
    }

    /// Decodes a broker message, or says what is wrong with it.
    pub(crate) fn decode(mut buf: Bytes) -> Result<Envelope, String> {
        if buf.remaining() < 1 {
            return Err("empty message".into());
        }
        let version = buf.get_u8();
        if version != VERSION {
            return Err(format!("unknown message version {version}"));
        }
        let from = take_str(&mut buf, "sender")?;
        let channel = take_str(&mut buf, "channel")?;
        Ok(Envelope {
            from,
            channel,
            payload: buf,
        })
    }

    fn take_str(buf: &mut Bytes, what: &str) -> Result<String, String> {
        if buf.remaining() < 1 {
            return Err(format!("truncated before the {what} length"));
        }
        let len = usize::from(buf.get_u8());
        if buf.remaining() < len {
            return Err(format!("truncated {what}"));
        }
        let raw = buf.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_header_round_trips() {
        let bytes = broker_wire::encode("node-a", "tracker", b"\x00\x01payload");
        let env = broker_wire::decode(bytes).expect("decodes");
        assert_eq!(env.from, "node-a");
        assert_eq!(env.channel, "tracker");
        assert_eq!(&env.payload[..], b"\x00\x01payload");
    }

    #[test]
    fn broker_header_rejects_truncated_input_without_panicking() {
        let full = broker_wire::encode("node-a", "tracker", b"x");
        for cut in 0..full.len() - 1 {
            // Every strict prefix that stops inside the header is an error, never a panic.
            let prefix = full.slice(..cut);
            if cut < 2 + "node-a".len() + 1 + "tracker".len() {
                assert!(broker_wire::decode(prefix).is_err(), "prefix {cut}");
            }
        }
        assert!(broker_wire::decode(Bytes::from_static(b"\x09abc")).is_err());
    }

    #[test]
    fn names_brokers_cannot_carry_are_refused() {
        assert!(validate_name("node name", "node-1.eu_west").is_ok());
        for bad in ["", "a b", "a*", "a>", ".a", "a.", "a..b", "ä"] {
            assert!(validate_name("node name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn full_subscriber_loses_messages_and_they_are_counted() {
        let inbox = Inbox::new(1);
        let mut rx = inbox.subscribe("t");
        let env = |p: &'static [u8]| Envelope {
            from: "b".into(),
            channel: "t".into(),
            payload: Bytes::from_static(p),
        };
        inbox.deliver(env(b"1"));
        inbox.deliver(env(b"2"));
        assert_eq!(rx.try_recv().expect("first kept").payload, &b"1"[..]);
        assert!(rx.try_recv().is_err());
        assert_eq!(inbox.counters.snapshot().dropped_inbound, 1);
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let waits: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(waits[0] <= Duration::from_millis(100));
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(800)));
        assert!(waits[5] >= Duration::from_millis(400));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
