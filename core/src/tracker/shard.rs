//! [`Shard`]: the replication state machine around one [`State`], without timers or I/O.
//!
//! The caller drives it: [`Shard::tick`] every `broadcast_period_ms`, [`Shard::receive`] for every
//! message from a peer, and the local operations for its own connections. Each returns the
//! messages to send and the presence [`Diff`] to report locally (diffs never cross nodes: every
//! node computes its own from its own replica).
//!
//! Each tick, in order: broadcast the pending delta (or an empty heartbeat after
//! `max_silent_periods` quiet ticks); every `clock_sample_periods` ticks, ask for a transfer from
//! the peers whose heartbeat clocks showed something we lack (only the dominant one when one peer
//! is ahead of the others); mark peers silent for `down_period_ms` down and those silent for
//! `permdown_period_ms` permdown.
//!
//! Peers are told apart by [`ReplicaId`], node name *and* incarnation, never by the order of
//! incarnations:
//!
//! * A heartbeat from an incarnation of a node that is neither held nor retired is a new replica
//!   (the node restarted): the held incarnation goes down, is permdowned and retired, the new one
//!   comes up — whether its number is larger or smaller.
//! * A replica is *retired* when it is permdowned (for silence, for being replaced, or by its own
//!   graceful permdown). Every message of a retired replica is ignored, so a late message cannot
//!   bring it back; a heartbeat of it is answered with [`ReplicationMessage::Retired`] (at most
//!   once per broadcast period), because a process still running as it must take a new
//!   incarnation to be seen again. Retired entries expire `permdown_period_ms` after retirement.
//! * A replica id used by two processes (an incarnation reused, say a boot counter that went
//!   back) is found by the process that reuses it, the only one that knows which dots it made.
//!   Each heartbeat carries, for every replica of its clock, the highest counter the sender has
//!   observed of it and a digest of the presences it holds of it. A shard that made fewer dots
//!   than a peer observed of its id, or exactly as many and all of them observed but with another
//!   digest, knows that another process made dots under its id: a peer that saw every dot one
//!   process made saw every add and removal it made.
//! * A shard that finds its id reused, or is told it is retired, takes a new incarnation (derived
//!   from the old one, the time and its counter; at most once per `down_period_ms`), re-tracks its
//!   presences under it and reports [`ReplicaEvent::Reincarnated`]; peers replace the old id like
//!   any restart.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::delta::{Answer, Generations};
use super::diff::{Diff, DiffBuilder};
use super::message::{Clock, ReplicationMessage, StatePayload};
use super::meta::{mix64, Meta, PhxRef, Presence};
use super::replica::{ReplicaEvent, ReplicaId, ReplicaStatus};
use super::state::{AlreadyTracked, Delta, NoPresence, Rx, State, ME};

/// Timing and sizing of a shard. All periods are in milliseconds. The defaults are Phoenix's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    /// Interval between ticks (heartbeats). Default 1 500.
    pub broadcast_period_ms: u64,
    /// Quiet ticks before an empty heartbeat is sent anyway. Default 10.
    pub max_silent_periods: u32,
    /// Silence after which a peer is marked down (its presences hidden). Default 30 000; must be at
    /// least twice `broadcast_period_ms`.
    pub down_period_ms: u64,
    /// Silence after which a peer is forgotten (its presences purged). Default 1 200 000 (20 min);
    /// must be greater than `down_period_ms`.
    pub permdown_period_ms: u64,
    /// Ticks between evaluations of which peers to ask for a transfer. Default 2.
    pub clock_sample_periods: u32,
    /// Caps of the cached delta generations, smallest first. Default `[100, 1000, 10000]`; empty
    /// means transfers always send the full state.
    pub max_delta_sizes: Vec<usize>,
}

impl Default for ShardConfig {
    fn default() -> ShardConfig {
        ShardConfig {
            broadcast_period_ms: 1_500,
            max_silent_periods: 10,
            down_period_ms: 30_000,
            permdown_period_ms: 1_200_000,
            clock_sample_periods: 2,
            max_delta_sizes: vec![100, 1_000, 10_000],
        }
    }
}

/// A [`ShardConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `broadcast_period_ms` is zero.
    ZeroBroadcastPeriod,
    /// `down_period_ms` is less than twice `broadcast_period_ms`: a peer would be marked down
    /// between two of its heartbeats.
    DownPeriodTooShort {
        /// The configured down period.
        down_period_ms: u64,
        /// The configured broadcast period.
        broadcast_period_ms: u64,
    },
    /// `permdown_period_ms` is not greater than `down_period_ms`.
    PermdownPeriodTooShort {
        /// The configured permdown period.
        permdown_period_ms: u64,
        /// The configured down period.
        down_period_ms: u64,
    },
    /// `clock_sample_periods` is zero.
    ZeroClockSamplePeriods,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroBroadcastPeriod => write!(f, "broadcast_period must be positive"),
            ConfigError::DownPeriodTooShort {
                down_period_ms,
                broadcast_period_ms,
            } => write!(
                f,
                "down_period must be at least twice as large as the broadcast_period \
                 (down_period {down_period_ms} ms, broadcast_period {broadcast_period_ms} ms)"
            ),
            ConfigError::PermdownPeriodTooShort {
                permdown_period_ms,
                down_period_ms,
            } => write!(
                f,
                "permdown_period must be at least larger than the down_period \
                 (permdown_period {permdown_period_ms} ms, down_period {down_period_ms} ms)"
            ),
            ConfigError::ZeroClockSamplePeriods => {
                write!(f, "clock_sample_periods must be at least 1")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl ShardConfig {
    /// Checks the rules Phoenix enforces at start (plus positivity).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.broadcast_period_ms == 0 {
            return Err(ConfigError::ZeroBroadcastPeriod);
        }
        if self.down_period_ms < self.broadcast_period_ms.saturating_mul(2) {
            return Err(ConfigError::DownPeriodTooShort {
                down_period_ms: self.down_period_ms,
                broadcast_period_ms: self.broadcast_period_ms,
            });
        }
        if self.permdown_period_ms <= self.down_period_ms {
            return Err(ConfigError::PermdownPeriodTooShort {
                permdown_period_ms: self.permdown_period_ms,
                down_period_ms: self.down_period_ms,
            });
        }
        if self.clock_sample_periods == 0 {
            return Err(ConfigError::ZeroClockSamplePeriods);
        }
        Ok(())
    }
}

/// Where an outgoing message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// To the same-named shard on every other node.
    Broadcast,
    /// To the shard of this one replica, addressed by its node name: whichever incarnation runs
    /// on that node now receives it.
    Replica(ReplicaId),
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Where to.
    pub to: Destination,
    /// What.
    pub message: ReplicationMessage,
}

/// What one [`Shard::tick`] or [`Shard::receive`] produced.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Messages to send, in order.
    pub messages: Vec<Outgoing>,
    /// Presence changes to report to local subscribers: the net effect of the whole call (a
    /// presence shown and hidden again within it appears in neither list).
    pub diff: Diff,
    /// Peer replicas that came up, went down or were forgotten, in order.
    pub events: Vec<ReplicaEvent>,
}

/// An [`Output`] under construction.
#[derive(Default)]
struct Pending {
    messages: Vec<Outgoing>,
    diff: DiffBuilder,
    events: Vec<ReplicaEvent>,
}

impl Pending {
    fn finish(self) -> Output {
        Output {
            messages: self.messages,
            diff: self.diff.finish(),
            events: self.events,
        }
    }
}

#[derive(Clone, Debug)]
struct Peer {
    id: ReplicaId,
    last_heard_ms: u64,
    status: ReplicaStatus,
}

/// A replica given up for good, whose messages are ignored until `until_ms`.
#[derive(Clone, Debug)]
struct Retired {
    until_ms: u64,
    /// When a heartbeat of it was last answered with [`ReplicationMessage::Retired`].
    noticed_ms: Option<u64>,
}

/// One tracker shard: a [`State`] plus replication with the same-named shard on other nodes.
///
/// A shard holds any number of topics; running one per topic hash only spreads work.
pub struct Shard {
    config: ShardConfig,
    state: State,
    /// Peers by node name (one incarnation per node).
    peers: BTreeMap<String, Peer>,
    /// Permdowned replicas: their late messages are ignored, so a delayed heartbeat cannot
    /// resurrect a dead replica.
    retired: BTreeMap<ReplicaId, Retired>,
    /// A peer showed that our replica id is used by another process too (the peer's id).
    reused: Option<ReplicaId>,
    /// When this shard last took a new incarnation.
    reincarnated_ms: Option<u64>,
    silent_periods: u32,
    sample_countdown: u32,
    /// Latest clock heard in a heartbeat since the last sample, per sender.
    pending_clocks: BTreeMap<ReplicaId, Clock>,
    generations: Generations,
    next_request_id: u64,
    stopped: bool,
}

impl Shard {
    /// A new shard for replica `replica` (a fresh incarnation on every start). The first
    /// [`tick`](Self::tick) sends an empty heartbeat so peers discover it at once; the caller may
    /// delay that first tick by a random fraction of the broadcast period to de-synchronise nodes.
    pub fn new(
        replica: ReplicaId,
        config: ShardConfig,
        _now_ms: u64,
    ) -> Result<Shard, ConfigError> {
        config.validate()?;
        Ok(Shard {
            generations: Generations::new(config.max_delta_sizes.clone()),
            silent_periods: config.max_silent_periods,
            sample_countdown: config.clock_sample_periods,
            config,
            state: State::new(replica),
            peers: BTreeMap::new(),
            retired: BTreeMap::new(),
            reused: None,
            reincarnated_ms: None,
            pending_clocks: BTreeMap::new(),
            next_request_id: 1,
            stopped: false,
        })
    }

    /// This shard's replica id. It changes only if the shard takes a new incarnation
    /// ([`ReplicaEvent::Reincarnated`]).
    pub fn replica(&self) -> &ReplicaId {
        self.state.replica()
    }

    /// The configuration.
    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// The CRDT state (read-only).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// True after [`graceful_permdown`](Self::graceful_permdown).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Tracks local connection `conn` under `(topic, key)`. Returns the new presence's `phx_ref`
    /// and the join to report. Refused if this connection already tracks this key in this topic.
    pub fn track(
        &mut self,
        conn: u64,
        topic: &str,
        key: &str,
        meta: Meta,
    ) -> Result<(PhxRef, Diff), AlreadyTracked> {
        self.state.join(conn, topic, key, meta)
    }

    /// Stops tracking one presence of `conn`; returns the leave (empty if there was none).
    pub fn untrack(&mut self, conn: u64, topic: &str, key: &str) -> Diff {
        self.state.leave(conn, topic, key)
    }

    /// Stops tracking every presence of `conn` (the connection closed).
    pub fn untrack_connection(&mut self, conn: u64) -> Diff {
        self.state.leave_connection(conn)
    }

    /// Replaces the meta of a presence of `conn`: returns the new `phx_ref` and a diff with the old
    /// version as a leave and the new one (with `phx_ref_prev`) as a join.
    pub fn update(
        &mut self,
        conn: u64,
        topic: &str,
        key: &str,
        meta: Meta,
    ) -> Result<(PhxRef, Diff), NoPresence> {
        self.state.update(conn, topic, key, meta)
    }

    /// Visible presences of a topic, ordered by key then `phx_ref`.
    pub fn list(&self, topic: &str) -> Vec<(Arc<str>, Presence)> {
        self.state.list(topic)
    }

    /// Visible presences under one key.
    pub fn get_by_key(&self, topic: &str, key: &str) -> Vec<Presence> {
        self.state.get_by_key(topic, key)
    }

    /// Presences of one local connection as `(topic, key, presence)`.
    pub fn get_by_conn(&self, conn: u64) -> Vec<(Arc<str>, Arc<str>, Presence)> {
        self.state.get_by_conn(conn)
    }

    /// Known peers and their status, by replica id (for health endpoints).
    pub fn replicas(&self) -> Vec<(ReplicaId, ReplicaStatus)> {
        self.peers
            .values()
            .map(|p| (p.id.clone(), p.status))
            .collect()
    }

    /// Retired replicas whose messages are still ignored, by replica id.
    pub fn retired(&self) -> Vec<ReplicaId> {
        self.retired.keys().cloned().collect()
    }

    /// Announces a final shutdown: peers drop this replica's presences at once instead of after
    /// `down_period_ms`. The shard is inert afterwards.
    pub fn graceful_permdown(&mut self) -> Vec<Outgoing> {
        self.stopped = true;
        vec![Outgoing {
            to: Destination::Broadcast,
            message: ReplicationMessage::GracefulPermdown {
                from: self.replica().clone(),
            },
        }]
    }

    /// Sends the pending local delta now, as a heartbeat, instead of waiting for the next
    /// [`tick`](Self::tick); returns no messages when there is nothing pending (or after
    /// [`graceful_permdown`](Self::graceful_permdown)). It neither counts as a period nor samples
    /// clocks or detects downs, so calling it as often as local changes happen keeps
    /// cross-node latency low without changing the heartbeat rhythm.
    pub fn flush_delta(&mut self, _now_ms: u64) -> Output {
        let mut out = Pending::default();
        if !self.stopped && self.state.has_delta() {
            self.broadcast_heartbeat(&mut out);
        }
        out.finish()
    }

    /// Sends a heartbeat now (with the pending delta, if any), whatever the silent-period count;
    /// nothing after [`graceful_permdown`](Self::graceful_permdown). For a node that just heard
    /// from a new peer: the peer learns of it (and asks for a transfer) at once instead of after
    /// up to `max_silent_periods` quiet periods.
    pub fn heartbeat_now(&mut self, _now_ms: u64) -> Output {
        let mut out = Pending::default();
        if !self.stopped {
            self.silent_periods = self.silent_periods.max(self.config.max_silent_periods);
            self.broadcast_heartbeat(&mut out);
        }
        out.finish()
    }

    /// One heartbeat period elapsed.
    pub fn tick(&mut self, now_ms: u64) -> Output {
        let mut out = Pending::default();
        if self.stopped {
            return out.finish();
        }
        self.broadcast_heartbeat(&mut out);
        self.sample_clocks(&mut out);
        self.detect_downs(now_ms, &mut out);
        self.retired.retain(|_, r| r.until_ms > now_ms);
        self.reincarnate_if_reused(now_ms, &mut out);
        out.finish()
    }

    fn broadcast_heartbeat(&mut self, out: &mut Pending) {
        let delta = if self.state.has_delta() {
            let delta = self.state.take_delta_raw();
            let payload = self.state.delta_payload(&delta, |_| true);
            let seed = self.state.context_of(ME).unwrap_or(0);
            self.generations.push(&delta, || fresh_delta(seed));
            Some(payload)
        } else if self.silent_periods >= self.config.max_silent_periods {
            None
        } else {
            self.silent_periods += 1;
            return;
        };
        self.silent_periods = 0;
        out.messages.push(Outgoing {
            to: Destination::Broadcast,
            message: ReplicationMessage::Heartbeat {
                from: self.replica().clone(),
                clock: self.state.clock(),
                delta,
                seen: self.state.seen(),
            },
        });
    }

    /// Asks for a transfer from every peer whose clock is ahead of ours somewhere, unless another
    /// such peer's clock covers it (then that one alone is asked).
    fn sample_clocks(&mut self, out: &mut Pending) {
        if self.sample_countdown > 1 {
            self.sample_countdown -= 1;
            return;
        }
        self.sample_countdown = self.config.clock_sample_periods;
        let pending = std::mem::take(&mut self.pending_clocks);
        let ours = self.state.local_clock();
        let at = |c: &BTreeMap<Rx, u64>, r: &Rx| c.get(r).copied().unwrap_or(0);
        let mut ahead: Vec<(ReplicaId, BTreeMap<Rx, u64>)> = Vec::new();
        for (sender, clock) in pending {
            let up = self
                .peers
                .get(&sender.node)
                .is_some_and(|p| p.id == sender && p.status == ReplicaStatus::Up);
            if !up {
                continue;
            }
            let theirs = self.state.map_clock(&clock);
            if ours.iter().any(|(r, mine)| at(&theirs, r) > *mine) {
                ahead.push((sender, theirs));
            }
        }
        let covers = |a: &BTreeMap<Rx, u64>, b: &BTreeMap<Rx, u64>| {
            ours.keys().all(|r| at(a, r) >= at(b, r))
        };
        for (i, (sender, theirs)) in ahead.iter().enumerate() {
            let redundant = ahead.iter().enumerate().any(|(j, (other, clock))| {
                j != i && covers(clock, theirs) && (!covers(theirs, clock) || other < sender)
            });
            if !redundant {
                let request_id = self.next_request_id;
                self.next_request_id += 1;
                out.messages.push(Outgoing {
                    to: Destination::Replica(sender.clone()),
                    message: ReplicationMessage::TransferRequest {
                        from: self.replica().clone(),
                        request_id,
                        clock: self.state.clock(),
                    },
                });
            }
        }
    }

    fn detect_downs(&mut self, now_ms: u64, out: &mut Pending) {
        let peers: Vec<Peer> = self.peers.values().cloned().collect();
        for peer in peers {
            let silence = now_ms.saturating_sub(peer.last_heard_ms);
            if silence > self.config.permdown_period_ms {
                if peer.status == ReplicaStatus::Up {
                    self.down(&peer.id, out);
                }
                self.permdown(&peer.id, now_ms, out);
            } else if silence > self.config.down_period_ms && peer.status == ReplicaStatus::Up {
                self.down(&peer.id, out);
            }
        }
    }

    fn up(&mut self, id: &ReplicaId, out: &mut Pending) {
        out.events.push(ReplicaEvent::Up(id.clone()));
        self.state.replica_up_into(id, &mut out.diff);
    }

    fn down(&mut self, id: &ReplicaId, out: &mut Pending) {
        if let Some(p) = self.peers.get_mut(&id.node).filter(|p| p.id == *id) {
            p.status = ReplicaStatus::Down;
        }
        out.events.push(ReplicaEvent::Down(id.clone()));
        self.state.replica_down_into(id, &mut out.diff);
    }

    /// Forgets a replica for good and retires it.
    fn permdown(&mut self, id: &ReplicaId, now_ms: u64, out: &mut Pending) {
        out.events.push(ReplicaEvent::Permdown(id.clone()));
        if let Some(r) = self.state.known(id) {
            self.generations.forget_replica(r);
        }
        self.state.remove_down_replicas_into(id, &mut out.diff);
        if self.peers.get(&id.node).is_some_and(|p| p.id == *id) {
            self.peers.remove(&id.node);
        }
        self.pending_clocks.remove(id);
        self.retire(id, now_ms);
    }

    /// A heartbeat from `sender` (not retired) arrived.
    fn heard_from(&mut self, sender: &ReplicaId, now_ms: u64, out: &mut Pending) {
        let previous = self.peers.get(&sender.node).cloned();
        match previous {
            None => {
                self.peers.insert(
                    sender.node.clone(),
                    Peer {
                        id: sender.clone(),
                        last_heard_ms: now_ms,
                        status: ReplicaStatus::Up,
                    },
                );
                self.up(sender, out);
            }
            Some(p) if p.id == *sender => {
                if let Some(peer) = self.peers.get_mut(&sender.node) {
                    peer.last_heard_ms = now_ms;
                    peer.status = ReplicaStatus::Up;
                }
                if p.status == ReplicaStatus::Down {
                    self.up(sender, out);
                }
            }
            Some(p) => {
                // An incarnation never seen: the node restarted, and the one we held is dead for
                // good, whichever number is larger.
                if p.status == ReplicaStatus::Up {
                    self.down(&p.id, out);
                }
                self.permdown(&p.id, now_ms, out);
                self.peers.insert(
                    sender.node.clone(),
                    Peer {
                        id: sender.clone(),
                        last_heard_ms: now_ms,
                        status: ReplicaStatus::Up,
                    },
                );
                self.up(sender, out);
            }
        }
    }

    /// Ignores `id`'s messages for the next `permdown_period_ms`.
    fn retire(&mut self, id: &ReplicaId, now_ms: u64) {
        let until_ms = now_ms.saturating_add(self.config.permdown_period_ms);
        let entry = self.retired.entry(id.clone()).or_insert(Retired {
            until_ms,
            noticed_ms: None,
        });
        entry.until_ms = entry.until_ms.max(until_ms);
    }

    /// Handles one message from the peer on node `from` (the transport's idea of the sender).
    /// Messages whose sender is not on `from`, from our own node, or from a retired replica are
    /// ignored (a heartbeat of a retired replica is answered with
    /// [`ReplicationMessage::Retired`]).
    pub fn receive(&mut self, from: &str, message: ReplicationMessage, now_ms: u64) -> Output {
        let mut out = Pending::default();
        let sender = message.sender().clone();
        if self.stopped
            || sender.node != from
            || sender.node == self.replica().node
            || message.validate().is_err()
        {
            return out.finish();
        }
        if let ReplicationMessage::Retired { replica, .. } = &message {
            // Honoured whatever the sender's status here: two sides that gave each other up
            // after a long partition must both hear it.
            if replica == self.replica() {
                self.reused.get_or_insert(sender);
                self.reincarnate_if_reused(now_ms, &mut out);
            }
            return out.finish();
        }
        if let Some(retired) = self.retired.get_mut(&sender) {
            let quiet = retired
                .noticed_ms
                .is_none_or(|t| now_ms >= t.saturating_add(self.config.broadcast_period_ms));
            if matches!(message, ReplicationMessage::Heartbeat { .. }) && quiet {
                retired.noticed_ms = Some(now_ms);
                out.messages.push(Outgoing {
                    to: Destination::Replica(sender.clone()),
                    message: ReplicationMessage::Retired {
                        from: self.replica().clone(),
                        replica: sender,
                    },
                });
            }
            return out.finish();
        }
        match message {
            ReplicationMessage::Heartbeat {
                clock, delta, seen, ..
            } => {
                if self.state.reused_in(&clock, &seen) {
                    self.reused.get_or_insert(sender.clone());
                }
                self.heard_from(&sender, now_ms, &mut out);
                if let Some(delta) = delta {
                    self.merge(&delta, &mut out);
                }
                self.pending_clocks.insert(sender, clock);
            }
            ReplicationMessage::TransferRequest {
                request_id, clock, ..
            } => {
                let payload = self.answer_transfer(&sender, &clock);
                out.messages.push(Outgoing {
                    to: Destination::Replica(sender),
                    message: ReplicationMessage::TransferAck {
                        from: self.replica().clone(),
                        request_id,
                        payload,
                    },
                });
            }
            ReplicationMessage::TransferAck { payload, .. } => {
                self.merge(&payload, &mut out);
            }
            ReplicationMessage::GracefulPermdown { .. } => {
                match self.peers.get(&sender.node).cloned() {
                    Some(p) if p.id == sender => {
                        if p.status == ReplicaStatus::Up {
                            self.down(&p.id, &mut out);
                        }
                        self.permdown(&p.id, now_ms, &mut out);
                    }
                    // Another incarnation than the one held (an old one, late): only make sure
                    // nothing of it is accepted later.
                    _ => self.retire(&sender, now_ms),
                }
            }
            ReplicationMessage::Retired { .. } => {}
        }
        self.reincarnate_if_reused(now_ms, &mut out);
        out.finish()
    }

    /// Takes a new incarnation if a peer showed that our replica id is in use by another process
    /// too, at most once per `down_period_ms` (two live processes with one node name would
    /// otherwise keep replacing each other at message rate; a later detection waits for a tick).
    fn reincarnate_if_reused(&mut self, now_ms: u64, out: &mut Pending) {
        let ready = self
            .reincarnated_ms
            .is_none_or(|t| now_ms >= t.saturating_add(self.config.down_period_ms));
        if !ready || self.stopped {
            return;
        }
        let Some(shown_by) = self.reused.take() else {
            return;
        };
        let previous = self.replica().clone();
        let made = self.state.made();
        // No randomness in here: the new number is derived from the old one, the time and the
        // counter, which differ between the processes that shared the old one.
        let salt = mix64(now_ms ^ made.rotate_left(32) ^ 0x5851_f42d_4c95_7f2d);
        let mut incarnation = mix64(previous.incarnation ^ salt);
        while incarnation == previous.incarnation {
            incarnation = mix64(incarnation ^ salt);
        }
        let current = ReplicaId::new(previous.node.clone(), incarnation);
        self.state.reincarnate_into(current.clone(), &mut out.diff);
        // The windows describe the old identity's counters.
        self.generations.clear();
        self.reincarnated_ms = Some(now_ms);
        out.events.push(ReplicaEvent::Reincarnated {
            previous,
            current,
            shown_by,
        });
        // Announce the new identity and its presences at once.
        self.silent_periods = self.silent_periods.max(self.config.max_silent_periods);
        self.broadcast_heartbeat(out);
    }

    fn merge(&mut self, payload: &StatePayload, out: &mut Pending) {
        self.state.merge_into(payload, &mut out.diff);
        if payload.is_full() {
            // The state jumped; windows built before no longer describe recent history.
            self.generations.clear();
        } else if let Some(delta) = self.state.payload_delta(payload) {
            let seed = self.state.context_of(ME).unwrap_or(0);
            self.generations.push(&delta, || fresh_delta(seed));
        }
    }

    fn answer_transfer(&self, requester: &ReplicaId, clock: &Clock) -> StatePayload {
        let theirs = self.state.map_clock(clock);
        let ours = self.state.known_context();
        let known = |r: Rx| theirs.contains_key(&r);
        // A delta answer keeps the requester's own elements: the requester pushes it into its
        // generations, where a dot observed without its element would read as a removal.
        match self.generations.choose(&theirs, &ours) {
            Answer::Generation(delta) => self.state.delta_payload(delta, known),
            Answer::UpToDate => {
                let empty = fresh_delta(self.state.context_of(ME).unwrap_or(0));
                self.state.delta_payload(&empty, known)
            }
            Answer::Full => self.state.extract(requester, clock),
        }
    }
}

fn fresh_delta(counter: u64) -> Delta {
    Delta::fresh(counter)
}
