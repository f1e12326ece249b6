//! The replicated presence tracker: a delta-state CRDT and the shard state machine that
//! replicates it between nodes — the equivalent of Phoenix.Tracker, sans-IO.
//!
//! - [`State`] — one replica of the CRDT: an add-wins observed-remove set of presences keyed by
//!   dot, with a vector-clock context and clouds of out-of-order dots. Local `join` / `leave` /
//!   `update`, `extract` / `merge` with peers, `replica_up` / `replica_down` /
//!   `remove_down_replicas`, reads that hide down replicas.
//! - [`Shard`] — a [`State`] plus replication: heartbeats with deltas, cached delta generations,
//!   transfer requests, down/permdown detection, graceful permdown. No timers: the caller passes
//!   `now_ms` to [`Shard::tick`] and [`Shard::receive`] and sends the returned [`Outgoing`]
//!   messages.
//! - [`ReplicationMessage`] — what shards exchange, with a versioned binary encoding.
//! - [`Diff`] / [`Presence`] / [`Meta`] / [`PhxRef`] — what local subscribers are told.
//! - [`Coalescer`] — per-room windows that turn a burst of diffs into one, for the fan-out.
//!
//! ```
//! use rollcall_core::tracker::{Meta, ReplicaId, Shard, ShardConfig};
//!
//! let mut a = Shard::new(ReplicaId::new("a", 1), ShardConfig::default(), 0).unwrap();
//! let mut b = Shard::new(ReplicaId::new("b", 1), ShardConfig::default(), 0).unwrap();
//! let (_ref, diff) = a.track(7, "room:1", "alice", Meta::new(r#"{"device":"web"}"#).unwrap()).unwrap();
//! assert_eq!(diff.topic("room:1").unwrap().joins.len(), 1);
//! // Deliver a's heartbeat (which carries the delta) to b.
//! for out in a.tick(1_500).messages {
//!     let diff = b.receive("a", out.message, 1_500).diff;
//!     assert_eq!(diff.topic("room:1").unwrap().joins[0].0.as_ref(), "alice");
//! }
//! assert_eq!(b.list("room:1").len(), 1);
//! ```

mod coalesce;
mod delta;
mod diff;
mod message;
mod meta;
mod replica;
mod shard;
mod state;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

pub use coalesce::{CoalesceConfig, Coalescer};
pub use diff::{Diff, TopicDiff};
pub use message::{
    Clock, DecodeError, EncodeError, ReplicationMessage, StatePayload, WIRE_VERSION,
};
pub use meta::{Meta, MetaError, PhxRef, Presence};
pub use replica::{ReplicaEvent, ReplicaId, ReplicaStatus};
pub use shard::{ConfigError, Destination, Outgoing, Output, Shard, ShardConfig};
pub use state::{AlreadyTracked, NoPresence, State};

/// The shard of `topic` in a pool of `shards` (a node's tracker runs one [`Shard`] per pool
/// slot): FNV-1a of the topic's bytes, modulo the pool size, so every node and every version
/// maps a topic to the same shard.
pub fn shard_index(topic: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let n = u64::try_from(shards.max(1)).unwrap_or(1);
    usize::try_from(hash % n).unwrap_or(0)
}
