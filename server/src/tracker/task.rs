//! One tracker shard's task: the one owner of its [`Shard`] (its part of the replicated presence
//! CRDT and the replication state machine, from `rollcall_core`) and of the local subscriptions
//! to its topics. It applies commands in the order they come, feeds the shard time and peers'
//! messages, sends what the shard wants sent, and dispatches the presence diffs it reports.
//!
//! Replication messages carry a 4-byte header, the sender's pool size and shard index (both
//! `u16`, big-endian), so that a node whose pool differs is refused with a reason instead of
//! mixing topics of different shards.
//!
//! Time is milliseconds of `tokio::time` since the task started, so tests can pause it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rollcall_core::protocol::{Outbound, Payload};
use rollcall_core::tracker::{
    Destination, Diff, Meta, Outgoing, Output, ReplicaEvent, ReplicaStatus, ReplicationMessage,
    Shard, TopicDiff,
};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::fanout::{Subscriber, Subscriptions};
use super::watch::{WatchEvent, Watcher, Watchers};
use super::{
    relay, shard_index, Command, ConnId, CHANNEL_RELAY, CHANNEL_TRACKER, COMMAND_QUEUE, META_NODE,
    RENDERED_FIELDS,
};
use crate::channel::check_relay_event;
use crate::log_summary::LogSummary;
use crate::metrics::{Metrics, TrackerGauges};
use crate::pubsub::{Envelope, PubSub};

/// What the task listens to.
pub(super) struct Inputs {
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    /// Commands queued and not yet taken.
    pub(super) depth: Arc<AtomicUsize>,
    /// Told when `depth` falls below the bound.
    pub(super) room: Arc<Notify>,
    pub(super) tracker: mpsc::Receiver<Envelope>,
    pub(super) relay: mpsc::Receiver<Envelope>,
}

/// Where one shard's replication messages go between nodes.
pub(super) struct Wire {
    /// `tracker.<index>`.
    pub(super) tracker_channel: String,
    /// This shard's index in the pool.
    index: usize,
    /// The pool's size.
    pool: usize,
    /// Pool size and index, prefixed to every replication message.
    header: [u8; 4],
}

impl Wire {
    pub(super) fn new(index: usize, pool: usize) -> Wire {
        let size = u16::try_from(pool).unwrap_or(u16::MAX).to_be_bytes();
        let shard = u16::try_from(index).unwrap_or(u16::MAX).to_be_bytes();
        Wire {
            tracker_channel: format!("{CHANNEL_TRACKER}.{index}"),
            index,
            pool,
            header: [size[0], size[1], shard[0], shard[1]],
        }
    }

    /// A replication message as it goes on the wire.
    fn frame(&self, message: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(message.len() + self.header.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(message);
        Bytes::from(out)
    }

    /// The message of a frame from a peer, or the peer's (pool size, index) if they are not
    /// ours.
    fn open<'a>(&self, frame: &'a [u8]) -> Result<&'a [u8], (u16, u16)> {
        match frame.split_at_checked(self.header.len()) {
            Some((header, message)) if header == self.header => Ok(message),
            Some((header, _)) => {
                let pool = u16::from_be_bytes([header[0], header[1]]);
                let shard = u16::from_be_bytes([header[2], header[3]]);
                Err((pool, shard))
            }
            None => Err((0, 0)),
        }
    }
}

pub(super) struct TrackerTask {
    pub(super) node: String,
    pub(super) shard: Shard,
    pub(super) wire: Wire,
    pub(super) subscriptions: Subscriptions,
    /// Code on this node that hears every change.
    pub(super) watchers: Watchers,
    pub(super) pubsub: Arc<dyn PubSub>,
    pub(super) frames_encoded: Arc<AtomicU64>,
    pub(super) metrics: Arc<Metrics>,
    /// The shard's clock is milliseconds since this instant.
    pub(super) start: Instant,
    pub(super) broadcast_period: Duration,
    pub(super) coalesce: Duration,
    /// When pending local changes go out, if any are pending.
    pub(super) flush_at: Option<Instant>,
    pub(super) last_flush: Option<Instant>,
    /// Peers the transport reached at the last check.
    pub(super) transport_up: HashSet<String>,
    /// Peers refused for running another pool size, with theirs.
    pub(super) refused_pools: HashMap<String, u16>,
    /// Relayed events refused from peers, for the log.
    pub(super) refusals: LogSummary,
}

/// `Some(true)` for a full-state transfer answer, `Some(false)` for a delta one, `None` for any
/// other message: what the transfer metrics count.
fn transfer_kind(message: &ReplicationMessage) -> Option<bool> {
    match message {
        ReplicationMessage::TransferAck { payload, .. } => Some(payload.is_full()),
        _ => None,
    }
}

impl TrackerTask {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The coalescing windows' clock: microseconds since the task started.
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// When the next held presence diff is due.
    fn next_diff_flush(&mut self) -> Option<Instant> {
        let at = self.subscriptions.next_flush()?;
        Some(self.start + Duration::from_micros(at))
    }

    pub(super) async fn run(mut self, mut inputs: Inputs) {
        // The first tick is at once: an empty heartbeat, so peers discover this node.
        let mut ticks = tokio::time::interval(self.broadcast_period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Transport connections are checked more often than the heartbeat, so a new peer is
        // greeted within a quarter second.
        let mut greetings =
            tokio::time::interval(self.broadcast_period.min(Duration::from_millis(250)));
        greetings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tracker_open = true;
        let mut relay_open = true;
        loop {
            let flush_at = self.flush_at;
            let diffs_at = self.next_diff_flush();
            tokio::select! {
                command = inputs.commands.recv() => {
                    if inputs.depth.fetch_sub(1, Ordering::Relaxed) == COMMAND_QUEUE {
                        inputs.room.notify_waiters();
                    }
                    match command {
                        Some(Command::Shutdown { reply }) => {
                            self.leave_cluster();
                            let _ = reply.send(());
                        }
                        Some(command) => self.handle(command),
                        None => break,
                    }
                }
                envelope = inputs.tracker.recv(), if tracker_open => match envelope {
                    Some(envelope) => self.receive(&envelope),
                    None => tracker_open = false,
                },
                envelope = inputs.relay.recv(), if relay_open => match envelope {
                    Some(envelope) => self.handle_relay(&envelope),
                    None => relay_open = false,
                },
                _ = ticks.tick() => {
                    let output = self.shard.tick(self.now_ms());
                    self.apply(output);
                    if let Some(line) = self.refusals.flush(Instant::now()) {
                        tracing::warn!("{line}");
                    }
                }
                _ = greetings.tick() => self.greet_new_connections(),
                _ = sleep_until(flush_at), if flush_at.is_some() => self.flush(),
                _ = sleep_until(diffs_at), if diffs_at.is_some() => {
                    let now = self.now_us();
                    self.subscriptions.flush_due(now);
                }
            }
        }
    }

    /// Heartbeats at once when the transport reaches a peer it did not reach at the previous
    /// check: a quiet node otherwise heartbeats only every `max_silent_periods` periods, and a
    /// new or healed peer (or one that missed a delta while disconnected) would wait that long
    /// to learn of it.
    fn greet_new_connections(&mut self) {
        let up: HashSet<String> = self
            .pubsub
            .peers()
            .into_iter()
            .filter(|p| p.up && !p.name.is_empty())
            .map(|p| p.name)
            .collect();
        let new = up.iter().any(|p| !self.transport_up.contains(p));
        self.transport_up = up;
        if new {
            let hello = self.shard.heartbeat_now(self.now_ms());
            self.apply(hello);
        }
    }

    /// Sends pending local changes now.
    fn flush(&mut self) {
        self.flush_at = None;
        self.last_flush = Some(Instant::now());
        let output = self.shard.flush_delta(self.now_ms());
        self.apply(output);
    }

    /// A local change happened: send it at once if nothing was sent within the coalescing
    /// window, else at the end of that window (so a burst goes out as one delta).
    fn schedule_flush(&mut self) {
        if self.flush_at.is_some() {
            return;
        }
        let now = Instant::now();
        let at = match self.last_flush {
            Some(last) if last + self.coalesce > now => last + self.coalesce,
            _ => now,
        };
        self.flush_at = Some(at);
    }

    /// The final goodbye: peers drop this shard's presences at once. The shard sends nothing
    /// afterwards; the handle flushes the transport once every shard has said it.
    fn leave_cluster(&mut self) {
        for out in self.shard.graceful_permdown() {
            if let Some(bytes) = encode(&out.message) {
                let frame = self.wire.frame(&bytes);
                self.pubsub.broadcast(&self.wire.tracker_channel, frame);
            }
        }
        self.flush_at = None;
    }

    /// Handles one replication message from a peer. A message that does not decode is logged
    /// and dropped (a peer on another wire version, or garbage).
    fn receive(&mut self, envelope: &Envelope) {
        self.metrics
            .pubsub_in(CHANNEL_TRACKER, envelope.payload.len());
        let message = match self.wire.open(&envelope.payload) {
            Ok(message) => message,
            Err((pool, shard)) => {
                if self.refused_pools.insert(envelope.from.clone(), pool) != Some(pool) {
                    tracing::error!(
                        from = envelope.from,
                        "tracker messages refused: the peer runs {pool} tracker shards (this is \
                         shard {shard} of them) and this node runs another number; every node \
                         of a cluster must run the same --tracker-shards"
                    );
                }
                return;
            }
        };
        let message = match ReplicationMessage::decode(message) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(from = envelope.from, "tracker message dropped: {e}");
                return;
            }
        };
        match transfer_kind(&message) {
            Some(true) => self.metrics.transfers_full_in.inc(),
            Some(false) => self.metrics.transfers_delta_in.inc(),
            None => {}
        }
        let output = self.shard.receive(&envelope.from, message, self.now_ms());
        self.apply(output);
    }

    /// Sends a shard's replication messages and dispatches its diff.
    fn apply(&mut self, output: Output) {
        for out in output.messages {
            self.send(out);
        }
        let mut met_a_peer = false;
        for event in &output.events {
            match event {
                // this node's incarnation was in use elsewhere too, or retired by a peer
                ReplicaEvent::Reincarnated { .. } => tracing::warn!("cluster: {event:?}"),
                _ => tracing::info!("cluster: {event:?}"),
            }
            met_a_peer |= matches!(event, ReplicaEvent::Up(_));
        }
        self.watchers.notify(&output.events, &output.diff);
        let now = self.now_us();
        self.subscriptions.dispatch_diff(&output.diff, now);
        if met_a_peer {
            // Answer first contact (or a return after a split) at once, so the peer learns of
            // this node and asks for its state now rather than at our next quiet heartbeat.
            let hello = self.shard.heartbeat_now(self.now_ms());
            self.apply(hello);
        }
    }

    fn send(&self, out: Outgoing) {
        match transfer_kind(&out.message) {
            Some(true) => self.metrics.transfers_full_out.inc(),
            Some(false) => self.metrics.transfers_delta_out.inc(),
            None => {}
        }
        let Some(bytes) = encode(&out.message) else {
            return;
        };
        let frame = self.wire.frame(&bytes);
        self.metrics.pubsub_out(CHANNEL_TRACKER, frame.len());
        let channel = &self.wire.tracker_channel;
        match out.to {
            Destination::Broadcast => self.pubsub.broadcast(channel, frame),
            Destination::Replica(id) => self.pubsub.send_to(&id.node, channel, frame),
        }
    }

    fn handle_relay(&mut self, envelope: &Envelope) {
        let decoded = relay::decode(&envelope.payload);
        // Every shard hears every relay; the one that owns its topic (the first, for one that
        // does not decode) counts and handles it.
        let owner = match &decoded {
            Ok(relay) => shard_index(&relay.topic, self.wire.pool),
            Err(_) => 0,
        };
        if owner != self.wire.index {
            return;
        }
        self.metrics
            .pubsub_in(CHANNEL_RELAY, envelope.payload.len());
        match decoded {
            Ok(relay::Relay { event, .. }) if check_relay_event(&event).is_err() => {
                // A peer relays only what its clients may send; a reserved name (a forged
                // `presence_diff`, `phx_reply` or `chan_reply_<ref>`) is refused here too, so
                // one node cannot make another deliver what only a server sends.
                self.metrics.relayed_events_refused.inc();
                let detail = format!("{event:?} from {}", envelope.from);
                if let Some(line) =
                    self.refusals
                        .note(Instant::now(), "reserved event name", &detail)
                {
                    tracing::warn!("{line}");
                }
            }
            Ok(relay::Relay {
                topic,
                event,
                payload,
            }) => {
                self.metrics.relayed_events_in.inc();
                let out = Outbound::Broadcast {
                    topic,
                    event,
                    payload,
                };
                self.subscriptions.dispatch(&out, None);
            }
            Err(e) => {
                self.metrics.relayed_events_refused.inc();
                let detail = format!("{e}, from {}", envelope.from);
                if let Some(line) = self.refusals.note(Instant::now(), "malformed", &detail) {
                    tracing::warn!("{line}");
                }
            }
        }
    }

    /// Dispatches a local change's diff and schedules sending it to other nodes.
    fn local_change(&mut self, diff: Diff) {
        if diff.is_empty() {
            return;
        }
        self.schedule_flush();
        self.watchers.notify(&[], &diff);
        let now = self.now_us();
        self.subscriptions.dispatch_diff(&diff, now);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Join {
                topic,
                join_ref,
                subscriber,
                push_state,
                meta,
            } => self.join(topic, join_ref, subscriber, push_state, meta),
            Command::Leave { conn, topic } => self.leave(conn, &topic),
            Command::Track { conn, topic, meta } => self.track(conn, &topic, meta),
            Command::Untrack { conn, topic } => {
                let Some(member) = self.subscriptions.member_mut(&topic, conn) else {
                    return;
                };
                member.listed = false;
                let key = member.subscriber.key.clone();
                let diff = self.shard.untrack(conn.0, &topic, &key);
                self.local_change(diff);
            }
            Command::TrackKey {
                conn,
                topic,
                key,
                mut meta,
            } => {
                self.set_server_fields(&mut meta);
                match self
                    .shard
                    .track(conn.0, &topic, &key, Meta::from_map(&meta))
                {
                    Ok((_, diff)) => self.local_change(diff),
                    Err(_) => tracing::warn!(topic, key, "already tracked by this handle"),
                }
            }
            Command::UpdateKey {
                conn,
                topic,
                key,
                mut meta,
            } => {
                self.set_server_fields(&mut meta);
                if let Ok((_, diff)) =
                    self.shard
                        .update(conn.0, &topic, &key, Meta::from_map(&meta))
                {
                    self.local_change(diff);
                }
            }
            Command::UntrackKey { conn, topic, key } => {
                let diff = self.shard.untrack(conn.0, &topic, &key);
                self.local_change(diff);
            }
            Command::Watch { watcher, initial } => {
                if initial && !self.send_state(&watcher) {
                    return;
                }
                self.watchers.add(watcher);
            }
            Command::Broadcast {
                topic,
                event,
                payload,
                except,
            } => self.broadcast(topic, event, payload, except),
            Command::Disconnect { conn } => {
                self.subscriptions.disconnect(conn);
                let diff = self.shard.untrack_connection(conn.0);
                self.local_change(diff);
            }
            Command::List { topic, reply } => {
                let _ = reply.send(self.shard.list(&topic));
            }
            Command::Replicas { reply } => {
                let replicas = self
                    .shard
                    .replicas()
                    .into_iter()
                    .map(|(id, status)| (id.node, status == ReplicaStatus::Up))
                    .collect();
                let _ = reply.send((replicas, self.refused_pools.clone()));
            }
            Command::Gauges { reply } => {
                let _ = reply.send(self.gauges());
            }
            // Handled in `run`, which can await the transport's flush.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// Delivers a client event to this node's subscribers and relays it to the other nodes.
    /// The socket checks the name before it gets here; a reserved one is refused again, as from
    /// a peer, whoever asks.
    fn broadcast(&self, topic: String, event: String, payload: Payload, except: Option<ConnId>) {
        if check_relay_event(&event).is_err() {
            tracing::debug!(event, "not relaying a reserved event name");
            return;
        }
        let bytes = relay::encode(&topic, &event, &payload);
        let out = Outbound::Broadcast {
            topic,
            event,
            payload,
        };
        self.subscriptions.dispatch(&out, except);
        match bytes {
            Some(bytes) => {
                self.metrics.pubsub_out(CHANNEL_RELAY, bytes.len());
                self.pubsub.broadcast(CHANNEL_RELAY, Bytes::from(bytes))
            }
            None => tracing::debug!(topic = ?out.topic(), "relay too large for other nodes"),
        }
    }

    /// Tells a new watcher the state as it is: the peers up (if it wants them), then every
    /// topic's presences as joins. False if the watcher is already gone.
    fn send_state(&self, watcher: &Watcher) -> bool {
        if watcher.wants_replicas() {
            for (id, status) in self.shard.replicas() {
                if status == ReplicaStatus::Up
                    && !watcher.send(WatchEvent::Replica(ReplicaEvent::Up(id)))
                {
                    return false;
                }
            }
        }
        for topic in self.shard.state().topics() {
            let joins = self.shard.list(&topic);
            if joins.is_empty() {
                continue;
            }
            let diff = TopicDiff {
                joins,
                leaves: Vec::new(),
            };
            if !watcher.send(WatchEvent::Changed(topic, diff)) {
                return false;
            }
        }
        true
    }

    fn gauges(&self) -> TrackerGauges {
        let count = |n: usize| n as u64;
        let (channels, presences_local) = self.subscriptions.channels();
        let state = self.shard.state();
        let replicas = self.shard.replicas();
        let up = replicas
            .iter()
            .filter(|(_, s)| *s == ReplicaStatus::Up)
            .count();
        TrackerGauges {
            channels,
            rooms_subscribed: count(self.subscriptions.topics()),
            presences_local,
            presences_stored: count(state.len()),
            rooms_with_presences: count(state.topics().len()),
            replicas_up: count(up),
            replicas_down: count(replicas.len() - up),
            frames_encoded: self.frames_encoded.load(Ordering::Relaxed),
        }
    }

    fn join(
        &mut self,
        topic: String,
        join_ref: Option<String>,
        subscriber: Subscriber,
        push_state: bool,
        meta: Option<Map<String, Value>>,
    ) {
        let conn = subscriber.conn;
        // A duplicate join replaces the old channel: it leaves first.
        if self.subscriptions.member(&topic, conn).is_some() {
            self.leave(conn, &topic);
        }
        if push_state {
            let shard = &self.shard;
            self.subscriptions
                .push_state(&subscriber, join_ref.as_deref(), &topic, || {
                    shard.list(&topic)
                });
        }
        let key = subscriber.key.clone();
        self.subscriptions.subscribe(&topic, subscriber);
        if let Some(meta) = meta {
            self.track_new(conn, &topic, &key, meta);
        }
    }

    fn track_new(&mut self, conn: ConnId, topic: &str, key: &str, mut meta: Map<String, Value>) {
        self.set_server_fields(&mut meta);
        if let Ok((_, diff)) = self.shard.track(conn.0, topic, key, Meta::from_map(&meta)) {
            if let Some(member) = self.subscriptions.member_mut(topic, conn) {
                member.listed = true;
            }
            self.local_change(diff);
        }
    }

    fn track(&mut self, conn: ConnId, topic: &str, mut meta: Map<String, Value>) {
        let Some(member) = self.subscriptions.member(topic, conn) else {
            return;
        };
        let key = member.subscriber.key.clone();
        if !member.listed {
            return self.track_new(conn, topic, &key, meta);
        }
        self.set_server_fields(&mut meta);
        if let Ok((_, diff)) = self
            .shard
            .update(conn.0, topic, &key, Meta::from_map(&meta))
        {
            self.local_change(diff);
        }
    }

    /// The fields of a meta the tracker owns, whatever the client or app sent: `node` is set
    /// here; `phx_ref` and `phx_ref_prev` are added when the presence is rendered, so any given
    /// are removed (phoenix.js matches metas by them).
    fn set_server_fields(&self, meta: &mut Map<String, Value>) {
        for field in RENDERED_FIELDS {
            meta.shift_remove(field);
        }
        meta.insert(META_NODE.into(), Value::String(self.node.clone()));
    }

    fn leave(&mut self, conn: ConnId, topic: &str) {
        if let Some(member) = self.subscriptions.unsubscribe(conn, topic) {
            let diff = self.shard.untrack(conn.0, topic, &member.subscriber.key);
            self.local_change(diff);
        }
    }
}

/// A replication message's bytes; one that does not encode is logged and not sent.
fn encode(message: &ReplicationMessage) -> Option<Vec<u8>> {
    message
        .encode()
        .inspect_err(|e| tracing::warn!("tracker message not sent: {e}"))
        .ok()
}

/// Sleeps until `at`; never completes for `None` (the branch is disabled then anyway).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_core::tracker::{ReplicaId, ShardConfig};

    fn shard(node: &str) -> Shard {
        Shard::new(ReplicaId::new(node, 1), ShardConfig::default(), 0).unwrap()
    }

    fn meta() -> Meta {
        Meta::new(r#"{"status":"x"}"#).unwrap()
    }

    fn kinds(messages: &[Outgoing]) -> Vec<bool> {
        messages
            .iter()
            .filter_map(|m| transfer_kind(&m.message))
            .collect()
    }

    #[test]
    fn a_transfer_answer_is_counted_as_what_it_carries() {
        let mut a = shard("a");
        let mut b = shard("b");
        for m in a.heartbeat_now(1).messages {
            b.receive("a", m.message, 1);
        }
        a.track(1, "t", "alice", meta()).unwrap();
        // The delta is lost: b learns of it only from a's clock, and asks for a transfer.
        let _lost = a.flush_delta(5);
        let mut to_a = Vec::new();
        for m in a.heartbeat_now(6).messages {
            to_a.extend(b.receive("a", m.message, 6).messages);
        }
        // Clocks heard are compared every `clock_sample_periods` (2) ticks.
        to_a.extend(b.tick(1_500).messages);
        to_a.extend(b.tick(3_000).messages);
        assert!(kinds(&to_a).is_empty(), "requests are not transfers");
        let mut answers = Vec::new();
        for request in to_a {
            answers.extend(a.receive("b", request.message, 7).messages);
        }
        assert_eq!(kinds(&answers).len(), 1, "one transfer answers the request");
        for answer in answers {
            b.receive("a", answer.message, 7);
        }
        assert_eq!(b.list("t").len(), 1);
    }
}
