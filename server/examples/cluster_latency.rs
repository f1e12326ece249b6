//! Benchmark: cross-node join → `presence_diff` latency. Two real `rollcall` processes on
//! 127.0.0.1 with default timing (broadcast 1.5 s, coalesce 10 ms), over the mesh, NATS and Redis
//! (the brokers are started on reserved loopback ports). An observer on node `a` joins the room as
//! `track: false`; each joiner connects to node `b` first (connect time not counted), joins, and
//! the time until the observer sees the join in a `presence_diff` is recorded; the joiner then
//! disconnects, its leave is awaited, and the next join comes 25 ms later (past the coalescing
//! window, as for joins of independent users).
//!
//! ```sh
//! cargo build --release -p rollcall-server --bin rollcall --example cluster_latency
//! target/release/examples/cluster_latency [JOINS] [mesh|nats|redis ...]
//! ```
//!
//! The `rollcall` binary is taken from beside the example's directory (`target/release/`), or
//! from `$ROLLCALL_BIN`.

mod support;
// The same broker start-up the cluster tests use (a reserved loopback port, killed on drop).
// The example uses only part of it.
#[allow(dead_code)]
#[path = "../tests/it/support/broker.rs"]
mod broker_support;
#[path = "../tests/it/support/ports.rs"]
mod ports;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use broker_support::{Broker, BrokerKind};
use futures_util::SinkExt;
use support::{connect, ms, wait_diff, Summary, Ws};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "room:bench";

fn rollcall_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ROLLCALL_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .expect("target/<profile>/examples/");
    profile_dir.join("rollcall")
}

/// Starts `rollcall serve` with `args`; returns the process, its HTTP and cluster addresses.
async fn start_node(name: &str, args: &[String]) -> (Child, String, Option<String>) {
    let mut child = Command::new(rollcall_bin())
        .args(["serve", "--port", "0", "--node", name])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start rollcall (build it first: see the module docs)");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mesh = args.iter().any(|a| a == "mesh");
    let (mut http, mut cluster) = (None, None);
    while http.is_none() || (mesh && cluster.is_none()) {
        let line = lines
            .next_line()
            .await
            .expect("stdout")
            .expect("node exited at start");
        if let Some(a) = line.strip_prefix("rollcall listening on http://") {
            http = Some(a.to_string());
        } else if let Some(a) = line.strip_prefix("rollcall cluster listening on ") {
            cluster = Some(a.to_string());
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, http.unwrap_or_default(), cluster)
}

async fn join(ws: &mut Ws) {
    ws.send(Message::text(format!(
        r#"["1","1","{ROOM}","phx_join",{{"meta":{{"status":"here"}}}}]"#
    )))
    .await
    .expect("join");
}

async fn run(adapter: &str, joins: usize) {
    let mut _broker = None;
    let (args_a, args_b): (Vec<String>, Vec<String>);
    let mut nodes = Vec::new();
    match adapter {
        "mesh" => {
            let base: Vec<String> = [
                "--cluster",
                "mesh",
                "--cluster-listen",
                "127.0.0.1:0",
                "--cluster-secret",
                "a-cluster-secret-for-the-benchmark",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let (child, http, cluster) = start_node("a", &base).await;
            nodes.push(child);
            args_a = vec![http];
            let mut b = base.clone();
            b.push("--peers".into());
            b.push(cluster.expect("mesh address"));
            args_b = b;
        }
        kind => {
            let broker = Broker::start(if kind == "nats" {
                BrokerKind::Nats
            } else {
                BrokerKind::Redis
            })
            .await;
            let url = broker.url();
            _broker = Some(broker);
            let flag = if kind == "nats" {
                "--nats-url"
            } else {
                "--redis-url"
            };
            let base: Vec<String> = vec![
                "--cluster".into(),
                kind.into(),
                flag.into(),
                url,
                "--cluster-secret".into(),
                "a-cluster-secret-for-the-benchmark".into(),
            ];
            let (child, http, _) = start_node("a", &base).await;
            nodes.push(child);
            args_a = vec![http];
            args_b = base;
        }
    }
    let (child, http_b, _) = start_node("b", &args_b).await;
    nodes.push(child);
    let http_a = &args_a[0];

    let mut observer = connect(http_a, "observer").await;
    observer
        .send(Message::text(format!(
            r#"["1","1","{ROOM}","phx_join",{{"track":false}}]"#
        )))
        .await
        .expect("observer join");
    // Warm-up: the nodes have met once a join on b shows on a.
    let mut warm = connect(&http_b, "warmup").await;
    join(&mut warm).await;
    wait_diff(&mut observer, "joins", "warmup", Duration::from_secs(30)).await;
    drop(warm);
    wait_diff(&mut observer, "leaves", "warmup", Duration::from_secs(30)).await;

    let mut samples = Vec::with_capacity(joins);
    for i in 0..joins {
        let key = format!("u{i}");
        let mut joiner = connect(&http_b, &key).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
        let t0 = Instant::now();
        join(&mut joiner).await;
        wait_diff(&mut observer, "joins", &key, Duration::from_secs(10)).await;
        samples.push(t0.elapsed());
        drop(joiner);
        wait_diff(&mut observer, "leaves", &key, Duration::from_secs(10)).await;
    }
    let n = samples.len();
    let s = Summary::of(&mut samples);
    println!(
        "| {adapter} | {n} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        ms(s.p50),
        ms(s.p99),
        ms(s.mean),
        ms(s.max),
    );
}

#[tokio::main]
async fn main() {
    let mut joins = 200;
    let mut adapters = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.parse() {
            Ok(n) => joins = n,
            Err(_) => adapters.push(arg),
        }
    }
    if adapters.is_empty() {
        adapters = vec!["mesh".into(), "nats".into(), "redis".into()];
    }
    println!("cross-node join -> presence_diff (join on node b, seen by a client on node a), default timing");
    println!("| adapter | joins | p50 | p99 | mean | max |");
    println!("|---|---|---|---|---|---|");
    for adapter in &adapters {
        run(adapter, joins).await;
    }
}
