//! Webhooks: an async job's end announced to the URL its submitter named, signed as
//! Standard Webhooks sign (`webhook-id`, `webhook-timestamp`, `webhook-signature`), at
//! least once, from a durable outbox that survives restarts.
//!
//! - The URL is checked at submit (`400`, `param: webhook_url`): `https://` only, no
//!   credentials, every address its host resolves to public; with the development setting,
//!   also `http://127.0.0.1:PORT/...`. At delivery the name is resolved again under the same
//!   rule, and redirects are not followed.
//! - The body is `{"type": "image.job.succeeded" | "image.job.failed" |
//!   "image.job.cancelled", "timestamp", "data": {"id", "status", "model", "n",
//!   "picklyone_generation_ids" | "error"}}`, without image bytes.
//! - `webhook-signature` is `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")),
//!   the secret being the bytes of `whsec_<base64>`.
//! - A `2xx` ends a delivery; anything else, or no answer within 15 s, is tried again after
//!   5 s, 30 s, 2 min, 5 min, 15 min, 30 min, 1 h, 2 h, 4 h, 8 h, 8 h and 8 h (about 33 hours
//!   in all), then given up. Receivers deduplicate by `webhook-id`.

// Without the `fetch` feature no deliverer is built: URLs are refused at submit, and the
// signing and scheduling below go unused.
#![cfg_attr(not(feature = "fetch"), allow(dead_code))]

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::record::{Delivery, JobRecord, JobStatus};
use crate::clock::unix_now;
use crate::GatewayError;

/// The retry schedule, in units of the base delay (5 s by default).
const SCHEDULE: [u32; 12] = [1, 6, 24, 60, 180, 360, 720, 1440, 2880, 5760, 5760, 5760];

/// How a gateway sends webhooks.
#[derive(Clone)]
pub struct WebhookConfig {
    pub(crate) secret: Arc<[u8]>,
    pub(crate) allow_http_loopback: bool,
    pub(crate) base_delay: Duration,
    pub(crate) wake: Arc<Notify>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("allow_http_loopback", &self.allow_http_loopback)
            .finish_non_exhaustive()
    }
}

/// Why a webhook secret was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSecretError;

impl std::fmt::Display for WebhookSecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a webhook secret is whsec_ followed by the base64 of 24 to 64 bytes")
    }
}

impl std::error::Error for WebhookSecretError {}

impl WebhookConfig {
    /// Webhooks signed with `secret`, written `whsec_<base64 of the key bytes>`.
    pub fn new(secret: &str) -> Result<Self, WebhookSecretError> {
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b64| STANDARD.decode(b64).ok())
            .filter(|k| (24..=64).contains(&k.len()))
            .ok_or(WebhookSecretError)?;
        Ok(WebhookConfig {
            secret: key.into(),
            allow_http_loopback: false,
            base_delay: Duration::from_secs(5),
            wake: Arc::default(),
        })
    }

    /// Also admits `http://127.0.0.1:PORT/...` (development and tests only).
    pub fn allow_http_loopback(mut self, allow: bool) -> Self {
        self.allow_http_loopback = allow;
        self
    }

    /// The retry schedule's unit (default 5 s); tests shorten it.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay.max(Duration::from_millis(1));
        self
    }

    /// When the attempt after `attempts` failed ones is due, or `None` once given up.
    pub(crate) fn next_after(&self, attempts: u32) -> Option<u64> {
        let units = *SCHEDULE.get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
        let delay = self.base_delay.saturating_mul(units);
        // Whole seconds, rounded up: the outbox keeps Unix seconds.
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        Some(unix_now().saturating_add(secs))
    }

    /// The three headers of one attempt at `delivery`, sent at `timestamp`.
    pub(crate) fn headers(
        &self,
        delivery: &Delivery,
        timestamp: u64,
    ) -> [(&'static str, String); 3] {
        let signed = format!("{}.{timestamp}.{}", delivery.id, delivery.body);
        let signature = STANDARD.encode(hmac_sha256(&self.secret, signed.as_bytes()));
        [
            ("webhook-id", delivery.id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", format!("v1,{signature}")),
        ]
    }

    /// Checks a `Webhook-Url` as submitted: its text, and where its host resolves.
    pub(crate) async fn check(&self, raw: &str) -> Result<String, GatewayError> {
        let refuse = |why: &str| {
            GatewayError::invalid_request(format!("webhook_url: {why}"), Some("webhook_url"))
        };
        if self.allow_http_loopback {
            if let Ok(url) = url::Url::parse(raw) {
                let loopback = url.host_str() == Some("127.0.0.1");
                if url.scheme() == "http" && loopback && url.port().is_some() {
                    return Ok(url.to_string());
                }
            }
        }
        let url = crate::fetch::RemoteUrl::parse(raw, "webhook_url")?;
        let host = url.url().host_str().unwrap_or_default().to_owned();
        let port = url.url().port_or_known_default().unwrap_or(443);
        if let Some(url::Host::Domain(_)) = url.url().host() {
            resolves_public(&host, port)
                .await
                .map_err(|why| refuse(&why))?;
        }
        Ok(url.as_str().to_owned())
    }

    /// Tells the deliverer there is something to send.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

#[cfg(feature = "fetch")]
async fn resolves_public(host: &str, port: u16) -> Result<(), String> {
    let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| "its host does not resolve".to_owned())?
        .collect();
    if found.is_empty()
        || !found
            .iter()
            .all(|a| crate::fetch::address::is_public(a.ip()))
    {
        return Err("its host resolves to a private or reserved address".to_owned());
    }
    Ok(())
}

#[cfg(not(feature = "fetch"))]
async fn resolves_public(_host: &str, _port: u16) -> Result<(), String> {
    Err("this gateway cannot resolve webhook hosts".to_owned())
}

/// The delivery announcing `record`'s end to its webhook, if it has one.
pub(crate) fn delivery_of(record: &JobRecord) -> Option<Delivery> {
    let url = record.webhook.clone()?;
    let kind = match record.status {
        JobStatus::Succeeded => "image.job.succeeded",
        JobStatus::Failed => "image.job.failed",
        JobStatus::Cancelled => "image.job.cancelled",
        JobStatus::Queued | JobStatus::Running => return None,
    };
    let mut data = serde_json::json!({
        "id": record.id.to_string(),
        "status": record.status.as_str(),
        "model": record.model,
        "n": record.n,
    });
    if let Some(fields) = data.as_object_mut() {
        if let Some(output) = &record.output {
            fields.insert("picklyone_generation_ids".into(), output.ids().into());
        }
        if let Some(error) = record.error_object() {
            fields.insert("error".into(), error);
        }
    }
    let now = unix_now();
    let body = serde_json::json!({"type": kind, "timestamp": now, "data": data});
    Some(Delivery {
        id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
        url,
        body: body.to_string(),
        attempts: 0,
        next_at: now,
    })
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_secret_is_whsec_and_base64_of_enough_bytes() {
        assert!(WebhookConfig::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        for bad in [
            "",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_",
            "whsec_!!",
            "whsec_YWJj",
        ] {
            assert_eq!(
                WebhookConfig::new(bad).err(),
                Some(WebhookSecretError),
                "{bad}"
            );
        }
    }

    #[test]
    fn retries_follow_the_schedule_then_stop() {
        let config = WebhookConfig::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let now = unix_now();
        let first = config.next_after(1).unwrap();
        assert!((now + 5..=now + 6).contains(&first));
        let total: u64 = SCHEDULE.iter().map(|u| u64::from(*u) * 5).sum();
        assert!(total >= 24 * 3600, "at least a day of retries: {total} s");
        assert!(config.next_after(SCHEDULE.len() as u32).is_some());
        assert_eq!(config.next_after(SCHEDULE.len() as u32 + 1), None);
        assert_eq!(config.next_after(0), None);
    }
}
