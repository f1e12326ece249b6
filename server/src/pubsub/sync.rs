//! Small helpers the adapters' tasks share: a lock that survives poisoning, waiting for a stop
//! flag, and tasks that end with the adapter that spawned them.

use std::sync::Mutex;

use tokio::task::JoinHandle;

/// Resolves once `stop` turns `true` (or its sender is gone). A plain `async fn` so the watch
/// guard never lives across an await in the caller's `select!`.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Locks a mutex, recovering from poisoning: our critical sections leave the data consistent
/// even if a panic unwound through them, and the transport must keep running.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Tasks owned by an adapter (a wrapper's per-subscription forwarders): aborted when it drops.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Mutex<Vec<JoinHandle<()>>>);

impl Tasks {
    /// Keeps `task` until the owner drops.
    pub(crate) fn push(&self, task: JoinHandle<()>) {
        lock(&self.0).push(task);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in lock(&self.0).drain(..) {
            task.abort();
        }
    }
}
