//! A fault switch for tests: [`Partitioned`] wraps an adapter, like [`Chunked`](super::Chunked),
//! and cuts this node off from named peers. The `rollcall` binary puts it around its transport
//! only with `--fault-injection`, so production adapters carry no test hook.
//!
//! While a peer is cut off, nothing this node sends reaches it (a broadcast goes to every other
//! known peer one by one instead, since a broker cannot leave a receiver out), nothing it sends
//! is delivered here, and it is listed as down. Cutting on one side stops traffic both ways;
//! the other side still lists this node as up, as with a real split that only one side has
//! noticed yet. Healing restores traffic at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::sync::{lock, Tasks};
use super::{Envelope, PeerInfo, PubSub, Stats, DEFAULT_INBOX_CAPACITY};

/// An adapter whose traffic with some peers can be cut (see the module docs).
pub struct Partitioned {
    inner: Arc<dyn PubSub>,
    cut: Arc<Mutex<HashSet<String>>>,
    dropped_outbound: AtomicU64,
    dropped_inbound: Arc<AtomicU64>,
    subscriptions: Tasks,
}

impl Partitioned {
    /// Wraps `inner`, with nobody cut off yet.
    pub fn new(inner: Arc<dyn PubSub>) -> Partitioned {
        Partitioned {
            inner,
            cut: Arc::default(),
            dropped_outbound: AtomicU64::new(0),
            dropped_inbound: Arc::new(AtomicU64::new(0)),
            subscriptions: Tasks::default(),
        }
    }

    /// Cuts this node off from `peer` (`partitioned`), or heals the cut.
    pub fn set_partitioned(&self, peer: &str, partitioned: bool) {
        let mut cut = lock(&self.cut);
        if partitioned {
            cut.insert(peer.to_owned());
        } else {
            cut.remove(peer);
        }
    }

    fn is_cut(&self, peer: &str) -> bool {
        lock(&self.cut).contains(peer)
    }
}

impl std::fmt::Debug for Partitioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partitioned({:?})", lock(&self.cut))
    }
}

impl PubSub for Partitioned {
    fn node(&self) -> &str {
        self.inner.node()
    }

    fn broadcast(&self, channel: &str, payload: Bytes) {
        let cut = lock(&self.cut).clone();
        if cut.is_empty() {
            self.inner.broadcast(channel, payload);
            return;
        }
        for peer in self.inner.peers() {
            if !peer.name.is_empty() && !cut.contains(&peer.name) {
                self.inner.send_to(&peer.name, channel, payload.clone());
            }
        }
    }

    fn send_to(&self, node: &str, channel: &str, payload: Bytes) {
        if self.is_cut(node) {
            self.dropped_outbound.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.send_to(node, channel, payload);
    }

    fn subscribe(&self, channel: &str) -> mpsc::Receiver<Envelope> {
        let mut raw = self.inner.subscribe(channel);
        let (tx, rx) = mpsc::channel(DEFAULT_INBOX_CAPACITY);
        let (cut, dropped) = (self.cut.clone(), self.dropped_inbound.clone());
        let task = tokio::spawn(async move {
            while let Some(envelope) = raw.recv().await {
                if lock(&cut).contains(&envelope.from) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                } else if tx.send(envelope).await.is_err() {
                    return;
                }
            }
        });
        self.subscriptions.push(task);
        rx
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let cut = lock(&self.cut).clone();
        let mut peers = self.inner.peers();
        for peer in &mut peers {
            peer.up &= !cut.contains(&peer.name);
        }
        peers
    }

    fn stats(&self) -> Stats {
        let mut stats = self.inner.stats();
        stats.dropped_outbound += self.dropped_outbound.load(Ordering::Relaxed);
        stats.dropped_inbound += self.dropped_inbound.load(Ordering::Relaxed);
        stats
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.inner.shutdown()
    }

    fn cluster_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.cluster_addr()
    }
}
