//! `POST /api/broadcast/{topic}` with `{"event": "...", "payload": {...}}`: a backend sends an
//! event to every member of a room on every node, as a channel's `broadcast` does. Same access
//! rules as the presence API; event names that belong to the protocol (`phx_*`,
//! `presence*`) or are not 1–64 characters of `[A-Za-z0-9_:.-]` are refused, so a backend
//! cannot forge the server's own frames. Each request takes from the client address's
//! `--api-rate` budget, as a presence read does: one broadcast is a frame to every member.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use rollcall_core::protocol::{check_event_name, Payload};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;

use super::{authorize, json_response, take_rate, ApiError};
use crate::socket::NodeContext;

/// Reads the request body: the event name and its payload (an object, `{}` if absent).
fn parse_body(body: &[u8]) -> Result<(String, Value), ApiError> {
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, why);
    let request: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body must be JSON: {e}")))?;
    let Value::Object(mut request) = request else {
        return Err(bad("the body must be a JSON object".into()));
    };
    let event = match request.remove("event") {
        Some(Value::String(event)) => event,
        _ => return Err(bad("\"event\" must be a string".into())),
    };
    check_event_name(&event).map_err(|e| bad(format!("event {event:?}: {e}")))?;
    let payload = match request.remove("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(payload @ Value::Object(_)) => payload,
        Some(_) => return Err(bad("\"payload\" must be an object".into())),
    };
    Ok((event, payload))
}

/// `POST /api/broadcast/{topic}`: 202 `{"topic", "event"}` once the event is on its way to
/// every member; 400 for a body that is not `{"event": name, "payload": object}` or a refused
/// event name, 413 for one over `--max-frame-size`, 429 past the address's `--api-rate`.
pub async fn broadcast(
    State(node): State<NodeContext>,
    path: Result<Path<String>, PathRejection>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    take_rate(&node, info, &headers)?;
    let Path(topic) = path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    authorize(&node, &headers, &topic)?;
    let limit = node.config.max_frame_size;
    if body.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body of {} bytes, limit {limit}", body.len()),
        ));
    }
    let (event, payload) = parse_body(&body)?;
    node.metrics.api_broadcasts.inc();
    node.tracker
        .broadcast(&topic, &event, Payload::Json(payload), None);
    Ok(json_response(
        StatusCode::ACCEPTED,
        json!({"topic": topic, "event": event}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_needs_an_allowed_event_name_and_an_object_payload() {
        assert_eq!(
            parse_body(br#"{"event":"news","payload":{"a":1}}"#).unwrap(),
            ("news".to_string(), json!({"a": 1}))
        );
        assert_eq!(
            parse_body(br#"{"event":"news"}"#).unwrap(),
            ("news".to_string(), json!({}))
        );
        for (body, why) in [
            (&b"nope"[..], "JSON"),
            (br#"[1]"#, "object"),
            (br#"{"payload":{}}"#, "event"),
            (br#"{"event":"phx_reply"}"#, "reserved"),
            (br#"{"event":"presence_diff"}"#, "reserved"),
            (br#"{"event":"has space"}"#, "invalid"),
            (br#"{"event":"ok","payload":[1]}"#, "payload"),
        ] {
            let e = parse_body(body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(
                e.reason.contains(why),
                "{}: {}",
                String::from_utf8_lossy(body),
                e.reason
            );
        }
    }
}
