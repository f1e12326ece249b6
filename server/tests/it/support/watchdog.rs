//! A per-test time limit. Neither cargo nor libtest stops a test that hangs, so every test
//! starts with `let _watchdog = crate::support::watchdog::start();` (the test
//! `every_test_starts_the_watchdog` fails on any test that does not). A watchdog thread checks
//! the running tests once a second; when one has run longer than the limit, it names that test
//! on stderr, kills the processes the binary started (rollcall nodes, brokers) and exits the
//! whole binary with a failure: a hung test cannot be stopped alone, and ending the run in
//! minutes with the culprit's name beats waiting for CI's own limit.
//!
//! The limit is [`DEFAULT_LIMIT_S`] seconds, or `ROLLCALL_TEST_TIMEOUT_S`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// The default limit: every wait in a test has a deadline of seconds, so a test that runs for
/// minutes is stuck (or waits on something without a deadline).
pub const DEFAULT_LIMIT_S: u64 = 300;

/// One running test.
struct Running {
    name: String,
    thread: ThreadId,
    since: Instant,
}

/// Running tests by guard number.
static RUNNING: Mutex<BTreeMap<u64, Running>> = Mutex::new(BTreeMap::new());

/// Registers the calling test (named after its thread, which libtest names after the test)
/// until the returned guard drops.
#[must_use = "the test is watched only while the guard lives"]
pub fn start() -> Guard {
    LIMIT.get_or_init(|| {
        let limit = limit_from_env();
        std::thread::Builder::new()
            .name("test watchdog".into())
            .spawn(move || watch(limit))
            .expect("the watchdog thread starts");
        limit
    });
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let current = std::thread::current();
    let running = Running {
        name: current.name().unwrap_or("an unnamed test").to_string(),
        thread: current.id(),
        since: Instant::now(),
    };
    lock().insert(id, running);
    Guard { id }
}

/// Restarts the clock of the calling test: for time spent queueing behind other tests (see
/// `cluster::serial`), which is not the test's own.
pub fn restart() {
    let thread = std::thread::current().id();
    for running in lock().values_mut().filter(|r| r.thread == thread) {
        running.since = Instant::now();
    }
}

/// Keeps one test watched; unregisters it when dropped (also when the test panics).
pub struct Guard {
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        lock().remove(&self.id);
    }
}

static LIMIT: OnceLock<Duration> = OnceLock::new();

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<u64, Running>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

fn limit_from_env() -> Duration {
    let seconds = match std::env::var("ROLLCALL_TEST_TIMEOUT_S") {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| {
            panic!("ROLLCALL_TEST_TIMEOUT_S must be a whole number of seconds, not {value:?}")
        }),
        Err(_) => DEFAULT_LIMIT_S,
    };
    Duration::from_secs(seconds)
}

fn watch(limit: Duration) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let late: Vec<String> = lock()
            .values()
            .filter(|r| r.since.elapsed() > limit)
            .map(|r| r.name.clone())
            .collect();
        if late.is_empty() {
            continue;
        }
        // Straight to stderr: the print macros would be captured with the output of the test
        // that happened to start this thread, and never shown.
        let mut stderr = std::io::stderr().lock();
        for name in &late {
            let _ = writeln!(
                stderr,
                "\ntest {name} has run for more than {}s (ROLLCALL_TEST_TIMEOUT_S): stopping \
                 the test binary",
                limit.as_secs()
            );
        }
        let _ = stderr.flush();
        kill_children();
        std::process::exit(101);
    }
}

/// Kills the processes this binary started, which would otherwise outlive it (Drop does not
/// run on exit). Children are found through `/proc`, whose absence leaves them running.
fn kill_children() {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses, so split after the
        // last ')'.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if parent == Some(me.as_str()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
        }
    }
}

/// Shows the limit working: run it alone with a short limit, and the binary fails naming it,
/// and its child (`sleep 3600`) is gone: `ROLLCALL_TEST_TIMEOUT_S=5 cargo test -p
/// rollcall-server --test it -- --ignored a_test_that_hangs`.
#[test]
#[ignore = "hangs on purpose, to show the watchdog failing it"]
fn a_test_that_hangs_is_stopped_by_the_watchdog() {
    let _watchdog = crate::support::watchdog::start();
    let mut child = std::process::Command::new("sleep")
        .arg("3600")
        .spawn()
        .expect("sleep starts");
    let _ = child.wait();
    loop {
        std::thread::park();
    }
}

/// Every test in this binary's sources starts the watchdog, so none can hang unnoticed.
#[test]
fn every_test_starts_the_watchdog() {
    let _watchdog = crate::support::watchdog::start();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("the test sources are readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut tests = 0;
    let mut missing = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("a readable source file");
        let lines: Vec<&str> = source.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let attribute = line.trim();
            if attribute != "#[test]" && !attribute.starts_with("#[tokio::test") {
                continue;
            }
            tests += 1;
            // The body opens on the line that ends the signature with `{`; its first
            // statement must start the watchdog.
            let open = (at..lines.len()).find(|&i| lines[i].trim_end().ends_with('{'));
            let first = open.and_then(|i| lines.get(i + 1)).map(|l| l.trim());
            let watched = first.is_some_and(|l| {
                l.starts_with("let _watchdog = ") && l.ends_with("watchdog::start();")
            });
            if !watched {
                let name = file.strip_prefix(&root).unwrap_or(file);
                missing.push(format!("{}:{}", name.display(), at + 1));
            }
        }
    }
    assert!(
        tests > 100,
        "found only {tests} tests under {}",
        root.display()
    );
    assert!(
        missing.is_empty(),
        "these tests do not start with `let _watchdog = crate::support::watchdog::start();`, \
         so a hang in them would not fail within the per-test limit: {missing:?}"
    );
}
