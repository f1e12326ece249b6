//! Benchmark: one big room. For each room size N, one in-process node on 127.0.0.1 (default
//! configuration, 2 worker threads) and N real V2 JSON WebSocket clients in `room:big`:
//!
//! 1. **fill**: the N clients connect and join as fast as the node takes them (256 in flight);
//!    time until every one has its `presence_state` ("joined"), and until every member has
//!    also seen the diff of one more join made after that ("settled": every fill diff delivered);
//! 2. **join fan-out**: a new client joins the full room; time until the first and the last of the
//!    N members has its `presence_diff`, and the joiner's `presence_state` (bytes, time); then it
//!    disconnects and the leave's fan-out is timed the same way;
//! 3. **meta update fan-out**: one member sends `track` with a new meta; time until all N have it;
//! 4. **memory**: the node's resident set size before and after the fill.
//!
//! Every member reads and discards its frames as they come, heartbeats every 30 s like
//! phoenix.js, and when the node closes it (1013 when its queue of `--max-queued-bytes`
//! overflows) reconnects with phoenix.js's backoff and rejoins; closes are counted and reported.
//!
//! The clients run in a child process (the same executable), so that the node's RSS is its own
//! and each process stays under the open-file limit (20,000 here; an in-process client and
//! server would need 2 fds per member). Each N gets a fresh node process.
//!
//! `cargo run --release -p rollcall-server --example room_scale [-- N... [--probes J] [--queue Q]]`
//! (default N = 1000 5000, about 1.5 min on 2 cores; J = 20 joins; Q = the node's default
//! queue of 4 MiB). `-- 10000` takes about 6.5 min and 7 GB in the node process: the
//! fill is quadratic (every join sends the joiner the whole room and every member a diff).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rollcall_server::{Config, Server};
use serde_json::Value;
use support::{ms, rss_kib, Summary, Ws};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "room:big";
/// Only frames holding this are parsed by the members: the probes' keys and metas carry it, the
/// fill's never do.
const MARK: &str = "probe-";
/// Connects and joins in flight during the fill.
const IN_FLIGHT: usize = 256;
const META_UPDATES: usize = 10;
/// phoenix.js's reconnect backoff (ms), by consecutive failure; 5 s after that.
const BACKOFF_MS: [u64; 9] = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Joins,
    Leaves,
}

/// What a member tells the coordinator.
enum Event {
    /// Got its `presence_state` (`first`: on its first connection, else after a reconnect).
    Joined { at: Instant, first: bool },
    /// Saw `key` under `side` in a diff (or, after a reconnect, in its `presence_state`), with
    /// the first meta's `status`.
    Seen {
        member: usize,
        key: String,
        side: Side,
        status: String,
        at: Instant,
    },
    /// Closed by the node (close code, if any) or the connection dropped.
    Closed { code: Option<u16> },
    /// A connect attempt failed.
    ConnectFailed,
}

type Events = mpsc::UnboundedSender<Event>;

fn url(addr: SocketAddr, user: &str) -> String {
    format!("ws://{addr}/socket/websocket?vsn=2.0.0&user_id={user}")
}

/// The members' socket settings: a 4 KiB read buffer instead of tungstenite's 128 KiB (zeroed,
/// so resident), to keep the client process small; the node keeps its defaults.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

fn join_frame(meta_status: &str) -> String {
    format!(r#"["1","1","{ROOM}","phx_join",{{"meta":{{"status":"{meta_status}"}}}}]"#)
}

/// Reports every marked key in a member's frame.
fn report_marked(member: usize, text: &str, events: &Events) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let at = Instant::now();
    let status = |entry: &Value| {
        entry["metas"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let seen = |key: &str, side, entry: &Value| {
        let _ = events.send(Event::Seen {
            member,
            key: key.to_string(),
            side,
            status: status(entry),
            at,
        });
    };
    match v[3].as_str() {
        Some("presence_state") => {
            for (key, entry) in v[4].as_object().into_iter().flatten() {
                seen(key, Side::Joins, entry);
            }
        }
        Some("presence_diff") => {
            for (side, name) in [(Side::Joins, "joins"), (Side::Leaves, "leaves")] {
                for (key, entry) in v[4][name].as_object().into_iter().flatten() {
                    seen(key, side, entry);
                }
            }
        }
        _ => {}
    }
}

/// One member: connects, joins, reads and discards frames (reporting joined and marked
/// frames), heartbeats, sends what `outgoing` gives it, and reconnects when closed.
async fn member(
    addr: SocketAddr,
    index: usize,
    gate: Arc<Semaphore>,
    events: Events,
    mut outgoing: mpsc::UnboundedReceiver<String>,
    stop: Arc<AtomicBool>,
) {
    let key = format!("u{index}");
    let join = join_frame("here");
    let mut permit = gate.acquire_owned().await.ok();
    let mut first = true;
    let mut failures = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if failures > 0 {
            let wait = BACKOFF_MS.get(failures - 1).copied().unwrap_or(5000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let ws = match tokio_tungstenite::connect_async_with_config(
            url(addr, &key),
            Some(client_config()),
            false,
        )
        .await
        {
            Ok((ws, _)) => ws,
            Err(_) => {
                let _ = events.send(Event::ConnectFailed);
                failures += 1;
                continue;
            }
        };
        let (mut tx, mut rx) = ws.split();
        if tx.send(Message::text(join.clone())).await.is_err() {
            failures += 1;
            continue;
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(30));
        heartbeat.tick().await;
        let mut joined = false;
        loop {
            tokio::select! {
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let t = t.as_str();
                        if !joined && t.contains("\"presence_state\"") {
                            joined = true;
                            failures = 0;
                            let _ = events.send(Event::Joined { at: Instant::now(), first });
                            first = false;
                            permit = None;
                        }
                        if t.contains(MARK) {
                            report_marked(index, t, &events);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let _ = events.send(Event::Closed { code: frame.map(|f| f.code.into()) });
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        if !stop.load(Ordering::Relaxed) {
                            let _ = events.send(Event::Closed { code: None });
                        }
                        break;
                    }
                },
                _ = heartbeat.tick() => {
                    let hb = r#"[null,"hb","phoenix","heartbeat",{}]"#;
                    if tx.send(Message::text(hb)).await.is_err() {
                        break;
                    }
                }
                Some(text) = outgoing.recv() => {
                    if tx.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
            }
        }
        failures += 1;
    }
    drop(permit);
}

/// The first and last time the members saw something, and how many did.
struct Spread {
    first: Option<Instant>,
    last: Option<Instant>,
    seen: usize,
}

/// Receives the members' events and keeps the counts of closes, rejoins and failed connects.
struct Hub {
    rx: mpsc::UnboundedReceiver<Event>,
    members: usize,
    closes: BTreeMap<String, usize>,
    rejoins: usize,
    connect_failures: usize,
}

impl Hub {
    /// The next joined or seen event before `deadline`; counts the others on the way.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Event> {
        loop {
            let event = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            match event {
                Event::Closed { code } => {
                    let code = code.map_or("dropped".to_string(), |c| c.to_string());
                    *self.closes.entry(code).or_default() += 1;
                }
                Event::ConnectFailed => self.connect_failures += 1,
                Event::Joined { first: false, .. } => self.rejoins += 1,
                other => return Some(other),
            }
        }
    }

    /// Waits (at most `within`) until every member got its first `presence_state`; the time
    /// of the last one, and how many did.
    /// Also prints when each tenth of the room had joined, since `start`.
    async fn filled(&mut self, start: Instant, within: Duration) -> (Option<Instant>, usize) {
        let deadline = tokio::time::Instant::now() + within;
        let (mut last, mut joined) = (None, 0);
        let mut tenths = Vec::new();
        while joined < self.members {
            match self.next(deadline).await {
                Some(Event::Joined { at, first: true }) => {
                    joined += 1;
                    last = Some(at);
                    if joined * 10 % self.members < 10 {
                        tenths.push(format!("{joined} at {:.1} s", secs(at - start)));
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        println!("N={}: fill progress: {}", self.members, tenths.join(", "));
        (last, joined)
    }

    /// Waits (at most `within`) until every member saw `key` under `side` with meta `status`.
    async fn fan_out(&mut self, key: &str, side: Side, status: &str, within: Duration) -> Spread {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen_by = vec![false; self.members];
        let mut spread = Spread {
            first: None,
            last: None,
            seen: 0,
        };
        while spread.seen < self.members {
            let Some(event) = self.next(deadline).await else {
                break;
            };
            let Event::Seen {
                member,
                key: k,
                side: s,
                status: st,
                at,
            } = event
            else {
                continue;
            };
            if k != key || s != side || (side == Side::Joins && st != status) {
                continue;
            }
            let Some(slot) = seen_by.get_mut(member) else {
                continue;
            };
            if !*slot {
                *slot = true;
                spread.seen += 1;
                spread.first = Some(spread.first.map_or(at, |f: Instant| f.min(at)));
                spread.last = Some(spread.last.map_or(at, |l: Instant| l.max(at)));
            }
        }
        spread
    }

    fn troubles(&self) -> String {
        let closes: Vec<String> = self
            .closes
            .iter()
            .map(|(c, n)| format!("{n}×{c}"))
            .collect();
        format!(
            "closes: {}; rejoins: {}; failed connects: {}",
            if closes.is_empty() {
                "none".to_string()
            } else {
                closes.join(", ")
            },
            self.rejoins,
            self.connect_failures
        )
    }
}

/// A probe joiner's `presence_state`: bytes and time since its join was sent.
async fn read_state(ws: &mut Ws, t0: Instant, within: Duration) -> Option<(usize, Duration)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        if let Ok(Message::Text(t)) = msg {
            if t.as_str().contains("\"presence_state\"") {
                return Some((t.len(), t0.elapsed()));
            }
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The client process: fills the room at `addr` with `n` members and measures.
async fn clients(addr: SocketAddr, n: usize, probes: usize) {
    let node_pid = std::os::unix::process::parent_id();
    let rss_before = rss_kib(Some(node_pid)).unwrap_or(0);
    let (events, rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let stop = Arc::new(AtomicBool::new(false));
    let mut hub = Hub {
        rx,
        members: n,
        closes: BTreeMap::new(),
        rejoins: 0,
        connect_failures: 0,
    };
    let mut senders = Vec::with_capacity(n);
    let t_fill = Instant::now();
    for index in 0..n {
        let (tx, outgoing) = mpsc::unbounded_channel();
        senders.push(tx);
        tokio::spawn(member(
            addr,
            index,
            gate.clone(),
            events.clone(),
            outgoing,
            stop.clone(),
        ));
    }
    let fill_within = Duration::from_secs(60 + n as u64 / 20);
    let (last_joined, joined) = hub.filled(t_fill, fill_within).await;
    let joined_in = last_joined.map_or(t_fill.elapsed(), |at| at - t_fill);
    println!(
        "N={n}: {joined}/{n} joined in {:.2} s ({:.0} joins/s); {}",
        secs(joined_in),
        joined as f64 / secs(joined_in),
        hub.troubles()
    );
    // Settled: a sentinel's join reaches everyone only after every fill diff queued before it.
    let within = Duration::from_secs(60);
    let mut sentinel = support::connect(addr, "probe-settle").await;
    sentinel
        .send(Message::text(join_frame("probe")))
        .await
        .expect("sentinel join");
    let settle = hub
        .fan_out("probe-settle", Side::Joins, "probe", within)
        .await;
    let settled_in = settle.last.map_or(t_fill.elapsed(), |at| at - t_fill);
    drop(sentinel);
    let _ = hub.fan_out("probe-settle", Side::Leaves, "", within).await;
    let rss_after = rss_kib(Some(node_pid)).unwrap_or(0);
    println!(
        "N={n}: settled in {:.2} s ({}/{n} saw the sentinel); node RSS {:.1} MiB -> {:.1} MiB ({:.1} KiB per member); {}",
        secs(settled_in),
        settle.seen,
        mib(rss_before),
        mib(rss_after),
        rss_after.saturating_sub(rss_before) as f64 / n as f64,
        hub.troubles()
    );

    // Join and leave fan-out, with the joiner's presence_state.
    let (mut first_join, mut last_join, mut last_leave) = (vec![], vec![], vec![]);
    let (mut state_time, mut state_bytes, mut short) = (vec![], 0, 0);
    for j in 0..probes {
        let key = format!("probe-j{j}");
        let mut joiner = support::connect(addr, &key).await;
        let t0 = Instant::now();
        joiner
            .send(Message::text(join_frame("probe")))
            .await
            .expect("probe join");
        let (state, spread) = tokio::join!(
            read_state(&mut joiner, t0, within),
            hub.fan_out(&key, Side::Joins, "probe", within)
        );
        if let Some((bytes, took)) = state {
            state_bytes = bytes;
            state_time.push(took);
        }
        if spread.seen < n {
            short += 1;
        }
        if let (Some(first), Some(last)) = (spread.first, spread.last) {
            first_join.push(first - t0);
            last_join.push(last - t0);
        }
        let t1 = Instant::now();
        drop(joiner);
        let spread = hub.fan_out(&key, Side::Leaves, "", within).await;
        if let Some(last) = spread.last {
            last_leave.push(last - t1);
        }
    }

    // Meta updates by member u0 (its channel's join_ref is "1").
    let mut last_meta = vec![];
    for r in 1..=META_UPDATES {
        let status = format!("probe-rev-{r}");
        let track = format!(
            r#"["1","{}","{ROOM}","track",{{"status":"{status}"}}]"#,
            r + 1
        );
        let t0 = Instant::now();
        if senders[0].send(track).is_err() {
            break;
        }
        let spread = hub.fan_out("u0", Side::Joins, &status, within).await;
        if spread.seen < n {
            short += 1;
        }
        if let Some(last) = spread.last {
            last_meta.push(last - t0);
        }
    }
    stop.store(true, Ordering::Relaxed);

    let line = |name: &str, samples: &mut Vec<Duration>| {
        if samples.is_empty() {
            println!("N={n}: {name}: no samples");
            return (f64::NAN, f64::NAN);
        }
        let s = Summary::of(samples);
        println!(
            "N={n}: {name} ({} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            samples.len(),
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
        (ms(s.p50), ms(s.p99))
    };
    let fj = line("join -> first member has the diff", &mut first_join);
    let lj = line("join -> last member has the diff", &mut last_join);
    let ll = line("leave -> last member has the diff", &mut last_leave);
    let lm = line("track -> last member has the diff", &mut last_meta);
    let st = line("join -> joiner has presence_state", &mut state_time);
    println!(
        "N={n}: presence_state of the full room: {state_bytes} bytes; fan-outs short of N members: {short}; client process RSS {:.0} MiB; {}",
        mib(rss_kib(None).unwrap_or(0)),
        hub.troubles()
    );
    println!(
        "| {n} | {:.2} s ({:.0}/s) | {:.2} s | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.1} KiB / {:.2} / {:.2} ms | {:.0} → {:.0} MiB, {:.1} KiB/member | {} |",
        secs(joined_in),
        joined as f64 / secs(joined_in),
        secs(settled_in),
        fj.0,
        fj.1,
        lj.0,
        lj.1,
        ll.0,
        ll.1,
        lm.0,
        lm.1,
        state_bytes as f64 / 1024.0,
        st.0,
        st.1,
        mib(rss_before),
        mib(rss_after),
        rss_after.saturating_sub(rss_before) as f64 / n as f64,
        hub.troubles()
    );
}

/// The node process: serves on 127.0.0.1 and runs the clients as a child process.
fn node(n: usize, probes: usize, queue: Option<usize>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("node runtime");
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = Config::default();
        if let Some(queue) = queue {
            config.max_queued_bytes = queue;
        }
        tokio::spawn(Server::new(config).serve(listener, std::future::pending()));
        addr
    });
    let exe = std::env::current_exe().expect("current exe");
    let status = Command::new(exe)
        .args(["__clients", &addr.to_string(), &n.to_string()])
        .arg(probes.to_string())
        .status()
        .expect("start the client process");
    if !status.success() {
        eprintln!("N={n}: client process failed: {status}");
    }
    runtime.shutdown_background();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        "__clients" => {
            let addr: SocketAddr = arg(1).parse().expect("address");
            let n: usize = arg(2).parse().expect("N");
            let probes: usize = arg(3).parse().expect("probes");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("client runtime");
            runtime.block_on(clients(addr, n, probes));
            // Members are still connected; ending the process closes them all at once.
            std::process::exit(0);
        }
        "__node" => {
            let queue = arg(3).parse().ok();
            node(
                arg(1).parse().expect("N"),
                arg(2).parse().expect("probes"),
                queue,
            );
        }
        _ => {
            let (mut sizes, mut probes, mut queue) = (vec![], 20usize, None::<usize>);
            let mut it = args.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--probes" => probes = it.next().and_then(|v| v.parse().ok()).unwrap_or(20),
                    "--queue" => queue = it.next().and_then(|v| v.parse().ok()),
                    n => sizes.extend(n.parse::<usize>().ok().filter(|&n| n > 0)),
                }
            }
            if sizes.is_empty() {
                sizes = vec![1_000, 5_000];
            }
            println!(
                "| N | fill: all joined | settled | join → first member p50 / p99 | join → last member p50 / p99 | leave → last member p50 / p99 | track → last member p50 / p99 | presence_state bytes / p50 / p99 | node RSS before → after | closes etc. |"
            );
            let exe = std::env::current_exe().expect("current exe");
            for n in sizes {
                // A fresh node process per size, so RSS starts from the same place.
                let mut cmd = Command::new(&exe);
                cmd.args(["__node", &n.to_string(), &probes.to_string()]);
                if let Some(q) = queue {
                    cmd.arg(q.to_string());
                }
                let status = cmd.status().expect("start the node process");
                if !status.success() {
                    eprintln!("N={n}: node process failed: {status}");
                }
            }
        }
    }
}
