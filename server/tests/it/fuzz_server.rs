//! Fuzz targets for the server's own decoders: long-poll bodies, connect tokens, the auth-token
//! sub-protocol header, `--allowed-origins` patterns, and the whole per-connection socket
//! machine fed with hostile frame sequences. Stable Rust, proptest, inside `cargo test`.
//!
//! Budget: `ROLLCALL_FUZZ_CASES` cases per target (default 1000; the socket machine target runs
//! a tenth of that, each case being a whole connection).
//! A long run: `ROLLCALL_FUZZ_CASES=100000 cargo test --release -p rollcall-server --test it fuzz_server::`.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rollcall_core::protocol::{Frame, Serializer};
use rollcall_server::frame::{CloseReason, FromClient, ToClient};
use rollcall_server::security::auth::{mint, Claims, Verifier};
use rollcall_server::security::origin::OriginPattern;
use rollcall_server::socket::{self, ConnectInfo, NodeContext, SocketContext};
use rollcall_server::transport::longpoll::{parse_body, MAX_NDJSON_LINES};
use rollcall_server::transport::websocket::auth_token_from_headers;
use rollcall_server::{Config, Server};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

const SECRET: &str = "fuzz-secret";
const NOW: u64 = 1_800_000_000;

fn cases() -> u32 {
    std::env::var("ROLLCALL_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "(?s).{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("sub".to_string()),
                        Just("exp".to_string()),
                        Just("nbf".to_string()),
                        Just("rooms".to_string()),
                        Just("meta".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

// ---- long-poll bodies ----

proptest! {
    #![proptest_config(config(cases()))]

    #[test]
    fn longpoll_bodies_split_into_at_most_100_frames_without_panicking(
        ndjson in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..2000),
    ) {
        let frames = parse_body(ndjson, &body);
        prop_assert!(frames.len() <= MAX_NDJSON_LINES.max(1));
        if !ndjson {
            prop_assert_eq!(frames.len(), 1);
        }
        for f in &frames {
            if let FromClient::Frame(Frame::Text(t)) = f {
                prop_assert!(!ndjson || t.starts_with('['));
            }
        }
    }

    #[test]
    fn longpoll_ndjson_of_many_lines_is_capped(lines in prop::collection::vec("[\\[a-zA-Z0-9+/=]{0,20}", 0..300)) {
        let body = lines.join("\n");
        let frames = parse_body(true, body.as_bytes());
        let nonempty = lines.iter().filter(|l| !l.is_empty()).count();
        prop_assert_eq!(frames.len(), nonempty.min(MAX_NDJSON_LINES));
    }
}

// ---- tokens ----

fn verifier() -> Verifier {
    Verifier::new(&[SECRET]).expect("a secret")
}

fn valid_tokens() -> Vec<String> {
    let mut out = Vec::new();
    for (sub, rooms, meta) in [
        ("alice", None, None),
        ("bob", Some(vec!["room:*".to_string()]), None),
        (
            "carol",
            Some(vec![]),
            Some(json!({"name": "Carol", "n": [1]})),
        ),
    ] {
        let claims = Claims {
            sub: sub.into(),
            exp: Some(NOW + 60),
            nbf: Some(NOW - 60),
            iat: Some(NOW),
            rooms,
            meta: meta.and_then(|m| m.as_object().cloned()),
        };
        if let Ok(t) = mint(SECRET, &claims) {
            out.push(t);
        }
    }
    out
}

proptest! {
    #![proptest_config(config(cases()))]

    #[test]
    fn verify_survives_any_text(text in "(?s).{0,300}") {
        let _ = verifier().verify(&text, NOW);
    }

    #[test]
    fn verify_survives_three_base64url_parts(parts in prop::collection::vec("[A-Za-z0-9_=-]{0,60}", 3)) {
        let _ = verifier().verify(&parts.join("."), NOW);
    }

    /// A changed token never verifies as someone else: either refused or exactly the original.
    #[test]
    fn a_mutated_token_is_refused_or_unchanged(
        token in prop::sample::select(valid_tokens()),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..4),
    ) {
        let original = verifier().verify(&token, NOW).expect("seed verifies");
        let mut chars: Vec<char> = token.chars().collect();
        for (i, c) in edits {
            let at = i.index(chars.len());
            chars[at] = c;
        }
        let mutated: String = chars.into_iter().collect();
        if let Ok(id) = verifier().verify(&mutated, NOW) {
            prop_assert_eq!(id, original);
        }
    }

    /// Any JSON body, correctly signed: verify never panics, and accepts only a real `sub`.
    #[test]
    fn signed_claims_of_any_shape_verify_or_are_refused_with_a_reason(body in any_json()) {
        let token = encode(
            &Header::new(Algorithm::HS256),
            &body,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        );
        if let Ok(token) = token {
            match verifier().verify(&token, NOW) {
                Ok(id) => {
                    prop_assert_eq!(Some(id.key.as_str()), body.get("sub").and_then(Value::as_str));
                    prop_assert!(!id.key.is_empty());
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn auth_token_subprotocol_header_survives_any_value(value in "[ -~]{0,200}") {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert("sec-websocket-protocol", v);
        }
        let _ = auth_token_from_headers(&h);
    }

    #[test]
    fn origin_patterns_survive_any_text_and_match_their_own_origin(
        pattern in "(?s).{0,40}",
        origin in "(?s).{0,40}",
        scheme in "https?",
        host in "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}",
        port in prop::option::of(1u16..),
    ) {
        let _ = OriginPattern::parse(&pattern).matches(&origin);
        let own = match port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };
        prop_assert!(OriginPattern::parse(&own).matches(&own));
        let wildcard = OriginPattern::parse(&format!("*.{host}"));
        let sub = format!("{scheme}://x.{host}");
        let apex = format!("{scheme}://{host}");
        prop_assert!(wildcard.matches(&sub));
        prop_assert!(!wildcard.matches(&apex));
    }
}

// ---- the socket machine ----

/// Frames a client might send: valid ones, damaged ones, junk.
fn hostile_frame() -> impl Strategy<Value = Frame> {
    let valid_text = prop::sample::select(vec![
        r#"[null,"1","phoenix","heartbeat",{}]"#.to_string(),
        r#"["1","1","room:a","phx_join",{"meta":{"n":1}}]"#.to_string(),
        r#"["1","2","room:a","track",{"s":"x"}]"#.to_string(),
        r#"["1","3","room:a","untrack",{}]"#.to_string(),
        r#"["1","4","room:a","ping",{"a":[1,2]}]"#.to_string(),
        r#"["1","5","room:a","phx_leave",{}]"#.to_string(),
        r#"["6","6","room:b","phx_join",{"track":false}]"#.to_string(),
        r#"["6","7","nope","phx_join",{}]"#.to_string(),
    ]);
    let damaged = (
        valid_text.clone(),
        any::<prop::sample::Index>(),
        any::<char>(),
    )
        .prop_map(|(t, i, c)| {
            let mut chars: Vec<char> = t.chars().collect();
            let at = i.index(chars.len());
            chars[at] = c;
            chars.into_iter().collect::<String>()
        });
    prop_oneof![
        4 => valid_text.prop_map(Frame::Text),
        3 => damaged.prop_map(Frame::Text),
        1 => "(?s).{0,60}".prop_map(Frame::Text),
        1 => any_json().prop_map(|v| Frame::Text(v.to_string())),
        2 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Frame::Binary),
    ]
}

/// Runs one connection over `frames`; returns its outputs and why it ended.
async fn run_machine(
    server: &Server,
    serializer: Serializer,
    frames: Vec<Frame>,
) -> (Vec<ToClient>, CloseReason) {
    let (_shutdown_tx, shutdown_rx) = watch::channel(false);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let node = NodeContext::new(
        Arc::new(server.config().clone()),
        server.tracker().clone(),
        server.metrics().clone(),
        shutdown_rx,
    );
    let ctx = SocketContext::new(serializer, ConnectInfo::default(), node);
    let stream = futures_util::stream::iter(frames.into_iter().map(FromClient::Frame));
    let sink = futures_util::sink::unfold(out_tx, |tx, item: ToClient| async move {
        tx.send(item).map_err(|_| ())?;
        Ok::<_, ()>(tx)
    });
    let (reason, sink, _) = socket::run(ctx, Box::pin(sink), stream).await;
    drop(sink);
    let mut outputs = Vec::new();
    while let Ok(o) = out_rx.try_recv() {
        outputs.push(o);
    }
    (outputs, reason)
}

#[test]
fn the_socket_machine_survives_hostile_frame_sequences() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(async {
        Server::new(Config {
            max_frame_size: 200,
            max_meta_size: 64,
            max_channels: 3,
            ..Config::default()
        })
    });
    let mut runner = proptest::test_runner::TestRunner::new(config((cases() / 10).max(50)));
    let strategy = (
        prop::bool::ANY,
        prop::collection::vec(hostile_frame(), 1..30),
    );
    runner
        .run(&strategy, |(v1, frames)| {
            let serializer = if v1 {
                Serializer::V1Json
            } else {
                Serializer::V2
            };
            let sent = frames.len();
            let (outputs, reason) = runtime.block_on(run_machine(&server, serializer, frames));
            match reason {
                // Every server-side close says why, with a code from the documented set.
                CloseReason::Closed(code, why) => {
                    prop_assert!([1007, 1008, 1009].contains(&code), "code {code}");
                    prop_assert!(!why.is_empty());
                    let closed = matches!(outputs.last(), Some(ToClient::Close { .. }));
                    prop_assert!(closed, "the close frame is the last output");
                }
                CloseReason::ClientGone => {
                    // The input ended: every frame was answered (heartbeats, replies) or, for
                    // a few relayed events, at least not dropped silently by a panic.
                    prop_assert!(!outputs.is_empty() || sent == 0);
                }
                CloseReason::SinkFailed => prop_assert!(false, "the sink never fails here"),
            }
            Ok(())
        })
        .expect("no hostile sequence breaks the machine");
    // The node still works afterwards: a fresh connection gets its heartbeat answered.
    let (outputs, _) = runtime.block_on(run_machine(
        &server,
        Serializer::V2,
        vec![Frame::Text(r#"[null,"1","phoenix","heartbeat",{}]"#.into())],
    ));
    assert_eq!(outputs.len(), 1);
}
