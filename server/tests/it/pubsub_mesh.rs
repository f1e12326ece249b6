//! The mesh adapter against real sockets on 127.0.0.1: gossip, delivery, auth, failure and
//! recovery, the partition switch, and hostile input.

use std::sync::Arc;
use std::time::Duration;

use crate::support::mesh as raw;
use crate::support::ports::HeldPort;
use crate::support::pubsub::{
    assert_a_directed_message_reaches_only_its_target,
    assert_broadcasts_reach_every_other_node_once, msg, print_one_way_latency, recv, wait_until,
    DEADLINE,
};
use bytes::Bytes;
use rollcall_server::pubsub::{
    connect, ClusterConfig, Error, Mesh, MeshConfig, Partitioned, PubSub, Signed,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::support::broker::SECRET;

/// Production settings with short timers so failures are noticed quickly in tests.
fn config(listen: &str, peers: &[String], secret: &str) -> MeshConfig {
    let mut c = MeshConfig::new(listen, peers.to_vec(), secret);
    c.ping_interval = Duration::from_millis(200);
    c.ping_timeout = Duration::from_secs(2);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(300);
    c.resolve_interval = Duration::from_millis(200);
    c
}

async fn node(name: &str, peers: &[String]) -> Mesh {
    Mesh::start(name, config("127.0.0.1:0", peers, SECRET))
        .await
        .expect("mesh starts")
}

fn addr(m: &Mesh) -> String {
    m.local_addr().to_string()
}

fn up_peers(m: &dyn PubSub) -> Vec<String> {
    m.peers()
        .into_iter()
        .filter(|p| p.up)
        .map(|p| p.name)
        .collect()
}

async fn wait_connected(nodes: &[&dyn PubSub]) {
    for n in nodes {
        let want: Vec<String> = nodes
            .iter()
            .filter(|o| o.node() != n.node())
            .map(|o| o.node().to_owned())
            .collect();
        wait_until(&format!("{} sees {want:?} up", n.node()), || {
            let up = up_peers(*n);
            want.iter().all(|w| up.contains(w))
        })
        .await;
    }
}

#[tokio::test]
async fn a_node_that_knows_one_seed_learns_the_rest_by_gossip() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    let c = node("c", &[addr(&a)]).await;
    wait_connected(&[&a, &b, &c]).await;
    // C was never told about B, yet holds a direct connection to it.
    assert!(up_peers(&c).contains(&"b".to_string()));
    assert_eq!(up_peers(&c).len(), 2);
}

#[tokio::test]
async fn broadcast_reaches_every_other_node_exactly_once_and_never_the_sender() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    let c = node("c", &[addr(&a)]).await;
    wait_connected(&[&a, &b, &c]).await;
    assert_broadcasts_reach_every_other_node_once(&a, &b, &c).await;
}

#[tokio::test]
async fn subscribers_get_only_their_channel() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    wait_connected(&[&a, &b]).await;
    let mut tracker = b.subscribe("tracker");
    let mut relay = b.subscribe("relay");
    a.broadcast("relay", msg("r"));
    a.broadcast("tracker", msg("t"));
    assert_eq!(&recv(&mut tracker).await.payload[..], b"t");
    let r = recv(&mut relay).await;
    assert_eq!((r.channel.as_str(), &r.payload[..]), ("relay", &b"r"[..]));
}

#[tokio::test]
async fn a_directed_message_reaches_only_its_target() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    let c = node("c", &[addr(&a)]).await;
    wait_connected(&[&a, &b, &c]).await;
    assert_a_directed_message_reaches_only_its_target(&a, &b, &c).await;
}

#[tokio::test]
async fn nodes_that_dial_each_other_keep_a_single_connection() {
    // Both know each other, so both dial at once; the tie-break must leave one connection.
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    let a2 = node("a2", &[addr(&b)]).await;
    let b2 = node("b2", &[addr(&a2), addr(&a)]).await;
    wait_connected(&[&a, &b, &a2, &b2]).await;
    let mut rx = b2.subscribe("t");
    a.broadcast("t", msg("1"));
    a.broadcast("t", msg("2"));
    assert_eq!(&recv(&mut rx).await.payload[..], b"1");
    assert_eq!(&recv(&mut rx).await.payload[..], b"2");
    for n in [&a, &b, &a2, &b2] {
        assert_eq!(
            n.peers().len(),
            3,
            "{} knows each other node once",
            n.node()
        );
    }
}

#[tokio::test]
async fn a_node_with_the_wrong_secret_is_refused() {
    let a = node("a", &[]).await;
    let intruder = Mesh::start("x", config("127.0.0.1:0", &[addr(&a)], "not-the-secret"))
        .await
        .expect("mesh starts");
    // A correctly configured node joins through the same seed meanwhile.
    let b = node("b", &[addr(&a)]).await;
    wait_connected(&[&a, &b]).await;
    // Both sides notice the mismatch: A refuses X, and X is told why.
    wait_until("a refuses the intruder", || a.stats().refused >= 1).await;
    wait_until("the intruder hears the refusal", || {
        intruder.stats().refused >= 1
    })
    .await;
    assert!(!up_peers(&a).contains(&"x".to_string()));
    assert!(up_peers(&intruder).is_empty());
}

/// A raw client that sends a made-up proof gets an explicit refusal, and learns nothing about
/// the node before or after: not its name, address or incarnation, nor a proof of its own.
#[tokio::test]
async fn a_wrong_proof_gets_an_authentication_refusal_and_nothing_else() {
    let a = node("a", &[]).await;
    let mut s = TcpStream::connect(a.local_addr()).await.expect("connect");
    raw::write_frame(&mut s, &raw::hello(&[42u8; 32])).await;
    let their_hello = raw::read_frame(&mut s).await.expect("hello from a");
    assert_eq!(
        their_hello.len(),
        34,
        "kind, version, nonce: {their_hello:?}"
    );
    assert_eq!(&their_hello[..2], &[raw::HELLO, raw::VERSION]);
    raw::write_frame(
        &mut s,
        &raw::auth("wrong", b'D', &[42u8; 32], &their_hello[2..]),
    )
    .await;
    let reject = raw::read_frame(&mut s).await.expect("the refusal");
    assert_eq!(
        reject.first(),
        Some(&raw::REJECT),
        "a reject frame: {reject:?}"
    );
    let reason = String::from_utf8_lossy(&reject[3..]).to_string();
    assert_eq!(reason, "authentication failed");
    assert!(
        raw::read_frame(&mut s).await.is_none(),
        "then the connection closes"
    );
    assert!(up_peers(&a).is_empty());
}

/// With the secret, the same raw client gets the node's proof and then its identity.
#[tokio::test]
async fn the_right_proof_gets_the_nodes_proof_and_identity() {
    let a = node("a", &[]).await;
    let mut s = TcpStream::connect(a.local_addr()).await.expect("connect");
    assert_eq!(raw::handshake(&mut s, "raw", SECRET, b'D').await, "a");
}

#[tokio::test]
async fn a_killed_peer_is_reported_down_and_reconnects_when_it_comes_back() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    wait_connected(&[&a, &b]).await;
    let b_addr = addr(&b);
    b.shutdown().await;
    drop(b);
    wait_until("a reports b down", || {
        a.peers().iter().any(|p| p.name == "b" && !p.up)
    })
    .await;
    assert!(a.peers().iter().any(|p| p.name == "b" && p.addr == b_addr));

    // B comes back on the same address knowing nobody: A must redial it.
    let b = Mesh::start("b", config(&b_addr, &[], SECRET))
        .await
        .expect("b restarts on its old port");
    wait_connected(&[&a, &b]).await;
    let mut at_b = b.subscribe("t");
    a.broadcast("t", msg("welcome back"));
    assert_eq!(&recv(&mut at_b).await.payload[..], b"welcome back");
}

#[tokio::test]
async fn a_partition_drops_traffic_both_ways_and_healing_restores_it() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    wait_connected(&[&a, &b]).await;
    let a = Partitioned::new(Arc::new(a));
    let b = Partitioned::new(Arc::new(b));
    let mut at_a = a.subscribe("t");
    let mut at_b = b.subscribe("t");

    a.set_partitioned("b", true);
    assert!(
        !up_peers(&a).contains(&"b".to_string()),
        "a lists b as down"
    );
    let dropped_before = a.stats().dropped_outbound;
    a.send_to("b", "t", msg("lost"));
    assert_eq!(a.stats().dropped_outbound, dropped_before + 1);
    a.broadcast("t", msg("lost too"));
    b.broadcast("t", msg("lost as well"));
    wait_until("a drops what b sends", || a.stats().dropped_inbound >= 1).await;

    a.set_partitioned("b", false);
    wait_connected(&[&a, &b]).await;
    a.broadcast("t", msg("healed"));
    b.broadcast("t", msg("healed too"));
    // The first message each side gets is the one sent after healing.
    assert_eq!(&recv(&mut at_b).await.payload[..], b"healed");
    assert_eq!(&recv(&mut at_a).await.payload[..], b"healed too");
}

#[tokio::test]
async fn garbage_on_the_listen_port_is_cut_off_without_disturbing_the_cluster() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    wait_connected(&[&a, &b]).await;
    let mut at_b = b.subscribe("t");

    // Plain garbage, an oversized length prefix, and an HTTP request.
    let inputs: [&[u8]; 3] = [
        &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3],
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for input in inputs {
        let mut s = TcpStream::connect(a.local_addr()).await.expect("connect");
        s.write_all(input).await.expect("write");
        // A closes on us (after its own hello, which we skip).
        let closed = timeout(DEADLINE, async {
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a closes a connection that sent {input:?}");
    }
    wait_until("a counted three refusals", || a.stats().refused >= 3).await;
    // A connection that says nothing at all is also cut, by the handshake deadline; the cluster
    // keeps working meanwhile.
    let _silent = TcpStream::connect(a.local_addr()).await.expect("connect");
    a.broadcast("t", msg("still fine"));
    assert_eq!(&recv(&mut at_b).await.payload[..], b"still fine");
    assert_eq!(up_peers(&a), vec!["b".to_string()]);
}

#[tokio::test]
async fn an_address_that_is_ourselves_is_skipped() {
    // A headless service lists every pod, this one included.
    let held = HeldPort::new();
    let own = held.addr.to_string();
    let b = node("b", &[]).await;
    let a = Mesh::start("a", config(&own, &[own.clone(), addr(&b)], SECRET))
        .await
        .expect("a starts");
    wait_connected(&[&a, &b]).await;
    let mut at_a = a.subscribe("t");
    b.broadcast("t", msg("hi"));
    assert_eq!(&recv(&mut at_a).await.payload[..], b"hi");
    assert!(a.peers().iter().all(|p| p.name != "a" && p.addr != own));
}

#[tokio::test]
async fn bad_configuration_is_a_clear_error() {
    let bad_addr = connect(
        "a",
        ClusterConfig::Mesh(MeshConfig::new("127.0.0.1", vec![], SECRET)),
    )
    .await;
    assert!(matches!(bad_addr, Err(Error::BadAddress { .. })));
    let no_secret = connect(
        "a",
        ClusterConfig::Mesh(MeshConfig::new("127.0.0.1:0", vec![], "")),
    )
    .await;
    assert!(matches!(no_secret, Err(Error::MissingSecret)));
    let bad_name = connect("a b", ClusterConfig::None).await;
    let message = bad_name.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("bad node name"), "{message}");
    let taken = node("a", &[]).await;
    let clash = connect(
        "b",
        ClusterConfig::Mesh(MeshConfig::new(addr(&taken), vec![], SECRET)),
    )
    .await;
    assert!(matches!(clash, Err(Error::Bind { .. })));
}

#[tokio::test]
async fn the_local_adapter_sends_nowhere() {
    let local = connect("solo", ClusterConfig::None).await.expect("local");
    let mut rx = local.subscribe("t");
    local.broadcast("t", msg("x"));
    local.send_to("other", "t", msg("x"));
    assert!(local.peers().is_empty());
    assert!(rx.try_recv().is_err());
    local.shutdown().await;
}

/// Completes the handshake by hand, as node `name` holding `secret`; returns the stream.
async fn raw_authenticated_peer(target: &Mesh, name: &str, secret: &str) -> TcpStream {
    let mut s = TcpStream::connect(target.local_addr())
        .await
        .expect("connect");
    raw::handshake(&mut s, name, secret, b'D').await;
    s
}

#[tokio::test]
async fn a_restarted_peer_replaces_its_hung_old_connection_at_once() {
    // "b" before the restart: a fake node that A dials (A's name is smaller, so that
    // connection wins the tie-break), which completes the handshake and then hangs.
    let old_b = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let old_b_addr = old_b.local_addr().expect("addr").to_string();
    let mut c = config("127.0.0.1:0", &[old_b_addr], SECRET);
    // Far beyond the test deadline: only the restart rule can save us here.
    c.ping_timeout = Duration::from_secs(600);
    let a = Mesh::start("a", c).await.expect("a starts");
    let (mut hung, _) = timeout(DEADLINE, old_b.accept())
        .await
        .expect("a dials")
        .expect("accept");
    assert_eq!(raw::handshake(&mut hung, "b", SECRET, b'A').await, "a");
    wait_until("a sees the old b", || up_peers(&a).contains(&"b".into())).await;

    // The new "b" (another incarnation) dials A: its connection loses the tie-break by
    // direction, but A must see that the peer restarted and take it.
    let b = node("b", &[addr(&a)]).await;
    let mut at_b = b.subscribe("t");
    wait_until("the new b is up", || up_peers(&b).contains(&"a".into())).await;
    a.broadcast("t", msg("to the new b"));
    assert_eq!(&recv(&mut at_b).await.payload[..], b"to the new b");
}

#[tokio::test]
async fn an_authenticated_peer_sending_a_bad_frame_is_cut_off_alone() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    wait_connected(&[&a, &b]).await;
    let mut at_a = a.subscribe("t");
    let mut at_b = b.subscribe("t");

    let mut rogue = raw_authenticated_peer(&a, "raw", SECRET).await;
    wait_until("a sees the raw peer", || {
        up_peers(&a).contains(&"raw".into())
    })
    .await;
    // A well-formed data frame from it is delivered like any peer's...
    raw::write_frame(&mut rogue, b"\x04\x01thello").await;
    let got = recv(&mut at_a).await;
    assert_eq!(
        (got.from.as_str(), &got.payload[..]),
        ("raw", &b"hello"[..])
    );
    // ...an unknown frame kind gets it disconnected...
    raw::write_frame(&mut rogue, b"\x63junk").await;
    wait_until("a drops the raw peer", || {
        !up_peers(&a).contains(&"raw".into())
    })
    .await;
    while raw::read_frame(&mut rogue).await.is_some() {}
    // ...and so does an oversized length prefix, never allocating it.
    let mut rogue = raw_authenticated_peer(&a, "raw", SECRET).await;
    rogue
        .write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write");
    while raw::read_frame(&mut rogue).await.is_some() {}
    wait_until("a drops the raw peer again", || {
        !up_peers(&a).contains(&"raw".into())
    })
    .await;
    // B never noticed.
    a.broadcast("t", msg("unaffected"));
    assert_eq!(&recv(&mut at_b).await.payload[..], b"unaffected");
    assert!(up_peers(&a).contains(&"b".into()));
}

#[tokio::test]
async fn a_silent_peer_is_declared_dead_by_the_ping_timeout() {
    let mut c = config("127.0.0.1:0", &[], SECRET);
    c.ping_timeout = Duration::from_millis(500);
    let a = Mesh::start("a", c).await.expect("a starts");
    // Authenticates, then neither reads nor writes: a hung process, not a closed socket.
    let _hung = raw_authenticated_peer(&a, "hung", SECRET).await;
    wait_until("a sees the hung peer", || {
        up_peers(&a).contains(&"hung".into())
    })
    .await;
    wait_until("a declares it dead", || {
        !up_peers(&a).contains(&"hung".into())
    })
    .await;
}

/// Measures one-way delivery latency (send → subscriber wakes) on an idle two-node mesh.
/// Run: `cargo test --release -p rollcall-server --test it pubsub_mesh::measure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a test"]
async fn measure_mesh_latency() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    wait_connected(&[&a, &b]).await;
    let mut at_b = b.subscribe("t");
    print_one_way_latency("mesh", &a, &mut at_b).await;
}

#[tokio::test]
async fn a_message_over_the_frame_limit_is_dropped_at_the_sender() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    wait_connected(&[&a, &b]).await;
    let mut at_b = b.subscribe("t");
    let dropped = a.stats().dropped_outbound;
    a.broadcast(
        "t",
        Bytes::from(vec![0u8; rollcall_server::pubsub::mesh::MAX_FRAME]),
    );
    assert_eq!(a.stats().dropped_outbound, dropped + 1);
    // The link survives: B would have cut A off had the frame gone out.
    a.broadcast("t", msg("next"));
    assert_eq!(&recv(&mut at_b).await.payload[..], b"next");
    assert!(up_peers(&b).contains(&"a".into()));
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    wait_connected(&[&a, &b]).await;
    let mut at_b = b.subscribe("t");
    for i in 0..500u32 {
        a.broadcast("t", Bytes::from(i.to_be_bytes().to_vec()));
    }
    a.shutdown().await;
    drop(a);
    for i in 0..500u32 {
        assert_eq!(&recv(&mut at_b).await.payload[..], &i.to_be_bytes());
    }
    wait_until("b sees a down", || !up_peers(&b).contains(&"a".into())).await;
}

/// How many peers `n` sees up.
fn up(n: &std::sync::Arc<dyn PubSub>) -> usize {
    n.peers().iter().filter(|p| p.up).count()
}

/// Two mesh nodes made by `connect` (so behind the trait, chunking included), connected.
async fn connected_pair() -> (std::sync::Arc<dyn PubSub>, std::sync::Arc<dyn PubSub>) {
    let a = connect("a", ClusterConfig::Mesh(config("127.0.0.1:0", &[], SECRET)))
        .await
        .expect("a");
    let a_addr = a.cluster_addr().expect("the mesh listens").to_string();
    let b = connect(
        "b",
        ClusterConfig::Mesh(config("127.0.0.1:0", &[a_addr], SECRET)),
    )
    .await
    .expect("b");
    wait_until("a and b connect", || up(&a) == 1 && up(&b) == 1).await;
    (a, b)
}

#[tokio::test]
async fn connect_gives_a_working_mesh_behind_the_trait() {
    let (a, b) = connected_pair().await;
    let mut at_b = b.subscribe("t");
    a.broadcast("t", msg("via dyn"));
    assert_eq!(&recv(&mut at_b).await.payload[..], b"via dyn");
}

#[tokio::test]
async fn connect_carries_a_message_larger_than_a_mesh_frame() {
    // Built before the nodes start: a debug build takes a while over 16 MiB, and this blocks
    // the runtime the nodes' connections run on (their ping timeout is 2 s).
    let big: Vec<u8> = (0..(rollcall_server::pubsub::mesh::MAX_FRAME as u32 + 4096))
        .map(|i| (i % 251) as u8)
        .collect();
    let (a, b) = connected_pair().await;
    let mut at_b = b.subscribe("t");
    a.broadcast("t", Bytes::from(big.clone()));
    a.broadcast("t", msg("after"));
    assert!(
        recv(&mut at_b).await.payload[..] == big[..],
        "arrives intact"
    );
    assert_eq!(&recv(&mut at_b).await.payload[..], b"after");
}

#[tokio::test]
async fn a_gossiped_peer_gone_for_good_is_forgotten() {
    let mut c = config("127.0.0.1:0", &[], SECRET);
    c.forget_after = Duration::from_millis(300);
    let a = Mesh::start("a", c).await.expect("a starts");
    let b = node("b", &[addr(&a)]).await;
    wait_connected(&[&a, &b]).await;
    drop(b);
    wait_until("a reports b down", || {
        a.peers().iter().any(|p| p.name == "b" && !p.up)
    })
    .await;
    // A pod that is gone does not stay on /healthz (or in the dial list) forever.
    wait_until("a forgets b", || a.peers().is_empty()).await;
}

#[tokio::test]
async fn a_seed_that_starts_later_is_connected_when_it_comes_up() {
    let held = HeldPort::new();
    let seed = held.addr.to_string();
    let a = node("a", std::slice::from_ref(&seed)).await;
    // Nobody listens there yet: A keeps retrying with backoff instead of giving up.
    wait_until("a lists the unreachable seed", || {
        a.peers().iter().any(|p| p.addr == seed && !p.up)
    })
    .await;
    let b = Mesh::start("b", config(&seed, &[], SECRET))
        .await
        .expect("b starts on the seed address");
    wait_connected(&[&a, &b]).await;
    assert!(a.peers().iter().all(|p| p.name == "b"), "{:?}", a.peers());
}

#[tokio::test]
async fn the_rest_of_the_mesh_survives_the_death_of_the_seed() {
    let a = node("a", &[]).await;
    let b = node("b", &[addr(&a)]).await;
    let c = node("c", &[addr(&a)]).await;
    wait_connected(&[&a, &b, &c]).await;
    a.shutdown().await;
    drop(a);
    wait_until("b sees a down", || !up_peers(&b).contains(&"a".into())).await;
    // B and C hold a direct connection learnt by gossip, not one through A.
    assert!(up_peers(&b).contains(&"c".into()));
    let mut at_c = c.subscribe("t");
    b.broadcast("t", msg("still here"));
    assert_eq!(&recv(&mut at_c).await.payload[..], b"still here");
}

#[tokio::test]
async fn a_malformed_part_counts_as_dropped_inbound_and_an_unsigned_message_as_rejected() {
    // `a` signs (so `b`, which goes through `connect`, takes its messages) but does not chunk:
    // to `b`, its payloads are malformed cluster messages.
    let raw_a = Arc::new(node("a", &[]).await);
    let a = Signed::over_authenticated_peers(raw_a.clone(), SECRET.as_bytes(), "");
    let b = connect(
        "b",
        ClusterConfig::Mesh(config("127.0.0.1:0", &[addr(&raw_a)], SECRET)),
    )
    .await
    .expect("b");
    let mut at_b = b.subscribe("t");
    wait_until("a and b prove themselves to each other", || {
        up_peers(&a) == ["b"] && up_peers(b.as_ref()) == ["a"]
    })
    .await;
    a.broadcast("t", msg("\u{7}not a chunk"));
    wait_until("b drops the malformed part", || {
        b.stats().dropped_inbound >= 1
    })
    .await;
    // Straight through the mesh, unsigned: refused before the reassembler sees it.
    raw_a.broadcast("t", msg("\u{0}unsigned"));
    wait_until("b refuses the unsigned message", || {
        b.stats().rejected.unsigned >= 1
    })
    .await;
    assert_eq!(b.stats().refused, 0, "no handshake was refused");
    assert!(at_b.try_recv().is_err(), "nothing reaches the subscriber");
}
