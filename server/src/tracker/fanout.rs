//! The local subscribers of each topic and the frames queued to them. A frame for a topic is
//! encoded once per serializer and the same bytes go to every subscriber using it; presence
//! payloads are written as JSON text once ([`render`](super::render)) and framed by
//! [`Serializer::encode_push_json`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rollcall_core::protocol::{Outbound, Serializer};
use rollcall_core::tracker::{Diff, Presence};

use super::fetch::{Frame, Recipient, Stage};
use super::render::{diff_json, presences_json};
use super::ConnId;
use crate::channel::{EVENT_PRESENCE_DIFF, EVENT_PRESENCE_STATE};
use crate::frame::WireFrame;
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
}

impl Subscriptions {
    /// No subscriber yet; encodings are counted in `frames_encoded`. With a `stage`, presence
    /// frames go through the app's fetch hook.
    pub(super) fn new(frames_encoded: Arc<AtomicU64>, stage: Option<Stage>) -> Self {
        Subscriptions {
            topics: HashMap::new(),
            by_conn: HashMap::new(),
            frames_encoded,
            stage,
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

    /// Pushes `presence_state` (the room as `listing` shows it) to a joiner, with its join_ref.
    pub(super) fn push_state(
        &self,
        subscriber: &Subscriber,
        join_ref: Option<&str>,
        topic: &str,
        listing: &[(Arc<str>, Presence)],
    ) {
        if let Some(stage) = &self.stage {
            let frame = Frame::State {
                join_ref: join_ref.map(str::to_string),
                listing: listing.to_vec(),
            };
            let recipient = Recipient {
                serializer: subscriber.serializer,
                outbox: subscriber.outbox.clone(),
            };
            stage.send(topic.into(), frame, vec![recipient]);
            return;
        }
        let payload = presences_json(listing);
        self.frames_encoded.fetch_add(1, Ordering::Relaxed);
        let frame =
            subscriber
                .serializer
                .encode_push_json(join_ref, topic, EVENT_PRESENCE_STATE, &payload);
        subscriber.outbox.deliver(WireFrame::Text(frame.into()));
    }

    /// Broadcasts each topic's joins and leaves in `diff` to its local subscribers.
    pub(super) fn dispatch_diff(&self, diff: &Diff) {
        for (topic, changes) in diff.iter() {
            let Some(members) = self.topics.get(&**topic) else {
                continue;
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
                continue;
            }
            let payload = diff_json(changes);
            self.fan_out(topic, None, |serializer| {
                let frame = serializer.encode_push_json(None, topic, EVENT_PRESENCE_DIFF, &payload);
                Some(WireFrame::Text(frame.into()))
            });
        }
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
