//! Warnings that a stranger can trigger at will (refused handshakes, refused cluster messages)
//! must not let that stranger fill the disk: [`LogSummary`] turns a stream of such events into
//! at most one log line per interval. The first event after a quiet interval is reported at
//! once, with its detail; the events that follow are counted by reason, and one summary line
//! with the counts and the latest detail is written when the interval has passed (on the next
//! event, or on the owner's timer calling [`LogSummary::flush`]).
//!
//! Sans-IO: time is passed in and the lines are returned, so the caller picks the log level and
//! tests check the lines without a subscriber. The exact counts live in `/metrics`; these lines
//! only tell an operator that something is going on and what it looks like.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often a [`LogSummary`] writes a line at most, unless its owner chooses another interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// At most one log line per interval for a kind of event (see the module docs).
#[derive(Debug)]
pub struct LogSummary {
    what: &'static str,
    interval: Duration,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// When the current interval began; `None` while quiet (the next event is reported at once).
    since: Option<Instant>,
    /// Events counted in the current interval, by reason, in the order first seen.
    counts: Vec<(&'static str, u64)>,
    /// The detail of the latest event counted.
    last: String,
}

impl LogSummary {
    /// A summary of events described as `what` (e.g. "refused cluster connections"), writing at
    /// most one line per `interval`.
    pub fn new(what: &'static str, interval: Duration) -> LogSummary {
        LogSummary {
            what,
            interval: interval.max(Duration::from_millis(1)),
            window: Mutex::new(Window::default()),
        }
    }

    /// Records one event for `reason` (a short fixed text) with `detail` (who, what exactly).
    /// Returns the line to log now, if any: the event itself after a quiet interval, or the
    /// summary of the interval that just ended.
    pub fn note(&self, now: Instant, reason: &'static str, detail: &str) -> Option<String> {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let Some(since) = window.since else {
            window.since = Some(now);
            return Some(format!(
                "{}: {reason} ({detail}); more are counted and summarised every {} s",
                self.what,
                self.interval.as_secs_f64()
            ));
        };
        match window.counts.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => window.counts.push((reason, 1)),
        }
        window.last.clear();
        window.last.push_str(detail);
        if now.saturating_duration_since(since) >= self.interval {
            return self.summarise(&mut window, now);
        }
        None
    }

    /// Called by the owner's timer: returns the summary of an interval that has passed with
    /// events counted, and goes quiet after an interval without any.
    pub fn flush(&self, now: Instant) -> Option<String> {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let since = window.since?;
        if now.saturating_duration_since(since) < self.interval {
            return None;
        }
        if window.counts.is_empty() {
            window.since = None;
            return None;
        }
        self.summarise(&mut window, now)
    }

    /// The interval between lines.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn summarise(&self, window: &mut Window, now: Instant) -> Option<String> {
        let since = window.since?;
        let total: u64 = window.counts.iter().map(|(_, n)| n).sum();
        let by_reason: Vec<String> = window
            .counts
            .iter()
            .map(|(reason, n)| format!("{reason}: {n}"))
            .collect();
        let line = format!(
            "{}: {total} in the last {:.0} s ({}); latest: {}",
            self.what,
            now.saturating_duration_since(since).as_secs_f64(),
            by_reason.join(", "),
            window.last
        );
        window.since = Some(now);
        window.counts.clear();
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_reported_at_once_and_the_rest_once_per_interval_with_counts() {
        let log = LogSummary::new("refused things", Duration::from_secs(10));
        let start = Instant::now();
        let first = log
            .note(start, "bad proof", "from 10.0.0.1")
            .expect("reported");
        assert!(first.contains("bad proof (from 10.0.0.1)"), "{first}");
        let mut lines = 0;
        for i in 1..10_000u64 {
            let at = start + Duration::from_millis(i);
            let reason = if i % 2 == 0 { "bad proof" } else { "garbage" };
            lines += usize::from(log.note(at, reason, "from 10.0.0.2").is_some());
        }
        assert_eq!(lines, 0, "nothing more within the interval");
        let summary = log
            .note(start + Duration::from_secs(10), "garbage", "from 10.0.0.3")
            .expect("the interval is over");
        assert!(
            summary.starts_with("refused things: 10000 in the last 10 s"),
            "{summary}"
        );
        assert!(
            summary.contains("garbage: 5001, bad proof: 4999"),
            "{summary}"
        );
        assert!(summary.ends_with("latest: from 10.0.0.3"), "{summary}");
    }

    #[test]
    fn the_timer_writes_the_summary_of_a_burst_that_stopped() {
        let log = LogSummary::new("refused things", Duration::from_secs(10));
        let start = Instant::now();
        assert!(log.note(start, "garbage", "a").is_some());
        assert!(log
            .note(start + Duration::from_secs(1), "garbage", "b")
            .is_none());
        assert_eq!(log.flush(start + Duration::from_secs(9)), None);
        let summary = log.flush(start + Duration::from_secs(10)).expect("summary");
        assert!(
            summary.contains("1 in the last 10 s (garbage: 1)"),
            "{summary}"
        );
        // A quiet interval after that: nothing to say, and the next event is news again.
        assert_eq!(log.flush(start + Duration::from_secs(20)), None);
        let again = log.note(start + Duration::from_secs(21), "garbage", "c");
        assert!(again.is_some_and(|l| l.contains("garbage (c)")));
    }

    #[test]
    fn a_steady_stream_gives_one_line_per_interval() {
        let log = LogSummary::new("refused things", Duration::from_secs(1));
        let start = Instant::now();
        let mut lines = 0;
        // 60 s of one event per millisecond.
        for i in 0..60_000u64 {
            let at = start + Duration::from_millis(i);
            lines += usize::from(log.note(at, "garbage", "x").is_some());
            if i % 250 == 0 {
                lines += usize::from(log.flush(at).is_some());
            }
        }
        assert!((59..=61).contains(&lines), "{lines} lines");
    }
}
