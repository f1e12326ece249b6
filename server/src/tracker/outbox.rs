//! [`Outbox`]: where the frames other tasks send one connection are queued (the tracker's
//! fan-out, the fetch stage, a handler's pusher).

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::frame::WireFrame;

/// Where frames for one connection are queued. The queue is bounded: a connection that does not
/// keep up is told to close (through `overflow`) instead of growing without limit or silently
/// missing a presence diff.
#[derive(Debug, Clone)]
pub struct Outbox {
    frames: mpsc::Sender<WireFrame>,
    overflow: Arc<Notify>,
}

impl Outbox {
    /// An outbox over `frames`; `overflow` is notified when a frame did not fit.
    pub fn new(frames: mpsc::Sender<WireFrame>, overflow: Arc<Notify>) -> Self {
        Outbox { frames, overflow }
    }

    /// Tells the connection it missed a frame (it closes with 1013, as when its queue is full).
    pub(crate) fn overflowed(&self) {
        self.overflow.notify_one();
    }

    /// True once the connection's machine has ended.
    pub fn is_closed(&self) -> bool {
        self.frames.is_closed()
    }

    /// Queues `frame`; on a full queue, drops it and signals the overflow.
    pub fn deliver(&self, frame: WireFrame) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.frames.try_send(frame) {
            self.overflow.notify_one();
        }
    }
}
