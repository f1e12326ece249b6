//! What every adapter does with what it receives: hand each message to the subscribers of its
//! channel ([`Inbox`]) without ever waiting on one, and count ([`Counters`]) what was sent,
//! received and dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::sync::lock;
use super::{Envelope, Stats};

/// Shared counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) dropped_outbound: AtomicU64,
    pub(crate) dropped_inbound: AtomicU64,
    pub(crate) refused: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped_outbound: self.dropped_outbound.load(Ordering::Relaxed),
            dropped_inbound: self.dropped_inbound.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            rejected: super::Rejected::default(),
        }
    }
    pub(crate) fn add_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_dropped_outbound(&self) {
        self.dropped_outbound.fetch_add(1, Ordering::Relaxed);
    }
}

/// Fan-out of received envelopes to the subscribers of each channel. Shared by every adapter.
#[derive(Debug)]
pub(crate) struct Inbox {
    capacity: usize,
    subscribers: Mutex<HashMap<String, Vec<mpsc::Sender<Envelope>>>>,
    pub(crate) counters: Arc<Counters>,
}

impl Inbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Inbox {
            capacity: capacity.max(1),
            subscribers: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    pub(crate) fn subscribe(&self, channel: &str) -> mpsc::Receiver<Envelope> {
        let (tx, rx) = mpsc::channel(self.capacity);
        lock(&self.subscribers)
            .entry(channel.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// Hands `envelope` to every subscriber of its channel without waiting; a full subscriber
    /// loses it (counted), a dropped receiver is forgotten.
    pub(crate) fn deliver(&self, envelope: Envelope) {
        let mut subscribers = lock(&self.subscribers);
        let Some(list) = subscribers.get_mut(&envelope.channel) else {
            return;
        };
        list.retain(|tx| match tx.try_send(envelope.clone()) {
            Ok(()) => {
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters
                    .dropped_inbound
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn full_subscriber_loses_messages_and_they_are_counted() {
        let inbox = Inbox::new(1);
        let mut rx = inbox.subscribe("t");
        let env = |p: &'static [u8]| Envelope {
            from: "b".into(),
            channel: "t".into(),
            payload: Bytes::from_static(p),
        };
        inbox.deliver(env(b"1"));
        inbox.deliver(env(b"2"));
        assert_eq!(rx.try_recv().expect("first kept").payload, &b"1"[..]);
        assert!(rx.try_recv().is_err());
        assert_eq!(inbox.counters.snapshot().dropped_inbound, 1);
    }
}
