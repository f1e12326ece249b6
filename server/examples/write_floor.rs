//! The kernel's floor under one fan-out delivery on this machine: the CPU a thread spends
//! writing one small frame to each of N loopback TCP connections while a reader drains them,
//! with no runtime, queue or WebSocket in between. The load tool's `fanout` reports the
//! node's CPU per delivery; this is what the same write costs with nothing else around it.
//!
//! ```sh
//! cargo run --release -p rollcall-server --example write_floor -- 5000 60 180
//! ```
//!
//! Arguments: connections (5000), rounds (60), bytes per write (180, a one-key
//! `presence_diff` frame). The reader runs in a child process (this executable, `reader`
//! mode), as the load tool's members do, so waking it costs what waking a client costs.
#![allow(clippy::print_stdout)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Instant;

/// This thread's CPU time in seconds: user and system (clock ticks of 10 ms), and in total
/// from the scheduler (ns).
fn thread_cpu() -> (f64, f64, f64) {
    let (user, system) = support::user_system_cpu("/proc/thread-self/stat".as_ref());
    (
        user,
        system,
        support::sched_cpu("/proc/thread-self/schedstat".as_ref()),
    )
}

/// `reader ADDR N`: connects N times and drains every connection; each line on stdin names a
/// byte count, answered (`read <total>`) once that many bytes were read in all.
fn reader(addr: &str, n: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        use tokio::io::AsyncReadExt;
        let total = Arc::new(AtomicU64::new(0));
        for _ in 0..n {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let total = total.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(got) = tcp.read(&mut buf).await {
                    if got == 0 {
                        break;
                    }
                    total.fetch_add(got as u64, Ordering::Relaxed);
                }
            });
        }
        println!("connected");
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = String::new();
        loop {
            line.clear();
            use tokio::io::AsyncBufReadExt;
            if stdin.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let want: u64 = line.trim().parse().unwrap_or(0);
            while total.load(Ordering::Relaxed) < want {
                tokio::task::yield_now().await;
            }
            println!("read {}", total.load(Ordering::Relaxed));
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("reader") {
        let n = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1);
        reader(&args[1], n);
        return;
    }
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (n, rounds, size) = (arg(0, 5000), arg(1, 60), arg(2, 180));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .args(["reader", &addr, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("reader");
    let mut tell = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|_| {
            let (tcp, _) = listener.accept().expect("accept");
            tcp.set_nodelay(true).expect("nodelay");
            tcp
        })
        .collect();
    let _ = lines.next();
    // A WebSocket text frame header and a payload of `size` bytes.
    let mut frame = vec![0x81, 126, (size >> 8) as u8, size as u8];
    frame.resize(size + 4, b'x');
    let (mut user, mut system, mut total) = (0.0, 0.0, 0.0);
    let started = Instant::now();
    let mut expected = 0u64;
    for _ in 0..rounds {
        let before = thread_cpu();
        for tcp in &mut conns {
            tcp.write_all(&frame).expect("write");
        }
        let after = thread_cpu();
        user += after.0 - before.0;
        system += after.1 - before.1;
        total += after.2 - before.2;
        expected += (n * frame.len()) as u64;
        writeln!(tell, "{expected}").expect("tell");
        let _ = lines.next();
    }
    let writes = (n * rounds) as f64;
    println!(
        "{n} connections × {rounds} rounds of {} B writes in {:.2} s: writer CPU {:.2} µs per write \
         (user {:.2}, system {:.2})",
        frame.len(),
        started.elapsed().as_secs_f64(),
        total * 1e6 / writes,
        user * 1e6 / writes,
        system * 1e6 / writes
    );
    drop(tell);
    let _ = child.kill();
    let _ = child.wait();
}
