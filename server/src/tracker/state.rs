//! The presence state of this node: a [`rollcall_core::tracker::Shard`] (the replicated CRDT and
//! its replication state machine) seen through the shapes the tracker task works with — JSON
//! metas, `String` refs, per-topic [`Diff`]s, and replication messages already encoded for the
//! [`PubSub`](crate::pubsub::PubSub) adapter.

use std::collections::BTreeMap;

use rollcall_core::tracker::{self as core, Destination, Meta, ReplicaId, ReplicationMessage};
use serde_json::{Map, Value};

use crate::tracker::ConnId;

pub use rollcall_core::tracker::{
    AlreadyTracked, ConfigError, NoPresence, ReplicaEvent, ReplicaStatus, ShardConfig,
};

/// One tracked meta: the user's meta plus the refs that identify this version of it.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceMeta {
    /// The meta as given (a JSON object, without `phx_ref`).
    pub meta: Map<String, Value>,
    /// Unique ref of this version of the meta.
    pub phx_ref: String,
    /// The ref this version replaced (after an update).
    pub phx_ref_prev: Option<String>,
}

impl PresenceMeta {
    fn from_core(p: &core::Presence) -> PresenceMeta {
        PresenceMeta {
            meta: p.meta_json.to_map(),
            phx_ref: p.phx_ref.to_string(),
            phx_ref_prev: p.phx_ref_prev.map(|r| r.to_string()),
        }
    }

    /// The meta as clients see it: the user's fields plus `phx_ref` (and `phx_ref_prev`).
    pub fn to_json(&self) -> Value {
        let mut obj = self.meta.clone();
        obj.insert("phx_ref".into(), Value::String(self.phx_ref.clone()));
        if let Some(prev) = &self.phx_ref_prev {
            obj.insert("phx_ref_prev".into(), Value::String(prev.clone()));
        }
        Value::Object(obj)
    }
}

/// Joins and leaves of one topic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicDiff {
    /// `(key, meta)` that joined.
    pub joins: Vec<(String, PresenceMeta)>,
    /// `(key, meta)` that left.
    pub leaves: Vec<(String, PresenceMeta)>,
}

/// Per-topic joins and leaves.
pub type Diff = BTreeMap<String, TopicDiff>;

fn convert(diff: &core::Diff) -> Diff {
    diff.iter()
        .map(|(topic, d)| {
            let side = |v: &[(std::sync::Arc<str>, core::Presence)]| {
                v.iter()
                    .map(|(k, p)| (k.to_string(), PresenceMeta::from_core(p)))
                    .collect()
            };
            (
                topic.to_string(),
                TopicDiff {
                    joins: side(&d.joins),
                    leaves: side(&d.leaves),
                },
            )
        })
        .collect()
}

/// A replication message ready for the adapter: `to` is `None` for every node, else one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Destination node, or `None` to broadcast.
    pub to: Option<String>,
    /// The encoded [`ReplicationMessage`].
    pub bytes: Vec<u8>,
}

/// What the shard wants done after `tick`, `flush` or `receive`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// Replication messages to send, in order.
    pub messages: Vec<Message>,
    /// Presence changes to dispatch to local subscribers.
    pub diff: Diff,
    /// Peers that came up, went down or were forgotten.
    pub events: Vec<ReplicaEvent>,
    /// State transfers among `messages` and in the message received, for the metrics.
    pub transfers: Transfers,
}

/// Transfer answers (`TransferAck`) sent and received, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Deltas sent.
    pub delta_sent: u64,
    /// Full states sent.
    pub full_sent: u64,
    /// Deltas received.
    pub delta_received: u64,
    /// Full states received.
    pub full_received: u64,
}

/// `Some(true)` for a full-state transfer answer, `Some(false)` for a delta one.
fn transfer_kind(message: &ReplicationMessage) -> Option<bool> {
    match message {
        ReplicationMessage::TransferAck { payload, .. } => Some(payload.is_full()),
        _ => None,
    }
}

fn encode_all(messages: Vec<core::Outgoing>) -> Vec<Message> {
    messages
        .into_iter()
        .filter_map(|out| {
            let to = match out.to {
                Destination::Broadcast => None,
                Destination::Replica(id) => Some(id.node),
            };
            match out.message.encode() {
                Ok(bytes) => Some(Message { to, bytes }),
                Err(e) => {
                    tracing::warn!("tracker message not sent: {e}");
                    None
                }
            }
        })
        .collect()
}

impl From<core::Output> for Output {
    fn from(out: core::Output) -> Output {
        let mut transfers = Transfers::default();
        for kind in out
            .messages
            .iter()
            .filter_map(|m| transfer_kind(&m.message))
        {
            if kind {
                transfers.full_sent += 1;
            } else {
                transfers.delta_sent += 1;
            }
        }
        Output {
            transfers,
            diff: convert(&out.diff),
            events: out.events,
            messages: encode_all(out.messages),
        }
    }
}

/// This node's replica of the cluster's presence.
pub struct Shard {
    inner: core::Shard,
}

impl Shard {
    /// The replica of node `node` in its incarnation `incarnation` (larger on every start).
    pub fn new(node: &str, incarnation: u64, config: ShardConfig) -> Result<Shard, ConfigError> {
        Ok(Shard {
            inner: core::Shard::new(ReplicaId::new(node, incarnation), config, 0)?,
        })
    }

    /// Tracks `key` in `topic` for `conn` with `meta`; returns the new `phx_ref` and the join.
    pub fn track(
        &mut self,
        conn: ConnId,
        topic: &str,
        key: &str,
        meta: &Map<String, Value>,
    ) -> Result<(String, Diff), AlreadyTracked> {
        let (phx_ref, diff) = self.inner.track(conn.0, topic, key, Meta::from_map(meta))?;
        Ok((phx_ref.to_string(), convert(&diff)))
    }

    /// Stops tracking `key` in `topic` for `conn` (an empty diff if it was not tracked).
    pub fn untrack(&mut self, conn: ConnId, topic: &str, key: &str) -> Diff {
        convert(&self.inner.untrack(conn.0, topic, key))
    }

    /// Stops tracking everything `conn` tracked, in every topic.
    pub fn untrack_connection(&mut self, conn: ConnId) -> Diff {
        convert(&self.inner.untrack_connection(conn.0))
    }

    /// Replaces the meta of a tracked (conn, topic, key): the old meta under leaves and the new
    /// one (with `phx_ref_prev`) under joins.
    pub fn update(
        &mut self,
        conn: ConnId,
        topic: &str,
        key: &str,
        meta: &Map<String, Value>,
    ) -> Result<(String, Diff), NoPresence> {
        let (phx_ref, diff) = self
            .inner
            .update(conn.0, topic, key, Meta::from_map(meta))?;
        Ok((phx_ref.to_string(), convert(&diff)))
    }

    /// Everyone visible in `topic` (on every node that is up), by key then `phx_ref`.
    pub fn list(&self, topic: &str) -> Vec<(String, PresenceMeta)> {
        self.inner
            .list(topic)
            .iter()
            .map(|(k, p)| (k.to_string(), PresenceMeta::from_core(p)))
            .collect()
    }

    /// Everyone visible in `topic` as the core stores them (cheap: the keys and metas are
    /// shared, nothing is parsed), by key then `phx_ref`.
    pub fn listing(&self, topic: &str) -> Vec<(std::sync::Arc<str>, core::Presence)> {
        self.inner.list(topic)
    }

    /// One broadcast period elapsed: heartbeat (with any pending delta), transfer requests,
    /// down / permdown detection.
    pub fn tick(&mut self, now_ms: u64) -> Output {
        self.inner.tick(now_ms).into()
    }

    /// Sends a heartbeat now (with pending changes, if any).
    pub fn heartbeat_now(&mut self, now_ms: u64) -> Output {
        self.inner.heartbeat_now(now_ms).into()
    }

    /// Sends pending local changes now, without counting a period.
    pub fn flush(&mut self, now_ms: u64) -> Output {
        self.inner.flush_delta(now_ms).into()
    }

    /// Handles one message from node `from`. A message that does not decode is logged and
    /// dropped (a peer on another wire version, or garbage).
    pub fn receive(&mut self, from: &str, bytes: &[u8], now_ms: u64) -> Output {
        match ReplicationMessage::decode(bytes) {
            Ok(message) => {
                let kind = transfer_kind(&message);
                let mut output: Output = self.inner.receive(from, message, now_ms).into();
                match kind {
                    Some(true) => output.transfers.full_received += 1,
                    Some(false) => output.transfers.delta_received += 1,
                    None => {}
                }
                output
            }
            Err(e) => {
                tracing::warn!(from, "tracker message dropped: {e}");
                Output::default()
            }
        }
    }

    /// The final goodbye: peers drop this node's presences at once. The shard sends nothing
    /// afterwards.
    pub fn graceful_permdown(&mut self) -> Vec<Message> {
        encode_all(self.inner.graceful_permdown())
    }

    /// How many presences this replica stores (every node's, hidden ones included) and in how
    /// many topics.
    pub fn stored(&self) -> (usize, usize) {
        let state = self.inner.state();
        (state.len(), state.topics().len())
    }

    /// Known peer replicas and whether each is up.
    pub fn replicas(&self) -> Vec<(ReplicaId, ReplicaStatus)> {
        self.inner.replicas()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(status: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("status".into(), Value::String(status.into()));
        m
    }

    fn shard(node: &str) -> Shard {
        Shard::new(node, 1, ShardConfig::default()).unwrap()
    }

    #[test]
    fn every_track_gets_a_unique_ref() {
        let mut s = shard("a");
        let (a, _) = s.track(ConnId(1), "t", "k", &meta("a")).unwrap();
        let (b, _) = s.track(ConnId(2), "t", "k", &meta("a")).unwrap();
        assert_ne!(a, b);
        assert!(s.track(ConnId(1), "t", "k", &meta("a")).is_err());
    }

    #[test]
    fn update_leaves_the_old_meta_and_joins_the_new_with_prev_ref() {
        let mut s = shard("a");
        let (old_ref, _) = s.track(ConnId(1), "t", "k", &meta("away")).unwrap();
        let (new_ref, diff) = s.update(ConnId(1), "t", "k", &meta("here")).unwrap();
        let d = &diff["t"];
        assert_eq!(d.leaves[0].1.phx_ref, old_ref);
        assert_eq!(d.joins[0].1.phx_ref, new_ref);
        assert_eq!(d.joins[0].1.phx_ref_prev.as_deref(), Some(old_ref.as_str()));
        assert_eq!(d.joins[0].1.meta, meta("here"));
        assert!(s.update(ConnId(2), "t", "k", &meta("x")).is_err());
    }

    #[test]
    fn untrack_connection_leaves_every_topic() {
        let mut s = shard("a");
        s.track(ConnId(1), "a", "k", &meta("x")).unwrap();
        s.track(ConnId(1), "b", "k", &meta("x")).unwrap();
        s.track(ConnId(2), "b", "j", &meta("x")).unwrap();
        let diff = s.untrack_connection(ConnId(1));
        assert_eq!(diff.len(), 2);
        assert!(s.list("a").is_empty());
        assert_eq!(s.list("b").len(), 1);
    }

    #[test]
    fn a_flushed_change_reaches_another_node_as_a_join_with_the_same_ref() {
        let mut a = shard("a");
        let mut b = shard("b");
        let (phx_ref, _) = a.track(ConnId(1), "t", "alice", &meta("x")).unwrap();
        let out = a.flush(5);
        assert_eq!(out.messages.len(), 1);
        assert_eq!(out.messages[0].to, None);
        let diff = b.receive("a", &out.messages[0].bytes, 5).diff;
        assert_eq!(diff["t"].joins[0].0, "alice");
        assert_eq!(diff["t"].joins[0].1.phx_ref, phx_ref);
        assert_eq!(b.list("t")[0].1.meta, meta("x"));
    }

    #[test]
    fn transfers_are_counted_by_kind_on_both_sides() {
        let mut a = shard("a");
        let mut b = shard("b");
        for m in a.heartbeat_now(1).messages {
            b.receive("a", &m.bytes, 1);
        }
        a.track(ConnId(1), "t", "alice", &meta("x")).unwrap();
        // The delta is lost: b learns of it only from a's clock, and asks for a transfer.
        let _lost = a.flush(5);
        let mut to_a = Vec::new();
        for m in a.heartbeat_now(6).messages {
            to_a.extend(b.receive("a", &m.bytes, 6).messages);
        }
        // Clocks heard are compared every `clock_sample_periods` (2) ticks.
        to_a.extend(b.tick(1_500).messages);
        to_a.extend(b.tick(3_000).messages);
        let mut sent = Transfers::default();
        let mut received = Transfers::default();
        for request in to_a {
            let out = a.receive("b", &request.bytes, 7);
            sent.delta_sent += out.transfers.delta_sent;
            sent.full_sent += out.transfers.full_sent;
            for ack in out.messages {
                let t = b.receive("a", &ack.bytes, 7).transfers;
                received.delta_received += t.delta_received;
                received.full_received += t.full_received;
            }
        }
        assert_eq!(sent.delta_sent + sent.full_sent, 1, "{sent:?}");
        assert_eq!(
            (received.delta_received, received.full_received),
            (sent.delta_sent, sent.full_sent)
        );
        assert_eq!(b.list("t").len(), 1);
        assert_eq!(b.stored(), (1, 1));
    }

    #[test]
    fn garbage_from_a_peer_is_dropped() {
        let mut b = shard("b");
        let out = b.receive("a", b"\xff\x00garbage", 5);
        assert_eq!(out, Output::default());
    }

    #[test]
    fn graceful_permdown_removes_the_nodes_members_from_its_peers() {
        let mut a = shard("a");
        let mut b = shard("b");
        a.track(ConnId(1), "t", "alice", &meta("x")).unwrap();
        for m in a.flush(5).messages {
            b.receive("a", &m.bytes, 5);
        }
        assert_eq!(b.list("t").len(), 1);
        for m in a.graceful_permdown() {
            let diff = b.receive("a", &m.bytes, 6).diff;
            assert_eq!(diff["t"].leaves[0].0, "alice");
        }
        assert!(b.list("t").is_empty());
    }
}
