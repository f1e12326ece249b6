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
use futures_util::{SinkExt, StreamExt};
use rollcall_core::protocol::Frame;

use tokio::sync::mpsc;

use super::decode_lenient_base64;
use crate::admission::{admit, Admitted, Request};
use crate::frame::{FromClient, ToClient, WireFrame};
use crate::metrics::Transport;
use crate::socket::{self, NodeContext, SocketContext};

/// The sub-protocol prefix phoenix.js uses to carry `authToken`.
pub const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

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

/// What the WebSocket endpoint needs: the node, and a handle every open socket holds so that
/// shutdown can wait until they are all gone.
#[derive(Debug, Clone)]
pub struct WebSocketState {
    /// What every connection of the node shares.
    pub node: NodeContext,
    /// Held by every upgraded socket until it ends.
    pub open_sockets: mpsc::Sender<()>,
}

/// Every method at `/socket/websocket`: a WebSocket upgrade, or 400 (as Phoenix answers).
pub async fn handler(
    State(state): State<WebSocketState>,
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
    let request = Request {
        transport: Transport::WebSocket,
        auth_token: auth_token_from_headers(&headers),
        params,
        headers: &headers,
        peer: peer.map(|Extension(info)| info.0),
    };
    let Admitted { context, slot } = match admit(&state.node, request) {
        Ok(admitted) => admitted,
        Err(refused) => {
            let status = if refused.for_now() {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::FORBIDDEN
            };
            return (status, refused.reason).into_response();
        }
    };
    // Accept a little more than the limit so the machine can close with 1009 and a reason
    // instead of the codec failing the stream.
    let codec_limit = state.node.config.max_frame_size.saturating_add(64 * 1024);
    upgrade
        .protocols(["phoenix"])
        .max_message_size(codec_limit)
        .max_frame_size(codec_limit)
        // Client frames are small; the codec's 128 KiB default read buffer, zero-filled per
        // connection, would be most of a connection's memory. Larger frames still arrive whole.
        .read_buffer_size(READ_BUFFER)
        // Batched writes go out whenever this much is buffered: the buffer (which the codec
        // never shrinks) stays near the largest single frame instead of the 128 KiB default.
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |ws| async move {
            let _open_socket = state.open_sockets;
            let _counted = state.node.metrics.connection(Transport::WebSocket);
            serve(context, ws).await;
            drop(slot);
        })
}

/// Initial read buffer of a WebSocket connection (bytes).
const READ_BUFFER: usize = 8 * 1024;
/// Buffered output that triggers a write even before the flush (bytes).
const WRITE_BUFFER: usize = 8 * 1024;

fn to_inbound(msg: Result<Message, axum::Error>) -> FromClient {
    match msg {
        Ok(Message::Text(t)) => FromClient::Frame(Frame::Text(t.as_str().to_string())),
        Ok(Message::Binary(b)) => FromClient::Frame(Frame::Binary(b.to_vec())),
        Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => FromClient::Activity,
        Ok(Message::Close(_)) => FromClient::Error("client closed".into()),
        Err(e) => {
            let text = e.to_string();
            if text.contains("Space limit") || text.contains("too long") {
                FromClient::TooLarge(None)
            } else if text.contains("UTF-8") {
                FromClient::Invalid("text frame is not valid UTF-8".into())
            } else {
                FromClient::Error(text)
            }
        }
    }
}

fn to_message(out: ToClient) -> Message {
    match out {
        ToClient::Frame(WireFrame::Text(t)) => Message::Text(t),
        ToClient::Frame(WireFrame::Binary(b)) => Message::Binary(b),
        ToClient::Close { code, reason } => Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })),
    }
}

async fn serve(ctx: SocketContext, ws: WebSocket) {
    let (sink, stream) = ws.split();
    let sink = sink.with(|out: ToClient| async move { Ok::<_, axum::Error>(to_message(out)) });
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
