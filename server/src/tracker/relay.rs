//! The wire form of a room relay between nodes (pubsub channel `"relay"`): a client event that
//! every node delivers to its own subscribers of the topic.
//!
//! Layout: version byte `1`, payload kind (`0` JSON text, `1` raw bytes), topic length (u16 BE),
//! topic, event length (u16 BE), event, then the payload to the end. Decoding never panics; it says
//! what is wrong.

use rollcall_core::protocol::Payload;

const VERSION: u8 = 1;
const JSON: u8 = 0;
const BINARY: u8 = 1;

/// A relayed client event.
#[derive(Debug, Clone, PartialEq)]
pub struct Relay {
    /// The topic.
    pub topic: String,
    /// The event name.
    pub event: String,
    /// The payload, JSON or binary.
    pub payload: Payload,
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Option<()> {
    let len = u16::try_from(s.len()).ok()?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(())
}

/// Encodes a relay; `None` if the topic or event is longer than 65 535 bytes.
pub fn encode(topic: &str, event: &str, payload: &Payload) -> Option<Vec<u8>> {
    let (kind, body) = match payload {
        Payload::Json(v) => (JSON, serde_json::to_vec(v).ok()?),
        Payload::Binary(b) => (BINARY, b.clone()),
    };
    let mut out = Vec::with_capacity(5 + topic.len() + event.len() + body.len());
    out.push(VERSION);
    out.push(kind);
    put_str(&mut out, topic)?;
    put_str(&mut out, event)?;
    out.extend_from_slice(&body);
    Some(out)
}

fn take_str<'a>(bytes: &mut &'a [u8], what: &str) -> Result<&'a str, String> {
    let (len, rest) = bytes
        .split_first_chunk::<2>()
        .ok_or_else(|| format!("truncated before the {what} length"))?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(format!("truncated {what}"));
    }
    let (s, rest) = rest.split_at(len);
    *bytes = rest;
    std::str::from_utf8(s).map_err(|_| format!("the {what} is not UTF-8"))
}

/// Decodes a relay, or says what is wrong with the bytes.
pub fn decode(bytes: &[u8]) -> Result<Relay, String> {
    let [version, kind, rest @ ..] = bytes else {
        return Err("truncated relay header".into());
    };
    if *version != VERSION {
        return Err(format!("unknown relay version {version}"));
    }
    let mut rest = rest;
    let topic = take_str(&mut rest, "topic")?.to_string();
    let event = take_str(&mut rest, "event")?.to_string();
    let payload = match *kind {
        JSON => Payload::Json(
            serde_json::from_slice(rest).map_err(|e| format!("bad JSON payload: {e}"))?,
        ),
        BINARY => Payload::Binary(rest.to_vec()),
        other => return Err(format!("unknown payload kind {other}")),
    };
    Ok(Relay {
        topic,
        event,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_binary_relays_round_trip() {
        for payload in [
            Payload::Json(json!({"body": "hi", "n": [1, 2]})),
            Payload::Binary(vec![0, 1, 2, 255]),
        ] {
            let bytes = encode("room:1", "shout", &payload).unwrap();
            assert_eq!(
                decode(&bytes).unwrap(),
                Relay {
                    topic: "room:1".into(),
                    event: "shout".into(),
                    payload
                }
            );
        }
    }

    #[test]
    fn every_truncation_of_a_relay_is_an_error_not_a_panic() {
        let bytes = encode("room:1", "shout", &Payload::Json(json!({"a": 1}))).unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn unknown_versions_and_kinds_are_refused_by_name() {
        assert!(decode(&[9, 0, 0, 0, 0, 0]).unwrap_err().contains("version"));
        assert!(decode(&[1, 7, 0, 0, 0, 0]).unwrap_err().contains("kind"));
    }
}
