//! The `mesh` adapter: nodes talk to each other directly over TCP, no broker.
//!
//! What it owns: the cluster listener, one authenticated connection per pair of nodes, dialing
//! and redialing configured and gossiped addresses, dead-peer detection, and the per-connection
//! send queues. What it does not own: what the bytes mean (the tracker's job) or deciding that
//! a node's presences are gone (also the tracker's, from its own heartbeats).
//!
//! ## Wire format
//! Every frame is a big-endian `u32` body length followed by the body; the body's first byte is
//! its kind. Frames are capped (16 MiB after authentication, 4 KiB before it) so a stranger
//! cannot make us allocate much.
//!
//! | kind | body after the kind byte |
//! | --- | --- |
//! | 1 `Hello` | version `u8`, name `str16`, advertised address `str16`, nonce `[u8; 32]`, incarnation `u64` |
//! | 2 `Auth` | HMAC-SHA256 proof `[u8; 32]` |
//! | 3 `Reject` | reason `str16`, sent before closing so the other side can log why |
//! | 4 `Data` | channel `str8`, then the payload to the end of the frame |
//! | 5 `Ping`, 6 `Pong` | nothing |
//! | 7 `Peers` | count `u16`, then `(name str16, address str16)` per known node |
//!
//! ## Handshake
//! Both sides send `Hello` at once, then each sends `Auth` = HMAC(secret, label, own role, own
//! nonce, other nonce, own name, other name) and checks the other's proof in constant time. The
//! secret never crosses the wire; fresh nonces on both sides stop replay, and the role byte plus
//! refusing our own name stop a proof from being reflected back at us.
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

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::inbox::Inbox;
use super::sync::{lock, stopped};
use super::{validate_name, Envelope, Error, PeerInfo, PubSub, Stats, DEFAULT_INBOX_CAPACITY};

/// Largest frame accepted from an authenticated peer.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest frame accepted before authentication (a `Hello` is well under this).
const MAX_HANDSHAKE_FRAME: usize = 4 * 1024;
/// Protocol version carried in `Hello`.
const VERSION: u8 = 1;
/// Domain-separation label mixed into every proof.
const AUTH_LABEL: &[u8] = b"rollcall-mesh-auth-v1";
/// Handshakes in progress at once; more are closed at once (a flood of strangers cannot starve
/// real peers of memory or tasks).
const MAX_PENDING_HANDSHAKES: usize = 64;
/// Every this many pings a connection re-sends our peer list.
const REGOSSIP_EVERY_PINGS: u32 = 10;
/// Addresses we keep dialing at most: a bound on what gossip can make us do.
const MAX_TARGETS: usize = 1024;

const KIND_HELLO: u8 = 1;
const KIND_AUTH: u8 = 2;
const KIND_REJECT: u8 = 3;
const KIND_DATA: u8 = 4;
const KIND_PING: u8 = 5;
const KIND_PONG: u8 = 6;
const KIND_PEERS: u8 = 7;

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

/// A finished handshake, ready to be registered.
struct Established {
    name: String,
    addr: String,
    we_dialed: bool,
    incarnation: u64,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

#[derive(Debug)]
enum HandshakeError {
    Io(io::Error),
    Timeout,
    Protocol(String),
    SelfConnection,
    DuplicateName(String),
    AuthFailed(String),
    Refused(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Timeout => write!(f, "handshake timed out"),
            HandshakeError::Protocol(m) => write!(f, "protocol error: {m}"),
            HandshakeError::SelfConnection => write!(f, "this address is ourselves"),
            HandshakeError::DuplicateName(n) => write!(
                f,
                "another node also calls itself {n:?}; every node needs a unique --node name"
            ),
            HandshakeError::AuthFailed(n) => write!(
                f,
                "authentication failed for node {n:?}: its --cluster-secret differs from ours"
            ),
            HandshakeError::Refused(r) => write!(f, "refused by the peer: {r}"),
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
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

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Our side of the proof for a handshake.
    fn proof(
        &self,
        role: u8,
        own_nonce: &[u8; 32],
        other_nonce: &[u8; 32],
        own: &str,
        other: &str,
    ) -> Result<Hmac<Sha256>, HandshakeError> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .map_err(|_| HandshakeError::Protocol("unusable cluster secret".into()))?;
        mac.update(AUTH_LABEL);
        mac.update(&[role]);
        mac.update(own_nonce);
        mac.update(other_nonce);
        for name in [own, other] {
            mac.update(&(name.len() as u32).to_be_bytes());
            mac.update(name.as_bytes());
        }
        Ok(mac)
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

/// The address to dial a node at: its advertised address, with an unspecified host replaced by
/// the address we actually see it from.
fn effective_addr(advertised: &str, seen_from: SocketAddr) -> String {
    match advertised.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            SocketAddr::new(seen_from.ip(), addr.port()).to_string()
        }
        _ => advertised.to_owned(),
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.stop.subscribe();
    loop {
        let (stream, remote) = tokio::select! {
            _ = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "cluster accept failed");
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            warn!(%remote, "too many cluster handshakes in progress; closing the new one");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = timeout(
                shared.config.handshake_timeout,
                handshake(&shared, stream, remote, false),
            )
            .await
            .unwrap_or(Err(HandshakeError::Timeout));
            drop(permit);
            match result {
                Ok(est) => start_connection(shared, est),
                Err(HandshakeError::SelfConnection) => {}
                // A bare connect-and-close (a TCP health probe, a port scan) is not news.
                Err(HandshakeError::Io(e)) => {
                    debug!(%remote, reason = %e, "cluster connection closed during handshake")
                }
                Err(e) => {
                    shared.inbox.counters.add_refused();
                    warn!(%remote, reason = %e, "refused cluster connection");
                }
            }
        });
    }
}

/// Keeps one address connected: dials it with backoff whenever the node behind it is not.
async fn dial_loop(shared: Arc<Shared>, addr: String) {
    let mut stop = shared.stop.subscribe();
    let mut backoff = Backoff::new(shared.config.backoff_min, shared.config.backoff_max);
    let mut last_error = String::new();
    let mut failing_since: Option<Instant> = None;
    // When our last dial succeeded: only a connection that then lived a while resets the
    // backoff, so a peer that accepts and at once drops us is not redialed in a tight loop.
    let mut connected_at: Option<Instant> = None;
    let mut first = true;
    loop {
        if shared.stopping() {
            return;
        }
        let wait_for_change = {
            let state = lock(&shared.state);
            let Some(target) = state.targets.get(&addr) else {
                return;
            };
            match &target.name {
                Some(name) => state.peers.get(name).is_some_and(|p| p.conn.is_some()),
                None => false,
            }
        };
        if wait_for_change {
            failing_since = None;
            tokio::select! {
                _ = shared.changed.notified() => {}
                _ = sleep(Duration::from_millis(500)) => {}
                _ = stopped(&mut stop) => return,
            }
            continue;
        }
        if connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= shared.config.backoff_max)
        {
            backoff.reset();
        }
        if !first {
            tokio::select! {
                _ = sleep(backoff.next_delay()) => {}
                _ = stopped(&mut stop) => return,
            }
        }
        first = false;
        let attempt = async {
            let stream = TcpStream::connect(&addr).await?;
            let remote = stream.peer_addr()?;
            handshake(&shared, stream, remote, true).await
        };
        let result = tokio::select! {
            r = timeout(shared.config.handshake_timeout, attempt) => {
                r.unwrap_or(Err(HandshakeError::Timeout))
            }
            _ = stopped(&mut stop) => return,
        };
        match result {
            Ok(est) => {
                connected_at = Some(Instant::now());
                last_error.clear();
                failing_since = None;
                if let Some(t) = lock(&shared.state).targets.get_mut(&addr) {
                    t.name = Some(est.name.clone());
                }
                start_connection(shared.clone(), est);
            }
            Err(HandshakeError::SelfConnection) => {
                let mut state = lock(&shared.state);
                state.targets.remove(&addr);
                state.self_addrs.insert(addr.clone());
                debug!(%addr, "peer address is ourselves; not dialing it");
                return;
            }
            Err(e) => {
                if matches!(
                    e,
                    HandshakeError::AuthFailed(_)
                        | HandshakeError::Refused(_)
                        | HandshakeError::DuplicateName(_)
                        | HandshakeError::Protocol(_)
                ) {
                    shared.inbox.counters.add_refused();
                }
                let message = e.to_string();
                if message != last_error {
                    warn!(%addr, reason = %message, "cannot connect to cluster peer; retrying");
                    last_error = message;
                } else {
                    debug!(%addr, reason = %message, "cluster peer still unreachable");
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= shared.config.forget_after {
                    let mut state = lock(&shared.state);
                    let configured = state.targets.get(&addr).is_some_and(|t| t.configured);
                    if !configured {
                        if let Some(name) = state.targets.remove(&addr).and_then(|t| t.name) {
                            if state.peers.get(&name).is_some_and(|p| p.conn.is_none()) {
                                state.peers.remove(&name);
                            }
                        }
                        info!(%addr, "forgetting a cluster peer that stayed unreachable");
                        return;
                    }
                }
            }
        }
    }
}

/// Re-resolves the configured peers periodically and dials every address they name.
async fn resolve_loop(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    loop {
        let mut resolved = HashSet::new();
        for spec in &shared.config.peers {
            match tokio::net::lookup_host(spec.as_str()).await {
                Ok(addrs) => resolved.extend(addrs.map(|a| a.to_string())),
                Err(e) => debug!(peer = %spec, error = %e, "cannot resolve cluster peer yet"),
            }
        }
        for addr in &resolved {
            shared.add_target(addr.clone(), None, true);
        }
        {
            // An address no longer in DNS (a pod that went away) is kept only until it is
            // forgotten like a gossiped one.
            let mut state = lock(&shared.state);
            for (addr, target) in state.targets.iter_mut() {
                if target.configured && !resolved.contains(addr) {
                    target.configured = false;
                }
            }
        }
        if shared.config.peers.is_empty() {
            return;
        }
        tokio::select! {
            _ = sleep(shared.config.resolve_interval) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

async fn handshake(
    shared: &Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    we_dial: bool,
) -> Result<Established, HandshakeError> {
    // Frames must go out as soon as they are written: latency beats packet count here.
    stream.set_nodelay(true)?;
    let (read, mut writer) = stream.into_split();
    let mut reader = BufReader::new(read);
    let nonce: [u8; 32] = rand::random();
    let result = handshake_steps(shared, &mut reader, &mut writer, remote, we_dial, &nonce).await;
    let (name, addr, incarnation) = match result {
        Ok(found) => found,
        Err(e) => {
            let reason = match &e {
                HandshakeError::AuthFailed(_) => {
                    Some("authentication failed: cluster secrets differ")
                }
                HandshakeError::DuplicateName(_) => Some("duplicate node name"),
                HandshakeError::Protocol(_) => Some("protocol error"),
                _ => None,
            };
            if let Some(reason) = reason {
                let _ = writer.write_all(&encode_reject(reason)).await;
                let _ = writer.shutdown().await;
            }
            return Err(e);
        }
    };
    Ok(Established {
        name,
        addr,
        incarnation,
        we_dialed: we_dial,
        reader,
        writer,
    })
}

async fn handshake_steps(
    shared: &Arc<Shared>,
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    remote: SocketAddr,
    we_dial: bool,
    nonce: &[u8; 32],
) -> Result<(String, String, u64), HandshakeError> {
    writer
        .write_all(&encode_hello(
            &shared.name,
            &shared.advertise,
            nonce,
            shared.incarnation,
        ))
        .await?;
    let hello = read_handshake_frame(reader).await?;
    let (their_name, their_advertise, their_nonce, their_incarnation) = decode_hello(hello)?;
    if their_name == shared.name {
        if their_incarnation == shared.incarnation {
            return Err(HandshakeError::SelfConnection);
        }
        return Err(HandshakeError::DuplicateName(their_name));
    }
    if &their_nonce == nonce {
        return Err(HandshakeError::Protocol("peer echoed our nonce".into()));
    }
    let (our_role, their_role) = if we_dial { (b'D', b'A') } else { (b'A', b'D') };
    let ours = shared
        .proof(our_role, nonce, &their_nonce, &shared.name, &their_name)?
        .finalize()
        .into_bytes();
    writer.write_all(&encode_auth(&ours)).await?;
    let auth = read_handshake_frame(reader).await?;
    let their_proof = decode_auth(auth)?;
    shared
        .proof(their_role, &their_nonce, nonce, &their_name, &shared.name)?
        .verify_slice(&their_proof)
        .map_err(|_| HandshakeError::AuthFailed(their_name.clone()))?;
    Ok((
        their_name,
        effective_addr(&their_advertise, remote),
        their_incarnation,
    ))
}

async fn read_handshake_frame(
    reader: &mut BufReader<OwnedReadHalf>,
) -> Result<Bytes, HandshakeError> {
    let frame = read_frame(reader, MAX_HANDSHAKE_FRAME)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => HandshakeError::Protocol(e.to_string()),
            _ => HandshakeError::Io(e),
        })?
        .ok_or_else(|| HandshakeError::Io(io::ErrorKind::UnexpectedEof.into()))?;
    if frame.first() == Some(&KIND_REJECT) {
        let mut body = frame.slice(1..);
        let reason = get_str16(&mut body).unwrap_or_else(|_| "no reason given".into());
        return Err(HandshakeError::Refused(reason));
    }
    Ok(frame)
}

/// Registers an established connection and runs it in its own tasks.
fn start_connection(shared: Arc<Shared>, est: Established) {
    let kill = Arc::new(Notify::new());
    let Some((id, tx, rx)) = shared.register(&est, kill.clone()) else {
        return;
    };
    let Some(drain) = lock(&shared.drain).clone() else {
        shared.unregister(&est.name, id);
        return;
    };
    info!(peer = %est.name, addr = %est.addr, dialed = est.we_dialed, "cluster peer up");
    // Tell the new peer whom we know, and everyone else about the new peer.
    shared.gossip();
    tokio::spawn(run_connection(shared, est, id, tx, rx, kill, drain));
}

async fn run_connection(
    shared: Arc<Shared>,
    est: Established,
    id: u64,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    kill: Arc<Notify>,
    drain: mpsc::Sender<()>,
) {
    let Established {
        name,
        addr,
        reader,
        writer,
        ..
    } = est;
    let mut writer_task = tokio::spawn(write_loop(writer, rx));
    let mut reader_task = tokio::spawn(read_loop(
        shared.clone(),
        name.clone(),
        addr,
        reader,
        tx.clone(),
    ));
    let mut stop = shared.stop.subscribe();
    let mut ping = tokio::time::interval(shared.config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    enum End {
        Lost,
        Replaced,
        Stopping,
    }
    let mut pings: u32 = 0;
    let end = loop {
        tokio::select! {
            read = &mut reader_task => {
                match read {
                    Ok(Ok(())) => info!(peer = %name, "cluster peer closed the connection"),
                    Ok(Err(reason)) => warn!(peer = %name, %reason, "cluster connection dropped"),
                    Err(_) => warn!(peer = %name, "cluster connection reader failed"),
                }
                break End::Lost;
            }
            _ = &mut writer_task => {
                warn!(peer = %name, "cluster connection write failed");
                break End::Lost;
            }
            _ = kill.notified() => {
                debug!(peer = %name, "cluster connection replaced or partitioned");
                break End::Replaced;
            }
            _ = stopped(&mut stop) => break End::Stopping,
            _ = ping.tick() => {
                let _ = tx.try_send(encode_empty(KIND_PING));
                // Re-gossip now and then, so a lost `Peers` frame cannot leave a hole in the
                // mesh for good.
                pings += 1;
                if pings.is_multiple_of(REGOSSIP_EVERY_PINGS) {
                    let _ = tx.try_send(shared.peers_frame());
                }
            }
        }
    };
    shared.unregister(&name, id);
    drop(tx);
    reader_task.abort();
    if matches!(end, End::Stopping) {
        // Every sender is gone now, so the writer drains its queue and closes.
        let _ = timeout(Duration::from_secs(2), &mut writer_task).await;
    }
    writer_task.abort();
    if matches!(end, End::Lost) {
        info!(peer = %name, "cluster peer down");
    }
    drop(drain);
}

async fn write_loop(writer: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) -> io::Result<()> {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(frame) = rx.recv().await {
        writer.write_all(&frame).await?;
        // Coalesce whatever is already queued into one write, but never wait for more.
        while let Ok(frame) = rx.try_recv() {
            writer.write_all(&frame).await?;
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}

/// Reads frames until the peer closes (`Ok`) or misbehaves or goes silent (`Err(reason)`).
async fn read_loop(
    shared: Arc<Shared>,
    name: String,
    addr: String,
    mut reader: BufReader<OwnedReadHalf>,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), String> {
    let silence = shared.config.ping_timeout;
    loop {
        let frame = match timeout(silence, read_frame(&mut reader, MAX_FRAME)).await {
            Err(_) => return Err(format!("no traffic for {silence:?} (ping timeout)")),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(frame))) => frame,
        };
        let mut body = frame;
        if body.is_empty() {
            return Err("empty frame".into());
        }
        let kind = body.get_u8();
        match kind {
            KIND_DATA => {
                let channel = get_str8(&mut body).map_err(|e| format!("bad data frame: {e}"))?;
                shared.inbox.deliver(Envelope {
                    from: name.clone(),
                    channel,
                    payload: body,
                });
            }
            KIND_PING => {
                let _ = tx.try_send(encode_empty(KIND_PONG));
            }
            KIND_PONG => {}
            KIND_PEERS => {
                let list = decode_peers(body).map_err(|e| format!("bad peers frame: {e}"))?;
                for (peer_name, peer_addr) in list {
                    if peer_name == shared.name || validate_name("node name", &peer_name).is_err() {
                        continue;
                    }
                    // The sender's own entry may say 0.0.0.0; we know where it really is.
                    let peer_addr = if peer_name == name {
                        addr.clone()
                    } else {
                        peer_addr
                    };
                    if check_host_port(&peer_addr).is_err() {
                        continue;
                    }
                    shared.add_target(peer_addr, Some(peer_name), false);
                }
            }
            KIND_REJECT => {
                let reason = get_str16(&mut body).unwrap_or_default();
                return Err(format!("peer closed with reason: {reason}"));
            }
            other => return Err(format!("unknown frame kind {other}")),
        }
    }
}

/// Reads one frame body (kind byte first). `Ok(None)` is a clean close between frames.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, max: usize) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty frame"));
    }
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(Bytes::from(body)))
}

fn frame(kind: u8, body_len: usize, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + body_len);
    buf.put_u32(0);
    buf.put_u8(kind);
    fill(&mut buf);
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

fn put_str16(buf: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

fn encode_empty(kind: u8) -> Bytes {
    frame(kind, 0, |_| {})
}

fn encode_hello(name: &str, advertise: &str, nonce: &[u8; 32], incarnation: u64) -> Bytes {
    frame(KIND_HELLO, 45 + name.len() + advertise.len(), |b| {
        b.put_u8(VERSION);
        put_str16(b, name);
        put_str16(b, advertise);
        b.put_slice(nonce);
        b.put_u64(incarnation);
    })
}

fn encode_auth(proof: &[u8]) -> Bytes {
    frame(KIND_AUTH, proof.len(), |b| b.put_slice(proof))
}

fn encode_reject(reason: &str) -> Bytes {
    frame(KIND_REJECT, 2 + reason.len(), |b| put_str16(b, reason))
}

/// A data frame. Channels are short names we choose; a longer one is truncated at 255 bytes.
fn encode_data(channel: &str, payload: &[u8]) -> Bytes {
    let channel = &channel.as_bytes()[..channel.len().min(255)];
    frame(KIND_DATA, 1 + channel.len() + payload.len(), |b| {
        b.put_u8(channel.len() as u8);
        b.put_slice(channel);
        b.put_slice(payload);
    })
}

fn encode_peers(list: &[(String, String)]) -> Bytes {
    let list = &list[..list.len().min(u16::MAX as usize)];
    frame(KIND_PEERS, 2 + list.len() * 32, |b| {
        b.put_u16(list.len() as u16);
        for (name, addr) in list {
            put_str16(b, name);
            put_str16(b, addr);
        }
    })
}

fn get_str16(buf: &mut Bytes) -> Result<String, String> {
    if buf.remaining() < 2 {
        return Err("truncated string length".into());
    }
    let len = usize::from(buf.get_u16());
    take_utf8(buf, len)
}

fn get_str8(buf: &mut Bytes) -> Result<String, String> {
    if buf.remaining() < 1 {
        return Err("truncated string length".into());
    }
    let len = usize::from(buf.get_u8());
    take_utf8(buf, len)
}

fn take_utf8(buf: &mut Bytes, len: usize) -> Result<String, String> {
    if buf.remaining() < len {
        return Err("truncated string".into());
    }
    String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| "string is not UTF-8".into())
}

fn decode_hello(mut frame: Bytes) -> Result<(String, String, [u8; 32], u64), HandshakeError> {
    let bad = |m: &str| HandshakeError::Protocol(format!("bad hello: {m}"));
    if frame.is_empty() || frame.get_u8() != KIND_HELLO {
        return Err(bad(
            "expected a hello frame first (is this a rollcall cluster port?)",
        ));
    }
    if frame.remaining() < 1 {
        return Err(bad("truncated"));
    }
    let version = frame.get_u8();
    if version != VERSION {
        return Err(bad(&format!(
            "protocol version {version}, we speak {VERSION}"
        )));
    }
    let name = get_str16(&mut frame).map_err(|e| bad(&e))?;
    validate_name("node name", &name).map_err(|e| bad(&e.to_string()))?;
    let advertise = get_str16(&mut frame).map_err(|e| bad(&e))?;
    if frame.remaining() != 40 {
        return Err(bad("expected a 32-byte nonce and an 8-byte incarnation"));
    }
    let mut nonce = [0u8; 32];
    frame.copy_to_slice(&mut nonce);
    Ok((name, advertise, nonce, frame.get_u64()))
}

fn decode_auth(mut frame: Bytes) -> Result<[u8; 32], HandshakeError> {
    if frame.is_empty() || frame.get_u8() != KIND_AUTH || frame.remaining() != 32 {
        return Err(HandshakeError::Protocol(
            "expected a 32-byte auth frame".into(),
        ));
    }
    let mut proof = [0u8; 32];
    frame.copy_to_slice(&mut proof);
    Ok(proof)
}

fn decode_peers(mut body: Bytes) -> Result<Vec<(String, String)>, String> {
    if body.remaining() < 2 {
        return Err("truncated count".into());
    }
    let count = usize::from(body.get_u16());
    let mut list = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let name = get_str16(&mut body)?;
        let addr = get_str16(&mut body)?;
        list.push((name, addr));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_advertised_host_becomes_the_observed_one() {
        let seen: SocketAddr = "10.1.2.3:55555".parse().expect("addr");
        assert_eq!(effective_addr("0.0.0.0:7000", seen), "10.1.2.3:7000");
        assert_eq!(effective_addr("10.9.9.9:7000", seen), "10.9.9.9:7000");
        assert_eq!(effective_addr("node-a.svc:7000", seen), "node-a.svc:7000");
    }

    #[test]
    fn truncated_hello_is_an_error_not_a_panic() {
        let hello = encode_hello("a", "127.0.0.1:1", &[7; 32], 9).slice(4..);
        for cut in 1..hello.len() {
            assert!(decode_hello(hello.slice(..cut)).is_err(), "cut {cut}");
        }
        assert!(decode_hello(hello).is_ok());
    }

    #[test]
    fn peers_frame_round_trips_and_rejects_truncation() {
        let list = vec![("a".to_string(), "127.0.0.1:1".to_string())];
        let body = encode_peers(&list).slice(5..);
        assert_eq!(decode_peers(body.clone()).expect("decodes"), list);
        assert!(decode_peers(body.slice(..body.len() - 1)).is_err());
    }

    #[test]
    fn addresses_without_a_port_are_refused() {
        assert!(check_host_port("127.0.0.1:7000").is_ok());
        assert!(check_host_port("[::1]:7000").is_ok());
        assert!(check_host_port("127.0.0.1").is_err());
        assert!(check_host_port(":7000").is_err());
        assert!(check_host_port("host:70000").is_err());
    }
}
