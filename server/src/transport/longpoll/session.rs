//! One long-poll session: the socket machine it runs over channels, the frames queued for the
//! client's next poll, the poll itself (one deadline per poll, however many wait), and the
//! expiry of a session nobody polls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use futures_util::StreamExt;
use rollcall_core::protocol::Frame;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::frame::{FromClient, ToClient, WireFrame};
use crate::metrics::OpenConnection;
use crate::outbox;
use crate::security::limits::ConnHold;
use crate::socket::{self, SocketContext};
use crate::transport::decode_lenient_base64;

/// Most ndjson lines one POST may carry; the rest are ignored (Phoenix's CVE hardening).
pub const MAX_NDJSON_LINES: usize = 100;

/// One session: the ends of its machine's channels, and when it was last polled.
pub(super) struct Session {
    pub(super) inbound: mpsc::Sender<FromClient>,
    outgoing: tokio::sync::Mutex<mpsc::UnboundedReceiver<ToClient>>,
    /// What the frames waiting for a poll cost ([`outbox::cost`]), against `max_queued_bytes`.
    queued: Arc<AtomicUsize>,
    last_poll: Mutex<Instant>,
    polling: AtomicUsize,
}

/// The long-poll sessions of this node, by token.
#[derive(Default)]
pub(super) struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    pub(super) fn get(&self, token: &str) -> Option<Arc<Session>> {
        self.map.lock().ok()?.get(token).cloned()
    }

    fn insert(&self, token: String, session: Arc<Session>) {
        if let Ok(mut map) = self.map.lock() {
            map.insert(token, session);
        }
    }

    fn remove(&self, token: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(token);
        }
    }

    /// Number of live sessions.
    pub(super) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// A new session token: 128 random bits, then the owning node's name (base64url), so any node
/// can tell where a request must go.
fn new_token(node: &str) -> String {
    format!(
        "{:032x}.{}",
        rand::random::<u128>(),
        URL_SAFE_NO_PAD.encode(node)
    )
}

/// The node that owns the session of `token`, if the token names one.
pub(super) fn owner_of(token: &str) -> Option<String> {
    let (_, node) = token.split_once('.')?;
    let node = URL_SAFE_NO_PAD.decode(node).ok()?;
    String::from_utf8(node).ok().filter(|n| !n.is_empty())
}

/// Starts the machine of an admitted connection as a new session of this node and returns the
/// session's token. The machine runs over channels: frames POSTed go in, frames queued for the
/// client wait for its next poll. `slot` and `counted` live as long as the machine.
pub(super) fn start(
    sessions: &Arc<Sessions>,
    mut context: SocketContext,
    slot: ConnHold,
    counted: OpenConnection,
) -> String {
    let config = context.node.config.clone();
    // Long-poll clients send no heartbeats; the session expiry below replaces the idle timeout.
    context.idle_timeout = None;
    let token = new_token(context.node.tracker.node());
    let (in_tx, in_rx) = mpsc::channel(MAX_NDJSON_LINES);
    // Bounded like a WebSocket's queue: frames the client has not polled count against
    // `max_queued_bytes`, and past it the session ends (its polls then answer 410 and the
    // client reconnects for a fresh presence_state) instead of the node holding them all.
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let session = Arc::new(Session {
        inbound: in_tx,
        outgoing: tokio::sync::Mutex::new(out_rx),
        queued: queued.clone(),
        last_poll: Mutex::new(Instant::now()),
        polling: AtomicUsize::new(0),
    });
    sessions.insert(token.clone(), session.clone());

    let stream = futures_util::stream::unfold(in_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .take_until(kill_rx);
    // Never waits: a full queue fails the write, which ends the machine (the session expiry
    // could not reach a machine blocked in a write).
    let max_bytes = config.max_queued_bytes;
    let sink = futures_util::sink::unfold(
        (out_tx, queued),
        move |(tx, queued), item: ToClient| async move {
            if let ToClient::Frame(frame) = &item {
                let cost = outbox::cost(frame);
                let before = queued.fetch_add(cost, Ordering::AcqRel);
                if before > 0 && before + cost > max_bytes {
                    return Err(());
                }
            }
            tx.send(item).map_err(|_| ())?;
            Ok::<_, ()>((tx, queued))
        },
    );
    tokio::spawn(async move {
        let _ = socket::run(context, Box::pin(sink), Box::pin(stream)).await;
        drop(slot);
        drop(counted);
        // The session stays listed: its next poll reads the close and answers 410, which
        // phoenix.js (holding a session token) takes as "session gone" and reconnects with
        // fresh params. An unpolled one is dropped by the expiry below.
    });

    // Expiry: closed and forgotten when no poll was seen for 1.5 × window.
    let expiry = config.longpoll_window.mul_f64(1.5);
    spawn_expiry(&session, sessions.clone(), token.clone(), expiry, kill_tx);
    token
}

/// Closes (`kill`) and forgets the session of `token` once it has not been polled for
/// `expiry`: checked when that much time has passed since its last poll ended, not on a fixed
/// period, so that it goes at 1.5 × window and not up to twice that.
fn spawn_expiry(
    session: &Arc<Session>,
    sessions: Arc<Sessions>,
    token: String,
    expiry: Duration,
    kill: oneshot::Sender<()>,
) {
    let weak = Arc::downgrade(session);
    tokio::spawn(async move {
        loop {
            let next = {
                let Some(session) = weak.upgrade() else {
                    return;
                };
                let idle_since = session
                    .last_poll
                    .lock()
                    .map(|t| *t)
                    .unwrap_or_else(|_| Instant::now());
                if session.polling.load(Ordering::SeqCst) > 0 {
                    // A poll's end stamps `last_poll`; look again one expiry from now.
                    Instant::now() + expiry
                } else if idle_since.elapsed() >= expiry {
                    tracing::debug!("closing inactive long-poll session");
                    let _ = kill.send(());
                    sessions.remove(&token);
                    return;
                } else {
                    idle_since + expiry
                }
            };
            tokio::time::sleep_until(next).await;
        }
    });
}

fn frame_text(frame: &WireFrame) -> String {
    match frame {
        WireFrame::Text(t) => t.as_str().to_string(),
        // One string per frame in the response: the pieces are joined here, as it is written.
        WireFrame::Parts(p) => p.to_text(),
        WireFrame::Binary(b) => STANDARD.encode(b),
    }
}

/// Counts a poll of `session` while it runs, and stamps the session as polled when it ends:
/// dropped even when the poll's request is abandoned (the client went away and its handler was
/// cancelled), so the expiry never waits for a poll that will not finish.
struct PollGuard<'a>(&'a Session);

impl<'a> PollGuard<'a> {
    fn new(session: &'a Session) -> Self {
        session.polling.fetch_add(1, Ordering::SeqCst);
        PollGuard(session)
    }
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last_poll.lock() {
            *t = Instant::now();
        }
        self.0.polling.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits for the session's frames (up to the window) and returns the answer's body.
pub(super) async fn poll(
    window: Duration,
    sessions: &Sessions,
    token: String,
    session: Arc<Session>,
) -> Value {
    let guard = PollGuard::new(&session);
    // One deadline for the whole poll, the wait for a concurrent poll of the same session
    // included: a relayed poll is answered before the relaying node gives up on it, and polls
    // piling up on one session end with the window instead of one window after another.
    let deadline = Instant::now() + window;
    let mut messages = Vec::new();
    let mut gone = false;
    if let Ok(mut rx) = tokio::time::timeout_at(deadline, session.outgoing.lock()).await {
        let take = |item: Option<ToClient>, messages: &mut Vec<String>| match item {
            Some(ToClient::Frame(f)) => {
                session.queued.fetch_sub(outbox::cost(&f), Ordering::AcqRel);
                messages.push(frame_text(&f));
                true
            }
            Some(ToClient::Pong(_)) => true,
            Some(ToClient::Close { .. }) | None => false,
        };
        loop {
            match rx.try_recv() {
                Ok(item) => {
                    if !take(Some(item), &mut messages) {
                        gone = true;
                        break;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        if messages.is_empty() && !gone {
            // Nothing queued: wait for the first frame, up to the deadline (then 204).
            if let Ok(item) = tokio::time::timeout_at(deadline, rx.recv()).await {
                if !take(item, &mut messages) {
                    gone = true;
                }
                while let Ok(item) = rx.try_recv() {
                    if !take(Some(item), &mut messages) {
                        gone = true;
                        break;
                    }
                }
            }
        }
    }
    drop(guard);
    if gone && messages.is_empty() {
        sessions.remove(&token);
        return json!({"status": 410});
    }
    // A session that ended with frames still to deliver stays listed: this poll carries the
    // frames, the next one gets 410 (and not a new session, which its expired token or the
    // penalty would refuse with 403).
    let status = if messages.is_empty() { 204 } else { 200 };
    json!({"status": status, "token": token, "messages": messages})
}

/// Splits a POST body into frames for the socket machine. ndjson: at most
/// [`MAX_NDJSON_LINES`] non-empty lines, a line starting with `[` is a JSON text frame, any other
/// is base64 of a binary frame (an undecodable one becomes an empty binary frame, which the
/// machine refuses with a reason). Otherwise the whole body is one text frame. Invalid UTF-8 is
/// replaced, so the decoder sees it and refuses the frame.
pub fn parse_body(ndjson: bool, body: &[u8]) -> Vec<FromClient> {
    let text = String::from_utf8_lossy(body);
    if !ndjson {
        return vec![FromClient::Frame(Frame::Text(text.into_owned()))];
    }
    text.lines()
        .filter(|l| !l.is_empty())
        .take(MAX_NDJSON_LINES)
        .map(|line| {
            if line.starts_with('[') {
                FromClient::Frame(Frame::Text(line.to_string()))
            } else {
                match decode_lenient_base64(line.trim()) {
                    Some(bytes) => FromClient::Frame(Frame::Binary(bytes)),
                    None => FromClient::Frame(Frame::Binary(Vec::new())),
                }
            }
        })
        .collect()
}

/// Hands `frames` to a session's machine in order; the POST's status: `200` when all were
/// taken, `410` when the machine is gone, `408` when one was not taken within `window` (the
/// rest are dropped; phoenix.js reconnects on any status but 200).
pub(super) async fn deliver(
    inbound: &mpsc::Sender<FromClient>,
    frames: Vec<FromClient>,
    window: Duration,
) -> u16 {
    for frame in frames {
        match tokio::time::timeout(window, inbound.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return 410,
            Err(_) => return 408,
        }
    }
    200
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> FromClient {
        FromClient::Frame(Frame::Text(r#"[null,"1","phoenix","heartbeat",{}]"#.into()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_the_machine_does_not_take_within_the_window_gets_408() {
        // A machine busy elsewhere: its inbound queue has room for one frame and nobody reads.
        let (tx, _busy) = mpsc::channel(1);
        let window = Duration::from_secs(10);
        let started = Instant::now();
        assert_eq!(
            deliver(&tx, vec![heartbeat(), heartbeat()], window).await,
            408
        );
        assert_eq!(started.elapsed(), window);
    }

    /// A session as `open` makes it, with the machine's ends handed to the test.
    fn session() -> (
        Arc<Session>,
        mpsc::UnboundedSender<ToClient>,
        mpsc::Receiver<FromClient>,
    ) {
        let (in_tx, in_rx) = mpsc::channel(MAX_NDJSON_LINES);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            inbound: in_tx,
            outgoing: tokio::sync::Mutex::new(out_rx),
            queued: Arc::default(),
            last_poll: Mutex::new(Instant::now()),
            polling: AtomicUsize::new(0),
        });
        (session, out_tx, in_rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_poll_does_not_keep_its_session_from_expiring() {
        let (session, _out, _in) = session();
        let sessions = Arc::new(Sessions::default());
        let polled = session.clone();
        let task = tokio::spawn(async move {
            poll(Duration::from_secs(10), &sessions, "t".into(), polled).await;
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(session.polling.load(Ordering::SeqCst), 1);
        // The client went away: axum drops the handler's future mid-poll.
        task.abort();
        let _ = task.await;
        assert_eq!(session.polling.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_queued_behind_another_answers_within_one_window() {
        let (session, _out, _in) = session();
        let (sessions, window) = (Arc::new(Sessions::default()), Duration::from_secs(10));
        let started = Instant::now();
        let polls: Vec<_> = (0..3)
            .map(|_| {
                let (sessions, session) = (sessions.clone(), session.clone());
                tokio::spawn(async move { poll(window, &sessions, "t".into(), session).await })
            })
            .collect();
        for p in polls {
            assert_eq!(p.await.unwrap()["status"], 204);
        }
        assert_eq!(started.elapsed(), window);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_expires_one_and_a_half_windows_after_its_last_poll() {
        let window = Duration::from_secs(10);
        let expiry = window.mul_f64(1.5);
        let (session, _out, _in) = session();
        let sessions = Arc::new(Sessions::default());
        sessions.insert("t".into(), session.clone());
        let (kill, mut killed) = oneshot::channel();
        spawn_expiry(&session, sessions.clone(), "t".into(), expiry, kill);
        // Polled 5 s after opening: it may stay until 5 s + 15 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        *session.last_poll.lock().unwrap() = Instant::now();
        tokio::time::sleep(expiry - Duration::from_millis(1)).await;
        assert_eq!(sessions.len(), 1, "still within its expiry");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(sessions.len(), 0, "gone 1.5 windows after its last poll");
        assert_eq!(killed.try_recv(), Ok(()));
    }

    #[tokio::test]
    async fn a_post_to_a_session_whose_machine_ended_gets_410_and_one_taken_gets_200() {
        let (tx, rx) = mpsc::channel(4);
        let window = Duration::from_secs(10);
        assert_eq!(
            deliver(&tx, vec![heartbeat(), heartbeat()], window).await,
            200
        );
        drop(rx);
        assert_eq!(deliver(&tx, vec![heartbeat()], window).await, 410);
    }
}
