//! What the NATS and Redis adapters share: the [`Broker`] adapter type and its core (subjects,
//! the outbound queue, dropping our own echo, peers heard from). The [`nats`](super::nats) and
//! [`redis`](super::redis) modules each add only the client: a publisher task that drains the
//! queue and a receive loop that feeds the core.

mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::inbox::Inbox;
use super::sync::{lock, stopped};
use super::{validate_name, Envelope, Error, PeerInfo, PubSub, Stats, DEFAULT_INBOX_CAPACITY};

/// A node connected to a broker (NATS or Redis; see [`super::connect`]). Dropping it stops its
/// tasks without flushing; [`PubSub::shutdown`] flushes first.
pub struct Broker {
    core: Arc<BrokerCore>,
}

impl Broker {
    /// The adapter over `core`, whose client tasks are running.
    pub(crate) fn new(core: Arc<BrokerCore>) -> Broker {
        Broker { core }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.core.stop.send_replace(true);
    }
}

impl PubSub for Broker {
    fn node(&self) -> &str {
        &self.core.node
    }
    fn broadcast(&self, channel: &str, payload: Bytes) {
        self.core.broadcast(channel, payload);
    }
    fn send_to(&self, node: &str, channel: &str, payload: Bytes) {
        self.core.send_to(node, channel, payload);
    }
    fn subscribe(&self, channel: &str) -> mpsc::Receiver<Envelope> {
        self.core.inbox.subscribe(channel)
    }
    fn peers(&self) -> Vec<PeerInfo> {
        self.core.peers()
    }
    fn stats(&self) -> Stats {
        self.core.inbox.counters.snapshot()
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.core.shutdown())
    }
}

/// What the NATS and Redis adapters share: subject names, the outbound queue, the own-message
/// filter, and "heard from recently" peer tracking. Each adapter supplies a publisher task that
/// drains the queue and a receive loop that feeds [`BrokerCore::receive`]; both adapters are a
/// [`Broker`] over their core.
pub(crate) struct BrokerCore {
    pub(crate) node: String,
    pub(crate) url: String,
    /// Subject/channel every node listens on.
    pub(crate) all: String,
    /// Prefix of per-node subjects/channels; the node name follows.
    node_prefix: String,
    pub(crate) inbox: Inbox,
    heard: Mutex<HashMap<String, std::time::Instant>>,
    outbound: Mutex<Option<mpsc::Sender<(String, Bytes)>>>,
    publisher: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
}

/// The receiving end of a broker adapter's outbound queue: `(subject, message)` pairs.
pub(crate) type OutboundQueue = mpsc::Receiver<(String, Bytes)>;

/// What a publisher task waits on: its outbound queue, and the stop flag of a dropped adapter.
pub(crate) struct Publisher {
    queue: OutboundQueue,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// What a publisher task does next.
pub(crate) enum Next {
    /// Publishes `message` on `subject`.
    Publish(String, Bytes),
    /// `shutdown` closed the queue and everything in it was handed out: flush, then finish.
    Drained,
    /// The adapter was dropped without `shutdown`: finish at once.
    Stopped,
}

impl Publisher {
    /// The next thing to do.
    pub(crate) async fn next(&mut self) -> Next {
        tokio::select! {
            next = self.queue.recv() => match next {
                Some((subject, message)) => Next::Publish(subject, message),
                None => Next::Drained,
            },
            _ = stopped(&mut self.stop) => Next::Stopped,
        }
    }
}

/// A peer heard from within this window is reported up.
pub(crate) const BROKER_PEER_LIVENESS: Duration = Duration::from_secs(10);
/// Outbound messages queued for the broker before new ones are dropped.
pub(crate) const BROKER_QUEUE_CAPACITY: usize = 8192;

impl BrokerCore {
    /// A core for `node` in `cluster`, and what its publisher task drains: `(subject, bytes)`
    /// pairs ready to publish.
    pub(crate) fn new(
        node: &str,
        url: &str,
        cluster: &str,
    ) -> Result<(Arc<Self>, Publisher), Error> {
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
            outbound: Mutex::new(Some(tx)),
            publisher: tokio::sync::Mutex::new(None),
            stop,
        };
        let publisher = Publisher {
            queue: rx,
            stop: core.stop.subscribe(),
        };
        Ok((Arc::new(core), publisher))
    }

    /// The subject/channel only `node` listens on.
    pub(crate) fn node_subject(&self, node: &str) -> String {
        format!("{}{node}", self.node_prefix)
    }

    pub(crate) async fn set_publisher(&self, handle: tokio::task::JoinHandle<()>) {
        *self.publisher.lock().await = Some(handle);
    }

    fn enqueue(&self, subject: String, channel: &str, payload: &[u8]) {
        let message = wire::encode(&self.node, channel, payload);
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

    fn broadcast(&self, channel: &str, payload: Bytes) {
        self.enqueue(self.all.clone(), channel, &payload);
    }

    fn send_to(&self, node: &str, channel: &str, payload: Bytes) {
        if node == self.node || validate_name("node name", node).is_err() {
            self.inbox.counters.add_dropped_outbound();
            return;
        }
        self.enqueue(self.node_subject(node), channel, &payload);
    }

    /// Handles one raw message from the broker: decode, drop our own echo, deliver.
    pub(crate) fn receive(&self, raw: Bytes) {
        match wire::decode(raw) {
            Ok(envelope) if envelope.from == self.node => {}
            Ok(envelope) => {
                lock(&self.heard).insert(envelope.from.clone(), std::time::Instant::now());
                self.inbox.deliver(envelope);
            }
            Err(reason) => {
                tracing::warn!(url = %self.url, %reason, "ignoring a malformed cluster message")
            }
        }
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let heard = lock(&self.heard);
        let mut out: Vec<PeerInfo> = heard
            .iter()
            .map(|(name, at)| PeerInfo {
                name: name.clone(),
                addr: self.url.clone(),
                up: at.elapsed() < BROKER_PEER_LIVENESS,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Closes the queue, waits (bounded) for the publisher to flush it, then stops receiving.
    async fn shutdown(&self) {
        lock(&self.outbound).take();
        if let Some(handle) = self.publisher.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
        self.stop.send_replace(true);
    }
}
