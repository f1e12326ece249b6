//! Server configuration: every knob with its default. The `rollcall` binary fills it from flags
//! and `ROLLCALL_*` environment variables; an embedding app builds it in code.

use std::path::PathBuf;
use std::time::Duration;

use crate::channel::TopicPattern;

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
        }
    }
}

/// `$HOSTNAME` when set, else `rollcall`.
pub fn default_node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rollcall".to_string())
}
