//! Every cluster message signed and checked: [`Signed`] wraps an adapter, like
//! [`Chunked`](super::Chunked), and puts an HMAC-SHA256 tag and a message number on everything
//! it sends; what it receives reaches a subscriber only if the tag is right and the message is
//! neither a replay nor from a sender that has not proven itself live. Anyone who can publish
//! on the broker (or inject into a mesh connection) without the cluster secret can therefore no
//! longer make a node deliver anything.
//!
//! ## Wire format
//! What the inner adapter carries as the payload (the adapter adds sender and channel):
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | version `1` |
//! | 1 | kind: `0` data, `1` challenge, `2` proof |
//! | 8 | epoch (u64 BE): random, chosen when the adapter starts |
//! | 8 | number (u64 BE): 1, 2, 3, … within the epoch, one per message sent |
//! | 1 + n | destination node, length-prefixed; empty for a broadcast |
//! | 32 | tag: HMAC-SHA256 (below) |
//! | rest | body: the payload (data), or a 32-byte nonce (challenge, proof) |
//!
//! `tag = HMAC-SHA256(K, "rollcall-cluster-message-v1" ‖ namespace ‖ sender ‖ channel ‖ the
//! header up to the tag ‖ body)`, where the three names are each a u32 BE length and the bytes
//! (the sender and channel are those the adapter delivers the message with; the namespace is
//! the broker's cluster name, empty for the mesh) and `K = HMAC-SHA256(secret,
//! "rollcall-cluster-key-v1")`. So a message cannot be moved to another sender, channel,
//! destination or cluster, nor its kind or number changed, without the key.
//!
//! ## Replays
//! A receiver keeps, per sender node, the epoch it accepts and a window of the last
//! [`WINDOW`] numbers it took from it. A data message is delivered when its number is above
//! that epoch's floor and either above every number seen or within the window and not seen
//! yet; the number is marked before delivery, so each message is delivered at most once. A
//! message addressed to another node is refused. Numbers need not be consecutive (a sender's
//! messages to other nodes leave gaps) nor in order (NATS may swap a broadcast and a directed
//! message).
//!
//! An epoch is accepted only after the sender proves it is alive *now*: the receiver sends it a
//! challenge (a fresh random nonce), and the sender answers with a proof — a signed message
//! carrying that nonce, its current epoch and its current number, which becomes the floor.
//! Until then its data is dropped (counted as `unproven`; the tracker recovers from such
//! losses). This is what makes the rule hold across restarts without trusting clocks: a
//! restarted receiver has no window, but it accepts nothing that was numbered before a proof
//! it asked for itself, and a restarted sender's new epoch is proven the same way, whatever
//! its value. A recorded message of an old epoch, or of the current one from before the proof,
//! is refused by every receiver, whenever it is replayed. A challenge is harmless to replay
//! (it only makes the sender answer, at most once per nonce and every [`ANSWER_GAP`]), and a
//! proof answers one nonce once.
//!
//! Parts of a chunked message are signed one by one below the reassembler, so a forged or
//! replayed part never takes reassembly memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::inbox::Inbox;
use super::sync::{lock, Tasks};
use super::{Envelope, PeerInfo, PubSub, Rejected, Stats, DEFAULT_INBOX_CAPACITY};
use crate::log_summary::{LogSummary, DEFAULT_INTERVAL};

/// The channel challenges and proofs travel on; never delivered to subscribers.
pub const CONTROL_CHANNEL: &str = "trust";
/// How many message numbers below the highest seen a receiver still takes (once each).
pub const WINDOW: u64 = 4096;
/// A sender not proven live is challenged again after this long without a proof.
pub const CHALLENGE_RETRY: Duration = Duration::from_millis(500);
/// A node answers one requester's challenges at most this often.
pub const ANSWER_GAP: Duration = Duration::from_millis(100);
/// Senders a node keeps state for: real clusters have far fewer nodes at a time, but names
/// change as pods come and go, so the one heard from longest ago makes room for a new one.
const MAX_SENDERS: usize = 1024;

const VERSION: u8 = 1;
const KIND_DATA: u8 = 0;
const KIND_CHALLENGE: u8 = 1;
const KIND_PROOF: u8 = 2;
/// Version, kind, epoch, number, destination length.
const FIXED_HEADER: usize = 1 + 1 + 8 + 8 + 1;
const TAG_LEN: usize = 32;
const NONCE_LEN: usize = 32;
const MESSAGE_LABEL: &[u8] = b"rollcall-cluster-message-v1";
const KEY_LABEL: &[u8] = b"rollcall-cluster-key-v1";

/// Why a received message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not in the signed format (too short, unknown version or kind).
    Unsigned,
    /// The tag does not match: another secret, or altered or forged bytes.
    BadSignature,
    /// A correctly signed message received before, addressed to another node, older than the
    /// window, or a proof that answers no challenge of ours.
    Replayed,
    /// A correctly signed message from a sender not (yet) proven live to this node, or numbered
    /// before its proof: normal for a moment when a node starts or restarts.
    Unproven,
}

impl Refusal {
    fn text(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad signature",
            Refusal::Replayed => "replayed",
            Refusal::Unproven => "sender not proven live",
        }
    }
}

/// A message whose tag was checked.
#[derive(Debug)]
struct Opened {
    kind: u8,
    epoch: u64,
    number: u64,
    body: Bytes,
}

/// The signing key and what every tag covers besides the message itself.
struct Keys {
    /// HMAC keyed with `K`, cloned per message (the key schedule is paid once).
    mac: Hmac<Sha256>,
    namespace: String,
}

impl Keys {
    fn new(secret: &[u8], namespace: &str) -> Keys {
        let derived = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .map(|mut m| {
                m.update(KEY_LABEL);
                m.finalize().into_bytes()
            })
            .unwrap_or_default();
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&derived)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Keys {
            mac,
            namespace: namespace.to_owned(),
        }
    }

    fn tag(&self, from: &str, channel: &str, header: &[u8], body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(MESSAGE_LABEL);
        for name in [self.namespace.as_str(), from, channel] {
            mac.update(&(name.len() as u32).to_be_bytes());
            mac.update(name.as_bytes());
        }
        mac.update(header);
        mac.update(body);
        mac
    }

    /// The wire bytes of a message from `from` on `channel`.
    fn seal(&self, head: Head<'_>, from: &str, channel: &str, body: &[u8]) -> Bytes {
        let to = &head.to.as_bytes()[..head.to.len().min(255)];
        let mut out = BytesMut::with_capacity(FIXED_HEADER + to.len() + TAG_LEN + body.len());
        out.put_u8(VERSION);
        out.put_u8(head.kind);
        out.put_u64(head.epoch);
        out.put_u64(head.number);
        out.put_u8(to.len() as u8);
        out.put_slice(to);
        let tag = self.tag(from, channel, &out, body).finalize().into_bytes();
        out.put_slice(&tag);
        out.put_slice(body);
        out.freeze()
    }

    /// Checks a message's format, tag and destination (`me`).
    fn open(&self, me: &str, envelope: &Envelope) -> Result<Opened, Refusal> {
        let bytes = &envelope.payload;
        let to_len = usize::from(*bytes.get(FIXED_HEADER - 1).ok_or(Refusal::Unsigned)?);
        let header_len = FIXED_HEADER + to_len;
        if bytes.len() < header_len + TAG_LEN {
            return Err(Refusal::Unsigned);
        }
        let mut header = bytes.slice(..header_len);
        let (version, kind) = (header.get_u8(), header.get_u8());
        if version != VERSION || !matches!(kind, KIND_DATA | KIND_CHALLENGE | KIND_PROOF) {
            return Err(Refusal::Unsigned);
        }
        let (epoch, number) = (header.get_u64(), header.get_u64());
        header.advance(1);
        let to = header;
        let tag = bytes.slice(header_len..header_len + TAG_LEN);
        let body = bytes.slice(header_len + TAG_LEN..);
        self.tag(
            &envelope.from,
            &envelope.channel,
            &bytes[..header_len],
            &body,
        )
        .verify_slice(&tag)
        .map_err(|_| Refusal::BadSignature)?;
        if !(to.is_empty() || to == me.as_bytes()) {
            return Err(Refusal::Replayed);
        }
        if kind != KIND_DATA && body.len() != NONCE_LEN {
            return Err(Refusal::Unsigned);
        }
        Ok(Opened {
            kind,
            epoch,
            number,
            body,
        })
    }
}

/// The fields of a message's header that vary.
#[derive(Clone, Copy)]
struct Head<'a> {
    kind: u8,
    epoch: u64,
    number: u64,
    to: &'a str,
}

/// The numbers taken from one proven epoch of a sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    epoch: u64,
    /// Numbers at or below this are refused: they were sent before the proof.
    floor: u64,
    /// The highest number taken (or the floor).
    top: u64,
    /// Bit `n % WINDOW` is set when number `n` (within the window below `top`) was taken.
    seen: Vec<u64>,
}

impl ReplayWindow {
    /// A window for `epoch` whose proof carried `floor`.
    pub fn new(epoch: u64, floor: u64) -> ReplayWindow {
        ReplayWindow {
            epoch,
            floor,
            top: floor,
            seen: vec![0; (WINDOW / 64) as usize],
        }
    }

    fn bit(n: u64) -> (usize, u64) {
        let i = n % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn is_set(&self, n: u64) -> bool {
        let (word, mask) = Self::bit(n);
        self.seen.get(word).is_some_and(|w| w & mask != 0)
    }

    fn set(&mut self, n: u64, on: bool) {
        let (word, mask) = Self::bit(n);
        if let Some(w) = self.seen.get_mut(word) {
            if on {
                *w |= mask;
            } else {
                *w &= !mask;
            }
        }
    }

    /// Takes number `n` if it was not taken before and is within the rule; says why not.
    pub fn take(&mut self, n: u64) -> Result<(), Refusal> {
        if n <= self.floor {
            return Err(Refusal::Unproven);
        }
        if n > self.top {
            if n - self.top >= WINDOW {
                self.seen.iter_mut().for_each(|w| *w = 0);
            } else {
                for skipped in self.top + 1..n {
                    self.set(skipped, false);
                }
            }
            self.set(n, true);
            self.top = n;
            return Ok(());
        }
        if self.top - n >= WINDOW || self.is_set(n) {
            return Err(Refusal::Replayed);
        }
        self.set(n, true);
        Ok(())
    }
}

/// What a receiver knows of one sending node.
#[derive(Default)]
struct Sender {
    /// When a correctly signed message last came from it.
    last: Option<Instant>,
    proven: Option<ReplayWindow>,
    /// Our outstanding challenge to it: the nonce and when it was sent.
    challenge: Option<([u8; NONCE_LEN], Instant)>,
    /// The last challenge of its we answered, and when.
    answered: Option<([u8; NONCE_LEN], Instant)>,
}

/// The state of sender `name`, made (room made first, if the map is full) when new.
fn sender_entry<'a>(senders: &'a mut HashMap<String, Sender>, name: &str) -> &'a mut Sender {
    if !senders.contains_key(name) && senders.len() >= MAX_SENDERS {
        let oldest = senders
            .iter()
            .min_by_key(|(_, s)| s.last)
            .map(|(n, _)| n.clone());
        if let Some(oldest) = oldest {
            senders.remove(&oldest);
        }
    }
    senders.entry(name.to_owned()).or_default()
}

/// What the subscription tasks share with the adapter.
struct Shared {
    node: String,
    /// The inner adapter lists only peers that authenticated (the mesh): challenge them at once.
    challenge_listed: bool,
    keys: Keys,
    epoch: u64,
    next_number: AtomicU64,
    senders: Mutex<HashMap<String, Sender>>,
    inbox: Inbox,
    rejected: [AtomicU64; 4],
    log: LogSummary,
}

/// What to do after a message was opened.
enum Next {
    /// Hand it to the subscribers.
    Deliver(Envelope),
    /// Send these control messages (to the node named first).
    Send(Vec<(String, Bytes)>),
    Nothing,
}

/// [`Next`] while the sender's state is locked (the envelope is still borrowed).
enum Act {
    Deliver,
    Send(Vec<(String, Bytes)>),
    Nothing,
}

impl Shared {
    /// Signs a message of ours. Numbers start at 1 and only grow, so a proof's number taken
    /// as the floor admits exactly what was sent after it.
    fn seal(&self, kind: u8, to: &str, channel: &str, body: &[u8]) -> Bytes {
        let head = Head {
            kind,
            epoch: self.epoch,
            number: self.next_number.fetch_add(1, Ordering::Relaxed) + 1,
            to,
        };
        self.keys.seal(head, &self.node, channel, body)
    }

    fn refuse(&self, why: Refusal, envelope: &Envelope) {
        if let Some(counter) = self.rejected.get(why as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if why == Refusal::Unproven {
            tracing::debug!(
                from = envelope.from,
                "dropped a message from a sender not proven live yet"
            );
            return;
        }
        let detail = format!("from {:?} on {:?}", envelope.from, envelope.channel);
        if let Some(line) = self.log.note(Instant::now(), why.text(), &detail) {
            tracing::warn!("{line}");
        }
    }

    /// A challenge to `name`, unless one is outstanding and recent.
    fn challenge(&self, name: &str, sender: &mut Sender, now: Instant) -> Option<(String, Bytes)> {
        let due = sender
            .challenge
            .is_none_or(|(_, at)| now.saturating_duration_since(at) >= CHALLENGE_RETRY);
        if !due {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = rand::random();
        sender.challenge = Some((nonce, now));
        let message = self.seal(KIND_CHALLENGE, name, CONTROL_CHANNEL, &nonce);
        Some((name.to_owned(), message))
    }

    /// Checks one received message; returns what to do with it.
    fn receive(&self, envelope: Envelope, now: Instant) -> Next {
        let opened = match self.keys.open(&self.node, &envelope) {
            Ok(opened) => opened,
            Err(why) => {
                self.refuse(why, &envelope);
                return Next::Nothing;
            }
        };
        let control = envelope.channel == CONTROL_CHANNEL;
        let mut senders = lock(&self.senders);
        let from = envelope.from.as_str();
        let sender = sender_entry(&mut senders, from);
        sender.last = Some(now);
        let proven_epoch = sender.proven.as_ref().map(|w| w.epoch);
        let (verdict, act) = match (opened.kind, control) {
            (KIND_DATA, false) => match &mut sender.proven {
                Some(window) if window.epoch == opened.epoch => {
                    match window.take(opened.number) {
                        Ok(()) => (None, Act::Deliver),
                        // Numbered before the proof of the current epoch: no new proof needed.
                        Err(why) => (Some(why), Act::Nothing),
                    }
                }
                _ => {
                    let challenge = self.challenge(from, sender, now);
                    (
                        Some(Refusal::Unproven),
                        Act::Send(challenge.into_iter().collect()),
                    )
                }
            },
            (KIND_CHALLENGE, true) => {
                let nonce = opened.body.as_ref();
                let fresh = sender.answered.is_none_or(|(last, at)| {
                    last != nonce && now.saturating_duration_since(at) >= ANSWER_GAP
                });
                let mut out = Vec::new();
                if fresh {
                    let mut answered = [0u8; NONCE_LEN];
                    answered.copy_from_slice(nonce);
                    sender.answered = Some((answered, now));
                    let proof = self.seal(KIND_PROOF, from, CONTROL_CHANNEL, nonce);
                    out.push((from.to_owned(), proof));
                }
                // A challenger we have not proven (it just started, or restarted) is challenged
                // back, so both directions are open after one exchange.
                if proven_epoch != Some(opened.epoch) {
                    out.extend(self.challenge(from, sender, now));
                }
                (None, Act::Send(out))
            }
            (KIND_PROOF, true) => {
                let answers_ours = sender
                    .challenge
                    .is_some_and(|(nonce, _)| nonce[..] == opened.body[..]);
                if answers_ours {
                    sender.challenge = None;
                    if proven_epoch != Some(opened.epoch) {
                        tracing::debug!(peer = from, "cluster peer proved a new signing epoch");
                        sender.proven = Some(ReplayWindow::new(opened.epoch, opened.number));
                    }
                    (None, Act::Nothing)
                } else {
                    (Some(Refusal::Replayed), Act::Nothing)
                }
            }
            // A data kind on the control channel or a control kind on a data channel: no
            // sender of ours makes one.
            _ => (Some(Refusal::Unsigned), Act::Nothing),
        };
        drop(senders);
        if let Some(why) = verdict {
            self.refuse(why, &envelope);
        }
        match act {
            // Built here, once the lock is released and the envelope is free to move.
            Act::Deliver => Next::Deliver(Envelope {
                payload: opened.body,
                ..envelope
            }),
            Act::Send(messages) => Next::Send(messages),
            Act::Nothing => Next::Nothing,
        }
    }

    /// Challenges the listed peers not proven yet (when the inner adapter lists only peers
    /// that authenticated, as the mesh does), so that they are proven before they send.
    fn challenge_listed(&self, peers: &[PeerInfo], now: Instant) -> Vec<(String, Bytes)> {
        let mut senders = lock(&self.senders);
        let mut out = Vec::new();
        for peer in peers.iter().filter(|p| p.up && !p.name.is_empty()) {
            let sender = sender_entry(&mut senders, &peer.name);
            if sender.proven.is_none() {
                out.extend(self.challenge(&peer.name, sender, now));
            }
        }
        out
    }

    fn is_proven(&self, node: &str) -> bool {
        lock(&self.senders)
            .get(node)
            .is_some_and(|s| s.proven.is_some())
    }
}

/// An adapter whose messages are signed and checked (see the module docs).
pub struct Signed {
    inner: Arc<dyn PubSub>,
    shared: Arc<Shared>,
    /// Channels whose inner subscription feeds `shared.inbox`.
    channels: Mutex<HashSet<String>>,
    tasks: Tasks,
}

impl Signed {
    /// Wraps `inner`, signing with `secret`; `namespace` (the broker's cluster name, empty for
    /// the mesh) is covered by every tag. Senders are challenged when their first message
    /// comes. Starts the task that answers challenges, so it must be called inside a Tokio
    /// runtime.
    pub fn new(inner: Arc<dyn PubSub>, secret: &[u8], namespace: &str) -> Signed {
        Signed::build(inner, secret, namespace, false)
    }

    /// [`Signed::new`] over an adapter whose [`PubSub::peers`] lists only peers that proved the
    /// secret already (the mesh): each is challenged as soon as it is listed, so it is proven
    /// before it sends anything. (A broker's list is of names heard, which anyone can send.)
    pub fn over_authenticated_peers(
        inner: Arc<dyn PubSub>,
        secret: &[u8],
        namespace: &str,
    ) -> Signed {
        Signed::build(inner, secret, namespace, true)
    }

    fn build(
        inner: Arc<dyn PubSub>,
        secret: &[u8],
        namespace: &str,
        challenge_listed: bool,
    ) -> Signed {
        let shared = Arc::new(Shared {
            node: inner.node().to_owned(),
            challenge_listed,
            keys: Keys::new(secret, namespace),
            epoch: rand::random(),
            next_number: AtomicU64::new(0),
            senders: Mutex::new(HashMap::new()),
            inbox: Inbox::new(DEFAULT_INBOX_CAPACITY),
            rejected: Default::default(),
            log: LogSummary::new("refused cluster messages", DEFAULT_INTERVAL),
        });
        let signed = Signed {
            inner,
            shared,
            channels: Mutex::new(HashSet::new()),
            tasks: Tasks::default(),
        };
        signed.start_control();
        signed
    }

    /// Answers challenges, takes proofs, challenges listed peers, and writes the refusal
    /// summary on time.
    fn start_control(&self) {
        let mut raw = self.inner.subscribe(CONTROL_CHANNEL);
        let (inner, shared) = (self.inner.clone(), self.shared.clone());
        let task = tokio::spawn(async move {
            let mut summarise = tokio::time::interval(shared.log.interval());
            summarise.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut look = tokio::time::interval(CHALLENGE_RETRY / 4);
            look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    envelope = raw.recv() => {
                        let Some(envelope) = envelope else { return };
                        if let Next::Send(messages) = shared.receive(envelope, Instant::now()) {
                            send_all(inner.as_ref(), messages);
                        }
                    }
                    _ = look.tick(), if shared.challenge_listed => {
                        let messages = shared.challenge_listed(&inner.peers(), Instant::now());
                        send_all(inner.as_ref(), messages);
                    }
                    _ = summarise.tick() => {
                        if let Some(line) = shared.log.flush(Instant::now()) {
                            tracing::warn!("{line}");
                        }
                    }
                }
            }
        });
        self.tasks.push(task);
    }
}

/// Sends control messages, each to the node it names.
fn send_all(inner: &dyn PubSub, messages: Vec<(String, Bytes)>) {
    for (to, message) in messages {
        inner.send_to(&to, CONTROL_CHANNEL, message);
    }
}

impl PubSub for Signed {
    fn node(&self) -> &str {
        &self.shared.node
    }

    fn broadcast(&self, channel: &str, payload: Bytes) {
        let message = self.shared.seal(KIND_DATA, "", channel, &payload);
        self.inner.broadcast(channel, message);
    }

    fn send_to(&self, node: &str, channel: &str, payload: Bytes) {
        let message = self.shared.seal(KIND_DATA, node, channel, &payload);
        self.inner.send_to(node, channel, message);
    }

    fn subscribe(&self, channel: &str) -> mpsc::Receiver<Envelope> {
        let rx = self.shared.inbox.subscribe(channel);
        if channel == CONTROL_CHANNEL || !lock(&self.channels).insert(channel.to_owned()) {
            return rx;
        }
        let mut raw = self.inner.subscribe(channel);
        let (inner, shared) = (self.inner.clone(), self.shared.clone());
        let task = tokio::spawn(async move {
            while let Some(envelope) = raw.recv().await {
                match shared.receive(envelope, Instant::now()) {
                    Next::Deliver(envelope) => shared.inbox.deliver(envelope),
                    Next::Send(messages) => send_all(inner.as_ref(), messages),
                    Next::Nothing => {}
                }
            }
        });
        self.tasks.push(task);
        rx
    }

    /// The inner adapter's peers; a named one is up only once it has proven itself live to us,
    /// so that a broker's "heard from" cannot be faked by unsigned messages.
    fn peers(&self) -> Vec<PeerInfo> {
        let mut peers = self.inner.peers();
        for peer in &mut peers {
            if !peer.name.is_empty() {
                peer.up &= self.shared.is_proven(&peer.name);
            }
        }
        peers
    }

    fn stats(&self) -> Stats {
        let mut stats = self.inner.stats();
        let count = |why: Refusal| {
            self.shared
                .rejected
                .get(why as usize)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        stats.rejected = Rejected {
            unsigned: count(Refusal::Unsigned),
            bad_signature: count(Refusal::BadSignature),
            replayed: count(Refusal::Replayed),
            unproven: count(Refusal::Unproven),
        };
        stats.dropped_inbound += self.shared.inbox.counters.snapshot().dropped_inbound;
        stats
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.inner.shutdown()
    }

    fn cluster_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.cluster_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_takes_each_number_once_in_any_order_within_its_width() {
        let mut w = ReplayWindow::new(7, 10);
        assert_eq!(w.take(10), Err(Refusal::Unproven), "at the floor");
        assert_eq!(w.take(3), Err(Refusal::Unproven), "before the proof");
        assert_eq!(w.take(12), Ok(()));
        assert_eq!(w.take(11), Ok(()), "late but new");
        assert_eq!(w.take(12), Err(Refusal::Replayed));
        assert_eq!(w.take(11), Err(Refusal::Replayed));
        assert_eq!(w.take(20), Ok(()), "gaps are fine");
        assert_eq!(w.take(15), Ok(()));
        assert_eq!(w.take(15), Err(Refusal::Replayed));
        // Far ahead: everything more than a window behind is refused, what is inside is not.
        let top = 20 + WINDOW + 100;
        assert_eq!(w.take(top), Ok(()));
        assert_eq!(
            w.take(top - WINDOW),
            Err(Refusal::Replayed),
            "out of the window"
        );
        assert_eq!(w.take(top - WINDOW + 1), Ok(()), "the oldest inside");
        assert_eq!(w.take(top - 1), Ok(()));
        assert_eq!(w.take(top - 1), Err(Refusal::Replayed));
        assert_eq!(w.take(20), Err(Refusal::Replayed), "long gone");
    }

    #[test]
    fn a_window_forgets_the_marks_of_numbers_it_slid_past() {
        // Number n and n + WINDOW share a bit: the slide must clear it for the newer one.
        let mut w = ReplayWindow::new(1, 0);
        assert_eq!(w.take(5), Ok(()));
        assert_eq!(w.take(5 + WINDOW - 1), Ok(()));
        assert_eq!(w.take(5 + WINDOW + 1), Ok(()));
        assert_eq!(
            w.take(5 + WINDOW),
            Ok(()),
            "new, though its bit was once used"
        );
        assert_eq!(w.take(5 + WINDOW), Err(Refusal::Replayed));
    }

    fn keys() -> Keys {
        Keys::new(b"s3cret", "demo")
    }

    fn head(kind: u8, number: u64, to: &str) -> Head<'_> {
        Head {
            kind,
            epoch: 9,
            number,
            to,
        }
    }

    fn envelope(from: &str, channel: &str, payload: Bytes) -> Envelope {
        Envelope {
            from: from.into(),
            channel: channel.into(),
            payload,
        }
    }

    #[test]
    fn a_sealed_message_opens_and_carries_its_header() {
        let k = keys();
        let wire = k.seal(head(KIND_DATA, 3, ""), "a", "relay", b"hello");
        assert_eq!(wire.len(), FIXED_HEADER + TAG_LEN + 5);
        let opened = k.open("b", &envelope("a", "relay", wire)).expect("opens");
        assert_eq!(
            (opened.kind, opened.epoch, opened.number, &opened.body[..]),
            (KIND_DATA, 9, 3, &b"hello"[..])
        );
    }

    #[test]
    fn the_tag_covers_the_sender_channel_destination_cluster_and_every_byte() {
        let k = keys();
        let wire = k.seal(head(KIND_DATA, 3, "b"), "a", "relay", b"hello");
        assert!(k.open("b", &envelope("a", "relay", wire.clone())).is_ok());
        let bad = |from: &str, channel: &str, bytes: Bytes| {
            k.open("b", &envelope(from, channel, bytes)).err()
        };
        assert_eq!(bad("c", "relay", wire.clone()), Some(Refusal::BadSignature));
        assert_eq!(
            bad("a", "tracker", wire.clone()),
            Some(Refusal::BadSignature)
        );
        let other_cluster = Keys::new(b"s3cret", "other");
        assert_eq!(
            other_cluster
                .open("b", &envelope("a", "relay", wire.clone()))
                .err(),
            Some(Refusal::BadSignature)
        );
        let other_secret = Keys::new(b"s3cret!", "demo");
        assert_eq!(
            other_secret
                .open("b", &envelope("a", "relay", wire.clone()))
                .err(),
            Some(Refusal::BadSignature)
        );
        // Flip each byte in turn: header, tag and body are all covered.
        for i in 0..wire.len() {
            let mut flipped = wire.to_vec();
            flipped[i] ^= 0x40;
            let why = bad("a", "relay", Bytes::from(flipped));
            assert!(why.is_some(), "byte {i} is not covered");
        }
        // Addressed to b: c refuses it even with a good tag.
        assert_eq!(
            k.open("c", &envelope("a", "relay", wire)).err(),
            Some(Refusal::Replayed)
        );
    }

    #[test]
    fn unsigned_and_truncated_messages_are_refused_without_panicking() {
        let k = keys();
        let wire = k.seal(head(KIND_DATA, 3, "b"), "a", "relay", b"hello");
        for cut in 0..FIXED_HEADER + 1 + TAG_LEN {
            let why = k
                .open("b", &envelope("a", "relay", wire.slice(..cut)))
                .err();
            assert_eq!(why, Some(Refusal::Unsigned), "cut at {cut}");
        }
        let old_format = Bytes::from_static(b"\x00\x01\x00\x06room:1\x00\x05shout{}");
        let why = k.open("b", &envelope("a", "relay", old_format)).err();
        assert_eq!(why, Some(Refusal::Unsigned));
    }

    /// An in-memory broker: a node's broadcasts reach every other node, its directed messages
    /// their target; every message is recorded, so a test can replay it.
    #[derive(Default)]
    struct Bus {
        nodes: Mutex<HashMap<String, Arc<Inbox>>>,
        recorded: Mutex<Vec<Envelope>>,
    }

    impl Bus {
        /// Delivers `envelope` to `to`, as anyone who can publish on the broker could.
        fn inject(&self, to: &str, envelope: Envelope) {
            if let Some(inbox) = lock(&self.nodes).get(to) {
                inbox.deliver(envelope);
            }
        }

        /// The messages recorded on `channel` whose payload passes `pick`.
        fn recorded(&self, channel: &str) -> Vec<Envelope> {
            lock(&self.recorded)
                .iter()
                .filter(|e| e.channel == channel)
                .cloned()
                .collect()
        }
    }

    struct BusNode {
        name: String,
        bus: Arc<Bus>,
        inbox: Arc<Inbox>,
    }

    impl BusNode {
        /// A node on `bus`; one of the same name that was there is gone (a restart).
        fn join(bus: &Arc<Bus>, name: &str) -> Arc<dyn PubSub> {
            let inbox = Arc::new(Inbox::new(64));
            lock(&bus.nodes).insert(name.to_owned(), inbox.clone());
            Arc::new(BusNode {
                name: name.to_owned(),
                bus: bus.clone(),
                inbox,
            })
        }

        fn envelope(&self, channel: &str, payload: Bytes) -> Envelope {
            let envelope = envelope(&self.name, channel, payload);
            lock(&self.bus.recorded).push(envelope.clone());
            envelope
        }
    }

    impl PubSub for BusNode {
        fn node(&self) -> &str {
            &self.name
        }
        fn broadcast(&self, channel: &str, payload: Bytes) {
            let envelope = self.envelope(channel, payload);
            let nodes: Vec<_> = lock(&self.bus.nodes)
                .iter()
                .filter(|(name, _)| **name != self.name)
                .map(|(_, inbox)| inbox.clone())
                .collect();
            for inbox in nodes {
                inbox.deliver(envelope.clone());
            }
        }
        fn send_to(&self, node: &str, channel: &str, payload: Bytes) {
            let envelope = self.envelope(channel, payload);
            self.bus.inject(node, envelope);
        }
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

    const DEADLINE: Duration = Duration::from_secs(10);

    fn signed(bus: &Arc<Bus>, name: &str) -> Signed {
        Signed::new(BusNode::join(bus, name), b"s3cret", "demo")
    }

    /// Broadcasts `payload` from `from` until `rx` gets it (the first ones are dropped while
    /// the receiver has `from` prove itself live). Anything else arriving fails the test.
    async fn deliver_until_received(
        from: &Signed,
        rx: &mut mpsc::Receiver<Envelope>,
        payload: &'static str,
    ) {
        let got = tokio::time::timeout(DEADLINE, async {
            loop {
                from.broadcast("t", Bytes::from_static(payload.as_bytes()));
                let wait = tokio::time::timeout(Duration::from_millis(20), rx.recv());
                if let Ok(Some(e)) = wait.await {
                    assert_eq!(e.payload, payload.as_bytes(), "delivered: {e:?}");
                    return e;
                }
            }
        })
        .await
        .expect("delivered before the deadline");
        assert_eq!(got.from, from.node());
    }

    /// Waits until `cond` holds.
    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let ok = tokio::time::timeout(DEADLINE, async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(ok.is_ok(), "timed out waiting until {what}");
    }

    /// Sends a marker from `from` and checks it is the next thing `rx` gets, but for more
    /// copies of `repeated` (what [`deliver_until_received`] sent): nothing injected before the
    /// marker was delivered.
    async fn next_is_marker(
        from: &Signed,
        rx: &mut mpsc::Receiver<Envelope>,
        repeated: &'static str,
        marker: &'static str,
    ) {
        from.broadcast("t", Bytes::from_static(marker.as_bytes()));
        loop {
            let next = tokio::time::timeout(DEADLINE, rx.recv())
                .await
                .expect("the marker arrives")
                .expect("open");
            if next.payload != repeated.as_bytes() {
                assert_eq!(
                    next.payload,
                    marker.as_bytes(),
                    "got {next:?} before the marker"
                );
                return;
            }
        }
    }

    #[tokio::test]
    async fn nodes_prove_themselves_then_messages_flow_and_each_is_delivered_once() {
        let bus = Arc::new(Bus::default());
        let (a, b) = (signed(&bus, "a"), signed(&bus, "b"));
        let mut at_b = b.subscribe("t");
        deliver_until_received(&a, &mut at_b, "hello").await;
        assert!(
            b.stats().rejected.unproven >= 1,
            "the first was dropped: {:?}",
            b.stats()
        );
        next_is_marker(&a, &mut at_b, "hello", "one").await;
        let one = bus.recorded("t").pop().expect("recorded");
        // The same bytes again, as anyone on the broker can publish them.
        bus.inject("b", one.clone());
        bus.inject("b", one);
        wait_until("b refuses both replays", || {
            b.stats().rejected.replayed == 2
        })
        .await;
        next_is_marker(&a, &mut at_b, "hello", "after").await;
    }

    #[tokio::test]
    async fn forged_messages_are_refused_by_reason() {
        let bus = Arc::new(Bus::default());
        let (a, b) = (signed(&bus, "a"), signed(&bus, "b"));
        let mut at_b = b.subscribe("t");
        deliver_until_received(&a, &mut at_b, "hello").await;
        // Unsigned (the format before signing), and signed with another secret.
        bus.inject("b", envelope("a", "t", Bytes::from_static(b"\x00forged")));
        let wrong =
            Keys::new(b"guess", "demo").seal(head(KIND_DATA, u64::MAX, ""), "a", "t", b"forged");
        bus.inject("b", envelope("a", "t", wrong));
        wait_until("b refuses both", || {
            let r = b.stats().rejected;
            r.unsigned == 1 && r.bad_signature == 1
        })
        .await;
        next_is_marker(&a, &mut at_b, "hello", "after").await;
    }

    #[tokio::test]
    async fn a_message_for_another_node_is_refused_where_it_is_replayed() {
        let bus = Arc::new(Bus::default());
        let (a, b, _c) = (signed(&bus, "a"), signed(&bus, "b"), signed(&bus, "c"));
        let mut at_b = b.subscribe("t");
        deliver_until_received(&a, &mut at_b, "hello").await;
        a.send_to("c", "t", Bytes::from_static(b"for c"));
        let for_c = bus.recorded("t").pop().expect("recorded");
        bus.inject("b", for_c);
        wait_until("b refuses it", || b.stats().rejected.replayed == 1).await;
        next_is_marker(&a, &mut at_b, "hello", "after").await;
    }

    #[tokio::test]
    async fn a_restarted_receiver_refuses_what_was_recorded_before_it_started() {
        let bus = Arc::new(Bus::default());
        let (a, b) = (signed(&bus, "a"), signed(&bus, "b"));
        let mut at_b = b.subscribe("t");
        deliver_until_received(&a, &mut at_b, "hello").await;
        next_is_marker(&a, &mut at_b, "hello", "recorded").await;
        let recorded = bus.recorded("t").pop().expect("recorded");
        drop((b, at_b));
        // b restarts: no window, nothing known of a.
        let b = signed(&bus, "b");
        let mut at_b = b.subscribe("t");
        bus.inject("b", recorded.clone());
        deliver_until_received(&a, &mut at_b, "fresh").await;
        // Once a has proven itself, the recording is still older than the proof.
        bus.inject("b", recorded);
        wait_until("b refuses the recording twice", || {
            b.stats().rejected.unproven >= 2
        })
        .await;
        next_is_marker(&a, &mut at_b, "fresh", "after").await;
    }

    #[tokio::test]
    async fn a_restarted_sender_is_heard_once_it_proves_its_new_epoch_and_its_old_one_never() {
        let bus = Arc::new(Bus::default());
        let (a, b) = (signed(&bus, "a"), signed(&bus, "b"));
        let mut at_b = b.subscribe("t");
        deliver_until_received(&a, &mut at_b, "hello").await;
        next_is_marker(&a, &mut at_b, "hello", "old epoch").await;
        let old = bus.recorded("t").pop().expect("recorded");
        drop(a);
        // a restarts: a new epoch, numbered from 1 again.
        let a = signed(&bus, "a");
        deliver_until_received(&a, &mut at_b, "new epoch").await;
        bus.inject("b", old);
        wait_until("b refuses the old epoch", || {
            b.stats().rejected.unproven >= 2
        })
        .await;
        next_is_marker(&a, &mut at_b, "new epoch", "after").await;
    }

    #[tokio::test]
    async fn a_proof_is_good_for_the_challenge_it_answers_only() {
        let bus = Arc::new(Bus::default());
        let (a, b) = (signed(&bus, "a"), signed(&bus, "b"));
        let mut at_b = b.subscribe("t");
        deliver_until_received(&a, &mut at_b, "hello").await;
        let proof = bus
            .recorded(CONTROL_CHANNEL)
            .into_iter()
            .rfind(|e| e.from == "a" && e.payload.get(1) == Some(&KIND_PROOF))
            .expect("a's proof was recorded");
        bus.inject("b", proof);
        wait_until("b refuses the old proof", || {
            b.stats().rejected.replayed == 1
        })
        .await;
        next_is_marker(&a, &mut at_b, "hello", "after").await;
    }

    #[tokio::test]
    async fn senders_are_bounded_and_a_new_name_always_finds_room() {
        // Pods come and go with new names: the one heard from longest ago makes room.
        let bus = Arc::new(Bus::default());
        let b = signed(&bus, "b");
        let k = Keys::new(b"s3cret", "demo");
        let start = Instant::now();
        for i in 0..MAX_SENDERS + 100 {
            let name = format!("pod-{i}");
            let wire = k.seal(head(KIND_DATA, 1, ""), &name, "t", b"x");
            let at = start + Duration::from_millis(i as u64);
            let next = b.shared.receive(envelope(&name, "t", wire), at);
            assert!(
                matches!(next, Next::Send(ref m) if m.len() == 1),
                "{name} is challenged"
            );
        }
        let senders = lock(&b.shared.senders);
        assert_eq!(senders.len(), MAX_SENDERS);
        assert!(senders.contains_key(&format!("pod-{}", MAX_SENDERS + 99)));
        assert!(!senders.contains_key("pod-0"), "the oldest made room");
    }
}
