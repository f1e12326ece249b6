//! Server configuration: every knob with its default. The `rollcall` binary fills it from flags
//! and `ROLLCALL_*` environment variables; an embedding app builds it in code.

use std::collections::HashMap;
use std::net::IpAddr;
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
    /// How the tracker replicates presence with other nodes (timing; the transport is
    /// chosen by the [`pubsub`](crate::pubsub) adapter given to the builder).
    pub cluster: ClusterSettings,
    /// Tokens, origins and per-connection limits (see [`Security`]).
    pub security: Security,
    /// Serve `GET /metrics` (Prometheus text format; aggregate counts only, no topics or keys).
    pub metrics: bool,
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
            cluster: ClusterSettings::default(),
            security: Security::default(),
            metrics: true,
        }
    }
}

// ---- cluster (issue 5) ----

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
            fault_injection: false,
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
    /// Most live connections (WebSockets plus long-poll sessions) from one client address;
    /// a connect beyond gets HTTP 429. 0 = unlimited (the default: behind a proxy every
    /// client has the proxy's address). IPv6 clients count per /64.
    pub max_conns_per_ip: usize,
    /// Take the client address from the last `X-Forwarded-For` entry (the one the proxy in
    /// front appended) instead of the TCP peer. Only safe when clients can reach rollcall
    /// through that proxy alone: otherwise anyone can claim any address.
    pub trust_forwarded_for: bool,
    /// Live connections per client address; shared like [`Security::penalty_box`].
    pub conn_counts: ConnCounts,
}

/// Live connections per client address, for [`Security::max_conns_per_ip`]. Cloning shares
/// the counts.
#[derive(Debug, Clone, Default)]
pub struct ConnCounts {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One counted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnSlot {
    held: Option<(ConnCounts, IpAddr)>,
}

/// The address connections are counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its
/// /64, since one host commonly holds a whole /64.
fn count_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl ConnCounts {
    /// Takes a slot for `ip` if it holds fewer than `max` connections (`max == 0`: unlimited,
    /// nothing is counted). The error is the reason for the client.
    pub fn acquire(&self, ip: Option<IpAddr>, max: usize) -> Result<ConnSlot, String> {
        let (Some(ip), true) = (ip, max > 0) else {
            return Ok(ConnSlot { held: None });
        };
        let key = count_key(ip);
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| "connection counter unavailable".to_string())?;
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return Err(format!(
                "too many connections from this address (limit {max})"
            ));
        }
        *count += 1;
        Ok(ConnSlot {
            held: Some((self.clone(), key)),
        })
    }

    /// Live connections counted for `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.counts
            .lock()
            .map(|c| c.get(&count_key(ip)).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let Some((counts, key)) = self.held.take() else {
            return;
        };
        if let Ok(mut map) = counts.counts.lock() {
            if let Some(count) = map.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&key);
                }
            }
        };
    }
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
            max_conns_per_ip: 0,
            trust_forwarded_for: false,
            conn_counts: ConnCounts::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_up_to_the_limit_and_given_back_on_drop() {
        let counts = ConnCounts::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = counts.acquire(Some(a), 2).unwrap();
        let _second = counts.acquire(Some(a), 2).unwrap();
        assert!(counts.acquire(Some(a), 2).is_err());
        assert!(counts.acquire(Some(b), 2).is_ok());
        drop(first);
        assert_eq!(counts.count(a), 1);
        assert!(counts.acquire(Some(a), 2).is_ok());
    }

    #[test]
    fn zero_means_unlimited_and_nothing_is_counted() {
        let counts = ConnCounts::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..1000).map(|_| counts.acquire(Some(a), 0)).collect();
        assert!(slots.iter().all(Result::is_ok));
        assert_eq!(counts.count(a), 0);
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_share_a_count() {
        let counts = ConnCounts::default();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = counts.acquire(Some(one), 1).unwrap();
        assert!(counts.acquire(Some(same_64), 1).is_err());
        assert!(counts.acquire(Some(other_64), 1).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _v4 = counts.acquire(Some(mapped), 1).unwrap();
        assert!(counts
            .acquire(Some("10.0.0.1".parse().unwrap()), 1)
            .is_err());
    }
}
