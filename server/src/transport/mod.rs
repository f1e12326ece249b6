//! Transports carry frames between a client and its [`socket`](crate::socket) machine:
//! [`websocket`] and [`longpoll`]. This module holds what they share: the already-encoded
//! frame ([`WireFrame`], cheap to clone, so one encoding serves every subscriber) and the items
//! that flow into and out of the socket machine.

pub mod longpoll;
pub mod websocket;

use std::net::{IpAddr, SocketAddr};

use axum::extract::ws::Utf8Bytes;
use axum::http::HeaderMap;
use bytes::Bytes;
use rollcall_core::protocol::{EncodeError, Frame, Outbound, Serializer};

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

/// An encoded frame ready for the wire. Cloning shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// A text frame (JSON).
    Text(Utf8Bytes),
    /// A binary frame (V2 binary).
    Binary(Bytes),
}

impl WireFrame {
    /// Encodes `out` with `serializer`.
    pub fn encode(serializer: Serializer, out: &Outbound) -> Result<Self, EncodeError> {
        Ok(match serializer.encode(out)? {
            Frame::Text(text) => WireFrame::Text(text.into()),
            Frame::Binary(bytes) => WireFrame::Binary(bytes.into()),
        })
    }

    /// The frame as the protocol codec sees it (copies).
    pub fn to_frame(&self) -> Frame {
        match self {
            WireFrame::Text(t) => Frame::Text(t.as_str().to_string()),
            WireFrame::Binary(b) => Frame::Binary(b.to_vec()),
        }
    }
}

/// What a transport hands to the socket machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A data frame from the client.
    Frame(Frame),
    /// A data frame bigger than the configured maximum (its size in bytes, when known).
    TooLarge(Option<usize>),
    /// A frame the transport could not even hand over (e.g. a text frame that is not UTF-8);
    /// the reason is for the client.
    Invalid(String),
    /// Proof of life without data (WebSocket ping/pong).
    Activity,
    /// The transport failed (the reason, for the log).
    Error(String),
}

/// What the socket machine hands to a transport.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A data frame.
    Frame(WireFrame),
    /// Close the connection with this WebSocket close code and reason; nothing follows.
    Close {
        /// The close code (1000 normal, 1001 going away, 1007 bad data, 1009 too big).
        code: u16,
        /// A short reason (at most 123 bytes).
        reason: String,
    },
}

/// Close code: the server is going away (shutdown, idle).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a frame could not be decoded.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: the client broke a rule (sustained rate-limit abuse).
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Close code: a frame was bigger than allowed.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the client did not keep up with its frames; reconnect later.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

#[cfg(test)]
mod tests {
    use super::*;

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
}

#[cfg(test)]
mod forwarded_tests {
    use super::*;

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
