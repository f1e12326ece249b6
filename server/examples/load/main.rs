//! The load tool: size a deployment and reproduce BENCHMARKS.md's numbers against a real
//! `rollcall` node.
//!
//! ```sh
//! cargo build --release -p rollcall-server          # the node it starts: target/release/rollcall
//! cargo run --release -p rollcall-server --example load -- idle --conns 10000 --room-size 100
//! cargo run --release -p rollcall-server --example load -- idle --conns 50000 --nodes 3
//! cargo run --release -p rollcall-server --example load -- storm --members 5000
//! cargo run --release -p rollcall-server --example load -- fanout --members 5000 --probes 20
//! cargo run --release -p rollcall-server --example load -- stall
//! cargo run --release -p rollcall-server --example load -- silent --conns 1000 \
//!     --node-arg --max-conns-per-ip=32
//! ```
//!
//! Scenarios:
//! - `idle`: holds `--conns` tracked connections in rooms of `--room-size` (each member's meta
//!   is `{"name": <its room>}`), waits until every member sees its whole room, and reports the
//!   node's RSS per connection.
//! - `storm`: `--members` connections, connected first, join one room at once; reports when
//!   every member sees all the others (convergence) and the node's RSS after the storm.
//! - `fanout`: fills one room of `--members`, then `--probes` times a fresh client joins (and a
//!   member updates its meta); reports the time until the first and the last member sees it.
//! - `stall`: `--stalled` members of a room stop reading while `--senders` relay events of
//!   `--event-bytes` at `--rate` each per second for `--seconds`; `--members` well-behaved
//!   members of the room meanwhile see probe joins. Reports the node's RSS growth (peak and
//!   after) and the well-behaved members' join → diff latency.
//! - `silent`: `--conns` TCP connections from 127.0.0.3 that send nothing (or, with
//!   `--trickle-ms T`, an upgrade request one byte every T ms) for `--seconds`, while a fresh
//!   client from 127.0.0.2 connects and joins every 200 ms. Reports how many of them the node
//!   still holds over time, when it closed the last, and the fresh clients' connect → join
//!   reply time and failures. The node must listen on 127.0.0.1 (its default).
//!
//! Members are held by worker processes (this executable, `worker` mode): `--workers W` of
//! them (default one per core), at most `--per-process` members each (default: under this
//! process's open-file limit), so N is not bounded by one process's descriptors. By default
//! the tool starts the node itself (`--node PATH`, default the `rollcall` beside this example
//! in the target directory) on a free port with `--node-arg` flags added; `--addr HOST:PORT
//! --pid PID` uses a running one instead; `--nodes K` starts a mesh of K and spreads every
//! room over it (member `i` on node `i mod K`). Members read every frame with the lean client
//! in `client.rs` (streamed, keys counted without parsing), heartbeat every 30 s as phoenix.js
//! does, and do not reconnect.
#![allow(clippy::print_stdout)]

mod client;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use client::{Client, Event};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::{ms, rss_kib, Summary};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Command-line options, `--name value`.
struct Args {
    scenario: String,
    values: HashMap<String, String>,
    node_args: Vec<String>,
}

impl Args {
    fn parse() -> Args {
        let mut raw = std::env::args().skip(1);
        let scenario = raw.next().unwrap_or_else(|| usage("no scenario"));
        let mut values = HashMap::new();
        let mut node_args = Vec::new();
        while let Some(name) = raw.next() {
            let Some(name) = name.strip_prefix("--") else {
                usage(&format!("unexpected {name}"));
            };
            let value = raw
                .next()
                .unwrap_or_else(|| usage(&format!("--{name} needs a value")));
            if name == "node-arg" {
                node_args.push(value);
            } else {
                values.insert(name.to_string(), value);
            }
        }
        Args {
            scenario,
            values,
            node_args,
        }
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.values.get(name) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| usage(&format!("bad --{name}"))),
            None => default,
        }
    }

    fn text(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }
}

fn usage(why: &str) -> ! {
    eprintln!(
        "load: {why}\nusage: load idle|storm|fanout|stall|silent [--conns N] [--room-size R] \
         [--members N] [--probes J] [--stalled K] [--senders S] [--event-bytes B] [--rate R] \
         [--seconds T] [--trickle-ms T] [--workers W] [--per-process P] [--nodes K] [--node PATH] [--node-arg FLAG]... [--addr HOST:PORT \
         --pid PID]"
    );
    std::process::exit(2)
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

fn client_config() -> WebSocketConfig {
    // tungstenite's 128 KiB read buffer per member would make the clients the biggest part
    // of the machine's memory.
    WebSocketConfig::default().read_buffer_size(4096)
}

async fn connect(addr: &str, user: &str) -> Result<Ws, String> {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&user_id={user}");
    tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Worker: holds members, reports on stdout.

/// What a member tells its worker.
enum Report {
    /// It sees `expected` keys in its room (unix ms).
    Converged(f64),
    /// It saw a probe marker among a diff's joins, or `<marker>/left` among its leaves (unix
    /// ms).
    Probe(String, f64),
    /// Closed by the node, after it converged or before.
    Closed { converged: bool },
}

/// What a member knows of its room.
struct Seen {
    keys: isize,
    expected: usize,
    converged: bool,
    closed: bool,
}

impl Seen {
    fn on(&mut self, event: Event, reports: &mpsc::UnboundedSender<Report>) {
        match event {
            Event::State { keys } => self.keys += keys as isize,
            Event::Diff {
                joins,
                leaves,
                probes_joined,
                probes_left,
            } => {
                self.keys += joins as isize - leaves as isize;
                if !(probes_joined.is_empty() && probes_left.is_empty()) {
                    let at = unix_ms();
                    for probe in probes_joined {
                        let _ = reports.send(Report::Probe(probe, at));
                    }
                    for probe in probes_left {
                        let _ = reports.send(Report::Probe(format!("{probe}/left"), at));
                    }
                }
            }
            Event::Close => self.closed = true,
            Event::Other => return,
        }
        if !self.converged && self.keys >= self.expected as isize {
            self.converged = true;
            let _ = reports.send(Report::Converged(unix_ms()));
        }
    }
}

async fn member(
    mut client: Client,
    topic: String,
    expected: usize,
    mut go: tokio::sync::watch::Receiver<bool>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let _ = go.wait_for(|g| *g).await;
    let join = json!(["1", "1", topic, "phx_join", {"meta": {"name": topic}}]).to_string();
    if client.send(&join).await.is_err() {
        let _ = reports.send(Report::Closed { converged: false });
        return;
    }
    let mut seen = Seen {
        keys: 0,
        expected,
        converged: false,
        closed: false,
    };
    let mut heartbeat = tokio::time::interval(Duration::from_secs(30));
    heartbeat.tick().await;
    let mut refs = 1u64;
    loop {
        // Reading is cancel-safe: a member handles what it read before it yields.
        let mut on = |event| seen.on(event, &reports);
        let beat = tokio::select! {
            open = client.read(&mut on) => if open { false } else { seen.closed = true; false },
            _ = heartbeat.tick() => true,
        };
        if seen.closed {
            let _ = reports.send(Report::Closed {
                converged: seen.converged,
            });
            return;
        }
        if beat {
            refs += 1;
            let beat = format!(r#"[null,"{refs}","phoenix","heartbeat",{{}}]"#);
            if client.send(&beat).await.is_err() {
                let _ = reports.send(Report::Closed {
                    converged: seen.converged,
                });
                return;
            }
        }
    }
}

/// `worker ADDRS FROM TO ROOM_SIZE TOTAL`: members `u<FROM>`..`u<TO>`, in rooms
/// `room:load-<i / R>`; member `i` connects to the `i % K`-th of the K comma-separated node
/// addresses, so every room spreads over the nodes.
async fn worker(args: Vec<String>) {
    let addrs: Vec<String> = args[0].split(',').map(String::from).collect();
    let from: usize = args[1].parse().expect("from");
    let to: usize = args[2].parse().expect("to");
    let room_size: usize = args[3].parse().expect("room size");
    let total: usize = args[4].parse().expect("total");
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(128));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in from..to {
        let addr = addrs[i % addrs.len()].clone();
        let (go, reports_tx) = (go.clone(), reports_tx.clone());
        let (in_flight, failed) = (in_flight.clone(), failed.clone());
        let room = i / room_size;
        // The last room may be smaller.
        let expected = room_size.min(total - room * room_size);
        tasks.push(tokio::spawn(async move {
            let permit = in_flight.acquire_owned().await.expect("semaphore");
            let client = match Client::connect(&addr, &format!("u{i}")).await {
                Ok(client) => client,
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            };
            drop(permit);
            Some(tokio::spawn(member(
                client,
                format!("room:load-{room}"),
                expected,
                go,
                reports_tx,
            )))
        }));
    }
    drop(reports_tx);
    for task in tasks {
        let _ = task.await;
    }
    println!("connected {}", failed.load(Ordering::Relaxed));
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // "join" starts the joins; EOF (the coordinator is done) ends the worker.
    while let Ok(Some(line)) = stdin.next_line().await {
        if line == "join" {
            break;
        }
    }
    let _ = go_tx.send(true);
    // Only members that connected report; each is done once it converged or was closed first.
    let members = to - from - failed.load(Ordering::Relaxed);
    let (mut converged, mut last, mut closed, mut closed_first) = (0usize, 0f64, 0usize, 0usize);
    let mut done_said = false;
    // Per probe marker: members that saw it, first and last seen (unix ms), said.
    let mut probes: HashMap<String, (usize, f64, f64, bool)> = HashMap::new();
    loop {
        if !done_said && converged + closed_first >= members {
            done_said = true;
            println!("converged {converged} {last:.3} {closed}");
        }
        tokio::select! {
            report = reports.recv() => match report {
                Some(Report::Converged(at)) => {
                    converged += 1;
                    last = last.max(at);
                }
                Some(Report::Probe(probe, at)) => {
                    let entry = probes.entry(probe.clone()).or_insert((0, f64::MAX, 0.0, false));
                    entry.0 += 1;
                    entry.1 = entry.1.min(at);
                    entry.2 = entry.2.max(at);
                    // Every member still open has seen it (one that saw it and then closed
                    // may make this a little early).
                    if !entry.3 && entry.0 >= members.saturating_sub(closed) {
                        entry.3 = true;
                        println!("probe {probe} {:.3} {:.3}", entry.1, entry.2);
                    }
                }
                Some(Report::Closed { converged: before }) => {
                    closed += 1;
                    if !before {
                        closed_first += 1;
                    }
                    println!("closed {closed}");
                }
                None => break,
            },
            line = stdin.next_line() => {
                if !matches!(line, Ok(Some(_))) {
                    break;
                }
            }
        }
    }
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// Coordinator.

/// A worker process and its report lines.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Worker {
    fn spawn(addr: &str, from: usize, to: usize, room_size: usize, total: usize) -> Worker {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args(["worker", addr])
            .args([from, to, room_size, total].map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("worker");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Worker {
            child,
            stdin,
            lines,
        }
    }

    /// The next line starting with `prefix`, within `within`.
    fn wait(&self, prefix: &str, within: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Some(rest.split_whitespace().map(String::from).collect());
            }
        }
    }

    fn tell(&mut self, line: &str) {
        let _ = writeln!(self.stdin, "{line}");
        let _ = self.stdin.flush();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node under load: started here, or one already running.
struct Node {
    addr: String,
    pid: u32,
    child: Option<Child>,
}

/// The secret the tool's mesh nodes share (`--nodes` > 1).
const CLUSTER_SECRET: &str = "the-load-tool-cluster-secret";

impl Node {
    /// Starts the node binary with `extra` flags (before `--node-arg`s); returns it and the
    /// cluster address it printed, if any.
    fn spawn(args: &Args, extra: &[String]) -> (Node, Option<String>) {
        let path = args
            .text("node")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                let exe = std::env::current_exe().expect("current exe");
                // target/<profile>/examples/load -> target/<profile>/rollcall
                exe.parent()
                    .and_then(|d| d.parent())
                    .map(|d| d.join("rollcall"))
                    .expect("target directory")
            });
        if !path.exists() {
            usage(&format!(
                "no node binary at {}: cargo build --release -p rollcall-server",
                path.display()
            ));
        }
        let mut child = Command::new(&path)
            .args(["serve", "--port", "0"])
            .args(extra)
            .args(&args.node_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mesh = extra.iter().any(|a| a == "mesh");
        let (mut addr, mut cluster) = (None, None);
        while addr.is_none() || (mesh && cluster.is_none()) {
            let line = lines.next().expect("node exited").expect("node output");
            if let Some(url) = line.strip_prefix("rollcall listening on http://") {
                addr = Some(url.trim().to_string());
            } else if let Some(at) = line.strip_prefix("rollcall cluster listening on ") {
                cluster = Some(at.trim().to_string());
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        let node = Node {
            addr: addr.unwrap_or_default(),
            pid: child.id(),
            child: Some(child),
        };
        (node, cluster)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The nodes under load: one (`--addr`/`--pid`, or started here) or a mesh of `--nodes K`
/// started here.
struct Nodes(Vec<Node>);

impl Nodes {
    fn start(args: &Args) -> Nodes {
        if let Some(addr) = args.text("addr") {
            let pid = args.get("pid", 0u32);
            if pid == 0 {
                usage("--addr needs --pid (the node's process, for its RSS)");
            }
            return Nodes(vec![Node {
                addr,
                pid,
                child: None,
            }]);
        }
        let k = args.get("nodes", 1usize).max(1);
        if k == 1 {
            return Nodes(vec![Node::spawn(args, &[]).0]);
        }
        let mut nodes = Vec::new();
        let mut seed: Option<String> = None;
        for i in 0..k {
            let mut extra: Vec<String> = [
                "--node",
                &format!("n{i}"),
                "--cluster",
                "mesh",
                "--cluster-listen",
                "127.0.0.1:0",
                "--cluster-secret",
                CLUSTER_SECRET,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(seed) = &seed {
                extra.extend(["--peers".to_string(), seed.clone()]);
            }
            let (node, cluster) = Node::spawn(args, &extra);
            seed = seed.or(cluster);
            nodes.push(node);
        }
        // Every node sees every other up before a member connects.
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            while http_get(&node.addr, "/healthz")
                .matches("\"up\":true")
                .count()
                < k - 1
            {
                if Instant::now() > deadline {
                    panic!("the mesh of {k} did not form within 30 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        println!("mesh of {k} nodes up");
        Nodes(nodes)
    }

    /// The nodes' client addresses, comma-separated (the workers' first argument).
    fn addrs(&self) -> String {
        self.0
            .iter()
            .map(|n| n.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(|n| n.pid).collect()
    }

    /// RSS of all nodes together.
    fn rss_mib(&self) -> f64 {
        self.0
            .iter()
            .map(|n| rss_kib(Some(n.pid)).unwrap_or(0) as f64 / 1024.0)
            .sum()
    }

    /// Each node's RSS, for a table cell.
    fn rss_each(&self) -> String {
        self.0
            .iter()
            .map(|n| format!("{:.1}", rss_kib(Some(n.pid)).unwrap_or(0) as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// CPU time all nodes' threads have used, in seconds (`/proc/<pid>/task/*/schedstat`).
    fn cpu_secs(&self) -> f64 {
        let mut secs = 0.0;
        for node in &self.0 {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", node.pid)) else {
                continue;
            };
            for task in tasks.flatten() {
                secs += support::sched_cpu(&task.path().join("schedstat"));
            }
        }
        secs
    }

    /// CPU time all nodes have used in user space and in the kernel, in seconds.
    fn cpu_split(&self) -> (f64, f64) {
        self.0
            .iter()
            .map(|n| support::user_system_cpu(format!("/proc/{}/stat", n.pid).as_ref()))
            .fold((0.0, 0.0), |(u, s), (du, ds)| (u + du, s + ds))
    }

    /// A `/metrics` counter summed over all nodes.
    fn metric(&self, name: &str) -> u64 {
        self.0.iter().map(|n| metric_sum(&n.addr, name)).sum()
    }
}

/// Members per worker process: `--per-process`, or the members spread over `--workers`
/// processes (default: one per core), each under this process's open-file limit.
fn per_process(args: &Args, n: usize) -> usize {
    let fd_limit = rollcall_server::security::limits::open_file_limit().unwrap_or(1024);
    let cap = fd_limit.saturating_sub(256).clamp(64, 8000);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let workers = args.get("workers", cores).max(1);
    args.get("per-process", n.div_ceil(workers).clamp(1, cap))
}

/// Starts workers for `n` members in rooms of `room_size`, waits until all are connected.
fn spawn_members(nodes: &Nodes, n: usize, room_size: usize, per_process: usize) -> Vec<Worker> {
    let mut workers = Vec::new();
    let mut from = 0;
    while from < n {
        let to = (from + per_process).min(n);
        workers.push(Worker::spawn(&nodes.addrs(), from, to, room_size, n));
        from = to;
    }
    let mut failed = 0;
    for w in &workers {
        let line = w
            .wait("connected", Duration::from_secs(600))
            .expect("worker never connected");
        failed += line
            .first()
            .and_then(|f| f.parse::<usize>().ok())
            .unwrap_or(0);
    }
    if failed > 0 {
        // Every member waits for its whole room: with some missing, none would converge.
        eprintln!(
            "load: {failed} of {n} members could not connect (the node's limits, such as \
             --max-conns or --max-conns-per-ip, or this machine's); nothing to measure"
        );
        std::process::exit(1);
    }
    println!(
        "{n} members connected in {} worker process(es)",
        workers.len()
    );
    workers
}

/// Tells every worker to join; returns when each reported convergence: (unix ms of the last
/// member's convergence, members converged, members closed).
fn join_and_converge(workers: &mut [Worker], within: Duration) -> (f64, f64, usize, usize) {
    let go = unix_ms();
    for w in workers.iter_mut() {
        w.tell("join");
    }
    let (mut last, mut converged, mut closed) = (0f64, 0, 0);
    for w in workers.iter() {
        let line = w
            .wait("converged", within)
            .expect("a worker's members did not converge in time");
        converged += line[0].parse::<usize>().unwrap_or(0);
        last = last.max(line[1].parse().unwrap_or(0.0));
        closed += line[2].parse::<usize>().unwrap_or(0);
    }
    (go, last, converged, closed)
}

/// Samples the nodes' RSS (together) every 100 ms until told to stop; returns the peak (MiB).
fn sample_peak(pids: Vec<u32>) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<f64>) {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let mut peak = 0f64;
        loop {
            let rss: u64 = pids.iter().map(|p| rss_kib(Some(*p)).unwrap_or(0)).sum();
            peak = peak.max(rss as f64 / 1024.0);
            if stopped.recv_timeout(Duration::from_millis(100)).is_ok() {
                return peak;
            }
        }
    });
    (stop, handle)
}

/// The nodes' RSS once quiet: after the last frames went out and the allocator gave back
/// what was freed (jemalloc returns freed pages after 10 s).
fn settle(nodes: &Nodes) -> f64 {
    std::thread::sleep(Duration::from_secs(12));
    nodes.rss_mib()
}

fn idle(args: &Args) {
    let n = args.get("conns", 10_000usize);
    let room_size = args.get("room-size", 100usize);
    let nodes = Nodes::start(args);
    let start = nodes.rss_mib();
    let mut workers = spawn_members(&nodes, n, room_size, per_process(args, n));
    let connected = nodes.rss_mib();
    let (go, last, converged, closed) = join_and_converge(&mut workers, Duration::from_secs(900));
    let after = settle(&nodes);
    let clients: f64 = workers
        .iter()
        .map(|w| rss_kib(Some(w.child.id())).unwrap_or(0) as f64 / 1024.0)
        .sum();
    println!("| connections | nodes | rooms of | node RSS at start | connected (not joined) | joined, idle | per connection | all joined after | closed |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {} | {room_size} | {start:.1} MiB | {connected:.1} MiB | {after:.1} MiB ({}) | {:.2} KiB | {:.1} s | {closed} |",
        nodes.0.len(),
        nodes.rss_each(),
        (after - start) * 1024.0 / n as f64,
        (last - go) / 1e3
    );
    println!("({converged} members saw their whole room; the clients held {clients:.0} MiB)");
}

fn storm(args: &Args) {
    let n = args.get("members", 5_000usize);
    let nodes = Nodes::start(args);
    let start = nodes.rss_mib();
    let mut workers = spawn_members(&nodes, n, n, per_process(args, n));
    let connected = nodes.rss_mib();
    let frames_before = nodes.metric("rollcall_frames_sent_total");
    let bytes_before = nodes.metric("rollcall_frame_bytes_sent_total");
    let cpu_before = nodes.cpu_secs();
    let split_before = nodes.cpu_split();
    let (stop, peak) = sample_peak(nodes.pids());
    let (go, last, converged, closed) = join_and_converge(&mut workers, Duration::from_secs(900));
    let cpu = nodes.cpu_secs() - cpu_before;
    let split = nodes.cpu_split();
    let kernel = split.1 - split_before.1;
    let frames = nodes
        .metric("rollcall_frames_sent_total")
        .saturating_sub(frames_before);
    let bytes = nodes
        .metric("rollcall_frame_bytes_sent_total")
        .saturating_sub(bytes_before);
    let after = settle(&nodes);
    let _ = stop.send(());
    let peak = peak.join().unwrap_or(0.0);
    println!("| members | nodes | node RSS at start | connected | peak | after the storm | above start | converged in | node CPU | closed |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {} | {start:.1} MiB | {connected:.1} MiB | {peak:.1} MiB | {after:.1} MiB | {:.1} MiB | {:.2} s | {cpu:.2} s | {closed} |",
        nodes.0.len(),
        after - start,
        (last - go) / 1e3
    );
    println!("({converged} of {n} members saw all {n}; node CPU {cpu:.2} s, {kernel:.2} s of it in the kernel)");
    println!(
        "frames sent during the storm: {frames} (N²/20 = {}, one diff per join would be N²/2 = {}), \
         {:.1} MB",
        n * n / 20,
        n * n / 2,
        bytes as f64 / 1e6
    );
}

/// The sum of a node's `/metrics` series named `name` (0 if it cannot be read).
fn metric_sum(addr: &str, name: &str) -> u64 {
    metric_lines(addr, name)
        .iter()
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Waits for every worker's `probe <marker>` line: (first, last) unix ms over all members.
fn probe_seen(workers: &[Worker], marker: &str) -> Option<(f64, f64)> {
    let (mut first, mut last) = (f64::MAX, 0f64);
    for w in workers {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = w.lines.recv_timeout(left).ok()?;
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.first() == Some(&"probe") && parts.get(1) == Some(&marker) {
                first = first.min(parts.get(2)?.parse().ok()?);
                last = last.max(parts.get(3)?.parse().ok()?);
                break;
            }
        }
    }
    Some((first, last))
}

fn fanout(args: &Args) {
    let n = args.get("members", 5_000usize);
    let probes = args.get("probes", 20usize);
    let nodes = Nodes::start(args);
    let mut workers = spawn_members(&nodes, n, n, per_process(args, n));
    let (go, last, _, _) = join_and_converge(&mut workers, Duration::from_secs(900));
    println!("room of {n} filled in {:.2} s", (last - go) / 1e3);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = nodes.0[0].addr.clone();
    let since = |sent: f64, at: f64| Duration::from_secs_f64((at - sent).max(0.0) / 1e3);
    let (mut join_first, mut join_last, mut track_last, mut leave_last) =
        (vec![], vec![], vec![], vec![]);
    let cpu_before = nodes.cpu_secs();
    let split_before = nodes.cpu_split();
    for k in 0..probes {
        let marker = format!("probe-{k}");
        let mut probe = runtime
            .block_on(Client::connect(&addr, &marker))
            .expect("probe connect");
        let sent = unix_ms();
        let join = json!(["1", "1", "room:load-0", "phx_join", {}]).to_string();
        runtime.block_on(probe.send(&join)).expect("join");
        let (first, last) = probe_seen(&workers, &marker).expect("a member missed a join");
        join_first.push(since(sent, first));
        join_last.push(since(sent, last));
        let track_marker = format!("probe-t{k}");
        let sent = unix_ms();
        let track = json!(["1", "2", "room:load-0", "track", {"mark": track_marker}]).to_string();
        runtime.block_on(probe.send(&track)).expect("track");
        let (_, last) = probe_seen(&workers, &track_marker).expect("a member missed a track");
        track_last.push(since(sent, last));
        // Leaving: the probe's socket closes; its last meta is the track's marker.
        let sent = unix_ms();
        drop(probe);
        let (_, last) =
            probe_seen(&workers, &format!("{track_marker}/left")).expect("a member missed a leave");
        leave_last.push(since(sent, last));
    }
    let cpu = nodes.cpu_secs() - cpu_before;
    let split = nodes.cpu_split();
    let (user, system) = (split.0 - split_before.0, split.1 - split_before.1);
    let row = |name: &str, samples: &mut Vec<Duration>| {
        let s = Summary::of(samples);
        println!(
            "| {name} | {n} | {:.1} | {:.1} | {:.1} | {:.1} |",
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.max)
        );
    };
    println!("| fan-out | members | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    row("join → first member", &mut join_first);
    row("join → last member", &mut join_last);
    row("track → last member", &mut track_last);
    row("leave → last member", &mut leave_last);
    let deliveries = probes * 3 * n;
    let per = |secs: f64| secs * 1e6 / deliveries as f64;
    println!(
        "node CPU: {cpu:.3} s for {deliveries} deliveries (a join, a track and a leave to {n} \
         members, {probes} times): {:.2} µs per delivery (user {:.2}, kernel {:.2})",
        per(cpu),
        per(user),
        per(system)
    );
}

/// Sends a join of `topic` with the meta `{"name": key}`.
async fn join(ws: &mut Ws, topic: &str, key: &str) -> Result<(), String> {
    let frame = json!(["1", "1", topic, "phx_join", {"meta": {"name": key}}]).to_string();
    ws.send(Message::text(frame))
        .await
        .map_err(|e| e.to_string())
}

/// The node's `/metrics` lines that start with `prefix`.
fn metric_lines(addr: &str, prefix: &str) -> Vec<String> {
    http_get(addr, "/metrics")
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(String::from)
        .collect()
}

/// The response (head and body) to `GET path` from a node, empty if it cannot be had.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    if tcp.write_all(request.as_bytes()).is_err() || tcp.read_to_string(&mut text).is_err() {
        return String::new();
    }
    text
}

fn stall(args: &Args) {
    let stalled_n = args.get("stalled", 4usize);
    let senders_n = args.get("senders", 4usize);
    let members_n = args.get("members", 20usize);
    // Under the default `--max-frame-size` (1 MiB) with the event around it.
    let event_bytes = args.get("event-bytes", 1_000_000usize);
    let rate = args.get("rate", 5.0f64);
    let seconds = args.get("seconds", 20u64);
    let nodes = Nodes::start(args);
    let node = &nodes.0[0];
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let addr = node.addr.clone();
    let topic = "room:stall";
    let start = nodes.rss_mib();
    let (stop, peak) = sample_peak(nodes.pids());
    let (samples, closes) = runtime.block_on(async move {
        // Well-behaved members: read everything, note when a probe's join arrives.
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, f64)>();
        let mut members = Vec::new();
        for i in 0..members_n {
            let mut ws = connect(&addr, &format!("member-{i}"))
                .await
                .expect("member");
            join(&mut ws, topic, &format!("member-{i}"))
                .await
                .expect("join");
            let seen_tx = seen_tx.clone();
            members.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        let text = t.as_str();
                        let head = &text[..text.len().min(400)];
                        if head.contains("\"presence_diff\"") {
                            let at = unix_ms();
                            if let Event::Diff { probes_joined, .. } = client::diff(text.as_bytes())
                            {
                                for probe in probes_joined {
                                    let _ = seen_tx.send((probe, at));
                                }
                            }
                        }
                    }
                }
            }));
        }
        // Stalled readers: join, then never read again (nor write: no heartbeat either).
        let mut stalled = Vec::new();
        for i in 0..stalled_n {
            let mut ws = connect(&addr, &format!("stalled-{i}"))
                .await
                .expect("stalled");
            join(&mut ws, topic, &format!("stalled-{i}"))
                .await
                .expect("join");
            stalled.push(ws);
        }
        // Senders: relay big events at the rate, and read (and drop) what comes to them.
        let blob = "x".repeat(event_bytes);
        let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
        let mut senders = Vec::new();
        for i in 0..senders_n {
            let mut ws = connect(&addr, &format!("sender-{i}"))
                .await
                .expect("sender");
            join(&mut ws, topic, &format!("sender-{i}"))
                .await
                .expect("join");
            let event = json!(["1", "2", topic, "blob", {"b": blob}]).to_string();
            senders.push(tokio::spawn(async move {
                let (mut write, mut read) = ws.split();
                let reader =
                    tokio::spawn(async move { while let Some(Ok(_)) = read.next().await {} });
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                while tokio::time::Instant::now() < until {
                    tick.tick().await;
                    if write.send(Message::text(event.clone())).await.is_err() {
                        break;
                    }
                }
                reader.abort();
            }));
        }
        // Probes: a fresh client joins every 200 ms; members time its diff.
        let mut sent = HashMap::new();
        let mut k = 0;
        while tokio::time::Instant::now() < until {
            let marker = format!("probe-{k}");
            if let Ok(mut ws) = connect(&addr, &marker).await {
                sent.insert(marker.clone(), unix_ms());
                let _ = join(&mut ws, topic, &marker).await;
                // It reads what it is sent (it is not one of the stalled), then leaves.
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    drop(ws);
                });
            }
            k += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for s in senders {
            let _ = s.await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut samples = Vec::new();
        while let Ok((probe, at)) = seen.try_recv() {
            if let Some(t) = sent.get(&probe) {
                samples.push(Duration::from_secs_f64((at - t).max(0.0) / 1e3));
            }
        }
        // How the stalled readers ended: read what they were sent until the close. A node that
        // could not write its close frame (the client's socket buffers full) just drops the
        // connection: "dropped".
        let mut closes = Vec::new();
        for mut ws in stalled {
            let ended = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(Message::Close(Some(frame))) => {
                            return u16::from(frame.code).to_string()
                        }
                        Ok(Message::Close(None)) => return "close".to_string(),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                "dropped".to_string()
            })
            .await;
            closes.push(ended.unwrap_or_else(|_| "open".to_string()));
        }
        for m in members {
            m.abort();
        }
        (samples, closes)
    });
    let too_slow = metric_lines(
        &node.addr,
        "rollcall_connections_closed_total{reason=\"too_slow\"",
    );
    let after = settle(&nodes);
    let _ = stop.send(());
    let peak = peak.join().unwrap_or(0.0);
    let mut samples = samples;
    if samples.is_empty() {
        println!("no probe was seen");
        return;
    }
    let count = samples.len();
    let s = Summary::of(&mut samples);
    let p95 = support::percentile(&samples, 0.95);
    println!("| stalled / senders / members | events | node RSS at start | peak | growth (peak) | after | join → diff p50 / p95 / max (ms) | stalled closed with |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {stalled_n} / {senders_n} / {members_n} | {} KiB × {rate}/s × {seconds} s each | {start:.1} MiB | {peak:.1} MiB | {:.1} MiB | {after:.1} MiB | {:.1} / {:.1} / {:.1} ({count} samples) | {} |",
        event_bytes / 1024,
        peak - start,
        ms(s.p50),
        ms(p95),
        ms(s.max),
        closes.join(", "),
    );
    for line in too_slow {
        println!("node: {line}");
    }
}

/// A TCP connection from `from` (a loopback address other than the node's own, so that it is
/// counted under its own address).
async fn tcp_from(from: &str, addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().expect("address"))?;
    let addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    socket.connect(addr).await
}

/// Holds one silent (or trickling) connection until the node closes it; returns how long it
/// stayed open, `None` if it outlived `until`.
async fn hold_silent(
    mut tcp: tokio::net::TcpStream,
    trickle: Option<Duration>,
    opened: Instant,
    until: Instant,
) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
    let mut next = 0usize;
    let mut tick = tokio::time::interval(trickle.unwrap_or(Duration::from_secs(3600)));
    tick.tick().await;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(opened.elapsed()),
                // An answer (429, 503, 408) and then the close.
                Ok(_) => {}
            },
            _ = tick.tick(), if trickle.is_some() => {
                let byte = request[next % request.len()];
                next += 1;
                if tcp.write_all(&[byte]).await.is_err() {
                    return Some(opened.elapsed());
                }
            }
            _ = tokio::time::sleep_until(until.into()) => return None,
        }
    }
}

fn silent(args: &Args) {
    let n = args.get("conns", 1_000usize);
    let trickle = match args.get("trickle-ms", 0u64) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let seconds = args.get("seconds", 12u64);
    let nodes = Nodes::start(args);
    let node = &nodes.0[0];
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let addr = node.addr.clone();
    let start = nodes.rss_mib();
    let (stop, peak) = sample_peak(nodes.pids());
    let open = Arc::new(AtomicUsize::new(0));
    let (lifetimes, opened, refused, joins, join_failures, open_over_time) =
        runtime.block_on(async {
            let t0 = Instant::now();
            let until = t0 + Duration::from_secs(seconds);
            let (mut opened, mut refused) = (0usize, 0usize);
            let mut holds = Vec::new();
            for _ in 0..n {
                match tcp_from("127.0.0.3", &addr).await {
                    Ok(tcp) => {
                        opened += 1;
                        open.fetch_add(1, Ordering::Relaxed);
                        let open = open.clone();
                        holds.push(tokio::spawn(async move {
                            let lived = hold_silent(tcp, trickle, Instant::now(), until).await;
                            open.fetch_sub(1, Ordering::Relaxed);
                            lived
                        }));
                    }
                    Err(_) => refused += 1,
                }
            }
            // Meanwhile: fresh clients from another address, and how many are still held.
            let mut joins = Vec::new();
            let mut join_failures = 0usize;
            let mut open_over_time = Vec::new();
            let mut k = 0usize;
            while Instant::now() < until {
                open_over_time.push((t0.elapsed(), open.load(Ordering::Relaxed)));
                let sent = Instant::now();
                let fresh = async {
                    let tcp = tcp_from("127.0.0.2", &addr)
                        .await
                        .map_err(|e| e.to_string())?;
                    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&user_id=fresh-{k}");
                    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
                        url,
                        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
                        Some(client_config()),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    join(&mut ws, "room:silent", &format!("fresh-{k}")).await?;
                    while let Some(msg) = ws.next().await {
                        if let Ok(Message::Text(t)) = msg {
                            if t.as_str().contains("phx_reply") {
                                return Ok(());
                            }
                        }
                    }
                    Err("closed before the join reply".to_string())
                };
                match tokio::time::timeout(Duration::from_secs(5), fresh).await {
                    Ok(Ok(())) => joins.push(sent.elapsed()),
                    _ => join_failures += 1,
                }
                k += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            open_over_time.push((t0.elapsed(), open.load(Ordering::Relaxed)));
            let mut lifetimes = Vec::new();
            for h in holds {
                lifetimes.push(h.await.ok().flatten());
            }
            (
                lifetimes,
                opened,
                refused,
                joins,
                join_failures,
                open_over_time,
            )
        });
    let _ = stop.send(());
    let peak = peak.join().unwrap_or(0.0);
    let outlived = lifetimes.iter().filter(|l| l.is_none()).count();
    let mut closed: Vec<Duration> = lifetimes.into_iter().flatten().collect();
    closed.sort();
    let at_once = closed
        .iter()
        .filter(|d| **d < Duration::from_millis(500))
        .count();
    let last = closed.last().copied().unwrap_or_default();
    let held = |secs: f64| {
        open_over_time
            .iter()
            .find(|(t, _)| t.as_secs_f64() >= secs)
            .map_or("-".to_string(), |(_, o)| o.to_string())
    };
    let mut joins = joins;
    let fresh = if joins.is_empty() {
        "none".to_string()
    } else {
        let s = Summary::of(&mut joins);
        format!("{:.1} / {:.1} ms", ms(s.p50), ms(s.max))
    };
    println!("| connections | kind | refused by connect | closed within 0.5 s | held at 1 s / 3 s / 6 s / 10 s | last closed after | still open at {seconds} s | fresh joins ok / failed | fresh connect → join p50 / max | node RSS start / peak |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {} | {refused} | {at_once} of {opened} | {} / {} / {} / {} | {:.2} s | {outlived} | {} / {join_failures} | {fresh} | {start:.1} / {peak:.1} MiB |",
        match trickle {
            None => "silent".to_string(),
            Some(t) => format!("1 byte / {} ms", t.as_millis()),
        },
        held(1.0),
        held(3.0),
        held(6.0),
        held(10.0),
        last.as_secs_f64(),
        joins.len(),
    );
}

fn main() {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("worker") {
        let rest: Vec<String> = argv.collect();
        // One thread: the members share its read buffer.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(worker(rest));
        return;
    }
    let args = Args::parse();
    match args.scenario.as_str() {
        "idle" => idle(&args),
        "storm" => storm(&args),
        "fanout" => fanout(&args),
        "stall" => stall(&args),
        "silent" => silent(&args),
        other => usage(&format!("unknown scenario {other}")),
    }
}
