//! `GET /api/presence/{topic}` answers who is in a room, cluster-wide as this node's tracker
//! sees it, in the shape a `presence_state` push carries (with the app's fetch hook);
//! `GET /api/presence/{topic}/count` answers only how many keys are listed. Both take from the
//! client address's `--api-rate` budget.

use axum::extract::rejection::PathRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

use super::{authorize, json_response, take_rate, ApiError};
use crate::socket::NodeContext;

/// The topic from the path (or a JSON 400 saying why it could not be read, e.g. its
/// percent-encoding is not UTF-8) once the request may read it, and who is in it.
async fn listing(
    node: &NodeContext,
    path: Result<Path<String>, PathRejection>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<(String, Value), ApiError> {
    take_rate(node, info, headers)?;
    let Path(topic) = path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    authorize(node, headers, &topic)?;
    let presences = node.presence.list(&topic).await;
    Ok((topic, presences))
}

/// Number of keys in a presence map.
fn key_count(presences: &Value) -> usize {
    presences.as_object().map_or(0, |m| m.len())
}

/// `GET /api/presence/{topic}`: `{"topic", "presences": {key: {"metas": [...]}}, "count"}`.
pub async fn presence(
    State(node): State<NodeContext>,
    path: Result<Path<String>, PathRejection>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (topic, presences) = listing(&node, path, info, &headers).await?;
    let count = key_count(&presences);
    Ok(json_response(
        StatusCode::OK,
        json!({"topic": topic, "presences": presences, "count": count}),
    ))
}

/// `GET /api/presence/{topic}/count`: `{"topic", "count"}`, the number of keys listed.
pub async fn presence_count(
    State(node): State<NodeContext>,
    path: Result<Path<String>, PathRejection>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (topic, presences) = listing(&node, path, info, &headers).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"topic": topic, "count": key_count(&presences)}),
    ))
}
