//! The HTTP surface: the socket endpoints, `GET /healthz`, and the demo page at `/`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tower_http::services::ServeDir;

use crate::config::Config;
use crate::tracker::Tracker;
use crate::transport::{longpoll, websocket};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The node's tracker.
    pub tracker: Tracker,
    /// Turns `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Held by every live connection, so shutdown can wait until they are gone.
    pub connections: mpsc::Sender<()>,
    /// Long-poll sessions of this node.
    pub longpoll: Arc<longpoll::Sessions>,
}

async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "node": state.tracker.node(),
        "version": env!("CARGO_PKG_VERSION"),
        "peers": state.tracker.health().await,
        "transport": transport_stats(state.tracker.pubsub().stats()),
    }))
}

fn transport_stats(stats: crate::pubsub::Stats) -> Value {
    json!({
        "sent": stats.sent,
        "received": stats.received,
        "dropped_outbound": stats.dropped_outbound,
        "dropped_inbound": stats.dropped_inbound,
        "refused": stats.refused,
    })
}

/// Query of the test-only `POST /_fault/partition`.
#[derive(Debug, serde::Deserialize)]
struct PartitionQuery {
    peer: String,
    partitioned: bool,
}

/// Test-only fault switch (served with `ClusterSettings::fault_injection`): cuts this node off
/// from `peer` (or heals the cut), through the transport's partition switch.
async fn fault_partition(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<PartitionQuery>,
) -> Json<Value> {
    tracing::warn!(
        peer = q.peer,
        partitioned = q.partitioned,
        "fault injection"
    );
    state
        .tracker
        .pubsub()
        .set_partitioned(&q.peer, q.partitioned);
    Json(json!({"status": "ok"}))
}

/// The router: `/socket/websocket`, `/socket/longpoll`, `/healthz`, and the static directory.
pub fn router(state: AppState) -> Router {
    let static_dir = state.config.static_dir.clone();
    let mut router = Router::new();
    if state.config.cluster.fault_injection {
        router = router.route("/_fault/partition", axum::routing::post(fault_partition));
    }
    let router = router
        .route("/healthz", get(healthz))
        .route("/socket/websocket", get(websocket::handler))
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
