#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod api;
pub mod channel;
pub mod config;
pub mod frame;
pub mod handler;
pub mod http;
pub mod joinhook;
pub mod listener;
pub mod log_summary;
pub mod metrics;
pub mod outbound;
pub mod outbox;
pub mod presence;
pub mod pubsub;
pub mod security;
pub mod socket;
pub mod tracker;
pub mod transport;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use config::Config;
pub use handler::{Channel, ChannelSocket, Joined, Refusal, Reply};
pub use presence::Presence;
pub use rollcall_core::protocol::Payload;
pub use tracker::{ConnId, Tracker};

use metrics::Metrics;
use socket::NodeContext;
use transport::longpoll::{self, LongPoll};

/// Configures a [`Server`] before it starts.
pub struct ServerBuilder {
    config: Config,
    pubsub: Option<Arc<dyn pubsub::PubSub>>,
    routes: handler::Routes,
    fetch: Option<tracker::fetch::FetchHook>,
}

impl ServerBuilder {
    /// Serves the topics matching `pattern` (an exact topic, or a prefix ending in `*`) with
    /// `handler`. Routes are tried in the order they were added, then the presence rooms of
    /// [`Config::rooms`]; the first match wins.
    pub fn channel(mut self, pattern: &str, handler: impl Channel) -> Self {
        self.routes.route(pattern, handler);
        self
    }

    /// Passes every presence payload (`presence_state`, `presence_diff`, [`Presence::list`],
    /// the presence API) through `hook`, which adds the app's fields to each key's entry; see
    /// [`presence::Fetch`].
    pub fn fetch(mut self, hook: impl presence::Fetch) -> Self {
        self.fetch = Some(Arc::new(hook));
        self
    }

    /// Uses `pubsub` to reach other nodes (default: [`pubsub::Local`], one node); see
    /// [`pubsub::connect`]. The node is then known by the adapter's name
    /// ([`pubsub::PubSub::node`]), which replaces `config.node_name`.
    pub fn pubsub(mut self, pubsub: Arc<dyn pubsub::PubSub>) -> Self {
        self.pubsub = Some(pubsub);
        self
    }

    /// Starts the tracker task (needs a Tokio runtime) and returns the server.
    pub fn build(mut self) -> Server {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (connections, drained) = mpsc::channel(1);
        let mut pubsub = match self.pubsub {
            Some(pubsub) => {
                self.config.node_name = pubsub.node().to_string();
                pubsub
            }
            None => Arc::new(pubsub::Local::new(&self.config.node_name)),
        };
        let partition = self.config.cluster.fault_injection.then(|| {
            let partition = Arc::new(pubsub::Partitioned::new(pubsub.clone()));
            pubsub = partition.clone();
            partition
        });
        let metrics = Arc::new(Metrics::default());
        let tracker = Tracker::spawn_with_fetch(
            pubsub.clone(),
            &self.config.cluster,
            metrics.clone(),
            self.fetch.clone(),
        );
        let webhooks = self.config.webhook.clone().map(|settings| {
            webhook::spawn(
                settings,
                &self.config.cluster,
                &tracker,
                pubsub.clone(),
                metrics.clone(),
            )
        });
        let config = Arc::new(self.config);
        let longpoll = Arc::new(LongPoll::default());
        longpoll::spawn_relay(
            longpoll.clone(),
            config.longpoll_window,
            pubsub,
            shutdown_rx.clone(),
        );
        let mut routes = self.routes;
        routes.extend(handler::Routes::presence_rooms(
            &config.rooms,
            config.max_meta_size,
        ));
        let join_hook = config.join_hook.clone().map(|settings| {
            Arc::new(joinhook::JoinHook::new(
                settings,
                &config.node_name,
                metrics.clone(),
            ))
        });
        let mut node = NodeContext::new(config, tracker, metrics, shutdown_rx);
        node.join_hook = join_hook;
        node.routes = Arc::new(routes);
        if let Some(hook) = self.fetch {
            node.presence = Presence::with_fetch(node.tracker.clone(), hook);
        }
        let state = http::AppState {
            node,
            open_sockets: connections,
            longpoll,
            partition,
            webhooks,
        };
        Server {
            state,
            shutdown_tx,
            drained,
        }
    }
}

/// A rollcall node: its tracker, its routes, and its shutdown switch.
pub struct Server {
    state: http::AppState,
    shutdown_tx: watch::Sender<bool>,
    drained: mpsc::Receiver<()>,
}

/// Tells every connection of a [`Server`] to close with 1001 (going away).
#[derive(Debug, Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Starts the shutdown: sockets close with 1001 so clients reconnect elsewhere.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

impl Server {
    /// A server with `config` and the single-node pubsub.
    pub fn new(config: Config) -> Server {
        Server::builder(config).build()
    }

    /// A builder, to choose the pubsub adapter.
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            pubsub: None,
            routes: handler::Routes::new(),
            fetch: None,
        }
    }

    /// The axum router (socket endpoints, `/healthz`, static files), to serve or to nest.
    /// Serve it with `into_make_service_with_connect_info::<SocketAddr>()` for
    /// [`max_conns_per_ip`](config::Security::max_conns_per_ip) to see client addresses
    /// (without it, only `trust_forwarded_for` gives one).
    pub fn router(&self) -> Router {
        http::router(self.state.clone())
    }

    /// The node's tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.state.node.tracker
    }

    /// The node's presence: track anything, list, get by key, subscribe to changes.
    pub fn presence(&self) -> &Presence {
        &self.state.node.presence
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.state.node.config
    }

    /// The node's counters (what `GET /metrics` shows, with the tracker's gauges).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.node.metrics
    }

    /// A handle that starts the shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown_tx.clone())
    }

    /// Serves on `listener` until `signal` completes (see [`listener`]: connections are counted
    /// and limited at accept); then leaves the cluster (the graceful permdown: other nodes
    /// drop this node's members at once), stops accepting, closes every socket with 1001 and
    /// waits (up to 5 s each) for HTTP connections and sockets to finish.
    pub async fn serve<F>(self, listener: TcpListener, signal: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Server {
            state,
            shutdown_tx,
            mut drained,
        } = self;
        let router = http::router(state.clone());
        let mut shutdown_seen = state.node.shutdown.clone();
        let stopped = state.node.shutdown.clone();
        let tracker = state.node.tracker.clone();
        let node = state.node.clone();
        let webhooks = state.webhooks.clone();
        drop(state);
        let trigger = shutdown_tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = signal => {}
                _ = shutdown_seen.wait_for(|s| *s) => {}
            }
            // This node sends no more webhooks: its members leaving as it stops are the next
            // sender's to report (or not, if they reconnect elsewhere within the grace period).
            if let Some(webhooks) = &webhooks {
                webhooks.stop();
            }
            // Members leave other nodes before their sockets close here. The transport's own
            // flush is bounded; this bound only guards against a wedged tracker task.
            let _ = tokio::time::timeout(Duration::from_secs(3), tracker.shutdown()).await;
            let _ = trigger.send(true);
        });
        listener::serve(listener, router, node, stopped, Duration::from_secs(5)).await;
        // Every WebSocket holds a sender; `recv` yields `None` once all are gone.
        let _ = tokio::time::timeout(Duration::from_secs(5), drained.recv()).await;
        Ok(())
    }
}

/// The code of `docs/embedding.md`, compiled by `cargo test` so the guide stays true.
#[cfg(doctest)]
#[doc = include_str!("../../docs/embedding.md")]
pub struct EmbeddingGuide;
