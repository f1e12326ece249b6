//! The `mesh` adapter: nodes talk to each other directly over TCP, no broker.
//!
//! What it owns: the cluster listener, one authenticated connection per pair of nodes, dialing
//! and redialing configured and gossiped addresses, dead-peer detection, and the per-connection
//! send queues. What it does not own: what the bytes mean (the tracker's job) or deciding that
//! a node's presences are gone (also the tracker's, from its own heartbeats).
//!
//! Parts: `wire` (the frames and their encoding, with the format table), `handshake`
//! (authenticating a new connection), `link` (one live connection), `dial` (accepting, dialing,
//! resolving). This module holds the mesh's shared state and the rules below.
//!
//! ## One connection per pair
//! When both nodes dial each other at once, the connection dialed by the node with the smaller
//! name wins on both sides (a deterministic rule both can apply without talking). A connection
//! from a new incarnation of the peer always replaces the old one: the peer restarted, so the
//! old connection is a leftover even if it has not noticed yet (a host that vanished sends no
//! FIN). Otherwise a newer connection replaces an older one.
//!
//! ## Full mesh
//! After the handshake each side sends `Peers`: itself and every node it is connected to. Every
//! node dials the addresses it learns, so a node configured with a single seed finds them all.
//! Configured `--peers` names are re-resolved periodically, so a Kubernetes headless service
//! (one DNS name, one address per pod) works as the seed list.

mod dial;
mod handshake;
mod link;
mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::inbox::Inbox;
use super::sync::lock;
use super::{validate_name, Envelope, Error, PeerInfo, PubSub, Stats, DEFAULT_INBOX_CAPACITY};
use crate::log_summary::LogSummary;
use dial::{accept_loop, dial_loop, resolve_loop};
use handshake::Established;
pub use wire::MAX_FRAME;
use wire::{encode_data, encode_peers};

/// Handshakes in progress at once; more are closed at once (a flood of strangers cannot starve
/// real peers of memory or tasks).
const MAX_PENDING_HANDSHAKES: usize = 64;
/// Every this many pings a connection re-sends our peer list.
const REGOSSIP_EVERY_PINGS: u32 = 10;
/// Addresses we keep dialing at most: a bound on what gossip can make us do.
const MAX_TARGETS: usize = 1024;

/// Mesh settings. [`MeshConfig::new`] fills in production defaults; tests shorten the timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// `HOST:PORT` to accept peers on (`--cluster-listen`); port 0 picks a free port.
    pub listen: String,
    /// `HOST:PORT` seeds to dial (`--peers`); a name resolving to several addresses dials each.
    pub peers: Vec<String>,
    /// Shared secret every node of the cluster must have (`--cluster-secret`).
    pub secret: String,
    /// `HOST:PORT` other nodes should dial to reach us. Default: the bound listen address; an
    /// unspecified host (`0.0.0.0`) is replaced by each peer with the address it sees us from.
    pub advertise: Option<String>,
    /// How often an idle connection sends a ping.
    pub ping_interval: Duration,
    /// A connection that receives nothing for this long is declared dead and closed.
    pub ping_timeout: Duration,
    /// Limit for connecting plus the whole handshake.
    pub handshake_timeout: Duration,
    /// How often the `peers` names are resolved again.
    pub resolve_interval: Duration,
    /// First reconnect delay; doubles per failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// A gossiped address that keeps failing this long is forgotten (pods come and go).
    pub forget_after: Duration,
    /// Frames queued per peer connection before new sends to it are dropped.
    pub queue_capacity: usize,
    /// Messages queued per subscriber before new ones are dropped.
    pub inbox_capacity: usize,
    /// Refused incoming connections are logged once, then summarised at most this often.
    pub log_interval: Duration,
}

impl MeshConfig {
    /// A mesh listening on `listen`, seeded with `peers`, authenticated by `secret`, with
    /// default timers.
    pub fn new(listen: impl Into<String>, peers: Vec<String>, secret: impl Into<String>) -> Self {
        MeshConfig {
            listen: listen.into(),
            peers,
            secret: secret.into(),
            advertise: None,
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            resolve_interval: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            forget_after: Duration::from_secs(600),
            queue_capacity: 4096,
            inbox_capacity: DEFAULT_INBOX_CAPACITY,
            log_interval: crate::log_summary::DEFAULT_INTERVAL,
        }
    }
}

/// A running mesh node. Dropping it stops every task and closes every connection without
/// waiting; [`PubSub::shutdown`] flushes first.
pub struct Mesh {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

struct Shared {
    name: String,
    secret: Vec<u8>,
    advertise: String,
    config: MeshConfig,
    state: Mutex<State>,
    inbox: Inbox,
    /// `true` once the mesh is stopping.
    stop: watch::Sender<bool>,
    /// Woken when a connection comes or goes, so idle dialers re-check.
    changed: Notify,
    /// Random per start; a `Hello` carrying our name *and* this is a connection to ourselves,
    /// our name with another value is a second node misconfigured with the same name.
    incarnation: u64,
    next_conn_id: AtomicU64,
    handshakes: Arc<tokio::sync::Semaphore>,
    /// Held (cloned) by every connection task; `shutdown` drops the original and waits until
    /// every clone is gone, i.e. every queue is flushed.
    drain: Mutex<Option<mpsc::Sender<()>>>,
    drained: tokio::sync::Mutex<mpsc::Receiver<()>>,
    /// Refused incoming connections, for the log (one line per interval).
    refusals: LogSummary,
}

#[derive(Default)]
struct State {
    peers: HashMap<String, Peer>,
    targets: HashMap<String, Target>,
    /// Addresses that turned out to be ourselves (a headless service includes our own pod).
    self_addrs: HashSet<String>,
}

struct Peer {
    addr: String,
    conn: Option<Conn>,
}

struct Conn {
    id: u64,
    we_dialed: bool,
    /// The peer's incarnation on this connection: a different one on a new connection means
    /// the peer restarted and this connection is a leftover.
    incarnation: u64,
    tx: mpsc::Sender<Bytes>,
    kill: Arc<Notify>,
}

struct Target {
    name: Option<String>,
    configured: bool,
}

impl Mesh {
    /// Binds the cluster listener and starts accepting and dialing. Fails only on bad
    /// configuration or when the listen address cannot be bound; unreachable peers are retried
    /// in the background.
    pub async fn start(node: &str, config: MeshConfig) -> Result<Mesh, Error> {
        validate_name("node name", node)?;
        if config.secret.is_empty() {
            return Err(Error::MissingSecret);
        }
        check_host_port(&config.listen)?;
        for peer in &config.peers {
            check_host_port(peer)?;
        }
        if let Some(advertise) = &config.advertise {
            check_host_port(advertise)?;
        }
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen.clone(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        let (stop, _) = watch::channel(false);
        let (drain_tx, drain_rx) = mpsc::channel(1);
        let config_log_interval = config.log_interval;
        let shared = Arc::new(Shared {
            name: node.to_owned(),
            secret: config.secret.as_bytes().to_vec(),
            advertise,
            inbox: Inbox::new(config.inbox_capacity),
            config,
            state: Mutex::new(State::default()),
            stop,
            changed: Notify::new(),
            incarnation: rand::random(),
            next_conn_id: AtomicU64::new(1),
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES)),
            drain: Mutex::new(Some(drain_tx)),
            drained: tokio::sync::Mutex::new(drain_rx),
            refusals: LogSummary::new("refused cluster connections", config_log_interval),
        });
        info!(node, %local_addr, advertise = %shared.advertise, "cluster mesh listening");
        tokio::spawn(accept_loop(shared.clone(), listener));
        tokio::spawn(resolve_loop(shared.clone()));
        Ok(Mesh { shared, local_addr })
    }

    /// The address the cluster listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

impl PubSub for Mesh {
    fn node(&self) -> &str {
        &self.shared.name
    }

    fn broadcast(&self, channel: &str, payload: Bytes) {
        let Some(frame) = self.shared.data_frame(channel, &payload) else {
            return;
        };
        let state = lock(&self.shared.state);
        for peer in state.peers.values() {
            if let Some(conn) = &peer.conn {
                self.shared.enqueue(conn, frame.clone());
            }
        }
    }

    fn send_to(&self, node: &str, channel: &str, payload: Bytes) {
        let state = lock(&self.shared.state);
        match state.peers.get(node).and_then(|p| p.conn.as_ref()) {
            Some(conn) => {
                if let Some(frame) = self.shared.data_frame(channel, &payload) {
                    self.shared.enqueue(conn, frame);
                }
            }
            None => self.shared.inbox.counters.add_dropped_outbound(),
        }
    }

    fn subscribe(&self, channel: &str) -> mpsc::Receiver<Envelope> {
        self.shared.inbox.subscribe(channel)
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let state = lock(&self.shared.state);
        let mut out: Vec<PeerInfo> = state
            .peers
            .iter()
            .map(|(name, peer)| PeerInfo {
                name: name.clone(),
                addr: peer.addr.clone(),
                up: peer.conn.is_some(),
            })
            .collect();
        out.extend(
            state
                .targets
                .iter()
                .filter(|(_, t)| t.name.is_none())
                .map(|(addr, _)| PeerInfo {
                    name: String::new(),
                    addr: addr.clone(),
                    up: false,
                }),
        );
        out.sort_by(|a, b| (&a.name, &a.addr).cmp(&(&b.name, &b.addr)));
        out
    }

    fn stats(&self) -> Stats {
        self.shared.inbox.counters.snapshot()
    }

    fn cluster_addr(&self) -> Option<SocketAddr> {
        Some(self.local_addr)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.stop.send_replace(true);
            lock(&self.shared.drain).take();
            let mut drained = self.shared.drained.lock().await;
            // Each connection flushes its queue then drops its drain handle; give up after a
            // bound so a stuck peer cannot hold shutdown hostage.
            let _ = timeout(Duration::from_secs(2), drained.recv()).await;
        })
    }
}

impl Shared {
    /// Encodes a data frame, or drops (and counts) a message too large for any peer to accept.
    fn data_frame(&self, channel: &str, payload: &[u8]) -> Option<Bytes> {
        if 2 + channel.len().min(255) + payload.len() > MAX_FRAME {
            warn!(
                channel,
                bytes = payload.len(),
                "dropping a cluster message larger than the {MAX_FRAME}-byte frame limit"
            );
            self.inbox.counters.add_dropped_outbound();
            return None;
        }
        Some(encode_data(channel, payload))
    }

    fn enqueue(&self, conn: &Conn, frame: Bytes) {
        match conn.tx.try_send(frame) {
            Ok(()) => self.inbox.counters.add_sent(),
            Err(_) => self.inbox.counters.add_dropped_outbound(),
        }
    }

    /// Notes a refused incoming connection for the log.
    fn refuse(&self, reason: &'static str, remote: SocketAddr) {
        let detail = format!("from {remote}");
        if let Some(line) = self
            .refusals
            .note(tokio::time::Instant::now(), reason, &detail)
        {
            warn!("{line}");
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Adds a dial target unless we already have it; spawns its dialer.
    fn add_target(self: &Arc<Self>, addr: String, name: Option<String>, configured: bool) {
        let mut state = lock(&self.state);
        if state.self_addrs.contains(&addr) || self.stopping() {
            return;
        }
        if state.targets.len() >= MAX_TARGETS && !state.targets.contains_key(&addr) {
            warn!(%addr, "too many cluster peer addresses; ignoring this one");
            return;
        }
        if let Some(target) = state.targets.get_mut(&addr) {
            target.configured |= configured;
            if target.name.is_none() {
                target.name = name;
            }
            return;
        }
        state
            .targets
            .insert(addr.clone(), Target { name, configured });
        drop(state);
        tokio::spawn(dial_loop(self.clone(), addr));
    }

    /// Our view of the cluster for gossip: ourselves plus every connected peer.
    fn peers_frame(&self) -> Bytes {
        let state = lock(&self.state);
        let mut list = vec![(self.name.clone(), self.advertise.clone())];
        list.extend(
            state
                .peers
                .iter()
                .filter(|(_, p)| p.conn.is_some() && !p.addr.is_empty())
                .map(|(n, p)| (n.clone(), p.addr.clone())),
        );
        drop(state);
        encode_peers(&list)
    }

    /// Records an authenticated connection as the one for its peer, applying the tie-break.
    /// Returns its id and send queue, or `None` if the connection must be closed.
    fn register(
        self: &Arc<Self>,
        est: &Established,
        kill: Arc<Notify>,
    ) -> Option<(u64, mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>)> {
        let (name, addr, we_dialed) = (est.name.as_str(), est.addr.as_str(), est.we_dialed);
        let mut state = lock(&self.state);
        if self.stopping() {
            return None;
        }
        let peer = state.peers.entry(name.to_owned()).or_insert_with(|| Peer {
            addr: String::new(),
            conn: None,
        });
        if !addr.is_empty() {
            peer.addr = addr.to_owned();
        }
        let canonical = |dialed_by_us: bool| {
            let dialer_is_smaller = if dialed_by_us {
                self.name.as_str() < name
            } else {
                name < self.name.as_str()
            };
            dialer_is_smaller
        };
        if let Some(existing) = &peer.conn {
            let same_incarnation = existing.incarnation == est.incarnation;
            if same_incarnation && canonical(existing.we_dialed) && !canonical(we_dialed) {
                debug!(peer = name, "keeping the existing connection (tie-break)");
                return None;
            }
            existing.kill.notify_one();
        }
        let (tx, rx) = mpsc::channel(self.config.queue_capacity.max(1));
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        peer.conn = Some(Conn {
            id,
            we_dialed,
            incarnation: est.incarnation,
            tx: tx.clone(),
            kill,
        });
        drop(state);
        self.changed.notify_waiters();
        Some((id, tx, rx))
    }

    fn unregister(&self, name: &str, id: u64) {
        let mut state = lock(&self.state);
        if let Some(peer) = state.peers.get_mut(name) {
            if peer.conn.as_ref().is_some_and(|c| c.id == id) {
                peer.conn = None;
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Sends our peer list to every connection (a new node appeared).
    fn gossip(&self) {
        let frame = self.peers_frame();
        let state = lock(&self.state);
        for peer in state.peers.values() {
            if let Some(conn) = &peer.conn {
                let _ = conn.tx.try_send(frame.clone());
            }
        }
    }
}

fn check_host_port(addr: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::BadAddress {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_without_a_port_are_refused() {
        assert!(check_host_port("127.0.0.1:7000").is_ok());
        assert!(check_host_port("[::1]:7000").is_ok());
        assert!(check_host_port("127.0.0.1").is_err());
        assert!(check_host_port(":7000").is_err());
        assert!(check_host_port("host:70000").is_err());
    }
}
