use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower_service::Service;

use crate::auth::{Principal, UserId};
use crate::future::ResponseFuture;
use crate::ledger::{EntryKind, JournalEntry, Ledger, Memo};
use crate::page::{query_pairs, PageQuery, MAX_PAGE};
use crate::{GatewayError, ResponseBody};

/// Path of the balance endpoint.
pub const BALANCE_PATH: &str = "/api/v1/balance";
/// Path of the usage endpoint.
pub const USAGE_PATH: &str = "/api/v1/usage";

/// `GET /api/v1/balance` -> `{"available", "held"}` and
/// `GET /api/v1/usage?limit=&after=&from=&to=&model=&key=&status=` -> the caller's charges,
/// oldest first: `{"data": [{"request_id", "model", "key_id", "status", "n_requested",
/// "n_returned", "held", "charged", "released", "amount", "time"}], "has_more",
/// "next_after"}` (`amount` is `charged`, kept for earlier clients).
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
                _ => usage(&*ledger, principal.user_id(), query.as_deref()).await?,
            };
            Ok(crate::body::json_ok(&body))
        })
    }
}

/// What `GET /api/v1/usage` lists: its query's filters.
#[derive(Debug, Default, PartialEq, Eq)]
struct UsageFilter {
    /// Entries at or after this unix second.
    from: Option<u64>,
    /// Entries before this unix second.
    to: Option<u64>,
    model: Option<String>,
    /// A managed key's id.
    key: Option<String>,
    /// Also holds that ended with nothing charged (released, expired).
    all: bool,
}

impl UsageFilter {
    fn parse(query: Option<&str>) -> Result<Self, GatewayError> {
        let mut filter = UsageFilter::default();
        let seconds = |value: &str, name: &'static str| {
            value.parse::<u64>().map_err(|_| {
                GatewayError::invalid_request(
                    format!("{name} must be a unix time in seconds"),
                    Some(name),
                )
            })
        };
        for pair in query_pairs(query) {
            let (name, value) = pair?;
            match name {
                "from" => filter.from = Some(seconds(&value, "from")?),
                "to" => filter.to = Some(seconds(&value, "to")?),
                "model" => filter.model = Some(value),
                "key" => filter.key = Some(value),
                "status" => {
                    filter.all = match value.as_str() {
                        "all" => true,
                        "charged" => false,
                        _ => {
                            return Err(GatewayError::invalid_request(
                                "status must be charged or all",
                                Some("status"),
                            ))
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(filter)
    }

    fn admits(&self, entry: &JournalEntry, memo: &Memo) -> bool {
        let shown = match entry.kind {
            EntryKind::Settle | EntryKind::LateSettle => true,
            EntryKind::Release | EntryKind::Expire => self.all,
            EntryKind::Deposit | EntryKind::Hold => false,
        };
        shown
            && self.from.is_none_or(|from| entry.at >= from)
            && self.to.is_none_or(|to| entry.at < to)
            && self.model.as_deref().is_none_or(|m| m == memo.model)
            && self
                .key
                .as_deref()
                .is_none_or(|k| memo.key.as_deref() == Some(k))
    }
}

/// One page of `account`'s usage: every hold that ended with a charge (with `status=all`,
/// also those that ended with none), oldest first, filtered by `from`, `to`, `model` and
/// `key`. Shared by `GET /api/v1/usage` and the admin API's
/// `GET /admin/v1/users/{user_id}/usage`.
pub(crate) async fn usage(
    ledger: &dyn Ledger,
    account: &UserId,
    query: Option<&str>,
) -> Result<serde_json::Value, GatewayError> {
    let page = PageQuery::parse(query)?;
    let filter = UsageFilter::parse(query)?;
    let limit = page.limit;
    let after = page
        .after
        .map(|after| after.parse::<u64>())
        .transpose()
        .map_err(|_| {
            GatewayError::invalid_request("after must be a journal position", Some("after"))
        })?;
    // The journal holds every movement, in time order; usage is the ends of holds. Scan
    // until a page is full, or past `to`.
    let mut data = Vec::new();
    let mut cursor = after;
    let mut last_seq = None;
    'scan: loop {
        let batch = ledger.journal(account, cursor, MAX_PAGE).await?;
        let exhausted = batch.len() < MAX_PAGE;
        for entry in batch {
            cursor = Some(entry.seq);
            if filter.to.is_some_and(|to| entry.at >= to) {
                break 'scan;
            }
            let memo = entry.memo.clone().unwrap_or_default();
            if data.len() == limit || !filter.admits(&entry, &memo) {
                continue;
            }
            last_seq = Some(entry.seq);
            let charged = u64::try_from(entry.amount).unwrap_or(0);
            let held = entry.held.unwrap_or(charged);
            let status = match entry.kind {
                EntryKind::Release => "released",
                EntryKind::Expire => "expired",
                // Only a refusal's fee charges for no image.
                _ if charged > 0 && entry.units_returned == Some(0) => "violation_fee",
                _ => "charged",
            };
            data.push(serde_json::json!({
                "request_id": memo.request_id,
                "model": memo.model,
                "key_id": memo.key,
                "status": status,
                "n_requested": memo.units_requested,
                "n_returned": entry.units_returned.unwrap_or(0),
                "held": held,
                "charged": charged,
                // A late settle charges an expired hold, whose release was listed already.
                "released": if entry.kind == EntryKind::LateSettle { 0 } else { held.saturating_sub(charged) },
                "amount": charged,
                "upstream": entry.upstream,
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
