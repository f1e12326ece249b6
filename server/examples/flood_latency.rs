//! Benchmark: does one connection flooding events slow down everyone else? Measures how long
//! after a client sends `phx_join` another member of the room sees its `presence_diff`, first
//! on a quiet node, then while a flooder sends events as fast as its socket takes them (and
//! reconnects, at once, whenever the server closes or refuses it). One in-process node on
//! 127.0.0.1, real WebSockets; the flooder runs on its own thread. Four server settings: the
//! defaults (1008 close after 50 refusals in a row, then 429 for 10 s), the close without the
//! penalty, the default rates without the close (one connection floods the whole window), and
//! no rate limits at all.
//!
//! `cargo run --release -p rollcall-server --example flood_latency [-- JOINS [same-room]]`
//! (JOINS per side, default 500, measured in 10 alternating quiet / flooded windows)
//!
//! By default the flooder is in another room (`room:flood`); with `same-room` it floods the
//! measured room, so the observer also receives what the limits let through.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rollcall_server::config::Security;
use rollcall_server::security::limits::RateLimit;
use rollcall_server::{Config, Server};
use support::{connect, ms, wait_diff, Summary, Ws};
use tokio_tungstenite::tungstenite::Message;

const WITHIN: Duration = Duration::from_secs(10);

/// `joins` timed joins of fresh connections, each seen by `observer`.
async fn measure(addr: SocketAddr, observer: &mut Ws, joins: usize, tag: &str) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(joins);
    for i in 0..joins {
        let key = format!("{tag}{i}");
        let mut joiner = connect(addr, &key).await;
        let join = Message::text(r#"["1","1","room:bench","phx_join",{"meta":{"s":"here"}}]"#);
        let t0 = Instant::now();
        joiner.send(join).await.expect("join");
        wait_diff(observer, "joins", &key, WITHIN).await;
        samples.push(t0.elapsed());
        drop(joiner);
        wait_diff(observer, "leaves", &key, WITHIN).await;
    }
    samples
}

#[derive(Default)]
struct FloodStats {
    sent: AtomicU64,
    received: AtomicU64,
    connections: AtomicU64,
    refused: AtomicU64,
}

/// Floods `topic` with events while `active`, until `stop`; reconnects whenever the server
/// closes it. Runs on its own thread and runtime, so it competes with the server for the
/// cores the way a remote client's traffic would, not for the server's own worker threads.
fn flood(
    addr: SocketAddr,
    topic: String,
    active: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    stats: Arc<FloodStats>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("flooder runtime");
    runtime.block_on(async move {
        let push = format!(r#"["1","2","{topic}","cursor",{{"x":1,"y":2}}]"#);
        let join = format!(r#"["1","1","{topic}","phx_join",{{}}]"#);
        while !stop.load(Ordering::Relaxed) {
            if !active.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&user_id=flooder");
            let ws = match tokio_tungstenite::connect_async(url).await {
                Ok((ws, _)) => ws,
                Err(_) => {
                    // Refused (429 while in the penalty box): an attacker retries at once.
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let (mut tx, mut rx) = ws.split();
            let received = stats.clone();
            let reader = tokio::spawn(async move {
                while let Some(Ok(_)) = rx.next().await {
                    received.received.fetch_add(1, Ordering::Relaxed);
                }
            });
            if tx.send(Message::text(join.clone())).await.is_err() {
                continue;
            }
            while active.load(Ordering::Relaxed) && !reader.is_finished() {
                if tx.send(Message::text(push.clone())).await.is_err() {
                    break;
                }
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            reader.abort();
        }
    });
}

const ROUNDS: usize = 10;

#[derive(Clone, Copy)]
enum Mode {
    /// Default limits: the flooder is closed with 1008 after 50 refusals in a row, and its
    /// reconnects are refused with 429 for the abuse penalty (10 s).
    Defaults,
    /// Default rates, no abuse penalty: the closed flooder reconnects at once with a full bucket.
    NoPenalty,
    /// Default rates, abuse close off: one connection floods the whole window, every excess
    /// message refused with "rate limited".
    NoAbuseClose,
    /// No rate limits: one connection floods, every message relayed.
    NoLimits,
}

impl Mode {
    fn describe(self) -> &'static str {
        match self {
            Mode::Defaults => "default limits (1008 close, 10 s penalty)",
            Mode::NoPenalty => "1008 close, no penalty (flooder reconnects)",
            Mode::NoAbuseClose => "default rates, abuse close off",
            Mode::NoLimits => "no rate limits",
        }
    }
}

/// Alternates quiet and flooded windows (`ROUNDS` of each, `joins / ROUNDS` joins per window),
/// so a change in background load hits both sides alike.
fn run(joins: usize, same_room: bool, mode: Mode) {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let off = RateLimit {
        per_second: 0.0,
        burst: 0,
    };
    let security = match mode {
        Mode::Defaults => Security::default(),
        Mode::NoPenalty => Security {
            abuse_penalty: Duration::ZERO,
            ..Security::default()
        },
        Mode::NoAbuseClose => Security {
            max_limited_in_a_row: 0,
            ..Security::default()
        },
        Mode::NoLimits => Security {
            event_rate: off,
            meta_rate: off,
            ..Security::default()
        },
    };
    let addr = server_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = Server::new(Config {
            security,
            max_queued_bytes: 1 << 30,
            ..Config::default()
        });
        tokio::spawn(server.serve(listener, std::future::pending()));
        addr
    });

    let active = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FloodStats::default());
    let topic = if same_room {
        "room:bench"
    } else {
        "room:flood"
    };
    let flooder = {
        let (active, stop, stats) = (active.clone(), stop.clone(), stats.clone());
        let topic = topic.to_string();
        std::thread::spawn(move || flood(addr, topic, active, stop, stats))
    };

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let (quiet, flooded, flood_secs) = client_rt.block_on(async {
        let mut observer = connect(addr, "observer").await;
        observer
            .send(Message::text(
                r#"["1","1","room:bench","phx_join",{"track":false}]"#,
            ))
            .await
            .expect("join");
        // The observer must be subscribed before the first timed join, or that join lands in
        // its presence_state instead of a diff.
        loop {
            let msg = observer.next().await.expect("open").expect("frame");
            if msg.to_text().is_ok_and(|t| t.contains("presence_state")) {
                break;
            }
        }
        measure(addr, &mut observer, joins / 10 + 1, "w").await; // warm-up
        let per_round = (joins / ROUNDS).max(1);
        let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
        let mut flood_secs = 0.0;
        for round in 0..ROUNDS {
            quiet.extend(measure(addr, &mut observer, per_round, &format!("q{round}-")).await);
            active.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = Instant::now();
            flooded.extend(measure(addr, &mut observer, per_round, &format!("f{round}-")).await);
            flood_secs += started.elapsed().as_secs_f64() + 0.05;
            active.store(false, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (quiet, flooded, flood_secs)
    });
    stop.store(true, Ordering::Relaxed);
    let _ = flooder.join();

    let (mut quiet, mut flooded) = (quiet, flooded);
    let (quiet, flooded) = (Summary::of(&mut quiet), Summary::of(&mut flooded));
    println!(
        "{:<44} | flooder in {:<10} | quiet p50 {:.3} ms p90 {:.3} ms p99 {:.3} ms | flooded p50 {:.3} ms p90 {:.3} ms p99 {:.3} ms | ratio p50 {:.2}x p90 {:.2}x p99 {:.2}x | flood {:.0} msgs/s written, {:.0} frames/s back, {} connection(s), {} refused",
        mode.describe(),
        topic,
        ms(quiet.p50),
        ms(quiet.p90),
        ms(quiet.p99),
        ms(flooded.p50),
        ms(flooded.p90),
        ms(flooded.p99),
        ms(flooded.p50) / ms(quiet.p50),
        ms(flooded.p90) / ms(quiet.p90),
        ms(flooded.p99) / ms(quiet.p99),
        stats.sent.load(Ordering::Relaxed) as f64 / flood_secs,
        stats.received.load(Ordering::Relaxed) as f64 / flood_secs,
        stats.connections.load(Ordering::Relaxed),
        stats.refused.load(Ordering::Relaxed),
    );
    server_rt.shutdown_background();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let joins: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(500);
    let same_room = args.next().is_some_and(|a| a == "same-room");
    for mode in [
        Mode::Defaults,
        Mode::NoPenalty,
        Mode::NoAbuseClose,
        Mode::NoLimits,
    ] {
        run(joins, same_room, mode);
    }
}
