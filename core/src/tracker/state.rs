//! [`State`]: the presence CRDT — an add-wins observed-remove set of presences with a dot context.
//!
//! Every local change consumes *dots* `(replica, counter)` numbered 1, 2, 3… by the replica that
//! owns the presence. A dot is *observed* once it is covered by the context (all counters up to
//! `context[r]`) or sits in the cloud (seen out of order). A presence exists iff its dot is
//! observed and its element is stored; an observed dot without an element means "added, then
//! removed". Merging takes the union of observed dots; an element survives unless the other side
//! observed its dot and does not have it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::Hasher;
use std::sync::Arc;

use super::diff::{key_prefix, key_tail_cmp, Diff, DiffBuilder};
use super::message::{Clock, PayloadKind, StatePayload, WireElement};
use super::meta::{mix64, replica_hash, Meta, PhxRef, Presence};
use super::replica::{FxHashMap, FxHashSet, FxHasher, ReplicaId, ReplicaStatus};

/// Index of a replica in one state's replica table (never sent over the wire).
pub(crate) type Rx = u32;
/// The local replica is always slot 0.
pub(crate) const ME: Rx = 0;

/// One event of one replica: `(replica, counter)`; counters start at 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) struct Dot {
    pub(crate) r: Rx,
    pub(crate) c: u64,
}

/// A stored presence. Its owner is the dot's replica.
#[derive(Clone, Debug)]
pub(crate) struct Element {
    pub(crate) topic: Arc<str>,
    pub(crate) key: Arc<str>,
    pub(crate) conn: u64,
    pub(crate) meta: Meta,
    /// After an update: the counter of the dot this element replaced (same replica).
    pub(crate) prev: Option<u64>,
}

impl Element {
    /// A hash of this element as the one created at `counter`, for the per-replica digests.
    fn hash(&self, counter: u64) -> u64 {
        let mut h = FxHasher::default();
        h.write_u64(counter);
        h.write_u64(self.conn);
        h.write_u64(self.prev.map_or(0, |p| p.wrapping_add(1)));
        for text in [&*self.topic, &*self.key, self.meta.as_str()] {
            h.write_usize(text.len());
            h.write(text.as_bytes());
        }
        mix64(h.finish())
    }
}

#[derive(Clone)]
struct Slot {
    id: ReplicaId,
    hash: u64,
    /// `None`: the replica is unknown (never heard of, or permdowned); nothing of it is admitted.
    context: Option<u64>,
    /// Observed dots beyond `context`.
    cloud: BTreeSet<u64>,
    up: bool,
    /// XOR of [`Element::hash`] over the stored elements of this replica: the same on every
    /// replica that has observed all the dots it made.
    digest: u64,
}

/// The dots of one local connection (usually one: no allocation then).
#[derive(Clone)]
enum OwnDots {
    One(Dot),
    Many(Vec<Dot>),
}

impl OwnDots {
    fn push(&mut self, dot: Dot) {
        match self {
            OwnDots::One(d) => *self = OwnDots::Many(vec![*d, dot]),
            OwnDots::Many(v) => v.push(dot),
        }
    }

    /// Removes `dot`; true if none is left.
    fn remove(&mut self, dot: Dot) -> bool {
        match self {
            OwnDots::One(d) => *d == dot,
            OwnDots::Many(v) => {
                v.retain(|d| *d != dot);
                v.is_empty()
            }
        }
    }

    fn as_slice(&self) -> &[Dot] {
        match self {
            OwnDots::One(d) => std::slice::from_ref(d),
            OwnDots::Many(v) => v,
        }
    }
}

/// The per-topic index entry: ordered by key, then by `phx_ref`, like diffs. `prefix` (the key's
/// first 16 bytes) comes first so most comparisons are one integer compare, with the same order.
#[derive(Clone, PartialEq, Eq)]
struct TopicEntry {
    prefix: u128,
    key: Arc<str>,
    hash: u64,
    c: u64,
    r: Rx,
}

impl Ord for TopicEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| key_tail_cmp(&self.key, &other.key))
            .then(self.hash.cmp(&other.hash))
            .then(self.c.cmp(&other.c))
            .then(self.r.cmp(&other.r))
    }
}

impl PartialOrd for TopicEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A delta fragment: the dots it observed (`clouds`), the elements among them still present
/// (`values`), and for each replica in `range` the counters `(start, end]` it covers completely.
#[derive(Clone, Debug, Default)]
pub(crate) struct Delta {
    pub(crate) range: BTreeMap<Rx, (u64, u64)>,
    pub(crate) clouds: BTreeMap<Rx, BTreeSet<u64>>,
    pub(crate) values: FxHashMap<Dot, Element>,
}

impl Delta {
    pub(crate) fn fresh(counter: u64) -> Delta {
        let mut d = Delta::default();
        d.range.insert(ME, (counter, counter));
        d
    }

    pub(crate) fn observes(&self, dot: Dot) -> bool {
        self.clouds.get(&dot.r).is_some_and(|c| c.contains(&dot.c))
    }

    /// Values plus observed dots: the measure the generation caps apply to.
    pub(crate) fn size(&self) -> usize {
        self.values.len() + self.clouds.values().map(BTreeSet::len).sum::<usize>()
    }

    /// Two deltas can be combined only if, on every replica both cover, their ranges touch or
    /// overlap; otherwise the union would claim counters neither has.
    pub(crate) fn contiguous(&self, other: &Delta) -> bool {
        self.range
            .iter()
            .all(|(r, (s, e))| match other.range.get(r) {
                Some((os, oe)) => s <= oe && os <= e,
                None => true,
            })
    }

    /// `self := self ⊔ other` (call only when [`contiguous`](Self::contiguous)). A dot removed in
    /// either fragment stays removed: an element survives only where the other side did not
    /// observe its dot without it.
    pub(crate) fn absorb(&mut self, other: &Delta) {
        self.values
            .retain(|dot, _| other.values.contains_key(dot) || !other.observes(*dot));
        for (dot, el) in &other.values {
            if !self.values.contains_key(dot) && !self.observes(*dot) {
                self.values.insert(*dot, el.clone());
            }
        }
        for (r, dots) in &other.clouds {
            self.clouds
                .entry(*r)
                .or_default()
                .extend(dots.iter().copied());
        }
        for (r, (s, e)) in &other.range {
            let entry = self.range.entry(*r).or_insert((*s, *e));
            entry.0 = entry.0.min(*s);
            entry.1 = entry.1.max(*e);
        }
    }

    pub(crate) fn forget_replica(&mut self, r: Rx) {
        self.range.remove(&r);
        self.clouds.remove(&r);
        self.values.retain(|dot, _| dot.r != r);
    }
}

/// `track` refused: this connection already tracks this key in this topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlreadyTracked {
    /// The connection.
    pub conn: u64,
    /// The topic.
    pub topic: String,
    /// The key.
    pub key: String,
}

impl fmt::Display for AlreadyTracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection {} already tracks key {:?} in topic {:?}",
            self.conn, self.key, self.topic
        )
    }
}

impl std::error::Error for AlreadyTracked {}

/// `update` refused: this connection tracks no such key in this topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoPresence {
    /// The connection.
    pub conn: u64,
    /// The topic.
    pub topic: String,
    /// The key.
    pub key: String,
}

impl fmt::Display for NoPresence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection {} has no presence under key {:?} in topic {:?}",
            self.conn, self.key, self.topic
        )
    }
}

impl std::error::Error for NoPresence {}

/// One replica of the presence CRDT: an add-wins observed-remove set of presences keyed by dot.
///
/// Every local change consumes a *dot* `(replica, counter)`; a dot is *observed* once the context
/// covers it or it sits in the cloud. A presence exists iff its dot is observed and its element is
/// stored; an observed dot without an element means "added, then removed". Merging unions the
/// observed dots; an element survives unless the other side observed its dot and lacks it.
///
/// # Two upstream bugs this design avoids
///
/// * **Stale-transfer resurrection.** Phoenix deletes a removed element's dot
///   from the cloud when it observes the removal, so the replica forgets it ever saw that dot, and
///   a late full-state transfer from a lagging peer re-admits the old element. Here an observed dot
///   is never forgotten while its replica is known: removals leave the dot in the cloud (or in the
///   context once contiguous), and a join is admitted only for a dot that was never observed. A
///   dot is created once and removed at most once, so "observed" is monotone and a stale payload
///   can only repeat facts already known. Only a permdown forgets a replica, and then everything of
///   that replica is ignored until it is heard from again.
/// * **Add-add divergence.** Phoenix stores one row per `(topic, pid, key)`,
///   so two elements with different dots for the same row overwrite each other in merge order.
///   Here elements are stored *by dot*; the `(topic, connection, key)` index is only for the owner's
///   own connections. Two dots for the same row are two elements, each kept or removed by the same
///   order-independent rule, so every delivery order ends in the same set.
///
/// Both are covered in `core/tests/tracker_state.rs`:
/// `stale_full_transfer_does_not_resurrect_a_removed_presence` and
/// `two_versions_of_one_presence_converge_whatever_the_merge_order`.
///
/// Connections (`conn`) are the owner's opaque `u64` ids, unique within this replica; across the
/// cluster a presence is identified by its owning replica and its dot, so two nodes may use the
/// same connection ids. Cloning copies the whole replica (elements share their strings).
#[derive(Clone)]
pub struct State {
    slots: Vec<Slot>,
    by_id: HashMap<ReplicaId, Rx>,
    values: FxHashMap<Dot, Element>,
    topics: HashMap<Arc<str>, BTreeSet<TopicEntry>>,
    own: FxHashMap<u64, OwnDots>,
    pending: PendingDelta,
}

/// The delta accumulating until the next heartbeat. Own dots since `start` are implied (they are
/// contiguous) and own elements are read from the state when the delta is taken, so a local
/// operation only bumps the counter; `clouds` holds the other observed removals.
#[derive(Clone, Default)]
struct PendingDelta {
    start: u64,
    clouds: BTreeMap<Rx, BTreeSet<u64>>,
}

impl State {
    /// An empty replica named `replica`.
    pub fn new(replica: ReplicaId) -> State {
        let mut state = State {
            slots: Vec::new(),
            by_id: HashMap::new(),
            values: FxHashMap::default(),
            topics: HashMap::new(),
            own: FxHashMap::default(),
            pending: PendingDelta::default(),
        };
        let me = state.intern(&replica);
        debug_assert_eq!(me, ME);
        if let Some(slot) = state.slots.get_mut(ME as usize) {
            slot.context = Some(0);
            slot.up = true;
        }
        state
    }

    /// This replica's id.
    pub fn replica(&self) -> &ReplicaId {
        &self.slot(ME).id
    }

    fn slot(&self, r: Rx) -> &Slot {
        // Every Rx handed out indexes `slots`; slots are never removed.
        &self.slots[r as usize]
    }

    fn slot_mut(&mut self, r: Rx) -> &mut Slot {
        &mut self.slots[r as usize]
    }

    pub(crate) fn intern(&mut self, id: &ReplicaId) -> Rx {
        if let Some(r) = self.by_id.get(id) {
            return *r;
        }
        let r = self.slots.len() as Rx;
        self.slots.push(Slot {
            id: id.clone(),
            hash: replica_hash(&id.node, id.incarnation),
            context: None,
            cloud: BTreeSet::new(),
            up: false,
            digest: 0,
        });
        self.by_id.insert(id.clone(), r);
        r
    }

    /// The slot of a replica whose data this state accepts.
    pub(crate) fn known(&self, id: &ReplicaId) -> Option<Rx> {
        self.by_id
            .get(id)
            .copied()
            .filter(|r| self.slot(*r).context.is_some())
    }

    fn visible(&self, r: Rx) -> bool {
        let s = self.slot(r);
        s.up && s.context.is_some()
    }

    pub(crate) fn context_of(&self, r: Rx) -> Option<u64> {
        self.slot(r).context
    }

    fn observed(&self, dot: Dot) -> bool {
        let s = self.slot(dot.r);
        s.context.is_some_and(|c| dot.c <= c) || s.cloud.contains(&dot.c)
    }

    fn phx_ref(&self, r: Rx, c: u64) -> PhxRef {
        PhxRef {
            replica_hash: self.slot(r).hash,
            counter: c,
        }
    }

    fn presence(&self, dot: Dot, el: &Element) -> Presence {
        Presence {
            meta_json: el.meta.clone(),
            phx_ref: self.phx_ref(dot.r, dot.c),
            phx_ref_prev: el.prev.map(|p| self.phx_ref(dot.r, p)),
        }
    }

    fn intern_topic(&self, topic: &str) -> Arc<str> {
        match self.topics.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        }
    }

    fn insert_value(&mut self, dot: Dot, el: Element, diff: &mut DiffBuilder) {
        let hash = self.slot(dot.r).hash;
        let entry = TopicEntry {
            prefix: key_prefix(&el.key),
            key: el.key.clone(),
            hash,
            c: dot.c,
            r: dot.r,
        };
        self.topics
            .entry(el.topic.clone())
            .or_default()
            .insert(entry);
        if dot.r == ME {
            match self.own.entry(el.conn) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut().push(dot),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(OwnDots::One(dot));
                }
            }
        }
        if self.visible(dot.r) {
            diff.record(true, &el.topic, &el.key, self.presence(dot, &el));
        }
        self.slot_mut(dot.r).digest ^= el.hash(dot.c);
        self.values.insert(dot, el);
    }

    fn remove_value(&mut self, dot: Dot, diff: &mut DiffBuilder) -> Option<Element> {
        let el = self.values.remove(&dot)?;
        self.slot_mut(dot.r).digest ^= el.hash(dot.c);
        let hash = self.slot(dot.r).hash;
        let entry = TopicEntry {
            prefix: key_prefix(&el.key),
            key: el.key.clone(),
            hash,
            c: dot.c,
            r: dot.r,
        };
        if let Some(set) = self.topics.get_mut(&el.topic) {
            set.remove(&entry);
            if set.is_empty() {
                self.topics.remove(&el.topic);
            }
        }
        if dot.r == ME
            && self
                .own
                .get_mut(&el.conn)
                .is_some_and(|dots| dots.remove(dot))
        {
            self.own.remove(&el.conn);
        }
        if self.visible(dot.r) {
            diff.record(false, &el.topic, &el.key, self.presence(dot, &el));
        }
        Some(el)
    }

    /// Consumes the next own dot.
    fn bump(&mut self) -> u64 {
        let slot = self.slot_mut(ME);
        let c = slot.context.unwrap_or(0) + 1;
        slot.context = Some(c);
        c
    }

    /// Records in the pending delta that `dot` was removed, so peers learn it.
    fn delta_note_removed(&mut self, dot: Dot) {
        // Own dots of this period are implied, and their removed elements simply absent.
        if dot.r != ME || dot.c <= self.pending.start {
            self.pending.clouds.entry(dot.r).or_default().insert(dot.c);
        }
    }

    fn find_own(&self, conn: u64, topic: &str, key: &str) -> Option<Dot> {
        self.own.get(&conn)?.as_slice().iter().copied().find(|dot| {
            self.values
                .get(dot)
                .is_some_and(|el| &*el.topic == topic && &*el.key == key)
        })
    }

    /// Adds a presence of local connection `conn` under `(topic, key)`.
    pub fn join(
        &mut self,
        conn: u64,
        topic: &str,
        key: &str,
        meta: Meta,
    ) -> Result<(PhxRef, Diff), AlreadyTracked> {
        if self.find_own(conn, topic, key).is_some() {
            return Err(AlreadyTracked {
                conn,
                topic: topic.into(),
                key: key.into(),
            });
        }
        let mut diff = DiffBuilder::default();
        let c = self.bump();
        let dot = Dot { r: ME, c };
        let el = Element {
            topic: self.intern_topic(topic),
            key: Arc::from(key),
            conn,
            meta,
            prev: None,
        };
        self.insert_value(dot, el, &mut diff);
        Ok((self.phx_ref(ME, c), diff.finish()))
    }

    fn leave_dot(&mut self, dot: Dot, diff: &mut DiffBuilder) {
        if self.remove_value(dot, diff).is_some() {
            self.delta_note_removed(dot);
            // The removal itself consumes a dot, so peers see our clock move.
            self.bump();
        }
    }

    /// Removes one presence of local connection `conn`; a no-op if there is none.
    pub fn leave(&mut self, conn: u64, topic: &str, key: &str) -> Diff {
        let mut diff = DiffBuilder::default();
        if let Some(dot) = self.find_own(conn, topic, key) {
            self.leave_dot(dot, &mut diff);
        }
        diff.finish()
    }

    /// Removes every presence of local connection `conn`.
    pub fn leave_connection(&mut self, conn: u64) -> Diff {
        let mut diff = DiffBuilder::default();
        let dots: Vec<Dot> = self
            .own
            .get(&conn)
            .map(|d| d.as_slice().to_vec())
            .unwrap_or_default();
        for dot in dots {
            self.leave_dot(dot, &mut diff);
        }
        diff.finish()
    }

    /// Replaces the meta of a presence of local connection `conn`: one leave of the old version
    /// and one join of the new one, whose `phx_ref_prev` names the old version.
    pub fn update(
        &mut self,
        conn: u64,
        topic: &str,
        key: &str,
        meta: Meta,
    ) -> Result<(PhxRef, Diff), NoPresence> {
        let Some(old) = self.find_own(conn, topic, key) else {
            return Err(NoPresence {
                conn,
                topic: topic.into(),
                key: key.into(),
            });
        };
        let mut diff = DiffBuilder::default();
        let Some(old_el) = self.remove_value(old, &mut diff) else {
            return Err(NoPresence {
                conn,
                topic: topic.into(),
                key: key.into(),
            });
        };
        self.delta_note_removed(old);
        self.bump();
        let c = self.bump();
        let dot = Dot { r: ME, c };
        let el = Element {
            meta,
            prev: Some(old.c),
            ..old_el
        };
        self.insert_value(dot, el, &mut diff);
        Ok((self.phx_ref(ME, c), diff.finish()))
    }

    /// True if there are local changes (own or observed removals) not yet handed out as a delta.
    pub fn has_delta(&self) -> bool {
        self.slot(ME).context.unwrap_or(0) > self.pending.start
            || self.pending.clouds.values().any(|c| !c.is_empty())
    }

    pub(crate) fn take_delta_raw(&mut self) -> Delta {
        let end = self.slot(ME).context.unwrap_or(0);
        let start = std::mem::replace(&mut self.pending.start, end);
        let mut delta = Delta {
            clouds: std::mem::take(&mut self.pending.clouds),
            ..Delta::default()
        };
        delta.range.insert(ME, (start, end));
        if end > start {
            delta.clouds.entry(ME).or_default().extend(start + 1..=end);
        }
        for c in start + 1..=end {
            let dot = Dot { r: ME, c };
            if let Some(el) = self.values.get(&dot) {
                delta.values.insert(dot, el.clone());
            }
        }
        self.compact();
        delta
    }

    /// Hands out the pending delta (as sent in a heartbeat) and starts a new one.
    pub fn take_delta(&mut self) -> StatePayload {
        let delta = self.take_delta_raw();
        self.delta_payload(&delta, |_| true)
    }

    /// Folds cloud dots that became contiguous into the context.
    pub fn compact(&mut self) {
        for slot in &mut self.slots {
            let Some(mut ctx) = slot.context else {
                slot.cloud.clear();
                continue;
            };
            while let Some(&c) = slot.cloud.first() {
                if c > ctx + 1 {
                    break;
                }
                ctx = ctx.max(c);
                slot.cloud.pop_first();
            }
            slot.context = Some(ctx);
        }
    }

    /// The clock advertised to peers: the context of every replica this state knows and
    /// considers up (down replicas are left out, as in Phoenix).
    pub fn clock(&self) -> Clock {
        let mut entries: Vec<(ReplicaId, u64)> = self
            .slots
            .iter()
            .filter(|s| s.up)
            .filter_map(|s| s.context.map(|c| (s.id.clone(), c)))
            .collect();
        entries.sort();
        Clock { entries }
    }

    /// The full context, down replicas included (for inspection and tests).
    pub fn context(&self) -> Clock {
        let mut entries: Vec<(ReplicaId, u64)> = self
            .slots
            .iter()
            .filter_map(|s| s.context.map(|c| (s.id.clone(), c)))
            .collect();
        entries.sort();
        Clock { entries }
    }

    /// Number of observed dots not yet contiguous with the context (0 once caught up).
    pub fn cloud_len(&self) -> usize {
        self.slots.iter().map(|s| s.cloud.len()).sum()
    }

    /// Context of up replicas, by slot.
    pub(crate) fn local_clock(&self) -> BTreeMap<Rx, u64> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.up)
            .filter_map(|(i, s)| s.context.map(|c| (i as Rx, c)))
            .collect()
    }

    /// Context of every known replica (down ones included), by slot.
    pub(crate) fn known_context(&self) -> BTreeMap<Rx, u64> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.context.map(|c| (i as Rx, c)))
            .collect()
    }

    /// Maps a peer's clock onto the replicas this state knows.
    pub(crate) fn map_clock(&self, clock: &Clock) -> BTreeMap<Rx, u64> {
        clock
            .entries
            .iter()
            .filter_map(|(id, c)| self.known(id).map(|r| (r, *c)))
            .collect()
    }

    /// The full state a requester needs, pruned to the replicas its clock names (it ignores the
    /// others) and without the requester's own presences (it is their authority).
    pub fn extract(&self, requester: &ReplicaId, requester_clock: &Clock) -> StatePayload {
        let known: FxHashSet<Rx> = self.map_clock(requester_clock).into_keys().collect();
        let exclude = self.by_id.get(requester).copied();
        let mut b = PayloadBuilder::default();
        let mut context = Vec::new();
        let mut clouds = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let r = i as Rx;
            if !known.contains(&r) {
                continue;
            }
            if let Some(c) = slot.context {
                context.push((b.replica(self, r), c));
            }
            if !slot.cloud.is_empty() {
                clouds.push((b.replica(self, r), slot.cloud.iter().copied().collect()));
            }
        }
        // In index order (by topic, then key): the receiver's merge then finds its input already
        // grouped and sorted, and the same state always extracts to the same payload.
        let mut values = Vec::with_capacity(self.values.len());
        let mut topics: Vec<(&Arc<str>, &BTreeSet<TopicEntry>)> = self.topics.iter().collect();
        topics.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (_, entries) in topics {
            for e in entries {
                if !known.contains(&e.r) || Some(e.r) == exclude {
                    continue;
                }
                let dot = Dot { r: e.r, c: e.c };
                if let Some(el) = self.values.get(&dot) {
                    values.push(b.element(self, dot, el));
                }
            }
        }
        StatePayload {
            replicas: b.replicas,
            topics: b.topics,
            kind: PayloadKind::Full { context },
            clouds,
            values,
        }
    }

    /// Renders a delta for the wire, keeping only replicas `keep` accepts (all of a replica or
    /// nothing of it: a dot without its element would read as a removal).
    pub(crate) fn delta_payload(&self, delta: &Delta, keep: impl Fn(Rx) -> bool) -> StatePayload {
        let mut b = PayloadBuilder::default();
        let mut range = Vec::new();
        for (r, (s, e)) in &delta.range {
            if keep(*r) {
                range.push((b.replica(self, *r), *s, *e));
            }
        }
        let mut clouds = Vec::new();
        for (r, dots) in &delta.clouds {
            if keep(*r) && !dots.is_empty() {
                clouds.push((b.replica(self, *r), dots.iter().copied().collect()));
            }
        }
        let mut values = Vec::with_capacity(delta.values.len());
        for (dot, el) in &delta.values {
            if keep(dot.r) {
                values.push(b.element(self, *dot, el));
            }
        }
        StatePayload {
            replicas: b.replicas,
            topics: b.topics,
            kind: PayloadKind::Delta { range },
            clouds,
            values,
        }
    }

    /// A received delta in local terms, keeping only replicas this state knows (for the delta
    /// generations). `None` for a full state.
    pub(crate) fn payload_delta(&self, p: &StatePayload) -> Option<Delta> {
        let PayloadKind::Delta { range } = &p.kind else {
            return None;
        };
        let map: Vec<Option<Rx>> = p.replicas.iter().map(|id| self.known(id)).collect();
        let at = |i: u32| map.get(i as usize).copied().flatten();
        let mut d = Delta::default();
        for (i, s, e) in range {
            if let Some(r) = at(*i) {
                let entry = d.range.entry(r).or_insert((*s, *e));
                entry.0 = entry.0.min(*s);
                entry.1 = entry.1.max(*e);
            }
        }
        for (i, dots) in &p.clouds {
            if let Some(r) = at(*i) {
                d.clouds.entry(r).or_default().extend(dots.iter().copied());
            }
        }
        for v in &p.values {
            if let (Some(r), Some(topic)) = (at(v.replica), p.topics.get(v.topic as usize)) {
                let el = Element {
                    topic: self.intern_topic(topic),
                    key: v.key.clone(),
                    conn: v.conn,
                    meta: v.meta.clone(),
                    prev: v.prev,
                };
                d.values.insert(Dot { r, c: v.counter }, el);
            }
        }
        Some(d)
    }

    /// Merges a delta or a full state received from a peer and returns what became visible or
    /// invisible. Data of replicas this state does not know is ignored; own presences are never
    /// removed because of remote information (this replica is their only authority).
    pub fn merge(&mut self, p: &StatePayload) -> Diff {
        let mut diff = DiffBuilder::default();
        self.merge_into(p, &mut diff);
        diff.finish()
    }

    pub(crate) fn merge_into(&mut self, p: &StatePayload, diff: &mut DiffBuilder) {
        diff.begin();
        // Payload replica index -> local slot, for replicas we accept data of (never ourselves:
        // only we create our dots).
        let map: Vec<Option<Rx>> = p
            .replicas
            .iter()
            .map(|id| self.known(id).filter(|r| *r != ME))
            .collect();
        let at = |i: u32| map.get(i as usize).copied().flatten();
        let mut rctx: FxHashMap<Rx, u64> = FxHashMap::default();
        if let PayloadKind::Full { context } = &p.kind {
            for (i, c) in context {
                if let Some(r) = at(*i) {
                    let e = rctx.entry(r).or_insert(0);
                    *e = (*e).max(*c);
                }
            }
        }
        let mut rcloud: FxHashMap<Rx, Vec<&[u64]>> = FxHashMap::default();
        for (i, dots) in &p.clouds {
            if let Some(r) = at(*i) {
                rcloud.entry(r).or_default().push(dots);
            }
        }
        let remote_values = || -> FxHashSet<Dot> {
            p.values
                .iter()
                .filter_map(|v| at(v.replica).map(|r| Dot { r, c: v.counter }))
                .collect()
        };
        let remote_observed = |dot: Dot| {
            rctx.get(&dot.r).is_some_and(|c| dot.c <= *c)
                || rcloud
                    .get(&dot.r)
                    .is_some_and(|ss| ss.iter().any(|s| s.binary_search(&dot.c).is_ok()))
        };

        // Removes: elements the remote observed but no longer has.
        let mut removed: Vec<Dot> = if p.is_full() {
            self.values
                .keys()
                .filter(|d| d.r != ME && remote_observed(**d))
                .copied()
                .collect()
        } else {
            rcloud
                .iter()
                .flat_map(|(r, slices)| {
                    slices
                        .iter()
                        .flat_map(|s| s.iter())
                        .map(|c| Dot { r: *r, c: *c })
                })
                .filter(|d| self.values.contains_key(d))
                .collect()
        };
        // The set of remote values is built only when some element is in question (a newcomer's
        // first full transfer has none).
        if !removed.is_empty() {
            let rvals = remote_values();
            removed.retain(|d| !rvals.contains(d));
        }
        removed.sort_unstable();
        removed.dedup();
        for dot in removed {
            self.remove_value(dot, diff);
            // Re-gossip the removal so peers that missed the original delta learn it from us.
            self.delta_note_removed(dot);
        }

        // Joins: elements whose dot we never observed.
        let topics: Vec<Arc<str>> = p.topics.iter().map(|t| self.intern_topic(t)).collect();
        let mut joins: Vec<(u32, Dot, &WireElement)> = Vec::new();
        for v in &p.values {
            let Some(r) = at(v.replica).filter(|_| (v.topic as usize) < topics.len()) else {
                continue;
            };
            let dot = Dot { r, c: v.counter };
            if !self.observed(dot) {
                joins.push((v.topic, dot, v));
            }
        }
        self.values.reserve(joins.len());
        diff.reserve(joins.len());
        // One topic-index lookup per topic, not per element.
        joins.sort_unstable_by_key(|(t, _, _)| *t);
        for group in joins.chunk_by(|a, b| a.0 == b.0) {
            let Some(topic) = group.first().and_then(|(t, _, _)| topics.get(*t as usize)) else {
                continue;
            };
            let mut entries: Vec<(TopicEntry, Dot, &WireElement)> = group
                .iter()
                .map(|(_, dot, v)| {
                    let entry = TopicEntry {
                        prefix: key_prefix(&v.key),
                        key: v.key.clone(),
                        hash: self.slots[dot.r as usize].hash,
                        c: dot.c,
                        r: dot.r,
                    };
                    (entry, *dot, *v)
                })
                .collect();
            // Index order: cheaper inserts, and the diff comes out already sorted.
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let set = self.topics.entry(topic.clone()).or_default();
            if entries.len() * 4 >= set.len() {
                // Many elements: one linear merge of two sorted runs beats one search each.
                let mut run: BTreeSet<TopicEntry> =
                    entries.iter().map(|(entry, _, _)| entry.clone()).collect();
                set.append(&mut run);
            } else {
                for (entry, _, _) in &entries {
                    set.insert(entry.clone());
                }
            }
            for (entry, dot, v) in entries {
                let el = Element {
                    topic: topic.clone(),
                    key: entry.key,
                    conn: v.conn,
                    meta: v.meta.clone(),
                    prev: v.prev,
                };
                if self.visible(dot.r) {
                    diff.record(true, &el.topic, &el.key, self.presence(dot, &el));
                }
                self.slots[dot.r as usize].digest ^= el.hash(dot.c);
                self.values.insert(dot, el);
                // Mark the dot observed, unless the remote context is about to cover it anyway.
                if rctx.get(&dot.r).is_none_or(|c| dot.c > *c) {
                    self.slot_mut(dot.r).cloud.insert(dot.c);
                }
            }
        }

        // Observed dots: union (never forget one, see the module docs), then compact.
        for (r, slices) in &rcloud {
            let slot = &mut self.slots[*r as usize];
            let ctx = slot.context.unwrap_or(0);
            slot.cloud.extend(
                slices
                    .iter()
                    .flat_map(|s| s.iter())
                    .copied()
                    .filter(|c| *c > ctx),
            );
        }
        for (r, c) in rctx {
            let slot = self.slot_mut(r);
            slot.context = Some(slot.context.unwrap_or(0).max(c));
        }
        self.compact();
    }

    /// How many dots this replica made (its own counter).
    pub(crate) fn made(&self) -> u64 {
        self.context_of(ME).unwrap_or(0)
    }

    /// What a heartbeat says of each replica of [`clock`](Self::clock), in the same order: the
    /// highest counter observed (context or cloud) and the digest of the stored elements.
    pub(crate) fn seen(&self) -> Vec<(u64, u64)> {
        let mut seen: Vec<(&ReplicaId, u64, u64)> = self
            .slots
            .iter()
            .filter(|s| s.up)
            .filter_map(|s| {
                let context = s.context?;
                let max = s.cloud.last().map_or(context, |c| context.max(*c));
                Some((&s.id, max, s.digest))
            })
            .collect();
        seen.sort_by(|a, b| a.0.cmp(b.0));
        seen.into_iter()
            .map(|(_, max, digest)| (max, digest))
            .collect()
    }

    /// True if a peer's heartbeat (`clock` and `seen`) shows that another process made dots under
    /// this replica's id: the peer observed more of our dots than we made, or it observed exactly
    /// the dots we made (all of them, none missing) and holds other presences for them. For one
    /// process that cannot be: a peer that saw every dot we made saw every add and every removal.
    pub(crate) fn reused_in(&self, clock: &Clock, seen: &[(u64, u64)]) -> bool {
        let me = self.replica();
        let made = self.made();
        clock
            .entries
            .iter()
            .zip(seen)
            .filter(|((id, _), _)| id == me)
            .any(|((_, context), (max, digest))| {
                *max > made || (*max == made && *context == made && *digest != self.own_digest())
            })
    }

    fn own_digest(&self) -> u64 {
        self.slot(ME).digest
    }

    /// Moves this replica to a new identity `replica` (same node, new incarnation): its own
    /// presences are taken over by the new identity, numbered from 1 again, each reported as a
    /// leave of the old `phx_ref` and a join of the new one. Nothing else changes: what this
    /// replica knows of its peers stays.
    pub(crate) fn reincarnate_into(&mut self, replica: ReplicaId, diff: &mut DiffBuilder) {
        diff.begin();
        let mut own: Vec<(u64, Element)> = self
            .values
            .iter()
            .filter(|(dot, _)| dot.r == ME)
            .map(|(dot, el)| (dot.c, el.clone()))
            .collect();
        own.sort_unstable_by_key(|(c, _)| *c);
        for (c, _) in &own {
            self.remove_value(Dot { r: ME, c: *c }, diff);
        }
        let previous = self.replica().clone();
        self.by_id.remove(&previous);
        self.by_id.insert(replica.clone(), ME);
        let slot = self.slot_mut(ME);
        slot.hash = replica_hash(&replica.node, replica.incarnation);
        slot.id = replica;
        slot.context = Some(0);
        slot.cloud.clear();
        self.pending.start = 0;
        self.pending.clouds.remove(&ME);
        for (_, el) in own {
            let c = self.bump();
            // The replaced version belongs to the old identity: nothing to point back to.
            let el = Element { prev: None, ..el };
            self.insert_value(Dot { r: ME, c }, el, diff);
        }
    }

    /// Marks a replica up (learning it if new) and returns its stored presences as joins.
    pub fn replica_up(&mut self, replica: &ReplicaId) -> Diff {
        let mut diff = DiffBuilder::default();
        self.replica_up_into(replica, &mut diff);
        diff.finish()
    }

    pub(crate) fn replica_up_into(&mut self, replica: &ReplicaId, diff: &mut DiffBuilder) {
        diff.begin();
        let r = self.intern(replica);
        if r == ME {
            return;
        }
        let slot = self.slot_mut(r);
        let was_visible = slot.up && slot.context.is_some();
        slot.context.get_or_insert(0);
        slot.up = true;
        if !was_visible {
            self.report_replica(r, true, diff);
        }
    }

    /// Marks a replica down: its presences are hidden (returned as leaves) but kept.
    pub fn replica_down(&mut self, replica: &ReplicaId) -> Diff {
        let mut diff = DiffBuilder::default();
        self.replica_down_into(replica, &mut diff);
        diff.finish()
    }

    pub(crate) fn replica_down_into(&mut self, replica: &ReplicaId, diff: &mut DiffBuilder) {
        diff.begin();
        if let Some(r) = self.known(replica).filter(|r| *r != ME) {
            if self.visible(r) {
                self.report_replica(r, false, diff);
                self.slot_mut(r).up = false;
            }
        }
    }

    fn report_replica(&self, r: Rx, join: bool, diff: &mut DiffBuilder) {
        for (dot, el) in &self.values {
            if dot.r == r {
                diff.record(join, &el.topic, &el.key, self.presence(*dot, el));
            }
        }
    }

    /// Permdown: forgets a replica and purges its presences (leaves are returned only for those
    /// still visible, i.e. if it was not marked down first). Nothing of it is accepted again until
    /// [`replica_up`](Self::replica_up).
    pub fn remove_down_replicas(&mut self, replica: &ReplicaId) -> Diff {
        let mut diff = DiffBuilder::default();
        self.remove_down_replicas_into(replica, &mut diff);
        diff.finish()
    }

    pub(crate) fn remove_down_replicas_into(
        &mut self,
        replica: &ReplicaId,
        diff: &mut DiffBuilder,
    ) {
        diff.begin();
        let Some(r) = self.by_id.get(replica).copied().filter(|r| *r != ME) else {
            return;
        };
        let dots: Vec<Dot> = self.values.keys().filter(|d| d.r == r).copied().collect();
        for dot in dots {
            self.remove_value(dot, diff);
        }
        let slot = self.slot_mut(r);
        slot.context = None;
        slot.cloud.clear();
        slot.up = false;
        self.pending.clouds.remove(&r);
    }

    /// Presences in `topic` as `(key, presence)`, ordered by key then `phx_ref`; presences of down
    /// replicas are hidden.
    pub fn list(&self, topic: &str) -> Vec<(Arc<str>, Presence)> {
        let Some(entries) = self.topics.get(topic) else {
            return Vec::new();
        };
        entries
            .iter()
            .filter(|e| self.visible(e.r))
            .filter_map(|e| {
                let dot = Dot { r: e.r, c: e.c };
                self.values
                    .get(&dot)
                    .map(|el| (e.key.clone(), self.presence(dot, el)))
            })
            .collect()
    }

    /// Presences under one key of a topic, ordered by `phx_ref`.
    pub fn get_by_key(&self, topic: &str, key: &str) -> Vec<Presence> {
        let Some(entries) = self.topics.get(topic) else {
            return Vec::new();
        };
        let from = TopicEntry {
            prefix: key_prefix(key),
            key: Arc::from(key),
            hash: 0,
            c: 0,
            r: 0,
        };
        entries
            .range(from..)
            .take_while(|e| &*e.key == key)
            .filter(|e| self.visible(e.r))
            .filter_map(|e| {
                let dot = Dot { r: e.r, c: e.c };
                self.values.get(&dot).map(|el| self.presence(dot, el))
            })
            .collect()
    }

    /// The presences of one local connection as `(topic, key, presence)`, in tracking order.
    pub fn get_by_conn(&self, conn: u64) -> Vec<(Arc<str>, Arc<str>, Presence)> {
        let Some(dots) = self.own.get(&conn) else {
            return Vec::new();
        };
        dots.as_slice()
            .iter()
            .filter_map(|dot| {
                self.values
                    .get(dot)
                    .map(|el| (el.topic.clone(), el.key.clone(), self.presence(*dot, el)))
            })
            .collect()
    }

    /// Topics with at least one stored presence (visible or not), in byte order.
    pub fn topics(&self) -> Vec<Arc<str>> {
        let mut t: Vec<Arc<str>> = self.topics.keys().cloned().collect();
        t.sort();
        t
    }

    /// Number of stored presences, hidden ones included.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True if no presence is stored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Peer replicas this state knows, with their status (this replica excluded), by id.
    pub fn replicas(&self) -> Vec<(ReplicaId, ReplicaStatus)> {
        let mut out: Vec<(ReplicaId, ReplicaStatus)> = self
            .slots
            .iter()
            .skip(1)
            .filter(|s| s.context.is_some())
            .map(|s| {
                let status = if s.up {
                    ReplicaStatus::Up
                } else {
                    ReplicaStatus::Down
                };
                (s.id.clone(), status)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every visible presence as `(topic, key, presence)` in a canonical order (for comparing
    /// replicas).
    pub fn snapshot(&self) -> Vec<(Arc<str>, Arc<str>, Presence)> {
        let mut out = Vec::new();
        for topic in self.topics() {
            for (key, p) in self.list(&topic) {
                out.push((topic.clone(), key, p));
            }
        }
        out
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("replica", self.replica())
            .field("context", &self.context())
            .field("cloud_len", &self.cloud_len())
            .field("values", &self.values.len())
            .finish()
    }
}

/// Builds the replica and topic tables of a payload.
#[derive(Default)]
struct PayloadBuilder {
    replicas: Vec<ReplicaId>,
    replica_index: FxHashMap<Rx, u32>,
    topics: Vec<Arc<str>>,
    // Keyed by the topic's allocation: topics are interned, so equal topics share one `Arc`
    // (a duplicate table entry for an un-interned one is harmless).
    topic_index: FxHashMap<usize, u32>,
}

impl PayloadBuilder {
    fn replica(&mut self, state: &State, r: Rx) -> u32 {
        if let Some(i) = self.replica_index.get(&r) {
            return *i;
        }
        let i = self.replicas.len() as u32;
        self.replicas.push(state.slot(r).id.clone());
        self.replica_index.insert(r, i);
        i
    }

    fn topic(&mut self, topic: &Arc<str>) -> u32 {
        let ptr = Arc::as_ptr(topic) as *const u8 as usize;
        if let Some(i) = self.topic_index.get(&ptr) {
            return *i;
        }
        let i = self.topics.len() as u32;
        self.topics.push(topic.clone());
        self.topic_index.insert(ptr, i);
        i
    }

    fn element(&mut self, state: &State, dot: Dot, el: &Element) -> WireElement {
        WireElement {
            replica: self.replica(state, dot.r),
            counter: dot.c,
            conn: el.conn,
            topic: self.topic(&el.topic),
            key: el.key.clone(),
            meta: el.meta.clone(),
            prev: el.prev,
        }
    }
}
