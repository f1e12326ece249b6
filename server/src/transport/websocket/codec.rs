//! RFC 6455 framing, server side, as pure functions: a frame header is read from bytes
//! ([`parse_header`]) and written into a small array ([`encode_header`]); payloads are
//! unmasked in place ([`unmask`]). No buffers live here: the connection decides what to
//! allocate and for how long.

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// The next fragment of a text or binary message.
    Continuation,
    /// A UTF-8 text message (or its first fragment).
    Text,
    /// A binary message (or its first fragment).
    Binary,
    /// The close handshake.
    Close,
    /// A ping, answered with a pong.
    Ping,
    /// A pong.
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A frame header as a client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The last frame of its message.
    pub fin: bool,
    /// What the frame is.
    pub opcode: OpCode,
    /// The masking key (a client must mask every frame).
    pub mask: [u8; 4],
    /// Payload length in bytes.
    pub len: u64,
}

/// Why a client's frame header is refused (close code 1002, protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// An RSV bit is set; no extension was negotiated.
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    UnknownOpCode(u8),
    /// The client did not mask the frame.
    Unmasked,
    /// A control frame that is fragmented or longer than 125 bytes.
    BadControlFrame,
    /// A 64-bit length with its top bit set.
    BadLength,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::ReservedBits => f.write_str("reserved bits set without an extension"),
            HeaderError::UnknownOpCode(op) => write!(f, "unknown opcode {op:#x}"),
            HeaderError::Unmasked => f.write_str("client frames must be masked"),
            HeaderError::BadControlFrame => {
                f.write_str("control frames must be whole and at most 125 bytes")
            }
            HeaderError::BadLength => f.write_str("invalid payload length"),
        }
    }
}

/// The longest header a client may send: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;

/// How many header bytes `first_two` announces (2 to 14).
pub fn header_len(first_two: [u8; 2]) -> usize {
    let ext = match first_two[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if first_two[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// Reads a complete header (`bytes` holds exactly [`header_len`] bytes).
pub fn parse_header(bytes: &[u8]) -> Result<Header, HeaderError> {
    let (Some(&b0), Some(&b1)) = (bytes.first(), bytes.get(1)) else {
        return Err(HeaderError::BadLength);
    };
    if b0 & 0x70 != 0 {
        return Err(HeaderError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(HeaderError::UnknownOpCode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(HeaderError::Unmasked);
    }
    let (len, rest) = match b1 & 0x7F {
        126 => {
            let ext = bytes.get(2..4).ok_or(HeaderError::BadLength)?;
            (u64::from(u16::from_be_bytes([ext[0], ext[1]])), 4)
        }
        127 => {
            let ext: [u8; 8] = bytes
                .get(2..10)
                .and_then(|e| e.try_into().ok())
                .ok_or(HeaderError::BadLength)?;
            let len = u64::from_be_bytes(ext);
            if len >> 63 != 0 {
                return Err(HeaderError::BadLength);
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    let mask: [u8; 4] = bytes
        .get(rest..rest + 4)
        .and_then(|m| m.try_into().ok())
        .ok_or(HeaderError::BadLength)?;
    if opcode.is_control() && (!fin || len > 125) {
        return Err(HeaderError::BadControlFrame);
    }
    Ok(Header {
        fin,
        opcode,
        mask,
        len,
    })
}

/// XORs `data` with `mask`, `offset` bytes into the payload.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) & 3];
    }
}

/// The longest header the server writes: 2 + 8 (length), never masked.
pub const MAX_SERVER_HEADER: usize = 10;

/// The header of an unfragmented, unmasked server frame of `len` bytes: the array and how
/// many of its bytes are used.
pub fn encode_header(opcode: OpCode, len: usize) -> ([u8; MAX_SERVER_HEADER], usize) {
    let mut header = [0u8; MAX_SERVER_HEADER];
    header[0] = 0x80 | opcode.bits();
    let used = if len < 126 {
        // `len` < 126 fits the 7 bits.
        header[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, used)
}

/// A close frame's payload: the code, then the reason (at most 123 bytes, cut by the caller).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// A whole masked client frame, as a browser writes it (tests here and in `conn`, and the
/// load tool's clients).
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let mut masked = payload.to_vec();
    unmask(&mut masked, mask, 0);
    out.extend_from_slice(&masked);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_every_length_form_round_trip_through_a_masked_client_frame() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 1 << 20] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frame = client_frame(0x2, true, &payload, [1, 2, 3, 4]);
            let hl = header_len([frame[0], frame[1]]);
            let header = parse_header(&frame[..hl]).unwrap();
            assert_eq!(header.len as usize, len);
            assert_eq!(header.opcode, OpCode::Binary);
            assert!(header.fin);
            let mut body = frame[hl..].to_vec();
            // Unmasking in two pieces gives the same as in one.
            let split = body.len() / 3;
            let (a, b) = body.split_at_mut(split);
            unmask(a, header.mask, 0);
            unmask(b, header.mask, split);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn protocol_violations_are_refused_with_a_reason() {
        let masked = |b0: u8, b1: u8| {
            let mut f = vec![b0, b1 | 0x80];
            f.extend_from_slice(&[0; 4]);
            f
        };
        assert_eq!(parse_header(&[0x81, 0x05]), Err(HeaderError::Unmasked));
        assert_eq!(
            parse_header(&masked(0xC1, 0)),
            Err(HeaderError::ReservedBits)
        );
        assert_eq!(
            parse_header(&masked(0x83, 0)),
            Err(HeaderError::UnknownOpCode(3))
        );
        assert_eq!(
            parse_header(&masked(0x09, 0)),
            Err(HeaderError::BadControlFrame),
            "a fragmented ping"
        );
        let mut long_ping = vec![0x89, 0x80 | 126, 0, 126];
        long_ping.extend_from_slice(&[0; 4]);
        assert_eq!(parse_header(&long_ping), Err(HeaderError::BadControlFrame));
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        assert_eq!(encode_header(OpCode::Text, 5).1, 2);
        assert_eq!(&encode_header(OpCode::Text, 5).0[..2], &[0x81, 5]);
        let (h, n) = encode_header(OpCode::Binary, 300);
        assert_eq!(&h[..n], &[0x82, 126, 1, 44]);
        let (h, n) = encode_header(OpCode::Text, 70_000);
        assert_eq!(n, 10);
        assert_eq!(h[1], 127);
        assert_eq!(u64::from_be_bytes(h[2..10].try_into().unwrap()), 70_000);
    }
}
