use std::sync::Arc;
use std::time::Duration;

use super::record::{Delivery, JobRecords};
use super::webhook::WebhookConfig;
use crate::clock::unix_now;
use crate::metrics::Metrics;

/// How long a receiver has to answer one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// How many due deliveries one round takes.
const ROUND: usize = 16;

/// Sends the outbox's webhook deliveries as they come due, for the embedder to spawn once
/// per process: `tokio::spawn(deliverer.run())`. Replicas may each run one: on PostgreSQL a
/// delivery is claimed by one at a time.
pub struct WebhookDeliverer {
    records: Arc<dyn JobRecords>,
    config: WebhookConfig,
    client: reqwest::Client,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for WebhookDeliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDeliverer").finish_non_exhaustive()
    }
}

impl WebhookDeliverer {
    pub(crate) fn new(
        records: Arc<dyn JobRecords>,
        config: WebhookConfig,
        metrics: Option<Metrics>,
    ) -> Self {
        let allow_loopback = config.allow_http_loopback;
        let client = reqwest::Client::builder()
            .https_only(!allow_loopback)
            .no_proxy()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(crate::fetch::CheckedResolver::new(allow_loopback)))
            .build()
            // Only a TLS backend that cannot start fails here; then no webhook is sent
            // and each delivery is logged as failed.
            .unwrap_or_default();
        WebhookDeliverer {
            records,
            config,
            client,
            metrics,
        }
    }

    /// Sends what is due, then waits to be woken (a job ended) or for a second to pass,
    /// for ever.
    pub async fn run(self) {
        loop {
            self.round().await;
            tokio::select! {
                () = self.config.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn round(&self) {
        let due = match self.records.due(unix_now(), ROUND).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "reading the webhook outbox failed");
                return;
            }
        };
        let attempts = due.into_iter().map(|delivery| self.attempt(delivery));
        futures_util::future::join_all(attempts).await;
    }

    /// One attempt: a `2xx` ends the delivery, anything else schedules the next one.
    async fn attempt(&self, delivery: Delivery) {
        let mut request = self
            .client
            .post(&delivery.url)
            .header("content-type", "application/json")
            .body(delivery.body.clone());
        for (name, value) in self.config.headers(&delivery, unix_now()) {
            request = request.header(name, value);
        }
        let delivered = match request.send().await {
            Ok(answer) if answer.status().is_success() => true,
            Ok(answer) => {
                tracing::info!(id = %delivery.id, status = answer.status().as_u16(), "a webhook receiver refused a delivery");
                false
            }
            Err(error) => {
                tracing::info!(id = %delivery.id, error = %error.without_url(), "a webhook delivery failed");
                false
            }
        };
        let attempts = delivery.attempts.saturating_add(1);
        let next = if delivered {
            None
        } else {
            self.config.next_after(attempts)
        };
        let outcome = match (delivered, next) {
            (true, _) => "delivered",
            (false, Some(_)) => "retried",
            (false, None) => {
                tracing::warn!(id = %delivery.id, attempts, "a webhook delivery was given up");
                "given_up"
            }
        };
        if let Some(metrics) = &self.metrics {
            metrics.webhook(outcome);
        }
        if let Err(error) = self.records.attempted(&delivery.id, attempts, next).await {
            // Sent again at its old time: at least once, never lost.
            tracing::error!(%error, id = %delivery.id, "recording a webhook attempt failed");
        }
    }
}
