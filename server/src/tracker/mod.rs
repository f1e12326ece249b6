//! The tracker: a pool of Tokio tasks (shards, by default one per core) that own this node's
//! presence state and the subscriptions of local connections to topics. Topics are hashed over
//! the shards ([`shard_index`]), as Phoenix's `pool_size` does; connections talk to them through
//! a cloneable [`Tracker`] handle (commands over a queue per shard), so every change of a topic
//! is applied in one order and every subscriber sees the topic's diffs in that order.
//!
//! Each shard's presence state is a `rollcall_core::tracker::Shard`, a replica of its part of
//! the cluster's CRDT, driven directly by its task (`task`). Shard `i` replicates with shard `i`
//! of every other node over the [`PubSub`] adapter on channel `tracker.<i>`; relayed client
//! events go on [`CHANNEL_RELAY`] ([`relay`]), handled by the shard that owns their topic. Every
//! node of a cluster must run the same number of
//! shards (a message says its sender's pool size, and one from a different pool is refused with
//! an error in the log). Local changes are sent at once (batched over `coalesce`), and a
//! heartbeat goes out every broadcast period as in Phoenix.
//!
//! The queues are bounded where input enters: a connection waits ([`Tracker::ready`]) before
//! reading its next frame while a shard has more than [`COMMAND_QUEUE`] commands waiting, so a
//! flood slows the clients that cause it instead of growing memory.
//!
//! The task also fans frames out (`fanout`): a presence diff or a relayed event is encoded
//! once per serializer and the same bytes are queued to every subscriber; presences are written
//! as JSON text (`render`). A busy room's presence diffs are held for a short window and go out
//! as one (`rollcall_core::tracker::Coalescer`, capped by `diff_window`).

mod fanout;
pub mod fetch;
pub mod relay;
mod render;
mod task;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rollcall_core::protocol::Payload;
use rollcall_core::tracker::{CoalesceConfig, ReplicaId, Shard, ShardConfig};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

pub use fanout::Subscriber;
pub use watch::{Watch, WatchEvent, WatchOptions};

use crate::config::ClusterSettings;
use crate::metrics::{Metrics, TrackerGauges};
use crate::pubsub::PubSub;
pub(crate) use render::meta_map;
use render::Listing;
use task::{Inputs, TrackerTask};

/// Identifies one client connection on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// A fresh id, unique within this process.
    pub fn next() -> ConnId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Pubsub channel of the tracker's replication messages (shard `i` uses `tracker.<i>`; this is
/// the name the metrics count them under).
pub const CHANNEL_TRACKER: &str = "tracker";
/// Pubsub channel of relayed client events (every shard hears them; the topic's owner handles
/// them).
pub const CHANNEL_RELAY: &str = "relay";
/// Commands a shard may have waiting before connections stop reading client frames.
pub const COMMAND_QUEUE: usize = 4_096;

/// The shard of a topic: core's rule, which the seeded simulation checks too.
pub use rollcall_core::tracker::shard_index;
/// The meta field the server sets to the name of the node a member is connected to.
pub const META_NODE: &str = "node";
/// The meta fields the tracker adds when it renders a presence; a client's own are dropped.
pub const RENDERED_FIELDS: [&str; 2] = ["phx_ref", "phx_ref_prev"];

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

/// The presence-diff windows for `settings`.
fn coalesce_config(settings: &ClusterSettings) -> CoalesceConfig {
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    CoalesceConfig {
        max_window_us: us(settings.diff_window),
        window_per_subscriber_us: us(settings.diff_window_per_member),
        ..CoalesceConfig::default()
    }
}

/// A shard's view of its peers: each replica's node and whether it is up, and the peers
/// refused for running another pool size, with theirs.
type ReplicaView = (Vec<(String, bool)>, HashMap<String, u16>);

#[derive(Debug)]
enum Command {
    Join {
        topic: String,
        join_ref: Option<String>,
        subscriber: Subscriber,
        push_state: bool,
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
    TrackKey {
        conn: ConnId,
        topic: String,
        key: String,
        meta: Map<String, Value>,
    },
    UpdateKey {
        conn: ConnId,
        topic: String,
        key: String,
        meta: Map<String, Value>,
    },
    UntrackKey {
        conn: ConnId,
        topic: String,
        key: String,
    },
    Watch {
        watcher: watch::Watcher,
        initial: bool,
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
        reply: oneshot::Sender<Listing>,
    },
    /// The replicas and whether each is up, and the peers refused for their pool size.
    Replicas {
        reply: oneshot::Sender<ReplicaView>,
    },
    Gauges {
        reply: oneshot::Sender<TrackerGauges>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// One shard's command queue. Senders never wait (handlers and drops call the tracker from
/// synchronous code); `depth` counts what waits, and [`Tracker::ready`] is where connections
/// wait for it to fall below [`COMMAND_QUEUE`].
#[derive(Debug)]
struct Queue {
    commands: mpsc::UnboundedSender<Command>,
    depth: Arc<AtomicUsize>,
}

/// Handle to the tracker's shards. Cheap to clone; the commands of one topic are applied in
/// the order sent.
#[derive(Debug, Clone)]
pub struct Tracker {
    shards: Arc<[Queue]>,
    /// Notified when a shard's queue falls below the bound.
    room: Arc<Notify>,
    incarnation: u64,
    frames_encoded: Arc<AtomicU64>,
    pubsub: Arc<dyn PubSub>,
}

impl Tracker {
    /// Starts the tracker task of the node `pubsub` speaks for, with Phoenix's default timing
    /// and counters of its own, on the current Tokio runtime.
    pub fn spawn(pubsub: Arc<dyn PubSub>) -> Tracker {
        Tracker::spawn_with(
            pubsub,
            &ClusterSettings::default(),
            Arc::new(Metrics::default()),
        )
    }

    /// Starts the tracker task with the given replication timing. Timing the shard refuses
    /// (see [`ShardConfig::validate`]) is logged and replaced by the defaults; check it first
    /// with [`shard_config`] to refuse it instead. The task counts pubsub traffic, relayed
    /// events and state transfers into `metrics`.
    pub fn spawn_with(
        pubsub: Arc<dyn PubSub>,
        settings: &ClusterSettings,
        metrics: Arc<Metrics>,
    ) -> Tracker {
        Tracker::spawn_with_fetch(pubsub, settings, metrics, None)
    }

    /// [`Tracker::spawn_with`], passing every presence frame through the app's fetch hook
    /// (see [`fetch`]).
    pub fn spawn_with_fetch(
        pubsub: Arc<dyn PubSub>,
        settings: &ClusterSettings,
        metrics: Arc<Metrics>,
        fetch: Option<fetch::FetchHook>,
    ) -> Tracker {
        let frames_encoded = Arc::new(AtomicU64::new(0));
        let node = pubsub.node().to_string();
        // Peers tell incarnations apart, they do not order them: 64 random bits make every start
        // a replica no peer has seen, whatever the clock did in between. Shard `i` is
        // incarnation + `i`, so every shard's `phx_ref`s are its own.
        let incarnation: u64 = rand::random();
        let pool = settings.tracker_shards.clamp(1, usize::from(u16::MAX));
        let room = Arc::new(Notify::new());
        let mut shards = Vec::with_capacity(pool);
        for index in 0..pool {
            let (tx, rx) = mpsc::unbounded_channel();
            let depth = Arc::new(AtomicUsize::new(0));
            let step = u64::try_from(index).unwrap_or(0);
            let replica = ReplicaId::new(&node, incarnation.wrapping_add(step));
            let shard =
                Shard::new(replica.clone(), shard_config(settings), 0).unwrap_or_else(|e| {
                    if index == 0 {
                        tracing::error!("tracker timing refused ({e}); using the defaults");
                    }
                    Shard::new(replica, ShardConfig::default(), 0)
                        .unwrap_or_else(|_| unreachable!("the default shard config is valid"))
                });
            let wire = task::Wire::new(index, pool);
            let inputs = Inputs {
                commands: rx,
                depth: depth.clone(),
                room: room.clone(),
                tracker: pubsub.subscribe(&wire.tracker_channel),
                relay: pubsub.subscribe(CHANNEL_RELAY),
            };
            let task = TrackerTask {
                node: node.clone(),
                shard,
                wire,
                subscriptions: fanout::Subscriptions::new(
                    frames_encoded.clone(),
                    fetch
                        .clone()
                        .map(|hook| fetch::Stage::spawn(hook, frames_encoded.clone())),
                    coalesce_config(settings),
                ),
                watchers: watch::Watchers::default(),
                pubsub: pubsub.clone(),
                frames_encoded: frames_encoded.clone(),
                metrics: metrics.clone(),
                start: Instant::now(),
                broadcast_period: settings.broadcast_period.max(Duration::from_millis(1)),
                coalesce: settings.coalesce,
                flush_at: None,
                last_flush: None,
                transport_up: HashSet::new(),
                refused_pools: HashMap::new(),
                refusals: crate::log_summary::LogSummary::new(
                    "refused events relayed by other nodes",
                    crate::log_summary::DEFAULT_INTERVAL,
                ),
            };
            tokio::spawn(task.run(inputs));
            shards.push(Queue {
                commands: tx,
                depth,
            });
        }
        Tracker {
            shards: shards.into(),
            room,
            incarnation,
            frames_encoded,
            pubsub,
        }
    }

    /// How many shards the tracker runs.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Returns once no shard has more than [`COMMAND_QUEUE`] commands waiting: connections call
    /// it before reading their next frame, so clients that send faster than the tracker applies
    /// wait in TCP rather than in memory.
    pub async fn ready(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }

    /// True if no shard has more than [`COMMAND_QUEUE`] commands waiting.
    pub fn has_room(&self) -> bool {
        self.shards
            .iter()
            .all(|q| q.depth.load(Ordering::Relaxed) < COMMAND_QUEUE)
    }

    /// The presence gauges, read from the tracker's state now.
    pub async fn gauges(&self) -> TrackerGauges {
        let mut total = TrackerGauges::default();
        for (index, queue) in self.shards.iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            Tracker::enqueue(queue, Command::Gauges { reply });
            let g = rx.await.unwrap_or_default();
            total.channels += g.channels;
            total.rooms_subscribed += g.rooms_subscribed;
            total.presences_local += g.presences_local;
            total.presences_stored += g.presences_stored;
            total.rooms_with_presences += g.rooms_with_presences;
            // Every shard sees the same peers: the first one's view is the node's.
            if index == 0 {
                total.replicas_up = g.replicas_up;
                total.replicas_down = g.replicas_down;
            }
            total.frames_encoded = g.frames_encoded;
        }
        total
    }

    /// The cluster transport this tracker replicates over.
    pub fn pubsub(&self) -> &Arc<dyn PubSub> {
        &self.pubsub
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        self.pubsub.node()
    }

    /// The incarnation this node's replica started with, new (random) on every start. Peers'
    /// [`ReplicaEvent`](rollcall_core::tracker::ReplicaEvent)s name it; a
    /// `Reincarnated` event (to watchers that hear replica events) tells of a new one.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The node's view of its cluster, for `/healthz`: every peer the transport or the tracker
    /// knows, with `up` true when the transport reaches it and its tracker replica is not down.
    pub async fn health(&self) -> Value {
        let (reply, rx) = oneshot::channel();
        // Every shard replicates with the same peers; the first one's view is the node's.
        self.send_first(Command::Replicas { reply });
        let (replicas, refused) = rx.await.unwrap_or_default();
        let replicas: HashMap<String, bool> = replicas.into_iter().collect();
        let mut peers = Vec::new();
        let mut seen = HashSet::new();
        for p in self.pubsub.peers() {
            let replica = replicas.get(&p.name).copied();
            seen.insert(p.name.clone());
            let mut peer = json!({
                "name": p.name,
                "addr": p.addr,
                "transport": if p.up { "up" } else { "down" },
                "replica": match replica { Some(true) => "up", Some(false) => "down", None => "unknown" },
                "up": p.up && replica != Some(false),
            });
            if let Some(pool) = refused.get(&p.name) {
                peer["up"] = json!(false);
                peer["refused"] = json!(format!(
                    "the peer runs {pool} tracker shards and this node {}; every node must run \
                     the same --tracker-shards",
                    self.shards.len()
                ));
            }
            peers.push(peer);
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
        let mut replies = Vec::new();
        for queue in self.shards.iter() {
            let (reply, rx) = oneshot::channel();
            Tracker::enqueue(queue, Command::Shutdown { reply });
            replies.push(rx);
        }
        for rx in replies {
            let _ = rx.await;
        }
        self.pubsub.shutdown().await;
    }

    fn enqueue(queue: &Queue, command: Command) {
        queue.depth.fetch_add(1, Ordering::Relaxed);
        // The task lives as long as any handle; a send can only fail during runtime shutdown.
        if queue.commands.send(command).is_err() {
            queue.depth.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues a command about `topic` to the shard that owns it.
    fn send(&self, topic: &str, command: Command) {
        let index = shard_index(topic, self.shards.len());
        if let Some(queue) = self.shards.get(index) {
            Tracker::enqueue(queue, command);
        }
    }

    /// Queues a command to the first shard.
    fn send_first(&self, command: Command) {
        if let Some(queue) = self.shards.first() {
            Tracker::enqueue(queue, command);
        }
    }

    /// Subscribes `subscriber` to `topic` (replacing its previous channel there), pushes it
    /// `presence_state` with `join_ref` if `push_state`, then tracks it with `meta` unless
    /// `meta` is `None` (an observer) and broadcasts the join. The server adds `node` to the
    /// meta.
    pub fn join(
        &self,
        topic: &str,
        join_ref: Option<String>,
        subscriber: Subscriber,
        push_state: bool,
        meta: Option<Map<String, Value>>,
    ) {
        self.send(
            topic,
            Command::Join {
                topic: topic.to_string(),
                join_ref,
                subscriber,
                push_state,
                meta,
            },
        );
    }

    /// Unsubscribes `conn` from `topic` and untracks it there.
    pub fn leave(&self, conn: ConnId, topic: &str) {
        self.send(
            topic,
            Command::Leave {
                conn,
                topic: topic.to_string(),
            },
        );
    }

    /// Tracks `conn`'s channel in `topic` with `meta` (plus `node`), or replaces its meta if it
    /// is tracked.
    pub fn track(&self, conn: ConnId, topic: &str, meta: Map<String, Value>) {
        self.send(
            topic,
            Command::Track {
                conn,
                topic: topic.to_string(),
                meta,
            },
        );
    }

    /// Stops listing `conn` in `topic`; it stays subscribed.
    pub fn untrack(&self, conn: ConnId, topic: &str) {
        self.send(
            topic,
            Command::Untrack {
                conn,
                topic: topic.to_string(),
            },
        );
    }

    /// Tracks `key` in `topic` with `meta` (plus `node`) for `conn`, an id that is not a
    /// socket's (a server-side presence: a bot, a job, a device behind a gateway). It is
    /// replicated and listed like a socket's presence.
    pub fn track_key(&self, conn: ConnId, topic: &str, key: &str, meta: Map<String, Value>) {
        self.send(
            topic,
            Command::TrackKey {
                conn,
                topic: topic.to_string(),
                key: key.to_string(),
                meta,
            },
        );
    }

    /// Replaces the meta of a presence tracked with [`Tracker::track_key`].
    pub fn update_key(&self, conn: ConnId, topic: &str, key: &str, meta: Map<String, Value>) {
        self.send(
            topic,
            Command::UpdateKey {
                conn,
                topic: topic.to_string(),
                key: key.to_string(),
                meta,
            },
        );
    }

    /// Removes a presence tracked with [`Tracker::track_key`].
    pub fn untrack_key(&self, conn: ConnId, topic: &str, key: &str) {
        self.send(
            topic,
            Command::UntrackKey {
                conn,
                topic: topic.to_string(),
                key: key.to_string(),
            },
        );
    }

    /// Hears every presence change from now on, in the tracker's order (see [`Watch`]).
    pub fn watch(&self, options: WatchOptions) -> Watch {
        let (watcher, watch, initial) = watch::watch(options);
        for (index, queue) in self.shards.iter().enumerate() {
            let watcher = watcher.for_shard(index == 0);
            Tracker::enqueue(queue, Command::Watch { watcher, initial });
        }
        watch
    }

    /// Sends an event to every subscriber of `topic` (on every node) except `except`.
    pub fn broadcast(&self, topic: &str, event: &str, payload: Payload, except: Option<ConnId>) {
        self.send(
            topic,
            Command::Broadcast {
                topic: topic.to_string(),
                event: event.to_string(),
                payload,
                except,
            },
        );
    }

    /// Forgets a closed connection: unsubscribes and untracks it everywhere.
    pub fn disconnect(&self, conn: ConnId) {
        for queue in self.shards.iter() {
            Tracker::enqueue(queue, Command::Disconnect { conn });
        }
    }

    /// Who is in `topic`, in the `presence_state` shape.
    pub async fn list(&self, topic: &str) -> Value {
        let (reply, rx) = oneshot::channel();
        self.send(
            topic,
            Command::List {
                topic: topic.to_string(),
                reply,
            },
        );
        // The tracker task only lists (shared keys and metas); the caller's task renders.
        rx.await
            .map_or(Value::Object(Map::new()), |l| render::presences_value(&l))
    }

    /// How many frames the tracker has encoded so far (one per serializer per dispatch).
    pub fn frames_encoded(&self) -> u64 {
        self.frames_encoded.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::WireFrame;
    use crate::outbox::{outbox, OutboxReceiver};
    use crate::pubsub::Local;
    use rollcall_core::protocol::Serializer;

    /// A subscriber whose frames the test reads.
    fn subscriber(conn: u64) -> (Subscriber, OutboxReceiver) {
        let (outbox, queued) = outbox(1 << 20);
        let subscriber = Subscriber {
            conn: ConnId(conn),
            serializer: Serializer::V2,
            outbox,
            key: format!("k{conn}"),
        };
        (subscriber, queued)
    }

    /// The `presence_diff` payloads among the frames queued so far, as JSON.
    fn diffs(frames: &mut OutboxReceiver) -> Vec<Value> {
        let mut batch = Vec::new();
        let taken = frames.take(usize::MAX, &mut batch);
        frames.release(taken);
        let mut out = Vec::new();
        for frame in batch {
            if let WireFrame::Text(text) = frame {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                if v[3] == "presence_diff" {
                    out.push(v[4].clone());
                }
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_in_a_busy_room_is_held_for_its_window_and_sent_as_one_diff() {
        let settings = ClusterSettings {
            diff_window: Duration::from_millis(50),
            diff_window_per_member: Duration::from_millis(10),
            ..ClusterSettings::default()
        };
        let tracker = Tracker::spawn_with(
            Arc::new(Local::new("n")),
            &settings,
            Arc::new(Metrics::default()),
        );
        let (watcher, mut frames) = subscriber(1);
        tracker.join("room", None, watcher, false, None);
        // The first two changes in a quiet room go out at once, each on its own.
        tracker.track_key(ConnId(100), "room", "a", Map::new());
        tracker.track_key(ConnId(100), "room", "z", Map::new());
        tracker.list("room").await;
        assert_eq!(diffs(&mut frames).len(), 2);
        let start = Instant::now();
        for key in ["b", "c", "d"] {
            tracker.track_key(ConnId(100), "room", key, Map::new());
        }
        tracker.untrack_key(ConnId(100), "room", "a");
        tracker.list("room").await;
        assert!(diffs(&mut frames).is_empty(), "held for the window");
        // One subscriber: a 10 ms window. Paused time moves on to the flush by itself.
        tokio::time::sleep(Duration::from_millis(10)).await;
        tracker.list("room").await;
        let sent = diffs(&mut frames);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(keys(&sent[0]["joins"]), ["b", "c", "d"]);
        assert_eq!(keys(&sent[0]["leaves"]), ["a"]);
        assert!(start.elapsed() <= Duration::from_millis(11));
    }

    #[tokio::test]
    async fn connections_wait_while_a_shard_queue_is_over_its_bound_and_go_on_once_it_drains() {
        let settings = ClusterSettings {
            tracker_shards: 3,
            ..ClusterSettings::default()
        };
        let tracker = Tracker::spawn_with(
            Arc::new(Local::new("n")),
            &settings,
            Arc::new(Metrics::default()),
        );
        assert_eq!(tracker.shards(), 3);
        // On this single-threaded runtime the shards run only when the test awaits.
        for i in 0..COMMAND_QUEUE {
            tracker.track_key(ConnId(1), "room:flood", &format!("k{i}"), Map::new());
        }
        assert!(!tracker.has_room());
        tokio::time::timeout(Duration::from_secs(10), tracker.ready())
            .await
            .expect("the shard drains its queue");
        assert!(tracker.has_room());
        let listed = tracker.list("room:flood").await;
        assert_eq!(listed.as_object().map(Map::len), Some(COMMAND_QUEUE));
    }

    #[test]
    fn topics_hash_to_the_same_shard_everywhere_and_spread_over_the_pool() {
        assert_eq!(shard_index("room:lobby", 1), 0);
        assert_eq!(shard_index("room:lobby", 4), shard_index("room:lobby", 4));
        let used: HashSet<usize> = (0..64)
            .map(|i| shard_index(&format!("room:{i}"), 4))
            .collect();
        assert_eq!(used.len(), 4);
    }

    fn keys(v: &Value) -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

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
