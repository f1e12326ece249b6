//! A seeded simulation of a tracker cluster, for finding convergence bugs.
//!
//! 3–7 shards run over a virtual network that delays, reorders, duplicates and drops messages
//! (every message goes through the binary codec), splits into partitions and heals, while nodes
//! crash, shut down gracefully and restart with a new incarnation, under random
//! track / update / untrack traffic. Then the faults stop and virtual time runs on. At the end:
//!
//! * every live node lists exactly the presences tracked on live nodes — no ghost (nothing of a
//!   dead connection, a crashed or gracefully stopped node), no loss;
//! * the diffs each live node reported, replayed from empty, give that same set, and replaying
//!   never joins a presence twice nor leaves one that is absent;
//! * every live node sees every other live node up, and no dead one.
//!
//! Everything is a function of the seed ([`run`]); a failure names the seed and the command that
//! replays it. Compiled for `cargo test` and with the `sim` feature.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::meta::{mix64, Meta, PhxRef};
use super::replica::{ReplicaId, ReplicaStatus};
use super::shard::{Destination, Outgoing, Shard, ShardConfig};
use super::Diff;

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
    /// Local operations applied.
    pub operations: usize,
    /// Messages delivered.
    pub delivered: usize,
    /// Crashes plus graceful shutdowns.
    pub stops: usize,
    /// Restarts with a new incarnation.
    pub restarts: usize,
    /// Presences listed at the end.
    pub final_presences: usize,
    /// Transfer answers carrying a cached delta generation.
    pub delta_transfers: usize,
    /// Transfer answers carrying the full state.
    pub full_transfers: usize,
}

const STEP_MS: u64 = 10;
const TOPICS: [&str; 3] = ["room:a", "room:b", "room:c"];
const KEYS: [&str; 5] = ["ann", "bob", "cat", "dan", "eve"];

/// The shard configuration of one run, varied by seed.
fn config(rng: &mut Rng) -> ShardConfig {
    ShardConfig {
        broadcast_period_ms: 100,
        max_silent_periods: [0, 3][rng.below(2) as usize],
        // Longer than the idle heartbeat interval (at most 400 ms) plus the worst network delay
        // (350 ms), so a healthy peer is never marked down once faults stop.
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

struct Node {
    shard: Shard,
    next_tick_ms: u64,
    /// The model: what this node's connections track, `(conn, topic, key) -> (ref, meta)`.
    tracked: BTreeMap<(u64, String, String), (PhxRef, Meta)>,
    /// Every reported diff replayed: `(topic, key, ref) -> meta`.
    replay: BTreeMap<(String, String, String), String>,
}

struct InFlight {
    deliver_at: u64,
    order: u64,
    from: String,
    to: String,
    bytes: Vec<u8>,
}

struct World {
    rng: Rng,
    config: ShardConfig,
    now: u64,
    nodes: Vec<Option<Node>>,
    incarnations: Vec<u64>,
    network: Vec<InFlight>,
    /// Blocked directed links `(from, to)` by node index.
    blocked: BTreeSet<(usize, usize)>,
    drop_per_mille: u64,
    dup_per_mille: u64,
    max_delay_ms: u64,
    stats: Stats,
    trace: Option<String>,
}

fn name(i: usize) -> String {
    format!("n{i}")
}

fn index(node: &str) -> Option<usize> {
    node.strip_prefix('n')?.parse().ok()
}

impl World {
    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            let _ = writeln!(t, "{:>6} {}", self.now, line());
        }
    }

    fn start(&mut self, i: usize) {
        self.incarnations[i] += 1;
        let id = ReplicaId::new(name(i), self.incarnations[i]);
        let phase = self.rng.below(10) * STEP_MS;
        // The run's config is valid by construction.
        let Ok(shard) = Shard::new(id, self.config.clone(), self.now) else {
            return;
        };
        self.nodes[i] = Some(Node {
            shard,
            next_tick_ms: self.now + phase,
            tracked: BTreeMap::new(),
            replay: BTreeMap::new(),
        });
        let inc = self.incarnations[i];
        self.log(|| format!("start n{i}#{inc}"));
    }

    fn apply_diff(&mut self, i: usize, diff: &Diff, what: &str) -> Result<(), String> {
        let Some(node) = self.nodes[i].as_mut() else {
            return Ok(());
        };
        for (topic, t) in diff.iter() {
            for (key, p) in &t.leaves {
                let k = (topic.to_string(), key.to_string(), p.phx_ref.to_string());
                if node.replay.remove(&k).is_none() {
                    return Err(format!("n{i} reported a leave of absent {k:?} ({what})"));
                }
            }
            for (key, p) in &t.joins {
                let k = (topic.to_string(), key.to_string(), p.phx_ref.to_string());
                let meta = p.meta_json.as_str().to_string();
                if node.replay.insert(k.clone(), meta).is_some() {
                    return Err(format!("n{i} reported a second join of {k:?} ({what})"));
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
            self.log(|| format!("n{i} diff ({what}): {}", summary.join(" ")));
        }
        Ok(())
    }

    fn send(&mut self, from: usize, out: Vec<Outgoing>, faults: bool) {
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
                    let delay = self.rng.below(self.max_delay_ms + 1);
                    let order = self.rng.next_u64();
                    self.network.push(InFlight {
                        deliver_at: self.now + delay,
                        order,
                        from: name(from),
                        to: name(to),
                        bytes: bytes.clone(),
                    });
                }
            }
        }
    }

    fn deliver_due(&mut self, faults: bool) -> Result<(), String> {
        let now = self.now;
        let (mut due, rest): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|m| m.deliver_at <= now);
        self.network = rest;
        // Random order among messages due at the same time: reordering.
        due.sort_by_key(|m| (m.deliver_at, m.order));
        for m in due {
            let (Some(from), Some(to)) = (index(&m.from), index(&m.to)) else {
                continue;
            };
            if faults && self.blocked.contains(&(from, to)) {
                continue;
            }
            let message = super::ReplicationMessage::decode(&m.bytes)
                .map_err(|e| format!("a message we encoded did not decode: {e}"))?;
            let Some(node) = self.nodes[to].as_mut() else {
                continue;
            };
            let kind = match &message {
                super::ReplicationMessage::Heartbeat { .. } => "heartbeat",
                super::ReplicationMessage::TransferRequest { .. } => "transfer request",
                super::ReplicationMessage::TransferAck { payload, .. } => {
                    if payload.is_full() {
                        self.stats.full_transfers += 1;
                        "full transfer"
                    } else {
                        self.stats.delta_transfers += 1;
                        "delta transfer"
                    }
                }
                super::ReplicationMessage::GracefulPermdown { .. } => "graceful permdown",
            };
            let output = node.shard.receive(&m.from, message, now);
            self.stats.delivered += 1;
            if !output.events.is_empty() {
                let events = output.events.clone();
                self.log(|| format!("n{to} events {events:?} (from {})", m.from));
            }
            self.apply_diff(to, &output.diff, &format!("receive {kind} from {}", m.from))?;
            self.send(to, output.messages, faults);
        }
        Ok(())
    }

    fn tick_due(&mut self, faults: bool) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let Some(node) = self.nodes[i].as_mut() else {
                continue;
            };
            if node.next_tick_ms > self.now {
                continue;
            }
            node.next_tick_ms += self.config.broadcast_period_ms;
            let output = node.shard.tick(self.now);
            if !output.events.is_empty() {
                let events = output.events.clone();
                self.log(|| format!("n{i} events {events:?} (tick)"));
            }
            self.apply_diff(i, &output.diff, "tick")?;
            self.send(i, output.messages, faults);
        }
        Ok(())
    }

    fn random_operation(&mut self) -> Result<(), String> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let i = live[self.rng.below(live.len() as u64) as usize];
        let conn = self.rng.below(4);
        let topic = TOPICS[self.rng.below(TOPICS.len() as u64) as usize];
        let key = KEYS[self.rng.below(KEYS.len() as u64) as usize];
        let value = self.rng.below(100);
        let choice = self.rng.below(10);
        let Some(node) = self.nodes[i].as_mut() else {
            return Ok(());
        };
        let slot = (conn, topic.to_string(), key.to_string());
        let tracked = node.tracked.contains_key(&slot);
        let meta = Meta::new(&format!("{{\"v\":{value}}}")).map_err(|e| e.to_string())?;
        let (diff, what) = match choice {
            0..=4 => match node.shard.track(conn, topic, key, meta.clone()) {
                Ok((r, diff)) if !tracked => {
                    node.tracked.insert(slot, (r, meta));
                    (diff, "track")
                }
                Err(_) if tracked => return Ok(()),
                _ => return Err(format!("n{i}: track of {slot:?} disagrees with the model")),
            },
            5..=6 => match node.shard.update(conn, topic, key, meta.clone()) {
                Ok((r, diff)) if tracked => {
                    node.tracked.insert(slot, (r, meta));
                    (diff, "update")
                }
                Err(_) if !tracked => return Ok(()),
                _ => return Err(format!("n{i}: update of {slot:?} disagrees with the model")),
            },
            7..=8 => {
                node.tracked.remove(&slot);
                (node.shard.untrack(conn, topic, key), "untrack")
            }
            _ => {
                node.tracked.retain(|(c, _, _), _| *c != conn);
                (node.shard.untrack_connection(conn), "untrack_connection")
            }
        };
        self.stats.operations += 1;
        self.log(|| format!("n{i} {what} c{conn} {topic}/{key}"));
        self.apply_diff(i, &diff, what)
    }

    fn random_fault(&mut self) {
        let n = self.nodes.len();
        // Crash: the node and its model vanish; messages already sent stay in flight.
        if self.rng.chance(4) {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].take().is_some() {
                self.stats.stops += 1;
                self.log(|| format!("crash n{i}"));
            }
        }
        // Graceful shutdown.
        if self.rng.chance(2) {
            let i = self.rng.below(n as u64) as usize;
            if let Some(mut node) = self.nodes[i].take() {
                let out = node.shard.graceful_permdown();
                self.stats.stops += 1;
                self.log(|| format!("graceful shutdown n{i}"));
                self.send(i, out, true);
            }
        }
        // Restart a stopped node with a new incarnation.
        if self.rng.chance(15) {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].is_none() {
                self.stats.restarts += 1;
                self.start(i);
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
        Ok(())
    }

    fn check(&self) -> Result<usize, String> {
        let mut expected: BTreeSet<Element> = BTreeSet::new();
        for node in self.nodes.iter().flatten() {
            for ((_, topic, key), (r, meta)) in &node.tracked {
                expected.insert((
                    topic.clone(),
                    key.clone(),
                    r.to_string(),
                    meta.as_str().into(),
                ));
            }
        }
        let live: BTreeSet<ReplicaId> = self
            .nodes
            .iter()
            .flatten()
            .map(|n| n.shard.replica().clone())
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
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
            if listed != expected {
                let ghosts: Vec<_> = listed.difference(&expected).collect();
                let lost: Vec<_> = expected.difference(&listed).collect();
                return Err(format!("n{i} lists ghosts {ghosts:?} and lost {lost:?}"));
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
                    "n{i}'s replayed diffs have extra {extra:?} and miss {missing:?}"
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
                    "n{i} sees replicas {:?}, expected {others:?} up",
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
    let fault_ms = 3_000 + rng.below(4) * 1_000;
    let config = config(&mut rng);
    let mut world = World {
        rng,
        config,
        now: 0,
        nodes: (0..n).map(|_| None).collect(),
        incarnations: vec![0; n],
        network: Vec::new(),
        blocked: BTreeSet::new(),
        drop_per_mille,
        dup_per_mille: 50,
        max_delay_ms,
        stats: Stats {
            nodes: n,
            ..Stats::default()
        },
        trace: trace.then(String::new),
    };
    for i in 0..n {
        world.start(i);
    }
    let result = (|| {
        while world.now < fault_ms {
            world.step(true)?;
        }
        // Faults stop: links heal, nothing is dropped; delays (and so reordering) remain.
        world.blocked.clear();
        world.log(|| "faults stop".to_string());
        let c = world.config.clone();
        let settle = max_delay_ms + c.permdown_period_ms + 2 * c.down_period_ms + 2_000;
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
                Ok(stats) => {
                    total.nodes += stats.nodes;
                    total.operations += stats.operations;
                    total.delivered += stats.delivered;
                    total.stops += stats.stops;
                    total.restarts += stats.restarts;
                    total.final_presences += stats.final_presences;
                    total.delta_transfers += stats.delta_transfers;
                    total.full_transfers += stats.full_transfers;
                }
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
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let a = run(7, false).map(|s| (s.operations, s.delivered, s.final_presences));
        let b = run(7, false).map(|s| (s.operations, s.delivered, s.final_presences));
        assert_eq!(a, b);
    }
}
