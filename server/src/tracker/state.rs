//! The presence state of this node: who is tracked in which topic, by which connection.
//!
//! This is the single file to switch when `core::tracker` shards land: it offers the same
//! operations with the same shapes (`track`/`untrack`/`untrack_connection`/`update`/`list`
//! returning per-topic [`Diff`]s of joins and leaves), backed today by a plain in-memory map
//! that knows only this node.

use std::collections::{BTreeMap, HashMap};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::ConnId;

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

/// Joins and leaves of one topic, in the order they happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicDiff {
    /// `(key, meta)` that joined.
    pub joins: Vec<(String, PresenceMeta)>,
    /// `(key, meta)` that left.
    pub leaves: Vec<(String, PresenceMeta)>,
}

/// Per-topic joins and leaves.
pub type Diff = BTreeMap<String, TopicDiff>;

/// `track` of a (connection, topic, key) that is already tracked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlreadyTracked;

/// `update` of a (connection, topic, key) that is not tracked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoPresence;

/// What a shard wants done after `tick` or `receive`: messages for other replicas (`None` =
/// every node) and the presence changes to report locally.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// Encoded replication messages, each with its destination node (`None`: broadcast).
    pub messages: Vec<(Option<String>, Vec<u8>)>,
    /// Presence changes to dispatch to local subscribers.
    pub diff: Diff,
}

#[derive(Debug, Clone)]
struct Entry {
    conn: ConnId,
    key: String,
    meta: PresenceMeta,
}

/// The presence state of one node (single-node stand-in for a `core::tracker` shard).
#[derive(Debug)]
pub struct Shard {
    /// Random per start, so refs stay unique across restarts.
    incarnation: [u8; 8],
    counter: u32,
    /// Entries per topic in track order (lists keep that order, as Phoenix does).
    topics: HashMap<String, Vec<Entry>>,
}

impl Shard {
    /// An empty state; `incarnation` makes this start's `phx_ref`s unique.
    pub fn new(incarnation: u64) -> Self {
        Shard {
            incarnation: incarnation.to_be_bytes(),
            counter: 0,
            topics: HashMap::new(),
        }
    }

    fn next_ref(&mut self) -> String {
        self.counter = self.counter.wrapping_add(1);
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&self.incarnation);
        bytes[8..].copy_from_slice(&self.counter.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Tracks `key` in `topic` for `conn` with `meta`.
    pub fn track(
        &mut self,
        conn: ConnId,
        topic: &str,
        key: &str,
        meta: Map<String, Value>,
    ) -> Result<(String, Diff), AlreadyTracked> {
        let entries = self.topics.entry(topic.to_string()).or_default();
        if entries.iter().any(|e| e.conn == conn && e.key == key) {
            return Err(AlreadyTracked);
        }
        let phx_ref = self.next_ref();
        let meta = PresenceMeta {
            meta,
            phx_ref: phx_ref.clone(),
            phx_ref_prev: None,
        };
        self.topics
            .entry(topic.to_string())
            .or_default()
            .push(Entry {
                conn,
                key: key.to_string(),
                meta: meta.clone(),
            });
        let mut diff = Diff::new();
        diff.entry(topic.to_string())
            .or_default()
            .joins
            .push((key.to_string(), meta));
        Ok((phx_ref, diff))
    }

    /// Stops tracking `key` in `topic` for `conn` (a no-op diff if it was not tracked).
    pub fn untrack(&mut self, conn: ConnId, topic: &str, key: &str) -> Diff {
        let mut diff = Diff::new();
        if let Some(entries) = self.topics.get_mut(topic) {
            let mut leaves = Vec::new();
            entries.retain(|e| {
                let gone = e.conn == conn && e.key == key;
                if gone {
                    leaves.push((e.key.clone(), e.meta.clone()));
                }
                !gone
            });
            if entries.is_empty() {
                self.topics.remove(topic);
            }
            if !leaves.is_empty() {
                diff.insert(
                    topic.to_string(),
                    TopicDiff {
                        joins: Vec::new(),
                        leaves,
                    },
                );
            }
        }
        diff
    }

    /// Stops tracking everything `conn` tracked, in every topic.
    pub fn untrack_connection(&mut self, conn: ConnId) -> Diff {
        let mut diff = Diff::new();
        self.topics.retain(|topic, entries| {
            let mut leaves = Vec::new();
            entries.retain(|e| {
                let gone = e.conn == conn;
                if gone {
                    leaves.push((e.key.clone(), e.meta.clone()));
                }
                !gone
            });
            if !leaves.is_empty() {
                diff.insert(
                    topic.clone(),
                    TopicDiff {
                        joins: Vec::new(),
                        leaves,
                    },
                );
            }
            !entries.is_empty()
        });
        diff
    }

    /// Replaces the meta of a tracked (conn, topic, key): one diff with the old meta under
    /// leaves and the new one (with `phx_ref_prev`) under joins.
    pub fn update(
        &mut self,
        conn: ConnId,
        topic: &str,
        key: &str,
        meta: Map<String, Value>,
    ) -> Result<(String, Diff), NoPresence> {
        let phx_ref = self.next_ref();
        let entry = self
            .topics
            .get_mut(topic)
            .and_then(|entries| entries.iter_mut().find(|e| e.conn == conn && e.key == key))
            .ok_or(NoPresence)?;
        let old = std::mem::replace(
            &mut entry.meta,
            PresenceMeta {
                meta,
                phx_ref: phx_ref.clone(),
                phx_ref_prev: None,
            },
        );
        entry.meta.phx_ref_prev = Some(old.phx_ref.clone());
        let new = entry.meta.clone();
        let mut diff = Diff::new();
        diff.insert(
            topic.to_string(),
            TopicDiff {
                joins: vec![(key.to_string(), new)],
                leaves: vec![(key.to_string(), old)],
            },
        );
        Ok((phx_ref, diff))
    }

    /// Periodic work (replication heartbeat, down detection). A single node has none.
    pub fn tick(&mut self, _now_ms: u64) -> Output {
        Output::default()
    }

    /// A replication message from node `from`. A single node never gets one.
    pub fn receive(&mut self, _from: &str, _bytes: &[u8], _now_ms: u64) -> Output {
        Output::default()
    }

    /// The meta of a tracked (conn, topic, key).
    pub fn get(&self, conn: ConnId, topic: &str, key: &str) -> Option<&PresenceMeta> {
        self.topics
            .get(topic)?
            .iter()
            .find(|e| e.conn == conn && e.key == key)
            .map(|e| &e.meta)
    }

    /// Everyone tracked in `topic`, in track order.
    pub fn list(&self, topic: &str) -> Vec<(String, PresenceMeta)> {
        self.topics
            .get(topic)
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.meta.clone()))
                    .collect()
            })
            .unwrap_or_default()
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

    #[test]
    fn every_track_gets_a_unique_ref() {
        let mut s = Shard::new(7);
        let (a, _) = s.track(ConnId(1), "t", "k", meta("a")).unwrap();
        let (b, _) = s.track(ConnId(2), "t", "k", meta("a")).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(s.track(ConnId(1), "t", "k", meta("a")), Err(AlreadyTracked));
    }

    #[test]
    fn update_leaves_the_old_meta_and_joins_the_new_with_prev_ref() {
        let mut s = Shard::new(7);
        let (old_ref, _) = s.track(ConnId(1), "t", "k", meta("away")).unwrap();
        let (new_ref, diff) = s.update(ConnId(1), "t", "k", meta("here")).unwrap();
        let d = &diff["t"];
        assert_eq!(d.leaves[0].1.phx_ref, old_ref);
        assert_eq!(d.joins[0].1.phx_ref, new_ref);
        assert_eq!(d.joins[0].1.phx_ref_prev.as_deref(), Some(old_ref.as_str()));
        assert_eq!(s.update(ConnId(2), "t", "k", meta("x")), Err(NoPresence));
    }

    #[test]
    fn untrack_connection_leaves_every_topic() {
        let mut s = Shard::new(7);
        s.track(ConnId(1), "a", "k", meta("x")).unwrap();
        s.track(ConnId(1), "b", "k", meta("x")).unwrap();
        s.track(ConnId(2), "b", "j", meta("x")).unwrap();
        let diff = s.untrack_connection(ConnId(1));
        assert_eq!(diff.len(), 2);
        assert!(s.list("a").is_empty());
        assert_eq!(s.list("b").len(), 1);
    }
}
