//! Coalesced presence diffs over real WebSockets: a join storm reaches every member in far
//! fewer frames than one diff per join, and every member, applying what it got with the
//! phoenix.js algorithm (`rollcall_core::presence`), ends with the whole room.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use rollcall_core::presence::{Diff, PresenceState};
use rollcall_server::config::ClusterSettings;
use rollcall_server::Config;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::server::{start, Client, TestServer};

const TOPIC: &str = "room:storm";
/// The deadline of each wait in this module.
const SLOW: Duration = Duration::from_secs(60);

/// Every `phx_ref` a state holds.
fn refs(state: &PresenceState) -> BTreeSet<String> {
    state
        .iter()
        .flat_map(|(_, p)| p.metas().iter())
        .filter_map(|m| m["phx_ref"].as_str().map(str::to_string))
        .collect()
}

/// What one member saw: the keys of its state once `done` held, and how many
/// `presence_diff` frames it took.
struct Seen {
    keys: BTreeSet<String>,
    diffs: usize,
}

/// Joins `TOPIC` and applies `presence_state` and every `presence_diff` until `done(state)`,
/// checking that each diff applies exactly once (each join names a version the member does not
/// hold, each leave one it holds).
async fn member(
    mut client: Client,
    done: impl Fn(&BTreeSet<String>) -> bool + Send + 'static,
) -> Seen {
    let join_ref = client.next_ref();
    client
        .send_json(json!([join_ref, join_ref, TOPIC, "phx_join", {"meta": {"here": true}}]))
        .await;
    let mut state: Option<PresenceState> = None;
    let mut diffs = 0;
    loop {
        // Hundreds of clients share the test's two threads with the server: a frame may take
        // longer than one client's usual deadline on a loaded machine.
        let frame = next_json(&mut client).await;
        match frame[3].as_str() {
            Some("presence_state") => {
                assert!(state.is_none(), "one presence_state per join");
                let mut fresh = PresenceState::new();
                fresh.sync_state(PresenceState::from_json(frame[4].clone()).unwrap());
                state = Some(fresh);
            }
            Some("presence_diff") => {
                diffs += 1;
                let state = state.as_mut().expect("presence_state comes before diffs");
                let held = refs(state);
                for (_, p) in frame[4]["joins"].as_object().unwrap() {
                    for m in p["metas"].as_array().unwrap() {
                        let r = m["phx_ref"].as_str().unwrap();
                        assert!(!held.contains(r), "a join applied twice: {r}");
                    }
                }
                for (_, p) in frame[4]["leaves"].as_object().unwrap() {
                    for m in p["metas"].as_array().unwrap() {
                        let r = m["phx_ref"].as_str().unwrap();
                        assert!(held.contains(r), "a leave of a version never seen: {r}");
                    }
                }
                state.sync_diff(Diff::from_json(frame[4].clone()).unwrap());
            }
            _ => {}
        }
        if let Some(state) = &state {
            let keys: BTreeSet<String> = state.iter().map(|(k, _)| k.to_string()).collect();
            if done(&keys) {
                return Seen { keys, diffs };
            }
        }
    }
}

/// The next text frame as JSON, within [`SLOW`].
async fn next_json(client: &mut Client) -> Value {
    loop {
        let msg = tokio::time::timeout(SLOW, client.ws.next())
            .await
            .expect("a frame before the deadline")
            .expect("the socket is open")
            .expect("no socket error");
        if let Message::Text(text) = msg {
            return serde_json::from_str(text.as_str()).expect("JSON");
        }
    }
}

async fn storm_server() -> TestServer {
    start(Config {
        cluster: ClusterSettings {
            // Windows long enough that the storm is several changes per window on any machine.
            diff_window: Duration::from_millis(100),
            diff_window_per_member: Duration::from_millis(1),
            ..ClusterSettings::default()
        },
        max_queued_bytes: 16 << 20,
        ..Config::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_storm_reaches_every_member_in_far_fewer_frames_than_one_diff_per_join() {
    let _watchdog = crate::support::watchdog::start();
    const N: usize = 200;
    let server = storm_server().await;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(Client::user(&server, &format!("u{i}")).await);
    }
    // Every member joins at once.
    let members: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(member(c, |keys| keys.len() == N)))
        .collect();
    let mut frames = 0;
    for m in members {
        let seen = tokio::time::timeout(SLOW, m)
            .await
            .expect("every member sees the whole room")
            .unwrap();
        assert_eq!(seen.keys.len(), N);
        frames += seen.diffs;
    }
    // One diff per join would be N²/2 frames (20,000).
    assert!(frames <= N * N / 10, "{frames} presence_diff frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_come_and_go_during_held_windows_leave_everyone_with_the_same_room() {
    let _watchdog = crate::support::watchdog::start();
    const STAYING: usize = 60;
    let server = storm_server().await;
    let mut expected: BTreeSet<String> = (0..STAYING).map(|i| format!("s{i}")).collect();
    expected.insert("last".into());
    let mut members = Vec::new();
    for i in 0..STAYING {
        let client = Client::user(&server, &format!("s{i}")).await;
        let expected = expected.clone();
        members.push(tokio::spawn(member(client, move |keys| *keys == expected)));
    }
    // Meanwhile others join and leave again, some before and some after their own diff went
    // out, and some update their meta first.
    for i in 0..20 {
        let mut c = Client::user(&server, &format!("brief{i}")).await;
        let jr = c.join(TOPIC, json!({"meta": {"i": i}})).await;
        if i % 2 == 0 {
            c.push(
                &jr,
                TOPIC,
                "track",
                json!({"meta": {"i": i, "again": true}}),
            )
            .await;
        }
        if i % 3 == 0 {
            c.sync().await;
        }
        drop(c);
    }
    // Once the tracker holds only the members that stayed, one more joins: a member whose state
    // holds exactly those and it got every change before it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = server.tracker.list(TOPIC).await;
        if list.as_object().map(|o| o.len()) == Some(STAYING) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the brief members never left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut last = Client::user(&server, "last").await;
    last.join(TOPIC, json!({})).await;
    for m in members {
        let seen = tokio::time::timeout(SLOW, m)
            .await
            .expect("every member ends with the members that stayed")
            .unwrap();
        assert_eq!(seen.keys, expected);
    }
}
