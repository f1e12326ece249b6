//! What bounds one client: the token buckets of a connection ([`RateLimit`], [`TokenBucket`]),
//! the abuse penalty box ([`PenaltyBox`]) and live connections per address ([`ConnCounts`],
//! counted under [`client_ip`]). The shapes come from [`Security`](crate::config::Security);
//! the shared state (penalty box, counts) lives with the running server.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
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

/// Live connections per client address, for
/// [`Security::max_conns_per_ip`](crate::config::Security::max_conns_per_ip). Cloning shares
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
