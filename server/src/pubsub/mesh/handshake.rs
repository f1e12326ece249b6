//! Meeting a peer, saying nothing about ourselves until it has proven the cluster secret.
//!
//! 1. Both sides send `Hello`: a protocol version and a fresh 32-byte nonce, nothing else.
//! 2. The dialer sends `Auth` = HMAC(secret, label, `D`, its nonce, the acceptor's nonce).
//! 3. The acceptor checks it in constant time; a wrong proof gets `Reject` and the connection
//!    closes, so a stranger that connects learns a random nonce and nothing more. Only then does
//!    the acceptor send its own `Auth` (role `A`) and its `Identify` (name, advertised address,
//!    incarnation, with an HMAC binding them to both nonces).
//! 4. The dialer checks the acceptor's proof the same way before it sends its own `Identify`.
//!
//! The secret never crosses the wire; fresh nonces on both sides stop replay, the role byte
//! stops a proof from being reflected back at its maker, and a peer that echoes our nonce is
//! refused. A node we dial that is not ours sees our proof over its own nonce (which is of use
//! only to relay this very connection), never our name.

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
    decode_auth, decode_hello, decode_identify, encode_auth, encode_hello, encode_identify,
    encode_reject, get_str16, read_frame, Identity, KIND_REJECT, MAX_HANDSHAKE_FRAME,
};
use super::Shared;

/// Domain-separation label mixed into every proof.
const AUTH_LABEL: &[u8] = b"rollcall-mesh-auth-v2";
/// Domain-separation label of the MAC over an `Identify`.
const IDENTIFY_LABEL: &[u8] = b"rollcall-mesh-identify-v2";

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
    AuthFailed,
    Refused(String),
}

impl HandshakeError {
    /// A short fixed text for log summaries and the `Reject` frame.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Io(_) => "connection lost",
            HandshakeError::Timeout => "handshake timed out",
            HandshakeError::Protocol(_) => "protocol error",
            HandshakeError::SelfConnection => "connection to ourselves",
            HandshakeError::DuplicateName(_) => "duplicate node name",
            HandshakeError::AuthFailed => "authentication failed",
            HandshakeError::Refused(_) => "refused by the peer",
        }
    }
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
            HandshakeError::AuthFailed => write!(
                f,
                "authentication failed: the peer's --cluster-secret differs from ours"
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
    let result = handshake_steps(shared, &mut reader, &mut writer, we_dial, &nonce).await;
    let peer = match result {
        Ok(peer) => peer,
        Err(e) => {
            if matches!(
                e,
                HandshakeError::AuthFailed
                    | HandshakeError::DuplicateName(_)
                    | HandshakeError::Protocol(_)
            ) {
                let _ = writer.write_all(&encode_reject(e.reason())).await;
                let _ = writer.shutdown().await;
            }
            return Err(e);
        }
    };
    Ok(Established {
        name: peer.name,
        addr: effective_addr(&peer.advertise, remote),
        incarnation: peer.incarnation,
        we_dialed: we_dial,
        reader,
        writer,
    })
}

/// Both nonces of a handshake and our role in it: what every proof and MAC is bound to.
struct Session<'a> {
    secret: &'a [u8],
    ours: &'a [u8; 32],
    theirs: [u8; 32],
    our_role: u8,
    their_role: u8,
}

impl Session<'_> {
    fn mac(&self, label: &[u8], role: u8) -> Result<Hmac<Sha256>, HandshakeError> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret)
            .map_err(|_| HandshakeError::Protocol("unusable cluster secret".into()))?;
        mac.update(label);
        mac.update(&[role]);
        // The maker's nonce first, so that the two roles' inputs never coincide.
        let (first, second) = if role == self.our_role {
            (self.ours, &self.theirs)
        } else {
            (&self.theirs, self.ours)
        };
        mac.update(first);
        mac.update(second);
        Ok(mac)
    }

    fn our_proof(&self) -> Result<Bytes, HandshakeError> {
        let proof = self.mac(AUTH_LABEL, self.our_role)?.finalize().into_bytes();
        Ok(encode_auth(&proof))
    }

    fn check_their_proof(&self, proof: &[u8; 32]) -> Result<(), HandshakeError> {
        self.mac(AUTH_LABEL, self.their_role)?
            .verify_slice(proof)
            .map_err(|_| HandshakeError::AuthFailed)
    }

    fn identity_mac(&self, role: u8, id: &Identity) -> Result<Hmac<Sha256>, HandshakeError> {
        let mut mac = self.mac(IDENTIFY_LABEL, role)?;
        for field in [id.name.as_bytes(), id.advertise.as_bytes()] {
            mac.update(&(field.len() as u32).to_be_bytes());
            mac.update(field);
        }
        mac.update(&id.incarnation.to_be_bytes());
        Ok(mac)
    }

    fn our_identify(&self, id: &Identity) -> Result<Bytes, HandshakeError> {
        let mac = self
            .identity_mac(self.our_role, id)?
            .finalize()
            .into_bytes();
        Ok(encode_identify(id, &mac))
    }

    fn read_their_identify(&self, frame: Bytes) -> Result<Identity, HandshakeError> {
        let (id, mac) = decode_identify(frame).map_err(HandshakeError::Protocol)?;
        self.identity_mac(self.their_role, &id)?
            .verify_slice(&mac)
            .map_err(|_| HandshakeError::AuthFailed)?;
        Ok(id)
    }
}

async fn handshake_steps(
    shared: &Arc<Shared>,
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    we_dial: bool,
    nonce: &[u8; 32],
) -> Result<Identity, HandshakeError> {
    writer.write_all(&encode_hello(nonce)).await?;
    let hello = read_handshake_frame(reader).await?;
    let their_nonce = decode_hello(hello).map_err(HandshakeError::Protocol)?;
    if &their_nonce == nonce {
        return Err(HandshakeError::Protocol("peer echoed our nonce".into()));
    }
    let (our_role, their_role) = if we_dial { (b'D', b'A') } else { (b'A', b'D') };
    let session = Session {
        secret: &shared.secret,
        ours: nonce,
        theirs: their_nonce,
        our_role,
        their_role,
    };
    let ours = Identity {
        name: shared.name.clone(),
        advertise: shared.advertise.clone(),
        incarnation: shared.incarnation,
    };
    if we_dial {
        writer.write_all(&session.our_proof()?).await?;
        session.check_their_proof(&read_auth(reader).await?)?;
        let theirs = session.read_their_identify(read_handshake_frame(reader).await?)?;
        check_identity(shared, &theirs)?;
        writer.write_all(&session.our_identify(&ours)?).await?;
        Ok(theirs)
    } else {
        session.check_their_proof(&read_auth(reader).await?)?;
        writer.write_all(&session.our_proof()?).await?;
        writer.write_all(&session.our_identify(&ours)?).await?;
        let theirs = session.read_their_identify(read_handshake_frame(reader).await?)?;
        check_identity(shared, &theirs)?;
        Ok(theirs)
    }
}

/// Refuses a peer that is ourselves (our own address in the seed list) or that has our name.
fn check_identity(shared: &Shared, theirs: &Identity) -> Result<(), HandshakeError> {
    if theirs.name != shared.name {
        return Ok(());
    }
    if theirs.incarnation == shared.incarnation {
        return Err(HandshakeError::SelfConnection);
    }
    Err(HandshakeError::DuplicateName(theirs.name.clone()))
}

async fn read_auth(reader: &mut BufReader<OwnedReadHalf>) -> Result<[u8; 32], HandshakeError> {
    let frame = read_handshake_frame(reader).await?;
    decode_auth(frame).map_err(HandshakeError::Protocol)
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
