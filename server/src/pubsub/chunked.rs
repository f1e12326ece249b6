//! Messages of any size over transports that limit them: [`Chunked`] wraps an adapter, splits a
//! payload larger than its chunk size into numbered parts, and puts them back together at the
//! receiver before any subscriber sees them.
//!
//! Why: a full-state transfer of the tracker grows with the cluster (about 100–200 bytes a
//! presence), while NATS refuses messages over its `max_payload` (1 MiB by default), Redis
//! disconnects a subscriber whose output buffer passes 8 MiB for a minute (32 MiB at once), and
//! the mesh caps a frame at 16 MiB. Without chunking, a cluster of some ten thousand members
//! over NATS could never complete a transfer, and a node that joins late would never converge.
//!
//! Wire format, the first byte of every payload:
//! - `0` — a whole message: the rest is the payload.
//! - `1` — a part: `id` (u64 BE), `index` (u32 BE), `count` (u32 BE), then the part's bytes.
//!   `id` is unique per sender; parts arrive in any order and are joined once all have come.
//!
//! A part that never comes (a dropped message) leaves its message incomplete; incomplete
//! messages are forgotten after [`PARTIAL_TTL`] (a timer sweeps them), and at most
//! [`MAX_BUFFERED`] bytes are held at once per subscription, counting what each incomplete
//! message costs to keep (its slots), not only the bytes received. The tracker recovers from
//! such a loss as from any other (its next transfer request).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::sync::Tasks;
use super::{Envelope, PeerInfo, PubSub, Stats, DEFAULT_INBOX_CAPACITY};

/// Part size used for NATS (under its default 1 MiB `max_payload`, with room for headers).
pub const NATS_CHUNK: usize = 512 * 1024;
/// Part size used for Redis and the mesh: small enough that one large transfer never holds a
/// connection for long, nor fills a Redis subscriber's output buffer.
pub const DEFAULT_CHUNK: usize = 1024 * 1024;
/// Incomplete messages older than this are dropped.
pub const PARTIAL_TTL: Duration = Duration::from_secs(60);
/// Most bytes of incomplete messages held at once (per subscription), their slots and keys
/// counted too; the oldest go first.
pub const MAX_BUFFERED: usize = 256 * 1024 * 1024;
/// Largest message that can be reassembled.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Most parts one message may have (bounds what a part's header can make us allocate).
pub const MAX_PARTS: u32 = 4096;

const WHOLE: u8 = 0;
const PART: u8 = 1;
const PART_HEADER: usize = 1 + 8 + 4 + 4;

/// Splits `payload` into wire messages of at most `chunk` payload bytes each (plus a header).
pub fn split(payload: &[u8], chunk: usize, id: u64) -> Vec<Bytes> {
    let chunk = chunk.max(1);
    if payload.len() <= chunk {
        let mut whole = BytesMut::with_capacity(1 + payload.len());
        whole.put_u8(WHOLE);
        whole.put_slice(payload);
        return vec![whole.freeze()];
    }
    let parts: Vec<&[u8]> = payload.chunks(chunk).collect();
    let count = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(index, part)| {
            let mut out = BytesMut::with_capacity(PART_HEADER + part.len());
            out.put_u8(PART);
            out.put_u64(id);
            out.put_u32(index as u32);
            out.put_u32(count);
            out.put_slice(part);
            out.freeze()
        })
        .collect()
}

/// Why a received wire message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// No bytes at all.
    Empty,
    /// The first byte is neither a whole message nor a part.
    UnknownKind(u8),
    /// A part shorter than its header.
    ShortHeader,
    /// `index` is not below `count`, `count` is zero, or the message would be too large.
    BadNumbering {
        /// The part's index.
        index: u32,
        /// The part's count.
        count: u32,
    },
    /// A part whose count disagrees with earlier parts of the same message.
    CountChanged,
    /// A part with a header and no bytes (a sender never makes one).
    EmptyPart,
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Empty => write!(f, "empty cluster message"),
            JoinError::UnknownKind(k) => write!(f, "unknown cluster message kind {k}"),
            JoinError::ShortHeader => write!(f, "cluster message part shorter than its header"),
            JoinError::BadNumbering { index, count } => {
                write!(f, "cluster message part {index} of {count} is out of range")
            }
            JoinError::CountChanged => {
                write!(f, "cluster message parts disagree on how many there are")
            }
            JoinError::EmptyPart => write!(f, "cluster message part without bytes"),
        }
    }
}

impl std::error::Error for JoinError {}

struct Partial {
    parts: Vec<Option<Bytes>>,
    missing: usize,
    /// What this message costs to hold: its parts' bytes plus its slots and key, so that
    /// headers alone (a part of a message with thousands of slots) count against the cap.
    bytes: usize,
    /// Its place in [`Reassembler::by_age`].
    age: (Instant, u64),
}

/// Bookkeeping held per incomplete message beyond its parts' bytes (the map entry, the key).
const PARTIAL_OVERHEAD: usize = 128;

/// Puts parts back together; sans-IO (time is passed in).
pub struct Reassembler {
    partial: HashMap<(String, u64), Partial>,
    /// Incomplete messages oldest first, so expiry and the cap never scan them all.
    by_age: BTreeMap<(Instant, u64), (String, u64)>,
    next_age: u64,
    buffered: usize,
    cap: usize,
    /// Incomplete messages dropped (expired or pushed out by the size cap).
    pub abandoned: u64,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::with_cap(MAX_BUFFERED)
    }
}

impl Reassembler {
    /// A reassembler holding at most `cap` bytes of incomplete messages (counted as in
    /// [`Reassembler::buffered`]).
    pub fn with_cap(cap: usize) -> Self {
        Reassembler {
            partial: HashMap::new(),
            by_age: BTreeMap::new(),
            next_age: 0,
            buffered: 0,
            cap,
            abandoned: 0,
        }
    }

    /// Takes one wire message from `from`; returns the payload when a message is complete.
    pub fn accept(
        &mut self,
        from: &str,
        mut bytes: Bytes,
        now: Instant,
    ) -> Result<Option<Bytes>, JoinError> {
        let Some(&kind) = bytes.first() else {
            return Err(JoinError::Empty);
        };
        match kind {
            WHOLE => {
                bytes.advance(1);
                Ok(Some(bytes))
            }
            PART => {
                if bytes.len() < PART_HEADER {
                    return Err(JoinError::ShortHeader);
                }
                bytes.advance(1);
                let id = bytes.get_u64();
                let index = bytes.get_u32();
                let count = bytes.get_u32();
                let too_large = (count as usize).saturating_mul(bytes.len()) > MAX_MESSAGE;
                if count == 0 || count > MAX_PARTS || index >= count || too_large {
                    return Err(JoinError::BadNumbering { index, count });
                }
                if bytes.is_empty() {
                    return Err(JoinError::EmptyPart);
                }
                self.expire(now);
                Ok(self.add(from, id, index, count, bytes, now)?)
            }
            other => Err(JoinError::UnknownKind(other)),
        }
    }

    fn add(
        &mut self,
        from: &str,
        id: u64,
        index: u32,
        count: u32,
        part: Bytes,
        now: Instant,
    ) -> Result<Option<Bytes>, JoinError> {
        let key = (from.to_owned(), id);
        if !self.partial.contains_key(&key) {
            let slots = count as usize * std::mem::size_of::<Option<Bytes>>();
            let cost = slots + from.len() + PARTIAL_OVERHEAD;
            let age = (now, self.next_age);
            self.next_age += 1;
            self.by_age.insert(age, key.clone());
            self.buffered += cost;
            self.partial.insert(
                key.clone(),
                Partial {
                    parts: vec![None; count as usize],
                    missing: count as usize,
                    bytes: cost,
                    age,
                },
            );
        }
        let Some(entry) = self.partial.get_mut(&key) else {
            return Ok(None);
        };
        if entry.parts.len() != count as usize {
            return Err(JoinError::CountChanged);
        }
        let Some(slot) = entry.parts.get_mut(index as usize) else {
            return Err(JoinError::BadNumbering { index, count });
        };
        if slot.is_none() {
            entry.missing -= 1;
            entry.bytes += part.len();
            self.buffered += part.len();
            *slot = Some(part);
        }
        if entry.missing > 0 {
            self.cap();
            return Ok(None);
        }
        let Some(done) = self.forget(&key) else {
            return Ok(None);
        };
        let mut whole = BytesMut::with_capacity(done.parts.iter().flatten().map(Bytes::len).sum());
        for part in done.parts.into_iter().flatten() {
            whole.put_slice(&part);
        }
        Ok(Some(whole.freeze()))
    }

    /// Removes an incomplete message and its cost.
    fn forget(&mut self, key: &(String, u64)) -> Option<Partial> {
        let p = self.partial.remove(key)?;
        self.by_age.remove(&p.age);
        self.buffered -= p.bytes;
        Some(p)
    }

    /// Drops the incomplete messages started [`PARTIAL_TTL`] or longer before `now`. Called on
    /// every part, and by the adapter on a timer so that a message whose last parts never come
    /// does not wait for the next part to be forgotten.
    pub fn expire(&mut self, now: Instant) {
        while let Some((&(started, _), key)) = self.by_age.first_key_value() {
            if now.saturating_duration_since(started) < PARTIAL_TTL {
                return;
            }
            let key = key.clone();
            if self.forget(&key).is_some() {
                self.abandoned += 1;
            } else {
                self.by_age.pop_first();
            }
        }
    }

    /// Drops the oldest incomplete messages while more than the cap is held.
    fn cap(&mut self) {
        while self.buffered > self.cap {
            let Some((_, key)) = self.by_age.pop_first() else {
                return;
            };
            if let Some(p) = self.partial.remove(&key) {
                self.buffered -= p.bytes;
                self.abandoned += 1;
            }
        }
    }

    /// What the incomplete messages held cost: their parts' bytes plus their bookkeeping.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Incomplete messages held.
    pub fn incomplete(&self) -> usize {
        self.partial.len()
    }
}

/// An adapter that carries messages of any size over `inner` (see the module docs).
pub struct Chunked {
    inner: Arc<dyn PubSub>,
    chunk: usize,
    next_id: AtomicU64,
    refused: Arc<AtomicU64>,
    abandoned: Arc<AtomicU64>,
    too_large: AtomicU64,
    subscriptions: Tasks,
}

impl Chunked {
    /// Wraps `inner`, splitting payloads larger than `chunk` bytes.
    pub fn new(inner: Arc<dyn PubSub>, chunk: usize) -> Chunked {
        Chunked {
            inner,
            chunk: chunk.max(1),
            // Ids only need to differ among one sender's messages in flight; a random start
            // keeps a restarted node from reusing ids its peers may still hold parts of.
            next_id: AtomicU64::new(rand::random()),
            refused: Arc::new(AtomicU64::new(0)),
            abandoned: Arc::new(AtomicU64::new(0)),
            too_large: AtomicU64::new(0),
            subscriptions: Tasks::default(),
        }
    }

    /// The wire messages for `payload`; none when no receiver would take it back (over
    /// [`MAX_MESSAGE`] or [`MAX_PARTS`]): dropped here, counted and logged once, rather than
    /// sent in parts every receiver refuses one by one.
    fn wire(&self, channel: &str, payload: &[u8]) -> Vec<Bytes> {
        let parts = payload.len().div_ceil(self.chunk);
        if payload.len() > MAX_MESSAGE || parts > MAX_PARTS as usize {
            self.too_large.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "dropped a {}-byte cluster message on {channel}: receivers take at most {MAX_MESSAGE} bytes in {MAX_PARTS} parts",
                payload.len()
            );
            return Vec::new();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        split(payload, self.chunk, id)
    }
}

impl PubSub for Chunked {
    fn node(&self) -> &str {
        self.inner.node()
    }

    fn broadcast(&self, channel: &str, payload: Bytes) {
        for part in self.wire(channel, &payload) {
            self.inner.broadcast(channel, part);
        }
    }

    fn send_to(&self, node: &str, channel: &str, payload: Bytes) {
        for part in self.wire(channel, &payload) {
            self.inner.send_to(node, channel, part);
        }
    }

    fn subscribe(&self, channel: &str) -> mpsc::Receiver<Envelope> {
        let mut raw = self.inner.subscribe(channel);
        let (tx, rx) = mpsc::channel(DEFAULT_INBOX_CAPACITY);
        let (refused, abandoned) = (self.refused.clone(), self.abandoned.clone());
        let task = tokio::spawn(async move {
            let mut parts = Reassembler::default();
            let mut sweep = tokio::time::interval(PARTIAL_TTL / 4);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let envelope = tokio::select! {
                    envelope = raw.recv() => envelope,
                    _ = sweep.tick() => {
                        let before = parts.abandoned;
                        parts.expire(Instant::now());
                        abandoned.fetch_add(parts.abandoned - before, Ordering::Relaxed);
                        continue;
                    }
                };
                let Some(envelope) = envelope else { return };
                let Envelope {
                    from,
                    channel,
                    payload,
                } = envelope;
                let before = parts.abandoned;
                let joined = parts.accept(&from, payload, Instant::now());
                abandoned.fetch_add(parts.abandoned - before, Ordering::Relaxed);
                match joined {
                    Ok(Some(payload)) => {
                        let whole = Envelope {
                            from,
                            channel,
                            payload,
                        };
                        if tx.send(whole).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("refused a cluster message from {from} on {channel}: {e}");
                    }
                }
            }
        });
        self.subscriptions.push(task);
        rx
    }

    fn peers(&self) -> Vec<PeerInfo> {
        self.inner.peers()
    }

    fn stats(&self) -> Stats {
        let mut stats = self.inner.stats();
        stats.dropped_inbound += self.abandoned.load(Ordering::Relaxed);
        // A malformed part is an inbound message dropped; `refused` stays the mesh's count of
        // refused handshakes, which is what the metric built on it says.
        stats.dropped_inbound += self.refused.load(Ordering::Relaxed);
        stats.dropped_outbound += self.too_large.load(Ordering::Relaxed);
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

    fn join_all(r: &mut Reassembler, from: &str, wire: Vec<Bytes>, now: Instant) -> Vec<Bytes> {
        wire.into_iter()
            .filter_map(|w| r.accept(from, w, now).expect("valid"))
            .collect()
    }

    #[test]
    fn a_small_payload_travels_whole_with_one_header_byte() {
        let wire = split(b"hello", 16, 7);
        assert_eq!(wire.len(), 1);
        assert_eq!(&wire[0][..], b"\0hello");
        let mut r = Reassembler::default();
        assert_eq!(
            join_all(&mut r, "a", wire, Instant::now()),
            vec![Bytes::from("hello")]
        );
    }

    #[test]
    fn a_large_payload_is_split_and_joined_in_any_order() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = split(&payload, 1000, 42);
        assert_eq!(wire.len(), 10);
        assert!(wire.iter().all(|w| w.len() <= 1000 + PART_HEADER));
        wire.reverse();
        wire.swap(2, 7);
        let mut r = Reassembler::default();
        let joined = join_all(&mut r, "a", wire, Instant::now());
        assert_eq!(joined, vec![Bytes::from(payload)]);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn a_duplicated_part_is_harmless() {
        let payload = vec![9u8; 2500];
        let wire = split(&payload, 1000, 1);
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert_eq!(r.accept("a", wire[0].clone(), now), Ok(None));
        assert_eq!(r.accept("a", wire[0].clone(), now), Ok(None));
        assert_eq!(r.accept("a", wire[1].clone(), now), Ok(None));
        assert_eq!(
            r.accept("a", wire[2].clone(), now),
            Ok(Some(Bytes::from(payload)))
        );
    }

    #[test]
    fn parts_of_the_same_id_from_different_senders_never_mix() {
        let (x, y) = (vec![1u8; 1500], vec![2u8; 1500]);
        let (wx, wy) = (split(&x, 1000, 5), split(&y, 1000, 5));
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert_eq!(r.accept("a", wx[0].clone(), now), Ok(None));
        assert_eq!(r.accept("b", wy[0].clone(), now), Ok(None));
        assert_eq!(r.accept("b", wy[1].clone(), now), Ok(Some(Bytes::from(y))));
        assert_eq!(r.accept("a", wx[1].clone(), now), Ok(Some(Bytes::from(x))));
    }

    #[test]
    fn an_incomplete_message_is_forgotten_after_the_ttl() {
        let wire = split(&[3u8; 3000], 1000, 1);
        let mut r = Reassembler::default();
        let start = Instant::now();
        assert_eq!(r.accept("a", wire[0].clone(), start), Ok(None));
        let one_part = r.buffered();
        assert!(one_part >= 1000);
        // Any later part triggers the sweep; the stale message is gone, so its last parts
        // start a new (incomplete) one instead of completing it.
        let later = start + PARTIAL_TTL + Duration::from_secs(1);
        assert_eq!(r.accept("a", wire[1].clone(), later), Ok(None));
        assert_eq!(r.accept("a", wire[2].clone(), later), Ok(None));
        assert_eq!(r.abandoned, 1);
        assert_eq!(r.buffered(), one_part + 1000);
        assert_eq!(r.incomplete(), 1);
    }

    #[test]
    fn an_incomplete_message_is_forgotten_by_the_sweep_without_another_part() {
        let wire = split(&[3u8; 3000], 1000, 1);
        let mut r = Reassembler::default();
        let start = Instant::now();
        assert_eq!(r.accept("a", wire[0].clone(), start), Ok(None));
        r.expire(start + PARTIAL_TTL - Duration::from_millis(1));
        assert_eq!(r.incomplete(), 1);
        r.expire(start + PARTIAL_TTL);
        assert_eq!((r.incomplete(), r.buffered(), r.abandoned), (0, 0, 1));
    }

    /// A part of message `id` with `count` parts and a one-byte body.
    fn tiny_part(id: u64, count: u32) -> Bytes {
        let mut part = BytesMut::new();
        part.put_u8(PART);
        part.put_u64(id);
        part.put_u32(0);
        part.put_u32(count);
        part.put_u8(0);
        part.freeze()
    }

    #[test]
    fn the_slots_of_incomplete_messages_count_against_the_cap() {
        // Each 18-byte part makes the receiver hold MAX_PARTS slots: that must count, or a
        // peer holds gigabytes here while the cap sees a few kilobytes.
        let cap = 4 * 1024 * 1024;
        let mut r = Reassembler::with_cap(cap);
        let now = Instant::now();
        for id in 0..1000 {
            assert_eq!(r.accept("a", tiny_part(id, MAX_PARTS), now), Ok(None));
        }
        let slots = MAX_PARTS as usize * std::mem::size_of::<Option<Bytes>>();
        assert!(r.buffered() <= cap);
        assert!(r.incomplete() <= cap / slots, "{} held", r.incomplete());
        assert!(r.abandoned > 0);
    }

    #[tokio::test]
    async fn a_message_no_receiver_could_join_is_dropped_at_the_sender() {
        let chunked = Chunked::new(Arc::new(crate::pubsub::Local::new("a")), 1);
        chunked.broadcast("tracker", Bytes::from(vec![0u8; MAX_PARTS as usize]));
        assert_eq!(chunked.stats().dropped_outbound, 0);
        chunked.broadcast("tracker", Bytes::from(vec![0u8; MAX_PARTS as usize + 1]));
        chunked.send_to(
            "b",
            "tracker",
            Bytes::from(vec![0u8; MAX_PARTS as usize + 1]),
        );
        assert_eq!(chunked.stats().dropped_outbound, 2);
    }

    #[test]
    fn a_part_without_bytes_is_refused() {
        let mut r = Reassembler::default();
        let mut empty = BytesMut::new();
        empty.put_u8(PART);
        empty.put_u64(1);
        empty.put_u32(0);
        empty.put_u32(MAX_PARTS);
        assert_eq!(
            r.accept("a", empty.freeze(), Instant::now()),
            Err(JoinError::EmptyPart)
        );
        assert_eq!(r.incomplete(), 0);
    }

    #[test]
    fn malformed_wire_messages_are_refused_with_a_reason() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert_eq!(r.accept("a", Bytes::new(), now), Err(JoinError::Empty));
        assert_eq!(
            r.accept("a", Bytes::from_static(&[7, 1, 2]), now),
            Err(JoinError::UnknownKind(7))
        );
        assert_eq!(
            r.accept("a", Bytes::from_static(&[1, 0, 0]), now),
            Err(JoinError::ShortHeader)
        );
        let mut bad = BytesMut::new();
        bad.put_u8(PART);
        bad.put_u64(1);
        bad.put_u32(3);
        bad.put_u32(3);
        bad.put_slice(b"x");
        assert_eq!(
            r.accept("a", bad.freeze(), now),
            Err(JoinError::BadNumbering { index: 3, count: 3 })
        );
        let mut huge = BytesMut::new();
        huge.put_u8(PART);
        huge.put_u64(1);
        huge.put_u32(0);
        huge.put_u32(u32::MAX);
        huge.put_slice(&[0u8; 1024]);
        assert!(matches!(
            r.accept("a", huge.freeze(), now),
            Err(JoinError::BadNumbering { .. })
        ));
        let wire = split(&[0u8; 2000], 1000, 9);
        assert_eq!(r.accept("a", wire[0].clone(), now), Ok(None));
        let mut other_count = BytesMut::new();
        other_count.put_u8(PART);
        other_count.put_u64(9);
        other_count.put_u32(1);
        other_count.put_u32(5);
        other_count.put_slice(b"y");
        assert_eq!(
            r.accept("a", other_count.freeze(), now),
            Err(JoinError::CountChanged)
        );
    }

    #[test]
    fn random_bytes_never_panic_the_reassembler() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        for seed in 0..2000u64 {
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 17) % 256) as u8)
                .map(|b| if len > 0 && b % 7 == 0 { 1 } else { b })
                .collect();
            let _ = r.accept("a", Bytes::from(bytes), now);
        }
    }
}
