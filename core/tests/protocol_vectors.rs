//! Byte-exact wire vectors for every frame kind of the three codecs, in both directions
//! (the Phoenix 1.8 server's and phoenix.js 1.8.12's serializers).

use rollcall_core::protocol::{
    EncodeError, Frame, Message, Outbound, Payload, Serializer, KIND_BROADCAST, KIND_PUSH,
    KIND_REPLY,
};
use serde_json::json;

const V1: Serializer = Serializer::V1Json;
const V2: Serializer = Serializer::V2;

fn text(s: &str) -> Frame {
    Frame::Text(s.to_string())
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn msg(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: Payload,
) -> Message {
    Message {
        join_ref: join_ref.map(str::to_string),
        msg_ref: msg_ref.map(str::to_string),
        topic: topic.to_string(),
        event: event.to_string(),
        payload,
    }
}

fn push(join_ref: Option<&str>, payload: Payload) -> Outbound {
    Outbound::Push {
        join_ref: join_ref.map(str::to_string),
        topic: "t".into(),
        event: "e".into(),
        payload,
    }
}

fn reply(join_ref: Option<&str>, msg_ref: Option<&str>, response: Payload) -> Outbound {
    Outbound::Reply {
        join_ref: join_ref.map(str::to_string),
        msg_ref: msg_ref.map(str::to_string),
        topic: "t".into(),
        status: "ok".into(),
        response,
    }
}

fn broadcast(payload: Payload) -> Outbound {
    Outbound::Broadcast {
        topic: "t".into(),
        event: "e".into(),
        payload,
    }
}

fn m1() -> Payload {
    Payload::Json(json!({"m": 1}))
}

/// Asserts `out` encodes to exactly `expected` and that `expected` decodes back to `decoded`.
fn assert_server_frame(ser: Serializer, out: &Outbound, expected: Frame, decoded: &Outbound) {
    assert_eq!(ser.encode(out), Ok(expected.clone()), "encode {out:?}");
    assert_eq!(
        ser.decode_server(&expected).as_ref(),
        Ok(decoded),
        "decode {expected:?}"
    );
}

// ---- client → server ----

#[test]
fn v1_client_object_decodes_and_encodes_exactly() {
    let wire = r#"{"topic":"room:lobby","event":"phx_join","payload":{"user":"a"},"ref":"1","join_ref":"1"}"#;
    let m = msg(
        Some("1"),
        Some("1"),
        "room:lobby",
        "phx_join",
        Payload::Json(json!({"user": "a"})),
    );
    assert_eq!(V1.decode(&text(wire)), Ok(m.clone()));
    assert_eq!(V1.encode_client(&m), Ok(text(wire)));
}

#[test]
fn v1_client_object_without_join_ref_decodes_to_none_and_omits_it() {
    let wire = r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"2"}"#;
    let m = msg(None, Some("2"), "phoenix", "heartbeat", Payload::empty());
    assert_eq!(V1.decode(&text(wire)), Ok(m.clone()));
    assert_eq!(V1.encode_client(&m), Ok(text(wire)));
}

#[test]
fn v1_client_field_order_does_not_matter() {
    let wire = r#"{"ref":null,"payload":[1],"event":"e","topic":"t"}"#;
    assert_eq!(
        V1.decode(&text(wire)),
        Ok(msg(None, None, "t", "e", Payload::Json(json!([1]))))
    );
}

#[test]
fn v2_client_array_decodes_and_encodes_exactly() {
    let wire = r#"["3","3","room:1","phx_join",{"token":"x"}]"#;
    let m = msg(
        Some("3"),
        Some("3"),
        "room:1",
        "phx_join",
        Payload::Json(json!({"token": "x"})),
    );
    assert_eq!(V2.decode(&text(wire)), Ok(m.clone()));
    assert_eq!(V2.encode_client(&m), Ok(text(wire)));
}

#[test]
fn v2_client_null_refs_encode_as_null() {
    let m = msg(None, None, "t", "e", Payload::Json(json!({"m": 1})));
    assert_eq!(
        V2.encode_client(&m),
        Ok(text(r#"[null,null,"t","e",{"m":1}]"#))
    );
    assert_eq!(V2.decode(&text(r#"[null,null,"t","e",{"m":1}]"#)), Ok(m));
}

#[test]
fn v2_client_array_ignores_elements_after_the_fifth() {
    let wire = r#"["1","2","t","e",{"m":1},"extra",{"more":true}]"#;
    assert_eq!(
        V2.decode(&text(wire)),
        Ok(msg(
            Some("1"),
            Some("2"),
            "t",
            "e",
            Payload::Json(json!({"m": 1}))
        ))
    );
}

#[test]
fn v2_client_integer_refs_are_kept_as_decimal_text() {
    assert_eq!(
        V2.decode(&text(r#"[7,-8,"t","e",{}]"#)),
        Ok(msg(Some("7"), Some("-8"), "t", "e", Payload::empty()))
    );
}

#[test]
fn v2_client_payload_passes_through_unvalidated() {
    assert_eq!(
        V2.decode(&text(r#"["1","2","t","e","just a string"]"#)),
        Ok(msg(
            Some("1"),
            Some("2"),
            "t",
            "e",
            Payload::Json(json!("just a string"))
        ))
    );
}

#[test]
fn v2_binary_client_push_layout_is_kind_four_lengths_fields_payload() {
    let m = msg(
        Some("12"),
        Some("345"),
        "room:1",
        "ev",
        Payload::Binary(vec![0xde, 0xad, 0xbe, 0xef]),
    );
    let mut wire = vec![KIND_PUSH, 2, 3, 6, 2];
    wire.extend_from_slice(b"12345room:1ev");
    wire.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(V2.encode_client(&m), Ok(Frame::Binary(wire.clone())));
    assert_eq!(V2.decode(&Frame::Binary(wire)), Ok(m));
}

#[test]
fn v2_binary_client_push_with_empty_payload() {
    let wire = vec![KIND_PUSH, 1, 1, 1, 1, b'1', b'2', b't', b'e'];
    assert_eq!(
        V2.decode(&Frame::Binary(wire)),
        Ok(msg(Some("1"), Some("2"), "t", "e", Payload::Binary(vec![])))
    );
}

#[test]
fn v2_binary_empty_ref_fields_decode_as_empty_strings_not_absent() {
    let wire = vec![KIND_PUSH, 0, 0, 1, 1, b't', b'e', 9];
    assert_eq!(
        V2.decode(&Frame::Binary(wire)),
        Ok(msg(Some(""), Some(""), "t", "e", Payload::Binary(vec![9])))
    );
}

#[test]
fn v2_binary_absent_refs_are_written_as_empty_fields() {
    let m = msg(None, None, "t", "e", Payload::Binary(vec![9]));
    assert_eq!(
        V2.encode_client(&m),
        Ok(Frame::Binary(vec![KIND_PUSH, 0, 0, 1, 1, b't', b'e', 9]))
    );
}

#[test]
fn binary_payload_cannot_be_encoded_for_v1() {
    let m = msg(None, None, "t", "e", Payload::Binary(vec![1]));
    assert_eq!(V1.encode_client(&m), Err(EncodeError::BinaryNotSupported));
    assert_eq!(
        V1.encode(&push(Some("1"), Payload::Binary(vec![1]))),
        Err(EncodeError::BinaryNotSupported)
    );
    assert_eq!(
        V1.encode(&broadcast(Payload::Binary(vec![1]))),
        Err(EncodeError::BinaryNotSupported)
    );
    assert_eq!(
        V1.encode(&reply(Some("1"), Some("2"), Payload::Binary(vec![1]))),
        Err(EncodeError::BinaryNotSupported)
    );
}

// ---- server → client, V1 ----

#[test]
fn v1_push_never_emits_join_ref_and_has_null_ref() {
    // V1 has no way to tell a push from a broadcast: both are `ref: null` without join_ref.
    assert_server_frame(
        V1,
        &push(Some("1"), m1()),
        text(r#"{"topic":"t","event":"e","payload":{"m":1},"ref":null}"#),
        &broadcast(m1()),
    );
}

#[test]
fn v1_reply_is_phx_reply_with_status_and_response_and_no_join_ref() {
    assert_server_frame(
        V1,
        &reply(Some("1"), Some("2"), m1()),
        text(
            r#"{"topic":"t","event":"phx_reply","payload":{"status":"ok","response":{"m":1}},"ref":"2"}"#,
        ),
        &reply(None, Some("2"), m1()),
    );
}

#[test]
fn v1_broadcast_has_null_ref() {
    assert_server_frame(
        V1,
        &broadcast(m1()),
        text(r#"{"topic":"t","event":"e","payload":{"m":1},"ref":null}"#),
        &broadcast(m1()),
    );
}

#[test]
fn v1_phx_close_carries_the_join_ref_as_ref() {
    assert_server_frame(
        V1,
        &Outbound::phx_close(some("1"), "t"),
        text(r#"{"topic":"t","event":"phx_close","payload":{},"ref":"1"}"#),
        &Outbound::phx_close(some("1"), "t"),
    );
}

// ---- server → client, V2 JSON ----

#[test]
fn v2_push_is_join_ref_null_topic_event_payload() {
    assert_server_frame(
        V2,
        &push(Some("1"), m1()),
        text(r#"["1",null,"t","e",{"m":1}]"#),
        &push(Some("1"), m1()),
    );
}

#[test]
fn v2_reply_is_phx_reply_with_status_then_response() {
    assert_server_frame(
        V2,
        &reply(Some("1"), Some("2"), m1()),
        text(r#"["1","2","t","phx_reply",{"status":"ok","response":{"m":1}}]"#),
        &reply(Some("1"), Some("2"), m1()),
    );
}

#[test]
fn v2_broadcast_has_null_refs() {
    assert_server_frame(
        V2,
        &broadcast(m1()),
        text(r#"[null,null,"t","e",{"m":1}]"#),
        &broadcast(m1()),
    );
}

#[test]
fn v2_phx_close_and_phx_error_carry_the_join_ref_twice() {
    assert_server_frame(
        V2,
        &Outbound::phx_close(some("1"), "t"),
        text(r#"["1","1","t","phx_close",{}]"#),
        &Outbound::phx_close(some("1"), "t"),
    );
    assert_server_frame(
        V2,
        &Outbound::phx_error(some("4"), "t", "channel_crash"),
        text(r#"["4","4","t","phx_error",{"reason":"channel_crash"}]"#),
        &Outbound::phx_error(some("4"), "t", "channel_crash"),
    );
}

#[test]
fn heartbeat_reply_is_exact() {
    let heartbeat = V2
        .decode(&text(r#"[null,"2","phoenix","heartbeat",{}]"#))
        .unwrap();
    let out = Outbound::reply_to(&heartbeat, "ok", json!({}));
    assert_eq!(
        V2.encode(&out),
        Ok(text(
            r#"[null,"2","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        ))
    );
    assert_eq!(
        V1.encode(&out),
        Ok(text(
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}"#
        ))
    );
}

// ---- server → client, V2 binary ----

#[test]
fn v2_binary_push_has_no_ref_field() {
    let out = push(Some("12"), Payload::Binary(vec![1, 2, 3]));
    let mut wire = vec![KIND_PUSH, 2, 1, 1];
    wire.extend_from_slice(b"12te");
    wire.extend_from_slice(&[1, 2, 3]);
    assert_server_frame(V2, &out, Frame::Binary(wire), &out);
}

#[test]
fn v2_binary_push_without_join_ref_writes_an_empty_field() {
    let wire = vec![KIND_PUSH, 0, 1, 1, b't', b'e', 7];
    assert_server_frame(
        V2,
        &push(None, Payload::Binary(vec![7])),
        Frame::Binary(wire),
        &push(Some(""), Payload::Binary(vec![7])),
    );
}

#[test]
fn v2_binary_reply_carries_join_ref_ref_topic_status() {
    let out = reply(Some("1"), Some("22"), Payload::Binary(vec![0, 255]));
    let mut wire = vec![KIND_REPLY, 1, 2, 1, 2];
    wire.extend_from_slice(b"122tok");
    wire.extend_from_slice(&[0, 255]);
    assert_server_frame(V2, &out, Frame::Binary(wire), &out);
}

#[test]
fn v2_binary_broadcast_carries_topic_and_event_only() {
    let out = broadcast(Payload::Binary(vec![42]));
    let wire = vec![KIND_BROADCAST, 1, 1, b't', b'e', 42];
    assert_server_frame(V2, &out, Frame::Binary(wire), &out);
}

#[test]
fn v2_binary_lifecycle_frame_goes_out_as_a_push() {
    let out = Outbound::Lifecycle {
        join_ref: some("1"),
        topic: "t".into(),
        event: "e".into(),
        payload: Payload::Binary(vec![5]),
    };
    let wire = vec![KIND_PUSH, 1, 1, 1, b'1', b't', b'e', 5];
    assert_server_frame(
        V2,
        &out,
        Frame::Binary(wire),
        &push(Some("1"), Payload::Binary(vec![5])),
    );
}

#[test]
fn json_reply_to_a_binary_push_is_a_text_frame() {
    let binary_push = msg(Some("1"), Some("2"), "t", "e", Payload::Binary(vec![1]));
    let out = Outbound::reply_to(&binary_push, "ok", json!({}));
    assert_eq!(
        V2.encode(&out),
        Ok(text(
            r#"["1","2","t","phx_reply",{"status":"ok","response":{}}]"#
        ))
    );
}

// ---- non-ASCII and the 255-byte limit ----

#[test]
fn binary_lengths_are_utf8_byte_counts() {
    let topic = "raum:café"; // 10 bytes, 9 chars
    let event = "grüß"; // 6 bytes, 4 chars
    let join_ref = "→"; // 3 bytes
    let m = msg(
        Some(join_ref),
        Some("ü"),
        topic,
        event,
        Payload::Binary(vec![1]),
    );
    let Ok(Frame::Binary(wire)) = V2.encode_client(&m) else {
        panic!("expected a binary frame");
    };
    assert_eq!(&wire[..5], &[KIND_PUSH, 3, 2, 10, 6]);
    assert_eq!(V2.decode(&Frame::Binary(wire)), Ok(m));

    for out in [
        Outbound::Push {
            join_ref: some(join_ref),
            topic: topic.into(),
            event: event.into(),
            payload: Payload::Binary(vec![1]),
        },
        Outbound::Broadcast {
            topic: topic.into(),
            event: event.into(),
            payload: Payload::Binary(vec![1]),
        },
    ] {
        let frame = V2.encode(&out).unwrap();
        assert_eq!(V2.decode_server(&frame), Ok(out));
    }
    let Ok(Frame::Binary(wire)) = V2.encode(&Outbound::Broadcast {
        topic: topic.into(),
        event: event.into(),
        payload: Payload::Binary(vec![]),
    }) else {
        panic!("expected a binary frame");
    };
    assert_eq!(&wire[..3], &[KIND_BROADCAST, 10, 6]);
}

#[test]
fn non_ascii_json_fields_round_trip_in_text_frames() {
    let m = msg(
        Some("ü"),
        Some("→"),
        "raum:café",
        "grüß",
        Payload::Json(json!({"name": "Zoë 🦀"})),
    );
    for ser in [V1, V2] {
        let frame = ser.encode_client(&m).unwrap();
        assert_eq!(ser.decode(&frame), Ok(m.clone()));
    }
}

fn client_push_with(field: &str, value: &str) -> Message {
    let mut m = msg(Some("1"), Some("2"), "t", "e", Payload::Binary(vec![]));
    match field {
        "join_ref" => m.join_ref = some(value),
        "ref" => m.msg_ref = some(value),
        "topic" => m.topic = value.into(),
        "event" => m.event = value.into(),
        _ => unreachable!(),
    }
    m
}

#[test]
fn binary_header_field_of_255_bytes_is_accepted() {
    let long = "x".repeat(255);
    for field in ["join_ref", "ref", "topic", "event"] {
        let m = client_push_with(field, &long);
        let frame = V2.encode_client(&m).unwrap();
        assert_eq!(V2.decode(&frame), Ok(m), "{field}");
    }
    let out = reply(Some("1"), Some("2"), Payload::Binary(vec![]));
    let Outbound::Reply {
        join_ref,
        msg_ref,
        topic,
        ..
    } = out
    else {
        unreachable!()
    };
    let out = Outbound::Reply {
        join_ref,
        msg_ref,
        topic,
        status: long.clone(),
        response: Payload::Binary(vec![]),
    };
    let frame = V2.encode(&out).unwrap();
    assert_eq!(V2.decode_server(&frame), Ok(out));
}

#[test]
fn binary_header_field_of_256_bytes_is_refused_naming_the_field() {
    let long = "x".repeat(256);
    for field in ["join_ref", "ref", "topic", "event"] {
        let err = V2
            .encode_client(&client_push_with(field, &long))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("unable to convert {field} to binary: must be less than or equal to 255 bytes, but is 256 bytes")
        );
    }
}

#[test]
fn binary_limit_counts_bytes_not_characters() {
    // 128 two-byte characters: 128 chars but 256 bytes.
    let topic = "é".repeat(128);
    let err = V2
        .encode_client(&client_push_with("topic", &topic))
        .unwrap_err();
    assert_eq!(
        err,
        EncodeError::FieldTooLong {
            field: "topic",
            len: 256
        }
    );
    assert_eq!(
        err.to_string(),
        "unable to convert topic to binary: must be less than or equal to 255 bytes, but is 256 bytes"
    );
}

#[test]
fn server_binary_frames_refuse_every_oversized_field_by_name() {
    let long = || "y".repeat(300);
    let bin = || Payload::Binary(vec![]);
    let cases = [
        (
            Outbound::Push {
                join_ref: Some(long()),
                topic: "t".into(),
                event: "e".into(),
                payload: bin(),
            },
            "join_ref",
        ),
        (
            Outbound::Push {
                join_ref: None,
                topic: long(),
                event: "e".into(),
                payload: bin(),
            },
            "topic",
        ),
        (
            Outbound::Push {
                join_ref: None,
                topic: "t".into(),
                event: long(),
                payload: bin(),
            },
            "event",
        ),
        (
            Outbound::Reply {
                join_ref: Some(long()),
                msg_ref: None,
                topic: "t".into(),
                status: "ok".into(),
                response: bin(),
            },
            "join_ref",
        ),
        (
            Outbound::Reply {
                join_ref: None,
                msg_ref: Some(long()),
                topic: "t".into(),
                status: "ok".into(),
                response: bin(),
            },
            "ref",
        ),
        (
            Outbound::Reply {
                join_ref: None,
                msg_ref: None,
                topic: long(),
                status: "ok".into(),
                response: bin(),
            },
            "topic",
        ),
        (
            Outbound::Reply {
                join_ref: None,
                msg_ref: None,
                topic: "t".into(),
                status: long(),
                response: bin(),
            },
            "status",
        ),
        (
            Outbound::Broadcast {
                topic: long(),
                event: "e".into(),
                payload: bin(),
            },
            "topic",
        ),
        (
            Outbound::Broadcast {
                topic: "t".into(),
                event: long(),
                payload: bin(),
            },
            "event",
        ),
    ];
    for (out, field) in cases {
        assert_eq!(
            V2.encode(&out),
            Err(EncodeError::FieldTooLong { field, len: 300 }),
            "{out:?}"
        );
    }
}

#[test]
fn long_fields_are_fine_in_json_frames() {
    let long = "z".repeat(1000);
    let m = msg(Some(&long), Some(&long), &long, &long, Payload::empty());
    let frame = V2.encode_client(&m).unwrap();
    assert_eq!(V2.decode(&frame), Ok(m));
}

// ---- the canonical V2 exchange ----

#[test]
fn canonical_v2_exchange_is_reproduced_byte_for_byte() {
    let c = |wire: &str| V2.decode(&text(wire)).unwrap();
    let s = |out: Outbound| match V2.encode(&out).unwrap() {
        Frame::Text(t) => t,
        Frame::Binary(b) => panic!("unexpected binary frame {b:?}"),
    };

    let join = c(r#"["1","1","room:lobby","phx_join",{"user":"a"}]"#);
    assert_eq!(
        join,
        msg(
            Some("1"),
            Some("1"),
            "room:lobby",
            "phx_join",
            Payload::Json(json!({"user": "a"}))
        )
    );
    assert_eq!(
        s(Outbound::reply_to(&join, "ok", json!({}))),
        r#"["1","1","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
    );
    let state = json!({"42": {"metas": [{"phx_ref": "F1", "online_at": "1700000000"}]}});
    assert_eq!(
        s(Outbound::Push {
            join_ref: join.join_ref.clone(),
            topic: "room:lobby".into(),
            event: "presence_state".into(),
            payload: Payload::Json(state),
        }),
        r#"["1",null,"room:lobby","presence_state",{"42":{"metas":[{"phx_ref":"F1","online_at":"1700000000"}]}}]"#
    );
    let diff = json!({"joins": {"42": {"metas": [{"phx_ref": "F2"}]}}, "leaves": {}});
    assert_eq!(
        s(Outbound::Broadcast {
            topic: "room:lobby".into(),
            event: "presence_diff".into(),
            payload: Payload::Json(diff)
        }),
        r#"[null,null,"room:lobby","presence_diff",{"joins":{"42":{"metas":[{"phx_ref":"F2"}]}},"leaves":{}}]"#
    );

    let heartbeat = c(r#"[null,"2","phoenix","heartbeat",{}]"#);
    assert_eq!(
        heartbeat,
        msg(None, Some("2"), "phoenix", "heartbeat", Payload::empty())
    );
    assert_eq!(
        s(Outbound::reply_to(&heartbeat, "ok", json!({}))),
        r#"[null,"2","phoenix","phx_reply",{"status":"ok","response":{}}]"#
    );

    let new_msg = c(r#"["1","3","room:lobby","new_msg",{"body":"hi"}]"#);
    assert_eq!(new_msg.payload, Payload::Json(json!({"body": "hi"})));
    assert_eq!(
        s(Outbound::reply_to(&new_msg, "ok", json!({}))),
        r#"["1","3","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
    );

    let leave = c(r#"["1","4","room:lobby","phx_leave",{}]"#);
    assert_eq!(leave.event, "phx_leave");
    assert_eq!(
        s(Outbound::reply_to(&leave, "ok", json!({}))),
        r#"["1","4","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(
        s(Outbound::phx_close(leave.join_ref.clone(), "room:lobby")),
        r#"["1","1","room:lobby","phx_close",{}]"#
    );

    let unmatched = c(r#"[null,"5","room:other","new_msg",{}]"#);
    assert_eq!(
        s(Outbound::reply_to(
            &unmatched,
            "error",
            json!({"reason": "unmatched topic"})
        )),
        r#"[null,"5","room:other","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
    );
}

#[test]
fn server_frames_of_the_canonical_exchange_decode_to_their_kinds() {
    let d = |wire: &str| V2.decode_server(&text(wire)).unwrap();
    assert!(matches!(
        d(r#"["1","1","room:lobby","phx_reply",{"status":"ok","response":{}}]"#),
        Outbound::Reply { .. }
    ));
    assert!(matches!(
        d(r#"["1",null,"room:lobby","presence_state",{}]"#),
        Outbound::Push { .. }
    ));
    assert!(matches!(
        d(r#"[null,null,"room:lobby","presence_diff",{}]"#),
        Outbound::Broadcast { .. }
    ));
    assert_eq!(
        d(r#"["1","1","room:lobby","phx_close",{}]"#),
        Outbound::phx_close(some("1"), "room:lobby")
    );
    assert_eq!(
        d(
            r#"[null,"5","room:other","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        ),
        Outbound::Reply {
            join_ref: None,
            msg_ref: some("5"),
            topic: "room:other".into(),
            status: "error".into(),
            response: Payload::Json(json!({"reason": "unmatched topic"})),
        }
    );
}
