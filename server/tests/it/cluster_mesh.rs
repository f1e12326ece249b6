//! A cluster of real `rollcall` processes over the mesh on 127.0.0.1: replication, crash and
//! restart, partition and heal, graceful shutdown. Tracker timing is shortened (broadcast 100 ms,
//! down 1 s, permdown 3 s) so failures show within seconds; tests wait on what users see.

use crate::support::cluster::{self, serial, Node, User, FAST_TIMING};
use crate::support::ports::HeldPort;
use serde_json::json;

const ROOM: &str = "room:lobby";

async fn three_nodes(timing: &[&str]) -> (Node, Node, Node) {
    let a = Node::mesh("a", &[], timing).await;
    let b = Node::mesh("b", &[&a], timing).await;
    // c knows only a; it learns b from a.
    let c = Node::mesh("c", &[&a], timing).await;
    (a, b, c)
}

/// Three nodes with fast timing and one member on each (`ua` on a, ...), seen everywhere.
async fn three_nodes_with_members() -> ((Node, Node, Node), (User, User, User)) {
    let (a, b, c) = three_nodes(&FAST_TIMING).await;
    let ua = User::join(&a, "ua", ROOM, json!({})).await;
    let ub = User::join(&b, "ub", ROOM, json!({})).await;
    let uc = User::join(&c, "uc", ROOM, json!({})).await;
    for u in [&ua, &ub, &uc] {
        u.wait_keys(&["ua", "ub", "uc"]).await;
    }
    ((a, b, c), (ua, ub, uc))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mesh_nodes_share_members_meta_updates_and_relays() {
    let _watchdog = crate::support::watchdog::start();
    let _serial = serial().await;
    let (a, b, c) = three_nodes(&FAST_TIMING).await;
    let mut ua = User::join(&a, "ua", ROOM, json!({"status": "here"})).await;
    let mut ub = User::join(&b, "ub", ROOM, json!({})).await;
    let uc = User::join(&c, "uc", ROOM, json!({})).await;
    for u in [&ua, &ub, &uc] {
        u.wait_keys(&["ua", "ub", "uc"]).await;
    }
    // Each member's meta names the node it is connected to (server-set).
    let view = uc.view();
    for (key, node) in [("ua", "a"), ("ub", "b"), ("uc", "c")] {
        assert_eq!(view.presence[key][0]["node"], json!(node), "{key}");
    }

    // A meta update on a crosses to b and c as a new version that names the old one.
    let old_ref = view.presence["ua"][0]["phx_ref"].clone();
    ua.push("track", json!({"status": "away"}));
    for u in [&ub, &uc] {
        let v = u
            .wait_for("ua away", |v| {
                v.presence
                    .get("ua")
                    .is_some_and(|m| m.len() == 1 && m[0]["status"] == json!("away"))
            })
            .await;
        assert_eq!(v.presence["ua"][0]["phx_ref_prev"], old_ref);
    }

    // A relayed event from b reaches a and c (not b itself).
    ub.push("shout", json!({"body": "hello from b"}));
    for u in [&ua, &uc] {
        u.wait_for("b's shout", |v| {
            v.events
                .iter()
                .any(|(e, p)| e == "shout" && p["body"] == json!("hello from b"))
        })
        .await;
    }

    // /healthz names the node and shows both peers up.
    let health = a.healthz().await;
    assert_eq!(health["node"], json!("a"));
    let mut up: Vec<String> = health["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["up"] == json!(true))
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    up.sort();
    assert_eq!(up, ["b", "c"], "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_everywhere_and_its_restart_brings_only_new_members() {
    let _watchdog = crate::support::watchdog::start();
    let _serial = serial().await;
    let ((a, _b, c), (ua, ub, _uc)) = three_nodes_with_members().await;

    c.kill9().await;
    for u in [&ua, &ub] {
        u.wait_keys(&["ua", "ub"]).await;
    }

    // The same node name comes back as a new incarnation with a new member.
    let c = Node::mesh("c", &[&a], &FAST_TIMING).await;
    let uc2 = User::join(&c, "uc2", ROOM, json!({})).await;
    for u in [&ua, &ub, &uc2] {
        u.wait_keys(&["ua", "ub", "uc2"]).await;
    }
    // An absence can only be observed over time: watch past the old incarnation's permdown
    // period (3 s); uc must never have come back anywhere.
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    for u in [&ua, &ub, &uc2] {
        let v = u.view();
        assert_eq!(
            v.keys().into_iter().collect::<Vec<_>>(),
            ["ua", "ub", "uc2"]
        );
        assert!(!v.rejoins.contains_key("uc"), "{}: {v:#?}", u.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_and_the_rest_see_each_other_leave_then_converge_after_healing() {
    let _watchdog = crate::support::watchdog::start();
    let _serial = serial().await;
    let ((a, _b, c), (ua, ub, uc)) = three_nodes_with_members().await;

    c.partition("a", true).await;
    c.partition("b", true).await;
    for u in [&ua, &ub] {
        u.wait_keys(&["ua", "ub"]).await;
    }
    uc.wait_keys(&["uc"]).await;
    // While split, each side still changes: a member joins on each side.
    let ua2 = User::join(&a, "ua2", ROOM, json!({})).await;
    let uc2 = User::join(&c, "uc2", ROOM, json!({})).await;
    uc.wait_keys(&["uc", "uc2"]).await;

    c.partition("a", false).await;
    c.partition("b", false).await;
    let all = ["ua", "ua2", "ub", "uc", "uc2"];
    for u in [&ua, &ua2, &ub, &uc, &uc2] {
        u.wait_keys(&all).await;
    }
    // Every node lists exactly the same presences (same keys and the same refs).
    let refs = ua.view().refs();
    for u in [&ua2, &ub, &uc, &uc2] {
        u.wait_for("the same presences as ua", |v| v.refs() == refs)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_makes_a_nodes_members_leave_elsewhere_at_once_and_closes_with_1001() {
    let _watchdog = crate::support::watchdog::start();
    let _serial = serial().await;
    // A long down period: only the graceful permdown can explain a prompt leave.
    let timing = [
        "--broadcast-period-ms",
        "100",
        "--down-period-ms",
        "60000",
        "--permdown-period-ms",
        "120000",
    ];
    let a = Node::mesh("a", &[], &timing).await;
    let mut b = Node::mesh("b", &[&a], &timing).await;
    let ua = User::join(&a, "ua", ROOM, json!({})).await;
    let ub = User::join(&b, "ub", ROOM, json!({})).await;
    ua.wait_keys(&["ua", "ub"]).await;

    let sent = std::time::Instant::now();
    b.sigterm();
    ua.wait_keys(&["ua"]).await;
    let took = sent.elapsed();
    ub.wait_for("close 1001", |v| v.closed == Some(1001)).await;
    assert!(b.wait_exit().await, "b exits cleanly");
    // Printed, not asserted: timing belongs to benchmarks.
    eprintln!("SIGTERM → leave seen on a after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_later_sees_existing_members_with_phoenix_timing() {
    let _watchdog = crate::support::watchdog::start();
    let _serial = serial().await;
    // Phoenix's timing: a quiet node heartbeats only every 16.5 s, beyond the deadline.
    let a = Node::mesh("a", &[], &[]).await;
    let ua = User::join(&a, "ua", ROOM, json!({})).await;
    let b = Node::mesh("b", &[&a], &[]).await;
    // Nobody changes anything on b, so only heartbeats can make a and b meet.
    let watcher = User::observe(&b, "watcher", ROOM).await;
    watcher.wait_keys(&["ua"]).await;
    ua.wait_keys(&["ua"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_change_crosses_at_once_and_a_burst_travels_as_one_delta() {
    let _watchdog = crate::support::watchdog::start();
    let _serial = serial().await;
    // Heartbeats a minute apart: anything seen sooner was sent on the change itself.
    let timing = [
        "--broadcast-period-ms",
        "60000",
        "--down-period-ms",
        "120000",
        "--permdown-period-ms",
        "240000",
        "--coalesce-ms",
        "2000",
        // One tracker shard: every tracker message counted is this room's shard's.
        "--tracker-shards",
        "1",
    ];
    let a = Node::mesh("a", &[], &timing).await;
    let b = Node::mesh("b", &[&a], &timing).await;
    // A delta sent before the mesh connects would wait for a heartbeat a minute away.
    b.wait_peers_up(&["a"]).await;
    let watcher = User::observe(&a, "watcher", ROOM).await;
    let first = User::join(&b, "first", ROOM, json!({})).await;
    watcher.wait_keys(&["first"]).await;

    // Twenty joins on b within 0.2 s, inside one coalescing window.
    let sent = |h: serde_json::Value| h["transport"]["sent"].as_u64().unwrap_or(0);
    let before = sent(b.healthz().await);
    let mut sockets = Vec::new();
    for i in 0..20 {
        sockets.push(User::open(&b, &format!("u{i:02}"), ROOM).await);
    }
    for s in &sockets {
        s.send_join(json!({"meta": {}}));
        // Spaced out so that, without coalescing, each join would travel on its own.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut keys: Vec<String> = (0..20).map(|i| format!("u{i:02}")).collect();
    keys.push("first".into());
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    watcher.wait_keys(&keys).await;
    let messages = sent(b.healthz().await) - before;
    // The first change goes at once; the rest wait for the window's end and travel together.
    assert!(
        messages <= 3,
        "{messages} tracker messages for a burst of 20 joins"
    );
    drop(first);
}

/// Runs `rollcall serve` with `args` expecting it to refuse to start; returns its stderr.
fn refused_start(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["serve", "--port", "0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("rollcall runs");
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_cluster_without_a_secret_bad_timing_or_a_bad_node_name_stop_the_start_with_the_reason() {
    let _watchdog = crate::support::watchdog::start();
    let err = refused_start(&["--cluster", "mesh", "--cluster-listen", "127.0.0.1:0"]);
    assert!(err.contains("--cluster-secret"), "{err}");
    // Brokers too: every message is signed with it (refused before any broker is dialed).
    for (cluster, flag, url) in [
        ("nats", "--nats-url", "nats://127.0.0.1:1"),
        ("redis", "--redis-url", "redis://127.0.0.1:1"),
    ] {
        let err = refused_start(&["--cluster", cluster, flag, url]);
        assert!(err.contains("--cluster-secret"), "{cluster}: {err}");
    }
    let err = refused_start(&["--broadcast-period-ms", "1000", "--down-period-ms", "1500"]);
    assert!(err.contains("down_period must be at least twice"), "{err}");
    let err = refused_start(&["--node", "no spaces please"]);
    assert!(err.contains("bad node name"), "{err}");
}

/// A port free on both 127.0.0.2 and 127.0.0.3, held on both, for two nodes behind one name.
fn one_port_on_two_addresses() -> (HeldPort, HeldPort) {
    for _ in 0..50 {
        let first = HeldPort::on("127.0.0.2");
        let other = ([127, 0, 0, 3], first.port()).into();
        if let Ok(second) = HeldPort::at(other) {
            return (first, second);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_given_as_one_name_with_several_addresses_are_each_dialed() {
    let _watchdog = crate::support::watchdog::start();
    if let Err(why) = cluster::mount_namespaces() {
        assert!(
            !cluster::required(),
            "the --peers name test needs a mount namespace (run as root): {why}"
        );
        eprintln!("skipped: the --peers name test needs a mount namespace (run as root): {why}");
        return;
    }
    let _turn = serial().await;
    // Two nodes on one port at two addresses, as a headless service's pods would be.
    let (b_port, c_port) = one_port_on_two_addresses();
    let port = b_port.port();
    let mut nodes = Vec::new();
    for (name, listen) in [("b", b_port.addr), ("c", c_port.addr)] {
        let args: Vec<String> = [
            "--cluster",
            "mesh",
            "--cluster-listen",
            &listen.to_string(),
            "--cluster-secret",
            crate::support::broker::SECRET,
        ]
        .iter()
        .chain(&FAST_TIMING)
        .map(|s| s.to_string())
        .collect();
        nodes.push(Node::start(name, &args).await);
    }
    // Node a knows only the name, which its own /etc/hosts maps to both addresses.
    let hosts = std::env::temp_dir().join(format!("rollcall-test-hosts-{}", std::process::id()));
    let name = "peers.rollcall.test";
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n127.0.0.2 {name}\n127.0.0.3 {name}\n"),
    )
    .expect("the hosts file is written");
    let mut command = Node::command_with_hosts(&hosts);
    command
        .args(["--port", "0", "--node", "a", "--fault-injection"])
        .args(["--cluster", "mesh", "--cluster-listen", "127.0.0.1:0"])
        .args(["--cluster-secret", crate::support::broker::SECRET])
        .args(["--peers", &format!("{name}:{port}")])
        .args(FAST_TIMING)
        .env("RUST_LOG", "info");
    let a = Node::spawn("a", command, true).await;
    // Neither b nor c knows a or the other: a is up with both only if it dialed both addresses
    // the name resolves to.
    a.wait_peers_up(&["b", "c"]).await;
    a.wait_replicas_up(&["b", "c"]).await;
    let _ = std::fs::remove_file(&hosts);
}
