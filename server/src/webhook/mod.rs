//! Webhooks for backends in any language: the cluster `POST`s JSON batches
//! `{"events": [{"id", "type", "topic", "key", "meta", "at"}, ...]}` of presence events
//! (`member_added`, `member_removed`, `room_occupied`, `room_vacated`) to `--webhook-url`,
//! signed like every request rollcall makes ([`signature`](crate::security::signature)).
//!
//! What is guaranteed, and how:
//!
//! - **Once per cluster, not once per node.** Every webhook node sees every presence change
//!   (each has the whole replicated state), but one node sends: the earliest started webhook
//!   node whose tracker replica is up, as every node computes from the same `Hello`s. A new
//!   node waits a settling period before it may send, so it hears of the others first.
//! - **Hand-over.** The sender tells the other webhook nodes of each event before delivering it
//!   and again once it is done; they keep its queued events and the reported state (what the
//!   receiver has been told, per room and key, last write wins). When the sender's replica
//!   goes down (a crash, a partition) or away (a shutdown), the next earliest node takes over:
//!   it delivers the events still queued, with their ids, then closes the gap between the
//!   reported state and its own view. At least once: an event the old sender delivered but
//!   could not report done comes again with the same `id`; receivers de-duplicate on it.
//!   During a partition each side has a sender; when it heals, their reported states merge
//!   and the one sender left sends what the merge changed.
//! - **Grace.** A key that leaves and comes back within `--webhook-grace-ms` (a page reload, a
//!   reconnect to another node) sends nothing; every `member_removed` waits that long.
//! - **Bounded.** Batches are delivered in order, one at a time, each retried with backoff for
//!   `--webhook-retry-ms` and then dropped (counted, logged). At most `--webhook-queue` events
//!   wait; a room whose changes do not fit waits too (counted, logged) and sends its net change
//!   once the queue drains. Webhooks never slow the tracker, joins or fan-out: the tracker only
//!   hands this task its diffs, and delivery runs in a task of its own.
//!
//! Modules: [`ledger`] (view against reported state, the events that close the gap; sans-IO),
//! [`wire`] (what webhook nodes tell each other), `deliver` (one batch over HTTP with
//! retries), `task` (the node's webhook task).

mod deliver;
pub mod ledger;
mod task;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{ClusterSettings, WebhookSettings};
use crate::metrics::Metrics;
use crate::pubsub::PubSub;
use crate::tracker::{Tracker, WatchOptions};
use task::{Timing, WebhookTask};

pub use ledger::{Event, Kind};

/// The node's webhooks: which node sends them now (for `/healthz`), and the switch that
/// stops this node's part at shutdown.
#[derive(Debug, Clone)]
pub struct Webhooks {
    sender: watch::Receiver<Option<String>>,
    stop: watch::Sender<bool>,
}

impl Webhooks {
    /// The node that sends the cluster's webhooks now, as this node sees it (`None` while it
    /// is still settling and knows of no other).
    pub fn sender(&self) -> Option<String> {
        self.sender.borrow().clone()
    }

    /// Stops this node's webhooks (it is shutting down): a delivery in flight is abandoned and
    /// nothing more is sent. Its queued events stay with the other nodes, and the next sender
    /// delivers them once this node's replica is gone.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// How long a new node listens for the other webhook nodes before it may send: three
/// heartbeats, at least a second, at most ten.
fn settle(cluster: &ClusterSettings) -> Duration {
    (cluster.broadcast_period * 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Starts the webhook task of the node `tracker` runs: it hears the tracker's changes and the
/// other webhook nodes on `pubsub`.
pub fn spawn(
    settings: WebhookSettings,
    cluster: &ClusterSettings,
    tracker: &Tracker,
    pubsub: Arc<dyn PubSub>,
    metrics: Arc<Metrics>,
) -> Webhooks {
    let (status, status_rx) = watch::channel(None);
    let (stop, stop_rx) = watch::channel(false);
    let timing = Timing {
        settle: settle(cluster),
        // A copy of an entry that predates this is no longer in flight anywhere.
        tombstone: (cluster.down_period * 10).max(Duration::from_secs(60)),
    };
    let inbox = pubsub.subscribe(wire::CHANNEL_WEBHOOK);
    // Every change from the state as it is now, and every peer up or down.
    let watch = tracker.watch(WatchOptions {
        pattern: None,
        capacity: None,
        replicas: true,
        initial: true,
    });
    let task = WebhookTask::new(
        tracker.node(),
        tracker.incarnation(),
        settings,
        timing,
        pubsub,
        metrics,
        status,
    );
    tokio::spawn(task.run(watch, inbox, stop_rx));
    Webhooks {
        sender: status_rx,
        stop,
    }
}
