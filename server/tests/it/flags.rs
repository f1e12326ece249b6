//! Every `rollcall serve` flag through the binary: one table, each row started once with the
//! flag and once with its environment variable, its effect observed from outside (a refused
//! origin, a burst then `rate limited`, a close after N in a row, `room full`, the penalty's
//! 429, an address counted from `X-Forwarded-For`, …). The list of flags and their variables
//! comes from `rollcall serve --help`, which clap builds from the flag definitions, so a new
//! flag fails here until it has a row.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

use crate::support::broker::{Broker, BrokerKind};
use crate::support::cluster::{http, Node};
use crate::support::ports::HeldPort;
use crate::support::server::{within, Client, DEADLINE};

const BIN: &str = env!("CARGO_BIN_EXE_rollcall");

/// The flags each row passes besides its own, so that its effect is the only difference.
type Companions = &'static [&'static str];

/// What a row's check gets: the node started with the setting, and what the value named.
struct Run {
    /// Shared with the runner, which keeps the process alive until the check has finished.
    node: Arc<Node>,
    /// The held port `{port}` stood for.
    port: u16,
}

type Check = fn(Run) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// One flag: its value (`None` for a switch; `{port}`, `{static}`, `{peer}`, `{nats}` and
/// `{redis}` are filled in per run), the other flags its effect needs, and the check.
struct Row {
    flag: &'static str,
    value: Option<&'static str>,
    with: Companions,
    check: Check,
}

/// Flags whose effect is shown through the binary by other modules, with the test that
/// would fail without them. Only their flag spelling is exercised there, not the variable.
const PROVEN_ELSEWHERE: &[(&str, &str)] = &[
    (
        "--broadcast-period-ms",
        "cluster_mesh (FAST_TIMING: a killed node's members leave before the deadline)",
    ),
    ("--down-period-ms", "cluster_mesh (FAST_TIMING)"),
    ("--permdown-period-ms", "cluster_mesh (FAST_TIMING)"),
    ("--coalesce-ms", "cluster_mesh"),
    (
        "--tracker-shards",
        "cluster_shards (four shards per node; a node with another pool size is refused)",
    ),
    (
        "--diff-window-ms",
        "coalescing (through Config's diff_window in process; not observed through the binary)",
    ),
    ("--webhook-url", "webhooks"),
    ("--webhook-secret", "webhooks"),
    ("--webhook-grace-ms", "webhooks"),
    ("--webhook-timeout-ms", "webhooks"),
    ("--webhook-batch", "webhooks"),
    ("--webhook-queue", "webhooks"),
    (
        "--webhook-retry-ms",
        "webhooks (not observed: a batch dropped after the retry time)",
    ),
    ("--join-hook-url", "join_hook"),
    ("--join-hook-timeout-ms", "join_hook"),
    ("--join-hook-on-error", "join_hook"),
];

/// The cluster secret the rows share with the fixture's peers.
const CLUSTER_SECRET: &str = "flags-mesh-secret";
/// The cluster name the fixture's NATS peer uses.
const NATS_CLUSTER: &str = "flags-cluster";

fn rows() -> Vec<Row> {
    vec![
        Row {
            flag: "--host",
            value: Some("127.0.0.2"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    assert!(run.node.addr.starts_with("127.0.0.2:"), "{}", run.node.addr);
                    assert_eq!(run.node.healthz().await["status"], "ok");
                })
            },
        },
        Row {
            flag: "--port",
            value: Some("{port}"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    assert_eq!(run.node.addr, format!("127.0.0.1:{}", run.port));
                    assert_eq!(run.node.healthz().await["status"], "ok");
                })
            },
        },
        Row {
            flag: "--static-dir",
            value: Some("{static}"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let (status, body) = http(&run.node.addr, "GET", "/").await;
                    assert_eq!((status, body.trim()), (200, STATIC_MARKER));
                })
            },
        },
        Row {
            flag: "--rooms",
            value: Some("lobby"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let mut c = user(&run.node, "a").await;
                    assert_eq!(
                        join(&mut c, "room:x", json!({})).await,
                        refused("unmatched topic")
                    );
                    assert_eq!(join(&mut c, "lobby", json!({})).await, ok());
                })
            },
        },
        Row {
            flag: "--idle-timeout-ms",
            value: Some("300"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let mut silent = user(&run.node, "silent").await;
                    assert_eq!(silent.expect_close().await, (1001, "idle timeout".into()));
                })
            },
        },
        Row {
            flag: "--max-frame-size",
            value: Some("200"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let mut c = user(&run.node, "a").await;
                    let frame =
                        json!([null, "1", "phoenix", "heartbeat", {"pad": "x".repeat(300)}]);
                    c.send_json(frame).await;
                    assert_eq!(c.expect_close().await.0, 1009);
                })
            },
        },
        Row {
            flag: "--max-meta-size",
            value: Some("20"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let mut c = user(&run.node, "a").await;
                    // {"s":"…"} is 8 bytes besides the string.
                    let over = json!({"meta": {"s": "x".repeat(13)}});
                    assert_eq!(
                        join(&mut c, "room:a", over).await,
                        refused("meta too large")
                    );
                    let at = json!({"meta": {"s": "x".repeat(12)}});
                    assert_eq!(join(&mut c, "room:a", at).await, ok());
                })
            },
        },
        Row {
            flag: "--max-channels",
            value: Some("1"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let mut c = user(&run.node, "a").await;
                    assert_eq!(join(&mut c, "room:a", json!({})).await, ok());
                    assert_eq!(
                        join(&mut c, "room:b", json!({})).await,
                        refused("too many channels joined")
                    );
                })
            },
        },
        Row {
            flag: "--max-queued-bytes",
            value: Some("268435456"),
            with: &["--max-frame-size", "4194304"],
            check: |run| {
                Box::pin(async move {
                    // 16 MB in 8 events to a member that reads nothing meanwhile: the socket
                    // buffers take a few MB at most (the receive window does not grow while
                    // nothing is read), the default queue 4 MiB, and the member is closed
                    // (after reading 0 to 2 of them); 256 MiB holds them all, and the member
                    // then reads every one.
                    let n = stall_then_read(&run.node.addr, 8, 2 << 20).await;
                    assert_eq!(n, 8, "the member was closed after {n} events");
                })
            },
        },
        Row {
            flag: "--header-read-timeout-ms",
            value: Some("200"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    use tokio::io::AsyncReadExt;
                    // Silent: the node closes it at the deadline (the default waits 5 s).
                    let mut tcp = tokio::net::TcpStream::connect(&run.node.addr)
                        .await
                        .expect("connect");
                    let mut buf = [0u8; 64];
                    let read =
                        tokio::time::timeout(std::time::Duration::from_secs(2), tcp.read(&mut buf))
                            .await;
                    assert!(
                        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                        "not closed within 2 s: {read:?}"
                    );
                })
            },
        },
        Row {
            flag: "--max-conns",
            value: Some("1"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let _first = user(&run.node, "a").await;
                    // Counted at accept: 503 if the request had arrived by then, else closed.
                    let second = connect(&run.node.addr, "vsn=2.0.0&user_id=b", &[]).await;
                    let status = second.err().map(|e| e.0);
                    assert!(matches!(status, Some(503 | 0)), "{status:?}");
                })
            },
        },
        Row {
            flag: "--longpoll-open-rate",
            value: Some("0.001"),
            with: &["--longpoll-open-burst", "1"],
            check: |run| Box::pin(async move { one_session_then_403(&run.node.addr).await }),
        },
        Row {
            flag: "--longpoll-open-burst",
            value: Some("1"),
            with: &["--longpoll-open-rate", "0.001"],
            check: |run| Box::pin(async move { one_session_then_403(&run.node.addr).await }),
        },
        Row {
            flag: "--api-rate",
            value: Some("0.001"),
            with: &["--api-burst", "1"],
            check: |run| Box::pin(async move { one_api_read_then_429(&run.node.addr).await }),
        },
        Row {
            flag: "--api-burst",
            value: Some("1"),
            with: &["--api-rate", "0.001"],
            check: |run| Box::pin(async move { one_api_read_then_429(&run.node.addr).await }),
        },
        Row {
            flag: "--longpoll-window-ms",
            value: Some("1000"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    // An empty poll waits one window: it ends within the deadline only if the
                    // window is short. A session the machine was too slow to poll within 1.5
                    // windows has expired (410 with a fresh token): poll that one instead.
                    let query = "/socket/longpoll?vsn=2.0.0&user_id=poller";
                    let (_, body) = http(&run.node.addr, "GET", query).await;
                    let mut answer: Value = serde_json::from_str(&body).expect("JSON");
                    while answer["status"] == 410 {
                        let token = answer["token"].as_str().expect("a session token");
                        let poll = format!("{query}&token={token}");
                        let (_, body) =
                            tokio::time::timeout(DEADLINE, http(&run.node.addr, "GET", &poll))
                                .await
                                .expect("the empty poll ends with the window");
                        answer = serde_json::from_str(&body).expect("JSON");
                    }
                    assert_eq!(answer["status"], 204, "{answer}");
                })
            },
        },
        Row {
            flag: "--node",
            value: Some("flagged-node"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    assert_eq!(run.node.healthz().await["node"], "flagged-node");
                })
            },
        },
        Row {
            flag: "--metrics",
            value: Some("false"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    assert_eq!(http(&run.node.addr, "GET", "/metrics").await.0, 404);
                })
            },
        },
        Row {
            flag: "--secret",
            value: Some("flag-secret"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let refused = connect(&run.node.addr, "vsn=2.0.0&user_id=a", &[]).await;
                    assert_eq!(refused.err(), Some((403, "token required".into())));
                    let token = rollcall_server::security::auth::mint(
                        "flag-secret",
                        &rollcall_server::security::auth::Claims {
                            sub: "a".into(),
                            ..Default::default()
                        },
                    )
                    .expect("mint");
                    let query = format!("vsn=2.0.0&token={token}");
                    assert!(connect(&run.node.addr, &query, &[]).await.is_ok());
                })
            },
        },
        Row {
            flag: "--allowed-origins",
            value: Some("https://good.example"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let q = "vsn=2.0.0";
                    let evil = connect(&run.node.addr, q, &[("origin", "https://evil.example")]);
                    assert_eq!(evil.await.err().map(|e| e.0), Some(403));
                    let good = connect(&run.node.addr, q, &[("origin", "https://good.example")]);
                    assert!(good.await.is_ok());
                    // The long-poll transport checks it too.
                    let (_, _, body) = crate::support::server::http(
                        run.node.addr.parse().expect("an address"),
                        "GET",
                        "/socket/longpoll?vsn=2.0.0",
                        &[("origin", "https://evil.example")],
                        b"",
                    )
                    .await;
                    assert_eq!(
                        serde_json::from_str::<Value>(&body).expect("JSON"),
                        json!({"status": 403})
                    );
                })
            },
        },
        Row {
            flag: "--event-rate",
            value: Some("0"),
            with: &["--event-burst", "1"],
            check: |run| {
                Box::pin(async move {
                    // Unlimited: far past the burst of 1, nothing is refused.
                    let mut c = user(&run.node, "a").await;
                    let replies = pushes(&mut c, 30).await;
                    assert!(replies.iter().all(|r| r["status"] == "ok"), "{replies:?}");
                })
            },
        },
        Row {
            flag: "--event-burst",
            value: Some("3"),
            with: &["--event-rate", "0.001"],
            check: |run| {
                Box::pin(async move {
                    let mut c = user(&run.node, "a").await;
                    let statuses: Vec<Value> = pushes(&mut c, 4)
                        .await
                        .into_iter()
                        .map(|r| r["status"].clone())
                        .collect();
                    assert_eq!(
                        statuses,
                        [json!("ok"), json!("ok"), json!("ok"), json!("error")]
                    );
                })
            },
        },
        Row {
            flag: "--meta-rate",
            value: Some("0"),
            with: &["--meta-burst", "1"],
            check: |run| {
                Box::pin(async move {
                    let mut c = user(&run.node, "a").await;
                    let replies = tracks(&mut c, 10).await;
                    assert!(replies.iter().all(|r| r["status"] == "ok"), "{replies:?}");
                })
            },
        },
        Row {
            flag: "--meta-burst",
            value: Some("2"),
            with: &["--meta-rate", "0.001"],
            check: |run| {
                Box::pin(async move {
                    let mut c = user(&run.node, "a").await;
                    let replies = tracks(&mut c, 3).await;
                    assert_eq!(replies[1]["status"], "ok");
                    assert_eq!(
                        replies[2],
                        json!({"status": "error", "response": {"reason": "rate limited"}})
                    );
                })
            },
        },
        Row {
            flag: "--rate-limit-close-after",
            value: Some("3"),
            with: &[
                "--event-rate",
                "0.001",
                "--event-burst",
                "1",
                "--abuse-penalty-ms",
                "0",
            ],
            check: |run| {
                Box::pin(async move {
                    let mut c = user(&run.node, "a").await;
                    let jr = join_ok(&mut c, "room:a").await;
                    for n in 0..3 {
                        let r = c.push(&jr, "room:a", "e", json!({})).await;
                        let reply = c.recv_until(|v| v[1] == json!(r)).await;
                        let expected = if n == 0 { "ok" } else { "error" };
                        assert_eq!(reply[4]["status"], expected, "push {n}");
                    }
                    c.push(&jr, "room:a", "e", json!({})).await;
                    assert_eq!(
                        c.expect_close().await,
                        (1008, "rate limited: too many messages".into())
                    );
                })
            },
        },
        Row {
            flag: "--max-room-members",
            value: Some("1"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let mut a = user(&run.node, "a").await;
                    let mut b = user(&run.node, "b").await;
                    assert_eq!(join(&mut a, "room:r", json!({})).await, ok());
                    assert_eq!(
                        join(&mut b, "room:r", json!({})).await,
                        refused("room full")
                    );
                })
            },
        },
        Row {
            flag: "--abuse-penalty-ms",
            value: Some("3600000"),
            with: &[
                "--event-rate",
                "0.001",
                "--event-burst",
                "1",
                "--rate-limit-close-after",
                "1",
            ],
            check: |run| {
                Box::pin(async move {
                    let mut c = user(&run.node, "abuser").await;
                    let jr = join_ok(&mut c, "room:a").await;
                    c.push(&jr, "room:a", "e", json!({})).await;
                    c.push(&jr, "room:a", "e", json!({})).await;
                    assert_eq!(c.expect_close().await.0, 1008);
                    let again = connect(&run.node.addr, "vsn=2.0.0&user_id=abuser", &[]).await;
                    assert_eq!(
                        again.err(),
                        Some((429, "rate limited: try again in 3600 s".into()))
                    );
                })
            },
        },
        Row {
            flag: "--max-conns-per-ip",
            value: Some("1"),
            with: &[],
            check: |run| {
                Box::pin(async move {
                    let _first = user(&run.node, "a").await;
                    // Counted at accept: 429 if the request had arrived by then, else closed.
                    let second = connect(&run.node.addr, "vsn=2.0.0", &[]).await;
                    let status = second.err().map(|e| e.0);
                    assert!(matches!(status, Some(429 | 0)), "{status:?}");
                })
            },
        },
        Row {
            flag: "--trust-forwarded-for",
            value: None,
            with: &["--max-conns-per-ip", "1"],
            check: |run| {
                Box::pin(async move {
                    // Every connection comes from 127.0.0.1; the proxy's entry is what counts.
                    let q = "vsn=2.0.0";
                    let one = connect(&run.node.addr, q, &[("x-forwarded-for", "10.0.0.1")]).await;
                    let two = connect(&run.node.addr, q, &[("x-forwarded-for", "10.0.0.2")]).await;
                    assert!(one.is_ok() && two.is_ok());
                    let again =
                        connect(&run.node.addr, q, &[("x-forwarded-for", "10.0.0.1")]).await;
                    assert_eq!(again.err().map(|e| e.0), Some(429));
                })
            },
        },
        Row {
            flag: "--cluster",
            value: Some("mesh"),
            with: &[
                "--cluster-listen",
                "127.0.0.1:0",
                "--cluster-secret",
                CLUSTER_SECRET,
            ],
            check: |run| {
                Box::pin(async move {
                    assert!(run.node.cluster_addr.is_some(), "no mesh listening line");
                })
            },
        },
        Row {
            flag: "--cluster-listen",
            value: Some("127.0.0.1:{port}"),
            with: &["--cluster", "mesh", "--cluster-secret", CLUSTER_SECRET],
            check: |run| {
                Box::pin(async move {
                    assert_eq!(
                        run.node.cluster_addr,
                        Some(format!("127.0.0.1:{}", run.port))
                    );
                })
            },
        },
        Row {
            flag: "--peers",
            value: Some("{peer}"),
            with: &[
                "--cluster",
                "mesh",
                "--cluster-listen",
                "127.0.0.1:0",
                "--cluster-secret",
                CLUSTER_SECRET,
            ],
            check: |run| Box::pin(async move { run.node.wait_peers_up(&["flags-peer"]).await }),
        },
        Row {
            flag: "--cluster-secret",
            value: Some(CLUSTER_SECRET),
            with: &[
                "--cluster",
                "mesh",
                "--cluster-listen",
                "127.0.0.1:0",
                "--peers",
                "{peer}",
            ],
            check: |run| Box::pin(async move { run.node.wait_peers_up(&["flags-peer"]).await }),
        },
        Row {
            flag: "--nats-url",
            value: Some("{nats}"),
            with: &[
                "--cluster",
                "nats",
                "--cluster-secret",
                CLUSTER_SECRET,
                "--cluster-name",
                NATS_CLUSTER,
            ],
            check: |run| {
                Box::pin(async move { run.node.wait_replicas_up(&["flags-nats-peer"]).await })
            },
        },
        Row {
            flag: "--cluster-name",
            value: Some(NATS_CLUSTER),
            with: &[
                "--cluster",
                "nats",
                "--cluster-secret",
                CLUSTER_SECRET,
                "--nats-url",
                "{nats}",
            ],
            check: |run| {
                Box::pin(async move { run.node.wait_replicas_up(&["flags-nats-peer"]).await })
            },
        },
        Row {
            flag: "--redis-url",
            value: Some("{redis}"),
            with: &["--cluster", "redis", "--cluster-secret", CLUSTER_SECRET],
            check: |run| {
                Box::pin(async move {
                    assert_eq!(run.node.healthz().await["status"], "ok");
                })
            },
        },
    ]
}

/// What `/` serves from the fixture's static directory.
const STATIC_MARKER: &str = "the static directory of the flags test";

/// What the rows share: a static directory, a mesh peer, brokers and a peer on NATS.
struct Fixture {
    static_dir: std::path::PathBuf,
    peer: Node,
    nats: Broker,
    redis: Broker,
    _nats_peer: Node,
}

impl Fixture {
    async fn start() -> Fixture {
        let static_dir =
            std::env::temp_dir().join(format!("rollcall-flags-{}", std::process::id()));
        std::fs::create_dir_all(&static_dir).expect("a temporary directory");
        std::fs::write(static_dir.join("index.html"), STATIC_MARKER).expect("index.html");
        let nats = Broker::start(BrokerKind::Nats).await;
        let redis = Broker::start(BrokerKind::Redis).await;
        let peer = Node::start(
            "flags-peer",
            &strings(&[
                "--cluster",
                "mesh",
                "--cluster-listen",
                "127.0.0.1:0",
                "--cluster-secret",
                CLUSTER_SECRET,
            ]),
        )
        .await;
        let nats_url = BrokerKind::Nats.url(nats.port);
        let nats_peer = Node::start(
            "flags-nats-peer",
            &strings(&[
                "--cluster",
                "nats",
                "--cluster-secret",
                CLUSTER_SECRET,
                "--nats-url",
                &nats_url,
                "--cluster-name",
                NATS_CLUSTER,
            ]),
        )
        .await;
        Fixture {
            static_dir,
            peer,
            nats,
            redis,
            _nats_peer: nats_peer,
        }
    }

    fn fill(&self, text: &str, port: u16) -> String {
        text.replace("{port}", &port.to_string())
            .replace("{static}", &self.static_dir.to_string_lossy())
            .replace(
                "{peer}",
                self.peer.cluster_addr.as_deref().unwrap_or_default(),
            )
            .replace("{nats}", &BrokerKind::Nats.url(self.nats.port))
            .replace("{redis}", &BrokerKind::Redis.url(self.redis.port))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.static_dir);
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Each long flag of `rollcall serve --help` with its environment variable.
fn documented_flags() -> BTreeMap<String, String> {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .expect("rollcall serve --help runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines().map(str::trim) {
        if let Some(rest) = line
            .strip_prefix("--")
            .or_else(|| line.strip_prefix("-h, --"))
        {
            let name = rest.split([' ', '=']).next().unwrap_or_default();
            current = (name != "help").then(|| format!("--{name}"));
        } else if let (Some(flag), Some(env)) = (&current, line.strip_prefix("[env: ")) {
            let env = env.split(['=', ']']).next().unwrap_or_default().to_owned();
            flags.insert(flag.clone(), env);
        }
    }
    flags
}

#[test]
fn help_shows_every_flag_with_its_environment_variable_and_each_is_tested() {
    let _watchdog = crate::support::watchdog::start();
    let documented = documented_flags();
    // Parsing still works: a few flags every version has.
    for flag in ["--port", "--secret", "--cluster", "--webhook-url"] {
        assert!(documented.contains_key(flag), "{flag} not found in --help");
    }
    let mut tested: Vec<&str> = rows().iter().map(|r| r.flag).collect();
    tested.extend(PROVEN_ELSEWHERE.iter().map(|(flag, _)| *flag));
    for flag in documented.keys() {
        assert!(
            tested.contains(&flag.as_str()),
            "{flag} has no row in the flags table"
        );
    }
    for flag in &tested {
        assert!(
            documented.contains_key(*flag),
            "{flag} is tested but not in --help with a variable"
        );
    }
    let top = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("rollcall --help runs");
    let top = String::from_utf8_lossy(&top.stdout);
    for (flag, env) in &documented {
        assert!(
            top.contains(&format!("{flag} ")),
            "{flag} missing from rollcall --help"
        );
        assert!(
            top.contains(env.as_str()),
            "{env} missing from rollcall --help"
        );
    }
}

/// How a row's setting reaches the process.
#[derive(Clone, Copy, Debug)]
enum Via {
    Flag,
    Environment,
}

#[tokio::test]
async fn every_flag_and_its_environment_variable_changes_what_the_server_does() {
    let _watchdog = crate::support::watchdog::start();
    let _serial = crate::support::cluster::serial().await;
    let documented = documented_flags();
    let fixture = Arc::new(Fixture::start().await);
    let mut runs = Vec::new();
    for row in rows() {
        for via in [Via::Flag, Via::Environment] {
            let env = documented
                .get(row.flag)
                .cloned()
                .unwrap_or_else(|| panic!("{} not in --help", row.flag));
            runs.push((row.flag, via, row.value, row.with, row.check, env));
        }
    }
    let failures: Vec<String> = futures_util::stream::iter(runs)
        .map(|(flag, via, value, with, check, env)| {
            let fixture = fixture.clone();
            async move {
                let held = HeldPort::new();
                let mut command = Node::command();
                if flag != "--port" {
                    command.args(["--port", "0"]);
                }
                command.args(with.iter().map(|a| fixture.fill(a, held.port())));
                let value = value.map(|v| fixture.fill(v, held.port()));
                match via {
                    Via::Flag => {
                        command.arg(flag);
                        command.args(value.iter());
                    }
                    Via::Environment => {
                        command.env(&env, value.as_deref().unwrap_or("true"));
                    }
                }
                command.env("RUST_LOG", "warn");
                let name = format!("flags{}-{via:?}", flag.replace("--", "-"));
                let mesh = [flag].iter().chain(with).any(|a| *a == "mesh")
                    || value.as_deref() == Some("mesh");
                let port = held.port();
                let outcome = tokio::spawn(async move {
                    let node = Arc::new(Node::spawn(&name, command, mesh).await);
                    let run = Run {
                        node: node.clone(),
                        port,
                    };
                    within("the row's check", check(run)).await;
                    drop(node);
                })
                .await;
                drop(held);
                outcome
                    .err()
                    .map(|e| format!("{flag} via {via:?} ({env}): {e}"))
            }
        })
        .buffer_unordered(3)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A WebSocket connect to the node at `addr` with extra request headers: the client, or the
/// refusal's status and body.
async fn connect(
    addr: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Client, (u16, String)> {
    let mut request = format!("ws://{addr}/socket/websocket?{query}")
        .into_client_request()
        .expect("a request");
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    let connected = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
        .await
        .expect("an answer before the deadline");
    match connected {
        Ok((ws, _)) => Ok(Client::from_ws(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            Err((
                resp.status().as_u16(),
                String::from_utf8_lossy(&body).into(),
            ))
        }
        // Counted at accept, a connection over a limit may be closed before it is answered.
        Err(e) => Err((0, e.to_string())),
    }
}

/// A V2 client with `user_id` on the node.
async fn user(node: &Node, key: &str) -> Client {
    Client::connect_to(&node.addr, &format!("vsn=2.0.0&user_id={key}")).await
}

/// The reply to a join of `topic` with `payload` (its status and response).
async fn join(c: &mut Client, topic: &str, payload: Value) -> Value {
    let r = c.next_ref();
    c.send_json(json!([r, r, topic, "phx_join", payload])).await;
    c.recv_until(|v| v[1] == json!(r) && v[3] == "phx_reply")
        .await[4]
        .clone()
}

/// Joins `topic`; returns the join ref.
async fn join_ok(c: &mut Client, topic: &str) -> String {
    c.join(topic, json!({})).await
}

fn ok() -> Value {
    json!({"status": "ok", "response": {}})
}

fn refused(reason: &str) -> Value {
    json!({"status": "error", "response": {"reason": reason}})
}

/// Joins `room:p` and sends `n` events at once; returns their replies in order.
async fn pushes(c: &mut Client, n: usize) -> Vec<Value> {
    let jr = join_ok(c, "room:p").await;
    let mut refs = Vec::new();
    for _ in 0..n {
        refs.push(c.push(&jr, "room:p", "e", json!({})).await);
    }
    let mut replies = Vec::new();
    for r in refs {
        replies.push(
            c.recv_until(|v| v[1] == json!(r) && v[3] == "phx_reply")
                .await[4]
                .clone(),
        );
    }
    replies
}

/// Joins `room:t` and sends `n` meta updates at once; returns their replies in order.
async fn tracks(c: &mut Client, n: usize) -> Vec<Value> {
    let jr = join_ok(c, "room:t").await;
    let mut refs = Vec::new();
    for i in 0..n {
        refs.push(c.push(&jr, "room:t", "track", json!({"n": i})).await);
    }
    let mut replies = Vec::new();
    for r in refs {
        replies.push(
            c.recv_until(|v| v[1] == json!(r) && v[3] == "phx_reply")
                .await[4]
                .clone(),
        );
    }
    replies
}

/// A member of `room:slow` reads nothing while another sends it `n` events of `bytes`, then
/// reads: how many of them it gets before its connection ends.
async fn stall_then_read(addr: &str, n: usize, bytes: usize) -> usize {
    let mut sender = Client::connect_to(addr, "vsn=2.0.0&user_id=sender").await;
    let mut slow = Client::connect_to(addr, "vsn=2.0.0&user_id=slow").await;
    let js = sender.join("room:slow", json!({"track": false})).await;
    slow.join("room:slow", json!({"track": false})).await;
    slow.sync().await;
    let big = "x".repeat(bytes);
    for _ in 0..n {
        let r = sender
            .push(&js, "room:slow", "flood", json!({"b": big}))
            .await;
        sender.recv_until(|v| v[1] == json!(r)).await;
    }
    let mut got = 0;
    while got < n {
        match tokio::time::timeout(DEADLINE, slow.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                if t.as_str().contains("\"flood\"") {
                    got += 1;
                }
            }
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) | Ok(None) => break,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    got
}

/// The first long-poll session of an address opens (410 with a token); the next is refused
/// for now (403).
async fn one_session_then_403(addr: &str) {
    let open = || async {
        let (_, body) = http(addr, "GET", "/socket/longpoll?vsn=2.0.0").await;
        serde_json::from_str::<Value>(&body).expect("JSON")
    };
    assert_eq!(open().await["status"], 410);
    assert_eq!(open().await, json!({"status": 403}));
}

/// The first presence API read of an address is answered; the next gets 429.
async fn one_api_read_then_429(addr: &str) {
    assert_eq!(http(addr, "GET", "/api/presence/room:a").await.0, 200);
    assert_eq!(http(addr, "GET", "/api/presence/room:a/count").await.0, 429);
}
