//! The replication message codec: versioned, compact, and safe on garbage.

use rollcall_core::tracker::{
    DecodeError, Meta, ReplicaId, ReplicationMessage, Shard, ShardConfig, WIRE_VERSION,
};

fn messages() -> Vec<ReplicationMessage> {
    let mut a = Shard::new(ReplicaId::new("a", 1), ShardConfig::default(), 0).unwrap();
    let mut b = Shard::new(ReplicaId::new("b", 7), ShardConfig::default(), 0).unwrap();
    a.track(
        1,
        "room:lobby",
        "alice",
        Meta::new(r#"{"device":"phone","n":[1,2]}"#).unwrap(),
    )
    .unwrap();
    a.track(2, "room:lobby", "bob", Meta::empty()).unwrap();
    let mut all: Vec<ReplicationMessage> = Vec::new();
    let heartbeat = a.tick(1_500).messages.remove(0).message;
    all.push(heartbeat.clone());
    for o in b.tick(1_500).messages {
        all.push(o.message);
    }
    b.receive("a", heartbeat, 1_500);
    b.tick(3_000);
    let req = b
        .tick(4_500)
        .messages
        .into_iter()
        .map(|o| o.message)
        .find(|m| matches!(m, ReplicationMessage::TransferRequest { .. }));
    if let Some(req) = req {
        all.push(req.clone());
        all.extend(
            a.receive("b", req, 4_500)
                .messages
                .into_iter()
                .map(|o| o.message),
        );
    }
    all.push(ReplicationMessage::TransferRequest {
        from: ReplicaId::new("b", 7),
        request_id: 3,
        clock: b.state().clock(),
    });
    let ack = a
        .receive("b", all.last().unwrap().clone(), 4_600)
        .messages
        .remove(0)
        .message;
    all.push(ack);
    all.extend(a.graceful_permdown().into_iter().map(|o| o.message));
    all
}

#[test]
fn every_message_kind_round_trips_with_the_version_byte_first() {
    let all = messages();
    assert!(all.len() >= 5);
    for m in all {
        let bytes = m.encode().unwrap();
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(ReplicationMessage::decode(&bytes).unwrap(), m);
    }
}

#[test]
fn an_unknown_version_is_refused_by_name() {
    let mut bytes = messages()[0].encode().unwrap();
    bytes[0] = 99;
    assert_eq!(
        ReplicationMessage::decode(&bytes),
        Err(DecodeError::UnsupportedVersion(99))
    );
    assert!(ReplicationMessage::decode(&bytes)
        .unwrap_err()
        .to_string()
        .contains("99"));
}

#[test]
fn empty_truncated_and_padded_inputs_are_errors() {
    assert_eq!(ReplicationMessage::decode(&[]), Err(DecodeError::Empty));
    for m in messages() {
        let bytes = m.encode().unwrap();
        for cut in 1..bytes.len() {
            assert!(
                ReplicationMessage::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(
            ReplicationMessage::decode(&padded),
            Err(DecodeError::TrailingBytes(1))
        );
    }
}

#[test]
fn a_meta_that_is_not_a_json_object_is_refused_at_decode() {
    let m = &messages()[0];
    let mut bytes = m.encode().unwrap();
    // Corrupt the opening brace of the first meta.
    let at = bytes.windows(2).position(|w| w == b"{\"").unwrap();
    bytes[at] = b'[';
    assert!(matches!(
        ReplicationMessage::decode(&bytes),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn a_full_transfer_of_many_presences_is_compact() {
    let mut a = Shard::new(ReplicaId::new("node-a", 1), ShardConfig::default(), 0).unwrap();
    for i in 0..1_000u64 {
        a.track(
            i,
            "room:lobby",
            &format!("user{i}"),
            Meta::new(r#"{"s":1}"#).unwrap(),
        )
        .unwrap();
    }
    let payload = a
        .state()
        .extract(&ReplicaId::new("b", 1), &a.state().clock());
    let m = ReplicationMessage::TransferAck {
        from: a.replica().clone(),
        request_id: 1,
        payload,
    };
    let bytes = m.encode().unwrap();
    // key (~9) + meta (8) + counter/conn varints + indices: well under 40 bytes per presence.
    assert!(bytes.len() < 40 * 1_000, "{} bytes", bytes.len());
}
