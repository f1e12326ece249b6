//! Malformed frames give the specific [`DecodeError`] that names what is wrong, and `vsn`
//! negotiation follows Phoenix's `~> 1.0.0` / `~> 2.0.0` rule.

use rollcall_core::protocol::{
    DecodeError, Frame, Serializer, UnsupportedVsn, KIND_BROADCAST, KIND_PUSH, KIND_REPLY,
};

const V1: Serializer = Serializer::V1Json;
const V2: Serializer = Serializer::V2;

fn text(s: &str) -> Frame {
    Frame::Text(s.to_string())
}

fn bin(b: &[u8]) -> Frame {
    Frame::Binary(b.to_vec())
}

fn decode_err(ser: Serializer, frame: Frame) -> DecodeError {
    let err = ser.decode(&frame).unwrap_err();
    assert!(!err.to_string().is_empty());
    err
}

fn server_err(ser: Serializer, frame: Frame) -> DecodeError {
    let err = ser.decode_server(&frame).unwrap_err();
    assert!(!err.to_string().is_empty());
    err
}

// ---- text frames ----

#[test]
fn invalid_json_is_refused_with_the_parser_message() {
    for ser in [V1, V2] {
        for wire in [
            "",
            "{",
            "[1,2",
            "not json",
            "[\"1\",\"2\",\"t\",\"e\",{}] trailing",
        ] {
            let err = decode_err(ser, text(wire));
            assert!(
                matches!(err, DecodeError::InvalidJson(_)),
                "{ser:?} {wire:?}: {err:?}"
            );
            assert!(err.to_string().starts_with("invalid JSON: "));
            assert!(matches!(
                server_err(ser, text(wire)),
                DecodeError::InvalidJson(_)
            ));
        }
    }
}

#[test]
fn v2_refuses_a_json_value_that_is_not_an_array() {
    for wire in [
        r#"{"topic":"t","event":"e","payload":{},"ref":null}"#,
        "1",
        "\"s\"",
        "null",
        "true",
    ] {
        assert!(
            matches!(decode_err(V2, text(wire)), DecodeError::WrongShape(_)),
            "{wire}"
        );
        assert!(matches!(
            server_err(V2, text(wire)),
            DecodeError::WrongShape(_)
        ));
    }
}

#[test]
fn v2_refuses_an_array_of_four_elements() {
    let err = decode_err(V2, text(r#"["1","2","t","e"]"#));
    assert_eq!(err, DecodeError::TooFewElements(4));
    assert!(err.to_string().contains("got 4 element(s)"));
    assert_eq!(decode_err(V2, text("[]")), DecodeError::TooFewElements(0));
    assert_eq!(
        server_err(V2, text(r#"[null,null,"t"]"#)),
        DecodeError::TooFewElements(3)
    );
}

#[test]
fn v2_refuses_a_topic_that_is_not_a_string() {
    for topic in ["1", "null", "[]", "{}", "true"] {
        let wire = format!(r#"["1","2",{topic},"e",{{}}]"#);
        assert_eq!(
            decode_err(V2, text(&wire)),
            DecodeError::WrongType {
                field: "topic",
                expected: "a string"
            },
            "{wire}"
        );
    }
}

#[test]
fn v2_refuses_an_event_that_is_not_a_string() {
    assert_eq!(
        decode_err(V2, text(r#"["1","2","t",5,{}]"#)),
        DecodeError::WrongType {
            field: "event",
            expected: "a string"
        }
    );
}

#[test]
fn v2_refuses_an_object_ref() {
    let err = decode_err(V2, text(r#"["1",{"x":1},"t","e",{}]"#));
    assert_eq!(
        err,
        DecodeError::WrongType {
            field: "ref",
            expected: "a string or null"
        }
    );
    assert_eq!(
        err.to_string(),
        "malformed message: ref must be a string or null"
    );
}

#[test]
fn v2_refuses_a_join_ref_that_is_an_array_bool_or_fraction() {
    for join_ref in ["[]", "true", "1.5"] {
        let wire = format!(r#"[{join_ref},"2","t","e",{{}}]"#);
        assert_eq!(
            decode_err(V2, text(&wire)),
            DecodeError::WrongType {
                field: "join_ref",
                expected: "a string or null"
            },
            "{wire}"
        );
    }
}

#[test]
fn v1_refuses_a_json_value_that_is_not_an_object() {
    assert!(matches!(
        decode_err(V1, text(r#"["1","2","t","e",{}]"#)),
        DecodeError::WrongShape(_)
    ));
    assert!(matches!(
        server_err(V1, text("3")),
        DecodeError::WrongShape(_)
    ));
}

#[test]
fn v1_refuses_each_missing_required_field_by_name() {
    let full = [
        ("topic", r#""t""#),
        ("event", r#""e""#),
        ("payload", "{}"),
        ("ref", "null"),
    ];
    for (missing, _) in full {
        let body: Vec<String> = full
            .iter()
            .filter(|(k, _)| *k != missing)
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        let wire = format!("{{{}}}", body.join(","));
        let err = decode_err(V1, text(&wire));
        assert_eq!(err, DecodeError::MissingField(missing), "{wire}");
        assert!(err.to_string().contains(missing));
    }
}

#[test]
fn v1_refuses_wrong_types_by_field() {
    let cases = [
        (
            r#"{"topic":1,"event":"e","payload":{},"ref":null}"#,
            "topic",
        ),
        (
            r#"{"topic":"t","event":null,"payload":{},"ref":null}"#,
            "event",
        ),
        (r#"{"topic":"t","event":"e","payload":{},"ref":{}}"#, "ref"),
        (
            r#"{"topic":"t","event":"e","payload":{},"ref":null,"join_ref":[1]}"#,
            "join_ref",
        ),
    ];
    for (wire, field) in cases {
        assert!(
            matches!(decode_err(V1, text(wire)), DecodeError::WrongType { field: f, .. } if f == field),
            "{wire}"
        );
    }
}

#[test]
fn server_reply_without_a_string_status_is_refused() {
    assert!(matches!(
        server_err(V2, text(r#"["1","2","t","phx_reply",{"response":{}}]"#)),
        DecodeError::WrongType {
            field: "status",
            ..
        }
    ));
    assert!(matches!(
        server_err(V2, text(r#"["1","2","t","phx_reply","ok"]"#)),
        DecodeError::WrongType {
            field: "payload",
            ..
        }
    ));
}

// ---- binary frames ----

#[test]
fn empty_binary_frame_is_refused() {
    assert_eq!(decode_err(V2, bin(&[])), DecodeError::EmptyFrame);
    assert_eq!(server_err(V2, bin(&[])), DecodeError::EmptyFrame);
}

#[test]
fn client_binary_frames_other_than_push_are_unknown_kinds() {
    for kind in [KIND_REPLY, KIND_BROADCAST, 3, 255] {
        let err = decode_err(V2, bin(&[kind, 0, 0, 0, 0]));
        assert_eq!(err, DecodeError::UnknownKind(kind));
        assert_eq!(err.to_string(), format!("unknown binary frame kind {kind}"));
    }
}

#[test]
fn server_binary_frames_of_kind_three_or_more_are_unknown() {
    for kind in [3, 7, 255] {
        assert_eq!(
            server_err(V2, bin(&[kind, 0, 0, 0, 0])),
            DecodeError::UnknownKind(kind)
        );
    }
}

#[test]
fn truncated_binary_header_is_refused() {
    // A client push needs the kind byte and four length bytes.
    for len in 1..5 {
        let frame = [KIND_PUSH, 0, 0, 0, 0];
        assert_eq!(
            decode_err(V2, bin(&frame[..len])),
            DecodeError::Truncated {
                needed: 5,
                got: len
            }
        );
    }
    assert_eq!(
        server_err(V2, bin(&[KIND_PUSH, 0, 0])),
        DecodeError::Truncated { needed: 4, got: 3 }
    );
    assert_eq!(
        server_err(V2, bin(&[KIND_REPLY, 0, 0, 0])),
        DecodeError::Truncated { needed: 5, got: 4 }
    );
    assert_eq!(
        server_err(V2, bin(&[KIND_BROADCAST, 0])),
        DecodeError::Truncated { needed: 3, got: 2 }
    );
}

#[test]
fn header_lengths_beyond_the_frame_are_refused() {
    // Announces a 1+4+(1+1+9+1) = 17-byte header; only 12 bytes follow the kind.
    let frame = [
        KIND_PUSH, 1, 1, 9, 1, b'1', b'2', b't', b'o', b'p', b'i', b'c',
    ];
    let err = decode_err(V2, bin(&frame));
    assert_eq!(
        err,
        DecodeError::Truncated {
            needed: 17,
            got: 12
        }
    );
    assert_eq!(
        err.to_string(),
        "truncated binary frame: header announces 17 bytes, frame has 12"
    );
    assert_eq!(
        server_err(V2, bin(&[KIND_BROADCAST, 255, 255, b't'])),
        DecodeError::Truncated {
            needed: 513,
            got: 4
        }
    );
}

#[test]
fn invalid_utf8_in_a_header_field_is_refused_naming_the_field() {
    let bad = 0xff;
    let cases: [(usize, &str); 4] = [(5, "join_ref"), (6, "ref"), (7, "topic"), (8, "event")];
    for (at, field) in cases {
        let mut frame = vec![KIND_PUSH, 1, 1, 1, 1, b'1', b'2', b't', b'e'];
        frame[at] = bad;
        let err = decode_err(V2, bin(&frame));
        assert_eq!(err, DecodeError::InvalidUtf8(field));
        assert_eq!(
            err.to_string(),
            format!("binary frame: {field} is not UTF-8")
        );
    }
    assert_eq!(
        server_err(V2, bin(&[KIND_REPLY, 0, 0, 1, 2, b't', b'o', 0xc3])),
        DecodeError::InvalidUtf8("status")
    );
}

#[test]
fn invalid_utf8_in_the_payload_is_fine() {
    assert!(V2
        .decode(&bin(&[KIND_PUSH, 0, 0, 1, 1, b't', b'e', 0xff, 0xfe]))
        .is_ok());
}

#[test]
fn binary_frames_on_v1_are_refused() {
    let frame = bin(&[KIND_PUSH, 0, 0, 1, 1, b't', b'e']);
    assert_eq!(
        decode_err(V1, frame.clone()),
        DecodeError::BinaryNotSupported
    );
    assert_eq!(server_err(V1, frame), DecodeError::BinaryNotSupported);
}

// ---- vsn negotiation ----

#[test]
fn absent_vsn_negotiates_v1() {
    assert_eq!(Serializer::negotiate(None), Ok(Serializer::V1Json));
}

#[test]
fn vsn_1_0_x_negotiates_v1() {
    for vsn in ["1.0.0", "1.0.1", "1.0.10", "1.0.0+build.5"] {
        assert_eq!(
            Serializer::negotiate(Some(vsn)),
            Ok(Serializer::V1Json),
            "{vsn}"
        );
    }
}

#[test]
fn vsn_2_0_x_negotiates_v2() {
    for vsn in [
        "2.0.0",
        "2.0.5",
        "2.0.123456789012345678901234567890",
        "2.0.1-rc.1",
    ] {
        assert_eq!(
            Serializer::negotiate(Some(vsn)),
            Ok(Serializer::V2),
            "{vsn}"
        );
    }
}

#[test]
fn other_versions_are_refused() {
    for vsn in [
        "3.0.0",
        "2.1.0",
        "1.1.0",
        "0.9.0",
        "abc",
        "",
        "2",
        "2.0",
        "2.0.0.0",
        "2.0.x",
        "v2.0.0",
        " 2.0.0",
        "2.0.0 ",
        "02.0.0",
        "2.00.0",
        "2.0.05",
        "2.0.0-rc.1",
        "2.0.0-",
        "2.0.0+",
        "2.0.1-01",
        "-2.0.0",
    ] {
        let err = Serializer::negotiate(Some(vsn)).unwrap_err();
        assert_eq!(err, UnsupportedVsn(vsn.to_string()), "{vsn}");
        assert!(err.to_string().contains("unsupported protocol vsn"));
    }
}
