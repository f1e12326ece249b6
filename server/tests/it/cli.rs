//! The `rollcall` binary as a user runs it: flags, environment, the listening line, SIGTERM.
//! (Every flag and its environment variable, one by one, is in `flags`.)

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::cluster::Node;
use crate::support::server::{Client, DEADLINE};

/// Starts `rollcall serve` with `args` and `env`, as the node `name` (for its log file).
async fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Node {
    let mut command = Node::command();
    command
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn");
    Node::spawn(name, command, false).await
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_the_process_exits() {
    let mut node = spawn("cli-sigterm", &["--port", "0"], &[]).await;
    let mut client = Client::connect_to(&node.addr, "vsn=2.0.0").await;
    node.sigterm();
    let close = loop {
        match tokio::time::timeout(DEADLINE, client.ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    assert!(node.wait_exit().await, "the process exits successfully");
}

#[tokio::test]
async fn environment_variables_configure_the_server() {
    let node = spawn(
        "cli-env",
        &[],
        &[
            ("ROLLCALL_PORT", "0"),
            ("ROLLCALL_ROOMS", "lobby"),
            ("ROLLCALL_NODE_NAME", "env-node"),
        ],
    )
    .await;
    assert_eq!(node.healthz().await["node"], "env-node");
    let mut client = Client::connect_to(&node.addr, "vsn=2.0.0").await;
    client
        .ws
        .send(Message::text(r#"["1","1","room:x","phx_join",{}]"#))
        .await
        .expect("sent");
    let unmatched: Value = client.recv_json().await;
    assert_eq!(
        unmatched,
        json!([null, "1", "room:x", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    client.join("lobby", json!({})).await;
}
