//! The `rollcall` binary as a user runs it: flags, environment, the listening line, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_rollcall");

/// Starts `rollcall serve` with `args` and `env`; returns the child and its address.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("rollcall listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr)
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--host", "ROLLCALL_HOST"),
        ("--port", "ROLLCALL_PORT"),
        ("--static-dir", "ROLLCALL_STATIC_DIR"),
        ("--rooms", "ROLLCALL_ROOMS"),
        ("--idle-timeout-ms", "ROLLCALL_IDLE_TIMEOUT_MS"),
        ("--max-frame-size", "ROLLCALL_MAX_FRAME_SIZE"),
        ("--max-meta-size", "ROLLCALL_MAX_META_SIZE"),
        ("--max-channels", "ROLLCALL_MAX_CHANNELS"),
        ("--max-queued-bytes", "ROLLCALL_MAX_QUEUED_BYTES"),
        (
            "--header-read-timeout-ms",
            "ROLLCALL_HEADER_READ_TIMEOUT_MS",
        ),
        ("--max-conns", "ROLLCALL_MAX_CONNS"),
        ("--longpoll-open-rate", "ROLLCALL_LONGPOLL_OPEN_RATE"),
        ("--api-rate", "ROLLCALL_API_RATE"),
        ("--longpoll-window-ms", "ROLLCALL_LONGPOLL_WINDOW_MS"),
        ("--node-name", "ROLLCALL_NODE_NAME"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(env), "{env} missing from --help");
    }
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_the_process_exits() {
    let (mut child, addr) = spawn(&["--port", "0"], &[]);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/socket/websocket?vsn=2.0.0"))
            .await
            .unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let close = loop {
        match tokio::time::timeout(crate::support::server::DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    let deadline = std::time::Instant::now() + crate::support::server::DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process still running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn environment_variables_configure_the_server() {
    let (mut child, addr) = spawn(
        &[],
        &[
            ("ROLLCALL_PORT", "0"),
            ("ROLLCALL_ROOMS", "lobby"),
            ("ROLLCALL_NODE_NAME", "env-node"),
        ],
    );
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (_, _, body) = crate::support::server::http(addr, "GET", "/healthz", &[], b"").await;
    assert!(body.contains("env-node"), "{body}");
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/socket/websocket?vsn=2.0.0"))
            .await
            .unwrap();
    use futures_util::SinkExt;
    ws.send(Message::text(r#"["1","1","room:x","phx_join",{}]"#))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains("unmatched topic"));
    ws.send(Message::text(r#"["2","2","lobby","phx_join",{}]"#))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains(r#""status":"ok""#));
    child.kill().unwrap();
    child.wait().unwrap();
}
