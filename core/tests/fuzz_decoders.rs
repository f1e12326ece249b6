//! Fuzz targets for every decoder of the core: the V1 JSON, V2 JSON and V2 binary frame codecs
//! (both directions) and the replication message codec, plus the shard that consumes decoded
//! replication messages. Each target runs on stable inside `cargo test` with proptest.
//!
//! Inputs are random bytes and text, and *mutations of valid frames* (byte flips, inserts,
//! deletes, truncations), which reach much deeper into a decoder than random bytes do. The
//! properties: no decoder panics; whatever decodes re-encodes and decodes again; a replication
//! message that passes validation never panics the shard that receives it.
//!
//! Budget: `ROLLCALL_FUZZ_CASES` cases per target (default 1000, a second or two in debug).
//! A long run: `ROLLCALL_FUZZ_CASES=1000000 cargo test --release -p rollcall-core --test fuzz_decoders`.

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rollcall_core::protocol::{Frame, Message, Payload, Serializer};
use rollcall_core::tracker::{Meta, ReplicaId, ReplicationMessage, Shard, ShardConfig};
use serde_json::json;

fn cases() -> u32 {
    std::env::var("ROLLCALL_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // A failure prints its minimal input; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    /// Overwrite with an "interesting" byte (length fields, quotes, brackets).
    Poke(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(vec![
        0u8, 1, 2, 3, 0x7f, 0x80, 0xff, b'"', b'[', b']', b'{', b'}', b',', b':', b'\\', b'0',
    ]);
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), interesting).prop_map(|(i, b)| Mutation::Poke(i, b)),
    ]
}

fn mutate(mut bytes: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match *edit {
            Mutation::Flip(i, x) if len > 0 => bytes[i % len] ^= x,
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Delete(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            Mutation::Poke(i, b) if len > 0 => bytes[i % len] = b,
            _ => {}
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..6)
}

/// Valid client messages of every shape the server reads.
fn seed_messages() -> Vec<Message> {
    let msg =
        |join_ref: Option<&str>, r: Option<&str>, topic: &str, event: &str, payload| Message {
            join_ref: join_ref.map(String::from),
            msg_ref: r.map(String::from),
            topic: topic.into(),
            event: event.into(),
            payload,
        };
    vec![
        msg(
            None,
            Some("1"),
            "phoenix",
            "heartbeat",
            Payload::Json(json!({})),
        ),
        msg(
            Some("3"),
            Some("3"),
            "room:lobby",
            "phx_join",
            Payload::Json(json!({"meta": {"name": "Ada", "n": [1, 2.5, null]}, "track": true})),
        ),
        msg(
            Some("3"),
            Some("4"),
            "room:lobby",
            "track",
            Payload::Json(json!({"status": "away"})),
        ),
        msg(
            Some("3"),
            Some("5"),
            "room:lobby",
            "phx_leave",
            Payload::Json(json!({})),
        ),
        msg(
            Some("3"),
            Some("6"),
            "room:lobby",
            "cursor",
            Payload::Binary(vec![0, 1, 2, 255]),
        ),
        msg(
            Some("3"),
            None,
            "room:ünïcödé",
            "ev",
            Payload::Json(json!("text \u{1F600}")),
        ),
    ]
}

/// Every seed as the bytes of a frame, with the serializer that reads it.
fn seed_frames() -> Vec<(Serializer, bool, Vec<u8>)> {
    let mut out = Vec::new();
    for msg in seed_messages() {
        for serializer in [Serializer::V1Json, Serializer::V2] {
            match serializer.encode_client(&msg) {
                Ok(Frame::Text(t)) => out.push((serializer, false, t.into_bytes())),
                Ok(Frame::Binary(b)) => out.push((serializer, true, b)),
                Err(_) => {} // binary payloads have no V1 form
            }
        }
    }
    out
}

/// The frame a transport would hand over: text only when it is UTF-8 (the WebSocket layer
/// refuses the rest before any decoder runs).
fn as_frame(binary: bool, bytes: Vec<u8>) -> Frame {
    if binary {
        Frame::Binary(bytes)
    } else {
        match String::from_utf8(bytes) {
            Ok(t) => Frame::Text(t),
            Err(e) => Frame::Text(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }
}

/// Decodes with every decoder; whatever a client decoder accepts must survive a round trip.
fn check_all_decoders(frame: &Frame) {
    for serializer in [Serializer::V1Json, Serializer::V2] {
        if let Ok(msg) = serializer.decode(frame) {
            if let Ok(again) = serializer.encode_client(&msg) {
                let back = serializer
                    .decode(&again)
                    .unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
                assert_eq!(
                    (&back.join_ref, &back.msg_ref, &back.topic, &back.event),
                    (&msg.join_ref, &msg.msg_ref, &msg.topic, &msg.event)
                );
            }
        }
        let _ = serializer.decode_server(frame);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn v1_and_v2_json_decoders_survive_any_text(text in "(?s).{0,200}") {
        check_all_decoders(&Frame::Text(text));
    }

    #[test]
    fn json_decoders_survive_json_like_text(
        text in r#"[\[\]{}",:0-9a-z_ .\\-]{0,120}"#
    ) {
        check_all_decoders(&Frame::Text(text));
    }

    #[test]
    fn v2_binary_decoders_survive_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_all_decoders(&Frame::Binary(bytes));
    }

    #[test]
    fn decoders_survive_mutated_valid_frames(
        seed in prop::sample::select(seed_frames()),
        edits in edits(),
    ) {
        let (_, binary, bytes) = seed;
        check_all_decoders(&as_frame(binary, mutate(bytes, &edits)));
    }

    #[test]
    fn unmutated_seeds_decode_with_their_own_serializer(
        seed in prop::sample::select(seed_frames()),
    ) {
        let (serializer, binary, bytes) = seed;
        prop_assert!(serializer.decode(&as_frame(binary, bytes)).is_ok());
    }
}

// ---- replication messages ----

/// Valid replication messages of every kind, with real CRDT payloads.
fn seed_replication() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(mut a) = Shard::new(ReplicaId::new("a", 1), ShardConfig::default(), 0) else {
        return out;
    };
    let Ok(mut b) = Shard::new(ReplicaId::new("b", 2), ShardConfig::default(), 0) else {
        return out;
    };
    for (conn, key) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        let meta = Meta::new(r#"{"name":"x","n":[1,2]}"#).unwrap_or_else(|_| Meta::empty());
        let _ = a.track(conn, "room:lobby", key, meta);
    }
    let mut messages: Vec<ReplicationMessage> = Vec::new();
    let first = a.tick(1_500).messages.into_iter().map(|o| o.message);
    messages.extend(first);
    messages.extend(b.tick(1_500).messages.into_iter().map(|o| o.message));
    for m in messages.clone() {
        b.receive("a", m, 1_500);
    }
    for now in [3_000, 4_500, 6_000] {
        messages.extend(b.tick(now).messages.into_iter().map(|o| o.message));
    }
    // A transfer request from a replica that knows nothing, and a's answer: a full state.
    let request = ReplicationMessage::TransferRequest {
        from: ReplicaId::new("b", 2),
        request_id: 7,
        clock: Default::default(),
    };
    messages.push(request.clone());
    messages.extend(
        a.receive("b", request, 6_000)
            .messages
            .into_iter()
            .map(|o| o.message),
    );
    let _ = a.track(4, "room:other", "dave", Meta::empty());
    messages.extend(a.tick(7_500).messages.into_iter().map(|o| o.message));
    messages.extend(a.graceful_permdown().into_iter().map(|o| o.message));
    for m in messages {
        if let Ok(bytes) = m.encode() {
            out.push(bytes);
        }
    }
    out
}

/// A shard with some state of its own, to receive fuzzed messages.
fn receiver() -> Option<Shard> {
    let mut c = Shard::new(ReplicaId::new("c", 3), ShardConfig::default(), 0).ok()?;
    let _ = c.track(9, "room:lobby", "zed", Meta::empty());
    c.tick(1_500);
    Some(c)
}

fn check_replication(bytes: &[u8]) {
    if let Ok(msg) = ReplicationMessage::decode(bytes) {
        let again = msg.encode().expect("a decoded message encodes");
        assert_eq!(ReplicationMessage::decode(&again).as_ref(), Ok(&msg));
        // Validated input must never panic the merge.
        if let Some(mut shard) = receiver() {
            let sender = msg.sender().clone();
            shard.receive(&format!("{sender:?}"), msg.clone(), 3_000);
            shard.receive("a", msg, 3_000);
            shard.tick(4_500);
        }
    }
}

#[test]
fn there_are_replication_seeds_of_several_kinds() {
    let seeds = seed_replication();
    assert!(seeds.len() >= 5, "only {} seeds", seeds.len());
    let kinds: std::collections::BTreeSet<u8> =
        seeds.iter().filter_map(|s| s.get(1).copied()).collect();
    assert!(kinds.len() >= 3, "kinds {kinds:?}");
    for s in &seeds {
        assert!(ReplicationMessage::decode(s).is_ok());
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn replication_decoder_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_replication(&bytes);
    }

    #[test]
    fn replication_decoder_and_shard_survive_mutated_valid_messages(
        seed in prop::sample::select(seed_replication()),
        edits in edits(),
    ) {
        check_replication(&mutate(seed, &edits));
    }
}
