use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower_service::Service;

use crate::auth::Principal;
use crate::future::ResponseFuture;
use crate::ledger::{EntryKind, Ledger};
use crate::page::{PageQuery, MAX_PAGE};
use crate::{GatewayError, ResponseBody};

/// Path of the balance endpoint.
pub const BALANCE_PATH: &str = "/api/v1/balance";
/// Path of the usage endpoint.
pub const USAGE_PATH: &str = "/api/v1/usage";

/// `GET /api/v1/balance` -> `{"available", "held"}` and `GET /api/v1/usage?limit=&after=`
/// -> the caller's charges, oldest first:
/// `{"data": [{"request_id", "model", "n_requested", "n_returned", "amount", "time"}],
///   "has_more", "next_after"}`.
#[derive(Clone)]
pub struct AccountApi {
    ledger: Arc<dyn Ledger>,
}

impl AccountApi {
    /// The account endpoints over `ledger`.
    pub fn new(ledger: Arc<dyn Ledger>) -> Self {
        AccountApi { ledger }
    }

    /// Whether `path` is one of this API's.
    pub fn serves(path: &str) -> bool {
        path == BALANCE_PATH || path == USAGE_PATH
    }
}

impl std::fmt::Debug for AccountApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountApi").finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for AccountApi {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ledger = self.ledger.clone();
        let principal = Principal::of_request(req.extensions());
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let query = req.uri().query().map(str::to_owned);
        ResponseFuture::answer(async move {
            let principal = principal?;
            if method != Method::GET {
                return Err(GatewayError::MethodNotAllowed);
            }
            let body = match path.as_str() {
                BALANCE_PATH => {
                    let balance = ledger.balance(principal.user_id()).await?;
                    serde_json::json!({
                        "available": balance.available,
                        "held": balance.held,
                    })
                }
                _ => usage(&*ledger, &principal, query.as_deref()).await?,
            };
            Ok(crate::body::json_ok(&body))
        })
    }
}

async fn usage(
    ledger: &dyn Ledger,
    principal: &Principal,
    query: Option<&str>,
) -> Result<serde_json::Value, GatewayError> {
    let query = PageQuery::parse(query)?;
    let limit = query.limit;
    let after = query
        .after
        .map(|after| after.parse::<u64>())
        .transpose()
        .map_err(|_| {
            GatewayError::invalid_request("after must be a journal position", Some("after"))
        })?;
    // The journal holds every movement; usage is its settlements. Scan until a page is full.
    let mut data = Vec::new();
    let mut cursor = after;
    let mut last_seq = None;
    loop {
        let batch = ledger
            .journal(principal.user_id(), cursor, MAX_PAGE)
            .await?;
        let exhausted = batch.len() < MAX_PAGE;
        for entry in batch {
            cursor = Some(entry.seq);
            if entry.kind != EntryKind::Settle || data.len() == limit {
                continue;
            }
            let memo = entry.memo.unwrap_or_default();
            last_seq = Some(entry.seq);
            data.push(serde_json::json!({
                "request_id": memo.request_id,
                "model": memo.model,
                "n_requested": memo.units_requested,
                "n_returned": entry.units_returned.unwrap_or(0),
                "amount": entry.amount,
                "time": entry.at,
            }));
        }
        if exhausted || data.len() == limit {
            break;
        }
    }
    let has_more = data.len() == limit;
    Ok(serde_json::json!({
        "data": data,
        "has_more": has_more,
        "next_after": if has_more { last_seq } else { None },
    }))
}
