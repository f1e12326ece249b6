//! The accept loop of [`Server::serve`](crate::Server::serve): every TCP connection is counted
//! the moment it is accepted, before a byte of it is read, in the node's total
//! (`--max-conns`) and under its address (`--max-conns-per-ip`); past either it is closed at
//! once, answered 429 or 503 only if its request already arrived. An admitted connection is
//! served as HTTP/1.1 with a deadline for each request head (`--header-read-timeout-ms`, which
//! is also how long a kept-alive connection may sit idle), and each of its requests carries
//! the connection's slot ([`AcceptedConn`]), so a WebSocket upgraded from it stays counted.
//!
//! HTTP/1.1 only: the WebSocket upgrade and long-poll need nothing more, and its per-request
//! deadline is what bounds a client that never finishes a request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::metrics::Refusal;
use crate::security::limits::{AcceptedConn, SlotRefused};
use crate::socket::NodeContext;

/// Accepts connections on `listener` and serves `router` on them until `stop` turns true;
/// then tells every open HTTP connection to finish its request and close, and returns once
/// they all did (or after `drain`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    node: NodeContext,
    stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stopping) => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => accept(tcp, addr, &router, &node, &stop, open.clone()),
                Err(e) => {
                    // Out of descriptors or memory for a moment: accepting again at once
                    // would spin; the connections already open are served meanwhile.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    drop(open);
    let _ = tokio::time::timeout(drain, all_closed.recv()).await;
}

/// Counts a new connection (or refuses it) and serves it.
fn accept(
    tcp: TcpStream,
    addr: SocketAddr,
    router: &Router,
    node: &NodeContext,
    stop: &watch::Receiver<bool>,
    open: mpsc::Sender<()>,
) {
    let security = &node.config.security;
    // Behind a trusted proxy the address is the proxy's: the client's is known only from the
    // request, and the connect check counts it.
    let per_address = !security.trust_forwarded_for;
    let max_per_ip = if per_address {
        security.max_conns_per_ip
    } else {
        0
    };
    let slot = match node.conn_counts.acquire(Some(addr.ip()), max_per_ip, true) {
        Ok(slot) => slot,
        Err(why) => {
            node.metrics.refused(match why {
                SlotRefused::NodeFull(_) => Refusal::NodeFull,
                SlotRefused::PerAddress(_) => Refusal::PerAddress,
            });
            tracing::debug!(peer = %addr, "connection refused at accept: {why}");
            refuse(tcp, why);
            return;
        }
    };
    // Presence frames are small and latency-bound: no Nagle delay.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY not set: {e}");
    }
    let accepted = AcceptedConn {
        slot: Arc::new(slot),
        per_address_counted: per_address,
    };
    let router = router.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(addr));
        request.extensions_mut().insert(accepted.clone());
        let mut router = router.clone();
        async move {
            let response =
                tower_service::Service::call(&mut router, request.map(axum::body::Body::new)).await;
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(node.config.header_read_timeout)
        .keep_alive(true);
    let mut stop = stop.clone();
    tokio::spawn(async move {
        let _open = open;
        let connection = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(peer = %addr, "connection ended: {e}");
                }
            }
            _ = stopped(&mut stop) => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    });
}

/// Completes once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Closes a connection refused at accept. It is never waited for: if its request already
/// arrived it gets a status and the reason (429 for its address, 503 for the node), else it is
/// only closed.
fn refuse(tcp: TcpStream, why: SlotRefused) {
    let mut request = [0u8; 1024];
    let arrived = matches!(tcp.try_read(&mut request), Ok(n) if n > 0);
    if arrived {
        let status = match why {
            SlotRefused::NodeFull(_) => "503 Service Unavailable",
            SlotRefused::PerAddress(_) => "429 Too Many Requests",
        };
        let reason = why.to_string();
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{reason}",
            reason.len()
        );
        let _ = tcp.try_write(response.as_bytes());
        // Read what else of the request is there, so closing does not reset the connection
        // under the answer.
        for _ in 0..64 {
            if !matches!(tcp.try_read(&mut request), Ok(n) if n > 0) {
                break;
            }
        }
    }
}
