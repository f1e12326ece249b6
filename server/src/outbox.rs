//! One connection's outgoing queue, bounded in bytes: the tracker (and anything else that pushes
//! to a connection) [`Outbox::deliver`]s shared frames into it without ever waiting, and the
//! connection's machine takes them out in batches and writes them.
//!
//! The bound is in bytes, not frames: a frame costs its length plus [`FRAME_COST`] (the queue
//! entry and the bookkeeping), from the moment it is queued until the machine has written it
//! (a batch being written still holds its frames). A frame that does not fit is dropped and the
//! queue is marked overflowed: the connection is then closed (1013), because a client that
//! missed a `presence_diff` holds a wrong list; on reconnect it gets a fresh `presence_state`.
//!
//! Nothing here copies a frame: queuing clones a [`WireFrame`] (a reference count), so one
//! encoding of a fan-out frame serves every subscriber and is freed after the last write.
//!
//! The tracker's fan-out, its fetch stage and a channel handler's pusher all deliver into the
//! same queue: the connection has one outbox and one bound, whoever sends.
//!
//! A leaf: it knows [`crate::frame`] and nothing else of the server.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::frame::WireFrame;

/// What one queued frame costs beyond its bytes: its queue slot, its share of the bookkeeping.
/// It also bounds a flood of tiny frames.
pub const FRAME_COST: usize = 64;

/// Queue capacity kept while empty; more is given back once the queue drains.
const KEPT_CAPACITY: usize = 8;

#[derive(Debug)]
struct Queue {
    frames: Mutex<VecDeque<WireFrame>>,
    /// Bytes queued or being written, in [`cost`] units.
    bytes: AtomicUsize,
    max_bytes: usize,
    overflowed: AtomicBool,
    /// The receiver is gone: the connection's machine has ended.
    closed: AtomicBool,
    /// A frame was queued.
    ready: Notify,
    /// A frame did not fit.
    overflow: Notify,
}

/// What `frame` counts against the bound: its whole length (all its pieces, the bytes it shares
/// with other connections' frames included, since this connection holds them until written).
pub fn cost(frame: &WireFrame) -> usize {
    frame.len().saturating_add(FRAME_COST)
}

/// The sending side, cloned into every subscription of the connection. Never waits.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: Arc<Queue>,
}

/// The connection's side: waits for frames, takes them in batches, gives their bytes back once
/// written.
#[derive(Debug)]
pub struct OutboxReceiver {
    queue: Arc<Queue>,
}

/// A new queue holding at most `max_bytes` (at least one frame of any size is always let in,
/// so a limit below the largest frame does not make that frame undeliverable to an idle
/// connection).
pub fn outbox(max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let queue = Arc::new(Queue {
        frames: Mutex::new(VecDeque::new()),
        bytes: AtomicUsize::new(0),
        max_bytes,
        overflowed: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        ready: Notify::new(),
        overflow: Notify::new(),
    });
    (
        Outbox {
            queue: queue.clone(),
        },
        OutboxReceiver { queue },
    )
}

impl Outbox {
    /// Queues `frame`; when it does not fit, drops it, marks the queue overflowed and wakes
    /// the receiver. Returns whether it was queued (never after the connection ended).
    pub fn deliver(&self, frame: WireFrame) -> bool {
        let queue = &self.queue;
        if queue.overflowed.load(Ordering::Relaxed) || queue.closed.load(Ordering::Acquire) {
            return false;
        }
        let cost = cost(&frame);
        let before = queue.bytes.fetch_add(cost, Ordering::AcqRel);
        if before > 0 && before.saturating_add(cost) > queue.max_bytes {
            queue.bytes.fetch_sub(cost, Ordering::AcqRel);
            queue.overflowed.store(true, Ordering::Relaxed);
            queue.overflow.notify_one();
            return false;
        }
        match queue.frames.lock() {
            Ok(mut frames) => frames.push_back(frame),
            Err(_) => return false,
        }
        queue.ready.notify_one();
        true
    }

    /// True once a frame did not fit.
    pub fn overflowed(&self) -> bool {
        self.queue.overflowed.load(Ordering::Relaxed)
    }

    /// Marks the queue overflowed, as if a frame had not fit: for a sender that had to drop a
    /// frame before queuing it. The connection closes with 1013 as for a full queue.
    pub fn overflow(&self) {
        self.queue.overflowed.store(true, Ordering::Relaxed);
        self.queue.overflow.notify_one();
    }

    /// True once the connection's machine has ended: what is delivered goes nowhere.
    pub fn is_closed(&self) -> bool {
        self.queue.closed.load(Ordering::Acquire)
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        // What was queued is freed now, not when the last subscription lets go of the queue.
        if let Ok(mut frames) = self.queue.frames.lock() {
            *frames = VecDeque::new();
        }
    }
}

impl OutboxReceiver {
    /// Completes once a frame may be queued (at once if one is). Cancel-safe.
    pub async fn ready(&self) {
        loop {
            let notified = self.queue.ready.notified();
            if self.has_frames() {
                return;
            }
            notified.await;
        }
    }

    fn has_frames(&self) -> bool {
        self.queue
            .frames
            .lock()
            .map(|f| !f.is_empty())
            .unwrap_or(false)
    }

    /// Completes once a frame did not fit (at once if one did not). Cancel-safe.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.queue.overflow.notified();
            if self.queue.overflowed.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// Moves up to `max_frames` queued frames into `batch`; returns their cost, to be given
    /// back with [`OutboxReceiver::release`] once they are written.
    pub fn take(&self, max_frames: usize, batch: &mut Vec<WireFrame>) -> usize {
        let Ok(mut frames) = self.queue.frames.lock() else {
            return 0;
        };
        let n = frames.len().min(max_frames);
        let mut taken = 0;
        for frame in frames.drain(..n) {
            taken += cost(&frame);
            batch.push(frame);
        }
        if frames.is_empty() && frames.capacity() > KEPT_CAPACITY {
            // A burst grew the queue; an idle connection keeps only a few slots.
            frames.shrink_to(KEPT_CAPACITY);
        }
        taken
    }

    /// Gives back the cost of frames that were written.
    pub fn release(&self, bytes: usize) {
        self.queue.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes queued or being written.
    pub fn queued_bytes(&self) -> usize {
        self.queue.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{TextBytes, TextParts};

    fn frame(len: usize) -> WireFrame {
        WireFrame::Binary(vec![0u8; len].into())
    }

    #[tokio::test]
    async fn frames_fit_until_their_bytes_exceed_the_bound_then_the_queue_overflows() {
        let (outbox, rx) = outbox(1000);
        assert!(outbox.deliver(frame(400)));
        assert!(outbox.deliver(frame(400)));
        assert_eq!(rx.queued_bytes(), 800 + 2 * FRAME_COST);
        assert!(
            !outbox.deliver(frame(400)),
            "1,392 bytes do not fit in 1,000"
        );
        assert!(outbox.overflowed());
        rx.overflowed().await;
        assert!(!outbox.deliver(frame(1)), "nothing after an overflow");
    }

    #[tokio::test]
    async fn frames_count_until_written_and_give_their_bytes_back_then() {
        let (outbox, rx) = outbox(1000);
        assert!(outbox.deliver(frame(800)));
        rx.ready().await;
        let mut batch = Vec::new();
        let taken = rx.take(64, &mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(
            rx.queued_bytes(),
            800 + FRAME_COST,
            "still counted while written"
        );
        rx.release(taken);
        assert_eq!(rx.queued_bytes(), 0);
        assert!(outbox.deliver(frame(800)));
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_bound_reaches_an_empty_queue() {
        let (outbox, rx) = outbox(100);
        assert!(outbox.deliver(frame(5000)));
        let mut batch = Vec::new();
        let taken = rx.take(64, &mut batch);
        rx.release(taken);
        assert_eq!(rx.queued_bytes(), 0);
        assert!(outbox.deliver(frame(5000)));
    }

    #[tokio::test]
    async fn a_sender_that_dropped_a_frame_overflows_the_queue() {
        let (outbox, rx) = outbox(1000);
        outbox.overflow();
        rx.overflowed().await;
        assert!(!outbox.deliver(frame(1)));
    }

    #[test]
    fn the_queue_is_closed_and_emptied_once_its_receiver_is_gone() {
        let (outbox, rx) = outbox(1000);
        let queued = frame(10);
        assert!(outbox.deliver(queued.clone()));
        assert!(!outbox.is_closed());
        drop(rx);
        assert!(outbox.is_closed());
        assert!(
            !outbox.deliver(frame(1)),
            "nothing after the receiver is gone"
        );
        assert!(queued.payload().is_unique(), "the queued frame was freed");
    }

    #[test]
    fn a_frame_in_pieces_counts_its_whole_length_on_every_connection() {
        let body = TextBytes::from("x".repeat(1000));
        let (a, rx_a) = outbox(1 << 20);
        let (b, rx_b) = outbox(1 << 20);
        for (join_ref, out) in [("1", &a), ("2", &b)] {
            let head = format!("[\"{join_ref}\",");
            assert!(out.deliver(WireFrame::Parts(TextParts::new(head, body.clone(), "]"))));
        }
        assert_eq!(rx_a.queued_bytes(), 5 + 1000 + 1 + FRAME_COST);
        assert_eq!(rx_b.queued_bytes(), 5 + 1000 + 1 + FRAME_COST);
    }

    #[test]
    fn queued_frames_share_their_bytes() {
        let (a, rx_a) = outbox(1 << 20);
        let (b, rx_b) = outbox(1 << 20);
        let shared = frame(1000);
        a.deliver(shared.clone());
        b.deliver(shared.clone());
        let (mut x, mut y) = (Vec::new(), Vec::new());
        rx_a.take(1, &mut x);
        rx_b.take(1, &mut y);
        assert_eq!(x[0].payload().as_ptr(), y[0].payload().as_ptr());
    }
}
