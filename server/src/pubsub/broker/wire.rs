//! The small header brokers need, since a broker message carries only bytes: who sent it and
//! on which channel. Layout: version `1`, sender length (u8), sender, channel length (u8),
//! channel, then the payload to the end.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::pubsub::Envelope;

const VERSION: u8 = 1;

/// Encodes a broker message. Names longer than 255 bytes cannot occur (validated at start,
/// channels are ours); they are truncated rather than panicking.
pub(crate) fn encode(from: &str, channel: &str, payload: &[u8]) -> Bytes {
    let from = &from.as_bytes()[..from.len().min(255)];
    let channel = &channel.as_bytes()[..channel.len().min(255)];
    let mut buf = BytesMut::with_capacity(3 + from.len() + channel.len() + payload.len());
    buf.put_u8(VERSION);
    buf.put_u8(from.len() as u8);
    buf.put_slice(from);
    buf.put_u8(channel.len() as u8);
    buf.put_slice(channel);
    buf.put_slice(payload);
    buf.freeze()
}

/// Decodes a broker message, or says what is wrong with it.
pub(crate) fn decode(mut buf: Bytes) -> Result<Envelope, String> {
    if buf.remaining() < 1 {
        return Err("empty message".into());
    }
    let version = buf.get_u8();
    if version != VERSION {
        return Err(format!("unknown message version {version}"));
    }
    let from = take_str(&mut buf, "sender")?;
    let channel = take_str(&mut buf, "channel")?;
    Ok(Envelope {
        from,
        channel,
        payload: buf,
    })
}

fn take_str(buf: &mut Bytes, what: &str) -> Result<String, String> {
    if buf.remaining() < 1 {
        return Err(format!("truncated before the {what} length"));
    }
    let len = usize::from(buf.get_u8());
    if buf.remaining() < len {
        return Err(format!("truncated {what}"));
    }
    let raw = buf.split_to(len);
    String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_header_round_trips() {
        let bytes = encode("node-a", "tracker", b"\x00\x01payload");
        let env = decode(bytes).expect("decodes");
        assert_eq!(env.from, "node-a");
        assert_eq!(env.channel, "tracker");
        assert_eq!(&env.payload[..], b"\x00\x01payload");
    }

    #[test]
    fn broker_header_rejects_truncated_input_without_panicking() {
        let full = encode("node-a", "tracker", b"x");
        for cut in 0..full.len() - 1 {
            // Every strict prefix that stops inside the header is an error, never a panic.
            let prefix = full.slice(..cut);
            if cut < 2 + "node-a".len() + 1 + "tracker".len() {
                assert!(decode(prefix).is_err(), "prefix {cut}");
            }
        }
        assert!(decode(Bytes::from_static(b"\x09abc")).is_err());
    }
}
