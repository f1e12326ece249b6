//! What webhook nodes tell each other on the pubsub channel [`CHANNEL_WEBHOOK`]: a version byte
//! (`1`), then a JSON [`Message`]. A message that does not decode is logged and dropped.

use serde::{Deserialize, Serialize};

use super::ledger::Event;

/// The pubsub channel of webhook messages.
pub const CHANNEL_WEBHOOK: &str = "webhook";

const VERSION: u8 = 1;

/// One message between webhook nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// "I send webhooks too."
    Hello {
        /// The tracker incarnation of the node (which start of the node this is).
        incarnation: u64,
        /// When its webhooks started, unix microseconds: it orders the nodes, the earliest one
        /// up sends.
        started_at: u64,
    },
    /// The sender queued these events (sent before it delivers them, so that a node taking
    /// over can deliver them again, same ids, if the sender fails).
    Events {
        /// The events, in the order they are delivered.
        events: Vec<Event>,
    },
    /// The sender is done with these events (delivered, or given up after retrying).
    Delivered {
        /// Their ids.
        ids: Vec<String>,
    },
    /// A node's whole reported state and queued events, for a peer that just came up (a new
    /// node, or one back from a partition) to merge.
    Snapshot {
        /// The latest event of each entry of the reported state.
        reported: Vec<Event>,
        /// Events queued and not done yet.
        pending: Vec<Event>,
    },
}

impl Message {
    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        // Serializing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, self);
        out
    }

    /// Reads a message, or says what is wrong with the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Message, String> {
        match bytes.split_first() {
            Some((&VERSION, json)) => serde_json::from_slice(json).map_err(|e| e.to_string()),
            Some((v, _)) => Err(format!("unknown webhook message version {v}")),
            None => Err("empty webhook message".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::ledger::Kind;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let event = Event {
            id: "e1".into(),
            kind: Kind::MemberAdded,
            topic: "room:a".into(),
            key: Some("k".into()),
            meta: Some(serde_json::json!({"x": 1})),
            at: 5,
        };
        for m in [
            Message::Hello {
                incarnation: 7,
                started_at: 8,
            },
            Message::Events {
                events: vec![event.clone()],
            },
            Message::Delivered {
                ids: vec!["e1".into()],
            },
            Message::Snapshot {
                reported: vec![event.clone()],
                pending: vec![event],
            },
        ] {
            assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
        assert!(Message::decode(b"").is_err());
        assert!(Message::decode(b"\x02{}").is_err());
        assert!(Message::decode(b"\x01{nope").is_err());
    }
}
