//! The multi-node scenarios of Phoenix's shard replication tests (spec §4.2) and the config rules
//! (§4.3), against [`Shard`] over an in-memory network with virtual time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rollcall_core::tracker::{
    ConfigError, Destination, Diff, Meta, Outgoing, ReplicaEvent, ReplicaId, ReplicaStatus,
    ReplicationMessage, Shard, ShardConfig,
};

const PERIOD: u64 = 100;

fn config() -> ShardConfig {
    ShardConfig {
        broadcast_period_ms: PERIOD,
        max_silent_periods: 2,
        down_period_ms: 400,
        permdown_period_ms: 1_500,
        ..ShardConfig::default()
    }
}

fn meta(json: &str) -> Meta {
    Meta::new(json).unwrap()
}

/// Shards on an instant, lossless network; links can be cut per direction.
struct Cluster {
    now: u64,
    shards: BTreeMap<String, Shard>,
    diffs: BTreeMap<String, Vec<Diff>>,
    events: BTreeMap<String, Vec<ReplicaEvent>>,
    sent: Vec<(String, String, &'static str)>,
    cut: BTreeSet<(String, String)>,
    paused: BTreeSet<String>,
    config: ShardConfig,
}

fn kind(m: &ReplicationMessage) -> &'static str {
    match m {
        ReplicationMessage::Heartbeat { delta: Some(_), .. } => "delta",
        ReplicationMessage::Heartbeat { delta: None, .. } => "empty",
        ReplicationMessage::TransferRequest { .. } => "transfer_req",
        ReplicationMessage::TransferAck { payload, .. } if payload.is_full() => "transfer_ack",
        ReplicationMessage::TransferAck { .. } => "transfer_ack_delta",
        ReplicationMessage::GracefulPermdown { .. } => "graceful_permdown",
        ReplicationMessage::Retired { .. } => "retired",
    }
}

impl Cluster {
    fn new(nodes: &[&str]) -> Cluster {
        let mut c = Cluster {
            now: 0,
            shards: BTreeMap::new(),
            diffs: BTreeMap::new(),
            events: BTreeMap::new(),
            sent: Vec::new(),
            cut: BTreeSet::new(),
            paused: BTreeSet::new(),
            config: config(),
        };
        for n in nodes {
            c.start(n, 1);
        }
        c
    }

    fn start(&mut self, node: &str, incarnation: u64) {
        let shard = Shard::new(
            ReplicaId::new(node, incarnation),
            self.config.clone(),
            self.now,
        )
        .unwrap();
        self.shards.insert(node.to_string(), shard);
    }

    fn kill(&mut self, node: &str) {
        self.shards.remove(node);
    }

    fn shard(&mut self, node: &str) -> &mut Shard {
        self.shards.get_mut(node).unwrap()
    }

    fn send(&mut self, from: &str, out: Vec<Outgoing>) {
        let mut queue: VecDeque<(String, Outgoing)> =
            out.into_iter().map(|o| (from.to_string(), o)).collect();
        while let Some((from, o)) = queue.pop_front() {
            let targets: Vec<String> = match &o.to {
                Destination::Broadcast => self
                    .shards
                    .keys()
                    .filter(|n| **n != from)
                    .cloned()
                    .collect(),
                Destination::Replica(id) => vec![id.node.clone()],
            };
            for to in targets {
                self.sent.push((from.clone(), to.clone(), kind(&o.message)));
                if self.cut.contains(&(from.clone(), to.clone())) || self.paused.contains(&to) {
                    continue;
                }
                let now = self.now;
                let Some(shard) = self.shards.get_mut(&to) else {
                    continue;
                };
                let output = shard.receive(&from, o.message.clone(), now);
                self.diffs.entry(to.clone()).or_default().push(output.diff);
                self.events
                    .entry(to.clone())
                    .or_default()
                    .extend(output.events);
                queue.extend(output.messages.into_iter().map(|m| (to.clone(), m)));
            }
        }
    }

    /// Advances time by one period and ticks every running shard.
    fn tick(&mut self) {
        self.now += PERIOD;
        let nodes: Vec<String> = self.shards.keys().cloned().collect();
        for n in nodes {
            if self.paused.contains(&n) {
                continue;
            }
            let now = self.now;
            let output = self.shard(&n).tick(now);
            self.diffs.entry(n.clone()).or_default().push(output.diff);
            self.events
                .entry(n.clone())
                .or_default()
                .extend(output.events);
            self.send(&n, output.messages);
        }
    }

    fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.tick();
        }
    }

    fn keys(&mut self, node: &str, topic: &str) -> Vec<String> {
        self.shard(node)
            .list(topic)
            .into_iter()
            .map(|(k, _)| k.to_string())
            .collect()
    }

    fn take_events(&mut self, node: &str) -> Vec<ReplicaEvent> {
        self.events.remove(node).unwrap_or_default()
    }

    fn take_diffs(&mut self, node: &str) -> Vec<Diff> {
        self.diffs
            .remove(node)
            .unwrap_or_default()
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect()
    }

    fn count_sent(&self, from: &str, to: &str, kind: &str) -> usize {
        self.sent
            .iter()
            .filter(|(f, t, k)| f == from && t == to && *k == kind)
            .count()
    }
}

fn joined(diffs: &[Diff], topic: &str) -> Vec<String> {
    diffs
        .iter()
        .filter_map(|d| d.topic(topic))
        .flat_map(|t| t.joins.iter().map(|(k, _)| k.to_string()))
        .collect()
}

fn left(diffs: &[Diff], topic: &str) -> Vec<String> {
    diffs
        .iter()
        .filter_map(|d| d.topic(topic))
        .flat_map(|t| t.leaves.iter().map(|(k, _)| k.to_string()))
        .collect()
}

fn rid(node: &str, inc: u64) -> ReplicaId {
    ReplicaId::new(node, inc)
}

#[test]
fn first_tick_heartbeats_at_once_then_every_max_silent_periods() {
    let mut c = Cluster::new(&["a", "b"]);
    c.ticks(7);
    // Ticks 1, 4, 7: an empty heartbeat after every 2 quiet ticks.
    assert_eq!(c.count_sent("a", "b", "empty"), 3);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.tick();
    assert_eq!(
        c.count_sent("a", "b", "delta"),
        1,
        "local changes go out on the next tick"
    );
}

#[test]
fn heartbeat_from_an_unseen_node_brings_it_up_and_triggers_a_transfer_request() {
    let mut c = Cluster::new(&["a"]);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.ticks(3);
    c.start("b", 1);
    c.ticks(3);
    assert!(c.take_events("b").contains(&ReplicaEvent::Up(rid("a", 1))));
    assert!(c.take_events("a").contains(&ReplicaEvent::Up(rid("b", 1))));
    assert!(c.count_sent("b", "a", "transfer_req") >= 1);
    assert!(
        c.count_sent("a", "b", "transfer_ack") + c.count_sent("a", "b", "transfer_ack_delta") >= 1
    );
    assert_eq!(c.keys("b", "lobby"), ["alice"]);
    assert_eq!(joined(&c.take_diffs("b"), "lobby"), ["alice"]);
}

#[test]
fn transfer_requests_go_only_to_the_peer_whose_clock_covers_the_others() {
    let mut c = Cluster::new(&[]);
    // Heartbeat every tick, so both peers' clocks land in the newcomer's sample window.
    c.config.max_silent_periods = 0;
    c.start("a", 1);
    c.start("c", 1);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.shard("c").track(1, "lobby", "carol", meta("{}")).unwrap();
    c.ticks(4);
    // c's clock now covers a's only if c has seen all of a and a not all of c: make a lag.
    c.cut.insert(("c".into(), "a".into()));
    c.shard("c").track(2, "lobby", "cid", meta("{}")).unwrap();
    c.ticks(1);
    c.start("z", 1);
    c.ticks(6);
    assert!(c.count_sent("z", "c", "transfer_req") >= 1);
    assert_eq!(
        c.count_sent("z", "a", "transfer_req"),
        0,
        "a is dominated by c"
    );
    assert_eq!(c.keys("z", "lobby"), ["alice", "carol", "cid"]);
}

#[test]
fn presences_of_a_dead_node_stay_gone_when_it_restarts_with_a_new_incarnation() {
    let mut c = Cluster::new(&["a", "b"]);
    c.shard("a").track(1, "lobby", "old", meta("{}")).unwrap();
    c.ticks(3);
    assert_eq!(c.keys("b", "lobby"), ["old"]);
    c.kill("a");
    c.ticks(20); // past permdown
    assert!(c
        .take_events("b")
        .contains(&ReplicaEvent::Permdown(rid("a", 1))));
    c.start("a", 2);
    c.shard("a").track(1, "lobby", "new", meta("{}")).unwrap();
    c.ticks(6);
    assert_eq!(c.keys("b", "lobby"), ["new"]);
    assert_eq!(c.keys("a", "lobby"), ["new"]);
}

#[test]
fn a_restart_seen_before_down_detection_downs_and_permdowns_the_old_incarnation() {
    let mut c = Cluster::new(&["a", "b"]);
    c.shard("a").track(1, "lobby", "old", meta("{}")).unwrap();
    c.ticks(3);
    c.take_diffs("b");
    c.take_events("b");
    c.kill("a");
    c.start("a", 2);
    c.ticks(1);
    let events = c.take_events("b");
    assert_eq!(
        events,
        [
            ReplicaEvent::Down(rid("a", 1)),
            ReplicaEvent::Permdown(rid("a", 1)),
            ReplicaEvent::Up(rid("a", 2))
        ]
    );
    assert_eq!(left(&c.take_diffs("b"), "lobby"), ["old"]);
    assert!(c.keys("b", "lobby").is_empty());
}

#[test]
fn tempdown_then_up_with_the_same_incarnation_then_permdown_after_silence() {
    let mut c = Cluster::new(&["a", "b"]);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.ticks(3);
    c.take_diffs("b");
    c.paused.insert("a".into()); // suspended: neither sends nor receives
    c.ticks(6);
    assert!(c
        .take_events("b")
        .contains(&ReplicaEvent::Down(rid("a", 1))));
    assert_eq!(left(&c.take_diffs("b"), "lobby"), ["alice"]);
    assert_eq!(
        c.shard("b").replicas(),
        [(rid("a", 1), ReplicaStatus::Down)]
    );
    c.paused.remove("a");
    c.ticks(4);
    assert!(c.take_events("b").contains(&ReplicaEvent::Up(rid("a", 1))));
    assert_eq!(joined(&c.take_diffs("b"), "lobby"), ["alice"]);
    c.kill("a");
    c.ticks(20);
    let events = c.take_events("b");
    assert_eq!(
        events,
        [
            ReplicaEvent::Down(rid("a", 1)),
            ReplicaEvent::Permdown(rid("a", 1))
        ]
    );
    assert!(c.shard("b").replicas().is_empty());
}

#[test]
fn local_and_remote_joins_and_leaves_are_reported() {
    let mut c = Cluster::new(&["a", "b"]);
    c.ticks(2);
    let (_, d) = c.shard("a").track(1, "lobby", "local", meta("{}")).unwrap();
    assert_eq!(joined(&[d], "lobby"), ["local"]);
    c.shard("b")
        .track(1, "lobby", "remote", meta("{}"))
        .unwrap();
    c.ticks(1);
    assert_eq!(joined(&c.take_diffs("a"), "lobby"), ["remote"]);
    assert_eq!(joined(&c.take_diffs("b"), "lobby"), ["local"]);
    let d = c.shard("a").untrack_connection(1);
    assert_eq!(left(&[d], "lobby"), ["local"]);
    c.shard("b").untrack_connection(1);
    c.ticks(1);
    assert_eq!(left(&c.take_diffs("a"), "lobby"), ["remote"]);
    assert_eq!(left(&c.take_diffs("b"), "lobby"), ["local"]);
    assert!(c.keys("a", "lobby").is_empty());
    assert!(c.keys("b", "lobby").is_empty());
}

#[test]
fn a_silent_node_is_reported_down_with_leaves_and_hidden_until_permdown() {
    let mut c = Cluster::new(&["a", "b"]);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.ticks(3);
    c.take_diffs("b");
    c.kill("a");
    c.ticks(5);
    assert_eq!(left(&c.take_diffs("b"), "lobby"), ["alice"]);
    assert_eq!(
        c.shard("b").replicas(),
        [(rid("a", 1), ReplicaStatus::Down)]
    );
    assert!(c.keys("b", "lobby").is_empty());
    assert_eq!(c.shard("b").state().len(), 1, "kept until permdown");
    c.ticks(15);
    assert_eq!(c.shard("b").state().len(), 0);
    assert!(c.take_diffs("b").is_empty(), "no second leave at permdown");
}

#[test]
fn untrack_without_a_presence_is_a_noop() {
    let mut c = Cluster::new(&["a"]);
    assert!(c.shard("a").untrack(1, "lobby", "nobody").is_empty());
    assert!(c.shard("a").untrack_connection(1).is_empty());
}

#[test]
fn untrack_with_a_topic_removes_only_that_presence() {
    let mut c = Cluster::new(&["a"]);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.shard("a").track(1, "room", "alice", meta("{}")).unwrap();
    let d = c.shard("a").untrack(1, "lobby", "alice");
    assert_eq!(left(&[d], "lobby"), ["alice"]);
    assert!(c.keys("a", "lobby").is_empty());
    assert_eq!(c.keys("a", "room"), ["alice"]);
    assert_eq!(c.shard("a").get_by_conn(1).len(), 1);
}

#[test]
fn untrack_connection_removes_it_from_every_topic() {
    let mut c = Cluster::new(&["a"]);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.shard("a").track(1, "room", "alice", meta("{}")).unwrap();
    let d = c.shard("a").untrack_connection(1);
    assert_eq!(d.len(), 2);
    assert!(c.shard("a").get_by_conn(1).is_empty());
}

#[test]
fn update_reports_a_leave_of_the_old_ref_and_a_join_with_phx_ref_prev_on_every_node() {
    let mut c = Cluster::new(&["a", "b"]);
    let (old, _) = c
        .shard("a")
        .track(1, "lobby", "alice", meta(r#"{"s":1}"#))
        .unwrap();
    c.ticks(3);
    c.take_diffs("b");
    let (new, d) = c
        .shard("a")
        .update(1, "lobby", "alice", meta(r#"{"s":2}"#))
        .unwrap();
    c.ticks(1);
    let remote = c.take_diffs("b");
    assert_eq!(remote.len(), 1);
    for diff in [&d, &remote[0]] {
        let t = diff.topic("lobby").unwrap();
        assert_eq!(t.leaves[0].1.phx_ref, old);
        assert_eq!(t.joins[0].1.phx_ref, new);
        assert_eq!(t.joins[0].1.phx_ref_prev, Some(old));
    }
    assert_ne!(old.to_string(), new.to_string());
}

#[test]
fn update_without_a_presence_is_refused() {
    let mut c = Cluster::new(&["a"]);
    let err = c
        .shard("a")
        .update(1, "lobby", "alice", meta("{}"))
        .unwrap_err();
    assert_eq!(err.key, "alice");
}

#[test]
fn tracking_the_same_connection_topic_and_key_twice_is_refused() {
    let mut c = Cluster::new(&["a"]);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    assert!(c.shard("a").track(1, "lobby", "alice", meta("{}")).is_err());
    assert!(c.shard("a").track(1, "room", "alice", meta("{}")).is_ok());
    assert!(c.shard("a").track(1, "lobby", "alicia", meta("{}")).is_ok());
    assert!(c.shard("a").track(2, "lobby", "alice", meta("{}")).is_ok());
}

#[test]
fn graceful_permdown_makes_peers_drop_the_presences_at_once() {
    let mut c = Cluster::new(&["a", "b"]);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.ticks(3);
    c.take_diffs("b");
    c.take_events("b");
    let out = c.shard("a").graceful_permdown();
    c.send("a", out);
    assert_eq!(left(&c.take_diffs("b"), "lobby"), ["alice"]);
    assert_eq!(
        c.take_events("b"),
        [
            ReplicaEvent::Down(rid("a", 1)),
            ReplicaEvent::Permdown(rid("a", 1))
        ]
    );
    assert!(c.shard("b").replicas().is_empty());
    assert!(c.shard("a").is_stopped());
}

#[test]
fn a_late_heartbeat_from_a_gracefully_stopped_replica_is_ignored() {
    let mut a = Shard::new(rid("a", 1), config(), 0).unwrap();
    let mut b = Shard::new(rid("b", 1), config(), 0).unwrap();
    a.track(1, "lobby", "alice", meta("{}")).unwrap();
    let late: Vec<Outgoing> = a.tick(100).messages;
    for o in a.graceful_permdown() {
        b.receive("a", o.message, 150);
    }
    for o in late {
        let out = b.receive("a", o.message, 200);
        assert!(out.diff.is_empty() && out.events.is_empty());
    }
    assert!(b.list("lobby").is_empty());
    assert!(b.replicas().is_empty());
}

#[test]
fn late_messages_of_a_replaced_incarnation_are_ignored() {
    let mut old = Shard::new(rid("a", 1), config(), 0).unwrap();
    let mut new = Shard::new(rid("a", 2), config(), 0).unwrap();
    let mut b = Shard::new(rid("b", 1), config(), 0).unwrap();
    for o in old.tick(100).messages {
        b.receive("a", o.message, 100);
    }
    old.track(1, "lobby", "ghost", meta("{}")).unwrap();
    let late = old.tick(200).messages;
    for o in new.tick(300).messages {
        b.receive("a", o.message, 300);
    }
    for o in late {
        assert!(b.receive("a", o.message, 320).events.is_empty());
    }
    assert!(b.list("lobby").is_empty());
    assert_eq!(b.replicas(), [(rid("a", 2), ReplicaStatus::Up)]);
}

#[test]
fn a_late_heartbeat_of_an_incarnation_never_seen_passes_for_a_restart_until_the_node_answers() {
    // Without an order between incarnations, a peer cannot tell a late message of an earlier
    // start it never saw from a restart: it takes it for one. The live node is then retired
    // there, is told so at its next heartbeat, takes a new incarnation and replaces the stray one.
    let mut old = Shard::new(rid("a", 1), config(), 0).unwrap();
    old.track(1, "lobby", "ghost", meta("{}")).unwrap();
    let late: Vec<Outgoing> = old.tick(0).messages;
    let mut c = Cluster::new(&["b"]);
    c.start("a", 2);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.ticks(3);
    assert_eq!(c.keys("b", "lobby"), ["alice"]);
    c.send("a", late);
    assert_eq!(c.keys("b", "lobby"), ["ghost"]);
    c.ticks(4);
    assert_eq!(c.keys("b", "lobby"), ["alice"]);
    assert_eq!(c.count_sent("b", "a", "retired"), 1);
    let current = c.shard("a").replica().clone();
    assert_ne!(current, rid("a", 2));
    assert_eq!(c.shard("b").replicas(), [(current, ReplicaStatus::Up)]);
}

#[test]
fn a_message_whose_sender_is_not_the_transport_peer_is_ignored() {
    let mut a = Shard::new(rid("a", 1), config(), 0).unwrap();
    let mut b = Shard::new(rid("b", 1), config(), 0).unwrap();
    for o in a.tick(100).messages {
        assert!(b.receive("mallory", o.message, 100).events.is_empty());
    }
    assert!(b.replicas().is_empty());
}

#[test]
fn a_newcomer_asks_for_one_transfer_and_does_not_loop_over_a_dead_replica() {
    let mut c = Cluster::new(&["a", "x"]);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.shard("x").track(1, "lobby", "xena", meta("{}")).unwrap();
    c.ticks(3);
    c.kill("x");
    c.ticks(5); // x is down at a (not yet permdowned)
    c.start("b", 1);
    c.ticks(8);
    assert_eq!(c.count_sent("b", "a", "transfer_req"), 1);
    assert_eq!(c.keys("b", "lobby"), ["alice"]);
    c.ticks(10);
    assert_eq!(c.count_sent("b", "a", "transfer_req"), 1, "no request loop");
    assert!(c
        .take_events("a")
        .contains(&ReplicaEvent::Permdown(rid("x", 1))));
}

#[test]
fn down_period_must_be_at_least_twice_the_broadcast_period() {
    let cfg = ShardConfig {
        broadcast_period_ms: 100,
        down_period_ms: 199,
        ..config()
    };
    let err = Shard::new(rid("a", 1), cfg.clone(), 0).err().unwrap();
    assert_eq!(
        err,
        ConfigError::DownPeriodTooShort {
            down_period_ms: 199,
            broadcast_period_ms: 100
        }
    );
    assert!(err
        .to_string()
        .starts_with("down_period must be at least twice as large as the broadcast_period"));
    assert!(ShardConfig {
        down_period_ms: 200,
        ..cfg
    }
    .validate()
    .is_ok());
}

#[test]
fn permdown_period_must_be_greater_than_the_down_period() {
    let cfg = ShardConfig {
        down_period_ms: 400,
        permdown_period_ms: 400,
        ..config()
    };
    let err = cfg.validate().unwrap_err();
    assert!(matches!(err, ConfigError::PermdownPeriodTooShort { .. }));
    assert!(err
        .to_string()
        .starts_with("permdown_period must be at least larger than the down_period"));
    assert!(ShardConfig::default().validate().is_ok());
}

#[test]
fn defaults_are_phoenix_defaults() {
    let d = ShardConfig::default();
    assert_eq!(
        (
            d.broadcast_period_ms,
            d.max_silent_periods,
            d.down_period_ms,
            d.permdown_period_ms
        ),
        (1_500, 10, 30_000, 1_200_000)
    );
    assert_eq!(
        (d.clock_sample_periods, d.max_delta_sizes),
        (2, vec![100, 1_000, 10_000])
    );
}

#[test]
fn many_topics_in_one_shard_are_listed_independently() {
    let mut c = Cluster::new(&["a", "b"]);
    for t in 0..100u64 {
        c.shard("a")
            .track(t, &format!("topic:{t}"), "k", meta("{}"))
            .unwrap();
    }
    c.ticks(4);
    for t in 0..100u64 {
        assert_eq!(c.keys("b", &format!("topic:{t}")), ["k"]);
    }
    c.shard("a").untrack_connection(5);
    c.ticks(1);
    assert!(c.keys("b", "topic:5").is_empty());
    assert_eq!(c.keys("b", "topic:6"), ["k"]);
}

/// Found by the simulation: a delta answer used to leave out the requester's own presences while
/// keeping their dots; the requester cached it in its generations, where a dot without its element
/// reads as a removal, and later served that to a third node, which then never saw them.
#[test]
fn a_delta_transfer_relayed_through_generations_keeps_every_presence() {
    let mut c = Cluster::new(&[]);
    c.config.max_silent_periods = 0;
    c.config.down_period_ms = 5_000;
    c.config.permdown_period_ms = 10_000;
    for n in ["a", "b", "c"] {
        c.start(n, 1);
    }
    c.ticks(2);
    // c hears nobody for a while; b misses a's delta.
    c.cut.insert(("a".into(), "c".into()));
    c.cut.insert(("b".into(), "c".into()));
    c.shard("b").track(1, "lobby", "bob", meta("{}")).unwrap();
    c.tick();
    c.cut.insert(("a".into(), "b".into()));
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.tick();
    c.cut.remove(&("a".into(), "b".into()));
    c.ticks(4);
    assert!(
        c.count_sent("a", "b", "transfer_ack_delta") >= 1,
        "b caught up from a's generations"
    );
    assert_eq!(c.keys("b", "lobby"), ["alice", "bob"]);
    // Now c hears b only, so b answers it from generations that include a's answer.
    c.cut.remove(&("b".into(), "c".into()));
    c.ticks(4);
    assert!(
        c.count_sent("b", "c", "transfer_ack_delta") >= 1,
        "c caught up from b's generations"
    );
    assert_eq!(c.keys("c", "lobby"), ["alice", "bob"]);
}

#[test]
fn flush_delta_sends_a_local_change_at_once_without_counting_a_period() {
    let mut a = Shard::new(rid("a", 1), config(), 0).unwrap();
    let mut b = Shard::new(rid("b", 1), config(), 0).unwrap();
    // Nothing pending: nothing to send.
    assert!(a.flush_delta(10).messages.is_empty());
    a.track(1, "room", "alice", meta("{}")).unwrap();
    let out = a.flush_delta(20);
    assert_eq!(out.messages.len(), 1);
    assert!(matches!(out.messages[0].to, Destination::Broadcast));
    assert_eq!(kind(&out.messages[0].message), "delta");
    let diff = b.receive("a", out.messages[0].message.clone(), 20).diff;
    assert_eq!(diff.topic("room").unwrap().joins[0].0.as_ref(), "alice");
    // The delta is gone: a second flush and the next tick carry no delta.
    assert!(a.flush_delta(30).messages.is_empty());
    let tick = a.tick(PERIOD);
    assert!(tick.messages.iter().all(|m| kind(&m.message) != "delta"));
    // Stopped shards stay silent.
    a.track(2, "room", "bob", meta("{}")).unwrap();
    a.graceful_permdown();
    assert!(a.flush_delta(40).messages.is_empty());
}

#[test]
fn heartbeat_now_makes_a_quiet_node_known_at_once() {
    let mut a = Shard::new(rid("a", 1), config(), 0).unwrap();
    let mut b = Shard::new(rid("b", 1), config(), 0).unwrap();
    // a's first tick heartbeats, then a stays quiet for max_silent_periods ticks.
    a.tick(PERIOD);
    assert!(a.tick(2 * PERIOD).messages.is_empty());
    let out = a.heartbeat_now(2 * PERIOD + 1);
    assert_eq!(out.messages.len(), 1);
    assert_eq!(kind(&out.messages[0].message), "empty");
    let events = b.receive("a", out.messages[0].message.clone(), 5).events;
    assert_eq!(events, [ReplicaEvent::Up(rid("a", 1))]);
    a.graceful_permdown();
    assert!(a.heartbeat_now(300).messages.is_empty());
}

#[test]
fn a_partition_longer_than_permdown_heals_to_the_same_members_on_both_sides() {
    let mut c = Cluster::new(&["a", "b"]);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.shard("b").track(2, "lobby", "bob", meta("{}")).unwrap();
    c.ticks(3);
    assert_eq!(c.keys("a", "lobby"), ["alice", "bob"]);
    for (x, y) in [("a", "b"), ("b", "a")] {
        c.cut.insert((x.to_string(), y.to_string()));
    }
    // Both sides give the other up for good (and retire it), though both are alive and keep
    // their members.
    c.ticks(17);
    assert_eq!(c.keys("a", "lobby"), ["alice"]);
    assert_eq!(c.keys("b", "lobby"), ["bob"]);
    assert_eq!(c.shard("a").retired(), [rid("b", 1)]);
    c.cut.clear();
    // Each tells the other it is retired; both take new incarnations and meet again, long
    // before the retirements expire.
    c.ticks(5);
    assert_eq!(
        c.keys("a", "lobby"),
        ["alice", "bob"],
        "a sees b's member again"
    );
    assert_eq!(
        c.keys("b", "lobby"),
        ["alice", "bob"],
        "b sees a's member again"
    );
    assert_ne!(c.shard("a").replica(), &rid("a", 1));
    assert_ne!(c.shard("b").replica(), &rid("b", 1));
}

fn refs(c: &mut Cluster, node: &str, topic: &str) -> Vec<String> {
    c.shard(node)
        .list(topic)
        .into_iter()
        .map(|(_, p)| p.phx_ref.to_string())
        .collect()
}

fn reincarnations(events: &[ReplicaEvent]) -> Vec<(ReplicaId, ReplicaId)> {
    events
        .iter()
        .filter_map(|e| match e {
            ReplicaEvent::Reincarnated {
                previous, current, ..
            } => Some((previous.clone(), current.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_restart_with_a_smaller_incarnation_replaces_the_old_one() {
    let mut c = Cluster::new(&["b"]);
    c.start("a", 5);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.ticks(3);
    assert_eq!(c.keys("b", "lobby"), ["alice"]);
    c.take_events("b");
    c.kill("a");
    c.start("a", 3);
    c.shard("a").track(1, "lobby", "bob", meta("{}")).unwrap();
    c.ticks(3);
    assert_eq!(c.keys("b", "lobby"), ["bob"]);
    assert_eq!(
        c.take_events("b"),
        [
            ReplicaEvent::Down(rid("a", 5)),
            ReplicaEvent::Permdown(rid("a", 5)),
            ReplicaEvent::Up(rid("a", 3))
        ]
    );
    assert_eq!(c.keys("a", "lobby"), ["bob"]);
}

#[test]
fn a_node_back_from_a_graceful_shutdown_is_seen_whatever_its_new_incarnation() {
    let mut c = Cluster::new(&["b"]);
    c.start("a", 5);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.ticks(3);
    let out = c.shard("a").graceful_permdown();
    c.send("a", out);
    c.kill("a");
    assert!(c.keys("b", "lobby").is_empty());
    c.start("a", 3);
    c.shard("a").track(1, "lobby", "bob", meta("{}")).unwrap();
    c.ticks(3);
    assert_eq!(c.keys("b", "lobby"), ["bob"]);
    assert_eq!(c.shard("b").replicas(), [(rid("a", 3), ReplicaStatus::Up)]);
}

#[test]
fn an_incarnation_reused_after_a_crash_is_detected_and_the_node_takes_a_new_one() {
    let mut c = Cluster::new(&["a", "b"]);
    for (conn, key) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        c.shard("a").track(conn, "lobby", key, meta("{}")).unwrap();
    }
    c.ticks(3);
    assert_eq!(c.keys("b", "lobby"), ["alice", "bob", "carol"]);
    let old_refs = refs(&mut c, "b", "lobby");
    c.kill("a");
    // The same incarnation again: its first dot collides with alice's.
    c.start("a", 1);
    c.shard("a").track(1, "lobby", "dave", meta("{}")).unwrap();
    c.take_diffs("a");
    c.ticks(4);
    let events = c.take_events("a");
    let moved = reincarnations(&events);
    assert_eq!(moved.len(), 1, "{events:?}");
    assert_eq!(moved[0].0, rid("a", 1));
    let current = c.shard("a").replica().clone();
    assert_eq!(moved[0].1, current);
    // The node's own presence moved to the new identity: a leave and a join with a new ref.
    let diffs = c.take_diffs("a");
    assert_eq!(left(&diffs, "lobby"), ["dave"]);
    assert_eq!(joined(&diffs, "lobby"), ["dave"]);
    assert_eq!(c.keys("b", "lobby"), ["dave"]);
    assert!(!old_refs.contains(&refs(&mut c, "b", "lobby")[0]));
    assert_eq!(c.shard("b").replicas(), [(current, ReplicaStatus::Up)]);
}

#[test]
fn a_reused_incarnation_that_got_further_than_its_predecessor_is_found_by_the_digest() {
    let mut c = Cluster::new(&["a", "b"]);
    c.shard("a").track(1, "lobby", "x", meta("{}")).unwrap();
    c.ticks(2);
    c.shard("a").untrack(1, "lobby", "x");
    c.ticks(2);
    // b saw dots 1 (x) and 2 (x's removal) of a#1.
    c.kill("a");
    c.start("a", 1);
    for (conn, key) in [(1, "y1"), (2, "y2"), (3, "y3")] {
        c.shard("a").track(conn, "lobby", key, meta("{}")).unwrap();
    }
    c.take_diffs("a");
    // b has observed dots 1 and 2 already and admits only y3. Once b has seen dots 1 to 3, all
    // that a made, its heartbeat shows a digest of y3 alone where a holds y1, y2 and y3.
    c.ticks(4);
    assert_eq!(reincarnations(&c.take_events("a")).len(), 1);
    assert_eq!(c.keys("b", "lobby"), ["y1", "y2", "y3"]);
    assert_eq!(c.keys("a", "lobby"), ["y1", "y2", "y3"]);
    // a moved its own presences to new refs: a leave and a join each.
    let diffs = c.take_diffs("a");
    assert_eq!(joined(&diffs, "lobby"), ["y1", "y2", "y3"]);
    assert_eq!(left(&diffs, "lobby"), ["y1", "y2", "y3"]);
}

#[test]
fn a_reused_incarnation_is_found_when_a_peer_observed_more_of_its_dots_than_it_made() {
    let mut c = Cluster::new(&["b"]);
    c.start("a", 1);
    c.shard("a").track(1, "lobby", "x1", meta("{}")).unwrap();
    let out = c.shard("a").flush_delta(0).messages;
    c.send("a", out);
    for (conn, key) in [(2, "x2"), (3, "x3")] {
        c.shard("a").track(conn, "lobby", key, meta("{}")).unwrap();
    }
    c.shard("a").flush_delta(0); // lost
    c.shard("a").track(4, "lobby", "x4", meta("{}")).unwrap();
    let out = c.shard("a").flush_delta(0).messages;
    c.send("a", out);
    // b: dot 1, a gap, dot 4.
    assert_eq!(c.keys("b", "lobby"), ["x1", "x4"]);
    c.kill("a");
    c.start("a", 1);
    // Two dots, neither an element: b drops x1 but cannot tell that x4 is stale. Its heartbeat
    // shows dot 4 of a#1 observed, and a made only two.
    c.shard("a").track(1, "lobby", "y", meta("{}")).unwrap();
    c.shard("a").untrack(1, "lobby", "y");
    c.ticks(4);
    assert_eq!(reincarnations(&c.take_events("a")).len(), 1);
    assert!(c.keys("b", "lobby").is_empty());
}

#[test]
fn a_node_reusing_a_retired_incarnation_is_told_and_takes_a_new_one() {
    let mut c = Cluster::new(&["a", "b"]);
    c.shard("a").track(1, "lobby", "alice", meta("{}")).unwrap();
    c.ticks(3);
    let out = c.shard("a").graceful_permdown();
    c.send("a", out);
    c.start("a", 1);
    c.shard("a").track(1, "lobby", "bob", meta("{}")).unwrap();
    // Well within the permdown period (15 ticks), when the retirement would expire.
    c.ticks(3);
    assert_eq!(c.count_sent("b", "a", "retired"), 1);
    assert_eq!(reincarnations(&c.take_events("a")).len(), 1);
    assert_eq!(c.keys("b", "lobby"), ["bob"]);
}

#[test]
fn retired_replicas_are_forgotten_after_the_permdown_period() {
    let mut c = Cluster::new(&["a", "b"]);
    c.ticks(2);
    c.kill("a");
    c.start("a", 2);
    c.ticks(1);
    assert_eq!(c.shard("b").retired(), [rid("a", 1)]);
    c.ticks(14);
    assert_eq!(c.shard("b").retired(), [rid("a", 1)]);
    c.ticks(2);
    assert!(c.shard("b").retired().is_empty());
}

#[test]
fn a_late_heartbeat_of_a_replica_permdowned_for_silence_is_ignored_and_answered() {
    let mut a = Shard::new(rid("a", 1), config(), 0).unwrap();
    let mut b = Shard::new(rid("b", 1), config(), 0).unwrap();
    a.track(1, "lobby", "alice", meta("{}")).unwrap();
    let heartbeat = a.tick(100).messages.remove(0).message;
    b.receive("a", heartbeat.clone(), 100);
    assert_eq!(b.list("lobby").len(), 1);
    // a falls silent: down after 400 ms, permdown after 1 500 ms.
    let mut events = Vec::new();
    for t in (200..=1_700).step_by(100) {
        events.extend(b.tick(t).events);
    }
    assert_eq!(
        events,
        [
            ReplicaEvent::Down(rid("a", 1)),
            ReplicaEvent::Permdown(rid("a", 1))
        ]
    );
    // A copy of a's heartbeat, delayed in the network, arrives now.
    let out = b.receive("a", heartbeat, 1_800);
    assert!(out.events.is_empty() && out.diff.is_empty());
    assert!(b.list("lobby").is_empty());
    assert!(b.replicas().is_empty());
    assert_eq!(
        out.messages,
        [Outgoing {
            to: Destination::Replica(rid("a", 1)),
            message: ReplicationMessage::Retired {
                from: rid("b", 1),
                replica: rid("a", 1)
            },
        }]
    );
    // A new incarnation of the node is a new replica.
    let mut restarted = Shard::new(rid("a", 2), config(), 0).unwrap();
    let hello = restarted.tick(1_900).messages.remove(0).message;
    assert_eq!(
        b.receive("a", hello, 1_900).events,
        [ReplicaEvent::Up(rid("a", 2))]
    );
}

#[test]
fn a_reused_incarnation_with_as_many_dots_as_its_predecessor_is_found_by_the_digest() {
    let mut c = Cluster::new(&["a", "b"]);
    c.shard("a").track(1, "lobby", "ann", meta("{}")).unwrap();
    c.shard("a").track(2, "lobby", "cat", meta("{}")).unwrap();
    c.ticks(3);
    assert_eq!(c.keys("b", "lobby"), ["ann", "cat"]);
    c.kill("a");
    c.ticks(6); // a#1 is down at b, its presences hidden
    assert!(c.keys("b", "lobby").is_empty());
    c.start("a", 1);
    c.shard("a").track(1, "lobby", "bob", meta("{}")).unwrap();
    c.shard("a").track(2, "lobby", "eve", meta("{}")).unwrap();
    // The delta with bob and eve is lost: b has seen dots 1 and 2 of a#1, a has made dots 1 and
    // 2, so neither side is behind and no transfer would ever carry bob and eve.
    c.cut.insert(("a".into(), "b".into()));
    c.tick();
    c.cut.clear();
    c.ticks(5);
    assert_eq!(reincarnations(&c.take_events("a")).len(), 1);
    assert_eq!(c.keys("b", "lobby"), ["bob", "eve"]);
}

#[test]
fn a_late_heartbeat_after_a_removal_relayed_by_a_third_node_is_no_sign_of_reuse() {
    let deliver = |to: &mut Shard, from: &str, out: &[Outgoing], now: u64| -> Vec<ReplicaEvent> {
        let mut events = Vec::new();
        for o in out {
            events.extend(to.receive(from, o.message.clone(), now).events);
        }
        events
    };
    let mut a = Shard::new(rid("a", 1), config(), 0).unwrap();
    let mut b = Shard::new(rid("b", 1), config(), 0).unwrap();
    let mut c = Shard::new(rid("c", 1), config(), 0).unwrap();
    a.track(1, "lobby", "x", meta("{}")).unwrap();
    a.track(2, "lobby", "y", meta("{}")).unwrap();
    let both = a.flush_delta(10).messages;
    deliver(&mut b, "a", &both, 10);
    deliver(&mut c, "a", &both, 10);
    // A heartbeat of a (dots 1 and 2, x and y) that reaches b late.
    let late = a.heartbeat_now(20).messages;
    // x leaves; only c hears it from a, and relays the removal to b.
    a.untrack(1, "lobby", "x");
    let removal = a.flush_delta(30).messages;
    deliver(&mut c, "a", &removal, 30);
    let relay = c.flush_delta(40).messages;
    deliver(&mut b, "c", &relay, 40);
    assert_eq!(
        b.list("lobby")
            .iter()
            .map(|(k, _)| k.to_string())
            .collect::<Vec<_>>(),
        ["y"]
    );
    // b has seen dots 1 and 2 of a and holds only y, while the late heartbeat says a held x and
    // y at dot 2: that is a removal b heard of early, not another process.
    assert!(deliver(&mut b, "a", &late, 50).is_empty());
    let hello = b.heartbeat_now(60).messages;
    assert!(reincarnations(&deliver(&mut a, "b", &hello, 60)).is_empty());
    assert_eq!(a.replica(), &rid("a", 1));
    assert_eq!(b.replicas()[0], (rid("a", 1), ReplicaStatus::Up));
}
