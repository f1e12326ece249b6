//! What bounds one client: the token buckets of a connection ([`RateLimit`], [`TokenBucket`])
//! and of an address ([`AddressLimiter`]), the abuse penalty box ([`PenaltyBox`]), and open
//! connections in total and per address ([`ConnCounts`], counted under [`client_ip`], at
//! accept for a TCP connection: [`AcceptedConn`]). The shapes come from [`Security`](crate::config::Security);
//! the shared state (penalty box, counts) lives with the running server.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::time::Instant;

/// A token bucket's shape: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained rate, tokens per second.
    pub per_second: f64,
    /// Bucket size: how many may come at once after a quiet spell.
    pub burst: u32,
}

/// A token bucket on [`tokio::time::Instant`] (so paused-time tests drive it).
#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `limit`'s shape at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    /// True when the bucket would be full at `now` (it has been quiet long enough).
    pub fn full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.limit.per_second >= f64::from(self.limit.burst)
    }

    /// Takes one token if there is one. A rate of 0 (or less) means unlimited.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.limit.per_second <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens =
            (self.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Open connections of the node, in total and per client address, for
/// [`Security::max_conns`](crate::config::Security::max_conns) and
/// [`Security::max_conns_per_ip`](crate::config::Security::max_conns_per_ip). Cloning shares
/// the counts.
#[derive(Debug, Clone, Default)]
pub struct ConnCounts {
    inner: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    /// Most connections in `total`; 0 = unlimited.
    max_total: usize,
}

/// One counted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnSlot {
    counts: Option<ConnCounts>,
    /// Counted in the node's total.
    in_total: bool,
    /// The address counted, if any.
    ip: Option<IpAddr>,
}

impl ConnSlot {
    /// A slot that counts nothing.
    pub fn uncounted() -> Self {
        ConnSlot {
            counts: None,
            in_total: false,
            ip: None,
        }
    }
}

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefused {
    /// The node holds its `max_conns`.
    NodeFull(usize),
    /// The address holds its `max_conns_per_ip`.
    PerAddress(usize),
}

impl std::fmt::Display for SlotRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotRefused::NodeFull(max) => {
                write!(f, "server at its connection limit ({max}); try again later")
            }
            SlotRefused::PerAddress(max) => {
                write!(f, "too many connections from this address (limit {max})")
            }
        }
    }
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
    /// Counts with at most `max_total` connections in all (0 = unlimited).
    pub fn new(max_total: usize) -> Self {
        ConnCounts {
            inner: Arc::new(Counts {
                max_total,
                ..Counts::default()
            }),
        }
    }

    /// Takes a slot: under the node's total when `total` is set, and for `ip` under `max` when
    /// both are given (`max == 0`: the address is not counted). The error says which limit.
    pub fn acquire(
        &self,
        ip: Option<IpAddr>,
        max: usize,
        total: bool,
    ) -> Result<ConnSlot, SlotRefused> {
        let mut slot = ConnSlot {
            counts: Some(self.clone()),
            in_total: false,
            ip: None,
        };
        if total {
            let max_total = self.inner.max_total;
            let before = self.inner.total.fetch_add(1, Ordering::AcqRel);
            slot.in_total = true;
            if max_total > 0 && before >= max_total {
                return Err(SlotRefused::NodeFull(max_total));
            }
        }
        let (Some(ip), true) = (ip, max > 0) else {
            return Ok(slot);
        };
        let key = count_key(ip);
        let Ok(mut counts) = self.inner.per_ip.lock() else {
            return Ok(slot);
        };
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return Err(SlotRefused::PerAddress(max));
        }
        *count += 1;
        slot.ip = Some(key);
        Ok(slot)
    }

    /// Live connections counted for `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.inner
            .per_ip
            .lock()
            .map(|c| c.get(&count_key(ip)).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Live connections counted in the node's total.
    pub fn total(&self) -> usize {
        self.inner.total.load(Ordering::Relaxed)
    }
}
impl Drop for ConnSlot {
    fn drop(&mut self) {
        let Some(counts) = self.counts.take() else {
            return;
        };
        if self.in_total {
            counts.inner.total.fetch_sub(1, Ordering::AcqRel);
        }
        let Some(key) = self.ip.take() else {
            return;
        };
        if let Ok(mut map) = counts.inner.per_ip.lock() {
            if let Some(count) = map.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&key);
                }
            }
        };
    }
}

/// A TCP connection counted at accept, before any of its bytes were read: handed to every
/// request it carries (a request extension), so that a WebSocket upgraded from it keeps it
/// counted for as long as the socket lives. Cloning shares the one slot.
#[derive(Debug, Clone)]
pub struct AcceptedConn {
    /// The connection's slot.
    pub slot: Arc<ConnSlot>,
    /// Whether its address was counted at accept (not when the address comes from
    /// `X-Forwarded-For`, known only from the request).
    pub per_address_counted: bool,
}

/// Keeps a connection counted for as long as it is held: the TCP connection's slot taken at
/// accept, and a slot of its own (a long-poll session, or an address only known from the
/// request).
#[derive(Debug)]
pub struct ConnHold {
    _accepted: Option<AcceptedConn>,
    _own: ConnSlot,
}

impl ConnHold {
    /// Holds `accepted` and `own`.
    pub fn new(accepted: Option<AcceptedConn>, own: ConnSlot) -> Self {
        ConnHold {
            _accepted: accepted,
            _own: own,
        }
    }
}

/// Token buckets per client address (IPv6 per /64), for work that is expensive whoever asks
/// for it: opening long-poll sessions, reading the presence API. Full buckets are forgotten
/// when the map grows, so it holds only addresses active right now.
#[derive(Debug, Clone)]
pub struct AddressLimiter {
    limit: RateLimit,
    buckets: Arc<Mutex<HashMap<IpAddr, TokenBucket>>>,
}

/// Addresses held before the full buckets are swept out.
const SWEEP_AT: usize = 4096;

impl AddressLimiter {
    /// Buckets of `limit`'s shape.
    pub fn new(limit: RateLimit) -> Self {
        AddressLimiter {
            limit,
            buckets: Arc::default(),
        }
    }

    /// Takes a token for `ip` at `now`; `true` when it may go ahead. An unknown address and a
    /// rate of 0 are never limited.
    pub fn take(&self, ip: Option<IpAddr>, now: Instant) -> bool {
        let Some(ip) = ip else { return true };
        if self.limit.per_second <= 0.0 {
            return true;
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, bucket| !bucket.full_at(now));
        }
        buckets
            .entry(count_key(ip))
            .or_insert_with(|| TokenBucket::new(self.limit, now))
            .take(now)
    }
}

/// The open-file limit of this process (the soft limit), where the system tells it.
pub fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    soft.parse().ok()
}

/// The default of [`Security::max_conns`](crate::config::Security::max_conns): 90 % of the
/// open-file limit (the rest for listeners, cluster links, files), or unlimited (0) where the
/// limit is unknown.
pub fn default_max_conns() -> usize {
    open_file_limit().map_or(0, |limit| limit / 10 * 9)
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

/// The client address a connect request is counted under: the TCP peer (when the server runs
/// with connect info, as [`Server::serve`](crate::Server::serve) does), or with
/// `trust_forwarded_for` the last `X-Forwarded-For` entry, the one the proxy in front appended
/// (earlier entries come from the client and prove nothing). `None` when neither is known.
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trust_forwarded_for: bool,
) -> Option<IpAddr> {
    if trust_forwarded_for {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .last()
            .and_then(|entry| parse_forwarded_addr(entry.trim()));
        if last.is_some() {
            return last;
        }
    }
    peer.map(|p| p.ip())
}

/// One `X-Forwarded-For` entry: a bare address (`203.0.113.7`, `2001:db8::1`), or one with a
/// port (`203.0.113.7:5678`, `[2001:db8::1]:5678`) or brackets (`[2001:db8::1]`), as some
/// proxies write them.
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_up_to_the_limit_and_given_back_on_drop() {
        let counts = ConnCounts::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = counts.acquire(Some(a), 2, true).unwrap();
        let _second = counts.acquire(Some(a), 2, true).unwrap();
        assert!(counts.acquire(Some(a), 2, true).is_err());
        assert!(counts.acquire(Some(b), 2, true).is_ok());
        drop(first);
        assert_eq!(counts.count(a), 1);
        assert!(counts.acquire(Some(a), 2, true).is_ok());
    }

    #[test]
    fn the_node_total_counts_every_slot_and_refuses_past_its_maximum() {
        let counts = ConnCounts::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = counts.acquire(Some(a), 0, true).unwrap();
        let _second = counts.acquire(None, 0, true).unwrap();
        assert_eq!(
            counts.acquire(Some(a), 0, true).err(),
            Some(SlotRefused::NodeFull(2))
        );
        assert_eq!(counts.total(), 2, "a refused slot is not counted");
        assert!(
            counts.acquire(Some(a), 5, false).is_ok(),
            "outside the total"
        );
        drop(first);
        assert_eq!(counts.total(), 1);
        assert!(counts.acquire(Some(a), 0, true).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_limiter_limits_each_address_on_its_own() {
        let limiter = AddressLimiter::new(RateLimit {
            per_second: 1.0,
            burst: 2,
        });
        let now = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(limiter.take(Some(a), now) && limiter.take(Some(a), now));
        assert!(!limiter.take(Some(a), now));
        assert!(limiter.take(Some(b), now));
        assert!(limiter.take(Some(a), now + Duration::from_secs(1)));
        assert!(limiter.take(None, now), "no address, no limit");
    }

    #[test]
    fn zero_means_unlimited_and_nothing_is_counted() {
        let counts = ConnCounts::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..1000)
            .map(|_| counts.acquire(Some(a), 0, true))
            .collect();
        assert!(slots.iter().all(Result::is_ok));
        assert_eq!(counts.count(a), 0);
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_share_a_count() {
        let counts = ConnCounts::default();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = counts.acquire(Some(one), 1, true).unwrap();
        assert!(counts.acquire(Some(same_64), 1, true).is_err());
        assert!(counts.acquire(Some(other_64), 1, true).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _v4 = counts.acquire(Some(mapped), 1, true).unwrap();
        assert!(counts
            .acquire(Some("10.0.0.1".parse().unwrap()), 1, true)
            .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_the_burst_then_refills_at_the_rate() {
        let limit = RateLimit {
            per_second: 10.0,
            burst: 3,
        };
        let start = Instant::now();
        let mut bucket = TokenBucket::new(limit, start);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        // 100 ms at 10/s refills exactly one token, and the bucket never holds more than burst.
        assert!(bucket.take(start + Duration::from_millis(100)));
        assert!(!bucket.take(start + Duration::from_millis(100)));
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 3);
    }

    #[test]
    fn a_zero_rate_means_unlimited() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(
            RateLimit {
                per_second: 0.0,
                burst: 0,
            },
            now,
        );
        assert!((0..1000).all(|_| bucket.take(now)));
    }

    #[test]
    fn the_client_ip_is_the_peer_unless_the_proxy_header_is_trusted() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        h.append("x-forwarded-for", "3.3.3.3".parse().unwrap());
        assert_eq!(client_ip(Some(peer), &h, false), Some(peer.ip()));
        assert_eq!(
            client_ip(Some(peer), &h, true),
            Some("3.3.3.3".parse().unwrap())
        );
        let mut junk = HeaderMap::new();
        junk.insert("x-forwarded-for", "1.1.1.1, not-an-ip".parse().unwrap());
        assert_eq!(client_ip(Some(peer), &junk, true), Some(peer.ip()));
        assert_eq!(client_ip(None, &HeaderMap::new(), true), None);
    }

    #[test]
    fn forwarded_entries_with_ports_or_brackets_name_their_address() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_forwarded_addr("203.0.113.7"), Some(v4));
        assert_eq!(parse_forwarded_addr("203.0.113.7:5678"), Some(v4));
        assert_eq!(parse_forwarded_addr("2001:db8::1"), Some(v6));
        assert_eq!(parse_forwarded_addr("[2001:db8::1]"), Some(v6));
        assert_eq!(parse_forwarded_addr("[2001:db8::1]:5678"), Some(v6));
        assert_eq!(parse_forwarded_addr("unknown"), None);
        assert_eq!(parse_forwarded_addr("[203.0.113.7"), None);
    }
}
