//! Which handler serves a topic: an ordered list of (topic pattern, handler), first match wins,
//! as Phoenix's `channel "room:*", RoomChannel` declarations are.

use std::sync::Arc;

use super::{Channel, DynChannel, PresenceRoom};
use crate::channel::TopicPattern;

/// The node's channel routes.
#[derive(Clone, Default)]
pub struct Routes {
    routes: Vec<(TopicPattern, Arc<dyn DynChannel>)>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let patterns: Vec<String> = self.routes.iter().map(|(p, _)| p.to_string()).collect();
        f.debug_struct("Routes")
            .field("patterns", &patterns)
            .finish()
    }
}

impl Routes {
    /// No route: every join is answered `unmatched topic`.
    pub fn new() -> Self {
        Routes::default()
    }

    /// The built-in presence room on each of `rooms` (what `--rooms` serves), taking metas of
    /// up to `max_meta_size` bytes.
    pub fn presence_rooms(rooms: &[TopicPattern], max_meta_size: usize) -> Self {
        let mut routes = Routes::new();
        let room: Arc<dyn DynChannel> = Arc::new(PresenceRoom { max_meta_size });
        for pattern in rooms {
            routes.routes.push((pattern.clone(), room.clone()));
        }
        routes
    }

    /// Adds a route after the existing ones: `pattern` is an exact topic, or a prefix ending in
    /// `*` (`room:*`).
    pub fn route(&mut self, pattern: &str, handler: impl Channel) {
        self.routes
            .push((TopicPattern::parse(pattern), Arc::new(handler)));
    }

    /// Appends every route of `other` after these.
    pub fn extend(&mut self, other: Routes) {
        self.routes.extend(other.routes);
    }

    /// True if some route serves `topic`.
    pub fn serves(&self, topic: &str) -> bool {
        self.routes.iter().any(|(p, _)| p.matches(topic))
    }

    /// The handler of `topic`: the first route that matches.
    pub(crate) fn find(&self, topic: &str) -> Option<Arc<dyn DynChannel>> {
        self.routes
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map(|(_, h)| h.clone())
    }

    /// The patterns, in order.
    pub fn patterns(&self) -> impl Iterator<Item = &TopicPattern> {
        self.routes.iter().map(|(p, _)| p)
    }
}
