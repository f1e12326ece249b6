//! What travels between a transport and the socket machine, and how a connection ends: the
//! encoded frame ([`WireFrame`], cheap to clone, so one encoding serves every subscriber; a
//! frame can also be pieces around bytes it shares with other frames, see [`TextParts`]), what
//! a transport hands the machine ([`FromClient`]) and what the machine hands back
//! ([`ToClient`]), the WebSocket close codes the server uses, and [`CloseReason`].
//!
//! A leaf: it knows the protocol codec and nothing else of the server.

use bytes::Bytes;
use rollcall_core::protocol::{EncodeError, Frame, Outbound, Serializer};

/// A text frame written in three pieces: its own head, a body shared with other frames, and a
/// tail. Frames that differ only around one big payload (each joiner's `presence_state`
/// carries its own `join_ref`) share the payload's bytes instead of each holding a copy; the
/// pieces are written one after the other (a vectored write), or joined where a transport needs
/// one string.
#[derive(Debug, Clone)]
pub struct TextParts {
    parts: [Bytes; 3],
}

impl TextParts {
    /// `head`, then `body` (shared, not copied), then `tail`.
    pub fn new(head: String, body: TextBytes, tail: &'static str) -> Self {
        TextParts {
            parts: [
                Bytes::from(head),
                body.0,
                Bytes::from_static(tail.as_bytes()),
            ],
        }
    }

    /// The pieces in order; together they are the frame's text.
    pub fn parts(&self) -> &[Bytes; 3] {
        &self.parts
    }

    /// The shared body.
    pub fn body(&self) -> &Bytes {
        &self.parts[1]
    }

    /// The whole text (copies).
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(self.len());
        for part in &self.parts {
            // Each piece was a `String`, a `TextBytes` or a `&str`, so the check cannot fail.
            text.push_str(std::str::from_utf8(part).unwrap_or_default());
        }
        text
    }

    /// Its length in bytes, all pieces together.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// True when every piece is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// UTF-8 text in shared bytes: what a text frame carries. Cloning shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBytes(Bytes);

impl TextBytes {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ever built from a `String` or a `&str`, so the check cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The bytes of the text (shared, not copied).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty text.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for TextBytes {
    fn from(text: String) -> Self {
        TextBytes(Bytes::from(text))
    }
}

impl From<&str> for TextBytes {
    fn from(text: &str) -> Self {
        TextBytes(Bytes::copy_from_slice(text.as_bytes()))
    }
}

/// An encoded frame ready for the wire. Cloning shares the bytes: one encoding serves every
/// subscriber, and the bytes are freed once the last connection has written them.
///
/// Two frames are equal when they put the same bytes on the wire, whichever pieces hold them.
#[derive(Debug, Clone)]
pub enum WireFrame {
    /// A text frame (JSON).
    Text(TextBytes),
    /// A text frame (JSON) in pieces around a shared body.
    Parts(TextParts),
    /// A binary frame (V2 binary).
    Binary(Bytes),
}

impl PartialEq for WireFrame {
    fn eq(&self, other: &Self) -> bool {
        let text = |frame: &WireFrame| !matches!(frame, WireFrame::Binary(_));
        text(self) == text(other)
            && self.len() == other.len()
            && self
                .chunks()
                .iter()
                .flat_map(|c| c.iter())
                .eq(other.chunks().iter().flat_map(|c| c.iter()))
    }
}

impl Eq for WireFrame {}

impl WireFrame {
    /// A server push of a payload already written as JSON text, the payload shared rather than
    /// copied: the same bytes as [`Serializer::encode_push_json`] writes.
    pub fn push_json(
        serializer: Serializer,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: &TextBytes,
    ) -> Self {
        let (head, tail) = serializer.push_json_around(join_ref, topic, event);
        WireFrame::Parts(TextParts::new(head, payload.clone(), tail))
    }

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
            WireFrame::Parts(p) => Frame::Text(p.to_text()),
            WireFrame::Binary(b) => Frame::Binary(b.to_vec()),
        }
    }

    /// Its size in bytes (all pieces together).
    pub fn len(&self) -> usize {
        match self {
            WireFrame::Text(t) => t.len(),
            WireFrame::Parts(p) => p.len(),
            WireFrame::Binary(b) => b.len(),
        }
    }

    /// Its bytes as the wire carries them, in order (shared, not copied).
    pub fn chunks(&self) -> &[Bytes] {
        match self {
            WireFrame::Text(t) => std::slice::from_ref(t.as_bytes()),
            WireFrame::Parts(p) => p.parts(),
            WireFrame::Binary(b) => std::slice::from_ref(b),
        }
    }

    /// True for a frame of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes it shares with other frames: all of them, or the body of a frame in pieces.
    pub fn payload(&self) -> &Bytes {
        match self {
            WireFrame::Text(t) => t.as_bytes(),
            WireFrame::Parts(p) => p.body(),
            WireFrame::Binary(b) => b,
        }
    }
}

/// What a transport hands to the socket machine.
#[derive(Debug, Clone, PartialEq)]
pub enum FromClient {
    /// A data frame from the client.
    Frame(Frame),
    /// A data frame bigger than the configured maximum (its size in bytes, when known).
    TooLarge(Option<usize>),
    /// A frame the transport could not even hand over (e.g. a text frame that is not UTF-8);
    /// the reason is for the client.
    Invalid(String),
    /// Proof of life without data (a WebSocket pong).
    Activity,
    /// A WebSocket ping: proof of life, answered with a pong carrying the same bytes.
    Ping(Bytes),
    /// The transport failed (the reason, for the log).
    Error(String),
}

/// What the socket machine hands to a transport.
#[derive(Debug, Clone, PartialEq)]
pub enum ToClient {
    /// A data frame.
    Frame(WireFrame),
    /// A WebSocket pong answering a ping (the ping's bytes).
    Pong(Bytes),
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
/// Close code: the client broke a rule (sustained rate-limit abuse, an expired token).
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Close code: a frame was bigger than allowed.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the client did not keep up with its frames; reconnect later.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// The close reason (code 1008) of a connection whose token expired.
pub const TOKEN_EXPIRED: &str = "token expired";

/// Why a connection's machine stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed or the transport ended.
    ClientGone,
    /// The server closed the connection with this code and reason.
    Closed(u16, String),
    /// Writing to the client failed.
    SinkFailed,
}

/// Keeps a close reason within the 123 bytes a WebSocket close frame allows.
pub fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_core::protocol::Payload;
    use serde_json::json;

    #[test]
    fn a_push_in_parts_is_the_plain_encoding_and_shares_its_payload() {
        let payload = json!({"k\"1": {"metas": [{"phx_ref": "F1", "name": "é\u{2028}"}]}});
        let shared = TextBytes::from(payload.to_string());
        for serializer in [Serializer::V1Json, Serializer::V2] {
            for join_ref in [None, Some("7"), Some("a\"b\\c")] {
                let plain = WireFrame::encode(
                    serializer,
                    &Outbound::Push {
                        join_ref: join_ref.map(str::to_string),
                        topic: "room:\"x\"".into(),
                        event: "presence_state".into(),
                        payload: Payload::Json(payload.clone()),
                    },
                )
                .unwrap();
                let parts = WireFrame::push_json(
                    serializer,
                    join_ref,
                    "room:\"x\"",
                    "presence_state",
                    &shared,
                );
                assert_eq!(parts.to_frame(), plain.to_frame(), "{serializer:?}");
                assert_eq!(parts.len(), plain.len());
                assert_eq!(parts, plain);
                assert_eq!(parts.payload().as_ptr(), shared.as_bytes().as_ptr());
            }
        }
        let text = |t: &str| WireFrame::Text(t.into());
        assert_ne!(text("ab"), WireFrame::Binary(Bytes::from_static(b"ab")));
        assert_ne!(text("ab"), text("ac"));
    }

    #[test]
    fn close_reasons_are_cut_at_123_bytes_on_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123);
        assert!(long.starts_with(&cut));
    }
}
