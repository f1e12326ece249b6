//! The WebSocket transport at `/socket/websocket`: negotiates `vsn` (403 if unsupported), takes
//! the phoenix.js auth token from `Sec-WebSocket-Protocol` (echoing `phoenix`), upgrades, and
//! runs the socket machine over the split socket.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use rollcall_core::protocol::{Frame, Serializer};

use super::{Inbound, Outgoing, WireFrame};
use crate::auth;
use crate::http::AppState;
use crate::metrics::{Refusal, Transport};
use crate::socket::{self, ConnectInfo, SocketContext};

/// The sub-protocol prefix phoenix.js uses to carry `authToken`.
pub const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// Decodes base64 leniently: standard or URL-safe alphabet, with or without padding.
pub fn decode_lenient_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = text.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()
}

/// The auth token from a `Sec-WebSocket-Protocol` header: the one entry starting with
/// [`AUTH_TOKEN_PREFIX`], base64-decoded.
pub fn auth_token_from_headers(headers: &HeaderMap) -> Option<Vec<u8>> {
    let mut tokens = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter_map(|p| p.strip_prefix(AUTH_TOKEN_PREFIX));
    let token = tokens.next()?;
    if tokens.next().is_some() {
        return None; // ambiguous: Phoenix ignores the header when several tokens are offered
    }
    decode_lenient_base64(token)
}

/// The body of the 400 answered to a request at `/socket/websocket` that is not a WebSocket
/// upgrade (another method, or a GET without the upgrade headers).
pub const NOT_AN_UPGRADE: &str = "expected a WebSocket upgrade: GET with Connection: upgrade, \
     Upgrade: websocket, Sec-WebSocket-Version: 13 and Sec-WebSocket-Key";

/// Every method at `/socket/websocket`: a WebSocket upgrade, or 400 (as Phoenix answers).
pub async fn handler(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    peer: Option<Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(why) => {
            tracing::debug!("refused websocket connect: {why}");
            return (StatusCode::BAD_REQUEST, NOT_AN_UPGRADE).into_response();
        }
    };
    let serializer = match Serializer::negotiate(params.get("vsn").map(String::as_str)) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!("refused websocket connect: {e}");
            state.tracker.metrics().refused(Refusal::Version);
            return (StatusCode::FORBIDDEN, e.to_string()).into_response();
        }
    };
    if let Err(why) = crate::http::check_origin(&state.config.security.allowed_origins, &headers) {
        tracing::info!("refused websocket connect: {why}");
        state.tracker.metrics().refused(Refusal::Origin);
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    let security = &state.config.security;
    let ip = super::client_ip(
        peer.map(|Extension(info)| info.0),
        &headers,
        security.trust_forwarded_for,
    );
    let slot = match security.conn_counts.acquire(ip, security.max_conns_per_ip) {
        Ok(slot) => slot,
        Err(why) => {
            tracing::info!(?ip, "refused websocket connect: {why}");
            state.tracker.metrics().refused(Refusal::PerAddress);
            return (StatusCode::TOO_MANY_REQUESTS, why).into_response();
        }
    };
    let info = ConnectInfo {
        auth_token: auth_token_from_headers(&headers),
        params,
    };
    // The reason is logged and answered; the token itself never is.
    let identity = match auth::authenticate(
        state.config.security.verifier.as_ref(),
        info.token(),
        auth::unix_now(),
    ) {
        Ok(identity) => identity,
        Err(why) => {
            tracing::info!("refused websocket connect: {why}");
            state.tracker.metrics().refused(Refusal::Token);
            return (StatusCode::FORBIDDEN, why.to_string()).into_response();
        }
    };
    if let Err(why) = socket::check_penalty(&state.config, &info, identity.as_ref()) {
        tracing::info!("refused websocket connect: {why}");
        state.tracker.metrics().refused(Refusal::Penalty);
        return (StatusCode::TOO_MANY_REQUESTS, why).into_response();
    }
    let config = state.config.clone();
    // Accept a little more than the limit so the machine can close with 1009 and a reason
    // instead of the codec failing the stream.
    let codec_limit = config.max_frame_size.saturating_add(64 * 1024);
    upgrade
        .protocols(["phoenix"])
        .max_message_size(codec_limit)
        .max_frame_size(codec_limit)
        // Client frames are small; the codec's 128 KiB default read buffer, zero-filled per
        // connection, was most of a connection's memory. Larger frames still arrive whole.
        .read_buffer_size(READ_BUFFER)
        // Batched writes go out whenever this much is buffered: the buffer (which the codec
        // never shrinks) stays near the largest single frame instead of the 128 KiB default.
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |ws| async move {
            let guard = state.connections.clone();
            let _open = state.tracker.metrics().connection(Transport::WebSocket);
            let ctx = SocketContext::new(
                serializer,
                info,
                state.config.clone(),
                state.tracker.clone(),
                state.shutdown.clone(),
            )
            .with_identity(identity);
            serve(ctx, ws).await;
            drop(slot);
            drop(guard);
        })
}

/// Initial read buffer of a WebSocket connection (bytes).
const READ_BUFFER: usize = 8 * 1024;
/// Buffered output that triggers a write even before the flush (bytes).
const WRITE_BUFFER: usize = 8 * 1024;

fn to_inbound(msg: Result<Message, axum::Error>) -> Inbound {
    match msg {
        Ok(Message::Text(t)) => Inbound::Frame(Frame::Text(t.as_str().to_string())),
        Ok(Message::Binary(b)) => Inbound::Frame(Frame::Binary(b.to_vec())),
        Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => Inbound::Activity,
        Ok(Message::Close(_)) => Inbound::Error("client closed".into()),
        Err(e) => {
            let text = e.to_string();
            if text.contains("Space limit") || text.contains("too long") {
                Inbound::TooLarge(None)
            } else if text.contains("UTF-8") {
                Inbound::Invalid("text frame is not valid UTF-8".into())
            } else {
                Inbound::Error(text)
            }
        }
    }
}

fn to_message(out: Outgoing) -> Message {
    match out {
        Outgoing::Frame(WireFrame::Text(t)) => Message::Text(t),
        Outgoing::Frame(WireFrame::Binary(b)) => Message::Binary(b),
        Outgoing::Close { code, reason } => Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })),
    }
}

async fn serve(ctx: SocketContext, ws: WebSocket) {
    let (sink, stream) = ws.split();
    let sink = sink.with(|out: Outgoing| async move { Ok::<_, axum::Error>(to_message(out)) });
    let stream = stream.map(to_inbound);
    let conn = ctx.conn;
    let reason = socket::run(ctx, Box::pin(sink), stream).await;
    tracing::debug!(conn = conn.0, "websocket closed: {reason:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(protocols: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("sec-websocket-protocol", protocols.parse().unwrap());
        h
    }

    #[test]
    fn auth_token_decodes_standard_and_url_safe_with_or_without_padding() {
        // "a?b>" encodes with '/' and '+' in the standard alphabet.
        for encoded in ["YT9iPg", "YT9iPg==", "YT9iPg"] {
            assert_eq!(
                auth_token_from_headers(&headers(&format!(
                    "phoenix, {AUTH_TOKEN_PREFIX}{encoded}"
                ))),
                Some(b"a?b>".to_vec())
            );
        }
        assert_eq!(decode_lenient_base64("Pz8_"), Some(b"???".to_vec()));
        assert_eq!(decode_lenient_base64("Pz8/"), Some(b"???".to_vec()));
        assert_eq!(decode_lenient_base64("Pz8/="), Some(b"???".to_vec()));
    }

    #[test]
    fn no_or_ambiguous_auth_token_gives_none() {
        assert_eq!(auth_token_from_headers(&headers("phoenix")), None);
        assert_eq!(
            auth_token_from_headers(&headers(&format!(
                "{AUTH_TOKEN_PREFIX}YQ, {AUTH_TOKEN_PREFIX}Yg"
            ))),
            None
        );
        assert_eq!(auth_token_from_headers(&HeaderMap::new()), None);
    }
}
