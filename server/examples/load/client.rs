//! The members' WebSocket client: as little work per frame as a client can do, so that the
//! tool measures the node and not itself.
//!
//! A member never holds a whole frame. Bytes are read into one buffer per worker thread and
//! fed to the member's [`Parser`], which keeps a few hundred bytes of state: enough to tell a
//! `presence_state` from a `presence_diff` by the frame's head and to count presences as the
//! payload streams past (`"metas":[` once per key, found with SIMD `memmem`, matches that
//! straddle two reads included). A `presence_diff` is small and is held whole, to split its
//! joins from its leaves and to find probe markers. No UTF-8 validation, no JSON parsing.

use std::cell::RefCell;
use std::io;
use std::sync::LazyLock;

use memchr::memmem;
use rollcall_server::transport::websocket::codec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One key of a presence payload: every key lists its metas once.
const MARKER: &[u8] = b"\"metas\":[";
/// The marker's searcher, built once: building one per read costs as much as a short search.
static KEYS: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(MARKER));

/// Bytes of a message's start that name its event (`[join_ref,ref,topic,event,` in V2).
const HEAD: usize = 256;
/// Probe markers are keys or meta values starting with this.
const PROBE: &[u8] = b"probe-";

thread_local! {
    /// The read buffer every member on this thread shares: a member processes what it read
    /// before it yields, so one buffer per thread is enough.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
}

/// What a member learns from one message.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A `presence_state` listing `keys` presences.
    State { keys: usize },
    /// A `presence_diff`: keys joined and left, probe markers among joins and among leaves.
    Diff {
        joins: usize,
        leaves: usize,
        probes_joined: Vec<String>,
        probes_left: Vec<String>,
    },
    /// A phx_reply or anything else.
    Other,
    /// The node closed the WebSocket.
    Close,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// The head is still being gathered.
    Unknown,
    State,
    Diff,
    Other,
    Close,
}

/// A streaming frame reader for server-to-client frames (unmasked).
#[derive(Default)]
pub struct Parser {
    header: Vec<u8>,
    /// Payload bytes left in the current frame; `None` while reading a header.
    remaining: Option<u64>,
    fin: bool,
    kind: Option<Kind>,
    /// The message's head (or the whole message for a diff).
    held: Vec<u8>,
    /// Keys counted so far in a `presence_state`.
    keys: usize,
    /// The last `MARKER.len() - 1` bytes seen, for matches across reads.
    carry: Vec<u8>,
}

impl Parser {
    /// Feeds bytes read from the socket; calls `on` for each message completed.
    pub fn feed(&mut self, mut bytes: &[u8], on: &mut impl FnMut(Event)) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.remaining {
                None => {
                    let taken = self.read_header(bytes)?;
                    bytes = &bytes[taken..];
                }
                Some(left) => {
                    let n = (left.min(bytes.len() as u64)) as usize;
                    self.payload(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.remaining = Some(left - n as u64);
                }
            }
            if self.remaining == Some(0) {
                self.remaining = None;
                if self.fin {
                    on(self.finish());
                }
            }
        }
        Ok(())
    }

    /// Gathers header bytes; returns how many of `bytes` it took.
    fn read_header(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        loop {
            let need = match self.header[..] {
                [b0, b1, ..] => codec::header_len([b0, b1]),
                _ => 2,
            };
            if self.header.get(1).is_some_and(|b| b & 0x80 != 0) {
                return Err(io::Error::other("masked frame from the server"));
            }
            if self.header.len() == need {
                break;
            }
            let Some(&b) = bytes.get(taken) else {
                return Ok(taken);
            };
            self.header.push(b);
            taken += 1;
        }
        let h = &self.header;
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes(h[2..10].try_into().map_err(io::Error::other)?),
            n => u64::from(n),
        };
        self.fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        if self.kind.is_none() {
            // A message's first frame: continuation frames keep the message's kind.
            self.kind = Some(match opcode {
                1 | 2 => Kind::Unknown,
                8 => Kind::Close,
                _ => Kind::Other,
            });
        }
        self.header.clear();
        self.remaining = Some(len);
        Ok(taken)
    }

    fn payload(&mut self, mut bytes: &[u8]) {
        if self.kind == Some(Kind::Unknown) {
            let n = bytes.len().min(HEAD - self.held.len());
            self.held.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.held.len() < HEAD {
                return;
            }
            self.classify();
        }
        match self.kind {
            Some(Kind::Diff) => self.held.extend_from_slice(bytes),
            Some(Kind::State) => self.count(bytes),
            _ => {}
        }
    }

    /// Decides the message's kind from its head; a state's head is counted at once.
    fn classify(&mut self) {
        let head = &self.held[..];
        let kind = if memmem::find(head, b"\"presence_state\"").is_some() {
            Kind::State
        } else if memmem::find(head, b"\"presence_diff\"").is_some() {
            Kind::Diff
        } else {
            Kind::Other
        };
        self.kind = Some(kind);
        if kind == Kind::State {
            let head = std::mem::take(&mut self.held);
            self.count(&head);
        }
    }

    /// Counts markers in a stretch of a `presence_state`, those that straddle the previous
    /// stretch included.
    fn count(&mut self, bytes: &[u8]) {
        let keep = MARKER.len() - 1;
        let mut seam = std::mem::take(&mut self.carry);
        let carried = seam.len();
        seam.extend_from_slice(&bytes[..bytes.len().min(keep)]);
        if carried > 0 {
            // The carry is shorter than a marker and so is a longer stretch's first part, so
            // a match here straddles the two and is not counted below.
            self.keys += KEYS.find_iter(&seam).count();
        }
        self.keys += KEYS.find_iter(bytes).count();
        self.carry = if bytes.len() >= keep {
            bytes[bytes.len() - keep..].to_vec()
        } else {
            seam.split_off(seam.len().saturating_sub(keep))
        };
    }

    fn finish(&mut self) -> Event {
        if self.kind == Some(Kind::Unknown) {
            self.classify();
        }
        let event = match self.kind.take() {
            Some(Kind::State) => Event::State { keys: self.keys },
            Some(Kind::Diff) => diff(&self.held),
            Some(Kind::Close) => Event::Close,
            _ => Event::Other,
        };
        self.held.clear();
        self.carry.clear();
        self.keys = 0;
        event
    }
}

/// What a `presence_diff` message (whole) says: split at `"leaves":`.
pub fn diff(message: &[u8]) -> Event {
    let at = memmem::find(message, b"\"leaves\":").unwrap_or(message.len());
    let (joins, leaves) = message.split_at(at);
    Event::Diff {
        joins: KEYS.find_iter(joins).count(),
        leaves: KEYS.find_iter(leaves).count(),
        probes_joined: probes(joins),
        probes_left: probes(leaves),
    }
}

/// Probe markers (`probe-<id>`) in `bytes`, in order, each once.
fn probes(bytes: &[u8]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for at in memmem::find_iter(bytes, PROBE) {
        let rest = &bytes[at..];
        let end = rest
            .iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'-'))
            .unwrap_or(rest.len());
        let marker = String::from_utf8_lossy(&rest[..end]).into_owned();
        if !found.contains(&marker) {
            found.push(marker);
        }
    }
    found
}

/// A member's connection.
pub struct Client {
    tcp: TcpStream,
    parser: Parser,
    /// Bytes that came with the handshake's response.
    early: Vec<u8>,
}

impl Client {
    /// Opens a V2 JSON socket to `addr` (`host:port`) as `user`.
    pub async fn connect(addr: &str, user: &str) -> io::Result<Client> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let request = format!(
            "GET /socket/websocket?vsn=2.0.0&user_id={user} HTTP/1.1\r\nHost: {addr}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: bG9hZC10b29sLW1lbWJlcg==\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut response = Vec::with_capacity(256);
        let end = loop {
            let mut chunk = [0u8; 512];
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::other("closed during the handshake"));
            }
            response.extend_from_slice(&chunk[..n]);
            if let Some(at) = memmem::find(&response, b"\r\n\r\n") {
                break at + 4;
            }
            if response.len() > 8192 {
                return Err(io::Error::other("handshake response too long"));
            }
        };
        if !response.starts_with(b"HTTP/1.1 101") {
            let line = response.split(|b| *b == b'\r').next().unwrap_or_default();
            return Err(io::Error::other(String::from_utf8_lossy(line).into_owned()));
        }
        Ok(Client {
            tcp,
            parser: Parser::default(),
            early: response.split_off(end),
        })
    }

    /// Sends a text frame (masked, as a client must).
    pub async fn send(&mut self, text: &str) -> io::Result<()> {
        let frame = codec::client_frame(0x1, true, text.as_bytes(), [0x5a, 0x17, 0xc3, 0x2e]);
        self.tcp.write_all(&frame).await
    }

    /// Waits until the socket has bytes, then hands every message they complete to `on`.
    /// Returns `false` once the connection is closed.
    pub async fn read(&mut self, on: &mut impl FnMut(Event)) -> bool {
        if !self.early.is_empty() {
            let early = std::mem::take(&mut self.early);
            if self.parser.feed(&early, on).is_err() {
                return false;
            }
        }
        loop {
            if self.tcp.readable().await.is_err() {
                return false;
            }
            let done = READ_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                // Drain what is there; a large message arrives in several reads.
                loop {
                    match self.tcp.try_read(&mut buf) {
                        Ok(0) => return Some(false),
                        Ok(n) => {
                            if self.parser.feed(&buf[..n], on).is_err() {
                                return Some(false);
                            }
                            if n < buf.len() {
                                return Some(true);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                        Err(_) => return Some(false),
                    }
                }
            });
            match done {
                Some(open) => return open,
                None => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Vec<u8> {
        let (header, used) = codec::encode_header(codec::OpCode::Text, text.len());
        [&header[..used], text.as_bytes()].concat()
    }

    fn events(bytes: &[u8], step: usize) -> Vec<Event> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(step) {
            p.feed(chunk, &mut |e| out.push(e)).expect("feed");
        }
        out
    }

    #[test]
    fn counts_keys_and_diffs_whatever_the_read_sizes() {
        let state: String = (0..3000)
            .map(|i| format!("\"u{i}\":{{\"metas\":[{{\"phx_ref\":\"F{i}\"}}]}}"))
            .collect::<Vec<_>>()
            .join(",");
        let state = format!(r#"["1","1","room:a","presence_state",{{{state}}}]"#);
        let diff = r#"[null,null,"room:a","presence_diff",{"joins":{"probe-7":{"metas":[{"mark":"probe-t7"}]},"u1":{"metas":[{}]}},"leaves":{"u2":{"metas":[{}]}}}]"#;
        let reply = r#"["1","1","room:a","phx_reply",{"status":"ok","response":{}}]"#;
        let mut bytes = frame(reply);
        bytes.extend(frame(&state));
        bytes.extend(frame(diff));
        bytes.extend([0x88, 0x02, 0x03, 0xe8]);
        for step in [1, 3, 8, 9, 100, 4096, bytes.len()] {
            assert_eq!(
                events(&bytes, step),
                vec![
                    Event::Other,
                    Event::State { keys: 3000 },
                    Event::Diff {
                        joins: 2,
                        leaves: 1,
                        probes_joined: vec!["probe-7".into(), "probe-t7".into()],
                        probes_left: vec![],
                    },
                    Event::Close,
                ],
                "read {step} bytes at a time"
            );
        }
    }
}
