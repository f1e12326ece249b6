//! Server configuration: every knob with its default. The `rollcall` binary fills it from flags
//! and `ROLLCALL_*` environment variables; an embedding app builds it in code.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Verifier;
use crate::channel::TopicPattern;
use crate::http::OriginPattern;

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
    /// Most frames queued for one connection; a client that falls further behind is closed
    /// with 1013 (it reconnects and gets a fresh `presence_state`).
    pub max_queued_frames: usize,
    /// Long-poll window: how long a poll waits for messages before answering 204 (Phoenix: 10 s).
    /// A session with no poll for 1.5 × this is closed.
    pub longpoll_window: Duration,
    /// Tokens, origins and per-connection limits (see [`Security`]).
    pub security: Security,
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
            max_queued_frames: 1024,
            longpoll_window: Duration::from_secs(10),
            security: Security::default(),
        }
    }
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
    /// from this.
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
    /// The keys currently refused; shared by every connection of a server built from this
    /// configuration (cloning shares it).
    pub penalty_box: PenaltyBox,
}

/// Presence keys refused until a deadline, after sustained abuse: without it a flooder closed
/// with 1008 reconnects at once with a full bucket.
#[derive(Debug, Clone, Default)]
pub struct PenaltyBox {
    until: Arc<Mutex<HashMap<String, Instant>>>,
}

impl PenaltyBox {
    /// Refuses `key` until `until`.
    pub fn punish(&self, key: &str, until: Instant) {
        if let Ok(mut map) = self.until.lock() {
            let now = Instant::now();
            // Forget served penalties so the map holds only keys abusive right now.
            map.retain(|_, t| *t > now);
            map.insert(key.to_string(), until);
        }
    }

    /// How long `key` is still refused at `now`, if it is.
    pub fn remaining(&self, key: &str, now: Instant) -> Option<Duration> {
        let map = self.until.lock().ok()?;
        map.get(key)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }
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
            penalty_box: PenaltyBox::default(),
        }
    }
}

/// A token bucket's shape: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained rate, tokens per second.
    pub per_second: f64,
    /// Bucket size: how many may come at once after a quiet spell.
    pub burst: u32,
}

/// `$HOSTNAME` when set, else `rollcall`.
pub fn default_node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rollcall".to_string())
}
