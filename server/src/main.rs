//! The `rollcall` binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rollcall_server::channel::parse_patterns;
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
  --max-queued-frames N       ROLLCALL_MAX_QUEUED_FRAMES   frames queued for a slow client, else close 1013 [1024]
  --longpoll-window-ms MS     ROLLCALL_LONGPOLL_WINDOW_MS  long-poll window; sessions expire after 1.5x [10000]
  --node-name NAME            ROLLCALL_NODE_NAME           name reported by /healthz [$HOSTNAME]

security (see README \"Security\"):
  --secret SECRET[,SECRET]    ROLLCALL_SECRET              HS256 token secret(s), several for rotation [none: open mode]
  --allowed-origins LIST      ROLLCALL_ALLOWED_ORIGINS     browser origins allowed, e.g. https://*.example.com [any]
  --event-rate PER_S          ROLLCALL_EVENT_RATE          messages per second per connection, 0 = unlimited [50]
  --event-burst N             ROLLCALL_EVENT_BURST         message burst per connection [100]
  --meta-rate PER_S           ROLLCALL_META_RATE           meta updates (track) per second per connection, 0 = unlimited [5]
  --meta-burst N              ROLLCALL_META_BURST          meta update burst per connection [10]
  --rate-limit-close-after N  ROLLCALL_RATE_LIMIT_CLOSE_AFTER  rate-limited messages in a row before close 1008, 0 = never [50]
  --max-room-members N        ROLLCALL_MAX_ROOM_MEMBERS    distinct keys per room, else \"room full\" [unlimited]
  --abuse-penalty-ms MS       ROLLCALL_ABUSE_PENALTY_MS    after a 1008 close, that key's reconnects get 429 [10000]

`rollcall token --secret S --sub alice [--rooms 'room:*'] [--ttl 1h] [--meta JSON]` prints a token.";

/// Phoenix-style presence server: Phoenix Channels over WebSocket and long-poll, presence rooms.
#[derive(Parser, Debug)]
#[command(name = "rollcall", version, about, after_help = SERVE_FLAGS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a rollcall node.
    Serve(ServeArgs),
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
}

impl SecurityArgs {
    fn into_security(self) -> rollcall_server::config::Security {
        use rollcall_server::config::{RateLimit, Security};
        Security {
            verifier: rollcall_server::auth::Verifier::new(&self.secrets),
            allowed_origins: rollcall_server::http::parse_origins(&self.allowed_origins),
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
            penalty_box: Default::default(),
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
    use rollcall_server::auth;
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
        rooms: args.rooms.map(|r| {
            r.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect()
        }),
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
    /// Most frames queued for one slow client before it is closed with 1013.
    #[arg(long, env = "ROLLCALL_MAX_QUEUED_FRAMES", default_value_t = 1024)]
    max_queued_frames: usize,
    /// Long-poll window in milliseconds (a poll waits this long; sessions expire after 1.5x).
    #[arg(long, env = "ROLLCALL_LONGPOLL_WINDOW_MS", default_value_t = 10_000)]
    longpoll_window_ms: u64,
    /// This node's name (reported by /healthz); defaults to $HOSTNAME.
    #[arg(long, env = "ROLLCALL_NODE_NAME")]
    node_name: Option<String>,
    #[command(flatten)]
    security: SecurityArgs,
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
    let rooms = parse_patterns(&args.rooms);
    if rooms.is_empty() {
        return Err("--rooms needs at least one pattern".into());
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
        max_queued_frames: args.max_queued_frames,
        longpoll_window: Duration::from_millis(args.longpoll_window_ms),
        security,
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
    let server = Server::new(config);
    server.serve(listener, stop_signal()).await?;
    Ok(())
}

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
            if long == "help" {
                continue;
            }
            assert!(SERVE_FLAGS.contains(&format!("--{long} ")), "--{long}");
            let env = arg.get_env().expect("every flag has an env var");
            assert!(SERVE_FLAGS.contains(env.to_str().unwrap_or("?")), "{env:?}");
        }
    }
}
