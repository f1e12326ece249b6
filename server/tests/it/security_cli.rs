//! `rollcall token` and `rollcall serve` with a secret, as a user runs them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use rollcall_server::security::auth::{unix_now, Verifier};

const BIN: &str = env!("CARGO_BIN_EXE_rollcall");

/// Starts `rollcall serve --port 0` with `env` set (and `unset` removed); returns the process
/// and the address from its first line.
fn serve(env: &[(&str, &str)], unset: &[&str]) -> (std::process::Child, String) {
    let mut command = Command::new(BIN);
    command.args(["serve", "--port", "0"]);
    for (k, v) in env {
        command.env(k, v);
    }
    for k in unset {
        command.env_remove(k);
    }
    let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("line");
    let addr = line
        .trim()
        .strip_prefix("rollcall listening on http://")
        .expect("listening line")
        .to_string();
    (child, addr)
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
    let (mut child, addr) = serve(
        &[
            ("ROLLCALL_SECRET", "env-secret,older-secret"),
            ("RUST_LOG", "warn"),
        ],
        &[],
    );
    let refused = tokio_tungstenite::connect_async(format!(
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
    let accepted = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/socket/websocket?vsn=2.0.0&token={token}"
    ))
    .await;
    let _ = child.kill();
    let _ = child.wait();
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(accepted.is_ok(), "{accepted:?}");
}

#[tokio::test]
async fn serve_with_rollcall_max_conns_per_ip_refuses_the_connection_beyond() {
    // The open-mode warning comes after the line read here, into a closed pipe.
    let (mut child, addr) = serve(
        &[("ROLLCALL_MAX_CONNS_PER_IP", "1"), ("RUST_LOG", "error")],
        &["ROLLCALL_SECRET"],
    );
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let first = tokio_tungstenite::connect_async(url.clone()).await;
    let second = tokio_tungstenite::connect_async(url).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.is_ok(), "{first:?}");
    // Counted at accept: 429 if the request had arrived by then, else closed unanswered.
    match second {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        Err(_) => {}
        Ok(_) => panic!("the second connection was accepted"),
    }
}
