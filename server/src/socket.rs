//! The per-connection machine: decodes frames, keeps the joined channels and their join refs,
//! answers heartbeats, applies the join/leave/duplicate-join/stale-join-ref rules and the
//! limits, runs each channel's handler ([`crate::handler`]) and writes what it answers, and
//! closes idle connections.
//!
//! It is generic over a [`Sink`] of [`ToClient`] and a [`Stream`] of [`FromClient`], so the
//! WebSocket and long-poll transports drive the same code, and unit tests drive it with
//! channels. What it needs from the node (configuration, tracker, counters, the abuse penalty
//! box, the shutdown signal) comes in a [`NodeContext`]; the connect checks that run before a
//! machine starts are in [`admission`](crate::admission).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use rollcall_core::protocol::{
    Message, Outbound, Payload, Serializer, HEARTBEAT_EVENT, HEARTBEAT_TOPIC, PHX_JOIN, PHX_LEAVE,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::channel::{self, PolicyError, EVENT_TRACK};
use crate::config::Config;
use crate::frame::{
    close_reason, CloseReason, FromClient, ToClient, WireFrame, CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN_LATER,
    TOKEN_EXPIRED,
};
use crate::handler::{meta_object, ChannelSocket, DynChannel, Exit, Routes, SocketParts};
use crate::joinhook::{Decision, JoinHook};
use crate::metrics::{JoinRefusal, Metrics};
use crate::outbox::{outbox, Outbox, OutboxReceiver};
use crate::presence::Presence;
use crate::security::auth::{time_until_unix, AuthError, Identity};
use crate::security::limits::{
    default_max_conns, AddressLimiter, ConnCounts, PenaltyBox, RateLimit, TokenBucket,
};
use crate::tracker::{ConnId, Subscriber, Tracker};

/// What every connection of one node shares: the configuration, the tracker, the counters,
/// the abuse penalty box and live connections per address (state of the running server, shared
/// by cloning), and the shutdown signal.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// Limits and rooms.
    pub config: Arc<Config>,
    /// The node's tracker.
    pub tracker: Tracker,
    /// The node's presence for application code (the tracker with the app's fetch hook).
    pub presence: Presence,
    /// Which channel handler serves which topics.
    pub routes: Arc<Routes>,
    /// Asked before every join, when configured.
    pub join_hook: Option<Arc<JoinHook>>,
    /// The node's counters.
    pub metrics: Arc<Metrics>,
    /// Presence keys refused for now, after an abuse close (1008).
    pub penalty_box: PenaltyBox,
    /// Open connections in total and per client address (`--max-conns`,
    /// `--max-conns-per-ip`).
    pub conn_counts: ConnCounts,
    /// Long-poll sessions opened per client address (`--longpoll-open-rate`).
    pub longpoll_opens: AddressLimiter,
    /// Presence API requests per client address (`--api-rate`).
    pub api_requests: AddressLimiter,
    /// Turns `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl NodeContext {
    /// The context of a node serving `config` with `tracker`, counting into `metrics`, with an
    /// empty penalty box, no connection counted yet, and the node's connection limit (`None` in
    /// the config: from the open-file limit). Its routes are the presence rooms of
    /// `config.rooms`; replace [`NodeContext::routes`] to serve other handlers.
    pub fn new(
        config: Arc<Config>,
        tracker: Tracker,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let max_conns = config.security.max_conns.unwrap_or_else(default_max_conns);
        NodeContext {
            longpoll_opens: AddressLimiter::new(config.security.longpoll_open_rate),
            api_requests: AddressLimiter::new(config.security.api_rate),
            routes: Arc::new(Routes::presence_rooms(&config.rooms, config.max_meta_size)),
            presence: Presence::new(tracker.clone()),
            join_hook: None,
            config,
            tracker,
            metrics,
            penalty_box: PenaltyBox::default(),
            conn_counts: ConnCounts::new(max_conns),
            shutdown,
        }
    }
}

/// Who is on the other end of a connection, as learned at connect time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectInfo {
    /// The query parameters of the connect request (`vsn`, `user_id`, ...).
    pub params: HashMap<String, String>,
    /// The token a phoenix.js client passed as `authToken` (not validated yet).
    pub auth_token: Option<Vec<u8>>,
}

impl ConnectInfo {
    /// The connect token: phoenix.js `authToken` (sub-protocol or long-poll header) first, else
    /// the `token` socket param.
    pub fn token(&self) -> Option<&[u8]> {
        self.auth_token
            .as_deref()
            .or_else(|| self.params.get("token").map(String::as_bytes))
    }
}

/// Everything one connection's machine needs.
#[derive(Debug, Clone)]
pub struct SocketContext {
    /// The connection's id.
    pub conn: ConnId,
    /// Its serializer (from `vsn`).
    pub serializer: Serializer,
    /// What it said at connect time.
    pub info: ConnectInfo,
    /// Its presence key (the token's `sub`; in open mode `user_id`, or `anon-<random>`).
    pub key: String,
    /// The verified token, when the server requires one.
    pub identity: Option<Identity>,
    /// What it shares with the node's other connections.
    pub node: NodeContext,
    /// Close after this long without inbound data; `None` for transports with their own expiry.
    pub idle_timeout: Option<Duration>,
    /// When the connection's token expires (set by [`SocketContext::with_identity`]); the
    /// connection is closed with 1008 `token expired` then.
    pub token_expiry: Option<Instant>,
}

impl SocketContext {
    /// A context for a new connection: a fresh id, the key from `user_id`.
    pub fn new(serializer: Serializer, info: ConnectInfo, node: NodeContext) -> Self {
        let key = info
            .params
            .get("user_id")
            .filter(|k| !k.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("anon-{:016x}", rand::random::<u64>()));
        SocketContext {
            conn: ConnId::next(),
            serializer,
            idle_timeout: Some(node.config.idle_timeout),
            info,
            key,
            identity: None,
            node,
            token_expiry: None,
        }
    }

    /// Binds the connection to a verified identity: its `sub` becomes the presence key, whatever
    /// `user_id` said, and the connection ends when the token expires.
    pub fn with_identity(mut self, identity: Option<Identity>) -> Self {
        if let Some(id) = &identity {
            self.key = id.key.clone();
            // The token's clock is the wall clock; the machine's timers run on tokio's.
            // An `exp` too far away to represent never comes.
            self.token_expiry = id
                .valid_until()
                .and_then(|at| Instant::now().checked_add(time_until_unix(at)));
        }
        self.identity = identity;
        self
    }
}

/// The reason in the error reply to a message over a rate limit.
pub const RATE_LIMITED: &str = "rate limited";
/// The reason in the error reply to a join of a room at `--max-room-members`.
pub const ROOM_FULL: &str = "room full";

/// The reason in the error reply to a join whose handler panicked (Phoenix's text).
pub const JOIN_CRASHED: &str = "join crashed";
/// The reason in the `phx_error` of a channel whose handler panicked (Phoenix's text).
pub const CHANNEL_CRASH: &str = "channel_crash";

/// One joined channel: its join_ref, its handler and the handler's view of it.
struct JoinedChannel {
    join_ref: Option<String>,
    handler: Arc<dyn DynChannel>,
    socket: ChannelSocket,
}

/// How long a connection's closing waits for its handlers' `terminate` calls in all.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a close frame may take to write before the connection is dropped without it.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most queued frames written with one flush.
const MAX_WRITE_BATCH: usize = 64;

struct Machine<S> {
    ctx: SocketContext,
    sink: S,
    /// Boxed: a map allocates room for several entries at its first insert, and a joined
    /// channel is half a kilobyte, which an idle connection would carry three times over.
    channels: HashMap<String, Box<JoinedChannel>>,
    outbox: Outbox,
    /// The outbox's other end: the frames other tasks queued, and whether one did not fit.
    queued: Arc<OutboxReceiver>,
    /// The connect params, shared by every channel's socket.
    params: Arc<HashMap<String, String>>,
    events: TokenBucket,
    metas: TokenBucket,
    /// Joins up to the channel limit draw from here first, then from `events` (see
    /// [`join_allowance`]).
    joins: TokenBucket,
    /// Rate-limited messages since the last accepted one.
    limited_in_a_row: u32,
}

/// The bucket joins up to the channel limit draw from before the event bucket: as many as the
/// connection may hold channels, refilled at the event rate. A client that reconnects rejoins
/// all its channels at once, and neither that nor its next messages are rate-limited below the
/// channel limit.
fn join_allowance(config: &Config) -> RateLimit {
    RateLimit {
        per_second: config.security.event_rate.per_second,
        burst: u32::try_from(config.max_channels).unwrap_or(u32::MAX),
    }
}

/// Runs one connection until it closes; returns why, and the sink and stream (so that a
/// transport can still answer a client's close). Frames other tasks queue for this connection
/// are written to `sink` between inbound frames (and while a handler is busy).
///
/// The machine is built before the returned future starts, so the future holds the
/// connection's context once: an idle connection's task is mostly this future.
pub fn run<S, R>(
    mut ctx: SocketContext,
    sink: S,
    stream: R,
) -> impl std::future::Future<Output = (CloseReason, S, R)>
where
    S: Sink<ToClient> + Unpin,
    R: Stream<Item = FromClient> + Unpin,
{
    let (outbox, queued) = outbox(ctx.node.config.max_queued_bytes);
    let now = Instant::now();
    let events = TokenBucket::new(ctx.node.config.security.event_rate, now);
    let metas = TokenBucket::new(ctx.node.config.security.meta_rate, now);
    let joins = TokenBucket::new(join_allowance(&ctx.node.config), now);
    // Moved, not copied: from here on the channels' sockets are what reads them, and the
    // token was checked at connect.
    let params = Arc::new(std::mem::take(&mut ctx.info.params));
    ctx.info.auth_token = None;
    let machine = Machine {
        ctx,
        sink,
        channels: HashMap::new(),
        outbox,
        queued: Arc::new(queued),
        params,
        events,
        metas,
        joins,
        limited_in_a_row: 0,
    };
    machine.run(stream)
}

impl<S: Sink<ToClient> + Unpin> Machine<S> {
    async fn run<R>(mut self, mut stream: R) -> (CloseReason, S, R)
    where
        R: Stream<Item = FromClient> + Unpin,
    {
        let queued = self.queued.clone();
        let mut shutdown = self.ctx.node.shutdown.clone();
        let conn = self.ctx.conn;
        let idle_timeout = self.ctx.idle_timeout;
        let token_expiry = self.ctx.token_expiry;
        let far_future = Duration::from_secs(86_400 * 365);
        let mut deadline = Instant::now() + idle_timeout.unwrap_or(far_future);
        // Whether the connection's presences were already removed.
        let mut left = false;
        // Whether the tracker takes more: while a shard's queue is over its bound, the next
        // frame waits in the socket (queued frames are still written).
        let tracker = self.ctx.node.tracker.clone();
        let mut tracker_has_room = true;
        // Every await in the arms below is boxed: inline, the deepest of them (a write, a
        // close, handling a message) would set the size of every idle connection's task.
        let reason = loop {
            if *shutdown.borrow() {
                break Box::pin(self.close(CLOSE_GOING_AWAY, "server shutting down")).await;
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    break Box::pin(self.close(CLOSE_GOING_AWAY, "server shutting down")).await;
                }
                _ = queued.overflowed() => {
                    break Box::pin(self.too_slow()).await;
                }
                _ = queued.ready() => {
                    if let Err(reason) = Box::pin(self.write_queued()).await {
                        break reason;
                    }
                }
                _ = tracker.ready(), if !tracker_has_room => tracker_has_room = true,
                inbound = stream.next(), if tracker_has_room => {
                    deadline = Instant::now() + idle_timeout.unwrap_or(far_future);
                    match inbound {
                        None => break CloseReason::ClientGone,
                        Some(inbound) => {
                            if let Some(reason) = Box::pin(self.handle_inbound(inbound)).await {
                                break reason;
                            }
                        }
                    }
                    tracker_has_room = tracker.has_room();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(conn = conn.0, "closing idle connection");
                    break Box::pin(self.close(CLOSE_GOING_AWAY, "idle timeout")).await;
                }
                _ = tokio::time::sleep_until(token_expiry.unwrap_or(deadline)), if token_expiry.is_some() => {
                    tracing::info!(conn = conn.0, key = ?self.ctx.key, "closing: token expired");
                    // Leave before the close: the client reconnects at once with a fresh token
                    // (phoenix.js retries on any code but 1000), and in the tracker's order
                    // its rejoin must follow this leave.
                    self.ctx.node.tracker.disconnect(conn);
                    left = true;
                    break Box::pin(self.close(CLOSE_POLICY_VIOLATION, TOKEN_EXPIRED)).await;
                }
            }
        };
        Box::pin(self.terminate_all()).await;
        if !left {
            self.ctx.node.tracker.disconnect(conn);
        }
        self.ctx.node.metrics.closed(&reason);
        (reason, self.sink, stream)
    }
}

/// Runs a write, ending the connection with 1013 if the client takes nothing within `limit`
/// (no close frame: it could not be written either), or when its outgoing queue overflows
/// meanwhile (a close frame is attempted, bounded).
///
/// The write is tried once first: most writes fit in the socket's buffer and finish at once,
/// and then neither the timer nor the overflow watch is set up (a fan-out runs this once per
/// receiver, so that is two registrations and their removal saved per delivery).
async fn bounded_write<E>(
    limit: Option<Duration>,
    conn: ConnId,
    queued: &OutboxReceiver,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), WriteStop> {
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll_unpin(cx))).await;
    let sink_failed = |_| WriteStop::Ended(CloseReason::SinkFailed);
    if let Poll::Ready(sent) = first {
        return sent.map_err(sink_failed);
    }
    let write = async {
        match limit {
            Some(limit) => match tokio::time::timeout(limit, write).await {
                Ok(sent) => sent.map_err(sink_failed),
                Err(_) => {
                    tracing::info!(conn = conn.0, "closing: client not reading");
                    Err(WriteStop::Ended(CloseReason::Closed(
                        CLOSE_TRY_AGAIN_LATER,
                        "client too slow: not reading".into(),
                    )))
                }
            },
            None => write.await.map_err(sink_failed),
        }
    };
    tokio::select! {
        sent = write => sent,
        _ = queued.overflowed() => Err(WriteStop::Overflow),
    }
}

/// Why a write did not finish.
enum WriteStop {
    /// The connection is over, for this reason.
    Ended(CloseReason),
    /// The outgoing queue overflowed while the write waited: close with 1013.
    Overflow,
}

/// A panic's message, for the log.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

impl<S: Sink<ToClient> + Unpin> Machine<S> {
    /// Sends a close frame and reports the reason. A client that stopped reading may never take
    /// the frame: the attempt is bounded, then the connection is dropped anyway.
    async fn close(&mut self, code: u16, reason: &str) -> CloseReason {
        let reason = close_reason(reason);
        let frame = ToClient::Close {
            code,
            reason: reason.clone(),
        };
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.sink.send(frame)).await;
        CloseReason::Closed(code, reason)
    }

    /// Closes a client that does not keep up with its frames (1013).
    async fn too_slow(&mut self) -> CloseReason {
        tracing::info!(
            conn = self.ctx.conn.0,
            "closing: client too slow, outgoing queue full"
        );
        self.close(
            CLOSE_TRY_AGAIN_LATER,
            "client too slow: outgoing queue full",
        )
        .await
    }

    /// Writes what is queued (up to a batch) with one flush: one syscall for a backlog instead
    /// of one per frame. The batch's bytes stay counted until written, so a client that stops
    /// reading holds at most `max_queued_bytes`, in flight or queued; a write it blocks still
    /// ends when the queue overflows.
    async fn write_queued(&mut self) -> Result<(), CloseReason> {
        let queued = self.queued.clone();
        let mut batch = Vec::new();
        let taken = queued.take(MAX_WRITE_BATCH, &mut batch);
        for frame in &batch {
            self.ctx.node.metrics.frame_out(frame);
        }
        let sent = self.write_all(batch).await;
        queued.release(taken);
        sent
    }

    /// Awaits `work` (a handler call) while writing what other tasks queue meanwhile, so a
    /// slow handler never makes the connection's queue overflow.
    async fn drive<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, CloseReason> {
        let mut work = std::pin::pin!(work);
        let queued = self.queued.clone();
        loop {
            tokio::select! {
                biased;
                done = &mut work => return Ok(done),
                _ = queued.overflowed() => return Err(self.too_slow().await),
                _ = queued.ready() => self.write_queued().await?,
            }
        }
    }

    /// Writes `item`, giving up once the client has taken nothing for as long as it may stay
    /// silent (the idle timeout), or when the outgoing queue overflows meanwhile: a client that
    /// stops reading would otherwise hold the machine in this write for ever, past its idle
    /// timeout, its token's expiry and the shutdown, and keep its presences listed.
    async fn write(&mut self, item: ToClient) -> Result<(), CloseReason> {
        let (limit, conn) = (self.ctx.idle_timeout, self.ctx.conn);
        let queued = self.queued.clone();
        let sent = bounded_write(limit, conn, &queued, self.sink.send(item)).await;
        self.settle(sent).await
    }

    /// Writes `frames` with one flush at the end, under the same bounds as [`Machine::write`].
    async fn write_all(&mut self, frames: Vec<WireFrame>) -> Result<(), CloseReason> {
        let (limit, conn) = (self.ctx.idle_timeout, self.ctx.conn);
        let queued = self.queued.clone();
        let sink = &mut self.sink;
        let all = async move {
            for frame in frames {
                sink.feed(ToClient::Frame(frame)).await?;
            }
            sink.flush().await
        };
        let sent = bounded_write(limit, conn, &queued, all).await;
        self.settle(sent).await
    }

    async fn settle(&mut self, sent: Result<(), WriteStop>) -> Result<(), CloseReason> {
        match sent {
            Ok(()) => Ok(()),
            Err(WriteStop::Ended(reason)) => Err(reason),
            Err(WriteStop::Overflow) => Err(self.too_slow().await),
        }
    }

    async fn send(&mut self, out: Outbound) -> Result<(), CloseReason> {
        match WireFrame::encode(self.ctx.serializer, &out) {
            Ok(frame) => {
                self.ctx.node.metrics.frame_out(&frame);
                self.write(ToClient::Frame(frame)).await
            }
            Err(e) => {
                tracing::warn!(conn = self.ctx.conn.0, "dropping unencodable frame: {e}");
                Ok(())
            }
        }
    }

    async fn send_all(&mut self, frames: Vec<Outbound>) -> Result<(), CloseReason> {
        for out in frames {
            self.send(out).await?;
        }
        Ok(())
    }

    async fn handle_inbound(&mut self, inbound: FromClient) -> Option<CloseReason> {
        match inbound {
            FromClient::Activity => None,
            FromClient::Ping(bytes) => self.write(ToClient::Pong(bytes)).await.err(),
            FromClient::Error(e) => {
                tracing::debug!(conn = self.ctx.conn.0, "transport ended: {e}");
                Some(CloseReason::ClientGone)
            }
            FromClient::Invalid(why) => {
                tracing::info!(conn = self.ctx.conn.0, "closing: {why}");
                Some(self.close(CLOSE_INVALID_DATA, &why).await)
            }
            FromClient::TooLarge(size) => {
                tracing::info!(
                    conn = self.ctx.conn.0,
                    "closing: frame of {size:?} bytes exceeds {}",
                    self.ctx.node.config.max_frame_size
                );
                let limit = self.ctx.node.config.max_frame_size;
                // The codec reports no size when it refused the frame itself.
                let reason = match size {
                    Some(size) => format!("frame too large: {size} bytes, limit {limit}"),
                    None => format!("frame too large: limit {limit} bytes"),
                };
                Some(self.close(CLOSE_TOO_BIG, &reason).await)
            }
            FromClient::Frame(frame) => {
                let size = match &frame {
                    rollcall_core::protocol::Frame::Text(t) => t.len(),
                    rollcall_core::protocol::Frame::Binary(b) => b.len(),
                };
                self.ctx.node.metrics.frame_in(size);
                if size > self.ctx.node.config.max_frame_size {
                    return Box::pin(self.handle_inbound(FromClient::TooLarge(Some(size)))).await;
                }
                match self.ctx.serializer.decode(&frame) {
                    Ok(msg) => {
                        let heartbeat =
                            msg.topic == HEARTBEAT_TOPIC && msg.event == HEARTBEAT_EVENT;
                        // A heartbeat costs one reply, as a refusal would: not limited.
                        let bucket = if heartbeat {
                            true
                        } else if msg.event == EVENT_TRACK {
                            // A meta update is both an event and a meta update.
                            let event_ok = self.events.take(Instant::now());
                            event_ok && self.metas.take(Instant::now())
                        } else if msg.event == PHX_JOIN && self.within_channel_limit(&msg.topic) {
                            self.joins.take(Instant::now()) || self.events.take(Instant::now())
                        } else {
                            self.events.take(Instant::now())
                        };
                        if bucket {
                            // A heartbeat proves nothing about the flood: only a message the
                            // limits let through ends a run of refusals.
                            if !heartbeat {
                                self.limited_in_a_row = 0;
                            }
                            self.handle_message(msg).await.err()
                        } else {
                            self.rate_limited(&msg).await.err()
                        }
                    }
                    Err(e) => {
                        tracing::info!(conn = self.ctx.conn.0, "closing: malformed frame: {e}");
                        Some(self.close(CLOSE_INVALID_DATA, &e.to_string()).await)
                    }
                }
            }
        }
    }

    /// Whether a join of `topic` stays within `--max-channels` (a join beyond it is refused by
    /// that name, and draws from the event bucket like any other message).
    fn within_channel_limit(&self, topic: &str) -> bool {
        self.channels.contains_key(topic) || self.channels.len() < self.ctx.node.config.max_channels
    }

    /// Answers a message over a limit; enough of them in a row close the connection (1008).
    async fn rate_limited(&mut self, msg: &Message) -> Result<(), CloseReason> {
        self.ctx.node.metrics.rate_limited.inc();
        self.limited_in_a_row = self.limited_in_a_row.saturating_add(1);
        let max = self.ctx.node.config.security.max_limited_in_a_row;
        if max > 0 && self.limited_in_a_row >= max {
            tracing::info!(
                conn = self.ctx.conn.0,
                key = ?self.ctx.key,
                "closing: {max} rate-limited messages in a row"
            );
            let penalty = self.ctx.node.config.security.abuse_penalty;
            if !penalty.is_zero() {
                self.ctx
                    .node
                    .penalty_box
                    .punish(&self.ctx.key, Instant::now() + penalty);
            }
            return Err(self
                .close(CLOSE_POLICY_VIOLATION, "rate limited: too many messages")
                .await);
        }
        self.reply(msg, "error", json!({"reason": RATE_LIMITED}))
            .await
    }

    async fn reply(
        &mut self,
        msg: &Message,
        status: &str,
        response: Value,
    ) -> Result<(), CloseReason> {
        self.send(Outbound::reply_to(msg, status, response)).await
    }

    /// A reply from a joined channel: it carries the channel's join_ref.
    async fn channel_reply(
        &mut self,
        msg: &Message,
        join_ref: Option<String>,
        status: &str,
        response: Payload,
    ) -> Result<(), CloseReason> {
        self.send(Outbound::Reply {
            join_ref,
            msg_ref: msg.msg_ref.clone(),
            topic: msg.topic.clone(),
            status: status.to_string(),
            response,
        })
        .await
    }

    async fn unmatched(&mut self, msg: &Message) -> Result<(), CloseReason> {
        self.send(Outbound::Reply {
            join_ref: None,
            msg_ref: msg.msg_ref.clone(),
            topic: msg.topic.clone(),
            status: "error".into(),
            response: Payload::Json(json!({"reason": "unmatched topic"})),
        })
        .await
    }

    async fn handle_message(&mut self, msg: Message) -> Result<(), CloseReason> {
        if msg.topic == HEARTBEAT_TOPIC && msg.event == HEARTBEAT_EVENT {
            return self.reply(&msg, "ok", json!({})).await;
        }
        let Some(channel) = self.channels.get(&msg.topic) else {
            return match msg.event.as_str() {
                PHX_JOIN => self.join(msg).await,
                PHX_LEAVE => self.reply(&msg, "ok", json!({})).await,
                _ => self.unmatched(&msg).await,
            };
        };
        if msg.event == PHX_JOIN {
            return self.join(msg).await;
        }
        if msg.join_ref.is_some() && msg.join_ref != channel.join_ref {
            // Stale: a message for a channel that is gone, or a leave racing a close the
            // client already got.
            return Ok(());
        }
        if msg.event == PHX_LEAVE {
            return self.leave(msg).await;
        }
        self.channel_event(msg).await
    }

    /// `phx_close` for a channel: the join_ref in both the join_ref and the ref position.
    async fn send_close(
        &mut self,
        topic: &str,
        join_ref: Option<String>,
    ) -> Result<(), CloseReason> {
        self.send(Outbound::phx_close(join_ref, topic)).await
    }

    /// What a channel's socket is built from.
    fn socket_parts(&self) -> SocketParts {
        SocketParts {
            conn: self.ctx.conn,
            serializer: self.ctx.serializer,
            outbox: self.outbox.clone(),
            key: self.ctx.key.clone(),
            identity: self.ctx.identity.clone(),
            params: self.params.clone(),
            tracker: self.ctx.node.tracker.clone(),
            presence: self.ctx.node.presence.clone(),
            metrics: self.ctx.node.metrics.clone(),
        }
    }

    /// Ends a channel: the handler's `terminate`, then its presences leave. Returns the frames
    /// the handler pushed meanwhile.
    async fn end_channel(
        &mut self,
        topic: &str,
        mut channel: Box<JoinedChannel>,
        exit: Exit,
    ) -> Vec<Outbound> {
        let terminate = AssertUnwindSafe(channel.handler.terminate(exit, &mut channel.socket));
        match tokio::time::timeout(TERMINATE_TIMEOUT, terminate.catch_unwind()).await {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => tracing::error!(
                conn = self.ctx.conn.0,
                topic,
                "channel handler panicked in terminate: {}",
                panic_text(&*panic)
            ),
            Err(_) => tracing::warn!(conn = self.ctx.conn.0, topic, "channel terminate timed out"),
        }
        self.ctx.node.tracker.leave(self.ctx.conn, topic);
        channel.socket.take_pushes()
    }

    /// The connection ended: every channel's handler hears it, within one bound in all.
    async fn terminate_all(&mut self) {
        let channels = std::mem::take(&mut self.channels);
        if channels.is_empty() {
            return;
        }
        let conn = self.ctx.conn;
        let all = async {
            for (topic, mut channel) in channels {
                let terminate =
                    AssertUnwindSafe(channel.handler.terminate(Exit::Closed, &mut channel.socket));
                if let Err(panic) = terminate.catch_unwind().await {
                    tracing::error!(
                        conn = conn.0,
                        topic,
                        "channel handler panicked in terminate: {}",
                        panic_text(&*panic)
                    );
                }
            }
        };
        if tokio::time::timeout(TERMINATE_TIMEOUT, all).await.is_err() {
            tracing::warn!(conn = conn.0, "channel terminate timed out");
        }
    }

    async fn leave(&mut self, msg: Message) -> Result<(), CloseReason> {
        let Some(channel) = self.channels.remove(&msg.topic) else {
            return self.reply(&msg, "ok", json!({})).await;
        };
        let join_ref = channel.join_ref.clone();
        let pushes = self.end_channel(&msg.topic, channel, Exit::Left).await;
        self.channel_reply(&msg, join_ref.clone(), "ok", Payload::empty())
            .await?;
        self.send_all(pushes).await?;
        self.send_close(&msg.topic, join_ref).await
    }

    /// A refused join: the error reply, then (when it replaced a channel) that channel's
    /// `phx_close`.
    async fn refuse(
        &mut self,
        msg: &Message,
        why: JoinRefusal,
        response: Value,
        old: Option<Option<String>>,
    ) -> Result<(), CloseReason> {
        self.refuse_join(why);
        self.reply(msg, "error", response).await?;
        match old {
            Some(old_ref) => self.send_close(&msg.topic, old_ref).await,
            None => Ok(()),
        }
    }

    async fn join(&mut self, msg: Message) -> Result<(), CloseReason> {
        if let Err(why) = channel::check_topic(&msg.topic) {
            tracing::debug!(conn = self.ctx.conn.0, topic = ?msg.topic, "join refused: {why}");
            self.refuse_join(JoinRefusal::BadTopic);
            return self
                .reply(&msg, "error", json!({"reason": why.reason()}))
                .await;
        }
        let Some(handler) = self.ctx.node.routes.find(&msg.topic) else {
            tracing::debug!(
                conn = self.ctx.conn.0,
                topic = ?msg.topic,
                "join of unmatched topic"
            );
            self.refuse_join(JoinRefusal::Unmatched);
            return self.unmatched(&msg).await;
        };
        if let Some(id) = &self.ctx.identity {
            if !id.may_join(&msg.topic) {
                let reason = AuthError::TopicNotAllowed(msg.topic.clone()).to_string();
                tracing::info!(
                    conn = self.ctx.conn.0,
                    key = ?id.key,
                    topic = ?msg.topic,
                    "join refused: the token may not join the topic"
                );
                self.refuse_join(JoinRefusal::NotAllowed);
                return self.reply(&msg, "error", json!({"reason": reason})).await;
            }
        }
        if let Some(max) = self.ctx.node.config.security.max_room_members {
            // Counted over the whole room (every node); concurrent joins may overshoot by
            // the few that race the count.
            let members = self.ctx.node.tracker.list(&msg.topic).await;
            let count = members.as_object().map_or(0, |m| m.len());
            let present = members.get(&self.ctx.key).is_some();
            if !present && count >= max {
                self.refuse_join(JoinRefusal::RoomFull);
                return self
                    .reply(&msg, "error", json!({"reason": ROOM_FULL}))
                    .await;
            }
        }
        if !self.within_channel_limit(&msg.topic) {
            self.refuse_join(JoinRefusal::TooManyChannels);
            return self
                .reply(&msg, "error", json!({"reason": "too many channels joined"}))
                .await;
        }
        let join_ref = msg.join_ref.clone().or_else(|| msg.msg_ref.clone());
        // As in Phoenix, the old channel is closed before the new join is tried.
        let mut old = None;
        let mut pushes = Vec::new();
        if let Some(channel) = self.channels.remove(&msg.topic) {
            old = Some(channel.join_ref.clone());
            pushes = self.end_channel(&msg.topic, channel, Exit::Replaced).await;
        }
        let params = match &msg.payload {
            Payload::Json(params) => params.clone(),
            Payload::Binary(_) => {
                let reason = PolicyError::BinaryPayload.reason();
                return self
                    .refuse(
                        &msg,
                        JoinRefusal::BadPayload,
                        json!({"reason": reason}),
                        old,
                    )
                    .await;
            }
        };
        let mut trusted = self
            .ctx
            .identity
            .as_ref()
            .map(|id| id.meta.clone())
            .unwrap_or_default();
        if let Some(hook) = self.ctx.node.join_hook.clone() {
            // The joiner waits at most the hook's timeout; its queue keeps flowing meanwhile.
            let (key, identity) = (self.ctx.key.clone(), self.ctx.identity.clone());
            let ask = hook.ask(&msg.topic, &key, &params, identity.as_ref());
            match self.drive(ask).await? {
                // The hook's fields are trusted like the token's, and win over them.
                Decision::Allow(meta) => trusted.extend(meta),
                Decision::Deny(reason) => {
                    tracing::debug!(
                        conn = self.ctx.conn.0,
                        topic = ?msg.topic,
                        "join refused by the join hook"
                    );
                    let response = json!({"reason": reason});
                    return self.refuse(&msg, JoinRefusal::Hook, response, old).await;
                }
            }
        }
        let mut socket =
            ChannelSocket::new(self.socket_parts(), &msg.topic, join_ref.clone(), trusted);
        let call = AssertUnwindSafe(handler.join(&msg.topic, &params, &mut socket));
        let joined = match self.drive(call.catch_unwind()).await? {
            Ok(Ok(joined)) => joined,
            Ok(Err(refusal)) => {
                tracing::debug!(
                    conn = self.ctx.conn.0,
                    topic = ?msg.topic,
                    "join refused by its handler"
                );
                return self.refuse(&msg, refusal.why, refusal.response, old).await;
            }
            Err(panic) => {
                tracing::error!(
                    conn = self.ctx.conn.0,
                    topic = ?msg.topic,
                    "channel handler panicked in join: {}",
                    panic_text(&*panic)
                );
                let response = json!({"reason": JOIN_CRASHED});
                return self.refuse(&msg, JoinRefusal::Crashed, response, old).await;
            }
        };
        if let Some(key) = joined.key {
            socket.set_key(key);
        }
        let meta = match joined.track.map(meta_object) {
            None => None,
            Some(Some(meta)) => Some(socket.trusted(meta)),
            Some(None) => {
                tracing::error!(
                    topic = ?msg.topic,
                    "a channel handler tracked a meta that is not an object"
                );
                let reason = PolicyError::MetaNotObject.reason();
                return self
                    .refuse(&msg, JoinRefusal::Handler, json!({"reason": reason}), old)
                    .await;
            }
        };
        // Subscribe before replying, as Phoenix does: once the client holds its ok, any
        // broadcast another member sends must reach it. The tracker's frames for this join
        // (presence_state, the join's diff) go through the outbox, which is only written after
        // this returns, so they still follow the reply.
        let subscriber = Subscriber {
            conn: self.ctx.conn,
            serializer: self.ctx.serializer,
            outbox: self.outbox.clone(),
            key: socket.key().to_string(),
        };
        self.ctx.node.metrics.joins.inc();
        self.ctx.node.tracker.join(
            &msg.topic,
            join_ref.clone(),
            subscriber,
            joined.presence_state,
            meta,
        );
        socket.joined();
        pushes.extend(socket.take_pushes());
        self.channels.insert(
            msg.topic.clone(),
            Box::new(JoinedChannel {
                join_ref,
                handler,
                socket,
            }),
        );
        let response = joined.response.unwrap_or_else(|| json!({}));
        self.reply(&msg, "ok", response).await?;
        self.send_all(pushes).await?;
        if let Some(old_ref) = old {
            self.send_close(&msg.topic, old_ref).await?;
        }
        Ok(())
    }

    fn refuse_join(&self, why: JoinRefusal) {
        self.ctx.node.metrics.join_refused(why);
    }

    /// An event on a joined channel, for its handler.
    async fn channel_event(&mut self, msg: Message) -> Result<(), CloseReason> {
        let Some(mut channel) = self.channels.remove(&msg.topic) else {
            return self.unmatched(&msg).await;
        };
        channel.socket.set_msg_ref(msg.msg_ref.clone());
        let handler = channel.handler.clone();
        let call = AssertUnwindSafe(handler.handle_in(
            &msg.event,
            msg.payload.clone(),
            &mut channel.socket,
        ));
        let outcome = match self.drive(call.catch_unwind()).await {
            Ok(outcome) => outcome,
            Err(reason) => {
                // The connection is closing: the channel ends with it.
                self.channels.insert(msg.topic.clone(), channel);
                return Err(reason);
            }
        };
        channel.socket.set_msg_ref(None);
        let join_ref = channel.join_ref.clone();
        let reply = match outcome {
            Ok(reply) => reply,
            Err(panic) => {
                // As a crashed Phoenix channel: that channel alone ends, with phx_error (the
                // client rejoins); no reply, no terminate.
                tracing::error!(
                    conn = self.ctx.conn.0,
                    topic = ?msg.topic,
                    event = ?msg.event,
                    "channel handler panicked: {}",
                    panic_text(&*panic)
                );
                self.ctx.node.tracker.leave(self.ctx.conn, &msg.topic);
                return self
                    .send(Outbound::phx_error(join_ref, &msg.topic, CHANNEL_CRASH))
                    .await;
            }
        };
        let pushes = channel.socket.take_pushes();
        if !reply.stop {
            self.channels.insert(msg.topic.clone(), channel);
            self.send_all(pushes).await?;
            if let Some((status, response)) = reply.status {
                self.channel_reply(&msg, join_ref, status, response).await?;
            }
            return Ok(());
        }
        self.send_all(pushes).await?;
        if let Some((status, response)) = reply.status {
            self.channel_reply(&msg, join_ref.clone(), status, response)
                .await?;
        }
        let pushes = self.end_channel(&msg.topic, channel, Exit::Stopped).await;
        self.send_all(pushes).await?;
        self.send_close(&msg.topic, join_ref).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Local;
    use rollcall_core::protocol::Frame;
    use tokio::sync::mpsc;

    /// A node context for tests, and the sender that keeps its shutdown signal from firing.
    fn node(config: Config) -> (NodeContext, watch::Sender<bool>) {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let tracker = Tracker::spawn(Arc::new(Local::new("test")));
        let node = NodeContext::new(
            Arc::new(config),
            tracker,
            Arc::new(Metrics::default()),
            shutdown_rx,
        );
        (node, shutdown_tx)
    }

    /// A machine driven by channels: returns the frame sender, the output receiver, and the
    /// machine's task.
    fn machine(
        config: Config,
    ) -> (
        mpsc::UnboundedSender<FromClient>,
        mpsc::UnboundedReceiver<ToClient>,
        tokio::task::JoinHandle<CloseReason>,
    ) {
        machine_with(config, |_| {})
    }

    /// [`machine`], with `adjust` applied to the context before it runs.
    fn machine_with(
        config: Config,
        adjust: impl FnOnce(&mut SocketContext),
    ) -> (
        mpsc::UnboundedSender<FromClient>,
        mpsc::UnboundedReceiver<ToClient>,
        tokio::task::JoinHandle<CloseReason>,
    ) {
        let (in_tx, mut in_rx) = mpsc::unbounded_channel::<FromClient>();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (node, _shutdown_tx) = node(config);
        let mut ctx = SocketContext::new(Serializer::V2, ConnectInfo::default(), node);
        adjust(&mut ctx);
        let stream = futures_util::stream::poll_fn(move |cx| in_rx.poll_recv(cx));
        let sink = futures_util::sink::unfold(out_tx, |tx, item: ToClient| async move {
            tx.send(item).map_err(|_| ())?;
            Ok::<_, ()>(tx)
        });
        let task = tokio::spawn(async move {
            let _keep = _shutdown_tx;
            run(ctx, Box::pin(sink), stream).await.0
        });
        (in_tx, out_rx, task)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_closes_when_the_timeout_passes_and_not_before() {
        let (tx, mut out, task) = machine(Config {
            idle_timeout: Duration::from_secs(60),
            ..Config::default()
        });
        tokio::time::sleep(Duration::from_secs(59)).await;
        // A heartbeat at 59 s restarts the clock.
        tx.send(FromClient::Frame(Frame::Text(
            r#"[null,"1","phoenix","heartbeat",{}]"#.into(),
        )))
        .unwrap();
        assert!(matches!(out.recv().await, Some(ToClient::Frame(_))));
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(
            out.try_recv().is_err(),
            "still open 59 s after the heartbeat"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            out.recv().await,
            Some(ToClient::Close {
                code: CLOSE_GOING_AWAY,
                reason: "idle timeout".into()
            })
        );
        assert_eq!(
            task.await.unwrap(),
            CloseReason::Closed(CLOSE_GOING_AWAY, "idle timeout".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_closes_with_1008_when_its_token_expires_and_not_before() {
        let (tx, mut out, task) = machine_with(Config::default(), |ctx| {
            ctx.token_expiry = Some(Instant::now() + Duration::from_secs(30));
        });
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(out.try_recv().is_err(), "still open before the expiry");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let expired = ToClient::Close {
            code: CLOSE_POLICY_VIOLATION,
            reason: TOKEN_EXPIRED.into(),
        };
        assert_eq!(out.recv().await, Some(expired));
        assert_eq!(
            task.await.unwrap(),
            CloseReason::Closed(CLOSE_POLICY_VIOLATION, TOKEN_EXPIRED.into())
        );
        drop(tx);
    }

    #[tokio::test]
    async fn a_token_expiring_in_a_far_future_is_not_a_panic() {
        let identity = Identity {
            key: "k".into(),
            rooms: None,
            meta: Default::default(),
            expires_at: Some(u64::MAX),
        };
        let (node, _shutdown_tx) = node(Config::default());
        let ctx = SocketContext::new(Serializer::V2, ConnectInfo::default(), node)
            .with_identity(Some(identity));
        assert_eq!(ctx.key, "k");
        // One representable but absurdly far away: the timer takes it, the connection serves.
        let far = Instant::now().checked_add(Duration::from_secs(1_000_000_000_000));
        assert!(far.is_some());
        let (tx, mut out, _task) = machine_with(Config::default(), |ctx| ctx.token_expiry = far);
        tx.send(FromClient::Frame(Frame::Text(
            r#"[null,"1","phoenix","heartbeat",{}]"#.into(),
        )))
        .unwrap();
        assert!(matches!(out.recv().await, Some(ToClient::Frame(_))));
    }
}
