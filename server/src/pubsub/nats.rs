//! The `nats` adapter: a NATS server relays messages between nodes.
//!
//! Every node subscribes to `rollcall.<cluster>.all` (broadcasts) and
//! `rollcall.<cluster>.node.<name>` (messages for it alone). A message carries a small header
//! naming its sender and channel, so a node can drop the copy of its own broadcast that the
//! server echoes back. Reconnecting (and resubscribing) is left to the `async-nats` client,
//! which retries forever once the first connection has succeeded; messages sent while the
//! server is away are dropped by our bounded queue or the client's, which the tracker tolerates.

use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::broker::{Broker, BrokerCore, Next};
use super::sync::stopped;
use super::Error;

/// Connects to the NATS server at `url` and subscribes this node's subjects. Fails with
/// [`Error::BrokerUnreachable`] if the server cannot be reached now.
pub async fn connect(node: &str, url: &str, cluster: &str) -> Result<Broker, Error> {
    let (core, mut outbound) = BrokerCore::new(node, url, cluster)?;
    let unreachable = |reason: String| Error::BrokerUnreachable {
        url: url.to_owned(),
        reason,
    };
    let client = async_nats::ConnectOptions::new()
        .name(format!("rollcall {node}"))
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let all = client
        .subscribe(core.all.clone())
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mine = client
        .subscribe(core.node_subject(node))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    // Make sure the server has processed our subscriptions before we report ready, so
    // nothing sent to us after `connect` returns can be missed. `flush` only empties our
    // write buffer; a message to ourselves coming back is a true round trip, and the server
    // handles one connection's commands in order.
    round_trip(&client)
        .await
        .map_err(|e| unreachable(format!("no answer to a round trip: {e}")))?;
    info!(node, url, "cluster connected to NATS");

    let publisher = {
        let client = client.clone();
        let core = core.clone();
        tokio::spawn(async move {
            loop {
                let (subject, message) = match outbound.next().await {
                    Next::Publish(subject, message) => (subject, message),
                    Next::Drained => break,
                    Next::Stopped => return,
                };
                if let Err(e) = client.publish(subject, message).await {
                    core.inbox.counters.add_dropped_outbound();
                    debug!(error = %e, "NATS publish failed");
                }
            }
            if let Err(e) = client.flush().await {
                warn!(error = %e, "NATS flush at shutdown failed");
            }
        })
    };
    core.set_publisher(publisher).await;

    let receiver_core = core.clone();
    let mut stop = core.stop.subscribe();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::select(all, mine);
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                message = messages.next() => match message {
                    Some(message) => receiver_core.receive(message.payload),
                    None => {
                        warn!("NATS subscription ended");
                        break;
                    }
                },
            }
        }
        // Dropping the subscribers unsubscribes; the client closes with its last handle.
        drop(client);
    });
    Ok(Broker::new(core))
}

async fn round_trip(client: &async_nats::Client) -> Result<(), String> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(std::time::Duration::from_secs(5), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("connection closed".into()),
        Err(_) => Err("timed out after 5 s".into()),
    }
}
