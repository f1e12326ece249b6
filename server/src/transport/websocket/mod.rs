//! The WebSocket transport at `/socket/websocket`: checks the upgrade request, negotiates
//! `vsn` (403 if unsupported), takes the phoenix.js auth token from `Sec-WebSocket-Protocol`
//! (echoing `phoenix`), admits, upgrades, and runs the socket machine over the connection's two
//! halves ([`conn`]: frames read without keeping a buffer, frames written from the shared bytes
//! with vectored writes; [`codec`]: RFC 6455 framing).

pub mod codec;
pub mod conn;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use futures_util::{FutureExt, SinkExt};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::decode_lenient_base64;
use crate::admission::{admit, Admitted, Request as ConnectRequest};
use crate::frame::ToClient;
use crate::metrics::Transport;
use crate::security::limits::AcceptedConn;
use crate::socket::{self, NodeContext, SocketContext};
use conn::{Reader, Writer};

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

/// The value of `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// True when the comma-separated header `name` lists `token` (case-insensitive).
fn header_lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The client's `Sec-WebSocket-Key` when `request` is a WebSocket upgrade (GET, `Connection:
/// upgrade`, `Upgrade: websocket`, version 13, a key of 16 bytes in base64).
fn upgrade_key(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    let is_upgrade = method == Method::GET
        && header_lists(headers, header::CONNECTION, "upgrade")
        && header_lists(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    (is_upgrade && key.len() == 24).then(|| key.clone())
}

/// Every method at `/socket/websocket`: a WebSocket upgrade, or 400 (as Phoenix answers).
pub async fn handler(
    State(state): State<WebSocketState>,
    Query(params): Query<HashMap<String, String>>,
    peer: Option<Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    accepted: Option<Extension<AcceptedConn>>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let Some(key) = upgrade_key(request.method(), headers) else {
        tracing::debug!("refused websocket connect: not an upgrade request");
        return (StatusCode::BAD_REQUEST, NOT_AN_UPGRADE).into_response();
    };
    let connect = ConnectRequest {
        transport: Transport::WebSocket,
        auth_token: auth_token_from_headers(headers),
        params,
        headers,
        peer: peer.map(|Extension(info)| info.0),
        accepted: accepted.map(|Extension(a)| a),
    };
    let Admitted { context, slot } = match admit(&state.node, connect) {
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
    let offers_phoenix = header_lists(headers, header::SEC_WEBSOCKET_PROTOCOL, "phoenix");
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded",
        )
            .into_response();
    };
    let max_message = state.node.config.max_frame_size;
    // The task holds what it needs and the context boxed: moved into the machine, an inline
    // context would stay in the task's future as well, for the connection's whole life.
    let (open_socket, metrics, context) = (
        state.open_sockets,
        state.node.metrics.clone(),
        Box::new(context),
    );
    tokio::spawn(async move {
        let _open_socket = open_socket;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!("websocket upgrade failed: {e}");
                return;
            }
        };
        let _counted = metrics.connection(Transport::WebSocket);
        serve(*context, TokioIo::new(upgraded), max_message).await;
        drop(slot);
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if offers_phoenix {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("phoenix"),
        );
    }
    response
}

/// How long the last frames and the TCP close may take once the machine stopped.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Runs the socket machine over an upgraded connection, answers a client's close frame, and
/// closes the TCP connection.
pub fn serve<T>(
    ctx: SocketContext,
    io: T,
    max_message: usize,
) -> impl std::future::Future<Output = ()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (read, write) = tokio::io::split(io);
    let conn = ctx.conn;
    let run = socket::run(ctx, Writer::new(write), Reader::new(read, max_message));
    // Chained rather than awaited inside an `async move`, which would hold the machine's
    // future twice (captured, and in its await).
    run.then(move |(reason, writer, reader)| {
        tracing::debug!(conn = conn.0, "websocket closed: {reason:?}");
        finish(writer, reader)
    })
}

/// Answers a client's close frame, then closes the TCP connection (both bounded).
async fn finish<W, R>(mut writer: Writer<W>, reader: Reader<R>)
where
    W: AsyncWrite + Unpin,
{
    if reader.close_received() && !writer.close_sent() {
        let echo = ToClient::Close {
            code: 1000,
            reason: String::new(),
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, writer.send(echo)).await;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, writer.close()).await;
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
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
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
