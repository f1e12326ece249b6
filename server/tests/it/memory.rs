//! What connections cost the server's heap, counted by the test binary's allocator
//! ([`alloc`](crate::support::alloc)): the server runs alone on a thread of its own, the
//! clients on the test's runtime. Bounds are generous (several times what is measured); what
//! they catch is a cost that grows with the frames a connection handled or with the room.

use std::time::Duration;

use futures_util::StreamExt;
use rollcall_server::config::{ClusterSettings, Security};
use rollcall_server::security::limits::RateLimit;
use rollcall_server::Config;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::support::alloc;
use crate::support::server::{keys, start, Client};

/// A server on a thread of its own, whose heap can be asked for.
struct MeasuredServer {
    addr: std::net::SocketAddr,
    probe: mpsc::UnboundedSender<Probe>,
}

enum Probe {
    Heap(oneshot::Sender<i64>),
    ResetPeak(oneshot::Sender<i64>),
    Peak(oneshot::Sender<i64>),
}

impl MeasuredServer {
    async fn start(config: Config) -> MeasuredServer {
        let (ready, addr) = oneshot::channel();
        let (probe, mut probes) = mpsc::unbounded_channel::<Probe>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let server = start(config).await;
                let _ = ready.send(server.addr);
                while let Some(probe) = probes.recv().await {
                    // Let whatever the server has in hand finish first.
                    for _ in 0..10 {
                        tokio::task::yield_now().await;
                    }
                    let (reply, value) = match probe {
                        Probe::Heap(reply) => (reply, alloc::live()),
                        Probe::Peak(reply) => (reply, alloc::peak()),
                        Probe::ResetPeak(reply) => {
                            alloc::reset_peak();
                            (reply, alloc::live())
                        }
                    };
                    let _ = reply.send(value);
                }
                drop(server);
            });
        });
        let addr = addr.await.expect("server started");
        MeasuredServer { addr, probe }
    }

    async fn ask(&self, probe: impl FnOnce(oneshot::Sender<i64>) -> Probe) -> i64 {
        let (reply, answer) = oneshot::channel();
        self.probe.send(probe(reply)).expect("server thread");
        answer.await.expect("server thread")
    }

    async fn heap(&self) -> i64 {
        self.ask(Probe::Heap).await
    }

    async fn client(&self, user: &str) -> Client {
        let url = format!(
            "ws://{}/socket/websocket?vsn=2.0.0&user_id={user}",
            self.addr
        );
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Client::from_ws(ws)
    }
}

/// `n` clients joined (tracked, with a small meta) to rooms of `room_size`; each has synced.
async fn fill(server: &MeasuredServer, n: usize, room_size: usize) -> Vec<(Client, String)> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut client = server.client(&format!("user-{i}")).await;
        let topic = format!("room:mem-{}", i / room_size);
        let join_ref = client
            .join(&topic, json!({"meta": {"name": format!("User {i}")}}))
            .await;
        clients.push((client, join_ref));
    }
    for (client, _) in &mut clients {
        client.sync().await;
    }
    clients
}

#[tokio::test]
async fn an_idle_tracked_connection_costs_the_server_a_few_kilobytes() {
    let _watchdog = crate::support::watchdog::start();
    let server = MeasuredServer::start(Config::default()).await;
    let before = server.heap().await;
    let clients = fill(&server, 400, 100).await;
    let per_connection = (server.heap().await - before) / 400;
    eprintln!("heap: {per_connection} bytes per idle tracked connection");
    // Measured about 6.2 KiB in the debug test build (4.2 connected, 2.1 joined; release
    // futures are smaller); a connection that keeps a read buffer or the write buffer of its
    // presence_state costs 20 KiB and more.
    assert!(
        per_connection <= 12 * 1024,
        "{per_connection} bytes per idle connection"
    );
    drop(clients);
}

#[tokio::test]
async fn a_room_costs_memory_linear_in_its_members() {
    let _watchdog = crate::support::watchdog::start();
    let server = MeasuredServer::start(Config::default()).await;
    let before = server.heap().await;
    let n = 500;
    let clients = fill(&server, n, n).await;
    let per_member = (server.heap().await - before) / n as i64;
    eprintln!("heap: {per_member} bytes per member of a room of {n}");
    // Every member received a presence_state of up to n members (~60 KB at the end): if any
    // of it stayed with the connection the cost would grow with the room, ~30 KiB here.
    assert!(per_member <= 12 * 1024, "{per_member} bytes per member");
    drop(clients);
}

#[tokio::test]
async fn frames_of_a_megabyte_read_or_written_leave_no_buffer_behind() {
    let _watchdog = crate::support::watchdog::start();
    let server = MeasuredServer::start(Config::default()).await;
    let n = 40;
    let mut clients = fill(&server, n, n).await;
    let joined = server.heap().await;
    let big = "x".repeat(900 * 1024);
    // Each member sends a big frame (a meta too large: read whole, then refused) ...
    for (client, join_ref) in &mut clients {
        let r = client
            .push(join_ref, "room:mem-0", "track", json!({"big": big}))
            .await;
        let reply = client.recv_until(|v| v[1] == json!(r)).await;
        assert_eq!(reply[4]["response"]["reason"], "meta too large");
    }
    // ... and is sent one (an event another member relays to the room).
    let (sender, join_ref) = &mut clients[0];
    sender
        .push(join_ref, "room:mem-0", "blob", json!({"big": big}))
        .await;
    for (client, _) in clients.iter_mut().skip(1) {
        let event = client.recv_until(|v| v[3] == "blob").await;
        assert_eq!(event[4]["big"].as_str().map(str::len), Some(big.len()));
    }
    for (client, _) in &mut clients {
        client.sync().await;
    }
    let per_member = (server.heap().await - joined) / n as i64;
    assert!(
        per_member <= 4 * 1024,
        "{per_member} bytes per member kept after its megabyte frames"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_at_most_its_queue() {
    let _watchdog = crate::support::watchdog::start();
    let max_queued = 1024 * 1024;
    let server = MeasuredServer::start(Config {
        max_queued_bytes: max_queued,
        security: Security {
            event_rate: RateLimit {
                per_second: 0.0,
                burst: 0,
            },
            ..Security::default()
        },
        ..Config::default()
    })
    .await;
    let mut sender = server.client("sender").await;
    let join_ref = sender.join("room:stall", json!({})).await;
    let mut stalled = Vec::new();
    for i in 0..4 {
        let mut client = server.client(&format!("stalled-{i}")).await;
        client.join("room:stall", json!({})).await;
        client.sync().await;
        stalled.push(client);
    }
    sender.sync().await;
    let start = server.ask(Probe::ResetPeak).await;
    // The stalled clients read nothing from here on. 128 events of 256 KiB: 32 MiB for each,
    // more than the socket buffers take.
    let event = "y".repeat(256 * 1024);
    let mut left = Vec::new();
    for i in 0..128 {
        sender
            .push(&join_ref, "room:stall", "blob", json!({"i": i, "b": event}))
            .await;
        for frame in sender.sync().await {
            if frame[3] == "presence_diff" {
                left.extend(keys(&frame[4]["leaves"]));
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while left.len() < 4 && tokio::time::Instant::now() < deadline {
        for frame in sender.sync().await {
            if frame[3] == "presence_diff" {
                left.extend(keys(&frame[4]["leaves"]));
            }
        }
    }
    left.sort();
    assert_eq!(
        left,
        vec!["stalled-0", "stalled-1", "stalled-2", "stalled-3"],
        "each stalled client is closed once its queue is full"
    );
    let peak = server.ask(Probe::Peak).await - start;
    // Four queues of 1 MiB, the frames in flight, and the events being parsed and encoded;
    // a queue bounded in frames held all 16 MiB for each.
    assert!(
        peak <= 4 * max_queued as i64 + 12 * 1024 * 1024,
        "the heap grew by {peak} bytes"
    );
    for mut client in stalled {
        // What they find when they read again: the frames that fitted, then the end (with a
        // 1013 close frame if it could still be written).
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(msg)) = client.ws.next().await {
                if let tokio_tungstenite::tungstenite::Message::Close(Some(frame)) = msg {
                    assert_eq!(u16::from(frame.code), 1013);
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the stalled connection was not closed");
    }
}

#[tokio::test]
async fn joiners_of_one_window_get_their_own_presence_state_around_one_shared_payload() {
    let _watchdog = crate::support::watchdog::start();
    const RESIDENTS: usize = 16;
    const JOINERS: usize = 24;
    let server = MeasuredServer::start(Config {
        max_meta_size: 64 * 1024,
        max_queued_bytes: 16 << 20,
        cluster: ClusterSettings {
            // Once the joins come quickly, the room holds them for seconds: every joiner after
            // the quiet room's first two gets the same room.
            diff_window: Duration::from_secs(3),
            diff_window_per_member: Duration::from_secs(1),
            ..ClusterSettings::default()
        },
        ..Config::default()
    })
    .await;
    // A room of about a megabyte.
    let topic = "room:shared-state";
    let blob = "r".repeat(60 * 1024);
    let mut residents = Vec::new();
    for i in 0..RESIDENTS {
        let mut client = server.client(&format!("resident-{i}")).await;
        client
            .join(topic, json!({"meta": {"i": i, "blob": blob}}))
            .await;
        residents.push(client);
    }
    // The room as last sent holds every resident once the last one saw its own join.
    let last = format!("resident-{}", RESIDENTS - 1);
    let last_client = residents.last_mut().expect("residents");
    last_client
        .recv_until(|v| v[3] == "presence_diff" && keys(&v[4]["joins"]).contains(&last))
        .await;
    // Half V1, half V2; connected before the storm, which is only the joins.
    let mut joiners = Vec::new();
    for i in 0..JOINERS {
        let vsn = if i % 2 == 0 { "1.0.0" } else { "2.0.0" };
        let url = format!(
            "ws://{}/socket/websocket?vsn={vsn}&user_id=joiner-{i}",
            server.addr
        );
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        joiners.push((i % 2 == 0, Client::from_ws(ws)));
    }
    let start = server.ask(Probe::ResetPeak).await;
    // Every joiner joins before any reads: their `presence_state` frames wait in the server.
    for (i, (v1, client)) in joiners.iter_mut().enumerate() {
        let join_ref = format!("j{i}");
        let meta = json!({"meta": {"joiner": i}});
        let join = if *v1 {
            json!({"topic": topic, "event": "phx_join", "payload": meta,
                   "ref": join_ref, "join_ref": join_ref})
        } else {
            json!([join_ref, join_ref, topic, "phx_join", meta])
        };
        client.send_json(join).await;
    }
    let residents_keys: Vec<String> = (0..RESIDENTS).map(|i| format!("resident-{i}")).collect();
    for (i, (v1, client)) in joiners.iter_mut().enumerate() {
        let text = loop {
            let tokio_tungstenite::tungstenite::Message::Text(text) = client.recv().await else {
                panic!("joiner {i}: a text frame expected");
            };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
            let event = if *v1 { &v["event"] } else { &v[3] };
            if event == "presence_state" {
                break text;
            }
        };
        let frame: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
        // Byte for byte what the serializer writes for this push (compact, keys in order).
        assert_eq!(serde_json::to_string(&frame).unwrap(), text.as_str());
        let payload = if *v1 {
            // V1 pushes carry no join_ref and a null ref.
            let fields: Vec<&str> = frame
                .as_object()
                .expect("a V1 object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(fields, ["topic", "event", "payload", "ref"]);
            assert_eq!(frame["topic"], topic);
            assert_eq!(frame["ref"], serde_json::Value::Null);
            &frame["payload"]
        } else {
            assert_eq!(frame[0], format!("j{i}"), "the joiner's own join_ref");
            assert_eq!(frame[1], serde_json::Value::Null);
            assert_eq!(frame[2], topic);
            &frame[4]
        };
        let listed = keys(payload);
        for key in &residents_keys {
            assert!(listed.contains(key), "joiner {i}: {key} missing");
        }
        for key in &residents_keys {
            assert_eq!(payload[key]["metas"][0]["blob"], blob.as_str());
        }
    }
    let peak = server.ask(Probe::Peak).await - start;
    eprintln!("heap: {peak} bytes peak while {JOINERS} joiners got a 1 MB presence_state");
    // The payload rendered at most three times (the quiet room's first two joins go out at
    // once, the rest share one window); a copy per joiner would be 24 MB less what the socket
    // buffers took.
    assert!(
        peak <= 8 * 1024 * 1024,
        "the heap grew by {peak} bytes for {JOINERS} joiners"
    );
}
