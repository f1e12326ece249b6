//! Transports carry frames between a client and its [`socket`](crate::socket) machine:
//! [`websocket`] and [`longpoll`]. This module holds what they share: the already-encoded
//! frame ([`WireFrame`], cheap to clone, so one encoding serves every subscriber) and the items
//! that flow into and out of the socket machine.

pub mod longpoll;
pub mod websocket;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use rollcall_core::protocol::{EncodeError, Frame, Outbound, Serializer};

/// An encoded frame ready for the wire. Cloning shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// A text frame (JSON).
    Text(Utf8Bytes),
    /// A binary frame (V2 binary).
    Binary(Bytes),
}

impl WireFrame {
    /// Encodes `out` with `serializer`.
    pub fn encode(serializer: Serializer, out: &Outbound) -> Result<Self, EncodeError> {
        Ok(match serializer.encode(out)? {
            Frame::Text(text) => WireFrame::Text(text.into()),
            Frame::Binary(bytes) => WireFrame::Binary(bytes.into()),
        })
    }

    /// The frame as the protocol codec sees it (copies).
    pub fn to_frame(&self) -> Frame {
        match self {
            WireFrame::Text(t) => Frame::Text(t.as_str().to_string()),
            WireFrame::Binary(b) => Frame::Binary(b.to_vec()),
        }
    }
}

/// What a transport hands to the socket machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A data frame from the client.
    Frame(Frame),
    /// A data frame bigger than the configured maximum (its size in bytes, when known).
    TooLarge(Option<usize>),
    /// A frame the transport could not even hand over (e.g. a text frame that is not UTF-8);
    /// the reason is for the client.
    Invalid(String),
    /// Proof of life without data (WebSocket ping/pong).
    Activity,
    /// The transport failed (the reason, for the log).
    Error(String),
}

/// What the socket machine hands to a transport.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A data frame.
    Frame(WireFrame),
    /// Close the connection with this WebSocket close code and reason; nothing follows.
    Close {
        /// The close code (1000 normal, 1001 going away, 1007 bad data, 1009 too big).
        code: u16,
        /// A short reason (at most 123 bytes).
        reason: String,
    },
}

/// Close code: the server is going away (shutdown, idle).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a frame could not be decoded.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: the client broke a rule (sustained rate-limit abuse).
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Close code: a frame was bigger than allowed.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the client did not keep up with its frames; reconnect later.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
