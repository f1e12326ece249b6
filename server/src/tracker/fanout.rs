//! The local subscribers of each topic and the frames queued to them. A frame for a topic is
//! encoded once per serializer and the same bytes go to every subscriber using it; presence
//! payloads are written as JSON text once ([`render`](super::render)) and framed by
//! [`Serializer::encode_push_json`].
//!
//! Presence diffs go through a [`Coalescer`]: a room that sent nothing within its window gets a
//! change at once, a busier one gets the changes of each window as one `presence_diff`. A new
//! subscriber's `presence_state` is the room as the others last saw it, so the diff held at
//! that moment reaches it too and applies exactly once; that text is rendered once per room
//! between two diffs and its bytes are shared by the frames of every joiner in between (each
//! frame is its own `join_ref` head around them, [`WireFrame::push_json`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rollcall_core::protocol::{Outbound, Serializer};
use rollcall_core::tracker::{CoalesceConfig, Coalescer, Diff, TopicDiff};

use super::fetch::{Frame, Recipient, Stage};
use super::render::{diff_json, presences_json, Listing};
use super::ConnId;
use crate::channel::{EVENT_PRESENCE_DIFF, EVENT_PRESENCE_STATE};
use crate::frame::{TextBytes, WireFrame};
use crate::outbox::Outbox;

/// One connection's channel on a topic, as the tracker needs to know it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The connection.
    pub conn: ConnId,
    /// How that connection encodes frames.
    pub serializer: Serializer,
    /// Its outgoing queue (bounded in bytes; never waits).
    pub outbox: Outbox,
    /// Its presence key in this topic.
    pub key: String,
}

/// A subscriber and whether it is listed.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) subscriber: Subscriber,
    /// Whether it is tracked (listed) now.
    pub(super) listed: bool,
}

/// Every local subscription, by topic and by connection.
pub(super) struct Subscriptions {
    topics: HashMap<String, HashMap<ConnId, Member>>,
    /// Topics per connection, for disconnects.
    by_conn: HashMap<ConnId, HashSet<String>>,
    /// Frames encoded so far (one per serializer per dispatch).
    frames_encoded: Arc<AtomicU64>,
    /// With the app's fetch hook: where presence frames go to be fetched, in order.
    stage: Option<Stage>,
    /// Presence diffs held per room.
    coalescer: Coalescer,
    /// Per room, the room as last sent, once made for a joiner; the joiners until the room's
    /// next diff share it.
    states: HashMap<Arc<str>, AsSent>,
}

/// A room as its subscribers last saw it: rendered as a `presence_state` payload, or (with the
/// fetch hook) listed for the stage, where joiners that share it share one fetch and one
/// rendering.
#[derive(Clone)]
enum AsSent {
    Text(TextBytes),
    Listing(Arc<Listing>),
}

impl Subscriptions {
    /// No subscriber yet; encodings are counted in `frames_encoded`. With a `stage`, presence
    /// frames go through the app's fetch hook.
    pub(super) fn new(
        frames_encoded: Arc<AtomicU64>,
        stage: Option<Stage>,
        coalesce: CoalesceConfig,
    ) -> Self {
        Subscriptions {
            topics: HashMap::new(),
            by_conn: HashMap::new(),
            frames_encoded,
            stage,
            coalescer: Coalescer::new(coalesce),
            states: HashMap::new(),
        }
    }

    pub(super) fn member(&self, topic: &str, conn: ConnId) -> Option<&Member> {
        self.topics.get(topic)?.get(&conn)
    }

    pub(super) fn member_mut(&mut self, topic: &str, conn: ConnId) -> Option<&mut Member> {
        self.topics.get_mut(topic)?.get_mut(&conn)
    }

    /// Subscribes `subscriber` to `topic`, not listed yet.
    pub(super) fn subscribe(&mut self, topic: &str, subscriber: Subscriber) {
        let conn = subscriber.conn;
        let member = Member {
            subscriber,
            listed: false,
        };
        self.topics
            .entry(topic.to_string())
            .or_default()
            .insert(conn, member);
        self.by_conn
            .entry(conn)
            .or_default()
            .insert(topic.to_string());
    }

    /// Unsubscribes `conn` from `topic`; the member it was, if any.
    pub(super) fn unsubscribe(&mut self, conn: ConnId, topic: &str) -> Option<Member> {
        if let Some(topics) = self.by_conn.get_mut(&conn) {
            topics.remove(topic);
            if topics.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
        self.remove_member(conn, topic)
    }

    /// Unsubscribes `conn` from every topic.
    pub(super) fn disconnect(&mut self, conn: ConnId) {
        for topic in self.by_conn.remove(&conn).unwrap_or_default() {
            self.remove_member(conn, &topic);
        }
    }

    fn remove_member(&mut self, conn: ConnId, topic: &str) -> Option<Member> {
        let members = self.topics.get_mut(topic)?;
        let member = members.remove(&conn);
        if members.is_empty() {
            self.topics.remove(topic);
            // Nobody is left to send held changes to, and the next joiner starts from now.
            self.coalescer.forget(topic);
            self.states.remove(topic);
        }
        member
    }

    /// Channels joined, and how many of them are listed.
    pub(super) fn channels(&self) -> (u64, u64) {
        let members = self.topics.values().flat_map(|m| m.values());
        members.fold((0, 0), |(channels, listed), m| {
            (channels + 1, listed + u64::from(m.listed))
        })
    }

    /// Topics with at least one subscriber.
    pub(super) fn topics(&self) -> usize {
        self.topics.len()
    }

    /// Pushes `presence_state` to a joiner, with its join_ref: the room as its other
    /// subscribers last saw it (`list` gives the room now, as the shard lists it).
    pub(super) fn push_state(
        &mut self,
        subscriber: &Subscriber,
        join_ref: Option<&str>,
        topic: &str,
        list: impl FnOnce() -> Listing,
    ) {
        let as_sent = match self.states.get(topic) {
            Some(as_sent) => as_sent.clone(),
            None => {
                let listing = self.coalescer.as_sent(topic, list());
                let as_sent = match self.stage {
                    Some(_) => AsSent::Listing(Arc::new(listing)),
                    None => AsSent::Text(TextBytes::from(presences_json(&listing))),
                };
                // Kept only while the room has subscribers: its changes reach the window only
                // then, and the window is what says it is still the room as last sent.
                if self.topics.contains_key(topic) {
                    self.states.insert(topic.into(), as_sent.clone());
                }
                as_sent
            }
        };
        match as_sent {
            AsSent::Text(payload) => self.push_state_text(subscriber, join_ref, topic, &payload),
            // Listed only when there is a stage (a node has one for its whole life or never).
            AsSent::Listing(listing) => {
                if let Some(stage) = &self.stage {
                    let frame = Frame::State {
                        join_refs: vec![join_ref.map(str::to_string)],
                        listing,
                    };
                    let recipient = Recipient {
                        serializer: subscriber.serializer,
                        outbox: subscriber.outbox.clone(),
                    };
                    stage.send(topic.into(), frame, vec![recipient]);
                }
            }
        }
    }

    fn push_state_text(
        &self,
        subscriber: &Subscriber,
        join_ref: Option<&str>,
        topic: &str,
        payload: &TextBytes,
    ) {
        self.frames_encoded.fetch_add(1, Ordering::Relaxed);
        let frame = WireFrame::push_json(
            subscriber.serializer,
            join_ref,
            topic,
            EVENT_PRESENCE_STATE,
            payload,
        );
        subscriber.outbox.deliver(frame);
    }

    /// Hands each topic's joins and leaves in `diff` to its window: sent to the local
    /// subscribers now if the room is quiet, else held (see [`Subscriptions::flush_due`]).
    pub(super) fn dispatch_diff(&mut self, diff: &Diff, now_us: u64) {
        for (topic, changes) in diff.iter() {
            let Some(members) = self.topics.get(&**topic) else {
                continue;
            };
            let subscribers = members.len();
            if let Some(sent) = self
                .coalescer
                .push(topic, changes.clone(), subscribers, now_us)
            {
                self.send_diff(topic, &sent);
            }
        }
    }

    /// When the next held window is due (microseconds on the caller's clock), if any.
    pub(super) fn next_flush(&mut self) -> Option<u64> {
        self.coalescer.next_deadline()
    }

    /// Sends every held window due at `now_us`.
    pub(super) fn flush_due(&mut self, now_us: u64) {
        for (topic, diff) in self.coalescer.due(now_us) {
            self.send_diff(&topic, &diff);
        }
    }

    /// Sends one topic's `presence_diff` to its local subscribers.
    fn send_diff(&mut self, topic: &Arc<str>, changes: &TopicDiff) {
        self.states.remove(&**topic);
        let Some(members) = self.topics.get(&**topic) else {
            return;
        };
        if let Some(stage) = &self.stage {
            let recipients = members
                .values()
                .map(|m| Recipient {
                    serializer: m.subscriber.serializer,
                    outbox: m.subscriber.outbox.clone(),
                })
                .collect();
            stage.send(topic.clone(), Frame::Diff(changes.clone()), recipients);
            return;
        }
        let payload = diff_json(changes);
        self.fan_out(topic, None, |serializer| {
            let frame = serializer.encode_push_json(None, topic, EVENT_PRESENCE_DIFF, &payload);
            Some(WireFrame::Text(frame.into()))
        });
    }

    /// Queues `out` to every local subscriber of its topic except `except`.
    pub(super) fn dispatch(&self, out: &Outbound, except: Option<ConnId>) {
        self.fan_out(out.topic(), except, |serializer| {
            WireFrame::encode(serializer, out)
                .inspect_err(|e| {
                    tracing::debug!(
                        topic = ?out.topic(),
                        "not delivered to {serializer:?} subscribers: {e}"
                    )
                })
                .ok()
        });
    }

    /// Queues a frame to every subscriber of `topic` except `except`, encoding it with `encode`
    /// at most once per serializer (`None`: that serializer's subscribers get nothing).
    fn fan_out(
        &self,
        topic: &str,
        except: Option<ConnId>,
        encode: impl Fn(Serializer) -> Option<WireFrame>,
    ) {
        let Some(members) = self.topics.get(topic) else {
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
                encode(serializer)
            });
            if let Some(frame) = frame {
                member.subscriber.outbox.deliver(frame.clone());
            }
        }
    }
}
