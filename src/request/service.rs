use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{header, Request, Response};
use http_body_util::{BodyDataStream, BodyExt, Limited};
use tower::ServiceExt;
use tower_service::Service;

use std::time::Duration;

use super::{deferred, parse_json, parse_multipart, stream, Rules};
use crate::auth::Principal;
use crate::future::ResponseFuture;
use crate::job::{EditOutcome, EditRequest, Operation, RequestContext, Stage};
use crate::jobs::JobBoard;
use crate::metrics::ModelLabel;
use crate::multipart::boundary_of;

use crate::id::RequestId;
use crate::lease::{ClientWatch, Leases};
use crate::limit::body_error;
use crate::{GatewayError, RequestBody, ResponseBody};

/// Turns an HTTP request into an [`EditRequest`] for the inner service and renders its
/// answer (or any error on the way) as the spec's JSON.
///
/// Expects a [`Principal`] in the request extensions (put there by
/// [`AuthLayer`](crate::auth::AuthLayer)); without one it answers `401`.
#[derive(Clone, Debug)]
pub struct Normalize<S> {
    inner: S,
    rules: Rules,
    keepalive: Duration,
    jobs: Option<JobBoard>,
}

impl<S> Normalize<S> {
    pub(crate) fn new(inner: S, rules: Rules, keepalive: Duration, jobs: Option<JobBoard>) -> Self {
        Normalize {
            inner,
            rules,
            keepalive,
            jobs,
        }
    }
}

impl<S, B> Service<Request<B>> for Normalize<S>
where
    S: Stage<EditRequest, EditOutcome>,
    B: RequestBody,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Response<ResponseBody>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the inner service is awaited per call by `oneshot`, so a rejection
        // never waits for capacity it will not use.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let rules = self.rules.clone();
        let keepalive = self.keepalive;
        let board = self.jobs.clone();
        let wants_async = board.is_some() && deferred::prefers_async(req.headers());
        // Dropped with the answer (or, streamed, with its body): work that outlives it learns
        // the client left.
        let (client, watch) = ClientWatch::new();
        ResponseFuture::new(async move {
            let edit = async {
                let webhook = webhook_of(req.headers(), wants_async)?;
                let context = context_of(&req, watch)?;
                Ok::<_, GatewayError>((read_edit(req, context, &rules).await?, webhook))
            };
            let (edit, webhook) = match edit.await.and_then(|(e, w)| Ok((allowed(e)?, w))) {
                Ok(edit) => edit,
                Err(error) => return Ok(error.into_response()),
            };
            let span = tracing::Span::current();
            span.record("model", edit.params.model.as_str());
            span.record("n", edit.params.n);
            let model = ModelLabel(edit.params.model.clone());
            let mut response = match board {
                Some(board) if wants_async => {
                    drop(client);
                    deferred::submit(inner, edit, board, webhook).await
                }
                board if edit.params.stream => {
                    stream::respond(inner, edit, client, keepalive, board).await
                }
                Some(board) => deferred::answer(inner, edit, client, board).await,
                None => {
                    let _client = client;
                    match inner.oneshot(edit).await {
                        Ok(outcome) => outcome.into_response(),
                        Err(error) => error.into_response(),
                    }
                }
            };
            response.extensions_mut().insert(model);
            Ok(response)
        })
    }
}

/// The `Webhook-Url` header, if any: only an async submission may name one (`400`,
/// `param: webhook_url` otherwise), and its text must be visible ASCII.
fn webhook_of(
    headers: &http::HeaderMap,
    wants_async: bool,
) -> Result<Option<String>, GatewayError> {
    let Some(value) = headers.get("webhook-url") else {
        return Ok(None);
    };
    let refuse = |why: &str| GatewayError::invalid_request(why.to_owned(), Some("webhook_url"));
    if !wants_async {
        return Err(refuse(
            "webhook_url: a webhook is sent for async jobs only (with Prefer: respond-async)",
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| refuse("webhook_url: not a valid URL"))?;
    Ok(Some(text.to_owned()))
}

/// The request, if the caller's key may use its model (`403 MODEL_ACCESS_DENIED` otherwise),
/// checked before any source is read or any money held.
fn allowed(edit: EditRequest) -> Result<EditRequest, GatewayError> {
    match &edit.principal.key {
        Some(grant) if !grant.limits.allows_model(&edit.params.model) => {
            Err(GatewayError::ModelAccessDenied {
                model: edit.params.model.clone(),
            })
        }
        _ => Ok(edit),
    }
}

/// What the request's head says of it: the caller (put in by the auth layer), the request id
/// (put in by the gateway; used alone, this layer makes one), the idempotency key, the
/// leases of the layers outside.
fn context_of<B>(req: &Request<B>, client: ClientWatch) -> Result<RequestContext, GatewayError> {
    let extensions = req.extensions();
    let request_id = extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(|| RequestId::from_headers(req.headers()));
    let mut context = RequestContext::new(Principal::of_request(extensions)?, request_id);
    context.idempotency_key = idempotency_key(req.headers())?;
    context.leases = Leases::of_request(extensions);
    context.client = client;
    Ok(context)
}

/// The `Idempotency-Key` header: absent, or 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<String>, GatewayError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(|v| Some(v.to_owned()))
        .ok_or_else(|| {
            GatewayError::invalid_request(
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
                Some("Idempotency-Key"),
            )
        })
}

/// Reads and validates the body as JSON or (for edits) multipart, by its `Content-Type`.
async fn read_edit<B>(
    req: Request<B>,
    context: RequestContext,
    rules: &Rules,
) -> Result<EditRequest, GatewayError>
where
    B: RequestBody,
{
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => {
            // A JSON body may carry images as data URIs: it has the whole-body limit.
            let limit = usize::try_from(rules.limits.whole_body).unwrap_or(usize::MAX);
            let body = Limited::new(req.into_body(), limit)
                .collect()
                .await
                .map_err(body_error)?
                .to_bytes();
            parse_json(&body, context, rules)
        }
        "multipart/form-data" if rules.operation == Operation::Edit => {
            let boundary = boundary_of(&content_type)?;
            let stream = BodyDataStream::new(req.into_body());
            // Boxed: the multipart reader's state is large, and inline it would be moved
            // along with every JSON edit's future too.
            Box::pin(parse_multipart(stream, boundary, context, rules)).await
        }
        "multipart/form-data" => Err(GatewayError::invalid_request(
            "this endpoint takes application/json",
            None,
        )),
        _ => Err(GatewayError::invalid_request(
            "Content-Type must be application/json or multipart/form-data",
            None,
        )),
    }
}
