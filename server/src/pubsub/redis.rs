//! The `redis` adapter: a Redis server relays messages with PUBLISH/SUBSCRIBE.
//!
//! Channels mirror the NATS subjects: `rollcall.<cluster>.all` for broadcasts and
//! `rollcall.<cluster>.node.<name>` for one node. Redis pub/sub is fire-and-forget, like our
//! contract. The client crate does not reconnect a subscription, so this module does: a lost
//! subscriber or publisher connection is re-established with capped, jittered backoff, and what
//! is sent meanwhile is dropped and counted.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::time::sleep;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::broker::{Broker, BrokerCore, Next};
use super::sync::stopped;
use super::Error;

/// How often the subscriber connection is pinged: a connection that died silently (a NAT or
/// firewall forgot it) would otherwise look like a quiet cluster forever.
const SUBSCRIBER_PING: Duration = Duration::from_secs(5);

async fn open_subscription(
    client: &redis::Client,
    channels: &[String],
) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channels).await?;
    Ok(pubsub.split())
}

/// Connects to the Redis server at `url` (a publishing and a subscribing connection) and
/// subscribes this node's channels. Fails with [`Error::BrokerUnreachable`] if the server
/// cannot be reached now.
pub async fn connect(node: &str, url: &str, cluster: &str) -> Result<Broker, Error> {
    let (core, mut outbound) = BrokerCore::new(node, url, cluster)?;
    let unreachable = |reason: String| Error::BrokerUnreachable {
        url: url.to_owned(),
        reason,
    };
    let client = redis::Client::open(url).map_err(|e| unreachable(e.to_string()))?;
    let channels = vec![core.all.clone(), core.node_subject(node)];
    let connect = async {
        let publisher = client.get_multiplexed_async_connection().await?;
        // SUBSCRIBE returns once the server confirmed it, so nothing sent to us after
        // `connect` returns can be missed.
        let stream = open_subscription(&client, &channels).await?;
        Ok::<_, redis::RedisError>((publisher, stream))
    };
    let (publisher, stream) = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| unreachable("timed out after 5 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    info!(node, url, "cluster connected to Redis");

    let publisher_task = {
        let client = client.clone();
        let core = core.clone();
        tokio::spawn(async move {
            let mut conn: Option<MultiplexedConnection> = Some(publisher);
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            let mut retry_at = tokio::time::Instant::now();
            // Redis PUBLISH has nothing to flush: drained or stopped, the task ends.
            while let Next::Publish(channel, message) = outbound.next().await {
                if conn.is_none() && tokio::time::Instant::now() >= retry_at {
                    match client.get_multiplexed_async_connection().await {
                        Ok(c) => {
                            info!("Redis publisher reconnected");
                            backoff.reset();
                            conn = Some(c);
                        }
                        Err(_) => retry_at = tokio::time::Instant::now() + backoff.next_delay(),
                    }
                }
                let Some(c) = conn.as_mut() else {
                    core.inbox.counters.add_dropped_outbound();
                    continue;
                };
                let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(message.as_ref())
                    .query_async(c)
                    .await;
                if let Err(e) = published {
                    core.inbox.counters.add_dropped_outbound();
                    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                        warn!(error = %e, "Redis publisher connection lost; reconnecting");
                        conn = None;
                        retry_at = tokio::time::Instant::now() + backoff.next_delay();
                    }
                }
            }
        })
    };
    core.set_publisher(publisher_task).await;

    let receiver_core = core.clone();
    let mut stop = core.stop.subscribe();
    tokio::spawn(async move {
        let mut stream = Some(stream);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut ping = tokio::time::interval(SUBSCRIBER_PING);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some((sink, messages)) = stream.as_mut() else {
                tokio::select! {
                    _ = sleep(backoff.next_delay()) => {}
                    _ = stopped(&mut stop) => return,
                }
                match open_subscription(&client, &channels).await {
                    Ok(s) => {
                        info!("Redis subscription re-established");
                        backoff.reset();
                        stream = Some(s);
                    }
                    Err(e) => warn!(error = %e, "Redis subscription still down"),
                }
                continue;
            };
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = ping.tick() => {
                    let answer =
                        tokio::time::timeout(SUBSCRIBER_PING, sink.ping::<redis::Value>()).await;
                    if !matches!(answer, Ok(Ok(_))) {
                        warn!("Redis subscription connection stopped answering; reconnecting");
                        stream = None;
                    }
                }
                message = messages.next() => match message {
                    Some(message) => {
                        receiver_core.receive(Bytes::copy_from_slice(message.get_payload_bytes()));
                    }
                    None => {
                        warn!("Redis subscription connection lost; reconnecting");
                        stream = None;
                    }
                },
            }
        }
    });
    Ok(Broker::new(core))
}
