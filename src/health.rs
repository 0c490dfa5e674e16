//! `GET /healthz` and `GET /readyz`, for load balancers and orchestrators: answered before
//! any key check or rate limit, cheap, and never touching a user's data.
//!
//! # Guarantees
//! - `/healthz` answers `200 {"status": "ok"}` whenever the process serves requests.
//! - `/readyz` answers `200 {"status": "ready"}` when the ledger and the file store each
//!   answer one read (of an account and a folder no user has) within 2 s;
//!   `503 {"status": "unavailable", "failed": "ledger" | "store"}` otherwise; and
//!   `503 {"status": "draining"}` from the moment [`Readiness::drain`] is called (the binary
//!   calls it on SIGTERM), so a balancer stops sending new work while in-flight work ends.
//! - Neither takes a key, so neither says more than the words above.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::auth::UserId;
use crate::future::ResponseFuture;
use crate::ledger::Ledger;
use crate::store::FileStore;
use crate::ResponseBody;

/// Path of the liveness check.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Path of the readiness check.
pub const READYZ_PATH: &str = "/readyz";

/// How long each dependency may take to answer a readiness read.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the gateway still takes new work. Cheap to clone; every clone sees
/// [`drain`](Self::drain).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// From now on, `/readyz` answers `503 draining`.
    pub fn drain(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The two checks, over the gateway's own ledger and store.
#[derive(Clone)]
pub(crate) struct Health {
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) store: Arc<dyn FileStore>,
    pub(crate) readiness: Readiness,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Whether `path` is one of the checks.
    pub(crate) fn serves(path: &str) -> bool {
        path == HEALTHZ_PATH || path == READYZ_PATH
    }

    /// Answers the check at `path`.
    pub(crate) fn answer(
        &self,
        path: &str,
    ) -> ResponseFuture<Response<ResponseBody>, std::convert::Infallible> {
        if path == HEALTHZ_PATH {
            return ResponseFuture::ready(status(StatusCode::OK, r#"{"status":"ok"}"#));
        }
        if self.readiness.is_draining() {
            return ResponseFuture::ready(status(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"draining"}"#,
            ));
        }
        let this = self.clone();
        ResponseFuture::new(async move {
            let failed = this.probe().await;
            Ok(match failed {
                None => status(StatusCode::OK, r#"{"status":"ready"}"#),
                Some("ledger") => status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"unavailable","failed":"ledger"}"#,
                ),
                Some(_) => status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"unavailable","failed":"store"}"#,
                ),
            })
        })
    }

    /// The first dependency that failed its read, if any.
    async fn probe(&self) -> Option<&'static str> {
        // An account and folder nobody is expected to have: the reads write nothing and
        // return nothing of a user's.
        let probe = UserId::new("readyz-probe").ok()?;
        let ledger = tokio::time::timeout(PROBE_TIMEOUT, self.ledger.balance(&probe)).await;
        if !matches!(ledger, Ok(Ok(_))) {
            return Some("ledger");
        }
        let store = tokio::time::timeout(PROBE_TIMEOUT, self.store.list(&probe, None, 1)).await;
        if !matches!(store, Ok(Ok(_))) {
            return Some("store");
        }
        None
    }
}

fn status(code: StatusCode, body: &'static str) -> Response<ResponseBody> {
    crate::body::json(code, Bytes::from_static(body.as_bytes()))
}
