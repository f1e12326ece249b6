//! The NATS and Redis adapters against real brokers: each test starts its own `nats-server` or
//! `redis-server` on a free loopback port and kills it at the end. Every behaviour is checked on
//! both brokers with the same test body.

use std::time::Duration;

use crate::support::broker::{Broker, BrokerKind as Kind};
use crate::support::ports::HeldPort;
use crate::support::pubsub::{
    assert_a_directed_message_reaches_only_its_target,
    assert_broadcasts_reach_every_other_node_once, meet, msg, print_one_way_latency, recv,
    wait_until, DEADLINE,
};
use bytes::Bytes;
use rollcall_server::pubsub::{connect, Error, Partitioned, PubSub};
use tokio::time::timeout;

/// A node on the broker at `url`, behind the partition switch.
async fn node(kind: Kind, name: &str, url: &str) -> Partitioned {
    // One cluster name per broker URL, so tests can never hear each other even if two of them
    // ended up on one broker.
    let cluster = format!("t{}", url.rsplit(':').next().unwrap_or("0"));
    let pubsub = connect(name, kind.config(url, &cluster))
        .await
        .unwrap_or_else(|e| panic!("{name} connects: {e}"));
    Partitioned::new(pubsub)
}

async fn broadcasts_reach_every_other_node_once_and_are_not_echoed(kind: Kind) {
    let broker = Broker::start(kind).await;
    let a = node(kind, "a", &broker.url()).await;
    let b = node(kind, "b", &broker.url()).await;
    let c = node(kind, "c", &broker.url()).await;
    meet(&[&a, &b, &c]).await;
    assert_broadcasts_reach_every_other_node_once(&a, &b, &c).await;
}

async fn a_directed_message_reaches_only_its_target(kind: Kind) {
    let broker = Broker::start(kind).await;
    let a = node(kind, "a", &broker.url()).await;
    let b = node(kind, "b", &broker.url()).await;
    let c = node(kind, "c", &broker.url()).await;
    meet(&[&a, &b, &c]).await;
    assert_a_directed_message_reaches_only_its_target(&a, &b, &c).await;
    // A node only hears from peers it has received from.
    assert!(b.peers().iter().any(|p| p.name == "a" && p.up));
    assert!(c.peers().iter().all(|p| p.name != "c"));
}

async fn clusters_sharing_a_broker_do_not_hear_each_other(kind: Kind) {
    let broker = Broker::start(kind).await;
    let a = connect("a", kind.config(&broker.url(), "one"))
        .await
        .expect("a");
    let stranger = connect("s", kind.config(&broker.url(), "two"))
        .await
        .expect("s");
    let b = connect("b", kind.config(&broker.url(), "one"))
        .await
        .expect("b");
    meet(&[a.as_ref(), b.as_ref()]).await;
    let mut at_b = b.subscribe("t");
    stranger.broadcast("t", msg("other cluster"));
    stranger.send_to("b", "t", msg("other cluster"));
    a.broadcast("t", msg("ours"));
    let first = recv(&mut at_b).await;
    assert_eq!(
        (first.from.as_str(), &first.payload[..]),
        ("a", &b"ours"[..])
    );
}

async fn shutdown_flushes_what_is_queued(kind: Kind) {
    let broker = Broker::start(kind).await;
    let a = node(kind, "a", &broker.url()).await;
    let b = node(kind, "b", &broker.url()).await;
    meet(&[&a, &b]).await;
    let mut at_b = b.subscribe("t");
    for i in 0..200u32 {
        a.broadcast("t", Bytes::from(i.to_be_bytes().to_vec()));
    }
    a.shutdown().await;
    for i in 0..200u32 {
        let Ok(Some(got)) = timeout(DEADLINE, at_b.recv()).await else {
            // Say where the message went missing: not sent, dropped on the way, or not received.
            panic!(
                "{kind:?}: message {i} of 200 never arrived; a: {:?}; b: {:?}",
                a.stats(),
                b.stats()
            );
        };
        assert_eq!(&got.payload[..], &i.to_be_bytes());
    }
    drop(a);
}

async fn delivery_resumes_after_the_broker_restarts(kind: Kind) {
    let mut broker = Broker::start(kind).await;
    let a = node(kind, "a", &broker.url()).await;
    let b = node(kind, "b", &broker.url()).await;
    meet(&[&a, &b]).await;
    let mut at_b = b.subscribe("t");
    a.broadcast("t", msg("before"));
    assert_eq!(&recv(&mut at_b).await.payload[..], b"before");

    broker.kill();
    let _broker = Broker::start_on(kind, broker.port).await;
    // Probe until a message gets through: both clients must reconnect and resubscribe.
    let resumed = timeout(DEADLINE, async {
        loop {
            a.broadcast("t", msg("after"));
            if let Ok(Some(got)) = timeout(Duration::from_millis(200), at_b.recv()).await {
                if &got.payload[..] == b"after" {
                    break;
                }
            }
        }
    })
    .await;
    assert!(
        resumed.is_ok(),
        "messages flow again after the broker came back"
    );
}

async fn a_partition_cuts_one_node_off_and_healing_restores_it(kind: Kind) {
    let broker = Broker::start(kind).await;
    let a = node(kind, "a", &broker.url()).await;
    let b = node(kind, "b", &broker.url()).await;
    let c = node(kind, "c", &broker.url()).await;
    // A must have heard of B and C (brokers know peers only from their messages).
    meet(&[&a, &b, &c]).await;
    let mut at_a = a.subscribe("t");
    let mut at_b = b.subscribe("t");
    let mut at_c = c.subscribe("t");

    a.set_partitioned("b", true);
    assert!(a.peers().iter().any(|p| p.name == "b" && !p.up));
    a.broadcast("t", msg("cut-a"));
    b.broadcast("t", msg("cut-b"));
    let dropped = a.stats().dropped_outbound;
    a.send_to("b", "t", msg("cut-direct"));
    assert_eq!(a.stats().dropped_outbound, dropped + 1);
    // C, on the other side of nothing, still hears both.
    let mut heard_by_c = vec![recv(&mut at_c).await.payload, recv(&mut at_c).await.payload];
    heard_by_c.sort();
    assert_eq!(heard_by_c, vec![msg("cut-a"), msg("cut-b")]);

    // Heal only once A has seen (and dropped) B's message, or it could slip in after.
    wait_until("a drops what b sends while cut", || {
        a.stats().dropped_inbound >= 1
    })
    .await;
    a.set_partitioned("b", false);
    a.broadcast("t", msg("healed-a"));
    b.broadcast("t", msg("healed-b"));
    // Neither side got anything from the other while cut.
    assert_eq!(recv(&mut at_b).await.payload, msg("healed-a"));
    assert_eq!(recv(&mut at_a).await.payload, msg("healed-b"));
}

async fn an_unreachable_broker_is_a_clear_error(kind: Kind) {
    // A reserved port nothing listens on.
    let nobody = HeldPort::new();
    let url = kind.url(nobody.port());
    let result = connect("a", kind.config(&url, "test")).await;
    match result {
        Err(e @ Error::BrokerUnreachable { .. }) => {
            assert!(e.to_string().contains(&url), "{e}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

/// nats-server refuses messages over 1 MiB (`max_payload`) and Redis cuts off subscribers that
/// fall 8 MiB behind: a large message (a full-state transfer of a big cluster) still arrives
/// whole, in order with what follows it, because `connect` splits it into parts.
async fn a_message_larger_than_the_broker_takes_arrives_whole(kind: Kind) {
    let broker = Broker::start(kind).await;
    let a = node(kind, "a", &broker.url()).await;
    let b = node(kind, "b", &broker.url()).await;
    meet(&[&a, &b]).await;
    let mut at_b = b.subscribe("t");
    let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    a.broadcast("t", Bytes::from(big.clone()));
    a.broadcast("t", msg("small"));
    let first = recv(&mut at_b).await;
    assert_eq!(first.from, "a");
    assert!(
        first.payload[..] == big[..],
        "the large message arrives intact"
    );
    assert_eq!(recv(&mut at_b).await.payload, msg("small"));
    assert_eq!(a.stats().dropped_outbound, 0);
}

macro_rules! on_both_brokers {
    ($($test:ident),* $(,)?) => {
        mod nats {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Kind::Nats).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Kind::Redis).await;
                }
            )*
        }
    };
}

on_both_brokers!(
    broadcasts_reach_every_other_node_once_and_are_not_echoed,
    a_directed_message_reaches_only_its_target,
    clusters_sharing_a_broker_do_not_hear_each_other,
    shutdown_flushes_what_is_queued,
    delivery_resumes_after_the_broker_restarts,
    a_partition_cuts_one_node_off_and_healing_restores_it,
    an_unreachable_broker_is_a_clear_error,
    a_message_larger_than_the_broker_takes_arrives_whole,
);

/// Measures one-way delivery latency (send → subscriber wakes) through each broker.
/// Run: `cargo test --release -p rollcall-server --test it pubsub_brokers::measure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a test"]
async fn measure_broker_latency() {
    for kind in [Kind::Nats, Kind::Redis] {
        let broker = Broker::start(kind).await;
        let a = node(kind, "a", &broker.url()).await;
        let b = node(kind, "b", &broker.url()).await;
        meet(&[&a, &b]).await;
        let mut at_b = b.subscribe("t");
        print_one_way_latency(&format!("{kind:?}"), &a, &mut at_b).await;
    }
}
