//! Reaching peers: accepting connections on the cluster listener, dialing every known address
//! with backoff while the node behind it is not connected, and resolving the configured
//! `--peers` names again and again (a headless service's addresses change as pods come and go).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};

use super::handshake::{handshake, HandshakeError};
use super::link::start_connection;
use super::Shared;
use crate::pubsub::backoff::Backoff;
use crate::pubsub::sync::{lock, stopped};

pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.stop.subscribe();
    // Refusals are summarised, never logged one by one: anyone who can reach the port can
    // make them (a connect loop would otherwise fill the disk).
    let mut summarise = tokio::time::interval(shared.refusals.interval());
    summarise.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (stream, remote) = tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = summarise.tick() => {
                if let Some(line) = shared.refusals.flush(tokio::time::Instant::now()) {
                    warn!("{line}");
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "cluster accept failed");
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            shared.refuse("too many handshakes in progress", remote);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = timeout(
                shared.config.handshake_timeout,
                handshake(&shared, stream, remote, false),
            )
            .await
            .unwrap_or(Err(HandshakeError::Timeout));
            drop(permit);
            match result {
                Ok(est) => start_connection(shared, est),
                Err(HandshakeError::SelfConnection) => {}
                // A bare connect-and-close (a TCP health probe, a port scan) is not news.
                Err(HandshakeError::Io(e)) => {
                    debug!(%remote, reason = %e, "cluster connection closed during handshake")
                }
                Err(e) => {
                    shared.inbox.counters.add_refused();
                    debug!(%remote, reason = %e, "refused cluster connection");
                    shared.refuse(e.reason(), remote);
                }
            }
        });
    }
}

/// Keeps one address connected: dials it with backoff whenever the node behind it is not.
pub(super) async fn dial_loop(shared: Arc<Shared>, addr: String) {
    let mut stop = shared.stop.subscribe();
    let mut backoff = Backoff::new(shared.config.backoff_min, shared.config.backoff_max);
    let mut last_error = String::new();
    let mut failing_since: Option<Instant> = None;
    // When our last dial succeeded: only a connection that then lived a while resets the
    // backoff, so a peer that accepts and at once drops us is not redialed in a tight loop.
    let mut connected_at: Option<Instant> = None;
    let mut first = true;
    loop {
        if shared.stopping() {
            return;
        }
        let wait_for_change = {
            let state = lock(&shared.state);
            let Some(target) = state.targets.get(&addr) else {
                return;
            };
            match &target.name {
                Some(name) => state.peers.get(name).is_some_and(|p| p.conn.is_some()),
                None => false,
            }
        };
        if wait_for_change {
            failing_since = None;
            tokio::select! {
                _ = shared.changed.notified() => {}
                _ = sleep(Duration::from_millis(500)) => {}
                _ = stopped(&mut stop) => return,
            }
            continue;
        }
        if connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= shared.config.backoff_max)
        {
            backoff.reset();
        }
        if !first {
            tokio::select! {
                _ = sleep(backoff.next_delay()) => {}
                _ = stopped(&mut stop) => return,
            }
        }
        first = false;
        let attempt = async {
            let stream = TcpStream::connect(&addr).await?;
            let remote = stream.peer_addr()?;
            handshake(&shared, stream, remote, true).await
        };
        let result = tokio::select! {
            r = timeout(shared.config.handshake_timeout, attempt) => {
                r.unwrap_or(Err(HandshakeError::Timeout))
            }
            _ = stopped(&mut stop) => return,
        };
        match result {
            Ok(est) => {
                connected_at = Some(Instant::now());
                last_error.clear();
                failing_since = None;
                if let Some(t) = lock(&shared.state).targets.get_mut(&addr) {
                    t.name = Some(est.name.clone());
                }
                start_connection(shared.clone(), est);
            }
            Err(HandshakeError::SelfConnection) => {
                let mut state = lock(&shared.state);
                state.targets.remove(&addr);
                state.self_addrs.insert(addr.clone());
                debug!(%addr, "peer address is ourselves; not dialing it");
                return;
            }
            Err(e) => {
                if matches!(
                    e,
                    HandshakeError::AuthFailed
                        | HandshakeError::Refused(_)
                        | HandshakeError::DuplicateName(_)
                        | HandshakeError::Protocol(_)
                ) {
                    shared.inbox.counters.add_refused();
                }
                let message = e.to_string();
                if message != last_error {
                    warn!(%addr, reason = %message, "cannot connect to cluster peer; retrying");
                    last_error = message;
                } else {
                    debug!(%addr, reason = %message, "cluster peer still unreachable");
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= shared.config.forget_after {
                    let mut state = lock(&shared.state);
                    let configured = state.targets.get(&addr).is_some_and(|t| t.configured);
                    if !configured {
                        if let Some(name) = state.targets.remove(&addr).and_then(|t| t.name) {
                            if state.peers.get(&name).is_some_and(|p| p.conn.is_none()) {
                                state.peers.remove(&name);
                            }
                        }
                        info!(%addr, "forgetting a cluster peer that stayed unreachable");
                        return;
                    }
                }
            }
        }
    }
}

/// Re-resolves the configured peers periodically and dials every address they name.
pub(super) async fn resolve_loop(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    loop {
        let mut resolved = HashSet::new();
        for spec in &shared.config.peers {
            match tokio::net::lookup_host(spec.as_str()).await {
                Ok(addrs) => resolved.extend(addrs.map(|a| a.to_string())),
                Err(e) => debug!(peer = %spec, error = %e, "cannot resolve cluster peer yet"),
            }
        }
        for addr in &resolved {
            shared.add_target(addr.clone(), None, true);
        }
        {
            // An address no longer in DNS (a pod that went away) is kept only until it is
            // forgotten like a gossiped one.
            let mut state = lock(&shared.state);
            for (addr, target) in state.targets.iter_mut() {
                if target.configured && !resolved.contains(addr) {
                    target.configured = false;
                }
            }
        }
        if shared.config.peers.is_empty() {
            return;
        }
        tokio::select! {
            _ = sleep(shared.config.resolve_interval) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}
