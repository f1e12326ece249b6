//! The Phoenix Channels message and its wire codecs.
//!
//! A client talks to the server in [`Message`]s (`join_ref, ref, topic, event, payload`); the
//! server answers with [`Outbound`] frames: a push from a channel, a reply to a client message, a
//! broadcast to every subscriber of a topic, or a channel lifecycle frame (`phx_close`,
//! `phx_error`, whose ref is the join_ref). Three encodings exist, chosen per connection by the
//! `vsn` query parameter ([`Serializer::negotiate`]):
//!
//! - **V1 JSON** (`vsn=1.0.x`, or no `vsn`): one JSON object per text frame. Pushes and broadcasts
//!   never carry a `join_ref`.
//! - **V2 JSON** (`vsn=2.0.x`): one JSON array `[join_ref, ref, topic, event, payload]` per text
//!   frame.
//! - **V2 binary** (`vsn=2.0.x`, when the payload is bytes): a binary frame with a one-byte kind,
//!   one length byte per header field, the header fields, then the raw payload. A client push
//!   carries a `ref`; a server push does not. A ref field is always present on the wire: an
//!   absent ref is written as `""`, and `""` reads back as `Some("")`, as in Phoenix.
//!
//! Decoding never panics: malformed input gives a [`DecodeError`] that says what is wrong.
//! This module owns the format only; limits (frame size, meta size) are the server's business.

use std::fmt;

use serde_json::{Map, Value};

/// Event a client sends to join a topic.
pub const PHX_JOIN: &str = "phx_join";
/// Event a client sends to leave a topic.
pub const PHX_LEAVE: &str = "phx_leave";
/// Event of every reply.
pub const PHX_REPLY: &str = "phx_reply";
/// Event the server sends when a channel closes normally.
pub const PHX_CLOSE: &str = "phx_close";
/// Event the server sends when a channel crashed.
pub const PHX_ERROR: &str = "phx_error";
/// Topic of the socket-level heartbeat.
pub const HEARTBEAT_TOPIC: &str = "phoenix";
/// Event of the socket-level heartbeat.
pub const HEARTBEAT_EVENT: &str = "heartbeat";

/// Binary frame kind of a push (client → server and server → client).
pub const KIND_PUSH: u8 = 0;
/// Binary frame kind of a reply (server → client).
pub const KIND_REPLY: u8 = 1;
/// Binary frame kind of a broadcast (server → client).
pub const KIND_BROADCAST: u8 = 2;

/// Largest UTF-8 length of one binary header field (it is stored in one byte).
pub const MAX_HEADER_FIELD_BYTES: usize = 255;

/// Longest event name (bytes) a client may use for its own events.
pub const MAX_EVENT_NAME_LEN: usize = 64;

/// True for the event names a client may not use for its own events: the protocol's
/// (`phx_*`: `phx_join`, `phx_reply`, …), presence's (`presence*`: `presence_state`,
/// `presence_diff`, …) and the names phoenix.js gives replies internally (`chan_reply_<ref>`:
/// a channel routes the reply to the push waiting on that ref, so a relayed one could answer
/// another member's push), so that no member can forge what the server alone sends.
pub fn is_reserved_event(event: &str) -> bool {
    event.starts_with("phx_") || event.starts_with("presence") || event.starts_with("chan_reply_")
}

/// Why an event name is refused by [`check_event_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventNameError {
    /// A reserved name ([`is_reserved_event`]).
    Reserved,
    /// Empty, longer than [`MAX_EVENT_NAME_LEN`] bytes, or with a character outside
    /// `A-Z a-z 0-9 _ : . -`.
    Invalid,
}

impl fmt::Display for EventNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventNameError::Reserved => write!(f, "reserved event name"),
            EventNameError::Invalid => write!(
                f,
                "invalid event name: use 1-{MAX_EVENT_NAME_LEN} characters of A-Z a-z 0-9 _ : . -"
            ),
        }
    }
}

impl std::error::Error for EventNameError {}

/// The rule for an event name a client sends to the other members of a room: not reserved
/// ([`is_reserved_event`]), and 1–[`MAX_EVENT_NAME_LEN`] characters of `A-Z a-z 0-9 _ : . -`
/// (so names are safe to log, to use as keys, and to pass to any client's event dispatch). The
/// reserved check comes first: `phx_` with a bad character is reported as reserved.
pub fn check_event_name(event: &str) -> Result<(), EventNameError> {
    if is_reserved_event(event) {
        return Err(EventNameError::Reserved);
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-');
    if event.is_empty() || event.len() > MAX_EVENT_NAME_LEN || !event.bytes().all(allowed) {
        return Err(EventNameError::Invalid);
    }
    Ok(())
}

/// A message payload: JSON in text frames, raw bytes in V2 binary frames.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON value (normally an object).
    Json(Value),
    /// Opaque bytes (V2 binary frames only).
    Binary(Vec<u8>),
}

impl Payload {
    /// An empty JSON object, the payload of heartbeats and plain `ok` replies.
    pub fn empty() -> Self {
        Payload::Json(Value::Object(Map::new()))
    }

    /// The JSON value, if this is a JSON payload.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Payload::Json(v) => Some(v),
            Payload::Binary(_) => None,
        }
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Payload::Json(value)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload::Binary(bytes)
    }
}

/// A message as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The `ref` of the join that opened the channel this message belongs to.
    pub join_ref: Option<String>,
    /// The message's own reference, echoed in its reply (`ref` on the wire).
    pub msg_ref: Option<String>,
    /// The topic, e.g. `room:lobby`.
    pub topic: String,
    /// The event name, e.g. `phx_join`.
    pub event: String,
    /// The payload.
    pub payload: Payload,
}

/// A frame the server sends to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// A push from a channel to its own client (carries the channel's join_ref, never a ref).
    Push {
        /// The channel's join_ref.
        join_ref: Option<String>,
        /// The topic.
        topic: String,
        /// The event name.
        event: String,
        /// The payload.
        payload: Payload,
    },
    /// A reply to a client message (event `phx_reply`, payload `{status, response}`).
    Reply {
        /// The join_ref of the message replied to.
        join_ref: Option<String>,
        /// The ref of the message replied to.
        msg_ref: Option<String>,
        /// The topic.
        topic: String,
        /// `ok` or `error`.
        status: String,
        /// The response.
        response: Payload,
    },
    /// A broadcast to every subscriber of a topic (no join_ref, no ref).
    Broadcast {
        /// The topic.
        topic: String,
        /// The event name.
        event: String,
        /// The payload.
        payload: Payload,
    },
    /// A channel lifecycle frame (`phx_close`, `phx_error`): Phoenix stamps it with the channel's
    /// join_ref in *both* the join_ref and the ref position (`["1","1",topic,"phx_close",{}]`),
    /// unlike a [`Outbound::Push`], whose ref is always null.
    ///
    /// The binary server push has no ref field, so a binary payload here is sent as a plain
    /// kind-0 push.
    Lifecycle {
        /// The channel's join_ref (written as both join_ref and ref).
        join_ref: Option<String>,
        /// The topic.
        topic: String,
        /// The event name, normally [`PHX_CLOSE`] or [`PHX_ERROR`].
        event: String,
        /// The payload: `{}` for `phx_close`, `{"reason": ...}` for `phx_error`.
        payload: Payload,
    },
}

impl Outbound {
    /// A reply to `msg` with the given status and JSON response.
    pub fn reply_to(msg: &Message, status: &str, response: Value) -> Self {
        Outbound::Reply {
            join_ref: msg.join_ref.clone(),
            msg_ref: msg.msg_ref.clone(),
            topic: msg.topic.clone(),
            status: status.to_string(),
            response: Payload::Json(response),
        }
    }

    /// The `phx_close` frame of a channel that ended normally (payload `{}`).
    pub fn phx_close(join_ref: Option<String>, topic: &str) -> Self {
        Outbound::Lifecycle {
            join_ref,
            topic: topic.to_string(),
            event: PHX_CLOSE.to_string(),
            payload: Payload::empty(),
        }
    }

    /// The `phx_error` frame of a channel that crashed (payload `{"reason": reason}`; Phoenix
    /// ≥ 1.8.10 sends the reason `channel_crash`).
    pub fn phx_error(join_ref: Option<String>, topic: &str, reason: &str) -> Self {
        let mut payload = Map::new();
        payload.insert("reason".into(), Value::String(reason.to_string()));
        Outbound::Lifecycle {
            join_ref,
            topic: topic.to_string(),
            event: PHX_ERROR.to_string(),
            payload: Payload::Json(Value::Object(payload)),
        }
    }

    /// The topic this frame is about.
    pub fn topic(&self) -> &str {
        match self {
            Outbound::Push { topic, .. }
            | Outbound::Reply { topic, .. }
            | Outbound::Broadcast { topic, .. }
            | Outbound::Lifecycle { topic, .. } => topic,
        }
    }
}

/// One WebSocket (or long-poll) frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// Why a `vsn` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedVsn(pub String);

impl fmt::Display for UnsupportedVsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unsupported protocol vsn {:?} (supported: 1.0.x, 2.0.x)",
            self.0
        )
    }
}

impl std::error::Error for UnsupportedVsn {}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A text frame that is not valid JSON.
    InvalidJson(String),
    /// The JSON value has the wrong shape (e.g. not an array for V2, not an object for V1).
    WrongShape(&'static str),
    /// A V2 JSON array with fewer than five elements.
    TooFewElements(usize),
    /// A required field is missing (V1).
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// An empty binary frame.
    EmptyFrame,
    /// A binary frame whose kind byte is not one this direction accepts.
    UnknownKind(u8),
    /// A binary frame shorter than its header says.
    Truncated {
        /// Bytes the header announces (header included).
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// A binary header field that is not UTF-8.
    InvalidUtf8(&'static str),
    /// A binary frame on a V1 connection.
    BinaryNotSupported,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            DecodeError::WrongShape(what) => write!(f, "malformed message: {what}"),
            DecodeError::TooFewElements(n) => write!(
                f,
                "malformed message: expected [join_ref, ref, topic, event, payload], got {n} element(s)"
            ),
            DecodeError::MissingField(field) => write!(f, "malformed message: missing {field:?}"),
            DecodeError::WrongType { field, expected } => {
                write!(f, "malformed message: {field} must be {expected}")
            }
            DecodeError::EmptyFrame => write!(f, "empty binary frame"),
            DecodeError::UnknownKind(k) => write!(f, "unknown binary frame kind {k}"),
            DecodeError::Truncated { needed, got } => write!(
                f,
                "truncated binary frame: header announces {needed} bytes, frame has {got}"
            ),
            DecodeError::InvalidUtf8(field) => write!(f, "binary frame: {field} is not UTF-8"),
            DecodeError::BinaryNotSupported => {
                write!(f, "binary frames need protocol vsn 2.0.0")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A binary header field longer than 255 UTF-8 bytes.
    FieldTooLong {
        /// The field (`join_ref`, `ref`, `topic`, `event` or `status`).
        field: &'static str,
        /// Its UTF-8 length.
        len: usize,
    },
    /// A binary payload on a V1 connection.
    BinaryNotSupported,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::FieldTooLong { field, len } => write!(
                f,
                "unable to convert {field} to binary: must be less than or equal to 255 bytes, but is {len} bytes"
            ),
            EncodeError::BinaryNotSupported => write!(f, "binary payloads need protocol vsn 2.0.0"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// The serializer of one connection, chosen by its `vsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// `vsn=1.0.x`: JSON objects.
    V1Json,
    /// `vsn=2.0.x`: JSON arrays, and binary frames for byte payloads.
    V2,
}

impl Serializer {
    /// Picks the serializer for a `vsn` query parameter: absent → V1; a semantic version matching
    /// `~> 1.0.0` (any `1.0.x`) → V1; one matching `~> 2.0.0` (any `2.0.x`) → V2; anything else,
    /// including an unparsable version, is refused (the server answers HTTP 403).
    ///
    /// Pre-releases follow semver order: `2.0.1-rc.1` is a 2.0.x version, `2.0.0-rc.1` comes
    /// before 2.0.0 and is refused. Build metadata (`+...`) is ignored.
    pub fn negotiate(vsn: Option<&str>) -> Result<Self, UnsupportedVsn> {
        let Some(vsn) = vsn else {
            return Ok(Serializer::V1Json);
        };
        let refuse = || UnsupportedVsn(vsn.to_string());
        let version = SemVer::parse(vsn).ok_or_else(refuse)?;
        // `~> M.0.0` means `>= M.0.0 and < M.1.0`; a pre-release of M.0.0 sorts below M.0.0.
        let in_series = version.minor == "0" && !(version.pre_release && version.patch == "0");
        match version.major {
            "1" if in_series => Ok(Serializer::V1Json),
            "2" if in_series => Ok(Serializer::V2),
            _ => Err(refuse()),
        }
    }

    /// Decodes a frame a client sent.
    pub fn decode(self, frame: &Frame) -> Result<Message, DecodeError> {
        match (self, frame) {
            (Serializer::V1Json, Frame::Text(text)) => decode_v1(text),
            (Serializer::V1Json, Frame::Binary(_)) => Err(DecodeError::BinaryNotSupported),
            (Serializer::V2, Frame::Text(text)) => decode_v2_json(text),
            (Serializer::V2, Frame::Binary(bytes)) => decode_client_binary(bytes),
        }
    }

    /// Encodes a frame for a client.
    pub fn encode(self, out: &Outbound) -> Result<Frame, EncodeError> {
        match self {
            Serializer::V1Json => encode_v1(out).map(Frame::Text),
            Serializer::V2 => encode_v2(out),
        }
    }

    /// Encodes a server push whose JSON payload is already text: with `join_ref`, the push of
    /// the channel joined with it; with `None`, a broadcast. The bytes are those of
    /// [`Serializer::encode`] on the [`Outbound::Push`] / [`Outbound::Broadcast`] carrying the
    /// parsed payload, without building it: a server fanning one payload out to many clients
    /// encodes the payload once and frames it once per serializer. `payload_json` must be JSON
    /// as `serde_json` writes it (compact); it is copied as is.
    pub fn encode_push_json(
        self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload_json: &str,
    ) -> String {
        let (mut frame, tail) = self.push_json_around(join_ref, topic, event);
        frame.reserve(payload_json.len() + tail.len());
        frame.push_str(payload_json);
        frame.push_str(tail);
        frame
    }

    /// The text [`Serializer::encode_push_json`] writes before the payload, and the text after
    /// it: `head + payload_json + tail` is that frame. A server sending one payload to many
    /// clients whose frames differ only around it (each joiner's `join_ref`) writes the three
    /// pieces one after the other and shares the payload's bytes.
    pub fn push_json_around(
        self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
    ) -> (String, &'static str) {
        let string = |s: &str| Value::String(s.to_string()).to_string();
        match self {
            // Pushes and broadcasts carry no join_ref in V1, and a null ref.
            Serializer::V1Json => (
                format!(
                    "{{\"topic\":{},\"event\":{},\"payload\":",
                    string(topic),
                    string(event)
                ),
                ",\"ref\":null}",
            ),
            Serializer::V2 => (
                format!(
                    "[{},null,{},{},",
                    join_ref.map_or_else(|| "null".to_string(), string),
                    string(topic),
                    string(event)
                ),
                "]",
            ),
        }
    }

    /// Encodes a message as a client sends it (for Rust clients and tests).
    pub fn encode_client(self, msg: &Message) -> Result<Frame, EncodeError> {
        match (self, &msg.payload) {
            (Serializer::V1Json, Payload::Binary(_)) => Err(EncodeError::BinaryNotSupported),
            (Serializer::V1Json, Payload::Json(payload)) => {
                let mut obj = Map::new();
                obj.insert("topic".into(), msg.topic.clone().into());
                obj.insert("event".into(), msg.event.clone().into());
                obj.insert("payload".into(), payload.clone());
                obj.insert("ref".into(), opt(&msg.msg_ref));
                if msg.join_ref.is_some() {
                    obj.insert("join_ref".into(), opt(&msg.join_ref));
                }
                Ok(Frame::Text(Value::Object(obj).to_string()))
            }
            (Serializer::V2, Payload::Json(payload)) => Ok(Frame::Text(json_array(
                &msg.join_ref,
                &msg.msg_ref,
                &msg.topic,
                &msg.event,
                payload,
            ))),
            (Serializer::V2, Payload::Binary(payload)) => {
                let join_ref = msg.join_ref.as_deref().unwrap_or("");
                let msg_ref = msg.msg_ref.as_deref().unwrap_or("");
                binary_frame(
                    KIND_PUSH,
                    &[
                        ("join_ref", join_ref),
                        ("ref", msg_ref),
                        ("topic", &msg.topic),
                        ("event", &msg.event),
                    ],
                    payload,
                )
                .map(Frame::Binary)
            }
        }
    }

    /// Decodes a frame the server sent (for Rust clients and tests).
    pub fn decode_server(self, frame: &Frame) -> Result<Outbound, DecodeError> {
        match (self, frame) {
            (_, Frame::Text(text)) => {
                let msg = match self {
                    Serializer::V1Json => decode_v1(text)?,
                    Serializer::V2 => decode_v2_json(text)?,
                };
                classify_server_message(msg)
            }
            (Serializer::V1Json, Frame::Binary(_)) => Err(DecodeError::BinaryNotSupported),
            (Serializer::V2, Frame::Binary(bytes)) => decode_server_binary(bytes),
        }
    }
}

/// The parts of a semantic version `major.minor.patch[-pre][+build]` that negotiation needs.
struct SemVer<'a> {
    major: &'a str,
    minor: &'a str,
    patch: &'a str,
    pre_release: bool,
}

impl<'a> SemVer<'a> {
    /// Parses a version the way semver (and Elixir's `Version`) does: numeric parts without
    /// leading zeros; dot-separated `[0-9A-Za-z-]` identifiers after `-` and `+`.
    fn parse(text: &'a str) -> Option<Self> {
        let (rest, build) = match text.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (text, None),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let identifiers_ok = |s: &str, numeric_without_leading_zero: bool| {
            s.split('.').all(|id| {
                !id.is_empty()
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !(numeric_without_leading_zero
                        && id.len() > 1
                        && id.starts_with('0')
                        && id.bytes().all(|b| b.is_ascii_digit()))
            })
        };
        if build.is_some_and(|b| !identifiers_ok(b, false))
            || pre.is_some_and(|p| !identifiers_ok(p, true))
        {
            return None;
        }
        let number = |p: &str| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p == "0" || !p.starts_with('0'))
        };
        let mut parts = core.split('.');
        let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !number(major) || !number(minor) || !number(patch) {
            return None;
        }
        Some(SemVer {
            major,
            minor,
            patch,
            pre_release: pre.is_some(),
        })
    }
}

fn opt(s: &Option<String>) -> Value {
    s.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

fn json_array(
    join_ref: &Option<String>,
    msg_ref: &Option<String>,
    topic: &str,
    event: &str,
    payload: &Value,
) -> String {
    Value::Array(vec![
        opt(join_ref),
        opt(msg_ref),
        Value::String(topic.to_string()),
        Value::String(event.to_string()),
        payload.clone(),
    ])
    .to_string()
}

fn reply_payload(status: &str, response: &Value) -> Value {
    let mut obj = Map::new();
    obj.insert("status".into(), Value::String(status.to_string()));
    obj.insert("response".into(), response.clone());
    Value::Object(obj)
}

/// A ref as clients send it: a string, `null`, or (leniently) an integer, kept as its decimal text.
fn ref_field(v: &Value, field: &'static str) -> Result<Option<String>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) if n.is_u64() || n.is_i64() => Ok(Some(n.to_string())),
        _ => Err(DecodeError::WrongType {
            field,
            expected: "a string or null",
        }),
    }
}

fn str_field(v: &Value, field: &'static str) -> Result<String, DecodeError> {
    v.as_str()
        .map(str::to_string)
        .ok_or(DecodeError::WrongType {
            field,
            expected: "a string",
        })
}

fn parse_json(text: &str) -> Result<Value, DecodeError> {
    serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson(e.to_string()))
}

fn decode_v1(text: &str) -> Result<Message, DecodeError> {
    let Value::Object(mut obj) = parse_json(text)? else {
        return Err(DecodeError::WrongShape("expected a JSON object"));
    };
    let mut take = |field: &'static str| obj.remove(field).ok_or(DecodeError::MissingField(field));
    let topic = str_field(&take("topic")?, "topic")?;
    let event = str_field(&take("event")?, "event")?;
    let payload = take("payload")?;
    let msg_ref = ref_field(&take("ref")?, "ref")?;
    let join_ref = match obj.remove("join_ref") {
        Some(v) => ref_field(&v, "join_ref")?,
        None => None,
    };
    Ok(Message {
        join_ref,
        msg_ref,
        topic,
        event,
        payload: Payload::Json(payload),
    })
}

fn decode_v2_json(text: &str) -> Result<Message, DecodeError> {
    let Value::Array(items) = parse_json(text)? else {
        return Err(DecodeError::WrongShape(
            "expected a JSON array [join_ref, ref, topic, event, payload]",
        ));
    };
    let [join_ref, msg_ref, topic, event, payload, ..] = items.as_slice() else {
        return Err(DecodeError::TooFewElements(items.len()));
    };
    Ok(Message {
        join_ref: ref_field(join_ref, "join_ref")?,
        msg_ref: ref_field(msg_ref, "ref")?,
        topic: str_field(topic, "topic")?,
        event: str_field(event, "event")?,
        payload: Payload::Json(payload.clone()),
    })
}

/// Reads a binary frame: after the kind byte, one length byte per header field, then the
/// fields as UTF-8, then the payload (the rest of the frame).
fn split_binary<'a, const N: usize>(
    bytes: &'a [u8],
    names: [&'static str; N],
) -> Result<([&'a str; N], &'a [u8]), DecodeError> {
    let header_end = 1 + N;
    let lens = bytes.get(1..header_end).ok_or(DecodeError::Truncated {
        needed: header_end,
        got: bytes.len(),
    })?;
    let needed = header_end + lens.iter().map(|&l| usize::from(l)).sum::<usize>();
    let truncated = DecodeError::Truncated {
        needed,
        got: bytes.len(),
    };
    // Report a short frame before looking at field contents.
    if bytes.len() < needed {
        return Err(truncated);
    }
    let mut fields = [""; N];
    let mut rest = bytes.get(header_end..).ok_or(truncated.clone())?;
    for ((field, name), &len) in fields.iter_mut().zip(names).zip(lens) {
        let (raw, after) = rest
            .split_at_checked(usize::from(len))
            .ok_or(truncated.clone())?;
        *field = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8(name))?;
        rest = after;
    }
    Ok((fields, rest))
}

/// A binary ref field is always present: length 0 decodes as `Some("")`, not as absent, as in
/// Phoenix (so a stale-join_ref check treats it like any other non-null join_ref).
fn present(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn decode_client_binary(bytes: &[u8]) -> Result<Message, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::EmptyFrame),
        Some(&KIND_PUSH) => {
            let ([join_ref, msg_ref, topic, event], payload) =
                split_binary(bytes, ["join_ref", "ref", "topic", "event"])?;
            Ok(Message {
                join_ref: present(join_ref),
                msg_ref: present(msg_ref),
                topic: topic.to_string(),
                event: event.to_string(),
                payload: Payload::Binary(payload.to_vec()),
            })
        }
        Some(&kind) => Err(DecodeError::UnknownKind(kind)),
    }
}

fn decode_server_binary(bytes: &[u8]) -> Result<Outbound, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::EmptyFrame),
        Some(&KIND_PUSH) => {
            let ([join_ref, topic, event], payload) =
                split_binary(bytes, ["join_ref", "topic", "event"])?;
            Ok(Outbound::Push {
                join_ref: present(join_ref),
                topic: topic.to_string(),
                event: event.to_string(),
                payload: Payload::Binary(payload.to_vec()),
            })
        }
        Some(&KIND_REPLY) => {
            let ([join_ref, msg_ref, topic, status], payload) =
                split_binary(bytes, ["join_ref", "ref", "topic", "status"])?;
            Ok(Outbound::Reply {
                join_ref: present(join_ref),
                msg_ref: present(msg_ref),
                topic: topic.to_string(),
                status: status.to_string(),
                response: Payload::Binary(payload.to_vec()),
            })
        }
        Some(&KIND_BROADCAST) => {
            let ([topic, event], payload) = split_binary(bytes, ["topic", "event"])?;
            Ok(Outbound::Broadcast {
                topic: topic.to_string(),
                event: event.to_string(),
                payload: Payload::Binary(payload.to_vec()),
            })
        }
        Some(&kind) => Err(DecodeError::UnknownKind(kind)),
    }
}

/// Tells a server text frame apart: a `phx_reply` is a reply (its payload must be
/// `{"status": string, "response": ...}`); a frame with a non-null ref is a lifecycle frame
/// (`phx_close`/`phx_error`, whose ref is the join_ref — the only place V1 carries it); a frame
/// without refs is a broadcast; anything else a push. V1 never sends a join_ref, so a V1 push
/// decodes as a broadcast: the two are the same bytes.
fn classify_server_message(msg: Message) -> Result<Outbound, DecodeError> {
    if msg.event == PHX_REPLY {
        let Payload::Json(Value::Object(mut obj)) = msg.payload else {
            return Err(DecodeError::WrongType {
                field: "payload",
                expected: "an object {status, response} in a phx_reply",
            });
        };
        let Some(Value::String(status)) = obj.remove("status") else {
            return Err(DecodeError::WrongType {
                field: "status",
                expected: "a string in a phx_reply",
            });
        };
        return Ok(Outbound::Reply {
            join_ref: msg.join_ref,
            msg_ref: msg.msg_ref,
            topic: msg.topic,
            status,
            response: Payload::Json(obj.remove("response").unwrap_or(Value::Null)),
        });
    }
    Ok(match (msg.join_ref, msg.msg_ref) {
        (_, Some(msg_ref)) => Outbound::Lifecycle {
            join_ref: Some(msg_ref),
            topic: msg.topic,
            event: msg.event,
            payload: msg.payload,
        },
        (None, None) => Outbound::Broadcast {
            topic: msg.topic,
            event: msg.event,
            payload: msg.payload,
        },
        (join_ref @ Some(_), None) => Outbound::Push {
            join_ref,
            topic: msg.topic,
            event: msg.event,
            payload: msg.payload,
        },
    })
}

fn binary_frame(
    kind: u8,
    fields: &[(&'static str, &str)],
    payload: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    let header: usize = fields.iter().map(|(_, f)| f.len()).sum();
    let mut out = Vec::with_capacity(1 + fields.len() + header + payload.len());
    out.push(kind);
    for (name, field) in fields {
        let len = u8::try_from(field.len()).map_err(|_| EncodeError::FieldTooLong {
            field: name,
            len: field.len(),
        })?;
        out.push(len);
    }
    for (_, field) in fields {
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(payload);
    Ok(out)
}

fn encode_v1(out: &Outbound) -> Result<String, EncodeError> {
    let (topic, event, payload, msg_ref) = match out {
        Outbound::Push {
            topic,
            event,
            payload,
            ..
        }
        | Outbound::Broadcast {
            topic,
            event,
            payload,
        } => {
            let Payload::Json(payload) = payload else {
                return Err(EncodeError::BinaryNotSupported);
            };
            (topic, event.as_str(), payload.clone(), Value::Null)
        }
        Outbound::Lifecycle {
            join_ref,
            topic,
            event,
            payload,
        } => {
            let Payload::Json(payload) = payload else {
                return Err(EncodeError::BinaryNotSupported);
            };
            (topic, event.as_str(), payload.clone(), opt(join_ref))
        }
        Outbound::Reply {
            msg_ref,
            topic,
            status,
            response,
            ..
        } => {
            let Payload::Json(response) = response else {
                return Err(EncodeError::BinaryNotSupported);
            };
            (
                topic,
                PHX_REPLY,
                reply_payload(status, response),
                opt(msg_ref),
            )
        }
    };
    let mut obj = Map::new();
    obj.insert("topic".into(), Value::String(topic.clone()));
    obj.insert("event".into(), Value::String(event.to_string()));
    obj.insert("payload".into(), payload);
    obj.insert("ref".into(), msg_ref);
    Ok(Value::Object(obj).to_string())
}

fn encode_v2(out: &Outbound) -> Result<Frame, EncodeError> {
    match out {
        Outbound::Push {
            join_ref,
            topic,
            event,
            payload: Payload::Json(payload),
        } => Ok(Frame::Text(json_array(
            join_ref, &None, topic, event, payload,
        ))),
        Outbound::Lifecycle {
            join_ref,
            topic,
            event,
            payload: Payload::Json(payload),
        } => Ok(Frame::Text(json_array(
            join_ref, join_ref, topic, event, payload,
        ))),
        // The binary server push has no ref slot: sent as a plain push.
        Outbound::Lifecycle {
            join_ref,
            topic,
            event,
            payload: Payload::Binary(payload),
        }
        | Outbound::Push {
            join_ref,
            topic,
            event,
            payload: Payload::Binary(payload),
        } => binary_frame(
            KIND_PUSH,
            &[
                ("join_ref", join_ref.as_deref().unwrap_or("")),
                ("topic", topic),
                ("event", event),
            ],
            payload,
        )
        .map(Frame::Binary),
        Outbound::Reply {
            join_ref,
            msg_ref,
            topic,
            status,
            response: Payload::Json(response),
        } => Ok(Frame::Text(json_array(
            join_ref,
            msg_ref,
            topic,
            PHX_REPLY,
            &reply_payload(status, response),
        ))),
        Outbound::Reply {
            join_ref,
            msg_ref,
            topic,
            status,
            response: Payload::Binary(response),
        } => binary_frame(
            KIND_REPLY,
            &[
                ("join_ref", join_ref.as_deref().unwrap_or("")),
                ("ref", msg_ref.as_deref().unwrap_or("")),
                ("topic", topic),
                ("status", status),
            ],
            response,
        )
        .map(Frame::Binary),
        Outbound::Broadcast {
            topic,
            event,
            payload: Payload::Json(payload),
        } => Ok(Frame::Text(json_array(&None, &None, topic, event, payload))),
        Outbound::Broadcast {
            topic,
            event,
            payload: Payload::Binary(payload),
        } => binary_frame(
            KIND_BROADCAST,
            &[("topic", topic), ("event", event)],
            payload,
        )
        .map(Frame::Binary),
    }
}
