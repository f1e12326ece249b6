//! Replication messages between shards and their versioned binary encoding.
//!
//! Every encoded message is one version byte ([`WIRE_VERSION`]) followed by the postcard encoding
//! of a [`ReplicationMessage`]. Replica ids and topics are written once per payload in tables;
//! dots and elements refer to them by index, which keeps a full-state transfer compact.
//! Decoding checks the version, the framing and every table index, so a decoded message can be
//! handed to [`Shard::receive`](super::Shard::receive) without further checks; garbage yields a
//! [`DecodeError`], never a panic.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::meta::Meta;
use super::replica::ReplicaId;

/// The first byte of every encoded [`ReplicationMessage`].
pub const WIRE_VERSION: u8 = 2;

/// A version vector as sent between replicas: `(replica, highest contiguous counter seen)`.
///
/// A shard's advertised clock lists only the replicas it considers up, so a newcomer that never
/// heard of a dead replica is not forever "behind" on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// Entries sorted by replica id, one per replica.
    pub entries: Vec<(ReplicaId, u64)>,
}

impl Clock {
    /// The counter for `replica`, if the clock knows it.
    pub fn get(&self, replica: &ReplicaId) -> Option<u64> {
        self.entries
            .iter()
            .find(|(r, _)| r == replica)
            .map(|(_, c)| *c)
    }
}

/// A message one shard sends to the same-named shard on other nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationMessage {
    /// Broadcast every broadcast period when there are local changes (with the delta), and at
    /// least every `max_silent_periods` periods without (with no delta). Proves the sender alive.
    Heartbeat {
        /// The sender.
        from: ReplicaId,
        /// The sender's clock (up replicas only).
        clock: Clock,
        /// The changes since the previous delta heartbeat, if any.
        delta: Option<StatePayload>,
        /// For each entry of `clock`, in order: the highest counter of that replica the sender
        /// has observed (beyond the clock's counter if it saw later dots out of order) and a
        /// digest of the sender's stored presences of that replica. A replica that has made
        /// exactly that many dots holds the same presences, unless another process made dots
        /// under its id; see [`Shard`](super::Shard).
        seen: Vec<(u64, u64)>,
    },
    /// Sent to one peer whose clock showed something we lack.
    TransferRequest {
        /// The requester.
        from: ReplicaId,
        /// Echoed in the answer.
        request_id: u64,
        /// The requester's clock: which replicas it knows and how far.
        clock: Clock,
    },
    /// The answer to a transfer request: a cached delta generation or the full state, pruned to
    /// the replicas the requester knows.
    TransferAck {
        /// The responder.
        from: ReplicaId,
        /// The request this answers.
        request_id: u64,
        /// The delta or full state.
        payload: StatePayload,
    },
    /// The sender is shutting down for good: drop its presences now instead of waiting for the
    /// down and permdown periods.
    GracefulPermdown {
        /// The replica that is going away.
        from: ReplicaId,
    },
    /// Sent to the node of `replica` when a heartbeat of `replica` reaches a shard that has
    /// retired it (another incarnation of that node was heard, it shut down gracefully, or it was
    /// silent for `permdown_period_ms`): the sender ignores it from now on. A shard that is
    /// `replica` itself takes a new incarnation, so that the sender sees it again.
    Retired {
        /// The shard that retired `replica`.
        from: ReplicaId,
        /// The retired replica.
        replica: ReplicaId,
    },
}

/// A piece of CRDT state on the wire: a delta (with the causal range it covers) or a full state
/// (with its context). Build one with the tracker; it is opaque apart from its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatePayload {
    pub(crate) replicas: Vec<ReplicaId>,
    pub(crate) topics: Vec<Arc<str>>,
    pub(crate) kind: PayloadKind,
    /// Per replica index: observed dots beyond the context, strictly ascending.
    pub(crate) clouds: Vec<(u32, Vec<u64>)>,
    pub(crate) values: Vec<WireElement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PayloadKind {
    /// A full state: its context, `(replica index, counter)`.
    Full { context: Vec<(u32, u64)> },
    /// A delta: for each replica index, the counters `(start, end]` it covers completely.
    Delta { range: Vec<(u32, u64, u64)> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireElement {
    pub(crate) replica: u32,
    pub(crate) counter: u64,
    pub(crate) conn: u64,
    pub(crate) topic: u32,
    pub(crate) key: Arc<str>,
    pub(crate) meta: Meta,
    pub(crate) prev: Option<u64>,
}

impl StatePayload {
    /// True for a full-state transfer, false for a delta.
    pub fn is_full(&self) -> bool {
        matches!(self.kind, PayloadKind::Full { .. })
    }

    /// Number of presences carried.
    pub fn value_count(&self) -> usize {
        self.values.len()
    }

    /// Checks every index and ordering the merge relies on.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        let n = self.replicas.len();
        let ok = |i: u32| (i as usize) < n;
        match &self.kind {
            PayloadKind::Full { context } => {
                if !context.iter().all(|(r, _)| ok(*r)) {
                    return Err("context refers to an unknown replica index");
                }
            }
            PayloadKind::Delta { range } => {
                if !range.iter().all(|(r, s, e)| ok(*r) && s <= e) {
                    return Err("delta range refers to an unknown replica index or is reversed");
                }
            }
        }
        for (r, dots) in &self.clouds {
            if !ok(*r) {
                return Err("cloud refers to an unknown replica index");
            }
            if !dots.windows(2).all(|w| w[0] < w[1]) {
                return Err("cloud dots are not strictly ascending");
            }
        }
        for v in &self.values {
            if !ok(v.replica) {
                return Err("element refers to an unknown replica index");
            }
            if v.topic as usize >= self.topics.len() {
                return Err("element refers to an unknown topic index");
            }
            if v.counter == 0 {
                return Err("element dot counter is zero");
            }
        }
        Ok(())
    }
}

/// Why bytes could not be decoded into a [`ReplicationMessage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes at all.
    Empty,
    /// The version byte is not one this build understands.
    UnsupportedVersion(u8),
    /// The body is not a valid encoding; the message says what went wrong.
    Malformed(String),
    /// Bytes are left over after the message.
    TrailingBytes(usize),
    /// The message decoded but is inconsistent (e.g. an index outside its table).
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty replication message"),
            DecodeError::UnsupportedVersion(v) => write!(
                f,
                "replication message version {v} is not supported (this build speaks {WIRE_VERSION})"
            ),
            DecodeError::Malformed(e) => write!(f, "malformed replication message: {e}"),
            DecodeError::TrailingBytes(n) => {
                write!(f, "{n} unexpected bytes after the replication message")
            }
            DecodeError::Invalid(e) => write!(f, "invalid replication message: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be encoded (only if the serializer itself fails).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeError(pub String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not encode replication message: {}", self.0)
    }
}

impl std::error::Error for EncodeError {}

impl ReplicationMessage {
    /// The replica that sent the message.
    pub fn sender(&self) -> &ReplicaId {
        match self {
            ReplicationMessage::Heartbeat { from, .. }
            | ReplicationMessage::TransferRequest { from, .. }
            | ReplicationMessage::TransferAck { from, .. }
            | ReplicationMessage::GracefulPermdown { from }
            | ReplicationMessage::Retired { from, .. } => from,
        }
    }

    /// Encodes as `[WIRE_VERSION] ++ postcard(self)`.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        postcard::to_extend(self, vec![WIRE_VERSION]).map_err(|e| EncodeError(e.to_string()))
    }

    /// Decodes and validates bytes produced by [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Result<ReplicationMessage, DecodeError> {
        let (version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if *version != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion(*version));
        }
        let (msg, rest): (ReplicationMessage, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        msg.validate().map_err(DecodeError::Invalid)?;
        Ok(msg)
    }

    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        match self {
            ReplicationMessage::Heartbeat {
                clock, delta, seen, ..
            } => {
                if seen.len() != clock.entries.len() {
                    return Err("a heartbeat's observations do not match its clock");
                }
                match delta {
                    Some(p) if p.is_full() => Err("a heartbeat carries a delta, not a full state"),
                    Some(p) => p.validate(),
                    None => Ok(()),
                }
            }
            ReplicationMessage::TransferAck { payload, .. } => payload.validate(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> StatePayload {
        StatePayload {
            replicas: vec![ReplicaId::new("a", 1)],
            topics: vec![Arc::from("t")],
            kind: PayloadKind::Delta {
                range: vec![(0, 0, 1)],
            },
            clouds: vec![(0, vec![1])],
            values: vec![WireElement {
                replica: 0,
                counter: 1,
                conn: 9,
                topic: 0,
                key: Arc::from("k"),
                meta: Meta::empty(),
                prev: None,
            }],
        }
    }

    fn ack(payload: StatePayload) -> ReplicationMessage {
        ReplicationMessage::TransferAck {
            from: ReplicaId::new("a", 1),
            request_id: 1,
            payload,
        }
    }

    #[test]
    fn a_valid_payload_round_trips() {
        let m = ack(payload());
        assert_eq!(ReplicationMessage::decode(&m.encode().unwrap()), Ok(m));
    }

    #[test]
    fn out_of_range_indices_are_rejected_at_decode() {
        let mut p = payload();
        p.values[0].topic = 5;
        let bytes = ack(p).encode().unwrap();
        assert_eq!(
            ReplicationMessage::decode(&bytes),
            Err(DecodeError::Invalid(
                "element refers to an unknown topic index"
            ))
        );
        let mut p = payload();
        p.clouds = vec![(3, vec![1])];
        assert!(matches!(
            ReplicationMessage::decode(&ack(p).encode().unwrap()),
            Err(DecodeError::Invalid(_))
        ));
        let mut p = payload();
        p.clouds = vec![(0, vec![2, 1])];
        assert!(matches!(
            ReplicationMessage::decode(&ack(p).encode().unwrap()),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn a_heartbeat_with_a_full_state_is_rejected() {
        let mut p = payload();
        p.kind = PayloadKind::Full { context: vec![] };
        let m = ReplicationMessage::Heartbeat {
            from: ReplicaId::new("a", 1),
            clock: Clock::default(),
            delta: Some(p),
            seen: Vec::new(),
        };
        assert!(matches!(
            ReplicationMessage::decode(&m.encode().unwrap()),
            Err(DecodeError::Invalid(_))
        ));
    }
}
