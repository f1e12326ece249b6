//! A mesh peer spoken by hand over a raw TCP stream: the frames and the handshake, written from
//! the wire format (`pubsub/mesh/wire.rs`, `handshake.rs`) rather than with the server's code,
//! so that tests see what a stranger on the network sees.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long the other side may take to answer or close.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Frame kinds.
pub const HELLO: u8 = 1;
pub const AUTH: u8 = 2;
pub const REJECT: u8 = 3;
pub const IDENTIFY: u8 = 8;
/// The protocol version in `Hello`.
pub const VERSION: u8 = 2;

/// Writes one frame body with its length prefix.
pub async fn write_frame(s: &mut TcpStream, body: &[u8]) {
    s.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .expect("write");
    s.write_all(body).await.expect("write");
}

/// Reads one frame body, or `None` once the peer closed.
pub async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    timeout(DEADLINE, async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.ok()?;
        Some(body)
    })
    .await
    .expect("the peer answers or closes before the deadline")
}

/// A `Hello` body: kind, version, nonce.
pub fn hello(nonce: &[u8; 32]) -> Vec<u8> {
    let mut body = vec![HELLO, VERSION];
    body.extend_from_slice(nonce);
    body
}

fn mac(secret: &str, label: &[u8], role: u8, maker: &[u8], other: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(label);
    mac.update(&[role]);
    mac.update(maker);
    mac.update(other);
    mac
}

/// An `Auth` body: the proof of `role` (`D` dialer, `A` acceptor) made by the side whose nonce
/// is `maker` to the side whose nonce is `other`.
pub fn auth(secret: &str, role: u8, maker: &[u8], other: &[u8]) -> Vec<u8> {
    let proof = mac(secret, b"rollcall-mesh-auth-v2", role, maker, other).finalize();
    let mut body = vec![AUTH];
    body.extend_from_slice(&proof.into_bytes());
    body
}

/// An `Identify` body for `name` (address `127.0.0.1:1`, incarnation 99) by `role`.
pub fn identify(secret: &str, role: u8, maker: &[u8], other: &[u8], name: &str) -> Vec<u8> {
    let (addr, incarnation) = ("127.0.0.1:1", 99u64);
    let mut m = mac(secret, b"rollcall-mesh-identify-v2", role, maker, other);
    let mut body = vec![IDENTIFY];
    for field in [name, addr] {
        m.update(&(field.len() as u32).to_be_bytes());
        m.update(field.as_bytes());
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    m.update(&incarnation.to_be_bytes());
    body.extend_from_slice(&incarnation.to_be_bytes());
    body.extend_from_slice(&m.finalize().into_bytes());
    body
}

/// The node name in an `Identify` body.
pub fn identified_name(body: &[u8]) -> String {
    assert_eq!(body.first(), Some(&IDENTIFY), "an identify frame: {body:?}");
    let len = usize::from(u16::from_be_bytes([body[1], body[2]]));
    String::from_utf8(body[3..3 + len].to_vec()).expect("utf-8")
}

/// Speaks our side of the handshake on `s` as node `name` holding `secret`, `role` `D` (we
/// dialed) or `A` (we accepted); returns the other node's name.
pub async fn handshake(s: &mut TcpStream, name: &str, secret: &str, role: u8) -> String {
    let ours = [5u8; 32];
    write_frame(s, &hello(&ours)).await;
    let their_hello = read_frame(s).await.expect("hello");
    assert_eq!(their_hello.len(), 34, "a hello is a version and a nonce");
    let theirs = their_hello[2..].to_vec();
    if role == b'D' {
        write_frame(s, &auth(secret, b'D', &ours, &theirs)).await;
        let their_auth = read_frame(s).await.expect("auth");
        assert_eq!(their_auth.first(), Some(&AUTH), "accepted: {their_auth:?}");
        let their_id = read_frame(s).await.expect("identify");
        write_frame(s, &identify(secret, b'D', &ours, &theirs, name)).await;
        identified_name(&their_id)
    } else {
        let their_auth = read_frame(s).await.expect("auth");
        assert_eq!(their_auth.first(), Some(&AUTH), "a proof: {their_auth:?}");
        write_frame(s, &auth(secret, b'A', &ours, &theirs)).await;
        write_frame(s, &identify(secret, b'A', &ours, &theirs, name)).await;
        identified_name(&read_frame(s).await.expect("identify"))
    }
}
