//! Operational metrics: the counters a node keeps while it serves, and their rendering in the
//! Prometheus text exposition format (version 0.0.4) for `GET /metrics`.
//!
//! Two kinds of numbers, kept two ways:
//! - **Counters and the connection gauge** live in [`Metrics`], plain atomics bumped where the
//!   thing happens (socket machine, transports, tracker task): no lock on the hot path.
//! - **Presence gauges** (channels, rooms, presences, replicas) are read from the tracker task's
//!   own state when scraped ([`TrackerGauges`]), so they cannot drift from the truth.
//!
//! No label carries a topic, a key or a node name: room names may be private, and per-room
//! labels would grow without bound. Every label below takes a value from a short fixed list.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::frame::{
    CloseReason, WireFrame, CLOSE_GOING_AWAY, CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG, CLOSE_TRY_AGAIN_LATER, TOKEN_EXPIRED,
};
use crate::pubsub::Stats;

/// The `Content-Type` of the exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value set, not counted (the last writer's value is the truth).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The client transports, the `transport` label of the connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/socket/websocket`.
    WebSocket,
    /// `/socket/longpoll`.
    LongPoll,
}

impl Transport {
    const ALL: [Transport; 2] = [Transport::WebSocket, Transport::LongPoll];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::LongPoll => "longpoll",
        }
    }

    fn index(self) -> usize {
        match self {
            Transport::WebSocket => 0,
            Transport::LongPoll => 1,
        }
    }
}

/// Why a connect was refused before any socket machine ran, the `reason` label of
/// `rollcall_connects_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An unsupported `vsn`.
    Version,
    /// An `Origin` not in `--allowed-origins`.
    Origin,
    /// A missing or invalid token (with a secret configured).
    Token,
    /// The key is in the abuse penalty box (HTTP 429).
    Penalty,
    /// The client address already has `--max-conns-per-ip` connections.
    PerAddress,
    /// The node already has `--max-conns` connections.
    NodeFull,
    /// The client address opened long-poll sessions faster than `--longpoll-open-rate`.
    OpenRate,
    /// The presence key (`user_id` or the token's `sub`) is too long or not printable.
    Key,
}

impl Refusal {
    const ALL: [Refusal; 8] = [
        Refusal::Version,
        Refusal::Origin,
        Refusal::Token,
        Refusal::Penalty,
        Refusal::PerAddress,
        Refusal::NodeFull,
        Refusal::OpenRate,
        Refusal::Key,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Version => "version",
            Refusal::Origin => "origin",
            Refusal::Token => "token",
            Refusal::Penalty => "penalty",
            Refusal::PerAddress => "per_address",
            Refusal::NodeFull => "node_full",
            Refusal::OpenRate => "open_rate",
            Refusal::Key => "key",
        }
    }
}

/// Why a channel join was refused, the `reason` label of `rollcall_joins_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefusal {
    /// The topic is not a room (`--rooms`).
    Unmatched,
    /// The token's `rooms` claim does not allow the topic.
    NotAllowed,
    /// The room has `--max-room-members` members.
    RoomFull,
    /// The connection has `--max-channels` channels.
    TooManyChannels,
    /// The join payload is malformed (meta not an object, too large, binary, ...).
    BadPayload,
    /// The topic is too long or holds characters a name may not.
    BadTopic,
    /// The topic's channel handler refused the join.
    Handler,
    /// The topic's channel handler panicked in its join.
    Crashed,
    /// The join hook refused the join (or failed, with `--join-hook-on-error deny`).
    Hook,
}

impl JoinRefusal {
    const ALL: [JoinRefusal; 9] = [
        JoinRefusal::Unmatched,
        JoinRefusal::NotAllowed,
        JoinRefusal::RoomFull,
        JoinRefusal::TooManyChannels,
        JoinRefusal::BadPayload,
        JoinRefusal::BadTopic,
        JoinRefusal::Handler,
        JoinRefusal::Crashed,
        JoinRefusal::Hook,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            JoinRefusal::Unmatched => "unmatched",
            JoinRefusal::NotAllowed => "not_allowed",
            JoinRefusal::RoomFull => "room_full",
            JoinRefusal::TooManyChannels => "too_many_channels",
            JoinRefusal::BadPayload => "bad_payload",
            JoinRefusal::BadTopic => "bad_topic",
            JoinRefusal::Handler => "handler",
            JoinRefusal::Crashed => "crashed",
            JoinRefusal::Hook => "join_hook",
        }
    }
}

/// Why connections ended, the `reason` label of `rollcall_connections_closed_total`, with the
/// WebSocket close code the server sent (none when the client left or the write failed).
const CLOSE_REASONS: [(&str, &str); 10] = [
    ("client_left", ""),
    ("write_failed", ""),
    ("shutdown", "1001"),
    ("idle", "1001"),
    ("invalid_data", "1007"),
    ("policy_violation", "1008"),
    ("too_big", "1009"),
    ("too_slow", "1013"),
    ("other", ""),
    ("token_expired", "1008"),
];

fn close_index(reason: &CloseReason) -> usize {
    match reason {
        CloseReason::ClientGone => 0,
        CloseReason::SinkFailed => 1,
        CloseReason::Closed(code, text) => match *code {
            CLOSE_GOING_AWAY if text.starts_with("idle") => 3,
            CLOSE_GOING_AWAY => 2,
            CLOSE_INVALID_DATA => 4,
            // A token running out is routine, not abuse: kept apart so an abuse alert on
            // `policy_violation` does not fire on every short-lived token.
            CLOSE_POLICY_VIOLATION if text == TOKEN_EXPIRED => 9,
            CLOSE_POLICY_VIOLATION => 5,
            CLOSE_TOO_BIG => 6,
            CLOSE_TRY_AGAIN_LATER => 7,
            _ => 8,
        },
    }
}

/// The pubsub channels the tracker uses, the `channel` label of the pubsub byte counters.
const CHANNELS: [&str; 2] = ["tracker", "relay"];

/// The counters of one node, shared (behind an [`Arc`]) by everything that counts: the socket
/// machines and transports (through the node's context) and the tracker task.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_open: [AtomicI64; 2],
    connections_opened: [Counter; 2],
    connections_closed: [Counter; CLOSE_REASONS.len()],
    connects_refused: [Counter; Refusal::ALL.len()],
    joins_refused: [Counter; JoinRefusal::ALL.len()],
    /// Data frames received from clients.
    pub frames_in: Counter,
    /// Bytes of those frames.
    pub frame_bytes_in: Counter,
    /// Data frames written to clients.
    pub frames_out: Counter,
    /// Bytes of those frames.
    pub frame_bytes_out: Counter,
    /// Channel joins accepted.
    pub joins: Counter,
    /// Client events relayed to a room (sent by a client on this node).
    pub client_events: Counter,
    /// Client events received from other nodes, for local subscribers.
    pub relayed_events_in: Counter,
    /// Events from other nodes refused: a reserved or invalid name, or not decodable.
    pub relayed_events_refused: Counter,
    /// Messages answered `rate limited`.
    pub rate_limited: Counter,
    /// Replication payload bytes handed to the pubsub, per [`CHANNELS`] entry.
    pubsub_bytes_out: [Counter; 2],
    /// Replication payload bytes received from the pubsub, per [`CHANNELS`] entry.
    pubsub_bytes_in: [Counter; 2],
    /// Transfer answers sent to a peer: a cached delta.
    pub transfers_delta_out: Counter,
    /// Transfer answers sent to a peer: the full state.
    pub transfers_full_out: Counter,
    /// Transfer answers received: a delta.
    pub transfers_delta_in: Counter,
    /// Transfer answers received: a full state.
    pub transfers_full_in: Counter,
    /// Joins the join hook allowed.
    pub join_hook_allowed: Counter,
    /// Joins the join hook refused.
    pub join_hook_refused: Counter,
    /// Join hook calls that got no usable answer (then `--join-hook-on-error` decided).
    pub join_hook_failed: Counter,
    /// Events sent to rooms through `POST /api/broadcast/{topic}`.
    pub api_broadcasts: Counter,
    /// Webhook events this node queued for delivery (as the cluster's sender).
    pub webhook_events_queued: Counter,
    /// Webhook events delivered (the receiver answered 2xx).
    pub webhook_events_delivered: Counter,
    /// Webhook events given up after retrying for `--webhook-retry-ms`.
    pub webhook_events_dropped: Counter,
    /// Times a room's webhook events were held back because the queue was full (they go
    /// out, netted, once it drains).
    pub webhook_held_back: Counter,
    /// Webhook requests answered 2xx.
    pub webhook_requests_ok: Counter,
    /// Webhook requests that failed (no connection, a timeout, a non-2xx status).
    pub webhook_requests_failed: Counter,
    /// Webhook events waiting on this node: to deliver (the sender), or held in case the
    /// sender fails (the others).
    pub webhook_queue: Gauge,
    /// 1 on the node that sends the cluster's webhooks now.
    pub webhook_sender: Gauge,
}

/// Counts one open connection until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    metrics: Arc<Metrics>,
    transport: Transport,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(open) = self.metrics.connections_open.get(self.transport.index()) {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Metrics {
    /// Counts a connection on `transport` as open until the returned guard is dropped.
    pub fn connection(self: &Arc<Self>, transport: Transport) -> OpenConnection {
        let i = transport.index();
        if let (Some(open), Some(opened)) =
            (self.connections_open.get(i), self.connections_opened.get(i))
        {
            open.fetch_add(1, Ordering::Relaxed);
            opened.inc();
        }
        OpenConnection {
            metrics: self.clone(),
            transport,
        }
    }

    /// Connections open on `transport` now.
    pub fn connections_open(&self, transport: Transport) -> i64 {
        self.connections_open
            .get(transport.index())
            .map_or(0, |g| g.load(Ordering::Relaxed))
    }

    /// Counts a refused connect.
    pub fn refused(&self, why: Refusal) {
        if let Some(c) = self.connects_refused.get(why as usize) {
            c.inc();
        }
    }

    /// Counts a refused channel join.
    pub fn join_refused(&self, why: JoinRefusal) {
        if let Some(c) = self.joins_refused.get(why as usize) {
            c.inc();
        }
    }

    /// Counts a connection's end.
    pub fn closed(&self, reason: &CloseReason) {
        if let Some(c) = self.connections_closed.get(close_index(reason)) {
            c.inc();
        }
    }

    /// Counts one data frame of `size` bytes from a client.
    pub fn frame_in(&self, size: usize) {
        self.frames_in.inc();
        self.frame_bytes_in.add(size as u64);
    }

    /// Counts one data frame written to a client.
    pub fn frame_out(&self, frame: &WireFrame) {
        self.frames_out.inc();
        self.frame_bytes_out.add(frame.len() as u64);
    }

    /// Counts `bytes` handed to the pubsub on `channel` (unknown channels are not counted).
    pub fn pubsub_out(&self, channel: &str, bytes: usize) {
        add_for_channel(&self.pubsub_bytes_out, channel, bytes);
    }

    /// Counts `bytes` received from the pubsub on `channel`.
    pub fn pubsub_in(&self, channel: &str, bytes: usize) {
        add_for_channel(&self.pubsub_bytes_in, channel, bytes);
    }

    /// The bytes counted in `counters` for `channel`.
    fn pubsub_bytes(&self, counters: &[Counter; 2], channel: &str) -> u64 {
        channel_counter(counters, channel).map_or(0, Counter::get)
    }
}

/// The counter of `channel` (one of [`CHANNELS`]) among `counters`.
fn channel_counter<'a>(counters: &'a [Counter; 2], channel: &str) -> Option<&'a Counter> {
    CHANNELS
        .iter()
        .position(|c| *c == channel)
        .and_then(|i| counters.get(i))
}

fn add_for_channel(counters: &[Counter; 2], channel: &str, bytes: usize) {
    if let Some(c) = channel_counter(counters, channel) {
        c.add(bytes as u64);
    }
}

/// What the tracker task reports of its state at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerGauges {
    /// Channels joined on this node (one per connection per topic).
    pub channels: u64,
    /// Topics with at least one channel joined on this node.
    pub rooms_subscribed: u64,
    /// Presences tracked by connections of this node.
    pub presences_local: u64,
    /// Presences in this node's replica of the cluster state (every node's, including those of
    /// nodes currently down and not listed).
    pub presences_stored: u64,
    /// Topics with at least one stored presence, cluster-wide.
    pub rooms_with_presences: u64,
    /// Peer replicas up.
    pub replicas_up: u64,
    /// Peer replicas down (their presences hidden until they return or are forgotten).
    pub replicas_down: u64,
    /// Frames the tracker encoded for fan-out (one per serializer per dispatch).
    pub frames_encoded: u64,
}

/// What one scrape reads: the node's counters, the tracker's gauges, the transport's stats.
struct Scrape<'a> {
    metrics: &'a Metrics,
    gauges: &'a TrackerGauges,
    pubsub: &'a Stats,
}

/// One sample: its label pairs and its value.
type Sample = (Vec<(&'static str, &'static str)>, i64);

/// One metric family of the exposition: its name, type and help, and how a scrape reads its
/// samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: fn(&Scrape) -> Vec<Sample>,
}

const GAUGE: &str = "gauge";
const COUNTER: &str = "counter";

/// A counter's value as a sample value (a `u64` that does not fit is shown as the largest).
fn value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A family with a single unlabelled sample.
fn one(n: u64) -> Vec<Sample> {
    vec![(Vec::new(), value(n))]
}

/// One sample per `(label value, value)`, under the label `name`.
fn by(name: &'static str, values: impl IntoIterator<Item = (&'static str, u64)>) -> Vec<Sample> {
    values
        .into_iter()
        .map(|(label, n)| (vec![(name, label)], value(n)))
        .collect()
}

/// Every family `/metrics` shows, in order.
const FAMILIES: &[Family] = &[
    Family {
        name: "rollcall_build_info",
        kind: GAUGE,
        help: "Always 1; the version label is the server's version.",
        samples: |_| vec![(vec![("version", env!("CARGO_PKG_VERSION"))], 1)],
    },
    Family {
        name: "rollcall_connections",
        kind: GAUGE,
        help: "Client connections open now, by transport.",
        samples: |s| {
            Transport::ALL
                .iter()
                .map(|t| (vec![("transport", t.label())], s.metrics.connections_open(*t)))
                .collect()
        },
    },
    Family {
        name: "rollcall_connections_opened_total",
        kind: COUNTER,
        help: "Client connections opened, by transport.",
        samples: |s| {
            by(
                "transport",
                Transport::ALL.map(|t| (t.label(), s.metrics.connections_opened[t.index()].get())),
            )
        },
    },
    Family {
        name: "rollcall_connections_closed_total",
        kind: COUNTER,
        help: "Client connections ended, by reason and the close code the server sent (empty when none).",
        samples: |s| {
            CLOSE_REASONS
                .iter()
                .zip(&s.metrics.connections_closed)
                .map(|((reason, code), n)| (vec![("reason", *reason), ("code", *code)], value(n.get())))
                .collect()
        },
    },
    Family {
        name: "rollcall_connects_refused_total",
        kind: COUNTER,
        help: "Connect attempts refused before a socket opened: bad vsn, origin not allowed, missing or invalid token, key in the abuse penalty box, too many connections from the address or on the node (counted at accept too), long-poll sessions opened too fast, a presence key too long or not printable.",
        samples: |s| {
            by(
                "reason",
                Refusal::ALL.map(|why| (why.label(), s.metrics.connects_refused[why as usize].get())),
            )
        },
    },
    Family {
        name: "rollcall_joins_refused_total",
        kind: COUNTER,
        help: "Channel joins refused: topic not a room, not allowed by the token, room full, too many channels, malformed join payload.",
        samples: |s| {
            by(
                "reason",
                JoinRefusal::ALL.map(|why| (why.label(), s.metrics.joins_refused[why as usize].get())),
            )
        },
    },
    Family {
        name: "rollcall_channels_joined",
        kind: GAUGE,
        help: "Channels joined on this node (one per connection per topic).",
        samples: |s| one(s.gauges.channels),
    },
    Family {
        name: "rollcall_rooms_subscribed",
        kind: GAUGE,
        help: "Topics with at least one channel joined on this node.",
        samples: |s| one(s.gauges.rooms_subscribed),
    },
    Family {
        name: "rollcall_rooms_with_presences",
        kind: GAUGE,
        help: "Topics with at least one presence in this node's replica (cluster-wide).",
        samples: |s| one(s.gauges.rooms_with_presences),
    },
    Family {
        name: "rollcall_presences_local",
        kind: GAUGE,
        help: "Presences tracked by connections of this node.",
        samples: |s| one(s.gauges.presences_local),
    },
    Family {
        name: "rollcall_presences_stored",
        kind: GAUGE,
        help: "Presences in this node's replica of the cluster state, every node's (those of down nodes included).",
        samples: |s| one(s.gauges.presences_stored),
    },
    Family {
        name: "rollcall_tracker_replicas",
        kind: GAUGE,
        help: "Peer tracker replicas this node knows, by status.",
        samples: |s| by("status", [("up", s.gauges.replicas_up), ("down", s.gauges.replicas_down)]),
    },
    Family {
        name: "rollcall_frames_received_total",
        kind: COUNTER,
        help: "Data frames received from clients.",
        samples: |s| one(s.metrics.frames_in.get()),
    },
    Family {
        name: "rollcall_frame_bytes_received_total",
        kind: COUNTER,
        help: "Bytes of data frames received from clients.",
        samples: |s| one(s.metrics.frame_bytes_in.get()),
    },
    Family {
        name: "rollcall_frames_sent_total",
        kind: COUNTER,
        help: "Data frames written to clients (replies, pushes, broadcasts).",
        samples: |s| one(s.metrics.frames_out.get()),
    },
    Family {
        name: "rollcall_frame_bytes_sent_total",
        kind: COUNTER,
        help: "Bytes of data frames written to clients.",
        samples: |s| one(s.metrics.frame_bytes_out.get()),
    },
    Family {
        name: "rollcall_frames_encoded_total",
        kind: COUNTER,
        help: "Frames the tracker encoded for fan-out (one per serializer per dispatch).",
        samples: |s| one(s.gauges.frames_encoded),
    },
    Family {
        name: "rollcall_joins_total",
        kind: COUNTER,
        help: "Channel joins accepted.",
        samples: |s| one(s.metrics.joins.get()),
    },
    Family {
        name: "rollcall_client_events_total",
        kind: COUNTER,
        help: "Client events relayed to a room by clients of this node.",
        samples: |s| one(s.metrics.client_events.get()),
    },
    Family {
        name: "rollcall_relayed_events_received_total",
        kind: COUNTER,
        help: "Client events received from other nodes for subscribers here.",
        samples: |s| one(s.metrics.relayed_events_in.get()),
    },
    Family {
        name: "rollcall_relayed_events_refused_total",
        kind: COUNTER,
        help: "Events from other nodes refused, never delivered: a reserved name (phx_*, presence*, chan_reply_*), an invalid one, or undecodable.",
        samples: |s| one(s.metrics.relayed_events_refused.get()),
    },
    Family {
        name: "rollcall_rate_limited_total",
        kind: COUNTER,
        help: "Client messages answered \"rate limited\".",
        samples: |s| one(s.metrics.rate_limited.get()),
    },
    Family {
        name: "rollcall_pubsub_messages_sent_total",
        kind: COUNTER,
        help: "Messages handed to the cluster transport (mesh: one per destination node; brokers: one per publish).",
        samples: |s| one(s.pubsub.sent),
    },
    Family {
        name: "rollcall_pubsub_messages_received_total",
        kind: COUNTER,
        help: "Messages received from other nodes.",
        samples: |s| one(s.pubsub.received),
    },
    Family {
        name: "rollcall_pubsub_messages_dropped_total",
        kind: COUNTER,
        help: "Messages the cluster transport dropped: outbound (queue full, peer not connected, broker down) or inbound (subscriber queue full).",
        samples: |s| {
            by(
                "direction",
                [("outbound", s.pubsub.dropped_outbound), ("inbound", s.pubsub.dropped_inbound)],
            )
        },
    },
    Family {
        name: "rollcall_pubsub_handshakes_refused_total",
        kind: COUNTER,
        help: "Mesh handshakes refused (wrong secret, duplicate node name, wrong protocol, too slow).",
        samples: |s| one(s.pubsub.refused),
    },
    Family {
        name: "rollcall_pubsub_messages_rejected_total",
        kind: COUNTER,
        help: "Messages from the cluster transport refused by signature checks, never delivered: unsigned, a bad signature (another secret, forged or altered), replayed (or addressed to another node, or out of the replay window), or from a sender not yet proven live (normal for a moment when a node starts).",
        samples: |s| {
            let r = &s.pubsub.rejected;
            by(
                "reason",
                [
                    ("unsigned", r.unsigned),
                    ("bad_signature", r.bad_signature),
                    ("replayed", r.replayed),
                    ("unproven", r.unproven),
                ],
            )
        },
    },
    Family {
        name: "rollcall_pubsub_bytes_sent_total",
        kind: COUNTER,
        help: "Payload bytes this node's tracker handed to the cluster transport (once per publish), by channel.",
        samples: |s| by("channel", CHANNELS.map(|c| (c, s.metrics.pubsub_bytes(&s.metrics.pubsub_bytes_out, c)))),
    },
    Family {
        name: "rollcall_pubsub_bytes_received_total",
        kind: COUNTER,
        help: "Payload bytes received from other nodes, by channel.",
        samples: |s| by("channel", CHANNELS.map(|c| (c, s.metrics.pubsub_bytes(&s.metrics.pubsub_bytes_in, c)))),
    },
    Family {
        name: "rollcall_tracker_transfers_total",
        kind: COUNTER,
        help: "State transfers between replicas (answers to a transfer request), by direction and kind: a cached delta or the full state.",
        samples: |s| {
            let m = s.metrics;
            [
                ("sent", "delta", &m.transfers_delta_out),
                ("sent", "full", &m.transfers_full_out),
                ("received", "delta", &m.transfers_delta_in),
                ("received", "full", &m.transfers_full_in),
            ]
            .into_iter()
            .map(|(direction, kind, c)| (vec![("direction", direction), ("kind", kind)], value(c.get())))
            .collect()
        },
    },
    Family {
        name: "rollcall_join_hook_total",
        kind: COUNTER,
        help: "Join hook calls by outcome: allowed, refused, failed (no usable answer; --join-hook-on-error decided).",
        samples: |s| {
            let m = s.metrics;
            by(
                "outcome",
                [
                    ("allowed", m.join_hook_allowed.get()),
                    ("refused", m.join_hook_refused.get()),
                    ("failed", m.join_hook_failed.get()),
                ],
            )
        },
    },
    Family {
        name: "rollcall_api_broadcasts_total",
        kind: COUNTER,
        help: "Events sent to rooms through POST /api/broadcast/{topic}.",
        samples: |s| one(s.metrics.api_broadcasts.get()),
    },
    Family {
        name: "rollcall_webhook_events_total",
        kind: COUNTER,
        help: "Webhook events by outcome: queued (by this node as the sender), delivered (2xx), dropped (retries exhausted).",
        samples: |s| {
            let m = s.metrics;
            by(
                "outcome",
                [
                    ("queued", m.webhook_events_queued.get()),
                    ("delivered", m.webhook_events_delivered.get()),
                    ("dropped", m.webhook_events_dropped.get()),
                ],
            )
        },
    },
    Family {
        name: "rollcall_webhook_held_back_total",
        kind: COUNTER,
        help: "Times a room's webhook events were held back because the queue was full (they go out, netted, once it drains).",
        samples: |s| one(s.metrics.webhook_held_back.get()),
    },
    Family {
        name: "rollcall_webhook_requests_total",
        kind: COUNTER,
        help: "Webhook requests by result: ok (2xx) or failed (no connection, timeout, other status).",
        samples: |s| {
            let m = s.metrics;
            by(
                "result",
                [("ok", m.webhook_requests_ok.get()), ("failed", m.webhook_requests_failed.get())],
            )
        },
    },
    Family {
        name: "rollcall_webhook_queue",
        kind: GAUGE,
        help: "Webhook events waiting on this node: to deliver (the sender) or held in case the sender fails.",
        samples: |s| one(s.metrics.webhook_queue.get()),
    },
    Family {
        name: "rollcall_webhook_sender",
        kind: GAUGE,
        help: "1 on the node that sends the cluster's webhooks now, else 0.",
        samples: |s| one(s.metrics.webhook_sender.get()),
    },
];

/// Renders every metric of a node in the exposition format: its counters, the tracker's gauges
/// and the pubsub's stats, each family with its `# HELP` and `# TYPE` lines first.
pub fn render(metrics: &Metrics, gauges: &TrackerGauges, pubsub: &Stats) -> String {
    let scrape = Scrape {
        metrics,
        gauges,
        pubsub,
    };
    let mut out = String::with_capacity(4096);
    for family in FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for (labels, value) in (family.samples)(&scrape) {
            out.push_str(family.name);
            if !labels.is_empty() {
                let labels: Vec<String> = labels
                    .iter()
                    // Label values here come from fixed lists; escape anyway, as the format asks.
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(out, " {value}");
        }
    }
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_gauge_follows_its_guards() {
        let m = Arc::new(Metrics::default());
        let a = m.connection(Transport::WebSocket);
        let b = m.connection(Transport::WebSocket);
        let _c = m.connection(Transport::LongPoll);
        assert_eq!(m.connections_open(Transport::WebSocket), 2);
        drop(a);
        drop(b);
        assert_eq!(m.connections_open(Transport::WebSocket), 0);
        assert_eq!(m.connections_open(Transport::LongPoll), 1);
    }

    #[test]
    fn closes_are_counted_under_their_reason() {
        let m = Metrics::default();
        m.closed(&CloseReason::Closed(
            CLOSE_GOING_AWAY,
            "idle timeout".into(),
        ));
        m.closed(&CloseReason::Closed(
            CLOSE_GOING_AWAY,
            "server shutting down".into(),
        ));
        m.closed(&CloseReason::ClientGone);
        let text = render(&m, &TrackerGauges::default(), &Stats::default());
        assert!(
            text.contains("rollcall_connections_closed_total{reason=\"idle\",code=\"1001\"} 1\n")
        );
        assert!(text
            .contains("rollcall_connections_closed_total{reason=\"shutdown\",code=\"1001\"} 1\n"));
        assert!(text
            .contains("rollcall_connections_closed_total{reason=\"client_left\",code=\"\"} 1\n"));
    }

    #[test]
    fn a_token_expiry_is_not_counted_as_abuse() {
        let m = Metrics::default();
        m.closed(&CloseReason::Closed(
            CLOSE_POLICY_VIOLATION,
            TOKEN_EXPIRED.into(),
        ));
        let text = render(&m, &TrackerGauges::default(), &Stats::default());
        assert!(text.contains(
            "rollcall_connections_closed_total{reason=\"token_expired\",code=\"1008\"} 1\n"
        ));
        assert!(text.contains(
            "rollcall_connections_closed_total{reason=\"policy_violation\",code=\"1008\"} 0\n"
        ));
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = render(
            &Metrics::default(),
            &TrackerGauges::default(),
            &Stats::default(),
        );
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(declared.insert(name.to_string()), "{name} declared twice");
                assert!(text.contains(&format!("# HELP {name} ")));
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert!(declared.contains(name), "{name} sampled before its TYPE");
            }
        }
        assert!(text.contains("rollcall_build_info{version=\""));
    }

    /// Every family, label and value of a scrape, byte for byte: what dashboards and alerts
    /// are written against.
    #[test]
    fn the_exposition_text_is_stable() {
        let m = Arc::new(Metrics::default());
        let _ws = m.connection(Transport::WebSocket);
        let _lp = [
            m.connection(Transport::LongPoll),
            m.connection(Transport::LongPoll),
        ];
        m.refused(Refusal::Version);
        m.refused(Refusal::PerAddress);
        m.refused(Refusal::PerAddress);
        m.join_refused(JoinRefusal::RoomFull);
        m.join_refused(JoinRefusal::BadPayload);
        m.closed(&CloseReason::ClientGone);
        m.closed(&CloseReason::Closed(
            CLOSE_POLICY_VIOLATION,
            TOKEN_EXPIRED.into(),
        ));
        m.closed(&CloseReason::Closed(CLOSE_TOO_BIG, "x".into()));
        m.frame_in(10);
        m.frame_out(&WireFrame::Text("abc".into()));
        m.joins.add(3);
        m.client_events.add(4);
        m.relayed_events_in.add(5);
        m.relayed_events_refused.add(9);
        m.rate_limited.add(6);
        m.pubsub_out("tracker", 100);
        m.pubsub_out("relay", 7);
        m.pubsub_in("tracker", 200);
        m.pubsub_in("relay", 8);
        m.transfers_delta_out.add(1);
        m.transfers_full_out.add(2);
        m.transfers_delta_in.add(3);
        m.transfers_full_in.add(4);
        m.join_hook_allowed.add(31);
        m.join_hook_refused.add(32);
        m.join_hook_failed.add(33);
        m.api_broadcasts.add(34);
        m.webhook_events_queued.add(35);
        m.webhook_events_delivered.add(36);
        m.webhook_events_dropped.add(37);
        m.webhook_held_back.add(38);
        m.webhook_requests_ok.add(39);
        m.webhook_requests_failed.add(40);
        m.webhook_queue.set(41);
        m.webhook_sender.set(1);
        let gauges = TrackerGauges {
            channels: 11,
            rooms_subscribed: 12,
            presences_local: 13,
            presences_stored: 14,
            rooms_with_presences: 15,
            replicas_up: 16,
            replicas_down: 17,
            frames_encoded: 18,
        };
        let stats = Stats {
            sent: 21,
            received: 22,
            dropped_outbound: 23,
            dropped_inbound: 24,
            refused: 25,
            rejected: crate::pubsub::Rejected {
                unsigned: 26,
                bad_signature: 27,
                replayed: 28,
                unproven: 29,
            },
        };
        let expected = EXPOSITION.replace("VERSION", env!("CARGO_PKG_VERSION"));
        assert_eq!(render(&m, &gauges, &stats), expected);
    }

    const EXPOSITION: &str = r#"# HELP rollcall_build_info Always 1; the version label is the server's version.
# TYPE rollcall_build_info gauge
rollcall_build_info{version="VERSION"} 1
# HELP rollcall_connections Client connections open now, by transport.
# TYPE rollcall_connections gauge
rollcall_connections{transport="websocket"} 1
rollcall_connections{transport="longpoll"} 2
# HELP rollcall_connections_opened_total Client connections opened, by transport.
# TYPE rollcall_connections_opened_total counter
rollcall_connections_opened_total{transport="websocket"} 1
rollcall_connections_opened_total{transport="longpoll"} 2
# HELP rollcall_connections_closed_total Client connections ended, by reason and the close code the server sent (empty when none).
# TYPE rollcall_connections_closed_total counter
rollcall_connections_closed_total{reason="client_left",code=""} 1
rollcall_connections_closed_total{reason="write_failed",code=""} 0
rollcall_connections_closed_total{reason="shutdown",code="1001"} 0
rollcall_connections_closed_total{reason="idle",code="1001"} 0
rollcall_connections_closed_total{reason="invalid_data",code="1007"} 0
rollcall_connections_closed_total{reason="policy_violation",code="1008"} 0
rollcall_connections_closed_total{reason="too_big",code="1009"} 1
rollcall_connections_closed_total{reason="too_slow",code="1013"} 0
rollcall_connections_closed_total{reason="other",code=""} 0
rollcall_connections_closed_total{reason="token_expired",code="1008"} 1
# HELP rollcall_connects_refused_total Connect attempts refused before a socket opened: bad vsn, origin not allowed, missing or invalid token, key in the abuse penalty box, too many connections from the address or on the node (counted at accept too), long-poll sessions opened too fast, a presence key too long or not printable.
# TYPE rollcall_connects_refused_total counter
rollcall_connects_refused_total{reason="version"} 1
rollcall_connects_refused_total{reason="origin"} 0
rollcall_connects_refused_total{reason="token"} 0
rollcall_connects_refused_total{reason="penalty"} 0
rollcall_connects_refused_total{reason="per_address"} 2
rollcall_connects_refused_total{reason="node_full"} 0
rollcall_connects_refused_total{reason="open_rate"} 0
rollcall_connects_refused_total{reason="key"} 0
# HELP rollcall_joins_refused_total Channel joins refused: topic not a room, not allowed by the token, room full, too many channels, malformed join payload.
# TYPE rollcall_joins_refused_total counter
rollcall_joins_refused_total{reason="unmatched"} 0
rollcall_joins_refused_total{reason="not_allowed"} 0
rollcall_joins_refused_total{reason="room_full"} 1
rollcall_joins_refused_total{reason="too_many_channels"} 0
rollcall_joins_refused_total{reason="bad_payload"} 1
rollcall_joins_refused_total{reason="bad_topic"} 0
rollcall_joins_refused_total{reason="handler"} 0
rollcall_joins_refused_total{reason="crashed"} 0
rollcall_joins_refused_total{reason="join_hook"} 0
# HELP rollcall_channels_joined Channels joined on this node (one per connection per topic).
# TYPE rollcall_channels_joined gauge
rollcall_channels_joined 11
# HELP rollcall_rooms_subscribed Topics with at least one channel joined on this node.
# TYPE rollcall_rooms_subscribed gauge
rollcall_rooms_subscribed 12
# HELP rollcall_rooms_with_presences Topics with at least one presence in this node's replica (cluster-wide).
# TYPE rollcall_rooms_with_presences gauge
rollcall_rooms_with_presences 15
# HELP rollcall_presences_local Presences tracked by connections of this node.
# TYPE rollcall_presences_local gauge
rollcall_presences_local 13
# HELP rollcall_presences_stored Presences in this node's replica of the cluster state, every node's (those of down nodes included).
# TYPE rollcall_presences_stored gauge
rollcall_presences_stored 14
# HELP rollcall_tracker_replicas Peer tracker replicas this node knows, by status.
# TYPE rollcall_tracker_replicas gauge
rollcall_tracker_replicas{status="up"} 16
rollcall_tracker_replicas{status="down"} 17
# HELP rollcall_frames_received_total Data frames received from clients.
# TYPE rollcall_frames_received_total counter
rollcall_frames_received_total 1
# HELP rollcall_frame_bytes_received_total Bytes of data frames received from clients.
# TYPE rollcall_frame_bytes_received_total counter
rollcall_frame_bytes_received_total 10
# HELP rollcall_frames_sent_total Data frames written to clients (replies, pushes, broadcasts).
# TYPE rollcall_frames_sent_total counter
rollcall_frames_sent_total 1
# HELP rollcall_frame_bytes_sent_total Bytes of data frames written to clients.
# TYPE rollcall_frame_bytes_sent_total counter
rollcall_frame_bytes_sent_total 3
# HELP rollcall_frames_encoded_total Frames the tracker encoded for fan-out (one per serializer per dispatch).
# TYPE rollcall_frames_encoded_total counter
rollcall_frames_encoded_total 18
# HELP rollcall_joins_total Channel joins accepted.
# TYPE rollcall_joins_total counter
rollcall_joins_total 3
# HELP rollcall_client_events_total Client events relayed to a room by clients of this node.
# TYPE rollcall_client_events_total counter
rollcall_client_events_total 4
# HELP rollcall_relayed_events_received_total Client events received from other nodes for subscribers here.
# TYPE rollcall_relayed_events_received_total counter
rollcall_relayed_events_received_total 5
# HELP rollcall_relayed_events_refused_total Events from other nodes refused, never delivered: a reserved name (phx_*, presence*, chan_reply_*), an invalid one, or undecodable.
# TYPE rollcall_relayed_events_refused_total counter
rollcall_relayed_events_refused_total 9
# HELP rollcall_rate_limited_total Client messages answered "rate limited".
# TYPE rollcall_rate_limited_total counter
rollcall_rate_limited_total 6
# HELP rollcall_pubsub_messages_sent_total Messages handed to the cluster transport (mesh: one per destination node; brokers: one per publish).
# TYPE rollcall_pubsub_messages_sent_total counter
rollcall_pubsub_messages_sent_total 21
# HELP rollcall_pubsub_messages_received_total Messages received from other nodes.
# TYPE rollcall_pubsub_messages_received_total counter
rollcall_pubsub_messages_received_total 22
# HELP rollcall_pubsub_messages_dropped_total Messages the cluster transport dropped: outbound (queue full, peer not connected, broker down) or inbound (subscriber queue full).
# TYPE rollcall_pubsub_messages_dropped_total counter
rollcall_pubsub_messages_dropped_total{direction="outbound"} 23
rollcall_pubsub_messages_dropped_total{direction="inbound"} 24
# HELP rollcall_pubsub_handshakes_refused_total Mesh handshakes refused (wrong secret, duplicate node name, wrong protocol, too slow).
# TYPE rollcall_pubsub_handshakes_refused_total counter
rollcall_pubsub_handshakes_refused_total 25
# HELP rollcall_pubsub_messages_rejected_total Messages from the cluster transport refused by signature checks, never delivered: unsigned, a bad signature (another secret, forged or altered), replayed (or addressed to another node, or out of the replay window), or from a sender not yet proven live (normal for a moment when a node starts).
# TYPE rollcall_pubsub_messages_rejected_total counter
rollcall_pubsub_messages_rejected_total{reason="unsigned"} 26
rollcall_pubsub_messages_rejected_total{reason="bad_signature"} 27
rollcall_pubsub_messages_rejected_total{reason="replayed"} 28
rollcall_pubsub_messages_rejected_total{reason="unproven"} 29
# HELP rollcall_pubsub_bytes_sent_total Payload bytes this node's tracker handed to the cluster transport (once per publish), by channel.
# TYPE rollcall_pubsub_bytes_sent_total counter
rollcall_pubsub_bytes_sent_total{channel="tracker"} 100
rollcall_pubsub_bytes_sent_total{channel="relay"} 7
# HELP rollcall_pubsub_bytes_received_total Payload bytes received from other nodes, by channel.
# TYPE rollcall_pubsub_bytes_received_total counter
rollcall_pubsub_bytes_received_total{channel="tracker"} 200
rollcall_pubsub_bytes_received_total{channel="relay"} 8
# HELP rollcall_tracker_transfers_total State transfers between replicas (answers to a transfer request), by direction and kind: a cached delta or the full state.
# TYPE rollcall_tracker_transfers_total counter
rollcall_tracker_transfers_total{direction="sent",kind="delta"} 1
rollcall_tracker_transfers_total{direction="sent",kind="full"} 2
rollcall_tracker_transfers_total{direction="received",kind="delta"} 3
rollcall_tracker_transfers_total{direction="received",kind="full"} 4
# HELP rollcall_join_hook_total Join hook calls by outcome: allowed, refused, failed (no usable answer; --join-hook-on-error decided).
# TYPE rollcall_join_hook_total counter
rollcall_join_hook_total{outcome="allowed"} 31
rollcall_join_hook_total{outcome="refused"} 32
rollcall_join_hook_total{outcome="failed"} 33
# HELP rollcall_api_broadcasts_total Events sent to rooms through POST /api/broadcast/{topic}.
# TYPE rollcall_api_broadcasts_total counter
rollcall_api_broadcasts_total 34
# HELP rollcall_webhook_events_total Webhook events by outcome: queued (by this node as the sender), delivered (2xx), dropped (retries exhausted).
# TYPE rollcall_webhook_events_total counter
rollcall_webhook_events_total{outcome="queued"} 35
rollcall_webhook_events_total{outcome="delivered"} 36
rollcall_webhook_events_total{outcome="dropped"} 37
# HELP rollcall_webhook_held_back_total Times a room's webhook events were held back because the queue was full (they go out, netted, once it drains).
# TYPE rollcall_webhook_held_back_total counter
rollcall_webhook_held_back_total 38
# HELP rollcall_webhook_requests_total Webhook requests by result: ok (2xx) or failed (no connection, timeout, other status).
# TYPE rollcall_webhook_requests_total counter
rollcall_webhook_requests_total{result="ok"} 39
rollcall_webhook_requests_total{result="failed"} 40
# HELP rollcall_webhook_queue Webhook events waiting on this node: to deliver (the sender) or held in case the sender fails.
# TYPE rollcall_webhook_queue gauge
rollcall_webhook_queue 41
# HELP rollcall_webhook_sender 1 on the node that sends the cluster's webhooks now, else 0.
# TYPE rollcall_webhook_sender gauge
rollcall_webhook_sender 1
"#;
}
