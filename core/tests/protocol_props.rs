//! Property tests: every frame round-trips through its codec, and no input — random bytes,
//! random JSON of any shape, damaged valid frames — makes a decoder panic.

use proptest::prelude::*;
use rollcall_core::protocol::{
    DecodeError, Frame, Message, Outbound, Payload, Serializer, PHX_REPLY,
};
use serde_json::{Map, Number, Value};

const BOTH: [Serializer; 2] = [Serializer::V1Json, Serializer::V2];

// ---- strategies ----

/// Any string of at most 63 characters: at most 252 UTF-8 bytes, so it fits a binary header.
fn field() -> impl Strategy<Value = String> {
    "(?s).{0,63}"
}

fn opt_ref() -> impl Strategy<Value = Option<String>> {
    prop::option::of(field())
}

/// An event that is not `phx_reply` (a push with that event would read back as a reply).
fn event() -> impl Strategy<Value = String> {
    field().prop_filter("not phx_reply", |e| e != PHX_REPLY)
}

/// JSON that survives text exactly (no floats: their last digit is the parser's business).
fn exact_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        field().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Any JSON value, floats included.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Object keys that are often the protocol's own field names.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "topic", "event", "payload", "ref", "join_ref", "status", "response"
        ])
        .prop_map(str::to_string),
        ".{0,6}",
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        exact_json().prop_map(Payload::Json),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Payload::Binary),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (opt_ref(), opt_ref(), field(), field(), payload()).prop_map(
        |(join_ref, msg_ref, topic, event, payload)| Message {
            join_ref,
            msg_ref,
            topic,
            event,
            payload,
        },
    )
}

fn outbound() -> impl Strategy<Value = Outbound> {
    prop_oneof![
        (opt_ref(), field(), event(), payload()).prop_map(|(join_ref, topic, event, payload)| {
            Outbound::Push {
                join_ref,
                topic,
                event,
                payload,
            }
        }),
        (opt_ref(), opt_ref(), field(), field(), payload()).prop_map(
            |(join_ref, msg_ref, topic, status, response)| Outbound::Reply {
                join_ref,
                msg_ref,
                topic,
                status,
                response,
            }
        ),
        (field(), event(), payload()).prop_map(|(topic, event, payload)| Outbound::Broadcast {
            topic,
            event,
            payload
        }),
        (opt_ref(), field(), event(), payload()).prop_map(|(join_ref, topic, event, payload)| {
            Outbound::Lifecycle {
                join_ref,
                topic,
                event,
                payload,
            }
        }),
    ]
}

// ---- what each encoding cannot carry ----

/// A binary header always carries ref fields: an absent one reads back as `""`.
fn written(r: Option<String>) -> Option<String> {
    Some(r.unwrap_or_default())
}

/// The frame a client reads back from `out`, given what the encoding drops:
/// V1 never sends a join_ref (so a push is a broadcast, and a lifecycle frame keeps only its
/// ref); a text push or lifecycle frame without refs is a broadcast; the binary server push
/// has no ref slot (a lifecycle frame becomes a push) and writes absent refs as `""`.
fn as_read_back(ser: Serializer, out: Outbound) -> Outbound {
    let binary = matches!(
        &out,
        Outbound::Push {
            payload: Payload::Binary(_),
            ..
        } | Outbound::Broadcast {
            payload: Payload::Binary(_),
            ..
        } | Outbound::Lifecycle {
            payload: Payload::Binary(_),
            ..
        } | Outbound::Reply {
            response: Payload::Binary(_),
            ..
        }
    );
    match (ser, binary, out) {
        (
            _,
            true,
            Outbound::Push {
                join_ref,
                topic,
                event,
                payload,
            },
        )
        | (
            _,
            true,
            Outbound::Lifecycle {
                join_ref,
                topic,
                event,
                payload,
            },
        ) => Outbound::Push {
            join_ref: written(join_ref),
            topic,
            event,
            payload,
        },
        (
            _,
            true,
            Outbound::Reply {
                join_ref,
                msg_ref,
                topic,
                status,
                response,
            },
        ) => Outbound::Reply {
            join_ref: written(join_ref),
            msg_ref: written(msg_ref),
            topic,
            status,
            response,
        },
        (
            Serializer::V1Json,
            _,
            Outbound::Reply {
                msg_ref,
                topic,
                status,
                response,
                ..
            },
        ) => Outbound::Reply {
            join_ref: None,
            msg_ref,
            topic,
            status,
            response,
        },
        (
            Serializer::V1Json,
            _,
            Outbound::Push {
                topic,
                event,
                payload,
                ..
            },
        )
        | (
            _,
            _,
            Outbound::Push {
                join_ref: None,
                topic,
                event,
                payload,
            },
        )
        | (
            _,
            _,
            Outbound::Lifecycle {
                join_ref: None,
                topic,
                event,
                payload,
            },
        ) => Outbound::Broadcast {
            topic,
            event,
            payload,
        },
        (_, _, out) => out,
    }
}

fn check_error(err: &DecodeError) {
    assert!(!err.to_string().is_empty(), "{err:?} has an empty Display");
}

/// Runs every decoder on `frame`: none may panic, and every error must explain itself.
fn decode_everywhere(frame: &Frame) {
    for ser in BOTH {
        if let Err(e) = ser.decode(frame) {
            check_error(&e);
        }
        if let Err(e) = ser.decode_server(frame) {
            check_error(&e);
        }
    }
}

/// `config` keeping a failing case for replay in core/proptest-regressions/ (git-ignored), not
/// next to the sources.
fn kept_failures(config: ProptestConfig) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/protocol_props.txt",
            ),
        )),
        ..config
    }
}

// ---- round trips ----

proptest! {
    #![proptest_config(kept_failures(ProptestConfig::default()))]

    #[test]
    fn client_messages_round_trip_through_v2(msg in message()) {
        let frame = Serializer::V2.encode_client(&msg).unwrap();
        let mut expected = msg;
        if matches!(expected.payload, Payload::Binary(_)) {
            prop_assert!(matches!(frame, Frame::Binary(_)));
            expected.join_ref = written(expected.join_ref);
            expected.msg_ref = written(expected.msg_ref);
        } else {
            prop_assert!(matches!(frame, Frame::Text(_)));
        }
        prop_assert_eq!(Serializer::V2.decode(&frame), Ok(expected));
    }

    #[test]
    fn client_json_messages_round_trip_through_v1(
        join_ref in opt_ref(), msg_ref in opt_ref(), topic in field(), event in field(),
        payload in exact_json(),
    ) {
        let msg = Message { join_ref, msg_ref, topic, event, payload: Payload::Json(payload) };
        let frame = Serializer::V1Json.encode_client(&msg).unwrap();
        prop_assert_eq!(Serializer::V1Json.decode(&frame), Ok(msg));
    }

    #[test]
    fn server_frames_round_trip_through_both_serializers(out in outbound()) {
        for ser in BOTH {
            match ser.encode(&out) {
                Ok(frame) => prop_assert_eq!(
                    ser.decode_server(&frame),
                    Ok(as_read_back(ser, out.clone())),
                    "{:?} {:?}", ser, frame
                ),
                // The only thing V1 cannot encode is a binary payload.
                Err(e) => {
                    prop_assert_eq!(ser, Serializer::V1Json);
                    prop_assert!(e.to_string().contains("binary"));
                }
            }
        }
    }

    #[test]
    fn v2_server_frames_are_binary_exactly_when_the_payload_is(out in outbound()) {
        let binary = matches!(
            &out,
            Outbound::Push { payload: Payload::Binary(_), .. }
                | Outbound::Broadcast { payload: Payload::Binary(_), .. }
                | Outbound::Lifecycle { payload: Payload::Binary(_), .. }
                | Outbound::Reply { response: Payload::Binary(_), .. }
        );
        let frame = Serializer::V2.encode(&out).unwrap();
        prop_assert_eq!(matches!(frame, Frame::Binary(_)), binary);
    }
}

// ---- decoders never panic ----

proptest! {
    #![proptest_config(kept_failures(ProptestConfig { cases: 1024, ..ProptestConfig::default() }))]

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        decode_everywhere(&Frame::Binary(bytes.clone()));
        decode_everywhere(&Frame::Text(String::from_utf8_lossy(&bytes).into_owned()));
    }

    #[test]
    fn binary_frames_with_a_known_kind_never_panic_a_decoder(
        kind in 0u8..4,
        lens in prop::collection::vec(any::<u8>(), 0..6),
        rest in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = vec![kind];
        bytes.extend(lens.iter().map(|l| l % 16));
        bytes.extend(rest);
        decode_everywhere(&Frame::Binary(bytes));
    }

    #[test]
    fn random_text_never_panics_a_decoder(s in "(?s).{0,64}") {
        decode_everywhere(&Frame::Text(s));
    }

    #[test]
    fn random_json_never_panics_a_decoder(v in any_json()) {
        decode_everywhere(&Frame::Text(v.to_string()));
    }

    #[test]
    fn random_arrays_never_panic_a_decoder(items in prop::collection::vec(any_json(), 0..9)) {
        decode_everywhere(&Frame::Text(Value::Array(items).to_string()));
    }

    #[test]
    fn random_objects_never_panic_a_decoder(
        fields in prop::collection::vec((key(), any_json()), 0..8),
    ) {
        let obj: Map<String, Value> = fields.into_iter().collect();
        decode_everywhere(&Frame::Text(Value::Object(obj).to_string()));
    }

    #[test]
    fn phx_reply_frames_with_random_payloads_never_panic_a_decoder(
        refs in (any_json(), any_json()), payload in any_json(),
    ) {
        let arr = Value::Array(vec![refs.0, refs.1, "t".into(), PHX_REPLY.into(), payload]);
        decode_everywhere(&Frame::Text(arr.to_string()));
    }

    #[test]
    fn damaged_valid_frames_never_panic_a_decoder(
        out in outbound(), msg in message(), cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(), bits in 1u8..=255,
    ) {
        let frames = [Serializer::V2.encode(&out).ok(), Serializer::V2.encode_client(&msg).ok()];
        for frame in frames.into_iter().flatten() {
            let mut bytes = match frame {
                Frame::Binary(b) => b,
                Frame::Text(t) => t.into_bytes(),
            };
            if !bytes.is_empty() {
                let i = flip.index(bytes.len());
                bytes[i] ^= bits;
            }
            let truncated = &bytes[..cut.index(bytes.len() + 1)];
            decode_everywhere(&Frame::Binary(truncated.to_vec()));
            decode_everywhere(&Frame::Text(String::from_utf8_lossy(truncated).into_owned()));
        }
    }
}

proptest! {
    /// The pre-encoded form writes exactly what encoding the parsed push or broadcast writes,
    /// for any topic, event, join_ref and payload (floats included: the text is copied, and
    /// `serde_json` writes a parsed value back the same).
    #[test]
    fn a_push_with_a_pre_encoded_payload_is_the_same_bytes_as_the_encoded_push(
        join_ref in opt_ref(),
        topic in field(),
        event in field(),
        payload in any_json(),
    ) {
        let text = payload.to_string();
        for ser in BOTH {
            let push = Outbound::Push {
                join_ref: join_ref.clone(),
                topic: topic.clone(),
                event: event.clone(),
                payload: Payload::Json(payload.clone()),
            };
            let expected = ser.encode(&push).expect("a JSON push encodes");
            let written = ser.encode_push_json(join_ref.as_deref(), &topic, &event, &text);
            prop_assert_eq!(Frame::Text(written), expected);
            let broadcast = Outbound::Broadcast {
                topic: topic.clone(),
                event: event.clone(),
                payload: Payload::Json(payload.clone()),
            };
            let expected = ser.encode(&broadcast).expect("a JSON broadcast encodes");
            let written = ser.encode_push_json(None, &topic, &event, &text);
            prop_assert_eq!(Frame::Text(written), expected);
        }
    }
}
