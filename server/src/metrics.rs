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

use crate::pubsub::Stats;
use crate::socket::{CloseReason, TOKEN_EXPIRED};
use crate::transport::{
    WireFrame, CLOSE_GOING_AWAY, CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
};

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

    fn label(self) -> &'static str {
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
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::Version,
        Refusal::Origin,
        Refusal::Token,
        Refusal::Penalty,
        Refusal::PerAddress,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Version => "version",
            Refusal::Origin => "origin",
            Refusal::Token => "token",
            Refusal::Penalty => "penalty",
            Refusal::PerAddress => "per_address",
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
}

impl JoinRefusal {
    const ALL: [JoinRefusal; 5] = [
        JoinRefusal::Unmatched,
        JoinRefusal::NotAllowed,
        JoinRefusal::RoomFull,
        JoinRefusal::TooManyChannels,
        JoinRefusal::BadPayload,
    ];

    fn label(self) -> &'static str {
        match self {
            JoinRefusal::Unmatched => "unmatched",
            JoinRefusal::NotAllowed => "not_allowed",
            JoinRefusal::RoomFull => "room_full",
            JoinRefusal::TooManyChannels => "too_many_channels",
            JoinRefusal::BadPayload => "bad_payload",
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

/// The counters of one node. Shared (behind an [`Arc`]) by the tracker handle, so every part
/// that holds a [`Tracker`](crate::Tracker) can count.
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
        let size = match frame {
            WireFrame::Text(t) => t.len(),
            WireFrame::Binary(b) => b.len(),
        };
        self.frames_out.inc();
        self.frame_bytes_out.add(size as u64);
    }

    /// Counts `bytes` handed to the pubsub on `channel` (unknown channels are not counted).
    pub fn pubsub_out(&self, channel: &str, bytes: usize) {
        if let Some(c) = CHANNELS
            .iter()
            .position(|c| *c == channel)
            .and_then(|i| self.pubsub_bytes_out.get(i))
        {
            c.add(bytes as u64);
        }
    }

    /// Counts `bytes` received from the pubsub on `channel`.
    pub fn pubsub_in(&self, channel: &str, bytes: usize) {
        if let Some(c) = CHANNELS
            .iter()
            .position(|c| *c == channel)
            .and_then(|i| self.pubsub_bytes_in.get(i))
        {
            c.add(bytes as u64);
        }
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

/// Writes the exposition text: one `# HELP` and `# TYPE` line per family, then its samples.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Label values here come from fixed lists; escape anyway, as the format asks.
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A counter family with one sample per `reason` label value.
    fn by_reason<'a>(
        &mut self,
        name: &str,
        help: &str,
        counts: impl IntoIterator<Item = (&'a str, &'a Counter)>,
    ) {
        self.family(name, "counter", help);
        for (reason, counter) in counts {
            self.sample(name, &[("reason", reason)], counter.get());
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Renders every metric of a node: its counters, the tracker's gauges and the pubsub's stats.
pub fn render(metrics: &Metrics, gauges: &TrackerGauges, pubsub: &Stats) -> String {
    let mut out = Exposition(String::with_capacity(4096));
    out.family(
        "rollcall_build_info",
        "gauge",
        "Always 1; the version label is the server's version.",
    );
    out.sample(
        "rollcall_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    out.family(
        "rollcall_connections",
        "gauge",
        "Client connections open now, by transport.",
    );
    for t in Transport::ALL {
        out.sample(
            "rollcall_connections",
            &[("transport", t.label())],
            metrics.connections_open(t),
        );
    }
    out.family(
        "rollcall_connections_opened_total",
        "counter",
        "Client connections opened, by transport.",
    );
    for t in Transport::ALL {
        let n = metrics
            .connections_opened
            .get(t.index())
            .map_or(0, Counter::get);
        out.sample(
            "rollcall_connections_opened_total",
            &[("transport", t.label())],
            n,
        );
    }
    out.family(
        "rollcall_connections_closed_total",
        "counter",
        "Client connections ended, by reason and the close code the server sent (empty when none).",
    );
    for (i, (reason, code)) in CLOSE_REASONS.iter().enumerate() {
        let n = metrics.connections_closed.get(i).map_or(0, Counter::get);
        out.sample(
            "rollcall_connections_closed_total",
            &[("reason", reason), ("code", code)],
            n,
        );
    }

    out.by_reason(
        "rollcall_connects_refused_total",
        "Connect attempts refused before a socket opened: bad vsn, origin not allowed, missing or invalid token, key in the abuse penalty box, too many connections from the address.",
        Refusal::ALL.map(|why| (why.label(), &metrics.connects_refused[why as usize])),
    );
    out.by_reason(
        "rollcall_joins_refused_total",
        "Channel joins refused: topic not a room, not allowed by the token, room full, too many channels, malformed join payload.",
        JoinRefusal::ALL.map(|why| (why.label(), &metrics.joins_refused[why as usize])),
    );

    out.single(
        "rollcall_channels_joined",
        "gauge",
        "Channels joined on this node (one per connection per topic).",
        gauges.channels,
    );
    out.single(
        "rollcall_rooms_subscribed",
        "gauge",
        "Topics with at least one channel joined on this node.",
        gauges.rooms_subscribed,
    );
    out.single(
        "rollcall_rooms_with_presences",
        "gauge",
        "Topics with at least one presence in this node's replica (cluster-wide).",
        gauges.rooms_with_presences,
    );
    out.single(
        "rollcall_presences_local",
        "gauge",
        "Presences tracked by connections of this node.",
        gauges.presences_local,
    );
    out.single(
        "rollcall_presences_stored",
        "gauge",
        "Presences in this node's replica of the cluster state, every node's (those of down nodes included).",
        gauges.presences_stored,
    );
    out.family(
        "rollcall_tracker_replicas",
        "gauge",
        "Peer tracker replicas this node knows, by status.",
    );
    out.sample(
        "rollcall_tracker_replicas",
        &[("status", "up")],
        gauges.replicas_up,
    );
    out.sample(
        "rollcall_tracker_replicas",
        &[("status", "down")],
        gauges.replicas_down,
    );

    let counters: [(&str, &str, u64); 9] = [
        (
            "rollcall_frames_received_total",
            "Data frames received from clients.",
            metrics.frames_in.get(),
        ),
        (
            "rollcall_frame_bytes_received_total",
            "Bytes of data frames received from clients.",
            metrics.frame_bytes_in.get(),
        ),
        (
            "rollcall_frames_sent_total",
            "Data frames written to clients (replies, pushes, broadcasts).",
            metrics.frames_out.get(),
        ),
        (
            "rollcall_frame_bytes_sent_total",
            "Bytes of data frames written to clients.",
            metrics.frame_bytes_out.get(),
        ),
        (
            "rollcall_frames_encoded_total",
            "Frames the tracker encoded for fan-out (one per serializer per dispatch).",
            gauges.frames_encoded,
        ),
        (
            "rollcall_joins_total",
            "Channel joins accepted.",
            metrics.joins.get(),
        ),
        (
            "rollcall_client_events_total",
            "Client events relayed to a room by clients of this node.",
            metrics.client_events.get(),
        ),
        (
            "rollcall_relayed_events_received_total",
            "Client events received from other nodes for subscribers here.",
            metrics.relayed_events_in.get(),
        ),
        (
            "rollcall_rate_limited_total",
            "Client messages answered \"rate limited\".",
            metrics.rate_limited.get(),
        ),
    ];
    for (name, help, value) in counters {
        out.single(name, "counter", help, value);
    }

    out.single(
        "rollcall_pubsub_messages_sent_total",
        "counter",
        "Messages handed to the cluster transport (mesh: one per destination node; brokers: one per publish).",
        pubsub.sent,
    );
    out.single(
        "rollcall_pubsub_messages_received_total",
        "counter",
        "Messages received from other nodes.",
        pubsub.received,
    );
    out.family(
        "rollcall_pubsub_messages_dropped_total",
        "counter",
        "Messages the cluster transport dropped: outbound (queue full, peer not connected, broker down) or inbound (subscriber queue full).",
    );
    out.sample(
        "rollcall_pubsub_messages_dropped_total",
        &[("direction", "outbound")],
        pubsub.dropped_outbound,
    );
    out.sample(
        "rollcall_pubsub_messages_dropped_total",
        &[("direction", "inbound")],
        pubsub.dropped_inbound,
    );
    out.single(
        "rollcall_pubsub_handshakes_refused_total",
        "counter",
        "Mesh handshakes refused (wrong secret, duplicate node name, wrong protocol, too slow).",
        pubsub.refused,
    );
    out.family(
        "rollcall_pubsub_bytes_sent_total",
        "counter",
        "Payload bytes this node's tracker handed to the cluster transport (once per publish), by channel.",
    );
    for (i, channel) in CHANNELS.iter().enumerate() {
        let n = metrics.pubsub_bytes_out.get(i).map_or(0, Counter::get);
        out.sample(
            "rollcall_pubsub_bytes_sent_total",
            &[("channel", channel)],
            n,
        );
    }
    out.family(
        "rollcall_pubsub_bytes_received_total",
        "counter",
        "Payload bytes received from other nodes, by channel.",
    );
    for (i, channel) in CHANNELS.iter().enumerate() {
        let n = metrics.pubsub_bytes_in.get(i).map_or(0, Counter::get);
        out.sample(
            "rollcall_pubsub_bytes_received_total",
            &[("channel", channel)],
            n,
        );
    }
    out.family(
        "rollcall_tracker_transfers_total",
        "counter",
        "State transfers between replicas (answers to a transfer request), by direction and kind: a cached delta or the full state.",
    );
    for (direction, kind, c) in [
        ("sent", "delta", &metrics.transfers_delta_out),
        ("sent", "full", &metrics.transfers_full_out),
        ("received", "delta", &metrics.transfers_delta_in),
        ("received", "full", &metrics.transfers_full_in),
    ] {
        out.sample(
            "rollcall_tracker_transfers_total",
            &[("direction", direction), ("kind", kind)],
            c.get(),
        );
    }
    out.0
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
}
