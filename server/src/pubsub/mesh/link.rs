//! One authenticated connection to a peer: a writer task draining its send queue, a reader
//! task delivering data and learning peers from gossip, pings, and the end of the connection
//! (lost, replaced by a newer one, or the mesh stopping).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::handshake::Established;
use super::wire::{
    decode_peers, encode_empty, get_str16, get_str8, read_frame, KIND_DATA, KIND_PEERS, KIND_PING,
    KIND_PONG, KIND_REJECT, MAX_FRAME,
};
use super::{check_host_port, Shared, REGOSSIP_EVERY_PINGS};
use crate::pubsub::sync::{lock, stopped};
use crate::pubsub::{validate_name, Envelope};

/// Registers an established connection and runs it in its own tasks.
pub(super) fn start_connection(shared: Arc<Shared>, est: Established) {
    let kill = Arc::new(Notify::new());
    let Some((id, tx, rx)) = shared.register(&est, kill.clone()) else {
        return;
    };
    let Some(drain) = lock(&shared.drain).clone() else {
        shared.unregister(&est.name, id);
        return;
    };
    info!(peer = %est.name, addr = %est.addr, dialed = est.we_dialed, "cluster peer up");
    // Tell the new peer whom we know, and everyone else about the new peer.
    shared.gossip();
    tokio::spawn(run_connection(shared, est, id, tx, rx, kill, drain));
}

async fn run_connection(
    shared: Arc<Shared>,
    est: Established,
    id: u64,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    kill: Arc<Notify>,
    drain: mpsc::Sender<()>,
) {
    let Established {
        name,
        addr,
        reader,
        writer,
        ..
    } = est;
    let mut writer_task = tokio::spawn(write_loop(writer, rx));
    let mut reader_task = tokio::spawn(read_loop(
        shared.clone(),
        name.clone(),
        addr,
        reader,
        tx.clone(),
    ));
    let mut stop = shared.stop.subscribe();
    let mut ping = tokio::time::interval(shared.config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    enum End {
        Lost,
        Replaced,
        Stopping,
    }
    let mut pings: u32 = 0;
    let end = loop {
        tokio::select! {
            read = &mut reader_task => {
                match read {
                    Ok(Ok(())) => info!(peer = %name, "cluster peer closed the connection"),
                    Ok(Err(reason)) => warn!(peer = %name, %reason, "cluster connection dropped"),
                    Err(_) => warn!(peer = %name, "cluster connection reader failed"),
                }
                break End::Lost;
            }
            _ = &mut writer_task => {
                warn!(peer = %name, "cluster connection write failed");
                break End::Lost;
            }
            _ = kill.notified() => {
                debug!(peer = %name, "cluster connection replaced or partitioned");
                break End::Replaced;
            }
            _ = stopped(&mut stop) => break End::Stopping,
            _ = ping.tick() => {
                let _ = tx.try_send(encode_empty(KIND_PING));
                // Re-gossip now and then, so a lost `Peers` frame cannot leave a hole in the
                // mesh for good.
                pings += 1;
                if pings.is_multiple_of(REGOSSIP_EVERY_PINGS) {
                    let _ = tx.try_send(shared.peers_frame());
                }
            }
        }
    };
    shared.unregister(&name, id);
    drop(tx);
    reader_task.abort();
    if matches!(end, End::Stopping) {
        // Every sender is gone now, so the writer drains its queue and closes.
        let _ = timeout(Duration::from_secs(2), &mut writer_task).await;
    }
    writer_task.abort();
    if matches!(end, End::Lost) {
        info!(peer = %name, "cluster peer down");
    }
    drop(drain);
}

async fn write_loop(writer: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) -> io::Result<()> {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(frame) = rx.recv().await {
        writer.write_all(&frame).await?;
        // Coalesce whatever is already queued into one write, but never wait for more.
        while let Ok(frame) = rx.try_recv() {
            writer.write_all(&frame).await?;
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}

/// Reads frames until the peer closes (`Ok`) or misbehaves or goes silent (`Err(reason)`).
async fn read_loop(
    shared: Arc<Shared>,
    name: String,
    addr: String,
    mut reader: BufReader<OwnedReadHalf>,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), String> {
    let silence = shared.config.ping_timeout;
    loop {
        let frame = match timeout(silence, read_frame(&mut reader, MAX_FRAME)).await {
            Err(_) => return Err(format!("no traffic for {silence:?} (ping timeout)")),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(frame))) => frame,
        };
        let mut body = frame;
        if body.is_empty() {
            return Err("empty frame".into());
        }
        let kind = body.get_u8();
        match kind {
            KIND_DATA => {
                let channel = get_str8(&mut body).map_err(|e| format!("bad data frame: {e}"))?;
                shared.inbox.deliver(Envelope {
                    from: name.clone(),
                    channel,
                    payload: body,
                });
            }
            KIND_PING => {
                let _ = tx.try_send(encode_empty(KIND_PONG));
            }
            KIND_PONG => {}
            KIND_PEERS => {
                let list = decode_peers(body).map_err(|e| format!("bad peers frame: {e}"))?;
                for (peer_name, peer_addr) in list {
                    if peer_name == shared.name || validate_name("node name", &peer_name).is_err() {
                        continue;
                    }
                    // The sender's own entry may say 0.0.0.0; we know where it really is.
                    let peer_addr = if peer_name == name {
                        addr.clone()
                    } else {
                        peer_addr
                    };
                    if check_host_port(&peer_addr).is_err() {
                        continue;
                    }
                    shared.add_target(peer_addr, Some(peer_name), false);
                }
            }
            KIND_REJECT => {
                let reason = get_str16(&mut body).unwrap_or_default();
                return Err(format!("peer closed with reason: {reason}"));
            }
            other => return Err(format!("unknown frame kind {other}")),
        }
    }
}
