//! What the latency examples share: a V2 JSON WebSocket client, waiting for a key in a
//! `presence_diff`, and percentiles. Each example includes it with `mod support;`.
#![allow(dead_code)]

use std::fmt::Display;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A client WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a V2 JSON socket to `addr` (`host:port`) as `user`.
pub async fn connect(addr: impl Display, user: &str) -> Ws {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&user_id={user}");
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

/// Reads frames until a `presence_diff` whose `side` (`joins` / `leaves`) holds `key`; panics
/// if none comes `within`.
pub async fn wait_diff(ws: &mut Ws, side: &str, key: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {side} diff for {key} within {within:?}"))
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            if v[3] == "presence_diff" && v[4][side].get(key).is_some() {
                return;
            }
        }
    }
}

/// The `p` quantile (0.0–1.0) of `sorted`, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50 / p99 / mean / max of `samples` (sorted in place).
pub struct Summary {
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Summary {
    /// Sorts `samples` and summarises them; `samples` must not be empty.
    pub fn of(samples: &mut [Duration]) -> Summary {
        samples.sort();
        Summary {
            p50: percentile(samples, 0.50),
            p90: percentile(samples, 0.90),
            p99: percentile(samples, 0.99),
            mean: samples.iter().sum::<Duration>() / samples.len() as u32,
            max: samples[samples.len() - 1],
        }
    }
}

/// Resident set size in KiB (`VmRSS` in `/proc/<pid>/status`) of `pid`, or of this process for
/// `None`; `None` if it cannot be read (not Linux).
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User and kernel CPU seconds from a `/proc/<pid>/stat` (or `/proc/thread-self/stat`) file,
/// in clock ticks of 10 ms; zero if it cannot be read.
pub fn user_system_cpu(stat: &std::path::Path) -> (f64, f64) {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // After the command name (in parentheses): utime is the 12th field, stime the 13th.
    let fields: Vec<&str> = text
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let secs = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (secs(11), secs(12))
}

/// CPU seconds a thread has run, from its `schedstat` file (nanoseconds); zero if it cannot
/// be read.
pub fn sched_cpu(schedstat: &std::path::Path) -> f64 {
    std::fs::read_to_string(schedstat)
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e9
}
