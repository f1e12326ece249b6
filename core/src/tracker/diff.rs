//! [`Diff`]: the joins and leaves a change produced, per topic, in a deterministic order.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::meta::Presence;
use super::replica::FxHashMap;
use super::state::Dot;

/// The presence changes of one operation, grouped by topic.
///
/// Topics are in byte order; inside a topic, joins and leaves are ordered by key and then by
/// `phx_ref`, so every node renders the same diff for the same change. A diff is *net*: a presence
/// that both appeared and disappeared within one call is in neither list, so the joins and leaves
/// of one diff can be applied in any order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    topics: BTreeMap<Arc<str>, TopicDiff>,
}

/// The joins and leaves of one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicDiff {
    /// Presences that became visible, as `(key, presence)`.
    pub joins: Vec<(Arc<str>, Presence)>,
    /// Presences that stopped being visible, as `(key, presence)`.
    pub leaves: Vec<(Arc<str>, Presence)>,
}

impl Diff {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The changes of one topic, if any.
    pub fn topic(&self, topic: &str) -> Option<&TopicDiff> {
        self.topics.get(topic)
    }

    /// Every changed topic with its changes, in topic order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &TopicDiff)> {
        self.topics.iter()
    }

    /// Number of joins plus leaves over all topics.
    pub fn len(&self) -> usize {
        self.topics
            .values()
            .map(|t| t.joins.len() + t.leaves.len())
            .sum()
    }

    /// Appends the changes of a later diff. The result is no longer guaranteed net (a join here and
    /// the matching leave later both stay), so apply the parts in order.
    pub fn extend(&mut self, later: Diff) {
        for (topic, t) in later.topics {
            let entry = self.topics.entry(topic).or_default();
            entry.joins.extend(t.joins);
            entry.leaves.extend(t.leaves);
        }
    }
}

pub(crate) struct Change {
    join: bool,
    topic: Arc<str>,
    key: Arc<str>,
    presence: Presence,
}

/// Collects changes keyed by dot; a join and a leave of the same dot cancel out.
#[derive(Default)]
pub(crate) struct DiffBuilder {
    changes: FxHashMap<Dot, Change>,
}

impl DiffBuilder {
    pub(crate) fn record(
        &mut self,
        dot: Dot,
        join: bool,
        topic: &Arc<str>,
        key: &Arc<str>,
        presence: Presence,
    ) {
        use std::collections::hash_map::Entry;
        match self.changes.entry(dot) {
            Entry::Occupied(e) => {
                if e.get().join != join {
                    e.remove();
                }
            }
            Entry::Vacant(e) => {
                e.insert(Change {
                    join,
                    topic: topic.clone(),
                    key: key.clone(),
                    presence,
                });
            }
        }
    }

    pub(crate) fn finish(self) -> Diff {
        let mut topics: BTreeMap<Arc<str>, TopicDiff> = BTreeMap::new();
        for (_, c) in self.changes {
            let t = topics.entry(c.topic).or_default();
            if c.join {
                t.joins.push((c.key, c.presence));
            } else {
                t.leaves.push((c.key, c.presence));
            }
        }
        for t in topics.values_mut() {
            t.joins
                .sort_by(|a, b| (&a.0, a.1.phx_ref).cmp(&(&b.0, b.1.phx_ref)));
            t.leaves
                .sort_by(|a, b| (&a.0, a.1.phx_ref).cmp(&(&b.0, b.1.phx_ref)));
        }
        Diff { topics }
    }
}
