//! The webhook task of one node: it keeps the [`Ledger`] in step with the tracker (every
//! presence change, every peer up or down), decides which node sends (the earliest started
//! webhook node whose tracker replica is up), and — on that node — makes the events, tells
//! the other webhook nodes before delivering them, delivers them in order one batch at a time,
//! and tells the others when they are done. The other nodes keep the sender's queued events
//! and the reported state, so whichever takes over delivers what was left, with the same ids.
//!
//! It runs beside the tracker and never blocks it (the tracker only hands it diffs), and
//! delivery runs in a task of its own: a slow or dead receiver delays webhooks, nothing else.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rollcall_core::tracker::ReplicaEvent;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::deliver::{Delivery, Outcome};
use super::ledger::{Event, Ledger};
use super::wire::{Message, CHANNEL_WEBHOOK};
use crate::config::WebhookSettings;
use crate::metrics::Metrics;
use crate::pubsub::{Envelope, PubSub};
use crate::tracker::{Watch, WatchEvent};

/// How many finished event ids are remembered, so a late copy of a queued event is not queued
/// again.
const RECENTLY_DONE: usize = 50_000;

/// How often tombstones are pruned and held-back topics retried.
const MAINTENANCE: Duration = Duration::from_secs(1);

/// Unix milliseconds now.
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Events queued by the sender and not yet done, in the order they were made.
#[derive(Debug, Default)]
struct Queue {
    order: BTreeMap<u64, Event>,
    by_id: HashMap<String, u64>,
    next: u64,
}

impl Queue {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn push(&mut self, event: Event) {
        if self.by_id.contains_key(&event.id) {
            return;
        }
        self.by_id.insert(event.id.clone(), self.next);
        self.order.insert(self.next, event);
        self.next += 1;
    }

    fn remove(&mut self, id: &str) {
        if let Some(seq) = self.by_id.remove(id) {
            self.order.remove(&seq);
        }
    }

    fn front(&self, n: usize) -> Vec<Event> {
        self.order.values().take(n).cloned().collect()
    }

    fn pop_oldest(&mut self) -> Option<Event> {
        let (_, event) = self.order.pop_first()?;
        self.by_id.remove(&event.id);
        Some(event)
    }

    fn all(&self) -> Vec<Event> {
        self.order.values().cloned().collect()
    }
}

/// Ids finished lately, oldest forgotten first.
#[derive(Debug, Default)]
struct Recent {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Recent {
    fn insert(&mut self, id: String) {
        if self.ids.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > RECENTLY_DONE {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

/// Timing the task derives from the cluster settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// How long a new node waits to hear of the other webhook nodes before it may send.
    pub(super) settle: Duration,
    /// How long an entry reported absent is kept.
    pub(super) tombstone: Duration,
}

pub(super) struct WebhookTask {
    node: String,
    incarnation: u64,
    /// When this node's webhooks started, unix microseconds: the earliest up node sends.
    started_at: u64,
    settings: WebhookSettings,
    timing: Timing,
    ledger: Ledger,
    pubsub: Arc<dyn PubSub>,
    metrics: Arc<Metrics>,
    delivery: Arc<Delivery>,
    /// The current sender's name, for `/healthz`.
    status: watch::Sender<Option<String>>,
    queue: Queue,
    recent: Recent,
    /// Peers whose tracker replica is up: name → incarnation.
    up: HashMap<String, u64>,
    /// Peers that said they send webhooks: name → (incarnation, started_at).
    hello: HashMap<String, (u64, u64)>,
    settled: bool,
    sender: bool,
    /// Topics with events held back by the queue bound.
    behind: HashSet<Arc<str>>,
    in_flight: Option<JoinHandle<Outcome>>,
}

impl WebhookTask {
    /// A task for node `node` (tracker incarnation `incarnation`) with `settings`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        node: &str,
        incarnation: u64,
        settings: WebhookSettings,
        timing: Timing,
        pubsub: Arc<dyn PubSub>,
        metrics: Arc<Metrics>,
        status: watch::Sender<Option<String>>,
    ) -> Self {
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let delivery = Arc::new(Delivery::new(settings.clone(), node, metrics.clone()));
        WebhookTask {
            node: node.to_string(),
            incarnation,
            started_at,
            ledger: Ledger::new(u64::try_from(settings.grace.as_millis()).unwrap_or(u64::MAX)),
            settings,
            timing,
            pubsub,
            metrics,
            delivery,
            status,
            queue: Queue::default(),
            recent: Recent::default(),
            up: HashMap::new(),
            hello: HashMap::new(),
            settled: false,
            sender: false,
            behind: HashSet::new(),
            in_flight: None,
        }
    }

    pub(super) async fn run(
        mut self,
        mut watch: Watch,
        mut inbox: mpsc::Receiver<Envelope>,
        mut stop: watch::Receiver<bool>,
    ) {
        self.broadcast(&self.hello_message());
        let settle_at = Instant::now() + self.timing.settle;
        let mut maintenance = tokio::time::interval(MAINTENANCE);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbox_open = true;
        loop {
            let due = self.next_due();
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                event = watch.recv() => match event {
                    Some(event) => self.on_watch(event),
                    // The tracker is gone: the node is stopping.
                    None => break,
                },
                envelope = inbox.recv(), if inbox_open => match envelope {
                    Some(envelope) => self.on_message(&envelope),
                    None => inbox_open = false,
                },
                outcome = in_flight(&mut self.in_flight), if self.in_flight.is_some() => {
                    self.in_flight = None;
                    self.on_outcome(outcome);
                }
                _ = tokio::time::sleep_until(settle_at), if !self.settled => {
                    self.settled = true;
                    self.elect();
                }
                _ = sleep_until(due), if due.is_some() => {
                    let topics = self.ledger.due(unix_ms());
                    self.emit(topics);
                }
                _ = maintenance.tick() => self.maintain(),
            }
        }
        if let Some(task) = self.in_flight.take() {
            task.abort();
        }
        self.metrics.webhook_sender.set(0);
    }

    /// When the next removal is due, as a tokio instant (only the sender waits for it).
    fn next_due(&self) -> Option<Instant> {
        if !self.sender {
            return None;
        }
        let due = self.ledger.next_due()?;
        let wait = due.saturating_sub(unix_ms());
        Some(Instant::now() + Duration::from_millis(wait))
    }

    fn hello_message(&self) -> Message {
        Message::Hello {
            incarnation: self.incarnation,
            started_at: self.started_at,
        }
    }

    fn broadcast(&self, message: &Message) {
        self.pubsub
            .broadcast(CHANNEL_WEBHOOK, Bytes::from(message.encode()));
    }

    fn send_to(&self, node: &str, message: &Message) {
        self.pubsub
            .send_to(node, CHANNEL_WEBHOOK, Bytes::from(message.encode()));
    }

    fn on_watch(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Changed(topic, diff) => {
                self.ledger.apply_diff(&topic, &diff, unix_ms());
                self.emit(vec![topic]);
            }
            WatchEvent::Replica(ReplicaEvent::Up(id)) => {
                if id.node == self.node {
                    return;
                }
                self.up.insert(id.node.clone(), id.incarnation);
                // A new node, or one back from a partition: it learns that this node sends
                // webhooks, and merges what this node knows.
                self.send_to(&id.node, &self.hello_message());
                let snapshot = Message::Snapshot {
                    reported: self.ledger.snapshot(),
                    pending: self.queue.all(),
                };
                self.send_to(&id.node, &snapshot);
                self.elect();
            }
            WatchEvent::Replica(ReplicaEvent::Reincarnated { current, .. }) => {
                // This node's replica took a new incarnation: peers match Hellos against it.
                if current.node == self.node {
                    self.incarnation = current.incarnation;
                    self.broadcast(&self.hello_message());
                }
            }
            WatchEvent::Replica(ReplicaEvent::Down(id) | ReplicaEvent::Permdown(id)) => {
                if self.up.get(&id.node) == Some(&id.incarnation) {
                    self.up.remove(&id.node);
                    self.elect();
                }
            }
        }
    }

    fn on_message(&mut self, envelope: &Envelope) {
        let message = match Message::decode(&envelope.payload) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(from = envelope.from, "webhook message dropped: {e}");
                return;
            }
        };
        match message {
            Message::Hello {
                incarnation,
                started_at,
            } => {
                let known = self
                    .hello
                    .insert(envelope.from.clone(), (incarnation, started_at));
                if known != Some((incarnation, started_at)) {
                    // Its first word to us: answer, in case it has not heard of us.
                    self.send_to(&envelope.from, &self.hello_message());
                    self.elect();
                }
            }
            Message::Events { events } => self.merge(Vec::new(), events),
            Message::Snapshot { reported, pending } => self.merge(reported, pending),
            Message::Delivered { ids } => {
                for id in ids {
                    self.queue.remove(&id);
                    self.recent.insert(id);
                }
                self.update_gauge();
            }
        }
    }

    /// Applies another node's reported state and queued events (queuing those not done yet);
    /// the sender then closes whatever gap they open.
    fn merge(&mut self, reported: Vec<Event>, queued: Vec<Event>) {
        let now = unix_ms();
        let mut topics = HashSet::new();
        for event in &reported {
            if self.ledger.apply(event, now) {
                topics.insert(Arc::<str>::from(event.topic.as_str()));
            }
        }
        for event in queued {
            if self.ledger.apply(&event, now) {
                topics.insert(Arc::<str>::from(event.topic.as_str()));
            }
            if !self.recent.contains(&event.id) {
                self.queue.push(event);
            }
        }
        while self.queue.len() > self.settings.max_queue {
            if let Some(old) = self.queue.pop_oldest() {
                tracing::warn!(
                    id = old.id,
                    "webhook queue full: forgot a queued event of the sender"
                );
            }
        }
        self.update_gauge();
        self.emit(topics.into_iter().collect());
        self.kick();
    }

    /// Decides which node sends: the earliest started webhook node among this one and the
    /// peers up. A node that has not settled yet never sends (it may not have heard of the
    /// others).
    fn elect(&mut self) {
        let earliest_peer = self
            .hello
            .iter()
            .filter(|(name, (incarnation, _))| self.up.get(*name) == Some(incarnation))
            .map(|(name, (_, started_at))| (*started_at, name.clone()))
            .min();
        let me = (self.started_at, self.node.clone());
        let sender = self.settled && earliest_peer.as_ref().is_none_or(|peer| me < *peer);
        let name = if sender {
            Some(self.node.clone())
        } else {
            earliest_peer.map(|(_, name)| name)
        };
        self.status.send_if_modified(|current| {
            let changed = *current != name;
            *current = name.clone();
            changed
        });
        if sender == self.sender {
            return;
        }
        self.sender = sender;
        self.metrics.webhook_sender.set(u64::from(sender));
        if sender {
            tracing::info!(
                queued = self.queue.len(),
                "this node now sends the cluster's webhooks"
            );
            self.ledger.mark_all();
            self.emit(self.ledger.topics());
            self.kick();
        } else {
            tracing::info!(
                sender = name.as_deref().unwrap_or("?"),
                "webhooks are sent by another node"
            );
            if let Some(task) = self.in_flight.take() {
                task.abort();
            }
        }
    }

    /// On the sender: makes the events that bring the reported state of `topics` to the view,
    /// within the queue's room; tells the other nodes, then delivers.
    fn emit(&mut self, topics: Vec<Arc<str>>) {
        if !self.sender {
            return;
        }
        let now = unix_ms();
        let mut made = Vec::new();
        for topic in topics {
            let room = self
                .settings
                .max_queue
                .saturating_sub(self.queue.len() + made.len());
            let (events, done) = self.ledger.emit(&topic, now, room, &mut new_id);
            made.extend(events);
            if done {
                self.behind.remove(&topic);
            } else if self.behind.insert(topic.clone()) {
                self.metrics.webhook_held_back.inc();
                tracing::warn!(
                    topic = &*topic,
                    max = self.settings.max_queue,
                    "webhook queue full: this room's changes wait, netted, until it drains"
                );
            }
        }
        if made.is_empty() {
            return;
        }
        self.metrics.webhook_events_queued.add(made.len() as u64);
        // The others hear of the events before any delivery, so a node taking over from this
        // one delivers them again, with the same ids, if this one fails.
        self.broadcast(&Message::Events {
            events: made.clone(),
        });
        for event in made {
            self.queue.push(event);
        }
        self.update_gauge();
        self.kick();
    }

    /// Starts delivering the next batch, on the sender, when none is in flight.
    fn kick(&mut self) {
        if !self.sender || self.in_flight.is_some() || self.queue.len() == 0 {
            return;
        }
        let batch = self.queue.front(self.settings.max_batch.max(1));
        self.in_flight = Some(tokio::spawn(self.delivery.clone().deliver(batch)));
    }

    fn on_outcome(&mut self, outcome: Option<Outcome>) {
        let ids = match outcome {
            Some(Outcome::Delivered(ids)) => {
                self.metrics.webhook_events_delivered.add(ids.len() as u64);
                ids
            }
            Some(Outcome::Dropped(ids)) => {
                self.metrics.webhook_events_dropped.add(ids.len() as u64);
                ids
            }
            // Aborted (this node stopped sending) or panicked: the events stay queued.
            None => return,
        };
        for id in &ids {
            self.queue.remove(id);
            self.recent.insert(id.clone());
        }
        self.broadcast(&Message::Delivered { ids });
        self.update_gauge();
        let behind: Vec<Arc<str>> = self.behind.iter().cloned().collect();
        self.emit(behind);
        self.kick();
    }

    fn maintain(&mut self) {
        let tombstone = u64::try_from(self.timing.tombstone.as_millis()).unwrap_or(u64::MAX);
        self.ledger
            .forget_absent_before(unix_ms().saturating_sub(tombstone));
        if !self.behind.is_empty() {
            let behind: Vec<Arc<str>> = self.behind.iter().cloned().collect();
            self.emit(behind);
        }
    }

    fn update_gauge(&self) {
        self.metrics.webhook_queue.set(self.queue.len() as u64);
    }
}

/// Waits for the delivery in flight; `None` if it was aborted or panicked.
async fn in_flight(task: &mut Option<JoinHandle<Outcome>>) -> Option<Outcome> {
    match task {
        Some(task) => task.await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
