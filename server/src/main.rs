//! The `rollcall` binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// jemalloc rather than the system allocator: glibc's per-thread arenas keep what connections
/// freed as resident memory (about 4 KiB per connection at 10,000 idle connections, measured
/// in BENCHMARKS.md); jemalloc's size classes fragment less and its background thread gives
/// freed pages back.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use rollcall_server::config::{comma_separated, parse_origins, parse_rooms};
use rollcall_server::{Config, Server};

/// Shown by `rollcall --help`, so the top-level help names every flag too.
const SERVE_FLAGS: &str = "\
`rollcall serve` flags (each also an environment variable; `rollcall serve --help` for details):
  --host HOST                 ROLLCALL_HOST                listen address [127.0.0.1]
  --port PORT                 ROLLCALL_PORT                listen port, 0 = any free port [4000]
  --static-dir DIR            ROLLCALL_STATIC_DIR          demo page served at / [repository www/]
  --rooms PATTERNS            ROLLCALL_ROOMS               presence room topics, comma-separated [room:*]
  --idle-timeout-ms MS        ROLLCALL_IDLE_TIMEOUT_MS     close silent connections [60000]
  --max-frame-size BYTES      ROLLCALL_MAX_FRAME_SIZE      largest inbound message, else close 1009 [1048576]
  --max-meta-size BYTES       ROLLCALL_MAX_META_SIZE       largest presence meta [4096]
  --max-channels N            ROLLCALL_MAX_CHANNELS        channels per connection [100]
  --max-queued-bytes BYTES    ROLLCALL_MAX_QUEUED_BYTES    bytes queued for a slow client, else close 1013 [4194304]
  --header-read-timeout-ms MS ROLLCALL_HEADER_READ_TIMEOUT_MS  request head deadline, also the keep-alive idle timeout [5000]
  --longpoll-window-ms MS     ROLLCALL_LONGPOLL_WINDOW_MS  long-poll window; sessions expire after 1.5x [10000]
  --node NAME (--node-name)   ROLLCALL_NODE_NAME           node name, unique in the cluster [host name + random suffix]
  --metrics true|false        ROLLCALL_METRICS             serve GET /metrics (Prometheus text) [true]

security (see docs/security.md):
  --secret SECRET[,SECRET]    ROLLCALL_SECRET              HS256 token secret(s), several for rotation [none: open mode]
  --allowed-origins LIST      ROLLCALL_ALLOWED_ORIGINS     browser origins allowed, e.g. https://*.example.com [any]
  --event-rate PER_S          ROLLCALL_EVENT_RATE          messages per second per connection, 0 = unlimited [50]
  --event-burst N             ROLLCALL_EVENT_BURST         message burst per connection [100]
  --meta-rate PER_S           ROLLCALL_META_RATE           meta updates (track) per second per connection, 0 = unlimited [5]
  --meta-burst N              ROLLCALL_META_BURST          meta update burst per connection [10]
  --rate-limit-close-after N  ROLLCALL_RATE_LIMIT_CLOSE_AFTER  rate-limited messages in a row before close 1008, 0 = never [50]
  --max-room-members N        ROLLCALL_MAX_ROOM_MEMBERS    distinct keys per room, else \"room full\" [unlimited]
  --abuse-penalty-ms MS       ROLLCALL_ABUSE_PENALTY_MS    after a 1008 close, that key's reconnects get 429 [10000]
  --max-conns-per-ip N        ROLLCALL_MAX_CONNS_PER_IP    open connections per client address (IPv6: per /64), counted at accept, 0 = unlimited [0]
  --max-conns N               ROLLCALL_MAX_CONNS           open connections of the node, counted at accept [90% of the open-file limit]
  --longpoll-open-rate PER_S  ROLLCALL_LONGPOLL_OPEN_RATE  long-poll sessions opened per second per address, 0 = unlimited [5]
  --longpoll-open-burst N     ROLLCALL_LONGPOLL_OPEN_BURST long-poll session opening burst per address [20]
  --api-rate PER_S            ROLLCALL_API_RATE            API requests (presence, broadcast) per second per address, 0 = unlimited [20]
  --api-burst N               ROLLCALL_API_BURST           API burst per address [40]
  --trust-forwarded-for       ROLLCALL_TRUST_FORWARDED_FOR client address from the proxy's X-Forwarded-For entry [off]

`rollcall token --secret S --sub alice [--rooms 'room:*'] [--ttl 1h] [--meta JSON]` prints a token.";

/// Phoenix-style presence server: Phoenix Channels over WebSocket and long-poll, presence rooms.
#[derive(Parser, Debug)]
#[command(name = "rollcall", version, about, after_help = format!("{SERVE_FLAGS}\n{CLUSTER_FLAGS}\n{HOOK_FLAGS}"))]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a rollcall node.
    Serve(Box<ServeArgs>),
    /// Print an HS256 token for development and tests (a backend mints its own in production).
    Token(TokenArgs),
}

#[derive(clap::Args, Debug)]
struct SecurityArgs {
    /// HS256 secret(s) for connect tokens: comma-separated or repeated; any of them verifies
    /// (rotation). Without one the server runs in open mode. Prefer the environment variable.
    #[arg(
        long = "secret",
        env = "ROLLCALL_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    secrets: Vec<String>,
    /// Browser origins allowed to connect, comma-separated (`https://app.example.com`,
    /// `https://*.example.com`, `*.example.com`); requests without Origin pass. Default: any.
    #[arg(long, env = "ROLLCALL_ALLOWED_ORIGINS", default_value = "")]
    allowed_origins: String,
    /// Messages per second one connection may send, sustained (0 = unlimited).
    #[arg(long, env = "ROLLCALL_EVENT_RATE", default_value_t = 50.0)]
    event_rate: f64,
    /// Messages one connection may send at once after a quiet spell.
    #[arg(long, env = "ROLLCALL_EVENT_BURST", default_value_t = 100)]
    event_burst: u32,
    /// Meta updates (`track`) per second per connection, sustained (0 = unlimited).
    #[arg(long, env = "ROLLCALL_META_RATE", default_value_t = 5.0)]
    meta_rate: f64,
    /// Meta updates one connection may send at once.
    #[arg(long, env = "ROLLCALL_META_BURST", default_value_t = 10)]
    meta_burst: u32,
    /// Close a connection (1008) after this many rate-limited messages in a row (0 = never).
    #[arg(long, env = "ROLLCALL_RATE_LIMIT_CLOSE_AFTER", default_value_t = 50)]
    rate_limit_close_after: u32,
    /// Most distinct presence keys in one room; a new key's join beyond gets "room full".
    #[arg(long, env = "ROLLCALL_MAX_ROOM_MEMBERS")]
    max_room_members: Option<usize>,
    /// After a 1008 abuse close, refuse that presence key's reconnects (HTTP 429) this long (0 = off).
    #[arg(long, env = "ROLLCALL_ABUSE_PENALTY_MS", default_value_t = 10_000)]
    abuse_penalty_ms: u64,
    /// Most open connections from one client address (TCP connections, WebSockets included,
    /// plus long-poll sessions), IPv6 counted per /64, counted at accept before any byte is
    /// read; beyond, a connection is closed at once (0 = unlimited: behind a proxy every client
    /// has the proxy's address, see --trust-forwarded-for).
    #[arg(long, env = "ROLLCALL_MAX_CONNS_PER_IP", default_value_t = 0)]
    max_conns_per_ip: usize,
    /// Most open connections of the node, counted as for --max-conns-per-ip. Default: 90 % of
    /// the process's open-file limit.
    #[arg(long, env = "ROLLCALL_MAX_CONNS")]
    max_conns: Option<usize>,
    /// Long-poll sessions one address may open per second, sustained (0 = unlimited).
    #[arg(long, env = "ROLLCALL_LONGPOLL_OPEN_RATE", default_value_t = 5.0)]
    longpoll_open_rate: f64,
    /// Long-poll sessions one address may open at once.
    #[arg(long, env = "ROLLCALL_LONGPOLL_OPEN_BURST", default_value_t = 20)]
    longpoll_open_burst: u32,
    /// Presence API requests per second per address, sustained (0 = unlimited).
    #[arg(long, env = "ROLLCALL_API_RATE", default_value_t = 20.0)]
    api_rate: f64,
    /// Presence API requests one address may make at once.
    #[arg(long, env = "ROLLCALL_API_BURST", default_value_t = 40)]
    api_burst: u32,
    /// Take the client address from the last X-Forwarded-For entry (appended by the proxy in
    /// front). Only when clients cannot reach rollcall except through that proxy.
    #[arg(long, env = "ROLLCALL_TRUST_FORWARDED_FOR")]
    trust_forwarded_for: bool,
}

impl SecurityArgs {
    fn into_security(self) -> rollcall_server::config::Security {
        use rollcall_server::config::Security;
        use rollcall_server::security::{auth::Verifier, limits::RateLimit};
        Security {
            verifier: Verifier::new(&self.secrets),
            allowed_origins: parse_origins(&self.allowed_origins),
            event_rate: RateLimit {
                per_second: self.event_rate,
                burst: self.event_burst,
            },
            meta_rate: RateLimit {
                per_second: self.meta_rate,
                burst: self.meta_burst,
            },
            max_limited_in_a_row: self.rate_limit_close_after,
            max_room_members: self.max_room_members,
            abuse_penalty: Duration::from_millis(self.abuse_penalty_ms),
            max_conns_per_ip: self.max_conns_per_ip,
            max_conns: self.max_conns,
            longpoll_open_rate: RateLimit {
                per_second: self.longpoll_open_rate,
                burst: self.longpoll_open_burst,
            },
            api_rate: RateLimit {
                per_second: self.api_rate,
                burst: self.api_burst,
            },
            trust_forwarded_for: self.trust_forwarded_for,
        }
    }
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// The secret to sign with (the first one, if a comma-separated list is given).
    #[arg(long, env = "ROLLCALL_SECRET", hide_env_values = true)]
    secret: String,
    /// The presence key.
    #[arg(long)]
    sub: String,
    /// Topic patterns the token may join, comma-separated (default: every room).
    #[arg(long)]
    rooms: Option<String>,
    /// Lifetime: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Server-trusted meta fields, a JSON object (e.g. '{"name":"Alice"}').
    #[arg(long)]
    meta: Option<String>,
}

fn mint_token(args: TokenArgs) -> Result<String, Box<dyn std::error::Error>> {
    use rollcall_server::security::auth;
    let secret = args.secret.split(',').next().unwrap_or_default();
    if secret.is_empty() {
        return Err("--secret must not be empty".into());
    }
    let now = auth::unix_now();
    let meta = match args.meta {
        None => None,
        Some(text) => match serde_json::from_str(&text)? {
            serde_json::Value::Object(map) => Some(map),
            _ => return Err("--meta must be a JSON object".into()),
        },
    };
    let claims = auth::Claims {
        sub: args.sub,
        exp: Some(now.saturating_add(auth::parse_ttl(&args.ttl)?)),
        nbf: None,
        iat: Some(now),
        rooms: args
            .rooms
            .map(|r| comma_separated(&r).map(String::from).collect()),
        meta,
    };
    Ok(auth::mint(secret, &claims)?)
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ROLLCALL_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free port; the actual address is printed).
    #[arg(long, env = "ROLLCALL_PORT", default_value_t = 4000)]
    port: u16,
    /// Directory served at `/` (the demo page).
    #[arg(long, env = "ROLLCALL_STATIC_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../www"))]
    static_dir: PathBuf,
    /// Presence room topics, comma-separated: exact topics or prefixes ending in `*`.
    #[arg(long, env = "ROLLCALL_ROOMS", default_value = "room:*")]
    rooms: String,
    /// Close a connection that sent nothing (not even a heartbeat) for this many milliseconds.
    #[arg(long, env = "ROLLCALL_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Largest inbound WebSocket message in bytes (bigger closes the socket with 1009).
    #[arg(long, env = "ROLLCALL_MAX_FRAME_SIZE", default_value_t = 1024 * 1024)]
    max_frame_size: usize,
    /// Largest presence meta (serialized JSON) in bytes (bigger gets "meta too large").
    #[arg(long, env = "ROLLCALL_MAX_META_SIZE", default_value_t = 4096)]
    max_meta_size: usize,
    /// Most channels one connection may join ("too many channels joined" beyond).
    #[arg(long, env = "ROLLCALL_MAX_CHANNELS", default_value_t = 100)]
    max_channels: usize,
    /// Most bytes queued for one slow client (each frame counts its length plus 64) before it
    /// is closed with 1013.
    #[arg(long, env = "ROLLCALL_MAX_QUEUED_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_queued_bytes: usize,
    /// A connection must send a complete request head within this many milliseconds of being
    /// accepted or of its previous response (the keep-alive idle timeout), else it is closed.
    #[arg(long, env = "ROLLCALL_HEADER_READ_TIMEOUT_MS", default_value_t = 5_000)]
    header_read_timeout_ms: u64,
    /// Long-poll window in milliseconds (a poll waits this long; sessions expire after 1.5x).
    #[arg(long, env = "ROLLCALL_LONGPOLL_WINDOW_MS", default_value_t = 10_000)]
    longpoll_window_ms: u64,
    /// This node's name, unique in the cluster (1-128 of A-Z a-z 0-9 . _ -); defaults to the
    /// host name plus a random suffix.
    #[arg(long = "node", visible_alias = "node-name", env = "ROLLCALL_NODE_NAME")]
    node_name: Option<String>,
    /// Serve `GET /metrics` (Prometheus text format: aggregate counts, no topics or keys).
    #[arg(long, env = "ROLLCALL_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    metrics: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    hooks: HookArgs,
}

/// Shown by `rollcall --help` after [`CLUSTER_FLAGS`].
const HOOK_FLAGS: &str = "\
Backend hooks (see docs/webhooks.md):
  --webhook-url URL               ROLLCALL_WEBHOOK_URL            POST presence events here (http or https)
  --webhook-secret SECRET         ROLLCALL_WEBHOOK_SECRET         signs webhook and join hook requests (required with either URL)
  --webhook-grace-ms MS           ROLLCALL_WEBHOOK_GRACE_MS       a key back within this long (a reload) sends nothing [5000]
  --webhook-timeout-ms MS         ROLLCALL_WEBHOOK_TIMEOUT_MS     one webhook request's time limit [5000]
  --webhook-batch N               ROLLCALL_WEBHOOK_BATCH          most events per request [100]
  --webhook-queue N               ROLLCALL_WEBHOOK_QUEUE          most events waiting; more wait, counted, and go out netted [10000]
  --webhook-retry-ms MS           ROLLCALL_WEBHOOK_RETRY_MS       a failing batch is retried this long, then dropped [600000]
  --join-hook-url URL             ROLLCALL_JOIN_HOOK_URL          ask this backend before every join
  --join-hook-timeout-ms MS       ROLLCALL_JOIN_HOOK_TIMEOUT_MS   the longest a join waits for it [2000]
  --join-hook-on-error deny|allow ROLLCALL_JOIN_HOOK_ON_ERROR     when the hook cannot answer [deny]";

#[derive(clap::Args, Debug)]
struct HookArgs {
    /// POST presence events (member_added, member_removed, room_occupied, room_vacated) to
    /// this URL, once per cluster.
    #[arg(long, env = "ROLLCALL_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Signs webhook and join hook requests (header x-rollcall-signature). Prefer the
    /// environment variable.
    #[arg(long, env = "ROLLCALL_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// A key that leaves and comes back within this many milliseconds sends nothing.
    #[arg(long, env = "ROLLCALL_WEBHOOK_GRACE_MS", default_value_t = 5_000)]
    webhook_grace_ms: u64,
    /// One webhook request's time limit in milliseconds.
    #[arg(long, env = "ROLLCALL_WEBHOOK_TIMEOUT_MS", default_value_t = 5_000)]
    webhook_timeout_ms: u64,
    /// Most events in one webhook request.
    #[arg(long, env = "ROLLCALL_WEBHOOK_BATCH", default_value_t = 100)]
    webhook_batch: usize,
    /// Most webhook events waiting for delivery.
    #[arg(long, env = "ROLLCALL_WEBHOOK_QUEUE", default_value_t = 10_000)]
    webhook_queue: usize,
    /// A failing webhook batch is retried, with backoff, for this many milliseconds.
    #[arg(long, env = "ROLLCALL_WEBHOOK_RETRY_MS", default_value_t = 600_000)]
    webhook_retry_ms: u64,
    /// Ask this URL before accepting every join.
    #[arg(long, env = "ROLLCALL_JOIN_HOOK_URL")]
    join_hook_url: Option<String>,
    /// The longest a join waits for the join hook, in milliseconds.
    #[arg(long, env = "ROLLCALL_JOIN_HOOK_TIMEOUT_MS", default_value_t = 2_000)]
    join_hook_timeout_ms: u64,
    /// What a join gets when the join hook cannot answer: deny or allow.
    #[arg(long, env = "ROLLCALL_JOIN_HOOK_ON_ERROR", default_value = "deny")]
    join_hook_on_error: rollcall_server::config::HookFailure,
}

impl HookArgs {
    /// The webhook and join hook settings; an error says what to fix.
    fn settings(
        self,
    ) -> Result<
        (
            Option<rollcall_server::config::WebhookSettings>,
            Option<rollcall_server::config::JoinHookSettings>,
        ),
        StartError,
    > {
        use rollcall_server::config::{JoinHookSettings, WebhookSettings};
        use rollcall_server::outbound::Endpoint;
        let secret = self.webhook_secret.filter(|s| !s.is_empty());
        let need_secret = |flag: &str| {
            StartError(format!(
                "{flag} needs --webhook-secret (or ROLLCALL_WEBHOOK_SECRET): the backend checks \
                 the signature to know a request came from rollcall"
            ))
        };
        let webhook = match self.webhook_url.filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => {
                Endpoint::parse(&url).map_err(|e| StartError(format!("--webhook-url: {e}")))?;
                let secret = secret.clone().ok_or_else(|| need_secret("--webhook-url"))?;
                if self.webhook_batch == 0 || self.webhook_queue == 0 {
                    return Err(StartError(
                        "--webhook-batch and --webhook-queue must be at least 1".into(),
                    ));
                }
                Some(WebhookSettings {
                    grace: Duration::from_millis(self.webhook_grace_ms),
                    timeout: Duration::from_millis(self.webhook_timeout_ms.max(1)),
                    max_batch: self.webhook_batch,
                    max_queue: self.webhook_queue,
                    retry_for: Duration::from_millis(self.webhook_retry_ms),
                    ..WebhookSettings::new(url, secret)
                })
            }
        };
        let join_hook = match self.join_hook_url.filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => {
                Endpoint::parse(&url).map_err(|e| StartError(format!("--join-hook-url: {e}")))?;
                let secret = secret.ok_or_else(|| need_secret("--join-hook-url"))?;
                Some(JoinHookSettings {
                    timeout: Duration::from_millis(self.join_hook_timeout_ms.max(1)),
                    on_error: self.join_hook_on_error,
                    ..JoinHookSettings::new(url, secret)
                })
            }
        };
        Ok((webhook, join_hook))
    }
}

async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: closing sockets with 1001");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = match Cli::parse().command {
        Command::Serve(args) => args,
        Command::Token(args) => {
            println!("{}", mint_token(args)?);
            return Ok(());
        }
    };
    let security = args.security.into_security();
    let open_mode = security.verifier.is_none();
    let rooms = parse_rooms(&args.rooms);
    if rooms.is_empty() {
        return Err("--rooms needs at least one pattern".into());
    }
    let (webhook, join_hook) = args.hooks.settings()?;
    let cluster_settings = args.cluster.settings();
    if let Err(e) = rollcall_server::tracker::shard_config(&cluster_settings).validate() {
        return Err(StartError(format!("tracker timing: {e}")).into());
    }
    let config = Config {
        node_name: args
            .node_name
            .unwrap_or_else(rollcall_server::config::default_node_name),
        static_dir: Some(args.static_dir),
        rooms,
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        max_frame_size: args.max_frame_size,
        max_meta_size: args.max_meta_size,
        max_channels: args.max_channels,
        max_queued_bytes: args.max_queued_bytes,
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        longpoll_window: Duration::from_millis(args.longpoll_window_ms),
        cluster: cluster_settings,
        security,
        metrics: args.metrics,
        join_hook,
        webhook,
    };
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    // Tests and scripts read this exact line to learn the port.
    println!("rollcall listening on http://{}", listener.local_addr()?);
    if open_mode {
        // After the listening line, which scripts read first.
        tracing::warn!(
            "open mode: no --secret / ROLLCALL_SECRET set, so any client may claim any user_id"
        );
    }
    let pubsub = args.cluster.connect(&config.node_name).await?;
    if let Some(addr) = pubsub.cluster_addr() {
        println!("rollcall cluster listening on {addr}");
    }
    let server = Server::builder(config).pubsub(pubsub).build();
    server.serve(listener, stop_signal()).await?;
    Ok(())
}

/// Shown by `rollcall --help` after [`SERVE_FLAGS`].
const CLUSTER_FLAGS: &str = "\
Cluster flags (see docs/cluster.md):
  --cluster none|mesh|nats|redis   ROLLCALL_CLUSTER             how nodes reach each other [none]
  --cluster-listen HOST:PORT       ROLLCALL_CLUSTER_LISTEN      mesh: where peers connect [127.0.0.1:7000]
  --peers HOST:PORT,...            ROLLCALL_PEERS               mesh: seed nodes to dial
  --cluster-secret SECRET          ROLLCALL_CLUSTER_SECRET      shared secret signing every cluster message (required but for none)
  --nats-url URL                   ROLLCALL_NATS_URL            nats: server URL [nats://127.0.0.1:4222]
  --redis-url URL                  ROLLCALL_REDIS_URL           redis: server URL [redis://127.0.0.1:6379]
  --cluster-name NAME              ROLLCALL_CLUSTER_NAME        nats/redis: channel namespace (clusters sharing a broker also need distinct secrets) [rollcall]
  --broadcast-period-ms MS         ROLLCALL_BROADCAST_PERIOD_MS tracker heartbeat period [1500]
  --down-period-ms MS              ROLLCALL_DOWN_PERIOD_MS      a silent node's members leave after [30000]
  --permdown-period-ms MS          ROLLCALL_PERMDOWN_PERIOD_MS  a silent node is forgotten after [1200000]
  --coalesce-ms MS                 ROLLCALL_COALESCE_MS         local changes reach other nodes within [10]
  --diff-window-ms MS              ROLLCALL_DIFF_WINDOW_MS      a busy room's presence diffs go out at least every [20]
  --tracker-shards N               ROLLCALL_TRACKER_SHARDS      tracker tasks, topics hashed over them; the same on every node [cores]";

/// The cluster transport a node uses.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ClusterKind {
    /// A single node.
    None,
    /// Direct TCP connections between nodes.
    Mesh,
    /// Through a NATS server.
    Nats,
    /// Through a Redis server (PUBLISH/SUBSCRIBE).
    Redis,
}

#[derive(clap::Args, Debug)]
struct ClusterArgs {
    /// How nodes reach each other.
    #[arg(long, env = "ROLLCALL_CLUSTER", value_enum, default_value = "none")]
    cluster: ClusterKind,
    /// Mesh: HOST:PORT where other nodes connect to this one (port 0 picks a free port; the
    /// node prints `rollcall cluster listening on HOST:PORT`).
    #[arg(
        long,
        env = "ROLLCALL_CLUSTER_LISTEN",
        default_value = "127.0.0.1:7000"
    )]
    cluster_listen: String,
    /// Mesh: comma-separated HOST:PORT seeds to dial (one is enough; a DNS name with several
    /// addresses dials each and is re-resolved).
    #[arg(long, env = "ROLLCALL_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// The secret every node of the cluster shares (required for mesh, nats and redis): the
    /// mesh handshake proves it, and every message between nodes is signed with it. Use 32+
    /// random bytes; prefer the environment variable.
    #[arg(long, env = "ROLLCALL_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// NATS server URL.
    #[arg(
        long,
        env = "ROLLCALL_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Redis server URL.
    #[arg(
        long,
        env = "ROLLCALL_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// NATS / Redis: namespace of this cluster's subjects or channels. Clusters sharing a
    /// broker need distinct names and distinct secrets: only the secret keeps one from writing
    /// into the other.
    #[arg(long, env = "ROLLCALL_CLUSTER_NAME", default_value = "rollcall")]
    cluster_name: String,
    /// Tracker heartbeat period in milliseconds (Phoenix: 1500).
    #[arg(long, env = "ROLLCALL_BROADCAST_PERIOD_MS", default_value_t = 1_500)]
    broadcast_period_ms: u64,
    /// A node silent this many milliseconds is down: its members leave (Phoenix: 30000; at
    /// least twice the broadcast period).
    #[arg(long, env = "ROLLCALL_DOWN_PERIOD_MS", default_value_t = 30_000)]
    down_period_ms: u64,
    /// A node silent this many milliseconds is forgotten for good (Phoenix: 1200000).
    #[arg(long, env = "ROLLCALL_PERMDOWN_PERIOD_MS", default_value_t = 1_200_000)]
    permdown_period_ms: u64,
    /// Local presence changes reach other nodes within this many milliseconds (changes in one
    /// window travel together; 0 sends each at once).
    #[arg(long, env = "ROLLCALL_COALESCE_MS", default_value_t = 10)]
    coalesce_ms: u64,
    /// A busy room's presence diffs are held at most this many milliseconds and go out as one
    /// (a quiet room's at once; the window is 10 µs per local member up to this; 0: every
    /// change on its own).
    #[arg(long, env = "ROLLCALL_DIFF_WINDOW_MS", default_value_t = 20)]
    diff_window_ms: u64,
    /// Tracker shards (tasks that each own the topics hashing to them). Every node of a
    /// cluster must run the same number; default: the number of cores.
    #[arg(long, env = "ROLLCALL_TRACKER_SHARDS", value_parser = clap::value_parser!(u16).range(1..))]
    tracker_shards: Option<u16>,
    /// Test only: serve POST /_fault/partition?peer=NAME&partitioned=true|false.
    #[arg(long, env = "ROLLCALL_FAULT_INJECTION", hide = true)]
    fault_injection: bool,
}

impl ClusterArgs {
    fn settings(&self) -> rollcall_server::config::ClusterSettings {
        rollcall_server::config::ClusterSettings {
            broadcast_period: Duration::from_millis(self.broadcast_period_ms),
            down_period: Duration::from_millis(self.down_period_ms),
            permdown_period: Duration::from_millis(self.permdown_period_ms),
            coalesce: Duration::from_millis(self.coalesce_ms),
            diff_window: Duration::from_millis(self.diff_window_ms),
            tracker_shards: self
                .tracker_shards
                .map_or_else(rollcall_server::config::default_tracker_shards, usize::from),
            fault_injection: self.fault_injection,
            ..rollcall_server::config::ClusterSettings::default()
        }
    }

    /// Starts the transport; errors say what to fix.
    async fn connect(
        &self,
        node: &str,
    ) -> Result<std::sync::Arc<dyn rollcall_server::pubsub::PubSub>, Box<dyn std::error::Error>>
    {
        use rollcall_server::pubsub::{connect, ClusterConfig, MeshConfig};
        let secret = self.cluster_secret.clone().unwrap_or_default();
        let config = match self.cluster {
            ClusterKind::None => ClusterConfig::None,
            ClusterKind::Mesh => ClusterConfig::Mesh(MeshConfig::new(
                self.cluster_listen.clone(),
                self.peers
                    .iter()
                    .filter(|p| !p.is_empty())
                    .cloned()
                    .collect(),
                secret,
            )),
            ClusterKind::Nats => ClusterConfig::Nats {
                url: self.nats_url.clone(),
                cluster_name: self.cluster_name.clone(),
                secret,
            },
            ClusterKind::Redis => ClusterConfig::Redis {
                url: self.redis_url.clone(),
                cluster_name: self.cluster_name.clone(),
                secret,
            },
        };
        connect(node, config)
            .await
            .map_err(|e| StartError(e.to_string()).into())
    }
}

/// A start-up error that `main` prints as its message (its `Debug` is its `Display`), so the
/// operator reads the reason, not a Rust enum.
struct StartError(String);

impl std::fmt::Debug for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn top_level_help_lists_every_serve_flag_with_its_env_var() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve subcommand");
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || arg.is_hide_set() {
                continue;
            }
            let help = format!("{SERVE_FLAGS}\n{CLUSTER_FLAGS}\n{HOOK_FLAGS}");
            assert!(help.contains(&format!("--{long} ")), "--{long}");
            let env = arg.get_env().expect("every flag has an env var");
            assert!(help.contains(env.to_str().unwrap_or("?")), "{env:?}");
        }
    }
}
