//! A seeded simulation of a tracker cluster, for finding convergence bugs.
//!
//! 3–7 nodes, each a pool of 1–3 shards as the server runs them (the same pool size on every
//! node), run over a virtual network that delays, reorders, duplicates and drops messages
//! (every message goes through the binary codec), delivers a few of them up to twice the permdown
//! period late, splits into partitions (some one-way) and heals, while nodes crash, shut down
//! gracefully and restart — with a fresh incarnation, a smaller one than before, or one the node
//! used before — under random track / update / untrack traffic over up to 6 topics × 12 keys.
//! A topic lives in shard [`shard_index`] of every node, and shard `s` talks only to shard `s` of
//! its peers, each with its own replica (the node's incarnation plus `s`); a node's crash,
//! restart or partition takes all its shards together. Shards are driven as the server drives
//! them: `tick` every period and, in most runs, `flush_delta` after local changes (coalesced
//! over a window), `heartbeat_now` when a peer comes up and when the network reaches a peer it
//! did not reach. Then the faults stop and virtual time runs on until every late message has
//! arrived and every dead replica is permdowned.
//!
//! Every check below holds for each shard index on its own. After every call, on the shard that
//! made it:
//!
//! * the diff reports only topics the shard owns (a presence never exists in another shard);
//! * the diff applies cleanly to the diffs reported before: no second join of a presence, no
//!   leave of an absent one;
//! * a presence that left for good (not hidden because its owner went down) never joins again,
//!   unless its owner was permdowned in between — only forgetting a replica forgets its dots;
//! * a replica permdowned here does not come up again before its retirement expires
//!   (`permdown_period_ms` later), however late its messages arrive.
//!
//! At the end:
//!
//! * every live node's shard `s` lists exactly the presences tracked in shard `s` of live nodes —
//!   no ghost (nothing of a dead connection, a crashed or gracefully stopped node), no loss;
//! * the diffs each live shard reported, replayed from empty, give that same set;
//! * every live shard `s` sees shard `s` of every other live node up, and no dead one.
//!
//! Everything is a function of the seed ([`run`]); a failure names the seed and the command that
//! replays it. Compiled for `cargo test` and with the `sim` feature.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;

use super::meta::{mix64, replica_hash, Meta, PhxRef};
use super::replica::{ReplicaEvent, ReplicaId, ReplicaStatus};
use super::shard::{Destination, Outgoing, Output, Shard, ShardConfig};
use super::{shard_index, Diff, ReplicationMessage};

/// splitmix64: a tiny, good-enough, seedable generator (no global randomness in core).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (`0` if `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// What a passing run did, for the curious.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Shards in the cluster (nodes × pool size).
    pub shards: usize,
    /// Local operations applied.
    pub operations: usize,
    /// Messages delivered.
    pub delivered: usize,
    /// Messages sent with a delay of up to twice the permdown period.
    pub late_messages: usize,
    /// Crashes plus graceful shutdowns.
    pub stops: usize,
    /// Restarts.
    pub restarts: usize,
    /// Restarts with a smaller incarnation than the node's previous one.
    pub backward_restarts: usize,
    /// Restarts with an incarnation the node had used before.
    pub reused_restarts: usize,
    /// New incarnations taken by shards that found theirs in use or retired.
    pub reincarnations: usize,
    /// `flush_delta` calls that sent a delta.
    pub flushes: usize,
    /// `heartbeat_now` calls.
    pub heartbeats_now: usize,
    /// Presences listed at the end.
    pub final_presences: usize,
    /// Transfer answers carrying a cached delta generation.
    pub delta_transfers: usize,
    /// Transfer answers carrying the full state.
    pub full_transfers: usize,
}

impl Stats {
    /// Adds the counts of another run.
    pub fn add(&mut self, o: &Stats) {
        self.nodes += o.nodes;
        self.shards += o.shards;
        self.operations += o.operations;
        self.delivered += o.delivered;
        self.late_messages += o.late_messages;
        self.stops += o.stops;
        self.restarts += o.restarts;
        self.backward_restarts += o.backward_restarts;
        self.reused_restarts += o.reused_restarts;
        self.reincarnations += o.reincarnations;
        self.flushes += o.flushes;
        self.heartbeats_now += o.heartbeats_now;
        self.final_presences += o.final_presences;
        self.delta_transfers += o.delta_transfers;
        self.full_transfers += o.full_transfers;
    }
}

const STEP_MS: u64 = 10;
const TOPICS: [&str; 6] = ["room:a", "room:b", "room:c", "room:d", "room:e", "room:f"];
const KEYS: [&str; 12] = [
    "ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal", "ivy", "jon", "kim", "lou",
];
const CONNS: u64 = 4;

/// The shard configuration of one run, varied by seed.
fn config(rng: &mut Rng) -> ShardConfig {
    ShardConfig {
        broadcast_period_ms: 100,
        max_silent_periods: [0, 3][rng.below(2) as usize],
        // Longer than the idle heartbeat interval (at most 400 ms) plus the worst ordinary network
        // delay (350 ms), so a healthy peer is never marked down once faults stop.
        down_period_ms: 1_000,
        permdown_period_ms: 2_500,
        clock_sample_periods: 1 + rng.below(3) as u32,
        // Small caps so windows overflow; none at all (always full transfers); Phoenix's.
        max_delta_sizes: match rng.below(3) {
            0 => vec![4, 16, 64],
            1 => vec![],
            _ => vec![100, 1_000, 10_000],
        },
    }
}

type Element = (String, String, String, String); // topic, key, phx_ref, meta

/// A node: its pool of shards, all started, stopped and cut off together.
struct Node {
    shards: Vec<NodeShard>,
}

/// One shard of a node, with the model of it the checks compare against.
struct NodeShard {
    shard: Shard,
    next_tick_ms: u64,
    /// When pending local changes go out (server paths only).
    flush_at: Option<u64>,
    last_flush_ms: Option<u64>,
    /// The network reached a peer it did not reach: heartbeat at the next step (server paths).
    greet: bool,
    /// The model: what this node's connections track in this shard's topics,
    /// `(conn, topic, key) -> (ref, meta)`.
    tracked: BTreeMap<(u64, String, String), (PhxRef, Meta)>,
    /// Every reported diff replayed: `(topic, key, ref) -> meta`.
    replay: BTreeMap<(String, String, String), String>,
    /// Presences that left for good (not hidden by their owner going down), and when.
    gone: BTreeMap<PhxRef, u64>,
    /// When each replica (by the hash in its `phx_ref`s) was last permdowned here.
    permdowned: BTreeMap<u64, u64>,
}

/// A message on the wire, ordered by delivery time, then by a random tie-breaker (so messages
/// due at the same time arrive in random order).
struct InFlight {
    deliver_at: u64,
    order: u64,
    from: String,
    to: String,
    /// The shard index of sender and receiver: shard `s` talks only to shard `s`.
    shard: usize,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deliver_at, self.order).cmp(&(other.deliver_at, other.order))
    }
}

struct World {
    rng: Rng,
    config: ShardConfig,
    now: u64,
    nodes: Vec<Option<Node>>,
    /// The incarnations each node started with, in order.
    incarnations: Vec<Vec<u64>>,
    /// When a crashed node is restarted by its supervisor.
    restart_at: Vec<Option<u64>>,
    network: BinaryHeap<Reverse<InFlight>>,
    /// Blocked directed links `(from, to)` by node index.
    blocked: BTreeSet<(usize, usize)>,
    drop_per_mille: u64,
    dup_per_mille: u64,
    late_per_mille: u64,
    max_delay_ms: u64,
    topics: usize,
    keys: usize,
    /// Shards per node.
    pool: usize,
    /// Drive `flush_delta` and `heartbeat_now` as the server does, or only `tick` (as Phoenix).
    server_paths: bool,
    coalesce_ms: u64,
    stats: Stats,
    trace: Option<String>,
}

fn name(i: usize) -> String {
    format!("n{i}")
}

/// Shard `s` of node `i`, as traces and errors name it.
fn at(i: usize, s: usize) -> String {
    format!("n{i}.{s}")
}

fn index(node: &str) -> Option<usize> {
    node.strip_prefix('n')?.parse().ok()
}

fn hash_of(id: &ReplicaId) -> u64 {
    replica_hash(&id.node, id.incarnation)
}

fn kind(message: &ReplicationMessage) -> &'static str {
    match message {
        ReplicationMessage::Heartbeat { delta: Some(_), .. } => "heartbeat",
        ReplicationMessage::Heartbeat { delta: None, .. } => "empty heartbeat",
        ReplicationMessage::TransferRequest { .. } => "transfer request",
        ReplicationMessage::TransferAck { payload, .. } if payload.is_full() => "full transfer",
        ReplicationMessage::TransferAck { .. } => "delta transfer",
        ReplicationMessage::GracefulPermdown { .. } => "graceful permdown",
        ReplicationMessage::Retired { .. } => "retired",
    }
}

impl World {
    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            let _ = writeln!(t, "{:>6} {}", self.now, line());
        }
    }

    /// Starts node `i`: shard `s` is replica `incarnation + s`, as the server numbers them, so a
    /// node restarted with a used or smaller incarnation does the same to every shard.
    fn start(&mut self, i: usize, incarnation: u64) {
        self.incarnations[i].push(incarnation);
        let mut shards = Vec::with_capacity(self.pool);
        for s in 0..self.pool {
            let id = ReplicaId::new(name(i), incarnation.wrapping_add(s as u64));
            let phase = self.rng.below(10) * STEP_MS;
            // The run's config is valid by construction.
            let Ok(shard) = Shard::new(id, self.config.clone(), self.now) else {
                return;
            };
            shards.push(NodeShard {
                shard,
                next_tick_ms: self.now + phase,
                flush_at: None,
                last_flush_ms: None,
                greet: false,
                tracked: BTreeMap::new(),
                replay: BTreeMap::new(),
                gone: BTreeMap::new(),
                permdowned: BTreeMap::new(),
            });
        }
        self.nodes[i] = Some(Node { shards });
        self.log(|| format!("start n{i}#{incarnation}"));
        self.greet_all();
    }

    fn shard_mut(&mut self, i: usize, s: usize) -> Option<&mut NodeShard> {
        self.nodes[i].as_mut()?.shards.get_mut(s)
    }

    /// The incarnation of a restart: usually fresh, sometimes smaller than the last one, sometimes
    /// one the node used before.
    fn restart_incarnation(&mut self, i: usize) -> u64 {
        let used = self.incarnations[i].clone();
        let last = used.last().copied().unwrap_or(0);
        match self.rng.below(10) {
            6..=7 if last > 0 => {
                self.stats.backward_restarts += 1;
                self.rng.below(last)
            }
            8..=9 if !used.is_empty() => {
                self.stats.reused_restarts += 1;
                used[self.rng.below(used.len() as u64) as usize]
            }
            _ => self.rng.next_u64(),
        }
    }

    /// The transports of live nodes reach a peer they did not reach: the server greets it.
    fn greet_all(&mut self) {
        if self.server_paths {
            for node in self.nodes.iter_mut().flatten() {
                for shard in &mut node.shards {
                    shard.greet = true;
                }
            }
        }
    }

    /// Checks and records what one call on shard `s` of node `i` produced, sends its messages,
    /// and answers a peer coming up with `heartbeat_now` as the server does.
    fn apply(
        &mut self,
        (i, s): (usize, usize),
        output: Output,
        what: &str,
        faults: bool,
    ) -> Result<(), String> {
        if !output.events.is_empty() {
            let events = output.events.clone();
            self.log(|| format!("{} events {events:?} ({what})", at(i, s)));
        }
        self.check_diff((i, s), &output.diff, &output.events, what)?;
        let reincarnated = output
            .events
            .iter()
            .filter(|e| matches!(e, ReplicaEvent::Reincarnated { .. }))
            .count();
        if reincarnated > 0 {
            self.stats.reincarnations += reincarnated;
            self.refresh_model(i, s)?;
        }
        self.send((i, s), output.messages, faults);
        let met_a_peer = output
            .events
            .iter()
            .any(|e| matches!(e, ReplicaEvent::Up(_)));
        if met_a_peer && self.server_paths {
            let now = self.now;
            if let Some(node) = self.shard_mut(i, s) {
                let hello = node.shard.heartbeat_now(now);
                self.stats.heartbeats_now += 1;
                self.apply((i, s), hello, "heartbeat_now", faults)?;
            }
        }
        Ok(())
    }

    /// Replays a diff on the view of shard `s` of node `i` and checks that it holds only the
    /// shard's own topics and that nothing removed comes back.
    fn check_diff(
        &mut self,
        (i, s): (usize, usize),
        diff: &Diff,
        events: &[ReplicaEvent],
        what: &str,
    ) -> Result<(), String> {
        let (now, pool, retirement) = (self.now, self.pool, self.config.permdown_period_ms);
        let Some(node) = self.shard_mut(i, s) else {
            return Ok(());
        };
        let n = at(i, s);
        // Leaves of a replica that went down in this call are hidden, not gone.
        let mut hidden: BTreeSet<u64> = BTreeSet::new();
        for e in events {
            match e {
                ReplicaEvent::Up(id) => {
                    // A permdowned replica is retired: nothing of it is accepted until that
                    // expires, however late its messages arrive.
                    if let Some(t) = node.permdowned.get(&hash_of(id)) {
                        if now < t + retirement {
                            return Err(format!(
                                "{n} has {id} up again ({what}) {} ms after permdowning it",
                                now - t
                            ));
                        }
                    }
                }
                ReplicaEvent::Down(id) => {
                    hidden.insert(hash_of(id));
                }
                ReplicaEvent::Permdown(id) => {
                    hidden.insert(hash_of(id));
                    node.permdowned.insert(hash_of(id), now);
                }
                _ => {}
            }
        }
        for (topic, t) in diff.iter() {
            if shard_index(topic, pool) != s {
                return Err(format!(
                    "{n} reported a diff of {topic}, which lives in shard {} ({what})",
                    shard_index(topic, pool)
                ));
            }
            for (key, p) in &t.leaves {
                let k = (topic.to_string(), key.to_string(), p.phx_ref.to_string());
                if node.replay.remove(&k).is_none() {
                    return Err(format!("{n} reported a leave of absent {k:?} ({what})"));
                }
                if !hidden.contains(&p.phx_ref.replica_hash) {
                    node.gone.insert(p.phx_ref, now);
                }
            }
            for (key, p) in &t.joins {
                let k = (topic.to_string(), key.to_string(), p.phx_ref.to_string());
                if let Some(left) = node.gone.remove(&p.phx_ref) {
                    let owner = p.phx_ref.replica_hash;
                    if node.permdowned.get(&owner).is_none_or(|t| *t < left) {
                        return Err(format!(
                            "{n} shows {k:?} again ({what}): it left for good at {left} ms and \
                             its owner was not permdowned since"
                        ));
                    }
                }
                let meta = p.meta_json.as_str().to_string();
                if node.replay.insert(k.clone(), meta).is_some() {
                    return Err(format!("{n} reported a second join of {k:?} ({what})"));
                }
            }
        }
        if self.trace.is_some() && !diff.is_empty() {
            let summary: Vec<String> = diff
                .iter()
                .flat_map(|(topic, t)| {
                    let j = t
                        .joins
                        .iter()
                        .map(move |(k, p)| format!("+{topic}/{k}/{}", p.phx_ref));
                    let l = t
                        .leaves
                        .iter()
                        .map(move |(k, p)| format!("-{topic}/{k}/{}", p.phx_ref));
                    j.chain(l).collect::<Vec<_>>()
                })
                .collect();
            self.log(|| format!("{n} diff ({what}): {}", summary.join(" ")));
        }
        Ok(())
    }

    /// After a new incarnation the shard's presences carry new refs: read them back.
    fn refresh_model(&mut self, i: usize, s: usize) -> Result<(), String> {
        let Some(node) = self.shard_mut(i, s) else {
            return Ok(());
        };
        let slots: Vec<(u64, String, String)> = node.tracked.keys().cloned().collect();
        for slot in slots {
            let found = node
                .shard
                .get_by_conn(slot.0)
                .into_iter()
                .find(|(t, k, _)| **t == *slot.1 && **k == *slot.2);
            match (found, node.tracked.get_mut(&slot)) {
                (Some((_, _, p)), Some(entry)) => entry.0 = p.phx_ref,
                _ => {
                    return Err(format!(
                        "{} lost {slot:?} when it took a new incarnation",
                        at(i, s)
                    ))
                }
            }
        }
        Ok(())
    }

    /// Puts what shard `s` of node `from` sends on the wire, to shard `s` of its peers.
    fn send(&mut self, (from, s): (usize, usize), out: Vec<Outgoing>, faults: bool) {
        for o in out {
            let Ok(bytes) = o.message.encode() else {
                continue;
            };
            let targets: Vec<usize> = match &o.to {
                Destination::Broadcast => (0..self.nodes.len()).filter(|j| *j != from).collect(),
                Destination::Replica(id) => index(&id.node).into_iter().collect(),
            };
            for to in targets {
                if faults
                    && (self.blocked.contains(&(from, to)) || self.rng.chance(self.drop_per_mille))
                {
                    continue;
                }
                let copies = if faults && self.rng.chance(self.dup_per_mille) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let delay = if faults && self.rng.chance(self.late_per_mille) {
                        self.stats.late_messages += 1;
                        self.rng.below(2 * self.config.permdown_period_ms + 1)
                    } else {
                        self.rng.below(self.max_delay_ms + 1)
                    };
                    let order = self.rng.next_u64();
                    self.network.push(Reverse(InFlight {
                        deliver_at: self.now + delay,
                        order,
                        from: name(from),
                        to: name(to),
                        shard: s,
                        bytes: bytes.clone(),
                    }));
                }
            }
        }
    }

    fn deliver_due(&mut self, faults: bool) -> Result<(), String> {
        let now = self.now;
        let mut due = Vec::new();
        while self.network.peek().is_some_and(|m| m.0.deliver_at <= now) {
            if let Some(Reverse(m)) = self.network.pop() {
                due.push(m);
            }
        }
        for m in due {
            let (Some(from), Some(to)) = (index(&m.from), index(&m.to)) else {
                continue;
            };
            if faults && self.blocked.contains(&(from, to)) {
                continue;
            }
            let message = ReplicationMessage::decode(&m.bytes)
                .map_err(|e| format!("a message we encoded did not decode: {e}"))?;
            let node = self.nodes[to].as_mut();
            let Some(node) = node.and_then(|n| n.shards.get_mut(m.shard)) else {
                continue;
            };
            let what = kind(&message);
            match what {
                "full transfer" => self.stats.full_transfers += 1,
                "delta transfer" => self.stats.delta_transfers += 1,
                _ => {}
            }
            let output = node.shard.receive(&m.from, message, now);
            self.stats.delivered += 1;
            self.apply(
                (to, m.shard),
                output,
                &format!("receive {what} from {}", at(from, m.shard)),
                faults,
            )?;
        }
        Ok(())
    }

    fn tick_due(&mut self, faults: bool) -> Result<(), String> {
        let (now, period) = (self.now, self.config.broadcast_period_ms);
        for i in 0..self.nodes.len() {
            for s in 0..self.pool {
                let Some(node) = self.shard_mut(i, s) else {
                    continue;
                };
                if node.next_tick_ms > now {
                    continue;
                }
                node.next_tick_ms += period;
                let output = node.shard.tick(now);
                self.apply((i, s), output, "tick", faults)?;
            }
        }
        Ok(())
    }

    /// The server's other two paths: pending local changes flushed at once (or at the end of the
    /// coalescing window), and a heartbeat when the network reaches a new peer.
    fn server_due(&mut self, faults: bool) -> Result<(), String> {
        let now = self.now;
        for i in 0..self.nodes.len() {
            for s in 0..self.pool {
                let Some(node) = self.shard_mut(i, s) else {
                    continue;
                };
                if node.greet {
                    node.greet = false;
                    let hello = node.shard.heartbeat_now(now);
                    self.stats.heartbeats_now += 1;
                    self.apply((i, s), hello, "heartbeat_now", faults)?;
                }
                let Some(node) = self.shard_mut(i, s) else {
                    continue;
                };
                if node.flush_at.is_some_and(|at| at <= now) {
                    node.flush_at = None;
                    node.last_flush_ms = Some(now);
                    let output = node.shard.flush_delta(now);
                    if !output.messages.is_empty() {
                        self.stats.flushes += 1;
                    }
                    self.apply((i, s), output, "flush_delta", faults)?;
                }
            }
        }
        Ok(())
    }

    fn schedule_flush(&mut self, i: usize, s: usize) {
        let (now, coalesce) = (self.now, self.coalesce_ms);
        if !self.server_paths {
            return;
        }
        if let Some(node) = self.shard_mut(i, s) {
            if node.flush_at.is_none() {
                node.flush_at = Some(match node.last_flush_ms {
                    Some(last) if last + coalesce > now => last + coalesce,
                    _ => now,
                });
            }
        }
    }

    fn random_operation(&mut self) -> Result<(), String> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let i = live[self.rng.below(live.len() as u64) as usize];
        let choice = self.rng.below(20);
        let random_slot = (
            self.rng.below(CONNS),
            TOPICS[self.rng.below(self.topics as u64) as usize].to_string(),
            KEYS[self.rng.below(self.keys as u64) as usize].to_string(),
        );
        let value = self.rng.below(100);
        let pick = self.rng.next_u64();
        let reuse_slot = self.rng.chance(700);
        let pool = self.pool;
        if choice >= 18 {
            // A connection ends: the server untracks it in every shard.
            let conn = random_slot.0;
            for s in 0..pool {
                let Some(node) = self.shard_mut(i, s) else {
                    return Ok(());
                };
                node.tracked.retain(|(c, _, _), _| *c != conn);
                let diff = node.shard.untrack_connection(conn);
                self.log(|| format!("{} untrack_connection c{conn}", at(i, s)));
                self.check_diff((i, s), &diff, &[], "untrack_connection")?;
                self.schedule_flush(i, s);
            }
            self.stats.operations += 1;
            return Ok(());
        }
        let Some(node) = self.nodes[i].as_mut() else {
            return Ok(());
        };
        // Updates and untracks mostly hit something tracked, so removals are frequent.
        let all = node.shards.iter().map(|s| s.tracked.len()).sum::<usize>();
        let existing = node
            .shards
            .iter()
            .flat_map(|s| s.tracked.keys())
            .nth(pick as usize % all.max(1));
        let slot = match existing {
            Some(existing) if choice >= 9 && reuse_slot => existing.clone(),
            _ => random_slot,
        };
        let s = shard_index(&slot.1, pool);
        let node = &mut node.shards[s];
        let (conn, topic, key) = (slot.0, slot.1.as_str(), slot.2.as_str());
        let tracked = node.tracked.contains_key(&slot);
        let meta = Meta::new(&format!("{{\"v\":{value}}}")).map_err(|e| e.to_string())?;
        let (diff, what) = match choice {
            0..=8 => match node.shard.track(conn, topic, key, meta.clone()) {
                Ok((r, diff)) if !tracked => {
                    node.tracked.insert(slot.clone(), (r, meta));
                    (diff, "track")
                }
                Err(_) if tracked => return Ok(()),
                _ => {
                    return Err(format!(
                        "{}: track of {slot:?} disagrees with the model",
                        at(i, s)
                    ))
                }
            },
            9..=12 => match node.shard.update(conn, topic, key, meta.clone()) {
                Ok((r, diff)) if tracked => {
                    node.tracked.insert(slot.clone(), (r, meta));
                    (diff, "update")
                }
                Err(_) if !tracked => return Ok(()),
                _ => {
                    return Err(format!(
                        "{}: update of {slot:?} disagrees with the model",
                        at(i, s)
                    ))
                }
            },
            _ => {
                node.tracked.remove(&slot);
                (node.shard.untrack(conn, topic, key), "untrack")
            }
        };
        self.stats.operations += 1;
        self.log(|| format!("{} {what} c{conn} {}/{}", at(i, s), slot.1, slot.2));
        self.check_diff((i, s), &diff, &[], what)?;
        self.schedule_flush(i, s);
        Ok(())
    }

    fn random_fault(&mut self) {
        let n = self.nodes.len();
        // Crash: the node and its model vanish; messages already sent stay in flight. Some
        // nodes are restarted at once by a supervisor, often with the same incarnation (a
        // counter that was not saved): its peers still hold the dead process's replica.
        if self.rng.chance(4) {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].take().is_some() {
                self.stats.stops += 1;
                self.log(|| format!("crash n{i}"));
                if self.rng.chance(400) {
                    self.restart_at[i] = Some(self.now + self.rng.below(30) * STEP_MS);
                }
            }
        }
        for i in 0..n {
            if self.restart_at[i].is_some_and(|at| at <= self.now) {
                self.restart_at[i] = None;
                if self.nodes[i].is_none() {
                    self.stats.restarts += 1;
                    let last = self.incarnations[i].last().copied();
                    let incarnation = match last {
                        Some(last) if self.rng.chance(500) => {
                            self.stats.reused_restarts += 1;
                            last
                        }
                        _ => self.restart_incarnation(i),
                    };
                    self.start(i, incarnation);
                }
            }
        }
        // Graceful shutdown.
        if self.rng.chance(2) {
            let i = self.rng.below(n as u64) as usize;
            if let Some(node) = self.nodes[i].take() {
                self.stats.stops += 1;
                self.log(|| format!("graceful shutdown n{i}"));
                for (s, mut node_shard) in node.shards.into_iter().enumerate() {
                    let out = node_shard.shard.graceful_permdown();
                    self.send((i, s), out, true);
                }
            }
        }
        // Restart a stopped node.
        if self.rng.chance(15) {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].is_none() {
                self.stats.restarts += 1;
                let incarnation = self.restart_incarnation(i);
                self.start(i, incarnation);
            }
        }
        // Split the cluster in two (some links one-way only), or heal.
        if self.rng.chance(5) {
            let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500)).collect();
            let one_way = self.rng.chance(300);
            for a in 0..n {
                for b in 0..n {
                    if side[a] && !side[b] {
                        self.blocked.insert((a, b));
                        if !one_way {
                            self.blocked.insert((b, a));
                        }
                    }
                }
            }
            self.log(|| format!("partition {side:?} one_way={one_way}"));
        }
        if self.rng.chance(10) {
            self.blocked.clear();
            self.log(|| "heal".to_string());
            self.greet_all();
        }
    }

    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.now += STEP_MS;
        self.deliver_due(faults)?;
        self.tick_due(faults)?;
        if faults {
            if self.rng.chance(250) {
                self.random_operation()?;
            }
            self.random_fault();
        }
        self.server_due(faults)?;
        Ok(())
    }

    /// The end state of every shard index, checked on its own; returns the presences listed.
    fn check(&self) -> Result<usize, String> {
        let mut listed = 0;
        for s in 0..self.pool {
            listed += self.check_shard(s)?;
        }
        Ok(listed)
    }

    fn check_shard(&self, s: usize) -> Result<usize, String> {
        let shards = || {
            self.nodes
                .iter()
                .enumerate()
                .filter_map(move |(i, n)| Some((i, n.as_ref()?.shards.get(s)?)))
        };
        let mut expected: BTreeSet<Element> = BTreeSet::new();
        for (_, node) in shards() {
            for ((_, topic, key), (r, meta)) in &node.tracked {
                expected.insert((
                    topic.clone(),
                    key.clone(),
                    r.to_string(),
                    meta.as_str().into(),
                ));
            }
        }
        let live: BTreeSet<ReplicaId> = shards().map(|(_, n)| n.shard.replica().clone()).collect();
        for (i, node) in shards() {
            let n = at(i, s);
            let listed: BTreeSet<Element> = node
                .shard
                .state()
                .snapshot()
                .into_iter()
                .map(|(t, k, p)| {
                    (
                        t.to_string(),
                        k.to_string(),
                        p.phx_ref.to_string(),
                        p.meta_json.as_str().into(),
                    )
                })
                .collect();
            if let Some((topic, ..)) = listed.iter().find(|e| shard_index(&e.0, self.pool) != s) {
                return Err(format!("{n} lists {topic}, which lives in another shard"));
            }
            if listed != expected {
                let ghosts: Vec<_> = listed.difference(&expected).collect();
                let lost: Vec<_> = expected.difference(&listed).collect();
                return Err(format!("{n} lists ghosts {ghosts:?} and lost {lost:?}"));
            }
            let replayed: BTreeSet<Element> = node
                .replay
                .iter()
                .map(|((t, k, r), m)| (t.clone(), k.clone(), r.clone(), m.clone()))
                .collect();
            if replayed != expected {
                let extra: Vec<_> = replayed.difference(&expected).collect();
                let missing: Vec<_> = expected.difference(&replayed).collect();
                return Err(format!(
                    "{n}'s replayed diffs have extra {extra:?} and miss {missing:?}"
                ));
            }
            let peers: BTreeSet<ReplicaId> = node
                .shard
                .replicas()
                .into_iter()
                .filter(|(_, s)| *s == ReplicaStatus::Up)
                .map(|(r, _)| r)
                .collect();
            let mut others = live.clone();
            others.remove(node.shard.replica());
            if peers != others || node.shard.replicas().len() != others.len() {
                return Err(format!(
                    "{n} sees replicas {:?}, expected {others:?} up",
                    node.shard.replicas()
                ));
            }
        }
        Ok(expected.len())
    }
}

/// Runs the simulation for one seed; `Err` says what went wrong (with a trace of the run's last
/// events when `trace` is set).
pub fn run(seed: u64, trace: bool) -> Result<Stats, String> {
    let mut rng = Rng::new(seed);
    let n = 3 + rng.below(5) as usize;
    let drop_per_mille = [0, 50, 200][rng.below(3) as usize];
    let max_delay_ms = [0, 60, 350][rng.below(3) as usize];
    let late_per_mille = [0, 5, 20][rng.below(3) as usize];
    let fault_ms = 3_000 + rng.below(4) * 1_000;
    let topics = 2 + rng.below(TOPICS.len() as u64 - 1) as usize;
    let keys = 3 + rng.below(KEYS.len() as u64 - 2) as usize;
    let server_paths = rng.below(3) != 0;
    let coalesce_ms = [0, 10, 50][rng.below(3) as usize];
    let pool = 1 + rng.below(3) as usize;
    let config = config(&mut rng);
    let mut world = World {
        rng,
        config,
        now: 0,
        nodes: (0..n).map(|_| None).collect(),
        incarnations: vec![Vec::new(); n],
        restart_at: vec![None; n],
        network: BinaryHeap::new(),
        blocked: BTreeSet::new(),
        drop_per_mille,
        dup_per_mille: 50,
        late_per_mille,
        max_delay_ms,
        topics,
        keys,
        pool,
        server_paths,
        coalesce_ms,
        stats: Stats {
            nodes: n,
            shards: n * pool,
            ..Stats::default()
        },
        trace: trace.then(String::new),
    };
    let shown = world.config.clone();
    world.log(|| {
        format!(
            "seed {seed}: {n} nodes × {pool} shards, drop {drop_per_mille}‰, \
             delay ≤ {max_delay_ms} ms, late {late_per_mille}‰, {topics} topics × {keys} keys, \
             server paths {server_paths} (coalesce {coalesce_ms} ms), {shown:?}"
        )
    });
    for i in 0..n {
        let incarnation = world.rng.next_u64();
        world.start(i, incarnation);
    }
    let result = (|| {
        while world.now < fault_ms {
            world.step(true)?;
        }
        // Faults stop: links heal, nothing is dropped or sent late; ordinary delays (and so
        // reordering) remain.
        world.blocked.clear();
        world.greet_all();
        world.log(|| "faults stop".to_string());
        let c = world.config.clone();
        // The last late message arrives within twice the permdown period; a dead replica it
        // refreshed is permdowned one permdown period after that, and a live node it displaced
        // has taken a new incarnation (at most once per down period) long before.
        let settle = max_delay_ms + 3 * c.permdown_period_ms + c.down_period_ms + 500;
        let end = world.now + settle;
        while world.now < end {
            world.step(false)?;
        }
        world.check()
    })();
    match result {
        Ok(presences) => {
            world.stats.final_presences = presences;
            Ok(world.stats)
        }
        Err(e) => {
            let tail = world
                .trace
                .map(|t| {
                    let lines: Vec<&str> = t.lines().collect();
                    lines[lines.len().saturating_sub(400)..].join("\n")
                })
                .unwrap_or_default();
            Err(format!("{e}\n{tail}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_u64(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn cluster_converges_with_no_ghost_and_no_loss_under_faults() {
        let seeds: Vec<u64> = match env_u64("ROLLCALL_SIM_SEED") {
            Some(seed) => vec![seed],
            None => (0..env_u64("ROLLCALL_SIM_SEEDS").unwrap_or(500)).collect(),
        };
        let mut total = Stats::default();
        for seed in &seeds {
            match run(*seed, false) {
                Ok(stats) => total.add(&stats),
                Err(_) => {
                    let detail = run(*seed, true).err().unwrap_or_default();
                    panic!(
                        "simulation seed {seed} failed: {detail}\n\nreplay with: \
                         ROLLCALL_SIM_SEED={seed} cargo test -p rollcall-core --lib \
                         tracker::sim -- --nocapture"
                    );
                }
            }
        }
        eprintln!("{} seeds passed: {total:?}", seeds.len());
        assert!(
            seeds.len() < 20 || total.final_presences > 0,
            "runs should end with presences"
        );
        assert!(
            seeds.len() < 20 || total.shards > total.nodes,
            "some runs should give nodes a pool of shards"
        );
    }

    #[test]
    fn topics_are_routed_by_fnv_1a_as_the_server_routes_them() {
        // The published 64-bit FNV-1a values of "a" and "foobar".
        for pool in 1..=7 {
            assert_eq!(
                shard_index("a", pool) as u64,
                0xaf63_dc4c_8601_ec8c % pool as u64
            );
            assert_eq!(
                shard_index("foobar", pool) as u64,
                0x8594_4171_f739_67e8 % pool as u64
            );
        }
        assert_eq!(shard_index("room:a", 0), 0);
        let spread: BTreeSet<usize> = TOPICS.iter().map(|t| shard_index(t, 3)).collect();
        assert_eq!(
            spread.len(),
            3,
            "the simulated topics should use every shard of a pool"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let a = run(7, false).map(|s| (s.operations, s.delivered, s.final_presences));
        let b = run(7, false).map(|s| (s.operations, s.delivered, s.final_presences));
        assert_eq!(a, b);
    }
}
