//! The operators' door: the admin API, every route of it in this module.
//!
//! # Guarantee
//! Only the admin key opens it. The key is checked against its own SHA-256 digest in
//! constant time, user API keys never pass, and the user key store is not consulted for
//! it: a request without the admin key is `401 invalid_api_key` before any route is read.
//!
//! # Routes
//! | route | what |
//! |---|---|
//! | `POST /admin/v1/accounts/{user_id}/deposits` | credits an account once per reference |
//! | `GET /admin/v1/users/{user_id}/usage` | a user's usage log (the query of `GET /api/v1/usage`) |
//! | `POST\|GET /admin/v1/users/{user_id}/keys`, `GET\|PATCH\|DELETE /admin/v1/keys/{id}`, `POST /admin/v1/keys/{id}/rotate` | managed keys (the `keys` module), with a [registry](AdminApi::registry) |
//! | `GET /admin/v1/upstreams` | routed models' deployments, as [`Upstreams`] shows them |

mod keys;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_service::Service;

use crate::auth::{ApiKey, KeyRegistry, KeyStore, UserId};
use crate::future::ResponseFuture;
use crate::ledger::Ledger;
use crate::limit::body_error;
use crate::{GatewayError, RequestBody, ResponseBody};
use keys::answer_keys;

/// The operators' door: `POST /admin/v1/accounts/{user_id}/deposits` with
/// `{"amount": <integer>, "reference": "<unique per account>"}`, any user's usage at
/// `GET /admin/v1/users/{user_id}/usage` (the query of `GET /api/v1/usage`), and with a
/// [registry](Self::registry) the key routes; authorised by its own key.
///
/// User API keys never pass here: the admin key is checked against its own SHA-256 digest in
/// constant time, and the user key store is not consulted. A deposit whose reference was
/// already used on that account changes nothing and answers `"deposited": false`.
///
/// A deposit only adds: the amount is a positive integer (`400` otherwise), and the account
/// is a user the key store knows (`404 account_not_found` otherwise), so a typo neither
/// takes money away nor strands it on an account no key can spend from.
#[derive(Clone)]
pub struct AdminApi {
    digest: [u8; 32],
    ledger: Arc<dyn Ledger>,
    keys: Arc<dyn KeyStore>,
    registry: Option<Arc<dyn KeyRegistry>>,
    upstreams: Upstreams,
}

/// The routed models whose deployments `GET /admin/v1/upstreams` shows: each model's name
/// and its deployments' state (a [`RoutedBackend`](crate::backend::RoutedBackend)'s
/// `states`).
pub type Upstreams = Arc<Vec<(String, Arc<dyn Fn() -> serde_json::Value + Send + Sync>)>>;

impl AdminApi {
    /// An admin API accepting `admin_key`, crediting `ledger` accounts of the users `keys`
    /// knows.
    pub fn new(admin_key: &str, ledger: Arc<dyn Ledger>, keys: Arc<dyn KeyStore>) -> Self {
        AdminApi {
            digest: Sha256::digest(admin_key.as_bytes()).into(),
            ledger,
            keys,
            registry: None,
            upstreams: Arc::default(),
        }
    }

    /// Also serves `GET /admin/v1/upstreams`: each routed model's deployments, as
    /// `upstreams` shows them.
    pub fn upstreams(mut self, upstreams: Upstreams) -> Self {
        self.upstreams = upstreams;
        self
    }

    /// Also serves the key routes over `registry`: `POST|GET /admin/v1/users/{user_id}/keys`,
    /// `GET|PATCH|DELETE /admin/v1/keys/{id}`, `POST /admin/v1/keys/{id}/rotate`.
    pub fn registry(mut self, registry: Arc<dyn KeyRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Whether `key` is the admin key (compared by digest, in constant time).
    pub(crate) fn authorised(&self, key: Option<ApiKey>) -> bool {
        let Some(key) = key else { return false };
        let presented: [u8; 32] = Sha256::digest(key.expose().as_bytes()).into();
        bool::from(presented.ct_eq(&self.digest))
    }
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi").finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for AdminApi
where
    B: RequestBody,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let authorised = self.authorised(ApiKey::from_headers(req.headers()));
        let ledger = self.ledger.clone();
        let keys = self.keys.clone();
        let registry = self.registry.clone();
        let upstreams = self.upstreams.clone();
        ResponseFuture::answer(async move {
            if !authorised {
                return Err(GatewayError::InvalidApiKey);
            }
            if req.uri().path() == "/admin/v1/upstreams" {
                if req.method() != Method::GET {
                    return Err(GatewayError::MethodNotAllowed);
                }
                let models: Vec<serde_json::Value> = upstreams
                    .iter()
                    .map(|(model, states)| {
                        serde_json::json!({"model": model, "deployments": states()})
                    })
                    .collect();
                return Ok(crate::body::json_ok(&serde_json::json!({ "data": models })));
            }
            if let Some(user) = req
                .uri()
                .path()
                .strip_prefix("/admin/v1/users/")
                .and_then(|rest| rest.strip_suffix("/usage"))
            {
                if req.method() != Method::GET {
                    return Err(GatewayError::MethodNotAllowed);
                }
                let user = UserId::new(user).map_err(|_| {
                    GatewayError::invalid_request("user id is not valid", Some("user_id"))
                })?;
                let body = crate::billing::usage(&*ledger, &user, req.uri().query()).await?;
                return Ok(crate::body::json_ok(&body));
            }
            if keys::serves(req.uri().path()) {
                let registry = registry.ok_or(GatewayError::RouteNotFound)?;
                let (head, body) = req.into_parts();
                let body = read_body(body).await?;
                return answer_keys(&registry, &head.method, head.uri.path(), &body).await;
            }
            let account = req
                .uri()
                .path()
                .strip_prefix("/admin/v1/accounts/")
                .and_then(|rest| rest.strip_suffix("/deposits"))
                .map(UserId::new)
                .ok_or(GatewayError::RouteNotFound)?
                .map_err(|_| {
                    GatewayError::invalid_request("user id is not valid", Some("user_id"))
                })?;
            if req.method() != Method::POST {
                return Err(GatewayError::MethodNotAllowed);
            }
            let body = read_body(req.into_body()).await?;
            let deposit: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|_| GatewayError::invalid_request("body must be a JSON object", None))?;
            let amount = deposit["amount"]
                .as_i64()
                .filter(|amount| *amount > 0)
                .ok_or_else(|| {
                    GatewayError::invalid_request(
                        "amount must be a positive integer",
                        Some("amount"),
                    )
                })?;
            let reference = deposit["reference"]
                .as_str()
                .filter(|r| !r.is_empty() && r.len() <= 200)
                .ok_or_else(|| {
                    GatewayError::invalid_request(
                        "reference must be a string of 1 to 200 characters",
                        Some("reference"),
                    )
                })?;
            let known = keys
                .knows_user(&account)
                .await
                .map_err(|error| GatewayError::internal(format!("key store: {error}")))?;
            if !known {
                return Err(GatewayError::AccountNotFound);
            }
            let deposited = ledger.deposit(&account, amount, reference).await?;
            let balance = ledger.balance(&account).await?;
            let body = serde_json::json!({
                "deposited": deposited,
                "account": account.as_str(),
                "available": balance.available,
                "held": balance.held,
            });
            Ok(crate::body::json_ok(&body))
        })
    }
}

/// An admin request's body: a small JSON document.
async fn read_body<B: RequestBody>(body: B) -> Result<bytes::Bytes, GatewayError> {
    Ok(Limited::new(body, 4096)
        .collect()
        .await
        .map_err(body_error)?
        .to_bytes())
}
