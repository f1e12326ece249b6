//! Tracker CRDT benchmarks, shaped like the Phoenix.Tracker.State reference measurements:
//! build two replicas of 100,000 presences, extract one, merge it into the other, merge again
//! (idempotent), list a 1,000-member topic, 1,000 joins into one topic, replica_down of 100,000.
//!
//! Run: `cargo bench -p rollcall-core --bench tracker`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion};
use rollcall_core::tracker::{Meta, ReplicaId, State};

const N: usize = 100_000;
const TOPICS: usize = 100;

struct Input {
    topics: Vec<String>,
    keys: Vec<String>,
    meta: Meta,
}

fn input() -> Input {
    Input {
        topics: (0..TOPICS).map(|t| format!("room:{t}")).collect(),
        keys: (0..N).map(|i| format!("user:{i}")).collect(),
        meta: Meta::new(r#"{"status":"online","device":"web"}"#).unwrap_or_else(|_| Meta::empty()),
    }
}

/// A replica of `N` presences (`N` connections spread over `TOPICS` topics) that knows `peer`.
fn build(node: &str, peer: &str, input: &Input) -> State {
    let mut s = State::new(ReplicaId::new(node, 1));
    s.replica_up(&ReplicaId::new(peer, 1));
    for (i, key) in input.keys.iter().enumerate() {
        let topic = &input.topics[i % TOPICS];
        let _ = s.join(i as u64, topic, key, input.meta.clone());
    }
    s
}

fn benches(c: &mut Criterion) {
    let input = input();
    let mut g = c.benchmark_group("tracker");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    // Dropping the replica is not part of building it; dropping each one before the next build
    // (one iteration per batch) lets the allocator reuse memory, as in a long-running server.
    g.bench_function("build 100k", |b| {
        b.iter_batched(|| (), |()| build("a", "b", &input), BatchSize::PerIteration)
    });

    let a = build("a", "b", &input);
    let b_state = build("b", "a", &input);
    g.bench_function("extract 100k", |b| {
        b.iter(|| black_box(a.extract(b_state.replica(), &b_state.clock())))
    });

    let payload = a.extract(b_state.replica(), &b_state.clock());
    g.bench_function("merge 100k into 100k", |b| {
        b.iter_batched(
            || b_state.clone(),
            |mut s| {
                let diff = s.merge(&payload);
                (s, diff)
            },
            BatchSize::PerIteration,
        )
    });

    let mut merged = b_state.clone();
    merged.merge(&payload);
    g.bench_function("idempotent re-merge 100k", |b| {
        b.iter(|| black_box(merged.merge(&payload)))
    });

    g.bench_function("1,000 joins into one topic", |b| {
        b.iter_batched(
            || (),
            |()| {
                let mut s = State::new(ReplicaId::new("c", 1));
                for (i, key) in input.keys.iter().take(1_000).enumerate() {
                    let _ = s.join(i as u64, "room:big", key, input.meta.clone());
                }
                s
            },
            BatchSize::SmallInput,
        )
    });

    let mut big = State::new(ReplicaId::new("c", 1));
    for (i, key) in input.keys.iter().take(1_000).enumerate() {
        let _ = big.join(i as u64, "room:big", key, input.meta.clone());
    }
    g.bench_function("list a 1,000-member topic", |b| {
        b.iter(|| black_box(big.list("room:big")))
    });

    g.bench_function("replica_down of 100k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                black_box(merged.replica_down(a.replica()));
                total += start.elapsed();
                merged.replica_up(a.replica());
            }
            total
        })
    });
    g.finish();
}

criterion_group!(tracker, benches);

/// CPU time this thread has run (`CLOCK_THREAD_CPUTIME_ID`; `None` where unavailable). Unlike wall
/// time it does not count the time other processes hold the CPU.
fn thread_cpu() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc == 0 {
            return Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
        }
    }
    None
}

/// `ROLLCALL_BENCH_QUICK=1`: the fastest of 15 runs of each scenario, in thread CPU time where
/// Linux provides it (else wall time) — a check that is robust to other load on the machine
/// (criterion reports the wall-time distribution).
fn quick() {
    fn best<T>(mut f: impl FnMut() -> T) -> Duration {
        (0..15)
            .map(|_| {
                let (cpu, wall) = (thread_cpu(), Instant::now());
                let out = f();
                let elapsed = match (cpu, thread_cpu()) {
                    (Some(a), Some(b)) => b.saturating_sub(a),
                    _ => wall.elapsed(),
                };
                drop(out);
                elapsed
            })
            .min()
            .unwrap_or_default()
    }
    let input = input();
    let a = build("a", "b", &input);
    let b_state = build("b", "a", &input);
    let payload = a.extract(b_state.replica(), &b_state.clock());
    let mut merged = b_state.clone();
    merged.merge(&payload);
    println!("build 100k      {:?}", best(|| build("a", "b", &input)));
    println!(
        "extract 100k    {:?}",
        best(|| a.extract(b_state.replica(), &b_state.clock()))
    );
    let mut fresh: Vec<State> = (0..15).map(|_| b_state.clone()).collect();
    println!(
        "merge 100k      {:?}",
        best(|| fresh.pop().map(|mut s| {
            let diff = s.merge(&payload);
            (s, diff)
        }))
    );
    println!("re-merge 100k   {:?}", best(|| merged.merge(&payload)));
    let joins = || {
        let mut s = State::new(ReplicaId::new("c", 1));
        for (i, key) in input.keys.iter().take(1_000).enumerate() {
            let _ = s.join(i as u64, "room:big", key, input.meta.clone());
        }
        s
    };
    println!("1,000 joins     {:?}", best(joins));
    let big = joins();
    println!("list 1,000      {:?}", best(|| big.list("room:big")));
    let mut down = Duration::MAX;
    for _ in 0..15 {
        let (cpu, wall) = (thread_cpu(), Instant::now());
        let diff = merged.replica_down(a.replica());
        let elapsed = match (cpu, thread_cpu()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => wall.elapsed(),
        };
        down = down.min(elapsed);
        drop(diff);
        merged.replica_up(a.replica());
    }
    println!("replica_down    {down:?}");
}

fn main() {
    if std::env::var_os("ROLLCALL_BENCH_QUICK").is_some() {
        quick();
        return;
    }
    tracker();
    Criterion::default().configure_from_args().final_summary();
}
