//! Watchers: code on this node that hears every presence change the tracker reports, in the
//! tracker's order — joins and leaves per topic, whether tracked here or merged from another
//! node — and, if it asks, peers coming up and going down. Application subscriptions
//! ([`crate::presence::Presence::subscribe`]) and the webhooks are built on them.
//!
//! The tracker never waits on a watcher: a bounded watcher that falls behind is dropped and
//! marked lagged (its receiver drains what it holds, then ends); an unbounded one is for
//! consumers that only update memory and must see every change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rollcall_core::tracker::{Diff, ReplicaEvent, TopicDiff};
use tokio::sync::mpsc;

use crate::channel::TopicPattern;

/// One thing a watcher hears.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// The joins and leaves of one topic, from one change (net: a presence that came and went
    /// within it is in neither list).
    Changed(Arc<str>, TopicDiff),
    /// A peer replica came up, went down or was forgotten (only for watchers that asked).
    Replica(ReplicaEvent),
}

#[derive(Debug, Clone)]
enum Sender {
    Bounded(mpsc::Sender<WatchEvent>),
    Unbounded(mpsc::UnboundedSender<WatchEvent>),
}

#[derive(Debug)]
enum Receiver {
    Bounded(mpsc::Receiver<WatchEvent>),
    Unbounded(mpsc::UnboundedReceiver<WatchEvent>),
}

/// The tracker's side of a watch.
#[derive(Debug)]
pub(super) struct Watcher {
    pattern: Option<TopicPattern>,
    replicas: bool,
    sender: Sender,
    lagged: Arc<AtomicBool>,
}

/// The watching side: the events, in the tracker's order.
#[derive(Debug)]
pub struct Watch {
    receiver: Receiver,
    lagged: Arc<AtomicBool>,
}

/// What a watcher wants to hear.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Only topics matching this; `None` for every topic.
    pub pattern: Option<TopicPattern>,
    /// At most this many events waiting; a watcher further behind is dropped (lagged).
    /// `None`: no bound (for consumers that keep up by construction).
    pub capacity: Option<usize>,
    /// Also hear [`WatchEvent::Replica`].
    pub replicas: bool,
    /// Start with the state as it is: every listed presence as a join (one
    /// [`WatchEvent::Changed`] per topic) and, with `replicas`, every peer up as
    /// [`ReplicaEvent::Up`].
    pub initial: bool,
}

/// A watcher and its watch (and whether it wants the initial state).
pub(super) fn watch(options: WatchOptions) -> (Watcher, Watch, bool) {
    let lagged = Arc::new(AtomicBool::new(false));
    let (sender, receiver) = match options.capacity {
        Some(n) => {
            let (tx, rx) = mpsc::channel(n.max(1));
            (Sender::Bounded(tx), Receiver::Bounded(rx))
        }
        None => {
            let (tx, rx) = mpsc::unbounded_channel();
            (Sender::Unbounded(tx), Receiver::Unbounded(rx))
        }
    };
    let watcher = Watcher {
        pattern: options.pattern,
        replicas: options.replicas,
        sender,
        lagged: lagged.clone(),
    };
    (watcher, Watch { receiver, lagged }, options.initial)
}

impl Watch {
    /// The next event; `None` once the watch ended (the tracker stopped, or this watch lagged:
    /// see [`Watch::lagged`]).
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        if self.lagged() {
            return self.drain();
        }
        match &mut self.receiver {
            Receiver::Bounded(rx) => rx.recv().await,
            Receiver::Unbounded(rx) => rx.recv().await,
        }
    }

    /// Polls for the next event (for `Stream` implementations).
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WatchEvent>> {
        if self.lagged() {
            return std::task::Poll::Ready(self.drain());
        }
        match &mut self.receiver {
            Receiver::Bounded(rx) => rx.poll_recv(cx),
            Receiver::Unbounded(rx) => rx.poll_recv(cx),
        }
    }

    /// Once lagged: what is still queued, then `None`. Every tracker shard holds a copy of the
    /// watcher and only the one that found it full let go of it, so the channel itself may
    /// never close.
    fn drain(&mut self) -> Option<WatchEvent> {
        match &mut self.receiver {
            Receiver::Bounded(rx) => rx.try_recv().ok(),
            Receiver::Unbounded(rx) => rx.try_recv().ok(),
        }
    }

    /// True if the tracker dropped this watch because it fell behind: events after the last
    /// one received were not delivered.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }
}

impl Watcher {
    /// The same watcher for another tracker shard: its events go to the same watch. Only the
    /// `first` shard's copy hears replica events (every shard sees the same peers).
    pub(super) fn for_shard(&self, first: bool) -> Watcher {
        Watcher {
            pattern: self.pattern.clone(),
            replicas: self.replicas && first,
            sender: self.sender.clone(),
            lagged: self.lagged.clone(),
        }
    }

    /// Whether it hears replica events.
    pub(super) fn wants_replicas(&self) -> bool {
        self.replicas
    }

    /// Hands `event` over; false once this watcher is gone (closed, or dropped for lagging,
    /// by this shard or another).
    pub(super) fn send(&self, event: WatchEvent) -> bool {
        if self.lagged.load(Ordering::Relaxed) {
            return false;
        }
        match &self.sender {
            Sender::Unbounded(tx) => tx.send(event).is_ok(),
            Sender::Bounded(tx) => match tx.try_send(event) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.lagged.store(true, Ordering::Relaxed);
                    tracing::warn!("a presence subscription fell behind and was ended");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        }
    }
}

/// Every watcher of the node.
#[derive(Debug, Default)]
pub(super) struct Watchers {
    watchers: Vec<Watcher>,
}

impl Watchers {
    pub(super) fn add(&mut self, watcher: Watcher) {
        self.watchers.push(watcher);
    }

    /// Tells every watcher that asked about replica `events`, then every watcher about the
    /// topics of `diff` it matches. Gone watchers are forgotten.
    pub(super) fn notify(&mut self, events: &[ReplicaEvent], diff: &Diff) {
        if self.watchers.is_empty() {
            return;
        }
        self.watchers.retain(|w| {
            for event in events.iter().filter(|_| w.replicas) {
                if !w.send(WatchEvent::Replica(event.clone())) {
                    return false;
                }
            }
            for (topic, changes) in diff.iter() {
                if w.pattern.as_ref().is_some_and(|p| !p.matches(topic)) {
                    continue;
                }
                if !w.send(WatchEvent::Changed(topic.clone(), changes.clone())) {
                    return false;
                }
            }
            true
        });
    }
}
