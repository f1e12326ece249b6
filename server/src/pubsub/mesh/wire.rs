//! The mesh's frames and their encoding.
//!
//! Every frame is a big-endian `u32` body length followed by the body; the body's first byte is
//! its kind. Frames are capped (16 MiB after authentication, 4 KiB before it) so a stranger
//! cannot make us allocate much.
//!
//! | kind | body after the kind byte |
//! | --- | --- |
//! | 1 `Hello` | version `u8`, nonce `[u8; 32]`: nothing that names the node |
//! | 2 `Auth` | HMAC-SHA256 proof `[u8; 32]` |
//! | 3 `Reject` | reason `str16`, sent before closing so the other side can log why |
//! | 4 `Data` | channel `str8`, then the payload to the end of the frame |
//! | 5 `Ping`, 6 `Pong` | nothing |
//! | 7 `Peers` | count `u16`, then `(name str16, address str16)` per known node |
//! | 8 `Identify` | name `str16`, advertised address `str16`, incarnation `u64`, HMAC-SHA256 `[u8; 32]` binding them to the handshake; sent only to a peer whose proof was checked |

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::pubsub::validate_name;

/// Largest frame accepted from an authenticated peer.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Largest frame accepted before authentication (a `Hello` is well under this).
pub(super) const MAX_HANDSHAKE_FRAME: usize = 4 * 1024;
/// Protocol version carried in `Hello`.
const VERSION: u8 = 2;

pub(super) const KIND_HELLO: u8 = 1;
pub(super) const KIND_AUTH: u8 = 2;
pub(super) const KIND_REJECT: u8 = 3;
pub(super) const KIND_DATA: u8 = 4;
pub(super) const KIND_PING: u8 = 5;
pub(super) const KIND_PONG: u8 = 6;
pub(super) const KIND_PEERS: u8 = 7;
pub(super) const KIND_IDENTIFY: u8 = 8;

/// Reads one frame body (kind byte first). `Ok(None)` is a clean close between frames.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty frame"));
    }
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(Bytes::from(body)))
}

fn frame(kind: u8, body_len: usize, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + body_len);
    buf.put_u32(0);
    buf.put_u8(kind);
    fill(&mut buf);
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

fn put_str16(buf: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

pub(super) fn encode_empty(kind: u8) -> Bytes {
    frame(kind, 0, |_| {})
}

pub(super) fn encode_hello(nonce: &[u8; 32]) -> Bytes {
    frame(KIND_HELLO, 33, |b| {
        b.put_u8(VERSION);
        b.put_slice(nonce);
    })
}

/// Who we are, once the peer has proven the secret; `mac` binds it to the handshake.
pub(super) struct Identity {
    pub(super) name: String,
    pub(super) advertise: String,
    pub(super) incarnation: u64,
}

pub(super) fn encode_identify(id: &Identity, mac: &[u8]) -> Bytes {
    frame(
        KIND_IDENTIFY,
        44 + id.name.len() + id.advertise.len(),
        |b| {
            put_str16(b, &id.name);
            put_str16(b, &id.advertise);
            b.put_u64(id.incarnation);
            b.put_slice(mac);
        },
    )
}

pub(super) fn encode_auth(proof: &[u8]) -> Bytes {
    frame(KIND_AUTH, proof.len(), |b| b.put_slice(proof))
}

pub(super) fn encode_reject(reason: &str) -> Bytes {
    frame(KIND_REJECT, 2 + reason.len(), |b| put_str16(b, reason))
}

/// A data frame. Channels are short names we choose; a longer one is truncated at 255 bytes.
pub(super) fn encode_data(channel: &str, payload: &[u8]) -> Bytes {
    let channel = &channel.as_bytes()[..channel.len().min(255)];
    frame(KIND_DATA, 1 + channel.len() + payload.len(), |b| {
        b.put_u8(channel.len() as u8);
        b.put_slice(channel);
        b.put_slice(payload);
    })
}

pub(super) fn encode_peers(list: &[(String, String)]) -> Bytes {
    let list = &list[..list.len().min(u16::MAX as usize)];
    frame(KIND_PEERS, 2 + list.len() * 32, |b| {
        b.put_u16(list.len() as u16);
        for (name, addr) in list {
            put_str16(b, name);
            put_str16(b, addr);
        }
    })
}

pub(super) fn get_str16(buf: &mut Bytes) -> Result<String, String> {
    if buf.remaining() < 2 {
        return Err("truncated string length".into());
    }
    let len = usize::from(buf.get_u16());
    take_utf8(buf, len)
}

pub(super) fn get_str8(buf: &mut Bytes) -> Result<String, String> {
    if buf.remaining() < 1 {
        return Err("truncated string length".into());
    }
    let len = usize::from(buf.get_u8());
    take_utf8(buf, len)
}

fn take_utf8(buf: &mut Bytes, len: usize) -> Result<String, String> {
    if buf.remaining() < len {
        return Err("truncated string".into());
    }
    String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| "string is not UTF-8".into())
}

/// Reads a `Hello`: the peer's nonce.
pub(super) fn decode_hello(mut frame: Bytes) -> Result<[u8; 32], String> {
    let bad = |m: &str| format!("bad hello: {m}");
    if frame.is_empty() || frame.get_u8() != KIND_HELLO {
        return Err(bad(
            "expected a hello frame first (is this a rollcall cluster port?)",
        ));
    }
    if frame.remaining() < 1 {
        return Err(bad("truncated"));
    }
    let version = frame.get_u8();
    if version != VERSION {
        return Err(bad(&format!(
            "protocol version {version}, we speak {VERSION} (every node of a cluster must run the same rollcall release)"
        )));
    }
    if frame.remaining() != 32 {
        return Err(bad("expected a 32-byte nonce"));
    }
    let mut nonce = [0u8; 32];
    frame.copy_to_slice(&mut nonce);
    Ok(nonce)
}

/// Reads an `Identify`: the peer's name, advertised address and incarnation, and the MAC over
/// them.
pub(super) fn decode_identify(mut frame: Bytes) -> Result<(Identity, [u8; 32]), String> {
    let bad = |m: &str| format!("bad identify: {m}");
    if frame.is_empty() || frame.get_u8() != KIND_IDENTIFY {
        return Err(bad("expected an identify frame"));
    }
    let name = get_str16(&mut frame).map_err(|e| bad(&e))?;
    validate_name("node name", &name).map_err(|e| bad(&e.to_string()))?;
    let advertise = get_str16(&mut frame).map_err(|e| bad(&e))?;
    if frame.remaining() != 40 {
        return Err(bad("expected an 8-byte incarnation and a 32-byte MAC"));
    }
    let incarnation = frame.get_u64();
    let mut mac = [0u8; 32];
    frame.copy_to_slice(&mut mac);
    let id = Identity {
        name,
        advertise,
        incarnation,
    };
    Ok((id, mac))
}

/// Reads an `Auth`: the peer's proof.
pub(super) fn decode_auth(mut frame: Bytes) -> Result<[u8; 32], String> {
    if frame.is_empty() || frame.get_u8() != KIND_AUTH || frame.remaining() != 32 {
        return Err("expected a 32-byte auth frame".into());
    }
    let mut proof = [0u8; 32];
    frame.copy_to_slice(&mut proof);
    Ok(proof)
}

pub(super) fn decode_peers(mut body: Bytes) -> Result<Vec<(String, String)>, String> {
    if body.remaining() < 2 {
        return Err("truncated count".into());
    }
    let count = usize::from(body.get_u16());
    let mut list = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let name = get_str16(&mut body)?;
        let addr = get_str16(&mut body)?;
        list.push((name, addr));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_handshake_frames_are_errors_not_panics() {
        let hello = encode_hello(&[7; 32]).slice(4..);
        for cut in 1..hello.len() {
            assert!(decode_hello(hello.slice(..cut)).is_err(), "cut {cut}");
        }
        assert_eq!(decode_hello(hello), Ok([7; 32]));
        let id = Identity {
            name: "a".into(),
            advertise: "127.0.0.1:1".into(),
            incarnation: 9,
        };
        let identify = encode_identify(&id, &[3; 32]).slice(4..);
        for cut in 1..identify.len() {
            assert!(decode_identify(identify.slice(..cut)).is_err(), "cut {cut}");
        }
        let (back, mac) = decode_identify(identify).expect("decodes");
        assert_eq!(
            (back.name.as_str(), back.incarnation, mac),
            ("a", 9, [3; 32])
        );
    }

    #[test]
    fn a_hello_carries_a_version_and_a_nonce_only() {
        // Nothing in it names the node, its address or its incarnation.
        assert_eq!(encode_hello(&[0; 32]).len(), 4 + 1 + 1 + 32);
    }

    #[test]
    fn peers_frame_round_trips_and_rejects_truncation() {
        let list = vec![("a".to_string(), "127.0.0.1:1".to_string())];
        let body = encode_peers(&list).slice(5..);
        assert_eq!(decode_peers(body.clone()).expect("decodes"), list);
        assert!(decode_peers(body.slice(..body.len() - 1)).is_err());
    }
}
