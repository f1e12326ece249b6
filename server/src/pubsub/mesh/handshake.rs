//! Meeting a peer: both sides send `Hello` at once, then each sends `Auth` = HMAC(secret,
//! label, own role, own nonce, other nonce, own name, other name) and checks the other's proof
//! in constant time. The secret never crosses the wire; fresh nonces on both sides stop replay,
//! and the role byte plus refusing our own name stop a proof from being reflected back at us.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::wire::{
    decode_auth, decode_hello, encode_auth, encode_hello, encode_reject, get_str16, read_frame,
    KIND_REJECT, MAX_HANDSHAKE_FRAME,
};
use super::Shared;

/// Domain-separation label mixed into every proof.
const AUTH_LABEL: &[u8] = b"rollcall-mesh-auth-v1";

/// A finished handshake, ready to be registered.
pub(super) struct Established {
    pub(super) name: String,
    pub(super) addr: String,
    pub(super) we_dialed: bool,
    pub(super) incarnation: u64,
    pub(super) reader: BufReader<OwnedReadHalf>,
    pub(super) writer: OwnedWriteHalf,
}

#[derive(Debug)]
pub(super) enum HandshakeError {
    Io(io::Error),
    Timeout,
    Protocol(String),
    SelfConnection,
    DuplicateName(String),
    AuthFailed(String),
    Refused(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Timeout => write!(f, "handshake timed out"),
            HandshakeError::Protocol(m) => write!(f, "protocol error: {m}"),
            HandshakeError::SelfConnection => write!(f, "this address is ourselves"),
            HandshakeError::DuplicateName(n) => write!(
                f,
                "another node also calls itself {n:?}; every node needs a unique --node name"
            ),
            HandshakeError::AuthFailed(n) => write!(
                f,
                "authentication failed for node {n:?}: its --cluster-secret differs from ours"
            ),
            HandshakeError::Refused(r) => write!(f, "refused by the peer: {r}"),
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

pub(super) async fn handshake(
    shared: &Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    we_dial: bool,
) -> Result<Established, HandshakeError> {
    // Frames must go out as soon as they are written: latency beats packet count here.
    stream.set_nodelay(true)?;
    let (read, mut writer) = stream.into_split();
    let mut reader = BufReader::new(read);
    let nonce: [u8; 32] = rand::random();
    let result = handshake_steps(shared, &mut reader, &mut writer, remote, we_dial, &nonce).await;
    let (name, addr, incarnation) = match result {
        Ok(found) => found,
        Err(e) => {
            let reason = match &e {
                HandshakeError::AuthFailed(_) => {
                    Some("authentication failed: cluster secrets differ")
                }
                HandshakeError::DuplicateName(_) => Some("duplicate node name"),
                HandshakeError::Protocol(_) => Some("protocol error"),
                _ => None,
            };
            if let Some(reason) = reason {
                let _ = writer.write_all(&encode_reject(reason)).await;
                let _ = writer.shutdown().await;
            }
            return Err(e);
        }
    };
    Ok(Established {
        name,
        addr,
        incarnation,
        we_dialed: we_dial,
        reader,
        writer,
    })
}

async fn handshake_steps(
    shared: &Arc<Shared>,
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    remote: SocketAddr,
    we_dial: bool,
    nonce: &[u8; 32],
) -> Result<(String, String, u64), HandshakeError> {
    writer
        .write_all(&encode_hello(
            &shared.name,
            &shared.advertise,
            nonce,
            shared.incarnation,
        ))
        .await?;
    let hello = read_handshake_frame(reader).await?;
    let (their_name, their_advertise, their_nonce, their_incarnation) =
        decode_hello(hello).map_err(HandshakeError::Protocol)?;
    if their_name == shared.name {
        if their_incarnation == shared.incarnation {
            return Err(HandshakeError::SelfConnection);
        }
        return Err(HandshakeError::DuplicateName(their_name));
    }
    if &their_nonce == nonce {
        return Err(HandshakeError::Protocol("peer echoed our nonce".into()));
    }
    let (our_role, their_role) = if we_dial { (b'D', b'A') } else { (b'A', b'D') };
    let ours = proof(
        &shared.secret,
        our_role,
        nonce,
        &their_nonce,
        &shared.name,
        &their_name,
    )?
    .finalize()
    .into_bytes();
    writer.write_all(&encode_auth(&ours)).await?;
    let auth = read_handshake_frame(reader).await?;
    let their_proof = decode_auth(auth).map_err(HandshakeError::Protocol)?;
    proof(
        &shared.secret,
        their_role,
        &their_nonce,
        nonce,
        &their_name,
        &shared.name,
    )?
    .verify_slice(&their_proof)
    .map_err(|_| HandshakeError::AuthFailed(their_name.clone()))?;
    Ok((
        their_name,
        effective_addr(&their_advertise, remote),
        their_incarnation,
    ))
}

async fn read_handshake_frame(
    reader: &mut BufReader<OwnedReadHalf>,
) -> Result<Bytes, HandshakeError> {
    let frame = read_frame(reader, MAX_HANDSHAKE_FRAME)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => HandshakeError::Protocol(e.to_string()),
            _ => HandshakeError::Io(e),
        })?
        .ok_or_else(|| HandshakeError::Io(io::ErrorKind::UnexpectedEof.into()))?;
    if frame.first() == Some(&KIND_REJECT) {
        let mut body = frame.slice(1..);
        let reason = get_str16(&mut body).unwrap_or_else(|_| "no reason given".into());
        return Err(HandshakeError::Refused(reason));
    }
    Ok(frame)
}

/// Our side of the proof for a handshake.
fn proof(
    secret: &[u8],
    role: u8,
    own_nonce: &[u8; 32],
    other_nonce: &[u8; 32],
    own: &str,
    other: &str,
) -> Result<Hmac<Sha256>, HandshakeError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .map_err(|_| HandshakeError::Protocol("unusable cluster secret".into()))?;
    mac.update(AUTH_LABEL);
    mac.update(&[role]);
    mac.update(own_nonce);
    mac.update(other_nonce);
    for name in [own, other] {
        mac.update(&(name.len() as u32).to_be_bytes());
        mac.update(name.as_bytes());
    }
    Ok(mac)
}

/// The address to dial a node at: its advertised address, with an unspecified host replaced by
/// the address we actually see it from.
fn effective_addr(advertised: &str, seen_from: SocketAddr) -> String {
    match advertised.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            SocketAddr::new(seen_from.ip(), addr.port()).to_string()
        }
        _ => advertised.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_advertised_host_becomes_the_observed_one() {
        let seen: SocketAddr = "10.1.2.3:55555".parse().expect("addr");
        assert_eq!(effective_addr("0.0.0.0:7000", seen), "10.1.2.3:7000");
        assert_eq!(effective_addr("10.9.9.9:7000", seen), "10.9.9.9:7000");
        assert_eq!(effective_addr("node-a.svc:7000", seen), "node-a.svc:7000");
    }
}
