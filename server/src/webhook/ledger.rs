//! The webhook ledger: what this node sees in the cluster (its view, fed by the tracker's
//! diffs) against what the receiver has been told (the reported state, replicated to every
//! webhook node), and the events that close the gap.
//!
//! Sans-IO: time comes in as unix milliseconds, ids from the caller. The node that sends
//! ([`Ledger::emit`]) compares, per topic, the keys present in its view with the keys reported
//! present: a key present and not reported is `member_added` (after `room_occupied` if the room
//! was reported empty); a key reported and absent from the view for the grace period is
//! `member_removed` (then `room_vacated` when none is left). A key that comes back within the
//! grace period (a page reload) cancels its removal: nothing is sent.
//!
//! Every node applies every event it hears of ([`Ledger::apply`]), its own and the sender's,
//! last write wins per entry (by `at`, then `id`), so any node can take over from the sender
//! with the receiver's state in hand. An entry that says "absent" (a tombstone) is kept for a
//! while so a late or partitioned copy cannot bring the entry back.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use rollcall_core::tracker::{Presence, TopicDiff};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tracker::meta_map;

/// The four event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A key's first meta in a topic appeared.
    MemberAdded,
    /// A key's last meta in a topic went away (and stayed away for the grace period).
    MemberRemoved,
    /// A topic got its first member.
    RoomOccupied,
    /// A topic's last member was removed.
    RoomVacated,
}

/// One webhook event, as the receiver gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable across retries and across nodes: de-duplicate on it.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The topic.
    pub topic: String,
    /// The member's key (`null` for room events).
    pub key: Option<String>,
    /// The member's meta: the first one for `member_added`, the last one for `member_removed`
    /// (`null` for room events).
    pub meta: Option<Value>,
    /// When it happened, unix milliseconds (for `member_removed`, when the key left).
    pub at: u64,
}

impl Event {
    fn present(&self) -> bool {
        matches!(self.kind, Kind::MemberAdded | Kind::RoomOccupied)
    }

    /// Whether this event's entry is newer than `(at, id)`.
    fn newer_than(&self, at: u64, id: &str) -> bool {
        (self.at, self.id.as_str()) > (at, id)
    }
}

/// What the receiver was last told of one entry.
#[derive(Debug, Clone, PartialEq)]
struct Told {
    present: bool,
    at: u64,
    id: String,
    meta: Option<Value>,
}

/// A key reported present but absent from the view, waiting out the grace period.
#[derive(Debug, Clone, PartialEq)]
struct Absent {
    since: u64,
    meta: Option<Value>,
}

#[derive(Debug, Default)]
struct Topic {
    /// This node's view: the metas of each key present.
    view: HashMap<Arc<str>, Vec<Presence>>,
    /// The reported state of each key.
    members: HashMap<Arc<str>, Told>,
    /// How many `members` are reported present.
    present: usize,
    /// The reported state of the room itself.
    room: Option<Told>,
    /// Keys reported present and absent from the view.
    absent: HashMap<Arc<str>, Absent>,
    /// Keys whose view or reported state changed since the last [`Ledger::emit`].
    dirty: BTreeSet<Arc<str>>,
}

impl Topic {
    fn is_empty(&self) -> bool {
        self.view.is_empty() && self.members.is_empty() && self.room.is_none()
    }

    fn reported_present(&self, key: &str) -> bool {
        self.members.get(key).is_some_and(|t| t.present)
    }

    fn occupied(&self) -> bool {
        self.room.as_ref().is_some_and(|r| r.present)
    }

    /// Replaces the reported state of `key`, keeping the count of present keys.
    fn set_member(&mut self, key: &Arc<str>, told: Told) {
        let was = self.reported_present(key);
        match (was, told.present) {
            (false, true) => self.present += 1,
            (true, false) => self.present -= 1,
            _ => {}
        }
        self.members.insert(key.clone(), told);
    }
}

/// The ledger of one node.
#[derive(Debug)]
pub struct Ledger {
    topics: HashMap<Arc<str>, Topic>,
    grace_ms: u64,
    /// Every pending removal by the time it is due.
    deadlines: BTreeSet<(u64, Arc<str>, Arc<str>)>,
    /// Entries that became "absent", oldest first, to forget them after a while.
    tombstones: VecDeque<(u64, Arc<str>, Option<Arc<str>>)>,
}

impl Ledger {
    /// An empty ledger whose removals wait `grace_ms`.
    pub fn new(grace_ms: u64) -> Self {
        Ledger {
            topics: HashMap::new(),
            grace_ms,
            deadlines: BTreeSet::new(),
            tombstones: VecDeque::new(),
        }
    }

    /// Keeps the absence of `key` in step with the view and the reported state: reported
    /// present and not in the view is absent (since `now` unless already known, with `meta`
    /// or the reported one), anything else is not.
    fn observe(&mut self, topic: &Arc<str>, key: &Arc<str>, now: u64, meta: Option<Value>) {
        let grace = self.grace_ms;
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let absent = !t.view.contains_key(key) && t.reported_present(key);
        match (absent, t.absent.contains_key(key)) {
            (true, false) => {
                let meta = meta.or_else(|| t.members.get(key).and_then(|m| m.meta.clone()));
                t.absent.insert(key.clone(), Absent { since: now, meta });
                self.deadlines
                    .insert((now.saturating_add(grace), topic.clone(), key.clone()));
            }
            (false, true) => {
                if let Some(a) = t.absent.remove(key) {
                    self.deadlines.remove(&(
                        a.since.saturating_add(grace),
                        topic.clone(),
                        key.clone(),
                    ));
                }
            }
            _ => {}
        }
    }

    fn drop_if_empty(&mut self, topic: &Arc<str>) {
        if self.topics.get(topic).is_some_and(Topic::is_empty) {
            self.topics.remove(topic);
        }
    }

    /// Applies one change of this node's view of `topic` at `now`.
    pub fn apply_diff(&mut self, topic: &Arc<str>, diff: &TopicDiff, now: u64) {
        let t = self.topics.entry(topic.clone()).or_default();
        let mut touched: Vec<(Arc<str>, Option<Value>)> = Vec::new();
        for (key, p) in &diff.joins {
            t.view.entry(key.clone()).or_default().push(p.clone());
            t.dirty.insert(key.clone());
            touched.push((key.clone(), None));
        }
        for (key, p) in &diff.leaves {
            let Some(metas) = t.view.get_mut(key) else {
                continue;
            };
            metas.retain(|m| m.phx_ref != p.phx_ref);
            if metas.is_empty() {
                t.view.remove(key);
                t.dirty.insert(key.clone());
                // The last meta that left is the one a `member_removed` carries.
                touched.push((key.clone(), Some(Value::Object(meta_map(p)))));
            }
        }
        for (key, meta) in touched {
            self.observe(topic, &key, now, meta);
        }
        self.drop_if_empty(topic);
    }

    /// Applies an event to the reported state if it is newer than what the entry holds (last
    /// write wins); returns whether it changed anything.
    pub fn apply(&mut self, event: &Event, now: u64) -> bool {
        let topic: Arc<str> = event.topic.as_str().into();
        let t = self.topics.entry(topic.clone()).or_default();
        let key: Option<Arc<str>> = match (&event.key, event.kind) {
            (Some(key), Kind::MemberAdded | Kind::MemberRemoved) => Some(key.as_str().into()),
            (None, Kind::RoomOccupied | Kind::RoomVacated) => None,
            _ => {
                self.drop_if_empty(&topic);
                return false;
            }
        };
        let current = match &key {
            Some(key) => t.members.get(key),
            None => t.room.as_ref(),
        };
        if current.is_some_and(|c| !event.newer_than(c.at, &c.id)) {
            self.drop_if_empty(&topic);
            return false;
        }
        let told = Told {
            present: event.present(),
            at: event.at,
            id: event.id.clone(),
            meta: event.meta.clone(),
        };
        if !told.present {
            self.tombstones
                .push_back((event.at, topic.clone(), key.clone()));
        }
        match &key {
            Some(key) => {
                t.set_member(key, told);
                t.dirty.insert(key.clone());
                self.observe(&topic, key, now, None);
            }
            None => t.room = Some(told),
        }
        true
    }

    /// Marks every key of every topic for the next [`Ledger::emit`] (a node that starts
    /// sending checks everything once).
    pub fn mark_all(&mut self) {
        for t in self.topics.values_mut() {
            let keys: Vec<Arc<str>> = t.view.keys().chain(t.members.keys()).cloned().collect();
            t.dirty.extend(keys);
        }
    }

    /// The events that bring the reported state of `topic` to this node's view at `now`, at
    /// most `budget` of them (in order; the rest on a later call), each applied as it is made.
    /// Returns them and whether the topic is up to date (nothing held back by the budget).
    pub fn emit(
        &mut self,
        topic: &Arc<str>,
        now: u64,
        budget: usize,
        new_id: &mut dyn FnMut() -> String,
    ) -> (Vec<Event>, bool) {
        let grace = self.grace_ms;
        let Some(t) = self.topics.get_mut(topic) else {
            return (Vec::new(), true);
        };
        let mut out: Vec<Event> = Vec::new();
        let mut tombstones = Vec::new();
        let mut make = |t: &mut Topic, kind: Kind, key: Option<&Arc<str>>, meta, at: u64| {
            // Our own event must win over the entry it replaces, whatever the clocks say.
            let told = match key {
                Some(key) => t.members.get(key),
                None => t.room.as_ref(),
            };
            let at = told.map_or(at, |told| at.max(told.at + 1));
            let event = Event {
                id: new_id(),
                kind,
                topic: topic.to_string(),
                key: key.map(|k| k.to_string()),
                meta,
                at,
            };
            let slot = Told {
                present: event.present(),
                at,
                id: event.id.clone(),
                meta: event.meta.clone(),
            };
            if !slot.present {
                tombstones.push((at, topic.clone(), key.cloned()));
            }
            match key {
                Some(key) => t.set_member(key, slot),
                None => t.room = Some(slot),
            }
            event
        };
        let mut complete = true;
        let dirty: Vec<Arc<str>> = t.dirty.iter().cloned().collect();
        for key in dirty {
            if t.view.contains_key(&key) && !t.reported_present(&key) {
                let need = if t.occupied() { 1 } else { 2 };
                if out.len() + need > budget {
                    complete = false;
                    break;
                }
                if !t.occupied() {
                    out.push(make(t, Kind::RoomOccupied, None, None, now));
                }
                let meta = t
                    .view
                    .get(&key)
                    .and_then(|metas| metas.first())
                    .map(|p| Value::Object(meta_map(p)));
                out.push(make(t, Kind::MemberAdded, Some(&key), meta, now));
            }
            t.dirty.remove(&key);
        }
        let mut due: Vec<(Arc<str>, Absent)> = t
            .absent
            .iter()
            .filter(|(_, a)| now >= a.since.saturating_add(grace))
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        let mut last_removal = None;
        for (key, absent) in due {
            if !complete || out.len() + 1 > budget {
                complete = false;
                break;
            }
            let event = make(
                t,
                Kind::MemberRemoved,
                Some(&key),
                absent.meta,
                absent.since,
            );
            last_removal = Some(event.at);
            out.push(event);
            t.absent.remove(&key);
            self.deadlines
                .remove(&(absent.since.saturating_add(grace), topic.clone(), key));
        }
        let present = t.present > 0;
        if complete && present != t.occupied() && (present || t.room.is_some()) {
            if out.len() + 1 > budget {
                complete = false;
            } else {
                let (kind, at) = if present {
                    (Kind::RoomOccupied, now)
                } else {
                    (Kind::RoomVacated, last_removal.unwrap_or(now))
                };
                out.push(make(t, kind, None, None, at));
            }
        }
        self.tombstones.extend(tombstones);
        (out, complete)
    }

    /// The earliest time a pending removal becomes due, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.deadlines.first().map(|(at, _, _)| *at)
    }

    /// Topics with a removal due at `now`.
    pub fn due(&self, now: u64) -> Vec<Arc<str>> {
        let mut topics: Vec<Arc<str>> = self
            .deadlines
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .map(|(_, topic, _)| topic.clone())
            .collect();
        topics.dedup();
        topics
    }

    /// Every topic this node knows of (in its view or reported).
    pub fn topics(&self) -> Vec<Arc<str>> {
        self.topics.keys().cloned().collect()
    }

    /// The reported state as the latest event of each entry, for a peer to merge.
    pub fn snapshot(&self) -> Vec<Event> {
        let mut out = Vec::new();
        for (topic, t) in &self.topics {
            let entries = t
                .members
                .iter()
                .map(|(key, told)| (Some(key), told))
                .chain(t.room.iter().map(|told| (None, told)));
            for (key, told) in entries {
                let kind = match (key.is_some(), told.present) {
                    (true, true) => Kind::MemberAdded,
                    (true, false) => Kind::MemberRemoved,
                    (false, true) => Kind::RoomOccupied,
                    (false, false) => Kind::RoomVacated,
                };
                out.push(Event {
                    id: told.id.clone(),
                    kind,
                    topic: topic.to_string(),
                    key: key.map(|k| k.to_string()),
                    meta: told.meta.clone(),
                    at: told.at,
                });
            }
        }
        out
    }

    /// Forgets entries reported absent before `before` (tombstones old enough that no copy of
    /// what they replaced can still arrive), and topics left with nothing.
    pub fn forget_absent_before(&mut self, before: u64) {
        while let Some((at, topic, key)) = self.tombstones.front().cloned() {
            if at >= before {
                break;
            }
            self.tombstones.pop_front();
            let Some(t) = self.topics.get_mut(&topic) else {
                continue;
            };
            // Only if the entry is still that tombstone.
            match &key {
                Some(key) => {
                    if t.members.get(key).is_some_and(|m| !m.present && m.at == at) {
                        t.members.remove(key);
                    }
                }
                None => {
                    if t.room.as_ref().is_some_and(|r| !r.present && r.at == at) {
                        t.room = None;
                    }
                }
            }
            self.drop_if_empty(&topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_core::tracker::{Meta, ReplicaId, Shard, ShardConfig};

    /// A shard to make real presences and diffs with.
    struct World {
        shard: Shard,
        conn: u64,
    }

    impl World {
        fn new() -> Self {
            World {
                shard: Shard::new(ReplicaId::new("n", 1), ShardConfig::default(), 0).unwrap(),
                conn: 0,
            }
        }

        /// Tracks `key` in `topic` on a new connection; returns the diff and the connection.
        fn join(&mut self, topic: &str, key: &str) -> (TopicDiff, u64) {
            self.conn += 1;
            let meta = Meta::new(&format!(r#"{{"k":"{key}","c":{}}}"#, self.conn)).unwrap();
            let (_, diff) = self.shard.track(self.conn, topic, key, meta).unwrap();
            (diff.topic(topic).cloned().unwrap(), self.conn)
        }

        fn leave(&mut self, conn: u64) -> TopicDiff {
            let diff = self.shard.untrack_connection(conn);
            let topic = diff.iter().next().map(|(_, d)| d.clone()).unwrap();
            topic
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("e{n}")
        }
    }

    fn kinds(events: &[Event]) -> Vec<(Kind, Option<&str>)> {
        events.iter().map(|e| (e.kind, e.key.as_deref())).collect()
    }

    const GRACE: u64 = 1_000;

    #[test]
    fn a_first_member_occupies_the_room_and_the_last_vacates_it_after_the_grace_period() {
        let mut w = World::new();
        let mut ledger = Ledger::new(GRACE);
        let mut id = ids();
        let topic: Arc<str> = "room:a".into();
        let (d, alice) = w.join("room:a", "alice");
        ledger.apply_diff(&topic, &d, 100);
        let (events, done) = ledger.emit(&topic, 100, 10, &mut id);
        assert!(done);
        assert_eq!(
            kinds(&events),
            vec![
                (Kind::RoomOccupied, None),
                (Kind::MemberAdded, Some("alice"))
            ]
        );
        assert_eq!(events[1].meta.as_ref().unwrap()["k"], "alice");
        assert!(events[1].meta.as_ref().unwrap()["phx_ref"].is_string());
        // A second meta of the same key is not an event.
        let (d, alice2) = w.join("room:a", "alice");
        ledger.apply_diff(&topic, &d, 150);
        assert!(ledger.emit(&topic, 150, 10, &mut id).0.is_empty());
        ledger.apply_diff(&topic, &w.leave(alice), 200);
        assert!(ledger.emit(&topic, 200, 10, &mut id).0.is_empty());
        // The last meta leaves: nothing until the grace period has passed.
        ledger.apply_diff(&topic, &w.leave(alice2), 300);
        assert!(ledger
            .emit(&topic, 300 + GRACE - 1, 10, &mut id)
            .0
            .is_empty());
        assert_eq!(ledger.next_due(), Some(300 + GRACE));
        assert_eq!(ledger.due(300 + GRACE), vec![topic.clone()]);
        let (events, _) = ledger.emit(&topic, 300 + GRACE, 10, &mut id);
        assert_eq!(
            kinds(&events),
            vec![
                (Kind::MemberRemoved, Some("alice")),
                (Kind::RoomVacated, None)
            ]
        );
        // Removal carries the last meta and the time the key left.
        assert_eq!(events[0].meta.as_ref().unwrap()["c"], 2);
        assert_eq!((events[0].at, events[1].at), (300, 300));
        assert_eq!(ledger.next_due(), None);
    }

    #[test]
    fn a_key_back_within_the_grace_period_sends_nothing() {
        let mut w = World::new();
        let mut ledger = Ledger::new(GRACE);
        let mut id = ids();
        let topic: Arc<str> = "room:r".into();
        let (d, tab) = w.join("room:r", "u");
        ledger.apply_diff(&topic, &d, 0);
        assert_eq!(ledger.emit(&topic, 0, 10, &mut id).0.len(), 2);
        ledger.apply_diff(&topic, &w.leave(tab), 10);
        let (d, _) = w.join("room:r", "u");
        ledger.apply_diff(&topic, &d, 500);
        assert!(ledger.emit(&topic, 500, 10, &mut id).0.is_empty());
        assert!(ledger.emit(&topic, 5_000, 10, &mut id).0.is_empty());
        assert_eq!(ledger.next_due(), None);
    }

    #[test]
    fn a_budget_holds_events_back_in_order_for_a_later_call() {
        let mut w = World::new();
        let mut ledger = Ledger::new(GRACE);
        let mut id = ids();
        let topic: Arc<str> = "room:b".into();
        for key in ["a", "b", "c"] {
            let (d, _) = w.join("room:b", key);
            ledger.apply_diff(&topic, &d, 0);
        }
        let (first, done) = ledger.emit(&topic, 0, 2, &mut id);
        assert!(!done);
        assert_eq!(
            kinds(&first),
            vec![(Kind::RoomOccupied, None), (Kind::MemberAdded, Some("a"))]
        );
        let (rest, done) = ledger.emit(&topic, 0, 10, &mut id);
        assert!(done);
        assert_eq!(
            kinds(&rest),
            vec![
                (Kind::MemberAdded, Some("b")),
                (Kind::MemberAdded, Some("c"))
            ]
        );
    }

    #[test]
    fn a_node_that_applied_the_senders_events_takes_over_where_it_stopped() {
        let mut w = World::new();
        let mut sender = Ledger::new(GRACE);
        let mut follower = Ledger::new(GRACE);
        let mut id = ids();
        let topic: Arc<str> = "room:t".into();
        let (d, a) = w.join("room:t", "a");
        sender.apply_diff(&topic, &d, 0);
        follower.apply_diff(&topic, &d, 0);
        for e in sender.emit(&topic, 0, 10, &mut id).0 {
            assert!(follower.apply(&e, 0));
            assert!(!follower.apply(&e, 0), "applying twice changes nothing");
        }
        // The follower sends nothing already told...
        assert!(follower.emit(&topic, 0, 10, &mut id).0.is_empty());
        // ...and, once the sender is gone, what it had not told yet.
        let (d, _) = w.join("room:t", "b");
        follower.apply_diff(&topic, &d, 50);
        follower.apply_diff(&topic, &w.leave(a), 60);
        let (events, _) = follower.emit(&topic, 60 + GRACE, 10, &mut id);
        assert_eq!(
            kinds(&events),
            vec![
                (Kind::MemberAdded, Some("b")),
                (Kind::MemberRemoved, Some("a"))
            ]
        );
    }

    #[test]
    fn last_write_wins_per_entry_and_a_snapshot_merges_into_the_same_state() {
        let mut a = Ledger::new(GRACE);
        let event = |id: &str, kind, at| Event {
            id: id.into(),
            kind,
            topic: "room:x".into(),
            key: Some("k".into()),
            meta: None,
            at,
        };
        assert!(a.apply(&event("2", Kind::MemberAdded, 10), 0));
        assert!(
            !a.apply(&event("1", Kind::MemberRemoved, 9), 0),
            "older loses"
        );
        assert!(a.apply(&event("3", Kind::MemberRemoved, 11), 0));
        assert!(
            !a.apply(&event("1", Kind::MemberAdded, 11), 0),
            "same time: the larger id wins"
        );
        let mut b = Ledger::new(GRACE);
        for e in a.snapshot() {
            b.apply(&e, 0);
        }
        assert_eq!(b.snapshot(), a.snapshot());
        // Tombstones are forgotten once old enough; present entries never.
        a.forget_absent_before(12);
        assert!(a.snapshot().is_empty());
    }

    #[test]
    fn a_takeover_removes_reported_members_it_never_saw_after_the_grace_period() {
        // The new sender merged the old sender's state but has no such member in its view
        // (the old sender's node died with its members).
        let mut ledger = Ledger::new(GRACE);
        let mut id = ids();
        let topic: Arc<str> = "room:d".into();
        for e in [
            Event {
                id: "x1".into(),
                kind: Kind::RoomOccupied,
                topic: "room:d".into(),
                key: None,
                meta: None,
                at: 5,
            },
            Event {
                id: "x2".into(),
                kind: Kind::MemberAdded,
                topic: "room:d".into(),
                key: Some("gone".into()),
                meta: Some(serde_json::json!({"m": 1})),
                at: 5,
            },
        ] {
            ledger.apply(&e, 100);
        }
        assert!(ledger
            .emit(&topic, 100 + GRACE - 1, 10, &mut id)
            .0
            .is_empty());
        let (events, _) = ledger.emit(&topic, 100 + GRACE, 10, &mut id);
        assert_eq!(
            kinds(&events),
            vec![
                (Kind::MemberRemoved, Some("gone")),
                (Kind::RoomVacated, None)
            ]
        );
        assert_eq!(events[0].meta, Some(serde_json::json!({"m": 1})));
    }
}
