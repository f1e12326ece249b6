//! The HTTP surface: the routes (the socket endpoints, `GET /healthz`, `GET /metrics`, the
//! presence API of [`crate::api`], the demo page at `/`) and the state they share.

use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower_http::services::ServeDir;

use crate::pubsub::Partitioned;
use crate::socket::NodeContext;
use crate::transport::longpoll::{self, LongPoll, LongPollState};
use crate::transport::websocket::{self, WebSocketState};
use crate::webhook::Webhooks;

/// What the routes share: the node, the handle open sockets hold, the long-poll state and the
/// fault switch. Each endpoint takes only its part (`FromRef`).
#[derive(Debug, Clone)]
pub struct AppState {
    /// What every connection of the node shares.
    pub node: NodeContext,
    /// Held by every upgraded WebSocket, so shutdown can wait until they are gone.
    pub open_sockets: mpsc::Sender<()>,
    /// Long-poll sessions of this node and its relayed requests.
    pub longpoll: Arc<LongPoll>,
    /// The transport's fault switch, with `ClusterSettings::fault_injection` only.
    pub partition: Option<Arc<Partitioned>>,
    /// Which node sends webhooks, when they are configured.
    pub webhooks: Option<Webhooks>,
}

impl FromRef<AppState> for NodeContext {
    fn from_ref(state: &AppState) -> NodeContext {
        state.node.clone()
    }
}

impl FromRef<AppState> for WebSocketState {
    fn from_ref(state: &AppState) -> WebSocketState {
        WebSocketState {
            node: state.node.clone(),
            open_sockets: state.open_sockets.clone(),
        }
    }
}

impl FromRef<AppState> for LongPollState {
    fn from_ref(state: &AppState) -> LongPollState {
        LongPollState {
            node: state.node.clone(),
            longpoll: state.longpoll.clone(),
        }
    }
}

async fn healthz(State(state): State<AppState>) -> Json<Value> {
    let node = &state.node;
    let mut health = json!({
        "status": "ok",
        "node": node.tracker.node(),
        "version": env!("CARGO_PKG_VERSION"),
        "peers": node.tracker.health().await,
        "transport": transport_stats(node.tracker.pubsub().stats()),
    });
    if let Some(webhooks) = &state.webhooks {
        health["webhooks"] = json!({
            "sender": webhooks.sender(),
            "queued": node.metrics.webhook_queue.get(),
        });
    }
    Json(health)
}

fn transport_stats(stats: crate::pubsub::Stats) -> Value {
    json!({
        "sent": stats.sent,
        "received": stats.received,
        "dropped_outbound": stats.dropped_outbound,
        "dropped_inbound": stats.dropped_inbound,
        "refused": stats.refused,
        "rejected": {
            "unsigned": stats.rejected.unsigned,
            "bad_signature": stats.rejected.bad_signature,
            "replayed": stats.rejected.replayed,
            "unproven": stats.rejected.unproven,
        },
    })
}

/// `GET /metrics`: the node's metrics in the Prometheus text format (see [`crate::metrics`]).
async fn metrics(State(node): State<NodeContext>) -> Response {
    let gauges = node.tracker.gauges().await;
    let stats = node.tracker.pubsub().stats();
    let text = crate::metrics::render(&node.metrics, &gauges, &stats);
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    resp
}

/// Query of the test-only `POST /_fault/partition`.
#[derive(Debug, serde::Deserialize)]
struct PartitionQuery {
    peer: String,
    partitioned: bool,
}

/// Test-only fault switch (served with `ClusterSettings::fault_injection`): cuts this node off
/// from `peer` (or heals the cut), through the [`Partitioned`] wrapper around the transport.
async fn fault_partition(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<PartitionQuery>,
) -> Json<Value> {
    tracing::warn!(
        peer = q.peer,
        partitioned = q.partitioned,
        "fault injection"
    );
    if let Some(partition) = &state.partition {
        partition.set_partitioned(&q.peer, q.partitioned);
    }
    Json(json!({"status": "ok"}))
}

/// The router: `/socket/websocket`, `/socket/longpoll`, `/healthz`, `/metrics` (unless turned
/// off), `/api/presence/{topic}[/count]`, `POST /api/broadcast/{topic}`, and the static
/// directory.
pub fn router(state: AppState) -> Router {
    let config = &state.node.config;
    let static_dir = config.static_dir.clone();
    let mut router = Router::new();
    if config.cluster.fault_injection {
        router = router.route("/_fault/partition", axum::routing::post(fault_partition));
    }
    if config.metrics {
        router = router.route("/metrics", get(metrics));
    }
    let router = router
        .route("/healthz", get(healthz))
        .route("/api/presence/{topic}", get(crate::api::presence))
        .route(
            "/api/presence/{topic}/count",
            get(crate::api::presence_count),
        )
        .route(
            "/api/broadcast/{topic}",
            axum::routing::post(crate::api::broadcast),
        )
        // Every method: the handler answers non-upgrades with 400, as Phoenix does.
        .route("/socket/websocket", any(websocket::handler))
        .route(
            "/socket/longpoll",
            get(longpoll::get)
                .post(longpoll::post)
                .options(longpoll::options),
        )
        .with_state(state);
    match static_dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir)),
        None => router,
    }
}
