//! The tracker: one Tokio task that owns this node's presence [`state`] and the subscriptions of
//! local connections to topics. Connections talk to it through a cloneable [`Tracker`] handle
//! (commands over a channel), so every presence change is applied in one order and every
//! subscriber sees diffs in that order.
//!
//! The task also fans frames out: a presence diff or a relayed event is encoded once per
//! serializer and the same bytes are queued to every subscriber. Messages for other nodes go
//! through the [`PubSub`] adapter; what other nodes publish comes back in through it.

pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollcall_core::protocol::{Outbound, Payload, Serializer};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::channel::{EVENT_PRESENCE_DIFF, EVENT_PRESENCE_STATE};
use crate::pubsub::{ClusterMessage, PubSub};
use crate::transport::WireFrame;
use crate::ConnId;
use state::{Diff, PresenceMeta, Shard};

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
        reply: oneshot::Sender<Value>,
    },
}

/// Handle to the tracker task. Cheap to clone; commands are applied in the order sent.
#[derive(Debug, Clone)]
pub struct Tracker {
    commands: mpsc::UnboundedSender<Command>,
    frames_encoded: Arc<AtomicU64>,
}

impl Tracker {
    /// Starts the tracker task of node `node` on the current Tokio runtime.
    pub fn spawn(node: &str, mut pubsub: Box<dyn PubSub>) -> Tracker {
        let (tx, rx) = mpsc::unbounded_channel();
        let frames_encoded = Arc::new(AtomicU64::new(0));
        let incoming = pubsub.subscribe();
        let task = TrackerTask {
            node: node.to_string(),
            shard: Shard::new(rand::random()),
            topics: HashMap::new(),
            by_conn: HashMap::new(),
            pubsub,
            frames_encoded: frames_encoded.clone(),
        };
        tokio::spawn(task.run(rx, incoming));
        Tracker {
            commands: tx,
            frames_encoded,
        }
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
        rx.await.unwrap_or(Value::Object(Map::new()))
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

struct TrackerTask {
    node: String,
    shard: Shard,
    /// Local subscribers per topic.
    topics: HashMap<String, HashMap<ConnId, Member>>,
    /// Topics per connection, for disconnects.
    by_conn: HashMap<ConnId, HashSet<String>>,
    pubsub: Box<dyn PubSub>,
    frames_encoded: Arc<AtomicU64>,
}

fn unix_seconds() -> u64 {
    unix_millis() / 1000
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How often the shard gets `tick` (Phoenix's default broadcast period).
const TICK_PERIOD: Duration = Duration::from_millis(1500);

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
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut incoming: mpsc::UnboundedReceiver<ClusterMessage>,
    ) {
        let mut ticks = tokio::time::interval(TICK_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(message) = incoming.recv() => self.handle_remote(message),
                _ = ticks.tick() => {
                    let output = self.shard.tick(unix_millis());
                    self.apply(output);
                }
            }
        }
    }

    /// Sends a shard's replication messages and dispatches its diff.
    fn apply(&mut self, output: state::Output) {
        for (_to, bytes) in output.messages {
            // Adapters broadcast; point-to-point routing arrives with the cluster adapters.
            self.pubsub.publish(ClusterMessage::Tracker {
                from: self.node.clone(),
                bytes,
            });
        }
        self.dispatch_diff(output.diff);
    }

    fn handle_remote(&mut self, message: ClusterMessage) {
        match message {
            ClusterMessage::Broadcast {
                topic,
                event,
                payload,
            } => self.dispatch(
                &Outbound::Broadcast {
                    topic,
                    event,
                    payload,
                },
                None,
            ),
            ClusterMessage::Tracker { from, bytes } => {
                let output = self.shard.receive(&from, &bytes, unix_millis());
                self.apply(output);
            }
        }
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
                self.dispatch_diff(diff);
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
                } = out
                {
                    self.pubsub.publish(ClusterMessage::Broadcast {
                        topic,
                        event,
                        payload,
                    });
                }
            }
            Command::Disconnect { conn } => {
                for topic in self.by_conn.remove(&conn).unwrap_or_default() {
                    self.remove_member(conn, &topic);
                }
                let diff = self.shard.untrack_connection(conn);
                self.dispatch_diff(diff);
            }
            Command::List { topic, reply } => {
                let _ = reply.send(group(&self.shard.list(&topic)));
            }
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
        let state = Outbound::Push {
            join_ref,
            topic: topic.clone(),
            event: EVENT_PRESENCE_STATE.to_string(),
            payload: Payload::Json(group(&self.shard.list(&topic))),
        };
        self.frames_encoded.fetch_add(1, Ordering::Relaxed);
        if let Ok(frame) = WireFrame::encode(subscriber.serializer, &state) {
            subscriber.outbox.deliver(frame);
        }
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
        if let Ok((_, diff)) = self.shard.track(conn, topic, key, meta) {
            if let Some(member) = self.topics.get_mut(topic).and_then(|m| m.get_mut(&conn)) {
                member.online_at = Some(online_at);
            }
            self.dispatch_diff(diff);
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
                if let Ok((_, diff)) = self.shard.update(conn, topic, &key, meta) {
                    self.dispatch_diff(diff);
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
            self.dispatch_diff(diff);
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
