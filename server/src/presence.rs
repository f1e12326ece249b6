//! Presence for application code (Phoenix's `MyApp.Presence`): read a topic's presences
//! cluster-wide (`list`, `get_by_key`, both through the app's fetch hook).
//!
//! A thin face over the [`Tracker`]: every change still goes through the node's one tracker
//! task, so presences tracked here are replicated, listed and diffed exactly like a socket's.

use serde_json::Value;

use crate::tracker::Tracker;

/// The node's presence, for application code. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Presence {
    tracker: Tracker,
}

impl Presence {
    /// The presence of the node `tracker` runs.
    pub fn new(tracker: Tracker) -> Self {
        Presence { tracker }
    }

    /// The tracker underneath.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Who is in `topic`, cluster-wide, in the `presence_state` shape:
    /// `{key: {"metas": [meta, ...]}, ...}`.
    pub async fn list(&self, topic: &str) -> Value {
        self.tracker.list(topic).await
    }

    /// The presence of `key` in `topic` (`{"metas": [...]}`), or `None` if it is not listed.
    pub async fn get_by_key(&self, topic: &str, key: &str) -> Option<Value> {
        let mut list = self.tracker.list(topic).await;
        list.as_object_mut()?.remove(key)
    }
}
