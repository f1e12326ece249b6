//! Server configuration: every knob with its default, as plain data (the state a running server
//! keeps, such as the abuse penalty box, lives with the server, not here). The `rollcall` binary
//! fills it from flags and `ROLLCALL_*` environment variables; an embedding app builds it in
//! code.

use std::path::PathBuf;
use std::time::Duration;

use crate::channel::TopicPattern;
use crate::security::auth::Verifier;
use crate::security::limits::RateLimit;
use crate::security::origin::OriginPattern;

/// Everything a rollcall node needs to know to serve. [`Config::default`] runs a single node
/// with the Phoenix defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name, reported by `/healthz`.
    pub node_name: String,
    /// Directory served at `/` (the demo page); `None` serves no static files.
    pub static_dir: Option<PathBuf>,
    /// Topics that are presence rooms (`room:*` by default).
    pub rooms: Vec<TopicPattern>,
    /// A connection that sends nothing for this long is closed (Phoenix: 60 s).
    pub idle_timeout: Duration,
    /// Largest inbound WebSocket message in bytes; bigger ones close the socket with 1009.
    pub max_frame_size: usize,
    /// Largest presence meta (serialized JSON) in bytes; bigger ones get `meta too large`.
    pub max_meta_size: usize,
    /// Most channels one connection may have joined at once (Phoenix: 100).
    pub max_channels: usize,
    /// Most bytes queued for one connection (each frame counts its length plus
    /// [`FRAME_COST`](crate::outbox::FRAME_COST), until written); a client that falls further
    /// behind is closed with 1013 (it reconnects and gets a fresh `presence_state`).
    pub max_queued_bytes: usize,
    /// A connection must send a complete request head within this long of being accepted, or
    /// of its previous response (the keep-alive idle timeout); else it is closed. Applies to
    /// [`Server::serve`](crate::Server::serve), not to a router an app serves itself.
    pub header_read_timeout: Duration,
    /// Long-poll window: how long a poll waits for messages before answering 204 (Phoenix: 10 s).
    /// A session with no poll for 1.5 × this is closed.
    pub longpoll_window: Duration,
    /// How the tracker replicates presence with other nodes (timing; the transport is
    /// chosen by the [`pubsub`](crate::pubsub) adapter given to the builder).
    pub cluster: ClusterSettings,
    /// Tokens, origins and per-connection limits (see [`Security`]).
    pub security: Security,
    /// Serve `GET /metrics` (Prometheus text format; aggregate counts only, no topics or keys).
    pub metrics: bool,
    /// Ask a backend before every join (see [`JoinHookSettings`]); `None`: no hook.
    pub join_hook: Option<JoinHookSettings>,
    /// Tell a backend of presence changes (see [`WebhookSettings`]); `None`: no webhooks.
    pub webhook: Option<WebhookSettings>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: default_node_name(),
            static_dir: None,
            rooms: vec![TopicPattern::parse("room:*")],
            idle_timeout: Duration::from_secs(60),
            max_frame_size: 1024 * 1024,
            max_meta_size: 4 * 1024,
            max_channels: 100,
            max_queued_bytes: 4 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(5),
            longpoll_window: Duration::from_secs(10),
            cluster: ClusterSettings::default(),
            security: Security::default(),
            metrics: true,
            join_hook: None,
            webhook: None,
        }
    }
}

/// Tracker replication timing (and a test switch). The periods default to Phoenix's; `coalesce` is ours: local
/// changes go to other nodes at once, batched over at most this window, instead of waiting for
/// the next heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Heartbeat interval (Phoenix: 1.5 s).
    pub broadcast_period: Duration,
    /// A node silent this long is down: its members leave (Phoenix: 30 s).
    pub down_period: Duration,
    /// A node silent this long is forgotten for good (Phoenix: 20 min).
    pub permdown_period: Duration,
    /// Longest wait before a local change is sent to other nodes; changes within one window go
    /// in one message. Zero sends every change on its own.
    pub coalesce: Duration,
    /// Longest time a room's presence diffs are held so that a burst of changes reaches its
    /// local subscribers as one `presence_diff`. A room that sent nothing within its window
    /// gets a change at once; the window is `diff_window_per_member` per local subscriber up
    /// to this cap. Zero sends every change on its own.
    pub diff_window: Duration,
    /// A room's diff window per local subscriber (10 µs: a busy room's diffs cost about one
    /// frame per 10 µs, whatever its size, until the cap is reached).
    pub diff_window_per_member: Duration,
    /// Tracker shards: tasks that each own the topics hashing to them, so presence work runs on
    /// every core. Every node of a cluster must run the same number (shard `i` replicates with
    /// shard `i` of each peer; a peer with another pool size is refused and logged). The
    /// default is the number of cores of the machine, so set it explicitly when nodes differ.
    pub tracker_shards: usize,
    /// Test-only: wrap the transport in [`Partitioned`](crate::pubsub::Partitioned) and serve
    /// `POST /_fault/partition` (cuts this node off from a peer).
    pub fault_injection: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            broadcast_period: Duration::from_millis(1_500),
            down_period: Duration::from_millis(30_000),
            permdown_period: Duration::from_millis(1_200_000),
            coalesce: Duration::from_millis(10),
            diff_window: Duration::from_millis(20),
            diff_window_per_member: Duration::from_micros(10),
            tracker_shards: default_tracker_shards(),
            fault_injection: false,
        }
    }
}

/// The number of cores this process may use (1 if unknown): the default tracker pool size.
pub fn default_tracker_shards() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Who may connect and how hard they may push. The default is open mode: no token required,
/// every origin allowed, the rate limits below.
#[derive(Debug, Clone)]
pub struct Security {
    /// Verifies connect tokens; `None` runs in open mode (anyone may claim any `user_id`).
    pub verifier: Option<Verifier>,
    /// Origins allowed to open a socket; empty allows every origin.
    pub allowed_origins: Vec<OriginPattern>,
    /// Every message a connection sends (joins, leaves, events; not heartbeats) takes a token
    /// from this, except that joins up to the channel limit first use an allowance of their own
    /// (`max_channels` tokens, refilled at this rate).
    pub event_rate: RateLimit,
    /// Every `track` (meta update) also takes a token from this.
    pub meta_rate: RateLimit,
    /// This many rate-limited messages in a row close the connection with 1008.
    pub max_limited_in_a_row: u32,
    /// Most distinct presence keys in one room; a join of a new key beyond gets `room full`.
    pub max_room_members: Option<usize>,
    /// After a connection is closed for abuse (1008), its presence key may not reconnect for
    /// this long (HTTP 429); zero turns it off.
    pub abuse_penalty: Duration,
    /// Most open connections from one client address, counted as for `max_conns`: at accept,
    /// before a byte is read, TCP connections (upgraded WebSockets included) plus long-poll
    /// sessions; beyond, a new connection is closed at once. With `trust_forwarded_for` the
    /// address is only known from the request, so the count is taken at the connect check
    /// instead (a connect beyond gets HTTP 429). 0 = unlimited (the default: behind a proxy
    /// every client has the proxy's address). IPv6 clients count per /64.
    pub max_conns_per_ip: usize,
    /// Most open connections of the node, counted at accept before a byte is read (TCP
    /// connections, upgraded WebSockets included, plus long-poll sessions); beyond, a new
    /// connection is closed at once. `None`: 90 % of the process's open-file limit (read at
    /// start where the system tells it), so that accepting never runs out of descriptors.
    pub max_conns: Option<usize>,
    /// Long-poll sessions one client address may open, sustained (token bucket; a rate of 0 =
    /// unlimited). Each session is a socket machine; opening costs what a WebSocket connect
    /// does, without its TCP handshake.
    pub longpoll_open_rate: RateLimit,
    /// API requests (`/api/presence/...` and `/api/broadcast/...`) per client address (a rate
    /// of 0 = unlimited): a listing of a big room is the most expensive read the node serves,
    /// and a broadcast is a frame to every member.
    pub api_rate: RateLimit,
    /// Take the client address from the last `X-Forwarded-For` entry (the one the proxy in
    /// front appended) instead of the TCP peer. Only safe when clients can reach rollcall
    /// through that proxy alone: otherwise anyone can claim any address.
    pub trust_forwarded_for: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            verifier: None,
            allowed_origins: Vec::new(),
            event_rate: RateLimit {
                per_second: 50.0,
                burst: 100,
            },
            meta_rate: RateLimit {
                per_second: 5.0,
                burst: 10,
            },
            max_limited_in_a_row: 50,
            max_room_members: None,
            abuse_penalty: Duration::from_secs(10),
            max_conns_per_ip: 0,
            max_conns: None,
            longpoll_open_rate: RateLimit {
                per_second: 5.0,
                burst: 20,
            },
            api_rate: RateLimit {
                per_second: 20.0,
                burst: 40,
            },
            trust_forwarded_for: false,
        }
    }
}

/// The entries of a comma-separated flag value, trimmed, blanks skipped.
pub fn comma_separated(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// Reads `--rooms`: topic patterns such as `room:*,lobby`.
pub fn parse_rooms(list: &str) -> Vec<TopicPattern> {
    comma_separated(list).map(TopicPattern::parse).collect()
}

/// Reads `--allowed-origins`: origin patterns such as `https://*.example.com,localhost:3000`.
pub fn parse_origins(list: &str) -> Vec<OriginPattern> {
    comma_separated(list).map(OriginPattern::parse).collect()
}

/// The host name (from `$HOSTNAME` or the kernel) reduced to `A-Z a-z 0-9 . _ -`, plus a random
/// suffix, so two nodes started on one host without `--node` still get distinct names.
pub fn default_node_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let host = if host.is_empty() {
        "rollcall".to_string()
    } else {
        host
    };
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// What a join gets when the join hook cannot answer (down, an error status, a timeout, an
/// answer that does not parse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookFailure {
    /// Refuse the join (`{"reason": "join hook unavailable"}`).
    Deny,
    /// Let the join through, without hook meta.
    Allow,
}

impl std::str::FromStr for HookFailure {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(HookFailure::Deny),
            "allow" => Ok(HookFailure::Allow),
            other => Err(format!("{other:?}: expected deny or allow")),
        }
    }
}

/// The join hook: before accepting a join, the node `POST`s
/// `{"topic","key","params","claims","node"}` (signed like webhooks) to `url`; the answer
/// `{"allow": true, "meta": {...}}` or `{"allow": false, "reason": "..."}` decides.
#[derive(Clone)]
pub struct JoinHookSettings {
    /// Where to ask (`http://` or `https://`).
    pub url: String,
    /// Signs each request (header `x-rollcall-signature`).
    pub secret: String,
    /// The longest a join waits for the answer.
    pub timeout: Duration,
    /// What a join gets when the hook cannot answer.
    pub on_error: HookFailure,
}

impl JoinHookSettings {
    /// A hook at `url` signed with `secret`: 2 s timeout, joins refused when it fails.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        JoinHookSettings {
            url: url.into(),
            secret: secret.into(),
            timeout: Duration::from_millis(2_000),
            on_error: HookFailure::Deny,
        }
    }
}

impl std::fmt::Debug for JoinHookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHookSettings")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

/// Webhooks: the cluster `POST`s batches of presence events (`member_added`,
/// `member_removed`, `room_occupied`, `room_vacated`) to `url`, signed with `secret`, each
/// event once per cluster (at least once through a node failure).
#[derive(Clone)]
pub struct WebhookSettings {
    /// Where to send (`http://` or `https://`).
    pub url: String,
    /// Signs each request (header `x-rollcall-signature`).
    pub secret: String,
    /// A key that leaves and comes back within this long (a page reload) sends nothing; every
    /// `member_removed` waits this long.
    pub grace: Duration,
    /// The longest one request may take before it counts as failed.
    pub timeout: Duration,
    /// Most events in one request.
    pub max_batch: usize,
    /// Most events waiting to be delivered; changes beyond wait (counted in `/metrics`) and go
    /// out, netted, once the queue drains.
    pub max_queue: usize,
    /// A batch that keeps failing is retried, with backoff, for this long; then its events are
    /// dropped (counted in `/metrics`, logged).
    pub retry_for: Duration,
}

impl WebhookSettings {
    /// Webhooks to `url` signed with `secret`: 5 s grace, 5 s timeout, batches of 100, 10 000
    /// queued, retried for 10 minutes.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        WebhookSettings {
            url: url.into(),
            secret: secret.into(),
            grace: Duration::from_millis(5_000),
            timeout: Duration::from_millis(5_000),
            max_batch: 100,
            max_queue: 10_000,
            retry_for: Duration::from_secs(600),
        }
    }
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("grace", &self.grace)
            .field("timeout", &self.timeout)
            .field("max_batch", &self.max_batch)
            .field("max_queue", &self.max_queue)
            .field("retry_for", &self.retry_for)
            .finish_non_exhaustive()
    }
}
