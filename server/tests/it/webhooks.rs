//! Webhooks from clusters of real `rollcall` processes to a real HTTP receiver in the test:
//! every request signed; each event received once across a 3-node cluster; through a kill -9
//! of the sending node, every event still received, a repeat carrying the same id; a reload
//! within the grace period sends nothing; a receiver that is down never slows joins, and the
//! bounded queue catches up once it is back.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::cluster::{healthz, http, serial, Node, User, DEADLINE, FAST_TIMING};
use crate::support::receiver::{Answer, Receiver, Request};
use rollcall_server::security::auth::unix_now;
use rollcall_server::security::signature::{verify, SIGNATURE_HEADER};
use serde_json::{json, Value};

const SECRET: &str = "webhook-secret";

fn ok() -> Answer {
    Answer::Status(200, "{}".into())
}

fn unavailable() -> Answer {
    Answer::Status(503, "{}".into())
}

/// Starts a mesh node sending webhooks to `receiver`, with `extra` flags.
async fn node(name: &str, peers: &[&Node], receiver: &Receiver, extra: &[&str]) -> Node {
    let mut timing: Vec<&str> = FAST_TIMING.to_vec();
    timing.extend_from_slice(&["--webhook-url", &receiver.url, "--webhook-secret", SECRET]);
    timing.extend_from_slice(extra);
    Node::mesh(name, peers, &timing).await
}

/// The events of `requests` (answered `2xx` only, if `accepted`), in arrival order, after
/// checking every request's signature and shape.
fn events(requests: &[Request], accepted: bool) -> Vec<Value> {
    let mut out = Vec::new();
    for r in requests {
        let signature = r.header(SIGNATURE_HEADER).expect("every request is signed");
        verify(SECRET.as_bytes(), signature, &r.body, unix_now(), 60).expect("a valid signature");
        assert_eq!(r.header("content-type"), Some("application/json"));
        if accepted && !r.answered.is_some_and(|s| (200..300).contains(&s)) {
            continue;
        }
        for e in r.json()["events"].as_array().expect("an events array") {
            for field in ["id", "type", "topic", "key", "meta", "at"] {
                assert!(e.get(field).is_some(), "{field} missing in {e}");
            }
            out.push(e.clone());
        }
    }
    out
}

/// `"type key"` of an event (`"room_occupied -"` for room events).
fn what(e: &Value) -> String {
    format!(
        "{} {}",
        e["type"].as_str().unwrap_or("?"),
        e["key"].as_str().unwrap_or("-")
    )
}

fn has(events: &[Value], topic: &str, description: &str) -> bool {
    events
        .iter()
        .any(|e| e["topic"] == topic && what(e) == description)
}

/// Waits until every one of `wanted` (`"type key"` in `topic`) was received and answered 2xx.
async fn wait_accepted(receiver: &Receiver, topic: &str, wanted: &[&str]) -> Vec<Value> {
    let requests = receiver
        .wait_for(&format!("{wanted:?} in {topic}"), DEADLINE, |r| {
            let got = events(r, true);
            wanted.iter().all(|w| has(&got, topic, w))
        })
        .await;
    events(&requests, true)
}

/// Waits until every node in `nodes` says `sender` sends the webhooks.
async fn wait_sender(nodes: &[&Node], sender: &str) {
    for node in nodes {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let health = healthz(&node.addr).await;
            if health["webhooks"]["sender"] == sender {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: sender is not {sender}: {health}",
                node.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// A sample of `node`'s `/metrics`.
async fn metric(node: &Node, sample: &str) -> f64 {
    let (_, text) = http(&node.addr, "GET", "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {sample} in {text}"))
}

#[tokio::test]
async fn each_event_is_received_once_across_a_three_node_cluster() {
    let _serial = serial().await;
    let receiver = Receiver::start(|_| ok()).await;
    let grace = ["--webhook-grace-ms", "300"];
    let a = node("wh-a", &[], &receiver, &grace).await;
    let b = node("wh-b", &[&a], &receiver, &grace).await;
    let c = node("wh-c", &[&a, &b], &receiver, &grace).await;
    for (n, peers) in [
        (&a, ["wh-b", "wh-c"]),
        (&b, ["wh-a", "wh-c"]),
        (&c, ["wh-a", "wh-b"]),
    ] {
        n.wait_peers_up(&peers).await;
    }
    // The first node started sends; every node agrees.
    wait_sender(&[&a, &b, &c], "wh-a").await;

    let mut u1 = User::join(&b, "u1", "room:w", json!({"n": 1})).await;
    let mut u2 = User::join(&c, "u2", "room:w", json!({"n": 2})).await;
    let mut u3 = User::join(&a, "u3", "room:w", json!({"n": 3})).await;
    u3.wait_keys(&["u1", "u2", "u3"]).await;
    u1.leave();
    u2.wait_keys(&["u2", "u3"]).await;
    u2.leave();
    u3.leave();
    let got = wait_accepted(&receiver, "room:w", &["room_vacated -"]).await;

    let mut seen: Vec<String> = got.iter().map(what).collect();
    seen.sort();
    let mut expected = vec![
        "room_occupied -",
        "member_added u1",
        "member_added u2",
        "member_added u3",
        "member_removed u1",
        "member_removed u2",
        "member_removed u3",
        "room_vacated -",
    ];
    expected.sort();
    assert_eq!(seen, expected, "each event exactly once: {got:#?}");
    let ids: BTreeSet<&str> = got.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), got.len(), "ids are unique");
    // Events come in order: the room first, the room's end last.
    assert_eq!(what(&got[0]), "room_occupied -");
    assert_eq!(what(got.last().unwrap()), "room_vacated -");
    let added = got.iter().find(|e| what(e) == "member_added u2").unwrap();
    assert_eq!(added["meta"]["n"], 2);
    assert_eq!(added["meta"]["node"], "wh-c");
    // Only the sender ever queued an event.
    assert_eq!(
        metric(&a, "rollcall_webhook_events_total{outcome=\"queued\"}").await,
        8.0
    );
    for n in [&b, &c] {
        assert_eq!(
            metric(n, "rollcall_webhook_events_total{outcome=\"queued\"}").await,
            0.0
        );
        assert_eq!(metric(n, "rollcall_webhook_sender").await, 0.0);
    }
    assert_eq!(metric(&a, "rollcall_webhook_sender").await, 1.0);
    drop((u1, u2, u3));
}

#[tokio::test]
async fn through_a_kill_9_of_the_sender_every_event_arrives_and_repeats_keep_their_id() {
    let _serial = serial().await;
    // Down at first: the sender keeps its events queued (and retried) when it is killed.
    let receiver = Receiver::start(|_| unavailable()).await;
    let grace = ["--webhook-grace-ms", "300"];
    let a = node("kw-a", &[], &receiver, &grace).await;
    let b = node("kw-b", &[&a], &receiver, &grace).await;
    let c = node("kw-c", &[&a, &b], &receiver, &grace).await;
    for (n, peers) in [
        (&a, ["kw-b", "kw-c"]),
        (&b, ["kw-a", "kw-c"]),
        (&c, ["kw-a", "kw-b"]),
    ] {
        n.wait_peers_up(&peers).await;
    }
    wait_sender(&[&a, &b, &c], "kw-a").await;
    let _u0 = User::join(&a, "u0", "room:k", json!({})).await;
    let _u1 = User::join(&b, "u1", "room:k", json!({})).await;
    let u2 = User::join(&c, "u2", "room:k", json!({})).await;
    u2.wait_keys(&["u0", "u1", "u2"]).await;
    // The sender retries its first batch (later events wait behind it, in order).
    let attempted = ["room_occupied -", "member_added u0"];
    let attempts = receiver
        .wait_for("the sender's attempts", DEADLINE, |r| {
            let got = events(r, false);
            attempted.iter().all(|w| has(&got, "room:k", w))
        })
        .await;
    let first_ids: BTreeMap<String, String> = events(&attempts, false)
        .iter()
        .map(|e| (what(e), e["id"].as_str().unwrap_or("").to_string()))
        .collect();
    // The others hold the sender's queued events, all four.
    for n in [&b, &c] {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while metric(n, "rollcall_webhook_queue").await < 4.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} holds no copy",
                n.name
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    a.kill9().await;
    receiver.answer(|_| ok());
    // The next earliest node takes over: the queued events again, then u0's removal (its node
    // died with it) after the grace period.
    let got = wait_accepted(
        &receiver,
        "room:k",
        &[
            "room_occupied -",
            "member_added u0",
            "member_added u1",
            "member_added u2",
            "member_removed u0",
        ],
    )
    .await;
    wait_sender(&[&b, &c], "kw-b").await;
    for w in attempted {
        let id = &first_ids[w];
        let delivered: Vec<&Value> = got.iter().filter(|e| what(e) == w).collect();
        assert!(!delivered.is_empty(), "{w} delivered");
        for e in delivered {
            assert_eq!(&e["id"], id, "{w} keeps the id the killed sender gave it");
        }
    }
    // Whatever came more than once came with one id.
    let mut ids_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in events(&receiver.requests(), false) {
        ids_of
            .entry(what(&e))
            .or_default()
            .insert(e["id"].as_str().unwrap_or("").to_string());
    }
    for (w, ids) in ids_of {
        assert_eq!(ids.len(), 1, "{w} under several ids: {ids:?}");
    }
}

#[tokio::test]
async fn a_reload_within_the_grace_period_sends_nothing() {
    let _serial = serial().await;
    let receiver = Receiver::start(|_| ok()).await;
    let n = node("gr-a", &[], &receiver, &["--webhook-grace-ms", "1500"]).await;
    wait_sender(&[&n], "gr-a").await;
    let page = User::join(&n, "u", "room:g", json!({})).await;
    wait_accepted(&receiver, "room:g", &["member_added u"]).await;
    // A reload: the page's socket closes and a new one joins at once.
    page.close();
    let watcher = User::observe(&n, "watcher", "room:g").await;
    watcher.wait_keys(&[]).await;
    let _reloaded = User::join(&n, "u", "room:g", json!({})).await;
    // A marker that leaves after the reload: its removal is due after u's would have been.
    let mut marker = User::join(&n, "m", "room:g", json!({})).await;
    marker.leave();
    let got = wait_accepted(&receiver, "room:g", &["member_removed m"]).await;
    let seen: Vec<String> = got.iter().map(what).collect();
    assert_eq!(
        seen,
        vec![
            "room_occupied -",
            "member_added u",
            "member_added m",
            "member_removed m"
        ]
    );
}

#[tokio::test]
async fn a_dead_receiver_never_slows_joins_and_the_bounded_queue_catches_up() {
    let _serial = serial().await;
    let receiver = Receiver::start(|_| Answer::Hang).await;
    let flags = [
        "--webhook-grace-ms",
        "100",
        "--webhook-timeout-ms",
        "200",
        "--webhook-queue",
        "3",
        "--webhook-batch",
        "2",
    ];
    let n = node("dead-a", &[], &receiver, &flags).await;
    wait_sender(&[&n], "dead-a").await;
    // Joins and fan-out go on while every webhook request hangs.
    let mut users = Vec::new();
    for i in 0..6 {
        let user = User::join(&n, &format!("u{i}"), &format!("room:{i}"), json!({})).await;
        users.push(user);
    }
    let watcher = User::observe(&n, "watcher", "room:0").await;
    watcher.wait_keys(&["u0"]).await;
    receiver
        .wait_for("a hanging attempt", DEADLINE, |r| !r.is_empty())
        .await;
    assert!(metric(&n, "rollcall_webhook_queue").await <= 3.0);
    assert!(metric(&n, "rollcall_webhook_held_back_total").await >= 1.0);
    // Back up: every room's change arrives, netted.
    receiver.answer(|_| ok());
    for i in 0..6 {
        wait_accepted(
            &receiver,
            &format!("room:{i}"),
            &["room_occupied -", &format!("member_added u{i}")],
        )
        .await;
    }
    let failed = metric(&n, "rollcall_webhook_requests_total{result=\"failed\"}").await;
    assert!(failed >= 1.0, "{failed}");
}

#[tokio::test]
async fn a_sender_shutting_down_hands_over_and_its_members_leave_once() {
    let _serial = serial().await;
    let receiver = Receiver::start(|_| ok()).await;
    let grace = ["--webhook-grace-ms", "300"];
    let mut a = node("sd-a", &[], &receiver, &grace).await;
    let b = node("sd-b", &[&a], &receiver, &grace).await;
    a.wait_peers_up(&["sd-b"]).await;
    b.wait_peers_up(&["sd-a"]).await;
    wait_sender(&[&a, &b], "sd-a").await;
    let _on_a = User::join(&a, "ua", "room:s", json!({})).await;
    let on_b = User::join(&b, "ub", "room:s", json!({})).await;
    on_b.wait_keys(&["ua", "ub"]).await;
    wait_accepted(&receiver, "room:s", &["member_added ua", "member_added ub"]).await;

    a.sigterm();
    assert!(a.wait_exit().await, "a stops cleanly");
    wait_sender(&[&b], "sd-b").await;
    let got = wait_accepted(&receiver, "room:s", &["member_removed ua"]).await;
    let removals: Vec<&Value> = got
        .iter()
        .filter(|e| what(e) == "member_removed ua")
        .collect();
    assert_eq!(removals.len(), 1, "{got:#?}");
    // Sent by the node that took over.
    let request = receiver
        .requests()
        .into_iter()
        .find(|r| {
            r.json()["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| what(e) == "member_removed ua")
        })
        .unwrap();
    assert_eq!(request.header("x-rollcall-node"), Some("sd-b"));
}
