//! `rollcall token` and `rollcall serve` with a secret, as a user runs them.

use std::process::Command;

use rollcall_server::security::auth::{unix_now, Verifier};

use crate::support::cluster::Node;
use crate::support::server::DEADLINE;

const BIN: &str = env!("CARGO_BIN_EXE_rollcall");

/// Starts `rollcall serve --port 0` with `env` set (and no other `ROLLCALL_*` variable) as the
/// node `name`.
async fn serve(name: &str, env: &[(&str, &str)]) -> Node {
    let mut command = Node::command();
    command.args(["--port", "0"]).envs(env.iter().copied());
    Node::spawn(name, command, false).await
}

type Connected = (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
);

/// A WebSocket connect to `url`, answered within the deadline.
async fn connect(url: String) -> tokio_tungstenite::tungstenite::Result<Connected> {
    tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("an answer before the deadline")
}

#[test]
fn rollcall_token_prints_a_token_the_server_secret_verifies() {
    let out = Command::new(BIN)
        .args(["token", "--secret", "dev-secret", "--sub", "alice"])
        .args([
            "--rooms",
            "room:*",
            "--ttl",
            "15m",
            "--meta",
            r#"{"name":"Alice"}"#,
        ])
        .env_remove("ROLLCALL_SECRET")
        .output()
        .expect("run rollcall token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let id = Verifier::new(&["dev-secret"])
        .expect("secret")
        .verify(&token, unix_now())
        .expect("valid token");
    assert_eq!(id.key, "alice");
    assert_eq!(id.rooms, Some(vec!["room:*".to_string()]));
    assert_eq!(id.meta["name"], "Alice");
    // 15 minutes from now, not more.
    assert!(Verifier::new(&["dev-secret"])
        .expect("secret")
        .verify(&token, unix_now() + 16 * 60)
        .is_err());
}

#[test]
fn rollcall_token_refuses_meta_that_is_not_an_object() {
    let out = Command::new(BIN)
        .args(["token", "--secret", "s", "--sub", "a", "--meta", "[1]"])
        .output()
        .expect("run rollcall token");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--meta must be a JSON object"));
}

#[tokio::test]
async fn serve_with_rollcall_secret_refuses_connections_without_a_token() {
    let node = serve(
        "secret-env",
        &[
            ("ROLLCALL_SECRET", "env-secret,older-secret"),
            ("RUST_LOG", "warn"),
        ],
    )
    .await;
    let addr = &node.addr;
    let refused = connect(format!(
        "ws://{addr}/socket/websocket?vsn=2.0.0&user_id=alice"
    ))
    .await;
    let token = rollcall_server::security::auth::mint(
        "older-secret",
        &rollcall_server::security::auth::Claims {
            sub: "alice".into(),
            exp: Some(unix_now() + 60),
            ..Default::default()
        },
    )
    .expect("mint");
    let accepted = connect(format!(
        "ws://{addr}/socket/websocket?vsn=2.0.0&token={token}"
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403);
            let body = resp.body().clone().unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(&body), "token required");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(accepted.is_ok(), "{accepted:?}");
}

#[tokio::test]
async fn serve_with_rollcall_max_conns_per_ip_refuses_the_connection_beyond() {
    let node = serve(
        "conns-env",
        &[("ROLLCALL_MAX_CONNS_PER_IP", "1"), ("RUST_LOG", "error")],
    )
    .await;
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", node.addr);
    let first = connect(url.clone()).await;
    let second = connect(url).await;
    assert!(first.is_ok(), "{first:?}");
    // Counted at accept: 429 if the request had arrived by then, else closed unanswered.
    match second {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body = resp.body().clone().unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&body),
                "too many connections from this address (limit 1)"
            );
        }
        Err(_) => {}
        Ok(_) => panic!("the second connection was accepted"),
    }
}
