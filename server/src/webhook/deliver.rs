//! Delivering one batch: `POST {"events": [...]}` signed with the secret, retried with capped
//! exponential backoff (and jitter) until the receiver answers 2xx or the batch has been
//! failing for `retry_for`. Each attempt is bounded by `timeout` and signed anew (a fresh `t`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::ledger::Event;
use crate::config::WebhookSettings;
use crate::metrics::Metrics;
use crate::outbound::{post_json, Endpoint};
use crate::security::auth::unix_now;
use crate::security::signature::{sign, SIGNATURE_HEADER};

/// The first wait after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The receiver answered 2xx.
    Delivered(Vec<String>),
    /// It kept failing for the whole retry period: the events are dropped.
    Dropped(Vec<String>),
}

/// What delivering needs, shared by every batch.
#[derive(Debug)]
pub(super) struct Delivery {
    /// The URL, or why it is unusable (then every attempt fails).
    endpoint: Result<Endpoint, String>,
    settings: WebhookSettings,
    node: String,
    metrics: Arc<Metrics>,
}

impl Delivery {
    pub(super) fn new(settings: WebhookSettings, node: &str, metrics: Arc<Metrics>) -> Self {
        let endpoint = Endpoint::parse(&settings.url);
        if let Err(e) = &endpoint {
            tracing::error!("webhook URL unusable, no webhook can be delivered: {e}");
        }
        Delivery {
            endpoint,
            settings,
            node: node.to_string(),
            metrics,
        }
    }

    /// One attempt: true for a 2xx answer.
    async fn attempt(&self, body: &[u8]) -> Result<(), String> {
        let endpoint = self.endpoint.as_ref().map_err(Clone::clone)?;
        let signature = sign(self.settings.secret.as_bytes(), unix_now(), body);
        let headers = [
            (SIGNATURE_HEADER, signature.as_str()),
            ("x-rollcall-node", self.node.as_str()),
        ];
        let post = post_json(endpoint, &headers, body);
        match tokio::time::timeout(self.settings.timeout, post).await {
            Err(_) => Err(format!("no answer within {:?}", self.settings.timeout)),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(r)) if r.is_success() => Ok(()),
            Ok(Ok(r)) => Err(format!("answered HTTP {}", r.status)),
        }
    }

    /// Delivers `batch`, retrying as long as allowed.
    pub(super) async fn deliver(self: Arc<Self>, batch: Vec<Event>) -> Outcome {
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        let body = json!({"events": batch}).to_string();
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0u32;
        loop {
            match self.attempt(body.as_bytes()).await {
                Ok(()) => {
                    self.metrics.webhook_requests_ok.inc();
                    if failures > 0 {
                        tracing::info!(
                            url = self.settings.url,
                            "webhook delivered after {failures} failed attempts"
                        );
                    }
                    return Outcome::Delivered(ids);
                }
                Err(why) => {
                    self.metrics.webhook_requests_failed.inc();
                    failures += 1;
                    // The first failure of a batch is a warning; its retries only debug lines.
                    if failures == 1 {
                        tracing::warn!(
                            url = self.settings.url,
                            events = ids.len(),
                            "webhook failed, retrying: {why}"
                        );
                    } else {
                        tracing::debug!(url = self.settings.url, "webhook retry failed: {why}");
                    }
                }
            }
            let jitter =
                Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1));
            let wait = backoff + jitter;
            if started.elapsed() + wait > self.settings.retry_for {
                tracing::error!(
                    url = self.settings.url,
                    events = ids.len(),
                    "webhook events dropped after {failures} failed attempts over {:?}",
                    started.elapsed()
                );
                return Outcome::Dropped(ids);
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
