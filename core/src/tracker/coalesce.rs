//! [`Coalescer`]: presence diffs per topic, held for a short window so that a burst of changes
//! reaches a room's subscribers as one `presence_diff` instead of one per change.
//!
//! A change to a room that sent nothing within its window goes out at once (leading edge), so a
//! quiet room pays no wait; so do the next few changes of a quiet room
//! ([`CoalesceConfig::quiet_burst`] in all), because single changes often come in pairs (a
//! client leaves and another joins, a member joins and then sets its meta) and the second
//! must not wait for the first's window. A change past that, or any change to a busy room,
//! waits until the window since the last send has passed, and every change of the room in
//! between joins it. The window grows with the room's local subscribers (every diff costs one
//! frame per subscriber) up to a cap. A room is quiet again once nothing came for a whole
//! window, or once a window held a single change; a window that held more makes it busy.
//!
//! What is held is *net*: a presence that appears and disappears within a window is in neither
//! list, and one that disappears and comes back (its replica went down and up) too. The joins and
//! leaves sent are then exactly the difference between the room as its subscribers last saw it and
//! the room now, so they can be applied in any order (clients apply joins, then leaves). A meta
//! update stays a leave of the old version and a join of the new one with `phx_ref_prev`, the
//! meta exactly as the shard reported it (so a client ends with the same metas either way).
//!
//! A subscriber that joins while changes are held must start from the room as the others last
//! saw it, or it would see a held change twice or not at all: [`Coalescer::as_sent`] gives that
//! listing. Time is passed in (microseconds); nothing here reads a clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::diff::TopicDiff;
use super::meta::{PhxRef, Presence};
use super::replica::FxHashMap;

/// How long diffs may be held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// The longest window, in microseconds; zero sends every change at once.
    pub max_window_us: u64,
    /// Window per local subscriber of the room, in microseconds: a room with `n` subscribers
    /// holds changes for `n × this` (up to the cap), so its diffs cost at most about one frame
    /// per this many microseconds while changes keep coming.
    pub window_per_subscriber_us: u64,
    /// How many changes a quiet room sends at once, one by one, before it starts holding them
    /// (at least one is always sent at once).
    pub quiet_burst: u32,
}

impl Default for CoalesceConfig {
    /// A 20 ms cap, reached at 2,000 subscribers (10 µs each); a quiet room sends two
    /// changes at once before it holds.
    fn default() -> Self {
        CoalesceConfig {
            max_window_us: 20_000,
            window_per_subscriber_us: 10,
            quiet_burst: 2,
        }
    }
}

/// One version of a presence held in a window, as `(key, presence)`; `None` once cancelled.
type Slot = Option<(Arc<str>, Presence)>;

/// The net changes held for one room.
#[derive(Debug, Default)]
struct Held {
    /// Versions that appeared, in the order they came.
    joins: Vec<Slot>,
    /// Versions that disappeared, in the order they went.
    leaves: Vec<Slot>,
    /// Where each held version is: `true` in `joins`, `false` in `leaves`.
    index: FxHashMap<PhxRef, (bool, usize)>,
    /// How many diffs were absorbed.
    changes: usize,
}

/// Holds one change of a version (`joined`: it appeared, else it disappeared) in `own`, the
/// side it belongs to. The opposite change of the same version held from before cancels
/// out: it came and went (or went and came back), and the subscribers never see either. The
/// same change held twice keeps the first record.
fn hold(
    index: &mut FxHashMap<PhxRef, (bool, usize)>,
    joined: bool,
    own: &mut Vec<Slot>,
    other: &mut [Slot],
    key: Arc<str>,
    presence: Presence,
) {
    match index.remove(&presence.phx_ref) {
        Some((side, i)) if side != joined => {
            if let Some(slot) = other.get_mut(i) {
                *slot = None;
            }
        }
        Some(held) => {
            index.insert(presence.phx_ref, held);
        }
        None => {
            index.insert(presence.phx_ref, (joined, own.len()));
            own.push(Some((key, presence)));
        }
    }
}

impl Held {
    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adds a later diff. Its leaves are taken first: within one diff a version is never both
    /// joined and left, and a leave can only cancel a join held from before.
    fn absorb(&mut self, later: TopicDiff) {
        self.changes += 1;
        for (key, left) in later.leaves {
            hold(
                &mut self.index,
                false,
                &mut self.leaves,
                &mut self.joins,
                key,
                left,
            );
        }
        for (key, joined) in later.joins {
            hold(
                &mut self.index,
                true,
                &mut self.joins,
                &mut self.leaves,
                key,
                joined,
            );
        }
    }

    /// The held changes as one diff: grouped by key (a stable sort, so each key's versions stay
    /// in the order they came, as applying the diffs one by one would append them).
    fn into_diff(self) -> TopicDiff {
        let collect = |slots: Vec<Slot>| {
            let mut out: Vec<(Arc<str>, Presence)> = slots.into_iter().flatten().collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        };
        TopicDiff {
            joins: collect(self.joins),
            leaves: collect(self.leaves),
        }
    }
}

/// One room's window.
#[derive(Debug, Default)]
struct Window {
    held: Held,
    /// When the held changes go out, if any are held.
    deadline: Option<u64>,
    /// When a diff last went out.
    last_sent: Option<u64>,
    /// Nothing came for a whole window, or the last window held a single change: changes go
    /// out at once while `sent_quiet` is below the burst.
    quiet: bool,
    /// Changes sent at once since the room last became quiet.
    sent_quiet: u32,
}

/// The coalescing windows of every room with local subscribers (see the module documentation).
#[derive(Debug, Default)]
pub struct Coalescer {
    config: CoalesceConfig,
    windows: FxHashMap<Arc<str>, Window>,
    /// Deadlines of held windows, earliest first (stale entries are skipped).
    deadlines: BinaryHeap<Reverse<(u64, Arc<str>)>>,
}

impl Coalescer {
    /// No room held yet.
    pub fn new(config: CoalesceConfig) -> Self {
        Coalescer {
            config,
            windows: FxHashMap::default(),
            deadlines: BinaryHeap::new(),
        }
    }

    /// The window of a room with `subscribers` local subscribers, in microseconds.
    pub fn window_us(&self, subscribers: usize) -> u64 {
        let per = self.config.window_per_subscriber_us;
        let n = u64::try_from(subscribers).unwrap_or(u64::MAX);
        n.saturating_mul(per).min(self.config.max_window_us)
    }

    /// A change of `topic`, a room with `subscribers` local subscribers, at `now_us`. Returns
    /// the diff to send now, or `None` if it is held (or cancelled out what was held).
    pub fn push(
        &mut self,
        topic: &Arc<str>,
        diff: TopicDiff,
        subscribers: usize,
        now_us: u64,
    ) -> Option<TopicDiff> {
        if diff.joins.is_empty() && diff.leaves.is_empty() {
            return None;
        }
        let window_us = self.window_us(subscribers);
        let window = match self.windows.get_mut(&**topic) {
            Some(window) => window,
            None => self.windows.entry(topic.clone()).or_default(),
        };
        if window.deadline.is_some() {
            window.held.absorb(diff);
            return None;
        }
        let idle = match window.last_sent {
            Some(last) => now_us >= last.saturating_add(window_us),
            None => true,
        };
        if idle {
            window.quiet = true;
            window.sent_quiet = 0;
        }
        if window.quiet && window.sent_quiet < self.config.quiet_burst.max(1) {
            window.last_sent = Some(now_us);
            window.sent_quiet += 1;
            return Some(diff);
        }
        let deadline = window.last_sent.unwrap_or(now_us).saturating_add(window_us);
        window.held.absorb(diff);
        window.deadline = Some(deadline);
        self.deadlines.push(Reverse((deadline, topic.clone())));
        None
    }

    /// The earliest time a held window is due, if any is held.
    pub fn next_deadline(&mut self) -> Option<u64> {
        while let Some(Reverse((at, topic))) = self.deadlines.peek() {
            match self.windows.get(&**topic) {
                Some(window) if window.deadline == Some(*at) => return Some(*at),
                _ => {
                    self.deadlines.pop();
                }
            }
        }
        None
    }

    /// Takes every window due at `now_us`: the diffs to send now, by topic. A window whose
    /// changes cancelled out gives nothing.
    pub fn due(&mut self, now_us: u64) -> Vec<(Arc<str>, TopicDiff)> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now_us {
                break;
            }
            let Some(Reverse((at, topic))) = self.deadlines.pop() else {
                break;
            };
            let Some(window) = self.windows.get_mut(&*topic) else {
                continue;
            };
            if window.deadline != Some(at) {
                continue;
            }
            window.deadline = None;
            window.last_sent = Some(now_us);
            let held = std::mem::take(&mut window.held);
            window.quiet = held.changes <= 1;
            window.sent_quiet = 0;
            if !held.is_empty() {
                out.push((topic, held.into_diff()));
            }
        }
        out
    }

    /// Forgets a room (its last local subscriber left): what it held is sent to no one.
    pub fn forget(&mut self, topic: &str) {
        self.windows.remove(topic);
    }

    /// True if changes of `topic` are held.
    pub fn is_holding(&self, topic: &str) -> bool {
        self.windows
            .get(topic)
            .is_some_and(|w| w.deadline.is_some())
    }

    /// The room as its subscribers last saw it, from `listing` (the room now, by key then
    /// `phx_ref`, as [`Shard::list`](super::Shard::list) gives it): without the versions
    /// held as joins, with those held as leaves. This is the `presence_state` a new subscriber
    /// gets, so the held diff, sent to it too, applies exactly once.
    pub fn as_sent(
        &self,
        topic: &str,
        listing: Vec<(Arc<str>, Presence)>,
    ) -> Vec<(Arc<str>, Presence)> {
        let Some(window) = self.windows.get(topic).filter(|w| !w.held.is_empty()) else {
            return listing;
        };
        let held = &window.held;
        let mut out: Vec<(Arc<str>, Presence)> = listing
            .into_iter()
            .filter(|(_, p)| !matches!(held.index.get(&p.phx_ref), Some((true, _))))
            .collect();
        let gone = held.leaves.iter().flatten().cloned();
        let before = out.len();
        out.extend(gone);
        if out.len() > before {
            out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.phx_ref.cmp(&b.1.phx_ref)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::{Meta, ReplicaId, Shard, ShardConfig};

    fn shard() -> Shard {
        Shard::new(ReplicaId::new("a", 1), ShardConfig::default(), 0).unwrap()
    }

    fn meta(n: u32) -> Meta {
        Meta::new(&format!(r#"{{"n":{n}}}"#)).unwrap()
    }

    /// The default windows, but a quiet room sends only its first change at once: what the
    /// tests of holding start from.
    fn one_at_once() -> CoalesceConfig {
        CoalesceConfig {
            quiet_burst: 1,
            ..CoalesceConfig::default()
        }
    }

    fn room(diff: crate::tracker::Diff) -> TopicDiff {
        diff.topic("room").cloned().unwrap_or_default()
    }

    fn topic() -> Arc<str> {
        Arc::from("room")
    }

    #[test]
    fn a_change_in_a_quiet_room_goes_out_at_once() {
        let mut s = shard();
        let mut c = Coalescer::new(CoalesceConfig::default());
        let (_, d) = s.track(1, "room", "alice", meta(1)).unwrap();
        assert!(c.push(&topic(), room(d), 1_000, 0).is_some());
        // Long after the window, the next one does too.
        let (_, d) = s.track(2, "room", "bob", meta(1)).unwrap();
        assert!(c.push(&topic(), room(d), 1_000, 1_000_000).is_some());
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn a_burst_is_held_until_the_window_ends_and_goes_out_as_one_diff() {
        let mut s = shard();
        let mut c = Coalescer::new(one_at_once());
        let t = topic();
        let (_, d) = s.track(1, "room", "a", meta(1)).unwrap();
        assert!(c.push(&t, room(d), 100, 0).is_some());
        let window = c.window_us(100);
        assert_eq!(window, 1_000);
        for (i, key) in ["c", "b", "d"].iter().enumerate() {
            let (_, d) = s.track(2 + i as u64, "room", key, meta(1)).unwrap();
            assert!(c.push(&t, room(d), 100, 10 + i as u64).is_none());
        }
        let d = s.untrack(1, "room", "a");
        assert!(c.push(&t, room(d), 100, 20).is_none());
        assert_eq!(c.next_deadline(), Some(window));
        assert!(c.due(window - 1).is_empty());
        let sent = c.due(window);
        assert_eq!(sent.len(), 1);
        let keys: Vec<&str> = sent[0].1.joins.iter().map(|(k, _)| &**k).collect();
        assert_eq!(keys, ["b", "c", "d"]);
        assert_eq!(sent[0].1.leaves.len(), 1);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn a_presence_that_comes_and_goes_within_a_window_is_not_sent() {
        let mut s = shard();
        let mut c = Coalescer::new(one_at_once());
        let t = topic();
        let (_, d) = s.track(1, "room", "a", meta(1)).unwrap();
        c.push(&t, room(d), 100, 0);
        let (_, d) = s.track(2, "room", "b", meta(1)).unwrap();
        assert!(c.push(&t, room(d), 100, 1).is_none());
        let d = s.untrack(2, "room", "b");
        assert!(c.push(&t, room(d), 100, 2).is_none());
        assert!(c.due(10_000).is_empty());
    }

    #[test]
    fn an_update_held_twice_is_one_leave_of_the_version_seen_and_one_join_of_the_last() {
        let mut s = shard();
        let mut c = Coalescer::new(one_at_once());
        let t = topic();
        let (first, d) = s.track(1, "room", "a", meta(1)).unwrap();
        c.push(&t, room(d), 100, 0);
        let (middle, d) = s.update(1, "room", "a", meta(2)).unwrap();
        assert!(c.push(&t, room(d), 100, 1).is_none());
        let (last, d) = s.update(1, "room", "a", meta(3)).unwrap();
        assert!(c.push(&t, room(d), 100, 2).is_none());
        let sent = c.due(10_000).pop().unwrap().1;
        assert_eq!(sent.leaves.len(), 1);
        assert_eq!(sent.leaves[0].1.phx_ref, first);
        assert_eq!(sent.joins.len(), 1);
        assert_eq!(sent.joins[0].1.phx_ref, last);
        assert_eq!(sent.joins[0].1.phx_ref_prev, Some(middle));
    }

    #[test]
    fn a_subscriber_joining_mid_window_starts_from_the_room_as_last_sent() {
        let mut s = shard();
        let mut c = Coalescer::new(one_at_once());
        let t = topic();
        let (_, d) = s.track(1, "room", "a", meta(1)).unwrap();
        c.push(&t, room(d), 100, 0);
        let seen = s.list("room");
        let (_, d) = s.track(2, "room", "b", meta(1)).unwrap();
        c.push(&t, room(d), 100, 1);
        let d = s.untrack(1, "room", "a");
        c.push(&t, room(d), 100, 2);
        assert!(c.is_holding("room"));
        assert_eq!(c.as_sent("room", s.list("room")), seen);
        c.due(10_000);
        assert_eq!(c.as_sent("room", s.list("room")), s.list("room"));
    }

    #[test]
    fn after_a_window_with_one_change_the_next_change_goes_out_at_once() {
        let mut s = shard();
        let mut c = Coalescer::new(one_at_once());
        let t = topic();
        let (_, d) = s.track(1, "room", "a", meta(1)).unwrap();
        c.push(&t, room(d), 100, 0);
        let (_, d) = s.track(2, "room", "b", meta(1)).unwrap();
        assert!(c.push(&t, room(d), 100, 500).is_none());
        assert_eq!(c.due(1_000).len(), 1);
        let (_, d) = s.track(3, "room", "c", meta(1)).unwrap();
        assert!(c.push(&t, room(d), 100, 1_100).is_some());
    }

    #[test]
    fn a_quiet_room_sends_a_pair_of_changes_at_once_and_holds_from_the_third() {
        let mut s = shard();
        let mut c = Coalescer::new(CoalesceConfig::default());
        let t = topic();
        // A leave and a join a moment apart, as when one client replaces another.
        let (_, d) = s.track(1, "room", "a", meta(1)).unwrap();
        assert!(c.push(&t, room(d), 100, 0).is_some());
        let d = s.untrack(1, "room", "a");
        assert!(c.push(&t, room(d), 100, 10).is_some());
        let (_, d) = s.track(2, "room", "b", meta(1)).unwrap();
        assert!(c.push(&t, room(d), 100, 20).is_none(), "the third is held");
        let (_, d) = s.track(3, "room", "c", meta(1)).unwrap();
        assert!(c.push(&t, room(d), 100, 30).is_none());
        // Held until a window after the last send; two changes held: the room is busy.
        assert_eq!(c.next_deadline(), Some(10 + c.window_us(100)));
        assert_eq!(c.due(1_010).len(), 1);
        let (_, d) = s.track(4, "room", "d", meta(1)).unwrap();
        assert!(
            c.push(&t, room(d), 100, 1_020).is_none(),
            "a busy room has no burst"
        );
        assert_eq!(c.due(2_010).len(), 1);
        // A whole window without a change: quiet again.
        let (_, d) = s.track(5, "room", "e", meta(1)).unwrap();
        assert!(c.push(&t, room(d), 100, 3_100).is_some());
    }

    #[test]
    fn a_room_with_few_subscribers_holds_for_microseconds_and_a_big_one_up_to_the_cap() {
        let c = Coalescer::new(CoalesceConfig::default());
        assert_eq!(c.window_us(2), 20);
        assert_eq!(c.window_us(1_000), 10_000);
        assert_eq!(c.window_us(1_000_000), 20_000);
        let off = Coalescer::new(CoalesceConfig {
            max_window_us: 0,
            ..CoalesceConfig::default()
        });
        assert_eq!(off.window_us(1_000), 0);
    }
}

/// The proof that coalescing is invisible to clients: random joins, leaves, updates and a
/// replica's presences hidden and shown again, pushed through a [`Coalescer`] at random times;
/// every subscriber applies what it is sent with `presence`, the phoenix.js algorithm.
#[cfg(test)]
mod proof {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::*;
    use crate::presence::{Diff as ClientDiff, PresenceState};
    use crate::tracker::Meta;

    #[derive(Clone, Debug)]
    enum Step {
        /// A new version under key `n % 6`.
        Join(u8),
        /// The live version at `n % live` leaves.
        Leave(u8),
        /// The live version at `n % live` is replaced by one with another meta.
        Update(u8),
        /// Several changes in one diff, as a merged delta brings them: joins under these keys,
        /// and the live version at `n % live` leaves.
        Batch(Vec<u8>, u8),
        /// The remote replica goes down: its live versions leave.
        Hide,
        /// It comes back: the same versions join again.
        Show,
        /// A new subscriber joins and gets `presence_state`.
        Subscribe,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => any::<u8>().prop_map(Step::Join),
            3 => any::<u8>().prop_map(Step::Leave),
            3 => any::<u8>().prop_map(Step::Update),
            1 => (prop::collection::vec(any::<u8>(), 0..4), any::<u8>())
                .prop_map(|(keys, leave)| Step::Batch(keys, leave)),
            1 => Just(Step::Hide),
            1 => Just(Step::Show),
            1 => Just(Step::Subscribe),
        ]
    }

    /// Time before a step, in microseconds: often within a window, sometimes far after.
    fn gap() -> impl Strategy<Value = u64> {
        prop_oneof![3 => 0u64..30, 2 => 30u64..2_000, 1 => 2_000u64..50_000]
    }

    /// The room as the shard would hold it: live versions (local ones and the remote
    /// replica's) and the remote ones hidden while it is down.
    #[derive(Default)]
    struct Room {
        live: Vec<(Arc<str>, Presence)>,
        hidden: Vec<(Arc<str>, Presence)>,
        counter: u64,
    }

    impl Room {
        fn version(
            &mut self,
            key: &str,
            prev: Option<PhxRef>,
            remote: bool,
        ) -> (Arc<str>, Presence) {
            self.counter += 1;
            let meta = Meta::new(&format!(r#"{{"v":{}}}"#, self.counter)).unwrap();
            let presence = Presence {
                meta_json: meta,
                phx_ref: PhxRef {
                    replica_hash: u64::from(remote),
                    counter: self.counter,
                },
                phx_ref_prev: prev,
            };
            (Arc::from(key), presence)
        }

        fn take_live(&mut self, n: u8) -> Option<(Arc<str>, Presence)> {
            if self.live.is_empty() {
                return None;
            }
            let i = usize::from(n) % self.live.len();
            Some(self.live.remove(i))
        }

        /// Applies a step; the diff the shard would report (net, by key then `phx_ref`).
        fn apply(&mut self, step: &Step) -> TopicDiff {
            let mut diff = TopicDiff::default();
            match step {
                Step::Join(n) => {
                    let v = self.version(&format!("k{}", n % 6), None, n % 3 == 0);
                    self.live.push(v.clone());
                    diff.joins.push(v);
                }
                Step::Leave(n) => diff.leaves.extend(self.take_live(*n)),
                Step::Update(n) => {
                    if let Some(old) = self.take_live(*n) {
                        let remote = old.1.phx_ref.replica_hash == 1;
                        let new = self.version(&old.0, Some(old.1.phx_ref), remote);
                        self.live.push(new.clone());
                        diff.leaves.push(old);
                        diff.joins.push(new);
                    }
                }
                Step::Batch(keys, leave) => {
                    diff.leaves.extend(self.take_live(*leave));
                    for n in keys {
                        let v = self.version(&format!("k{}", n % 6), None, true);
                        self.live.push(v.clone());
                        diff.joins.push(v);
                    }
                }
                Step::Hide => {
                    let (remote, local): (Vec<_>, Vec<_>) = std::mem::take(&mut self.live)
                        .into_iter()
                        .partition(|(_, p)| p.phx_ref.replica_hash == 1);
                    self.live = local;
                    self.hidden.extend(remote.iter().cloned());
                    diff.leaves = remote;
                }
                Step::Show => {
                    let back = std::mem::take(&mut self.hidden);
                    self.live.extend(back.iter().cloned());
                    diff.joins = back;
                }
                Step::Subscribe => {}
            }
            let order = |a: &(Arc<str>, Presence), b: &(Arc<str>, Presence)| {
                a.0.cmp(&b.0).then_with(|| a.1.phx_ref.cmp(&b.1.phx_ref))
            };
            diff.joins.sort_by(order);
            diff.leaves.sort_by(order);
            diff
        }

        /// What the shard's `list` gives: by key, then `phx_ref`.
        fn listing(&self) -> Vec<(Arc<str>, Presence)> {
            let mut out = self.live.clone();
            out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.phx_ref.cmp(&b.1.phx_ref)));
            out
        }
    }

    /// Presences grouped by key as a `presence_state` (and a diff's halves) carries them.
    fn grouped(listing: &[(Arc<str>, Presence)]) -> Value {
        let mut out = Map::new();
        for (key, p) in listing {
            let meta: Value = serde_json::from_str(&p.meta_with_refs()).unwrap();
            let slot = out
                .entry(key.to_string())
                .or_insert_with(|| serde_json::json!({"metas": []}));
            slot["metas"].as_array_mut().unwrap().push(meta);
        }
        Value::Object(out)
    }

    fn refs(state: &PresenceState) -> BTreeSet<String> {
        state
            .iter()
            .flat_map(|(_, p)| p.metas().iter())
            .map(|m| m["phx_ref"].as_str().unwrap().to_string())
            .collect()
    }

    /// A client: its state, and whether every diff it got applied exactly (each join names a
    /// version it does not hold, each leave one it holds).
    struct Client {
        state: PresenceState,
    }

    impl Client {
        fn new(listing: &[(Arc<str>, Presence)]) -> Client {
            let mut state = PresenceState::new();
            state.sync_state(PresenceState::from_json(grouped(listing)).unwrap());
            Client { state }
        }

        fn receive(&mut self, diff: &TopicDiff) -> Result<(), TestCaseError> {
            let held = refs(&self.state);
            for (_, p) in &diff.joins {
                prop_assert!(
                    !held.contains(&p.phx_ref.to_string()),
                    "joined twice: {p:?}"
                );
            }
            for (_, p) in &diff.leaves {
                prop_assert!(held.contains(&p.phx_ref.to_string()), "left unseen: {p:?}");
            }
            let payload = serde_json::json!({
                "joins": grouped(&diff.joins),
                "leaves": grouped(&diff.leaves),
            });
            self.state
                .sync_diff(ClientDiff::from_json(payload).unwrap());
            Ok(())
        }

        /// The state with each key's metas in `phx_ref` order: a client that got one merged
        /// diff may hold a key's metas in another order than one that got each change.
        fn normalized(&self) -> BTreeMap<String, Vec<String>> {
            self.state
                .iter()
                .map(|(k, p)| {
                    let mut metas: Vec<String> = p.metas().iter().map(Value::to_string).collect();
                    metas.sort();
                    (k.to_string(), metas)
                })
                .collect()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn coalesced_diffs_give_every_subscriber_the_state_of_the_diffs_one_by_one(
            steps in prop::collection::vec((gap(), step(), any::<bool>()), 1..80),
            subscribers in prop_oneof![Just(1usize), Just(100), Just(1_000), Just(100_000)],
        ) {
            let topic: Arc<str> = Arc::from("room");
            let mut room = Room::default();
            let mut coalescer = Coalescer::new(CoalesceConfig::default());
            // Applies every diff as the shard reports it.
            let mut one_by_one = Client::new(&[]);
            // Subscribed from the start, and those that join on the way.
            let mut clients = vec![Client::new(&[])];
            let mut now = 0u64;
            for (gap, step, timer_first) in &steps {
                now += gap;
                // The server's loop may see a due window before or after the next change.
                if *timer_first {
                    for (_, sent) in coalescer.due(now) {
                        for c in &mut clients {
                            c.receive(&sent)?;
                        }
                    }
                }
                if let Step::Subscribe = step {
                    clients.push(Client::new(&coalescer.as_sent(&topic, room.listing())));
                    continue;
                }
                let diff = room.apply(step);
                if diff.joins.is_empty() && diff.leaves.is_empty() {
                    continue;
                }
                one_by_one.receive(&diff)?;
                if let Some(sent) = coalescer.push(&topic, diff, subscribers, now) {
                    for c in &mut clients {
                        c.receive(&sent)?;
                    }
                }
            }
            for (_, sent) in coalescer.due(u64::MAX) {
                for c in &mut clients {
                    c.receive(&sent)?;
                }
            }
            prop_assert_eq!(coalescer.next_deadline(), None);
            let expected = Client::new(&room.listing()).normalized();
            prop_assert_eq!(&one_by_one.normalized(), &expected);
            for c in &clients {
                prop_assert_eq!(&c.normalized(), &expected);
            }
        }
    }
}
