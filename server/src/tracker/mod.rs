//! The tracker: one Tokio task that owns this node's presence [`state`] and the subscriptions of
//! local connections to topics. Connections talk to it through a cloneable [`Tracker`] handle
//! (commands over a channel), so every presence change is applied in one order and every
//! subscriber sees diffs in that order.
//!
//! The task also fans frames out: a presence diff or a relayed event is encoded once per
//! serializer and the same bytes are queued to every subscriber.
//!
//! The presence state is a replica ([`state::Shard`], over `core::tracker::Shard`) of the
//! cluster's CRDT. Its replication messages travel over the [`PubSub`] adapter on channel
//! [`CHANNEL_TRACKER`], relayed client events on [`CHANNEL_RELAY`]. Local changes are sent at
//! once (batched over `coalesce`), and a heartbeat goes out every broadcast period as in Phoenix.
//! Time comes from `tokio::time`, so tests can pause it.

pub mod relay;
mod render;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rollcall_core::protocol::{Outbound, Payload, Serializer};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::channel::{EVENT_PRESENCE_DIFF, EVENT_PRESENCE_STATE};
use crate::config::ClusterSettings;
use crate::metrics::{Metrics, TrackerGauges};
use crate::pubsub::{Envelope, PubSub};
use crate::transport::WireFrame;
use crate::ConnId;
use state::{Diff, PresenceMeta, Shard, ShardConfig};

/// Pubsub channel of the tracker's replication messages.
pub const CHANNEL_TRACKER: &str = "tracker";
/// Pubsub channel of relayed client events.
pub const CHANNEL_RELAY: &str = "relay";
/// The meta field the server sets to the name of the node a member is connected to.
pub const META_NODE: &str = "node";

/// The shard timing for `settings` (other knobs at Phoenix's defaults).
///
/// A quiet node heartbeats only every `max_silent_periods + 1` periods; that interval must stay
/// well inside the down period or quiet peers flap down and up. Phoenix's 10 fits its defaults
/// (16.5 s against 30 s); shorter down periods get fewer silent periods, so that the interval is
/// at most two thirds of the down period.
pub fn shard_config(settings: &ClusterSettings) -> ShardConfig {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let broadcast = ms(settings.broadcast_period).max(1);
    let down = ms(settings.down_period);
    let fit = (down.saturating_mul(2) / broadcast.saturating_mul(3)).saturating_sub(1);
    ShardConfig {
        broadcast_period_ms: ms(settings.broadcast_period),
        down_period_ms: down,
        permdown_period_ms: ms(settings.permdown_period),
        max_silent_periods: u32::try_from(fit.min(10)).unwrap_or(10),
        ..ShardConfig::default()
    }
}

/// Where frames for one connection are queued. The queue is bounded: a connection that does not
/// keep up is told to close (through `overflow`) instead of growing without limit or silently
/// missing a presence diff.
#[derive(Debug, Clone)]
pub struct Outbox {
    frames: mpsc::Sender<WireFrame>,
    overflow: Arc<Notify>,
}

impl Outbox {
    /// An outbox over `frames`; `overflow` is notified when a frame did not fit.
    pub fn new(frames: mpsc::Sender<WireFrame>, overflow: Arc<Notify>) -> Self {
        Outbox { frames, overflow }
    }

    /// Queues `frame`; on a full queue, drops it and signals the overflow.
    pub fn deliver(&self, frame: WireFrame) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.frames.try_send(frame) {
            self.overflow.notify_one();
        }
    }
}

/// One connection's channel on a topic, as the tracker needs to know it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The connection.
    pub conn: ConnId,
    /// How that connection encodes frames.
    pub serializer: Serializer,
    /// Its outgoing queue.
    pub outbox: Outbox,
    /// Its presence key in this topic.
    pub key: String,
}

#[derive(Debug)]
enum Command {
    Join {
        topic: String,
        join_ref: Option<String>,
        subscriber: Subscriber,
        meta: Option<Map<String, Value>>,
    },
    Leave {
        conn: ConnId,
        topic: String,
    },
    Track {
        conn: ConnId,
        topic: String,
        meta: Map<String, Value>,
    },
    Untrack {
        conn: ConnId,
        topic: String,
    },
    Broadcast {
        topic: String,
        event: String,
        payload: Payload,
        except: Option<ConnId>,
    },
    Disconnect {
        conn: ConnId,
    },
    List {
        topic: String,
        reply: oneshot::Sender<render::Listing>,
    },
    Replicas {
        reply: oneshot::Sender<Vec<(String, bool)>>,
    },
    Gauges {
        reply: oneshot::Sender<TrackerGauges>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the tracker task. Cheap to clone; commands are applied in the order sent.
#[derive(Debug, Clone)]
pub struct Tracker {
    commands: mpsc::UnboundedSender<Command>,
    frames_encoded: Arc<AtomicU64>,
    pubsub: Arc<dyn PubSub>,
    metrics: Arc<Metrics>,
}

impl Tracker {
    /// Starts the tracker task of the node `pubsub` speaks for, with Phoenix's default timing,
    /// on the current Tokio runtime.
    pub fn spawn(pubsub: Arc<dyn PubSub>) -> Tracker {
        Tracker::spawn_with(pubsub, &ClusterSettings::default())
    }

    /// Starts the tracker task with the given replication timing. Timing the shard refuses
    /// (see [`ShardConfig::validate`]) is logged and replaced by the defaults; check it first
    /// with [`shard_config`] to refuse it instead.
    pub fn spawn_with(pubsub: Arc<dyn PubSub>, settings: &ClusterSettings) -> Tracker {
        let (tx, rx) = mpsc::unbounded_channel();
        let frames_encoded = Arc::new(AtomicU64::new(0));
        let metrics = Arc::new(Metrics::default());
        let node = pubsub.node().to_string();
        // Peers tell incarnations apart, they do not order them: 64 random bits make every start
        // a replica no peer has seen, whatever the clock did in between.
        let incarnation: u64 = rand::random();
        let shard = Shard::new(&node, incarnation, shard_config(settings)).unwrap_or_else(|e| {
            tracing::error!("tracker timing refused ({e}); using the defaults");
            Shard::new(&node, incarnation, ShardConfig::default())
                .unwrap_or_else(|_| unreachable!("the default shard config is valid"))
        });
        let inputs = Inputs {
            commands: rx,
            tracker: pubsub.subscribe(CHANNEL_TRACKER),
            relay: pubsub.subscribe(CHANNEL_RELAY),
        };
        let task = TrackerTask {
            node,
            shard,
            topics: HashMap::new(),
            by_conn: HashMap::new(),
            pubsub: pubsub.clone(),
            frames_encoded: frames_encoded.clone(),
            metrics: metrics.clone(),
            start: Instant::now(),
            broadcast_period: settings.broadcast_period.max(Duration::from_millis(1)),
            coalesce: settings.coalesce,
            flush_at: None,
            last_flush: None,
            transport_up: HashSet::new(),
        };
        tokio::spawn(task.run(inputs));
        Tracker {
            commands: tx,
            frames_encoded,
            pubsub,
            metrics,
        }
    }

    /// This node's counters (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The presence gauges, read from the tracker's state now.
    pub async fn gauges(&self) -> TrackerGauges {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Gauges { reply });
        rx.await.unwrap_or_default()
    }

    /// The cluster transport this tracker replicates over.
    pub fn pubsub(&self) -> &Arc<dyn PubSub> {
        &self.pubsub
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        self.pubsub.node()
    }

    /// The node's view of its cluster, for `/healthz`: every peer the transport or the tracker
    /// knows, with `up` true when the transport reaches it and its tracker replica is not down.
    pub async fn health(&self) -> Value {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Replicas { reply });
        let replicas: HashMap<String, bool> = rx.await.unwrap_or_default().into_iter().collect();
        let mut peers = Vec::new();
        let mut seen = HashSet::new();
        for p in self.pubsub.peers() {
            let replica = replicas.get(&p.name).copied();
            seen.insert(p.name.clone());
            peers.push(json!({
                "name": p.name,
                "addr": p.addr,
                "transport": if p.up { "up" } else { "down" },
                "replica": match replica { Some(true) => "up", Some(false) => "down", None => "unknown" },
                "up": p.up && replica != Some(false),
            }));
        }
        let mut rest: Vec<_> = replicas
            .iter()
            .filter(|(n, _)| !seen.contains(*n))
            .collect();
        rest.sort();
        for (name, up) in rest {
            peers.push(json!({
                "name": name,
                "addr": null,
                "transport": "unknown",
                "replica": if *up { "up" } else { "down" },
                "up": *up,
            }));
        }
        Value::Array(peers)
    }

    /// Leaves the cluster for good: sends the graceful permdown (every other node drops this
    /// node's members at once) and flushes the transport. Presence changes after this stay
    /// local.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Shutdown { reply });
        let _ = rx.await;
    }

    fn send(&self, command: Command) {
        // The task lives as long as any handle; a send can only fail during runtime shutdown.
        let _ = self.commands.send(command);
    }

    /// Subscribes `subscriber` to `topic` (replacing its previous channel there), pushes it
    /// `presence_state` with `join_ref`, then tracks it with `meta` unless `meta` is `None`
    /// (an observer) and broadcasts the join.
    pub fn join(
        &self,
        topic: &str,
        join_ref: Option<String>,
        subscriber: Subscriber,
        meta: Option<Map<String, Value>>,
    ) {
        self.send(Command::Join {
            topic: topic.to_string(),
            join_ref,
            subscriber,
            meta,
        });
    }

    /// Unsubscribes `conn` from `topic` and untracks it there.
    pub fn leave(&self, conn: ConnId, topic: &str) {
        self.send(Command::Leave {
            conn,
            topic: topic.to_string(),
        });
    }

    /// Tracks `conn` in `topic` with `meta`, or updates its meta if it is tracked.
    pub fn track(&self, conn: ConnId, topic: &str, meta: Map<String, Value>) {
        self.send(Command::Track {
            conn,
            topic: topic.to_string(),
            meta,
        });
    }

    /// Stops listing `conn` in `topic`; it stays subscribed.
    pub fn untrack(&self, conn: ConnId, topic: &str) {
        self.send(Command::Untrack {
            conn,
            topic: topic.to_string(),
        });
    }

    /// Sends an event to every subscriber of `topic` (on every node) except `except`.
    pub fn broadcast(&self, topic: &str, event: &str, payload: Payload, except: Option<ConnId>) {
        self.send(Command::Broadcast {
            topic: topic.to_string(),
            event: event.to_string(),
            payload,
            except,
        });
    }

    /// Forgets a closed connection: unsubscribes and untracks it everywhere.
    pub fn disconnect(&self, conn: ConnId) {
        self.send(Command::Disconnect { conn });
    }

    /// Who is in `topic`, in the `presence_state` shape.
    pub async fn list(&self, topic: &str) -> Value {
        let (reply, rx) = oneshot::channel();
        self.send(Command::List {
            topic: topic.to_string(),
            reply,
        });
        // The tracker task only lists (shared keys and metas); the caller's task renders.
        rx.await.map_or(Value::Object(Map::new()), |l| {
            render::presence_state_value(&l)
        })
    }

    /// How many frames the tracker has encoded so far (one per serializer per dispatch).
    pub fn frames_encoded(&self) -> u64 {
        self.frames_encoded.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Member {
    subscriber: Subscriber,
    /// `online_at` of the current track; `None` while not listed.
    online_at: Option<u64>,
}

struct Inputs {
    commands: mpsc::UnboundedReceiver<Command>,
    tracker: mpsc::Receiver<Envelope>,
    relay: mpsc::Receiver<Envelope>,
}

struct TrackerTask {
    node: String,
    shard: Shard,
    /// Local subscribers per topic.
    topics: HashMap<String, HashMap<ConnId, Member>>,
    /// Topics per connection, for disconnects.
    by_conn: HashMap<ConnId, HashSet<String>>,
    pubsub: Arc<dyn PubSub>,
    frames_encoded: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// The shard's clock is milliseconds since this instant.
    start: Instant,
    broadcast_period: Duration,
    coalesce: Duration,
    /// When pending local changes go out, if any are pending.
    flush_at: Option<Instant>,
    last_flush: Option<Instant>,
    /// Peers the transport reached at the last tick.
    transport_up: HashSet<String>,
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Groups `(key, meta)` pairs as Phoenix does: `{key: {"metas": [meta, ...]}}`, keys in order of
/// first appearance.
fn group(entries: &[(String, PresenceMeta)]) -> Value {
    let mut out = Map::new();
    for (key, meta) in entries {
        let slot = out
            .entry(key.clone())
            .or_insert_with(|| serde_json::json!({"metas": []}));
        if let Some(Value::Array(metas)) = slot.get_mut("metas") {
            metas.push(meta.to_json());
        }
    }
    Value::Object(out)
}

impl TrackerTask {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(mut self, mut inputs: Inputs) {
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
            tokio::select! {
                command = inputs.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        self.leave_cluster().await;
                        let _ = reply.send(());
                    }
                    Some(command) => self.handle(command),
                    None => break,
                },
                envelope = inputs.tracker.recv(), if tracker_open => match envelope {
                    Some(envelope) => {
                        self.metrics.pubsub_in(CHANNEL_TRACKER, envelope.payload.len());
                        let output = self.shard.receive(&envelope.from, &envelope.payload, self.now_ms());
                        self.apply(output);
                    }
                    None => tracker_open = false,
                },
                envelope = inputs.relay.recv(), if relay_open => match envelope {
                    Some(envelope) => self.handle_relay(&envelope),
                    None => relay_open = false,
                },
                _ = ticks.tick() => {
                    let output = self.shard.tick(self.now_ms());
                    self.apply(output);
                }
                _ = greetings.tick() => self.greet_new_connections(),
                _ = sleep_until(flush_at), if flush_at.is_some() => self.flush(),
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
        let output = self.shard.flush(self.now_ms());
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

    async fn leave_cluster(&mut self) {
        for message in self.shard.graceful_permdown() {
            self.pubsub
                .broadcast(CHANNEL_TRACKER, Bytes::from(message.bytes));
        }
        self.flush_at = None;
        self.pubsub.shutdown().await;
    }

    /// Sends a shard's replication messages and dispatches its diff.
    fn apply(&mut self, output: state::Output) {
        for message in output.messages {
            let bytes = Bytes::from(message.bytes);
            self.metrics.pubsub_out(CHANNEL_TRACKER, bytes.len());
            match message.to {
                None => self.pubsub.broadcast(CHANNEL_TRACKER, bytes),
                Some(node) => self.pubsub.send_to(&node, CHANNEL_TRACKER, bytes),
            }
        }
        let t = output.transfers;
        self.metrics.transfers_delta_out.add(t.delta_sent);
        self.metrics.transfers_full_out.add(t.full_sent);
        self.metrics.transfers_delta_in.add(t.delta_received);
        self.metrics.transfers_full_in.add(t.full_received);
        let mut met_a_peer = false;
        for event in &output.events {
            tracing::info!("cluster: {event:?}");
            met_a_peer |= matches!(event, state::ReplicaEvent::Up(_));
        }
        self.dispatch_diff(output.diff);
        if met_a_peer {
            // Answer first contact (or a return after a split) at once, so the peer learns of
            // this node and asks for its state now rather than at our next quiet heartbeat.
            let hello = self.shard.heartbeat_now(self.now_ms());
            self.apply(hello);
        }
    }

    fn handle_relay(&mut self, envelope: &Envelope) {
        self.metrics
            .pubsub_in(CHANNEL_RELAY, envelope.payload.len());
        match relay::decode(&envelope.payload) {
            Ok(relay::Relay {
                topic,
                event,
                payload,
            }) => {
                self.metrics.relayed_events_in.inc();
                self.dispatch(
                    &Outbound::Broadcast {
                        topic,
                        event,
                        payload,
                    },
                    None,
                )
            }
            Err(e) => tracing::warn!(from = envelope.from, "relay dropped: {e}"),
        }
    }

    /// Dispatches a local change's diff and schedules sending it to other nodes.
    fn local_change(&mut self, diff: Diff) {
        if !diff.is_empty() {
            self.schedule_flush();
        }
        self.dispatch_diff(diff);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Join {
                topic,
                join_ref,
                subscriber,
                meta,
            } => self.join(topic, join_ref, subscriber, meta),
            Command::Leave { conn, topic } => self.leave(conn, &topic),
            Command::Track { conn, topic, meta } => self.track(conn, &topic, meta),
            Command::Untrack { conn, topic } => {
                let Some(member) = self.topics.get_mut(&topic).and_then(|m| m.get_mut(&conn))
                else {
                    return;
                };
                member.online_at = None;
                let key = member.subscriber.key.clone();
                let diff = self.shard.untrack(conn, &topic, &key);
                self.local_change(diff);
            }
            Command::Broadcast {
                topic,
                event,
                payload,
                except,
            } => {
                let out = Outbound::Broadcast {
                    topic,
                    event,
                    payload,
                };
                self.dispatch(&out, except);
                if let Outbound::Broadcast {
                    topic,
                    event,
                    payload,
                } = &out
                {
                    match relay::encode(topic, event, payload) {
                        Some(bytes) => {
                            self.metrics.pubsub_out(CHANNEL_RELAY, bytes.len());
                            self.pubsub.broadcast(CHANNEL_RELAY, Bytes::from(bytes))
                        }
                        None => tracing::debug!(topic, "relay too large for other nodes"),
                    }
                }
            }
            Command::Disconnect { conn } => {
                for topic in self.by_conn.remove(&conn).unwrap_or_default() {
                    self.remove_member(conn, &topic);
                }
                let diff = self.shard.untrack_connection(conn);
                self.local_change(diff);
            }
            Command::List { topic, reply } => {
                let _ = reply.send(self.shard.listing(&topic));
            }
            Command::Replicas { reply } => {
                let replicas = self
                    .shard
                    .replicas()
                    .into_iter()
                    .map(|(id, status)| (id.node, status == state::ReplicaStatus::Up))
                    .collect();
                let _ = reply.send(replicas);
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

    fn gauges(&self) -> TrackerGauges {
        let count = |n: usize| n as u64;
        let members = self.topics.values().flat_map(|m| m.values());
        let (channels, presences_local) = members.fold((0, 0), |(c, p), m| {
            (c + 1, p + u64::from(m.online_at.is_some()))
        });
        let (presences_stored, rooms_with_presences) = self.shard.stored();
        let replicas = self.shard.replicas();
        let up = replicas
            .iter()
            .filter(|(_, s)| *s == state::ReplicaStatus::Up)
            .count();
        TrackerGauges {
            channels,
            rooms_subscribed: count(self.topics.len()),
            presences_local,
            presences_stored: count(presences_stored),
            rooms_with_presences: count(rooms_with_presences),
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
        meta: Option<Map<String, Value>>,
    ) {
        let conn = subscriber.conn;
        // A duplicate join replaces the old channel: it leaves first.
        if self
            .topics
            .get(&topic)
            .is_some_and(|m| m.contains_key(&conn))
        {
            self.leave(conn, &topic);
        }
        // Written as text from the stored metas: the same bytes as encoding the grouped
        // `Value`, without building one (see `render`).
        let payload = render::presence_state_json(&self.shard.listing(&topic));
        self.frames_encoded.fetch_add(1, Ordering::Relaxed);
        subscriber.outbox.deliver(render::push_frame(
            subscriber.serializer,
            join_ref.as_deref(),
            &topic,
            EVENT_PRESENCE_STATE,
            &payload,
        ));
        let key = subscriber.key.clone();
        self.topics.entry(topic.clone()).or_default().insert(
            conn,
            Member {
                subscriber,
                online_at: None,
            },
        );
        self.by_conn.entry(conn).or_default().insert(topic.clone());
        if let Some(meta) = meta {
            self.track_new(conn, &topic, &key, meta);
        }
    }

    fn track_new(&mut self, conn: ConnId, topic: &str, key: &str, mut meta: Map<String, Value>) {
        let online_at = unix_seconds();
        meta.insert("online_at".into(), Value::from(online_at));
        meta.insert(META_NODE.into(), Value::String(self.node.clone()));
        if let Ok((_, diff)) = self.shard.track(conn, topic, key, &meta) {
            if let Some(member) = self.topics.get_mut(topic).and_then(|m| m.get_mut(&conn)) {
                member.online_at = Some(online_at);
            }
            self.local_change(diff);
        }
    }

    fn track(&mut self, conn: ConnId, topic: &str, mut meta: Map<String, Value>) {
        let Some(member) = self.topics.get(topic).and_then(|m| m.get(&conn)) else {
            return;
        };
        let key = member.subscriber.key.clone();
        match member.online_at {
            // Still online since the first track: an update keeps `online_at`.
            Some(online_at) => {
                meta.insert("online_at".into(), Value::from(online_at));
                meta.insert(META_NODE.into(), Value::String(self.node.clone()));
                if let Ok((_, diff)) = self.shard.update(conn, topic, &key, &meta) {
                    self.local_change(diff);
                }
            }
            None => self.track_new(conn, topic, &key, meta),
        }
    }

    fn leave(&mut self, conn: ConnId, topic: &str) {
        if let Some(topics) = self.by_conn.get_mut(&conn) {
            topics.remove(topic);
            if topics.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
        if let Some(member) = self.remove_member(conn, topic) {
            let diff = self.shard.untrack(conn, topic, &member.subscriber.key);
            self.local_change(diff);
        }
    }

    fn remove_member(&mut self, conn: ConnId, topic: &str) -> Option<Member> {
        let members = self.topics.get_mut(topic)?;
        let member = members.remove(&conn);
        if members.is_empty() {
            self.topics.remove(topic);
        }
        member
    }

    fn dispatch_diff(&mut self, diff: Diff) {
        for (topic, d) in diff {
            let payload = serde_json::json!({
                "joins": group(&d.joins),
                "leaves": group(&d.leaves),
            });
            self.dispatch(
                &Outbound::Broadcast {
                    topic,
                    event: EVENT_PRESENCE_DIFF.to_string(),
                    payload: Payload::Json(payload),
                },
                None,
            );
        }
    }

    /// Queues `out` to every local subscriber of its topic except `except`, encoding it once
    /// per serializer.
    fn dispatch(&self, out: &Outbound, except: Option<ConnId>) {
        let Some(members) = self.topics.get(out.topic()) else {
            return;
        };
        let mut cache: [Option<Option<WireFrame>>; 2] = [None, None];
        for (conn, member) in members {
            if Some(*conn) == except {
                continue;
            }
            let serializer = member.subscriber.serializer;
            let slot = match serializer {
                Serializer::V1Json => &mut cache[0],
                Serializer::V2 => &mut cache[1],
            };
            let frame = slot.get_or_insert_with(|| {
                self.frames_encoded.fetch_add(1, Ordering::Relaxed);
                match WireFrame::encode(serializer, out) {
                    Ok(frame) => Some(frame),
                    Err(e) => {
                        tracing::debug!(
                            topic = out.topic(),
                            "not delivered to {serializer:?} subscribers: {e}"
                        );
                        None
                    }
                }
            });
            if let Some(frame) = frame {
                member.subscriber.outbox.deliver(frame.clone());
            }
        }
    }
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

    #[test]
    fn a_quiet_nodes_heartbeats_stay_within_two_thirds_of_the_down_period() {
        for (broadcast, down) in [(1_500, 30_000), (100, 1_000), (100, 200), (50, 60_000)] {
            let settings = ClusterSettings {
                broadcast_period: Duration::from_millis(broadcast),
                down_period: Duration::from_millis(down),
                ..ClusterSettings::default()
            };
            let config = shard_config(&settings);
            let interval = (u64::from(config.max_silent_periods) + 1) * broadcast;
            assert!(
                interval * 3 <= down * 2 || config.max_silent_periods == 0,
                "{config:?}"
            );
            assert!(config.max_silent_periods <= 10);
        }
        // Phoenix's defaults keep Phoenix's 10 silent periods.
        assert_eq!(
            shard_config(&ClusterSettings::default()).max_silent_periods,
            10
        );
    }
}
