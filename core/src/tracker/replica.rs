//! Replica identity and the events a shard reports about its peers.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// The identity of one tracker replica: the node it runs on and the incarnation of that node.
///
/// A node gets a fresh incarnation every time it starts (64 random bits are best), so a restarted
/// node is a *new* replica and its predecessor's presences can be dropped. Incarnations are
/// compared for identity only, never for order: any incarnation a peer has not seen yet is a new
/// start, whether its number is larger or smaller. One that was used before is detected when a
/// peer shows dots of it that the new process did not make, and the shard moves to a new one
/// ([`ReplicaEvent::Reincarnated`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReplicaId {
    /// The node name, unique in the cluster (the pubsub identity of the node).
    pub node: String,
    /// Fresh on every start of the node (and after a [`ReplicaEvent::Reincarnated`]).
    pub incarnation: u64,
}

impl ReplicaId {
    /// A replica id.
    pub fn new(node: impl Into<String>, incarnation: u64) -> ReplicaId {
        ReplicaId {
            node: node.into(),
            incarnation,
        }
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.incarnation)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.incarnation)
    }
}

/// Whether a known peer replica is currently heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaStatus {
    /// Heartbeats arrive; its presences are visible.
    Up,
    /// Silent for longer than `down_period_ms`: its presences are hidden (and were reported as
    /// leaves) but kept, in case it comes back before `permdown_period_ms`.
    Down,
}

/// A change in what a shard knows about a peer replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// First heard from, or heard from again after being down.
    Up(ReplicaId),
    /// Silent for `down_period_ms`, or replaced by another incarnation of its node.
    Down(ReplicaId),
    /// Forgotten for good and retired (its messages ignored from now on): silent for
    /// `permdown_period_ms`, replaced by another incarnation of its node, or it announced a
    /// graceful shutdown.
    Permdown(ReplicaId),
    /// This shard's own replica id turned out to be in use by another process too (an
    /// incarnation reused), or a peer had retired it: the shard took a new incarnation and
    /// re-tracked its presences under it (new `phx_ref`s, reported in the same output's diff).
    /// Worth a warning in the log: a reused incarnation means the node's incarnations are not
    /// fresh on every start.
    Reincarnated {
        /// The id given up.
        previous: ReplicaId,
        /// The id from now on.
        current: ReplicaId,
        /// The peer whose message showed it.
        shown_by: ReplicaId,
    },
}

/// A small, fast, deterministic hasher for integer keys (the multiply-rotate scheme of rustc's
/// FxHash). Dots and counters are not attacker-chosen hash-flooding targets: their counters are
/// dense and replica indices are local.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;
pub(crate) type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;
pub(crate) type FxHashSet<K> = std::collections::HashSet<K, FxBuild>;
