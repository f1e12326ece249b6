//! The app's fetch hook (Phoenix's `fetch/2`): it adds fields to each key's entry of every
//! presence payload clients receive — once per `presence_state`, once per side (joins,
//! leaves) of a `presence_diff`, so one call covers every key of a frame — and of
//! [`Presence::list`](crate::presence::Presence::list) and `get_by_key`.
//!
//! The hook may await (a database, a cache), so it never runs on the tracker task: with a hook,
//! the fan-out hands each presence frame to a [`Stage`] task that fetches and delivers frames
//! one topic at a time in the tracker's order (different topics proceed side by side). A
//! subscriber's `presence_state` and the diffs after it therefore arrive in order however long
//! each fetch takes. What a hook returns is checked: every key keeps its `metas` as listed,
//! keys it adds are dropped, and a hook that panics or takes longer than [`FETCH_TIMEOUT`]
//! leaves the frame as it was (logged).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rollcall_core::protocol::Serializer;
use rollcall_core::tracker::TopicDiff;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::render::{presences_value, Listing};
use crate::channel::{EVENT_PRESENCE_DIFF, EVENT_PRESENCE_STATE};
use crate::frame::{TextBytes, WireFrame};
use crate::outbox::Outbox;

/// Longest a fetch may take; after it, the frame goes out without the hook's fields.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Most presence frames waiting for the hook at once; the recipients of frames beyond are told
/// to close (1013, as a client too slow to read: they reconnect and get a fresh state).
pub const MAX_PENDING_FRAMES: usize = 100_000;

/// Adds the app's fields to presences before clients (and [`Presence::list`]) see them.
///
/// `presences` is `{key: {"metas": [...]}, ...}`; add fields next to `metas` (for instance
/// `"user": {...}` looked up by key). Write it as an `async fn`; the future must be `Send`.
///
/// [`Presence::list`]: crate::presence::Presence::list
pub trait Fetch: Send + Sync + 'static {
    /// Adds fields to the entries of `presences`, all keys of one frame of `topic` at once.
    fn fetch(
        &self,
        topic: &str,
        presences: &mut Map<String, Value>,
    ) -> impl Future<Output = ()> + Send;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Fetch`] in object-safe form.
pub trait DynFetch: Send + Sync {
    /// [`Fetch::fetch`], boxed.
    fn fetch_boxed<'a>(
        &'a self,
        topic: &'a str,
        presences: &'a mut Map<String, Value>,
    ) -> BoxFuture<'a, ()>;
}

impl<F: Fetch> DynFetch for F {
    fn fetch_boxed<'a>(
        &'a self,
        topic: &'a str,
        presences: &'a mut Map<String, Value>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.fetch(topic, presences))
    }
}

/// A fetch hook as the node holds it.
pub type FetchHook = Arc<dyn DynFetch>;

/// Runs `hook` over `presences` (a `{key: {"metas": [...]}}` map), keeping what it must not
/// change: after it, every key listed has its own `metas` and nothing else is listed.
pub async fn fetch(hook: &dyn DynFetch, topic: &str, presences: &mut Map<String, Value>) {
    if presences.is_empty() {
        return;
    }
    let original = presences.clone();
    let call = AssertUnwindSafe(hook.fetch_boxed(topic, presences)).catch_unwind();
    match tokio::time::timeout(FETCH_TIMEOUT, call).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => {
            tracing::error!(
                topic,
                "the fetch hook panicked; presences sent without its fields"
            );
            *presences = original;
            return;
        }
        Err(_) => {
            tracing::warn!(
                topic,
                "the fetch hook timed out; presences sent without its fields"
            );
            *presences = original;
            return;
        }
    }
    let mut fetched = std::mem::take(presences);
    for (key, entry) in original {
        let metas = entry
            .get("metas")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        let entry = match fetched.remove(&key) {
            Some(Value::Object(mut fields)) => {
                fields.insert("metas".into(), metas);
                Value::Object(fields)
            }
            _ => entry,
        };
        presences.insert(key, entry);
    }
}

/// One subscriber of a frame.
#[derive(Debug, Clone)]
pub(super) struct Recipient {
    pub(super) serializer: Serializer,
    pub(super) outbox: Outbox,
}

/// A presence frame waiting for the hook.
#[derive(Debug)]
pub(super) enum Frame {
    /// `presence_state` for joiners that share one listing of the room: their join_refs, in
    /// the order of the item's recipients.
    State {
        join_refs: Vec<Option<String>>,
        listing: Arc<Listing>,
    },
    /// `presence_diff` for the topic's subscribers at the time of the change.
    Diff(TopicDiff),
}

#[derive(Debug)]
struct Item {
    topic: Arc<str>,
    frame: Frame,
    recipients: Vec<Recipient>,
}

/// The fan-out's side of the stage.
#[derive(Clone)]
pub(super) struct Stage {
    items: mpsc::UnboundedSender<Item>,
    pending: Arc<AtomicU64>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").finish_non_exhaustive()
    }
}

impl Stage {
    /// Starts the stage task for `hook`; frames it encodes are counted in `frames_encoded`.
    pub(super) fn spawn(hook: FetchHook, frames_encoded: Arc<AtomicU64>) -> Stage {
        let (items, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(hook, rx, pending.clone(), frames_encoded));
        Stage { items, pending }
    }

    /// Queues a frame of `topic` for `recipients`, after every earlier frame of the topic.
    pub(super) fn send(&self, topic: Arc<str>, frame: Frame, recipients: Vec<Recipient>) {
        if recipients.is_empty() {
            return;
        }
        if self.pending.load(Ordering::Relaxed) >= MAX_PENDING_FRAMES as u64 {
            tracing::warn!(
                topic = &*topic,
                "fetch hook backlog full; closing the frame's recipients"
            );
            for r in &recipients {
                r.outbox.overflow();
            }
            return;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        let item = Item {
            topic,
            frame,
            recipients,
        };
        let _ = self.items.send(item);
    }
}

/// Fetches, renders and delivers one item; returns its topic so the next one can start.
async fn process(hook: FetchHook, item: Item, frames_encoded: Arc<AtomicU64>) -> Arc<str> {
    let topic = item.topic;
    match item.frame {
        Frame::State { join_refs, listing } => {
            // One fetch and one rendering for every joiner of the item; each frame is its own
            // head (with its join_ref) around the shared payload.
            let mut presences = as_map(presences_value(&listing));
            fetch(&*hook, &topic, &mut presences).await;
            let payload = TextBytes::from(Value::Object(presences).to_string());
            for (join_ref, r) in join_refs.iter().zip(&item.recipients) {
                frames_encoded.fetch_add(1, Ordering::Relaxed);
                r.outbox.deliver(WireFrame::push_json(
                    r.serializer,
                    join_ref.as_deref(),
                    &topic,
                    EVENT_PRESENCE_STATE,
                    &payload,
                ));
            }
        }
        Frame::Diff(diff) => {
            let mut joins = as_map(presences_value(&diff.joins));
            let mut leaves = as_map(presences_value(&diff.leaves));
            fetch(&*hook, &topic, &mut joins).await;
            fetch(&*hook, &topic, &mut leaves).await;
            let mut payload = Map::new();
            payload.insert("joins".into(), Value::Object(joins));
            payload.insert("leaves".into(), Value::Object(leaves));
            let payload = Value::Object(payload).to_string();
            // One encoding per serializer, shared by every subscriber.
            let mut cache: [Option<WireFrame>; 2] = [None, None];
            for r in &item.recipients {
                let slot = match r.serializer {
                    Serializer::V1Json => &mut cache[0],
                    Serializer::V2 => &mut cache[1],
                };
                let frame = slot.get_or_insert_with(|| {
                    frames_encoded.fetch_add(1, Ordering::Relaxed);
                    let text =
                        r.serializer
                            .encode_push_json(None, &topic, EVENT_PRESENCE_DIFF, &payload);
                    WireFrame::Text(text.into())
                });
                r.outbox.deliver(frame.clone());
            }
        }
    }
    topic
}

fn as_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Adds `item`'s joiners to `last` when both are `presence_state`s of the same listing;
/// otherwise gives `item` back.
fn merge_state(last: Option<&mut Item>, item: Item) -> Option<Item> {
    let Some(Item {
        frame: Frame::State { join_refs, listing },
        recipients,
        ..
    }) = last
    else {
        return Some(item);
    };
    match item.frame {
        Frame::State {
            join_refs: more,
            listing: theirs,
        } if Arc::ptr_eq(listing, &theirs) => {
            join_refs.extend(more);
            recipients.extend(item.recipients);
            None
        }
        frame => Some(Item { frame, ..item }),
    }
}

/// The stage task: one item in flight per topic, the rest of the topic's items queued behind
/// it in order.
async fn run(
    hook: FetchHook,
    mut items: mpsc::UnboundedReceiver<Item>,
    pending: Arc<AtomicU64>,
    frames_encoded: Arc<AtomicU64>,
) {
    let mut waiting: HashMap<Arc<str>, VecDeque<Item>> = HashMap::new();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            item = items.recv(), if open => match item {
                Some(item) => match waiting.get_mut(&item.topic) {
                    // The topic has an item in flight: this one waits its turn, or joins the
                    // last one waiting if both are states of the same listing (joiners of one
                    // window: one fetch serves them all).
                    Some(queue) => {
                        if let Some(item) = merge_state(queue.back_mut(), item) {
                            queue.push_back(item);
                        } else {
                            pending.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        waiting.insert(item.topic.clone(), VecDeque::new());
                        in_flight.push(process(hook.clone(), item, frames_encoded.clone()));
                    }
                },
                None => open = false,
            },
            Some(topic) = in_flight.next() => {
                pending.fetch_sub(1, Ordering::Relaxed);
                match waiting.get_mut(&topic).and_then(VecDeque::pop_front) {
                    Some(next) => in_flight.push(process(hook.clone(), next, frames_encoded.clone())),
                    None => {
                        waiting.remove(&topic);
                    }
                }
            }
            else => break,
        }
    }
}
