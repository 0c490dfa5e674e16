//! What ties a request's work to its client, and what does not.
//!
//! [`Leases`]: what must live as long as a request's work, not as long as its connection.
//! [`ClientWatch`]: whether the client is still there, for work that may stop when it leaves.
//!
//! Once billing has taken a hold, the backend's work runs to its end (or is cancelled)
//! whatever the client's socket does. Anything bounded per caller (the in-flight slot of
//! [`RateLimitLayer`](crate::ratelimit::RateLimitLayer)) must stay taken until then, or a
//! client that hangs up early gets its slot back while its render still runs. An outer
//! layer puts its lease in the request's extensions; normalization carries the leases into
//! the [`EditRequest`](crate::job::EditRequest), and billing keeps them until the work
//! has ended.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

/// The leases a request's work keeps; each is given back when its last clone drops.
#[derive(Clone, Default)]
pub struct Leases(Vec<Arc<dyn Any + Send + Sync>>);

impl Leases {
    /// Adds `lease`, kept until the request's work ends.
    pub fn push(&mut self, lease: Arc<dyn Any + Send + Sync>) {
        self.0.push(lease);
    }

    /// The leases an outer layer put in a request's extensions (none when there are none).
    pub fn of_request(extensions: &http::Extensions) -> Leases {
        extensions.get::<Leases>().cloned().unwrap_or_default()
    }

    /// Adds `lease` to the leases in `extensions`.
    pub fn add_to(extensions: &mut http::Extensions, lease: Arc<dyn Any + Send + Sync>) {
        extensions.get_or_insert_default::<Leases>().push(lease);
    }
}

impl fmt::Debug for Leases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Leases({})", self.0.len())
    }
}

/// Held by the future that answers the client: dropping it (the client hung up, or the
/// answer is done) tells every [`ClientWatch`] of the request.
#[derive(Debug)]
pub struct ClientHandle {
    _sender: watch::Sender<()>,
}

/// Whether a request's client is still waiting. Work that keeps running after its client
/// left (billing's task, idempotency's record) watches it to cancel what may be cancelled.
#[derive(Clone, Debug, Default)]
pub struct ClientWatch(Option<watch::Receiver<()>>);

impl ClientWatch {
    /// A watch and the handle whose drop fires it.
    pub fn new() -> (ClientHandle, ClientWatch) {
        let (sender, receiver) = watch::channel(());
        (
            ClientHandle { _sender: sender },
            ClientWatch(Some(receiver)),
        )
    }

    /// Whether the client is gone already (never, for a watch made by `default`).
    pub fn is_gone(&self) -> bool {
        matches!(&self.0, Some(receiver) if receiver.has_changed().is_err())
    }

    /// Resolves once the client is gone; never for a watch made by `default` (work that no
    /// client waits on, as in tests that build jobs by hand).
    pub async fn gone(&mut self) {
        match &mut self.0 {
            Some(receiver) => while receiver.changed().await.is_ok() {},
            None => std::future::pending().await,
        }
    }
}
