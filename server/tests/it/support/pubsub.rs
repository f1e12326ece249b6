//! Helpers for the adapter tests (`pubsub_mesh`, `pubsub_brokers`): receiving with a deadline,
//! waiting on a condition, and the one-way latency measurement both run.

use std::time::Duration;

use bytes::Bytes;
use rollcall_server::pubsub::{Envelope, PubSub};
use tokio::sync::mpsc::Receiver;
use tokio::time::{sleep, timeout};

/// How long a message or a condition may take before the test fails (a broker may have to
/// reconnect first).
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The next message on `rx`, within the deadline.
pub async fn recv(rx: &mut Receiver<Envelope>) -> Envelope {
    timeout(DEADLINE, rx.recv())
        .await
        .expect("a message before the deadline")
        .expect("subscription open")
}

/// A payload from a string.
pub fn msg(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Polls `cond` until it holds, failing the test with `what` after the deadline.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let waited = timeout(DEADLINE, async {
        while !cond() {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// Makes every node of `nodes` prove itself to every other: a signed transport (any made by
/// `connect`) drops a node's messages until it has, which takes a round trip after the first
/// one arrives. Each node broadcasts on a channel of its own until all list each other up.
pub async fn meet(nodes: &[&dyn PubSub]) {
    let _subscriptions: Vec<_> = nodes.iter().map(|n| n.subscribe("meet")).collect();
    let met = timeout(DEADLINE, async {
        loop {
            for n in nodes {
                n.broadcast("meet", msg("hello"));
            }
            let all_up = nodes.iter().all(|n| {
                let up: Vec<String> = n
                    .peers()
                    .into_iter()
                    .filter(|p| p.up)
                    .map(|p| p.name)
                    .collect();
                nodes
                    .iter()
                    .all(|o| o.node() == n.node() || up.iter().any(|u| u == o.node()))
            });
            if all_up {
                return;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(met.is_ok(), "the nodes did not meet");
}

/// Checks a connected trio: a broadcast from `a` reaches `b` and `c` once each, in order, and
/// never comes back to `a` (a broker echoes it; the adapter must drop the echo).
pub async fn assert_broadcasts_reach_every_other_node_once(
    a: &dyn PubSub,
    b: &dyn PubSub,
    c: &dyn PubSub,
) {
    let mut at_a = a.subscribe("t");
    let mut at_b = b.subscribe("t");
    let mut at_c = c.subscribe("t");
    a.broadcast("t", msg("one"));
    a.broadcast("t", msg("two"));
    for rx in [&mut at_b, &mut at_c] {
        let first = recv(rx).await;
        assert_eq!(
            (first.from.as_str(), &first.payload[..]),
            ("a", &b"one"[..])
        );
        // The very next message is the second broadcast: no duplicate of the first in between.
        assert_eq!(&recv(rx).await.payload[..], b"two");
    }
    // The first thing A hears is B's marker, not its own broadcasts.
    b.broadcast("t", msg("from-b"));
    let first_at_a = recv(&mut at_a).await;
    assert_eq!(
        (first_at_a.from.as_str(), &first_at_a.payload[..]),
        ("b", &b"from-b"[..])
    );
}

/// Checks a connected trio: a message `a` sends to `c` reaches `c`, and not `b` (whose first
/// message is a later broadcast).
pub async fn assert_a_directed_message_reaches_only_its_target(
    a: &dyn PubSub,
    b: &dyn PubSub,
    c: &dyn PubSub,
) {
    let mut at_b = b.subscribe("t");
    let mut at_c = c.subscribe("t");
    a.send_to("c", "t", msg("for-c"));
    let got = recv(&mut at_c).await;
    assert_eq!((got.from.as_str(), &got.payload[..]), ("a", &b"for-c"[..]));
    a.broadcast("t", msg("marker"));
    assert_eq!(&recv(&mut at_b).await.payload[..], b"marker");
}

/// Sends 2000 broadcasts from `from` one at a time and prints the one-way latency (send →
/// the subscriber `to` wakes) as percentiles.
pub async fn print_one_way_latency(label: &str, from: &dyn PubSub, to: &mut Receiver<Envelope>) {
    let mut samples = Vec::new();
    for i in 0..2000u32 {
        let start = std::time::Instant::now();
        from.broadcast("t", Bytes::from(i.to_be_bytes().to_vec()));
        recv(to).await;
        samples.push(start.elapsed());
    }
    samples.sort();
    println!(
        "{label} one-way latency over 2000 messages: p50 {:?}, p99 {:?}, max {:?}",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples[samples.len() - 1]
    );
}
