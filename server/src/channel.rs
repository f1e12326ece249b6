//! Channel policy: which topics exist, and the rules of the built-in presence room (what a join
//! payload may carry, which client events are relayed). Pure functions; the socket machine and
//! the tracker apply them.

use serde_json::{Map, Value};

/// A topic route: an exact topic, or a prefix when it ends in `*` (`room:*` matches every topic
/// that starts with `room:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// Matches exactly this topic.
    Exact(String),
    /// Matches every topic starting with this prefix.
    Prefix(String),
}

impl TopicPattern {
    /// Reads a pattern: a trailing `*` makes it a prefix pattern.
    pub fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => TopicPattern::Prefix(prefix.to_string()),
            None => TopicPattern::Exact(pattern.to_string()),
        }
    }

    /// True if `topic` is routed by this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Exact(t) => t == topic,
            TopicPattern::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

impl std::fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicPattern::Exact(t) => f.write_str(t),
            TopicPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// Longest topic and presence key, in bytes: the V2 binary protocol carries their lengths in
/// one byte, and every node, log line and listing holds them.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a topic or a presence key is refused (the `reason` the client gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// A topic over [`MAX_NAME_BYTES`].
    TopicTooLong,
    /// An empty topic, or one with a control, bidi or line separator character.
    InvalidTopic,
    /// A presence key over [`MAX_NAME_BYTES`].
    KeyTooLong,
    /// An empty presence key, or one with a control, bidi or line separator character.
    InvalidKey,
}

impl NameError {
    /// The `reason` sent to the client.
    pub fn reason(&self) -> &'static str {
        match self {
            NameError::TopicTooLong => "topic too long",
            NameError::InvalidTopic => "invalid topic",
            NameError::KeyTooLong => "presence key too long",
            NameError::InvalidKey => "invalid presence key",
        }
    }
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// Characters a name may not hold: controls (C0, DEL, C1), the bidirectional formatting
/// characters (they reorder what a log or a page shows around them), and the line and
/// paragraph separators.
fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

fn check_name(name: &str, too_long: NameError, invalid: NameError) -> Result<(), NameError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(too_long);
    }
    if name.is_empty() || name.chars().any(is_forbidden) {
        return Err(invalid);
    }
    Ok(())
}

/// Checks a topic: 1 to 255 bytes of printable UTF-8.
pub fn check_topic(topic: &str) -> Result<(), NameError> {
    check_name(topic, NameError::TopicTooLong, NameError::InvalidTopic)
}

/// Checks a presence key (a `user_id`, a token's `sub`): 1 to 255 bytes of printable UTF-8.
pub fn check_key(key: &str) -> Result<(), NameError> {
    check_name(key, NameError::KeyTooLong, NameError::InvalidKey)
}

/// Client event names of the presence room protocol itself.
pub const EVENT_TRACK: &str = "track";
/// Stop being listed, stay subscribed.
pub const EVENT_UNTRACK: &str = "untrack";
/// Server push: the room as it was before the joiner was tracked.
pub const EVENT_PRESENCE_STATE: &str = "presence_state";
/// Server broadcast: who joined and who left.
pub const EVENT_PRESENCE_DIFF: &str = "presence_diff";

/// What a room join asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomJoin {
    /// The joiner's meta (a JSON object; `{}` if absent).
    pub meta: Map<String, Value>,
    /// False for an observer: receives presence but is not listed.
    pub track: bool,
}

/// Why a join payload or a meta was refused (the `reason` of the error reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The serialized meta is bigger than the limit.
    MetaTooLarge,
    /// The meta is not a JSON object.
    MetaNotObject,
    /// `track` is not a boolean.
    TrackNotBoolean,
    /// The join payload is not a JSON object.
    PayloadNotObject,
    /// A client event name that belongs to the protocol.
    ReservedEvent,
    /// A client event name that is not 1–64 chars of `[A-Za-z0-9_:.-]`.
    InvalidEventName,
    /// A binary payload where JSON is needed.
    BinaryPayload,
}

impl PolicyError {
    /// The `reason` sent to the client.
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyError::MetaTooLarge => "meta too large",
            PolicyError::MetaNotObject => "meta must be an object",
            PolicyError::TrackNotBoolean => "track must be a boolean",
            PolicyError::PayloadNotObject => "join payload must be an object",
            PolicyError::ReservedEvent => "reserved event name",
            PolicyError::InvalidEventName => {
                "invalid event name: use 1-64 characters of A-Z a-z 0-9 _ : . -"
            }
            PolicyError::BinaryPayload => "this event needs a JSON payload",
        }
    }
}

/// Reads a room join payload: `{"meta": {...}, "track": bool}`, both optional.
pub fn parse_room_join(payload: &Value, max_meta_size: usize) -> Result<RoomJoin, PolicyError> {
    let Value::Object(obj) = payload else {
        // phoenix.js sends `{}` when the app gives no params; anything else is a client bug.
        return if payload.is_null() {
            Ok(RoomJoin {
                meta: Map::new(),
                track: true,
            })
        } else {
            Err(PolicyError::PayloadNotObject)
        };
    };
    let meta = match obj.get("meta") {
        None | Some(Value::Null) => Map::new(),
        Some(meta) => parse_meta(meta, max_meta_size)?,
    };
    let track = match obj.get("track") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(PolicyError::TrackNotBoolean),
    };
    Ok(RoomJoin { meta, track })
}

/// Checks a meta: a JSON object whose serialized size is within the limit.
pub fn parse_meta(meta: &Value, max_meta_size: usize) -> Result<Map<String, Value>, PolicyError> {
    let Value::Object(obj) = meta else {
        return Err(PolicyError::MetaNotObject);
    };
    if meta.to_string().len() > max_meta_size {
        return Err(PolicyError::MetaTooLarge);
    }
    Ok(obj.clone())
}

/// Checks a client event name for relay with the core rule
/// ([`check_event_name`](rollcall_core::protocol::check_event_name)): not reserved (`phx_*`,
/// `presence*`), and 1–64 characters of `[A-Za-z0-9_:.-]`.
pub fn check_relay_event(event: &str) -> Result<(), PolicyError> {
    use rollcall_core::protocol::{check_event_name, EventNameError};
    check_event_name(event).map_err(|e| match e {
        EventNameError::Reserved => PolicyError::ReservedEvent,
        EventNameError::Invalid => PolicyError::InvalidEventName,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prefix_pattern_matches_topics_with_the_prefix_only() {
        let p = TopicPattern::parse("room:*");
        assert!(p.matches("room:lobby"));
        assert!(p.matches("room:"));
        assert!(!p.matches("rooms"));
        assert!(TopicPattern::parse("lobby").matches("lobby"));
        assert!(!TopicPattern::parse("lobby").matches("lobby2"));
    }

    #[test]
    fn join_payload_defaults_to_tracked_with_empty_meta() {
        let j = parse_room_join(&json!({}), 4096).unwrap();
        assert!(j.track);
        assert!(j.meta.is_empty());
        let j = parse_room_join(&json!({"meta": {"s": 1}, "track": false}), 4096).unwrap();
        assert!(!j.track);
        assert_eq!(j.meta.get("s"), Some(&json!(1)));
    }

    #[test]
    fn oversized_or_non_object_meta_is_refused() {
        let big = "x".repeat(100);
        assert_eq!(
            parse_room_join(&json!({"meta": {"b": big}}), 50),
            Err(PolicyError::MetaTooLarge)
        );
        assert_eq!(
            parse_room_join(&json!({"meta": [1]}), 50),
            Err(PolicyError::MetaNotObject)
        );
        assert_eq!(
            parse_room_join(&json!({"track": "yes"}), 50),
            Err(PolicyError::TrackNotBoolean)
        );
    }

    #[test]
    fn topics_and_keys_are_printable_and_at_most_255_bytes() {
        assert!(check_topic("room:lobby").is_ok());
        assert!(check_topic("room:ünïcödé ✓").is_ok());
        assert!(check_topic(&"é".repeat(127)).is_ok(), "254 bytes");
        assert_eq!(
            check_topic(&format!("room:{}", "x".repeat(251))),
            Err(NameError::TopicTooLong)
        );
        for bad in [
            "",
            "room:a\nb",
            "room:\0",
            "room:\u{7f}",
            "room:\u{202E}evil",
            "a\u{2028}b",
        ] {
            assert_eq!(check_topic(bad), Err(NameError::InvalidTopic), "{bad:?}");
        }
        assert_eq!(check_key(&"k".repeat(256)), Err(NameError::KeyTooLong));
        assert_eq!(check_key("al\u{2067}ice"), Err(NameError::InvalidKey));
        assert!(check_key("alice@example.com").is_ok());
        assert_eq!(NameError::TopicTooLong.reason(), "topic too long");
        assert_eq!(NameError::InvalidTopic.reason(), "invalid topic");
    }

    #[test]
    fn relay_event_names_are_checked() {
        assert!(check_relay_event("new_msg").is_ok());
        assert!(check_relay_event("a:b.c-d_1").is_ok());
        assert_eq!(
            check_relay_event("phx_join"),
            Err(PolicyError::ReservedEvent)
        );
        assert_eq!(
            check_relay_event("presence_diff"),
            Err(PolicyError::ReservedEvent)
        );
        assert_eq!(check_relay_event(""), Err(PolicyError::InvalidEventName));
        assert_eq!(
            check_relay_event("has space"),
            Err(PolicyError::InvalidEventName)
        );
        assert_eq!(
            check_relay_event(&"a".repeat(65)),
            Err(PolicyError::InvalidEventName)
        );
    }

    #[test]
    fn relay_refusal_reasons_are_the_core_rule_texts() {
        use rollcall_core::protocol::EventNameError;
        assert_eq!(
            PolicyError::ReservedEvent.reason(),
            EventNameError::Reserved.to_string()
        );
        assert_eq!(
            PolicyError::InvalidEventName.reason(),
            EventNameError::Invalid.to_string()
        );
    }
}
