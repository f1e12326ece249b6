//! Presence for application code, as Phoenix's `MyApp.Presence`: track anything that is not a
//! socket ([`Presence::track`] → a [`TrackHandle`] that untracks when dropped), read a topic
//! cluster-wide ([`Presence::list`], [`Presence::get_by_key`]), hear joins and leaves as they
//! happen anywhere in the cluster ([`Presence::subscribe`], like `handle_metas`), and add the
//! app's fields to every presence payload ([`Fetch`], like `fetch/2`).
//!
//! A thin face over the [`Tracker`]: every change still goes through the node's one tracker
//! task, so presences tracked here are replicated, listed and diffed exactly like a socket's.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde_json::{Map, Value};

use crate::channel::TopicPattern;
use crate::tracker::fetch::{fetch, FetchHook};
use crate::tracker::{ConnId, Tracker, Watch, WatchEvent, WatchOptions};

pub use crate::tracker::fetch::Fetch;

/// How many changes a subscription holds before it is ended as lagged, by default.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 4096;

/// A meta that is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAnObject;

impl std::fmt::Display for NotAnObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("meta must be an object")
    }
}

impl std::error::Error for NotAnObject {}

fn object(meta: Value) -> Result<Map<String, Value>, NotAnObject> {
    match meta {
        Value::Object(map) => Ok(map),
        _ => Err(NotAnObject),
    }
}

/// The node's presence, for application code. Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    tracker: Tracker,
    fetch: Option<FetchHook>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("node", &self.tracker.node())
            .field("fetch", &self.fetch.is_some())
            .finish()
    }
}

impl Presence {
    /// The presence of the node `tracker` runs.
    pub fn new(tracker: Tracker) -> Self {
        Presence {
            tracker,
            fetch: None,
        }
    }

    /// The presence of the node `tracker` runs, whose lists go through `fetch` (give the
    /// tracker the same hook: [`Tracker::spawn_with_fetch`]).
    pub fn with_fetch(tracker: Tracker, fetch: FetchHook) -> Self {
        Presence {
            tracker,
            fetch: Some(fetch),
        }
    }

    /// The tracker underneath.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Tracks `key` in `topic` with `meta` (a JSON object; the server adds `node`), for
    /// something that is not a socket. The presence is replicated and listed like a socket's,
    /// and removed when the handle is dropped (or its task ends) or [`TrackHandle::untrack`]ed.
    pub fn track(&self, topic: &str, key: &str, meta: Value) -> Result<TrackHandle, NotAnObject> {
        let meta = object(meta)?;
        let conn = ConnId::next();
        self.tracker.track_key(conn, topic, key, meta);
        Ok(TrackHandle {
            tracker: self.tracker.clone(),
            conn,
            topic: topic.to_string(),
            key: key.to_string(),
        })
    }

    /// Who is in `topic`, cluster-wide, in the `presence_state` shape:
    /// `{key: {"metas": [meta, ...]}, ...}`, with the fetch hook's fields.
    pub async fn list(&self, topic: &str) -> Value {
        let mut presences = match self.tracker.list(topic).await {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        if let Some(hook) = &self.fetch {
            fetch(&**hook, topic, &mut presences).await;
        }
        Value::Object(presences)
    }

    /// The presence of `key` in `topic` (`{"metas": [...]}` with the fetch hook's fields), or
    /// `None` if it is not listed.
    pub async fn get_by_key(&self, topic: &str, key: &str) -> Option<Value> {
        let mut list = self.tracker.list(topic).await;
        let entry = list.as_object_mut()?.remove(key)?;
        let mut presences = Map::new();
        presences.insert(key.to_string(), entry);
        if let Some(hook) = &self.fetch {
            fetch(&**hook, topic, &mut presences).await;
        }
        presences.remove(key)
    }

    /// Every join and leave from now on in the topics matching `pattern` (an exact topic, or a
    /// prefix ending in `*`), cluster-wide and in the order this node applies them. See
    /// [`Subscription`] for what happens if the subscriber falls behind.
    pub fn subscribe(&self, pattern: &str) -> Subscription {
        self.subscribe_with_capacity(pattern, DEFAULT_SUBSCRIPTION_CAPACITY)
    }

    /// [`Presence::subscribe`], holding at most `capacity` changes before it is ended as
    /// lagged.
    pub fn subscribe_with_capacity(&self, pattern: &str, capacity: usize) -> Subscription {
        let watch = self.tracker.watch(WatchOptions {
            pattern: Some(TopicPattern::parse(pattern)),
            capacity: Some(capacity),
            replicas: false,
            initial: false,
        });
        Subscription { watch }
    }
}

/// A presence tracked by application code; dropping it untracks it.
#[derive(Debug)]
pub struct TrackHandle {
    tracker: Tracker,
    conn: ConnId,
    topic: String,
    key: String,
}

impl TrackHandle {
    /// The topic it is tracked in.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The key it is tracked under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Replaces the meta (one `presence_diff`: the old meta leaves, the new one joins with
    /// `phx_ref_prev`).
    pub fn update(&self, meta: Value) -> Result<(), NotAnObject> {
        let meta = object(meta)?;
        self.tracker
            .update_key(self.conn, &self.topic, &self.key, meta);
        Ok(())
    }

    /// Removes the presence now (as dropping the handle does).
    pub fn untrack(self) {}
}

impl Drop for TrackHandle {
    fn drop(&mut self) {
        self.tracker.untrack_key(self.conn, &self.topic, &self.key);
    }
}

/// One entry of a [`PresenceChange`]: a key and one of its metas (with `phx_ref`, and
/// `phx_ref_prev` after an update).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The presence key.
    pub key: String,
    /// The meta, as clients see it.
    pub meta: Map<String, Value>,
}

/// The joins and leaves of one topic from one change. An update of a meta is the old meta in
/// `leaves` and the new one in `joins`, as in a `presence_diff`.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceChange {
    /// The topic.
    pub topic: String,
    /// Metas that appeared, by key then `phx_ref`.
    pub joins: Vec<Entry>,
    /// Metas that went away.
    pub leaves: Vec<Entry>,
}

/// The joins and leaves of the subscribed topics, in order (also a [`Stream`]).
///
/// It holds a bounded number of changes: a subscriber that falls further behind is ended
/// instead of slowing the node ([`Subscription::recv`] returns `None` and
/// [`Subscription::lagged`] is true); resubscribe and [`Presence::list`] to catch up.
#[derive(Debug)]
pub struct Subscription {
    watch: Watch,
}

fn entries(list: &[(Arc<str>, rollcall_core::tracker::Presence)]) -> Vec<Entry> {
    list.iter()
        .map(|(key, p)| Entry {
            key: key.to_string(),
            meta: crate::tracker::meta_map(p),
        })
        .collect()
}

fn change(event: WatchEvent) -> Option<PresenceChange> {
    match event {
        WatchEvent::Changed(topic, diff) => Some(PresenceChange {
            topic: topic.to_string(),
            joins: entries(&diff.joins),
            leaves: entries(&diff.leaves),
        }),
        WatchEvent::Replica(_) => None,
    }
}

impl Subscription {
    /// The next change; `None` once the subscription ended (the node stopped, or it lagged).
    pub async fn recv(&mut self) -> Option<PresenceChange> {
        loop {
            if let Some(change) = change(self.watch.recv().await?) {
                return Some(change);
            }
        }
    }

    /// True if the subscription was ended because it fell behind.
    pub fn lagged(&self) -> bool {
        self.watch.lagged()
    }
}

impl Stream for Subscription {
    type Item = PresenceChange;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PresenceChange>> {
        let this = self.get_mut();
        loop {
            match this.watch.poll_recv(cx) {
                Poll::Ready(Some(event)) => {
                    if let Some(change) = change(event) {
                        return Poll::Ready(Some(change));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
