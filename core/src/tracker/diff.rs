//! [`Diff`]: the joins and leaves a change produced, per topic, in a deterministic order.

use std::cmp::Ordering;
use std::sync::Arc;

use super::meta::{PhxRef, Presence};
use super::replica::FxHashMap;

/// The presence changes of one operation, grouped by topic.
///
/// Topics are in byte order; inside a topic, joins and leaves are ordered by key and then by
/// `phx_ref`, so every node renders the same diff for the same change. A diff is *net*: a presence
/// that both appeared and disappeared within one call is in neither list, so the joins and leaves
/// of one diff can be applied in any order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Sorted by topic, one entry per topic.
    topics: Vec<(Arc<str>, TopicDiff)>,
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
        let i = self
            .topics
            .binary_search_by(|(t, _)| (**t).cmp(topic))
            .ok()?;
        self.topics.get(i).map(|(_, t)| t)
    }

    /// Every changed topic with its changes, in topic order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &TopicDiff)> {
        self.topics.iter().map(|(topic, t)| (topic, t))
    }

    /// Number of joins plus leaves over all topics.
    pub fn len(&self) -> usize {
        self.topics
            .iter()
            .map(|(_, t)| t.joins.len() + t.leaves.len())
            .sum()
    }

    /// Appends the changes of a later diff. The result is no longer guaranteed net (a join here and
    /// the matching leave later both stay), so apply the parts in order.
    pub fn extend(&mut self, later: Diff) {
        self.topics.extend(later.topics);
        self.topics = merge_topics(std::mem::take(&mut self.topics));
    }
}

/// The first 16 bytes of a key as a big-endian integer, zero-padded: comparing prefixes, then
/// keys, orders exactly like comparing keys, but mostly without a `memcmp`.
pub(crate) fn key_prefix(key: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let b = key.as_bytes();
    let n = b.len().min(16);
    bytes[..n].copy_from_slice(&b[..n]);
    u128::from_be_bytes(bytes)
}

/// Orders two keys whose [`key_prefix`]es are equal, dereferencing them only when one is longer
/// than the prefix: up to 16 bytes, equal prefixes mean one key is the other plus NUL padding.
pub(crate) fn key_tail_cmp(a: &str, b: &str) -> Ordering {
    if a.len() <= 16 && b.len() <= 16 {
        a.len().cmp(&b.len())
    } else {
        a.cmp(b)
    }
}

/// A change's key with its prefix, for sorting without dereferencing keys again.
type Keyed = (u128, Arc<str>, Presence);

fn keyed_cmp(a: &Keyed, b: &Keyed) -> Ordering {
    a.0.cmp(&b.0)
        .then_with(|| key_tail_cmp(&a.1, &b.1))
        .then_with(|| a.2.phx_ref.cmp(&b.2.phx_ref))
}

/// Sorts by key, then `phx_ref`, and drops the prefixes.
fn sorted(mut items: Vec<Keyed>) -> Vec<(Arc<str>, Presence)> {
    // Merges record in index order already; checking is cheaper than sorting.
    if !items.windows(2).all(|w| keyed_cmp(&w[0], &w[1]).is_le()) {
        items.sort_unstable_by(keyed_cmp);
    }
    items.into_iter().map(|(_, key, p)| (key, p)).collect()
}

/// The changes of one topic while a diff is being built.
struct Group {
    topic: Arc<str>,
    joins: Vec<Keyed>,
    leaves: Vec<Keyed>,
}

/// Sorts by topic and folds entries of the same topic together (keeping their order).
fn merge_topics(mut topics: Vec<(Arc<str>, TopicDiff)>) -> Vec<(Arc<str>, TopicDiff)> {
    topics.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(Arc<str>, TopicDiff)> = Vec::with_capacity(topics.len());
    for (topic, t) in topics {
        match out.last_mut() {
            Some((last, acc)) if *last == topic => {
                acc.joins.extend(t.joins);
                acc.leaves.extend(t.leaves);
            }
            _ => out.push((topic, t)),
        }
    }
    out
}

pub(crate) struct Change {
    join: bool,
    prefix: u128,
    topic: Arc<str>,
    key: Arc<str>,
    presence: Presence,
}

/// Collects changes in order; at the end a join and a leave of the same presence (the same
/// `phx_ref`) cancel out.
///
/// Changes are matched by `phx_ref`, not by local slot and counter: a replica that takes a new
/// incarnation numbers its presences from 1 again in the same slot, and those are other presences.
/// Each state operation calls [`begin`](Self::begin) first. One operation never records a presence
/// twice, so cancelling is only needed once changes of several operations are collected.
#[derive(Default)]
pub(crate) struct DiffBuilder {
    changes: Vec<Change>,
    several_operations: bool,
}

impl DiffBuilder {
    /// Starts the changes of one more operation.
    pub(crate) fn begin(&mut self) {
        if !self.changes.is_empty() {
            self.several_operations = true;
        }
    }

    pub(crate) fn record(
        &mut self,
        join: bool,
        topic: &Arc<str>,
        key: &Arc<str>,
        presence: Presence,
    ) {
        self.changes.push(Change {
            join,
            prefix: key_prefix(key),
            topic: topic.clone(),
            key: key.clone(),
            presence,
        });
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        self.changes.reserve(additional);
    }

    /// The net changes, in recording order.
    fn net_changes(self) -> Vec<Change> {
        if !self.several_operations {
            return self.changes;
        }
        // Changes of one presence alternate (shown, hidden, shown…): an even run cancels out, an
        // odd run nets to its last change. Sort small (ref, position) pairs, not the changes.
        let mut order: Vec<(PhxRef, u32)> = self
            .changes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.presence.phx_ref, i as u32))
            .collect();
        order.sort_unstable();
        let mut keep = vec![false; self.changes.len()];
        let mut run_len = 0usize;
        for (n, (phx_ref, i)) in order.iter().enumerate() {
            run_len += 1;
            if order.get(n + 1).is_some_and(|(next, _)| next == phx_ref) {
                continue;
            }
            if run_len % 2 == 1 {
                if let Some(k) = keep.get_mut(*i as usize) {
                    *k = true;
                }
            }
            run_len = 0;
        }
        self.changes
            .into_iter()
            .zip(keep)
            .filter_map(|(c, k)| k.then_some(c))
            .collect()
    }

    pub(crate) fn finish(mut self) -> Diff {
        if self.changes.len() <= 1 {
            // One local operation on one presence: nothing to cancel, group or sort.
            let mut topics = Vec::new();
            if let Some(c) = self.changes.pop() {
                let mut t = TopicDiff::default();
                if c.join {
                    t.joins.push((c.key, c.presence));
                } else {
                    t.leaves.push((c.key, c.presence));
                }
                topics.push((c.topic, t));
            }
            return Diff { topics };
        }
        let changes = self.net_changes();
        // Group by topic allocation (topics are interned; runs of one topic are common), by name
        // only at the end.
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: FxHashMap<usize, usize> = FxHashMap::default();
        let mut last: Option<(usize, usize)> = None;
        for c in changes {
            let ptr = Arc::as_ptr(&c.topic) as *const u8 as usize;
            let i = match last {
                Some((p, i)) if p == ptr => i,
                _ => *group_of.entry(ptr).or_insert_with(|| {
                    groups.push(Group {
                        topic: c.topic.clone(),
                        joins: Vec::new(),
                        leaves: Vec::new(),
                    });
                    groups.len() - 1
                }),
            };
            last = Some((ptr, i));
            if let Some(g) = groups.get_mut(i) {
                let item = (c.prefix, c.key, c.presence);
                if c.join {
                    g.joins.push(item);
                } else {
                    g.leaves.push(item);
                }
            }
        }
        // Fold groups of equal topic names (distinct allocations), in topic order.
        groups.sort_by(|a, b| a.topic.cmp(&b.topic));
        let mut folded: Vec<Group> = Vec::with_capacity(groups.len());
        for g in groups {
            match folded.last_mut() {
                Some(acc) if acc.topic == g.topic => {
                    acc.joins.extend(g.joins);
                    acc.leaves.extend(g.leaves);
                }
                _ => folded.push(g),
            }
        }
        let topics = folded
            .into_iter()
            .map(|g| {
                let t = TopicDiff {
                    joins: sorted(g.joins),
                    leaves: sorted(g.leaves),
                };
                (g.topic, t)
            })
            .collect();
        Diff { topics }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::meta::Meta;

    fn presence(replica_hash: u64, counter: u64) -> Presence {
        Presence {
            meta_json: Meta::empty(),
            phx_ref: PhxRef {
                replica_hash,
                counter,
            },
            phx_ref_prev: None,
        }
    }

    #[test]
    fn a_join_and_a_leave_cancel_only_for_the_same_presence() {
        let topic: Arc<str> = Arc::from("t");
        let key: Arc<str> = Arc::from("k");
        let mut d = DiffBuilder::default();
        d.begin();
        d.record(true, &topic, &key, presence(1, 5));
        d.begin();
        // The same counter under another replica (a new incarnation in the same slot).
        d.record(false, &topic, &key, presence(2, 5));
        d.begin();
        d.record(false, &topic, &key, presence(1, 5));
        let diff = d.finish();
        let t = diff.topic("t").unwrap();
        assert!(t.joins.is_empty());
        assert_eq!(t.leaves.len(), 1);
        assert_eq!(t.leaves[0].1.phx_ref, presence(2, 5).phx_ref);
    }
}
